//! `pi bench gc`: garbled-circuit and OT throughput against the same run's raw fixed-key-AES bound,
//! bytes per ReLU, and end-to-end ReLU layers over loopback TCP (both parties in separate tokio tasks).

use crate::BenchError;
use pi_channel::{Channel, TaskFailed};
use pi_gc::batch::{evaluate_batch, garble_batch};
use pi_gc::hash::FixedKeyAes;
use pi_gc::ot::{CotReceiver, CotSender};
use pi_gc::relu::{relu_arith_circuit, relu_circuit_with_mask};
use pi_gc::relu_layer::{EvaluatorSession, GarblerSession, chunk_relus};
use pi_gc::{Delta, Label, ReluParams};
use pi_model::fixed::FixedPoint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcBenchOptions {
    /// ReLUs per measurement (garbling, evaluation, OT and the end-to-end layer).
    pub relus: usize,
    /// Ring width.
    pub l: u32,
    /// Fractional bits; the ReLU drops `f` bits unless `shift` says otherwise.
    pub f: u32,
    /// Share bits read by the circuit.
    pub k: u32,
    /// Bits dropped after the ReLU (default `f`).
    pub shift: Option<u32>,
    /// Wall time of the raw AES loop; garbling repeats passes over the `relus` until it has run at
    /// least as long (evaluation runs the same passes), so that all three average over similar time.
    pub aes_seconds: f64,
}

impl Default for GcBenchOptions {
    fn default() -> Self {
        let fp = FixedPoint::DEFAULT;
        Self { relus: 100_000, l: fp.l, f: fp.f, k: 32, shift: None, aes_seconds: 0.5 }
    }
}

impl GcBenchOptions {
    pub fn params(&self) -> ReluParams {
        ReluParams { l: self.l, k: self.k, shift: self.shift.unwrap_or(self.f) }
    }
}

/// Results; rates are per second of wall time on all `threads` threads of the rayon pool (the AES
/// bound loop, garbling and evaluation all run on that same pool, in alternating rounds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcReport {
    /// AND gates of the ReLU function: garbled ones plus scaled outputs (each computes one AND).
    pub and_per_relu: usize,
    /// Garbled tables and output ciphertexts, measured on the wire (frame headers included).
    pub table_bytes_per_relu: f64,
    /// IKNP matrix, measured on the wire.
    pub ot_bytes_per_relu: f64,
    /// Both directions of the online phase, measured on the wire.
    pub online_bytes_per_relu: f64,
    /// `and_per_relu` × ReLUs garbled per second (likewise evaluated).
    pub garble_and_per_s: f64,
    pub eval_and_per_s: f64,
    /// Raw fixed-key-AES blocks per second divided by 4 (hashes per garbled AND).
    pub aes_bound_garble_and_per_s: f64,
    /// The same divided by 2 (hashes per evaluated AND).
    pub aes_bound_eval_and_per_s: f64,
    /// IKNP correlated OTs per second (extension only, in-memory channel).
    pub ot_per_s: f64,
    /// ReLUs per second over loopback TCP, session setup + offline + online.
    pub relu_per_s_e2e: f64,
    // Extras.
    pub relus: usize,
    pub l: u32,
    pub k: u32,
    pub shift: u32,
    pub threads: usize,
    /// Half-gates tables per ReLU (the adder's ANDs).
    pub garbled_and_per_relu: usize,
    /// ANDs with the sign computed as scaled arithmetic outputs (no table: 24 bytes of ciphertexts).
    pub scaled_outputs_per_relu: usize,
    /// Fixed-key AES blocks hashed per ReLU by the garbler and by the evaluator.
    pub garble_hashes_per_relu: usize,
    pub eval_hashes_per_relu: usize,
    /// Share of the AES bound that garbling (evaluation) actually spends on hashing: ReLUs per second
    /// × hashes per ReLU / bound. Unlike the AND-rate ratios, fewer hashes per AND do not raise it.
    pub garble_aes_utilisation: f64,
    pub eval_aes_utilisation: f64,
    /// AND gates of the all-Boolean circuit that subtracts the mask inside the circuit (for comparison).
    pub and_per_relu_boolean_mask: usize,
    /// Tables + OT.
    pub offline_bytes_per_relu: f64,
    pub aes_blocks_per_s: f64,
    /// What computes the fixed-key permutation in the bound and in the gate loops ("vaes" or the crate).
    pub aes_backend: String,
    /// The same raw loop through the `aes` crate (AES-NI, one block per instruction), for comparison.
    pub aes_crate_blocks_per_s: f64,
    pub garble_relu_per_s: f64,
    pub eval_relu_per_s: f64,
    /// Base OTs, once per session (both directions).
    pub e2e_setup_bytes: u64,
    pub e2e_setup_s: f64,
    pub e2e_offline_s: f64,
    pub e2e_online_s: f64,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// Blocks per AES call in the bound loop: an L1-resident buffer, like the garbler's batches.
const AES_CALL_BLOCKS: usize = 1024;

