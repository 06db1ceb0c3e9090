//! `bulwark cert`: a small certificate authority for the broker's TLS listeners and its devices.
//!
//! `bulwark cert ca` makes a CA (ECDSA P-256, SHA-256), `bulwark cert server` a server
//! certificate chain signed by it, `bulwark cert client` a device certificate whose common name
//! becomes the device's MQTT identity. [`ensure_first_run`] gives `serve` a CA and a server
//! certificate on a secure first start. Private keys are written with mode 0600 and no file is
//! replaced without `--force`.
//!
//! An existing CA is read back with `x509-parser` (checked: CA flag, keyCertSign, expiry, that
//! the key belongs to it) and becomes an `rcgen` issuer; anything malformed is an error.

use std::fs::{self, OpenOptions};
use std::io::{self, Cursor, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use x509_parser::error::PEMError;
use x509_parser::parse_x509_certificate;
use x509_parser::pem::Pem;

/// File names inside a certificate directory.
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

const DEFAULT_CA_NAME: &str = "Bulwark CA";
const DEFAULT_CA_DAYS: u32 = 3650;
const DEFAULT_LEAF_DAYS: u32 = 825;
/// Upper bound of `--days` (100 years); keeps every date inside what X.509 can encode.
const MAX_DAYS: i64 = 36_500;
/// Certificates start this long before now, for peers whose clocks run behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Largest certificate or key file read back.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// X.520 upper bound of a common name.
const MAX_CN_CHARS: usize = 64;
/// 9999-12-31T23:59:59Z, the last second a certificate date can hold.
const MAX_UNIX_TIME: u64 = 253_402_300_799;
/// Names every first-run server certificate carries.
const FIRST_RUN_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The broker's data directory by default (`bulwark serve --data-dir`).
const DATA_DIR: &str = "bulwark-data";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Make a certificate authority and the server and device certificates it signs.
#[derive(Debug, clap::Args)]
pub(crate) struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertCommand {
    /// Create a certificate authority: DIR/ca.pem (certificate) and DIR/ca.key (private key).
    Ca {
        /// Directory to write to (created with mode 0700 if missing); the default is the
        /// broker's data directory.
        #[arg(long, value_name = "DIR", default_value = DATA_DIR)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = DEFAULT_CA_NAME)]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS))]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create a server certificate signed by the CA: DIR/server.pem (the certificate followed
    /// by the CA certificate) and DIR/server.key.
    Server {
        /// A host name or IP address the server is reached by (repeatable; the first is the
        /// common name).
        #[arg(long = "name", value_name = "HOST", required = true)]
        names: Vec<String>,
        #[command(flatten)]
        leaf: LeafArgs,
    },
    /// Create a device (client) certificate signed by the CA: DIR/DEVICE.pem and
    /// DIR/DEVICE.key (and DIR/DEVICE.p12 with --p12). The common name is the device's identity
    /// on the broker.
    Client {
        /// The device's name: its certificate's common name and the files' name.
        #[arg(long, value_name = "DEVICE")]
        cn: String,
        /// Also write DIR/DEVICE.p12 (PKCS#12: the key, the certificate and the CA certificate,
        /// AES-256 encrypted), what browsers and operating systems import a client
        /// certificate from. Its password is generated and printed once, unless
        /// --p12-password-file names a file to read it from.
        #[arg(long)]
        p12: bool,
        /// Read the PKCS#12 password from the first line of this file instead.
        #[arg(long, value_name = "FILE", requires = "p12")]
        p12_password_file: Option<PathBuf>,
        #[command(flatten)]
        leaf: LeafArgs,
    },
}

/// Options every certificate signed by the CA takes.
#[derive(Debug, clap::Args)]
struct LeafArgs {
    /// Directory holding ca.pem and ca.key; the default is the broker's data directory, where
    /// `bulwark serve` makes its CA.
    #[arg(long, value_name = "DIR", default_value = DATA_DIR)]
    ca_dir: PathBuf,
    /// Directory to write to (created with mode 0700 if missing); the default is --ca-dir, so
    /// that private keys stay out of the working tree.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Days the certificate is valid (never past the CA's own end).
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=MAX_DAYS))]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

