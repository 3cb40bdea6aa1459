//! Compact wire format of polynomial residues: each residue mod `p` takes exactly `bits(p)` bits,
//! little-endian bit order. Reading validates lengths and that every residue is below its modulus, so
//! malformed peer data becomes an error before it reaches `fhe`.

use super::HeError;

/// Bytes taken by `count` values of `bits` bits.
pub(crate) fn packed_len(count: usize, bits: u32) -> usize {
    (count * bits as usize).div_ceil(8)
}

/// Appends `values` (each `< 2^bits`) bit-packed to `out`.
pub(crate) fn pack(values: &[u64], bits: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + packed_len(values.len(), bits), 0);
    let buf = &mut out[start..];
    let mut acc: u128 = 0;
    let mut nacc = 0u32;
    let mut pos = 0usize;
    for &v in values {
        acc |= (v as u128) << nacc;
        nacc += bits;
        while nacc >= 8 {
            buf[pos] = acc as u8;
            pos += 1;
            acc >>= 8;
            nacc -= 8;
        }
    }
    if nacc > 0 {
        buf[pos] = acc as u8;
    }
}

/// Reads `count` bit-packed values of `bits` bits from the front of `bytes`, each required to be `< modulus`.
/// Returns the values and the number of bytes consumed.
pub(crate) fn unpack_checked(
    bytes: &[u8],
    count: usize,
    bits: u32,
    modulus: u64,
) -> Result<(Vec<u64>, usize), HeError> {
    let len = packed_len(count, bits);
    if bytes.len() < len {
        return Err(HeError::Malformed(format!("expected {len} bytes of residues, got {}", bytes.len())));
    }
    let mask = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let mut out = Vec::with_capacity(count);
    let mut acc: u128 = 0;
    let mut nacc = 0u32;
    let mut it = bytes[..len].iter();
    for _ in 0..count {
        while nacc < bits {
            // `len` bytes hold `count * bits` bits, so the iterator cannot run dry here.
            let b = *it.next().ok_or_else(|| HeError::Malformed("truncated residues".into()))?;
            acc |= (b as u128) << nacc;
            nacc += 8;
        }
        let v = (acc as u64) & mask;
        acc >>= bits;
        nacc -= bits;
        if v >= modulus {
            return Err(HeError::Malformed(format!("residue {v} not below its modulus {modulus}")));
        }
        out.push(v);
    }
    Ok((out, len))
}

/// Number of bits of `p - 1` (the width of a residue mod `p`).
pub(crate) fn residue_bits(p: u64) -> u32 {
    64 - (p - 1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_and_rejects_bad_residues() {
        for bits in [1u32, 7, 30, 60, 62, 64] {
            let modulus = if bits == 64 { u64::MAX } else { 1u64 << bits };
            let vals: Vec<u64> = (0..37u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % modulus).collect();
            let mut buf = vec![0xAA];
            pack(&vals, bits, &mut buf);
            assert_eq!(buf.len(), 1 + packed_len(vals.len(), bits));
            let (got, used) = unpack_checked(&buf[1..], vals.len(), bits, modulus).unwrap();
            assert_eq!(got, vals);
            assert_eq!(used, packed_len(vals.len(), bits));
            assert!(unpack_checked(&buf[1..buf.len() - 1], vals.len(), bits, modulus).is_err());
        }
        let mut buf = vec![];
        pack(&[5, 6, 7], 3, &mut buf);
        assert!(unpack_checked(&buf, 3, 3, 7).is_err());
    }
}
