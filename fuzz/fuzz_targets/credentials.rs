//! Arbitrary bytes where a client puts credentials: a JWT in the password field, SCRAM
//! client-first and client-final messages in AUTH packets. The first byte picks what the
//! rest is. Nothing may panic; a random token never verifies, and a random SCRAM exchange
//! never succeeds.
#![no_main]

use std::sync::OnceLock;

use bulwark_auth::jwt::{self, JwtKeySet, JwtSettings};
use bulwark_auth::scram::{ScramConfig, ScramCredentials, ScramHash, ScramServer};
use libfuzzer_sys::fuzz_target;

/// An HMAC secret, for a key set that covers the HMAC family.
const SECRET: &[u8] = b"a fuzzing secret of at least thirty-two bytes";

fn keys() -> &'static JwtKeySet {
    static KEYS: OnceLock<JwtKeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = JwtKeySet::new();
        let _ = keys.add_hmac_secret(SECRET, None);
        keys
    })
}

fn scram() -> &'static (ScramConfig, ScramCredentials) {
    static SCRAM: OnceLock<(ScramConfig, ScramCredentials)> = OnceLock::new();
    SCRAM.get_or_init(|| {
        let credentials =
            ScramCredentials::derive_with_salt(ScramHash::Sha256, "fuzz password", b"salt", 4096)
                .unwrap_or_else(|_| std::process::abort());
        (ScramConfig::new([7; 32]), credentials)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            let _ = jwt::looks_like_jwt(rest);
            if let Ok(token) = std::str::from_utf8(rest) {
                let result = jwt::verify(
                    &JwtSettings::default(),
                    keys(),
                    token,
                    "client",
                    1_800_000_000,
                );
                // Forging an HMAC-SHA2 signature is out of the fuzzer's reach.
                assert!(result.is_err());
            }
        }
        1 => {
            let (config, credentials) = scram();
            let _ = ScramServer::start(
                config,
                ScramHash::Sha256,
                rest,
                |_| Some(credentials.clone()),
                &mut |buf: &mut [u8]| buf.fill(1),
            );
        }
        _ => {
            // A valid client-first, then the fuzzer's bytes as client-final.
            let (config, credentials) = scram();
            if let Ok((server, _)) = ScramServer::start(
                config,
                ScramHash::Sha256,
                b"n,,n=user,r=fuzznonce",
                |_| Some(credentials.clone()),
                &mut |buf: &mut [u8]| buf.fill(1),
            ) {
                assert!(server.finish(rest).is_err());
            }
        }
    }
});
