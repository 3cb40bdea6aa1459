//! Link emulation, so LAN and WAN figures can be measured on one machine: [`Shaped::new`] puts an
//! emulated [`Link`] between a party and its byte stream, for both directions.
//!
//! The model is a wire, not a pause: every byte enters the link when its sender writes it, leaves at
//! the link's rate behind the bytes queued before it, and reaches the other side half a round-trip
//! time later. The sender does not wait for any of that: it keeps computing while its bytes are on the
//! wire, as over a real socket, until it has more than [`IN_FLIGHT`] bytes queued (a socket's send
//! buffer), where it blocks as a real sender would. A transfer of `B` bytes that finds the link idle is
//! therefore delivered whole `B * 8 / rate + RTT / 2` after it was written, exactly, whatever the
//! chunking. One party wraps its stream (the client, in `pi infer` and `pi bench`); that shapes both
//! directions. Production channels never pass through here.
//!
//! Internally a pump task per direction reads what arrives, stamps its delivery time and writes it
//! on at that time; the party talks to an in-memory pipe. This needs a running tokio runtime.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// An emulated link: bandwidth and round-trip time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    bandwidth_bps: f64,
    rtt: Duration,
}

impl Link {
    /// A link of `bandwidth_bps` bits per second (positive; infinite for latency only) and `rtt`.
    pub fn new(bandwidth_bps: f64, rtt: Duration) -> Result<Link, String> {
        if bandwidth_bps.is_nan() || bandwidth_bps <= 0.0 {
            return Err(format!("link bandwidth must be positive, got {bandwidth_bps} bit/s"));
        }
        Ok(Link { bandwidth_bps, rtt })
    }

    /// The `lan` preset: 1 Gbit/s, 0.5 ms round trip.
    pub fn lan() -> Link {
        Link { bandwidth_bps: 1e9, rtt: Duration::from_micros(500) }
    }

    /// The `wan` preset: 100 Mbit/s, 40 ms round trip.
    pub fn wan() -> Link {
        Link { bandwidth_bps: 1e8, rtt: Duration::from_millis(40) }
    }

    /// Parses a network spec: `none` (no emulation: `None`), `lan`, `wan`, or `RATE,RTT` such as
    /// `100mbit,40ms` or `1gbit,0.5ms` (RTT in `ms`, `us` or `s`).
    pub fn parse_net(s: &str) -> Result<Option<Link>, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "loopback" => return Ok(None),
            "lan" => return Ok(Some(Link::lan())),
            "wan" => return Ok(Some(Link::wan())),
            _ => {}
        }
        let bad = || format!("unknown network {s:?}: expected none, lan, wan or RATE,RTT (e.g. 100mbit,40ms)");
        let (rate, rtt) = s.split_once(',').ok_or_else(bad)?;
        let rate = Link::parse_bandwidth(rate)?;
        let rtt = Link::parse_rtt(rtt)?;
        Link::new(rate, rtt).map(Some)
    }

    /// Parses a round-trip time such as `40ms`, `500us` or `0.04s`.
    pub fn parse_rtt(s: &str) -> Result<Duration, String> {
        let t = s.trim().to_ascii_lowercase();
        let (num, unit) = if let Some(n) = t.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = t.strip_suffix("us") {
            (n, 1e-6)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1.0)
        } else {
            return Err(format!("bad round-trip time {s:?}: give a unit, e.g. 40ms, 500us, 0.1s"));
        };
        match num.trim().parse::<f64>() {
            Ok(v) if v >= 0.0 && v * unit <= 60.0 => Ok(Duration::from_secs_f64(v * unit)),
            _ => Err(format!("bad round-trip time {s:?} (between 0 and 60 s, e.g. 40ms)")),
        }
    }

    /// A short name: `lan`, `wan`, or `RATE,RTT`.
    pub fn name(&self) -> String {
        if *self == Link::lan() {
            "lan".into()
        } else if *self == Link::wan() {
            "wan".into()
        } else {
            format!("{}mbit,{}ms", self.bandwidth_bps / 1e6, self.rtt.as_secs_f64() * 1e3)
        }
    }

    /// Bandwidth in bits per second.
    pub fn bandwidth_bps(&self) -> f64 {
        self.bandwidth_bps
    }

    /// Round-trip time.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Time `bytes` take on the wire.
    pub fn transfer(&self, bytes: u64) -> Duration {
        Duration::try_from_secs_f64(bytes as f64 * 8.0 / self.bandwidth_bps).unwrap_or(Duration::MAX)
    }

    /// Parses a bandwidth such as `1gbit`, `100mbit`, `500kbit` or a plain number of bits/s.
    pub fn parse_bandwidth(s: &str) -> Result<f64, String> {
        let t = s.trim().to_ascii_lowercase();
        let (num, mul) = if let Some(n) = t.strip_suffix("gbit") {
            (n, 1e9)
        } else if let Some(n) = t.strip_suffix("mbit") {
            (n, 1e6)
        } else if let Some(n) = t.strip_suffix("kbit") {
            (n, 1e3)
        } else {
            (t.as_str(), 1.0)
        };
        match num.trim().parse::<f64>() {
            Ok(v) if (v * mul).is_finite() && v * mul >= 1e3 => Ok(v * mul),
            _ => Err(format!("bad bandwidth {s:?} (at least 1kbit, e.g. 1gbit, 100mbit, 500kbit)")),
        }
    }
}

