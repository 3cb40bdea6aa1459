//! Private inference end to end over loopback TCP: real `pi serve` / `pi infer` processes, and
//! in-process parties on real sockets for the misbehaving-client cases.

use pi_channel::{Channel, MsgKind};
use pi_channel::{HEADER_LEN, PROTOCOL_VERSION};
use pi_inference::Request;
use pi_inference::client::ClientSession;
use pi_model::engine::{RingModel, argmax};
use pi_model::{FixedPoint, Model, arch, format};
use pi_server::{Limits, PrepareOptions, ServerTransport};
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn pi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pi"))
}

fn bundled_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist")
}

/// A `pi serve` process, killed on drop.
struct ServerProcess {
    child: Child,
    addr: String,
    /// SHA-256 of its self-signed TLS certificate.
    fingerprint: String,
    hash: String,
}

impl ServerProcess {
    fn start(model: &Path) -> Self {
        let mut child = pi()
            .args(["serve", "--model", model.to_str().unwrap(), "--listen", "127.0.0.1:0", "--timeout-secs", "10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pi serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut line = |prefix: &str| {
            let l = lines.next().unwrap().unwrap();
            assert!(l.starts_with(prefix), "{l:?} does not start with {prefix:?}");
            l[prefix.len()..].to_string()
        };
        let addr = line("listening on ");
        let fingerprint = line("tls certificate sha256 ");
        let hash = line("model commitment ");
        ServerProcess { child, addr, fingerprint, hash }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn init_model(dir: &Path, arch: &str, keep: &str) -> PathBuf {
    let path = dir.join(format!("{arch}.safetensors"));
    let ok = pi()
        .args(["init", "--arch", arch, "--mask-keep", keep, "--seed", "4", "--out", path.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success());
    path
}

#[test]
fn pi_infer_against_pi_serve_matches_the_fixed_point_engine() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_model(dir.path(), "small-cnn", "0.1");
    let server = ServerProcess::start(&model);
    let hash_announced = server.hash.clone();
    let npy = dir.path().join("pi-logits.npy");
    let out = pi()
        .args(["infer", "--server", &server.addr, "--data", bundled_data().to_str().unwrap(), "--count", "4", "--json"])
        .args(["--expect-hash", &server.hash, "--reference-model", model.to_str().unwrap()])
        .args(["--logits", npy.to_str().unwrap(), "--tls-fingerprint", &server.fingerprint])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["inferences"], 4);
    assert_eq!(r["agreement_fixed_point"], 1.0);
    assert!(r["relus"].as_u64().unwrap() > 1500);
    for rec in r["per_inference"].as_array().unwrap() {
        assert!(rec["max_logit_error"].as_f64().unwrap() < 1e-2, "{rec}");
    }
    // --logits: the PI logits as float32 [4, 10], within 1e-2 of the fixed-point engine run here.
    use ndarray_npy::ReadNpyExt;
    let logits = ndarray::Array2::<f32>::read_npy(std::fs::File::open(&npy).unwrap()).unwrap();
    assert_eq!(logits.dim(), (4, 10));
    let plain = format::load(&model).unwrap().fold_batchnorm();
    let ring = RingModel::new(&plain, FixedPoint::DEFAULT).unwrap();
    let ds = pi_client::load_images(&bundled_data(), None).unwrap();
    for (i, rec) in r["per_inference"].as_array().unwrap().iter().enumerate() {
        let row: Vec<f32> = logits.row(i).to_vec();
        assert_eq!(argmax(&row), rec["prediction"].as_u64().unwrap() as usize);
        let want = ring.decode_output(&ring.run(ds.image(i)).unwrap());
        assert!(row.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-2), "{row:?} vs {want:?}");
    }

    // A client that expects another model is refused with a clear error.
    let infer_one = |extra: &[&str]| {
        let out = pi()
            .args(["infer", "--server", &server.addr, "--data", bundled_data().to_str().unwrap(), "--count", "1"])
            .args(extra)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = infer_one(&["--expect-hash", &"0".repeat(64), "--tls-fingerprint", &server.fingerprint]);
    assert!(!ok && err.contains("model hash mismatch"), "{err}");

    // TLS: another certificate's fingerprint, a plaintext client, and no trust choice at all are
    // each refused with one line that says why; the server goes on serving.
    let (ok, err) = infer_one(&["--tls-fingerprint", &"ab".repeat(32)]);
    assert!(!ok && err.contains(&server.fingerprint) && err.contains("pinned"), "{err}");
    let (ok, err) = infer_one(&["--plaintext", "--timeout-secs", "5"]);
    assert!(!ok && !err.contains("panicked"), "{err}");
    let (ok, err) = infer_one(&[]);
    assert!(!ok && err.contains("--tls-fingerprint") && err.contains("--plaintext"), "{err}");
    let (ok, err) = infer_one(&["--tls-fingerprint", &server.fingerprint]);
    assert!(ok, "{err}");

    // The server announces a salted commitment, never the bare content hash; the salt file beside
    // the model keeps it the same across restarts, and `pi inspect` shows it for publishing.
    drop(server);
    let again = ServerProcess::start(&model);
    assert_eq!(again.hash, hash_announced);
    let out = pi().args(["inspect", model.to_str().unwrap(), "--json"]).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["commitment"], hash_announced.as_str());
    assert_ne!(info["hash"], hash_announced.as_str());
    assert_eq!(info["hash"].as_str().unwrap().len(), 64);
    let salt = std::fs::read_to_string(pi_server::default_salt_path(&model)).unwrap();
    assert_eq!(salt.trim().len(), 64);
}

/// `model` prepared for serving the way `pi serve` does it: from a model file, default options.
fn prepared(model: &Model) -> pi_inference::server::ServedModel {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    format::save(model, &path).unwrap();
    pi_server::prepare(&path, &PrepareOptions::default()).unwrap()
}

/// An in-process server on a real loopback socket.
async fn start_server(model: &Model, limits: Limits) -> (String, Arc<pi_inference::server::ServedModel>) {
    let served = Arc::new(prepared(model));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(pi_server::serve(listener, served.clone(), limits, ServerTransport::Plaintext));
    (addr, served)
}

/// [`start_server`] with default limits but the read timeout.
async fn start_server_timeout(model: &Model, timeout: Duration) -> (String, Arc<pi_inference::server::ServedModel>) {
    start_server(model, Limits { read_timeout: timeout, ..Limits::default() }).await
}

async fn connect(addr: &str) -> Channel {
    Channel::new(TcpStream::connect(addr).await.unwrap())
}

fn random_images(n: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()).collect()
}

