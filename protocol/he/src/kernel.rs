//! The server's weights of one layer, prepared once per served model: the packing plan, the canonical
//! kernel, the flooding check and, within a memory budget, every kernel plaintext already reduced into
//! the primes and NTT-transformed, so that an inference only multiplies and adds.

use super::HeError;
use super::layer::LayerShape;
use super::pack::Plan;
use super::params::{HeContext, HeParams};
use rayon::prelude::*;
use std::sync::Arc;

/// Whether a layer's kernel plaintexts are kept transformed between inferences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCache {
    /// Encode and transform once; each plaintext takes `primes x N x 8` bytes (256 KiB by default).
    Transformed,
    /// Encode and transform per inference (no memory kept beyond the canonical kernel).
    OnTheFly,
}

/// Encodes a model's layers for one set of HE parameters (the parameters' context is built once).
#[derive(Clone)]
pub struct KernelEncoder {
    pub(crate) ctx: Arc<HeContext>,
}

impl KernelEncoder {
    pub fn new(params: &HeParams) -> Result<Self, HeError> {
        Ok(Self { ctx: params.context()? })
    }

    /// Plans the packing and checks the flooding margin for these weights; with
    /// [`KernelCache::Transformed`] also transforms every kernel plaintext (in parallel).
    pub fn encode(&self, shape: &LayerShape, weights: &[u64], cache: KernelCache) -> Result<EncodedLayer, HeError> {
        let ctx = self.ctx.clone();
        let plan = super::protocol::plan_for(&ctx, shape)?;
        if weights.len() != shape.weight_len() {
            return Err(HeError::Shape(format!("{} weights, layer has {}", weights.len(), shape.weight_len())));
        }
        let kernel = shape.canonical_kernel(weights, ctx.l());
        let margin = super::engine::check_noise(&ctx, &plan, &kernel)?;
        let mut layer = EncodedLayer { ctx, shape: *shape, plan, kernel, margin, transformed: None };
        if cache == KernelCache::Transformed {
            layer.transform_all();
        }
        Ok(layer)
    }
}

impl std::str::FromStr for KernelCache {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "transformed" => Ok(KernelCache::Transformed),
            "on-the-fly" => Ok(KernelCache::OnTheFly),
            other => Err(format!("expected transformed or on-the-fly, got {other:?}")),
        }
    }
}

/// One linear layer's weights in the form the HE products use (see the module doc).
pub struct EncodedLayer {
    pub(crate) ctx: Arc<HeContext>,
    pub(crate) shape: LayerShape,
    pub(crate) plan: Plan,
    /// Canonical kernel `[M][C'][k'][k']`, centred.
    pub(crate) kernel: Vec<i64>,
    /// Bits by which flooding exceeds the worst product noise for these weights.
    pub(crate) margin: u32,
    /// Transformed plaintexts, `g`-major: index `g * n_cb + cb`.
    transformed: Option<Vec<Vec<u64>>>,
}

impl EncodedLayer {
    /// Upper bound of what one [`super::HeServer::linear_encoded`] call holds at its peak: the
    /// queries as received and expanded (two polynomials at every prime), the replies before
    /// they are sent (counted at full width), and the share. For `pi serve --max-memory`.
    pub fn peak_call_bytes(&self) -> usize {
        let full_ct = self.full_ciphertext_bytes();
        let (queries, replies) = (self.plan.n_queries(), self.plan.n_replies());
        queries * (self.ctx.query_bytes() + full_ct) + replies * full_ct + self.shape.output_len() * 8
    }

    /// Bytes of a session's copy of the client's public key (two polynomials at every prime).
    pub fn public_key_bytes(&self) -> usize {
        self.full_ciphertext_bytes()
    }

    /// Bytes of one ciphertext in memory: two polynomials of `degree` u64 coefficients at every prime.
    fn full_ciphertext_bytes(&self) -> usize {
        2 * self.ctx.degree() * self.ctx.moduli.len() * 8
    }

    /// Transforms and keeps every kernel plaintext ([`KernelCache::Transformed`]), in parallel.
    pub fn transform_all(&mut self) {
        if self.transformed.is_none() {
            let (ctx, plan, kernel) = (&self.ctx, &self.plan, &self.kernel);
            self.transformed = Some(
                (0..plan.n_g * plan.n_cb)
                    .into_par_iter()
                    .map(|i| transform(ctx, plan, kernel, i % plan.n_cb, i / plan.n_cb))
                    .collect(),
            );
        }
    }

    /// The HE parameters this layer was encoded for.
    /// Bits by which the flooding exceeds the worst product noise for these weights.
    pub fn flood_margin_bits(&self) -> u32 {
        self.margin
    }

    /// log2 of the statistical distance one inference's replies of this layer can add: every
    /// coefficient of every reply ciphertext is flooded with `margin` bits to spare, so by the
    /// smudging lemma at most `replies x N x 2^-margin` in sum.
    pub fn reply_distance_log2(&self) -> f64 {
        ((self.plan.n_replies() * self.ctx.degree()) as f64).log2() - f64::from(self.margin)
    }

    pub fn params(&self) -> &HeParams {
        &self.ctx.params
    }

    /// The layer this encodes.
    pub fn shape(&self) -> &LayerShape {
        &self.shape
    }

    /// Kernel plaintexts of the layer (output groups x channel blocks).
    pub fn plaintexts(&self) -> usize {
        self.plan.n_g * self.plan.n_cb
    }

    /// Bytes held by transformed plaintexts (0 when encoded on the fly).
    pub fn cached_bytes(&self) -> usize {
        self.transformed.as_ref().map_or(0, |t| t.iter().map(|p| p.len() * 8).sum())
    }

    /// Bytes that [`KernelCache::Transformed`] would hold for this layer.
    pub fn transformed_bytes(&self) -> usize {
        self.plaintexts() * self.ctx.rns.primes() * self.ctx.degree() * 8
    }

    /// The kernel plaintexts of output group `g`, one per channel block, transformed now if not cached.
    pub(crate) fn group(&self, g: usize) -> GroupKernels<'_> {
        let n_cb = self.plan.n_cb;
        match &self.transformed {
            Some(t) => GroupKernels::Cached(&t[g * n_cb..(g + 1) * n_cb]),
            None => {
                GroupKernels::Fresh((0..n_cb).map(|cb| transform(&self.ctx, &self.plan, &self.kernel, cb, g)).collect())
            }
        }
    }
}

/// Kernel plaintexts of one output group, borrowed from the cache or made for this inference.
pub(crate) enum GroupKernels<'a> {
    Cached(&'a [Vec<u64>]),
    Fresh(Vec<Vec<u64>>),
}

impl GroupKernels<'_> {
    pub fn get(&self, cb: usize) -> &[u64] {
        match self {
            GroupKernels::Cached(t) => &t[cb],
            GroupKernels::Fresh(t) => &t[cb],
        }
    }
}

/// The kernel plaintext of channel block `cbi` and output group `g`, in NTT form at level 0.
fn transform(ctx: &HeContext, plan: &Plan, kernel: &[i64], cbi: usize, g: usize) -> Vec<u64> {
    let (rns, n) = (&ctx.rns, ctx.degree());
    let mut p = vec![0u64; rns.primes() * n];
    plan.kernel_entries(cbi, g, |e, k| {
        for i in 0..rns.primes() {
            p[i * n + e] = rns.reduce_signed(i, kernel[k]);
        }
    });
    rns.forward(&mut p, rns.primes());
    p
}
