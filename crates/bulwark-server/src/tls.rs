//! TLS for `tls` and `wss` listeners: rustls server configurations built from PEM files and
//! checked before they serve, and the client-certificate identity.
//!
//! Only TLS 1.2 and 1.3 are offered, and for 1.2 only ECDHE key exchange with AEAD suites
//! (rustls implements nothing older or weaker; [`cipher_suites`] keeps it that way should the
//! provider ever grow more). Files are read and validated as a whole: the key must match the
//! certificate, the certificate must be within its validity period, the CA bundle and CRLs
//! must parse. A [`TlsAcceptor`] holds the configuration in force and swaps in a new one on
//! [`TlsAcceptor::reload`] only if it is valid, so a bad renewal never takes a listener down.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_core::ConnectionId;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificates (the default).
    #[default]
    None,
    /// A certificate is asked for; a client without one may still connect (and authenticate
    /// otherwise); one that presents an invalid certificate is refused.
    Optional,
    /// Every client must present a certificate that chains to the client CA and is not
    /// revoked.
    Required,
}

/// Which part of a client certificate becomes the MQTT username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentitySource {
    /// The subject's Common Name (the default).
    #[default]
    CommonName,
    /// The first DNS name among the Subject Alternative Names.
    SanDns,
    /// The first URI among the Subject Alternative Names.
    SanUri,
    /// The first e-mail address among the Subject Alternative Names.
    SanEmail,
    /// The whole subject Distinguished Name, as RFC 4514 text (`CN=a, O=b`).
    SubjectDn,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// A DER OCSP response to staple, if any.
    pub ocsp: Option<PathBuf>,
}

/// The TLS settings of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The default certificate, sent when SNI names none of the others.
    pub cert: CertFiles,
    /// More certificates, each chosen when SNI names one of its DNS names.
    pub sni: Vec<CertFiles>,
    /// The oldest version accepted.
    pub min_version: TlsVersion,
    /// ALPN protocols offered, most preferred first; empty: no ALPN.
    pub alpn: Vec<String>,
    /// The handshake must complete within this; it counts within the CONNECT timeout.
    pub handshake_timeout: Duration,
    /// Client certificates.
    pub client_auth: ClientAuth,
    /// CA certificates client certificates must chain to (needed unless `client_auth` is
    /// `None`).
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) checked at every handshake.
    pub crl: Vec<PathBuf>,
    /// Which part of a client certificate becomes the username.
    pub identity: IdentitySource,
    /// Use the certificate identity as the client identifier too.
    pub identity_as_client_id: bool,
    /// Serves private keys that every user of the machine can read (mode `o+r`), which are
    /// refused otherwise, as ssh refuses such keys. A key its group can read is served with a
    /// warning either way (e.g. a group shared with a certificate manager).
    pub dangerous_key_readable_by_others: bool,
}

impl TlsSettings {
    /// Settings for one certificate and key, everything else at its default.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: CertFiles {
                cert: cert.into(),
                key: key.into(),
                ocsp: None,
            },
            sni: Vec::new(),
            min_version: TlsVersion::V1_2,
            alpn: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            client_auth: ClientAuth::None,
            client_ca: None,
            crl: Vec::new(),
            identity: IdentitySource::CommonName,
            identity_as_client_id: false,
            dangerous_key_readable_by_others: false,
        }
    }

    /// Every file these settings read, for change detection.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for c in std::iter::once(&self.cert).chain(&self.sni) {
            files.push(c.cert.clone());
            files.push(c.key.clone());
            files.extend(c.ocsp.clone());
        }
        files.extend(self.client_ca.clone());
        files.extend(self.crl.iter().cloned());
        files
    }
}

/// Why TLS settings could not be put in service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn err(message: impl Into<String>) -> TlsError {
    TlsError(message.into())
}

/// The cipher suites offered: every TLS 1.3 suite, and TLS 1.2 suites with ECDHE key exchange
/// and an AEAD cipher (GCM or ChaCha20-Poly1305). rustls has no CBC, RSA key exchange or export
/// suites; the filter states the rule rather than relying on that.
pub fn cipher_suites() -> Vec<SupportedCipherSuite> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|suite| match suite {
            SupportedCipherSuite::Tls13(_) => true,
            SupportedCipherSuite::Tls12(_) => {
                let name = format!("{:?}", suite.suite());
                name.starts_with("TLS_ECDHE_")
                    && (name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"))
            }
        })
        .collect()
}

