//! `bulwark admin token` through the binary: add (the token shown once, only its hash kept),
//! list, remove, and the refusals with their statuses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::process::Output;

use bulwark_auth::token::{Role, TokenStore};
use common::{TempDir, output_text as text, run_bulwark};

fn token(args: &[&str]) -> Output {
    run_bulwark(&[&["admin", "token"], args].concat())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn tokens_are_added_listed_and_removed() {
    let dir = TempDir::new("admin", "tokens");
    // The directory is made if missing.
    let file = dir.0.join("data/admin-tokens.toml");
    let f = file.to_str().unwrap();

    let out = token(&["add", "ci", "--role", "viewer", "--file", f]);
    assert!(out.status.success(), "{}", text(&out));
    // Standard output is the token alone, so that `$(...)` takes it.
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let secret = stdout.strip_suffix('\n').unwrap();
    assert_eq!(secret.len(), 64, "{stdout:?}");
    assert!(secret.starts_with("bwk_"), "{secret}");
    assert!(
        secret[4..20]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{secret}"
    );
    assert_eq!(&secret[20..21], "_");
    assert!(
        secret[21..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{secret}"
    );
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("cannot be shown again"), "{note}");
    assert_eq!(note.lines().count(), 1, "{note}");
    assert!(!note.contains(secret), "{note}");

    // The file holds the hash, not the token, and only its owner may read it.
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(
        !kept.contains(secret) && !kept.contains(&secret[21..]),
        "{kept}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    // It is what the broker reads, and the token verifies against it.
    let store = TokenStore::parse(&kept, f).unwrap();
    let record = store.verify(secret, now()).unwrap();
    assert_eq!((record.name.as_str(), record.role), ("ci", Role::Viewer));
    let ci_id = record.id.clone();

    let out = token(&[
        "add",
        "deploy",
        "--role",
        "admin",
        "--expires",
        "2h",
        "--file",
        f,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = token(&["list", "--file", f]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    let ci_row = listed.lines().find(|l| l.starts_with("ci ")).unwrap();
    assert!(
        ci_row.contains("viewer") && ci_row.contains(&ci_id) && ci_row.ends_with("never"),
        "{listed}"
    );
    let deploy_row = listed.lines().find(|l| l.starts_with("deploy ")).unwrap();
    assert!(
        deploy_row.contains("admin") && deploy_row.trim_end().ends_with('Z'),
        "{listed}"
    );
    assert!(listed.starts_with("NAME"), "{listed}");
    let out = token(&["list", "--json", "--file", f]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(json.lines().count(), 2, "{json}");
    assert!(
        json.contains(&format!(
            "{{\"name\":\"ci\",\"id\":\"{ci_id}\",\"role\":\"viewer\","
        )) && json.contains("\"expires\":null"),
        "{json}"
    );
    assert!(!json.contains("sha256"), "{json}");

    // A name in use is refused (1), and nothing is printed on standard output.
    let out = token(&["add", "ci", "--role", "admin", "--file", f]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));

    // Removal, by name and by id; the removed token stops verifying.
    let out = token(&["remove", "deploy", "--file", f]);
    assert!(out.status.success(), "{}", text(&out));
    let out = token(&["remove", &ci_id, "--file", f]);
    assert!(out.status.success(), "{}", text(&out));
    let store = TokenStore::parse(&std::fs::read_to_string(&file).unwrap(), f).unwrap();
    assert!(store.records().is_empty());
    assert!(store.verify(secret, now()).is_none());
    let out = token(&["remove", "ci", "--file", f]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = token(&["list", "--file", f]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no tokens"));
}

#[test]
fn bad_input_exits_2() {
    let dir = TempDir::new("admin", "bad");
    let file = dir.0.join("admin-tokens.toml");
    let f = file.to_str().unwrap();
    for bad in [
        &["add", "ci", "--role", "root", "--file", f][..],
        &["add", "ci", "--file", f],
        &["add", "c i", "--role", "viewer", "--file", f],
        &[
            "add",
            "ci",
            "--role",
            "viewer",
            "--expires",
            "5w",
            "--file",
            f,
        ],
        &[
            "add",
            "ci",
            "--role",
            "viewer",
            "--expires",
            "0",
            "--file",
            f,
        ],
    ] {
        let out = token(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        assert!(out.stdout.is_empty(), "{bad:?}: {}", text(&out));
    }
    let out = token(&["add", "ci", "--role", "root", "--file", f]);
    assert!(
        text(&out).contains("viewer, operator and admin"),
        "{}",
        text(&out)
    );
    assert!(!file.exists());
    // A file that does not parse is named, with the line at fault.
    std::fs::write(&file, "[[token]]\nname = \"ci\"\ncolour = 1\n").unwrap();
    for args in [
        &["list", "--file", f][..],
        &["add", "x", "--role", "viewer", "--file", f],
        &["remove", "ci", "--file", f],
    ] {
        let out = token(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("{f}:3: token #1 \"ci\": unknown key \"colour\"")),
            "{}",
            text(&out)
        );
    }
}
