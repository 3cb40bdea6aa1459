//! Progress of training epochs, reported batch by batch to whoever drives the library (the `pi`
//! binary draws progress bars with it). The library itself only logs through `tracing`.

/// Receives the progress of each training epoch (mask learning, finetuning, plain training).
///
/// Every method has an empty default, so an implementation overrides only what it shows.
pub trait Progress {
    /// An epoch named `label` (e.g. "epoch 3/10", "snl 4", "finetune 1/5") of `batches` steps starts.
    fn start(&mut self, label: &str, batches: usize) {
        let _ = (label, batches);
    }

    /// Batch `step` (0-based) is done; `loss` and `accuracy` are the epoch's running means so far.
    fn batch(&mut self, step: usize, loss: f64, accuracy: f64) {
        let _ = (step, loss, accuracy);
    }

    /// The epoch is done.
    fn finish(&mut self) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