impl LeafArgs {
    /// Where the files go: --out, else the CA's directory.
    fn out(&self) -> &Path {
        self.out.as_deref().unwrap_or(&self.ca_dir)
    }
}

/// Runs `bulwark cert ...`: 0 on success, 1 with `error: ...` on stderr otherwise.
pub(crate) fn run(args: CertArgs) -> ExitCode {
    let result = match args.command {
        CertCommand::Ca {
            out,
            name,
            days,
            force,
        } => run_ca(&out, &name, days, force),
        CertCommand::Server { names, leaf } => run_server(&names, &leaf),
        CertCommand::Client {
            cn,
            p12,
            p12_password_file,
            leaf,
        } => {
            let p12 = p12.then_some(p12_password_file);
            run_client(&cn, p12.as_ref().map(Option::as_deref), &leaf)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What [`ensure_first_run`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FirstRun {
    /// The CA certificate (trust anchor for clients, and for client certificates).
    pub(crate) ca: PathBuf,
    /// The server certificate chain: the server certificate, then the CA certificate.
    pub(crate) cert: PathBuf,
    /// The server's private key.
    pub(crate) key: PathBuf,
    /// Whether anything was created by this call.
    pub(crate) created: bool,
}

/// Makes sure `dir` holds a CA (`ca.pem`, `ca.key`) and a server certificate (`server.pem`,
/// `server.key`) for `hosts` plus `localhost`, `127.0.0.1` and `::1`. The directory is created
/// with mode 0700 if missing; a pair that exists is left alone; a pair with one file missing is
/// an error (it would otherwise be silently replaced).
pub(crate) fn ensure_first_run(dir: &Path, hosts: &[String]) -> Result<FirstRun, String> {
    let ca = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    let cert = dir.join(SERVER_CERT);
    let key = dir.join(SERVER_KEY);
    let mut created = false;
    if !pair_present(&ca, &ca_key)? {
        ensure_dir(dir)?;
        let pair = make_ca(DEFAULT_CA_NAME, DEFAULT_CA_DAYS)?;
        write_files(&[
            (&ca_key, &pair.key_pem, KEY_MODE),
            (&ca, &pair.cert_pem, CERT_MODE),
        ])?;
        created = true;
    }
    if !pair_present(&cert, &key)? {
        let mut names: Vec<&str> = hosts.iter().map(String::as_str).collect();
        names.extend(FIRST_RUN_HOSTS);
        let sans = subject_alt_names(&names)?;
        let authority = load_ca(dir)?;
        let leaf = make_leaf(
            &authority,
            &sans.common_name,
            sans.names,
            ExtendedKeyUsagePurpose::ServerAuth,
            DEFAULT_LEAF_DAYS,
        )?;
        let chain = chain_pem(&leaf.cert_pem, &authority.cert_block);
        write_files(&[(&key, &leaf.key_pem, KEY_MODE), (&cert, &chain, CERT_MODE)])?;
        created = true;
    }
    Ok(FirstRun {
        ca,
        cert,
        key,
        created,
    })
}

fn run_ca(out: &Path, name: &str, days: u32, force: bool) -> Result<(), String> {
    check_ca_name(name)?;
    let cert_path = out.join(CA_CERT);
    let key_path = out.join(CA_KEY);
    refuse_existing(&[&key_path, &cert_path], force)?;
    let pair = make_ca(name, days)?;
    ensure_dir(out)?;
    replace_if(force, &[&key_path, &cert_path])?;
    write_files(&[
        (&key_path, &pair.key_pem, KEY_MODE),
        (&cert_path, &pair.cert_pem, CERT_MODE),
    ])?;
    println!(
        "wrote {} (CA private key, mode 0600: it signs every certificate; keep it safe)",
        key_path.display()
    );
    println!(
        "wrote {} (CA certificate \"{name}\", {days} days: the trust anchor for clients and \
         for the broker's client-certificate check)",
        cert_path.display()
    );
    Ok(())
}

fn run_server(names: &[String], leaf: &LeafArgs) -> Result<(), String> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let sans = subject_alt_names(&names)?;
    let cert_path = leaf.out().join(SERVER_CERT);
    let key_path = leaf.out().join(SERVER_KEY);
    let authority = load_ca(&leaf.ca_dir)?;
    refuse_existing(&[&key_path, &cert_path], leaf.force)?;
    let issued = make_leaf(
        &authority,
        &sans.common_name,
        sans.names,
        ExtendedKeyUsagePurpose::ServerAuth,
        leaf.days,
    )?;
    let chain = chain_pem(&issued.cert_pem, &authority.cert_block);
    ensure_dir(leaf.out())?;
    replace_if(leaf.force, &[&key_path, &cert_path])?;
    write_files(&[
        (&key_path, &issued.key_pem, KEY_MODE),
        (&cert_path, &chain, CERT_MODE),
    ])?;
    if issued.clamped {
        println!(
            "note: the CA ends sooner than {} days; so does this certificate",
            leaf.days
        );
    }
    println!(
        "wrote {} (server private key, mode 0600)",
        key_path.display()
    );
    println!(
        "wrote {} (server certificate for {}, followed by the CA certificate)",
        cert_path.display(),
        sans.described.join(", ")
    );
    Ok(())
}

/// `cert client`; `p12` is `Some` for --p12, with the password file if one is named.
fn run_client(cn: &str, p12: Option<Option<&Path>>, leaf: &LeafArgs) -> Result<(), String> {
    check_device_name(cn)?;
    let out = leaf.out();
    let cert_path = out.join(format!("{cn}.pem"));
    let key_path = out.join(format!("{cn}.key"));
    let p12_path = out.join(format!("{cn}.p12"));
    let authority = load_ca(&leaf.ca_dir)?;
    let mut paths: Vec<&Path> = vec![&key_path, &cert_path];
    if p12.is_some() {
        paths.push(&p12_path);
    }
    for path in &paths {
        if same_file(path, &authority.cert_path) || same_file(path, &authority.key_path) {
            return Err(format!(
                "refusing to write the device certificate for {cn:?} over the CA's own file {}",
                path.display()
            ));
        }
    }
    refuse_existing(&paths, leaf.force)?;
    // The password before anything is written: a bad password file leaves no files behind.
    let p12_password = match p12 {
        None => None,
        Some(Some(file)) => Some((read_p12_password(file)?, false)),
        Some(None) => Some((
            bulwark_auth::password::generate_password(24)
                .ok_or("the operating system's random generator is unavailable")?,
            true,
        )),
    };
    let issued = make_leaf(
        &authority,
        cn,
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        leaf.days,
    )?;
    let p12_bytes = match &p12_password {
        Some((password, _)) => Some(pkcs12(cn, &issued, &authority.cert_der, password)?),
        None => None,
    };
    ensure_dir(out)?;
    replace_if(leaf.force, &paths)?;
    write_files(&[
        (&key_path, &issued.key_pem, KEY_MODE),
        (&cert_path, &issued.cert_pem, CERT_MODE),
    ])?;
    if let Some(bytes) = &p12_bytes
        && let Err(err) = create_file_bytes(&p12_path, bytes, KEY_MODE)
    {
        let _ = fs::remove_file(&key_path);
        let _ = fs::remove_file(&cert_path);
        return Err(err);
    }
    if issued.clamped {
        println!(
            "note: the CA ends sooner than {} days; so does this certificate",
            leaf.days
        );
    }
    println!(
        "wrote {} (device private key, mode 0600)",
        key_path.display()
    );
    println!(
        "wrote {} (device certificate, CN={cn}, for TLS client authentication)",
        cert_path.display()
    );
    if let Some((password, generated)) = &p12_password {
        println!(
            "wrote {} (PKCS#12 with the key, the certificate and the CA certificate, mode 0600: \
             import it into a browser or the system's certificate store)",
            p12_path.display()
        );
        if *generated {
            println!("PKCS#12 password (shown this once): {password}");
        }
    }
    println!(
        "{}",
        client_hint(cn, &authority.cert_path, &cert_path, &key_path)
    );
    Ok(())
}

/// How to try a new device certificate. The topic is one the first run's ACL lets the device
/// use (`devices/{username}/#`, and a certificate's common name is its username), so the hint
/// works as printed against `bulwark serve`'s defaults.
fn client_hint(cn: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    let topic = shell_word(Path::new(&format!("devices/{cn}/hello")));
    format!(
        "try (the default ACL lets {cn:?} use devices/{cn}/#):\n\
         \x20 mosquitto_pub --cafile {} --cert {} --key {} -h localhost -p 8883 -t {topic} -m hello",
        shell_word(ca),
        shell_word(cert),
        shell_word(key),
    )
}

/// The first line of `file`, the PKCS#12 password.
fn read_p12_password(file: &Path) -> Result<String, String> {
    let text = read_limited(file, "PKCS#12 password file", "name an existing file")?;
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        return Err(format!(
            "the PKCS#12 password file {} is empty",
            file.display()
        ));
    }
    Ok(password.to_owned())
}

/// A PKCS#12 archive of the device's key and certificate chain (the certificate, then the CA
/// certificate), encrypted with PBES2 (PBKDF2-HMAC-SHA-256, AES-256-CBC) and an HMAC-SHA-256
/// MAC: what current browsers, operating systems and OpenSSL 3 import.
fn pkcs12(cn: &str, issued: &Issued, ca_der: &[u8], password: &str) -> Result<Vec<u8>, String> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let bad = |err: p12_keystore::error::Error| format!("cannot write the PKCS#12 file: {err}");
    let leaf = Certificate::from_der(&issued.cert_der).map_err(bad)?;
    let ca = Certificate::from_der(ca_der).map_err(bad)?;
    let key = PrivateKey::from_der(&issued.key_der).map_err(bad)?;
    let mut store = KeyStore::new();
    store.add_entry(
        cn,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(cn, key, [leaf, ca])),
    );
    store.writer(password).write().map_err(bad)
}

