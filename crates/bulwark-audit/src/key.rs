//! The checkpoint key: Ed25519, kept as a PKCS#8 PEM file (`openssl pkey` reads it), its public
//! half as an SPKI PEM file or the base64 of its 32 bytes (what checkpoints carry).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// What is wrong with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// The private key that signs checkpoints.
pub struct AuditKey(SigningKey);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        write!(f, "AuditKey({})", self.public().base64())
    }
}

impl AuditKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut secret)
            .map_err(|err| KeyError(format!("no randomness for a new key: {err}")))?;
        Ok(Self(SigningKey::from_bytes(&secret)))
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|err| KeyError(format!("not an Ed25519 private key in PKCS#8 PEM: {err}")))
    }

    /// The key as PKCS#8 PEM, version 1 (the secret only: the form `openssl pkey` reads;
    /// the public half is derived from it).
    pub fn to_pem(&self) -> Result<String, KeyError> {
        let bytes = ed25519_dalek::ed25519::pkcs8::KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        bytes
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .map_err(|err| KeyError(format!("cannot encode the key: {err}")))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message`; the signature in base64.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.0.sign(message).to_bytes())
    }
}

/// A public key that checks checkpoint signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.base64())
    }
}

impl PublicKey {
    /// Reads an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`), or the base64 of the key's
    /// 32 bytes as checkpoints carry it (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            return VerifyingKey::from_public_key_pem(text)
                .map(Self)
                .map_err(|err| KeyError(format!("not an Ed25519 public key in SPKI PEM: {err}")));
        }
        Self::from_base64(text)
    }

    /// The base64 of the key's 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|err| KeyError(format!("not base64: {err}")))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            KeyError(format!(
                "an Ed25519 public key has 32 bytes, this one {}",
                bytes.len()
            ))
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|err| KeyError(format!("not an Ed25519 public key: {err}")))
    }

    /// The base64 of the key's 32 bytes.
    pub fn base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// The key as SPKI PEM.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|err| KeyError(format!("cannot encode the key: {err}")))
    }

    /// Whether `sig` (base64) is this key's signature of `message` (strict verification:
    /// no malleable signatures, no weak keys).
    pub fn verify(&self, message: &[u8], sig: &str) -> bool {
        let Ok(bytes) = STANDARD.decode(sig) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        let signature = Signature::from_bytes(&bytes);
        self.0.verify_strict(message, &signature).is_ok()
            && self.0.verify(message, &signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn keys_round_trip_and_sign() {
        let key = AuditKey::generate().unwrap();
        let again = AuditKey::from_pem(&key.to_pem().unwrap()).unwrap();
        assert_eq!(key.public(), again.public());
        let public = key.public();
        assert_eq!(PublicKey::parse(&public.to_pem().unwrap()).unwrap(), public);
        assert_eq!(PublicKey::parse(&public.base64()).unwrap(), public);
        let sig = key.sign(b"hello");
        assert!(public.verify(b"hello", &sig));
        assert!(!public.verify(b"hellO", &sig));
        assert!(!public.verify(b"hello", "AAAA"));
        let other = AuditKey::generate().unwrap();
        assert!(!other.public().verify(b"hello", &sig));
        assert!(PublicKey::parse("not a key").is_err());
        assert!(
            AuditKey::from_pem("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }
}
