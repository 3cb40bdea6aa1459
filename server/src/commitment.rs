//! What the server announces about its model's identity: a salted commitment, not the bare hash.
//!
//! An unsalted hash of the weights lets a client confirm a guess of them (a public checkpoint,
//! say). The commitment `blake3_keyed(salt, "pi-model commitment v1" | content hash)` hides the
//! weights while the salt stays secret (a 256-bit key) and binds the server to them (blake3's
//! collision resistance). The salt lives in a file next to the model, so the commitment stays the
//! same across restarts and can be handed to clients out of band (`pi infer --expect-hash`).

use crate::ServerError;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where the commitment's salt comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum SaltSource {
    /// A fresh salt from OS randomness for this process only: the commitment changes at every
    /// start, so there is nothing to publish (tests, benchmarks, the demo).
    Fresh,
    /// A salt kept in this file as 64 hex digits, created from OS randomness (owner-only
    /// permissions) when it does not exist yet.
    File(PathBuf),
}

/// A commitment key: 32 secret bytes.
#[derive(Clone)]
pub struct Salt([u8; 32]);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

/// The salt file a model gets by default: `MODEL.salt` beside `MODEL`.
pub fn default_salt_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".salt");
    PathBuf::from(name)
}

impl Salt {
    /// A fresh salt from OS randomness.
    pub fn fresh() -> Salt {
        Salt(rand_chacha::ChaCha20Rng::from_os_rng().random())
    }

    /// The salt `source` names: read, created, or fresh.
    pub fn from_source(source: &SaltSource) -> Result<Salt, ServerError> {
        match source {
            SaltSource::Fresh => Ok(Salt::fresh()),
            SaltSource::File(path) => match Salt::read(path) {
                Err(ServerError::Salt { source: Some(e), .. }) if e.kind() == std::io::ErrorKind::NotFound => {
                    Salt::create(path)
                }
                other => other,
            },
        }
    }

    /// Reads a salt file (64 hex digits and an optional newline; nothing longer is read).
    pub fn read(path: &Path) -> Result<Salt, ServerError> {
        let err = |reason: &str, source| ServerError::Salt { path: path.to_path_buf(), reason: reason.into(), source };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(200).read_to_string(&mut text))
            .map_err(|e| err("cannot read it", Some(e)))?;
        let mut salt = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut salt).map_err(|_| err("expected 64 hex digits", None))?;
        Ok(Salt(salt))
    }

    /// Creates a salt file with a fresh salt; refuses to overwrite an existing one.
    pub fn create(path: &Path) -> Result<Salt, ServerError> {
        let salt = Salt::fresh();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path).and_then(|mut f| writeln!(f, "{}", hex::encode(salt.0))).map_err(|e| ServerError::Salt {
            path: path.to_path_buf(),
            reason: "cannot create it".into(),
            source: Some(e),
        })?;
        tracing::info!(path = %path.display(), "created the model commitment's salt: keep it secret, keep it with the model");
        Ok(salt)
    }

    /// The commitment to a model with this content hash (hex, as `pi_model::format::content_hash`).
    pub fn commit(&self, content_hash: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"pi-model commitment v1\0");
        h.update(content_hash.as_bytes());
        h.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_salt_file_is_created_once_then_reused_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("pi-salt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = default_salt_path(&dir.join("m.safetensors"));
        assert_eq!(path, dir.join("m.safetensors.salt"));
        let _ = std::fs::remove_file(&path);
        let a = Salt::from_source(&SaltSource::File(path.clone())).unwrap();
        let b = Salt::from_source(&SaltSource::File(path.clone())).unwrap();
        assert_eq!(a.commit("x"), b.commit("x"), "the same file gives the same commitment");
        assert!(Salt::create(&path).is_err(), "an existing salt is never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Different salts, different commitments; different models, different commitments.
        let fresh = Salt::fresh();
        assert_ne!(fresh.commit("x"), a.commit("x"));
        assert_ne!(a.commit("x"), a.commit("y"));
        assert_eq!(a.commit("x").len(), 64);

        std::fs::write(&path, "not hex").unwrap();
        let e = Salt::read(&path).unwrap_err().to_string();
        assert!(e.contains("m.safetensors.salt") && e.contains("64 hex digits"), "{e}");
        std::fs::write(&path, "ab".repeat(10_000)).unwrap();
        assert!(Salt::read(&path).unwrap_err().to_string().contains("64 hex digits"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
