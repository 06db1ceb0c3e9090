#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use x509_parser::certificate::X509Certificate;

use super::*;

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "bulwark-cert-unit-{name}-{}-{nanos}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }

    /// Writes a CA pair into the directory.
    fn with_ca(self, cert_pem: &str, key_pem: &str) -> Self {
        fs::create_dir_all(&self.0).unwrap();
        fs::write(self.0.join("ca.pem"), cert_pem).unwrap();
        fs::write(self.0.join("ca.key"), key_pem).unwrap();
        self
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The DER of every CERTIFICATE block in PEM text.
fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(text.as_bytes())
        .map(Result::unwrap)
        .filter(|pem| pem.label == "CERTIFICATE")
        .map(|pem| pem.contents)
        .collect()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    cert
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_run_creates_once_then_leaves_files_alone() {
    let tmp = TempDir::new("first-run");
    let dir = tmp.0.join("certs");
    let first = ensure_first_run(&dir, &["broker.example".to_owned()]).unwrap();
    assert!(first.created);
    assert_eq!(first.ca, dir.join("ca.pem"));
    assert_eq!(first.cert, dir.join("server.pem"));
    assert_eq!(first.key, dir.join("server.key"));
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&first.key), 0o600);
    }
    let chain = fs::read_to_string(&first.cert).unwrap();
    let certs = pem_certificates(&chain);
    assert_eq!(certs.len(), 2, "server.pem is the leaf then the CA");
    let ca_text = fs::read_to_string(&first.ca).unwrap();
    assert_eq!(certs[1], pem_certificates(&ca_text)[0]);
    let leaf = parse(&certs[0]);
    let ca = parse(&certs[1]);
    assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
    assert!(ca.is_ca());
    assert!(!leaf.is_ca());
    // The leaf's key is the one in server.key.
    let key = KeyPair::from_pem(&fs::read_to_string(&first.key).unwrap()).unwrap();
    assert_eq!(
        key.public_key_raw(),
        leaf.public_key().subject_public_key.data.as_ref()
    );

    let before: Vec<Vec<u8>> = ["ca.pem", "ca.key", "server.pem", "server.key"]
        .iter()
        .map(|name| fs::read(dir.join(name)).unwrap())
        .collect();
    let second = ensure_first_run(&dir, &["broker.example".to_owned()]).unwrap();
    assert!(!second.created);
    assert_eq!(second.cert, first.cert);
    let after: Vec<Vec<u8>> = ["ca.pem", "ca.key", "server.pem", "server.key"]
        .iter()
        .map(|name| fs::read(dir.join(name)).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn first_run_reissues_a_missing_server_pair_and_refuses_a_half_pair() {
    let tmp = TempDir::new("half");
    let dir = tmp.0.clone();
    ensure_first_run(&dir, &[]).unwrap();
    let ca_before = fs::read_to_string(dir.join("ca.pem")).unwrap();
    fs::remove_file(dir.join("server.key")).unwrap();
    let err = ensure_first_run(&dir, &[]).unwrap_err();
    assert!(err.contains("server.key"), "{err}");
    fs::remove_file(dir.join("server.pem")).unwrap();
    let again = ensure_first_run(&dir, &[]).unwrap();
    assert!(again.created);
    assert_eq!(fs::read_to_string(dir.join("ca.pem")).unwrap(), ca_before);
    let chain = fs::read_to_string(dir.join("server.pem")).unwrap();
    let certs = pem_certificates(&chain);
    let ca_der = pem_certificates(&ca_before).remove(0);
    assert_eq!(
        parse(&certs[0]).issuer().as_raw(),
        parse(&ca_der).subject().as_raw()
    );
}

#[test]
fn first_run_refuses_a_bad_host_name() {
    let tmp = TempDir::new("bad-host");
    let err = ensure_first_run(&tmp.0, &["not a host".to_owned()]).unwrap_err();
    assert!(err.contains("not a host"), "{err}");
}

#[test]
fn two_certificates_have_different_serial_numbers() {
    let pair = make_ca("Serial CA", 10).unwrap();
    let tmp = TempDir::new("serial").with_ca(&pair.cert_pem, &pair.key_pem);
    let authority = load_ca(&tmp.0).unwrap();
    let issue = || {
        let leaf = make_leaf(
            &authority,
            "same",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            5,
        )
        .unwrap();
        pem_certificates(&leaf.cert_pem).remove(0)
    };
    let (a, b) = (issue(), issue());
    let (a, b) = (parse(&a), parse(&b));
    assert_ne!(a.raw_serial(), b.raw_serial());
    assert!(a.raw_serial().len() >= 16, "{:?}", a.raw_serial());
    // The leaf asked for 5 days; the CA has 10, so nothing was cut.
    let now = i64::try_from(now_unix().unwrap()).unwrap();
    assert!((a.validity().not_after.timestamp() - (now + 5 * 86_400)).abs() < 120);
}

#[test]
fn a_leaf_never_outlives_its_ca() {
    let pair = make_ca("Short CA", 2).unwrap();
    let tmp = TempDir::new("clamp").with_ca(&pair.cert_pem, &pair.key_pem);
    let authority = load_ca(&tmp.0).unwrap();
    let leaf = make_leaf(
        &authority,
        "dev",
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        825,
    )
    .unwrap();
    assert!(leaf.clamped);
    let der = pem_certificates(&leaf.cert_pem).remove(0);
    assert_eq!(
        parse(&der).validity().not_after.timestamp(),
        authority.not_after
    );
    let ca_der = pem_certificates(&pair.cert_pem).remove(0);
    assert_eq!(
        authority.not_after,
        parse(&ca_der).validity().not_after.timestamp()
    );
}

#[test]
fn a_mismatched_or_broken_ca_key_is_refused() {
    let one = make_ca("One", 10).unwrap();
    let two = make_ca("Two", 10).unwrap();
    let tmp = TempDir::new("mismatch").with_ca(&one.cert_pem, &two.key_pem);
    let err = load_ca(&tmp.0).unwrap_err();
    assert!(err.contains("does not belong"), "{err}");
    fs::write(
        tmp.0.join("ca.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = load_ca(&tmp.0).unwrap_err();
    assert!(err.contains("cannot read the CA private key"), "{err}");
    fs::write(tmp.0.join("ca.pem"), "garbage").unwrap();
    let err = load_ca(&tmp.0).unwrap_err();
    assert!(err.contains("BEGIN CERTIFICATE"), "{err}");
}

#[test]
fn a_leaf_certificate_is_not_accepted_as_ca() {
    let tmp = TempDir::new("not-ca");
    let dir = tmp.0.clone();
    ensure_first_run(&dir, &[]).unwrap();
    let other = tmp.0.join("other");
    fs::create_dir_all(&other).unwrap();
    fs::copy(dir.join("server.pem"), other.join("ca.pem")).unwrap();
    fs::copy(dir.join("server.key"), other.join("ca.key")).unwrap();
    let err = load_ca(&other).unwrap_err();
    assert!(err.contains("not a CA certificate"), "{err}");
}

#[test]
fn a_ca_without_key_cert_sign_is_refused() {
    let key = new_key().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name("No Sign CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    let tmp = TempDir::new("no-sign").with_ca(&cert.pem(), &key.serialize_pem());
    let err = load_ca(&tmp.0).unwrap_err();
    assert!(err.contains("keyCertSign"), "{err}");
    assert!(err.contains("ca.pem"), "{err}");

    // Without a key usage extension at all, signing is allowed.
    params.key_usages = Vec::new();
    let cert = params.self_signed(&key).unwrap();
    fs::write(tmp.0.join("ca.pem"), cert.pem()).unwrap();
    let authority = load_ca(&tmp.0).unwrap();
    make_leaf(
        &authority,
        "dev",
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        5,
    )
    .unwrap();
}

#[test]
fn an_expired_ca_is_refused() {
    let key = new_key().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name("Old CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 6, 15);
    let cert = params.self_signed(&key).unwrap();
    let tmp = TempDir::new("expired").with_ca(&cert.pem(), &key.serialize_pem());
    let err = load_ca(&tmp.0).unwrap_err();
    assert!(err.contains("expired on"), "{err}");
    assert!(err.contains("2001"), "{err}");
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn missing_ca_names_the_command_and_the_path() {
    let tmp = TempDir::new("missing");
    let err = load_ca(&tmp.0).unwrap_err();
    assert!(err.contains("bulwark cert ca"), "{err}");
    assert!(err.contains("ca.pem"), "{err}");
}

#[test]
fn the_first_certificate_block_is_found_and_kept_verbatim() {
    let pair = make_ca("Block CA", 10).unwrap();
    let block = pair.cert_pem.trim_end();
    let text = format!("a comment\n{}{}\nmore text\n", pair.key_pem, pair.cert_pem);
    let (der, found) = first_certificate(&text).unwrap();
    assert_eq!(found, block);
    assert_eq!(der, pem_certificates(&pair.cert_pem)[0]);
    let only_key = first_certificate(&pair.key_pem).unwrap_err();
    assert!(only_key.contains("BEGIN CERTIFICATE"), "{only_key}");
    assert!(first_certificate("").is_err());
    // A block without its END line, or with bad base64, is an error.
    let cut = block.get(..block.len() / 2).unwrap();
    assert!(first_certificate(cut).is_err());
    let bent = block.replacen('M', "*", 1);
    assert!(first_certificate(&bent).is_err());
}

#[test]
fn truncated_or_corrupt_certificates_are_errors_not_panics() {
    let pair = make_ca("Fuzz CA", 10).unwrap();
    let der = pem_certificates(&pair.cert_pem).remove(0);
    let check = |der: &[u8]| {
        authority(
            PathBuf::from("ca.pem"),
            PathBuf::from("ca.key"),
            der,
            String::new(),
            &pair.key_pem,
        )
    };
    let authority = check(&der).unwrap();
    assert_eq!(authority.subject_der, parse(&der).subject().as_raw());
    for len in 0..der.len() {
        let err = check(&der[..len]).unwrap_err();
        assert!(err.contains("ca.pem"), "prefix {len}: {err}");
    }
    let mut longer = der.clone();
    longer.push(0);
    let err = check(&longer).unwrap_err();
    assert!(err.contains("data after the certificate"), "{err}");
    for at in 0..der.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bent = der.clone();
            bent[at] ^= flip;
            let _ = check(&bent);
        }
    }
}

#[test]
fn device_names() {
    for good in ["sensor-1", "a.b", "Küche", "x_y"] {
        check_device_name(good).unwrap();
    }
    for bad in [
        "", "a/b", "#", "a+b", "..", "a..b", ".", "a\\b", "a\0b", "a\nb",
    ] {
        assert!(check_device_name(bad).is_err(), "{bad:?} accepted");
    }
    assert!(check_device_name(&"x".repeat(65)).is_err());
}

#[test]
fn server_names() {
    let names =
        subject_alt_names(&["Broker.Example", "127.0.0.1", "::1", "broker.example"]).unwrap();
    assert_eq!(names.common_name, "Broker.Example");
    assert_eq!(
        names.described,
        ["DNS:broker.example", "IP:127.0.0.1", "IP:::1"]
    );
    subject_alt_names(&["*.example.com"]).unwrap();
    let long_label = "a".repeat(64);
    for bad in [
        "",
        "a b",
        "a..b",
        "-a.b",
        "a*.b",
        "[::1]",
        "x.",
        long_label.as_str(),
    ] {
        assert!(subject_alt_names(&[bad]).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn shell_words() {
    assert_eq!(shell_word(Path::new("./certs/ca.pem")), "./certs/ca.pem");
    assert_eq!(shell_word(Path::new("my certs/a'b")), "'my certs/a'\\''b'");
}
