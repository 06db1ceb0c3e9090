//! The server's typed settings, checked as a whole before anything binds.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bulwark_core::BrokerConfig;
use bulwark_proto::DecoderLimits;

use crate::auth::{AuthSettings, Authenticator};
use crate::proxy::TrustedProxies;
use crate::tls::{ClientAuth, TlsSettings};
use crate::ws::WsOptions;

/// What a listener speaks on its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls(Box<TlsSettings>),
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`).
    Ws(WsOptions),
    /// MQTT over WebSocket over TLS.
    Wss(Box<TlsSettings>, WsOptions),
}

impl ListenerKind {
    /// The name used in configuration files and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls(_) => "tls",
            Self::Ws(_) => "ws",
            Self::Wss(..) => "wss",
        }
    }

    /// The WebSocket settings, for `ws` and `wss` listeners.
    pub fn websocket(&self) -> Option<&WsOptions> {
        match self {
            Self::Ws(ws) | Self::Wss(_, ws) => Some(ws),
            Self::Tcp | Self::Tls(_) => None,
        }
    }

    /// The TLS settings, for `tls` listeners.
    pub fn tls(&self) -> Option<&TlsSettings> {
        match self {
            Self::Tcp | Self::Ws(_) => None,
            Self::Tls(tls) | Self::Wss(tls, _) => Some(tls),
        }
    }
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// A name for logs (default `{kind}-{index}`).
    pub name: String,
    /// Address and port to bind; port 0 picks a free one.
    pub bind: SocketAddr,
    /// What the listener speaks.
    pub kind: ListenerKind,
    /// Allows a plaintext listener on a non-loopback address (credentials and payloads cross
    /// the network in clear text); a warning is logged at every start.
    pub dangerous_plaintext: bool,
    /// When set, every connection must start with a PROXY protocol (v1 or v2) header and
    /// come from one of these addresses; the address in the header is the client's.
    pub proxy_protocol: Option<TrustedProxies>,
    /// At most this many connections at once on this listener (0: no cap of its own); one
    /// more is accepted and closed at once, before any handshake.
    pub max_connections: usize,
    /// The authenticator chain, in order; empty: the default chain (see
    /// [`ListenerConfig::chain`]).
    pub authenticators: Vec<Authenticator>,
    /// Lets clients without any credentials in (they are refused with 0x87 otherwise); a
    /// warning is logged at every start.
    pub dangerous_allow_anonymous: bool,
    /// When the host does not have the address (no IPv6, an address not configured on any
    /// interface), the listener is skipped with a warning instead of stopping the start.
    /// Any other bind error (address in use, permission) still stops it.
    pub optional: bool,
}

impl ListenerConfig {
    /// A plain TCP listener.
    pub fn tcp(name: impl Into<String>, bind: SocketAddr) -> Self {
        Self {
            name: name.into(),
            bind,
            kind: ListenerKind::Tcp,
            dangerous_plaintext: false,
            proxy_protocol: None,
            max_connections: 0,
            authenticators: Vec::new(),
            dangerous_allow_anonymous: false,
            optional: false,
        }
    }

    /// A TLS listener.
    pub fn tls(name: impl Into<String>, bind: SocketAddr, tls: TlsSettings) -> Self {
        Self {
            name: name.into(),
            bind,
            kind: ListenerKind::Tls(Box::new(tls)),
            dangerous_plaintext: false,
            proxy_protocol: None,
            max_connections: 0,
            authenticators: Vec::new(),
            dangerous_allow_anonymous: false,
            optional: false,
        }
    }

    /// Whether clients on this listener may present a verified client certificate.
    fn takes_certificates(&self) -> bool {
        self.kind
            .tls()
            .is_some_and(|tls| tls.client_auth != ClientAuth::None)
    }

    /// The authenticator chain in force: `authenticators` if set, else `certificate` (on a
    /// listener that takes client certificates), `scram`, `jwt` (when `[auth.jwt]` is
    /// configured) and `password`, in that order.
    pub fn chain(&self, auth: &AuthSettings) -> Vec<Authenticator> {
        if !self.authenticators.is_empty() {
            return self.authenticators.clone();
        }
        let mut chain = Vec::new();
        if self.takes_certificates() {
            chain.push(Authenticator::Certificate);
        }
        chain.push(Authenticator::Scram);
        if auth.jwt.is_some() {
            chain.push(Authenticator::Jwt);
        }
        chain.push(Authenticator::Password);
        chain
    }
}

/// Everything `Server::bind` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Listeners, at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The engine's settings.
    pub broker: BrokerConfig,
    /// Packet size limits of every connection's decoder.
    pub decoder: DecoderLimits,
    /// A socket that has not delivered a complete CONNECT within this is closed.
    pub connect_timeout: Duration,
    /// A write that does not complete within this (the client stopped reading) closes the
    /// connection.
    pub write_timeout: Duration,
    /// How long shutdown waits for connections to flush before giving up on them.
    pub shutdown_grace: Duration,
    /// Runtime worker threads; 0 means one per core the process may run on. With one, the
    /// whole broker runs on a single thread (no cross-thread wake-ups: lowest latency).
    pub workers: usize,
    /// How often TLS listeners' files are checked for changes (they are also reloaded on
    /// SIGHUP); the password store is checked as often.
    pub tls_watch_interval: Duration,
    /// Authentication: the password store, JWT, backoff and bans.
    pub auth: AuthSettings,
    /// The audit trail.
    pub audit: crate::audit::AuditSettings,
    /// Detection rules (default: the built-in ones, which record and count only).
    pub detect: bulwark_limits::detect::DetectSettings,
    /// Authorization: the ACL file.
    pub acl: AclSettings,
    /// Admission control: caps on connections and handshakes, per source and in all, and a
    /// per-source connection rate, applied before any TLS work.
    pub admission: bulwark_limits::admission::AdmissionSettings,
    /// Per-client message and byte rates (default: none), enforced by backpressure.
    pub rates: bulwark_limits::rate::RateSettings,
    /// The ban list and automatic bans.
    pub bans: crate::bans::BanSettings,
    /// Resident memory (bytes) above which new connections are refused and queued messages
    /// are shed; 0: not watched. Default: three quarters of the machine's memory (0 where it
    /// cannot be read).
    pub memory_watermark: u64,
    /// Where persistent sessions, their QoS 1/2 messages and retained messages are kept.
    pub storage: StorageSettings,
    /// The admin listener (HTTP API and Prometheus metrics); `None`: none.
    pub admin: Option<AdminSettings>,
}

/// The admin listener (`[admin]`): the HTTP API under `/api/v1` and `/metrics`, every request
/// authenticated with an API token (`bulwark admin token add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Address and port (default `127.0.0.1:9883`); any address but loopback needs `tls`.
    pub bind: SocketAddr,
    /// HTTPS with these certificates (and client certificates, where `client_auth` says so);
    /// `None`: plain HTTP, on loopback only.
    pub tls: Option<Box<TlsSettings>>,
    /// The token file (hashes only), re-read when it changes.
    pub tokens: PathBuf,
    /// Failed token attempts from one address before its requests are refused for a while.
    pub max_failures: u32,
    /// How long an address is refused after `max_failures`, and the window they are counted in.
    pub lockout: Duration,
    /// Client certificate identities (as `tls.identity` reads them) that are callers of their
    /// own, with their role: a request over a TLS session with such a certificate needs no
    /// token. Needs `tls` with client certificates.
    pub certificate_roles: Vec<(String, bulwark_auth::token::Role)>,
}