/// A fresh certificate and its private key, both PEM.
#[derive(Debug)]
struct Issued {
    cert_pem: String,
    key_pem: String,
    /// The certificate, DER.
    cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    key_der: Vec<u8>,
    /// The validity was cut to end with the CA's.
    clamped: bool,
}

fn new_key() -> Result<KeyPair, String> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|err| format!("cannot generate an ECDSA P-256 key: {err}"))
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn now_unix() -> Result<u64, String> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .map_err(|_| "the system clock is set before 1970".to_owned())
}

/// Sets `not_before` (`from`) and `not_after` (`until`), in seconds since 1970.
fn set_validity(params: &mut CertificateParams, from: u64, until: u64) -> Result<(), String> {
    if until > MAX_UNIX_TIME || from > until {
        return Err(format!(
            "the validity ({from}..{until} seconds since 1970) cannot be written into a \
             certificate; is the system clock right?"
        ));
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from);
    params.not_after = epoch + Duration::from_secs(until);
    Ok(())
}

fn days_to_secs(days: u32) -> u64 {
    u64::from(days).saturating_mul(86_400)
}

fn make_ca(name: &str, days: u32) -> Result<Issued, String> {
    check_ca_name(name)?;
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = now_unix()?;
    set_validity(
        &mut params,
        now.saturating_sub(CLOCK_SKEW.as_secs()),
        now.saturating_add(days_to_secs(days)),
    )?;
    let cert = params
        .self_signed(&key)
        .map_err(|err| format!("cannot sign the CA certificate: {err}"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
        clamped: false,
    })
}

