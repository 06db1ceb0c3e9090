//! The verification keys of [`JwtKeySet`]: PEM public keys and certificates, JWKS documents and
//! HMAC secrets, each checked when it is loaded and bound to its algorithm family.
//!
//! PEM blocks are decoded by jsonwebtoken, PKCS#1 `RSAPublicKey` DER by the `pkcs1` crate, RSA
//! keys are validated by the `rsa` crate and JWK key members are read as jsonwebtoken's typed
//! [`AlgorithmParameters`]; what is refused, and why, is the broker's policy and lives here.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, OtherKeyParameters};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use rsa::pkcs1::RsaPublicKeyRef;
use rsa::pkcs1::der::Decode as _;
use rsa::{BoxedUint, PublicKey as RsaPublicKey};
use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::{
    JwtError, MAX_JWKS_BYTES, MAX_KEYS, MAX_KID_BYTES, MAX_PEM_BYTES, MAX_RSA_BITS,
    MIN_HMAC_SECRET_BYTES, MIN_RSA_BITS, algorithm_name, parse_algorithm_name, shorten,
};

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// JWK members are base64url without padding (RFC 7517 §2), but some publishers pad; the
/// padding carries no meaning for a key, so both are taken.
const JWK_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One verification key with the algorithms it may check.
#[derive(Clone)]
pub(super) struct KeyEntry {
    /// The key id, if the key has one.
    pub(super) kid: Option<String>,
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

    /// Selects the candidate keys and returns the one that verifies the signature.
    pub(super) fn verify_signature(
        &self,
        algorithm: Algorithm,
        kid: Option<&str>,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<&KeyEntry, JwtError> {
        // A token's kid picks the keys of that kid; if the set has none, keys configured without
        // a kid (a PEM file, a shared secret) are the candidates: the operator named no kid for
        // them, and identity providers put a kid in every token.
        let kid_known = kid.is_some_and(|kid| self.contains_kid(kid));
        let selected = || {
            self.keys.iter().filter(move |entry| match kid {
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
            let family_known = self
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

/// An RSA key whose DecodingKey holds PKCS#1 `RSAPublicKey` DER (RFC 8017 A.1.1), re-read with
/// the `pkcs1` crate and checked here so that a corrupt or weak key is refused when it is
/// loaded, not when a client connects.
fn rsa_entry_from_key(key: &DecodingKey) -> Result<KeyEntry, JwtError> {
    let der = key.try_get_as_bytes().unwrap_or_default();
    let public = RsaPublicKeyRef::from_der(der).map_err(|_| {
        JwtError::InvalidKey("the RSA public key is not valid DER (PKCS#1)".to_owned())
    })?;
    rsa_entry(public.modulus.as_bytes(), public.public_exponent.as_bytes())
        .map_err(JwtError::InvalidKey)
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&byte| byte != 0)
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// An RSA key from its modulus and exponent (unsigned big-endian). The size bounds are the
/// broker's policy and are reported in bits; the structural checks (odd modulus larger than the
/// exponent, odd exponent in 3 ..= 2^33 - 1) are the `rsa` crate's.
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
    RsaPublicKey::new_with_size_limits(
        BoxedUint::from_be_slice_vartime(n),
        BoxedUint::from_be_slice_vartime(e),
        MIN_RSA_BITS..=MAX_RSA_BITS,
    )
    .map_err(|error| match error {
        rsa::Error::InvalidModulus if n.last().is_none_or(|&low| low & 1 == 0) => {
            "the RSA modulus is even".to_owned()
        }
        _ => "the RSA public exponent is not valid".to_owned(),
    })?;
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

/// Members of an RSA JWK that only a private key has (RFC 7518 §6.3.2).
const RSA_PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];
/// The member that only a private EC or OKP JWK has (RFC 7518 §6.2.2, RFC 8037 §2).
const CURVE_PRIVATE_MEMBERS: [&str; 1] = ["d"];

/// One JWKS member: `Ok(None)` for a key that is skipped, `Err` for a corrupt supported key.
///
/// Which keys are taken (`use`, `key_ops`, `alg`) is decided here on the raw members, in this
/// order; the key material is read as jsonwebtoken's typed [`AlgorithmParameters`]. A key of a
/// supported type whose members do not fit the typed form is reported by
/// [`explain_unparsed`], naming the member at fault.
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
    let parameters = AlgorithmParameters::deserialize(jwk)
        .unwrap_or_else(|_| AlgorithmParameters::Other(OtherKeyParameters::default()));
    let entry = match parameters {
        AlgorithmParameters::RSA(rsa) => {
            refuse_private(object, &RSA_PRIVATE_MEMBERS)?;
            rsa_entry(&jwk_bytes(&rsa.n, "n")?, &jwk_bytes(&rsa.e, "e")?)?
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            refuse_private(object, &CURVE_PRIVATE_MEMBERS)?;
            let size = match ec.curve {
                EllipticCurve::P256 => 32,
                EllipticCurve::P384 => 48,
                _ => return Ok(None),
            };
            let x = jwk_bytes(&ec.x, "x")?;
            let y = jwk_bytes(&ec.y, "y")?;
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
        AlgorithmParameters::OctetKeyPair(okp) => {
            refuse_private(object, &CURVE_PRIVATE_MEMBERS)?;
            if okp.curve != EllipticCurve::Ed25519 {
                return Ok(None);
            }
            ed_entry(&jwk_bytes(&okp.x, "x")?)?
        }
        // Shared secrets (kty "oct") never come from a JWKS; other kinds are explained or
        // skipped.
        _ => return explain_unparsed(object, kty).map(|()| None),
    };
    let entry = match algorithm {
        Some(algorithm) => entry.restricted_to(algorithm)?,
        None => entry,
    };
    Ok(Some(KeyEntry { kid, ..entry }))
}

/// A JWK whose members did not fit any typed key form: for a supported key type (and curve),
/// the error names the member at fault; anything else (other types and curves, kty "oct") is
/// `Ok`, and the key is skipped.
fn explain_unparsed(object: &Map<String, Value>, kty: &str) -> Result<(), String> {
    let required: &[&str] = match kty {
        "RSA" => {
            refuse_private(object, &RSA_PRIVATE_MEMBERS)?;
            &["n", "e"]
        }
        "EC" => {
            refuse_private(object, &CURVE_PRIVATE_MEMBERS)?;
            match optional_str(object, "crv")? {
                Some("P-256" | "P-384") => &["x", "y"],
                _ => return Ok(()),
            }
        }
        "OKP" => {
            refuse_private(object, &CURVE_PRIVATE_MEMBERS)?;
            if optional_str(object, "crv")? != Some("Ed25519") {
                return Ok(());
            }
            &["x"]
        }
        _ => return Ok(()),
    };
    for member in required {
        optional_str(object, member)?.ok_or_else(|| format!("has no \"{member}\""))?;
    }
    Err(format!("is not a valid {kty} key"))
}

fn optional_str<'a>(object: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("its \"{name}\" is not a string")),
    }
}

fn jwk_bytes(text: &str, name: &str) -> Result<Vec<u8>, String> {
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
