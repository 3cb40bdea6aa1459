//! Link emulation as a stream adapter, so LAN and WAN figures can be measured on one machine: wrap
//! any `AsyncRead + AsyncWrite` in [`Shaped`] and every flushed batch of bytes waits for its time on
//! the wire at the link's bandwidth, and each change of speaker costs half the round-trip time each
//! way. One party shapes (the client, in `pi infer`). Waits add to computation rather than overlap
//! with it, so shaped figures are an upper bound. Production channels never pass through here.

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
    /// Link bandwidth in bits per second.
    pub bandwidth_bps: f64,
    pub rtt: Duration,
}

impl Link {
    /// Time `bytes` take on the wire.
    pub fn transfer(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 * 8.0 / self.bandwidth_bps)
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

/// A byte stream behind an emulated [`Link`]: a flush waits `transfer(bytes written since the last
/// flush) + rtt/2`; received bytes are released after `transfer(bytes)`, plus `rtt/2` for the first
/// bytes after this side spoke (the answer's way back).
pub struct Shaped<S> {
    inner: S,
    link: Link,
    /// Bytes written since the last flush, and whether this side spoke since it last listened.
    unflushed: usize,
    spoke: bool,
    flush_wait: Option<Pin<Box<Sleep>>>,
    /// Bytes read from `inner` but not yet released to the reader, and the wait before they are.
    held: Vec<u8>,
    held_at: usize,
    read_wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Shaped<S> {
    pub fn new(inner: S, link: Link) -> Self {
        Self {
            inner,
            link,
            unflushed: 0,
            spoke: false,
            flush_wait: None,
            held: Vec::new(),
            held_at: 0,
            read_wait: None,
        }
    }

    pub fn link(&self) -> Link {
        self.link
    }
}

/// Buffer for bytes read ahead of their release.
const READ_CHUNK: usize = 1 << 16;

impl<S: AsyncRead + Unpin> AsyncRead for Shaped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.held_at < this.held.len() {
                if let Some(wait) = this.read_wait.as_mut() {
                    ready!(wait.as_mut().poll(cx));
                    this.read_wait = None;
                }
                let n = buf.remaining().min(this.held.len() - this.held_at);
                buf.put_slice(&this.held[this.held_at..this.held_at + n]);
                this.held_at += n;
                return Poll::Ready(Ok(()));
            }
            this.held.resize(READ_CHUNK, 0);
            let mut tmp = ReadBuf::new(&mut this.held);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut tmp);
            let n = tmp.filled().len();
            this.held.truncate(n);
            this.held_at = 0;
            ready!(polled)?;
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
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.unflushed += n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flush_wait.is_none() && this.unflushed > 0 {
            let bytes = std::mem::take(&mut this.unflushed);
            this.flush_wait = Some(Box::pin(tokio::time::sleep(this.link.transfer(bytes) + this.link.rtt / 2)));
            this.spoke = true;
        }
        if let Some(wait) = this.flush_wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
            this.flush_wait = None;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
    }

    #[tokio::test]
    async fn shaping_delays_by_bandwidth_and_round_trip() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let link = Link { bandwidth_bps: 8e6, rtt: Duration::from_millis(40) };
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
        let link = Link { bandwidth_bps: 1e9, rtt: Duration::from_millis(1) };
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
