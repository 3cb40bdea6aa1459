//! HE preprocessing of linear layers: both parties in one process over an in-memory channel, per layer
//! the client's encryption time, the server's compute time, the client's decryption time, bytes each
//! way, and (for scale) the time of the same layer computed in plaintext over the ring.

use crate::BenchError;
use pi_channel::Channel;
pub use pi_he::KernelCache;
use pi_he::{HeClient, HeParams, HeServer, KernelEncoder, LayerShape, ring_linear};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// Measurements of one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub shape: LayerShape,
    pub outputs: usize,
    /// Once per served model: planning, the noise check and (when cached) transforming the kernels.
    pub encode_s: f64,
    /// Kernel plaintexts of the layer and the bytes the server keeps for them.
    pub kernel_plaintexts: usize,
    pub kernel_cache_bytes: usize,
    pub client_encrypt_s: f64,
    pub server_compute_s: f64,
    pub client_decrypt_s: f64,
    /// Wall-clock time of the whole exchange (both parties share the machine's cores).
    pub wall_s: f64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    /// The same layer in plaintext over `Z_{2^l}` (direct loops), same inputs.
    pub plaintext_s: f64,
    /// Bits by which flooding exceeds the worst-case product noise.
    pub flood_margin_bits: u32,
    /// Client share + server share equals the plaintext result.
    pub correct: bool,
}

/// Sums over all layers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinearTotals {
    pub encode_s: f64,
    pub kernel_cache_bytes: usize,
    pub client_encrypt_s: f64,
    pub server_compute_s: f64,
    pub client_decrypt_s: f64,
    pub wall_s: f64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub plaintext_s: f64,
    pub all_correct: bool,
}

/// Report of [`run_layers`].
#[derive(Clone, Debug, Serialize)]
pub struct LinearReport {
    pub l: u32,
    pub params: HeParams,
    /// Whether the server kept its kernel plaintexts transformed between inferences.
    pub kernel_cache: String,
    /// Bytes of the once-per-session key setup (client to server).
    pub setup_bytes: u64,
    pub setup_s: f64,
    pub layers: Vec<LayerReport>,
    pub total: LinearTotals,
}

/// SplitMix64: benchmark inputs need no cryptographic quality.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Runs HE preprocessing for each layer with random 13-bit signed weights and full-range masks,
/// checks the shares, and reports times and bytes. The server encodes each layer first, as a
/// server does once per served model, keeping the kernels transformed or not as `cache` says.
pub async fn run_layers(
    layers: &[(String, LayerShape)],
    l: u32,
    cache: KernelCache,
) -> Result<LinearReport, BenchError> {
    let params = HeParams::new(l)?;
    let mask = if l == 64 { u64::MAX } else { (1u64 << l) - 1 };
    let start = Instant::now();
    let client = HeClient::from_os_rng(params.clone())?;
    let (mut cch, mut sch) = Channel::memory_pair();
    let encoder = KernelEncoder::new(&params)?;
    let (a, b) = tokio::join!(client.setup(&mut cch), HeServer::setup(&mut sch, &encoder));
    a?;
    let server = b?;
    let setup_s = start.elapsed().as_secs_f64();
    let setup_bytes = cch.counters().sent;
    let mut rng = SplitMix(0x1234_5678);
    let mut reports = Vec::with_capacity(layers.len());
    let mut total = LinearTotals { all_correct: true, ..Default::default() };
    for (name, shape) in layers {
        let w: Vec<u64> = (0..shape.weight_len()).map(|_| (((rng.next() >> 51) as i64) - 4096) as u64 & mask).collect();
        let r: Vec<u64> = (0..shape.input_len()).map(|_| rng.next() & mask).collect();
        let te = Instant::now();
        let encoded = pi_channel::blocking({
            let (shape, w) = (*shape, w.clone());
            let encoder = encoder.clone();
            move || encoder.encode(&shape, &w, cache).map(Arc::new)
        })
        .await??;
        let encode_s = te.elapsed().as_secs_f64();
        let before = cch.counters();
        let t0 = Instant::now();
        let (c, s) = tokio::join!(client.linear_timed(&mut cch, shape, &r), server.linear_encoded(&mut sch, &encoded));
        let wall_s = t0.elapsed().as_secs_f64();
        let ((c, ct), (s, st)) = (c?, s?);
        let moved = cch.counters().since(before);
        let t1 = Instant::now();
        let plain = pi_channel::blocking({
            let (shape, w, r) = (*shape, w.clone(), r.clone());
            move || ring_linear(&shape, &w, &r, l)
        })
        .await??;
        let plaintext_s = t1.elapsed().as_secs_f64();
        let correct = c.iter().zip(&s).zip(&plain).all(|((c, s), p)| c.wrapping_add(*s) & mask == *p);
        let rep = LayerReport {
            name: name.clone(),
            shape: *shape,
            outputs: plain.len(),
            encode_s,
            kernel_plaintexts: encoded.plaintexts(),
            kernel_cache_bytes: encoded.cached_bytes(),
            client_encrypt_s: ct.encrypt.as_secs_f64(),
            server_compute_s: st.compute.as_secs_f64(),
            client_decrypt_s: ct.decrypt.as_secs_f64(),
            wall_s,
            bytes_client_to_server: moved.sent,
            bytes_server_to_client: moved.received,
            plaintext_s,
            flood_margin_bits: st.flood_margin_bits,
            correct,
        };
        total.encode_s += rep.encode_s;
        total.kernel_cache_bytes += rep.kernel_cache_bytes;
        total.client_encrypt_s += rep.client_encrypt_s;
        total.server_compute_s += rep.server_compute_s;
        total.client_decrypt_s += rep.client_decrypt_s;
        total.wall_s += rep.wall_s;
        total.bytes_client_to_server += rep.bytes_client_to_server;
        total.bytes_server_to_client += rep.bytes_server_to_client;
        total.plaintext_s += rep.plaintext_s;
        total.all_correct &= correct;
        reports.push(rep);
    }
    let kernel_cache = match cache {
        KernelCache::Transformed => "transformed",
        KernelCache::OnTheFly => "on-the-fly",
    }
    .to_string();
    Ok(LinearReport { l, params, kernel_cache, setup_bytes, setup_s, layers: reports, total })
}