/// ring with the listeners' cipher-suite policy, for the broker's own TLS clients (JWKS
/// fetches, audit export).
pub(crate) fn client_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(),
        ..rustls::crypto::ring::default_provider()
    })
}

fn provider() -> Arc<CryptoProvider> {
    let mut suites = cipher_suites();
    // Server preference (see `ignore_client_order` below): AES-128-GCM with SHA-256 first, the
    // suite TLS 1.3 makes mandatory. Its key schedule uses SHA-256, which CPUs accelerate; the
    // AES-256/SHA-384 suites clients tend to list first cost about a tenth more per handshake.
    suites.sort_by_key(|suite| {
        let name = format!("{:?}", suite.suite());
        (!name.contains("AES_128_GCM"), !name.starts_with("TLS13_"))
    });
    Arc::new(CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::ring::default_provider()
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| err(format!("cannot read {what} {}: {e}", path.display())))
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{what} {}: not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!(
            "{what} {}: no CERTIFICATE block found",
            path.display()
        )));
    }
    Ok(certs)
}

/// One certificate or CRL a TLS listener serves or checks with, and when it runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expiry {
    /// `server` (the certificate and the SNI ones), `client_ca` or `crl`.
    pub(crate) kind: &'static str,
    /// The file.
    pub(crate) file: PathBuf,
    /// The certificate's subject, or the CRL's issuer.
    pub(crate) subject: String,
    /// `notAfter` of a certificate, `nextUpdate` of a CRL (Unix seconds); `None`: a CRL without
    /// one.
    pub(crate) until: Option<i64>,
}

/// When each certificate and CRL of `settings` runs out: the leaf of the certificate and of
/// every SNI certificate, every CA of the client CA bundle, every CRL. Files that cannot be
/// read now are left out (the listener serves with what it loaded; a reload says why).
pub(crate) fn expiries(settings: &TlsSettings) -> Vec<Expiry> {
    let mut out = Vec::new();
    for files in std::iter::once(&settings.cert).chain(&settings.sni) {
        if let Ok(certs) = load_certs(&files.cert, "certificate")
            && let Some(leaf) = certs.first()
            && let Ok((_, parsed)) = X509Certificate::from_der(leaf.as_ref())
        {
            out.push(Expiry {
                kind: "server",
                file: files.cert.clone(),
                subject: parsed.subject().to_string(),
                until: Some(parsed.validity().not_after.timestamp()),
            });
        }
    }
    if let Some(path) = &settings.client_ca
        && let Ok(certs) = load_certs(path, "client CA bundle")
    {
        for cert in &certs {
            if let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) {
                out.push(Expiry {
                    kind: "client_ca",
                    file: path.clone(),
                    subject: parsed.subject().to_string(),
                    until: Some(parsed.validity().not_after.timestamp()),
                });
            }
        }
    }
    for path in &settings.crl {
        let Ok(crls) = load_crls(std::slice::from_ref(path)) else {
            continue;
        };
        for crl in &crls {
            if let Ok((_, parsed)) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
            {
                out.push(Expiry {
                    kind: "crl",
                    file: path.clone(),
                    subject: parsed.issuer().to_string(),
                    until: parsed.next_update().map(|t| t.timestamp()),
                });
            }
        }
    }
    out
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Checks the leaf is within its validity period; returns its DNS names.
fn check_leaf(cert: &CertificateDer<'_>, path: &Path) -> Result<Vec<String>, TlsError> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| err(format!("certificate {}: cannot parse: {e}", path.display())))?;
    let validity = parsed.validity();
    let now = now_unix();
    if validity.not_after.timestamp() < now {
        return Err(err(format!(
            "certificate {}: expired on {}",
            path.display(),
            validity.not_after
        )));
    }
    if validity.not_before.timestamp() > now {
        return Err(err(format!(
            "certificate {}: not valid before {}",
            path.display(),
            validity.not_before
        )));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// Refuses a private key file every user can read (unless `allow_readable`), warns about one
/// its group can read or anyone but its owner can write. Checked at every load, so a reload
/// of a key whose mode was opened up keeps the key in force and says why.
fn check_key_mode(path: &Path, allow_readable: bool) -> Result<(), TlsError> {
    let Some(open) = crate::files::open_to_others(path) else {
        return Ok(());
    };
    if open.others_read && !allow_readable {
        return Err(err(format!(
            "private key {}: every user of this machine can read it ({}); restrict it with \
             `chmod 600 {}` (or set dangerous_key_readable_by_others = true in [listener.tls])",
            path.display(),
            open.describe(),
            path.display()
        )));
    }
    tracing::warn!(
        key = %path.display(),
        "the private key is open to other users ({}); restrict it with `chmod 600 {}`",
        open.describe(),
        path.display()
    );
    Ok(())
}

fn load_certified(
    files: &CertFiles,
    provider: &CryptoProvider,
    allow_readable_key: bool,
) -> Result<Named, TlsError> {
    check_key_mode(&files.key, allow_readable_key)?;
    let chain = load_certs(&files.cert, "certificate")?;
    let key_pem = read(&files.key, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        err(format!(
            "private key {}: no usable PRIVATE KEY block ({e})",
            files.key.display()
        ))
    })?;
    let names = match chain.first() {
        Some(leaf) => check_leaf(leaf, &files.cert)?,
        None => Vec::new(),
    };
    let mut certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        err(format!(
            "private key {} does not fit certificate {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })?;
    if let Some(ocsp) = &files.ocsp {
        certified.ocsp = Some(read(ocsp, "OCSP response")?);
    }
    Ok(Named {
        names,
        key: Arc::new(certified),
    })
}

#[derive(Debug)]
struct Named {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks the certificate whose DNS names (exact, or a `*.` wildcard for one label) match the
/// SNI name; the default one otherwise, and for clients that send no SNI.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    others: Vec<Named>,
}

fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(host) = hello.server_name().map(str::to_ascii_lowercase) else {
            return Some(self.default.clone());
        };
        let found = self
            .others
            .iter()
            .find(|n| n.names.iter().any(|p| name_matches(p, &host)));
        Some(found.map_or_else(|| self.default.clone(), |n| n.key.clone()))
    }
}

fn load_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut crls = Vec::new();
    for path in paths {
        let bytes = read(path, "CRL")?;
        let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("CRL {}: not valid PEM: {e}", path.display())))?;
        if pem.is_empty() {
            // Not PEM: taken as one DER list; the verifier parses it below.
            crls.push(CertificateRevocationListDer::from(bytes));
        } else {
            crls.extend(pem);
        }
    }
    Ok(crls)
}