/// Bytes the pumps move per read.
const CHUNK: usize = 1 << 16;
/// Bytes one direction holds on the wire before its sender blocks (a socket send buffer).
pub const IN_FLIGHT: usize = 4 << 20;

/// One direction of the wire: when it is busy until, and the busy period's start and bytes (the
/// period's bytes are timed together, so chunking does not accumulate rounding).
struct Wire {
    link: Link,
    busy_from: Instant,
    busy_bytes: u64,
    free_at: Instant,
}

impl Wire {
    fn new(link: Link) -> Self {
        let now = Instant::now();
        Wire { link, busy_from: now, busy_bytes: 0, free_at: now }
    }

    /// Bytes entering the link at `now`: when their last bit reaches the other side.
    fn arrival(&mut self, now: Instant, bytes: usize) -> Instant {
        if now >= self.free_at {
            (self.busy_from, self.busy_bytes) = (now, 0);
        }
        self.busy_bytes += bytes as u64;
        self.free_at = self.busy_from + self.link.transfer(self.busy_bytes);
        self.free_at + self.link.rtt / 2
    }
}

/// How the pumps wait for a delivery time.
#[derive(Clone, Copy, Debug)]
enum Timer {
    /// tokio's timer: 1 ms resolution, follows a paused test clock.
    Tokio,
    /// tokio's timer to within 2 ms, then a thread sleep on the blocking pool: tens of microseconds,
    /// so that a LAN's 0.25 ms one-way latency is not rounded up to tokio's millisecond tick.
    Precise,
}

impl Timer {
    async fn wait_until(self, at: Instant) {
        match self {
            Timer::Tokio => tokio::time::sleep_until(at).await,
            Timer::Precise => {
                if let Some(coarse) = at.checked_sub(Duration::from_millis(2))
                    && coarse > Instant::now()
                {
                    tokio::time::sleep_until(coarse).await;
                }
                let rest = at.saturating_duration_since(Instant::now());
                if !rest.is_zero() {
                    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
                }
            }
        }
    }
}

/// Moves bytes from `from` to `to` through the wire: read as soon as they arrive, delivered at their
/// arrival time. Ends at end of stream (shutting `to` down) or at the first error of either side.
async fn pump<R, W>(mut from: R, mut to: W, link: Link, timer: Timer)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT / CHUNK);
    let reader = async move {
        let mut wire = Wire::new(link);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            let at = wire.arrival(Instant::now(), n);
            if tx.send((at, buf)).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, buf)) = rx.recv().await {
            timer.wait_until(at).await;
            if to.write_all(&buf).await.is_err() || to.flush().await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// A party's end of an emulated [`Link`] (see the module documentation).
pub struct Shaped {
    app: DuplexStream,
    link: Link,
}

impl Shaped {
    /// Puts `link` between the caller and `stream`. Must be called inside a tokio runtime: it starts
    /// the two pump tasks, which end when either side closes. Deliveries are timed to tens of
    /// microseconds (a thread sleep for the last 2 ms of each wait).
    pub fn new<S>(stream: S, link: Link) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::with_timer(stream, link, Timer::Precise)
    }

    /// As [`Shaped::new`], but every wait is a tokio sleep: it follows tokio's paused test clock
    /// (`start_paused`), at the timer's 1 ms resolution. For tests of the link model.
    pub fn on_tokio_clock<S>(stream: S, link: Link) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::with_timer(stream, link, Timer::Tokio)
    }

    fn with_timer<S>(stream: S, link: Link, timer: Timer) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (app, pumps) = tokio::io::duplex(CHUNK * 4);
        let (net_r, net_w) = tokio::io::split(stream);
        let (pump_r, pump_w) = tokio::io::split(pumps);
        tokio::spawn(pump(pump_r, net_w, link, timer));
        tokio::spawn(pump(net_r, pump_w, link, timer));
        Shaped { app, link }
    }

    pub fn link(&self) -> Link {
        self.link
    }
}

