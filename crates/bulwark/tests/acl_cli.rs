//! `bulwark acl`: the real binary in a temporary directory. `check` over the seed rules (the
//! verdict, the deciding rule's `file:line`, the exit status), with groups from a password
//! store and files found through a configuration or the data directory; `lint` findings;
//! `import-mosquitto` of a sample acl_file, then `check` against what it wrote.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::path::Path;
use std::process::Command;

use bulwark_auth::password::PasswordStore;

mod common;
use common::TempDir;

const SEED: &str = r##"
# every client: its own subtree
[[rule]]
permission = "allow"
action = "all"
topic = "devices/{client_id}/#"

[[rule]]
permission = "allow"
action = "subscribe"
group = "readers"
topic = "sensor/#"

[[rule]]
permission = "allow"
action = "publish"
group = "controllers"
topic = "actuator/#"
max_qos = 1
retain = false

[[rule]]
permission = "allow"
action = "all"
group = "admins"
topics = ["admin/#", "#", "$SYS/#"]

[[rule]]
permission = "allow"
action = "all"
user = ["east1", "east2"]
topic = "region/us-east/#"

[[rule]]
permission = "deny"
action = "all"
topic = "sensor/secret/#"
"##;

/// What a run printed and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `bulwark ARGS` in `dir`.
fn bulwark(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `bulwark acl check ARGS` in `dir` and returns its one line of verdict.
#[track_caller]
fn check(dir: &Path, args: &[&str], code: i32) -> String {
    let run = bulwark(dir, &[&["acl", "check"], args].concat());
    assert_eq!(
        run.code, code,
        "acl check {args:?}: {}{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// `check` with `--file acl.toml --user USER --client-id ID`, then `rest`.
#[track_caller]
fn as_user(dir: &Path, user: &str, id: &str, rest: &[&str], code: i32) -> String {
    let args = [
        &["--file", "acl.toml", "--user", user, "--client-id", id][..],
        rest,
    ]
    .concat();
    check(dir, &args, code)
}

fn seeded(name: &str) -> TempDir {
    let dir = TempDir::new("acl", name);
    std::fs::write(dir.0.join("acl.toml"), SEED).unwrap();
    dir
}

/// A store of users and their groups; the hashes are well-formed placeholders.
fn write_store(path: &Path, users: &[(&str, &[&str])]) {
    let placeholder = format!("$6${}${}", "A".repeat(22) + "==", "A".repeat(86) + "==");
    let mut store = PasswordStore::new();
    for (name, groups) in users {
        store
            .add(
                name,
                &placeholder,
                groups.iter().map(|g| (*g).to_owned()).collect(),
            )
            .unwrap();
    }
    std::fs::write(path, store.to_toml()).unwrap();
}

/// The line of the `[[rule]]` header right after the comment `comment` in `text`.
fn rule_line(text: &str, comment: &str) -> usize {
    let at = text.lines().position(|l| l == comment).unwrap();
    assert_eq!(text.lines().nth(at + 1), Some("[[rule]]"), "{text}");
    at + 2
}

#[test]
fn check_explains_the_seed_patterns() {
    let dir = seeded("seed");
    let d = &dir.0;
    assert_eq!(
        as_user(d, "d1", "dev-1", &["publish", "devices/dev-1/temp"], 0),
        "ALLOW  acl.toml:3  allow all devices/{client_id}/#\n"
    );
    assert_eq!(
        as_user(d, "d1", "dev-1", &["subscribe", "devices/dev-1/#"], 0),
        "ALLOW  acl.toml:3  allow all devices/{client_id}/#  granted QoS 2\n"
    );
    // Client identifiers that would widen the template match nothing.
    let default_deny = "DENY  (no rule allows it: default deny)\n";
    assert_eq!(
        as_user(d, "d1", "+", &["subscribe", "devices/+/#"], 1),
        default_deny
    );
    assert_eq!(
        as_user(d, "d1", "#", &["subscribe", "devices/#"], 1),
        default_deny
    );
    assert_eq!(
        as_user(d, "d1", "a/b", &["publish", "devices/a/b/x"], 1),
        default_deny
    );
    assert_eq!(
        as_user(d, "d1", "dev-1", &["publish", "devices/dev-2/x"], 1),
        default_deny
    );

    // sensor/# is read-only, and never reaches sensor/secret: a subscription to it is granted
    // with sensor/secret/# carved out; one inside sensor/secret/ is refused.
    let reader = |rest: &[&str], code| {
        as_user(
            d,
            "r",
            "r1",
            &[&["--group", "readers"], rest].concat(),
            code,
        )
    };
    assert_eq!(
        reader(&["subscribe", "sensor/open/+", "--qos", "1"], 0),
        "ALLOW  acl.toml:8  allow subscribe sensor/# group=readers  granted QoS 1\n"
    );
    assert_eq!(
        reader(&["subscribe", "sensor/#"], 0),
        "ALLOW  acl.toml:8  allow subscribe sensor/# group=readers  granted QoS 2\n  except  acl.toml:34  deny all sensor/secret/#\n  (carve-outs: messages to the topics these deny rules cover are not delivered)\n"
    );
    assert_eq!(
        reader(&["subscribe", "sensor/secret/+"], 1),
        "DENY  acl.toml:34  deny all sensor/secret/#\n"
    );
    assert_eq!(reader(&["publish", "sensor/open/x"], 1), default_deny);
    // A shared subscription is checked on its filter.
    assert_eq!(
        reader(&["subscribe", "$share/g/sensor/open/#"], 0),
        "ALLOW  acl.toml:8  allow subscribe sensor/# group=readers  granted QoS 2\n"
    );
    assert_eq!(
        reader(&["subscribe", "$share/g/sensor/#"], 0),
        "ALLOW  acl.toml:8  allow subscribe sensor/# group=readers  granted QoS 2\n  except  acl.toml:34  deny all sensor/secret/#\n  (carve-outs: messages to the topics these deny rules cover are not delivered)\n"
    );

    // actuator/# is write-only for controllers, at most QoS 1, never retained.
    let controller = |rest: &[&str], code| {
        as_user(
            d,
            "c",
            "c1",
            &[&["--group", "controllers"], rest].concat(),
            code,
        )
    };
    let actuator = "acl.toml:14  allow publish actuator/# group=controllers max_qos=1 retain=false";
    assert_eq!(
        controller(&["publish", "actuator/valve", "--qos", "1"], 0),
        format!("ALLOW  {actuator}\n")
    );
    assert_eq!(
        controller(&["publish", "actuator/valve", "--qos", "2"], 1),
        format!("DENY  {actuator}\n  the allowing rule (acl.toml:14) allows at most QoS 1\n")
    );
    assert_eq!(
        controller(&["publish", "actuator/valve", "--retain"], 1),
        format!("DENY  {actuator}\n  the allowing rule (acl.toml:14) does not allow retain\n")
    );
    assert_eq!(controller(&["subscribe", "actuator/#"], 1), default_deny);
    assert_eq!(
        as_user(d, "u", "u1", &["publish", "actuator/valve"], 1),
        default_deny
    );

    // admin/# and $SYS/# for admins only.
    let admin = |rest: &[&str], code| {
        as_user(
            d,
            "root",
            "a",
            &[&["--group", "admins"], rest].concat(),
            code,
        )
    };
    assert_eq!(
        admin(&["subscribe", "admin/#"], 0),
        "ALLOW  acl.toml:22  allow all admin/# # $SYS/# group=admins  granted QoS 2\n"
    );
    assert!(admin(&["subscribe", "$SYS/#", "--qos", "0"], 0).starts_with("ALLOW  acl.toml:22  "));
    assert_eq!(
        admin(&["publish", "sensor/secret/k"], 1),
        "DENY  acl.toml:34  deny all sensor/secret/#\n"
    );
    assert_eq!(
        admin(&["publish", "$SYS/broker/uptime"], 1),
        "DENY  (the broker refuses every client publish to $SYS, whatever the rules)\n"
    );
    assert_eq!(
        as_user(d, "u", "u1", &["subscribe", "$SYS/#"], 1),
        default_deny
    );
    assert_eq!(
        as_user(d, "u", "u1", &["subscribe", "admin/#"], 1),
        default_deny
    );

    // region/us-east/# for two named users.
    assert_eq!(
        as_user(
            d,
            "east2",
            "e",
            &["subscribe", "region/us-east/#", "--qos", "1"],
            0
        ),
        "ALLOW  acl.toml:28  allow all region/us-east/# user=east1,east2  granted QoS 1\n"
    );
    assert_eq!(
        as_user(d, "east2", "e", &["subscribe", "region/#"], 1),
        default_deny
    );
    assert_eq!(
        as_user(d, "west", "w", &["publish", "region/us-east/a"], 1),
        default_deny
    );

    // Anonymous clients: no rule of the seed speaks of them.
    assert_eq!(
        check(
            d,
            &[
                "--file",
                "acl.toml",
                "--anonymous",
                "--client-id",
                "dev-1",
                "publish",
                "devices/dev-1/x"
            ],
            1
        ),
        default_deny
    );
}

#[test]
fn check_refuses_bad_input() {
    let dir = seeded("bad");
    let d = &dir.0;
    let bad = |args: &[&str]| {
        let run = bulwark(d, &[&["acl", "check"], args].concat());
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        run.stderr
    };
    let stderr = bad(&[
        "--file",
        "acl.toml",
        "--user",
        "u",
        "--client-id",
        "c",
        "publish",
        "a/+",
    ]);
    assert!(
        stderr.starts_with("error: \"a/+\" is not a topic name"),
        "{stderr}"
    );
    let stderr = bad(&[
        "--file",
        "acl.toml",
        "--user",
        "u",
        "--client-id",
        "c",
        "subscribe",
        "a/#/b",
    ]);
    assert!(
        stderr.starts_with("error: \"a/#/b\" is not a topic filter"),
        "{stderr}"
    );
    let stderr = bad(&[
        "--file",
        "acl.toml",
        "--user",
        "u",
        "--client-id",
        "c",
        "subscribe",
        "$share/g",
    ]);
    assert!(stderr.contains("not a topic filter"), "{stderr}");
    // --user is required unless the client is anonymous.
    bad(&["--file", "acl.toml", "--client-id", "c", "publish", "a"]);
    bad(&[
        "--file",
        "acl.toml",
        "--anonymous",
        "--user",
        "u",
        "--client-id",
        "c",
        "publish",
        "a",
    ]);
    let stderr = bad(&[
        "--file",
        "missing.toml",
        "--user",
        "u",
        "--client-id",
        "c",
        "publish",
        "a",
    ]);
    assert!(stderr.contains("missing.toml"), "{stderr}");
    let stderr = bad(&[
        "--file",
        "acl.toml",
        "--passwords",
        "nobody.toml",
        "--user",
        "u",
        "--client-id",
        "c",
        "publish",
        "a",
    ]);
    assert_eq!(
        stderr,
        "error: no password store at nobody.toml (pass --passwords)\n"
    );
    // Every problem of a broken file, each with its line.
    std::fs::write(
        d.join("broken.toml"),
        "[[rule]]\npermission = \"maybe\"\naction = \"all\"\ntopic = \"a\"\n\n[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"a/#/b\"\n",
    )
    .unwrap();
    let stderr = bad(&[
        "--file",
        "broken.toml",
        "--user",
        "u",
        "--client-id",
        "c",
        "publish",
        "a",
    ]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("error: broken.toml:1: permission"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("error: broken.toml:6: \"a/#/b\""),
        "{stderr}"
    );
}

#[test]
fn check_finds_files_and_groups() {
    let dir = seeded("groups");
    let d = &dir.0;
    write_store(
        &d.join("passwords.toml"),
        &[("carol", &["controllers"]), ("dave", &[])],
    );
    let actuator = ["publish", "actuator/valve"];
    // The store's groups, from --passwords or from the configuration's password_file.
    let with_store = [
        &[
            "--file",
            "acl.toml",
            "--passwords",
            "passwords.toml",
            "--user",
            "carol",
            "--client-id",
            "c",
        ][..],
        &actuator,
    ]
    .concat();
    assert!(check(d, &with_store, 0).starts_with("ALLOW  acl.toml:14  "));
    let without = [
        &["--file", "acl.toml", "--user", "carol", "--client-id", "c"][..],
        &actuator,
    ]
    .concat();
    check(d, &without, 1);
    std::fs::create_dir(d.join("conf")).unwrap();
    std::fs::write(
        d.join("conf/broker.toml"),
        "[[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:1883\"\n\n[auth]\npassword_file = \"../passwords.toml\"\n\n[acl]\nfile = \"../acl.toml\"\n",
    )
    .unwrap();
    let by_config = [
        &[
            "--config",
            "conf/broker.toml",
            "--user",
            "carol",
            "--client-id",
            "c",
        ][..],
        &actuator,
    ]
    .concat();
    let line = check(d, &by_config, 0);
    assert!(
        line.starts_with("ALLOW  conf/../acl.toml:14  allow publish actuator/#"),
        "{line}"
    );
    // A user the store does not know: only --group applies, and a note says so.
    let run = bulwark(
        d,
        &[
            "acl",
            "check",
            "--config",
            "conf/broker.toml",
            "--user",
            "erin",
            "--group",
            "controllers",
            "--client-id",
            "c",
            "publish",
            "actuator/valve",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("no user \"erin\" in the password store"),
        "{}",
        run.stderr
    );
    // --file and --config are one or the other.
    let run = bulwark(
        d,
        &[&["acl", "check", "--file", "acl.toml"][..], &by_config].concat(),
    );
    assert_eq!(run.code, 2);

    // No flags: the data directory's acl.toml and passwords.toml.
    let data = d.join("bulwark-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("acl.toml"), SEED).unwrap();
    let plain = [&["--user", "carol", "--client-id", "c"][..], &actuator].concat();
    check(d, &plain, 1);
    write_store(&data.join("passwords.toml"), &[("carol", &["controllers"])]);
    assert_eq!(
        check(d, &plain, 0),
        "ALLOW  bulwark-data/acl.toml:14  allow publish actuator/# group=controllers max_qos=1 retain=false\n"
    );
}

const LINTED: &str = r##"[[rule]]
permission = "allow"
action = "subscribe"
topic = "#"

[[rule]]
permission = "deny"
action = "all"
topic = "sensor/secret/#"

[[rule]]
permission = "allow"
action = "publish"
group = "controllers"
topic = "sensor/secret/valve"

[[rule]]
permission = "allow"
action = "all"
listener = "tls-9"
topic = "edge/#"

[[rule]]
permission = "allow"
action = "all"
group = "admins"
topic = "#"
"##;

#[test]
fn lint_reports_findings() {
    let dir = TempDir::new("acl", "lint");
    let d = &dir.0;
    std::fs::write(d.join("acl.toml"), LINTED).unwrap();
    std::fs::write(
        d.join("broker.toml"),
        "[[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:1883\"\n\n[acl]\nfile = \"acl.toml\"\n",
    )
    .unwrap();
    let run = bulwark(d, &["acl", "lint", "--config", "broker.toml"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout,
        "acl.toml:1: allow subscribe # grants every topic to clients outside the admin groups (admin, admins)\n\
         acl.toml:11: allow publish sensor/secret/valve group=controllers is shadowed by the deny at acl.toml:6 (a deny beats any allow)\n\
         acl.toml:17: allow all edge/# listener=tls-9 never matches: the configuration has no listener \"tls-9\" (its listeners: edge)\n\
         3 findings\n"
    );
    // Without the configuration, listener names are unknown.
    let run = bulwark(d, &["acl", "lint", "--file", "acl.toml"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.ends_with("\n2 findings\n"), "{}", run.stdout);
    // Users and groups against the store.
    write_store(&d.join("passwords.toml"), &[("root", &["admins"])]);
    let run = bulwark(
        d,
        &[
            "acl",
            "lint",
            "--file",
            "acl.toml",
            "--passwords",
            "passwords.toml",
        ],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("acl.toml:11: allow publish sensor/secret/valve group=controllers never matches: no user of the password store is in the group \"controllers\"\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.ends_with("\n3 findings\n"), "{}", run.stdout);

    std::fs::write(d.join("clean.toml"), SEED).unwrap();
    let run = bulwark(d, &["acl", "lint", "--file", "clean.toml"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "no findings\n"),
        "{}",
        run.stderr
    );

    std::fs::write(d.join("broken.toml"), "[[rule]]\npermission = \"allow\"\n").unwrap();
    let run = bulwark(d, &["acl", "lint", "--file", "broken.toml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("broken.toml:1: action missing"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("broken.toml:1: topic missing"),
        "{}",
        run.stderr
    );
}

const MOSQUITTO: &str = "# Mosquitto acl_file
topic read public/#

user alice
topic readwrite alice/#
topic write sensors/alice/temp
  topic deny alice/secret

user bob
topic read sensors/#
topic plain/#

pattern write devices/%c/status
pattern read users/%u/inbox
";

#[test]
fn import_mosquitto_then_check() {
    let dir = TempDir::new("acl", "import");
    let d = &dir.0;
    std::fs::write(d.join("mosquitto.acl"), MOSQUITTO).unwrap();
    let run = bulwark(
        d,
        &[
            "acl",
            "import-mosquitto",
            "mosquitto.acl",
            "--out",
            "acl.toml",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("converted 8 rule(s)"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("only if every topic its filter can match is allowed"),
        "{}",
        run.stderr
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("acl.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let toml = std::fs::read_to_string(d.join("acl.toml")).unwrap();
    let at = |comment: &str| format!("acl.toml:{}", rule_line(&toml, comment));

    // Topics before the first user: anonymous clients.
    let anonymous = |args: &[&str], code| {
        check(
            d,
            &[
                &["--file", "acl.toml", "--anonymous", "--client-id", "x"][..],
                args,
            ]
            .concat(),
            code,
        )
    };
    let line = anonymous(&["subscribe", "public/#"], 0);
    assert!(
        line.starts_with(&format!(
            "ALLOW  {}  allow subscribe public/# clients=anonymous",
            at("# line 2: topic read public/#")
        )),
        "{line}"
    );
    anonymous(&["publish", "public/x"], 1);
    as_user(d, "alice", "a", &["subscribe", "public/#"], 1);

    // A user's block: readwrite, write, deny.
    let line = as_user(d, "alice", "a", &["publish", "alice/notes"], 0);
    assert!(
        line.starts_with(&format!(
            "ALLOW  {}  allow all alice/# user=alice",
            at("# line 5: topic readwrite alice/#")
        )),
        "{line}"
    );
    // Her subtree but her secret: granted with the deny as a carve-out.
    let line = as_user(d, "alice", "a", &["subscribe", "alice/#", "--qos", "1"], 0);
    assert!(
        line.contains(&format!(
            "\n  except  {}  deny all alice/secret user=alice\n",
            at("# line 7: topic deny alice/secret")
        )),
        "{line}"
    );
    as_user(
        d,
        "alice",
        "a",
        &["subscribe", "alice/secret", "--qos", "1"],
        1,
    );
    let line = as_user(d, "alice", "a", &["publish", "alice/secret"], 1);
    assert_eq!(
        line,
        format!(
            "DENY  {}  deny all alice/secret user=alice\n",
            at("# line 7: topic deny alice/secret")
        )
    );
    as_user(d, "alice", "a", &["publish", "sensors/alice/temp"], 0);
    as_user(d, "alice", "a", &["subscribe", "sensors/alice/temp"], 1);
    as_user(d, "bob", "b", &["publish", "alice/notes"], 1);

    // read is subscribe only; no access word is readwrite.
    as_user(d, "bob", "b", &["subscribe", "sensors/#"], 0);
    as_user(d, "bob", "b", &["publish", "sensors/x"], 1);
    as_user(d, "bob", "b", &["publish", "plain/x"], 0);
    as_user(d, "bob", "b", &["subscribe", "plain/#"], 0);

    // Patterns: every client, %c and %u substituted.
    let line = as_user(d, "bob", "dev7", &["publish", "devices/dev7/status"], 0);
    assert!(
        line.starts_with(&format!(
            "ALLOW  {}  allow publish devices/{{client_id}}/status clients=any",
            at("# line 13: pattern write devices/%c/status")
        )),
        "{line}"
    );
    as_user(d, "bob", "dev7", &["publish", "devices/dev8/status"], 1);
    anonymous(&["publish", "devices/x/status"], 0);
    as_user(d, "bob", "b", &["subscribe", "users/bob/inbox"], 0);
    as_user(d, "bob", "b", &["subscribe", "users/alice/inbox"], 1);
    anonymous(&["subscribe", "users/x/inbox"], 1);

    // The converted file is clean but for what Mosquitto meant too.
    let lint = bulwark(d, &["acl", "lint", "--file", "acl.toml"]);
    assert_eq!(
        (lint.code, lint.stdout.as_str()),
        (0, "no findings\n"),
        "{}",
        lint.stderr
    );

    // An existing output file is replaced only with --force.
    let again = bulwark(
        d,
        &[
            "acl",
            "import-mosquitto",
            "mosquitto.acl",
            "--out",
            "acl.toml",
        ],
    );
    assert_eq!(again.code, 1, "{}{}", again.stdout, again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let forced = bulwark(
        d,
        &[
            "acl",
            "import-mosquitto",
            "mosquitto.acl",
            "--out",
            "acl.toml",
            "--force",
        ],
    );
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(std::fs::read_to_string(d.join("acl.toml")).unwrap(), toml);

    // Without --out: the rules on stdout, nothing else there.
    let printed = bulwark(d, &["acl", "import-mosquitto", "mosquitto.acl"]);
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    assert_eq!(printed.stdout, toml);
}

#[test]
fn import_mosquitto_reports_bad_lines() {
    let dir = TempDir::new("acl", "import-bad");
    let d = &dir.0;
    std::fs::write(
        d.join("bad.acl"),
        "topic read ok/#\nuser carol\ntopic read a/#/b\n\nallow everything\npattern write x/%x\ntopic write c/{d}\n",
    )
    .unwrap();
    let run = bulwark(
        d,
        &["acl", "import-mosquitto", "bad.acl", "--out", "acl.toml"],
    );
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stderr);
    assert!(
        lines[0].starts_with("error: bad.acl:3: \"a/#/b\""),
        "{}",
        run.stderr
    );
    assert!(
        lines[1].starts_with("error: bad.acl:5: unknown directive \"allow\""),
        "{}",
        run.stderr
    );
    assert!(lines[2].starts_with("error: bad.acl:6: "), "{}", run.stderr);
    assert!(lines[2].contains("%u and %c"), "{}", run.stderr);
    assert!(lines[3].starts_with("error: bad.acl:7: "), "{}", run.stderr);
    assert!(!d.join("acl.toml").exists());
}

/// An imported Mosquitto ACL used as it is keeps `bulwark serve`'s administrator in (the group
/// "admins" of the first run's password store), and says so; --no-admin-rule leaves it out.
#[test]
fn imported_rules_keep_the_administrator_in() {
    let dir = TempDir::new("acl", "import-admin");
    let d = &dir.0;
    std::fs::write(d.join("mosquitto.acl"), MOSQUITTO).unwrap();
    write_store(&d.join("passwords.toml"), &[("admin", &["admins"])]);
    // Imports mosquitto.acl into acl.toml with `extra` arguments; returns whether it said
    // that the administrators' rule was added.
    let import = |extra: &[&str]| {
        let args = [
            &[
                "acl",
                "import-mosquitto",
                "mosquitto.acl",
                "--out",
                "acl.toml",
            ][..],
            extra,
        ]
        .concat();
        let run = bulwark(d, &args);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        run.stderr.contains("lock the administrator out")
    };
    assert!(import(&[]), "no note about the administrators' rule");
    // The converted rules use {client_id} (a `pattern` with %c): --client-id is needed.
    let admin = [
        "--file",
        "acl.toml",
        "--passwords",
        "passwords.toml",
        "--user",
        "admin",
        "--client-id",
        "admin-1",
    ];
    for (operation, topic) in [
        ("subscribe", "#"),
        ("publish", "alice/secret"),
        ("subscribe", "$SYS/#"),
    ] {
        check(d, &[&admin[..], &[operation, topic]].concat(), 0);
    }
    assert!(!import(&["--force", "--no-admin-rule"]));
    check(d, &[&admin[..], &["subscribe", "#"]].concat(), 1);
}

/// `acl check` needs --client-id only when a rule depends on the client identifier, and then
/// says which rule.
#[test]
fn check_asks_for_a_client_id_only_when_a_rule_uses_it() {
    let dir = TempDir::new("acl", "no-client-id");
    let d = &dir.0;
    let allow_all_on = |topic: &str| {
        let rule =
            format!("[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"{topic}\"\n");
        std::fs::write(d.join("acl.toml"), rule).unwrap();
    };
    let user = |name: &'static str, rest: &[&'static str]| {
        [&["--file", "acl.toml", "--user", name][..], rest].concat()
    };
    allow_all_on("devices/{username}/#");
    let line = check(d, &user("sensor-1", &["publish", "devices/sensor-1/t"]), 0);
    assert!(line.starts_with("ALLOW"), "{line}");
    check(d, &user("sensor-1", &["publish", "devices/sensor-2/t"]), 1);

    allow_all_on("devices/{client_id}/#");
    let run = bulwark(
        d,
        &[
            &["acl", "check"][..],
            &user("u", &["publish", "devices/c/t"]),
        ]
        .concat(),
    );
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("acl.toml:1") && run.stderr.contains("pass --client-id"),
        "{}",
        run.stderr
    );
    check(
        d,
        &user("u", &["--client-id", "c", "publish", "devices/c/t"]),
        0,
    );
}

#[test]
fn check_explains_rules_that_cover_a_filter_together() {
    let dir = TempDir::new("acl", "together");
    std::fs::write(
        dir.0.join("acl.toml"),
        r##"[[rule]]
permission = "allow"
action = "subscribe"
topics = ["logs", "logs/+/#"]
"##,
    )
    .unwrap();
    let d = &dir.0;
    // No one pattern covers logs/#; the two do together.
    assert_eq!(
        check(
            d,
            &["--file", "acl.toml", "--user", "u", "subscribe", "logs/#"],
            0
        ),
        "ALLOW  acl.toml:1  allow subscribe logs logs/+/#  granted QoS 2\n  with  acl.toml:1  \
         allow subscribe logs logs/+/#\n"
    );
}
