//! JSON Web Token verification for MQTT CONNECT passwords (RFC 7519, RFC 7515 compact form).
//!
//! A client may put a signed JWT in the CONNECT password field; [`looks_like_jwt`] tells such a
//! password apart cheaply and [`verify`] checks it against a [`JwtKeySet`] and [`JwtSettings`],
//! returning the [`JwtIdentity`] the broker authenticates the client as. Time is an argument
//! (`now_unix`, seconds); this module reads no clock and no files.
//!
//! What is refused, always:
//! - `alg: none` in any spelling, and every algorithm outside HS256/384/512, RS256/384/512,
//!   PS256/384/512, ES256, ES384 and EdDSA (Ed25519);
//! - algorithm confusion: every key is bound to one algorithm family (and EC keys to their
//!   curve's algorithm), so an HMAC token can never be checked with an RSA, EC or Ed25519
//!   public key used as a shared secret;
//! - keys named by the token itself (`jwk`, `jku`, `x5u`, `x5c` headers are ignored: only keys
//!   the operator configured are ever used) and tokens with `crit` header extensions;
//! - RSA keys under 2048 bits, HMAC secrets under 32 bytes (and HS384/HS512 tokens checked with
//!   a secret shorter than their hash, RFC 7518 §3.2), private keys given where a public key
//!   belongs;
//! - tokens over [`MAX_TOKEN_BYTES`], JSON with duplicate member names in the header or the
//!   claims, and JWE or other non-compact forms.
//!
//! Errors never carry the token, a secret or key material; names taken from a token (its `alg`
//! or `kid`) are shortened before they are put in an error.
//!
//! Signatures are checked with jsonwebtoken's RustCrypto provider, called directly rather than
//! through the process-wide provider, so the result does not depend on what another part of the
//! process installed.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Largest token accepted, in bytes (longer: [`JwtError::TooLong`]).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest clock skew setting.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Clock skew used by [`JwtSettings::default`].
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 30;
/// Most keys one [`JwtKeySet`] holds: a token without `kid` is tried against every key of its
/// algorithm's family, so the set's size bounds the work one CONNECT can cause.
pub const MAX_KEYS: usize = 64;
/// Largest JWKS document accepted by [`JwtKeySet::from_jwks_json`], in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Largest PEM input accepted by [`JwtKeySet::add_pem`], in bytes.
pub const MAX_PEM_BYTES: usize = 64 * 1024;
/// Longest key id, in bytes, for keys in a set; longer ids taken from tokens are shortened to this
/// length before they appear in an error.
pub const MAX_KID_BYTES: usize = 256;
/// Shortest HMAC secret accepted (HS256; HS384 needs 48 bytes and HS512 64).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (bounds the cost of one verification).
pub const MAX_RSA_BITS: usize = 8192;

/// Algorithm names as they appear in a JOSE header (RFC 7518 §3.1, RFC 8037 §3.1); the names are
/// case-sensitive.
const ALGORITHMS: [(&str, Algorithm); 12] = [
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Longest algorithm name from a token copied into [`JwtError::UnsupportedAlgorithm`].
const MAX_ALG_IN_ERROR: usize = 32;

/// JWK members are base64url without padding (RFC 7517 §2), but some publishers pad; the
/// padding carries no meaning for a key, so both are taken.
const JWK_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a token must satisfy besides its signature, and which claims the broker reads.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// If set, `iss` must equal it.
    pub issuer: Option<String>,
    /// If non-empty, `aud` (a string or an array of strings) must contain one of them.
    pub audiences: Vec<String>,
    /// Leeway for `exp` and `nbf`, in seconds (default 30, at most [`MAX_CLOCK_SKEW_SECS`]).
    pub clock_skew_secs: u64,
    /// The claim that becomes the MQTT username (default `sub`); it must be a non-empty string.
    pub username_claim: String,
    /// If set, the claim must be present and equal the CONNECT client identifier.
    pub client_id_claim: Option<String>,
    /// If set and present in the token, the claim is carried through as JSON.
    pub acl_claim: Option<String>,
    /// Default true: a token without `exp` is refused.
    pub require_exp: bool,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuer: None,
            audiences: Vec::new(),
            clock_skew_secs: DEFAULT_CLOCK_SKEW_SECS,
            username_claim: "sub".to_owned(),
            client_id_claim: None,
            acl_claim: None,
            require_exp: true,
        }
    }
}

impl JwtSettings {
    /// Checks the settings, reporting every problem at once in one
    /// [`JwtError::InvalidSettings`].
    pub fn validate(&self) -> Result<(), JwtError> {
        let mut problems = Vec::new();
        if self.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
            problems.push(format!(
                "clock_skew_secs is {}, at most {MAX_CLOCK_SKEW_SECS} is allowed",
                self.clock_skew_secs
            ));
        }
        if self.username_claim.is_empty() {
            problems.push("username_claim must not be empty".to_owned());
        }
        if self.client_id_claim.as_deref() == Some("") {
            problems.push("client_id_claim must not be empty (leave it unset instead)".to_owned());
        }
        if self.acl_claim.as_deref() == Some("") {
            problems.push("acl_claim must not be empty (leave it unset instead)".to_owned());
        }
        if self.issuer.as_deref() == Some("") {
            problems.push("issuer must not be empty (leave it unset to accept any)".to_owned());
        }
        if self.audiences.iter().any(String::is_empty) {
            problems.push("audiences must not contain an empty string".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(JwtError::InvalidSettings(problems.join("; ")))
        }
    }
}

/// One verification key with the algorithms it may check.
#[derive(Clone)]
struct KeyEntry {
    kid: Option<String>,
    family: AlgorithmFamily,
    /// Never empty; every member belongs to `family`.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl KeyEntry {
    fn allows(&self, algorithm: Algorithm) -> bool {
        self.algorithms.contains(&algorithm)
    }

    /// Narrows the key to the algorithm a JWK's `alg` names; it must be one the key already
    /// allows.
    fn restricted_to(mut self, algorithm: Algorithm) -> Result<Self, String> {
        if !self.allows(algorithm) {
            return Err(format!(
                "its alg {} does not fit the key type",
                algorithm_name(algorithm)
            ));
        }
        self.algorithms = vec![algorithm];
        Ok(self)
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Verification keys, each bound to its algorithm family so that one key can never verify a
/// token of another family.
///
/// A token with a `kid` header is checked only against keys with that exact id; a token without
/// one against every key that allows its algorithm. Keys added without an id therefore only
/// serve tokens without a `kid`.
#[derive(Clone, Default)]
pub struct JwtKeySet {
    keys: Vec<KeyEntry>,
}

impl fmt::Debug for JwtKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeySet")
            .field("keys", &self.keys)
            .finish()
    }
}

impl JwtKeySet {
    /// An empty set: every token is refused with [`JwtError::UnknownKey`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A JWKS document (RFC 7517). Keys of kty RSA, EC (P-256, P-384), OKP (Ed25519) with "use"
    /// absent or "sig" (and "key_ops", if present, naming "verify") are taken; a key's optional
    /// "alg" restricts it to that algorithm; kty "oct" (shared secrets) and unsupported keys
    /// (other types, curves, uses or algorithms) are skipped. Error if the JSON is invalid, if a
    /// key of a supported type is corrupt, too weak, inconsistent or carries private material, or
    /// if no usable key is left.
    pub fn from_jwks_json(text: &str) -> Result<Self, JwtError> {
        if text.len() > MAX_JWKS_BYTES {
            return Err(JwtError::InvalidKey(format!(
                "the JWKS document is larger than {MAX_JWKS_BYTES} bytes"
            )));
        }
        let document: Value = serde_json::from_str(text).map_err(|error| {
            JwtError::InvalidKey(format!(
                "the JWKS document is not valid JSON (line {}, column {})",
                error.line(),
                error.column()
            ))
        })?;
        let Some(keys) = document.get("keys").and_then(Value::as_array) else {
            return Err(JwtError::InvalidKey(
                "the JWKS document has no \"keys\" array".to_owned(),
            ));
        };
        let mut set = Self::new();
        for (index, jwk) in keys.iter().enumerate() {
            match parse_jwk(jwk) {
                Ok(Some(entry)) => set.push(entry)?,
                Ok(None) => {}
                Err(problem) => {
                    let name = match jwk.get("kid").and_then(Value::as_str) {
                        Some(kid) => format!(" (kid {:?})", shorten(kid, MAX_KID_BYTES)),
                        None => String::new(),
                    };
                    return Err(JwtError::InvalidKey(format!(
                        "JWKS key {index}{name}: {problem}"
                    )));
                }
            }
        }
        if set.is_empty() {
            return Err(JwtError::InvalidKey(
                "the JWKS document holds no usable signature key (RSA, EC P-256/P-384 or \
                 Ed25519 with use \"sig\")"
                    .to_owned(),
            ));
        }
        Ok(set)
    }

    /// A PEM public key (SPKI "PUBLIC KEY" for RSA/EC/Ed25519, or PKCS#1 "RSA PUBLIC KEY"); the
    /// type is detected. A PEM X.509 "CERTIFICATE" is also taken, as a carrier of its public key
    /// only: its validity dates, issuer and chain are not checked. Exactly one PEM block is
    /// expected; private keys are refused.
    pub fn add_pem(&mut self, pem: &[u8], kid: Option<String>) -> Result<(), JwtError> {
        let kid = check_kid(kid)?;
        self.ensure_room()?;
        if pem.len() > MAX_PEM_BYTES {
            return Err(JwtError::InvalidKey(format!(
                "the PEM input is larger than {MAX_PEM_BYTES} bytes"
            )));
        }
        let text = std::str::from_utf8(pem)
            .map_err(|_| JwtError::InvalidKey("the PEM input is not UTF-8 text".to_owned()))?;
        let label = pem_label(text)?;
        let entry = match label {
            "PUBLIC KEY" | "CERTIFICATE" => spki_entry(pem)?,
            "RSA PUBLIC KEY" => {
                let key = DecodingKey::from_rsa_pem(pem).map_err(|_| {
                    JwtError::InvalidKey("the RSA PUBLIC KEY block is corrupt".to_owned())
                })?;
                rsa_entry_from_key(&key)?
            }
            label if label.contains("PRIVATE KEY") => {
                return Err(JwtError::InvalidKey(
                    "the PEM block is a private key; give the broker the public key only"
                        .to_owned(),
                ));
            }
            other => {
                return Err(JwtError::InvalidKey(format!(
                    "PEM blocks of type {:?} are not supported (expected PUBLIC KEY, RSA PUBLIC \
                     KEY or CERTIFICATE)",
                    shorten(other, 40)
                )));
            }
        };
        self.push(KeyEntry { kid, ..entry })
    }

