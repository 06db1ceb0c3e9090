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
            ScramCredentials::derive_with_salt(ScramHash::Sha256, "pencil", &salt, 4096).unwrap()
        })
        .clone()
}

/// HMAC and PBKDF2 called directly on the crates, so that the test client does not share
/// the code under test.
fn t_hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => {
            let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).unwrap();
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha512 => {
            let mut mac = <Hmac<Sha512> as hmac::KeyInit>::new_from_slice(key).unwrap();
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
        "us=2Xer", "us=er", "user=", "user=2", "us=2cer", "=3d", "a#b", "a+b", "a/b", "#", "a\0b",
        "a\u{7}b", "",
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
    let mut big_final = format!("c=biws,r={RFC_CLIENT_NONCE}{RFC_SERVER_NONCE},x=").into_bytes();
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
