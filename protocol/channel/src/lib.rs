//! Length-prefixed, versioned frames over any async byte stream (tokio TCP or an in-memory pipe),
//! with hard size limits, read timeouts and byte counters per direction.
//!
//! Frame layout (little endian): `len: u32 | version: u16 | kind: u8 | payload[len]`.
//!
//! [`link`] emulates a slower network (bandwidth and latency, overlapping computation) under the channel;
//! [`pipeline`] streams frames computed on the blocking pool.

#![forbid(unsafe_code)]

pub mod link;
pub mod pipeline;

pub use link::{Link, Shaped};

use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

/// Wire protocol version; bumped on any incompatible change of a message (3: the greeting
/// carries the model's input normalisation; 4: and the server's truncation, and a garbled
/// layer's header its gadget; 5: and how kept ReLUs read the sign, with the stochastic ReLU's
/// gadget).
pub const PROTOCOL_VERSION: u16 = 5;
/// Bytes of the frame header.
pub const HEADER_LEN: usize = 7;
/// Default upper bound on a single frame's payload (bulk data is streamed in many frames).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
/// Default read timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a frame carries. The numeric values are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgKind {
    /// Server greeting: protocol version, model hash, architecture (bincode).
    Hello = 1,
    /// Client's answer to the greeting.
    HelloAck = 2,
    /// A fatal error description (UTF-8); ends the session.
    Error = 3,
    /// Client asks for one inference (offline phase starts).
    Begin = 4,
    /// Base-OT messages.
    OtBase = 10,
    /// OT-extension matrix / correction messages.
    OtExtension = 11,
    /// Garbled tables (bulk, streamed).
    GarbledTables = 20,
    /// Wire labels for the garbler's own inputs.
    GarblerLabels = 21,
    /// Output decoding information.
    OutputDecoding = 22,
    /// HE: client's public material (e.g. public key for flooding).
    HeKeys = 30,
    /// HE: client's encrypted mask.
    HeQuery = 31,
    /// HE: server's masked, flooded reply.
    HeReply = 32,
    /// Online: client's masked input `x - r`.
    OnlineInput = 40,
    /// Online: the client's masked ReLU outputs, sent back to the server.
    OnlineReluOutput = 41,
    /// Online: server's share of the logits.
    OnlineLogits = 42,
    /// Generic bulk payload for tests and benchmarks.
    Data = 50,
}

impl MsgKind {
    fn from_u8(b: u8) -> Option<Self> {
        use MsgKind::*;
        Some(match b {
            1 => Hello,
            2 => HelloAck,
            3 => Error,
            4 => Begin,
            10 => OtBase,
            11 => OtExtension,
            20 => GarbledTables,
            21 => GarblerLabels,
            22 => OutputDecoding,
            30 => HeKeys,
            31 => HeQuery,
            32 => HeReply,
            40 => OnlineInput,
            41 => OnlineReluOutput,
            42 => OnlineLogits,
            50 => Data,
            _ => return None,
        })
    }
}

/// bincode with a decoding limit, so a length prefix inside a message cannot make us allocate more
/// than a frame could carry.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DEFAULT_MAX_FRAME>()
}

/// Longest peer error text kept (the rest is cut), so a peer cannot flood logs.
const MAX_ERROR_TEXT: usize = 1024;
/// Largest `Error` frame accepted (the text is cut to [`MAX_ERROR_TEXT`] when shown).
const MAX_ERROR_FRAME: usize = 64 << 10;
/// A frame's payload buffer grows by at most this much ahead of the bytes received.
const READ_CHUNK: usize = 1 << 20;