    /// An HMAC secret (HS256/384/512); at least 32 bytes, else [`JwtError::InvalidKey`]. The
    /// secret verifies HS256, and HS384 from 48 bytes and HS512 from 64 bytes on (RFC 7518 §3.2
    /// asks for a key at least as long as the hash). A secret that looks like a PEM key is
    /// refused: using a public key as a shared secret is exactly the algorithm-confusion attack.
    pub fn add_hmac_secret(&mut self, secret: &[u8], kid: Option<String>) -> Result<(), JwtError> {
        let kid = check_kid(kid)?;
        self.ensure_room()?;
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(JwtError::InvalidKey(format!(
                "the HMAC secret is {} bytes long, at least {MIN_HMAC_SECRET_BYTES} are required",
                secret.len()
            )));
        }
        if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
            return Err(JwtError::InvalidKey(
                "the HMAC secret looks like a PEM key; a key must never double as a shared secret"
                    .to_owned(),
            ));
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|_| JwtError::InvalidKey("the HMAC secret was refused".to_owned()))?;
        let mut algorithms = vec![Algorithm::HS256];
        if secret.len() >= 48 {
            algorithms.push(Algorithm::HS384);
        }
        if secret.len() >= 64 {
            algorithms.push(Algorithm::HS512);
        }
        self.push(KeyEntry {
            kid,
            family: AlgorithmFamily::Hmac,
            algorithms,
            key,
        })
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key has this id.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys
            .iter()
            .any(|entry| entry.kid.as_deref() == Some(kid))
    }

    fn ensure_room(&self) -> Result<(), JwtError> {
        if self.keys.len() >= MAX_KEYS {
            return Err(JwtError::InvalidKey(format!(
                "a key set holds at most {MAX_KEYS} keys"
            )));
        }
        Ok(())
    }

    fn push(&mut self, entry: KeyEntry) -> Result<(), JwtError> {
        self.ensure_room()?;
        self.keys.push(entry);
        Ok(())
    }
}

fn check_kid(kid: Option<String>) -> Result<Option<String>, JwtError> {
    match kid {
        Some(kid) if kid.is_empty() => Err(JwtError::InvalidKey(
            "a key id must not be empty (leave it unset instead)".to_owned(),
        )),
        Some(kid) if kid.len() > MAX_KID_BYTES => Err(JwtError::InvalidKey(format!(
            "a key id is longer than {MAX_KID_BYTES} bytes"
        ))),
        kid => Ok(kid),
    }
}

/// The label of the one PEM block in `text` (`-----BEGIN {label}-----`).
fn pem_label(text: &str) -> Result<&str, JwtError> {
    const BEGIN: &str = "-----BEGIN ";
    let mut blocks = text.split(BEGIN).skip(1);
    let Some(block) = blocks.next() else {
        return Err(JwtError::InvalidKey(
            "no PEM block found (expected -----BEGIN PUBLIC KEY-----)".to_owned(),
        ));
    };
    if blocks.next().is_some() {
        return Err(JwtError::InvalidKey(
            "the PEM input holds more than one block; give exactly one key or certificate"
                .to_owned(),
        ));
    }
    block
        .split_once("-----")
        .map(|(label, _)| label)
        .ok_or_else(|| JwtError::InvalidKey("the PEM BEGIN line is not terminated".to_owned()))
}

/// A key from an SPKI "PUBLIC KEY" or a certificate: the key type is detected from the key's
/// algorithm identifier.
fn spki_entry(pem: &[u8]) -> Result<KeyEntry, JwtError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return rsa_entry_from_key(&key);
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        let point = key.try_get_as_bytes().unwrap_or_default();
        return ec_entry(point).map_err(JwtError::InvalidKey);
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        let x = key.try_get_as_bytes().unwrap_or_default();
        return ed_entry(x).map_err(JwtError::InvalidKey);
    }
    Err(JwtError::InvalidKey(
        "the PEM key is corrupt or of an unsupported type (supported: RSA, EC P-256, EC P-384, \
         Ed25519)"
            .to_owned(),
    ))
}

/// An RSA key whose DecodingKey holds PKCS#1 `RSAPublicKey` DER, re-read and checked here so
/// that a corrupt or weak key is refused when it is loaded, not when a client connects.
fn rsa_entry_from_key(key: &DecodingKey) -> Result<KeyEntry, JwtError> {
    let der = key.try_get_as_bytes().unwrap_or_default();
    let (n, e) = parse_rsa_public_key_der(der).ok_or_else(|| {
        JwtError::InvalidKey("the RSA public key is not valid DER (PKCS#1)".to_owned())
    })?;
    rsa_entry(n, e).map_err(JwtError::InvalidKey)
}

/// Parses DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
/// (RFC 8017 A.1.1) into the two unsigned big-endian integers.
fn parse_rsa_public_key_der(der: &[u8]) -> Option<(&[u8], &[u8])> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    let (body, rest) = der_element(der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (n, rest) = der_element(body, INTEGER)?;
    let (e, rest) = der_element(rest, INTEGER)?;
    if !rest.is_empty() {
        return None;
    }
    Some((der_unsigned(n)?, der_unsigned(e)?))
}

/// One DER element with the given tag: its contents and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let mut length = 0usize;
        for &byte in bytes {
            length = length.checked_mul(256)?.checked_add(usize::from(byte))?;
        }
        if length < 0x80 {
            return None;
        }
        (length, rest)
    };
    rest.split_at_checked(length)
}

/// The magnitude of a DER INTEGER that must be positive.
fn der_unsigned(integer: &[u8]) -> Option<&[u8]> {
    if integer.first().is_none_or(|&byte| byte & 0x80 != 0) {
        return None;
    }
    Some(strip_leading_zeros(integer))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&byte| byte != 0)
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// An RSA key from its modulus and exponent (unsigned big-endian).
fn rsa_entry(n: &[u8], e: &[u8]) -> Result<KeyEntry, String> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let bits = match n.first() {
        Some(&top) => n
            .len()
            .saturating_mul(8)
            .saturating_sub(top.leading_zeros() as usize),
        None => 0,
    };
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key is {bits} bits, at least {MIN_RSA_BITS} are required"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!(
            "the RSA key is {bits} bits, at most {MAX_RSA_BITS} are accepted"
        ));
    }
    if n.last().is_none_or(|&low| low & 1 == 0) {
        return Err("the RSA modulus is even".to_owned());
    }
    // The bounds of the RSA implementation: 3 ..= 2^33 - 1, and odd.
    let exponent = if e.len() > 5 {
        None
    } else {
        Some(
            e.iter()
                .fold(0u64, |value, &byte| (value << 8) | u64::from(byte)),
        )
    };
    match exponent {
        Some(value) if (3..(1 << 33)).contains(&value) && value & 1 == 1 => {}
        _ => return Err("the RSA public exponent is not valid".to_owned()),
    }
    Ok(KeyEntry {
        kid: None,
        family: AlgorithmFamily::Rsa,
        algorithms: RSA_ALGORITHMS.to_vec(),
        key: DecodingKey::from_rsa_raw_components(n, e),
    })
}

/// An EC key from its SEC1 point; the curve decides the one algorithm it may verify.
fn ec_entry(point: &[u8]) -> Result<KeyEntry, String> {
    let key = DecodingKey::from_ec_der(point);
    for algorithm in [Algorithm::ES256, Algorithm::ES384] {
        if (DEFAULT_PROVIDER.verifier_factory)(&algorithm, &key).is_ok() {
            return Ok(KeyEntry {
                kid: None,
                family: AlgorithmFamily::Ec,
                algorithms: vec![algorithm],
                key,
            });
        }
    }
    Err("the EC key is corrupt or not on P-256 or P-384".to_owned())
}

/// An Ed25519 key from its 32 public bytes.
fn ed_entry(x: &[u8]) -> Result<KeyEntry, String> {
    // Checked first: the verifier reads the first 32 bytes without a length check.
    if x.len() != 32 {
        return Err(format!(
            "the Ed25519 public key is {} bytes, 32 are required",
            x.len()
        ));
    }
    let key = DecodingKey::from_ed_der(x);
    if (DEFAULT_PROVIDER.verifier_factory)(&Algorithm::EdDSA, &key).is_err() {
        return Err("the Ed25519 public key is not a valid curve point".to_owned());
    }
    Ok(KeyEntry {
        kid: None,
        family: AlgorithmFamily::Ed,
        algorithms: vec![Algorithm::EdDSA],
        key,
    })
}

/// One JWKS member: `Ok(None)` for a key that is skipped, `Err` for a corrupt supported key.
fn parse_jwk(jwk: &Value) -> Result<Option<KeyEntry>, String> {
    let Some(object) = jwk.as_object() else {
        return Err("is not a JSON object".to_owned());
    };
    let kty = optional_str(object, "kty")?.ok_or("has no \"kty\"")?;
    if let Some(usage) = optional_str(object, "use")?
        && usage != "sig"
    {
        return Ok(None);
    }
    if let Some(ops) = object.get("key_ops") {
        let Some(ops) = ops.as_array() else {
            return Err("its \"key_ops\" is not an array".to_owned());
        };
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let kid = match optional_str(object, "kid")? {
        Some(kid) => check_kid(Some(kid.to_owned()))
            .map_err(|_| format!("its kid is empty or longer than {MAX_KID_BYTES} bytes"))?,
        None => None,
    };
    let algorithm = match optional_str(object, "alg")? {
        Some(name) => match parse_algorithm_name(name) {
            Some((_, algorithm)) => Some(algorithm),
            // Encryption algorithms and signature algorithms this module does not offer.
            None => return Ok(None),
        },
        None => None,
    };
    let entry = match kty {
        "RSA" => {
            refuse_private(object, &["d", "p", "q", "dp", "dq", "qi"])?;
            let n = jwk_bytes(object, "n")?;
            let e = jwk_bytes(object, "e")?;
            rsa_entry(&n, &e)?
        }
        "EC" => {
            refuse_private(object, &["d"])?;
            let size = match optional_str(object, "crv")? {
                Some("P-256") => 32,
                Some("P-384") => 48,
                _ => return Ok(None),
            };
            let x = jwk_bytes(object, "x")?;
            let y = jwk_bytes(object, "y")?;
            if x.len() != size || y.len() != size {
                return Err(format!(
                    "its coordinates are not {size} bytes each as the curve requires"
                ));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ec_entry(&point)?
        }
        "OKP" => {
            refuse_private(object, &["d"])?;
            if optional_str(object, "crv")? != Some("Ed25519") {
                return Ok(None);
            }
            ed_entry(&jwk_bytes(object, "x")?)?
        }
        _ => return Ok(None),
    };
    let entry = match algorithm {
        Some(algorithm) => entry.restricted_to(algorithm)?,
        None => entry,
    };
    Ok(Some(KeyEntry { kid, ..entry }))
}

fn optional_str<'a>(object: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("its \"{name}\" is not a string")),
    }
}

fn jwk_bytes(object: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = optional_str(object, name)?.ok_or_else(|| format!("has no \"{name}\""))?;
    JWK_BASE64
        .decode(text)
        .map_err(|_| format!("its \"{name}\" is not valid base64url"))
}

fn refuse_private(object: &Map<String, Value>, members: &[&str]) -> Result<(), String> {
    if members.iter().any(|member| object.contains_key(*member)) {
        return Err("holds private key material; publish only public keys".to_owned());
    }
    Ok(())
}

