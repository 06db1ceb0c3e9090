//! Fetching a JWKS (the JSON Web Key Set the JWT authenticator verifies tokens with) over
//! HTTPS.
//!
//! The fetch is blocking: the caller runs it in `tokio::task::spawn_blocking`. Fetches are
//! rare (every few minutes), so every call builds its own HTTP agent from the source's
//! settings, which also means a rotated CA file on disk is picked up on the next fetch.
//!
//! The rules, all enforced here rather than left to the HTTP client's defaults:
//! - only `https://` URLs: keys fetched in plaintext could be replaced by anyone on the path;
//! - with a CA file, only the roots in that file are trusted; without one, the webpki roots;
//! - TLS 1.2 or 1.3 only, with the same cipher-suite policy as the broker's listeners;
//! - no redirects are followed (a 3xx is reported as a status error), so a redirect can
//!   neither downgrade to plaintext nor move the fetch to another host;
//! - any status other than 200 is an error;
//! - the body is capped at [`MAX_JWKS_BYTES`] and must be UTF-8; it is returned as text and
//!   parsed by the caller;
//! - one timeout covers the whole request, from name resolution to the last body byte.
//!
//! Proxies named by the usual environment variables (`HTTPS_PROXY`, `NO_PROXY`, ...) are
//! honoured, as the HTTP client does by default; TLS still runs end to end with the JWKS host,
//! so a proxy cannot read or alter the keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use ureq::http::Uri;
use ureq::http::uri::Scheme;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// The largest JWKS document accepted, in bytes. A key set is a few kilobytes; anything near
/// this size is a misconfiguration or an attack on the broker's memory.
pub(crate) const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// Where a JWKS is fetched from, and how.
#[derive(Debug, Clone)]
pub(crate) struct JwksSource {
    /// The document's `https://` URL.
    pub(crate) url: String,
    /// A PEM file of trusted roots; when set, only these roots are trusted. `None` means the
    /// webpki (Mozilla) roots.
    pub(crate) ca_file: Option<PathBuf>,
    /// The budget for the whole request: connect, TLS handshake, request, response and body.
    pub(crate) timeout: Duration,
}

impl JwksSource {
    /// Checks the URL (`https://` with a host, no credentials) and, when given, that the CA
    /// file holds at least one usable certificate, so a mistake is reported at start-up
    /// rather than at the first fetch. The CA file is read again on every fetch.
    pub(crate) fn new(
        url: &str,
        ca_file: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<Self, JwksError> {
        check_url(url)?;
        if let Some(path) = &ca_file {
            load_roots(path)?;
        }
        Ok(Self {
            url: url.to_owned(),
            ca_file,
            timeout,
        })
    }
}

/// Why a JWKS could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwksError {
    /// The URL is not `https://` (the URL).
    NotHttps(String),
    /// The URL cannot be parsed, has no host, or carries credentials (what is wrong).
    BadUrl(String),
    /// The CA file is unreadable, not PEM, or holds no usable certificate (what is wrong).
    Ca(String),
    /// Connecting, the TLS handshake, the exchange or reading the body failed, or the timeout
    /// ran out (the HTTP client's message).
    Http(String),
    /// The server answered with a status other than 200.
    Status(u16),
    /// The body is larger than [`MAX_JWKS_BYTES`].
    TooLarge,
    /// The body is not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotHttps(url) => write!(
                f,
                "JWKS URL {url:?} is not https:// (keys fetched in plaintext could be replaced \
                 on the way)"
            ),
            Self::BadUrl(why) => write!(f, "bad JWKS URL: {why}"),
            Self::Ca(why) => write!(f, "JWKS CA file: {why}"),
            Self::Http(why) => write!(f, "JWKS fetch failed: {why}"),
            Self::Status(code) => write!(f, "JWKS fetch failed: HTTP status {code} (want 200)"),
            Self::TooLarge => write!(f, "JWKS document is larger than {MAX_JWKS_BYTES} bytes"),
            Self::NotUtf8 => write!(f, "JWKS document is not valid UTF-8"),
        }
    }
}

impl std::error::Error for JwksError {}

