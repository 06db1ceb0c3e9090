//! `bulwark ban` through the binary: add, list, remove, and the refusals with their statuses.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::process::Output;

use common::{output_text as text, run_bulwark};

fn ban(args: &[&str]) -> Output {
    run_bulwark(&[&["ban"], args].concat())
}

#[test]
fn bans_are_added_listed_and_removed() {
    let dir = std::env::temp_dir().join(format!("bulwark-ban-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join("data/bans.toml");
    let f = file.to_str().unwrap();
    let out = ban(&[
        "add",
        "--address",
        "203.0.113.0/24",
        "--for",
        "2h",
        "--reason",
        "scans",
        "--file",
        f,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The end is a date, not a count of seconds since 1970.
    let said = text(&out);
    assert!(said.contains("for 2h (until 20"), "{said}");
    assert!(
        said.trim_end().ends_with("Z)") && !said.contains("Unix time"),
        "{said}"
    );
    let out = ban(&["add", "--client-id", "bad-device", "--file", f]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ban(&["list", "--file", f]);
    let listed = text(&out);
    assert!(
        listed.contains("address 203.0.113.0/24") && listed.contains("scans"),
        "{listed}"
    );
    assert!(
        listed.contains("client id \"bad-device\"") && listed.contains("until removed"),
        "{listed}"
    );
    // The file is what the broker reads.
    let list = bulwark_server::bans::load(&file).unwrap();
    assert_eq!(list.bans().len(), 2);

    let out = ban(&["remove", "--client-id", "bad-device", "--file", f]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ban(&["remove", "--client-id", "bad-device", "--file", f]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for bad in [
        &["add", "--address", "300.1.2.3", "--file", f][..],
        &["add", "--username", "u", "--for", "5w", "--file", f],
        &["add", "--username", "", "--file", f],
    ] {
        let out = ban(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
    }
    let out = ban(&[
        "add",
        "--address",
        "10.0.0.1",
        "--client-id",
        "b",
        "--file",
        f,
    ]);
    assert!(!out.status.success(), "an address goes alone");
    // A username and a client id together: that user's use of that id (an automatic flapping
    // ban is lifted the same way).
    let out = ban(&[
        "add",
        "--username",
        "bob",
        "--client-id",
        "shared",
        "--file",
        f,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ban(&["list", "--file", f]);
    assert!(
        text(&out).contains("client id \"shared\" of user \"bob\""),
        "{}",
        text(&out)
    );
    let out = ban(&[
        "remove",
        "--username",
        "bob",
        "--client-id",
        "shared",
        "--file",
        f,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&file, "[[ban]]\nwho = \"x\"\n").unwrap();
    let out = ban(&["list", "--file", f]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
