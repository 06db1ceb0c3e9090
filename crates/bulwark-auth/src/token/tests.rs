#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use super::*;

const NOW: u64 = 1_764_657_600;

/// A store with `ci` (viewer, never expires) and `deploy` (admin, expires at NOW + 3600).
fn store() -> (TokenStore, String, String) {
    let mut store = TokenStore::new();
    let (_, ci) = store.issue("ci", Role::Viewer, NOW, None).unwrap();
    let (_, deploy) = store
        .issue("deploy", Role::Admin, NOW, Some(NOW + 3600))
        .unwrap();
    (store, ci, deploy)
}

/// A valid record, as a file would hold it, with `extra` lines added to its table.
fn table(id: &str, name: &str, extra: &str) -> String {
    format!(
        "[[token]]\nid = \"{id}\"\nname = \"{name}\"\nrole = \"viewer\"\nsha256 = \"{}\"\n\
         created = 10\n{extra}",
        "ab".repeat(32)
    )
}

#[test]
fn issued_tokens_verify_with_their_role() {
    let (store, ci, deploy) = store();
    let record = store.verify(&ci, NOW).unwrap();
    assert_eq!((record.name.as_str(), record.role), ("ci", Role::Viewer));
    assert_eq!(record.created, NOW);
    assert_eq!(record.expires, None);
    let record = store.verify(&deploy, NOW + 1).unwrap();
    assert_eq!((record.name.as_str(), record.role), ("deploy", Role::Admin));
    assert_eq!(store.records().len(), 2);
    // What is kept is the hash of the token, never the token.
    let file = store.to_toml();
    assert!(!file.contains(&ci) && !file.contains(&ci[21..]), "{file}");
    let digest: [u8; 32] = Sha256::digest(ci.as_bytes()).into();
    assert_eq!(store.records()[0].sha256, digest);
}

#[test]
fn secrets_have_the_documented_form() {
    let mut store = TokenStore::new();
    let (record, secret) = store.issue("a", Role::Operator, NOW, None).unwrap();
    assert_eq!(secret.len(), 4 + 16 + 1 + 43, "{secret}");
    assert!(secret.starts_with("bwk_"), "{secret}");
    assert_eq!(&secret[4..20], record.id);
    assert!(is_id(&record.id), "{}", record.id);
    assert_eq!(&secret[20..21], "_");
    let key = URL_SAFE_NO_PAD.decode(&secret[21..]).unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(secret_id(&secret), Some(record.id.as_str()));
    // Two tokens never share an id or a key.
    let (other, again) = store.issue("b", Role::Operator, NOW, None).unwrap();
    assert_ne!(other.id, record.id);
    assert_ne!(again[21..], secret[21..]);
}

#[test]
fn wrong_and_tampered_secrets_are_refused() {
    let (store, ci, deploy) = store();
    assert!(store.verify("", NOW).is_none());
    assert!(store.verify("bwk_", NOW).is_none());
    assert!(store.verify("not a token at all", NOW).is_none());
    // Another token's key with this token's id.
    let swapped = format!("{}{}", &ci[..21], &deploy[21..]);
    assert!(store.verify(&swapped, NOW).is_none());
    // One character changed, anywhere: in the prefix, the id or the key.
    for position in [0, 3, 4, 19, 20, 21, 40, ci.len() - 1] {
        let mut bytes = ci.clone().into_bytes();
        bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(store.verify(&tampered, NOW).is_none(), "{position}");
    }
    // Cut short, or with more after it.
    assert!(store.verify(&ci[..ci.len() - 1], NOW).is_none());
    assert!(store.verify(&format!("{ci}x"), NOW).is_none());
    // An unknown id, well formed.
    let unknown = format!("bwk_0000000000000000{}", &ci[20..]);
    assert!(store.verify(&unknown, NOW).is_none());
    // Too long to be hashed at all, whatever it begins with.
    assert!(
        store
            .verify(&format!("{ci}{}", "x".repeat(300)), NOW)
            .is_none()
    );
}

