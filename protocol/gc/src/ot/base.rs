//! Chou-Orlandi "simplest OT" over Ristretto255 as random OT: the sender ends with `n` pairs of 16-byte
//! keys, the receiver with the key of its choice from each pair. Keys are blake3 of the transcript and
//! the Diffie-Hellman point. Used 128 times per session to seed IKNP.

use crate::{GcError, malformed};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use pi_channel::{Channel, MsgKind};
use rand::RngCore;
use rayon::prelude::*;
use zeroize::Zeroize;

/// A 16-byte OT key (secret: callers zeroize it).
pub type Key = [u8; 16];

const CONTEXT: &str = "pi-protocol 2025 chou-orlandi base OT v1";

fn random_scalar<R: RngCore + ?Sized>(rng: &mut R) -> Scalar {
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    let s = Scalar::from_bytes_mod_order_wide(&wide);
    wide.zeroize();
    s
}

fn derive(i: usize, a: &CompressedRistretto, b: &CompressedRistretto, p: &RistrettoPoint) -> Key {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(&(i as u64).to_le_bytes());
    h.update(a.as_bytes());
    h.update(b.as_bytes());
    h.update(p.compress().as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn decompress(bytes: &[u8], kind: MsgKind) -> Result<RistrettoPoint, GcError> {
    let c = CompressedRistretto::from_slice(bytes).map_err(|_| malformed(kind, "point is not 32 bytes"))?;
    let p = c.decompress().ok_or_else(|| malformed(kind, "invalid Ristretto point"))?;
    if p == RistrettoPoint::identity() {
        return Err(malformed(kind, "identity point"));
    }
    Ok(p)
}

/// Sender of `n` random OTs: returns the key pairs `(k0, k1)`.
pub async fn send<R: RngCore + ?Sized>(ch: &mut Channel, n: usize, rng: &mut R) -> Result<Vec<[Key; 2]>, GcError> {
    let mut a = random_scalar(rng);
    let big_a = &a * RISTRETTO_BASEPOINT_TABLE;
    let ca = big_a.compress();
    ch.send_now(MsgKind::OtBase, ca.as_bytes()).await?;
    let msg = ch.recv_exact_len(MsgKind::OtBase, 32 * n).await?;
    let points = msg.chunks_exact(32).map(|c| decompress(c, MsgKind::OtBase)).collect::<Result<Vec<_>, _>>()?;
    let keys = pi_channel::blocking(move || {
        let mut aa = a * big_a;
        let keys = points
            .par_iter()
            .enumerate()
            .map(|(i, b)| {
                let (cb, ab) = (b.compress(), a * b);
                [derive(i, &ca, &cb, &ab), derive(i, &ca, &cb, &(ab - aa))]
            })
            .collect::<Vec<_>>();
        a.zeroize();
        aa.zeroize();
        keys
    })
    .await?;
    Ok(keys)
}

/// Receiver of random OTs with the given choice bits: returns the chosen keys.
pub async fn receive<R: RngCore + ?Sized>(
    ch: &mut Channel,
    choices: &[bool],
    rng: &mut R,
) -> Result<Vec<Key>, GcError> {
    let msg = ch.recv_exact_len(MsgKind::OtBase, 32).await?;
    let big_a = decompress(&msg, MsgKind::OtBase)?;
    let ca = big_a.compress();
    let mut scalars: Vec<Scalar> = choices.iter().map(|_| random_scalar(rng)).collect();
    let choices = choices.to_vec();
    let (points, keys) = pi_channel::blocking(move || {
        let per_ot: Vec<([u8; 32], Key)> = scalars
            .par_iter()
            .zip(&choices)
            .enumerate()
            .map(|(i, (b, &c))| {
                let p0 = b * RISTRETTO_BASEPOINT_TABLE;
                let cb = if c { (p0 + big_a).compress() } else { p0.compress() };
                (cb.to_bytes(), derive(i, &ca, &cb, &(b * big_a)))
            })
            .collect();
        scalars.zeroize();
        let points: Vec<u8> = per_ot.iter().flat_map(|(p, _)| *p).collect();
        let keys = per_ot.into_iter().map(|(_, k)| k).collect();
        (points, keys)
    })
    .await?;
    ch.send_now(MsgKind::OtBase, &points).await?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[tokio::test]
    async fn receiver_gets_exactly_the_chosen_keys() {
        let (mut a, mut b) = Channel::memory_pair();
        let choices: Vec<bool> = (0..40).map(|i| (i * 7) % 3 == 0).collect();
        let c2 = choices.clone();
        let s = tokio::spawn(async move { send(&mut a, 40, &mut rand_chacha::ChaCha12Rng::seed_from_u64(1)).await });
        let r =
            tokio::spawn(async move { receive(&mut b, &c2, &mut rand_chacha::ChaCha12Rng::seed_from_u64(2)).await });
        let pairs = s.await.unwrap().unwrap();
        let got = r.await.unwrap().unwrap();
        for ((p, k), &c) in pairs.iter().zip(&got).zip(&choices) {
            assert_eq!(*k, p[c as usize]);
            assert_ne!(*k, p[!c as usize]);
        }
        let distinct: std::collections::HashSet<_> = pairs.iter().flatten().collect();
        assert_eq!(distinct.len(), 80);
    }

    #[tokio::test]
    async fn bad_points_are_errors() {
        let (mut a, mut b) = Channel::memory_pair();
        a.send_now(MsgKind::OtBase, &[0xffu8; 32]).await.unwrap();
        let r = receive(&mut b, &[true], &mut rand_chacha::ChaCha12Rng::seed_from_u64(2)).await;
        assert!(matches!(r, Err(GcError::Channel(pi_channel::ChannelError::Malformed { .. }))));
        a.send_now(MsgKind::OtBase, &[1u8; 31]).await.unwrap();
        let r = receive(&mut b, &[true], &mut rand_chacha::ChaCha12Rng::seed_from_u64(2)).await;
        assert!(matches!(r, Err(GcError::Channel(pi_channel::ChannelError::Malformed { .. }))));
    }
}
