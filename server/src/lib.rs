//! The server party: loads and prepares a model, accepts clients over TCP and runs one private
//! inference session per connection. A failing session is logged and ends alone.

#![forbid(unsafe_code)]

pub mod commitment;

pub use commitment::{Salt, SaltSource, default_salt_path};

use pi_channel::Channel;
use pi_inference::{InferenceError, PublicModel, PublicModelError, ServedModel, ServerSession};
pub use pi_inference::{SignBits, Truncation};
use pi_inference::{WidthCheck, calibrate_relu_bits, check_relu_bits, tell_peer};
use pi_model::data::{self, Split};
use pi_model::engine::RingModel;
use pi_model::{FixedPoint, format};
use pi_tls::{Fingerprint, TlsServer};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How wide the garbled ReLU circuits are.
#[derive(Clone, Debug, PartialEq)]
pub enum ReluBits {
    /// Calibrated per layer on sample inputs, plus a safety margin.
    Auto,
    /// Full ring width `l` (always correct, most AND gates).
    Full,
    /// The same `k` for every layer.
    Fixed(u32),
}

impl std::str::FromStr for ReluBits {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ReluBits::Auto),
            "full" => Ok(ReluBits::Full),
            n => n.parse().map(ReluBits::Fixed).map_err(|_| format!("expected auto, full or a bit count, got {n:?}")),
        }
    }
}

/// How many fractional bits `f` the fixed-point encoding keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FracBits {
    /// The smallest `f` in [`FRAC_BITS_AUTO_MIN`]`..=`[`FixedPoint::DEFAULT`]`.f` at which the
    /// fixed-point engine still computes the f32 function on every calibration image (same top-1,
    /// logit error within [`FRAC_BITS_AUTO_TOLERANCE`] of the logits' range), checked for every `f`
    /// down to it. Every bit less is one input bit less per party in every garbled ReLU.
    Auto,
    /// This `f` for every model.
    Fixed(u32),
}

impl std::str::FromStr for FracBits {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FracBits::Auto),
            n => n.parse().map(FracBits::Fixed).map_err(|_| format!("expected auto or a bit count, got {n:?}")),
        }
    }
}

impl std::fmt::Display for FracBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FracBits::Auto => f.write_str("auto"),
            FracBits::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// How many top bits of each share decide a kept ReLU's sign (`--sign-bits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignBitsChoice {
    /// This choice for every model.
    Fixed(SignBits),
    /// The fewest `M` in [`SIGN_BITS_AUTO`] at which the fixed-point engine, with every kept ReLU
    /// zeroing its whole dead zone (the worst case of the stochastic ReLU), still gives its exact
    /// self's top-1 and logits within [`FRAC_BITS_AUTO_TOLERANCE`] of their range on every
    /// calibration image, checked for every `M` down to it; `all` if even the largest fails.
    Auto,
}

/// The sign bits `--sign-bits auto` tries, from the largest down.
pub const SIGN_BITS_AUTO: std::ops::RangeInclusive<u32> = 8..=16;

impl std::str::FromStr for SignBitsChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SignBitsChoice::Auto),
            _ => s.parse().map(SignBitsChoice::Fixed).map_err(|e| format!("{e} or auto")),
        }
    }
}

impl std::fmt::Display for SignBitsChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignBitsChoice::Auto => f.write_str("auto"),
            SignBitsChoice::Fixed(b) => b.fmt(f),
        }
    }
}

/// The fewest fractional bits `--frac-bits auto` tries.
pub const FRAC_BITS_AUTO_MIN: u32 = 6;

/// The largest logit error `--frac-bits auto` accepts, as a fraction of the image's f32 logit range
/// (largest minus smallest logit).
pub const FRAC_BITS_AUTO_TOLERANCE: f32 = 0.01;

