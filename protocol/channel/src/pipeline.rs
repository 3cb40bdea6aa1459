//! Bulk frames made on tokio's blocking pool and sent by the async side as they come, with the sent
//! buffers recycled: the IKNP matrix and the garbled tables (`pi-gc`), the HE queries and replies
//! (`pi-he`) stream this way, so that computing frame `i + 1` overlaps sending frame `i`.

use crate::{Channel, ChannelError, MsgKind, TaskFailed};

/// The producer's end: buffers to fill and the way to hand them over.
pub struct Frames {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    back: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Frames {
    /// An empty buffer, recycled from a sent frame when one has come back: fresh multi-megabyte
    /// buffers cost a page fault per 4 KiB.
    pub fn buffer(&self) -> Vec<u8> {
        let mut b = self.back.try_recv().unwrap_or_default();
        b.clear();
        b
    }

    /// A buffer of exactly `len` bytes for a producer that overwrites all of them: a recycled one
    /// keeps the bytes of the frame it carried (already sent to the peer), so nothing is zeroed.
    pub fn overwritable(&self, len: usize) -> Vec<u8> {
        let mut b = self.back.try_recv().unwrap_or_default();
        b.resize(len, 0);
        b
    }

    /// Hands a filled frame to the async side (blocking while two are queued). `false` if that side
    /// has given up, in which case it reports why and the producer should stop.
    pub fn send(&self, frame: Vec<u8>) -> bool {
        self.tx.blocking_send(frame).is_ok()
    }
}

/// Runs `produce` on the blocking pool and sends every frame it hands over as one `kind` message, in
/// order, then flushes; returns what `produce` returns. On a channel error the producer's next
/// [`Frames::send`] fails, so it stops soon; the error is returned at once (in the caller's error
/// type `E`).
pub async fn stream<T, E, P>(ch: &mut Channel, kind: MsgKind, produce: P) -> Result<T, E>
where
    T: Send + 'static,
    E: From<ChannelError> + From<TaskFailed>,
    P: FnOnce(&Frames) -> T + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let (back_tx, back) = std::sync::mpsc::channel::<Vec<u8>>();
    let producer = tokio::task::spawn_blocking(move || produce(&Frames { tx, back }));
    while let Some(frame) = rx.recv().await {
        ch.send(kind, &frame).await?;
        let _ = back_tx.send(frame); // the producer may have finished
    }
    ch.flush().await?;
    Ok(producer.await.map_err(TaskFailed::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a caller's error type needs: both failures, told apart.
    #[derive(Debug)]
    enum Failed {
        Channel(#[allow(dead_code)] ChannelError),
        Task(#[allow(dead_code)] TaskFailed),
    }

    impl From<ChannelError> for Failed {
        fn from(e: ChannelError) -> Self {
            Failed::Channel(e)
        }
    }

    impl From<TaskFailed> for Failed {
        fn from(e: TaskFailed) -> Self {
            Failed::Task(e)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_arrive_in_order_and_buffers_come_back() {
        let (mut a, mut b) = Channel::memory_pair();
        let recv = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..20 {
                got.push(b.recv(MsgKind::Data).await.unwrap());
            }
            got
        });
        let recycled = stream::<_, Failed, _>(&mut a, MsgKind::Data, |frames| {
            let mut recycled = 0;
            for i in 0..20u8 {
                let mut f = frames.buffer();
                recycled += (f.capacity() > 0) as usize;
                f.resize(1000 + i as usize, i);
                assert!(frames.send(f));
            }
            recycled
        })
        .await
        .unwrap();
        let got = recv.await.unwrap();
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.len(), 1000 + i);
            assert!(f.iter().all(|&x| x == i as u8));
        }
        assert!(recycled <= 19);
    }

    #[tokio::test]
    async fn a_failed_channel_stops_the_producer() {
        let (mut a, b) = Channel::memory_pair();
        drop(b);
        let r = stream::<_, Failed, _>(&mut a, MsgKind::Data, |frames| {
            // 64 MiB in 1 MiB frames: more than the in-memory pipe holds, so sending fails.
            (0..64).take_while(|_| frames.send(vec![0u8; 1 << 20])).count()
        })
        .await;
        assert!(matches!(r, Err(Failed::Channel(_))));
    }
}
