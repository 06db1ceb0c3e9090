//! SCRAM-SHA-256 and SCRAM-SHA-512, server side (RFC 5802, RFC 7677), as pure message logic.
//!
//! Used for MQTT 5 enhanced authentication. The broker owns the packets; this module only turns
//! client messages into server messages:
//!
//! 1. CONNECT carries Authentication Method `SCRAM-SHA-256` (or `SCRAM-SHA-512`, see
//!    [`ScramHash::from_method`]) and Authentication Data = client-first-message. The broker calls
//!    [`ScramServer::start`] (or [`ScramServer::start_os_rng`]) and sends the returned
//!    server-first-message in AUTH, reason 0x18 (Continue authentication).
//! 2. The client answers AUTH 0x18 with client-final-message. The broker calls
//!    [`ScramServer::finish`]; on success it sends CONNACK 0x00 with the returned
//!    server-final-message (`v=...`) as Authentication Data, on any error CONNACK 0x86/0x87.
//! 3. Re-authentication (AUTH 0x19) repeats the same exchange with a fresh [`ScramServer`]; the
//!    broker must then check that the returned username is the session's username.
//!
//! A [`ScramServer`] is single-use: `finish` consumes it, so a second client-final-message for the
//! same exchange cannot be replayed against it.
//!
//! Only the derived keys are kept ([`ScramCredentials`]); the password is never stored.
//! Unknown users get a decoy exchange that looks like a real one (same salt length, a salt stable
//! per username, the configured iteration count) and fails in `finish` with the same
//! [`ScramError::AuthenticationFailed`] as a wrong password.
//!
//! Channel binding (`SCRAM-*-PLUS`) is not offered: clients must send the gs2 header `n,,`
//! (or `y,,`).
//!
//! Password preparation: RFC 5802 asks for SASLprep (RFC 4013) of the password. This module
//! applies only part of it: passwords containing control characters are refused; everything
//! else is used as its UTF-8 bytes, without the SASLprep mappings (non-ASCII spaces to U+0020,
//! removal of "mapped to nothing" characters) and without NFKC normalization. ASCII passwords and
//! passwords already in NFKC without such characters behave exactly as with full SASLprep; a
//! client that applies SASLprep to another password derives different keys and fails to log in.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};

/// The fewest PBKDF2 iterations accepted (RFC 7677 §4: at least 4096 for SCRAM-SHA-256; the
/// same floor is used for SCRAM-SHA-512).
pub const MIN_ITERATIONS: u32 = 4096;

/// The iteration count used when none is chosen, and for decoy exchanges of unknown users unless
/// [`ScramConfig::with_decoy_iterations`] says otherwise.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The most PBKDF2 iterations accepted: the server sends this count to clients, which must run
/// PBKDF2 that many times, so a corrupted store must not be able to make logins take minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Client messages longer than this many bytes are refused before parsing.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Length in bytes of the random salt made by [`ScramCredentials::derive`] and of decoy salts.
pub const SALT_LEN: usize = 16;

/// Longest salt accepted from a store string or [`ScramCredentials::derive_with_salt`].
const MAX_SALT_LEN: usize = 128;

/// Random bytes in the server's part of the nonce; base64 of 24 bytes is 32 characters without
/// padding, and base64 never contains `,`.
const SERVER_NONCE_BYTES: usize = 24;

const CLIENT_FIRST: &str = "client-first-message";
const CLIENT_FINAL: &str = "client-final-message";

/// Domain-separation labels for the values derived from the decoy secret.
const DECOY_SALT_LABEL: &[u8] = b"bulwark scram decoy salt";
const DECOY_STORED_KEY_LABEL: &[u8] = b"bulwark scram decoy stored key";
const DECOY_SERVER_KEY_LABEL: &[u8] = b"bulwark scram decoy server key";

