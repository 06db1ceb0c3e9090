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
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};

mod keys;

pub use keys::JwtKeySet;

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

/// Longest algorithm name from a token copied into [`JwtError::UnsupportedAlgorithm`].
const MAX_ALG_IN_ERROR: usize = 32;

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
    let key = keys.verify_signature(algorithm, header_kid, signing_input, &signature)?;

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
mod tests;