/// Raw fixed-key AES (`permute`: the same VAES or AES-NI rounds the gate loops use, in place, no
/// copies) on all rayon threads, parallelised exactly like garbling (`par_chunks` over the rayon
/// pool), for at least `seconds` of wall time. Returns (blocks, wall seconds).
fn aes_blocks(seconds: f64, permute: impl Fn(&mut [u128]) + Sync) -> (u64, f64) {
    let threads = rayon::current_num_threads();
    // 8 chunks per thread so that work stealing balances a thread that the OS descheduled.
    let mut buf: Vec<u128> = (0..(8 * threads * AES_CALL_BLOCKS) as u128).collect();
    let reps = 16;
    let start = Instant::now();
    let mut blocks = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        buf.par_chunks_mut(AES_CALL_BLOCKS).for_each(|c| {
            for _ in 0..reps {
                permute(c);
            }
        });
        blocks += (reps * buf.len()) as u64;
    }
    std::hint::black_box(&buf);
    (blocks, secs(start.elapsed()))
}

/// Alternating rounds of (AES bound, garbling, evaluation), so that all three see the same load on a
/// shared machine; the rates are totals over all rounds.
const ROUNDS: usize = 3;

/// Runs every measurement once.
pub async fn run(opts: &GcBenchOptions) -> Result<GcReport, BenchError> {
    let p = opts.params();
    p.validate().map_err(BenchError::Params)?;
    if opts.relus == 0 {
        return Err(BenchError::Params("need at least one ReLU".into()));
    }
    let n = opts.relus;
    let k = p.k as usize;
    let ac = relu_arith_circuit(&p);
    let n_and = ac.and_count();

    // Raw AES bound and garbling/evaluation throughput (CPU-bound: off the async runtime).
    let aes_seconds = opts.aes_seconds;
    let ac2 = ac.clone();
    let (aes_rate, crate_rate, garble_s, eval_s) = tokio::task::spawn_blocking(move || {
        let aes = FixedKeyAes::get();
        let mut rng = rand::rng();
        let delta = Delta::random(&mut rng);
        let gz: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
        let ez: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
        // Streamed as the protocol does: chunks of `chunk_relus` ReLUs into a reused buffer, so the
        // figure is compute, not page faults of a 175 MB buffer. Each timed call garbles (evaluates) a
        // whole chunk on all rayon threads: wall time, same pool as the AES loop.
        let chunk = chunk_relus(&p);
        let mut records = vec![0u8; chunk * ac2.record_bytes()];
        let mut r = vec![0u64; chunk];
        let mut v = vec![0u64; chunk];
        let (mut garble_s, mut eval_s, mut passes) = (0.0, 0.0, 0usize);
        let (mut aes_n, mut aes_s) = (0u64, 0.0);
        let (mut crate_n, mut crate_s) = (0u64, 0.0);
        for _ in 0..ROUNDS {
            let (b, s) = aes_blocks(aes_seconds / ROUNDS as f64, |c| aes.permute(c));
            aes_n += b;
            aes_s += s;
            let (b, s) = aes_blocks(aes_seconds / ROUNDS as f64, |c| aes.permute_with_crate(c));
            crate_n += b;
            crate_s += s;
            let until = garble_s + aes_seconds / ROUNDS as f64;
            while garble_s < until {
                passes += 1;
                for lo in (0..n).step_by(chunk) {
                    let hi = (lo + chunk).min(n);
                    let m = hi - lo;
                    let (g, e) = (&gz[lo * k..hi * k], &ez[lo * k..hi * k]);
                    let recs = &mut records[..m * ac2.record_bytes()];
                    let t = Instant::now();
                    garble_batch(&ac2, &delta, lo as u64, g, e, recs, &mut r[..m]);
                    garble_s += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    evaluate_batch(&ac2, lo as u64, g, e, recs, &mut v[..m]);
                    eval_s += t.elapsed().as_secs_f64();
                    // All-zero inputs: y = 0, so z = 0 and V must equal R.
                    if v[..m] != r[..m] {
                        return Err(BenchError::Wrong("evaluation disagrees with garbling".into()));
                    }
                }
            }
        }
        let per_pass = |s: f64| (s / passes as f64).max(1e-9);
        Ok((aes_n as f64 / aes_s, crate_n as f64 / crate_s, per_pass(garble_s), per_pass(eval_s)))
    })
    .await
    .map_err(TaskFailed::from)??;

    // OT extension throughput over an in-memory channel.
    let m = n * k;
    let (mut a, mut b) = Channel::memory_pair();
    let sender = tokio::spawn(async move {
        let mut rng = StdRng::from_os_rng();
        let mut s = CotSender::setup(&mut a, &mut rng).await?;
        let t = Instant::now();
        s.extend(&mut a, m).await?;
        Ok::<_, BenchError>(t.elapsed())
    });
    let mut choices = vec![false; m];
    rand::rng().fill(&mut choices[..]);
    let mut rcv = CotReceiver::setup(&mut b, &mut StdRng::from_os_rng()).await?;
    let t = Instant::now();
    rcv.extend(&mut b, &choices).await?;
    let ot_time = t.elapsed().max(sender.await.map_err(TaskFailed::from)??);

    // End to end over loopback TCP.
    let e2e = e2e(p, n).await?;

    let nf = n as f64;
    let table_bytes = e2e.offline_s2c as f64 / nf;
    let ot_bytes = e2e.offline_c2s as f64 / nf;
    let hashes = ac.hashes_per_instance();
    Ok(GcReport {
        and_per_relu: n_and,
        table_bytes_per_relu: table_bytes,
        ot_bytes_per_relu: ot_bytes,
        online_bytes_per_relu: e2e.online_bytes as f64 / nf,
        garble_and_per_s: (n * n_and) as f64 / garble_s,
        eval_and_per_s: (n * n_and) as f64 / eval_s,
        aes_bound_garble_and_per_s: aes_rate / 4.0,
        aes_bound_eval_and_per_s: aes_rate / 2.0,
        ot_per_s: m as f64 / secs(ot_time),
        relu_per_s_e2e: nf / (e2e.setup_s + e2e.offline_s + e2e.online_s),
        relus: n,
        l: p.l,
        k: p.k,
        shift: p.shift,
        threads: rayon::current_num_threads(),
        garbled_and_per_relu: ac.n_and(),
        scaled_outputs_per_relu: ac.weights().len(),
        garble_hashes_per_relu: hashes.0,
        eval_hashes_per_relu: hashes.1,
        garble_aes_utilisation: nf / garble_s * hashes.0 as f64 / aes_rate,
        eval_aes_utilisation: nf / eval_s * hashes.1 as f64 / aes_rate,
        and_per_relu_boolean_mask: relu_circuit_with_mask(&p).n_and(),
        offline_bytes_per_relu: table_bytes + ot_bytes,
        aes_blocks_per_s: aes_rate,
        aes_backend: FixedKeyAes::get().backend().to_string(),
        aes_crate_blocks_per_s: crate_rate,
        garble_relu_per_s: nf / garble_s,
        eval_relu_per_s: nf / eval_s,
        e2e_setup_bytes: e2e.setup_bytes,
        e2e_setup_s: e2e.setup_s,
        e2e_offline_s: e2e.offline_s,
        e2e_online_s: e2e.online_s,
    })
}