/// Errors of SCRAM message handling and of SCRAM credentials.
///
/// The Display text never contains passwords, keys, proofs or other secrets, nor text copied
/// from the peer's message. [`ScramError::AuthenticationFailed`] is the one outcome for both an
/// unknown user and a wrong password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// A client message is longer than [`MAX_MESSAGE_LEN`].
    #[error("SCRAM client message is {len} bytes, over the limit of {max}")]
    MessageTooLarge {
        /// Length of the message received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A client message does not follow the RFC 5802 grammar.
    #[error("malformed SCRAM {message}: {reason}")]
    Malformed {
        /// Which message: `client-first-message` or `client-final-message`.
        message: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// The client asked for channel binding (`p=`), which this server does not offer.
    #[error(
        "[RFC 5802 §6] the client requires channel binding (gs2 flag p=), which this server does not offer; use the gs2 header \"n,,\""
    )]
    ChannelBindingNotSupported,
    /// The channel binding `c=` of client-final-message is not the base64 of the gs2 header sent
    /// in client-first-message.
    #[error(
        "[RFC 5802 §5.1] channel binding c= of client-final-message does not match the gs2 header of client-first-message"
    )]
    ChannelBindingMismatch,
    /// The nonce of client-final-message is not the nonce of server-first-message.
    #[error(
        "[RFC 5802 §5.1] nonce r= of client-final-message is not the nonce of server-first-message"
    )]
    NonceMismatch,
    /// The username `n=` is not acceptable.
    #[error("invalid SCRAM username: {reason}")]
    InvalidUsername {
        /// What was wrong.
        reason: &'static str,
    },
    /// An authorization identity (`a=`) other than the username was asked for.
    #[error("SCRAM authorization identity a= must be absent or equal to the username")]
    AuthzidNotAllowed,
    /// The proof is wrong or the user is unknown; the two are deliberately not told apart.
    #[error("SCRAM authentication failed")]
    AuthenticationFailed,
    /// The password cannot be used for SCRAM.
    #[error("password not usable for SCRAM: {reason}")]
    InvalidPassword {
        /// What was wrong.
        reason: &'static str,
    },
    /// An iteration count outside [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`].
    #[error("SCRAM iteration count {got} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    IterationCount {
        /// The count asked for.
        got: u32,
    },
    /// A salt that is empty or longer than the limit (128 bytes).
    #[error("SCRAM salt of {len} bytes is not accepted (1 to {MAX_SALT_LEN} bytes)")]
    InvalidSalt {
        /// Length of the salt given.
        len: usize,
    },
    /// A stored credential string could not be parsed.
    #[error("invalid SCRAM store string: {0}")]
    BadStoreString(String),
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    RandomUnavailable,
    /// The HMAC implementation refused a key; HMAC takes keys of any length, so this is not
    /// expected to happen, and it fails closed.
    #[error("internal SCRAM error: HMAC refused its key")]
    Internal,
}

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramHash {
    /// The SASL mechanism name, as carried in the MQTT 5 Authentication Method property.
    pub const fn method(&self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The hash for an Authentication Method, compared exactly (SASL mechanism names are
    /// upper case); `None` for any other method, including the `-PLUS` variants.
    pub fn from_method(method: &str) -> Option<Self> {
        match method {
            "SCRAM-SHA-256" => Some(Self::Sha256),
            "SCRAM-SHA-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Length in bytes of the hash output, hence of StoredKey, ServerKey and the proof.
    pub const fn output_len(&self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// HMAC over the concatenation of `parts`.
    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, ScramError> {
        match self {
            Self::Sha256 => hmac_parts::<Hmac<Sha256>>(key, parts),
            Self::Sha512 => hmac_parts::<Hmac<Sha512>>(key, parts),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `Hi(password, salt, iterations)` of RFC 5802, which is PBKDF2 with HMAC.
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            Self::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            Self::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }
}

impl fmt::Display for ScramHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method())
    }
}

fn hmac_parts<M: Mac + hmac::digest::KeyInit>(
    key: &[u8],
    parts: &[&[u8]],
) -> Result<Vec<u8>, ScramError> {
    let mut mac = <M as Mac>::new_from_slice(key).map_err(|_| ScramError::Internal)?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().to_vec())
}

/// What the server keeps for one user and one SCRAM hash (RFC 5802 §3): never the password.
///
/// `stored_key` and `server_key` are as sensitive as a password hash: whoever holds
/// `server_key` can impersonate the server, and both allow an offline guessing attack. `Debug`
/// does not print them.
#[derive(Clone)]
pub struct ScramCredentials {
    /// The hash these keys were derived with.
    pub hash: ScramHash,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// StoredKey = H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// ServerKey = HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("hash", &self.hash)
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl ScramCredentials {
    /// Derives credentials from a password with a fresh random salt of [`SALT_LEN`] bytes from
    /// the operating system.
    ///
    /// Refuses an iteration count outside [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`], an empty
    /// password and passwords with control characters (see the module documentation for how far
    /// SASLprep is applied).
    pub fn derive(hash: ScramHash, password: &str, iterations: u32) -> Result<Self, ScramError> {
        let mut salt = [0u8; SALT_LEN];
        OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|_| ScramError::RandomUnavailable)?;
        Self::derive_with_salt(hash, password, &salt, iterations)
    }

    /// As [`ScramCredentials::derive`] with a given salt (1 to 128 bytes): for tests and for
    /// reproducing known credentials. Reusing a salt across users or passwords weakens the store.
    pub fn derive_with_salt(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        check_password(password)?;
        check_iterations(iterations)?;
        check_salt(salt)?;
        let salted_password = hash.salted_password(password.as_bytes(), salt, iterations);
        let client_key = hash.hmac(&salted_password, &[b"Client Key"])?;
        let stored_key = hash.digest(&client_key);
        let server_key = hash.hmac(&salted_password, &[b"Server Key"])?;
        Ok(Self {
            hash,
            iterations,
            salt: salt.to_vec(),
            stored_key,
            server_key,
        })
    }

    /// The one-line text form kept by the password store (fields `scram_sha256` /
    /// `scram_sha512`): `i=<iterations>,s=<salt>,k=<stored key>,v=<server key>`, each binary
    /// value in standard base64 with padding. The hash is implied by the field it is kept in.
    pub fn to_store_string(&self) -> String {
        format!(
            "i={},s={},k={},v={}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }

    /// Parses [`ScramCredentials::to_store_string`]'s form for `hash`: the four fields in that
    /// order, nothing else (surrounding whitespace is ignored). Checks the iteration count range,
    /// the salt length and that both keys have the hash's output length.
    pub fn parse_store_string(hash: ScramHash, text: &str) -> Result<Self, ScramError> {
        let mut fields = text.trim().split(',');
        let iterations = store_field(fields.next(), "i", 1)?;
        let salt = store_field(fields.next(), "s", 2)?;
        let stored_key = store_field(fields.next(), "k", 3)?;
        let server_key = store_field(fields.next(), "v", 4)?;
        if fields.next().is_some() {
            return Err(bad_store("unexpected text after the v= field"));
        }

        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_store("i= must be a decimal iteration count"));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| bad_store("i= is too large for an iteration count"))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::BadStoreString(format!(
                "i={iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            )));
        }

        let salt = B64
            .decode(salt)
            .map_err(|_| bad_store("s= is not valid base64"))?;
        if salt.is_empty() || salt.len() > MAX_SALT_LEN {
            return Err(ScramError::BadStoreString(format!(
                "salt s= has {} bytes, expected 1 to {MAX_SALT_LEN}",
                salt.len()
            )));
        }
        let stored_key = store_key(hash, stored_key, "stored key k=")?;
        let server_key = store_key(hash, server_key, "server key v=")?;
        Ok(Self {
            hash,
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Whether these credentials can serve an exchange with `hash` (keys of the right length).
    fn usable_for(&self, hash: ScramHash) -> bool {
        self.hash == hash
            && self.stored_key.len() == hash.output_len()
            && self.server_key.len() == hash.output_len()
            && !self.salt.is_empty()
    }
}

fn bad_store(reason: &str) -> ScramError {
    ScramError::BadStoreString(format!(
        "{reason} (expected i=<iterations>,s=<salt>,k=<stored key>,v=<server key>)"
    ))
}

fn store_field<'a>(
    field: Option<&'a str>,
    name: &str,
    position: usize,
) -> Result<&'a str, ScramError> {
    field
        .and_then(|f| f.strip_prefix(name))
        .and_then(|f| f.strip_prefix('='))
        .ok_or_else(|| {
            ScramError::BadStoreString(format!(
                "field {position} must be {name}=... (expected i=<iterations>,s=<salt>,k=<stored key>,v=<server key>)"
            ))
        })
}

fn store_key(hash: ScramHash, value: &str, what: &str) -> Result<Vec<u8>, ScramError> {
    let key = B64
        .decode(value)
        .map_err(|_| ScramError::BadStoreString(format!("{what} is not valid base64")))?;
    if key.len() != hash.output_len() {
        return Err(ScramError::BadStoreString(format!(
            "{what} has {} bytes, {} needs {}",
            key.len(),
            hash.method(),
            hash.output_len()
        )));
    }
    Ok(key)
}

fn check_password(password: &str) -> Result<(), ScramError> {
    if password.is_empty() {
        return Err(ScramError::InvalidPassword {
            reason: "the password is empty",
        });
    }
    if password.chars().any(char::is_control) {
        return Err(ScramError::InvalidPassword {
            reason: "[RFC 4013 §5] the password contains a control character",
        });
    }
    Ok(())
}

fn check_iterations(iterations: u32) -> Result<(), ScramError> {
    if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        Ok(())
    } else {
        Err(ScramError::IterationCount { got: iterations })
    }
}

fn check_salt(salt: &[u8]) -> Result<(), ScramError> {
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        Err(ScramError::InvalidSalt { len: salt.len() })
    } else {
        Ok(())
    }
}

/// Per-server settings of SCRAM exchanges: how decoy exchanges for unknown users look.
///
/// The decoy salt is derived from the username and a secret, so it is the same on every attempt
/// for the same name, as a real user's salt is. Keep the secret across restarts (or decoy salts
/// change when the process restarts, while real ones do not), and never let clients learn it. Set the decoy iteration
/// count to the count most stored credentials use, so that unknown users are not told apart by it.
#[derive(Clone)]
pub struct ScramConfig {
    decoy_secret: [u8; 32],
    decoy_iterations: u32,
}

impl fmt::Debug for ScramConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramConfig")
            .field("decoy_secret", &"<redacted>")
            .field("decoy_iterations", &self.decoy_iterations)
            .finish()
    }
}

