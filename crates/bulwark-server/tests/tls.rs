//! TLS listeners end to end: real handshakes on 127.0.0.1 with a rustls client, certificates
//! made with rcgen for each test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulwark_server::ListenerConfig;
use bulwark_server::tls::{ClientAuth, TlsSettings, TlsVersion};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA and the files of one test.
struct Pki {
    dir: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    /// Server settings requiring client certificates from this CA, checked against `crl`.
    fn mtls(&self, crl: Vec<PathBuf>) -> TlsSettings {
        let mut settings = self.settings();
        settings.client_auth = ClientAuth::Required;
        settings.client_ca = Some(self.path("ca.pem"));
        settings.crl = crl;
        settings
    }

    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(common::unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self {
            dir,
            ca_der: ca.der().clone(),
            ca_params,
            ca_key,
        }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.ca_params, &self.ca_key)
    }

    /// Writes `stem.pem` and `stem.key`; returns the serial.
    fn leaf(
        &self,
        stem: &str,
        cn: &str,
        names: &[&str],
        client: bool,
        serial: u64,
    ) -> SerialNumber {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        std::fs::write(self.dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        common::write_private_key(&self.dir.join(format!("{stem}.key")), &key.serialize_pem());
        SerialNumber::from(serial)
    }

    fn crl(&self, revoked: &[SerialNumber]) -> PathBuf {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: s.clone(),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()).unwrap();
        let path = self.dir.join("ca.crl");
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn settings(&self) -> TlsSettings {
        TlsSettings::new(self.path("server.pem"), self.path("server.key"))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_key(path: &Path) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).unwrap()
}

fn read_cert(path: &Path) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).unwrap()
}

/// A client configuration trusting the test CA, optionally with a client certificate, for the
/// given versions.
fn client_config(
    pki: &Pki,
    client: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some(stem) => builder
            .with_client_auth_cert(
                vec![read_cert(&pki.path(&format!("{stem}.pem")))],
                read_key(&pki.path(&format!("{stem}.key"))),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// A handshake for `localhost` offering TLS 1.3 and 1.2, with client certificate `cert` if any.
async fn connect_as(addr: SocketAddr, pki: &Pki, cert: Option<&str>) -> std::io::Result<Tls> {
    handshake(addr, client_config(pki, cert, BOTH), "localhost").await
}

/// The connection is refused: at the handshake, or (TLS 1.3 verifies the client's certificate
/// after the client's side finished) at the first read.
async fn assert_refused(attempt: std::io::Result<Tls>) {
    if let Ok(mut s) = attempt {
        assert!(mqtt_connect_v3(&mut s, "x").await.is_err());
    }
}

/// The connection is still served: a PINGREQ is answered.
async fn assert_alive(stream: &mut Tls) {
    stream.write_all(&[0xC0, 0]).await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong, [0xD0, 0]);
}

/// A 3.1.1 CONNECT for `id`, then the 4-byte CONNACK.
async fn mqtt_connect_v3(stream: &mut Tls, id: &str) -> std::io::Result<[u8; 4]> {
    let mut packet = vec![0x10, (12 + id.len()) as u8, 0, 4];
    packet.extend_from_slice(b"MQTT");
    packet.extend_from_slice(&[4, 2, 0, 60, 0, id.len() as u8]);
    packet.extend_from_slice(id.as_bytes());
    stream.write_all(&packet).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut connack))
        .await
        .map_err(|_| std::io::Error::other("no CONNACK"))??;
    Ok(connack)
}

/// A 5.0 CONNECT for `id`; returns the CONNACK's reason code.
async fn mqtt_connect_v5(stream: &mut Tls, id: &str) -> u8 {
    let mut packet = vec![0x10, (13 + id.len()) as u8, 0, 4];
    packet.extend_from_slice(b"MQTT");
    packet.extend_from_slice(&[5, 2, 0, 60, 0, 0, id.len() as u8]);
    packet.extend_from_slice(id.as_bytes());
    stream.write_all(&packet).await.unwrap();
    connack_reason(stream).await
}