/// Cheap syntactic test for "this password is meant as a JWT": three non-empty base64url
/// segments separated by dots, the first decoding to a JSON object with an "alg" member. Never
/// panics on any bytes.
pub fn looks_like_jwt(password: &[u8]) -> bool {
    let mut segments = password.split(|&byte| byte == b'.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    let is_base64url = |segment: &[u8]| {
        !segment.is_empty()
            && segment
                .iter()
                .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    };
    if !(is_base64url(header) && is_base64url(payload) && is_base64url(signature)) {
        return false;
    }
    if header.len() > MAX_TOKEN_BYTES {
        return false;
    }
    let Ok(decoded) = URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<Map<String, Value>>(&decoded)
        .is_ok_and(|object| object.contains_key("alg"))
}

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtIdentity {
    /// The username claim's value, the MQTT username from now on.
    pub username: String,
    /// The client id claim's value, when [`JwtSettings::client_id_claim`] is set (it equals the
    /// CONNECT client identifier).
    pub client_id: Option<String>,
    /// `exp`, unix seconds.
    pub expires_at: Option<u64>,
    /// The ACL claim, when configured and present.
    pub acl: Option<Value>,
    /// The token's algorithm, e.g. "RS256".
    pub algorithm: String,
    /// The id of the key that verified the token.
    pub kid: Option<String>,
}

/// Why a token or a key was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is longer than {} bytes", MAX_TOKEN_BYTES)]
    TooLong,
    /// The token is not a well-formed compact JWS with JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header's `alg` is `none` or not one this module verifies.
    #[error(
        "token algorithm {0:?} is refused (accepted: HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"
    )]
    UnsupportedAlgorithm(String),
    /// The header's `kid` names no key, or (without `kid`) no key of the algorithm's family.
    #[error("{}", unknown_key_message(.kid.as_deref()))]
    UnknownKey {
        /// The token's key id, shortened to [`MAX_KID_BYTES`].
        kid: Option<String>,
    },
    /// The keys the token selects may not verify its algorithm.
    #[error(
        "the token's algorithm is not one its key may verify (each key is bound to its algorithm family)"
    )]
    AlgorithmMismatch,
    /// No selected key verifies the signature.
    #[error("the token signature does not verify")]
    BadSignature,
    /// `exp` has passed, clock skew included.
    #[error("the token has expired")]
    Expired,
    /// `nbf` has not been reached, clock skew included.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// The token has no `exp` and one is required.
    #[error("the token has no exp claim and an expiry is required")]
    MissingExp,
    /// `iss` is not the configured issuer.
    #[error("the token issuer (iss) is not the configured one")]
    WrongIssuer,
    /// `aud` names none of the configured audiences.
    #[error("the token audience (aud) names none of the configured audiences")]
    WrongAudience,
    /// A required claim is absent.
    #[error("the token lacks the required claim {0:?}")]
    MissingClaim(String),
    /// The client id claim differs from the CONNECT client identifier.
    #[error("the token's client id claim does not match the CONNECT client identifier")]
    ClientIdMismatch,
    /// A key given to a [`JwtKeySet`] was refused.
    #[error("invalid verification key: {0}")]
    InvalidKey(String),
    /// [`JwtSettings::validate`] failed.
    #[error("invalid JWT settings: {0}")]
    InvalidSettings(String),
}

fn unknown_key_message(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("no verification key has the token's kid {kid:?}"),
        None => "no verification key of the token's algorithm family is configured".to_owned(),
    }
}

/// Verifies `token` at time `now_unix` (seconds). Checks, in order: length, structure, header
/// alg (refuse "none" and anything not in HS256/384/512, RS256/384/512, PS256/384/512,
/// ES256/384, EdDSA), key selection (kid if present, else every key of the alg's family is
/// tried), signature, then exp (with skew; required if require_exp), nbf (with skew), iss, aud,
/// username claim, client id claim, acl claim.
///
/// `exp` is met while `now_unix < exp + skew`, `nbf` once `now_unix + skew >= nbf`; fractional
/// NumericDates are rounded down. `aud` is only looked at when audiences are configured.
pub fn verify(
    settings: &JwtSettings,
    keys: &JwtKeySet,
    token: &str,
    client_id: &str,
    now_unix: u64,
) -> Result<JwtIdentity, JwtError> {
    settings.validate()?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong);
    }

    let mut segments = token.split('.');
    let (Some(header_text), Some(payload_text), Some(signature_text), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(malformed(
            "a JWT has exactly three dot-separated segments (JWE and other forms are not accepted)",
        ));
    };
    let header_bytes = decode_segment(header_text, "header")?;
    let payload_bytes = decode_segment(payload_text, "payload")?;
    let signature = if signature_text.is_empty() {
        Vec::new()
    } else {
        decode_segment(signature_text, "signature")?
    };
    let header = parse_object(&header_bytes, "header")?;

    let (algorithm_name, algorithm) = match header.get("alg") {
        Some(Value::String(name)) => parse_algorithm_name(name)
            .ok_or_else(|| JwtError::UnsupportedAlgorithm(shorten(name, MAX_ALG_IN_ERROR)))?,
        _ => return Err(malformed("the header has no string \"alg\" member")),
    };
    if header.contains_key("crit") {
        return Err(malformed(
            "the header names critical extensions (crit), none of which are supported",
        ));
    }
    if signature.is_empty() {
        return Err(malformed("the signature segment is empty"));
    }
    let header_kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(malformed("the header's \"kid\" is not a string")),
    };

    let signing_input_len = header_text
        .len()
        .saturating_add(1)
        .saturating_add(payload_text.len());
    let signing_input = token
        .as_bytes()
        .get(..signing_input_len)
        .unwrap_or_default();
    let key = verify_signature(keys, algorithm, header_kid, signing_input, &signature)?;

    let claims = parse_object(&payload_bytes, "payload")?;
    let skew = settings.clock_skew_secs;

    let expires_at = numeric_date(&claims, "exp")?;
    match expires_at {
        Some(exp) if now_unix >= exp.saturating_add(skew) => return Err(JwtError::Expired),
        None if settings.require_exp => return Err(JwtError::MissingExp),
        _ => {}
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now_unix.saturating_add(skew) < nbf
    {
        return Err(JwtError::NotYetValid);
    }

    if let Some(expected) = &settings.issuer {
        match claims.get("iss") {
            None => return Err(JwtError::MissingClaim("iss".to_owned())),
            Some(Value::String(issuer)) if issuer == expected => {}
            Some(Value::String(_)) => return Err(JwtError::WrongIssuer),
            Some(_) => return Err(malformed("the \"iss\" claim is not a string")),
        }
    }

    if !settings.audiences.is_empty() {
        let configured = |audience: &str| settings.audiences.iter().any(|a| a == audience);
        let matched = match claims.get("aud") {
            None => return Err(JwtError::MissingClaim("aud".to_owned())),
            Some(Value::String(audience)) => configured(audience),
            Some(Value::Array(audiences)) => {
                let mut matched = false;
                for audience in audiences {
                    let Some(audience) = audience.as_str() else {
                        return Err(malformed(
                            "the \"aud\" claim is not a string or an array of strings",
                        ));
                    };
                    matched |= configured(audience);
                }
                matched
            }
            Some(_) => {
                return Err(malformed(
                    "the \"aud\" claim is not a string or an array of strings",
                ));
            }
        };
        if !matched {
            return Err(JwtError::WrongAudience);
        }
    }

    let username = match claims.get(&settings.username_claim) {
        None => return Err(JwtError::MissingClaim(settings.username_claim.clone())),
        Some(Value::String(name)) if valid_mqtt_name(name) => name.clone(),
        Some(_) => {
            return Err(JwtError::Malformed(format!(
                "the username claim {:?} is not a non-empty string of at most 65535 bytes \
                 without U+0000",
                settings.username_claim
            )));
        }
    };

    let token_client_id = match &settings.client_id_claim {
        None => None,
        Some(claim) => match claims.get(claim) {
            None => return Err(JwtError::MissingClaim(claim.clone())),
            Some(Value::String(id)) if !id.is_empty() => {
                if id != client_id {
                    return Err(JwtError::ClientIdMismatch);
                }
                Some(id.clone())
            }
            Some(_) => {
                return Err(JwtError::Malformed(format!(
                    "the client id claim {claim:?} is not a non-empty string"
                )));
            }
        },
    };

    let acl = settings
        .acl_claim
        .as_ref()
        .and_then(|claim| claims.get(claim).cloned());

    Ok(JwtIdentity {
        username,
        client_id: token_client_id,
        expires_at,
        acl,
        algorithm: algorithm_name.to_owned(),
        kid: key.kid.clone(),
    })
}

/// Selects the candidate keys and returns the one that verifies the signature.
fn verify_signature<'k>(
    keys: &'k JwtKeySet,
    algorithm: Algorithm,
    kid: Option<&str>,
    signing_input: &[u8],
    signature: &[u8],
) -> Result<&'k KeyEntry, JwtError> {
    // A token's kid picks the keys of that kid; if the set has none, keys configured without
    // a kid (a PEM file, a shared secret) are the candidates: the operator named no kid for
    // them, and identity providers put a kid in every token.
    let kid_known = kid.is_some_and(|kid| keys.contains_kid(kid));
    let selected = || {
        keys.keys.iter().filter(move |entry| match kid {
            None => true,
            Some(_) if kid_known => entry.kid.as_deref() == kid,
            Some(_) => entry.kid.is_none(),
        })
    };
    if let Some(kid) = kid
        && selected().next().is_none()
    {
        return Err(JwtError::UnknownKey {
            kid: Some(shorten(kid, MAX_KID_BYTES)),
        });
    }
    if !selected().any(|entry| entry.allows(algorithm)) {
        let family_known = keys
            .keys
            .iter()
            .any(|entry| entry.family == algorithm.family());
        return Err(if kid.is_some() || family_known {
            JwtError::AlgorithmMismatch
        } else {
            JwtError::UnknownKey { kid: None }
        });
    }
    let signature = signature.to_vec();
    selected()
        .filter(|entry| entry.allows(algorithm))
        .find(|entry| {
            (DEFAULT_PROVIDER.verifier_factory)(&algorithm, &entry.key)
                .is_ok_and(|verifier| verifier.verify(signing_input, &signature).is_ok())
        })
        .ok_or(JwtError::BadSignature)
}

fn parse_algorithm_name(name: &str) -> Option<(&'static str, Algorithm)> {
    ALGORITHMS.iter().copied().find(|(known, _)| *known == name)
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, known)| *known == algorithm)
        .map_or("?", |(name, _)| name)
}

fn malformed(reason: &str) -> JwtError {
    JwtError::Malformed(reason.to_owned())
}

fn decode_segment(segment: &str, part: &str) -> Result<Vec<u8>, JwtError> {
    if segment.is_empty() {
        return Err(JwtError::Malformed(format!("the {part} segment is empty")));
    }
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| {
        JwtError::Malformed(format!(
            "the {part} segment is not valid base64url (unpadded, RFC 7515)"
        ))
    })
}

/// A JSON object whose member names are unique: with duplicates, two readers of one token could
/// disagree on its `alg` or its claims, so such tokens are refused.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueObjectVisitor)
    }
}

struct UniqueObjectVisitor;

impl<'de> Visitor<'de> for UniqueObjectVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
        let mut object = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            if object.contains_key(&name) {
                return Err(A::Error::custom("duplicate member name"));
            }
            let value: Value = access.next_value()?;
            object.insert(name, value);
        }
        Ok(UniqueObject(object))
    }
}

