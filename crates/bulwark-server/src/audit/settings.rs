//! `[audit]`: where the trail goes and how it is chained, signed, rotated, kept and exported,
//! and the checks of the export targets' addresses that the configuration file shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditFormat {
    /// Each record carries its sequence number and the hash of the one before; signed
    /// checkpoints (`docs/audit.md`).
    #[default]
    Chained,
    /// One JSON object per event, nothing else (for log shippers that expect nothing more);
    /// tampering cannot be detected.
    Plain,
}

/// The audit trail's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The active segment; `None`: security events go to the log only.
    pub file: Option<PathBuf>,
    /// Chained (default) or plain.
    pub format: AuditFormat,
    /// The Ed25519 key that signs checkpoints (PKCS#8 PEM, mode 0600), made at first start if
    /// missing, its public half beside it ([`AuditSettings::public_key_file`]). `None`:
    /// `audit-signing.key` in the trail's directory.
    pub key_file: Option<PathBuf>,
    /// A checkpoint after this many records (and at rotation and stop).
    pub checkpoint_records: u64,
    /// A checkpoint this long after the first record not yet covered by one.
    pub checkpoint_interval: Duration,
    /// The active segment is rotated once it holds this many bytes.
    pub segment_size: u64,
    /// The active segment is rotated once its first record is this old; zero: never by age.
    pub segment_age: Duration,
    /// Rotated segments older than this are removed; zero: kept by age.
    pub retention_age: Duration,
    /// The oldest rotated segments are removed while all of them hold more than this many
    /// bytes; zero: kept by size.
    pub retention_size: u64,
    /// Events waiting for the writer at most; more are dropped, counted and recorded.
    pub queue: usize,
    /// Checkpoints are also appended to this file (on another disk or mount), so that a cut
    /// of the trail's end can be proven.
    pub export_file: Option<PathBuf>,
    /// Every record, not only checkpoints, goes to `export_file`, `export_syslog` and
    /// `export_http`.
    pub export_records: bool,
    /// Checkpoints (and with `export_records`, every record) are also sent to this syslog
    /// receiver, as RFC 5424 messages.
    pub export_syslog: Option<SyslogTarget>,
    /// The PEM roots a `tls://` syslog receiver's certificate must chain to (only these).
    pub export_syslog_ca: Option<PathBuf>,
    /// The client certificate chain (PEM) shown to a `tls://` syslog receiver that asks for one.
    pub export_syslog_cert: Option<PathBuf>,
    /// The private key (PEM) of `export_syslog_cert`.
    pub export_syslog_key: Option<PathBuf>,
    /// The APP-NAME of the syslog messages.
    pub export_syslog_app: String,
    /// Checkpoints (and with `export_records`, every record) are also POSTed to this URL, one
    /// per request (`https://`, or `http://` to a loopback address).
    pub export_http: Option<String>,
    /// The PEM roots an `https://` endpoint's certificate must chain to (only these); `None`:
    /// the webpki (Mozilla) roots.
    pub export_http_ca: Option<PathBuf>,
    /// A file holding the bearer token sent to `export_http` (`Authorization: Bearer ...`).
    pub export_http_token_file: Option<PathBuf>,
    /// Lines waiting for each remote (syslog, HTTP) at most; past this the oldest lines that
    /// are not checkpoints are dropped first, and counted.
    pub export_queue: usize,
}

/// How a syslog receiver is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One message per datagram (RFC 5426); nothing says whether it arrived.
    Udp,
    /// Octet-counted framing over TCP (RFC 6587 section 3.4.1).
    Tcp,
    /// The same over TLS (RFC 5425).
    Tls,
}