impl AdminSettings {
    /// The default address of the admin listener.
    pub const DEFAULT_BIND: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9883);

    /// Defaults, with the token file at `tokens`.
    pub fn new(tokens: PathBuf) -> Self {
        Self {
            bind: Self::DEFAULT_BIND,
            tls: None,
            tokens,
            max_failures: 10,
            lockout: Duration::from_secs(60),
            certificate_roles: Vec::new(),
        }
    }
}

/// Durable storage (`[storage]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageSettings {
    /// The store file; `None`: state is kept in memory only and lost at a restart (the
    /// library's default; `bulwark serve` keeps `store.redb` in its data directory).
    pub path: Option<PathBuf>,
    /// When commits reach the disk.
    pub sync: bulwark_store::SyncPolicy,
}

/// Authorization settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclSettings {
    /// The ACL file (TOML, `docs/acl.md`): default deny, reloaded on change and on SIGHUP (a
    /// file that does not parse keeps the rules in force). `None`: no authorization, every
    /// client may publish and subscribe anywhere; `bulwark serve` runs that way only with
    /// `[acl] dangerous_allow_all = true` or on `--listen` loopback test listeners.
    pub file: Option<PathBuf>,
}

impl ServerConfig {
    /// What, besides the password store, names users on some listener (client certificates,
    /// JWTs), if anything: the ACL's users and groups cannot be checked against the store then.
    pub fn other_identity_sources(&self) -> Option<&'static str> {
        let chains: Vec<Authenticator> = self
            .listeners
            .iter()
            .flat_map(|l| l.chain(&self.auth))
            .collect();
        match (
            chains.contains(&Authenticator::Certificate),
            chains.contains(&Authenticator::Jwt),
        ) {
            (true, true) => Some("client certificates and JWTs"),
            (true, false) => Some("client certificates"),
            (false, true) => Some("JWTs"),
            (false, false) => None,
        }
    }

    /// The number of worker threads `workers` stands for.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig::tcp(
                "tcp-0",
                SocketAddr::from(([127, 0, 0, 1], 1883)),
            )],
            broker: BrokerConfig::default(),
            decoder: DecoderLimits::default(),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            workers: 0,
            tls_watch_interval: Duration::from_secs(5),
            auth: AuthSettings::default(),
            audit: crate::audit::AuditSettings::default(),
            detect: bulwark_limits::detect::DetectSettings::default(),
            acl: AclSettings::default(),
            admission: bulwark_limits::admission::AdmissionSettings::default(),
            rates: bulwark_limits::rate::RateSettings::default(),
            bans: crate::bans::BanSettings::default(),
            memory_watermark: crate::memory::default_watermark(),
            storage: StorageSettings::default(),
            admin: None,
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One line per problem, each naming the key.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ServerConfig {
    /// Checks rules that span fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(err) = self.admission.validate() {
            problems.push(format!("admission: {err}"));
        }
        if let Err(err) = self.rates.validate() {
            problems.push(format!("rate: {err}"));
        }
        if self.listeners.is_empty() {
            problems.push("listener: at least one listener is needed".to_owned());
        }
        if let Err(list) = self.detect.validate() {
            problems.extend(list.into_iter().map(|p| format!("detect: {p}")));
        }
        for rule in &self.detect.rules {
            for response in &rule.responses {
                use bulwark_limits::detect::{Per, Response};
                if *response == Response::Ban && rule.per == Per::Certificate {
                    problems.push(format!(
                        "detect: rule \"{}\": a ban cannot name a certificate; ban per user, client_id or network, or disconnect",
                        rule.name
                    ));
                }
            }
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            let public = !listener.bind.ip().is_loopback();
            if public && listener.kind.tls().is_none() && !listener.dangerous_plaintext {
                problems.push(format!(
                    "listener[{i}].bind = \"{}\": a {} listener on a non-loopback address sends \
                     credentials and payloads in clear text; use a tls listener, or set \
                     dangerous_plaintext = true to allow it",
                    listener.bind,
                    listener.kind.name()
                ));
            }
            for authenticator in &listener.authenticators {
                match authenticator {
                    Authenticator::Certificate | Authenticator::CertificateAndPassword
                        if !listener.takes_certificates() =>
                    {
                        problems.push(format!(
                            "listener[{i}].authenticators: \"{}\" needs a tls or wss listener \
                             with tls.client_auth = \"optional\" or \"required\"",
                            authenticator.name()
                        ));
                    }
                    Authenticator::Jwt if self.auth.jwt.is_none() => problems.push(format!(
                        "listener[{i}].authenticators: \"jwt\" needs an [auth.jwt] section"
                    )),
                    _ => {}
                }
            }
            if public && listener.dangerous_allow_anonymous && listener.dangerous_plaintext {
                problems.push(format!(
                    "listener[{i}]: dangerous_allow_anonymous together with dangerous_plaintext on \
                     the non-loopback address {} is an open broker on the network; refused",
                    listener.bind
                ));
            }
            if let Some(ws) = listener.kind.websocket()
                && !ws.path.starts_with('/')
            {
                problems.push(format!(
                    "listener[{i}].websocket.path = \"{}\": must start with '/'",
                    ws.path
                ));
            }
            if listener
                .proxy_protocol
                .as_ref()
                .is_some_and(TrustedProxies::is_empty)
            {
                problems.push(format!(
                    "listener[{i}].proxy_protocol needs trusted_proxies (the load balancers \
                     allowed to send the header)"
                ));
            }
            if let Some(tls) = listener.kind.tls() {
                if tls.client_auth != ClientAuth::None && tls.client_ca.is_none() {
                    problems.push(format!(
                        "listener[{i}].tls.client_auth needs tls.client_ca (the CA bundle \
                         client certificates must chain to)"
                    ));
                }
                if tls.client_auth == ClientAuth::None && (!tls.crl.is_empty()) {
                    problems.push(format!(
                        "listener[{i}].tls.crl is set but client_auth = \"none\": no client \
                         certificate would be checked against it"
                    ));
                }
            }
        }
        if let Some(admin) = &self.admin {
            if !admin.bind.ip().is_loopback() && admin.tls.is_none() {
                problems.push(format!(
                    "admin.bind = \"{}\": on a non-loopback address the admin listener needs \
                     [admin.tls] (tokens would cross the network in clear text)",
                    admin.bind
                ));
            }
            if let Some(tls) = &admin.tls
                && tls.client_auth != ClientAuth::None
                && tls.client_ca.is_none()
            {
                problems.push(
                    "admin.tls.client_auth needs admin.tls.client_ca (the CA bundle client \
                     certificates must chain to)"
                        .to_owned(),
                );
            }
            if !admin.certificate_roles.is_empty()
                && admin
                    .tls
                    .as_ref()
                    .is_none_or(|tls| tls.client_auth == ClientAuth::None)
            {
                problems.push(
                    "admin.certificate_roles needs [admin.tls] with client_auth = \"optional\" \
                     or \"required\" and a client_ca: no client certificate would be verified"
                        .to_owned(),
                );
            }
            if admin.max_failures == 0 {
                problems.push("admin.max_failures must be at least 1".to_owned());
            }
            if admin.lockout.is_zero() {
                problems.push("admin.lockout must be at least 1 second".to_owned());
            }
        }
        if self.decoder.max_unauthenticated_packet_size > self.decoder.max_packet_size {
            problems.push(
                "limits.max_unauthenticated_packet_size must not exceed limits.max_packet_size"
                    .to_owned(),
            );
        }
        if self.broker.packets.max_packet_size != self.decoder.max_packet_size {
            problems.push(
                "broker and decoder disagree on max_packet_size (set it once, in [limits])"
                    .to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}