/// How a model is prepared for serving.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Ring width `l`.
    pub ring_bits: u32,
    pub frac_bits: FracBits,
    pub relu_bits: ReluBits,
    /// Extra bits above the widest calibrated activation.
    pub margin_bits: u32,
    /// What `auto` widths are sized from (without it, `auto` falls back to full width).
    pub calibration: Calibration,
    /// The salt of the model commitment announced to clients (the bare hash is never announced).
    pub salt: SaltSource,
    /// Memory for NTT-transformed kernel plaintexts, kept between inferences so HE only multiplies
    /// (layers in order until the budget is spent; the rest transform theirs per inference).
    pub he_cache_bytes: usize,
    /// How shares are rescaled ([`Truncation`]), announced to clients.
    pub truncation: Truncation,
    /// How kept ReLUs read the sign ([`SignBits`], or chosen per model), announced to clients.
    pub sign_bits: SignBitsChoice,
    /// Whether convolutions after garbled ReLUs start while the client evaluates them.
    pub overlap: Overlap,
}

/// Whether the server starts a convolution that follows garbled ReLUs while the client evaluates
/// them: on the linearized neurons, adding the kept ones when their results arrive (the same ring
/// elements; kernels kept transposed, 4 bytes per weight). It helps when the parties do not share
/// cores (ResNet-18 at 10% on an emulated LAN, online 1.10-1.12x) and hurts when they share two
/// over loopback (0.74-0.93x: the server's convolution and the client's evaluation compete).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlap {
    #[default]
    Off,
    On,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overlap::Off => "off",
            Overlap::On => "on",
        })
    }
}

impl std::str::FromStr for Overlap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Overlap::Off),
            "on" => Ok(Overlap::On),
            _ => Err(format!("expected off or on, got {s:?}")),
        }
    }
}

/// Inputs that size `--relu-bits auto` circuits. A ReLU whose input exceeds its circuit's width
/// wraps silently (a wrong output), so the widths must come from inputs like the real ones.
#[derive(Clone, Debug, PartialEq)]
pub enum Calibration {
    /// Nothing to calibrate on: `auto` uses the full ring width (said in the log).
    None,
    /// The training split of a dataset directory: its first [`CALIBRATION_IMAGES`] images size the
    /// circuits, the next as many (held out) measure how often those widths would wrap.
    Dataset(PathBuf),
    /// Uniform random inputs in `[-2.5, 2.5)`: right only when the served inputs are drawn the same
    /// way (benchmarks on random images).
    RandomInputs,
}

/// Images that size the circuits, and as many held out to check them.
pub const CALIBRATION_IMAGES: usize = 64;

/// Default [`PrepareOptions::he_cache_bytes`]: 2 GiB (all layers of ResNet-18 at CIFAR size take
/// 3.8 GiB, of WRN-22-8 17.9 GiB, of the bundled small CNN 9 MiB).
pub const DEFAULT_HE_CACHE_BYTES: usize = 2 << 30;

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            ring_bits: FixedPoint::DEFAULT.l,
            frac_bits: FracBits::Fixed(FixedPoint::DEFAULT.f),
            relu_bits: ReluBits::Auto,
            margin_bits: 4,
            calibration: Calibration::None,
            salt: SaltSource::Fresh,
            he_cache_bytes: DEFAULT_HE_CACHE_BYTES,
            truncation: Truncation::Local,
            sign_bits: SignBitsChoice::Fixed(SignBits::All),
            overlap: Overlap::Off,
        }
    }
}

/// Why a model could not be prepared or the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("loading {path}: {source}")]
    Load { path: PathBuf, source: pi_model::format::FormatError },
    #[error(transparent)]
    Engine(#[from] pi_model::engine::EngineError),
    #[error("calibration data {path}: {source}")]
    Calibration { path: PathBuf, source: pi_model::data::DataError },
    #[error("calibration images are {images:?}, the model takes {model:?}")]
    CalibrationShape { images: Vec<usize>, model: Vec<usize> },
    #[error(transparent)]
    PublicModel(#[from] PublicModelError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("server settings: {0}")]
    Settings(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] pi_tls::TlsError),
    #[error("commitment salt {path}: {reason}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Salt { path: PathBuf, reason: String, source: Option<std::io::Error> },
}

/// Loads a model file and prepares it for serving: fold, encode, choose circuit widths.
pub fn prepare(path: &Path, opts: &PrepareOptions) -> Result<ServedModel, ServerError> {
    let model = format::load(path).map_err(|source| ServerError::Load { path: path.to_path_buf(), source })?;
    prepare_model(&model, opts)
}

