#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use super::*;

/// Cheap parameters for tests where the cost is not what is under test.
const CHEAP: Argon2Params = Argon2Params {
    m_kib: 64,
    t: 1,
    p: 1,
};

fn cheap_hash(password: &str) -> String {
    hash_password(password, &CHEAP).unwrap()
}

/// A store with `alice` (cheap argon2id hash of `alice-secret`).
fn store_with_alice() -> PasswordStore {
    let mut store = PasswordStore::new();
    store
        .add("alice", &cheap_hash("alice-secret"), vec!["ops".to_owned()])
        .unwrap();
    store
}

fn mosquitto_sha512(password: &str, salt: &[u8]) -> String {
    let mut sha = Sha512::new();
    sha.update(password.as_bytes());
    sha.update(salt);
    format!(
        "$6${}${}",
        BASE64.encode(salt),
        BASE64.encode(sha.finalize())
    )
}

fn mosquitto_pbkdf2(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out);
    format!(
        "$7${iterations}${}${}",
        BASE64.encode(salt),
        BASE64.encode(out)
    )
}

fn problems(text: &str) -> Vec<String> {
    match PasswordStore::parse(text) {
        Err(StoreError::Invalid { problems }) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn default_params_are_owasp_minimum_and_validate() {
    let params = Argon2Params::default();
    assert_eq!(
        params,
        Argon2Params {
            m_kib: 19_456,
            t: 2,
            p: 1
        }
    );
    assert!(params.validate().is_ok());
    let weak = CHEAP.validate().unwrap_err();
    let message = weak.to_string();
    assert!(message.contains("m_kib = 19456"), "{message}");
    assert!(message.contains("t = 2"), "{message}");
    assert!(Argon2Params { t: 1, ..params }.validate().is_err());
    assert!(Argon2Params { p: 0, ..params }.validate().is_err());
    assert!(matches!(
        Argon2Params {
            m_kib: Argon2Params::MAX_M_KIB + 1,
            ..params
        }
        .validate(),
        Err(ParamsError::TooLarge { .. })
    ));
}

#[test]
fn argon2_round_trip_and_wrong_password() {
    let hash = cheap_hash("correct horse");
    assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
    // 16-byte salt: 22 base64 characters without padding.
    let salt = hash.split('$').nth(4).unwrap();
    assert_eq!(salt.len(), 22);
    assert_ne!(hash, cheap_hash("correct horse"), "salt must be random");

    let mut store = PasswordStore::new();
    store.add("bob", &hash, Vec::new()).unwrap();
    assert!(matches!(
        store.verify("bob", b"correct horse"),
        Verdict::Allow { .. }
    ));
    assert_eq!(store.verify("bob", b"correct horsE"), Verdict::Deny);
    assert_eq!(store.verify("bob", b""), Verdict::Deny);
}

#[test]
fn default_params_hash_needs_no_upgrade() {
    let hash = hash_password("strong enough", &Argon2Params::default()).unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let mut store = PasswordStore::new();
    store.add("carol", &hash, Vec::new()).unwrap();
    assert_eq!(
        store.verify("carol", b"strong enough"),
        Verdict::Allow { upgrade: false }
    );
}

#[test]
fn weak_stored_params_ask_for_upgrade() {
    let store = store_with_alice();
    assert_eq!(
        store.verify("alice", b"alice-secret"),
        Verdict::Allow { upgrade: true }
    );
}

#[test]
fn unknown_user_is_denied_after_a_default_cost_argon2_verification() {
    let store = store_with_alice();
    let _ = probe::take();
    assert_eq!(store.verify("mallory", b"alice-secret"), Verdict::Deny);
    let verified = probe::take();
    let dummy = dummy_hash().unwrap();
    assert_eq!(verified, vec![dummy.to_owned()]);
    // The dummy costs what a user at the default parameters costs.
    assert!(
        dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{dummy}"
    );
    // Even the dummy's own password does not log an unknown user in.
    assert_eq!(store.verify("mallory", DUMMY_PASSWORD), Verdict::Deny);
    // A known user runs exactly one verification, against its own hash.
    let _ = probe::take();
    let _ = store.verify("alice", b"wrong");
    assert_eq!(
        probe::take(),
        vec![store.get("alice").unwrap().password.clone()]
    );
}

#[test]
fn disabled_user_semantics() {
    let mut store = store_with_alice();
    store.set_disabled("alice", true).unwrap();
    assert_eq!(store.verify("alice", b"alice-secret"), Verdict::Disabled);
    let _ = probe::take();
    assert_eq!(store.verify("alice", b"wrong"), Verdict::Deny);
    assert_eq!(
        probe::take().len(),
        1,
        "disabled users still pay for the check"
    );
    store.set_disabled("alice", false).unwrap();
    assert!(matches!(
        store.verify("alice", b"alice-secret"),
        Verdict::Allow { .. }
    ));
    assert_eq!(
        store.set_disabled("nobody", true),
        Err(StoreError::NoSuchUser("nobody".to_owned()))
    );
}

/// Made by `mosquitto_passwd` 2.0 (`-H sha512` and the default `-H sha512-pbkdf2`) for
/// the password `secret`.
const MOSQUITTO_SHA512_SECRET: &str = "$6$8q4verAz620EZ43B$N1Nqke6QxNvXNkVDtqJ2Nl7fxpQZ6zfP\
                                           5PXLVDvOpPcYndYQ7HNi4ktvH8i4EYbBuigWLScR2lzH3yCyEw1oCQ==";
const MOSQUITTO_PBKDF2_SECRET: &str = "$7$101$fiF6JIYM4+rScoA+$csSyKPWCgz0NPKh+WUiearNkBeJd\
                                           U7u3GsxViTANbfpJhQmZpfY6+baJQ49/PNjI+nti0DNTXIYRFizY\
                                           ygI6IQ==";

/// Checks a hash string directly, without the dummy argon2 run `verify` adds.
fn mosquitto_ok(hash: &str, password: &str) -> bool {
    mosquitto_matches(&parse_hash(hash).unwrap(), password.as_bytes())
}

#[test]
fn mosquitto_hash_matching() {
    let salt = [7u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    let sha = mosquitto_sha512("hunter22", &salt);
    assert!(mosquitto_ok(&sha, "hunter22"));
    assert!(!mosquitto_ok(&sha, "hunter23"));
    let pbkdf2 = mosquitto_pbkdf2("hunter22", &salt, 101);
    assert!(mosquitto_ok(&pbkdf2, "hunter22"));
    assert!(!mosquitto_ok(&pbkdf2, "hunter2"));
    assert!(mosquitto_ok(
        &mosquitto_pbkdf2("hunter22", &salt, 7),
        "hunter22"
    ));
    // The iteration count is part of the hash: same salt and digest, other count.
    let digest = pbkdf2.rsplit('$').next().unwrap();
    let forged = format!("$7$102${}${digest}", BASE64.encode(salt));
    assert!(!mosquitto_ok(&forged, "hunter22"));
    // Vectors made by mosquitto_passwd itself.
    assert!(mosquitto_ok(MOSQUITTO_SHA512_SECRET, "secret"));
    assert!(!mosquitto_ok(MOSQUITTO_SHA512_SECRET, "Secret"));
    assert!(mosquitto_ok(MOSQUITTO_PBKDF2_SECRET, "secret"));
    assert!(!mosquitto_ok(MOSQUITTO_PBKDF2_SECRET, "secret "));
    // A Mosquitto-made hash is not confused with an argon2id one.
    assert!(!mosquitto_matches(
        &parse_hash(&cheap_hash("secret")).unwrap(),
        b"secret"
    ));
}

#[test]
fn mosquitto_hash_login_asks_for_upgrade() {
    let mut store = PasswordStore::new();
    store
        .add("m6", MOSQUITTO_SHA512_SECRET, Vec::new())
        .unwrap();
    let mine = mosquitto_pbkdf2("hunter22", b"twelve bytes", 101);
    store.add("m7", &mine, Vec::new()).unwrap();
    let _ = probe::take();
    assert_eq!(
        store.verify("m6", b"secret"),
        Verdict::Allow { upgrade: true }
    );
    // Timing equalization: the dummy argon2 verification ran too.
    assert_eq!(probe::take(), vec![dummy_hash().unwrap().to_owned()]);
    assert_eq!(
        store.verify("m7", b"hunter22"),
        Verdict::Allow { upgrade: true }
    );
}

#[test]
fn mosquitto_passwd_made_hashes_verify() {
    let dir = std::env::temp_dir().join(format!("bulwark-mosq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut made = Vec::new();
    for (algo, user) in [("sha512-pbkdf2", "pb"), ("sha512", "sha")] {
        let file = dir.join(user);
        let status = std::process::Command::new("mosquitto_passwd")
            .args(["-H", algo, "-b", "-c"])
            .arg(&file)
            .args([user, "s3cret pass"])
            .status();
        match status {
            Ok(status) if status.success() => made.push(std::fs::read_to_string(&file).unwrap()),
            Ok(status) => panic!("mosquitto_passwd failed: {status}"),
            Err(err) => {
                eprintln!("note: mosquitto_passwd not runnable ({err}); test skipped");
                let _ = std::fs::remove_dir_all(&dir);
                return;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let text = made.concat();
    let entries = parse_mosquitto_file(&text).unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries[0].1.starts_with("$7$101$"), "pbkdf2 entry");
    assert!(entries[1].1.starts_with("$6$"), "sha512 entry");
    let mut store = PasswordStore::new();
    for (name, hash) in &entries {
        store.add(name, hash, Vec::new()).unwrap();
    }
    for name in ["pb", "sha"] {
        assert_eq!(
            store.verify(name, b"s3cret pass"),
            Verdict::Allow { upgrade: true },
            "{name}"
        );
        let hash = &store.get(name).unwrap().password;
        assert!(!mosquitto_ok(hash, "s3cret pasS"), "{name}");
    }
}

#[test]
fn parse_mosquitto_file_reports_lines() {
    let good6 = mosquitto_sha512("x", b"saltsaltsalt");
    let good7 = mosquitto_pbkdf2("x", b"saltsaltsalt", 101);
    let text = format!("# comment\n\nann:{good6}\nben:{good7}\r\n");
    let entries = parse_mosquitto_file(&text).unwrap();
    assert_eq!(
        entries,
        vec![
            ("ann".to_owned(), good6.clone()),
            ("ben".to_owned(), good7.clone())
        ]
    );

    let bad = format!(
        "ann:{good6}\nno colon here\ncid:plaintext-secret\nann:{good7}\na/b:{good7}\n\
             dan:$7$0$c2FsdA==${}\n",
        good7.rsplit('$').next().unwrap()
    );
    let err = parse_mosquitto_file(&bad).unwrap_err();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 5, "{err}");
    assert!(lines[0].starts_with("line 2:"), "{err}");
    assert!(lines[1].starts_with("line 3:") && lines[1].contains("mosquitto_passwd -U"));
    assert!(
        lines[2].starts_with("line 4:") && lines[2].contains("line 1"),
        "{err}"
    );
    assert!(lines[3].starts_with("line 5:"), "{err}");
    assert!(
        lines[4].starts_with("line 6:") && lines[4].contains("iteration"),
        "{err}"
    );
    assert!(!err.contains("plaintext-secret"));
    assert!(!err.contains("no colon here"));
    assert!(!err.contains(&good7[10..]));
}

#[test]
fn toml_round_trip_keeps_scram_verbatim() {
    let alice = cheap_hash("a");
    let bob = mosquitto_pbkdf2("b", b"saltsaltsalt", 101);
    let scram = r#"v=1,i=4096,s=c2FsdA==,stored="q\"uote",server=back\slash	tab"#;
    let text = format!(
        "{STORE_HEADER}\n\n# a comment\n[[user]]\nname = \"alice\"\npassword = \"{alice}\"\n\
             groups = [\"ops\", \"dev\"]\nscram_sha256 = '{scram}'\n\
             scram_sha512 = \"\"\"multi\nline\"\"\"\n\n\
             [[user]]\nname = \"bob é\"\npassword = \"{bob}\"\ndisabled = true\n"
    );
    let store = PasswordStore::parse(&text).unwrap();
    let a = store.get("alice").unwrap();
    assert_eq!(a.groups, ["ops", "dev"]);
    assert_eq!(a.scram_sha256.as_deref(), Some(scram));
    assert_eq!(a.scram_sha512.as_deref(), Some("multi\nline"));
    assert!(!a.disabled);
    let b = store.get("bob é").unwrap();
    assert!(b.disabled && b.groups.is_empty() && b.scram_sha256.is_none());

    let written = store.to_toml();
    assert!(written.starts_with(STORE_HEADER));
    let again = PasswordStore::parse(&written).unwrap();
    assert_eq!(again, store);
    assert_eq!(again.to_toml(), written);
    let names: Vec<&str> = again.users().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob é"]);
    assert_eq!(PasswordStore::parse("").unwrap(), PasswordStore::new());
    assert_eq!(
        PasswordStore::parse(&PasswordStore::new().to_toml()).unwrap(),
        PasswordStore::new()
    );
}

#[test]
fn dates_are_not_strings_and_every_store_key_is_read() {
    let found = problems("[[user]]\nname = 1979-05-27\npassword = \"x\"\n");
    assert!(
        found.iter().any(|p| p.contains("`name` is not a string")),
        "{found:?}"
    );
    let mut table = toml::Table::new();
    for key in STORE_KEYS {
        table.insert((*key).to_owned(), toml::Value::Boolean(true));
    }
    let text = toml::to_string(&table).unwrap();
    let entry: UserEntry = toml::from_str(&text).unwrap();
    assert!(entry.unknown.is_empty(), "{:?}", entry.unknown);
}

#[test]
fn parse_errors_name_each_problem() {
    let ok = cheap_hash("x");
    let m6 = mosquitto_sha512("x", b"saltsaltsalt");
    let user = |name: &str, extra: &str| {
        format!(
            "[[user]]\nname = {}\npassword = \"{ok}\"\n{extra}\n",
            toml_string(name)
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (user("", ""), "name empty"),
        (user("a\u{0}b", ""), "control character"),
        (user("a\u{7}b", ""), "control character"),
        (user("a+b", ""), "`+`"),
        (user("a#b", ""), "`+`"),
        (user("a/b", ""), "`+`"),
        (user("x", "passwd = \"oops\""), "unknown key \"passwd\""),
        (user("x", "groups = \"ops\""), "`groups` is not an array"),
        (user("x", "groups = [1]"), "non-string"),
        (user("x", "groups = [\"a/b\"]"), "group \"a/b\""),
        (user("x", "groups = [\"g\", \"g\"]"), "listed twice"),
        (user("x", "disabled = \"no\""), "`disabled`"),
        (
            user("x", "scram_sha256 = 5"),
            "`scram_sha256` is not a string",
        ),
        (
            format!("{}{}", user("x", ""), user("x", "")),
            "duplicate name",
        ),
        (
            "[[user]]\npassword = \"x\"\n".to_owned(),
            "`name` is missing",
        ),
        ("[[user]]\nname = 5\n".to_owned(), "`name` is not a string"),
        (
            "[[user]]\nname = \"x\"\n".to_owned(),
            "`password` is missing",
        ),
        (
            "[[user]]\nname = \"x\"\npassword = 1\n".to_owned(),
            "`password` is not a string",
        ),
        ("user = 1\n".to_owned(), "not an array of tables"),
        ("user = [1]\n".to_owned(), "not a table"),
        ("other = 1\n".to_owned(), "unknown top-level key"),
    ];
    for (text, expected) in &cases {
        let found = problems(text);
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{text:?}: expected {expected:?} in {found:?}"
        );
        assert!(
            !found.iter().any(|p| p.contains(&ok)),
            "hash echoed: {found:?}"
        );
    }

    let bad_hashes = [
        ("plain-text-password", "neither an argon2id"),
        ("$1$abc$def", "neither an argon2id"),
        (
            "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "not argon2id",
        ),
        (
            "$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "version 19",
        ),
        (
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
            "salt",
        ),
        ("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ", "no hash"),
        (
            "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "exceed",
        ),
        (
            "$argon2id$v=19$m=64,t=1,p=1,x=2$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "parameters",
        ),
        ("$argon2id$garbage", "salt"),
        (
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$not*base64*at*all",
            "malformed",
        ),
        ("$6$c2FsdA==", "expected $6$"),
        ("$6$not*base64$AAAA", "salt"),
        ("$6$c2FsdA==$c2hvcnQ=", "64 bytes"),
        ("$7$abc$c2FsdA==$c2hvcnQ=", "iteration"),
        ("$7$2000000$c2FsdA==$c2hvcnQ=", "iteration"),
        ("$7$101$c2FsdA==$c2hvcnQ=", "64 bytes"),
    ];
    for (hash, expected) in bad_hashes {
        let text = format!("[[user]]\nname = \"x\"\npassword = \"{hash}\"\n");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{hash}: {found:?}");
        assert!(
            found[0].starts_with("user #1 \"x\": `password`"),
            "{found:?}"
        );
        assert!(found[0].contains(expected), "{hash}: {found:?}");
        let tail = hash.rsplit('$').next().unwrap();
        let secret_part = if tail.len() >= 8 { tail } else { hash };
        assert!(!found[0].contains(secret_part), "hash echoed: {found:?}");
    }

    // Several problems at once, each with its user.
    let text = format!(
        "{}{}[[user]]\nname = \"ok\"\npassword = \"{m6}\"\n{}",
        user("a+", ""),
        user("b", "colour = 1"),
        user("ok", "")
    );
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].starts_with("user #1 \"a+\""), "{found:?}");
    assert!(found[1].starts_with("user #2 \"b\""), "{found:?}");
    assert!(found[2].starts_with("user #4 \"ok\": duplicate name, already used by user #3"));
    let message = PasswordStore::parse(&text).unwrap_err().to_string();
    assert!(
        message.starts_with("password store has 3 problem(s):"),
        "{message}"
    );

    let err = PasswordStore::parse("[[user]]\nname = \"x\"\npassword = \"$argon2id\n").unwrap_err();
    assert!(matches!(err, StoreError::Syntax { line: 3, .. }), "{err:?}");
    assert!(!err.to_string().contains("$argon2id"), "{err}");
}

#[test]
fn edits() {
    let mut store = store_with_alice();
    let hash = cheap_hash("b");
    assert_eq!(
        store.add("alice", &hash, Vec::new()),
        Err(StoreError::UserExists("alice".to_owned()))
    );
    assert!(matches!(
        store.add("x/y", &hash, Vec::new()),
        Err(StoreError::InvalidName { .. })
    ));
    assert!(matches!(
        store.add("bob", "hunter2", Vec::new()),
        Err(StoreError::InvalidHash { reason, .. }) if !reason.contains("hunter2")
    ));
    assert!(matches!(
        store.add("bob", &hash, vec!["a#".to_owned()]),
        Err(StoreError::InvalidGroup { .. })
    ));
    assert!(matches!(
        store.add("bob", &hash, vec!["g".to_owned(), "g".to_owned()]),
        Err(StoreError::InvalidGroup { .. })
    ));
    store.add("bob", &hash, Vec::new()).unwrap();
    store.add("carol", &hash, Vec::new()).unwrap();
    assert_eq!(store.len(), 3);

    store
        .set_scram("alice", Some("s256".to_owned()), Some("s512".to_owned()))
        .unwrap();
    assert_eq!(
        store.get("alice").unwrap().scram_sha256.as_deref(),
        Some("s256")
    );
    let new_hash = cheap_hash("alice-new");
    store.set_password("alice", &new_hash).unwrap();
    let alice = store.get("alice").unwrap();
    assert_eq!(alice.password, new_hash);
    assert!(alice.scram_sha256.is_none() && alice.scram_sha512.is_none());
    assert_eq!(store.verify("alice", b"alice-secret"), Verdict::Deny);
    assert!(store.set_password("alice", "$6$bad").is_err());
    assert_eq!(store.get("alice").unwrap().password, new_hash);

    store.set_groups("bob", vec!["dev".to_owned()]).unwrap();
    assert_eq!(store.get("bob").unwrap().groups, ["dev"]);

    let removed = store.remove("alice").unwrap();
    assert_eq!(removed.name, "alice");
    assert!(store.get("alice").is_none());
    assert_eq!(store.get("bob").unwrap().name, "bob");
    assert_eq!(store.get("carol").unwrap().name, "carol");
    assert_eq!(store.verify("alice", b"alice-new"), Verdict::Deny);
    assert_eq!(
        store.remove("alice").unwrap_err(),
        StoreError::NoSuchUser("alice".to_owned())
    );
    assert_eq!(PasswordStore::parse(&store.to_toml()).unwrap(), store);
}

#[test]
fn debug_and_errors_hide_secrets() {
    let mut store = store_with_alice();
    store
        .set_scram("alice", Some("scram-secret".to_owned()), None)
        .unwrap();
    let hash = store.get("alice").unwrap().password.clone();
    let debug = format!("{store:?}");
    assert!(debug.contains("alice"));
    assert!(
        !debug.contains(&hash) && !debug.contains("scram-secret"),
        "{debug}"
    );
    let long = "n".repeat(500);
    let err = store
        .add(&format!("{long}+"), &hash, Vec::new())
        .unwrap_err();
    assert!(err.to_string().len() < 300, "{err}");
}

#[test]
fn generated_passwords_are_long_random_and_pass_the_policy() {
    let a = generate_password(24).unwrap();
    let b = generate_password(24).unwrap();
    assert_eq!(a.chars().count(), 24);
    assert_ne!(a, b);
    assert!(a.bytes().all(|c| GENERATED_ALPHABET.contains(&c)));
    crate::policy::PasswordPolicy::default()
        .check("admin", &a)
        .unwrap();
}