#[test]
fn expired_tokens_are_refused() {
    let (store, ci, deploy) = store();
    assert!(store.verify(&deploy, NOW + 3599).is_some());
    assert!(
        store.verify(&deploy, NOW + 3600).is_none(),
        "ends at expires"
    );
    assert!(store.verify(&deploy, u64::MAX).is_none());
    assert!(store.verify(&ci, u64::MAX).is_some(), "no expiry");
}

#[test]
fn removed_tokens_are_refused() {
    let (mut store, ci, deploy) = store();
    assert!(store.remove("ci"));
    assert!(!store.remove("ci"));
    assert!(store.verify(&ci, NOW).is_none());
    // By id too.
    let id = store.records()[0].id.clone();
    assert!(store.remove(&id));
    assert!(store.verify(&deploy, NOW).is_none());
    assert!(store.records().is_empty());
    assert!(!store.remove("nothing"));
}

#[test]
fn the_file_round_trips() {
    let (store, ci, deploy) = store();
    let text = store.to_toml();
    assert!(text.starts_with("# Bulwark admin API tokens: SHA-256 hashes only"));
    assert!(text.contains("`bulwark admin token`"), "{text}");
    let parsed = TokenStore::parse(&text, "tokens.toml").unwrap();
    assert_eq!(parsed, store);
    assert!(parsed.verify(&ci, NOW).is_some());
    assert!(parsed.verify(&deploy, NOW).is_some());
    assert_eq!(parsed.to_toml(), text);
    assert_eq!(TokenStore::parse("", "x").unwrap(), TokenStore::new());
    assert_eq!(TokenStore::new().to_toml(), HEADER);
    // Upper-case hex is read, and written back in lower case.
    let upper = table("0123456789abcdef", "a", "").replace("abab", "ABAB");
    let parsed = TokenStore::parse(&upper, "x").unwrap();
    assert_eq!(parsed.records()[0].sha256, [0xab; 32]);
}

#[test]
fn every_problem_of_a_file_is_reported_with_its_line() {
    let text = format!(
        "{}\n{}\n{}\n{}",
        table("0000000000000001", "one", "").replace("\"viewer\"", "\"root\""),
        table("0000000000000002", "two", "").replace(&"ab".repeat(32), "abcd"),
        table("0000000000000003", "one", ""),
        table("0000000000000004", "four", "colour = \"blue\"\n"),
    );
    let err = TokenStore::parse(&text, "tokens.toml").unwrap_err();
    let all = err.to_string();
    assert_eq!(err.problems.len(), 4, "{all}");
    assert!(
        err.problems[0].starts_with("tokens.toml:4: token #1 \"one\": unknown role \"root\""),
        "{all}"
    );
    assert!(
        err.problems[1].starts_with("tokens.toml:12: token #2 \"two\": `sha256` must be 64 hex"),
        "{all}"
    );
    assert!(
        err.problems[2].starts_with("tokens.toml:28: token #4 \"four\": unknown key \"colour\""),
        "{all}"
    );
    assert!(
        err.problems[3].contains("token #3 \"one\": the name is used already by token #1"),
        "{all}"
    );
    assert!(err.problems[3].starts_with("tokens.toml:15:"), "{all}");
    // Every line says where.
    assert!(err.problems.iter().all(|p| p.starts_with("tokens.toml:")));
}