/// A CA read back from its directory, ready to sign.
#[derive(Debug)]
struct Authority {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The CA's subject, key identifier and key usages, with its key.
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's PEM block as found in the file.
    cert_block: String,
    /// The CA certificate, DER.
    cert_der: Vec<u8>,
    /// The CA's subject name, DER, which every certificate it signs must carry as issuer.
    subject_der: Vec<u8>,
    /// The CA's notAfter, in seconds since 1970.
    not_after: i64,
}

fn load_ca(dir: &Path) -> Result<Authority, String> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let hint = format!(
        "run `bulwark cert ca --out {}` first, or point --ca-dir at the directory that holds \
         {CA_CERT} and {CA_KEY}",
        shell_word(dir)
    );
    let cert_text = read_limited(&cert_path, "CA certificate", &hint)?;
    let key_text = read_limited(&key_path, "CA private key", &hint)?;
    let (der, block) = first_certificate(&cert_text).map_err(|err| {
        format!(
            "cannot read the CA certificate {}: {err}",
            cert_path.display()
        )
    })?;
    let block = block.to_owned();
    authority(cert_path, key_path, &der, block, &key_text)
}

/// Checks a CA certificate (DER) and its private key (PEM) and makes them an [`Authority`].
fn authority(
    cert_path: PathBuf,
    key_path: PathBuf,
    der: &[u8],
    cert_block: String,
    key_text: &str,
) -> Result<Authority, String> {
    let unreadable = |err: &dyn std::fmt::Display| {
        format!(
            "cannot read the CA certificate {}: {err}",
            cert_path.display()
        )
    };
    let (rest, cert) = parse_x509_certificate(der).map_err(|err| unreadable(&err))?;
    if !rest.is_empty() {
        return Err(unreadable(&"data after the certificate"));
    }
    let constraints = cert.basic_constraints().map_err(|err| unreadable(&err))?;
    if !constraints.is_some_and(|ext| ext.value.ca) {
        return Err(format!(
            "{} is not a CA certificate (its basic constraints do not say CA:TRUE)",
            cert_path.display()
        ));
    }
    // No key usage extension at all leaves every use open.
    let usage = cert.key_usage().map_err(|err| unreadable(&err))?;
    if usage.is_some_and(|ext| !ext.value.key_cert_sign()) {
        return Err(format!(
            "{} may not sign certificates (its key usage lacks keyCertSign)",
            cert_path.display()
        ));
    }
    let not_after = cert.validity().not_after;
    let now = i64::try_from(now_unix()?).unwrap_or(i64::MAX);
    if not_after.timestamp() <= now {
        return Err(format!(
            "the CA certificate {} expired on {not_after}; make a new CA with \
             `bulwark cert ca --force`",
            cert_path.display()
        ));
    }
    let key = KeyPair::from_pem(key_text).map_err(|err| {
        format!(
            "cannot read the CA private key {}: {err} (expected an unencrypted PKCS#8 PEM key, \
             \"BEGIN PRIVATE KEY\")",
            key_path.display()
        )
    })?;
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(format!(
            "the CA private key {} does not belong to the CA certificate {}",
            key_path.display(),
            cert_path.display()
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&der.into(), key).map_err(|err| {
        format!(
            "cannot read the subject of the CA certificate {}: {err}",
            cert_path.display()
        )
    })?;
    Ok(Authority {
        subject_der: cert.subject().as_raw().to_vec(),
        not_after: not_after.timestamp(),
        cert_path,
        key_path,
        issuer,
        cert_block,
        cert_der: der.to_vec(),
    })
}

/// The first CERTIFICATE block of PEM text: its DER and its text, BEGIN to END line.
fn first_certificate(text: &str) -> Result<(Vec<u8>, &str), String> {
    let mut rest = text;
    loop {
        let (pem, used) = Pem::read(Cursor::new(rest.as_bytes())).map_err(|err| match err {
            PEMError::MissingHeader => "no \"-----BEGIN CERTIFICATE-----\" line".to_owned(),
            other => format!("bad PEM: {other}"),
        })?;
        // `used` ends a line or the text, so it is a character boundary.
        let block = rest.get(..used).unwrap_or_default();
        rest = rest.get(used..).unwrap_or_default();
        if pem.label == "CERTIFICATE" {
            let start = block.find("-----BEGIN").unwrap_or_default();
            let block = block.get(start..).unwrap_or_default().trim_end();
            return Ok((pem.contents, block));
        }
        if used == 0 {
            return Err("no \"-----BEGIN CERTIFICATE-----\" line".to_owned());
        }
    }
}

fn make_leaf(
    authority: &Authority,
    cn: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    days: u32,
) -> Result<Issued, String> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(cn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let now = now_unix()?;
    let wanted = now.saturating_add(days_to_secs(days));
    let ca_end = u64::try_from(authority.not_after).unwrap_or(0);
    let clamped = wanted > ca_end;
    set_validity(
        &mut params,
        now.saturating_sub(CLOCK_SKEW.as_secs()),
        wanted.min(ca_end),
    )?;
    let cert = params
        .signed_by(&key, &authority.issuer)
        .map_err(|err| format!("cannot sign the certificate for {cn:?}: {err}"))?;
    // The issuer name was rebuilt from the CA certificate; a chain only verifies if it is
    // byte for byte the CA's subject.
    let (_, written) = parse_x509_certificate(cert.der())
        .map_err(|err| format!("the new certificate does not read back: {err}"))?;
    if written.issuer().as_raw() != authority.subject_der.as_slice() {
        return Err(format!(
            "the subject name of the CA certificate {} uses an encoding this tool cannot \
             reproduce; sign with a CA made by `bulwark cert ca`",
            authority.cert_path.display()
        ));
    }
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
        clamped,
    })
}