/// Checks PI logits against the fixed-point engine for a few images.
async fn check_against_fixed_point(model: Model, images: usize) {
    let (addr, served) = start_server_timeout(&model, Duration::from_secs(60)).await;
    let ring = RingModel::new(&model.fold_batchnorm(), FixedPoint::DEFAULT).unwrap();
    let len: usize = model.graph.input_shape.iter().product();
    let mut ch = connect(&addr).await;
    let mut client = ClientSession::handshake(&mut ch, Some(&served.public.hash)).await.unwrap();
    for x in random_images(images, len, 21) {
        let r = client.infer(&mut ch, &x).await.unwrap();
        let want = ring.decode_output(&ring.run(&x).unwrap());
        assert_eq!(argmax(&want), argmax(&r.logits), "PI {:?} vs fixed point {want:?}", r.logits);
        // Local truncations may be off by one ulp; those carries propagate through later layers, so
        // the bound is relative to the logit range (a real truncation failure would be ~2^(l-2f)).
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = want.iter().zip(&r.logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-3 * scale + 1e-2, "PI {:?} vs fixed point {want:?}", r.logits);
        assert_eq!(r.relus, served.public.kept_relus());
    }
    client.close(&mut ch).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resnet18_with_a_random_10_percent_mask_matches_the_fixed_point_engine() {
    let model = Model::random(arch::resnet18(10).unwrap(), 8, Some(0.1)).unwrap();
    check_against_fixed_point(model, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_leave_the_server_serving() {
    let model = Model::random(arch::small_cnn(10).unwrap(), 3, Some(0.2)).unwrap();
    let (addr, served) = start_server_timeout(&model, Duration::from_secs(5)).await;
    let hash = served.public.hash.clone();

    // Mid-offline: ask for an inference, then disappear.
    let mut ch = connect(&addr).await;
    let _c = ClientSession::handshake(&mut ch, Some(&hash)).await.unwrap();
    ch.send_msg(MsgKind::Begin, &Request::Infer).await.unwrap();
    drop(ch);

    // Mid-online: finish the offline phase, send the masked input, disappear.
    let mut ch = connect(&addr).await;
    let mut c = ClientSession::handshake(&mut ch, Some(&hash)).await.unwrap();
    let _prepared = c.prepare(&mut ch).await.unwrap();
    ch.send_now(MsgKind::OnlineInput, &vec![0u8; 8 * 28 * 28]).await.unwrap();
    drop(ch);

    // Two well-behaved clients at once are both served.
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let (addr, hash) = (addr.clone(), hash.clone());
            tokio::spawn(async move {
                let mut ch = connect(&addr).await;
                let mut c = ClientSession::handshake(&mut ch, Some(&hash)).await.unwrap();
                let x = random_images(1, 28 * 28, i).pop().unwrap();
                let r = c.infer(&mut ch, &x).await.unwrap();
                c.close(&mut ch).await.unwrap();
                r.logits.len()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 10);
    }
}

/// Reads frames until the server's error frame; returns its text.
async fn server_error(s: &mut TcpStream) -> String {
    loop {
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).await.expect("server answers before closing");
        let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        if h[6] == MsgKind::Error as u8 {
            return String::from_utf8(payload).unwrap();
        }
    }
}

/// A frame header announcing `len` payload bytes of `kind`, followed by `sent` zero bytes.
fn raw_frame(kind: MsgKind, len: u32, sent: usize) -> Vec<u8> {
    let mut frame = len.to_le_bytes().to_vec();
    frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    frame.push(kind as u8);
    frame.extend(std::iter::repeat_n(0u8, sent));
    frame
}

/// Reads one whole frame (e.g. the server's greeting) and drops it.
async fn skip_frame(s: &mut TcpStream) {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).await.unwrap();
    let mut payload = vec![0u8; u32::from_le_bytes(h[..4].try_into().unwrap()) as usize];
    s.read_exact(&mut payload).await.unwrap();
}

/// Writes `bytes` one at a time, `every` apart, and stops once `stop_after` has passed since
/// `start`: writing to a socket the server has closed would reset it and lose its error frame.
async fn trickle(s: &mut TcpStream, bytes: &[u8], every: Duration, start: std::time::Instant, stop_after: Duration) {
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
        if start.elapsed() > stop_after {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_clear_errors() {
    let model = Model::random(arch::small_cnn(10).unwrap(), 3, Some(0.05)).unwrap();
    let (addr, served) = start_server_timeout(&model, Duration::from_secs(5)).await;
    let header = |len: u32, version: u16, kind: MsgKind| {
        let mut h = len.to_le_bytes().to_vec();
        h.extend_from_slice(&version.to_le_bytes());
        h.push(kind as u8);
        h
    };
    let next_version = format!("protocol version {}", PROTOCOL_VERSION + 1);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "protocol version"),
        (header(u32::MAX, PROTOCOL_VERSION, MsgKind::HelloAck), "exceeds the limit"),
        (header(4, PROTOCOL_VERSION + 1, MsgKind::HelloAck), &next_version),
        ([header(3, PROTOCOL_VERSION, MsgKind::HelloAck), vec![0xff; 3]].concat(), "malformed HelloAck"),
    ];
    for (bytes, expected) in cases {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let msg = server_error(&mut s).await;
        assert!(msg.contains(expected), "sent {:?}: got {msg:?}", &bytes[..bytes.len().min(12)]);
    }

    // A server speaking another version is refused by the client.
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = fake.accept().await.unwrap();
        s.write_all(&header(0, 9, MsgKind::Hello)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut ch = connect(&fake_addr.to_string()).await;
    let err = ClientSession::handshake(&mut ch, None).await.err().expect("refused");
    assert!(err.to_string().contains("protocol version 9"), "{err}");

    // And the real server still serves.
    let mut ch = connect(&addr).await;
    let mut c = ClientSession::handshake(&mut ch, Some(&served.public.hash)).await.unwrap();
    assert_eq!(c.infer(&mut ch, &vec![0.5; 28 * 28]).await.unwrap().logits.len(), 10);
}

#[test]
fn demo_prints_the_report_as_json() {
    let out = pi().args(["demo", "--json", "--count", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "inferences",
        "accuracy_pi",
        "accuracy_f32",
        "agreement_fixed_point",
        "offline_s_p50",
        "online_s_p50",
        "offline_bytes",
        "online_bytes",
        "relus",
    ] {
        assert!(!r[key].is_null(), "missing {key} in {r}");
    }
    assert_eq!(r["inferences"], 3);
    assert_eq!(r["agreement_fixed_point"], 1.0);
    assert_eq!((r["truncation"].as_str(), r["truncations"].as_u64()), (Some("local"), Some(0)));

    // `--truncation exact`: the private logits are the fixed-point engine's exactly, at the cost of
    // garbled truncations and one more round per rescaled output.
    let out = pi().args(["demo", "--json", "--count", "2", "--truncation", "exact"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["truncation"], "exact");
    assert!(e["truncations"].as_u64().unwrap() > 10_000, "{e}");
    assert!(e["online_rounds"].as_u64() > r["online_rounds"].as_u64());
    for rec in e["per_inference"].as_array().unwrap() {
        assert_eq!(rec["max_logit_error"].as_f64(), Some(0.0), "{rec}");
    }

    // `--sign-bits 12`: kept ReLUs read the sign from 12 top bits; fewer online bytes, the same
    // predictions as the fixed-point engine on these images.
    let out = pi().args(["demo", "--json", "--count", "3", "--sign-bits", "12"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["sign_bits"], "12");
    assert_eq!(s["agreement_fixed_point"], 1.0);
    assert!(s["online_bytes"].as_u64().unwrap() < r["online_bytes"].as_u64().unwrap() * 3 / 4, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_extra_clients_clearly() {
    let model = Model::random(arch::small_cnn(10).unwrap(), 3, Some(0.05)).unwrap();
    let limits = Limits { max_sessions: 1, max_inferences_per_session: 1, ..Limits::default() };
    let (addr, served) = start_server(&model, limits).await;

    let mut first = connect(&addr).await;
    let mut c = ClientSession::handshake(&mut first, Some(&served.public.hash)).await.unwrap();
    let mut second = TcpStream::connect(&addr).await.unwrap();
    assert!(server_error(&mut second).await.contains("server busy"));
    // The one allowed inference works; a second one in the same session is refused.
    c.infer(&mut first, &vec![0.1; 28 * 28]).await.unwrap();
    let err = c.infer(&mut first, &vec![0.1; 28 * 28]).await.expect_err("refused");
    assert!(err.to_string().contains("session limit"), "{err}");
}

/// The parties as libraries: `Server::bind` + `Client::connect(..).infer(..)`, checked against the
/// fixed-point engine, and the same over an emulated link (the stream adapter under the channel),
/// whose round trips must show in the online latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_and_client_agree_with_the_fixed_point_engine() {
    use pi_channel::Link;
    use pi_client::{Client, ClientOptions, ClientTransport};
    use pi_server::{Server, ServerOptions};
    let model = Model::random(arch::small_cnn(10).unwrap(), 6, Some(0.1)).unwrap();
    let served = prepared(&model);
    // Over TLS with a pinned self-signed certificate, as `pi serve` and `pi infer` run by default.
    let tls = Arc::new(pi_tls::TlsServer::self_signed().unwrap());
    let pinned = ClientTransport::pinned(tls.fingerprint()).unwrap();
    let server = Server::bind(served, &ServerOptions::new("127.0.0.1:0", ServerTransport::Tls(tls))).await.unwrap();
    let (addr, hash) = (server.local_addr().to_string(), server.model().public.hash.clone());
    let kept = server.model().public.kept_relus();
    tokio::spawn(server.run());
    let ring = RingModel::new(&model.fold_batchnorm(), FixedPoint::DEFAULT).unwrap();
    let images = random_images(2, 28 * 28, 9);

    let rtt = Duration::from_millis(20);
    for link in [None, Some(Link::new(1e9, rtt).unwrap())] {
        let options = ClientOptions { expected_hash: Some(hash.clone()), link, ..ClientOptions::new(pinned.clone()) };
        let mut client = Client::connect(&addr, &options).await.unwrap();
        assert_eq!(client.public().hash, hash);
        for x in &images {
            let out = client.infer(x).await.unwrap();
            let want = ring.decode_output(&ring.run(x).unwrap());
            assert_eq!(out.prediction, argmax(&want));
            let err = want.iter().zip(out.logits()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < 1e-2, "PI {:?} vs fixed point {want:?}", out.logits());
            assert_eq!(out.costs.relus, kept);
            if link.is_some() {
                // Every online round trip crosses the emulated link once each way.
                let floor = rtt.mul_f64(out.costs.online_rounds as f64 * 0.9);
                assert!(out.costs.online >= floor, "online {:?} < {floor:?}", out.costs.online);
            }
        }
        client.close().await.unwrap();
    }
}

/// Settings with which every session would fail stop `pi serve` at start, with one error line that
/// names the problem once.
#[test]
fn pi_serve_refuses_settings_that_fail_every_session() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/small-cnn-fmnist.safetensors");
    for (flags, says) in [
        (vec!["--max-frame-mib", "0"], "below the 16 MiB"),
        (vec!["--max-frame-mib", "18446744073709551615"], "beyond any frame size"),
        (vec!["--max-frame-mib", "8192"], "exceeds the 4 GiB"),
        (vec!["--timeout-secs", "0"], "read timeout of 0 s"),
        (vec!["--max-sessions", "0"], "at least one session"),
        (vec!["--ring-bits", "62"], "ring width l = 62"),
    ] {
        let out = pi()
            .args(["serve", "--model", model.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(&flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{flags:?}: {err}"));
        assert_eq!(line.matches(says).count(), 1, "{flags:?}: {line}");
    }
}

/// A client that trickles its handshake, one byte every 400 ms and then nothing (each of the
/// server's reads would still finish within the 10 s read timeout), holds the only session slot
/// until the 2 s handshake deadline, not longer: it is told why, and a valid client that comes
/// after is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_loses_its_slot_at_the_handshake_deadline() {
    let model = Model::random(arch::small_cnn(10).unwrap(), 6, Some(0.1)).unwrap();
    let limits = Limits {
        max_sessions: 1,
        read_timeout: Duration::from_secs(10),
        handshake_deadline: Duration::from_secs(2),
        ..Limits::default()
    };
    let (addr, served) = start_server(&model, limits).await;

    let start = std::time::Instant::now();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    skip_frame(&mut slow).await;
    let frame = raw_frame(MsgKind::HelloAck, 1000, 1000);
    let trickle = tokio::spawn(async move {
        trickle(&mut slow, &frame, Duration::from_millis(400), start, Duration::from_millis(1700)).await;
        slow
    });
    // While the slow client is within its deadline, the slot is taken.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut early = TcpStream::connect(&addr).await.unwrap();
    assert!(server_error(&mut early).await.contains("server busy"));
    // The trickler is told why it lost the session.
    let mut slow = trickle.await.unwrap();
    let said = server_error(&mut slow).await;
    assert!(said.contains("handshake not finished within the server's 2 s deadline"), "{said}");
    // The slot is free again: a valid client is served.
    let mut ch = connect(&addr).await;
    let mut c = ClientSession::handshake(&mut ch, Some(&served.public.hash)).await.unwrap();
    c.infer(&mut ch, &vec![0.1; 28 * 28]).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(30));
}

/// What a man in the middle does to one direction of a connection.
#[derive(Clone, Copy)]
enum Fault {
    /// Flip one bit of the byte at this offset.
    Flip(u64),
    /// Forward the bytes before this offset, then close the direction (a peer killed or a link
    /// cut at that point).
    Cut(u64),
}

/// Relays `from` to `to`, applying `fault` (if any) on the way.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Option<Fault>,
) {
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = 0u64;
    loop {
        let mut n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let here = |at: u64| at >= seen && at < seen + n as u64;
        match fault {
            Some(Fault::Flip(at)) if here(at) => buf[(at - seen) as usize] ^= 0x10,
            Some(Fault::Cut(at)) if here(at) => n = (at - seen) as usize,
            _ => {}
        }
        seen += n as u64;
        if to.write_all(&buf[..n]).await.is_err() || matches!(fault, Some(Fault::Cut(at)) if seen >= at) {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A man in the middle between one client and `server`: relays both directions and applies
/// `fault` to the server-to-client stream (`to_client`) or the other one.
async fn faulty_proxy(server: String, to_client: bool, fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(&server).await.unwrap();
        let ((cr, cw), (sr, sw)) = (client.into_split(), upstream.into_split());
        tokio::join!(relay(sr, cw, to_client.then_some(fault)), relay(cr, sw, (!to_client).then_some(fault)));
    });
    addr
}

/// Under TLS, one bit flipped anywhere on the path (handshake, HE keys, garbled tables, online
/// messages) ends the session with an error that says so, never with a wrong prediction; the
/// server goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_in_transit_ends_the_session_with_a_clear_error_under_tls() {
    use pi_client::{Client, ClientOptions, ClientTransport};
    let model = Model::random(arch::small_cnn(10).unwrap(), 5, Some(0.1)).unwrap();
    let served = Arc::new(prepared(&model));
    let tls = Arc::new(pi_tls::TlsServer::self_signed().unwrap());
    let options = ClientOptions::new(ClientTransport::pinned(tls.fingerprint()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(pi_server::serve(listener, served, Limits::default(), ServerTransport::Tls(tls)));
    let x = random_images(1, 28 * 28, 3).pop().unwrap();
    let infer = |to: String| {
        let (options, x) = (options.clone(), x.clone());
        async move {
            let mut c = Client::connect(&to, &options).await?;
            let out = c.infer(&x).await?;
            c.close().await?;
            Ok::<_, pi_client::ClientError>(out.prediction)
        }
    };
    let want = infer(addr.clone()).await.unwrap();
    // How much crosses each way, so that every flip below lands inside a session.
    let (bytes_down, bytes_up) = {
        let mut c = Client::connect(&addr, &options).await.unwrap();
        c.infer(&x).await.unwrap();
        let n = c.counters();
        c.close().await.unwrap();
        (n.received, n.sent)
    };
    for (to_client, at) in
        [(true, 700), (false, 300), (true, bytes_down / 2), (false, bytes_up / 2), (false, bytes_up - 200)]
    {
        let proxy = faulty_proxy(addr.clone(), to_client, Fault::Flip(at)).await;
        let e = infer(proxy).await.expect_err("a tampered session fails").to_string();
        assert!(e.contains("altered or corrupted in transit") || e.contains("TLS handshake failed"), "{e}");
    }
    assert_eq!(infer(addr).await.unwrap(), want);
}

/// `--relu-bits auto` sizes circuits only from calibration inputs; with none it uses the full ring
/// width rather than guess (a too-narrow circuit gives wrong ReLUs silently).
#[test]
fn auto_widths_without_calibration_inputs_fall_back_to_full_width() {
    use pi_server::Calibration;
    let model = Model::random(arch::small_cnn(10).unwrap(), 3, Some(0.2)).unwrap();
    let widths = |calibration: Calibration| {
        let served =
            pi_server::prepare_model(&model, &PrepareOptions { calibration, ..PrepareOptions::default() }).unwrap();
        let p = &served.public;
        p.graph
            .nodes
            .iter()
            .zip(&p.relu_bits)
            .filter(|(n, _)| n.op.kind() == "relu")
            .map(|(_, &k)| k)
            .collect::<Vec<_>>()
    };
    let l = FixedPoint::DEFAULT.l;
    assert!(widths(Calibration::None).iter().all(|&k| k == l));
    let calibrated = widths(Calibration::Dataset(bundled_data()));
    assert!(calibrated.iter().all(|&k| k < l), "{calibrated:?}");
    // Top sign bits at full width would zero every activation below 2^(l - f - M) units: refused.
    use pi_server::{SignBits, SignBitsChoice};
    for (choice, shown) in [(SignBitsChoice::Fixed(SignBits::Top(12)), "12"), (SignBitsChoice::Auto, "auto")] {
        let opts = PrepareOptions { sign_bits: choice, ..PrepareOptions::default() };
        let e = pi_server::prepare_model(&model, &opts).err().expect("refused").to_string();
        assert!(e.contains(&format!("--sign-bits {shown} needs calibrated circuit widths")), "{e}");
    }
    // `auto` with calibration images picks a bit count in the range it tries.
    let calibration = Calibration::Dataset(bundled_data());
    let opts = PrepareOptions { sign_bits: SignBitsChoice::Auto, calibration, ..PrepareOptions::default() };
    let chosen = pi_server::prepare_model(&model, &opts).unwrap().public.sign_bits;
    assert!(matches!(chosen, SignBits::Top(m) if pi_server::SIGN_BITS_AUTO.contains(&m)), "{chosen:?}");
}

/// `--frac-bits auto` on the bundled model drops bits the model does not need (f = 10 of 12 today),
/// and at the chosen `f` the fixed-point engine still predicts as the f32 engine on test images the
/// choice never saw (it calibrates on the training split). Without calibration images it keeps the
/// default rather than guess.
#[test]
fn auto_frac_bits_keep_the_f32_predictions_on_unseen_images() {
    use pi_server::{Calibration, FracBits};
    let model =
        format::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/small-cnn-fmnist.safetensors")).unwrap();
    let chosen = |calibration: Calibration| {
        let opts = PrepareOptions { frac_bits: FracBits::Auto, calibration, ..PrepareOptions::default() };
        pi_server::prepare_model(&model, &opts).unwrap().public.fp
    };
    assert_eq!(chosen(Calibration::None), FixedPoint::DEFAULT);
    let fp = chosen(Calibration::Dataset(bundled_data()));
    assert!(fp.f < FixedPoint::DEFAULT.f, "{fp:?}");
    let folded = model.fold_batchnorm();
    let ring = RingModel::new(&folded, fp).unwrap();
    let ds = pi_client::load_images(&bundled_data(), None).unwrap();
    let n = ds.len().min(300);
    let agree = (0..n)
        .filter(|&i| {
            let x = ds.image(i);
            argmax(&ring.decode_output(&ring.run(x).unwrap()))
                == argmax(&pi_model::engine::run_f32(&folded, x).unwrap())
        })
        .count();
    assert!(agree * 100 >= n * 99, "f = {}: {agree} of {n} test images agree with f32", fp.f);
    assert_eq!("auto".parse::<FracBits>(), Ok(FracBits::Auto));
    assert_eq!("9".parse::<FracBits>(), Ok(FracBits::Fixed(9)));
    assert!("nine".parse::<FracBits>().unwrap_err().contains("expected auto or a bit count"));
}

/// Resident memory of a process, from /proc (Linux).
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 =
        status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

/// Eight clients at once, five inferences each, all served; afterwards the server's memory is back
/// under 200 MB (each session shares the model's HE context instead of building its own: the
/// bundled model took 732 MB here before, 160 MB after).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_clients_are_served_and_the_memory_comes_back() {
    use pi_client::{Client, ClientOptions, ClientTransport};
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/small-cnn-fmnist.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let salt = dir.path().join("m.salt");
    let mut child = pi()
        .args(["serve", "--model", model.to_str().unwrap(), "--listen", "127.0.0.1:0", "--plaintext"])
        .args(["--calibrate", bundled_data().to_str().unwrap(), "--salt-file", salt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().trim_start_matches("listening on ").to_string();
    let pid = child.id();
    let ds = pi_client::load_images(&bundled_data(), None).unwrap();
    let images: Vec<Vec<f32>> = (0..5).map(|i| ds.image(i).to_vec()).collect();
    let idle = rss_mb(pid);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (addr, images) = (addr.clone(), images.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(&addr, &ClientOptions::new(ClientTransport::Plaintext)).await?;
                let mut predictions = Vec::new();
                for x in &images {
                    predictions.push(c.infer(x).await?.prediction);
                }
                c.close().await?;
                Ok::<_, pi_client::ClientError>(predictions)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap().expect("every client is served"));
    }
    assert!(all.windows(2).all(|w| w[0] == w[1]), "the same images get the same predictions: {all:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mb(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert!(after < 200.0, "server RSS {after:.0} MB after the load (idle {idle:.0} MB)");
}

/// A session runs at most the inferences the server announces (its limit, within the statistical
/// budget of the HE replies); a client with more images opens new sessions as it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_when_its_session_is_spent() {
    use pi_client::{ClientOptions, ClientTransport, InferOptions};
    let model = Model::random(arch::small_cnn(10).unwrap(), 3, Some(0.05)).unwrap();
    let (addr, served) = start_server(&model, Limits { max_inferences_per_session: 2, ..Limits::default() }).await;
    // The model's own budget: 2^-40 over the session, and one more inference would exceed it.
    let (per, cap) = (served.distance_per_inference_log2(), served.session_inferences() as f64);
    assert!(per < -40.0 && cap.log2() + per <= -40.0 && (cap + 1.0).log2() + per > -40.0, "{per} {cap}");
    let opts = InferOptions {
        server: addr,
        data: bundled_data(),
        count: 5,
        reference_model: None,
        connection: ClientOptions::new(ClientTransport::Plaintext),
    };
    let report = pi_client::run(&opts, |_, _| {}).await.unwrap();
    assert_eq!(report.inferences, 5);
}

/// The normalisation travels with the model: the server announces it, the client prepares its
/// images with it. Checked against the fixed-point engine run here on the images normalised by
/// the model's statistics, which differ enough from the data format's default to change the logits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_normalises_images_as_the_served_model_says() {
    use pi_client::{ClientOptions, ClientTransport, InferOptions};
    use pi_model::data::{Normalization, Split, load_dir_with};
    let mut model = Model::random(arch::small_cnn(10).unwrap(), 5, Some(0.05)).unwrap();
    model.normalization = Normalization { mean: vec![0.5], std: vec![0.125] };
    let (addr, served) = start_server(&model, Limits::default()).await;
    assert_eq!(served.public.normalization, model.normalization);
    let opts = InferOptions {
        server: addr,
        data: bundled_data(),
        count: 3,
        reference_model: None,
        connection: ClientOptions::new(ClientTransport::Plaintext),
    };
    let report = pi_client::run(&opts, |_, _| {}).await.unwrap();
    let ring = RingModel::new(&model.fold_batchnorm(), FixedPoint::DEFAULT).unwrap();
    let own = load_dir_with(&bundled_data(), Split::Test, Some(model.normalization.clone())).unwrap();
    let default = pi_client::load_images(&bundled_data(), None).unwrap();
    let mut moved = 0f32;
    for (i, rec) in report.per_inference.iter().enumerate() {
        let want = ring.decode_output(&ring.run(own.image(i)).unwrap());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = want.iter().zip(&rec.logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-3 * scale + 1e-2, "PI {:?} vs fixed point {want:?}", rec.logits);
        let other = ring.decode_output(&ring.run(default.image(i)).unwrap());
        moved = moved.max(want.iter().zip(&other).fold(0f32, |m, (a, b)| m.max((a - b).abs())));
    }
    assert!(moved > 0.1, "the two normalisations give logits within {moved}: the test could not fail");
}

/// Clients that vanish anywhere in a session cost only their own: each session is cut off at one
/// of 24 places spread over both directions' byte streams (greeting, HE keys, base OTs, HE
/// queries and replies, garbled tables, OT, online messages), while a valid client is served
/// alongside. Each cut session fails on the client's side, none hangs, and every valid client gets
/// the prediction an undisturbed session gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cut_off_anywhere_cost_only_their_own_session() {
    use pi_client::{Client, ClientOptions};
    let model = Model::random(arch::small_cnn(10).unwrap(), 8, Some(0.05)).unwrap();
    let (addr, _) = start_server_timeout(&model, Duration::from_secs(5)).await;
    let options = ClientOptions::new(pi_client::ClientTransport::Plaintext);
    let x = random_images(1, 28 * 28, 4).pop().unwrap();
    let infer = |to: String| {
        let (options, x) = (options.clone(), x.clone());
        async move {
            let mut c = Client::connect(&to, &options).await?;
            let out = c.infer(&x).await?;
            Ok::<_, pi_client::ClientError>((out.prediction, c.counters()))
        }
    };
    let (want, n) = infer(addr.clone()).await.unwrap();
    let spread = |total: u64| {
        let mut at: Vec<u64> = vec![0, 3, HEADER_LEN as u64 + 1, 200];
        at.extend([100, 20, 10, 5, 3, 2].iter().map(|d| total / d));
        at.extend([total * 9 / 10, total - 100]);
        at
    };
    let cuts: Vec<(bool, u64)> = spread(n.received)
        .into_iter()
        .map(|at| (true, at))
        .chain(spread(n.sent).into_iter().map(|at| (false, at)))
        .collect();
    assert_eq!(cuts.len(), 24);
    for (to_client, at) in cuts {
        let proxy = faulty_proxy(addr.clone(), to_client, Fault::Cut(at)).await;
        let (cut, valid) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(30), infer(proxy)),
            tokio::time::timeout(Duration::from_secs(60), infer(addr.clone()))
        );
        let cut = cut.unwrap_or_else(|_| panic!("cut at {at} (to client: {to_client}) hung"));
        assert!(cut.is_err(), "a session cut at byte {at} (to client: {to_client}) cannot finish");
        assert_eq!(valid.expect("served in time").unwrap().0, want, "cut at {at} (to client: {to_client})");
    }
}

/// Two clients that hold both slots of `max_sessions: 2` by trickling a message mid-inference
/// (one byte every 0.5 s, inside the read timeout) lose them at the inference deadline and are
/// told why; a valid client that keeps asking for a slot is served well within 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_holding_every_slot_lose_them_at_the_inference_deadline() {
    let model = Model::random(arch::small_cnn(10).unwrap(), 9, Some(0.05)).unwrap();
    let limits = Limits {
        max_sessions: 2,
        read_timeout: Duration::from_secs(30),
        inference_deadline: Duration::from_secs(4),
        ..Limits::default()
    };
    let (addr, served) = start_server(&model, limits).await;
    let hash = served.public.hash.clone();
    let start = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..2 {
        // One socket, two descriptors: the channel speaks the handshake, the raw one trickles.
        let std_stream = std::net::TcpStream::connect(&addr).unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let mut s = TcpStream::from_std(std_stream.try_clone().unwrap()).unwrap();
        let mut ch = Channel::new(TcpStream::from_std(std_stream).unwrap());
        ClientSession::handshake(&mut ch, Some(&hash)).await.unwrap();
        ch.send_msg(MsgKind::Begin, &Request::Infer).await.unwrap();
        drop(ch); // closes one descriptor only: the socket stays open through the other
        slow.push(tokio::spawn(async move {
            // The first HE query's frame, one byte at a time.
            let frame = raw_frame(MsgKind::HeQuery, 100, 100);
            trickle(&mut s, &frame, Duration::from_millis(500), start, Duration::from_millis(3500)).await;
            server_error(&mut s).await
        }));
    }
    let mut refused = 0;
    let served_at = loop {
        let mut ch = connect(&addr).await;
        match ClientSession::handshake(&mut ch, Some(&hash)).await {
            Ok(mut c) => {
                c.infer(&mut ch, &vec![0.1; 28 * 28]).await.unwrap();
                break start.elapsed();
            }
            Err(e) => {
                assert!(e.to_string().contains("server busy"), "{e}");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert!(refused > 0, "the slow clients held both slots");
    assert!(served_at < Duration::from_secs(60), "served after {served_at:?}");
    for s in slow {
        let said = s.await.unwrap();
        assert!(said.contains("inference not finished within the server's 4 s deadline"), "{said}");
    }
}

/// A flood of connections that announce 60 MiB frames and send little, plus silent ones, makes
/// `pi serve` allocate only what arrives (the payload buffer grows with the bytes), and a valid
/// client is served meanwhile.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_oversized_frame_headers_costs_no_memory() {
    use pi_client::{Client, ClientOptions, ClientTransport};
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/small-cnn-fmnist.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let salt = dir.path().join("m.salt");
    let mut child = pi()
        .args(["serve", "--model", model.to_str().unwrap(), "--listen", "127.0.0.1:0", "--plaintext"])
        .args(["--max-sessions", "40", "--salt-file", salt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().trim_start_matches("listening on ").to_string();
    let pid = child.id();
    let idle = rss_mb(pid);
    let mut held = Vec::new();
    for i in 0..32 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        skip_frame(&mut s).await;
        if i < 28 {
            s.write_all(&raw_frame(MsgKind::HelloAck, 60 << 20, 64 << 10)).await.unwrap();
        }
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = rss_mb(pid);
    let x = pi_client::load_images(&bundled_data(), None).unwrap().image(0).to_vec();
    let mut c = Client::connect(&addr, &ClientOptions::new(ClientTransport::Plaintext)).await.unwrap();
    c.infer(&x).await.unwrap();
    c.close().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    drop(held);
    // 32 sessions x 60 MiB would be 1.9 GB; what arrived is 28 x 64 KiB.
    assert!(flooded - idle < 80.0, "server RSS {idle:.0} MB idle, {flooded:.0} MB flooded");
}

/// `--max-memory` sizes the session limit from the prepared model's resident memory and the most
/// one session can hold: a budget that holds no session is refused at start; with room for N
/// sessions, an (N+1)th client is refused as busy while N run, and the server's resident memory
/// stays within the budget throughout.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_follows_the_memory_budget() {
    use pi_client::{Client, ClientOptions, ClientTransport};
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/small-cnn-fmnist.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let salt = dir.path().join("m.salt");
    let serve = |budget: &str| {
        let mut c = pi();
        c.args(["serve", "--model", model.to_str().unwrap(), "--listen", "127.0.0.1:0", "--plaintext"])
            .args(["--max-memory", budget, "--salt-file", salt.to_str().unwrap()])
            .env("NO_COLOR", "1");
        c
    };
    let out = serve("1").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("holds no session"), "{err}");

    let budget_mb = 200.0;
    let mut child = serve("200").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().trim_start_matches("listening on ").to_string();
    // The log line with the limit; the rest of the log is drained (a closed pipe would fail the
    // server's next log write).
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(n) = l.split("at most ").nth(1).and_then(|r| r.split(' ').next()) {
                let _ = tx.send(n.parse::<usize>().ok());
            }
        }
    });
    let sessions = rx.recv().unwrap().expect("the server logs its session limit");
    assert!(sessions >= 1);
    let pid = child.id();
    let options = ClientOptions::new(ClientTransport::Plaintext);
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(Client::connect(&addr, &options).await.unwrap());
    }
    let busy = Client::connect(&addr, &options).await.err().expect("no slot left").to_string();
    assert!(busy.contains("server busy"), "{busy}");
    let ds = pi_client::load_images(&bundled_data(), None).unwrap();
    let images: Vec<Vec<f32>> = (0..3).map(|i| ds.image(i).to_vec()).collect();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (done, watch) = (Arc::new(std::sync::atomic::AtomicBool::new(false)), peak.clone());
    let watcher = {
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                watch.fetch_max(rss_mb(pid) as u64, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let images = images.clone();
            tokio::spawn(async move {
                for x in &images {
                    c.infer(x).await?;
                }
                c.close().await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("every admitted session is served");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed) as f64;
    eprintln!("memory budget {budget_mb} MB: {sessions} sessions, peak RSS {peak} MB");
    assert!(peak > 0.0 && peak <= budget_mb, "peak RSS {peak} MB with {sessions} sessions, budget {budget_mb} MB");
}

/// `pi serve` whose log reader goes away (its stderr a pipe closed by the reader, as when a log
/// collector dies) goes on serving: log lines are dropped, not fatal.
#[test]
fn pi_serve_survives_a_closed_log_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let model = init_model(dir.path(), "small-cnn", "0.05");
    let mut child = pi()
        .args(["serve", "--model", model.to_str().unwrap(), "--listen", "127.0.0.1:0", "--plaintext"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().trim_start_matches("listening on ").to_string();
    for _ in 0..2 {
        // Each session logs on connect and on close: the second one runs after failed log writes.
        let out = pi()
            .args(["infer", "--server", &addr, "--plaintext", "--data", bundled_data().to_str().unwrap()])
            .args(["--count", "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(child.try_wait().unwrap().is_none(), "the server exited");
    let _ = child.kill();
    let _ = child.wait();
}
