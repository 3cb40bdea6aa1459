//! Why a benchmark could not run or found a wrong result.

/// A benchmark's failure: a protocol error, or a result that disagrees with its plaintext check.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("homomorphic encryption: {0}")]
    He(#[from] pi_he::HeError),
    #[error("garbled circuits: {0}")]
    Gc(#[from] pi_gc::GcError),
    #[error(transparent)]
    Task(#[from] pi_channel::TaskFailed),
    #[error(transparent)]
    Channel(#[from] pi_channel::ChannelError),
    #[error(transparent)]
    Client(#[from] pi_client::ClientError),
    #[error(transparent)]
    Inference(#[from] pi_inference::InferenceError),
    #[error(transparent)]
    Tls(#[from] pi_tls::TlsError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid benchmark parameters: {0}")]
    Params(String),
    #[error("wrong result: {0}")]
    Wrong(String),
}