/// Why a channel operation failed. Every variant is a clean, reportable error: nothing from the peer panics.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    /// The stream under the channel (TLS) refused what arrived: a record failed its integrity
    /// check, or the peer's TLS ended the connection with an alert.
    #[error("secure transport refused the connection's data ({0}): a message was altered or corrupted in transit")]
    Integrity(String),
    #[error("no data from peer for {0:?}")]
    Timeout(Duration),
    /// A write could not finish: the peer stopped reading (its receive buffer and ours are full).
    #[error("peer took none of our data for {0:?} (it stopped reading)")]
    WriteTimeout(Duration),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("peer speaks protocol version {got}, this build speaks {expected}")]
    WrongVersion { got: u16, expected: u16 },
    #[error(
        "peer speaks TLS and this side runs without it (--plaintext): use TLS on both sides or --plaintext on both"
    )]
    PeerSpeaksTls,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("expected a {expected:?} message, got {got:?}")]
    UnexpectedKind { expected: MsgKind, got: MsgKind },
    #[error("malformed {kind:?} message: {reason}")]
    Malformed { kind: MsgKind, reason: String },
    #[error("peer reported an error: {0}")]
    Remote(String),
}

/// A blocking background task panicked or was cancelled (one type for every crate that offloads
/// work with [`blocking`]).
#[derive(Debug, thiserror::Error)]
#[error("background task failed: {0}")]
pub struct TaskFailed(String);

impl From<tokio::task::JoinError> for TaskFailed {
    fn from(e: tokio::task::JoinError) -> Self {
        TaskFailed(e.to_string())
    }
}

/// Runs CPU-bound work on tokio's blocking pool, so a session's task does not stall the runtime.
pub async fn blocking<T, F>(f: F) -> Result<T, TaskFailed>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Bytes moved through a channel, per direction (headers included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub sent: u64,
    pub received: u64,
}

impl Counters {
    /// Bytes moved since `earlier`.
    pub fn since(&self, earlier: Counters) -> Counters {
        Counters { sent: self.sent - earlier.sent, received: self.received - earlier.received }
    }
    pub fn total(&self) -> u64 {
        self.sent + self.received
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// A framed, counted, size-limited and time-limited duplex byte channel.
pub struct Channel {
    reader: BufReader<Reader>,
    writer: BufWriter<Writer>,
    counters: Counters,
    max_frame: usize,
    timeout: Duration,
    /// Time spent blocked in reads and writes (waiting for the peer or the link).
    io: Duration,
}

impl Channel {
    /// Wraps any bidirectional async stream (a `TcpStream`, a `DuplexStream`, ...).
    pub fn new<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        Self {
            reader: BufReader::with_capacity(1 << 16, Box::new(r) as Reader),
            writer: BufWriter::with_capacity(1 << 16, Box::new(w) as Writer),
            counters: Counters::default(),
            max_frame: DEFAULT_MAX_FRAME,
            timeout: DEFAULT_TIMEOUT,
            io: Duration::ZERO,
        }
    }

    /// Two channels connected back to back in memory (for tests and single-process benchmarks).
    pub fn memory_pair() -> (Channel, Channel) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (Channel::new(a), Channel::new(b))
    }

    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes sent and received so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Time this side has spent blocked in reads and writes so far: waiting for the peer to answer
    /// or for bytes to cross. A step's wall time minus its growth is the step's own computation.
    pub fn io_time(&self) -> Duration {
        self.io
    }

