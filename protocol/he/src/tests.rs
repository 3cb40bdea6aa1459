//! End-to-end tests of HE preprocessing: both parties over an in-memory channel, shares checked against
//! an independent naive ring convolution / matrix product written here.

use super::*;
use pi_channel::{Channel, MsgKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn conv(c: usize, h: usize, m: usize, k: usize, s: usize, p: usize) -> LayerShape {
    LayerShape::Conv(ConvShape {
        in_channels: c,
        out_channels: m,
        height: h,
        width: h,
        kernel: k,
        stride: s,
        padding: p,
    })
}

fn fc(n: usize, o: usize) -> LayerShape {
    LayerShape::Fc(FcShape { inputs: n, outputs: o })
}

/// Direct definition of the layer over `Z_{2^l}`, independent of the library's reference and packing.
fn naive(shape: &LayerShape, w: &[u64], x: &[u64], l: u32) -> Vec<u64> {
    let mask = if l == 64 { u64::MAX } else { (1u64 << l) - 1 };
    match *shape {
        LayerShape::Fc(f) => (0..f.outputs)
            .map(|o| (0..f.inputs).fold(0u64, |a, i| a.wrapping_add(w[o * f.inputs + i].wrapping_mul(x[i]))) & mask)
            .collect(),
        LayerShape::Conv(c) => {
            let ho = (c.height + 2 * c.padding - c.kernel) / c.stride + 1;
            let wo = (c.width + 2 * c.padding - c.kernel) / c.stride + 1;
            let mut out = Vec::with_capacity(c.out_channels * ho * wo);
            for o in 0..c.out_channels {
                for y in 0..ho {
                    for xx in 0..wo {
                        let mut acc = 0u64;
                        for ci in 0..c.in_channels {
                            for u in 0..c.kernel {
                                for v in 0..c.kernel {
                                    let iy = (y * c.stride + u) as i64 - c.padding as i64;
                                    let ix = (xx * c.stride + v) as i64 - c.padding as i64;
                                    if iy < 0 || ix < 0 || iy >= c.height as i64 || ix >= c.width as i64 {
                                        continue;
                                    }
                                    let wi = ((o * c.in_channels + ci) * c.kernel + u) * c.kernel + v;
                                    let xi = (ci * c.height + iy as usize) * c.width + ix as usize;
                                    acc = acc.wrapping_add(w[wi].wrapping_mul(x[xi]));
                                }
                            }
                        }
                        out.push(acc & mask);
                    }
                }
            }
            out
        }
    }
}

/// Random signed `wbits`-bit weights as ring elements and a full-range mask.
fn random_inputs(shape: &LayerShape, l: u32, wbits: u32, rng: &mut ChaCha20Rng) -> (Vec<u64>, Vec<u64>) {
    let mask = (1u64 << l) - 1;
    let half = 1i64 << (wbits - 1);
    let w = (0..shape.weight_len()).map(|_| (rng.random_range(-half..half) as u64) & mask).collect();
    let r = (0..shape.input_len()).map(|_| rng.random::<u64>() & mask).collect();
    (w, r)
}

/// Runs setup and the given layers between a client and a server; checks every layer's shares. The
/// server encodes each layer first with `cache` (as a served model does), or per call when `None`.
async fn check_layers(l: u32, shapes: &[LayerShape], cache: Option<KernelCache>) {
    let mut rng = ChaCha20Rng::seed_from_u64(0x5eed ^ l as u64);
    let params = HeParams::new(l).unwrap();
    let client = HeClient::new(params.clone(), &mut rng).unwrap();
    let (mut cch, mut sch) = Channel::memory_pair();
    let enc = KernelEncoder::new(&params).unwrap();
    let (setup_c, server) = tokio::join!(client.setup(&mut cch), HeServer::setup(&mut sch, &enc));
    setup_c.unwrap();
    let server = server.unwrap();
    let mask = (1u64 << l) - 1;
    for shape in shapes {
        let (w, r) = random_inputs(shape, l, 13, &mut rng);
        let t0 = std::time::Instant::now();
        let serve = async {
            match cache {
                None => server.linear(&mut sch, shape, &w).await,
                Some(cache) => {
                    let layer = KernelEncoder::new(&params).unwrap().encode(shape, &w, cache).unwrap();
                    assert_eq!(layer.cached_bytes() > 0, cache == KernelCache::Transformed);
                    server.linear_encoded(&mut sch, &std::sync::Arc::new(layer)).await.map(|(s, _)| s)
                }
            }
        };
        let (c, s) = tokio::join!(client.linear(&mut cch, shape, &r), serve);
        let (c, s) = (c.unwrap(), s.unwrap());
        let expected = naive(shape, &w, &r, l);
        assert_eq!(expected, ring_linear(shape, &w, &r, l).unwrap(), "library reference disagrees for {shape:?}");
        assert_eq!(c.len(), expected.len());
        let bad = c.iter().zip(&s).zip(&expected).filter(|((c, s), e)| (c.wrapping_add(**s) & mask) != **e).count();
        assert_eq!(bad, 0, "{bad} of {} outputs wrong for {shape:?} at l = {l}", expected.len());
        // The server's share is not constant (it masks the client's view).
        assert!(s.iter().any(|&v| v != s[0]) || s.len() == 1);
        eprintln!("{shape:?}: {:?}", t0.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conv_stride1_first_layers_and_fc() {
    check_layers(
        59,
        &[
            conv(1, 28, 16, 3, 1, 1),   // small-cnn first conv (1 input channel)
            conv(16, 14, 16, 3, 1, 1),  // 3x3 stride 1
            conv(16, 14, 32, 3, 2, 1),  // 3x3 stride 2
            fc(32, 10),                 // small-cnn FC
            conv(3, 32, 64, 3, 1, 1),   // resnet18 first conv (3 input channels)
            conv(64, 32, 128, 1, 2, 0), // 1x1 stride 2 shortcut
            fc(512, 10),                // resnet / wrn FC
            conv(256, 8, 512, 3, 2, 1), // stride 2 with many channels (small image)
        ],
        Some(KernelCache::Transformed),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ring_widths() {
    for l in [16, 32, 44, 61] {
        check_layers(l, &[conv(5, 7, 6, 3, 2, 1), fc(40, 9)], None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_shapes_and_spatial_tiles() {
    // Non-square-friendly sizes, padding 2, kernel 5, stride 3, and an image too big for one block.
    check_layers(
        59,
        &[
            conv(3, 9, 4, 5, 3, 2),
            conv(2, 11, 3, 2, 2, 0),
            conv(1, 100, 2, 3, 1, 1),
            LayerShape::Conv(ConvShape {
                in_channels: 2,
                out_channels: 3,
                height: 5,
                width: 13,
                kernel: 3,
                stride: 1,
                padding: 0,
            }),
            // A per-channel scale as a 1x1 convolution with a diagonal kernel shape.
            conv(8, 6, 8, 1, 1, 0),
        ],
        Some(KernelCache::OnTheFly),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Every distinct layer of small-cnn, resnet18 and wrn22-8, with kernels cached as a served model keeps them.
async fn all_model_layers() {
    let shapes = [
        // small-cnn
        conv(1, 28, 16, 3, 1, 1),
        conv(16, 14, 16, 3, 1, 1),
        conv(16, 14, 32, 3, 2, 1),
        fc(32, 10),
        // resnet18
        conv(3, 32, 64, 3, 1, 1),
        conv(64, 32, 64, 3, 1, 1),
        conv(64, 32, 128, 3, 2, 1),
        conv(128, 16, 128, 3, 1, 1),
        conv(64, 32, 128, 1, 2, 0),
        conv(128, 16, 256, 3, 2, 1),
        conv(256, 8, 256, 3, 1, 1),
        conv(128, 16, 256, 1, 2, 0),
        conv(256, 8, 512, 3, 2, 1),
        conv(512, 4, 512, 3, 1, 1),
        conv(256, 8, 512, 1, 2, 0),
        fc(512, 10),
        // wrn22-8
        conv(3, 32, 16, 3, 1, 1),
        conv(16, 32, 128, 3, 1, 1),
        conv(128, 32, 128, 3, 1, 1),
        conv(16, 32, 128, 1, 1, 0),
        conv(128, 32, 256, 3, 2, 1),
        conv(256, 16, 256, 3, 1, 1),
        conv(128, 32, 256, 1, 2, 0),
        conv(256, 16, 512, 3, 2, 1),
        conv(512, 8, 512, 3, 1, 1),
        conv(256, 16, 512, 1, 2, 0),
    ];
    check_layers(59, &shapes, Some(KernelCache::Transformed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_encoded_for_other_parameters_is_refused() {
    let params = HeParams::new(59).unwrap();
    let client = HeClient::new(params.clone(), &mut ChaCha20Rng::seed_from_u64(9)).unwrap();
    let (mut cch, mut sch) = Channel::memory_pair();
    let enc = KernelEncoder::new(&params).unwrap();
    let (a, b) = tokio::join!(client.setup(&mut cch), HeServer::setup(&mut sch, &enc));
    a.unwrap();
    let server = b.unwrap();
    let shape = fc(16, 4);
    let layer =
        KernelEncoder::new(&HeParams::new(44).unwrap()).unwrap().encode(&shape, &[1; 64], KernelCache::Transformed);
    let r = server.linear_encoded(&mut sch, &std::sync::Arc::new(layer.unwrap())).await;
    assert!(matches!(r, Err(HeError::Params(_))), "{:?}", r.map(|(s, _)| s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_range_weights_are_refused_not_leaked() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let params = HeParams::new(59).unwrap();
    let client = HeClient::new(params.clone(), &mut rng).unwrap();
    let (mut cch, mut sch) = Channel::memory_pair();
    let enc = KernelEncoder::new(&params).unwrap();
    let (a, b) = tokio::join!(client.setup(&mut cch), HeServer::setup(&mut sch, &enc));
    a.unwrap();
    let server = b.unwrap();
    let shape = fc(64, 8);
    let w: Vec<u64> = (0..shape.weight_len()).map(|_| rng.random::<u64>() >> 5).collect();
    let r = vec![1u64; 64];
    // The server hangs up after its error, so the client fails at once instead of timing out.
    let serve = async move { server.linear(&mut sch, &shape, &w).await };
    let (c, s) = tokio::join!(client.linear(&mut cch, &shape, &r), serve);
    assert!(matches!(s, Err(HeError::Noise(_))), "{s:?}");
    assert!(c.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peer_data_is_an_error() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let params = HeParams::new(59).unwrap();
    let client = HeClient::new(params.clone(), &mut rng).unwrap();
    let ctx = params.context().unwrap();

    // Server side: wrong parameters, short key, residues out of range, wrong query sizes.
    let (mut cch, mut sch) = Channel::memory_pair();
    let other = HeParams::new(44).unwrap();
    cch.send_msg(MsgKind::HeKeys, &other).await.unwrap();
    let enc = KernelEncoder::new(&params).unwrap();
    assert!(matches!(HeServer::setup(&mut sch, &enc).await, Err(HeError::Params(_))));

    let (mut cch, mut sch) = Channel::memory_pair();
    cch.send_msg(MsgKind::HeKeys, &params).await.unwrap();
    cch.send_now(MsgKind::HeKeys, &[1, 2, 3]).await.unwrap();
    let enc = KernelEncoder::new(&params).unwrap();
    assert!(matches!(HeServer::setup(&mut sch, &enc).await, Err(HeError::Malformed(_))));

    let (mut cch, mut sch) = Channel::memory_pair();
    cch.send_msg(MsgKind::HeKeys, &params).await.unwrap();
    cch.send_now(MsgKind::HeKeys, &vec![0xff; ctx.query_bytes()]).await.unwrap();
    let enc = KernelEncoder::new(&params).unwrap();
    assert!(matches!(HeServer::setup(&mut sch, &enc).await, Err(HeError::Malformed(_))));

    let (mut cch, mut sch) = Channel::memory_pair();
    let enc = KernelEncoder::new(&params).unwrap();
    let (a, b) = tokio::join!(client.setup(&mut cch), HeServer::setup(&mut sch, &enc));
    a.unwrap();
    let server = b.unwrap();
    let shape = fc(16, 4);
    let w = vec![3u64; 64];
    // Right header, then a query one byte too long.
    let fake = async {
        #[derive(serde::Serialize)]
        struct Header {
            shape: LayerShape,
            queries: u64,
        }
        cch.send_msg(MsgKind::HeQuery, &Header { shape, queries: 1 }).await.unwrap();
        cch.send_now(MsgKind::HeQuery, &vec![0u8; ctx.query_bytes() + 1]).await.unwrap();
    };
    let (_, s) = tokio::join!(fake, server.linear(&mut sch, &shape, &w));
    assert!(matches!(s, Err(HeError::Malformed(_))), "{s:?}");

    // Header for another layer.
    let (mut cch, mut sch) = Channel::memory_pair();
    let enc = KernelEncoder::new(&params).unwrap();
    let (a, b) = tokio::join!(client.setup(&mut cch), HeServer::setup(&mut sch, &enc));
    a.unwrap();
    let server = b.unwrap();
    let r = vec![0u64; 16];
    let other_shape = fc(16, 5);
    let serve = async move { server.linear(&mut sch, &shape, &w).await };
    let (c, s) = tokio::join!(client.linear(&mut cch, &other_shape, &r), serve);
    assert!(s.is_err() && c.is_err());

    // Client side: a reply of the wrong length and one with residues out of range.
    for bad in [vec![7u8; 10], vec![0xffu8; ctx.reply_bytes(4)]] {
        let (mut cch, mut sch) = Channel::memory_pair();
        let fake_server = async {
            let _ = sch.recv(MsgKind::HeQuery).await.unwrap();
            let _ = sch.recv(MsgKind::HeQuery).await.unwrap();
            sch.send_now(MsgKind::HeReply, &bad).await.unwrap();
            drop(sch);
        };
        let (c, _) = tokio::join!(client.linear(&mut cch, &shape, &r), fake_server);
        assert!(c.is_err(), "{c:?}");
    }
}

/// Replies arrive in frames cut anywhere, not at ciphertext boundaries (a relay re-frames the
/// server's stream into 777-byte frames): the client reassembles them and its share is the same
/// exact `L(r) - s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_cut_anywhere_give_the_same_shares() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Header {
        shape: LayerShape,
        queries: u64,
    }
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let l = 59;
    let params = HeParams::new(l).unwrap();
    let ctx = params.context().unwrap();
    let client = HeClient::new(params.clone(), &mut rng).unwrap();
    let enc = KernelEncoder::new(&params).unwrap();
    let shape = conv(16, 14, 24, 3, 1, 1);
    let (w, r) = random_inputs(&shape, l, 13, &mut rng);
    let (mut cch, mut rc) = Channel::memory_pair();
    let (mut rs, mut sch) = Channel::memory_pair();
    let w2 = w.clone();
    let server_side = async move {
        let server = HeServer::setup(&mut sch, &enc).await.unwrap();
        let share = server.linear(&mut sch, &shape, &w2).await.unwrap();
        drop(sch);
        share
    };
    let relay = async move {
        // Client to server as sent: the two setup frames, the header and the queries.
        for _ in 0..2 {
            let (kind, frame) = rc.recv_any().await.unwrap();
            rs.send_now(kind, &frame).await.unwrap();
        }
        let header: Header = rc.recv_msg(MsgKind::HeQuery).await.unwrap();
        rs.send_msg(MsgKind::HeQuery, &header).await.unwrap();
        let mut left = header.queries as usize * ctx.query_bytes();
        while left > 0 {
            let frame = rc.recv(MsgKind::HeQuery).await.unwrap();
            left -= frame.len();
            rs.send_now(MsgKind::HeQuery, &frame).await.unwrap();
        }
        // Server to client: every reply byte until the server hangs up, in 777-byte frames.
        let mut bytes = Vec::new();
        loop {
            match rs.recv(MsgKind::HeReply).await {
                Ok(frame) => bytes.extend_from_slice(&frame),
                Err(pi_channel::ChannelError::Closed) => break,
                Err(e) => panic!("relay: {e}"),
            }
        }
        for frame in bytes.chunks(777) {
            rc.send(MsgKind::HeReply, frame).await.unwrap();
        }
        rc.flush().await.unwrap();
        bytes.len()
    };
    let client_side = async {
        client.setup(&mut cch).await.unwrap();
        client.linear(&mut cch, &shape, &r).await.unwrap()
    };
    let (c, s, relayed) = tokio::join!(client_side, server_side, relay);
    assert!(relayed > 10 * 777, "the replies should span many frames ({relayed} bytes)");
    let expected = naive(&shape, &w, &r, l);
    let mask = (1u64 << l) - 1;
    assert_eq!(c.len(), expected.len());
    for (i, ((c, s), e)) in c.iter().zip(&s).zip(&expected).enumerate() {
        assert_eq!(c.wrapping_add(*s) & mask, *e, "output {i}");
    }
}