/// The leaf certificate followed by the CA certificate.
fn chain_pem(leaf: &str, ca_block: &str) -> String {
    let mut chain = String::with_capacity(leaf.len() + ca_block.len() + 2);
    chain.push_str(leaf);
    if !chain.ends_with('\n') {
        chain.push('\n');
    }
    chain.push_str(ca_block);
    chain.push('\n');
    chain
}

/// Server names, checked, as subject alternative names.
#[derive(Debug)]
struct Names {
    common_name: String,
    names: Vec<SanType>,
    /// Each name as `DNS:...` or `IP:...`, for messages.
    described: Vec<String>,
}

/// Each name as an IP address SAN if it parses as one, as a DNS SAN otherwise (lower-cased);
/// duplicates dropped; the first name is the common name.
fn subject_alt_names(names: &[&str]) -> Result<Names, String> {
    let mut out = Names {
        common_name: String::new(),
        names: Vec::new(),
        described: Vec::new(),
    };
    for name in names {
        let (san, described) = match name.parse::<IpAddr>() {
            Ok(ip) => (SanType::IpAddress(ip), format!("IP:{ip}")),
            Err(_) => {
                let lower = name.to_ascii_lowercase();
                check_dns_name(&lower)?;
                let ia5 = Ia5String::try_from(lower.as_str())
                    .map_err(|err| format!("host name {name:?}: {err}"))?;
                (SanType::DnsName(ia5), format!("DNS:{lower}"))
            }
        };
        if out.names.contains(&san) {
            continue;
        }
        if out.names.is_empty() {
            out.common_name = (*name).to_owned();
        }
        out.names.push(san);
        out.described.push(described);
    }
    if out.names.is_empty() {
        return Err("no host name given (pass --name HOST)".to_owned());
    }
    Ok(out)
}