    /// Queues one frame; call [`Channel::flush`] before waiting for an answer.
    pub async fn send(&mut self, kind: MsgKind, payload: &[u8]) -> Result<(), ChannelError> {
        if payload.len() > self.max_frame {
            return Err(ChannelError::FrameTooLarge { len: payload.len(), max: self.max_frame });
        }
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        header[6] = kind as u8;
        let t = std::time::Instant::now();
        let r = self
            .timed(|w| {
                Box::pin(async move {
                    w.write_all(&header).await?;
                    w.write_all(payload).await
                })
            })
            .await;
        self.io += t.elapsed();
        self.write_outcome(r).await?;
        self.counters.sent += (HEADER_LEN + payload.len()) as u64;
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ChannelError> {
        let t = std::time::Instant::now();
        let r = self.timed(|w| Box::pin(w.flush())).await;
        self.io += t.elapsed();
        self.write_outcome(r).await
    }

    /// Sends one frame and flushes.
    pub async fn send_now(&mut self, kind: MsgKind, payload: &[u8]) -> Result<(), ChannelError> {
        self.send(kind, payload).await?;
        self.flush().await
    }

    /// Serialises a small control message with bincode and sends it (flushed).
    pub async fn send_msg<T: Serialize>(&mut self, kind: MsgKind, msg: &T) -> Result<(), ChannelError> {
        let bytes = bincode::serde::encode_to_vec(msg, bincode_config())
            .map_err(|e| ChannelError::Malformed { kind, reason: e.to_string() })?;
        self.send_now(kind, &bytes).await
    }

    /// Tells the peer why this side gives up (best effort, within a few seconds; errors are ignored).
    pub async fn send_error(&mut self, reason: &str) {
        let reason = &reason.as_bytes()[..reason.len().min(MAX_ERROR_TEXT)];
        let _ = tokio::time::timeout(Duration::from_secs(5), self.send_now(MsgKind::Error, reason)).await;
    }

    /// Runs a write under the channel's timeout (`None` when it timed out): a peer that stops reading
    /// cannot stall us forever.
    async fn timed<'a, F>(&'a mut self, op: F) -> Option<std::io::Result<()>>
    where
        F: FnOnce(
            &'a mut BufWriter<Writer>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + 'a>>,
    {
        tokio::time::timeout(self.timeout, op(&mut self.writer)).await.ok()
    }

    /// Turns the outcome of a timed write into the channel's error.
    async fn write_outcome(&mut self, r: Option<std::io::Result<()>>) -> Result<(), ChannelError> {
        match r {
            None => Err(ChannelError::WriteTimeout(self.timeout)),
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(self.explain(e).await),
        }
    }

    /// A write failed because the peer hung up: if it said why first (an error frame, or a TLS
    /// alert), report that instead.
    async fn explain(&mut self, e: std::io::Error) -> ChannelError {
        let saved = self.timeout;
        self.timeout = Duration::from_millis(200);
        let reason = loop {
            match self.recv_any().await {
                Err(r @ (ChannelError::Remote(_) | ChannelError::Integrity(_))) => break Some(r),
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        self.timeout = saved;
        reason.unwrap_or(ChannelError::Io(e))
    }

    async fn read_exact_timed(&mut self, buf: &mut [u8]) -> Result<(), ChannelError> {
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(self.timeout, self.reader.read_exact(buf)).await;
        self.io += t.elapsed();
        match r {
            Err(_) => Err(ChannelError::Timeout(self.timeout)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ChannelError::Closed),
            // Bare TCP never reports invalid data; TLS does when a record fails authentication.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(ChannelError::Integrity(e.to_string())),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Receives the next frame, whatever its kind. An `Error` frame from the peer becomes `Err(Remote)`.
    pub async fn recv_any(&mut self) -> Result<(MsgKind, Vec<u8>), ChannelError> {
        self.recv_frame(None, None).await
    }

    /// Receives the next frame and checks that it has the expected kind.
    pub async fn recv(&mut self, expected: MsgKind) -> Result<Vec<u8>, ChannelError> {
        self.recv_frame(Some(expected), None).await.map(|(_, p)| p)
    }

    /// Receives a frame of the expected kind whose payload must be exactly `len` bytes (the one
    /// place that checks a fixed-size message's length).
    pub async fn recv_exact_len(&mut self, expected: MsgKind, len: usize) -> Result<Vec<u8>, ChannelError> {
        self.recv_frame(Some(expected), Some(len)).await.map(|(_, p)| p)
    }

    /// Receives a frame of the expected kind whose payload must be exactly `out.len()` bytes, straight
    /// into `out`: a caller that reuses its buffers (labels, OT matrices) avoids a fresh allocation,
    /// zeroing pass and page faults per frame. Same checks as [`Channel::recv_exact_len`].
    pub async fn recv_exact_into(&mut self, expected: MsgKind, out: &mut [u8]) -> Result<(), ChannelError> {
        let (kind, len) = self.recv_header(Some(expected), Some(out.len())).await?;
        if kind == MsgKind::Error {
            return Err(self.remote_error(len).await);
        }
        self.read_exact_timed(out).await?;
        self.counters.received += (HEADER_LEN + len) as u64;
        Ok(())
    }

    /// Reads one frame. Everything the header says is checked before any payload is read or
    /// allocated ([`Channel::recv_header`]). The payload buffer then grows as bytes arrive, at most
    /// [`READ_CHUNK`] ahead of them, so a peer that announces a large frame and sends little makes
    /// the receiver allocate little.
    async fn recv_frame(
        &mut self,
        expected: Option<MsgKind>,
        exact: Option<usize>,
    ) -> Result<(MsgKind, Vec<u8>), ChannelError> {
        let (kind, len) = self.recv_header(expected, exact).await?;
        if kind == MsgKind::Error {
            return Err(self.remote_error(len).await);
        }
        let mut payload = Vec::with_capacity(len.min(READ_CHUNK));
        while payload.len() < len {
            let start = payload.len();
            payload.resize(start + (len - start).min(READ_CHUNK), 0);
            self.read_exact_timed(&mut payload[start..]).await?;
        }
        self.counters.received += (HEADER_LEN + len) as u64;
        Ok((kind, payload))
    }

    /// Reads and checks a frame header: version, kind (against `expected`), length (against the
    /// frame limit, the error-text limit for `Error` frames, and `exact`). Returns the kind and the
    /// payload length, which is then known to be within bounds.
    async fn recv_header(
        &mut self,
        expected: Option<MsgKind>,
        exact: Option<usize>,
    ) -> Result<(MsgKind, usize), ChannelError> {
        let mut header = [0u8; HEADER_LEN];
        self.read_exact_timed(&mut header).await?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let version = u16::from_le_bytes([header[4], header[5]]);
        if version != PROTOCOL_VERSION {
            // A TLS record (handshake type 0x16, version 3.x) where a frame should start.
            if header[0] == 0x16 && header[1] == 0x03 && header[2] <= 0x04 {
                return Err(ChannelError::PeerSpeaksTls);
            }
            return Err(ChannelError::WrongVersion { got: version, expected: PROTOCOL_VERSION });
        }
        let kind = MsgKind::from_u8(header[6]).ok_or(ChannelError::UnknownKind(header[6]))?;
        if kind == MsgKind::Error {
            if len > MAX_ERROR_FRAME {
                return Err(ChannelError::FrameTooLarge { len, max: MAX_ERROR_FRAME });
            }
        } else {
            if let Some(e) = expected.filter(|&e| e != kind) {
                return Err(ChannelError::UnexpectedKind { expected: e, got: kind });
            }
            if len > self.max_frame {
                return Err(ChannelError::FrameTooLarge { len, max: self.max_frame });
            }
            if let Some(n) = exact.filter(|&n| n != len) {
                return Err(ChannelError::Malformed { kind, reason: format!("expected {n} bytes, got {len}") });
            }
        }
        Ok((kind, len))
    }

    /// Reads the payload of an `Error` frame (`len` already checked against [`MAX_ERROR_FRAME`]) and
    /// turns it into `Remote`, or into the error that cut the read short.
    async fn remote_error(&mut self, len: usize) -> ChannelError {
        let mut payload = vec![0u8; len];
        if let Err(e) = self.read_exact_timed(&mut payload).await {
            return e;
        }
        self.counters.received += (HEADER_LEN + len) as u64;
        let text = String::from_utf8_lossy(&payload[..payload.len().min(MAX_ERROR_TEXT)]);
        ChannelError::Remote(text.escape_debug().to_string())
    }

    /// Receives exactly `n` little-endian `u64` words in one frame of the expected kind.
    pub async fn recv_u64s(&mut self, expected: MsgKind, n: usize) -> Result<Vec<u64>, ChannelError> {
        let len = n.checked_mul(8).ok_or(ChannelError::FrameTooLarge { len: usize::MAX, max: self.max_frame })?;
        let bytes = self.recv_exact_len(expected, len).await?;
        Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk"))).collect())
    }

    /// Sends `u64` words little-endian in one frame (flushed).
    pub async fn send_u64s(&mut self, kind: MsgKind, words: &[u64]) -> Result<(), ChannelError> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.send_now(kind, &bytes).await
    }

    /// Receives a bincode control message of the expected kind.
    pub async fn recv_msg<T: DeserializeOwned>(&mut self, expected: MsgKind) -> Result<T, ChannelError> {
        let bytes = self.recv(expected).await?;
        let (msg, used) = bincode::serde::decode_from_slice(&bytes, bincode_config())
            .map_err(|e| ChannelError::Malformed { kind: expected, reason: e.to_string() })?;
        if used != bytes.len() {
            return Err(ChannelError::Malformed { kind: expected, reason: "trailing bytes".into() });
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_are_counted() {
        let (mut a, mut b) = Channel::memory_pair();
        a.send_now(MsgKind::Data, b"hello").await.unwrap();
        assert_eq!(b.recv(MsgKind::Data).await.unwrap(), b"hello");
        assert_eq!(a.counters().sent, (HEADER_LEN + 5) as u64);
        assert_eq!(b.counters().received, (HEADER_LEN + 5) as u64);
        a.send_msg(MsgKind::Hello, &(7u32, String::from("x"))).await.unwrap();
        let got: (u32, String) = b.recv_msg(MsgKind::Hello).await.unwrap();
        assert_eq!(got, (7, "x".to_string()));
    }

    #[tokio::test]
    async fn frames_are_received_into_the_callers_buffer() {
        let (mut a, mut b) = Channel::memory_pair();
        let mut buf = [0u8; 5];
        a.send_now(MsgKind::Data, b"hello").await.unwrap();
        b.recv_exact_into(MsgKind::Data, &mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(b.counters().received, (HEADER_LEN + 5) as u64);
        // Wrong length and wrong kind are refused before the payload is read.
        a.send_now(MsgKind::Data, b"hell").await.unwrap();
        assert!(matches!(b.recv_exact_into(MsgKind::Data, &mut buf).await, Err(ChannelError::Malformed { .. })));
        let (mut a, mut b) = Channel::memory_pair();
        a.send_now(MsgKind::Hello, b"hello").await.unwrap();
        assert!(matches!(b.recv_exact_into(MsgKind::Data, &mut buf).await, Err(ChannelError::UnexpectedKind { .. })));
        // The peer's error text arrives as `Remote`, whatever length was expected.
        let (mut a, mut b) = Channel::memory_pair();
        a.send_error("no such model").await;
        match b.recv_exact_into(MsgKind::Data, &mut buf).await {
            Err(ChannelError::Remote(text)) => assert_eq!(text, "no such model"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_frames_are_clean_errors() {
        use tokio::io::AsyncWriteExt;
        // Oversized length prefix.
        let (mut raw, other) = tokio::io::duplex(1024);
        let mut ch = Channel::new(other).with_max_frame(100);
        let mut h = vec![];
        h.extend_from_slice(&1_000_000u32.to_le_bytes());
        h.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        h.push(MsgKind::Data as u8);
        raw.write_all(&h).await.unwrap();
        assert!(matches!(ch.recv_any().await, Err(ChannelError::FrameTooLarge { .. })));
        // Wrong version.
        let (mut raw, other) = tokio::io::duplex(1024);
        let mut ch = Channel::new(other);
        raw.write_all(&[1, 0, 0, 0, 99, 0, 50, 0]).await.unwrap();
        assert!(matches!(ch.recv_any().await, Err(ChannelError::WrongVersion { got: 99, .. })));
        // A TLS ClientHello where a frame should be: named as such.
        let (mut raw, other) = tokio::io::duplex(1024);
        raw.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]).await.unwrap();
        let e = Channel::new(other).recv_any().await.unwrap_err();
        assert!(matches!(e, ChannelError::PeerSpeaksTls), "{e}");
        // Unknown kind.
        let (mut raw, other) = tokio::io::duplex(1024);
        let mut ch = Channel::new(other);
        let mut h = vec![0, 0, 0, 0];
        h.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        h.push(250);
        raw.write_all(&h).await.unwrap();
        assert!(matches!(ch.recv_any().await, Err(ChannelError::UnknownKind(250))));
        // Peer vanishes mid-frame.
        let (mut raw, other) = tokio::io::duplex(1024);
        let mut ch = Channel::new(other);
        raw.write_all(&[10, 0]).await.unwrap();
        drop(raw);
        assert!(matches!(ch.recv_any().await, Err(ChannelError::Closed)));
        // A header alone decides: a large frame of the wrong kind, of the wrong length, or an error
        // frame beyond its limit is refused before any payload is read (none is ever sent here, and
        // the timeout is long, so a read attempt would hang the test).
        let header = |len: usize, kind: MsgKind| {
            let mut h = (len as u32).to_le_bytes().to_vec();
            h.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            h.push(kind as u8);
            h
        };
        for (h, want) in [
            (header(DEFAULT_MAX_FRAME, MsgKind::Data), "kind"),
            (header(4096, MsgKind::OnlineInput), "length"),
            (header(MAX_ERROR_FRAME + 1, MsgKind::Error), "error size"),
        ] {
            let (mut raw, other) = tokio::io::duplex(1024);
            let mut ch = Channel::new(other).with_timeout(Duration::from_secs(600));
            raw.write_all(&h).await.unwrap();
            let r = ch.recv_exact_len(MsgKind::OnlineInput, 8).await;
            let ok = match want {
                "kind" => matches!(r, Err(ChannelError::UnexpectedKind { got: MsgKind::Data, .. })),
                "length" => matches!(r, Err(ChannelError::Malformed { .. })),
                _ => matches!(r, Err(ChannelError::FrameTooLarge { .. })),
            };
            assert!(ok, "{want}: {r:?}");
        }
        // A frame's payload arrives in pieces: the receiver still gets it whole.
        let (mut a, mut b) = Channel::memory_pair();
        let big: Vec<u8> = (0..3 * READ_CHUNK + 5).map(|i| i as u8).collect();
        let (sent, got) = tokio::join!(a.send_now(MsgKind::Data, &big), b.recv(MsgKind::Data));
        sent.unwrap();
        assert_eq!(got.unwrap(), big);
        // Timeout.
        let (_raw, other) = tokio::io::duplex(1024);
        let mut ch = Channel::new(other).with_timeout(Duration::from_millis(20));
        assert!(matches!(ch.recv_any().await, Err(ChannelError::Timeout(_))));
        // A bincode length prefix far beyond the frame is refused without allocating it.
        let (mut a, mut b) = Channel::memory_pair();
        let mut evil = vec![0xfd];
        evil.extend_from_slice(&(1u64 << 45).to_le_bytes());
        a.send_now(MsgKind::Hello, &evil).await.unwrap();
        assert!(matches!(b.recv_msg::<String>(MsgKind::Hello).await, Err(ChannelError::Malformed { .. })));
        // A peer that never reads: writes time out instead of blocking forever.
        let (_raw, other) = tokio::io::duplex(1024);
        let mut ch = Channel::new(other).with_timeout(Duration::from_millis(50));
        let e = ch.send_now(MsgKind::Data, &vec![0u8; 1 << 20]).await.unwrap_err();
        assert!(matches!(e, ChannelError::WriteTimeout(_)), "{e}");
        assert!(e.to_string().contains("stopped reading"), "{e}");
        // Garbage bincode.
        let (mut a, mut b) = Channel::memory_pair();
        a.send_now(MsgKind::Hello, &[0xff; 3]).await.unwrap();
        assert!(matches!(b.recv_msg::<(u64, String)>(MsgKind::Hello).await, Err(ChannelError::Malformed { .. })));
    }
}
