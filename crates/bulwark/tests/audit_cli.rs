//! `bulwark audit` through the binary: `verify` (exit 0 intact, 1 tampered, 2 bad input; the
//! text names the changed line; `--json` parses; `--strict`), `key --base64`, and `show`'s
//! filters. The trail is built with `bulwark_audit::Chain` as the broker's writer builds it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::path::{Path, PathBuf};

use bulwark_audit::{AuditKey, Chain};
use common::{TempDir, output_text as text, run_bulwark};

const TIME: &str = "2026-12-08T10:00:00.000Z";

/// A trail of two segments, as the broker leaves it after a rotation and an orderly stop,
/// with its key files beside it.
struct Trail {
    dir: TempDir,
    /// The rotated segment, then the active one.
    files: [PathBuf; 2],
    /// The lines of both, in order (LF excluded).
    lines: Vec<String>,
    key: PathBuf,
    public: PathBuf,
    /// The checkpoints' `key` member.
    key_base64: String,
}

impl Trail {
    fn new(name: &str) -> Self {
        let dir = TempDir::new("audit-cli", name);
        let key = AuditKey::generate().unwrap();
        let key_file = dir.0.join("audit-signing.key");
        let public = dir.0.join("audit-signing.pub");
        std::fs::write(&key_file, key.to_pem().unwrap()).unwrap();
        std::fs::write(&public, key.public().to_pem().unwrap()).unwrap();

        let mut chain = Chain::new();
        let mut rotated = vec![chain.append(&format!(
            r#"{{"time":"{TIME}","kind":"trail_start","version":"0.1.0","key":"{}","reason":"broker started"}}"#,
            key.public().base64()
        ))];
        for (i, (kind, user)) in [
            ("auth_failure", "mallory"),
            ("auth_success", "alice"),
            ("auth_failure", "mallory"),
        ]
        .into_iter()
        .enumerate()
        {
            rotated.push(chain.append(&format!(
                r#"{{"time":"2026-12-08T10:00:0{i}.000Z","kind":"{kind}","remote":"192.0.2.{i}:5000","client_id":"c-{i}","username":"{user}","method":"password"}}"#
            )));
        }
        rotated.push(chain.checkpoint("2026-12-08T10:00:05.000Z", &key));
        let first_active = chain.next_seq();
        let mut active = vec![chain.append(
            r#"{"time":"2026-12-08T10:01:00.000Z","kind":"acl_denied","client_id":"c-9","username":"alice","action":"publish","topic":"bob/x"}"#,
        )];
        active.push(chain.append(
            r#"{"time":"2026-12-08T10:02:00.000Z","kind":"trail_stop","reason":"broker stopped"}"#,
        ));
        active.push(chain.checkpoint("2026-12-08T10:02:00.001Z", &key));

        let files = [
            dir.0.join("audit.000000000001.jsonl"),
            dir.0.join("audit.jsonl"),
        ];
        assert_eq!(first_active, 6);
        write_lines(&files[0], &rotated);
        write_lines(&files[1], &active);
        let lines = rotated.into_iter().chain(active).collect();
        Self {
            files,
            lines,
            key: key_file,
            public,
            key_base64: key.public().base64(),
            dir,
        }
    }

    fn file_args(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.to_str().unwrap()).collect()
    }

    fn verify(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["audit", "verify", "--key", self.public.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend(self.file_args());
        run_bulwark(&args)
    }

    /// Replaces `from` with `to` in the active segment (`audit.jsonl`).
    fn edit_active(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.files[1]).unwrap();
        assert!(text.contains(from), "{from} not in {text}");
        std::fs::write(&self.files[1], text.replacen(from, to, 1)).unwrap();
    }
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", text(out)))
}