/// Builds the rustls configuration for `settings`, reading and checking every file.
pub fn build(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    build_with_verifier(settings).map(|(config, _)| config)
}

/// [`build`], also returning the client certificate verifier.
fn build_with_verifier(
    settings: &TlsSettings,
) -> Result<(Arc<ServerConfig>, Arc<dyn ClientCertVerifier>), TlsError> {
    let provider = provider();
    let allow_readable = settings.dangerous_key_readable_by_others;
    let default = load_certified(&settings.cert, &provider, allow_readable)?;
    let mut others = Vec::new();
    for files in &settings.sni {
        let named = load_certified(files, &provider, allow_readable)?;
        if named.names.is_empty() {
            return Err(err(format!(
                "certificate {}: has no DNS names for SNI to select it by",
                files.cert.display()
            )));
        }
        others.push(named);
    }
    let resolver = SniResolver {
        default: default.key,
        others,
    };
    let versions: &[&'static SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let verifier = match settings.client_auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let Some(ca) = &settings.client_ca else {
                return Err(err(
                    "client_auth needs client_ca (the CA bundle client certificates must chain to)",
                ));
            };
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca, "client CA bundle")? {
                roots
                    .add(cert)
                    .map_err(|e| err(format!("client CA bundle {}: {e}", ca.display())))?;
            }
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .with_crls(load_crls(&settings.crl)?);
            if settings.client_auth == ClientAuth::Optional {
                builder = builder.allow_unauthenticated();
            }
            builder
                .build()
                .map_err(|e| err(format!("client certificate verification: {e}")))?
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| err(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(Arc::new(resolver));
    config.ignore_client_order = true;
    // One resumption ticket per connection: an MQTT client keeps one connection and resumes
    // once per reconnect; each ticket costs a key derivation and a cache entry.
    config.send_tls13_tickets = 1;
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok((Arc::new(config), verifier))
}

/// The configuration a TLS listener hands new handshakes, replaceable while it serves, and the
/// certificate chains of its connected clients, checked again against every new set of CRLs.
#[derive(Debug)]
pub struct TlsAcceptor {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// Client certificate chains (leaf first) of the open connections that presented one.
    clients: Mutex<HashMap<ConnectionId, Vec<CertificateDer<'static>>>>,
}