impl SyslogTransport {
    /// The URL scheme.
    pub const fn scheme(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// `export_syslog`: `udp://HOST:PORT`, `tcp://HOST:PORT` or `tls://HOST:PORT` (an IPv6
/// address in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// How.
    pub transport: SyslogTransport,
    /// A host name or an IP address (without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl SyslogTarget {
    /// Parses `udp://HOST:PORT`, `tcp://HOST:PORT` or `tls://HOST:PORT`; the error says what is
    /// wrong and what is expected.
    pub fn parse(url: &str) -> Result<Self, String> {
        const WANT: &str = "want udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT";
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("no scheme ({WANT})"));
        };
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "udp" => SyslogTransport::Udp,
            "tcp" => SyslogTransport::Tcp,
            "tls" => SyslogTransport::Tls,
            other => return Err(format!("unknown scheme \"{other}\" ({WANT})")),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((host, port)) = v6.split_once("]:") else {
                return Err(format!(
                    "an IPv6 address needs a port after it, as [::1]:514 ({WANT})"
                ));
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("\"{host}\" is not an IPv6 address"));
            }
            (host, port)
        } else {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err(format!("no port ({WANT})"));
            };
            if !valid_host(host) {
                return Err(format!(
                    "\"{host}\" is not a host name or IPv4 address (an IPv6 address goes in brackets)"
                ));
            }
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(format!(
                    "\"{port}\" is not a port (1 to 65535; nothing may follow it)"
                ));
            }
        };
        Ok(Self {
            transport,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.transport.scheme();
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A DNS name (letters, digits, `-`, `_` and dots) or an IPv4 address.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks an `export_syslog_app`: 1 to 48 printable ASCII characters without spaces (RFC 5424
/// APP-NAME).
pub fn check_syslog_app(app: &str) -> Result<(), String> {
    if app.is_empty() || app.len() > 48 || !app.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(format!(
            "\"{app}\" is not an RFC 5424 APP-NAME (1 to 48 printable ASCII characters, no spaces)"
        ));
    }
    Ok(())
}

/// Checks an `export_http` URL: `https://HOST[:PORT]/PATH`, or `http://` to a loopback
/// address (`127.0.0.0/8`, `[::1]`, `localhost`) where nothing crosses a network; no
/// credentials in it (the token goes in `export_http_token_file`).
pub fn check_http_url(url: &str) -> Result<(), String> {
    use ureq::http::Uri;
    use ureq::http::uri::Scheme;
    let uri: Uri = url
        .parse()
        .map_err(|err| format!("not a URL ({err}); want https://HOST/PATH"))?;
    let https = match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTPS => true,
        Some(scheme) if *scheme == Scheme::HTTP => false,
        Some(scheme) => {
            return Err(format!(
                "unknown scheme \"{scheme}\"; want https://HOST/PATH"
            ));
        }
        None => return Err("not an absolute URL; want https://HOST/PATH".to_owned()),
    };
    let Some(authority) = uri.authority() else {
        return Err("no host; want https://HOST/PATH".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err(
            "credentials in the URL are not accepted: put a bearer token in export_http_token_file"
                .to_owned(),
        );
    }
    let host = authority.host();
    if host.is_empty() {
        return Err("no host; want https://HOST/PATH".to_owned());
    }
    if !https && !is_loopback(host) {
        return Err(format!(
            "http:// sends the records in plaintext across the network: use https://{}{} (plain http:// is only accepted to a loopback address)",
            authority.as_str(),
            uri.path_and_query().map_or("", |p| p.as_str())
        ));
    }
    Ok(())
}

/// `localhost`, an address of `127.0.0.0/8`, or `::1` (in brackets or not).
fn is_loopback(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// [`AuditSettings::checkpoint_records`] by default.
pub const CHECKPOINT_RECORDS: u64 = 1000;
/// [`AuditSettings::checkpoint_interval`] by default.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// [`AuditSettings::segment_size`] by default: 64 MiB.
pub const SEGMENT_SIZE: u64 = 64 << 20;
/// [`AuditSettings::segment_age`] by default: a day.
pub const SEGMENT_AGE: Duration = Duration::from_secs(86_400);
/// [`AuditSettings::queue`] by default.
pub const QUEUE: usize = 8192;
/// [`AuditSettings::export_syslog_app`] by default.
pub const SYSLOG_APP: &str = "bulwark";
/// [`AuditSettings::export_queue`] by default.
pub const EXPORT_QUEUE: usize = 4096;
/// The key's file name by default, in the trail's directory.
pub const KEY_FILE: &str = "audit-signing.key";

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            file: None,
            format: AuditFormat::Chained,
            key_file: None,
            checkpoint_records: CHECKPOINT_RECORDS,
            checkpoint_interval: CHECKPOINT_INTERVAL,
            segment_size: SEGMENT_SIZE,
            segment_age: SEGMENT_AGE,
            retention_age: Duration::ZERO,
            retention_size: 0,
            queue: QUEUE,
            export_file: None,
            export_records: false,
            export_syslog: None,
            export_syslog_ca: None,
            export_syslog_cert: None,
            export_syslog_key: None,
            export_syslog_app: SYSLOG_APP.to_owned(),
            export_http: None,
            export_http_ca: None,
            export_http_token_file: None,
            export_queue: EXPORT_QUEUE,
        }
    }
}

impl AuditSettings {
    /// The signing key's file: `key_file`, or [`KEY_FILE`] beside the trail.
    pub fn key_path(&self) -> Option<PathBuf> {
        if let Some(key) = &self.key_file {
            return Some(key.clone());
        }
        let file = self.file.as_ref()?;
        Some(
            file.parent()
                .unwrap_or_else(|| Path::new(""))
                .join(KEY_FILE),
        )
    }

    /// Whether lines go to a syslog receiver or an HTTP endpoint.
    pub fn exports_remotely(&self) -> bool {
        self.export_syslog.is_some() || self.export_http.is_some()
    }

    /// The public key's file: the key's with the extension `.pub`.
    pub fn public_key_file(key: &Path) -> PathBuf {
        key.with_extension("pub")
    }
}