impl ScramConfig {
    /// Settings with this decoy secret and [`DEFAULT_ITERATIONS`] for decoys.
    pub const fn new(decoy_secret: [u8; 32]) -> Self {
        Self {
            decoy_secret,
            decoy_iterations: DEFAULT_ITERATIONS,
        }
    }

    /// Settings with a random decoy secret from the operating system (decoy salts then change
    /// when the process restarts).
    pub fn random() -> Result<Self, ScramError> {
        Ok(Self::new(Self::random_secret()?))
    }

    /// A fresh decoy secret from the operating system, for a caller that keeps it (so that
    /// decoy salts stay the same across restarts) and passes it to [`ScramConfig::new`].
    pub fn random_secret() -> Result<[u8; 32], ScramError> {
        let mut secret = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut secret)
            .map_err(|_| ScramError::RandomUnavailable)?;
        Ok(secret)
    }

    /// Sets the iteration count announced to unknown users; refused outside
    /// [`MIN_ITERATIONS`]`..=`[`MAX_ITERATIONS`].
    pub fn with_decoy_iterations(mut self, iterations: u32) -> Result<Self, ScramError> {
        check_iterations(iterations)?;
        self.decoy_iterations = iterations;
        Ok(self)
    }

    /// The iteration count announced to unknown users.
    pub const fn decoy_iterations(&self) -> u32 {
        self.decoy_iterations
    }

    /// Credentials for a user that does not exist: stable per (hash, username), and matching
    /// no password.
    fn decoy(&self, hash: ScramHash, username: &str) -> Result<ScramCredentials, ScramError> {
        let name = username.as_bytes();
        let method = hash.method().as_bytes();
        let mut salt = hash.hmac(
            &self.decoy_secret,
            &[DECOY_SALT_LABEL, b"\0", method, b"\0", name],
        )?;
        salt.truncate(SALT_LEN);
        let stored_key = hash.hmac(
            &self.decoy_secret,
            &[DECOY_STORED_KEY_LABEL, b"\0", method, b"\0", name],
        )?;
        let server_key = hash.hmac(
            &self.decoy_secret,
            &[DECOY_SERVER_KEY_LABEL, b"\0", method, b"\0", name],
        )?;
        Ok(ScramCredentials {
            hash,
            iterations: self.decoy_iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

/// The server side of one SCRAM exchange, between server-first-message and
/// server-final-message.
///
/// Call order: [`ScramServer::start`] (or [`ScramServer::start_os_rng`]) with the
/// client-first-message, send the server-first-message it returns, then
/// [`ScramServer::finish`] once with the client-final-message. Any error ends the exchange.
pub struct ScramServer {
    hash: ScramHash,
    username: String,
    /// False for a decoy exchange of an unknown user: `finish` then always fails.
    known: bool,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("hash", &self.hash)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Parses client-first-message and answers with server-first-message.
    ///
    /// `lookup` gives the credentials of the (decoded) username, `None` if the user is unknown;
    /// it is called only once the message is valid. Credentials for another hash or with keys of
    /// the wrong length count as unknown. `nonce_source` fills the buffer with the random bytes
    /// of the server nonce (24 bytes, sent as base64); it must be a cryptographically secure
    /// generator, and given the same bytes the exchange is deterministic.
    pub fn start(
        config: &ScramConfig,
        hash: ScramHash,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
        nonce_source: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(Self, Vec<u8>), ScramError> {
        let parsed = ClientFirst::parse(client_first)?;
        let mut nonce = [0u8; SERVER_NONCE_BYTES];
        nonce_source(&mut nonce);
        Self::start_parsed(config, hash, parsed, lookup, &B64.encode(nonce))
    }

    /// As [`ScramServer::start`], with the server nonce from the operating system's generator.
    pub fn start_os_rng(
        config: &ScramConfig,
        hash: ScramHash,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
    ) -> Result<(Self, Vec<u8>), ScramError> {
        let parsed = ClientFirst::parse(client_first)?;
        let mut nonce = [0u8; SERVER_NONCE_BYTES];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| ScramError::RandomUnavailable)?;
        Self::start_parsed(config, hash, parsed, lookup, &B64.encode(nonce))
    }

    /// `server_nonce` must be printable ASCII without `,` (base64 is).
    fn start_parsed(
        config: &ScramConfig,
        hash: ScramHash,
        parsed: ClientFirst,
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
        server_nonce: &str,
    ) -> Result<(Self, Vec<u8>), ScramError> {
        let (credentials, known) = match lookup(&parsed.username) {
            Some(credentials) if credentials.usable_for(hash) => (credentials, true),
            _ => (config.decoy(hash, &parsed.username)?, false),
        };
        let nonce = format!("{}{server_nonce}", parsed.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credentials.salt),
            credentials.iterations
        );
        let reply = server_first.clone().into_bytes();
        let server = Self {
            hash,
            username: parsed.username,
            known,
            stored_key: credentials.stored_key,
            server_key: credentials.server_key,
            gs2_header: parsed.gs2_header,
            client_first_bare: parsed.bare,
            server_first,
            nonce,
        };
        Ok((server, reply))
    }

    /// The hash of this exchange.
    pub const fn hash(&self) -> ScramHash {
        self.hash
    }

    /// The username from client-first-message (not yet authenticated).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Checks client-final-message; on success returns server-final-message (`v=<base64
    /// ServerSignature>`) and the authenticated username.
    ///
    /// Fails with [`ScramError::AuthenticationFailed`] for a wrong proof and for every exchange
    /// of an unknown user, after the same work.
    pub fn finish(self, client_final: &[u8]) -> Result<(Vec<u8>, String), ScramError> {
        let text = message_text(client_final, CLIENT_FINAL)?;
        let (without_proof, proof_field) = text
            .rsplit_once(',')
            .ok_or_else(|| malformed_final("[RFC 5802 §7] expected c=...,r=...,p=..."))?;
        let proof = proof_field.strip_prefix("p=").ok_or_else(|| {
            malformed_final("[RFC 5802 §7] the last attribute must be the proof p=")
        })?;

        let mut fields = without_proof.split(',');
        let binding = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or_else(|| {
                malformed_final("[RFC 5802 §7] the first attribute must be the channel binding c=")
            })?;
        let binding = B64
            .decode(binding)
            .map_err(|_| malformed_final("channel binding c= is not valid base64"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or_else(|| {
                malformed_final("[RFC 5802 §7] the second attribute must be the nonce r=")
            })?;
        if nonce != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        for extension in fields {
            check_extension(extension, CLIENT_FINAL)?;
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| malformed_final("proof p= is not valid base64"))?;
        if proof.len() != self.hash.output_len() {
            return Err(malformed_final(
                "proof p= does not have the hash's output length",
            ));
        }

        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = self
            .hash
            .hmac(&self.stored_key, &[auth_message.as_bytes()])?;
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let candidate = self.hash.digest(&client_key);
        let verified = candidate.ct_eq(&self.stored_key) & Choice::from(u8::from(self.known));
        if !bool::from(verified) {
            return Err(ScramError::AuthenticationFailed);
        }
        let server_signature = self
            .hash
            .hmac(&self.server_key, &[auth_message.as_bytes()])?;
        let server_final = format!("v={}", B64.encode(server_signature)).into_bytes();
        Ok((server_final, self.username))
    }
}

/// A valid client-first-message, taken apart.
#[derive(Debug)]
struct ClientFirst {
    /// `n,,`, `y,,` or with an authzid equal to the username, e.g. `n,a=user,`.
    gs2_header: String,
    /// The decoded username.
    username: String,
    client_nonce: String,
    /// client-first-message-bare, verbatim.
    bare: String,
}

impl ClientFirst {
    fn parse(bytes: &[u8]) -> Result<Self, ScramError> {
        let text = message_text(bytes, CLIENT_FIRST)?;
        let (flag, rest) = text.split_once(',').ok_or_else(|| {
            malformed_first("[RFC 5802 §7] missing the gs2 header (expected \"n,,\")")
        })?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(ScramError::ChannelBindingNotSupported),
            _ => {
                return Err(malformed_first(
                    "[RFC 5802 §7] the gs2 channel binding flag must be \"n\", \"y\" or \"p=\"",
                ));
            }
        }
        let (authzid_field, bare) = rest.split_once(',').ok_or_else(|| {
            malformed_first("[RFC 5802 §7] the gs2 header must end with ',' (expected \"n,,\")")
        })?;
        let authzid = if authzid_field.is_empty() {
            None
        } else {
            let encoded = authzid_field.strip_prefix("a=").ok_or_else(|| {
                malformed_first("[RFC 5802 §7] the gs2 authzid must be empty or a=...")
            })?;
            Some(
                decode_saslname(encoded)
                    .map_err(|reason| ScramError::InvalidUsername { reason })?,
            )
        };
        let header_len = flag.len() + authzid_field.len() + 2;
        let gs2_header = text
            .get(..header_len)
            .ok_or_else(|| malformed_first("the gs2 header could not be delimited"))?;

        let mut fields = bare.split(',');
        let first = fields.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(malformed_first(
                "[RFC 5802 §5.1] the mandatory extension m= is not supported",
            ));
        }
        let encoded_username = first.strip_prefix("n=").ok_or_else(|| {
            malformed_first("[RFC 5802 §7] the first attribute must be the username n=")
        })?;
        let username = decode_saslname(encoded_username)
            .map_err(|reason| ScramError::InvalidUsername { reason })?;
        check_username(&username)?;
        let client_nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or_else(|| {
                malformed_first("[RFC 5802 §7] the second attribute must be the nonce r=")
            })?;
        check_nonce(client_nonce)?;
        for extension in fields {
            check_extension(extension, CLIENT_FIRST)?;
        }
        if authzid.is_some_and(|authzid| authzid != username) {
            return Err(ScramError::AuthzidNotAllowed);
        }
        Ok(Self {
            gs2_header: gs2_header.to_owned(),
            username,
            client_nonce: client_nonce.to_owned(),
            bare: bare.to_owned(),
        })
    }
}

fn malformed_first(reason: &'static str) -> ScramError {
    ScramError::Malformed {
        message: CLIENT_FIRST,
        reason,
    }
}

fn malformed_final(reason: &'static str) -> ScramError {
    ScramError::Malformed {
        message: CLIENT_FINAL,
        reason,
    }
}

/// The message as UTF-8 text, after the size limit.
fn message_text<'a>(bytes: &'a [u8], message: &'static str) -> Result<&'a str, ScramError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::MessageTooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    if bytes.is_empty() {
        return Err(ScramError::Malformed {
            message,
            reason: "the message is empty",
        });
    }
    std::str::from_utf8(bytes).map_err(|_| ScramError::Malformed {
        message,
        reason: "[RFC 5802 §7] the message is not valid UTF-8",
    })
}

/// Decodes a `saslname`: `=2C` is `,`, `=3D` is `=`, any other `=` is refused.
fn decode_saslname(encoded: &str) -> Result<String, &'static str> {
    if encoded.is_empty() {
        return Err("the name is empty");
    }
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        if c == '=' {
            match (chars.next(), chars.next()) {
                (Some('2'), Some('C')) => out.push(','),
                (Some('3'), Some('D')) => out.push('='),
                _ => return Err("[RFC 5802 §5.1] '=' must be followed by 2C or 3D"),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn check_username(username: &str) -> Result<(), ScramError> {
    let reason = if username.contains('\0') {
        "the name contains U+0000"
    } else if username.contains(['+', '#', '/']) {
        "the name contains an MQTT wildcard or topic separator (+ # /)"
    } else if username.chars().any(char::is_control) {
        "the name contains a control character"
    } else {
        return Ok(());
    };
    Err(ScramError::InvalidUsername { reason })
}

/// A nonce is printable ASCII except `,` (RFC 5802 §7), and not empty.
fn check_nonce(nonce: &str) -> Result<(), ScramError> {
    if nonce.is_empty() {
        return Err(malformed_first("[RFC 5802 §7] the client nonce is empty"));
    }
    if !nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(malformed_first(
            "[RFC 5802 §7] the client nonce must be printable ASCII without ','",
        ));
    }
    Ok(())
}

/// An optional extension attribute: one ASCII letter, `=`, a non-empty value without U+0000.
/// Its meaning is ignored, as RFC 5802 §5.1 asks for unknown optional extensions.
fn check_extension(attribute: &str, message: &'static str) -> Result<(), ScramError> {
    let mut chars = attribute.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.next() == Some('=')
        && !chars.as_str().is_empty()
        && !chars.as_str().contains('\0');
    if well_formed {
        Ok(())
    } else {
        Err(ScramError::Malformed {
            message,
            reason: "[RFC 5802 §7] an attribute is not of the form x=value",
        })
    }
}

/// The client side of one SCRAM exchange without channel binding (`n,,`), for the broker's
/// own tools and tests.
///
/// Call order: [`ScramClient::client_first`], then [`ScramClient::client_final`] with the
/// server-first-message, then [`ScramClient::verify_server_final`] with the
/// server-final-message, which proves the server knew the credentials.
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    first_bare: String,
    nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A client for `username` and `password` with a fresh random nonce.
    pub fn new(hash: ScramHash, username: &str, password: &str) -> Result<Self, ScramError> {
        let mut nonce = [0u8; SERVER_NONCE_BYTES];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| ScramError::RandomUnavailable)?;
        let nonce = B64.encode(nonce);
        let name = username.replace('=', "=3D").replace(',', "=2C");
        Ok(Self {
            hash,
            password: password.to_owned(),
            first_bare: format!("n={name},r={nonce}"),
            nonce,
            server_signature: None,
        })
    }

    /// client-first-message.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// client-final-message for `server_first`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let bad = |reason| ScramError::Malformed {
            message: "server-first-message",
            reason,
        };
        let text = std::str::from_utf8(server_first).map_err(|_| bad("not UTF-8"))?;
        let mut parts = text.split(',');
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(bad("expected r="))?;
        let salt = parts
            .next()
            .and_then(|p| p.strip_prefix("s="))
            .and_then(|p| B64.decode(p).ok())
            .ok_or(bad("expected s= with base64"))?;
        let iterations: u32 = parts
            .next()
            .and_then(|p| p.strip_prefix("i="))
            .and_then(|p| p.parse().ok())
            .ok_or(bad("expected i= with a number"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        check_iterations(iterations)?;
        check_salt(&salt)?;
        let salted = self
            .hash
            .salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = self.hash.hmac(&salted, &[b"Client Key"])?;
        let stored_key = self.hash.digest(&client_key);
        let server_key = self.hash.hmac(&salted, &[b"Server Key"])?;
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth_message = format!("{},{text},{without_proof}", self.first_bare);
        let signature = self.hash.hmac(&stored_key, &[auth_message.as_bytes()])?;
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.server_signature = Some(self.hash.hmac(&server_key, &[auth_message.as_bytes()])?);
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final-message (`v=...`) against the signature the server must have sent.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or(ScramError::AuthenticationFailed)?;
        let got = std::str::from_utf8(server_final)
            .ok()
            .and_then(|t| t.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::AuthenticationFailed)?;
        if bool::from(got.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ScramError::AuthenticationFailed)
        }
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

    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn config() -> ScramConfig {
        ScramConfig::new([42; 32])
    }

    fn fixed_nonce(fill: u8) -> impl FnMut(&mut [u8]) {
        move |buf: &mut [u8]| buf.fill(fill)
    }

    /// Derived once: PBKDF2 is slow in debug builds and many tests need these.
    fn rfc_credentials() -> ScramCredentials {
        static CREDENTIALS: std::sync::OnceLock<ScramCredentials> = std::sync::OnceLock::new();
        CREDENTIALS
            .get_or_init(|| {
                let salt = B64.decode(RFC_SALT).unwrap();
                ScramCredentials::derive_with_salt(ScramHash::Sha256, "pencil", &salt, 4096)
                    .unwrap()
            })
            .clone()
    }

    /// HMAC and PBKDF2 called directly on the crates, so that the test client does not share
    /// the code under test.
    fn t_hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
        match hash {
            ScramHash::Sha256 => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha512 => {
                let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key).unwrap();
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn t_hash(hash: ScramHash, data: &[u8]) -> Vec<u8> {
        match hash {
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn t_pbkdf2(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match hash {
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec()
            }
            ScramHash::Sha512 => {
                pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, salt, iterations).to_vec()
            }
        }
    }

    /// A minimal SCRAM client, enough to drive the server.
    struct TestClient {
        hash: ScramHash,
        gs2_header: String,
        username_encoded: String,
        password: String,
        nonce: String,
    }

    impl TestClient {
        fn new(hash: ScramHash, username: &str, password: &str, nonce: &str) -> Self {
            Self {
                hash,
                gs2_header: "n,,".to_owned(),
                username_encoded: username.replace('=', "=3D").replace(',', "=2C"),
                password: password.to_owned(),
                nonce: nonce.to_owned(),
            }
        }

        fn first_bare(&self) -> String {
            format!("n={},r={}", self.username_encoded, self.nonce)
        }

        fn client_first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.first_bare()).into_bytes()
        }

        /// Returns client-final-message and the server-final-message it expects.
        fn client_final(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let server_first = std::str::from_utf8(server_first).unwrap();
            let mut parts = server_first.split(',');
            let nonce = parts.next().unwrap().strip_prefix("r=").unwrap();
            let salt = B64
                .decode(parts.next().unwrap().strip_prefix("s=").unwrap())
                .unwrap();
            let iterations: u32 = parts
                .next()
                .unwrap()
                .strip_prefix("i=")
                .unwrap()
                .parse()
                .unwrap();
            assert!(nonce.starts_with(&self.nonce), "server dropped our nonce");
            let salted = t_pbkdf2(self.hash, self.password.as_bytes(), &salt, iterations);
            let client_key = t_hmac(self.hash, &salted, b"Client Key");
            let stored_key = t_hash(self.hash, &client_key);
            let server_key = t_hmac(self.hash, &salted, b"Server Key");
            let without_proof = format!("c={},r={nonce}", B64.encode(&self.gs2_header));
            let auth = format!("{},{server_first},{without_proof}", self.first_bare());
            let signature = t_hmac(self.hash, &stored_key, auth.as_bytes());
            let proof: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(k, s)| k ^ s)
                .collect();
            let server_signature = t_hmac(self.hash, &server_key, auth.as_bytes());
            (
                format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
                format!("v={}", B64.encode(server_signature)).into_bytes(),
            )
        }
    }

    /// What `finish` returns.
    type Finished = Result<(Vec<u8>, String), ScramError>;

    /// Runs a whole exchange against `lookup`; returns the result of `finish` and the
    /// server-final-message the client expects.
    fn exchange(
        client: &TestClient,
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
    ) -> (Finished, Vec<u8>) {
        let (server, server_first) = ScramServer::start(
            &config(),
            client.hash,
            &client.client_first(),
            lookup,
            &mut fixed_nonce(7),
        )
        .unwrap();
        let (client_final, expected) = client.client_final(&server_first);
        (server.finish(&client_final), expected)
    }

    fn start_err(client_first: &[u8]) -> ScramError {
        ScramServer::start(
            &config(),
            ScramHash::Sha256,
            client_first,
            |_| Some(rfc_credentials()),
            &mut fixed_nonce(1),
        )
        .unwrap_err()
    }

    /// A server after a valid RFC client-first-message, with the RFC's server nonce.
    fn rfc_server() -> (ScramServer, Vec<u8>) {
        let parsed = ClientFirst::parse(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        ScramServer::start_parsed(
            &config(),
            ScramHash::Sha256,
            parsed,
            |name| (name == "user").then(rfc_credentials),
            RFC_SERVER_NONCE,
        )
        .unwrap()
    }

    fn finish_err(client_final: &[u8]) -> ScramError {
        rfc_server().0.finish(client_final).unwrap_err()
    }

    #[test]
    fn method_names() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            assert_eq!(ScramHash::from_method(hash.method()), Some(hash));
            assert_eq!(hash.to_string(), hash.method());
        }
        assert_eq!(ScramHash::Sha256.method(), "SCRAM-SHA-256");
        assert_eq!(ScramHash::Sha512.method(), "SCRAM-SHA-512");
        assert_eq!(ScramHash::from_method("scram-sha-256"), None);
        assert_eq!(ScramHash::from_method("SCRAM-SHA-256-PLUS"), None);
        assert_eq!(ScramHash::from_method("SCRAM-SHA-1"), None);
    }

    #[test]
    fn rfc7677_test_vector() {
        let (server, server_first) = rfc_server();
        assert_eq!(server.username(), "user");
        assert_eq!(server.hash(), ScramHash::Sha256);
        assert_eq!(
            std::str::from_utf8(&server_first).unwrap(),
            RFC_SERVER_FIRST
        );

        // The independent test client reproduces the RFC's client-final-message.
        let client = TestClient::new(ScramHash::Sha256, "user", "pencil", RFC_CLIENT_NONCE);
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
        let (client_final, expected_final) = client.client_final(&server_first);
        assert_eq!(
            std::str::from_utf8(&client_final).unwrap(),
            RFC_CLIENT_FINAL
        );
        assert_eq!(expected_final, RFC_SERVER_FINAL.as_bytes());

        let (server_final, username) = server.finish(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(
            std::str::from_utf8(&server_final).unwrap(),
            RFC_SERVER_FINAL
        );
        assert_eq!(username, "user");
    }

    #[test]
    fn public_start_appends_base64_nonce() {
        let (server, server_first) = ScramServer::start(
            &config(),
            ScramHash::Sha256,
            RFC_CLIENT_FIRST.as_bytes(),
            |_| Some(rfc_credentials()),
            &mut fixed_nonce(0xff),
        )
        .unwrap();
        let expected_nonce = format!("{RFC_CLIENT_NONCE}{}", B64.encode([0xff; 24]));
        assert_eq!(
            String::from_utf8(server_first).unwrap(),
            format!("r={expected_nonce},s={RFC_SALT},i=4096")
        );
        assert_eq!(server.nonce, expected_nonce);
    }

    #[test]
    fn os_rng_start_round_trip() {
        let creds = ScramCredentials::derive(ScramHash::Sha256, "pencil", 4096).unwrap();
        let client = TestClient::new(ScramHash::Sha256, "user", "pencil", "abcdefgh");
        let (a, first_a) =
            ScramServer::start_os_rng(&config(), ScramHash::Sha256, &client.client_first(), |_| {
                Some(creds.clone())
            })
            .unwrap();
        let (_, first_b) =
            ScramServer::start_os_rng(&config(), ScramHash::Sha256, &client.client_first(), |_| {
                Some(creds.clone())
            })
            .unwrap();
        assert_ne!(first_a, first_b, "server nonces must differ");
        let (client_final, expected) = client.client_final(&first_a);
        assert_eq!(a.finish(&client_final).unwrap().0, expected);
    }

    #[test]
    fn sha512_round_trip() {
        let creds = ScramCredentials::derive(ScramHash::Sha512, "correct horse", 4096).unwrap();
        assert_eq!(creds.salt.len(), SALT_LEN);
        assert_eq!(creds.stored_key.len(), 64);
        assert_eq!(creds.server_key.len(), 64);
        let client = TestClient::new(ScramHash::Sha512, "alice", "correct horse", "n0nce-512");
        let mut looked_up = None;
        let (result, expected) = exchange(&client, |name| {
            looked_up = Some(name.to_owned());
            Some(creds)
        });
        let (server_final, username) = result.unwrap();
        assert_eq!(server_final, expected);
        assert_eq!(username, "alice");
        assert_eq!(looked_up.as_deref(), Some("alice"));
    }

    #[test]
    fn y_flag_and_matching_authzid_are_accepted() {
        let creds = rfc_credentials();
        let mut client = TestClient::new(ScramHash::Sha256, "user", "pencil", "xyz");
        client.gs2_header = "y,,".to_owned();
        let (result, expected) = exchange(&client, |_| Some(creds.clone()));
        assert_eq!(result.unwrap().0, expected);

        client.gs2_header = "n,a=user,".to_owned();
        let (result, expected) = exchange(&client, |_| Some(creds));
        assert_eq!(result.unwrap(), (expected, "user".to_owned()));
    }

    #[test]
    fn escaped_username_is_decoded() {
        let creds = ScramCredentials::derive(ScramHash::Sha256, "pw", 4096).unwrap();
        let client = TestClient::new(ScramHash::Sha256, "a,b=c", "pw", "nonce");
        assert_eq!(client.username_encoded, "a=2Cb=3Dc");
        let mut looked_up = None;
        let (result, _) = exchange(&client, |name| {
            looked_up = Some(name.to_owned());
            Some(creds)
        });
        assert_eq!(result.unwrap().1, "a,b=c");
        assert_eq!(looked_up.as_deref(), Some("a,b=c"));
    }

    #[test]
    fn wrong_password_fails() {
        let client = TestClient::new(ScramHash::Sha256, "user", "pencil!", "nonce");
        let (result, _) = exchange(&client, |_| Some(rfc_credentials()));
        assert_eq!(result.unwrap_err(), ScramError::AuthenticationFailed);

        // A proof of the right length but all zeroes.
        let (server, _) = rfc_server();
        let zero = format!(
            "c=biws,r={RFC_CLIENT_NONCE}{RFC_SERVER_NONCE},p={}",
            B64.encode([0u8; 32])
        );
        assert_eq!(
            server.finish(zero.as_bytes()).unwrap_err(),
            ScramError::AuthenticationFailed
        );
    }

    fn server_first_fields(server_first: &[u8]) -> (String, Vec<u8>, String) {
        let text = String::from_utf8(server_first.to_vec()).unwrap();
        let parts: Vec<&str> = text.split(',').collect();
        assert_eq!(parts.len(), 3, "{text}");
        (
            parts[0].strip_prefix("r=").unwrap().to_owned(),
            B64.decode(parts[1].strip_prefix("s=").unwrap()).unwrap(),
            parts[2].strip_prefix("i=").unwrap().to_owned(),
        )
    }

    #[test]
    fn unknown_user_is_indistinguishable() {
        let client_first = |user: &str| format!("n,,n={user},r={RFC_CLIENT_NONCE}").into_bytes();
        let start = |cfg: &ScramConfig, user: &str| {
            ScramServer::start(
                cfg,
                ScramHash::Sha256,
                &client_first(user),
                |name| (name == "user").then(rfc_credentials),
                &mut fixed_nonce(9),
            )
            .unwrap()
        };
        let (_, known_first) = start(&config(), "user");
        let (unknown, unknown_first) = start(&config(), "mallory");
        let (known_nonce, known_salt, known_iter) = server_first_fields(&known_first);
        let (unknown_nonce, unknown_salt, unknown_iter) = server_first_fields(&unknown_first);
        assert_eq!(known_nonce, unknown_nonce);
        assert_eq!(known_salt.len(), unknown_salt.len());
        assert_eq!(known_iter, unknown_iter);
        assert_ne!(known_salt, unknown_salt);
        assert_eq!(known_first.len(), unknown_first.len());

        // Stable per username and secret, different otherwise.
        let (_, again) = start(&config(), "mallory");
        assert_eq!(again, unknown_first);
        let (_, other_name) = start(&config(), "trudy");
        assert_ne!(server_first_fields(&other_name).1, unknown_salt);
        let (_, other_secret) = start(&ScramConfig::new([1; 32]), "mallory");
        assert_ne!(server_first_fields(&other_secret).1, unknown_salt);
        let slow = config().with_decoy_iterations(10_000).unwrap();
        let (_, slow_first) = start(&slow, "mallory");
        assert_eq!(server_first_fields(&slow_first).2, "10000");

        // finish fails exactly as a wrong password does, whatever the client computes.
        let client = TestClient::new(ScramHash::Sha256, "mallory", "pencil", RFC_CLIENT_NONCE);
        let (client_final, _) = client.client_final(&unknown_first);
        assert_eq!(
            unknown.finish(&client_final).unwrap_err(),
            ScramError::AuthenticationFailed
        );
    }

    #[test]
    fn credentials_of_another_hash_count_as_unknown() {
        let creds = ScramCredentials::derive(ScramHash::Sha256, "pw", 4096).unwrap();
        let client = TestClient::new(ScramHash::Sha512, "bob", "pw", "nonce");
        let (result, _) = exchange(&client, |_| Some(creds.clone()));
        assert_eq!(result.unwrap_err(), ScramError::AuthenticationFailed);

        // Truncated keys must not panic either.
        let mut broken = creds;
        broken.stored_key.truncate(5);
        let client = TestClient::new(ScramHash::Sha256, "bob", "pw", "nonce");
        let (result, _) = exchange(&client, |_| Some(broken));
        assert_eq!(result.unwrap_err(), ScramError::AuthenticationFailed);
    }

    #[test]
    fn tampered_client_final_is_refused() {
        let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        // Nonce: changed server part, missing server part.
        for bad_nonce in [
            format!("{nonce}x"),
            RFC_CLIENT_NONCE.to_owned(),
            nonce.replace('%', "&"),
        ] {
            let msg = format!("c=biws,r={bad_nonce},p={proof}");
            assert_eq!(finish_err(msg.as_bytes()), ScramError::NonceMismatch);
        }
        // Channel binding of "y,," and of "p=tls-unique,," instead of "n,,".
        for binding in ["eSws", "cD10bHMtdW5pcXVlLCw="] {
            let msg = format!("c={binding},r={nonce},p={proof}");
            assert_eq!(
                finish_err(msg.as_bytes()),
                ScramError::ChannelBindingMismatch
            );
        }
        // Proof altered by one bit.
        let mut raw = B64.decode(proof).unwrap();
        raw[0] ^= 1;
        let msg = format!("c=biws,r={nonce},p={}", B64.encode(raw));
        assert_eq!(finish_err(msg.as_bytes()), ScramError::AuthenticationFailed);
        // An extension added after the nonce changes AuthMessage, so the proof no longer fits.
        let msg = format!("c=biws,r={nonce},x=ext,p={proof}");
        assert_eq!(finish_err(msg.as_bytes()), ScramError::AuthenticationFailed);
    }

    #[test]
    fn malformed_client_final_is_refused() {
        let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"garbage".to_vec(),
            b"\xff\xfe,\x00".to_vec(),
            b",,,".to_vec(),
            format!("c=biws,r={nonce}").into_bytes(),
            format!("c=biws,r={nonce},p=").into_bytes(),
            format!("c=biws,r={nonce},p=!!!").into_bytes(),
            format!("c=biws,r={nonce},p=AAAA").into_bytes(),
            format!("r={nonce},c=biws,p={proof}").into_bytes(),
            format!("c=biws,p={proof}").into_bytes(),
            format!("c=b!ws,r={nonce},p={proof}").into_bytes(),
            format!("c=biws,r={nonce},,p={proof}").into_bytes(),
            format!("c=biws,r={nonce},1=x,p={proof}").into_bytes(),
            format!("c=biws,r={nonce},x=,p={proof}").into_bytes(),
            format!("c=biws,r={nonce},x=a\0b,p={proof}").into_bytes(),
            format!("c=biws,r={nonce},p={proof},").into_bytes(),
        ];
        for case in cases {
            match finish_err(&case) {
                ScramError::Malformed { message, .. } => assert_eq!(message, CLIENT_FINAL),
                other => panic!("{:?}: unexpected {other:?}", String::from_utf8_lossy(&case)),
            }
        }
    }

    #[test]
    fn channel_binding_requests_are_refused() {
        for msg in [
            "p=tls-unique,,n=user,r=abc",
            "p=tls-server-end-point,,n=u,r=x",
        ] {
            assert_eq!(
                start_err(msg.as_bytes()),
                ScramError::ChannelBindingNotSupported
            );
        }
    }

    #[test]
    fn bad_usernames_are_refused() {
        for user in [
            "us=2Xer", "us=er", "user=", "user=2", "us=2cer", "=3d", "a#b", "a+b", "a/b", "#",
            "a\0b", "a\u{7}b", "",
        ] {
            let msg = format!("n,,n={user},r=abc");
            assert!(
                matches!(
                    start_err(msg.as_bytes()),
                    ScramError::InvalidUsername { .. }
                ),
                "{user:?}"
            );
        }
        // Bad escapes in the authzid too.
        assert!(matches!(
            start_err(b"n,a=us=2Xer,n=user,r=abc"),
            ScramError::InvalidUsername { .. }
        ));
    }

    #[test]
    fn other_authzid_is_refused() {
        assert_eq!(
            start_err(b"n,a=admin,n=user,r=abc"),
            ScramError::AuthzidNotAllowed
        );
        assert_eq!(
            start_err(b"n,a=User,n=user,r=abc"),
            ScramError::AuthzidNotAllowed
        );
    }

    #[test]
    fn malformed_client_first_is_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"n,,n=user",
            b"n,,r=abc,n=user",
            b"n,,n=user,r=",
            b"n,,n=user,r=a b",
            b"n,,n=user,r=caf\xc3\xa9",
            b"n,,n=user,r=abc\x7f",
            b"n,,n=user,x=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=user,r=abc,",
            b"n,,n=user,r=abc,toolong=1",
            b"n,,n=user,r=abc,x=",
            b"x,,n=user,r=abc",
            b"N,,n=user,r=abc",
            b"n,b=x,n=user,r=abc",
            b"n,,,n=user,r=abc",
            b"\xff\xfe\xfd",
            b"n,,n=us\xffer,r=abc",
            b"\0\0\0\0",
            b",,,,,,",
        ];
        for case in cases {
            match start_err(case) {
                ScramError::Malformed { message, .. } => assert_eq!(message, CLIENT_FIRST),
                other => panic!("{:?}: unexpected {other:?}", String::from_utf8_lossy(case)),
            }
        }
        // Optional extensions after the nonce are accepted and ignored.
        assert!(
            ScramServer::start(
                &config(),
                ScramHash::Sha256,
                b"n,,n=user,r=abc,x=1,y=2",
                |_| None,
                &mut fixed_nonce(0),
            )
            .is_ok()
        );
    }

    #[test]
    fn oversized_messages_are_refused() {
        let mut big = b"n,,n=user,r=".to_vec();
        big.resize(MAX_MESSAGE_LEN + 1, b'a');
        assert_eq!(
            start_err(&big),
            ScramError::MessageTooLarge {
                len: MAX_MESSAGE_LEN + 1,
                max: MAX_MESSAGE_LEN
            }
        );
        // Exactly at the limit is parsed.
        big.truncate(MAX_MESSAGE_LEN);
        assert!(
            ScramServer::start(
                &config(),
                ScramHash::Sha256,
                &big,
                |_| None,
                &mut fixed_nonce(0)
            )
            .is_ok()
        );
        let mut big_final =
            format!("c=biws,r={RFC_CLIENT_NONCE}{RFC_SERVER_NONCE},x=").into_bytes();
        big_final.resize(MAX_MESSAGE_LEN + 100, b'a');
        assert!(matches!(
            finish_err(&big_final),
            ScramError::MessageTooLarge { .. }
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A fixed xorshift sequence over an alphabet rich in SCRAM syntax.
        let alphabet = b"nyp=,arcmxvs2C3D+#/biws\0\xff%AZaz09";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = usize::try_from(next() % 48).unwrap();
            let msg: Vec<u8> = (0..len)
                .map(|_| alphabet[usize::try_from(next()).unwrap() % alphabet.len()])
                .collect();
            let _ = ScramServer::start(
                &config(),
                ScramHash::Sha512,
                &msg,
                |_| None,
                &mut fixed_nonce(3),
            );
            let mut prefixed = b"c=biws,r=".to_vec();
            prefixed.extend_from_slice(&msg);
            for candidate in [&msg, &prefixed] {
                let (server, _) = rfc_server();
                assert!(server.finish(candidate).is_err());
            }
        }
    }

    #[test]
    fn store_string_round_trip() {
        let creds = rfc_credentials();
        let text = creds.to_store_string();
        assert!(
            text.starts_with(&format!("i=4096,s={RFC_SALT},k=")),
            "{text}"
        );
        assert!(!text.contains('\n'));
        let parsed = ScramCredentials::parse_store_string(ScramHash::Sha256, &text).unwrap();
        assert_eq!(parsed.to_store_string(), text);
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt, creds.salt);
        assert_eq!(parsed.stored_key, creds.stored_key);
        assert_eq!(parsed.server_key, creds.server_key);
        let padded = format!("  {text}\n");
        assert!(ScramCredentials::parse_store_string(ScramHash::Sha256, &padded).is_ok());

        let creds512 = ScramCredentials::derive(ScramHash::Sha512, "pw", 5000).unwrap();
        let text512 = creds512.to_store_string();
        let parsed = ScramCredentials::parse_store_string(ScramHash::Sha512, &text512).unwrap();
        assert_eq!(parsed.to_store_string(), text512);
        assert_eq!(parsed.hash, ScramHash::Sha512);
        assert_eq!(parsed.iterations, 5000);

        // A SHA-256 string does not parse as SHA-512 (key lengths).
        assert!(matches!(
            ScramCredentials::parse_store_string(ScramHash::Sha512, &text),
            Err(ScramError::BadStoreString(_))
        ));
    }

    #[test]
    fn store_string_parse_errors() {
        let creds = rfc_credentials();
        let k = B64.encode(&creds.stored_key);
        let v = B64.encode(&creds.server_key);
        let cases = [
            String::new(),
            "garbage".to_owned(),
            format!("s={RFC_SALT},i=4096,k={k},v={v}"),
            format!("i=4096,s={RFC_SALT},k={k}"),
            format!("i=4096,s={RFC_SALT},k={k},v={v},x=1"),
            format!("i=4096,s={RFC_SALT},k={k},v={v},"),
            format!("i=,s={RFC_SALT},k={k},v={v}"),
            format!("i=abc,s={RFC_SALT},k={k},v={v}"),
            format!("i=+4096,s={RFC_SALT},k={k},v={v}"),
            format!("i=99999999999,s={RFC_SALT},k={k},v={v}"),
            format!("i=4095,s={RFC_SALT},k={k},v={v}"),
            format!("i=10000001,s={RFC_SALT},k={k},v={v}"),
            format!("i=4096,s=,k={k},v={v}"),
            format!("i=4096,s=!!,k={k},v={v}"),
            format!("i=4096,s={},k={k},v={v}", B64.encode([0u8; 129])),
            format!("i=4096,s={RFC_SALT},k=AAAA,v={v}"),
            format!("i=4096,s={RFC_SALT},k={k},v=not base64"),
            format!("i=4096,s={RFC_SALT},k={k},v={}", &v[..v.len() - 1]),
            format!("i=4096,s={RFC_SALT},k={v},v={k}x"),
            format!("i=4096 ,s={RFC_SALT},k={k},v={v}"),
        ];
        for case in cases {
            let err = ScramCredentials::parse_store_string(ScramHash::Sha256, &case).unwrap_err();
            match &err {
                ScramError::BadStoreString(reason) => {
                    // Never echoes key material.
                    assert!(!reason.contains(&k) && !reason.contains(&v), "{reason}");
                }
                other => panic!("{case:?}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn derive_refuses_weak_or_bad_input() {
        for iterations in [0, 1, 4095] {
            assert_eq!(
                ScramCredentials::derive(ScramHash::Sha256, "pencil", iterations).unwrap_err(),
                ScramError::IterationCount { got: iterations }
            );
        }
        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha512, "pencil", MAX_ITERATIONS + 1).unwrap_err(),
            ScramError::IterationCount {
                got: MAX_ITERATIONS + 1
            }
        );
        for password in [
            "",
            "pen\ncil",
            "tab\there",
            "nul\0",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            assert!(
                matches!(
                    ScramCredentials::derive(ScramHash::Sha256, password, 4096),
                    Err(ScramError::InvalidPassword { .. })
                ),
                "{password:?}"
            );
        }
        assert_eq!(
            ScramCredentials::derive_with_salt(ScramHash::Sha256, "pencil", &[], 4096).unwrap_err(),
            ScramError::InvalidSalt { len: 0 }
        );
        assert!(config().with_decoy_iterations(100).is_err());
        // Non-ASCII passwords are used as their UTF-8 bytes.
        assert!(ScramCredentials::derive(ScramHash::Sha256, "pässwörd ünicode", 4096).is_ok());
        // A fresh random salt each time.
        let a = ScramCredentials::derive(ScramHash::Sha256, "pencil", 4096).unwrap();
        let b = ScramCredentials::derive(ScramHash::Sha256, "pencil", 4096).unwrap();
        assert_ne!(a.salt, b.salt);
    }

    #[test]
    fn debug_and_display_hide_secrets() {
        let creds = rfc_credentials();
        let debug = format!("{creds:?}");
        assert!(!debug.contains(&B64.encode(&creds.stored_key)));
        assert!(!debug.contains(&format!("{:?}", creds.stored_key)));
        assert!(!debug.contains(&format!("{:?}", creds.server_key)));
        let cfg = format!("{:?}", config());
        assert!(!cfg.contains("42"), "{cfg}");
        let (server, _) = rfc_server();
        let server_debug = format!("{server:?}");
        assert!(!server_debug.contains(&format!("{:?}", creds.stored_key)));
        assert_eq!(
            ScramError::AuthenticationFailed.to_string(),
            "SCRAM authentication failed"
        );
    }

    #[test]
    fn the_public_client_completes_an_exchange_and_checks_the_server() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            let creds = ScramCredentials::derive(hash, "correct horse battery", 4096).unwrap();
            let mut client = ScramClient::new(hash, "alice", "correct horse battery").unwrap();
            let (server, first) =
                ScramServer::start_os_rng(&config(), hash, &client.client_first(), |name| {
                    (name == "alice").then(|| creds.clone())
                })
                .unwrap();
            let client_final = client.client_final(&first).unwrap();
            let (server_final, name) = server.finish(&client_final).unwrap();
            assert_eq!(name, "alice");
            client.verify_server_final(&server_final).unwrap();
            assert!(client.verify_server_final(b"v=AAAA").is_err());
            let mut wrong = ScramClient::new(hash, "alice", "wrong password").unwrap();
            let (server, first) =
                ScramServer::start_os_rng(&config(), hash, &wrong.client_first(), |_| {
                    Some(creds.clone())
                })
                .unwrap();
            let client_final = wrong.client_final(&first).unwrap();
            assert!(server.finish(&client_final).is_err());
        }
    }
}
