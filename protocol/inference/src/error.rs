//! What ends a session, and the one mapping from an error to what the peer is told.

use pi_channel::{Channel, ChannelError, TaskFailed};
use pi_gc::GcError;
use pi_he::HeError;

use crate::public::PublicModelError;

/// Anything that ends an inference session.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("garbled circuits: {0}")]
    Gc(#[from] GcError),
    #[error("homomorphic encryption: {0}")]
    He(#[from] HeError),
    #[error(transparent)]
    PublicModel(#[from] PublicModelError),
    #[error("model hash mismatch: server serves {served}, client expects {expected}")]
    HashMismatch { served: String, expected: String },
    #[error("protocol version mismatch: server speaks {server}, client {client}")]
    Version { server: u16, client: u16 },
    #[error("bad input: {0}")]
    Input(String),
    #[error("refused: {0}")]
    Limit(String),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

impl InferenceError {
    /// The channel error underneath, if the failure came from the link or the peer's messages.
    fn channel(&self) -> Option<&ChannelError> {
        match self {
            InferenceError::Channel(c)
            | InferenceError::Gc(GcError::Channel(c))
            | InferenceError::He(HeError::Channel(c)) => Some(c),
            _ => None,
        }
    }

    /// What the peer is told when this error ends the session: `None` when it cannot or need not
    /// hear (it hung up, or it reported the error itself). Protocol errors the peer caused are
    /// named; this side's internal errors (which on the server could describe the weights) are not.
    pub fn peer_message(&self) -> Option<String> {
        if let Some(c) = self.channel() {
            return match c {
                // A broken TLS stream cannot carry a message any more.
                ChannelError::Closed | ChannelError::Io(_) | ChannelError::Remote(_) | ChannelError::Integrity(_) => {
                    None
                }
                other => Some(other.to_string()),
            };
        }
        match self {
            // The peer's HE parameters or layer header disagree with ours: name the disagreement.
            InferenceError::He(e @ (HeError::Params(_) | HeError::Malformed(_))) => Some(e.to_string()),
            InferenceError::Gc(_) | InferenceError::He(_) | InferenceError::Task(_) => Some("internal error".into()),
            other => Some(other.to_string()),
        }
    }
}

/// Tells the peer why this side ends the session (best effort, once, at the session boundary).
pub async fn tell_peer(ch: &mut Channel, e: &InferenceError) {
    if let Some(m) = e.peer_message() {
        ch.send_error(&m).await;
    }
}

/// Passes a session step's result through, telling the peer about a failure.
pub(crate) async fn told<T>(ch: &mut Channel, r: Result<T, InferenceError>) -> Result<T, InferenceError> {
    match r {
        Err(e) => {
            let e = e.lifted();
            tell_peer(ch, &e).await;
            Err(e)
        }
        ok => ok,
    }
}

impl InferenceError {
    /// The peer's own error report, out of the phase that happened to be reading when it arrived:
    /// "peer reported an error: session limit reached", not "homomorphic encryption: peer ...".
    fn lifted(self) -> Self {
        match self {
            InferenceError::He(HeError::Channel(c @ ChannelError::Remote(_)))
            | InferenceError::Gc(GcError::Channel(c @ ChannelError::Remote(_))) => InferenceError::Channel(c),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pi_channel::MsgKind;

    #[test]
    fn internal_errors_are_not_described_and_hangups_are_not_answered() {
        let he = InferenceError::He(HeError::Noise("secret detail".into()));
        assert_eq!(he.peer_message().as_deref(), Some("internal error"));
        let closed = InferenceError::Gc(GcError::Channel(ChannelError::Closed));
        assert_eq!(closed.peer_message(), None);
        let remote = InferenceError::Channel(ChannelError::Remote("bye".into()));
        assert_eq!(remote.peer_message(), None);
        let bad = InferenceError::He(HeError::Channel(ChannelError::UnexpectedKind {
            expected: MsgKind::HeQuery,
            got: MsgKind::Data,
        }));
        assert!(bad.peer_message().unwrap().contains("HeQuery"));
        let limit = InferenceError::Limit("session limit of 3 inferences reached".into());
        assert!(limit.peer_message().unwrap().contains("session limit"));
    }
}