#[test]
fn bad_values_missing_keys_and_duplicate_ids_are_named() {
    let cases = [
        (
            table("0000000000000001", "a", "created = 5\n"),
            "duplicate key",
        ),
        (table("0123456789ABCDEF", "a", ""), "16 lowercase hex"),
        (
            table("0000000000000001", "a b", ""),
            "name \"a b\" may hold only",
        ),
        (
            table("0000000000000001", "a", "expires = -1\n"),
            "`expires` must be a time",
        ),
        (
            table("0000000000000001", "a", "expires = 2026-01-01\n"),
            "not the date 2026-01-01",
        ),
        (
            table("0000000000000001", "a", "").replace("role = \"viewer\"", "role = 3"),
            "`role` must be a string, not the integer 3",
        ),
        (
            table("0000000000000001", "a", "").replace("created = 10\n", ""),
            "token #1 \"a\": `created` is missing",
        ),
        (
            format!(
                "{}{}",
                table("0000000000000001", "a", ""),
                table("0000000000000001", "b", "")
            ),
            "the id 0000000000000001 is used already by token #1",
        ),
        (
            "colour = 1\n".to_owned(),
            "x:1: unknown top-level key \"colour\"",
        ),
        (
            "token = 1\n".to_owned(),
            "`token` must be an array of tables",
        ),
        ("[[token]\n".to_owned(), "x:1: not valid TOML"),
        (
            table("0000000000000001", "a", "").replace(&"ab".repeat(32), &"+a".repeat(32)),
            "`sha256` must be 64 hex",
        ),
    ];
    for (text, expected) in cases {
        let err = TokenStore::parse(&text, "x").unwrap_err().to_string();
        assert!(err.contains(expected), "{text}\n-> {err}");
    }
    let too_many: String = (0..=TokenStore::MAX_TOKENS)
        .map(|i| table(&format!("{i:016x}"), &format!("t{i}"), ""))
        .collect();
    let err = TokenStore::parse(&too_many, "x").unwrap_err().to_string();
    assert!(err.contains("more than 1000 tokens"), "{err}");
}

#[test]
fn names_follow_the_grammar_and_are_unique() {
    let mut store = TokenStore::new();
    let long = "x".repeat(64);
    for good in ["a", "CI-bot_2.0", long.as_str(), "0123456789abcdef"] {
        assert!(store.issue(good, Role::Viewer, NOW, None).is_ok(), "{good}");
    }
    let too_long = "x".repeat(65);
    for bad in ["", too_long.as_str(), "a b", "a/b", "é", "a\n", "a\"b"] {
        let err = store.issue(bad, Role::Viewer, NOW, None).unwrap_err();
        assert!(err.to_string().starts_with("token name"), "{bad:?}: {err}");
    }
    let err = store.issue("a", Role::Admin, NOW, None).unwrap_err();
    assert_eq!(err.to_string(), "a token named \"a\" exists already");
    // A name that looks like an id is removed by name, before any id.
    let id = store.records()[0].id.clone();
    assert!(store.remove("0123456789abcdef"));
    assert!(store.records().iter().all(|r| r.name != "0123456789abcdef"));
    assert!(store.remove(&id));
}

#[test]
fn issue_refuses_dead_tokens_and_a_full_store() {
    let mut store = TokenStore::new();
    assert!(store.issue("a", Role::Viewer, NOW, Some(NOW)).is_err());
    assert!(store.issue("a", Role::Viewer, NOW, Some(NOW - 1)).is_err());
    assert!(store.issue("a", Role::Viewer, u64::MAX, None).is_err());
    assert!(store.records().is_empty());
    for i in 0..TokenStore::MAX_TOKENS {
        store
            .issue(&format!("t{i}"), Role::Viewer, NOW, None)
            .unwrap();
    }
    let err = store
        .issue("one-more", Role::Viewer, NOW, None)
        .unwrap_err();
    assert!(err.to_string().contains("holds 1000 tokens"), "{err}");
    // A full store still round-trips.
    let parsed = TokenStore::parse(&store.to_toml(), "x").unwrap();
    assert_eq!(parsed.records().len(), TokenStore::MAX_TOKENS);
}

#[test]
fn roles_are_ordered() {
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    assert!(Role::Admin.allows(Role::Viewer));
    assert!(Role::Admin.allows(Role::Admin));
    assert!(Role::Operator.allows(Role::Viewer));
    assert!(!Role::Operator.allows(Role::Admin));
    assert!(!Role::Viewer.allows(Role::Operator));
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        assert_eq!(role.to_string(), role.as_str());
    }
    let err = "Admin".parse::<Role>().unwrap_err();
    assert!(err.contains("viewer, operator and admin"), "{err}");
}
