//! Cheetah-style coefficient packing of a canonical convolution (see `layer.rs`) into polynomials of
//! degree `N`, so that one ciphertext-plaintext product yields many outputs and no rotation is needed.
//!
//! The input `T[C][H][W]` is cut into blocks of `cb` channels and `hb x wb` pixels (spatial blocks
//! overlap by `k-1` so each output lies wholly inside one block). Block value `T[c,i,j]` goes to
//! `X^(c*hb*wb + i*wb + j)`. A plaintext packs the kernels of `mb` output channels: `K[m,c,u,v]` goes to
//! `X^(m*D + O - c*hb*wb - u*wb - v)` with `D = cb*hb*wb` and `O = (cb-1)*hb*wb + (k-1)*wb + (k-1)`.
//! The product's coefficient at `X^(m*D + O + y*wb + x)` is output `(m, y, x)` summed over the block's
//! channels, as long as `mb*D <= N` (the fully connected packing of Cheetah is the case `hb = wb = 1`).
//! Summing the products of all channel blocks gives the full output.

use super::layer::Canon;

/// Bytes of compute we consider equivalent to one ciphertext-plaintext product when choosing blocks
/// (a product with its kernel NTT at N = 8192 and four primes costs about the time to move this many
/// bytes over a 1 Gbit/s link).
const PRODUCT_COST_BYTES: usize = 25_000;

/// How one layer is packed: block sizes and the counts derived from them. Both parties compute the same
/// plan from the public shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub cn: Canon,
    pub n: usize,
    /// Output rows / columns per spatial tile.
    pub th: usize,
    pub tw: usize,
    /// Input rows / columns per block (`th + k - 1`).
    pub hb: usize,
    pub wb: usize,
    /// Channels per input block, output channels per plaintext.
    pub cb: usize,
    pub mb: usize,
    pub n_cb: usize,
    pub n_g: usize,
    pub n_ty: usize,
    pub n_tx: usize,
}

/// Sizes of one ciphertext on the wire, used to pick the blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WireCost {
    /// Bytes of one query ciphertext (client to server).
    pub query: usize,
    /// Bytes of the fixed part of one reply ciphertext (its second component).
    pub reply_fixed: usize,
    /// Bits of one returned first-component coefficient.
    pub reply_coeff_bits: usize,
}

impl Plan {
    /// Chooses the blocks that minimise bytes moved plus compute (in byte-equivalents).
    pub fn choose(cn: Canon, n: usize, cost: WireCost) -> Option<Plan> {
        let mut best: Option<(usize, Plan)> = None;
        for th in 1..=cn.ho {
            let hb = th + cn.k - 1;
            let n_ty = cn.ho.div_ceil(th);
            // Larger tiles are never worse once they cover the image; skip tiles that do not shrink the count.
            if th > 1 && cn.ho.div_ceil(th - 1) == n_ty {
                continue;
            }
            for tw in 1..=cn.wo {
                let wb = tw + cn.k - 1;
                let n_tx = cn.wo.div_ceil(tw);
                if tw > 1 && cn.wo.div_ceil(tw - 1) == n_tx {
                    continue;
                }
                if hb * wb > n {
                    break;
                }
                let cb_max = (n / (hb * wb)).min(cn.c);
                for cb in 1..=cb_max {
                    let n_cb = cn.c.div_ceil(cb);
                    if cb > 1 && cn.c.div_ceil(cb - 1) == n_cb {
                        continue;
                    }
                    let mb = (n / (cb * hb * wb)).min(cn.m);
                    let n_g = cn.m.div_ceil(mb);
                    let tiles = n_ty * n_tx;
                    let plan = Plan { cn, n, th, tw, hb, wb, cb, mb, n_cb, n_g, n_ty, n_tx };
                    let outputs = cn.m * cn.ho * cn.wo;
                    let bytes = n_cb * tiles * cost.query
                        + n_g * tiles * cost.reply_fixed
                        + (outputs * cost.reply_coeff_bits).div_ceil(8);
                    let products = n_cb * n_g * tiles;
                    let score = bytes + products * PRODUCT_COST_BYTES;
                    if best.as_ref().is_none_or(|(s, _)| score < *s) {
                        best = Some((score, plan));
                    }
                }
            }
        }
        best.map(|(_, p)| p)
    }

