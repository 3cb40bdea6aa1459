//! IKNP correlated-OT extension (Ishai-Kilian-Nissim-Petrank 2003) with `κ = 128`.
//!
//! Roles are those of the garbled-circuit protocol: the **sender** is the garbler. At setup it plays
//! base-OT receiver with choice bits `s`, its free-XOR delta (lsb 1), and keeps one PRG seed per base
//! OT; the **receiver** (evaluator) keeps both seeds. Per extension of `m` OTs the receiver sends the
//! matrix `U` (`u_i = G(k0_i) ⊕ G(k1_i) ⊕ x`, 16 bytes per OT) and keeps the rows `T_j` of
//! `t_i = G(k0_i)`; the sender computes the rows `Q_j` of `q_i = G(k_{s_i}) ⊕ s_i·u_i`, and then
//! `T_j = Q_j ⊕ x_j·Δ`. `Q_j` is the zero-label of the evaluator's input wire `j`, `T_j` its active
//! label: correlated OT needs no further message and no hashing (see docs/gc.md). The PRG streams
//! advance by `m/128` blocks per extension, so no output is ever reused.

use super::base;
use super::transpose::transpose_columns;
use crate::prg::AesPrg;
use crate::{Delta, GcError, Label};
use pi_channel::{Channel, MsgKind, TaskFailed, pipeline};
use rand::RngCore;
use rayon::prelude::*;
use std::sync::Arc;
use zeroize::Zeroize;

/// Security parameter: base OTs and matrix width.
pub const KAPPA: usize = 128;
/// OTs per extension frame (a frame is `16 * CHUNK_OTS` bytes = 1 MiB).
pub const CHUNK_OTS: usize = 1 << 16;

fn chunks(m: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..m.div_ceil(CHUNK_OTS)).map(move |c| (c * CHUNK_OTS, ((c + 1) * CHUNK_OTS).min(m)))
}

/// The garbler's side of correlated OT: its outputs are zero-labels, the correlation is [`Delta`].
pub struct CotSender {
    delta: Delta,
    prgs: Arc<Vec<AesPrg>>,
    /// Next unused PRG block of every stream.
    counter: u64,
}

impl CotSender {
    /// Runs the 128 base OTs (as base-OT receiver) with a fresh random delta.
    pub async fn setup<R: RngCore + ?Sized>(ch: &mut Channel, rng: &mut R) -> Result<Self, GcError> {
        let mut d = [0u8; 16];
        rng.fill_bytes(&mut d);
        let delta = Delta::new(u128::from_le_bytes(d) | 1).expect("lsb set");
        d.zeroize();
        let choices: Vec<bool> = (0..KAPPA).map(|i| (delta.as_u128() >> i) & 1 == 1).collect();
        let mut keys = base::receive(ch, &choices, rng).await?;
        let prgs = keys.iter().map(|k| AesPrg::new(*k)).collect();
        keys.zeroize();
        Ok(Self { delta, prgs: Arc::new(prgs), counter: 0 })
    }

    /// The correlation: receiver labels are `Q_j ⊕ x_j·Δ`.
    pub fn delta(&self) -> &Delta {
        &self.delta
    }

    /// Extends to `m` correlated OTs; returns the zero-labels `Q_j`.
    pub async fn extend(&mut self, ch: &mut Channel, m: usize) -> Result<Vec<Label>, GcError> {
        let start = self.counter;
        self.counter += m.div_ceil(128) as u64;
        let mut out: Vec<Label> = Vec::with_capacity(m);
        // The matrices of one frame, handed back and forth with the blocking task so that every
        // frame reuses them (fresh megabyte buffers cost a page fault per 4 KiB).
        // Likewise the received frames: two take turns, one being read while the task uses the other.
        let mut spare = Some((Vec::<u128>::new(), Vec::<u128>::new()));
        let mut spare_frame: Option<Vec<u8>> = None;
        type Task = tokio::task::JoinHandle<(Vec<u128>, Vec<u128>, Vec<u8>)>;
        let mut pending: Option<Task> = None;
        for (lo, hi) in chunks(m) {
            let nb = (hi - lo).div_ceil(128);
            let mut frame = spare_frame.take().unwrap_or_default();
            frame.resize(KAPPA * nb * 16, 0);
            ch.recv_exact_into(MsgKind::OtExtension, &mut frame).await?;
            if let Some(h) = pending.take() {
                let (cols, rows, used) = h.await.map_err(TaskFailed::from)?;
                out.extend(rows.iter().map(|&r| Label(r)));
                spare = Some((cols, rows));
                spare_frame = Some(used);
            }
            let (mut cols, mut rows) = spare.take().unwrap_or_default();
            let prgs = self.prgs.clone();
            let s = self.delta.as_u128();
            let pos = start + (lo / 128) as u64;
            pending = Some(tokio::task::spawn_blocking(move || {
                // Column i is G(k_{s_i}) ⊕ s_i·u_i: every word is written, so no zeroing first.
                cols.resize(KAPPA * nb, 0);
                cols.par_chunks_mut(nb).zip(frame.par_chunks(nb * 16)).enumerate().for_each(|(i, (col, u))| {
                    prgs[i].fill(pos, col);
                    if (s >> i) & 1 == 1 {
                        for (c, u) in col.iter_mut().zip(u.chunks_exact(16)) {
                            *c ^= u128::from_le_bytes(u.try_into().expect("16 bytes"));
                        }
                    }
                });
                rows.resize(KAPPA * nb, 0);
                transpose_columns(&cols, nb, &mut rows);
                rows.truncate(hi - lo);
                (cols, rows, frame)
            }));
        }
        if let Some(h) = pending.take() {
            let (cols, rows, _) = h.await.map_err(TaskFailed::from)?;
            out.extend(rows.iter().map(|&r| Label(r)));
            spare = Some((cols, rows));
        }
        if let Some((mut cols, mut rows)) = spare {
            cols.zeroize();
            rows.zeroize();
        }
        Ok(out)
    }
}