/// Prepares a model already in memory (as [`prepare`] does for a file).
pub fn prepare_model(model: &pi_model::Model, opts: &PrepareOptions) -> Result<ServedModel, ServerError> {
    // A file's shapes decide every allocation below (folding, encoding, calibration inputs and
    // activations): bound them first, as a client bounds a greeting.
    pi_inference::check_activations(&model.graph)?;
    let hash = Salt::from_source(&opts.salt)?.commit(&format::content_hash(model));
    let folded = model.fold_batchnorm();
    let calibration = calibration_inputs(&folded, &opts.calibration)?;
    let fp = match opts.frac_bits {
        FracBits::Fixed(f) => FixedPoint { l: opts.ring_bits, f },
        FracBits::Auto => {
            let f = match &calibration {
                Some((fit, held_out)) => {
                    let images: Vec<&[f32]> = fit.iter().chain(held_out).map(Vec::as_slice).collect();
                    choose_frac_bits(&folded, opts.ring_bits, &images)?
                }
                None => {
                    tracing::warn!(
                        "--frac-bits auto needs calibration images (--calibrate DIR): using f = {}",
                        FixedPoint::DEFAULT.f
                    );
                    FixedPoint::DEFAULT.f
                }
            };
            FixedPoint { l: opts.ring_bits, f }
        }
    };
    fp.validate().map_err(ServerError::Settings)?;
    let ring = RingModel::new(&folded, fp)?;
    let bits = match opts.relu_bits {
        ReluBits::Full => None,
        ReluBits::Fixed(k) => Some(
            ring.model
                .graph
                .nodes
                .iter()
                .map(|n| if matches!(n.op, pi_model::Op::Relu { .. }) { k } else { 0 })
                .collect(),
        ),
        ReluBits::Auto => match &calibration {
            None => {
                tracing::warn!(
                    "--relu-bits auto needs calibration images (--calibrate DIR): using the full ring width, {} bits",
                    ring.fp.l
                );
                None
            }
            Some((fit, held_out)) => {
                let bits = calibrate_relu_bits(&ring, fit, opts.margin_bits);
                report_widths(&check_relu_bits(&ring, held_out, &bits), opts.margin_bits);
                Some(bits)
            }
        },
    };
    let sign_bits = match (opts.sign_bits, &bits) {
        (SignBitsChoice::Fixed(SignBits::All), _) => SignBits::All,
        // The dead zone is `2^(k - M)` units: with the full ring width it swallows every activation.
        (_, None) => {
            return Err(ServerError::Settings(format!(
                "--sign-bits {} needs calibrated circuit widths (--relu-bits auto with --calibrate DIR, or a number)",
                opts.sign_bits
            )));
        }
        (SignBitsChoice::Fixed(b), Some(_)) => b,
        (SignBitsChoice::Auto, Some(widths)) => match (&calibration, opts.truncation) {
            (Some((fit, held_out)), Truncation::Local) => {
                let images: Vec<&[f32]> = fit.iter().chain(held_out).map(Vec::as_slice).collect();
                choose_sign_bits(&ring, widths, &images)?
            }
            _ => {
                return Err(ServerError::Settings(
                    "--sign-bits auto needs calibration images (--calibrate DIR) and --truncation local".into(),
                ));
            }
        },
    };
    let mut public = PublicModel::new(&ring.model, hash, ring.fp, bits)?;
    public.truncation = opts.truncation;
    public.sign_bits = sign_bits;
    public.validate()?;
    let mut ring = ring;
    if opts.overlap == Overlap::On {
        let bytes = ring.prepare_scatter();
        tracing::info!(
            scatter_kernel_mib = bytes >> 20,
            "convolutions after garbled ReLUs start while the client evaluates"
        );
    }
    Ok(ServedModel::new(ring, public, opts.he_cache_bytes)?)
}

