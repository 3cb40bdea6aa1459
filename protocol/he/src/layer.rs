//! Shapes of the linear layers HE preprocessing handles, their reduction to one canonical form
//! (a stride-1 "valid" convolution), and a plaintext ring reference used for benchmarks.
//!
//! Stride `s > 1` is removed by the polyphase split: input row `s*i + a` of the padded input becomes
//! row `i` of sub-image `a` (same for columns), kernel row `s*u + a` becomes row `u` of sub-kernel `a`,
//! and the strided convolution is the sum over phases of stride-1 convolutions. Each phase is treated
//! as an extra input channel, so the packing only ever sees stride 1 and no padding. A fully connected
//! layer is the 1x1 convolution of a 1x1 image with `inputs` channels.

use super::HeError;
use serde::{Deserialize, Serialize};

/// A 2-D convolution (groups = 1, square kernel, same stride and padding in both directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvShape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// Output height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        let ho = (self.height + 2 * self.padding).saturating_sub(self.kernel) / self.stride.max(1) + 1;
        let wo = (self.width + 2 * self.padding).saturating_sub(self.kernel) / self.stride.max(1) + 1;
        (ho, wo)
    }
}

/// A fully connected layer `y = W v`, `W` of shape `outputs x inputs` (row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FcShape {
    pub inputs: usize,
    pub outputs: usize,
}

/// One linear layer, without bias (the server adds its bias online).
///
/// Layouts: conv input `[C][H][W]`, kernels `[out][in][kh][kw]`, output `[out][Ho][Wo]`;
/// FC input `[inputs]`, weights `[outputs][inputs]`, output `[outputs]`. All values are ring elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LayerShape {
    Conv(ConvShape),
    Fc(FcShape),
}

/// Upper bound on any dimension product we accept, so that shape arithmetic cannot overflow.
const MAX_ELEMS: usize = 1 << 32;

impl LayerShape {
    /// Number of ring elements of the input (the client's mask).
    pub fn input_len(&self) -> usize {
        match self {
            LayerShape::Conv(c) => c.in_channels * c.height * c.width,
            LayerShape::Fc(f) => f.inputs,
        }
    }

    /// Number of ring elements of the server's weights.
    pub fn weight_len(&self) -> usize {
        match self {
            LayerShape::Conv(c) => c.out_channels * c.in_channels * c.kernel * c.kernel,
            LayerShape::Fc(f) => f.outputs * f.inputs,
        }
    }

    /// Number of ring elements of the output.
    pub fn output_len(&self) -> usize {
        match self {
            LayerShape::Conv(c) => {
                let (ho, wo) = c.output_hw();
                c.out_channels * ho * wo
            }
            LayerShape::Fc(f) => f.outputs,
        }
    }

    /// Checks that the shape is meaningful and small enough for exact `usize` arithmetic.
    pub fn validate(&self) -> Result<(), HeError> {
        let bad = |m: String| Err(HeError::Shape(m));
        match *self {
            LayerShape::Conv(c) => {
                if c.in_channels == 0 || c.out_channels == 0 || c.height == 0 || c.width == 0 {
                    return bad(format!("empty convolution {c:?}"));
                }
                if c.kernel == 0 || c.stride == 0 {
                    return bad(format!("kernel and stride must be positive in {c:?}"));
                }
                if c.kernel > 64 || c.stride > 64 || c.padding > 64 {
                    return bad(format!("kernel, stride and padding must be at most 64 in {c:?}"));
                }
                if c.height.max(c.width) > 1 << 16 || c.in_channels.max(c.out_channels) > 1 << 16 {
                    return bad(format!("convolution too large: {c:?}"));
                }
                if c.height + 2 * c.padding < c.kernel || c.width + 2 * c.padding < c.kernel {
                    return bad(format!("kernel larger than the padded input in {c:?}"));
                }
            }
            LayerShape::Fc(f) => {
                if f.inputs == 0 || f.outputs == 0 {
                    return bad(format!("empty fully connected layer {f:?}"));
                }
                if f.inputs > 1 << 24 || f.outputs > 1 << 24 {
                    return bad(format!("fully connected layer too large: {f:?}"));
                }
            }
        }
        for n in [self.input_len(), self.weight_len(), self.output_len()] {
            if n > MAX_ELEMS {
                return bad(format!("layer {self:?} has more than 2^32 elements"));
            }
        }
        Ok(())
    }

    /// The canonical stride-1 valid convolution computing the same outputs.
    pub(crate) fn canonical(&self) -> Canon {
        match *self {
            LayerShape::Conv(c) => {
                let (ho, wo) = c.output_hw();
                let s = c.stride;
                let ph = s.min(c.kernel);
                let k = c.kernel.div_ceil(s);
                Canon { c: c.in_channels * ph * ph, h: ho + k - 1, w: wo + k - 1, k, ho, wo, m: c.out_channels }
            }
            LayerShape::Fc(f) => Canon { c: f.inputs, h: 1, w: 1, k: 1, ho: 1, wo: 1, m: f.outputs },
        }
    }