/// Parses a decoded header or payload. serde_json's messages can quote the input, so only the
/// kind of error and its position are reported.
fn parse_object(bytes: &[u8], part: &str) -> Result<Map<String, Value>, JwtError> {
    serde_json::from_slice::<UniqueObject>(bytes)
        .map(|UniqueObject(object)| object)
        .map_err(|error| {
            let reason = if error.is_data() {
                "is not a JSON object with unique member names"
            } else {
                "is not valid JSON"
            };
            JwtError::Malformed(format!("the {part} {reason} (column {})", error.column()))
        })
}

/// A NumericDate claim (RFC 7519 §2): a non-negative number of seconds, rounded down.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    if let Some(seconds) = value.as_u64() {
        return Ok(Some(seconds));
    }
    match value.as_f64() {
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            // Non-negative and finite: `as` rounds down and saturates at u64::MAX.
            Ok(Some(seconds as u64))
        }
        _ => Err(JwtError::Malformed(format!(
            "the \"{name}\" claim is not a NumericDate (a non-negative number of seconds)"
        ))),
    }
}

/// MQTT UTF-8 strings are at most 65535 bytes and never contain U+0000 ([MQTT-1.5.4-2]).
fn valid_mqtt_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= usize::from(u16::MAX) && !name.contains('\0')
}