/// `--frac-bits auto`: walks `f` down from the default and keeps the last one at which the
/// fixed-point engine agrees with the f32 engine on every image (top-1, and logits within
/// [`FRAC_BITS_AUTO_TOLERANCE`] of their range). Each `f` is checked, not inferred from its
/// neighbours, and the walk stops at the first that fails.
fn choose_frac_bits(folded: &pi_model::Model, l: u32, images: &[&[f32]]) -> Result<u32, ServerError> {
    let reference = images.iter().map(|x| pi_model::engine::run_f32(folded, x)).collect::<Result<Vec<_>, _>>()?;
    let mut chosen = None;
    for f in (FRAC_BITS_AUTO_MIN..=FixedPoint::DEFAULT.f).rev() {
        let fp = FixedPoint { l, f };
        if fp.validate().is_err() {
            continue;
        }
        let ring = RingModel::new(folded, fp)?;
        let (agree, worst) = agreement(&ring, images, &reference)?;
        let ok = agree && worst <= FRAC_BITS_AUTO_TOLERANCE;
        tracing::debug!(f, top1_agrees = agree, worst_relative_logit_error = worst, ok, "frac bits");
        if !ok {
            break;
        }
        chosen = Some(f);
    }
    let Some(f) = chosen else {
        tracing::warn!(
            f = FixedPoint::DEFAULT.f,
            "--frac-bits auto: even the default f changes the f32 function on a calibration image; keeping it"
        );
        return Ok(FixedPoint::DEFAULT.f);
    };
    tracing::info!(f, images = images.len(), "--frac-bits auto");
    Ok(f)
}

/// Whether `ring` gives the top-1 of `reference` (logits per image) on every image, and its largest
/// logit error relative to the reference logits' range.
fn agreement(ring: &RingModel, images: &[&[f32]], reference: &[Vec<f32>]) -> Result<(bool, f32), ServerError> {
    let (mut agree, mut worst) = (true, 0f32);
    for (x, want) in images.iter().zip(reference) {
        let got = ring.decode_output(&ring.run(x)?);
        let range =
            want.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) - want.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(err / range.max(f32::MIN_POSITIVE));
        agree &= pi_model::engine::argmax(&got) == pi_model::engine::argmax(want);
    }
    Ok((agree, worst))
}

/// `--sign-bits auto` ([`SignBitsChoice::Auto`]): walks `M` down [`SIGN_BITS_AUTO`] and keeps the
/// last one at which the worst case of the stochastic ReLU (every kept input in its dead zone
/// `[0, 2^(k - M))` zeroed, for the layers wider than `M` after local truncation's narrowing) gives
/// the exact fixed-point engine's top-1, and logits within [`FRAC_BITS_AUTO_TOLERANCE`] of their
/// range, on every image.
fn choose_sign_bits(ring: &RingModel, widths: &[u32], images: &[&[f32]]) -> Result<SignBits, ServerError> {
    let reference =
        images.iter().map(|x| Ok(ring.decode_output(&ring.run(x)?))).collect::<Result<Vec<_>, ServerError>>()?;
    let mut worst_case = ring.clone();
    let mut chosen = SignBits::All;
    for m in SIGN_BITS_AUTO.rev() {
        // In units of the ReLU's input: the narrowed circuit's `2^(k - shift - m)`, times `2^shift`.
        let dead: Vec<u32> = (0..ring.layers.len())
            .map(|i| {
                let (k, shift) = (widths[i], ring.plan.nodes[i].relu_shift_units * ring.fp.f);
                let relu = matches!(ring.model.graph.nodes[i].op, pi_model::Op::Relu { .. });
                match SignBits::Top(m).top(k.saturating_sub(shift)) {
                    Some(m) if relu => k - m,
                    _ => 0,
                }
            })
            .collect();
        worst_case.set_sign_dead_zones(&dead);
        let (agree, worst) = agreement(&worst_case, images, &reference)?;
        let ok = agree && worst <= FRAC_BITS_AUTO_TOLERANCE;
        tracing::debug!(sign_bits = m, top1_agrees = agree, worst_relative_logit_error = worst, ok, "sign bits");
        if !ok {
            break;
        }
        chosen = SignBits::Top(m);
    }
    tracing::info!(sign_bits = %chosen, images = images.len(), "--sign-bits auto");
    Ok(chosen)
}