    /// The client's input rearranged to the canonical tensor `[C'][H'][W']` (padding and phases applied).
    pub(crate) fn canonical_input(&self, r: &[u64]) -> Vec<u64> {
        match *self {
            LayerShape::Fc(_) => r.to_vec(),
            LayerShape::Conv(c) => {
                let cn = self.canonical();
                let s = c.stride;
                let ph = s.min(c.kernel);
                let (hp, wp) = (c.height + 2 * c.padding, c.width + 2 * c.padding);
                let mut out = vec![0u64; cn.c * cn.h * cn.w];
                for ch in 0..c.in_channels {
                    for a in 0..ph {
                        for b in 0..ph {
                            let cc = (ch * ph + a) * ph + b;
                            for i in 0..cn.h {
                                let y = s * i + a;
                                if y < c.padding || y >= hp - c.padding {
                                    continue;
                                }
                                for j in 0..cn.w {
                                    let x = s * j + b;
                                    if x < c.padding || x >= wp - c.padding {
                                        continue;
                                    }
                                    out[(cc * cn.h + i) * cn.w + j] =
                                        r[(ch * c.height + (y - c.padding)) * c.width + (x - c.padding)];
                                }
                            }
                        }
                    }
                }
                out
            }
        }
    }

    /// The server's weights rearranged to the canonical kernels `[M][C'][k'][k']`, as centred signed
    /// integers (`w` in `[0, 2^l)` maps to `w - 2^l` when its top bit is set).
    pub(crate) fn canonical_kernel(&self, weights: &[u64], l: u32) -> Vec<i64> {
        // Sign extension of the low `l` bits.
        let centre = |w: u64| -> i64 { ((w << (64 - l)) as i64) >> (64 - l) };
        match *self {
            LayerShape::Fc(_) => weights.iter().map(|&w| centre(w)).collect(),
            LayerShape::Conv(c) => {
                let cn = self.canonical();
                let s = c.stride;
                let ph = s.min(c.kernel);
                let kk = c.kernel;
                let mut out = vec![0i64; cn.m * cn.c * cn.k * cn.k];
                for o in 0..cn.m {
                    for ch in 0..c.in_channels {
                        for a in 0..ph {
                            for b in 0..ph {
                                let cc = (ch * ph + a) * ph + b;
                                for u in 0..cn.k {
                                    let ku = s * u + a;
                                    if ku >= kk {
                                        continue;
                                    }
                                    for v in 0..cn.k {
                                        let kv = s * v + b;
                                        if kv >= kk {
                                            continue;
                                        }
                                        out[((o * cn.c + cc) * cn.k + u) * cn.k + v] =
                                            centre(weights[((o * c.in_channels + ch) * kk + ku) * kk + kv]);
                                    }
                                }
                            }
                        }
                    }
                }
                out
            }
        }
    }
}

/// `2^l - 1`.
pub(crate) fn ring_mask(l: u32) -> u64 {
    if l >= 64 { u64::MAX } else { (1u64 << l) - 1 }
}

/// A stride-1, unpadded convolution: `out[m][y][x] = sum_{c,u,v} K[m][c][u][v] * T[c][y+u][x+v]`
/// for `y < ho`, `x < wo` (with `ho + k - 1 == h`, `wo + k - 1 == w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Canon {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub ho: usize,
    pub wo: usize,
    pub m: usize,
}

/// Plaintext ring evaluation of a layer (im2col-free direct loops, wrapping arithmetic mod `2^l`):
/// the reference the HE result is benchmarked against, at the scale of one plaintext evaluation.
pub fn ring_linear(shape: &LayerShape, weights: &[u64], input: &[u64], l: u32) -> Result<Vec<u64>, HeError> {
    shape.validate()?;
    if weights.len() != shape.weight_len() || input.len() != shape.input_len() {
        return Err(HeError::Shape(format!(
            "expected {} weights and {} inputs, got {} and {}",
            shape.weight_len(),
            shape.input_len(),
            weights.len(),
            input.len()
        )));
    }
    let mask = ring_mask(l);
    let out = match *shape {
        LayerShape::Fc(f) => (0..f.outputs)
            .map(|o| {
                let row = &weights[o * f.inputs..(o + 1) * f.inputs];
                row.iter().zip(input).fold(0u64, |acc, (&w, &x)| acc.wrapping_add(w.wrapping_mul(x))) & mask
            })
            .collect(),
        LayerShape::Conv(c) => {
            let (ho, wo) = c.output_hw();
            let mut out = vec![0u64; c.out_channels * ho * wo];
            for o in 0..c.out_channels {
                let plane = &mut out[o * ho * wo..(o + 1) * ho * wo];
                for ch in 0..c.in_channels {
                    for u in 0..c.kernel {
                        for v in 0..c.kernel {
                            let w = weights[((o * c.in_channels + ch) * c.kernel + u) * c.kernel + v];
                            for y in 0..ho {
                                let iy = (y * c.stride + u) as isize - c.padding as isize;
                                if iy < 0 || iy >= c.height as isize {
                                    continue;
                                }
                                let row = &input[(ch * c.height + iy as usize) * c.width..][..c.width];
                                for x in 0..wo {
                                    let ix = (x * c.stride + v) as isize - c.padding as isize;
                                    if ix >= 0 && ix < c.width as isize {
                                        plane[y * wo + x] =
                                            plane[y * wo + x].wrapping_add(w.wrapping_mul(row[ix as usize]));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            out.iter_mut().for_each(|v| *v &= mask);
            out
        }
    };
    Ok(out)
}