impl TlsAcceptor {
    /// Builds the first configuration; fails if the files are not valid.
    pub fn new(settings: TlsSettings) -> Result<Self, TlsError> {
        let (config, _) = build_with_verifier(&settings)?;
        Ok(Self {
            settings,
            current: RwLock::new(config),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        crate::sync::read(&self.current).clone()
    }

    /// Reads the files again; on success the new configuration serves every later handshake,
    /// on failure the old one stays and the error is returned. Returns the connections whose
    /// client certificate the new CRLs revoke: the caller closes them.
    pub fn reload(&self) -> Result<Vec<ConnectionId>, TlsError> {
        let (config, verifier) = build_with_verifier(&self.settings)?;
        *crate::sync::write(&self.current) = config;
        let clients = crate::sync::lock(&self.clients);
        let now = UnixTime::now();
        let mut revoked: Vec<ConnectionId> = clients
            .iter()
            .filter(|(_, chain)| {
                let Some((leaf, intermediates)) = chain.split_first() else {
                    return false;
                };
                matches!(
                    verifier.verify_client_cert(leaf, intermediates, now),
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Revoked
                    ))
                )
            })
            .map(|(conn, _)| *conn)
            .collect();
        revoked.sort_unstable();
        Ok(revoked)
    }

    /// Remembers the certificate chain a connection presented, for revocation on reload.
    pub(crate) fn register(&self, conn: ConnectionId, chain: &[CertificateDer<'static>]) {
        crate::sync::lock(&self.clients).insert(conn, chain.to_vec());
    }

    /// Forgets a connection that ended.
    pub(crate) fn unregister(&self, conn: ConnectionId) {
        crate::sync::lock(&self.clients).remove(&conn);
    }
}

/// The MQTT identity in a client certificate, per `source`. `Ok(None)` when the certificate
/// has no such field; an identity that is empty or holds `+`, `#`, `/` or NUL is an error: it
/// must never widen an ACL template such as `devices/{username}/#`.
pub fn certificate_identity(
    cert: &CertificateDer<'_>,
    source: IdentitySource,
) -> Result<Option<String>, String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("client certificate cannot be parsed: {e}"))?;
    let from_san = |pick: fn(&GeneralName<'_>) -> Option<String>| {
        parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| san.value.general_names.iter().find_map(pick))
    };
    let identity = match source {
        IdentitySource::CommonName => parsed
            .subject()
            .iter_common_name()
            .next()
            .map(|cn| {
                cn.as_str()
                    .map(str::to_owned)
                    .map_err(|_| "the certificate's CN is not a UTF-8 string".to_owned())
            })
            .transpose()?,
        IdentitySource::SanDns => from_san(|n| match n {
            GeneralName::DNSName(v) => Some((*v).to_owned()),
            _ => None,
        }),
        IdentitySource::SanUri => from_san(|n| match n {
            GeneralName::URI(v) => Some((*v).to_owned()),
            _ => None,
        }),
        IdentitySource::SanEmail => from_san(|n| match n {
            GeneralName::RFC822Name(v) => Some((*v).to_owned()),
            _ => None,
        }),
        IdentitySource::SubjectDn => Some(parsed.subject().to_string()),
    };
    match identity {
        Some(id) if id.is_empty() => Err("the certificate identity is empty".to_owned()),
        Some(id) if id.contains(['+', '#', '/', '\0']) => Err(format!(
            "the certificate identity {id:?} contains '+', '#', '/' or NUL, which could widen \
             topic templates"
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn only_ecdhe_aead_suites_and_tls13_are_offered() {
        let suites = cipher_suites();
        assert!(!suites.is_empty());
        for suite in suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.starts_with("TLS13_")
                    || (name.starts_with("TLS_ECDHE_")
                        && (name.contains("GCM") || name.contains("CHACHA20"))),
                "{name}"
            );
            assert!(
                !name.contains("CBC") && !name.starts_with("TLS_RSA_"),
                "{name}"
            );
        }
    }

    #[test]
    fn aes_128_gcm_is_preferred() {
        let first = provider()
            .cipher_suites
            .first()
            .map(|suite| format!("{:?}", suite.suite()));
        assert_eq!(first.as_deref(), Some("TLS13_AES_128_GCM_SHA256"));
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("broker.local", "broker.local"));
    }

    #[test]
    fn missing_files_are_named() {
        let e = build(&TlsSettings::new(
            "/nonexistent/c.pem",
            "/nonexistent/k.pem",
        ))
        .unwrap_err();
        assert!(
            e.0.contains("cannot read certificate /nonexistent/c.pem"),
            "{e}"
        );
    }
}