/// `text` cut to at most `max_bytes` bytes on a character boundary.
fn shorten(text: &str, max_bytes: usize) -> String {
    let mut end = 0;
    for (index, character) in text.char_indices() {
        let next = index.saturating_add(character.len_utf8());
        if next > max_bytes {
            break;
        }
        end = next;
    }
    text.get(..end).unwrap_or_default().to_owned()
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

    use hmac::{Hmac, Mac};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use sha2::Sha256;

    use super::*;

    // Fixed test keys, generated once with openssl for these tests only.
    const RSA1_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCiIMQoLk8lSXuH\n\
No1USAY75lMiFbD0AquqS4BoXMtFE6qVjc3+X2QOgOygOpYuIM16A/So6Eh/cZvO\n\
dvfdJOSJ9ZbSyNzDjz55rZX+HD0pzrzwMEEe0lghLVIny+CUmAWd0qgrTHrjSlwJ\n\
HdhcEI/kCub74IjKrzGT3d+wOWsyHzEvaopfl8Hmcc8qvwZ4Jyw7Srm/7I+BEvc6\n\
7nVXXFKw2ZnSEpJyVRD1/Zsvkpt6FLjzuTqtKSj1jUoXoo/ymG9O6SLk5AqtG8el\n\
zayNYDPB8GIGYst2iz91cL0Ckhs5yUSDhpmFMNogZsnLOH9pao4g1XamYSFQUzFt\n\
Om+t6GMZAgMBAAECggEABNtAqPf3JrWoabzWd7B3IFb2RUp7TBni4MVldarW620r\n\
AlMWuTCMD5uoyuVqX3wbz5R8AQ3BMzEY4tLBOrp6zo+g2pRJ+aEqNMygdjXMFrsi\n\
wXqejsDsAyVnhTnoEqdpnqhDYZWnRjTxZBQE6cAUwVbaw69+hXzBOk3OgCm+JmiI\n\
w8hAZ5MBcbl+3FIg/olb6KYv5YIPYzACJjFCm5SAEgQKymbx/yA4TGEFgGIg5Zpm\n\
S6F+HinHhkUUDRqPNGhd2z+zWDaFrNRP/I66zxmXQAoYHwcfdGIwhZaa1/POaXsR\n\
wBehfvJ5mzPJr6VnubZqhLlUcDBdb02i3VQcSbVOgQKBgQDiPtZ5KoU692cLaLJS\n\
pPFsMKQInqzyZlHR1kKqJHl3wrNeEuI3LOSRSQbNyktYYgFc6HvPCmGjJ5k3ssxK\n\
jxilLJBgJkfTfCZfiymhoy8ZFN4FIy6eWkDVYwOUxi5LWJKKYkP37j1Tlmaf/VOz\n\
zQnRXsFf2nU0HZIteuyLJn8jgQKBgQC3cz3L8+XxVHjMa9Zha6fLvow2wKg6Vv+h\n\
i2m4mrkKfj9tOerhalkmYnpQew4kG+7LWzjCOGYvGHMkQHjtMNPqMtXfGjyUH6pV\n\
haiClT8X41LstSOmVjhl9eqhnlpXwZfZIPdPq1SreCH8NDd0soMJQS1h9LcD4gpt\n\
bpEJJbWrmQKBgFaFn3HRAAiP6rljPab7a1RruZ+ORyegV7P+05nLvyQ8smnMoPRm\n\
17Z0DgUPUwcm28yTIB4Ko1JI54B0gUoWNV+djk0m9pr7RJWPW8lz5aQa5dljHgXz\n\
EA5LAmiX7cZkxg3kDIg5dPyNbQvMToFZbWLDcQJeQio/ENMRynpgq4iBAoGADe/o\n\
av1No+cKAmXS9LXMGrOQTXyXi08evrQrxQWkN0LeKLs0uAlvWnYy2rhum5mvq61z\n\
g3XrdXqDDOcFCOgjwXA5RWjl308EjtjHs5wJHhR8MVWVrsZwJHbpa3vvWylvEuTp\n\
RRk8JobK9jE1YV1KjUJxYzbHTLk4l5XF2Q8PXUkCgYBn+4mDmKD27AArah/YdmU7\n\
fdr1uGE4Trd7OwaSvgtQcYJhyAA3Myhn7Ot2FuNOX8Iq5+d33k6HDfWleez0GAOJ\n\
YG9jscIR5F2ohEyISZB+HP8m6I4qpwA46EKXRGXD5Y7zZ+aOXOfKYRJJ2ZlzfViF\n\
iodEDvtDWCaVfI4wbnqlRA==\n\
-----END PRIVATE KEY-----\n\
";

    const RSA1_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAoiDEKC5PJUl7hzaNVEgG\n\
O+ZTIhWw9AKrqkuAaFzLRROqlY3N/l9kDoDsoDqWLiDNegP0qOhIf3Gbznb33STk\n\
ifWW0sjcw48+ea2V/hw9Kc688DBBHtJYIS1SJ8vglJgFndKoK0x640pcCR3YXBCP\n\
5Arm++CIyq8xk93fsDlrMh8xL2qKX5fB5nHPKr8GeCcsO0q5v+yPgRL3Ou51V1xS\n\
sNmZ0hKSclUQ9f2bL5KbehS487k6rSko9Y1KF6KP8phvTuki5OQKrRvHpc2sjWAz\n\
wfBiBmLLdos/dXC9ApIbOclEg4aZhTDaIGbJyzh/aWqOINV2pmEhUFMxbTpvrehj\n\
GQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

    const RSA1_PKCS1_PUBLIC: &str = "\
-----BEGIN RSA PUBLIC KEY-----\n\
MIIBCgKCAQEAoiDEKC5PJUl7hzaNVEgGO+ZTIhWw9AKrqkuAaFzLRROqlY3N/l9k\n\
DoDsoDqWLiDNegP0qOhIf3Gbznb33STkifWW0sjcw48+ea2V/hw9Kc688DBBHtJY\n\
IS1SJ8vglJgFndKoK0x640pcCR3YXBCP5Arm++CIyq8xk93fsDlrMh8xL2qKX5fB\n\
5nHPKr8GeCcsO0q5v+yPgRL3Ou51V1xSsNmZ0hKSclUQ9f2bL5KbehS487k6rSko\n\
9Y1KF6KP8phvTuki5OQKrRvHpc2sjWAzwfBiBmLLdos/dXC9ApIbOclEg4aZhTDa\n\
IGbJyzh/aWqOINV2pmEhUFMxbTpvrehjGQIDAQAB\n\
-----END RSA PUBLIC KEY-----\n\
";

    const RSA1_CERTIFICATE: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIC/zCCAeegAwIBAgIUWDN0XV5bM1914SWpxeN7dtmZyCkwDQYJKoZIhvcNAQEL\n\
BQAwDzENMAsGA1UEAwwEdGVzdDAeFw0yNjEyMDIwMjAzMDJaFw0zNjExMjkwMjAz\n\
MDJaMA8xDTALBgNVBAMMBHRlc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEK\n\
AoIBAQCiIMQoLk8lSXuHNo1USAY75lMiFbD0AquqS4BoXMtFE6qVjc3+X2QOgOyg\n\
OpYuIM16A/So6Eh/cZvOdvfdJOSJ9ZbSyNzDjz55rZX+HD0pzrzwMEEe0lghLVIn\n\
y+CUmAWd0qgrTHrjSlwJHdhcEI/kCub74IjKrzGT3d+wOWsyHzEvaopfl8Hmcc8q\n\
vwZ4Jyw7Srm/7I+BEvc67nVXXFKw2ZnSEpJyVRD1/Zsvkpt6FLjzuTqtKSj1jUoX\n\
oo/ymG9O6SLk5AqtG8elzayNYDPB8GIGYst2iz91cL0Ckhs5yUSDhpmFMNogZsnL\n\
OH9pao4g1XamYSFQUzFtOm+t6GMZAgMBAAGjUzBRMB0GA1UdDgQWBBT+N3Z0R+S9\n\
aXfC5UIRarnoJZzOJDAfBgNVHSMEGDAWgBT+N3Z0R+S9aXfC5UIRarnoJZzOJDAP\n\
BgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4IBAQAJkDV/MByXoW5b1fT9\n\
GrTXFtlVWxpXN3EjxF4mp6OwMPjT/syFG9/d04SvQFIoUFG0iZMAF7m/iYLrf15O\n\
7GQpKbSltFXIjJG5g9HJtHCur6B6YFJ8R/VDm06KGnSeGuhYURRqEwGWEEkYLF/l\n\
O8jJsongM5T3SEkK2UoKYlQ85SDLP7J2qvh/gD9z/gWYkDaAMxVEUCWUgyLjEslL\n\
vA3JjS2npVUwfEL6+vQ6qqmJuWweiMvEOyaHTVONwEjvxOQ3FQVckUm6L3m6Rz2a\n\
ERCti6Nk8APx73Sqn4L1VAwZtFaaV9I6V6sfEYhV/xHPTb4rM18Ng4UEoDZ/AzIT\n\
xpSp\n\
-----END CERTIFICATE-----\n\
";

    const RSA2_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDFM697s3DiW6Ic\n\
ONtE/JuT6X+JvbYfVmqixaFRfyI4G/VYT/LsxmEYkX1BHTnavZBaVi/6eC93XrLz\n\
vVStBFopH4UfXySCa+LM8lzyyTnp5pIOax52sFe6IYOS7qqixpu9kEe91liOLbrx\n\
vwXdV/2s5rQRnfISWWeGDJ8EiaP6dAbYF2oaFxms8D2dy4wSggG6/lOCcin6OD0Q\n\
ARYpq74WfiFI8eZ32gSAT+xf5rw33q1R0wKq4GxyEn6dOxFZ1D/NfnYkC6YDPem0\n\
75nC4eqLIyg1aqelYNmkbgWrlx/gY63rC4udmjXvHsljc3vee15CKIRbrW9E0pLb\n\
c0j8ijxvAgMBAAECggEACptWE/w51SMCnCv+tz4zDAiiIIGAuzzFrY2duKly6Luw\n\
PZjHQy8EZ/LjXs44n2hUzFcYa4ttWilQzMVhOZEjXFTiryZJ623sHAPpNfHW2Jrb\n\
PkVKtS2U+mD1F8EYknrGQ7Lv+Oj/iF4zUO9qXFZwQY2DH/Nz4sLGS7KAFxlkJYNh\n\
8xKU8wvzmfCR3TT239cN6qUJ+4M+UQsTXhITY8IVxadfn6gnUvqiX2MM6vZSDC4c\n\
9mhviQdlop1CJTpARXd38d+1B8Ko1SYnzvowrNFKDkKm3aIH7sauWZVwfiLZc0jt\n\
dCyUwtVEbvZQaQLGclnW01OcHxDHDEopF41vYFYjuQKBgQDiQZI8JaOlreJc8gtU\n\
8pFOeEG7g6WD2JAZhMIKVPC/7maUeDY73ck3CXm9iwgEQ0Pw/BHUaFnQglxS+XLE\n\
CEF668UWmFKGFdWIroXdhMvw1LaS3Wq9C0Rh4ZNpDByuR4sbG92enjTs5ME5wB/0\n\
Izlz7YOZA6vuNKHHqJCI8kYYewKBgQDfIFJ8fRBrXKd96xduVVL6dEUCRuYUbTrh\n\
4ZBspqb7j6S2EEub2XgxnH9ylsJSY/+HEEwKyRpscHtcxWDr80DkTZigcBNtEW4e\n\
kHi4nFrCenU3a4sF7DRaHHzGoWoPi3SpY1R+bwRQEYA/lSawGfBF5cnHouOAjMxm\n\
Rag4ZRTbnQKBgC+5pR8K0XohM55nb/x7LitfMn5bRo6JH9xCJKwJPr89imXG9amr\n\
HsZ9OTDCIu7DQZGTmi8z074nwVG/THYNR8Kl+OzLNJ0T/fbW2WXgnSQvulNAYUN/\n\
HO2Ip4+A/ovEi5MsTZMnzAIsPpXv8M2OoI/Tie6814dnkriK1fINKLwBAoGAUa+q\n\
oyrCLRwRsba0sE8Kfui8LvY323iV2wZScoSck3JmMcVLePYn27nYquHoqHM1pIPh\n\
4vz28IZJk5ArSJaYxjxmSS5e3kpIT2ZC3AtZ6uMcMLrtfbCZBfhx8eI8Sw6aGj1k\n\
PJl2Mb4GfsCjFkuYvG5A7haDRZfGaRbNXEAdX70CgYBIzfRdPBDsVbQ2ASVNfjoR\n\
CFiLPCFddiqwN6tNXnG7FT6Ijs+7SmmFWvXzPV0F36Ha6mz7jhz9XfhgiYP5mvp/\n\
lcoVvHUVKue3m4R0yY4LTkvtPOKR30CUUVfSDO6A7wk4EmBiXwMafmRGXbkulLko\n\
Dm8HK5Nt29MBV0Gn4weZkA==\n\
-----END PRIVATE KEY-----\n\
";

    const RSA2_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxTOve7Nw4luiHDjbRPyb\n\
k+l/ib22H1ZqosWhUX8iOBv1WE/y7MZhGJF9QR052r2QWlYv+ngvd16y871UrQRa\n\
KR+FH18kgmvizPJc8sk56eaSDmsedrBXuiGDku6qosabvZBHvdZYji268b8F3Vf9\n\
rOa0EZ3yEllnhgyfBImj+nQG2BdqGhcZrPA9ncuMEoIBuv5TgnIp+jg9EAEWKau+\n\
Fn4hSPHmd9oEgE/sX+a8N96tUdMCquBschJ+nTsRWdQ/zX52JAumAz3ptO+ZwuHq\n\
iyMoNWqnpWDZpG4Fq5cf4GOt6wuLnZo17x7JY3N73nteQiiEW61vRNKS23NI/Io8\n\
bwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

    const RSA1024_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDSryN1uKKNE4tITZ62T1Jjn4r4\n\
PD9I7St2n13Lqp1vYp2sqq6/2azhlSrKcaxljWVej1YyQoKsCXGb4YuifWbpMBuE\n\
v98cJL/rPvKE9lqHuitSMiw+WLrrLtxESS3U08Aw+VUgwEVFAhb12eYBJkZqMXR5\n\
4bVapd8JmZaRcH2qLQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

    const P256_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWw4/hYG3QJxHz6l3\n\
Mrb/T5LGZtvDeVdXcdOb5nAQuaahRANCAAR6jmXLefMyQ1hJEc9wTJThNEYtbRdL\n\
yFpH0RJmDc41VxfxUQMFQZt0Ep4+jFXpDfk7RUb5XeqHsH0Cz+oeLRBi\n\
-----END PRIVATE KEY-----\n\
";

    const P256_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeo5ly3nzMkNYSRHPcEyU4TRGLW0X\n\
S8haR9ESZg3ONVcX8VEDBUGbdBKePoxV6Q35O0VG+V3qh7B9As/qHi0QYg==\n\
-----END PUBLIC KEY-----\n\
";

    const P256_CERTIFICATE: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBczCCARmgAwIBAgIUK3bm+ucfbU4MIJVoj4nss8q7cm8wCgYIKoZIzj0EAwIw\n\
DzENMAsGA1UEAwwEdGVzdDAeFw0yNjEyMDIwMjAzMDJaFw0zNjExMjkwMjAzMDJa\n\
MA8xDTALBgNVBAMMBHRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR6jmXL\n\
efMyQ1hJEc9wTJThNEYtbRdLyFpH0RJmDc41VxfxUQMFQZt0Ep4+jFXpDfk7RUb5\n\
XeqHsH0Cz+oeLRBio1MwUTAdBgNVHQ4EFgQUX5yl/b+OYn0BVRZbahtWO3aFhB8w\n\
HwYDVR0jBBgwFoAUX5yl/b+OYn0BVRZbahtWO3aFhB8wDwYDVR0TAQH/BAUwAwEB\n\
/zAKBggqhkjOPQQDAgNIADBFAiEA5TuN4+byRbDSgRpmjhJCy/G6cBfAMRzySeP0\n\
UxKQi/cCIFE1TWqreRWnCuhZIDds75SLf67GRnQGkrphmHWyF39O\n\
-----END CERTIFICATE-----\n\
";

    const P384_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDAGwVD1YgxbtNhM9/Xv\n\
g0QzjckZImsQs8JgqaYulgAqgEofGHFYZKfd45p1WGcw4TGhZANiAAR7jmaPHIgh\n\
CoNHrxkNaHvQsQR9xibyk4VXch0dx1vUPHBSbHmawbt2teVsipt7V0z1eNJAICI4\n\
FW7NAGkycBAYoJagpwJIwDccxTM6O9LqQbapY67mS69bJJ9u9Rv2IBk=\n\
-----END PRIVATE KEY-----\n\
";

    const P384_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEe45mjxyIIQqDR68ZDWh70LEEfcYm8pOF\n\
V3IdHcdb1DxwUmx5msG7drXlbIqbe1dM9XjSQCAiOBVuzQBpMnAQGKCWoKcCSMA3\n\
HMUzOjvS6kG2qWOu5kuvWySfbvUb9iAZ\n\
-----END PUBLIC KEY-----\n\
";

    const ED25519_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIAW/U2Fz08dcjvj5Gvsu+jEV+Z+jb5W258+IrvQqMJYt\n\
-----END PRIVATE KEY-----\n\
";

    const ED25519_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEAOCE7BTS+iHy0WjYHvaLvvMafEf4P/2EbLHx8T0TFN+k=\n\
-----END PUBLIC KEY-----\n\
";

    const ED448_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MEMwBQYDK2VxAzoAixNF3WMT8Mhb5UkMhnAfhCvGjk3zsbJwWRXSnktsVBfKmiEu\n\
JcF4KuX5kEj1ilCW+94/vlMfQJcA\n\
-----END PUBLIC KEY-----\n\
";

    // The moduli of RSA1 and RSA2 and the public parts of P256 and ED25519, as JWK members.
    const RSA1_N: &str = "oiDEKC5PJUl7hzaNVEgGO-ZTIhWw9AKrqkuAaFzLRROqlY3N_l9kDoDsoDqWLiDNegP0qOhIf3Gbznb33STkifWW0sjcw48-ea2V_hw9Kc688DBBHtJYIS1SJ8vglJgFndKoK0x640pcCR3YXBCP5Arm--CIyq8xk93fsDlrMh8xL2qKX5fB5nHPKr8GeCcsO0q5v-yPgRL3Ou51V1xSsNmZ0hKSclUQ9f2bL5KbehS487k6rSko9Y1KF6KP8phvTuki5OQKrRvHpc2sjWAzwfBiBmLLdos_dXC9ApIbOclEg4aZhTDaIGbJyzh_aWqOINV2pmEhUFMxbTpvrehjGQ";
    const RSA2_N: &str = "xTOve7Nw4luiHDjbRPybk-l_ib22H1ZqosWhUX8iOBv1WE_y7MZhGJF9QR052r2QWlYv-ngvd16y871UrQRaKR-FH18kgmvizPJc8sk56eaSDmsedrBXuiGDku6qosabvZBHvdZYji268b8F3Vf9rOa0EZ3yEllnhgyfBImj-nQG2BdqGhcZrPA9ncuMEoIBuv5TgnIp-jg9EAEWKau-Fn4hSPHmd9oEgE_sX-a8N96tUdMCquBschJ-nTsRWdQ_zX52JAumAz3ptO-ZwuHqiyMoNWqnpWDZpG4Fq5cf4GOt6wuLnZo17x7JY3N73nteQiiEW61vRNKS23NI_Io8bw";
    const P256_X: &str = "eo5ly3nzMkNYSRHPcEyU4TRGLW0XS8haR9ESZg3ONVc";
    const P256_Y: &str = "F_FRAwVBm3QSnj6MVekN-TtFRvld6oewfQLP6h4tEGI";
    const ED25519_X: &str = "OCE7BTS-iHy0WjYHvaLvvMafEf4P_2EbLHx8T0TFN-k";

    const NOW: u64 = 1_700_000_000;
    const SECRET_32: &[u8] = b"0123456789abcdef0123456789abcdef";
    const SECRET_64: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const CLIENT: &str = "sensor-7";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn sign(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        // Whichever provider the process already has signs as well as this one.
        let _ = DEFAULT_PROVIDER.install_default();
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    /// An HS256 token over exactly these header and payload bytes.
    fn hand_hs256(secret: &[u8], header: &[u8], payload: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    /// `{"sub": "alice", "exp": NOW + 600}` with `extra` merged in (a null removes a member).
    fn claims(extra: Value) -> Value {
        let mut claims = json!({"sub": "alice", "exp": NOW + 600});
        let object = claims.as_object_mut().unwrap();
        for (name, value) in extra.as_object().unwrap() {
            if value.is_null() {
                object.remove(name);
            } else {
                object.insert(name.clone(), value.clone());
            }
        }
        claims
    }

    fn hs_keys() -> JwtKeySet {
        let mut keys = JwtKeySet::new();
        keys.add_hmac_secret(SECRET_32, Some("hs".to_owned()))
            .unwrap();
        keys
    }

    fn hs_token(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET_32).unwrap(),
            Some("hs"),
            claims,
        )
    }

    /// Verifies an HS256 token with these claims under `settings` at `NOW`.
    fn check(settings: &JwtSettings, claims: &Value) -> Result<JwtIdentity, JwtError> {
        verify(settings, &hs_keys(), &hs_token(claims), CLIENT, NOW)
    }

    fn pem_keys(pem: &str, kid: &str) -> JwtKeySet {
        let mut keys = JwtKeySet::new();
        keys.add_pem(pem.as_bytes(), Some(kid.to_owned())).unwrap();
        keys
    }

    fn rsa_jwk(kid: &str, n: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "use": "sig", "n": n, "e": "AQAB"})
    }

    fn jwks(keys: &[Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    /// A deterministic byte stream for the never-panics tests.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    #[test]
    fn hs256_and_hs512_verify() {
        let settings = JwtSettings::default();
        let identity = check(&settings, &claims(json!({}))).unwrap();
        assert_eq!(
            identity,
            JwtIdentity {
                username: "alice".to_owned(),
                client_id: None,
                expires_at: Some(NOW + 600),
                acl: None,
                algorithm: "HS256".to_owned(),
                kid: Some("hs".to_owned()),
            }
        );

        let mut keys = JwtKeySet::new();
        keys.add_hmac_secret(SECRET_64, None).unwrap();
        let token = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET_64).unwrap(),
            None,
            &claims(json!({})),
        );
        let identity = verify(&settings, &keys, &token, CLIENT, NOW).unwrap();
        assert_eq!(identity.algorithm, "HS512");
        assert_eq!(identity.kid, None);
    }

    #[test]
    fn hs512_needs_a_secret_as_long_as_its_hash() {
        let token = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET_32).unwrap(),
            Some("hs"),
            &claims(json!({})),
        );
        assert_eq!(
            verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW),
            Err(JwtError::AlgorithmMismatch)
        );
    }

    #[test]
    fn rsa_pkcs1_and_pss_verify() {
        let keys = pem_keys(RSA1_PUBLIC, "rsa");
        let signing = EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap();
        for (algorithm, name) in [(Algorithm::RS256, "RS256"), (Algorithm::PS256, "PS256")] {
            let token = sign(algorithm, &signing, Some("rsa"), &claims(json!({})));
            let identity = verify(&JwtSettings::default(), &keys, &token, CLIENT, NOW).unwrap();
            assert_eq!(identity.algorithm, name);
            assert_eq!(identity.kid.as_deref(), Some("rsa"));
            assert_eq!(identity.username, "alice");
        }
    }

    #[test]
    fn ecdsa_p256_and_p384_verify_and_stay_on_their_curve() {
        let p256 = EncodingKey::from_ec_pem(P256_PRIVATE.as_bytes()).unwrap();
        let p384 = EncodingKey::from_ec_pem(P384_PRIVATE.as_bytes()).unwrap();
        let es256 = sign(Algorithm::ES256, &p256, None, &claims(json!({})));
        let es384 = sign(Algorithm::ES384, &p384, None, &claims(json!({})));

        let keys = pem_keys(P256_PUBLIC, "p256");
        let identity = verify(&JwtSettings::default(), &keys, &es256, CLIENT, NOW).unwrap();
        assert_eq!(
            (identity.algorithm.as_str(), identity.kid.as_deref()),
            ("ES256", Some("p256"))
        );
        assert_eq!(
            verify(&JwtSettings::default(), &keys, &es384, CLIENT, NOW),
            Err(JwtError::AlgorithmMismatch)
        );

        let keys = pem_keys(P384_PUBLIC, "p384");
        let identity = verify(&JwtSettings::default(), &keys, &es384, CLIENT, NOW).unwrap();
        assert_eq!(identity.algorithm, "ES384");
        assert_eq!(
            verify(&JwtSettings::default(), &keys, &es256, CLIENT, NOW),
            Err(JwtError::AlgorithmMismatch)
        );
    }

    #[test]
    fn eddsa_verifies() {
        let keys = pem_keys(ED25519_PUBLIC, "ed");
        let signing = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
        let token = sign(Algorithm::EdDSA, &signing, None, &claims(json!({})));
        let identity = verify(&JwtSettings::default(), &keys, &token, CLIENT, NOW).unwrap();
        assert_eq!(identity.algorithm, "EdDSA");
        assert_eq!(identity.kid.as_deref(), Some("ed"));
    }

    #[test]
    fn a_changed_payload_or_another_key_is_a_bad_signature() {
        let token = hs_token(&claims(json!({})));
        let forged = hs_token(&claims(json!({"sub": "root"})));
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = forged.split('.').nth(1).unwrap();
        let tampered = parts.join(".");
        assert_eq!(
            verify(&JwtSettings::default(), &hs_keys(), &tampered, CLIENT, NOW),
            Err(JwtError::BadSignature)
        );

        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!!").unwrap(),
            Some("hs"),
            &claims(json!({})),
        );
        assert_eq!(
            verify(&JwtSettings::default(), &hs_keys(), &other, CLIENT, NOW),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn expiry_honours_the_clock_skew() {
        let settings = JwtSettings::default();
        assert_eq!(
            check(&settings, &claims(json!({"exp": NOW - 100}))),
            Err(JwtError::Expired)
        );
        let identity = check(&settings, &claims(json!({"exp": NOW - 10}))).unwrap();
        assert_eq!(identity.expires_at, Some(NOW - 10));

        let strict = JwtSettings {
            clock_skew_secs: 0,
            ..JwtSettings::default()
        };
        assert_eq!(
            check(&strict, &claims(json!({"exp": NOW}))),
            Err(JwtError::Expired)
        );
        assert!(check(&strict, &claims(json!({"exp": NOW + 1}))).is_ok());
        // Fractional NumericDates round down.
        assert!(check(&strict, &claims(json!({"exp": NOW as f64 + 1.5}))).is_ok());
        assert_eq!(
            check(&strict, &claims(json!({"exp": NOW as f64 + 0.5}))),
            Err(JwtError::Expired)
        );
    }

    #[test]
    fn not_before_in_the_future_is_refused() {
        let settings = JwtSettings::default();
        assert_eq!(
            check(&settings, &claims(json!({"nbf": NOW + 100}))),
            Err(JwtError::NotYetValid)
        );
        assert!(check(&settings, &claims(json!({"nbf": NOW + 10}))).is_ok());
        assert!(check(&settings, &claims(json!({"nbf": NOW - 10}))).is_ok());
    }

    #[test]
    fn missing_exp_is_refused_unless_allowed() {
        let no_exp = claims(json!({"exp": null}));
        assert_eq!(
            check(&JwtSettings::default(), &no_exp),
            Err(JwtError::MissingExp)
        );
        let lenient = JwtSettings {
            require_exp: false,
            ..JwtSettings::default()
        };
        assert_eq!(check(&lenient, &no_exp).unwrap().expires_at, None);
    }

    #[test]
    fn time_claims_of_the_wrong_type_are_malformed() {
        let settings = JwtSettings::default();
        for bad in [json!("soon"), json!(-5), json!(true), json!([1])] {
            assert!(matches!(
                check(&settings, &claims(json!({"exp": bad.clone()}))),
                Err(JwtError::Malformed(_))
            ));
            assert!(matches!(
                check(&settings, &claims(json!({"nbf": bad}))),
                Err(JwtError::Malformed(_))
            ));
        }
    }

    #[test]
    fn issuer_must_match_when_configured() {
        let settings = JwtSettings {
            issuer: Some("https://idp.example".to_owned()),
            ..JwtSettings::default()
        };
        assert!(check(&settings, &claims(json!({"iss": "https://idp.example"}))).is_ok());
        assert_eq!(
            check(&settings, &claims(json!({"iss": "https://evil.example"}))),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            check(&settings, &claims(json!({}))),
            Err(JwtError::MissingClaim("iss".to_owned()))
        );
        // Not configured: any issuer is fine.
        assert!(check(&JwtSettings::default(), &claims(json!({"iss": "anyone"}))).is_ok());
    }

    #[test]
    fn audience_string_or_array_must_name_a_configured_one() {
        let settings = JwtSettings {
            audiences: vec!["broker".to_owned(), "mqtt".to_owned()],
            ..JwtSettings::default()
        };
        assert!(check(&settings, &claims(json!({"aud": "mqtt"}))).is_ok());
        assert!(check(&settings, &claims(json!({"aud": ["web", "broker"]}))).is_ok());
        assert_eq!(
            check(&settings, &claims(json!({"aud": "web"}))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            check(&settings, &claims(json!({"aud": ["web", "api"]}))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            check(&settings, &claims(json!({"aud": []}))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            check(&settings, &claims(json!({}))),
            Err(JwtError::MissingClaim("aud".to_owned()))
        );
        assert!(matches!(
            check(&settings, &claims(json!({"aud": ["broker", 7]}))),
            Err(JwtError::Malformed(_))
        ));
        // Not configured: aud is not looked at.
        assert!(check(&JwtSettings::default(), &claims(json!({"aud": "web"}))).is_ok());
    }

    #[test]
    fn username_claim_must_be_a_non_empty_string() {
        let settings = JwtSettings::default();
        assert_eq!(
            check(&settings, &claims(json!({"sub": null}))),
            Err(JwtError::MissingClaim("sub".to_owned()))
        );
        for bad in [
            json!(""),
            json!(42),
            json!({"name": "alice"}),
            json!("a\u{0}b"),
        ] {
            assert!(matches!(
                check(&settings, &claims(json!({"sub": bad}))),
                Err(JwtError::Malformed(_))
            ));
        }
        let custom = JwtSettings {
            username_claim: "preferred_username".to_owned(),
            ..JwtSettings::default()
        };
        let identity = check(&custom, &claims(json!({"preferred_username": "bob"}))).unwrap();
        assert_eq!(identity.username, "bob");
        assert_eq!(
            check(&custom, &claims(json!({}))),
            Err(JwtError::MissingClaim("preferred_username".to_owned()))
        );
    }

    #[test]
    fn client_id_claim_must_match_the_connect_client_id() {
        let settings = JwtSettings {
            client_id_claim: Some("cid".to_owned()),
            ..JwtSettings::default()
        };
        let identity = check(&settings, &claims(json!({"cid": CLIENT}))).unwrap();
        assert_eq!(identity.client_id.as_deref(), Some(CLIENT));
        assert_eq!(
            check(&settings, &claims(json!({"cid": "sensor-8"}))),
            Err(JwtError::ClientIdMismatch)
        );
        assert_eq!(
            check(&settings, &claims(json!({}))),
            Err(JwtError::MissingClaim("cid".to_owned()))
        );
        assert!(matches!(
            check(&settings, &claims(json!({"cid": 7}))),
            Err(JwtError::Malformed(_))
        ));
        // Without the setting, no client id is read or reported.
        let identity = check(&JwtSettings::default(), &claims(json!({"cid": "x"}))).unwrap();
        assert_eq!(identity.client_id, None);
    }

    #[test]
    fn acl_claim_is_carried_through() {
        let acl = json!({"publish": ["sensors/7/#"], "subscribe": ["cmd/7"]});
        let settings = JwtSettings {
            acl_claim: Some("acl".to_owned()),
            ..JwtSettings::default()
        };
        let identity = check(&settings, &claims(json!({"acl": acl.clone()}))).unwrap();
        assert_eq!(identity.acl, Some(acl.clone()));
        assert_eq!(check(&settings, &claims(json!({}))).unwrap().acl, None);
        let identity = check(&JwtSettings::default(), &claims(json!({"acl": acl}))).unwrap();
        assert_eq!(identity.acl, None);
    }

    #[test]
    fn unknown_kid_and_missing_family_are_unknown_keys() {
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET_32).unwrap(),
            Some("nope"),
            &claims(json!({})),
        );
        assert_eq!(
            verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW),
            Err(JwtError::UnknownKey {
                kid: Some("nope".to_owned())
            })
        );
        assert_eq!(
            verify(
                &JwtSettings::default(),
                &JwtKeySet::new(),
                &token,
                CLIENT,
                NOW
            ),
            Err(JwtError::UnknownKey {
                kid: Some("nope".to_owned())
            })
        );
        let signing = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
        let eddsa = sign(Algorithm::EdDSA, &signing, None, &claims(json!({})));
        assert_eq!(
            verify(&JwtSettings::default(), &hs_keys(), &eddsa, CLIENT, NOW),
            Err(JwtError::UnknownKey { kid: None })
        );
        // A huge kid is shortened before it goes into the error.
        let long_kid = "k".repeat(5000);
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET_32).unwrap(),
            Some(&long_kid),
            &claims(json!({})),
        );
        match verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW) {
            Err(JwtError::UnknownKey { kid: Some(kid) }) => assert_eq!(kid.len(), MAX_KID_BYTES),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn alg_none_in_any_case_is_refused() {
        let payload = claims(json!({})).to_string();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = json!({"alg": alg, "typ": "JWT"}).to_string();
            let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
            for token in [format!("{input}."), format!("{input}.{}", b64(b"sig"))] {
                assert_eq!(
                    verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW),
                    Err(JwtError::UnsupportedAlgorithm(alg.to_owned())),
                    "{alg}"
                );
            }
        }
        for alg in ["hs256", "ES512", "RSA-OAEP", "Ed25519", ""] {
            let token = hand_hs256(
                SECRET_32,
                json!({"alg": alg}).to_string().as_bytes(),
                payload.as_bytes(),
            );
            assert_eq!(
                verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW),
                Err(JwtError::UnsupportedAlgorithm(alg.to_owned()))
            );
        }
        let huge = "X".repeat(1000);
        let token = hand_hs256(
            SECRET_32,
            json!({"alg": huge}).to_string().as_bytes(),
            payload.as_bytes(),
        );
        match verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW) {
            Err(JwtError::UnsupportedAlgorithm(alg)) => assert_eq!(alg.len(), MAX_ALG_IN_ERROR),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn hmac_keyed_with_the_rsa_public_key_is_refused() {
        // The classic confusion attack: the attacker knows the public key and uses its PEM bytes
        // as an HMAC secret.
        let payload = claims(json!({"sub": "root"})).to_string();
        let pem = RSA1_PUBLIC.as_bytes();
        let with_kid = hand_hs256(pem, br#"{"alg":"HS256","kid":"rsa"}"#, payload.as_bytes());
        let without_kid = hand_hs256(pem, br#"{"alg":"HS256"}"#, payload.as_bytes());
        let settings = JwtSettings::default();

        let rsa_only = pem_keys(RSA1_PUBLIC, "rsa");
        assert_eq!(
            verify(&settings, &rsa_only, &with_kid, CLIENT, NOW),
            Err(JwtError::AlgorithmMismatch)
        );
        assert_eq!(
            verify(&settings, &rsa_only, &without_kid, CLIENT, NOW),
            Err(JwtError::UnknownKey { kid: None })
        );

        // With an HMAC secret beside the RSA key, the forged MAC still fails.
        let mut mixed = rsa_only.clone();
        mixed.add_hmac_secret(SECRET_32, None).unwrap();
        assert_eq!(
            verify(&settings, &mixed, &without_kid, CLIENT, NOW),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            verify(&settings, &mixed, &with_kid, CLIENT, NOW),
            Err(JwtError::AlgorithmMismatch)
        );

        // And the public key cannot be configured as a secret in the first place.
        let mut keys = JwtKeySet::new();
        assert!(matches!(
            keys.add_hmac_secret(pem, None),
            Err(JwtError::InvalidKey(_))
        ));
        assert!(keys.is_empty());
    }

    #[test]
    fn jwks_rotation_selects_by_kid() {
        let old_signing = EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap();
        let new_signing = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
        let old_token = sign(
            Algorithm::RS256,
            &old_signing,
            Some("old"),
            &claims(json!({})),
        );
        let new_token = sign(
            Algorithm::RS256,
            &new_signing,
            Some("new"),
            &claims(json!({})),
        );
        let mislabelled = sign(
            Algorithm::RS256,
            &old_signing,
            Some("new"),
            &claims(json!({})),
        );
        let settings = JwtSettings::default();

        let both =
            JwtKeySet::from_jwks_json(&jwks(&[rsa_jwk("old", RSA1_N), rsa_jwk("new", RSA2_N)]))
                .unwrap();
        assert_eq!(both.len(), 2);
        assert!(both.contains_kid("old") && both.contains_kid("new"));
        assert_eq!(
            verify(&settings, &both, &old_token, CLIENT, NOW)
                .unwrap()
                .kid
                .as_deref(),
            Some("old")
        );
        assert_eq!(
            verify(&settings, &both, &new_token, CLIENT, NOW)
                .unwrap()
                .kid
                .as_deref(),
            Some("new")
        );
        assert_eq!(
            verify(&settings, &both, &mislabelled, CLIENT, NOW),
            Err(JwtError::BadSignature)
        );

        let rotated = JwtKeySet::from_jwks_json(&jwks(&[rsa_jwk("new", RSA2_N)])).unwrap();
        assert_eq!(
            verify(&settings, &rotated, &new_token, CLIENT, NOW)
                .unwrap()
                .kid
                .as_deref(),
            Some("new")
        );
        assert_eq!(
            verify(&settings, &rotated, &old_token, CLIENT, NOW),
            Err(JwtError::UnknownKey {
                kid: Some("old".to_owned())
            })
        );
    }

    #[test]
    fn jwks_skips_encryption_secret_and_unsupported_keys() {
        let document = jwks(&[
            json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA1_N, "e": "AQAB"}),
            json!({"kty": "RSA", "kid": "wrap", "key_ops": ["wrapKey"], "n": RSA1_N, "e": "AQAB"}),
            json!({"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": RSA1_N, "e": "AQAB"}),
            json!({"kty": "oct", "kid": "shared", "k": b64(SECRET_32)}),
            json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}),
            json!({"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": ED25519_X}),
            json!({"kty": "PQ", "kid": "future"}),
            rsa_jwk("sig", RSA2_N),
        ]);
        let keys = JwtKeySet::from_jwks_json(&document).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys.contains_kid("sig"));
        for skipped in ["enc", "wrap", "oaep", "shared", "p521", "x25519", "future"] {
            assert!(!keys.contains_kid(skipped), "{skipped}");
        }

        let only_enc =
            jwks(&[json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA1_N, "e": "AQAB"})]);
        assert!(matches!(
            JwtKeySet::from_jwks_json(&only_enc),
            Err(JwtError::InvalidKey(_))
        ));
        assert!(matches!(
            JwtKeySet::from_jwks_json(r#"{"keys": []}"#),
            Err(JwtError::InvalidKey(_))
        ));
    }

    #[test]
    fn jwks_ec_and_okp_keys_verify() {
        let document = jwks(&[
            json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": P256_X, "y": P256_Y}),
            json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": ED25519_X, "alg": "EdDSA"}),
        ]);
        let keys = JwtKeySet::from_jwks_json(&document).unwrap();
        let es256 = sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(P256_PRIVATE.as_bytes()).unwrap(),
            Some("ec"),
            &claims(json!({})),
        );
        let eddsa = sign(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
            Some("ed"),
            &claims(json!({})),
        );
        assert_eq!(
            verify(&JwtSettings::default(), &keys, &es256, CLIENT, NOW)
                .unwrap()
                .algorithm,
            "ES256"
        );
        assert_eq!(
            verify(&JwtSettings::default(), &keys, &eddsa, CLIENT, NOW)
                .unwrap()
                .algorithm,
            "EdDSA"
        );
    }

    #[test]
    fn jwks_alg_restricts_a_key() {
        let mut restricted = rsa_jwk("rsa", RSA1_N);
        restricted["alg"] = json!("RS256");
        let keys = JwtKeySet::from_jwks_json(&jwks(&[restricted])).unwrap();
        let signing = EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap();
        let ps256 = sign(Algorithm::PS256, &signing, Some("rsa"), &claims(json!({})));
        assert_eq!(
            verify(&JwtSettings::default(), &keys, &ps256, CLIENT, NOW),
            Err(JwtError::AlgorithmMismatch)
        );
        let ps256_no_kid = sign(Algorithm::PS256, &signing, None, &claims(json!({})));
        assert_eq!(
            verify(&JwtSettings::default(), &keys, &ps256_no_kid, CLIENT, NOW),
            Err(JwtError::AlgorithmMismatch)
        );
    }

    #[test]
    fn jwks_errors_are_clear() {
        let refused = |document: &str| match JwtKeySet::from_jwks_json(document) {
            Err(JwtError::InvalidKey(reason)) => reason,
            other => panic!("unexpected {other:?}"),
        };
        assert!(refused("{not json").contains("not valid JSON"));
        assert!(refused(r#"{"kids": []}"#).contains("\"keys\""));
        assert!(refused(r#"{"keys": {}}"#).contains("\"keys\""));
        let mut wrong_alg = rsa_jwk("rsa", RSA1_N);
        wrong_alg["alg"] = json!("ES256");
        assert!(refused(&jwks(&[wrong_alg])).contains("does not fit"));
        let mut private = rsa_jwk("rsa", RSA1_N);
        private["d"] = json!("AQAB");
        assert!(refused(&jwks(&[private])).contains("private"));
        assert!(refused(&jwks(&[rsa_jwk("rsa", "!!!")])).contains("base64url"));
        assert!(refused(&jwks(&[rsa_jwk("rsa", "AQAB")])).contains("bits"));
        assert!(refused(&jwks(&[json!({"kty": "RSA", "n": RSA1_N})])).contains("\"e\""));
        assert!(refused(&jwks(&[json!("RSA")])).contains("not a JSON object"));
        let short = json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"});
        assert!(refused(&jwks(&[short])).contains("32"));
        let off_curve = json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_X});
        assert!(refused(&jwks(&[off_curve])).contains("EC key"));
        let error = JwtKeySet::from_jwks_json(&"x".repeat(MAX_JWKS_BYTES + 1)).unwrap_err();
        assert!(error.to_string().contains("larger"));
    }

    #[test]
    fn pem_forms_are_detected() {
        let signing = EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap();
        let token = sign(Algorithm::RS256, &signing, None, &claims(json!({})));
        for pem in [RSA1_PUBLIC, RSA1_PKCS1_PUBLIC, RSA1_CERTIFICATE] {
            let mut keys = JwtKeySet::new();
            keys.add_pem(pem.as_bytes(), None).unwrap();
            assert!(verify(&JwtSettings::default(), &keys, &token, CLIENT, NOW).is_ok());
        }
        let es256 = sign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(P256_PRIVATE.as_bytes()).unwrap(),
            None,
            &claims(json!({})),
        );
        let keys = pem_keys(P256_CERTIFICATE, "cert");
        assert!(verify(&JwtSettings::default(), &keys, &es256, CLIENT, NOW).is_ok());
        // A certificate's key is bound to its family like any other.
        assert_eq!(
            verify(&JwtSettings::default(), &keys, &token, CLIENT, NOW),
            Err(JwtError::UnknownKey { kid: None })
        );
    }

    #[test]
    fn pem_errors_are_clear() {
        let refused = |pem: &str| {
            let mut keys = JwtKeySet::new();
            match keys.add_pem(pem.as_bytes(), None) {
                Err(JwtError::InvalidKey(reason)) => {
                    assert!(keys.is_empty());
                    reason
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(refused(RSA1_PRIVATE).contains("private key"));
        assert!(refused(P256_PRIVATE).contains("private key"));
        assert!(
            refused(&RSA1_PUBLIC.replace("PUBLIC KEY", "RSA PRIVATE KEY")).contains("private key")
        );
        assert!(refused(RSA1024_PUBLIC).contains("1024 bits"));
        assert!(refused(ED448_PUBLIC).contains("unsupported"));
        assert!(refused("hello").contains("no PEM block"));
        assert!(refused(&format!("{RSA1_PUBLIC}{RSA2_PUBLIC}")).contains("more than one"));
        assert!(
            refused(&RSA1_PUBLIC.replace("PUBLIC KEY", "OPENSSH KEY")).contains("not supported")
        );
        assert!(
            refused("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .contains("corrupt")
        );
        assert!(refused(&RSA1_PUBLIC.replace("MIIB", "MIIC")).contains("corrupt"));

        let mut keys = JwtKeySet::new();
        assert!(
            keys.add_pem(RSA1_PUBLIC.as_bytes(), Some(String::new()))
                .is_err()
        );
        assert!(
            keys.add_pem(RSA1_PUBLIC.as_bytes(), Some("k".repeat(MAX_KID_BYTES + 1)))
                .is_err()
        );
        assert!(keys.add_pem(&[0xff, 0xfe, 0x00], None).is_err());
        assert!(keys.is_empty());
    }

    #[test]
    fn hmac_secrets_are_checked() {
        let mut keys = JwtKeySet::new();
        assert!(matches!(
            keys.add_hmac_secret(&SECRET_32[..31], None),
            Err(JwtError::InvalidKey(_))
        ));
        assert!(matches!(
            keys.add_hmac_secret(b"", None),
            Err(JwtError::InvalidKey(_))
        ));
        keys.add_hmac_secret(SECRET_32, None).unwrap();
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn key_set_size_is_bounded() {
        let mut keys = JwtKeySet::new();
        for index in 0..MAX_KEYS {
            keys.add_hmac_secret(SECRET_32, Some(format!("k{index}")))
                .unwrap();
        }
        assert!(matches!(
            keys.add_hmac_secret(SECRET_32, None),
            Err(JwtError::InvalidKey(_))
        ));
        assert!(matches!(
            keys.add_pem(RSA1_PUBLIC.as_bytes(), None),
            Err(JwtError::InvalidKey(_))
        ));
        assert_eq!(keys.len(), MAX_KEYS);

        let many: Vec<Value> = (0..=MAX_KEYS)
            .map(|index| rsa_jwk(&format!("k{index}"), RSA1_N))
            .collect();
        assert!(matches!(
            JwtKeySet::from_jwks_json(&jwks(&many)),
            Err(JwtError::InvalidKey(_))
        ));
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let secret = b"correct horse battery staple, and then some more";
        let mut keys = JwtKeySet::new();
        keys.add_hmac_secret(secret, Some("hs".to_owned())).unwrap();
        keys.add_pem(RSA1_PUBLIC.as_bytes(), Some("rsa".to_owned()))
            .unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("hs") && shown.contains("rsa") && shown.contains("Hmac"));
        assert!(!shown.contains("horse"));
        assert!(!shown.contains(&format!("{:?}", &secret[..8])));
    }

    #[test]
    fn malformed_tokens_give_errors() {
        let settings = JwtSettings::default();
        let keys = hs_keys();
        let good = hs_token(&claims(json!({})));
        let payload = claims(json!({})).to_string();
        let header = br#"{"alg":"HS256","kid":"hs"}"#;
        let cases: Vec<String> = vec![
            String::new(),
            "hunter2".to_owned(),
            "a.b".to_owned(),
            format!("{good}.extra"),
            "..".to_owned(),
            format!(".{}", good.split_once('.').unwrap().1),
            "!!!.eyJ9.c2ln".to_owned(),
            format!("{}=", good),
            format!("{}.{}.c2ln", b64(b"not json"), b64(payload.as_bytes())),
            format!("{}.{}.c2ln", b64(b"[1,2]"), b64(payload.as_bytes())),
            format!("{}.{}.c2ln", b64(br#"{"alg":7}"#), b64(payload.as_bytes())),
            format!(
                "{}.{}.c2ln",
                b64(br#"{"typ":"JWT"}"#),
                b64(payload.as_bytes())
            ),
            hand_hs256(
                SECRET_32,
                br#"{"alg":"HS256","alg":"none"}"#,
                payload.as_bytes(),
            ),
            hand_hs256(
                SECRET_32,
                br#"{"alg":"HS256","crit":["exp"]}"#,
                payload.as_bytes(),
            ),
            hand_hs256(SECRET_32, br#"{"alg":"HS256","kid":5}"#, payload.as_bytes()),
            format!("{}.", good.rsplit_once('.').unwrap().0),
            // Correctly signed, but the payload is not a unique-member JSON object.
            hand_hs256(SECRET_32, header, b"{\"sub\":"),
            hand_hs256(SECRET_32, header, b"\"alice\""),
            hand_hs256(
                SECRET_32,
                header,
                br#"{"sub":"alice","sub":"root","exp":1800000000}"#,
            ),
            hand_hs256(SECRET_32, header, &[0xff, 0xfe]),
        ];
        for token in &cases {
            match verify(&settings, &keys, token, CLIENT, NOW) {
                Err(JwtError::Malformed(reason)) => {
                    assert!(!reason.contains("alice"), "{reason}");
                }
                other => panic!("{token:?} gave {other:?}"),
            }
        }
        let huge = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            verify(&settings, &keys, &huge, CLIENT, NOW),
            Err(JwtError::TooLong)
        );
    }

    #[test]
    fn noise_never_panics() {
        let settings = JwtSettings::default();
        let keys = hs_keys();
        let good = hs_token(&claims(json!({})));
        for seed in 0..2000u64 {
            let bytes = noise(seed, (seed % 200) as usize);
            let _ = looks_like_jwt(&bytes);
            let text = String::from_utf8_lossy(&bytes);
            assert!(verify(&settings, &keys, &text, CLIENT, NOW).is_err());
            // Damage one character of a good token.
            let mut damaged = good.clone().into_bytes();
            let at = (seed as usize * 7) % damaged.len();
            damaged[at] = b"A.-_=x/+"[(seed % 8) as usize];
            if damaged != good.as_bytes() {
                let damaged = String::from_utf8(damaged).unwrap();
                assert!(
                    verify(&settings, &keys, &damaged, CLIENT, NOW).is_err(),
                    "{damaged}"
                );
            }
        }
    }

    #[test]
    fn looks_like_jwt_tells_tokens_from_passwords() {
        assert!(looks_like_jwt(hs_token(&claims(json!({}))).as_bytes()));
        let eddsa = sign(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
            None,
            &claims(json!({})),
        );
        assert!(looks_like_jwt(eddsa.as_bytes()));
        for password in [
            &b"correct horse battery staple"[..],
            b"",
            b"a.b.c",
            b"..",
            b"my.dotted.password",
            b"eyJhbGciOiJIUzI1NiJ9.e30",
            &[0xff, 0x00, 0x2e, 0x2e, 0x80],
        ] {
            assert!(!looks_like_jwt(password), "{password:?}");
        }
        // Base64url JSON, but no "alg".
        let no_alg = format!("{}.e30.c2ln", b64(br#"{"typ":"JWT"}"#));
        assert!(!looks_like_jwt(no_alg.as_bytes()));
        let with_alg = format!("{}.e30.c2ln", b64(br#"{"alg":"none"}"#));
        assert!(looks_like_jwt(with_alg.as_bytes()));
        let random_hits = (0..2000u64)
            .filter(|&seed| looks_like_jwt(&noise(seed, 64)))
            .count();
        assert_eq!(random_hits, 0);
    }

    #[test]
    fn settings_are_validated() {
        assert!(JwtSettings::default().validate().is_ok());
        let bad = JwtSettings {
            clock_skew_secs: MAX_CLOCK_SKEW_SECS + 1,
            username_claim: String::new(),
            client_id_claim: Some(String::new()),
            acl_claim: Some(String::new()),
            issuer: Some(String::new()),
            audiences: vec![String::new()],
            require_exp: true,
        };
        match bad.validate() {
            Err(JwtError::InvalidSettings(reason)) => {
                for field in [
                    "clock_skew_secs",
                    "username_claim",
                    "client_id_claim",
                    "acl_claim",
                    "issuer",
                    "audiences",
                ] {
                    assert!(reason.contains(field), "{field} missing from {reason}");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
        let skewed = JwtSettings {
            clock_skew_secs: MAX_CLOCK_SKEW_SECS + 1,
            ..JwtSettings::default()
        };
        assert!(matches!(
            check(&skewed, &claims(json!({}))),
            Err(JwtError::InvalidSettings(_))
        ));
        let edge = JwtSettings {
            clock_skew_secs: MAX_CLOCK_SKEW_SECS,
            ..JwtSettings::default()
        };
        assert!(edge.validate().is_ok());
    }

    #[test]
    fn error_messages_do_not_echo_the_token() {
        let token = hs_token(&claims(json!({"exp": NOW - 1000})));
        let error = verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW).unwrap_err();
        assert_eq!(error, JwtError::Expired);
        let message = error.to_string();
        assert!(!message.contains(&token) && !message.is_empty());
        assert!(JwtError::TooLong.to_string().contains("16384"));
        assert!(
            JwtError::UnknownKey {
                kid: Some("k1".to_owned())
            }
            .to_string()
            .contains("\"k1\"")
        );
    }
}
