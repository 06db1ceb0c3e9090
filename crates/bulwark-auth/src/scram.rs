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
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).map_err(|_| ScramError::Internal)?;
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
mod tests;
