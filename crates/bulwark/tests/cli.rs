//! The `bulwark` binary itself: `serve` starts on loopback, stops with status 0 on SIGTERM and
//! SIGINT, and refuses a bad configuration with every problem listed and status 2.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn bulwark() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
}

/// Starts `bulwark serve ARGS`; its standard error arrives line by line on the receiver.
fn spawn_serve(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = bulwark()
        .arg("serve")
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Collects log lines until `done` holds for them, or 20 s pass, or the log ends.
fn read_log_until(rx: &std::sync::mpsc::Receiver<String>, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    while !done(&log) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break,
        }
    }
    log
}

/// Starts `serve` on a free loopback port, waits for it to listen, sends `signal`, and returns
/// the exit status and what it logged.
#[cfg(unix)]
fn serve_then(signal: &str, workers: &str) -> (std::process::ExitStatus, String) {
    // A data directory of its own: the store in it is locked by the broker using it.
    let data = std::env::temp_dir().join(format!(
        "bulwark-cli-{}-{signal}-{workers}",
        std::process::id()
    ));
    let (mut child, rx) = spawn_serve(&[
        "--listen",
        "127.0.0.1:0",
        "--dangerous-allow-anonymous",
        "--workers",
        workers,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let mut log = read_log_until(&rx, |log| log.contains("listening"));
    if !log.contains("listening") {
        let _ = child.kill();
        panic!("the broker did not start listening:\n{log}");
    }
    // The broker answers a CONNECT before it is stopped.
    let Some(addr) = log
        .split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))
        .map(str::to_owned)
    else {
        let _ = child.kill();
        panic!("no address in:\n{log}");
    };
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(
        &mut socket,
        b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a",
    )
    .unwrap();
    let mut connack = [0u8; 4];
    std::io::Read::read_exact(&mut socket, &mut connack).unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                log.push_str(&line);
                log.push('\n');
            }
            let _ = std::fs::remove_dir_all(&data);
            return (status, log);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the broker did not stop:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn sigterm_and_sigint_stop_the_broker_with_status_0() {
    // One worker runs the broker on a single thread, more on a thread pool: both serve.
    for (signal, workers) in [("-TERM", "1"), ("-INT", "2")] {
        let (status, log) = serve_then(signal, workers);
        assert!(status.success(), "{signal}: {status:?}\n{log}");
        assert!(log.contains(&format!("workers={workers}")), "{log}");
        assert!(log.contains("shutting down"), "{log}");
        assert!(log.contains("stopped"), "{log}");
    }
}

#[test]
fn a_bad_configuration_is_refused_with_every_problem_and_status_2() {
    let dir = std::env::temp_dir().join(format!("bulwark-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[limits]\nreceive_maximum = 0\ncolour = 1\n[[listener]]\nbind = \"192.0.2.1:1883\"\nauthenticators = [\"bogus\"]\n",
    )
    .unwrap();
    let out = bulwark()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("5 configuration errors"), "{err}");
    assert!(err.contains("acl: no ACL file"), "{err}");
    assert!(err.contains("limits.colour: unknown key"), "{err}");
    assert!(err.contains("limits.receive_maximum = 0"), "{err}");
    assert!(err.contains("in clear text"), "{err}");
    assert!(err.contains("unknown authenticator \"bogus\""), "{err}");
}