#[test]
fn verify_says_intact_with_exit_0_and_json() {
    let trail = Trail::new("intact");
    let out = trail.verify(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("result: intact"), "{said}");
    assert!(
        said.contains("2 file(s), 8 record(s) (seq 1 to 8); 2 checkpoint(s) verified with the trusted key, signed to seq 8"),
        "{said}"
    );
    assert!(
        !said.contains("TAMPERING") && !said.contains("warning"),
        "{said}"
    );

    let out = trail.verify(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["intact"], true);
    assert_eq!(report["files"], 2);
    assert_eq!(report["records"], 8);
    assert_eq!(report["first_seq"], 1);
    assert_eq!(report["last_seq"], 8);
    assert_eq!(report["checkpoints"], 2);
    assert_eq!(report["signed_to"], 8);
    assert_eq!(report["trusted_key"], true);
    assert_eq!(report["keys"], serde_json::json!([trail.key_base64]));
    assert_eq!(report["findings"], serde_json::json!([]));

    // Given in any order, with the active segment first, the same.
    let mut args = vec!["audit", "verify", "--key", trail.public.to_str().unwrap()];
    args.push(trail.files[1].to_str().unwrap());
    args.push(trail.files[0].to_str().unwrap());
    let out = run_bulwark(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn verify_names_the_changed_line_with_exit_1() {
    let trail = Trail::new("tampered");
    // The acl_denied record (line 1 of the active segment, seq 6) made to say someone else.
    trail.edit_active(r#""username":"alice""#, r#""username":"carol""#);
    let out = trail.verify(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    let active = trail.files[1].display().to_string();
    assert!(
        said.lines()
            .any(|l| l.starts_with(&format!("TAMPERING: {active}:1: seq 6 was changed"))),
        "{said}"
    );
    assert!(said.contains("result: TAMPERED"), "{said}");

    let out = trail.verify(&["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["intact"], false);
    let findings = report["findings"].as_array().unwrap();
    let modified: Vec<&serde_json::Value> = findings
        .iter()
        .filter(|f| f["kind"] == "modified")
        .collect();
    assert_eq!(modified.len(), 1, "{findings:#?}");
    assert_eq!(modified[0]["severity"], "tampering");
    assert_eq!(modified[0]["file"], active.as_str());
    assert_eq!(modified[0]["line"], 1);
    assert_eq!(modified[0]["seq"], 6);
}

#[test]
fn verify_fails_with_exit_2_on_what_it_cannot_read() {
    let trail = Trail::new("bad-input");
    let missing = trail.dir.0.join("audit.000000000099.jsonl");
    let out = run_bulwark(&[
        "audit",
        "verify",
        "--key",
        trail.public.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(missing.to_str().unwrap()),
        "{}",
        text(&out)
    );

    // A key file that is not a key.
    let not_a_key = trail.dir.0.join("not-a-key.pub");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    let mut args = vec!["audit", "verify", "--key", not_a_key.to_str().unwrap()];
    args.extend(trail.file_args());
    let out = run_bulwark(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // A directory instead of its files.
    let out = run_bulwark(&["audit", "verify", trail.dir.0.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is a directory"), "{}", text(&out));
}

#[test]
fn verify_strict_fails_on_a_warning() {
    let trail = Trail::new("strict");
    // The broker stopped while writing a record: a warning, not tampering.
    let mut bytes = std::fs::read(&trail.files[1]).unwrap();
    bytes.extend_from_slice(br#"{"seq":9,"prev":"#);
    std::fs::write(&trail.files[1], bytes).unwrap();
    let out = trail.verify(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("warning: "), "{}", text(&out));
    let out = trail.verify(&["--strict"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("result: warnings (--strict)"),
        "{}",
        text(&out)
    );
}

#[test]
fn verify_with_an_anchor_finds_a_cut_end() {
    let trail = Trail::new("anchor");
    let anchor = trail.dir.0.join("checkpoints.jsonl");
    let checkpoints: Vec<String> = trail
        .lines
        .iter()
        .filter(|l| l.contains(r#""kind":"checkpoint""#))
        .cloned()
        .collect();
    assert_eq!(checkpoints.len(), 2);
    write_lines(&anchor, &checkpoints);
    let out = trail.verify(&["--anchor", anchor.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("2 matched in the exported copies"),
        "{}",
        text(&out)
    );

    // The stop record and the last checkpoint cut off the end.
    write_lines(&trail.files[1], &trail.lines[5..6]);
    let out = trail.verify(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "without the export a cut end shows nothing: {}",
        text(&out)
    );
    let out = trail.verify(&["--anchor", anchor.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "TAMPERING: {}:2: seq 8 was exported",
            anchor.display()
        )),
        "{said}"
    );
}

#[test]
fn key_prints_the_key_the_checkpoints_carry() {
    let trail = Trail::new("key");
    for file in [&trail.key, &trail.public] {
        let out = run_bulwark(&[
            "audit",
            "key",
            "--key-file",
            file.to_str().unwrap(),
            "--base64",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(printed.trim(), trail.key_base64);
    }
    for line in trail
        .lines
        .iter()
        .filter(|l| l.contains(r#""kind":"checkpoint""#))
    {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["key"], trail.key_base64.as_str());
    }
    let out = run_bulwark(&["audit", "key", "--key-file", trail.key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(&trail.public).unwrap()
    );
    let missing = trail.dir.0.join("nothing.key");
    let out = run_bulwark(&["audit", "key", "--key-file", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn show_filters_by_kind_and_user() {
    let trail = Trail::new("show");
    let show = |extra: &[&str]| {
        let mut args = vec!["audit", "show"];
        args.extend_from_slice(extra);
        // The active segment first: records come out by seq all the same.
        args.push(trail.files[1].to_str().unwrap());
        args.push(trail.files[0].to_str().unwrap());
        run_bulwark(&args)
    };
    let out = show(&["--kind", "auth_failure"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let shown: Vec<&str> = stdout.lines().collect();
    assert_eq!(shown.len(), 2, "{stdout}");
    for line in &shown {
        assert!(line.contains(" auth_failure "), "{line}");
        assert!(line.contains(r#"username="mallory""#), "{line}");
    }
    // Oldest first.
    assert!(
        shown[0].contains("2026-12-08T10:00:00.000Z auth_failure"),
        "{stdout}"
    );
    assert!(
        shown[1].contains("2026-12-08T10:00:02.000Z auth_failure"),
        "{stdout}"
    );
    assert!(text(&out).contains("2 of 8 record(s)"), "{}", text(&out));

    // As written, for jq.
    let out = show(&["--kind", "auth_failure", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, [trail.lines[1].as_str(), trail.lines[3].as_str()]);

    // Kinds repeat; other filters narrow.
    let out = show(&["--kind", "auth_success", "--kind", "acl_denied", "--json"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let out = show(&["--user", "alice", "--kind", "acl_denied", "--json"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [trail.lines[5].as_str()]
    );
    let out = show(&[
        "--since",
        "2026-12-08T10:00:01Z",
        "--until",
        "2026-12-08T10:01:00Z",
        "--json",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        ["auth_success", "auth_failure", "checkpoint"],
        "{stdout}"
    );
}