/// GETs the JWKS document (`Accept: application/json`) and returns the body text, unparsed.
///
/// Refuses non-`https://` URLs, follows no redirects, and fails on any status other than
/// 200, on a body over [`MAX_JWKS_BYTES`] or not UTF-8, and when `source.timeout` runs out.
/// Blocking: run it in `spawn_blocking`.
pub(crate) fn fetch(source: &JwksSource) -> Result<String, JwksError> {
    // The fields are visible to the crate, so the URL is checked again here: a source built
    // without `JwksSource::new` must not slip through to a plaintext fetch.
    check_url(&source.url)?;
    let roots = match &source.ca_file {
        Some(path) => RootCerts::from(load_roots(path)?),
        None => RootCerts::WebPki,
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        .unversioned_rustls_crypto_provider(crate::tls::client_provider())
        .build();
    let agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .https_only(true)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(source.timeout))
        .build()
        .new_agent();

    let mut response = agent
        .get(source.url.as_str())
        .header("Accept", "application/json")
        .call()
        .map_err(from_ureq)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(JwksError::Status(status));
    }
    if response
        .body()
        .content_length()
        .is_some_and(|length| length > MAX_JWKS_BYTES)
    {
        return Err(JwksError::TooLarge);
    }
    let bytes = response
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES)
        .read_to_vec()
        .map_err(from_ureq)?;
    String::from_utf8(bytes).map_err(|_| JwksError::NotUtf8)
}

/// `https://`, a non-empty host, no `user:password@`.
fn check_url(url: &str) -> Result<(), JwksError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| JwksError::BadUrl(format!("{url:?}: {e}")))?;
    match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTPS => {}
        Some(_) => return Err(JwksError::NotHttps(url.to_owned())),
        None => {
            return Err(JwksError::BadUrl(format!(
                "{url:?}: not an absolute URL (want https://host/path)"
            )));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(JwksError::BadUrl(format!("{url:?}: no host")));
    };
    if authority.as_str().contains('@') {
        return Err(JwksError::BadUrl(format!(
            "{url:?}: credentials in the URL are not supported"
        )));
    }
    if authority.host().is_empty() {
        return Err(JwksError::BadUrl(format!("{url:?}: no host")));
    }
    Ok(())
}

/// Every certificate in the PEM file at `path`; all of them must parse as trust anchors.
fn load_roots(path: &Path) -> Result<Vec<Certificate<'static>>, JwksError> {
    let pem = std::fs::read(path)
        .map_err(|e| JwksError::Ca(format!("cannot read {}: {e}", path.display())))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JwksError::Ca(format!("{}: not valid PEM: {e}", path.display())))?;
    if ders.is_empty() {
        return Err(JwksError::Ca(format!(
            "{}: no CERTIFICATE block found",
            path.display()
        )));
    }
    // The HTTP client skips roots it cannot parse without a word; check them here so a bad
    // file is an error instead of a silently smaller trust set.
    let mut store = rustls::RootCertStore::empty();
    let (_, ignored) = store.add_parsable_certificates(ders.iter().cloned());
    if ignored > 0 {
        return Err(JwksError::Ca(format!(
            "{}: {ignored} certificate(s) cannot be used as a trust anchor",
            path.display()
        )));
    }
    Ok(ders
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect())
}

