//! TLS 1.3 between the parties (rustls with the *ring* provider), so that nobody on the path can
//! read or alter a message undetected: a flipped bit in an HE key, an OT matrix or a garbled table
//! ends the session with an error instead of a wrong prediction.
//!
//! The server holds a certificate: its operator's (`--tls-cert`, `--tls-key`) or a self-signed one
//! made at start ([`TlsServer::self_signed`]). The client trusts it either by its SHA-256
//! [`Fingerprint`] (pinning, the way to trust a self-signed certificate) or through a CA file.
//! Both ends speak TLS 1.3 only; there is no fallback.

#![forbid(unsafe_code)]

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

pub use tokio_rustls::client::TlsStream as ClientStream;
pub use tokio_rustls::server::TlsStream as ServerStream;

/// Why TLS could not be set up or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(#[from] rustls::Error),
    #[error("making a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("bad certificate fingerprint {given:?}: {reason}")]
    Fingerprint { given: String, reason: &'static str },
    #[error("{0:?} is not a host name or an IP address a certificate can name")]
    ServerName(String),
    #[error("TLS handshake failed: {0}{hint}", hint = handshake_hint(.0))]
    Handshake(std::io::Error),
}

/// A likely cause for a failed handshake, said once next to rustls's own words.
fn handshake_hint(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        " (the peer does not speak TLS: is one side running with --plaintext?)"
    } else if text.contains("fingerprint") {
        " (the server's certificate is not the pinned one: check --tls-fingerprint against what pi serve printed)"
    } else {
        ""
    }
}

/// The SHA-256 digest of a certificate's DER encoding: what a client pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of one certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = TlsError;
    /// 64 hex digits, upper or lower case; colons between bytes (as `openssl x509 -fingerprint`
    /// prints them) are allowed.
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let bad = |reason| TlsError::Fingerprint { given: s.chars().take(100).collect(), reason };
        let digits: String = s.trim().chars().filter(|&c| c != ':').collect();
        if digits.len() != 64 {
            return Err(bad("expected 64 hex digits (a SHA-256 digest)"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&digits, &mut out).map_err(|_| bad("not hexadecimal"))?;
        Ok(Fingerprint(out))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's side: its certificate and the acceptor that runs handshakes with it.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: tokio_rustls::TlsAcceptor,
    fingerprint: Fingerprint,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// Names a self-signed certificate carries (a client that pins the fingerprint does not check them).
pub const SELF_SIGNED_NAMES: [&str; 2] = ["localhost", "pi-server"];

impl TlsServer {
    /// A fresh ECDSA P-256 key and a self-signed certificate for it, made from OS randomness. Its
    /// key lives only in this process: clients pin [`TlsServer::fingerprint`].
    pub fn self_signed() -> Result<TlsServer, TlsError> {
        let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        Self::new(vec![made.cert.der().clone()], key)
    }

    /// The operator's certificate chain and private key, PEM files (the chain starts with the
    /// server's own certificate).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsServer, TlsError> {
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustls::pki_types::pem::Error| TlsError::File { path, reason: e.to_string() }
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(file_err(cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(file_err(cert))?;
        if chain.is_empty() {
            return Err(TlsError::File { path: cert.to_path_buf(), reason: "no CERTIFICATE block".into() });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(file_err(key))?;
        Self::new(chain, key)
    }

    fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<TlsServer, TlsError> {
        let fingerprint = Fingerprint::of(&chain[0]);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(TlsServer { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), fingerprint })
    }

    /// SHA-256 of the server's certificate, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Runs the server's side of a handshake on an accepted connection.
    pub async fn accept<S>(&self, stream: S) -> Result<ServerStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor.accept(stream).await.map_err(TlsError::Handshake)
    }
}

/// How a client decides to trust the server's certificate.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Exactly the certificate with this SHA-256 digest (names and dates are not checked: the
    /// digest names one certificate, and the handshake proves the server holds its key).
    Pinned(Fingerprint),
    /// Any certificate for the server's name that chains to one of these CA certificates (PEM).
    CaFile(PathBuf),
}

/// The client's side: whom it trusts and the connector that runs handshakes.
#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    trust: ServerTrust,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient").field("trust", &self.trust).finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client that trusts the server as `trust` says.
    pub fn new(trust: ServerTrust) -> Result<TlsClient, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let config = match &trust {
            ServerTrust::Pinned(fp) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier::new(*fp)))
                .with_no_client_auth(),
            ServerTrust::CaFile(path) => {
                let file_err =
                    |e: rustls::pki_types::pem::Error| TlsError::File { path: path.clone(), reason: e.to_string() };
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(file_err)? {
                    roots.add(cert.map_err(file_err)?)?;
                }
                if roots.is_empty() {
                    return Err(TlsError::File { path: path.clone(), reason: "no CERTIFICATE block".into() });
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        Ok(TlsClient { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), trust })
    }

    /// Whom this client trusts.
    pub fn trust(&self) -> &ServerTrust {
        &self.trust
    }

    /// Runs the client's side of a handshake with the server at `host` (the host part of the
    /// address; a CA-verified certificate must name it, a pinned one need not).
    pub async fn connect<S>(&self, host: &str, stream: S) -> Result<ClientStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match self.trust {
            ServerTrust::Pinned(_) => ServerName::try_from(SELF_SIGNED_NAMES[1]).expect("a valid DNS name"),
            ServerTrust::CaFile(_) => {
                ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.into()))?
            }
        };
        self.connector.connect(name, stream).await.map_err(TlsError::Handshake)
    }
}

/// The host part of `HOST:PORT` (`[v6]:port` too), for the server name a certificate must carry.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Accepts exactly one certificate, by digest, and checks the handshake signatures with its key.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    fn new(pinned: Fingerprint) -> Self {
        Self { pinned, algorithms: provider().signature_verification_algorithms }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint is sha256 {got}, pinned {}",
                self.pinned
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
