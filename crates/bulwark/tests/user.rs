//! `bulwark user`: the real binary over a password store in a temporary directory, checked by
//! parsing the file with `bulwark_auth` and verifying passwords against it. Covers add,
//! list, passwd, disable, enable, groups, remove, import-mosquitto, the policy refusals, and
//! broken or missing store files. Argon2 hashing is slow in debug builds, so few commands hash.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use bulwark_auth::password::{PasswordStore, Verdict};

const ALICE_PASSWORD: &str = "correct horse battery staple";
const ALICE_NEW_PASSWORD: &str = "quartz mango lantern violin";

mod common;
use common::TempDir;

/// Runs `bulwark user ARGS --file STORE` with `stdin` as its input.
fn user(store: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .arg("user")
        .args(args)
        .arg("--file")
        .arg(store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The command may exit before reading; a broken pipe is not the test's concern.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn succeeds(store: &Path, args: &[&str], stdin: &str) -> String {
    let out = user(store, args, stdin);
    assert!(
        out.status.success(),
        "bulwark user {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a command that must exit with `code` and an `error: ...` message; returns stderr.
#[track_caller]
fn fails(store: &Path, args: &[&str], stdin: &str, code: i32) -> String {
    let out = user(store, args, stdin);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "bulwark user {args:?}: {}{stderr}",
        text(&out.stdout)
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn load(store: &Path) -> PasswordStore {
    PasswordStore::parse(&std::fs::read_to_string(store).unwrap()).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn add_list_passwd_disable_enable_groups_remove() {
    let dir = TempDir::new("user", "life");
    // The store's directory does not exist yet: `add` creates it.
    let store = dir.0.join("data").join("passwords.toml");
    let added = succeeds(
        &store,
        &[
            "add",
            "alice",
            "--group",
            "ops",
            "--group",
            "dev",
            "--password-stdin",
        ],
        &format!("{ALICE_PASSWORD}\n"),
    );
    assert!(added.contains("alice"), "{added}");
    assert!(!added.contains(ALICE_PASSWORD), "{added}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&store), 0o600);
        assert_eq!(mode(&dir.0.join("data")), 0o700);
    }
    // No temporary file left behind.
    let entries: Vec<_> = std::fs::read_dir(dir.0.join("data")).unwrap().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    let parsed = load(&store);
    let alice = parsed.get("alice").unwrap().clone();
    assert!(
        alice
            .password
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    assert_eq!(alice.groups, ["ops", "dev"]);
    assert!(!alice.disabled);
    let scram256 = alice.scram_sha256.clone().unwrap();
    let scram512 = alice.scram_sha512.clone().unwrap();
    assert!(scram256.starts_with("i=4096,s="), "{scram256}");
    assert!(scram512.starts_with("i=4096,s="), "{scram512}");
    assert_eq!(
        parsed.verify("alice", ALICE_PASSWORD.as_bytes()),
        Verdict::Allow { upgrade: false }
    );
    assert_eq!(
        parsed.verify("alice", b"correct horse battery stapler"),
        Verdict::Deny
    );

    let listed = succeeds(&store, &["list"], "");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with("alice  groups: ops,dev  disabled: no  hash: argon2id"));
    assert!(listed.contains("SCRAM-SHA-256, SCRAM-SHA-512"), "{listed}");
    let salt_and_hash = alice.password.rsplit('$').next().unwrap();
    assert!(!listed.contains(salt_and_hash) && !listed.contains("$argon2id"));
    assert!(!listed.contains(&scram256) && !listed.contains(&scram512));

    // Weak passwords: refused with status 1, the file untouched, the password not echoed.
    let before = std::fs::read(&store).unwrap();
    for (name, weak, rule) in [
        ("bob", "password123", "too short"),
        ("bob", "short", "too short"),
        ("carol-the-admin", "carol-the-admin", "user name"),
        ("bob", "password1234", "guess"),
    ] {
        let err = fails(
            &store,
            &["add", name, "--password-stdin"],
            &format!("{weak}\n"),
            1,
        );
        assert!(err.contains("password refused"), "{weak}: {err}");
        assert!(err.to_lowercase().contains(rule), "{weak}: {err}");
        // ("short" is a word of the message itself.)
        assert!(weak == "short" || !err.contains(weak), "{weak}: {err}");
        assert_eq!(std::fs::read(&store).unwrap(), before, "{weak}");
    }
    let err = fails(
        &store,
        &["passwd", "alice", "--password-stdin"],
        "alice\n",
        1,
    );
    assert!(err.contains("password refused"), "{err}");
    // Refused before any password is read: an existing name, a name the store refuses.
    let err = fails(
        &store,
        &["add", "alice", "--password-stdin"],
        "another good passphrase here\n",
        1,
    );
    assert!(err.contains("already exists"), "{err}");
    let err = fails(
        &store,
        &["add", "a/b", "--password-stdin"],
        "another good passphrase here\n",
        1,
    );
    assert!(err.contains("invalid user name"), "{err}");
    // argon2id cost below the OWASP minimum: refused before any password is read.
    let err = fails(
        &store,
        &["add", "bob", "--password-stdin", "--argon2-memory", "4096"],
        "another good passphrase here\n",
        1,
    );
    assert!(err.contains("argon2id parameters refused"), "{err}");
    let err = fails(
        &store,
        &["add", "bob", "--password-stdin", "--argon2-passes", "1"],
        "another good passphrase here\n",
        1,
    );
    assert!(err.contains("argon2id parameters refused"), "{err}");
    // No password source.
    let err = fails(&store, &["add", "bob"], "", 2);
    assert!(err.contains("--password-stdin"), "{err}");
    let err = fails(&store, &["add", "bob", "--password-stdin"], "", 2);
    assert!(err.contains("no password"), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), before);

    // passwd: a new hash (here at a higher argon2id cost) and new SCRAM credentials; \r\n is
    // stripped.
    succeeds(
        &store,
        &[
            "passwd",
            "alice",
            "--password-stdin",
            "--argon2-memory",
            "32768",
            "--argon2-passes",
            "3",
        ],
        &format!("{ALICE_NEW_PASSWORD}\r\n"),
    );
    #[cfg(unix)]
    assert_eq!(mode(&store), 0o600);
    let parsed = load(&store);
    let changed = parsed.get("alice").unwrap();
    assert_ne!(changed.password, alice.password);
    assert!(
        changed.password.contains("m=32768,t=3,p=1"),
        "{}",
        changed.password
    );
    assert_ne!(changed.scram_sha256.as_deref().unwrap(), scram256);
    assert_ne!(changed.scram_sha512.as_deref().unwrap(), scram512);
    assert_eq!(changed.groups, ["ops", "dev"]);
    assert_eq!(
        parsed.verify("alice", ALICE_NEW_PASSWORD.as_bytes()),
        Verdict::Allow { upgrade: false }
    );
    assert_eq!(
        parsed.verify("alice", ALICE_PASSWORD.as_bytes()),
        Verdict::Deny
    );

    succeeds(&store, &["disable", "alice"], "");
    assert_eq!(
        load(&store).verify("alice", ALICE_NEW_PASSWORD.as_bytes()),
        Verdict::Disabled
    );
    assert!(succeeds(&store, &["list"], "").contains("disabled: yes"));
    succeeds(&store, &["enable", "alice"], "");
    assert_eq!(
        load(&store).verify("alice", ALICE_NEW_PASSWORD.as_bytes()),
        Verdict::Allow { upgrade: false }
    );

    succeeds(&store, &["groups", "alice", "admins"], "");
    assert_eq!(load(&store).get("alice").unwrap().groups, ["admins"]);
    let err = fails(&store, &["groups", "alice", "a+"], "", 1);
    assert!(err.contains("invalid group"), "{err}");
    succeeds(&store, &["groups", "alice"], "");
    assert!(load(&store).get("alice").unwrap().groups.is_empty());

    for command in ["disable", "enable", "remove"] {
        let err = fails(&store, &[command, "nobody"], "", 1);
        assert!(err.contains("no such user"), "{command}: {err}");
    }
    succeeds(&store, &["remove", "alice"], "");
    let parsed = load(&store);
    assert!(parsed.get("alice").is_none() && parsed.is_empty());
    let err = fails(&store, &["remove", "alice"], "", 1);
    assert!(err.contains("no such user"), "{err}");
    assert!(succeeds(&store, &["list"], "").starts_with("no users"));
}

#[test]
fn import_mosquitto_keeps_hashes_and_refuses_existing_names() {
    let dir = TempDir::new("user", "import");
    let mosquitto = dir.0.join("mosquitto.passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&mosquitto)
        .args(["alice", "s3cret-passphrase"])
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("mosquitto_passwd failed: {}", text(&out.stderr)),
        Err(err) => {
            eprintln!("note: mosquitto_passwd not runnable ({err}); test skipped");
            return;
        }
    }
    let store = dir.0.join("store").join("passwords.toml");
    let out = succeeds(
        &store,
        &[
            "import-mosquitto",
            mosquitto.to_str().unwrap(),
            "--group",
            "legacy",
        ],
        "",
    );
    assert!(out.contains("imported 1 user"), "{out}");
    // SCRAM keys come with the first password login (the server's hash upgrade, tested in
    // bulwark-server's an_imported_mosquitto_hash_works_and_is_upgraded_at_login), not only
    // with `bulwark user passwd`.
    assert!(
        out.contains("first password login")
            && out.contains("adds SCRAM-SHA-256/512 keys")
            && out.contains("cannot log in with SCRAM"),
        "{out}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&store), 0o600);
    let parsed = load(&store);
    let alice = parsed.get("alice").unwrap();
    assert!(alice.password.starts_with("$7$"));
    assert_eq!(alice.groups, ["legacy"]);
    assert!(alice.scram_sha256.is_none() && alice.scram_sha512.is_none());
    assert_eq!(
        parsed.verify("alice", b"s3cret-passphrase"),
        Verdict::Allow { upgrade: true }
    );
    assert_eq!(parsed.verify("alice", b"s3cret-passphrasE"), Verdict::Deny);
    let listed = succeeds(&store, &["list"], "");
    assert!(
        listed.contains("hash: mosquitto-pbkdf2 (will upgrade at next login)  scram: none"),
        "{listed}"
    );

    // A second file with a new user and alice again: refused, nothing written.
    let second = dir.0.join("second.passwd");
    let hash = std::fs::read_to_string(&mosquitto).unwrap();
    let hash = hash.trim().split_once(':').unwrap().1;
    std::fs::write(&second, format!("zed:{hash}\nalice:{hash}\n")).unwrap();
    let before = std::fs::read(&store).unwrap();
    let err = fails(
        &store,
        &["import-mosquitto", second.to_str().unwrap()],
        "",
        1,
    );
    assert!(
        err.contains("already exist") && err.contains("alice"),
        "{err}"
    );
    assert!(!err.contains("zed"), "{err}");
    assert!(!err.contains(hash), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), before);

    // A Mosquitto file with a bad line: status 2, the line named, the secret not shown.
    let bad = dir.0.join("bad.passwd");
    std::fs::write(&bad, "bob:plaintext-secret\n").unwrap();
    let err = fails(&store, &["import-mosquitto", bad.to_str().unwrap()], "", 2);
    assert!(err.contains("line 1"), "{err}");
    assert!(!err.contains("plaintext-secret"), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), before);
}

#[test]
fn broken_or_missing_store_is_never_written() {
    let dir = TempDir::new("user", "broken");
    let store = dir.0.join("passwords.toml");
    let broken = "[[user]]\nname = \"a+b\"\npassword = \"$argon2id$nope\"\n\n\
                  [[user]]\nname = \"ok\"\npassword = \"x\"\ncolour = \"red\"\n";
    std::fs::write(&store, broken).unwrap();
    for args in [
        &["list"][..],
        &["remove", "ok"],
        &["add", "new-user", "--password-stdin"],
    ] {
        let err = fails(&store, args, "another good passphrase here\n", 2);
        assert!(err.contains("4 problem(s)"), "{args:?}: {err}");
        assert!(err.contains("user #1 \"a+b\""), "{err}");
        assert!(
            err.contains("user #2 \"ok\": unknown key \"colour\""),
            "{err}"
        );
        assert!(err.contains(store.to_str().unwrap()), "{err}");
        assert_eq!(std::fs::read_to_string(&store).unwrap(), broken);
    }
    std::fs::write(&store, "[[user]\n").unwrap();
    let err = fails(&store, &["list"], "", 2);
    assert!(err.contains("line 1: not valid TOML"), "{err}");

    // Missing store: only add and import-mosquitto create one.
    let missing = dir.0.join("missing").join("passwords.toml");
    for args in [
        &["list"][..],
        &["remove", "alice"],
        &["disable", "alice"],
        &["enable", "alice"],
        &["groups", "alice", "ops"],
        &["passwd", "alice", "--password-stdin"],
    ] {
        let err = fails(&missing, args, "another good passphrase here\n", 2);
        assert!(err.contains(missing.to_str().unwrap()), "{args:?}: {err}");
        assert!(!dir.0.join("missing").exists(), "{args:?}");
    }
}