/// Logs how the calibrated widths fare on the held-out inputs: one line per layer at debug level,
/// a summary at info, a warning when any held-out activation would wrap.
fn report_widths(checks: &[WidthCheck], margin_bits: u32) {
    for c in checks {
        tracing::debug!(node = %c.node, k = c.bits, held_out_needed_bits = c.needed_bits, wraps = c.wraps, values = c.values, "relu width");
    }
    let (wraps, values) = checks.iter().fold((0, 0), |a, c| (a.0 + c.wraps, a.1 + c.values));
    let slack = checks.iter().map(|c| i64::from(c.bits) - i64::from(c.needed_bits)).min().unwrap_or(0);
    let rate = wraps as f64 / values.max(1) as f64;
    if wraps > 0 {
        let worst = checks.iter().max_by_key(|c| c.wraps).map(|c| c.node.as_str()).unwrap_or("");
        tracing::warn!(
            wraps,
            values,
            rate,
            worst,
            "calibrated ReLU widths wrap on held-out images: raise --margin-bits or use --relu-bits full"
        );
    } else {
        tracing::info!(
            margin_bits,
            held_out_min_slack_bits = slack,
            held_out_values = values,
            "calibrated ReLU widths: no held-out activation wraps"
        );
    }
}

/// The inputs that size the circuits and those held out to check them (`None`: nothing to
/// calibrate on).
type CalibrationSets = Option<(Vec<Vec<f32>>, Vec<Vec<f32>>)>;

fn calibration_inputs(model: &pi_model::Model, calibration: &Calibration) -> Result<CalibrationSets, ServerError> {
    let shape = &model.graph.input_shape;
    let n = CALIBRATION_IMAGES;
    match calibration {
        Calibration::None => Ok(None),
        Calibration::Dataset(dir) => {
            let ds = data::load_dir_with(dir, Split::Train, Some(model.normalization.clone()))
                .map_err(|source| ServerError::Calibration { path: dir.to_path_buf(), source })?;
            if ds.shape.as_slice() != shape.as_slice() {
                return Err(ServerError::CalibrationShape { images: ds.shape.to_vec(), model: shape.clone() });
            }
            let images = |r: std::ops::Range<usize>| r.map(|i| ds.image(i).to_vec()).collect::<Vec<_>>();
            let fit = ds.len().min(n);
            Ok(Some((images(0..fit), images(fit..ds.len().min(2 * n)))))
        }
        Calibration::RandomInputs => {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0);
            let len: usize = shape.iter().product();
            let mut draw = |k: usize| -> Vec<Vec<f32>> {
                (0..k).map(|_| (0..len).map(|_| rng.random_range(-2.5f32..2.5)).collect()).collect()
            };
            Ok(Some((draw(16), draw(16))))
        }
    }
}

/// How many sessions a memory budget holds (`pi serve --max-memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub budget: usize,
    /// The process's resident memory with the model prepared (0 where /proc is not available).
    pub resident: usize,
    /// [`ServedModel::session_memory_bytes`]: the most one session holds at its peak.
    pub per_session: usize,
    /// Sessions that fit: `(budget - resident) / per_session`.
    pub sessions: usize,
}

impl MemoryPlan {
    /// Sizes the sessions of `model` within `budget` bytes, given what the process holds now;
    /// refuses a budget that holds no session.
    pub fn new(budget: usize, model: &ServedModel) -> Result<Self, ServerError> {
        let resident = resident_bytes().unwrap_or(0);
        let per_session = model.session_memory_bytes().max(1);
        let sessions = budget.saturating_sub(resident) / per_session;
        if sessions == 0 {
            return Err(ServerError::Settings(format!(
                "a memory budget of {} MiB holds no session: the prepared model takes {} MiB and one session up to {} MiB",
                budget >> 20,
                resident >> 20,
                per_session.div_ceil(1 << 20)
            )));
        }
        Ok(Self { budget, resident, per_session, sessions })
    }
}