/// The evaluator's side of correlated OT: its outputs are the labels of its choice bits.
pub struct CotReceiver {
    prgs: Arc<Vec<(AesPrg, AesPrg)>>,
    counter: u64,
}

impl CotReceiver {
    /// Runs the 128 base OTs (as base-OT sender).
    pub async fn setup<R: RngCore + ?Sized>(ch: &mut Channel, rng: &mut R) -> Result<Self, GcError> {
        let mut pairs = base::send(ch, KAPPA, rng).await?;
        let prgs = pairs.iter().map(|[k0, k1]| (AesPrg::new(*k0), AesPrg::new(*k1))).collect();
        pairs.zeroize();
        Ok(Self { prgs: Arc::new(prgs), counter: 0 })
    }

    /// Extends to `choices.len()` correlated OTs; returns `T_j = Q_j ⊕ choices[j]·Δ`.
    pub async fn extend(&mut self, ch: &mut Channel, choices: &[bool]) -> Result<Vec<Label>, GcError> {
        let m = choices.len();
        let start = self.counter;
        self.counter += m.div_ceil(128) as u64;
        let choices: Arc<Vec<bool>> = Arc::new(choices.to_vec());
        let prgs = self.prgs.clone();
        pipeline::stream::<_, GcError, _>(ch, MsgKind::OtExtension, move |frames| {
            let mut out: Vec<Label> = Vec::with_capacity(m);
            let (mut t, mut rows) = (Vec::<u128>::new(), Vec::<u128>::new());
            for (lo, hi) in chunks(m) {
                let nb = (hi - lo).div_ceil(128);
                let pos = start + (lo / 128) as u64;
                let mut x = vec![0u128; nb];
                for (j, &c) in choices[lo..hi].iter().enumerate() {
                    x[j / 128] |= (c as u128) << (j % 128);
                }
                t.resize(KAPPA * nb, 0);
                // Every byte of the frame is written below: a recycled one is not zeroed first.
                let mut frame = frames.overwritable(KAPPA * nb * 16);
                let work = t.par_chunks_mut(nb).zip(frame.par_chunks_mut(nb * 16)).enumerate();
                work.for_each_init(
                    || vec![0u128; nb],
                    |u, (i, (ti, fi))| {
                        let (g0, g1) = &prgs[i];
                        g0.fill(pos, ti);
                        u.copy_from_slice(&x);
                        g1.xor_into(pos, u);
                        for ((uw, tw), f) in u.iter().zip(ti.iter()).zip(fi.chunks_exact_mut(16)) {
                            f.copy_from_slice(&(uw ^ tw).to_le_bytes());
                        }
                    },
                );
                if !frames.send(frame) {
                    break; // the async side gave up; its error is reported there
                }
                rows.resize(KAPPA * nb, 0);
                transpose_columns(&t, nb, &mut rows);
                out.extend(rows[..hi - lo].iter().map(|&r| Label(r)));
            }
            t.zeroize();
            rows.zeroize();
            out
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    async fn pair() -> (CotSender, CotReceiver, Channel, Channel) {
        let (mut a, mut b) = Channel::memory_pair();
        let s = tokio::spawn(async move {
            let s = CotSender::setup(&mut a, &mut rand_chacha::ChaCha12Rng::seed_from_u64(5)).await.unwrap();
            (s, a)
        });
        let r = CotReceiver::setup(&mut b, &mut rand_chacha::ChaCha12Rng::seed_from_u64(6)).await.unwrap();
        let (s, a) = s.await.unwrap();
        (s, r, a, b)
    }

    #[tokio::test]
    async fn receiver_gets_the_chosen_label_of_each_pair() {
        let (mut s, mut r, mut a, mut b) = pair().await;
        let d = s.delta().as_label();
        assert!(d.lsb());
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(9);
        let mut seen = std::collections::HashSet::new();
        // Two extensions from one setup (second spans several frames with a ragged end): outputs never repeat.
        for m in [1000usize, 2 * CHUNK_OTS + 77] {
            let choices: Vec<bool> = (0..m).map(|_| rng.random()).collect();
            let c2 = choices.clone();
            let h = tokio::spawn(async move {
                let q = s.extend(&mut a, m).await.unwrap();
                (s, a, q)
            });
            let t = r.extend(&mut b, &c2).await.unwrap();
            let (s2, a2, q) = h.await.unwrap();
            (s, a) = (s2, a2);
            assert_eq!(q.len(), m);
            assert_eq!(t.len(), m);
            for j in 0..m {
                // The sender's pair for OT j is (Q_j, Q_j ⊕ Δ); the receiver holds exactly the chosen one.
                let pair = [q[j], q[j] ^ d];
                assert_eq!(t[j], pair[choices[j] as usize], "ot {j}");
                assert_ne!(t[j], pair[!choices[j] as usize]);
                assert!(seen.insert(q[j].0));
            }
        }
    }

    #[tokio::test]
    async fn wrong_frame_length_is_an_error() {
        let (mut s, _r, mut a, mut b) = pair().await;
        b.send_now(MsgKind::OtExtension, &[0u8; 100]).await.unwrap();
        assert!(matches!(
            s.extend(&mut a, 128).await,
            Err(GcError::Channel(pi_channel::ChannelError::Malformed { .. }))
        ));
    }
}
