//! Hostile peers, generated: arbitrary frame sequences against both parties, from the first
//! message and after each phase a real peer completed (handshake, the request of an inference,
//! the offline phase). Every case must end with an error or a result, never a panic, and within
//! the channel's timeout. Bounded by the case counts below (about 20 s in release).

use crate::client::ClientSession;
use crate::public::PublicModel;
use crate::server::{ServedModel, ServerSession};
use crate::share::Truncation;
use crate::{Hello, Request};
use pi_channel::{Channel, MsgKind};
use pi_model::engine::RingModel;
use pi_model::{FixedPoint, Model, arch};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Every frame kind of the protocol.
const KINDS: [MsgKind; 16] = [
    MsgKind::Hello,
    MsgKind::HelloAck,
    MsgKind::Error,
    MsgKind::Begin,
    MsgKind::OtBase,
    MsgKind::OtExtension,
    MsgKind::GarbledTables,
    MsgKind::GarblerLabels,
    MsgKind::OutputDecoding,
    MsgKind::HeKeys,
    MsgKind::HeQuery,
    MsgKind::HeReply,
    MsgKind::OnlineInput,
    MsgKind::OnlineReluOutput,
    MsgKind::OnlineLogits,
    MsgKind::Data,
];

/// The served model: variant 0 with local truncation, 1 with exact truncation (which adds garbled
/// truncation layers), 2 with local truncation and kept ReLUs reading 12 sign bits (stochastic
/// ReLU layers).
fn model(variant: usize) -> Arc<ServedModel> {
    static MODELS: [OnceLock<Arc<ServedModel>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    MODELS[variant]
        .get_or_init(|| {
            let m = Model::random(arch::small_cnn(10).unwrap(), 9, Some(0.05)).unwrap().fold_batchnorm();
            let ring = RingModel::new(&m, FixedPoint::DEFAULT).unwrap();
            let mut public = PublicModel::new(&ring.model, "fuzz-hash".into(), ring.fp, None).unwrap();
            public.truncation = if variant == 1 { Truncation::Exact } else { Truncation::Local };
            if variant == 2 {
                public.sign_bits = crate::public::SignBits::Top(12);
            }
            Arc::new(ServedModel::new(ring, public, usize::MAX).unwrap())
        })
        .clone()
}

/// A payload: random bytes, or bincode-looking lengths that claim far more than is sent.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..96),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(n, tail)| {
            let mut v = vec![0xfd];
            v.extend_from_slice(&n.to_le_bytes());
            v.extend(tail);
            v
        }),
        (0usize..6).prop_map(|k| vec![0u8; [8, 784 * 8, 1 << 12, 1 << 16, 7, 1][k]]),
    ]
}

fn frames() -> impl Strategy<Value = Vec<(MsgKind, Vec<u8>)>> {
    proptest::collection::vec((proptest::sample::select(KINDS.to_vec()), payload()), 0..6)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// How far a real client gets before the frames are injected.
#[derive(Clone, Copy, Debug)]
enum ClientPhase {
    Start,
    Handshaken,
    Requested,
    Prepared,
}

/// Runs the server (its session loop, as pi-server runs it) against a client that follows the
/// protocol up to `phase`, then sends `frames` and hangs up. The server's task must end on its
/// own, without panicking.
async fn server_case(phase: ClientPhase, variant: usize, frames: Vec<(MsgKind, Vec<u8>)>) {
    let timeout = Duration::from_secs(2);
    let (c, s) = Channel::memory_pair();
    let (mut c, mut s) = (c.with_timeout(timeout), s.with_timeout(timeout));
    let model = model(variant);
    let server = tokio::spawn(async move {
        let mut session = ServerSession::handshake(&mut s, model, 4).await?;
        while session.next_request(&mut s).await?.is_some() {
            session.serve_inference(&mut s).await?;
        }
        Ok::<_, crate::InferenceError>(())
    });
    if !matches!(phase, ClientPhase::Start)
        && let Ok(mut session) = ClientSession::handshake(&mut c, Some("fuzz-hash")).await
    {
        match phase {
            ClientPhase::Requested => {
                let _ = c.send_msg(MsgKind::Begin, &Request::Infer).await;
            }
            ClientPhase::Prepared => {
                let _ = session.prepare(&mut c).await;
            }
            ClientPhase::Start | ClientPhase::Handshaken => {}
        }
    }
    for (kind, p) in &frames {
        if c.send_now(*kind, p).await.is_err() {
            break;
        }
    }
    drop(c);
    let joined = tokio::time::timeout(Duration::from_secs(20), server).await.expect("the server's session ends");
    let Ok(result) = joined else { panic!("the server's session panicked: {joined:?}") };
    // Everything here is the client's doing: the server names it instead of "internal error".
    if let Err(e) = result {
        assert_ne!(e.peer_message().as_deref(), Some("internal error"), "{e:?}");
    }
}

/// A valid greeting's bytes (to mutate).
fn hello_bytes(variant: usize) -> Vec<u8> {
    static BYTES: [OnceLock<Vec<u8>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    BYTES[variant]
        .get_or_init(|| {
            runtime().block_on(async {
                let (mut a, mut b) = Channel::memory_pair();
                let hello = Hello {
                    version: pi_channel::PROTOCOL_VERSION,
                    model: model(variant).public.clone(),
                    session_inferences: 4,
                };
                a.send_msg(MsgKind::Hello, &hello).await.unwrap();
                b.recv(MsgKind::Hello).await.unwrap()
            })
        })
        .clone()
}

/// Runs a client against a server that greets with `hello` and then sends `frames`.
async fn client_case(hello: Vec<u8>, frames: Vec<(MsgKind, Vec<u8>)>) {
    let (c, mut s) = Channel::memory_pair();
    let mut c = c.with_timeout(Duration::from_secs(2));
    let client = tokio::spawn(async move {
        let mut session = ClientSession::handshake(&mut c, None).await?;
        let x = vec![0.5f32; 28 * 28];
        session.infer(&mut c, &x).await.map(|_| ())
    });
    let _ = s.send_now(MsgKind::Hello, &hello).await;
    for (kind, p) in &frames {
        if s.send_now(*kind, p).await.is_err() {
            break;
        }
    }
    drop(s);
    let joined = tokio::time::timeout(Duration::from_secs(20), client).await.expect("the client ends");
    assert!(joined.is_ok(), "the client panicked: {joined:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_server_survives_any_frames_at_any_phase(phase in 0usize..4, variant in 0usize..3, frames in frames()) {
        let phase = [ClientPhase::Start, ClientPhase::Handshaken, ClientPhase::Requested, ClientPhase::Prepared][phase];
        runtime().block_on(server_case(phase, variant, frames));
    }

    #[test]
    fn a_client_survives_any_greeting_and_frames(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                                                 cut in proptest::option::of(any::<prop::sample::Index>()),
                                                 variant in 0usize..3,
                                                 frames in frames()) {
        let mut hello = hello_bytes(variant);
        for (i, b) in flips {
            let i = i.index(hello.len());
            hello[i] ^= b;
        }
        if let Some(cut) = cut {
            hello.truncate(cut.index(hello.len()));
        }
        runtime().block_on(client_case(hello, frames));
    }
}
