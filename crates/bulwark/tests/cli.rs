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

fn bulwark() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
}

/// Starts `serve` on a free loopback port, waits for it to listen, sends `signal`, and returns
/// the exit status and what it logged.
#[cfg(unix)]
fn serve_then(signal: &str, workers: &str) -> (std::process::ExitStatus, String) {
    let mut child = bulwark()
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", workers])
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    while !log.contains("listening") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the broker did not start listening:\n{log}");
            }
        }
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
        "[limits]\nreceive_maximum = 0\ncolour = 1\n[[listener]]\nbind = \"192.0.2.1:1883\"\n",
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
    assert!(err.contains("3 configuration errors"), "{err}");
    assert!(err.contains("limits.colour: unknown key"), "{err}");
    assert!(err.contains("limits.receive_maximum = 0"), "{err}");
    assert!(err.contains("only loopback addresses"), "{err}");
}

#[test]
fn listen_refuses_a_public_address() {
    let out = bulwark()
        .args(["serve", "--listen", "0.0.0.0:1883"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only loopback addresses"));
}