fn check_dns_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "host name {name:?} is neither an IP address nor a valid DNS name: {why}"
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    let labels = name.strip_prefix("*.").unwrap_or(name);
    for label in labels.split('.') {
        if label.is_empty() {
            return bad("it has an empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, '-', '_' and '.' are allowed (and a leading '*.')");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(())
}

fn check_ca_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("the CA name (--name) is empty".to_owned());
    }
    if name.chars().any(char::is_control) {
        return Err(format!("the CA name {name:?} contains a control character"));
    }
    if name.chars().count() > MAX_CN_CHARS {
        return Err(format!(
            "the CA name {name:?} is longer than {MAX_CN_CHARS} characters"
        ));
    }
    Ok(())
}

/// A device name becomes an MQTT identity (where `+`, `#` and `/` would act as wildcards or
/// levels in ACL templates) and a file name (where separators and `..` would leave `--out`).
fn check_device_name(cn: &str) -> Result<(), String> {
    let why = if cn.is_empty() {
        Some("it is empty")
    } else if cn.contains('\0') {
        Some("it contains NUL")
    } else if cn.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if cn.contains('+') {
        Some("it contains '+', an MQTT wildcard")
    } else if cn.contains('#') {
        Some("it contains '#', an MQTT wildcard")
    } else if cn.contains('/') || cn.contains('\\') || cn.contains(std::path::MAIN_SEPARATOR) {
        Some("it contains a path separator ('/' or '\\')")
    } else if cn.contains("..") || cn == "." {
        Some("it contains '..' or is '.'")
    } else if cn.chars().count() > MAX_CN_CHARS {
        Some("it is longer than 64 characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!(
            "--cn {cn:?} cannot name a device: {why} (the name becomes the device's MQTT \
             identity and its file name)"
        )),
        None => Ok(()),
    }
}

