//! What the configuration says about authentication: the authenticators a listener may chain,
//! and the server-wide settings (password store, hashing pool, credential cache, login guard,
//! JWT).

use std::path::PathBuf;
use std::time::Duration;

use bulwark_auth::guard::GuardSettings;
use bulwark_auth::jwt::JwtSettings;

/// One link of a listener's authenticator chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Authenticator {
    /// A verified client certificate (on a TLS listener that maps its identity) is enough.
    Certificate,
    /// A verified client certificate and the password of the user it names.
    CertificateAndPassword,
    /// A JWT in the password field (or, for 5.0, the `JWT` authentication method).
    Jwt,
    /// MQTT 5 enhanced authentication with SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram,
    /// Username and password against the password store.
    Password,
}

impl Authenticator {
    /// Every authenticator, in the order of the default chain.
    pub const ALL: [Self; 5] = [
        Self::Certificate,
        Self::CertificateAndPassword,
        Self::Scram,
        Self::Jwt,
        Self::Password,
    ];

    /// The name used in configuration files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::CertificateAndPassword => "certificate+password",
            Self::Jwt => "jwt",
            Self::Scram => "scram",
            Self::Password => "password",
        }
    }

    /// The authenticator a configuration name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// JWT settings (see `docs/security.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthSettings {
    /// `iss` must equal this, if set.
    pub issuer: Option<String>,
    /// `aud` must contain one of these, if any.
    pub audiences: Vec<String>,
    /// Leeway for `exp` and `nbf`.
    pub clock_skew: Duration,
    /// The claim that names the MQTT username.
    pub username_claim: String,
    /// A claim that must equal the client identifier, if set.
    pub client_id_claim: Option<String>,
    /// A claim carrying per-connection ACL rules, if set.
    pub acl_claim: Option<String>,
    /// Refuse tokens without `exp` (default true).
    pub require_exp: bool,
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519).
    pub public_key_files: Vec<PathBuf>,
    /// A file holding an HMAC secret (HS256/384/512), at least 32 bytes.
    pub hmac_secret_file: Option<PathBuf>,
    /// A JWKS document on disk.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document at an HTTPS URL, fetched at start, every `jwks_refresh`, and when a
    /// token names an unknown key (at most every `jwks_min_interval`).
    pub jwks_url: Option<String>,
    /// PEM roots trusted for `jwks_url` (default: the public web roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// How often `jwks_url` is fetched again.
    pub jwks_refresh: Duration,
    /// The shortest time between two fetches of `jwks_url` (a flood of tokens with made-up
    /// `kid`s must not turn into a flood of requests).
    pub jwks_min_interval: Duration,
}

impl Default for JwtAuthSettings {
    fn default() -> Self {
        let verify = JwtSettings::default();
        Self {
            issuer: None,
            audiences: Vec::new(),
            clock_skew: Duration::from_secs(verify.clock_skew_secs),
            username_claim: verify.username_claim,
            client_id_claim: None,
            acl_claim: None,
            require_exp: true,
            public_key_files: Vec::new(),
            hmac_secret_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_interval: MIN_JWKS_FETCH_GAP,
        }
    }
}

impl JwtAuthSettings {
    pub(super) fn verify_settings(&self) -> JwtSettings {
        JwtSettings {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            clock_skew_secs: self.clock_skew.as_secs(),
            username_claim: self.username_claim.clone(),
            client_id_claim: self.client_id_claim.clone(),
            acl_claim: self.acl_claim.clone(),
            require_exp: self.require_exp,
        }
    }
}

/// The default of [`JwtAuthSettings::jwks_min_interval`].
pub const MIN_JWKS_FETCH_GAP: Duration = Duration::from_secs(30);

/// The server's authentication settings, shared by every listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// The password store (`bulwark user` edits it); `None`: no password users.
    pub password_file: Option<PathBuf>,
    /// Password hashes checked at once, at most; 0: half the cores, at least one.
    pub hash_concurrency: usize,
    /// Logins waiting for a hash check, at most; more are refused with 0x89 Server busy.
    pub max_pending_logins: usize,
    /// How long a verified username and password are remembered, so that a reconnect skips
    /// the argon2id check (zero: never).
    pub credential_cache_ttl: Duration,
    /// Users remembered at most.
    pub credential_cache_size: usize,
    /// Failed-login backoff and bans.
    pub guard: GuardSettings,
    /// JWT authentication, if configured.
    pub jwt: Option<JwtAuthSettings>,
    /// Connections one username may have open at once; 0: no cap. A connection with a
    /// client id the user already has open takes the old one over and is not refused.
    pub max_connections_per_user: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            password_file: None,
            hash_concurrency: 0,
            max_pending_logins: 1024,
            credential_cache_ttl: bulwark_auth::cache::DEFAULT_TTL,
            credential_cache_size: bulwark_auth::cache::DEFAULT_MAX_ENTRIES,
            guard: GuardSettings::default(),
            jwt: None,
            max_connections_per_user: 0,
        }
    }
}

impl AuthSettings {
    /// The number of hash checks `hash_concurrency` stands for.
    pub fn hash_threads(&self) -> usize {
        match self.hash_concurrency {
            0 => (std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) / 2)
                .max(1),
            n => n,
        }
    }
}