impl AsyncRead for Shaped {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.app).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shaped {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.app).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.app).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.app).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Channel, HEADER_LEN, MsgKind};

    #[test]
    fn specs_parse() {
        assert_eq!(Link::parse_bandwidth("100mbit").unwrap(), 1e8);
        assert_eq!(Link::parse_bandwidth("1gbit").unwrap(), 1e9);
        assert!(Link::parse_bandwidth("fast").is_err());
        assert!(Link::parse_bandwidth("10").is_err());
        assert!(Link::new(0.0, Duration::ZERO).is_err());
        assert!(Link::new(f64::NAN, Duration::ZERO).is_err());
        assert_eq!(Link::new(f64::INFINITY, Duration::ZERO).unwrap().transfer(1 << 20), Duration::ZERO);
        assert_eq!(Link::parse_net("none").unwrap(), None);
        assert_eq!(Link::parse_net("LAN").unwrap(), Some(Link::lan()));
        assert_eq!(Link::parse_net("wan").unwrap().unwrap().rtt(), Duration::from_millis(40));
        let custom = Link::parse_net("10mbit,250ms").unwrap().unwrap();
        assert_eq!((custom.bandwidth_bps(), custom.rtt()), (1e7, Duration::from_millis(250)));
        assert_eq!(Link::parse_net("1gbit,500us").unwrap(), Some(Link::lan()));
        for bad in ["moon", "10mbit", "10mbit,40", "10mbit,-1ms", ",40ms", "0mbit,1ms"] {
            assert!(Link::parse_net(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(Link::wan().name(), "wan");
    }

    /// Both parties keep computing while bytes are on the wire: a message sent before 30 ms of work
    /// costs max(work, transfer), not their sum.
    #[tokio::test(start_paused = true)]
    async fn transmission_overlaps_computation() {
        let (net, peer) = tokio::io::duplex(1 << 16);
        let link = Link::new(8e6, Duration::from_millis(40)).unwrap();
        let (mut a, mut b) = (Channel::new(Shaped::on_tokio_clock(net, link)), Channel::new(peer));
        let t0 = Instant::now();
        a.send_now(MsgKind::Data, &vec![0u8; 50_000 - HEADER_LEN]).await.unwrap(); // 50 ms + 20 ms
        tokio::time::sleep(Duration::from_millis(30)).await; // the sender computes meanwhile
        assert_eq!(t0.elapsed(), Duration::from_millis(30));
        b.recv(MsgKind::Data).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(70));
        // A second message queues behind a first still on the wire.
        a.send_now(MsgKind::Data, &vec![0u8; 50_000 - HEADER_LEN]).await.unwrap();
        a.send_now(MsgKind::Data, &vec![0u8; 50_000 - HEADER_LEN]).await.unwrap();
        b.recv(MsgKind::Data).await.unwrap();
        b.recv(MsgKind::Data).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(70 + 100 + 20));
    }

    /// Real time, precise timer: every round trip takes at least the RTT.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lan_round_trips_take_at_least_the_rtt() {
        let (net, peer) = tokio::io::duplex(1 << 16);
        let (mut a, mut b) = (Channel::new(Shaped::new(net, Link::lan())), Channel::new(peer));
        let echo = tokio::spawn(async move {
            for _ in 0..20 {
                let m = b.recv(MsgKind::Data).await.unwrap();
                b.send_now(MsgKind::Data, &m).await.unwrap();
            }
        });
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            a.send_now(MsgKind::Data, b"ping").await.unwrap();
            a.recv(MsgKind::Data).await.unwrap();
        }
        echo.await.unwrap();
        let per_round = t0.elapsed() / 20;
        assert!(per_round >= Duration::from_micros(500), "{per_round:?}");
    }

    #[tokio::test]
    async fn unshaped_side_sees_the_same_bytes() {
        let (a, b) = tokio::io::duplex(1 << 10);
        let link = Link::new(1e9, Duration::from_millis(1)).unwrap();
        let (mut a, mut b) = (Channel::new(Shaped::new(a, link)), Channel::new(b));
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let p = payload.clone();
        let h = tokio::spawn(async move {
            b.send_now(MsgKind::Data, &p).await.unwrap();
            b.recv(MsgKind::Data).await.unwrap()
        });
        assert_eq!(a.recv(MsgKind::Data).await.unwrap(), payload);
        a.send_now(MsgKind::Data, &payload).await.unwrap();
        assert_eq!(h.await.unwrap(), payload);
    }

    /// When the peer hangs up, the shaped side sees the end of the stream rather than hanging.
    #[tokio::test]
    async fn a_vanished_peer_ends_the_stream() {
        let (a, b) = tokio::io::duplex(1 << 10);
        let mut a = Channel::new(Shaped::new(a, Link::lan())).with_timeout(Duration::from_secs(5));
        drop(b);
        assert!(matches!(a.recv_any().await, Err(crate::ChannelError::Closed)));
    }
}