/// Quotes a path for the printed shell example when it needs it.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@+=,".contains(&b))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

// ---- files ----

fn exists(path: &Path) -> Result<bool, String> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(format!("cannot look at {}: {err}", path.display())),
    }
}

/// Whether both files of a pair exist; one without the other is an error.
fn pair_present(first: &Path, second: &Path) -> Result<bool, String> {
    match (exists(first)?, exists(second)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(half_pair(first, second)),
        (false, true) => Err(half_pair(second, first)),
    }
}

fn half_pair(present: &Path, missing: &Path) -> String {
    format!(
        "{} exists but {} does not: restore it, or remove both to have them made again",
        present.display(),
        missing.display()
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), String> {
    if force {
        return Ok(());
    }
    for path in paths {
        if exists(path)? {
            return Err(format!(
                "{} already exists; refusing to overwrite it (pass --force to replace it)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// With `--force`, removes the files about to be written, so that they are created afresh
/// with their own mode rather than keeping an old one.
fn replace_if(force: bool, paths: &[&Path]) -> Result<(), String> {
    if !force {
        return Ok(());
    }
    for path in paths {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("cannot replace {}: {err}", path.display())),
        }
    }
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
fn ensure_dir(dir: &Path) -> Result<(), String> {
    bulwark_server::files::ensure_dir(dir)
}

/// Creates each file (never replacing one) with its mode; if one fails, the ones already
/// written by this call are removed again.
fn write_files(files: &[(&Path, &str, u32)]) -> Result<(), String> {
    let mut written: Vec<&Path> = Vec::with_capacity(files.len());
    for (path, contents, mode) in files {
        if let Err(err) = create_file(path, contents, *mode) {
            for done in written {
                let _ = fs::remove_file(done);
            }
            return Err(err);
        }
        written.push(path);
    }
    Ok(())
}

fn create_file(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    create_file_bytes(path, contents.as_bytes(), mode)
}

/// [`create_file`] for binary contents.
fn create_file_bytes(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|err| {
        if err.kind() == io::ErrorKind::AlreadyExists {
            format!(
                "{} already exists; refusing to overwrite it (pass --force to replace it)",
                path.display()
            )
        } else {
            format!("cannot create {}: {err}", path.display())
        }
    })?;
    let result = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(err) = result {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(format!("cannot write {}: {err}", path.display()));
    }
    Ok(())
}

/// Reads a text file of at most [`MAX_FILE_BYTES`]; a missing file gets `hint`.
fn read_limited(path: &Path, what: &str, hint: &str) -> Result<String, String> {
    if !path.exists() {
        return Err(format!("no {what} at {}: {hint}", path.display()));
    }
    bulwark_server::files::read_text(path, what, MAX_FILE_BYTES)
}

#[cfg(test)]
mod tests;