struct E2e {
    setup_bytes: u64,
    offline_s2c: u64,
    offline_c2s: u64,
    online_bytes: u64,
    setup_s: f64,
    offline_s: f64,
    online_s: f64,
}

/// One ReLU layer of `n` through `relu_layer` over loopback TCP, checked against plaintext.
async fn e2e(p: ReluParams, n: usize) -> Result<E2e, BenchError> {
    let fp = FixedPoint { l: p.l, f: p.shift };
    let mut rng = StdRng::from_os_rng();
    let ys: Vec<i64> = (0..n).map(|_| rng.random::<i64>() >> (64 - p.k)).collect();
    let a: Vec<u64> = (0..n).map(|_| rng.random::<u64>() & p.mask()).collect();
    let b: Vec<u64> = ys.iter().zip(&a).map(|(&y, &a)| fp.from_i64(y).wrapping_sub(a) & p.mask()).collect();
    let r: Vec<u64> = (0..n).map(|_| rng.random::<u64>() & p.mask()).collect();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let a2 = a.clone();
    let start = Instant::now();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let mut ch = Channel::new(stream);
        let mut s = GarblerSession::setup(&mut ch).await?;
        let c0 = ch.counters();
        let off = s.offline(&mut ch, p, n).await?;
        let c1 = ch.counters();
        let out = off.online(&mut ch, &a2).await?;
        let c2 = ch.counters();
        Ok::<_, BenchError>((out, c0, c1, c2))
    });
    let client = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut ch = Channel::new(stream);
        let mut c = EvaluatorSession::setup(&mut ch).await?;
        let t_setup = Instant::now();
        let off = c.offline(&mut ch, p, &b, &r).await?;
        let t_off = Instant::now();
        let share = off.online(&mut ch).await?;
        Ok::<_, BenchError>((share, t_setup, t_off, b, r))
    });
    let (out, c0, c1, c2) = server.await.map_err(TaskFailed::from)??;
    let end = Instant::now();
    let (share, t_setup, t_off, b, r) = client.await.map_err(TaskFailed::from)??;
    if share != r {
        return Err(BenchError::Wrong("client share must be its mask".into()));
    }
    for i in 0..n {
        let want = fp.truncate(fp.relu(a[i].wrapping_add(b[i]) & p.mask()), p.shift).wrapping_sub(r[i]) & p.mask();
        if out[i] != want {
            return Err(BenchError::Wrong(format!("ReLU {i}: got {:#x}, want {want:#x}", out[i])));
        }
    }
    let off = c1.since(c0);
    Ok(E2e {
        setup_bytes: c0.total(),
        offline_s2c: off.sent,
        offline_c2s: off.received,
        online_bytes: c2.since(c1).total(),
        setup_s: secs(t_setup - start),
        offline_s: secs(t_off - t_setup),
        online_s: secs(end - t_off),
    })
}
