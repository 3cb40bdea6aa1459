//! Link emulation as a stream adapter, so LAN and WAN figures can be measured on one machine: wrap
//! any `AsyncRead + AsyncWrite` in [`Shaped`] and bytes wait where a real link makes them wait.
//! Written bytes reach the peer only after their time on the wire at the link's bandwidth, and the
//! last bytes before a flush also after half the round-trip time (the one-way latency). Received
//! bytes are released after their transfer time, plus half the round-trip time for the first bytes
//! after this side spoke (the answer's way back). One party shapes (the client, in `pi infer`).
//! Waits add to that party's computation rather than overlap with it, so shaped figures are an
//! upper bound. Production channels never pass through here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

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

    /// Bandwidth in bits per second.
    pub fn bandwidth_bps(&self) -> f64 {
        self.bandwidth_bps
    }

    /// Round-trip time.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Time `bytes` take on the wire.
    pub fn transfer(&self, bytes: usize) -> Duration {
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

/// Bytes that cross the link per wait (one chunk of a write, one read from the inner stream): small
/// enough that no single wait approaches a channel timeout unless the link really is that slow.
const CHUNK: usize = 1 << 16;

/// A byte stream behind an emulated [`Link`] (see the module documentation).
pub struct Shaped<S> {
    inner: S,
    link: Link,
    /// Whether this side wrote since its last flush, and spoke since it last listened.
    wrote: bool,
    spoke: bool,
    /// The wait for the next chunk of a write, and the chunk's length.
    write_wait: Option<(Pin<Box<Sleep>>, usize)>,
    /// Bytes that have spent their time on the wire, not yet handed to `inner`.
    out: Vec<u8>,
    out_at: usize,
    flush_wait: Option<Pin<Box<Sleep>>>,
    /// Bytes read from `inner` (`inbuf[..in_len]`, the first `in_at` released) and their wait.
    inbuf: Vec<u8>,
    in_len: usize,
    in_at: usize,
    read_wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Shaped<S> {
    pub fn new(inner: S, link: Link) -> Self {
        Self {
            inner,
            link,
            wrote: false,
            spoke: false,
            write_wait: None,
            out: Vec::with_capacity(CHUNK),
            out_at: 0,
            flush_wait: None,
            inbuf: vec![0; CHUNK],
            in_len: 0,
            in_at: 0,
            read_wait: None,
        }
    }

    pub fn link(&self) -> Link {
        self.link
    }
}

impl<S: AsyncWrite + Unpin> Shaped<S> {
    /// Hands the bytes whose wire time has passed to the inner stream.
    fn drain_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Shaped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.in_at < this.in_len {
                if let Some(wait) = this.read_wait.as_mut() {
                    ready!(wait.as_mut().poll(cx));
                    this.read_wait = None;
                }
                let n = buf.remaining().min(this.in_len - this.in_at);
                buf.put_slice(&this.inbuf[this.in_at..this.in_at + n]);
                this.in_at += n;
                return Poll::Ready(Ok(()));
            }
            let mut tmp = ReadBuf::new(&mut this.inbuf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut tmp))?;
            let n = tmp.filled().len();
            (this.in_len, this.in_at) = (n, 0);
            if n == 0 {
                return Poll::Ready(Ok(())); // end of stream
            }
            let back = if std::mem::take(&mut this.spoke) { this.link.rtt / 2 } else { Duration::ZERO };
            this.read_wait = Some(Box::pin(tokio::time::sleep(this.link.transfer(n) + back)));
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shaped<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain_out(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let (wait, n) = this.write_wait.get_or_insert_with(|| {
            let n = buf.len().min(CHUNK);
            (Box::pin(tokio::time::sleep(this.link.transfer(n))), n)
        });
        ready!(wait.as_mut().poll(cx));
        // A caller may retry a pending write with a shorter buffer.
        let n = (*n).min(buf.len());
        this.write_wait = None;
        // The chunk goes on at the next write (the following chunk's bytes are behind it on the
        // wire) or, for the last one, after the flush's latency.
        this.out.extend_from_slice(&buf[..n]);
        this.wrote = true;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flush_wait.is_none() && std::mem::take(&mut this.wrote) {
            this.flush_wait = Some(Box::pin(tokio::time::sleep(this.link.rtt / 2)));
            this.spoke = true;
        }
        if let Some(wait) = this.flush_wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
            this.flush_wait = None;
        }
        ready!(this.drain_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain_out(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Channel, HEADER_LEN, MsgKind};

    #[test]
    fn bandwidths_parse() {
        assert_eq!(Link::parse_bandwidth("100mbit").unwrap(), 1e8);
        assert_eq!(Link::parse_bandwidth("1gbit").unwrap(), 1e9);
        assert!(Link::parse_bandwidth("fast").is_err());
        assert!(Link::parse_bandwidth("10").is_err());
        assert!(Link::new(0.0, Duration::ZERO).is_err());
        assert!(Link::new(f64::NAN, Duration::ZERO).is_err());
        assert_eq!(Link::new(f64::INFINITY, Duration::ZERO).unwrap().transfer(1 << 20), Duration::ZERO);
    }

    /// The peer sees a message only after its time on the wire and the one-way latency, so it
    /// cannot start working on it early.
    #[tokio::test]
    async fn the_peer_receives_after_the_wire_time() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let link = Link::new(8e6, Duration::from_millis(40)).unwrap();
        let (mut a, mut b) = (Channel::new(Shaped::new(a, link)), Channel::new(b));
        let t = std::time::Instant::now();
        let peer = tokio::spawn(async move {
            b.recv(MsgKind::Data).await.unwrap();
            t.elapsed()
        });
        a.send_now(MsgKind::Data, &vec![0u8; 10_000 - HEADER_LEN]).await.unwrap(); // 10 ms + 20 ms
        let seen = peer.await.unwrap();
        assert!(seen >= Duration::from_millis(30), "peer saw the message after {seen:?}");
    }

    #[tokio::test]
    async fn shaping_delays_by_bandwidth_and_round_trip() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let link = Link::new(8e6, Duration::from_millis(40)).unwrap();
        let (mut a, mut b) = (Channel::new(Shaped::new(a, link)), Channel::new(b));
        let t = std::time::Instant::now();
        a.send_now(MsgKind::Data, &vec![0u8; 10_000 - HEADER_LEN]).await.unwrap(); // 10 ms + 20 ms
        let sent = t.elapsed();
        b.send_now(MsgKind::Data, &vec![0u8; 10_000 - HEADER_LEN]).await.unwrap();
        assert_eq!(b.recv(MsgKind::Data).await.unwrap().len(), 10_000 - HEADER_LEN);
        a.recv(MsgKind::Data).await.unwrap(); // 10 ms + 20 ms back
        let e = t.elapsed();
        assert!(sent >= Duration::from_millis(30), "{sent:?}");
        assert!(e >= Duration::from_millis(60) && e < Duration::from_millis(500), "{e:?}");
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
}