/// Resident memory of this process (Linux: `/proc/self/statm`), `None` elsewhere.
pub fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Transport limits of the server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted frame.
    pub max_frame: usize,
    /// Longest wait for any read from, or write to, a client.
    pub read_timeout: Duration,
    /// Sessions served at once; further clients are refused with "server busy".
    pub max_sessions: usize,
    /// Inferences per session, so one connection cannot make the server work forever.
    pub max_inferences_per_session: usize,
    /// Time from accepting a connection to the end of the handshake (hello, HE keys, base OTs):
    /// a client that trickles bytes to stay under `read_timeout` still loses its slot after this.
    pub handshake_deadline: Duration,
    /// Time for one inference, offline and online, from the client's request to the logits.
    pub inference_deadline: Duration,
}

/// Smallest frame limit the protocol works with: HE sends frames of up to 8 MiB of ciphertexts
/// (`pi_he`), the garbled layers 1 MiB; 16 MiB leaves room for one ciphertext more.
pub const MIN_MAX_FRAME: usize = 16 << 20;

impl Limits {
    /// Refuses settings with which every session would fail, so `pi serve` stops at start instead.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Settings(m));
        if self.max_frame < MIN_MAX_FRAME {
            return bad(format!(
                "largest frame {} bytes is below the {} MiB the protocol sends",
                self.max_frame,
                MIN_MAX_FRAME >> 20
            ));
        }
        if self.max_frame > u32::MAX as usize {
            return bad(format!("largest frame {} bytes exceeds the 4 GiB a frame header can state", self.max_frame));
        }
        if self.read_timeout.is_zero() {
            return bad("a read timeout of 0 s ends every session at its first read".into());
        }
        if self.handshake_deadline.is_zero() || self.inference_deadline.is_zero() {
            return bad("a deadline of 0 s ends every session before it starts".into());
        }
        if self.max_sessions == 0 || self.max_inferences_per_session == 0 {
            return bad("at least one session and one inference per session must be allowed".into());
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: pi_channel::DEFAULT_MAX_FRAME,
            read_timeout: Duration::from_secs(60),
            max_sessions: 32,
            max_inferences_per_session: 10_000,
            handshake_deadline: Duration::from_secs(60),
            inference_deadline: Duration::from_secs(600),
        }
    }
}

/// A bound server: a prepared model behind a TCP listener.
///
/// ```no_run
/// # async fn f() -> Result<(), pi_server::ServerError> {
/// let model = pi_server::prepare("model.safetensors".as_ref(), &Default::default())?;
/// let tls = pi_server::ServerTransport::Tls(std::sync::Arc::new(pi_tls::TlsServer::self_signed()?));
/// let server = pi_server::Server::bind(model, &pi_server::ServerOptions::new("127.0.0.1:7700", tls)).await?;
/// println!("listening on {}", server.local_addr());
/// if let Some(fp) = server.fingerprint() {
///     println!("tls certificate sha256 {fp}"); // what clients pin
/// }
/// server.run().await;
/// # Ok(()) }
/// ```
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    model: Arc<ServedModel>,
    limits: Limits,
    transport: ServerTransport,
}

/// How connections are secured.
#[derive(Clone, Debug)]
pub enum ServerTransport {
    /// TLS 1.3 with this certificate: what `pi serve` does unless told `--plaintext`.
    Tls(Arc<TlsServer>),
    /// Bare TCP, for benchmarks and tests on loopback: anyone on the path can read every message
    /// and alter it undetected.
    Plaintext,
}

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to listen on (`HOST:PORT`; port 0 picks a free port).
    pub listen: String,
    pub limits: Limits,
    pub transport: ServerTransport,
}

impl ServerOptions {
    /// Serves on `listen` with the default limits.
    pub fn new(listen: &str, transport: ServerTransport) -> Self {
        Self { listen: listen.to_string(), limits: Limits::default(), transport }
    }
}

impl Server {
    /// Binds the listener.
    pub async fn bind(model: ServedModel, options: &ServerOptions) -> Result<Server, ServerError> {
        options.limits.validate()?;
        let bind_err = |source| ServerError::Bind { addr: options.listen.clone(), source };
        let listener = TcpListener::bind(&options.listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Server {
            listener,
            addr,
            model: Arc::new(model),
            limits: options.limits.clone(),
            transport: options.transport.clone(),
        })
    }

    /// The bound address (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The model being served (its public view holds the hash clients may pin).
    pub fn model(&self) -> &ServedModel {
        &self.model
    }