#[test]
fn listen_refuses_a_public_address() {
    let out = bulwark()
        .args(["serve", "--listen", "0.0.0.0:1883"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in clear text"), "{err}");
}

/// `serve` without a configuration: a CA and a server certificate are made in the data
/// directory once (keys 0600), TLS listens on 0.0.0.0:8883 and [::]:8883, plaintext on
/// 127.0.0.1:1883 and [::1]:1883 only (the IPv6 ones where the host has IPv6); a second start
/// keeps the files. The admin password is not written to a standard error that is not a
/// terminal (a service's goes to its journal): the log points to the 0600 file instead.
#[cfg(unix)]
#[test]
fn the_secure_first_run_makes_certificates_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("bulwark-first-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let mut logs = Vec::new();
    for round in 0..2 {
        let (mut child, rx) = spawn_serve(&["--data-dir", data.to_str().unwrap()]);
        let log = read_log_until(&rx, |log| {
            log.matches("listening").count() + log.matches("listener skipped").count() >= 4
                || log.contains("error")
        });
        if round == 0 && !log.contains("Address already in use") {
            // Anonymous clients are refused; the generated admin password works.
            let password = std::fs::read_to_string(data.join("admin-password.txt")).unwrap();
            let password = password.trim();
            assert!(
                !log.contains(password),
                "the password is not in a log:\n{log}"
            );
            assert!(
                log.contains("its password is in") && log.contains("admin-password.txt"),
                "{log}"
            );
            if log.contains("addr=[::1]:1883") {
                assert_eq!(connack_code("[::1]:1883", Some(("admin", password))), 0x00);
            } else {
                assert!(log.contains("listener skipped"), "{log}");
            }
            assert_eq!(connack_code("127.0.0.1:1883", None), 0x87);
            assert_eq!(
                connack_code("127.0.0.1:1883", Some(("admin", password))),
                0x00
            );
            assert_eq!(
                connack_code("127.0.0.1:1883", Some(("admin", "wrong-password"))),
                0x86
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        if log.contains("Address already in use") {
            eprintln!("skipped: port 1883 or 8883 is taken on this machine:\n{log}");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        assert!(log.contains("addr=127.0.0.1:1883"), "round {round}:\n{log}");
        assert!(log.contains("addr=0.0.0.0:8883"), "round {round}:\n{log}");
        // Both families, or IPv6 skipped with a warning on a host without it.
        for addr in ["addr=[::]:8883", "addr=[::1]:1883"] {
            assert!(
                log.lines().any(|line| line.contains(addr)
                    && (line.contains("listening") || line.contains("listener skipped"))),
                "{addr}, round {round}:\n{log}"
            );
        }
        assert!(log.contains("MQTT over TLS"), "round {round}:\n{log}");
        assert!(
            log.contains("bulwark cert client --cn DEVICE"),
            "round {round}:\n{log}"
        );
        logs.push(log);
    }
    assert!(logs[0].contains("(just created)"), "{}", logs[0]);
    assert!(!logs[1].contains("(just created)"), "{}", logs[1]);
    assert!(
        logs[0].contains("created the user \"admin\""),
        "{}",
        logs[0]
    );
    assert!(!logs[1].contains("created the user"), "{}", logs[1]);
    // What the first run suggests works under its own ACL: a device on devices/DEVICE/#, not
    // on every device's topics; the administrator everywhere.
    let acl = data.join("acl.toml");
    let store = data.join("passwords.toml");
    for (user, operation, topic, allowed) in [
        ("sensor-1", "publish", "devices/sensor-1/hello", true),
        ("sensor-1", "subscribe", "devices/sensor-1/#", true),
        ("sensor-1", "subscribe", "devices/#", false),
        ("admin", "subscribe", "#", true),
    ] {
        let out = bulwark()
            .args(["acl", "check", "--file", acl.to_str().unwrap()])
            .args(["--passwords", store.to_str().unwrap(), "--user", user])
            .args([operation, topic])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(if allowed { 0 } else { 1 }),
            "{user} {operation} {topic}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "audit.jsonl",
    ] {
        assert!(data.join(name).is_file(), "{name} missing");
    }
    for key in [
        "ca.key",
        "server.key",
        "admin-password.txt",
        "passwords.toml",
    ] {
        let mode = std::fs::metadata(data.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends a 5.0 CONNECT (with username and password if given) and returns the CONNACK's
/// reason code.
#[cfg(unix)]
fn connack_code(addr: &str, credentials: Option<(&str, &str)>) -> u8 {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05];
    body.push(if credentials.is_some() { 0xc2 } else { 0x02 });
    body.extend_from_slice(&[0x00, 0x3c, 0x00, 0x00, 0x01, b'c']);
    if let Some((user, password)) = credentials {
        for field in [user, password] {
            body.extend_from_slice(&u16::try_from(field.len()).unwrap().to_be_bytes());
            body.extend_from_slice(field.as_bytes());
        }
    }
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend_from_slice(&body);
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut socket, &packet).unwrap();
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut socket, &mut head).unwrap();
    assert_eq!(head[0], 0x20, "not a CONNACK: {head:?}");
    head[3]
}

/// The help texts describe the default run as it is: TLS on every address with a generated CA,
/// plaintext with passwords on loopback, IPv4 and IPv6.
#[test]
fn the_help_tells_what_the_default_run_serves() {
    for args in [&["--help"][..], &["serve", "--help"]] {
        let out = bulwark().args(args).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
        for part in [
            "0.0.0.0:8883",
            "[::]:8883",
            "127.0.0.1:1883",
            "[::1]:1883",
            "CA",
            "admin",
        ] {
            assert!(help.contains(part), "{args:?}: no {part:?} in {help}");
        }
        assert!(!help.contains("one plaintext listener"), "{help}");
    }
}

/// Starts `serve ARGS` and returns its log up to "listening" (or its end), and the child.
fn serve_until_listening(
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    String,
) {
    let (mut child, rx) = spawn_serve(args);
    let log = read_log_until(&rx, |log| log.contains("listening"));
    if !log.contains("listening") {
        let _ = child.kill();
        panic!("the broker did not start listening:\n{log}");
    }
    (child, rx, log)
}

/// `serve --listen` in a fresh directory: no password store, so nobody could log in; it says
/// so and how to add a user or let anonymous clients in for local testing.
#[test]
fn listen_without_a_password_store_says_how_to_let_someone_in() {
    let tmp = common::TempDir::new("cli", "fresh");
    let data = tmp.0.join("data");
    let (mut child, _rx, log) = serve_until_listening(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    let store = data.join("passwords.toml");
    for part in [
        "no password store".to_owned(),
        "no client can log in".to_owned(),
        format!("bulwark user add NAME --file {}", store.display()),
        "--dangerous-allow-anonymous".to_owned(),
    ] {
        assert!(log.contains(&part), "no {part:?} in:\n{log}");
    }
    // With anonymous access allowed, nothing to say.
    let (mut child, _rx, log) = serve_until_listening(&[
        "--listen",
        "127.0.0.1:0",
        "--dangerous-allow-anonymous",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(!log.contains("no password store"), "{log}");
}

/// A password store and an ACL file other users may read or write are warned about at start,
/// and the ACL again at its reload (SIGHUP), as ssh does for its files.
#[cfg(unix)]
#[test]
fn files_open_to_other_users_are_warned_about_at_start_and_reload() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = common::TempDir::new("cli", "modes");
    let data = tmp.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = data.join("passwords.toml");
    let acl = data.join("acl.toml");
    bulwark_server::files::save_store(&store, &bulwark_auth::password::PasswordStore::new())
        .unwrap();
    let rule =
        "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"devices/{username}/#\"\n";
    std::fs::write(&acl, rule).unwrap();
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chmod(&store, 0o644);
    chmod(&acl, 0o666);
    let (child, rx, log) = serve_until_listening(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let stop = |mut child: std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    if !(log.contains("the password store is open to other users")
        && log.contains("mode 0644")
        && log.contains("every user can read it")
        && log.contains("the ACL file is open to other users")
        && log.contains("every user can write it"))
    {
        stop(child);
        panic!("no warnings in:\n{log}");
    }
    std::fs::write(&acl, format!("{rule}\n# changed\n")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let reload = read_log_until(&rx, |log| log.contains("ACL reloaded"));
    stop(child);
    assert!(
        reload.contains("the ACL file is open to other users"),
        "no warning at the reload:\n{reload}"
    );
}

/// `--data-dir` naming a file is explained as such, not as "File exists".
#[test]
fn a_data_dir_that_is_a_file_is_explained() {
    let tmp = common::TempDir::new("cli", "datafile");
    let file = tmp.0.join("afile");
    std::fs::write(&file, "").unwrap();
    for args in [
        &["serve", "--data-dir", file.to_str().unwrap()][..],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            file.to_str().unwrap(),
        ],
    ] {
        let out = bulwark().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is a file, not a directory") && !err.contains("File exists"),
            "{err}"
        );
    }
}

/// The README promises only what is built: the scanner is future work, so every paragraph
/// naming it says it is not built yet, and `bulwark scan` is indeed not a command (when it
/// becomes one, the README can say so). The tamper-evident audit trail it promises is there:
/// `bulwark audit verify` exists.
#[test]
fn the_readme_promises_only_what_is_built() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    // Paragraphs, and each row of a table on its own.
    let parts = readme.split("\n\n").flat_map(|paragraph| {
        if paragraph.starts_with('|') {
            paragraph.lines().collect::<Vec<_>>()
        } else {
            vec![paragraph]
        }
    });
    for part in parts {
        let lower = part.to_lowercase();
        if ["scanner", "bulwark scan"]
            .iter()
            .any(|word| lower.contains(word))
        {
            assert!(lower.contains("not built"), "promised as built:\n{part}");
        }
    }
    assert!(readme.contains("tamper-evident"));
    let verify = bulwark()
        .args(["audit", "verify", "--help"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "the README promises bulwark audit verify"
    );
    let scan = bulwark().args(["scan", "--help"]).output().unwrap();
    assert!(
        !scan.status.success(),
        "bulwark scan exists: update the README"
    );
}