    pub fn tiles(&self) -> usize {
        self.n_ty * self.n_tx
    }

    /// Number of query ciphertexts: one per (channel block, tile), in that order.
    pub fn n_queries(&self) -> usize {
        self.n_cb * self.tiles()
    }

    /// Number of reply ciphertexts: one per (output group, tile), in that order.
    pub fn n_replies(&self) -> usize {
        self.n_g * self.tiles()
    }

    /// Non-zero coefficients of one kernel plaintext at most (bounds the product noise).
    pub fn kernel_nnz(&self) -> usize {
        self.mb * self.cb * self.cn.k * self.cn.k
    }

    fn offset(&self) -> usize {
        (self.cb - 1) * self.hb * self.wb + (self.cn.k - 1) * self.wb + (self.cn.k - 1)
    }

    /// Coefficients of the input block `(channel block cbi, tile)` from the canonical tensor `t`.
    pub fn input_block(&self, t: &[u64], cbi: usize, tile: usize) -> Vec<u64> {
        let cn = &self.cn;
        let (ty, tx) = (tile / self.n_tx, tile % self.n_tx);
        let (y0, x0) = (ty * self.th, tx * self.tw);
        let mut out = vec![0u64; self.n];
        for cc in 0..self.cb {
            let c = cbi * self.cb + cc;
            if c >= cn.c {
                break;
            }
            for i in 0..self.hb {
                let y = y0 + i;
                if y >= cn.h {
                    break;
                }
                for j in 0..self.wb {
                    let x = x0 + j;
                    if x >= cn.w {
                        break;
                    }
                    out[cc * self.hb * self.wb + i * self.wb + j] = t[(c * cn.h + y) * cn.w + x];
                }
            }
        }
        out
    }

    /// The non-zero positions of the kernel plaintext for channel block `cbi` and output group `g`:
    /// calls `f(coefficient index, index into the canonical kernel [M][C'][k'][k'])` for each. The
    /// positions depend only on the public shape, so visiting them leaks nothing about the weights.
    pub fn kernel_entries(&self, cbi: usize, g: usize, mut f: impl FnMut(usize, usize)) {
        let cn = &self.cn;
        let d = self.cb * self.hb * self.wb;
        let o = self.offset();
        for mm in 0..self.mb {
            let m = g * self.mb + mm;
            if m >= cn.m {
                break;
            }
            for cc in 0..self.cb {
                let c = cbi * self.cb + cc;
                if c >= cn.c {
                    break;
                }
                for u in 0..cn.k {
                    for v in 0..cn.k {
                        f(
                            mm * d + o - cc * self.hb * self.wb - u * self.wb - v,
                            ((m * cn.c + c) * cn.k + u) * cn.k + v,
                        );
                    }
                }
            }
        }
    }

    /// The useful coefficients of reply `(g, tile)`: pairs `(coefficient index, output index)` with the
    /// output index into `[M][Ho][Wo]`.
    pub fn outputs(&self, g: usize, tile: usize) -> Vec<(usize, usize)> {
        let cn = &self.cn;
        let d = self.cb * self.hb * self.wb;
        let o = self.offset();
        let (ty, tx) = (tile / self.n_tx, tile % self.n_tx);
        let (y0, x0) = (ty * self.th, tx * self.tw);
        let mut out = Vec::new();
        for mm in 0..self.mb {
            let m = g * self.mb + mm;
            if m >= cn.m {
                break;
            }
            for y in 0..self.th {
                if y0 + y >= cn.ho {
                    break;
                }
                for x in 0..self.tw {
                    if x0 + x >= cn.wo {
                        break;
                    }
                    out.push((mm * d + o + y * self.wb + x, (m * cn.ho + y0 + y) * cn.wo + x0 + x));
                }
            }
        }
        out
    }
}