    /// SHA-256 of the server's TLS certificate (what clients pin), `None` over plaintext.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        match &self.transport {
            ServerTransport::Tls(tls) => Some(tls.fingerprint()),
            ServerTransport::Plaintext => None,
        }
    }

    /// Serves clients until the task is dropped. Each connection is its own task; a failing
    /// session is logged and ends alone.
    pub async fn run(self) {
        serve(self.listener, self.model, self.limits, self.transport).await
    }
}

/// Serves clients on `listener` until the task is dropped (see [`Server::run`]).
pub async fn serve(listener: TcpListener, model: Arc<ServedModel>, limits: Limits, transport: ServerTransport) {
    let counter = AtomicU64::new(0);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_sessions));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = counter.fetch_add(1, Ordering::Relaxed);
        let model = model.clone();
        let limits = limits.clone();
        let slot = slots.clone().try_acquire_owned();
        let transport = transport.clone();
        tokio::spawn(async move {
            let handshake_until = tokio::time::Instant::now() + limits.handshake_deadline;
            let ch = match open(stream, &transport, handshake_until).await {
                Ok(ch) => ch,
                Err(e) => {
                    tracing::warn!(session = id, %peer, "{e}");
                    return;
                }
            };
            let mut ch = ch.with_max_frame(limits.max_frame).with_timeout(limits.read_timeout);
            let Ok(_slot) = slot else {
                tracing::warn!(session = id, %peer, "refused: {} sessions already running", limits.max_sessions);
                let busy = InferenceError::Limit("server busy: too many sessions, try again later".into());
                tell_peer(&mut ch, &busy).await;
                return;
            };
            tracing::info!(session = id, %peer, "client connected");
            // The session has told the client why it failed; here it is only logged.
            match session(&mut ch, model, id, &limits, handshake_until).await {
                Ok(n) => tracing::info!(session = id, inferences = n, "session ended"),
                Err(e) => tracing::warn!(session = id, "session failed: {e}"),
            }
        });
    }
}

/// The connection's channel: over TLS once its handshake is done (within the handshake
/// deadline, so a client that stalls it holds nothing for long), or bare.
async fn open(stream: TcpStream, transport: &ServerTransport, until: tokio::time::Instant) -> Result<Channel, String> {
    match transport {
        ServerTransport::Plaintext => Ok(Channel::new(stream)),
        ServerTransport::Tls(tls) => match tokio::time::timeout_at(until, tls.accept(stream)).await {
            Ok(Ok(s)) => Ok(Channel::new(s)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("TLS handshake not finished within the handshake deadline".into()),
        },
    }
}

async fn session(
    ch: &mut Channel,
    model: Arc<ServedModel>,
    id: u64,
    limits: &Limits,
    handshake_until: tokio::time::Instant,
) -> Result<usize, InferenceError> {
    let handshake = ServerSession::handshake(ch, model, limits.max_inferences_per_session);
    let mut s = match tokio::time::timeout_at(handshake_until, handshake).await {
        Ok(r) => r?,
        Err(_) => return Err(deadline(ch, "handshake", limits.handshake_deadline).await),
    };
    while s.next_request(ch).await?.is_some() {
        let stats = match tokio::time::timeout(limits.inference_deadline, s.serve_inference(ch)).await {
            Ok(r) => r?,
            Err(_) => return Err(deadline(ch, "inference", limits.inference_deadline).await),
        };
        tracing::info!(
            session = id,
            inference = s.served(),
            offline_ms = stats.offline.as_millis() as u64,
            online_ms = stats.online.as_millis() as u64,
            offline_bytes = stats.offline_bytes.total(),
            online_bytes = stats.online_bytes.total(),
            "inference served"
        );
    }
    Ok(s.served())
}

/// A phase ran past its deadline: tells the client (best effort) and returns the error to log.
async fn deadline(ch: &mut Channel, phase: &str, limit: Duration) -> InferenceError {
    let e =
        InferenceError::Limit(format!("{phase} not finished within the server's {} s deadline", limit.as_secs_f64()));
    tell_peer(ch, &e).await;
    e
}
