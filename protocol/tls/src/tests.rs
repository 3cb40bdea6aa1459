use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs a handshake over an in-memory pipe, then sends one message each way.
async fn handshake(server: &TlsServer, client: &TlsClient, host: &str) -> Result<(), TlsError> {
    let (a, b) = tokio::io::duplex(1 << 16);
    let srv = server.clone();
    let server_side = tokio::spawn(async move {
        let mut s = srv.accept(a).await?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.map_err(TlsError::Handshake)?;
        s.write_all(&buf).await.map_err(TlsError::Handshake)?;
        s.flush().await.map_err(TlsError::Handshake)?;
        Ok::<_, TlsError>(buf)
    });
    let client_side = async {
        let mut c = client.connect(host, b).await?;
        c.write_all(b"hello").await.map_err(TlsError::Handshake)?;
        c.flush().await.map_err(TlsError::Handshake)?;
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.map_err(TlsError::Handshake)?;
        assert_eq!(&back, b"hello");
        Ok(())
    };
    let r = client_side.await;
    if r.is_err() {
        server_side.abort();
        return r;
    }
    assert_eq!(&server_side.await.unwrap()?, b"hello");
    Ok(())
}

#[tokio::test]
async fn a_pinned_self_signed_certificate_is_trusted_and_carries_data() {
    let server = TlsServer::self_signed().unwrap();
    let client = TlsClient::new(ServerTrust::Pinned(server.fingerprint())).unwrap();
    handshake(&server, &client, "127.0.0.1").await.unwrap();
}

#[tokio::test]
async fn another_certificate_is_refused_with_both_fingerprints_named() {
    let server = TlsServer::self_signed().unwrap();
    let other = TlsServer::self_signed().unwrap();
    assert_ne!(server.fingerprint(), other.fingerprint(), "each start makes a fresh key");
    let client = TlsClient::new(ServerTrust::Pinned(other.fingerprint())).unwrap();
    let e = handshake(&server, &client, "127.0.0.1").await.unwrap_err().to_string();
    assert!(e.contains(&server.fingerprint().to_string()) && e.contains(&other.fingerprint().to_string()), "{e}");
    assert!(e.contains("--tls-fingerprint"), "{e}");
}

#[tokio::test]
async fn a_ca_file_verifies_the_chain_and_the_name() {
    let dir = std::env::temp_dir().join(format!("pi-tls-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let (ca_pem, cert_pem, key_pem) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, leaf.pem()).unwrap();
    std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();

    let server = TlsServer::from_pem_files(&cert_pem, &key_pem).unwrap();
    let client = TlsClient::new(ServerTrust::CaFile(ca_pem.clone())).unwrap();
    handshake(&server, &client, "localhost").await.unwrap();
    let e = handshake(&server, &client, "example.org").await.unwrap_err().to_string();
    assert!(e.contains("handshake failed") && e.contains("not valid for name"), "{e}");

    // A self-signed server is not trusted through the CA.
    let stranger = TlsServer::self_signed().unwrap();
    assert!(handshake(&stranger, &client, "localhost").await.is_err());

    // Files that are not what they should be get a clear error naming them.
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    let e = TlsClient::new(ServerTrust::CaFile(dir.join("empty.pem"))).unwrap_err().to_string();
    assert!(e.contains("empty.pem") && e.contains("no CERTIFICATE"), "{e}");
    let e = TlsServer::from_pem_files(&cert_pem, &dir.join("missing.pem")).unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    let e = TlsServer::from_pem_files(&key_pem, &key_pem).unwrap_err().to_string();
    assert!(e.contains("no CERTIFICATE"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_peer_without_tls_gets_a_hint() {
    let client = TlsClient::new(ServerTrust::Pinned(Fingerprint([7; 32]))).unwrap();
    let (a, mut b) = tokio::io::duplex(1 << 16);
    // A plaintext server speaks first: a frame header where a TLS record should be.
    b.write_all(&[12, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
    let e = client.connect("127.0.0.1", a).await.unwrap_err().to_string();
    assert!(e.contains("--plaintext"), "{e}");
}

#[test]
fn fingerprints_parse_from_hex_with_or_without_colons() {
    let fp = Fingerprint([0xab; 32]);
    let hex = fp.to_string();
    assert_eq!(hex.len(), 64);
    assert_eq!(hex.parse::<Fingerprint>().unwrap(), fp);
    assert_eq!(hex.to_uppercase().parse::<Fingerprint>().unwrap(), fp);
    let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(colons.join(":").parse::<Fingerprint>().unwrap(), fp);
    assert!("abc".parse::<Fingerprint>().unwrap_err().to_string().contains("64 hex digits"));
    assert!("zz".repeat(32).parse::<Fingerprint>().unwrap_err().to_string().contains("not hexadecimal"));
}

#[test]
fn host_of_takes_the_host_part() {
    assert_eq!(host_of("localhost:7700"), "localhost");
    assert_eq!(host_of("10.0.0.1:7700"), "10.0.0.1");
    assert_eq!(host_of("[::1]:7700"), "::1");
    assert_eq!(host_of("example.org"), "example.org");
}