fn from_ureq(error: ureq::Error) -> JwksError {
    match error {
        ureq::Error::BodyExceedsLimit(_) => JwksError::TooLarge,
        ureq::Error::RequireHttpsOnly(url) => JwksError::NotHttps(url),
        ureq::Error::BadUri(why) => JwksError::BadUrl(why),
        other => JwksError::Http(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code"
    )]

    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::thread::JoinHandle;
    use std::time::Instant;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ServerConfig, ServerConnection, StreamOwned};

    /// How long a test server waits for its one client before giving up, and the longest it
    /// holds a connection: every test thread ends on its own.
    const SERVER_LIMIT: Duration = Duration::from_secs(10);
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A test CA and a server certificate it issued for `localhost` and `127.0.0.1`.
    struct Pki {
        ca_pem: String,
        server: Arc<ServerConfig>,
    }

    fn pki() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bulwark jwks test ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.der().clone()],
                    PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
                )
                .unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    /// A file under the temp dir with a unique name, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &[u8]) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let path = std::env::temp_dir().join(format!(
                "bulwark-jwks-test-{}-{}-{nanos}.pem",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// What the test server does once it has read the request head.
    enum Reply {
        /// Writes these bytes, then closes.
        Bytes(Vec<u8>),
        /// Writes these bytes, then holds the connection open without a word until stopped.
        ThenHang(Vec<u8>),
    }

    /// An HTTPS server on 127.0.0.1 that serves exactly one connection.
    struct TestServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        /// The request head the server read, or `None` when the handshake or the read failed.
        thread: Option<JoinHandle<Option<String>>>,
    }

    impl TestServer {
        fn start(config: Arc<ServerConfig>, reply: Reply) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let thread_stop = Arc::clone(&stop);
            let thread =
                std::thread::spawn(move || serve_one(&listener, config, &reply, &thread_stop));
            Self {
                addr,
                stop,
                thread: Some(thread),
            }
        }

        fn url(&self, path: &str) -> String {
            format!("https://{}{path}", self.addr)
        }

        /// Stops the server and returns the request head it read.
        fn finish(mut self) -> Option<String> {
            self.stop.store(true, Ordering::SeqCst);
            self.thread.take().unwrap().join().unwrap()
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn serve_one(
        listener: &TcpListener,
        config: Arc<ServerConfig>,
        reply: &Reply,
        stop: &AtomicBool,
    ) -> Option<String> {
        let deadline = Instant::now() + SERVER_LIMIT;
        let tcp = loop {
            match listener.accept() {
                Ok((tcp, _)) => break tcp,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return None,
            }
        };
        tcp.set_nonblocking(false).ok()?;
        tcp.set_read_timeout(Some(SERVER_LIMIT)).ok()?;
        tcp.set_write_timeout(Some(SERVER_LIMIT)).ok()?;
        let conn = ServerConnection::new(config).ok()?;
        let mut tls = StreamOwned::new(conn, tcp);

        let mut head = Vec::new();
        let mut buf = [0_u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).ok()?;
            if n == 0 || head.len() > 16 * 1024 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();

        match reply {
            Reply::Bytes(bytes) => {
                // The client may hang up early (a body over the limit); that is its right.
                let _ = tls.write_all(bytes);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            Reply::ThenHang(bytes) => {
                let _ = tls.write_all(bytes);
                let _ = tls.flush();
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Some(head)
    }

    fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// A source trusting `ca_pem`, built through `JwksSource::new`.
    fn source(url: &str, ca: &TempFile, timeout: Duration) -> JwksSource {
        JwksSource::new(url, Some(ca.0.clone()), timeout).unwrap()
    }

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    #[test]
    fn fetch_succeeds_with_the_ca_file_and_asks_for_json() {
        let pki = pki();
        let ca = TempFile::new(pki.ca_pem.as_bytes());
        let server = TestServer::start(
            Arc::clone(&pki.server),
            Reply::Bytes(response(
                "200 OK",
                "Content-Type: application/json\r\n",
                JWKS.as_bytes(),
            )),
        );
        let body = fetch(&source(
            &server.url("/.well-known/jwks.json"),
            &ca,
            CLIENT_TIMEOUT,
        ))
        .unwrap();
        assert_eq!(body, JWKS);

        let head = server.finish().unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /.well-known/jwks.json http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\naccept: application/json\r\n"), "{head}");
    }

    #[test]
    fn fetch_accepts_a_body_of_exactly_the_limit() {
        let pki = pki();
        let ca = TempFile::new(pki.ca_pem.as_bytes());
        let body = vec![b' '; usize::try_from(MAX_JWKS_BYTES).unwrap()];
        let server = TestServer::start(
            Arc::clone(&pki.server),
            Reply::Bytes(response("200 OK", "", &body)),
        );
        let got = fetch(&source(&server.url("/jwks"), &ca, CLIENT_TIMEOUT)).unwrap();
        assert_eq!(got.len(), body.len());
    }

    #[test]
    fn a_different_ca_fails_with_http() {
        let other = pki();
        let pki = pki();
        let ca = TempFile::new(other.ca_pem.as_bytes());
        let server = TestServer::start(
            Arc::clone(&pki.server),
            Reply::Bytes(response("200 OK", "", JWKS.as_bytes())),
        );
        let err = fetch(&source(&server.url("/jwks"), &ca, CLIENT_TIMEOUT)).unwrap_err();
        let JwksError::Http(message) = &err else {
            panic!("want Http, got {err:?}");
        };
        assert!(
            message.to_ascii_lowercase().contains("certificate"),
            "{message}"
        );
        assert_eq!(server.finish(), None, "no request may pass the handshake");
    }

    #[test]
    fn the_webpki_roots_do_not_trust_a_private_ca() {
        let pki = pki();
        let server = TestServer::start(
            Arc::clone(&pki.server),
            Reply::Bytes(response("200 OK", "", JWKS.as_bytes())),
        );
        let source = JwksSource::new(&server.url("/jwks"), None, CLIENT_TIMEOUT).unwrap();
        let err = fetch(&source).unwrap_err();
        assert!(matches!(err, JwksError::Http(_)), "{err:?}");
        assert_eq!(server.finish(), None);
    }

    #[test]
    fn http_is_refused_without_touching_the_network() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());

        let err = JwksSource::new(&url, None, CLIENT_TIMEOUT).unwrap_err();
        assert_eq!(err, JwksError::NotHttps(url.clone()));
        // A source assembled by hand is checked again by `fetch`.
        let by_hand = JwksSource {
            url: url.clone(),
            ca_file: None,
            timeout: CLIENT_TIMEOUT,
        };
        assert_eq!(fetch(&by_hand), Err(JwksError::NotHttps(url)));
        match listener.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("the refused fetch connected: {other:?}"),
        }
    }

    #[test]
    fn urls_are_checked() {
        let t = CLIENT_TIMEOUT;
        assert!(JwksSource::new("https://issuer.example/.well-known/jwks.json", None, t).is_ok());
        assert!(JwksSource::new("HTTPS://issuer.example:8443/keys", None, t).is_ok());
        assert!(JwksSource::new("https://[::1]:8443/keys", None, t).is_ok());
        for url in ["ftp://issuer.example/jwks", "ws://issuer.example/jwks"] {
            assert_eq!(
                JwksSource::new(url, None, t).unwrap_err(),
                JwksError::NotHttps(url.to_owned())
            );
        }
        for url in [
            "",
            "not a url",
            "issuer.example/jwks",
            "/jwks",
            "https://",
            "https:///jwks",
            "https://user:secret@issuer.example/jwks",
        ] {
            let err = JwksSource::new(url, None, t).unwrap_err();
            assert!(matches!(err, JwksError::BadUrl(_)), "{url:?}: {err:?}");
        }
    }

    #[test]
    fn a_bad_ca_file_is_refused() {
        let t = CLIENT_TIMEOUT;
        let url = "https://issuer.example/jwks";
        let missing = std::env::temp_dir().join(format!(
            "bulwark-jwks-test-{}-missing.pem",
            std::process::id()
        ));
        let err = JwksSource::new(url, Some(missing), t).unwrap_err();
        assert!(matches!(err, JwksError::Ca(_)), "{err:?}");
        let empty = TempFile::new(b"");
        let garbage = TempFile::new(b"not pem at all\n");
        let not_a_cert = TempFile::new(
            b"-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        for ca in [&empty, &garbage, &not_a_cert] {
            let err = JwksSource::new(url, Some(ca.0.clone()), t).unwrap_err();
            assert!(
                matches!(err, JwksError::Ca(_)),
                "{}: {err:?}",
                ca.0.display()
            );
        }
        // `fetch` reads the file again: a CA file emptied after start-up fails the fetch
        // before any connection.
        let pki = pki();
        let ca = TempFile::new(pki.ca_pem.as_bytes());
        let source = JwksSource::new(url, Some(ca.0.clone()), t).unwrap();
        std::fs::write(&ca.0, b"").unwrap();
        assert!(matches!(fetch(&source), Err(JwksError::Ca(_))));
    }

    #[test]
    fn a_404_is_a_status_error() {
        let pki = pki();
        let ca = TempFile::new(pki.ca_pem.as_bytes());
        let server = TestServer::start(
            Arc::clone(&pki.server),
            Reply::Bytes(response("404 Not Found", "", b"no such keys")),
        );
        let err = fetch(&source(&server.url("/jwks"), &ca, CLIENT_TIMEOUT)).unwrap_err();
        assert_eq!(err, JwksError::Status(404));
        assert!(server.finish().is_some());
    }

    #[test]
    fn redirects_are_not_followed() {
        let pki = pki();
        let ca = TempFile::new(pki.ca_pem.as_bytes());
        // A plaintext target on a live listener: following it would connect there.
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        target.set_nonblocking(true).unwrap();
        let location = format!("Location: http://{}/jwks\r\n", target.local_addr().unwrap());
        let server = TestServer::start(
            Arc::clone(&pki.server),
            Reply::Bytes(response("302 Found", &location, b"")),
        );
        let err = fetch(&source(&server.url("/jwks"), &ca, CLIENT_TIMEOUT)).unwrap_err();
        assert_eq!(err, JwksError::Status(302));
        assert!(server.finish().is_some());
        match target.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("the redirect was followed: {other:?}"),
        }
    }

    #[test]
    fn a_body_over_the_limit_is_too_large() {
        let pki = pki();
        let ca = TempFile::new(pki.ca_pem.as_bytes());
        let body = vec![b' '; usize::try_from(MAX_JWKS_BYTES).unwrap() + 1];

        // Announced by Content-Length.
        let server = TestServer::start(
            Arc::clone(&pki.server),
            Reply::Bytes(response("200 OK", "", &body)),
        );
        let err = fetch(&source(&server.url("/jwks"), &ca, CLIENT_TIMEOUT)).unwrap_err();
        assert_eq!(err, JwksError::TooLarge);
        drop(server);

        // Not announced: the body runs until the connection closes.
        let mut unannounced = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        unannounced.extend_from_slice(&body);
        let server = TestServer::start(Arc::clone(&pki.server), Reply::Bytes(unannounced));
        let err = fetch(&source(&server.url("/jwks"), &ca, CLIENT_TIMEOUT)).unwrap_err();
        assert_eq!(err, JwksError::TooLarge);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused() {
        let pki = pki();
        let ca = TempFile::new(pki.ca_pem.as_bytes());
        let server = TestServer::start(
            Arc::clone(&pki.server),
            Reply::Bytes(response("200 OK", "", b"{\"keys\":[\xff\xfe]}")),
        );
        let err = fetch(&source(&server.url("/jwks"), &ca, CLIENT_TIMEOUT)).unwrap_err();
        assert_eq!(err, JwksError::NotUtf8);
    }

    /// Fetches from a server that sends `first` and then nothing, with a 1 s timeout, and
    /// checks the fetch fails with `Http` after about that long.
    fn times_out(first: Vec<u8>) {
        let pki = pki();
        let ca = TempFile::new(pki.ca_pem.as_bytes());
        let timeout = Duration::from_secs(1);
        let server = TestServer::start(Arc::clone(&pki.server), Reply::ThenHang(first));
        let source = source(&server.url("/jwks"), &ca, timeout);
        let started = Instant::now();
        let err = fetch(&source).unwrap_err();
        let elapsed = started.elapsed();
        let JwksError::Http(message) = &err else {
            panic!("want Http, got {err:?}");
        };
        assert!(message.contains("timeout"), "{message}");
        assert!(
            elapsed >= timeout - Duration::from_millis(50),
            "{elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
        assert!(server.finish().is_some(), "the request reached the server");
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        times_out(Vec::new());
    }

    #[test]
    fn the_timeout_covers_the_body() {
        // Headers and half the body at once, then silence.
        times_out(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"keys\":[".to_vec());
    }

    #[test]
    fn errors_display_their_cause() {
        assert!(
            JwksError::NotHttps("http://a/b".to_owned())
                .to_string()
                .contains("http://a/b")
        );
        assert!(JwksError::Status(503).to_string().contains("503"));
        assert!(
            JwksError::TooLarge
                .to_string()
                .contains(&MAX_JWKS_BYTES.to_string())
        );
        let boxed: Box<dyn std::error::Error> = Box::new(JwksError::NotUtf8);
        assert!(boxed.to_string().contains("UTF-8"));
    }
}
