//! `bulwark cert`: a CA, a server chain and a device certificate made by the real binary, checked
//! with OpenSSL (chain, purposes, SANs, EKUs), and the refusals: overwriting without `--force`,
//! device names that cannot be MQTT identities or file names, signing without a CA.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::TempDir;

fn bulwark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .arg("cert")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn succeeds(args: &[&str]) -> String {
    let out = bulwark(args);
    assert!(
        out.status.success(),
        "bulwark cert {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a command that must fail with status 1 and `error: ...`; returns its stderr.
#[track_caller]
fn fails(args: &[&str]) -> String {
    let out = bulwark(args);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bulwark cert {args:?}: {}{stderr}",
        text(&out.stdout)
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl").args(args).output().unwrap()
}

#[track_caller]
fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn x509_text(path: &Path) -> String {
    openssl_ok(&["x509", "-in", p(path), "-noout", "-text"])
}

#[test]
fn ca_server_and_client_certificates_verify_and_carry_their_purposes() {
    let tmp = TempDir::new("cert", "flow");
    let dir = tmp.0.join("pki");
    let d = p(&dir);
    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let server_pem = dir.join("server.pem");
    let server_key = dir.join("server.key");
    let client_pem = dir.join("sensor-1.pem");
    let client_key = dir.join("sensor-1.key");

    let out = succeeds(&["ca", "--out", d]);
    assert!(
        out.contains(p(&ca_pem)) && out.contains(p(&ca_key)),
        "{out}"
    );
    let out = succeeds(&[
        "server",
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
        "--ca-dir",
        d,
        "--out",
        d,
    ]);
    assert!(out.contains(p(&server_pem)), "{out}");
    let out = succeeds(&["client", "--cn", "sensor-1", "--ca-dir", d, "--out", d]);
    assert!(out.contains(p(&client_pem)), "{out}");
    let example = out
        .lines()
        .find(|line| line.contains("mosquitto_pub"))
        .unwrap_or_else(|| panic!("no mosquitto_pub example in {out}"));
    for part in [
        format!("--cafile {}", p(&ca_pem)),
        format!("--cert {}", p(&client_pem)),
        format!("--key {}", p(&client_key)),
        "-p 8883".to_owned(),
    ] {
        assert!(example.contains(&part), "{part} not in {example}");
    }

    for file in [
        &ca_pem,
        &ca_key,
        &server_pem,
        &server_key,
        &client_pem,
        &client_key,
    ] {
        assert!(file.is_file(), "{} missing", file.display());
    }
    #[cfg(unix)]
    {
        for key in [&ca_key, &server_key, &client_key] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
        }
        for cert in [&ca_pem, &server_pem, &client_pem] {
            // 0644, less what the umask takes; never writable by others or executable.
            assert_eq!(mode(cert) & !0o644, 0, "{}", cert.display());
            assert_eq!(mode(cert) & 0o600, 0o600, "{}", cert.display());
        }
        assert_eq!(mode(&dir), 0o700);
    }
    let chain = std::fs::read_to_string(&server_pem).unwrap();
    assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    let ca_text = std::fs::read_to_string(&ca_pem).unwrap();
    assert!(chain.trim_end().ends_with(ca_text.trim_end()));
    assert!(
        std::fs::read_to_string(&ca_key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    if have_openssl() {
        let ca = x509_text(&ca_pem);
        assert!(ca.contains("CA:TRUE"), "{ca}");
        assert!(ca.contains("Certificate Sign, CRL Sign"), "{ca}");
        assert!(ca.contains("ecdsa-with-SHA256"), "{ca}");
        assert!(ca.contains("prime256v1"), "{ca}");
        assert!(ca.contains("CN = Bulwark CA"), "{ca}");

        let server = x509_text(&server_pem);
        assert!(server.contains("DNS:localhost"), "{server}");
        assert!(server.contains("IP Address:127.0.0.1"), "{server}");
        assert!(server.contains("TLS Web Server Authentication"), "{server}");
        assert!(
            !server.contains("TLS Web Client Authentication"),
            "{server}"
        );
        assert!(server.contains("Subject: CN = localhost"), "{server}");
        assert!(server.contains("CA:FALSE"), "{server}");
        assert!(!server.contains("Key Encipherment"), "{server}");
        assert!(server.contains("Digital Signature"), "{server}");

        let client = x509_text(&client_pem);
        assert!(client.contains("Subject: CN = sensor-1"), "{client}");
        assert!(client.contains("TLS Web Client Authentication"), "{client}");
        assert!(
            !client.contains("TLS Web Server Authentication"),
            "{client}"
        );

        let ca_file = p(&ca_pem);
        let ok = openssl_ok(&[
            "verify",
            "-CAfile",
            ca_file,
            "-purpose",
            "sslserver",
            p(&server_pem),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
        let ok = openssl_ok(&[
            "verify",
            "-CAfile",
            ca_file,
            "-purpose",
            "sslclient",
            p(&client_pem),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
        // The purposes are not interchangeable.
        let wrong = openssl(&[
            "verify",
            "-CAfile",
            ca_file,
            "-purpose",
            "sslclient",
            p(&server_pem),
        ]);
        assert!(
            !wrong.status.success(),
            "a server certificate passed as a client one"
        );
        let wrong = openssl(&[
            "verify",
            "-CAfile",
            ca_file,
            "-purpose",
            "sslserver",
            p(&client_pem),
        ]);
        assert!(
            !wrong.status.success(),
            "a client certificate passed as a server one"
        );
        // Each key belongs to its certificate.
        for (cert, key) in [
            (&server_pem, &server_key),
            (&client_pem, &client_key),
            (&ca_pem, &ca_key),
        ] {
            let from_cert = openssl_ok(&["x509", "-in", p(cert), "-noout", "-pubkey"]);
            let from_key = openssl_ok(&["pkey", "-in", p(key), "-pubout"]);
            assert_eq!(
                from_cert,
                from_key,
                "{} and {}",
                cert.display(),
                key.display()
            );
        }
        // Random serial numbers: a second device certificate gets another one.
        succeeds(&["client", "--cn", "sensor-2", "--ca-dir", d, "--out", d]);
        let serial = |path: &Path| openssl_ok(&["x509", "-in", p(path), "-noout", "-serial"]);
        assert_ne!(serial(&client_pem), serial(&dir.join("sensor-2.pem")));
        assert_ne!(serial(&server_pem), serial(&client_pem));
    } else {
        println!("note: openssl is not on PATH; skipping the OpenSSL checks");
    }

    // No overwriting without --force: the message names the file, the files stay as they were.
    let ca_before = std::fs::read(&ca_pem).unwrap();
    let key_before = std::fs::read(&ca_key).unwrap();
    let err = fails(&["ca", "--out", d]);
    assert!(err.contains("ca.key") || err.contains("ca.pem"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&ca_pem).unwrap(), ca_before);
    assert_eq!(std::fs::read(&ca_key).unwrap(), key_before);
    let err = fails(&["client", "--cn", "sensor-1", "--ca-dir", d, "--out", d]);
    assert!(
        err.contains("sensor-1.key") || err.contains("sensor-1.pem"),
        "{err}"
    );
    // Nor may a device certificate land on the CA's own files, even with --force.
    let err = fails(&["client", "--cn", "ca", "--ca-dir", d, "--out", d, "--force"]);
    assert!(err.contains("CA"), "{err}");
    assert_eq!(std::fs::read(&ca_pem).unwrap(), ca_before);

    // Device names that would be MQTT wildcards, levels or paths are refused, nothing written.
    for bad in ["a/b", "#", "+", "", "..", "x/../y"] {
        let err = fails(&["client", "--cn", bad, "--ca-dir", d, "--out", d]);
        assert!(err.contains("--cn"), "{bad:?}: {err}");
    }
    assert!(!dir.join("a").exists());
    assert!(!dir.join("#.pem").exists());

    // --force replaces, and the new key is again 0600.
    succeeds(&[
        "ca",
        "--out",
        d,
        "--force",
        "--name",
        "Second CA",
        "--days",
        "30",
    ]);
    assert_ne!(std::fs::read(&ca_key).unwrap(), key_before);
    #[cfg(unix)]
    assert_eq!(mode(&ca_key), 0o600);
    if have_openssl() {
        let ca = x509_text(&ca_pem);
        assert!(ca.contains("CN = Second CA"), "{ca}");
        // The old server certificate does not chain to the new CA.
        let stale = openssl(&["verify", "-CAfile", p(&ca_pem), p(&server_pem)]);
        assert!(!stale.status.success());
    }
}

#[test]
fn signing_without_a_ca_says_to_make_one() {
    let tmp = TempDir::new("cert", "no-ca");
    let empty = tmp.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = tmp.0.join("out");
    let err = fails(&[
        "server",
        "--name",
        "localhost",
        "--ca-dir",
        p(&empty),
        "--out",
        p(&out),
    ]);
    assert!(err.contains("bulwark cert ca"), "{err}");
    assert!(err.contains(p(&empty.join("ca.pem"))), "{err}");
    let err = fails(&[
        "client",
        "--cn",
        "dev",
        "--ca-dir",
        p(&empty),
        "--out",
        p(&out),
    ]);
    assert!(err.contains("bulwark cert ca"), "{err}");
    assert!(!out.exists(), "nothing is written when there is no CA");
}

#[test]
fn a_ca_key_that_does_not_match_is_refused() {
    let tmp = TempDir::new("cert", "mismatch");
    let one = tmp.0.join("one");
    let two = tmp.0.join("two");
    succeeds(&["ca", "--out", p(&one)]);
    succeeds(&["ca", "--out", p(&two)]);
    std::fs::copy(two.join("ca.key"), one.join("ca.key")).unwrap();
    let err = fails(&[
        "server",
        "--name",
        "localhost",
        "--ca-dir",
        p(&one),
        "--out",
        p(&tmp.0),
    ]);
    assert!(err.contains("does not belong"), "{err}");
    std::fs::write(one.join("ca.key"), "not a key").unwrap();
    let err = fails(&[
        "server",
        "--name",
        "localhost",
        "--ca-dir",
        p(&one),
        "--out",
        p(&tmp.0),
    ]);
    assert!(err.contains("CA private key"), "{err}");
    assert!(!tmp.0.join("server.pem").exists());
}

#[test]
fn bad_server_names_and_days_are_refused() {
    let tmp = TempDir::new("cert", "bad-names");
    let d = p(&tmp.0);
    succeeds(&["ca", "--out", d]);
    let err = fails(&["server", "--name", "not a host", "--ca-dir", d, "--out", d]);
    assert!(err.contains("not a host"), "{err}");
    // Out-of-range days are a usage error (clap's status 2), not a panic.
    let out = bulwark(&["ca", "--out", d, "--force", "--days", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = bulwark(&["ca", "--out", d, "--force", "--days", "99999999"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `cert client` without --out writes next to the CA (the data directory), not into the working
/// directory; its hint publishes to a topic the first run's ACL allows the device; --p12 writes
/// a PKCS#12 file (mode 0600) with the key and the chain that reads back with its password.
#[test]
fn a_device_certificate_goes_to_the_ca_directory_with_a_working_hint_and_a_pkcs12_file() {
    let tmp = TempDir::new("cert", "p12");
    let dir = tmp.0.join("data");
    let d = p(&dir);
    succeeds(&["ca", "--out", d]);
    let out = succeeds(&["client", "--cn", "sensor-7", "--ca-dir", d, "--p12"]);
    for name in ["sensor-7.pem", "sensor-7.key", "sensor-7.p12"] {
        assert!(dir.join(name).is_file(), "{name} not in {d}: {out}");
    }
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("sensor-7.p12")), 0o600);
    let example = out
        .lines()
        .find(|line| line.contains("mosquitto_pub"))
        .unwrap_or_else(|| panic!("no mosquitto_pub example in {out}"));
    assert!(example.contains("-t devices/sensor-7/hello"), "{example}");
    // The topic is one the default rule (every user its own devices/{username}/#) allows.
    let acl = dir.join("acl.toml");
    std::fs::write(
        &acl,
        "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"devices/{username}/#\"\n",
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["acl", "check", "--file", p(&acl), "--user", "sensor-7"])
        .args(["--client-id", "c", "publish", "devices/sensor-7/hello"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stdout));

    let password = out
        .lines()
        .find_map(|line| line.strip_prefix("PKCS#12 password (shown this once): "))
        .unwrap_or_else(|| panic!("no password in {out}"));
    let p12 = dir.join("sensor-7.p12");
    let store = read_p12(&p12, password).unwrap();
    let (_, chain) = store.private_key_chain().expect("a key with its chain");
    assert_eq!(chain.certs().len(), 2, "the certificate and the CA");
    assert!(chain.certs()[0].subject().contains("sensor-7"));
    assert!(read_p12(&p12, "wrong password").is_err());
    if have_openssl() {
        openssl_ok(&[
            "pkcs12",
            "-in",
            p(&p12),
            "-passin",
            &format!("pass:{password}"),
            "-nokeys",
        ]);
    }

    // A password from a file; an existing .p12 is not replaced without --force.
    let pass_file = tmp.0.join("p12-pass");
    std::fs::write(&pass_file, "correct horse battery\n").unwrap();
    let mut args = vec!["client", "--cn", "sensor-7", "--ca-dir", d, "--p12"];
    args.extend(["--p12-password-file", p(&pass_file)]);
    let err = fails(&args);
    assert!(err.contains("already exists"), "{err}");
    args.push("--force");
    let out = succeeds(&args);
    assert!(!out.contains("PKCS#12 password"), "{out}");
    read_p12(&p12, "correct horse battery").unwrap();
}

fn read_p12(path: &Path, password: &str) -> p12_keystore::Result<p12_keystore::KeyStore> {
    let bytes = std::fs::read(path).unwrap();
    p12_keystore::KeyStore::from_pkcs12(&bytes, password, p12_keystore::Pkcs12ImportPolicy::Strict)
}