/// Reads a 5.0 CONNACK; returns its reason code.
async fn connack_reason(stream: &mut Tls) -> u8 {
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[0], 0x20, "CONNACK");
    let mut body = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut body).await.unwrap();
    body[1]
}

async fn tls_server(settings: TlsSettings) -> common::TestServer {
    common::start_with(|c| {
        c.listeners = vec![ListenerConfig::tls(
            "tls",
            "127.0.0.1:0".parse().unwrap(),
            settings,
        )];
        c.tls_watch_interval = Duration::from_secs(1);
    })
    .await
}

#[tokio::test]
async fn mqtt_over_tls_12_and_13_and_min_version() {
    let pki = Pki::new("tls-basic");
    pki.leaf("server", "localhost", &["localhost"], false, 10);
    let server = tls_server(pki.settings()).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut s = handshake(
            server.addr,
            client_config(&pki, None, &[version]),
            "localhost",
        )
        .await
        .unwrap();
        assert_eq!(s.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(mqtt_connect_v3(&mut s, "c").await.unwrap(), [0x20, 2, 0, 0]);
    }
    server.stop().await;

    let mut settings = pki.settings();
    settings.min_version = TlsVersion::V1_3;
    let server = tls_server(settings).await;
    let tls12 = client_config(&pki, None, &[&rustls::version::TLS12]);
    assert!(handshake(server.addr, tls12, "localhost").await.is_err());
    let tls13 = client_config(&pki, None, &[&rustls::version::TLS13]);
    assert!(handshake(server.addr, tls13, "localhost").await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn a_bad_key_or_missing_file_is_refused_at_start() {
    let pki = Pki::new("tls-bad");
    pki.leaf("server", "localhost", &["localhost"], false, 11);
    pki.leaf("other", "localhost", &["localhost"], false, 12);
    let mut settings = pki.settings();
    settings.cert.key = pki.path("other.key");
    let mut config = common::test_config();
    config.listeners = vec![ListenerConfig::tls(
        "tls",
        "127.0.0.1:0".parse().unwrap(),
        settings,
    )];
    let err = bulwark_server::Server::bind(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit certificate"), "{err}");

    let mut config = common::test_config();
    let settings = TlsSettings::new(pki.path("nope.pem"), pki.path("server.key"));
    config.listeners = vec![ListenerConfig::tls(
        "tls",
        "127.0.0.1:0".parse().unwrap(),
        settings,
    )];
    let err = bulwark_server::Server::bind(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read certificate") && err.contains("nope.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let pki = Pki::new("tls-sni");
    pki.leaf("server", "a.test", &["a.test"], false, 20);
    pki.leaf("b", "b.test", &["b.test"], false, 21);
    let mut settings = pki.settings();
    settings.sni.push(bulwark_server::tls::CertFiles {
        cert: pki.path("b.pem"),
        key: pki.path("b.key"),
        ocsp: None,
    });
    let server = tls_server(settings).await;
    for name in ["a.test", "b.test"] {
        let s = handshake(server.addr, client_config(&pki, None, BOTH), name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let leaf = &s.get_ref().1.peer_certificates().unwrap()[0];
        let want = read_cert(&pki.path(if name == "a.test" {
            "server.pem"
        } else {
            "b.pem"
        }));
        assert_eq!(leaf, &want, "{name}");
    }
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_required_optional_revoked_and_identity() {
    let pki = Pki::new("tls-mtls");
    pki.leaf("server", "localhost", &["localhost"], false, 30);
    pki.leaf("good", "sensor-1", &[], true, 31);
    let revoked = pki.leaf("revoked", "sensor-2", &[], true, 32);
    pki.leaf("hash", "#", &[], true, 33);
    let crl = pki.crl(&[revoked]);
    let mut settings = pki.mtls(vec![crl]);
    settings.identity_as_client_id = true;
    let server = tls_server(settings.clone()).await;

    // No certificate: the handshake (or the first read after it) fails.
    assert_refused(connect_as(server.addr, &pki, None).await).await;
    // Revoked: likewise.
    let revoked = connect_as(server.addr, &pki, Some("revoked")).await;
    if let Ok(mut s) = revoked {
        assert!(mqtt_connect_v3(&mut s, "x").await.is_err());
    }
    // A valid certificate connects.
    let mut good = connect_as(server.addr, &pki, Some("good")).await.unwrap();
    assert_eq!(mqtt_connect_v5(&mut good, "anything").await, 0);
    // The certificate's CN is the client id: a second connection with the same certificate
    // and another CONNECT client id takes the session over (DISCONNECT 0x8E to the first).
    let mut second = connect_as(server.addr, &pki, Some("good")).await.unwrap();
    assert_eq!(mqtt_connect_v5(&mut second, "something-else").await, 0);
    let mut head = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(10), good.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((head[0], head[2]), (0xE0, 0x8E), "takeover DISCONNECT");
    // CN "#" would widen templates: refused with 0x87 Not authorized.
    let mut hash = connect_as(server.addr, &pki, Some("hash")).await.unwrap();
    assert_eq!(mqtt_connect_v5(&mut hash, "h").await, 0x87);
    server.stop().await;

    // Optional: no certificate is fine, a revoked one is not.
    settings.client_auth = ClientAuth::Optional;
    let server = tls_server(settings).await;
    let mut anonymous = connect_as(server.addr, &pki, None).await.unwrap();
    assert_eq!(
        mqtt_connect_v3(&mut anonymous, "anon").await.unwrap(),
        [0x20, 2, 0, 0]
    );
    let revoked = connect_as(server.addr, &pki, Some("revoked")).await;
    if let Ok(mut s) = revoked {
        assert!(mqtt_connect_v3(&mut s, "x").await.is_err());
    }
    server.stop().await;
}

#[tokio::test]
async fn renewed_certificates_are_picked_up_and_bad_ones_are_not() {
    let pki = Pki::new("tls-reload");
    pki.leaf("server", "localhost", &["localhost"], false, 40);
    let server = tls_server(pki.settings()).await;
    let mut kept = connect_as(server.addr, &pki, None).await.unwrap();
    assert_eq!(
        mqtt_connect_v3(&mut kept, "kept").await.unwrap(),
        [0x20, 2, 0, 0]
    );
    let first = read_cert(&pki.path("server.pem"));

    let serving = |addr| {
        let config = client_config(&pki, None, BOTH);
        async move {
            let s = handshake(addr, config, "localhost").await.unwrap();
            s.get_ref().1.peer_certificates().unwrap()[0].clone()
        }
    };
    // Renewal: a new certificate and key; new handshakes get it within a few seconds.
    std::thread::sleep(Duration::from_millis(1100)); // a distinct modification time
    pki.leaf("server", "localhost", &["localhost"], false, 41);
    let renewed = read_cert(&pki.path("server.pem"));
    let mut picked = false;
    for _ in 0..50 {
        if serving(server.addr).await == renewed {
            picked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(picked, "the renewed certificate was not served");
    assert_ne!(first, renewed);

    // A broken renewal (key of another certificate): the previous one keeps serving.
    std::thread::sleep(Duration::from_millis(1100));
    pki.leaf("other", "localhost", &["localhost"], false, 42);
    std::fs::copy(pki.path("other.key"), pki.path("server.key")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(serving(server.addr).await, renewed);

    // The connection made before all this is still up: a PINGREQ is answered.
    assert_alive(&mut kept).await;
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed() {
    let pki = Pki::new("tls-stall");
    pki.leaf("server", "localhost", &["localhost"], false, 50);
    let mut settings = pki.settings();
    settings.handshake_timeout = Duration::from_secs(1);
    let server = tls_server(settings).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // Half a ClientHello record header, then nothing.
    tcp.write_all(&[0x16, 0x03]).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    server.stop().await;
}

#[tokio::test]
async fn five_hundred_stalled_handshakes_are_closed_while_a_client_connects() {
    let pki = Pki::new("tls-stall-500");
    pki.leaf("server", "localhost", &["localhost"], false, 50);
    let mut settings = pki.settings();
    settings.handshake_timeout = Duration::from_secs(2);
    let server = tls_server(settings).await;
    let started = std::time::Instant::now();
    let mut stalled = Vec::with_capacity(500);
    for i in 0..500u32 {
        // From many loopback addresses, as a botnet would: half a record header, then nothing.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let local = std::net::Ipv4Addr::new(127, 0, 1, u8::try_from(1 + i % 250).unwrap());
        socket.bind(SocketAddr::new(local.into(), 0)).unwrap();
        let mut tcp = socket.connect(server.addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03]).await.unwrap();
        stalled.push(tcp);
    }
    // A real client is served meanwhile.
    let mut client = connect_as(server.addr, &pki, None).await.unwrap();
    assert_eq!(
        mqtt_connect_v3(&mut client, "busy-day").await.unwrap()[3],
        0
    );
    let mut buf = [0u8; 64];
    for tcp in &mut stalled {
        let left = Duration::from_secs(6).saturating_sub(started.elapsed());
        let closed = tokio::time::timeout(left, tcp.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_alive(&mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn a_crl_reload_closes_connections_whose_certificate_is_now_revoked() {
    let pki = Pki::new("tls-evict");
    pki.leaf("server", "localhost", &["localhost"], false, 60);
    let doomed_serial = pki.leaf("doomed", "sensor-9", &[], true, 61);
    pki.leaf("fine", "sensor-10", &[], true, 62);
    let crl = pki.crl(&[]);
    let settings = pki.mtls(vec![crl]);
    let server = tls_server(settings).await;
    let mut doomed = connect_as(server.addr, &pki, Some("doomed")).await.unwrap();
    assert_eq!(mqtt_connect_v5(&mut doomed, "doomed").await, 0);
    let mut fine = connect_as(server.addr, &pki, Some("fine")).await.unwrap();
    assert_eq!(mqtt_connect_v5(&mut fine, "fine").await, 0);

    // The CA revokes sensor-9; the new CRL is picked up and its connection closed, 0x87.
    std::thread::sleep(Duration::from_millis(1100));
    pki.crl(&[doomed_serial]);
    let mut head = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(10), doomed.read_exact(&mut head))
        .await
        .expect("closed after the CRL reload")
        .unwrap();
    assert_eq!(
        (head[0], head[2]),
        (0xE0, 0x87),
        "DISCONNECT Not authorized"
    );
    // The other client stays: a PINGREQ is answered.
    assert_alive(&mut fine).await;
    // And the revoked certificate no longer connects.
    let again = connect_as(server.addr, &pki, Some("doomed")).await;
    if let Ok(mut s) = again {
        assert!(mqtt_connect_v3(&mut s, "again").await.is_err());
    }
    server.stop().await;
}

/// Wraps the normal verifier and keeps the OCSP response the server stapled.
#[derive(Debug)]
struct RecordOcsp {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: std::sync::Mutex<Option<Vec<u8>>>,
}

impl rustls::client::danger::ServerCertVerifier for RecordOcsp {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(ocsp_response.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[tokio::test]
async fn the_ocsp_response_file_is_stapled() {
    let pki = Pki::new("tls-ocsp");
    pki.leaf("server", "localhost", &["localhost"], false, 70);
    // The broker staples the file as it is; the client's verifier sees the same bytes.
    let response = b"\x30\x03\x0a\x01\x00".to_vec(); // an OCSPResponse with a status only
    std::fs::write(pki.path("server.ocsp"), &response).unwrap();
    let mut settings = pki.settings();
    settings.cert.ocsp = Some(pki.path("server.ocsp"));
    let server = tls_server(settings).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let recorder = Arc::new(RecordOcsp {
        inner,
        seen: std::sync::Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(BOTH)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let mut s = handshake(server.addr, Arc::new(config), "localhost")
        .await
        .unwrap();
    assert_eq!(
        mqtt_connect_v3(&mut s, "ocsp").await.unwrap(),
        [0x20, 2, 0, 0]
    );
    assert_eq!(
        recorder.seen.lock().unwrap().as_deref(),
        Some(&response[..])
    );
    server.stop().await;
}

/// A 5.0 CONNECT for `id` with a username and password; returns the CONNACK's reason code.
async fn mqtt_connect_v5_password(stream: &mut Tls, id: &str, user: &str, password: &str) -> u8 {
    let mut body = vec![0, 4];
    body.extend_from_slice(b"MQTT");
    body.extend_from_slice(&[5, 0xC2, 0, 60, 0, 0, id.len() as u8]);
    body.extend_from_slice(id.as_bytes());
    for field in [user, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await.unwrap();
    connack_reason(stream).await
}

/// Without anonymous access: a client certificate is a credential on its own (the default
/// chain) or, with `certificate+password`, together with the password of the user it names.
#[tokio::test]
async fn client_certificates_authenticate_alone_or_with_a_password() {
    use bulwark_auth::password::{Argon2Params, PasswordStore, hash_password};
    let pki = Pki::new("tls-cert-auth");
    pki.leaf("server", "localhost", &["localhost"], false, 40);
    pki.leaf("sensor", "sensor-1", &[], true, 41);
    pki.leaf("stranger", "sensor-2", &[], true, 42);
    let password = "amber-Falcon-orchard-58";
    let mut store = PasswordStore::new();
    store
        .add(
            "sensor-1",
            &hash_password(password, &Argon2Params::default()).unwrap(),
            vec![],
        )
        .unwrap();
    let store_path = pki.path("passwords.toml");
    bulwark_server::files::save_store(&store_path, &store).unwrap();
    let mut settings = pki.mtls(Vec::new());
    settings.client_auth = ClientAuth::Optional;
    let start = |chain: Vec<bulwark_server::Authenticator>| {
        let settings = settings.clone();
        let store_path = store_path.clone();
        common::start_secure_with(move |c| {
            let mut listener = ListenerConfig::tls("tls", "127.0.0.1:0".parse().unwrap(), settings);
            listener.authenticators = chain;
            c.listeners = vec![listener];
            c.auth.password_file = Some(store_path);
        })
    };

    // The default chain: the certificate alone; nothing at all is refused.
    let server = start(Vec::new()).await;
    let mut cert = connect_as(server.addr, &pki, Some("sensor")).await.unwrap();
    assert_eq!(mqtt_connect_v5(&mut cert, "c1").await, 0);
    assert_alive(&mut cert).await;
    let mut nothing = connect_as(server.addr, &pki, None).await.unwrap();
    assert_eq!(mqtt_connect_v5(&mut nothing, "n").await, 0x87);
    // Without a certificate, the password of the store works on the same listener.
    let mut pw = connect_as(server.addr, &pki, None).await.unwrap();
    assert_eq!(
        mqtt_connect_v5_password(&mut pw, "p", "sensor-1", password).await,
        0
    );
    server.stop().await;

    // Both: the certificate and the password of the user it names.
    let server = start(vec![bulwark_server::Authenticator::CertificateAndPassword]).await;
    let mut both = connect_as(server.addr, &pki, Some("sensor")).await.unwrap();
    assert_eq!(
        mqtt_connect_v5_password(&mut both, "b", "ignored", password).await,
        0
    );
    let mut cert_only = connect_as(server.addr, &pki, Some("sensor")).await.unwrap();
    assert_eq!(mqtt_connect_v5(&mut cert_only, "c").await, 0x86);
    let mut wrong = connect_as(server.addr, &pki, Some("sensor")).await.unwrap();
    assert_eq!(
        mqtt_connect_v5_password(&mut wrong, "w", "sensor-1", "not-the-password-1").await,
        0x86
    );
    // Another user's certificate with this user's password: refused.
    let mut stranger = connect_as(server.addr, &pki, Some("stranger"))
        .await
        .unwrap();
    assert_eq!(
        mqtt_connect_v5_password(&mut stranger, "s", "sensor-1", password).await,
        0x86
    );
    // No certificate: the chain has nothing else, so even the right password is refused.
    let mut no_cert = connect_as(server.addr, &pki, None).await.unwrap();
    assert_eq!(
        mqtt_connect_v5_password(&mut no_cert, "n", "sensor-1", password).await,
        0x86
    );
    server.stop().await;
}

/// A private key every user of the machine can read is refused, at start and at a reload
/// (which keeps the key in force), unless `dangerous_key_readable_by_others` says otherwise;
/// one its group can read is served (with a warning), as is an owner-only one.
#[cfg(unix)]
#[test]
fn a_private_key_every_user_can_read_is_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new("tls-key-mode");
    pki.leaf("server", "localhost", &["localhost"], false, 70);
    let key = pki.path("server.key");
    let chmod = |mode: u32| {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chmod(0o644);
    let err = bulwark_server::tls::TlsAcceptor::new(pki.settings()).unwrap_err();
    assert!(
        err.0.contains("every user of this machine can read it")
            && err.0.contains("mode 0644")
            && err.0.contains("chmod 600")
            && err.0.contains("dangerous_key_readable_by_others"),
        "{err}"
    );
    let mut allowed = pki.settings();
    allowed.dangerous_key_readable_by_others = true;
    bulwark_server::tls::TlsAcceptor::new(allowed).unwrap();
    for mode in [0o640, 0o600, 0o400] {
        chmod(mode);
        bulwark_server::tls::TlsAcceptor::new(pki.settings())
            .unwrap_or_else(|err| panic!("mode {mode:o}: {err}"));
    }
    // A reload after the mode was opened up fails; the acceptor keeps its configuration.
    let acceptor = bulwark_server::tls::TlsAcceptor::new(pki.settings()).unwrap();
    chmod(0o604);
    let err = acceptor.reload().unwrap_err();
    assert!(
        err.0.contains("every user of this machine can read it"),
        "{err}"
    );
    chmod(0o600);
    acceptor.reload().unwrap();
}

/// One HTTP/1.1 GET over `stream`; the status and the body.
async fn https_get(stream: &mut Tls, path: &str, token: &str) -> std::io::Result<(u16, String)> {
    https_request(stream, "GET", path, Some(token)).await
}

/// One HTTP/1.1 request without a body over `stream`; the status and the body.
async fn https_request(
    stream: &mut Tls,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let authorization =
        token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}

#[tokio::test]
async fn the_admin_api_over_https_asks_for_a_client_certificate_and_a_token() {
    let pki = Pki::new("admin-tls");
    pki.leaf("server", "localhost", &["localhost"], false, 1);
    pki.leaf("op", "operator", &[], true, 2);
    let mut tokens = bulwark_auth::token::TokenStore::new();
    let (_, token) = tokens
        .issue("ops", bulwark_auth::token::Role::Viewer, 1, None)
        .unwrap();
    std::fs::write(pki.path("tokens.toml"), tokens.to_toml()).unwrap();
    let server = common::start_with(|c| {
        let mut admin = bulwark_server::AdminSettings::new(pki.path("tokens.toml"));
        admin.bind = "127.0.0.1:0".parse().unwrap();
        admin.tls = Some(Box::new(pki.mtls(Vec::new())));
        c.admin = Some(admin);
    })
    .await;
    let admin = server.admin.unwrap();

    let mut stream = connect_as(admin, &pki, Some("op")).await.unwrap();
    let (status, body) = https_get(&mut stream, "/api/v1/health", &token)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let mut stream = connect_as(admin, &pki, Some("op")).await.unwrap();
    let (status, certificates) = https_get(&mut stream, "/api/v1/certificates", &token)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let certificates: serde_json::Value = serde_json::from_str(&certificates).unwrap();
    let server_cert = certificates
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "server")
        .unwrap();
    assert_eq!(server_cert["listener"], "admin");
    assert_eq!(server_cert["subject"], "CN=localhost");
    assert!(
        server_cert["days_left"].as_i64().unwrap() > 300,
        "{server_cert}"
    );
    let mut stream = connect_as(admin, &pki, Some("op")).await.unwrap();
    let (status, _) = https_get(&mut stream, "/api/v1/health", "bwk_00_wrong")
        .await
        .unwrap();
    assert_eq!(status, 401);
    // Without a client certificate there is no TLS session to send the token over (TLS 1.3
    // refuses it at the client's first read).
    match connect_as(admin, &pki, None).await {
        Err(_) => {}
        Ok(mut stream) => assert!(
            https_get(&mut stream, "/api/v1/health", &token)
                .await
                .is_err()
        ),
    }
    // Plain HTTP on the HTTPS port gets no answer.
    let mut plain = TcpStream::connect(admin).await.unwrap();
    plain
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    server.stop().await;

    // With TLS the admin listener may leave loopback.
    let mut config = common::test_config();
    let mut settings = bulwark_server::AdminSettings::new(pki.path("tokens.toml"));
    settings.bind = "0.0.0.0:9883".parse().unwrap();
    settings.tls = Some(Box::new(pki.settings()));
    config.admin = Some(settings);
    config.validate().unwrap();
}

#[tokio::test]
async fn a_client_certificate_with_a_role_is_an_admin_caller_of_its_own() {
    let pki = Pki::new("admin-cert-role");
    pki.leaf("server", "localhost", &["localhost"], false, 1);
    pki.leaf("op", "operator", &[], true, 2);
    pki.leaf("other", "stranger", &[], true, 3);
    std::fs::write(
        pki.path("tokens.toml"),
        bulwark_auth::token::TokenStore::new().to_toml(),
    )
    .unwrap();
    let server = common::start_with(|c| {
        let mut admin = bulwark_server::AdminSettings::new(pki.path("tokens.toml"));
        admin.bind = "127.0.0.1:0".parse().unwrap();
        admin.tls = Some(Box::new(pki.mtls(Vec::new())));
        admin.certificate_roles = vec![("operator".to_owned(), bulwark_auth::token::Role::Viewer)];
        c.admin = Some(admin);
    })
    .await;
    let admin = server.admin.unwrap();

    // No token: the certificate is the caller, with its role.
    let mut stream = connect_as(admin, &pki, Some("op")).await.unwrap();
    let (status, body) = https_request(&mut stream, "GET", "/api/v1/session", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let session: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(session["user"], "operator");
    assert_eq!(session["role"], "viewer");
    let mut stream = connect_as(admin, &pki, Some("op")).await.unwrap();
    let (status, _) = https_request(&mut stream, "POST", "/api/v1/reload", None)
        .await
        .unwrap();
    assert_eq!(status, 403, "a viewer may not reload");
    // A wrong token is still a wrong token, certificate or not.
    let mut stream = connect_as(admin, &pki, Some("op")).await.unwrap();
    let (status, _) = https_request(&mut stream, "GET", "/api/v1/health", Some("bwk_00_x"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    // A verified certificate whose identity has no role is no caller.
    let mut stream = connect_as(admin, &pki, Some("other")).await.unwrap();
    let (status, _) = https_request(&mut stream, "GET", "/api/v1/health", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    server.stop().await;

    // Roles for certificates need client certificates to be verified.
    let mut config = common::test_config();
    let mut settings = bulwark_server::AdminSettings::new(pki.path("tokens.toml"));
    settings.tls = Some(Box::new(pki.settings()));
    settings.certificate_roles = vec![("operator".to_owned(), bulwark_auth::token::Role::Admin)];
    config.admin = Some(settings);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("admin.certificate_roles"), "{err}");
}
