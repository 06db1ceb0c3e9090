//! `bulwark`: the command-line entry point. `bulwark serve` runs the broker; `bulwark decode`
//! runs the broker's own packet decoder over a hex dump and explains the verdict.
//!
//! The binary parses arguments and wires crates together; protocol logic stays in the crates
//! below it.
#![forbid(unsafe_code)]

mod acl;
mod admin;
mod audit;
mod ban;
mod cert;
mod config;
mod logging;
mod store;
mod user;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bulwark_proto::{Decoder, DecoderLimits, ProtocolVersion};
use bulwark_server::{ListenerConfig, Server, ServerConfig};
use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    name = "bulwark",
    version,
    about = "A security-first MQTT broker",
    long_about = "A security-first MQTT broker.\n\n\
        `bulwark serve` without --config and --listen runs the secure first run: a CA, a server \
        certificate, a password store with the user \"admin\" and an ACL are made in \
        ./bulwark-data; MQTT over TLS is served on 0.0.0.0:8883 and [::]:8883 (clients with a \
        certificate from that CA or a username and password) and plain MQTT on 127.0.0.1:1883 \
        and [::1]:1883 (this machine only, with passwords). Nobody connects anonymously."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker. Without --config or --listen: the secure first run (a CA, a server
    /// certificate, the user "admin" and an ACL in --data-dir; MQTT over TLS on 0.0.0.0:8883
    /// and [::]:8883, plain MQTT with passwords on 127.0.0.1:1883 and [::1]:1883).
    #[command(long_about = SERVE_ABOUT)]
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Plain MQTT (no TLS) on this address instead of the configured or first-run
        /// listeners (repeatable; loopback only). Without --config, users and ACL come from
        /// --data-dir when it has them; without a password store nobody gets in unless
        /// --dangerous-allow-anonymous is given.
        #[arg(long, value_name = "IP:PORT", value_parser = config::parse_bind)]
        listen: Vec<SocketAddr>,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Log filter, e.g. "info" or "bulwark_server=debug" (RUST_LOG also works).
        #[arg(long, default_value = "info")]
        log_level: String,
        /// The data directory: the first run's CA, server certificate and key, password
        /// store, admin password, ACL, ban list and audit file, and the durable store
        /// (store.redb) unless the configuration names another place. Made if missing.
        #[arg(long, value_name = "DIR", default_value = "bulwark-data")]
        data_dir: PathBuf,
        /// Lets clients without credentials in on the --listen listeners (loopback only,
        /// for local testing); a warning is logged at start.
        #[arg(long, requires = "listen")]
        dangerous_allow_anonymous: bool,
        /// Worker threads (overrides `[server] workers`); 0: one per available core.
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..=1024))]
        workers: Option<u16>,
    },
    /// Decode MQTT packets from a hex dump with the broker's strict decoder and print each
    /// packet, or the rule the bytes break and the reason code the broker would answer with.
    Decode {
        /// The bytes, as hex; spaces and colons are ignored (e.g. "10 0c 00 04 4d 51 54 54 ...").
        hex: String,
        /// Decode as the client would (packets a server sends); the default is the server side.
        #[arg(long)]
        client: bool,
        /// Protocol version for the client side (the server side learns it from CONNECT).
        #[arg(long, value_enum, default_value_t = Version::V5)]
        protocol: Version,
    },
    /// Load-test an MQTT broker (any broker): throughput, latency, connections.
    Bench(bulwark_bench::BenchArgs),
    /// Make a certificate authority and the server and device certificates it signs.
    Cert(cert::CertArgs),
    /// Manage the users of the password store: add, passwd, remove, disable, enable, groups,
    /// list, import-mosquitto.
    User(user::UserArgs),
    /// ACL files: explain a decision (check), find mistakes (lint), convert a Mosquitto
    /// acl_file (import-mosquitto).
    Acl(acl::AclArgs),
    /// The ban list: add, remove, list bans of addresses, usernames and client ids.
    Ban(ban::BanArgs),
    /// The admin API's tokens: add (shown once), list, remove.
    Admin(admin::AdminArgs),
    /// The durable store (sessions, queued and retained messages): check, repair.
    Store(store::StoreArgs),
    /// The audit trail: verify its hash chain and signatures, show its records, print the
    /// checkpoint key.
    Audit(audit::AuditArgs),
}

/// The long help of `bulwark serve`: what each way to start it serves.
const SERVE_ABOUT: &str = "Run the broker.

Without --config or --listen (the secure first run), serve makes, once, in --data-dir
(./bulwark-data): a CA (ca.pem, ca.key) and a server certificate for this host, localhost,
127.0.0.1 and ::1 (server.pem, server.key); a password store (passwords.toml) with the user
\"admin\" and a generated password (admin-password.txt, mode 0600); an ACL (acl.toml: admin may
do everything, every other user its own devices/USERNAME/#); and it keeps the durable store
(store.redb), the ban list and the audit file there. It serves:
  MQTT over TLS on 0.0.0.0:8883 and [::]:8883, to clients with a certificate from that CA or a
    username and password;
  plain MQTT on 127.0.0.1:1883 and [::1]:1883 (this machine only), with passwords.
Nobody connects anonymously. A host without IPv6 serves the IPv4 listeners only.

With --config FILE: the listeners and settings of that file (every key: docs/config.md).

With --listen IP:PORT: plain MQTT on that loopback address instead of the listeners; without
--config, with the users and ACL of --data-dir if it has them (no ACL file: authorization is
off), and without a password store nobody gets in: add a user with `bulwark user add NAME --file DATA_DIR/passwords.toml`, or
let anyone in for local testing with --dangerous-allow-anonymous.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Version {
    #[value(name = "3.1")]
    V3_1,
    #[value(name = "3.1.1")]
    V3_1_1,
    #[value(name = "5")]
    V5,
}

impl From<Version> for ProtocolVersion {
    fn from(value: Version) -> Self {
        match value {
            Version::V3_1 => Self::V3_1,
            Version::V3_1_1 => Self::V3_1_1,
            Version::V5 => Self::V5,
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            log_format,
            log_level,
            workers,
            data_dir,
            dangerous_allow_anonymous,
        } => serve(
            config,
            listen,
            &data_dir,
            workers,
            dangerous_allow_anonymous,
            log_format,
            &log_level,
        ),
        Command::Decode {
            hex,
            client,
            protocol,
        } => decode(&hex, client, protocol.into()),
        Command::Bench(args) => bulwark_bench::run(args),
        Command::Cert(args) => cert::run(args),
        Command::User(args) => user::run(args),
        Command::Acl(args) => acl::run(args),
        Command::Ban(args) => ban::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Store(args) => store::run(args),
        Command::Audit(args) => audit::run(args),
    }
}

fn init_logging(format: LogFormat, level: &str) {
    logging::init(
        match format {
            LogFormat::Text => logging::Format::Text,
            LogFormat::Json => logging::Format::Json,
        },
        level,
    );
}

/// The secure first run: no configuration given. A CA and a server certificate in `dir`
/// (made once, kept afterwards), MQTT over TLS on 0.0.0.0:8883 for clients with a certificate
/// from that CA, and plaintext only on 127.0.0.1:1883.
fn first_run_config(dir: &std::path::Path) -> Result<ServerConfig, String> {
    let mut hosts = Vec::new();
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() && name != "localhost" {
            hosts.push(name.to_owned());
        }
    }
    let pki = cert::ensure_first_run(dir, &hosts)
        .map_err(|e| format!("secure first run in {}: {e}", dir.display()))?;
    let store = dir.join(PASSWORD_STORE);
    let admin_file = dir.join(ADMIN_PASSWORD_FILE);
    let admin = user::ensure_admin(&store, &admin_file)
        .map_err(|e| format!("secure first run in {}: {e}", dir.display()))?;
    let mut tls = bulwark_server::tls::TlsSettings::new(&pki.cert, &pki.key);
    // A certificate from the CA, or a username and password.
    tls.client_auth = bulwark_server::tls::ClientAuth::Optional;
    tls.client_ca = Some(pki.ca.clone());
    let acl = dir.join(ACL_FILE);
    if !acl.exists() {
        bulwark_server::files::write_new(&acl, first_run_acl().as_bytes())
            .map_err(|e| format!("secure first run in {}: {e}", dir.display()))?;
    }
    let mut config = ServerConfig::default();
    config.auth.password_file = Some(store.clone());
    config.audit.file = Some(dir.join(AUDIT_FILE));
    config.acl.file = Some(acl.clone());
    config.bans.file = Some(dir.join(BANS_FILE));
    config.storage.path = Some(dir.join(config::STORE_FILE));
    config.listeners = first_run_listeners(&tls);
    let ca = pki.ca.display();
    let shown_dir = dir.display();
    eprintln!(
        "bulwark: no configuration given: secure defaults.\n\
         \x20 plaintext MQTT on 127.0.0.1:1883 and [::1]:1883 (this machine only), with passwords\n\
         \x20 MQTT over TLS on 0.0.0.0:8883 and [::]:8883, for clients with a certificate from the CA {ca}{}\n\
         \x20 or with a username and password from {}; no anonymous access\n\
         \x20 make a device certificate:  bulwark cert client --cn DEVICE --ca-dir {shown_dir}\n\
         \x20 then connect:  mosquitto_sub -h localhost -p 8883 --cafile {ca} --cert {shown_dir}/DEVICE.pem --key {shown_dir}/DEVICE.key -t 'devices/DEVICE/#' -v\n\
         \x20 add a user:  bulwark user add NAME --file {}\n\
         \x20 ACL (default deny; the group admins: everything, other users: devices/USER/#): {}\n\
         \x20 sessions and retained messages survive restarts in {}\n\
         \x20 security events go to the tamper-evident audit trail {}; check it:  bulwark audit verify --key {} {}",
        if pki.created { " (just created)" } else { "" },
        store.display(),
        store.display(),
        acl.display(),
        dir.join(config::STORE_FILE).display(),
        dir.join(AUDIT_FILE).display(),
        dir.join("audit-signing.pub").display(),
        dir.join("audit*.jsonl").display(),
    );
    if let Some(password) = admin {
        eprint!(
            "{}",
            admin_notice(
                &password,
                &admin_file,
                std::io::IsTerminal::is_terminal(&std::io::stderr())
            )
        );
    }
    config.validate().map_err(|err| err.to_string())?;
    Ok(config)
}

/// The first run's listeners: TLS on every address, IPv4 and IPv6, and plaintext on loopback,
/// IPv4 and IPv6. The IPv6 ones are optional: a host without IPv6 serves the IPv4 ones.
fn first_run_listeners(tls: &bulwark_server::tls::TlsSettings) -> Vec<ListenerConfig> {
    let optional = |listener: ListenerConfig| ListenerConfig {
        optional: true,
        ..listener
    };
    vec![
        ListenerConfig::tcp("tcp-0", SocketAddr::from(([127, 0, 0, 1], 1883))),
        optional(ListenerConfig::tcp(
            "tcp-1",
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 1883)),
        )),
        ListenerConfig::tls("tls-0", SocketAddr::from(([0, 0, 0, 0], 8883)), tls.clone()),
        optional(ListenerConfig::tls(
            "tls-1",
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 8883)),
            tls.clone(),
        )),
    ]
}

/// What the first run says about the administrator's new password. The password itself only
/// goes to a terminal: standard error of a service ends up in journals and log files, where a
/// password must not, so there it points to the 0600 file instead.
fn admin_notice(password: &str, file: &std::path::Path, terminal: bool) -> String {
    let file = file.display();
    let connect = format!(
        "\x20 connect:  mosquitto_sub -h 127.0.0.1 -p 1883 -u admin -P \"$(cat {file})\" -t '#' -v\n"
    );
    if terminal {
        format!(
            "bulwark: created the user \"admin\" with the password (shown this once, also in {file}, mode 0600):\n\
             \x20   {password}\n{connect}"
        )
    } else {
        format!(
            "bulwark: created the user \"admin\"; its password is in {file} (mode 0600, readable by this user only)\n{connect}"
        )
    }
}

/// The first run's password store, administrator password and audit file, in the data
/// directory.
const PASSWORD_STORE: &str = "passwords.toml";
const ADMIN_PASSWORD_FILE: &str = "admin-password.txt";
const AUDIT_FILE: &str = "audit.jsonl";
const ACL_FILE: &str = "acl.toml";
const BANS_FILE: &str = "bans.toml";

/// The first run's ACL: [`FIRST_RUN_ACL_HEAD`], then administrators may do everything
/// ([`acl::ADMIN_RULE`]), then [`FIRST_RUN_ACL`]: every other user its own
/// `devices/{username}/#`; anything else waits for a rule.
fn first_run_acl() -> String {
    format!("{FIRST_RUN_ACL_HEAD}\n{}\n{FIRST_RUN_ACL}", acl::ADMIN_RULE)
}

const FIRST_RUN_ACL_HEAD: &str =
    "# Bulwark ACL (docs/acl.md). Default deny: what no rule allows is refused, and a deny
# beats any allow. Reloaded when the file changes and on SIGHUP; check a decision with
#   bulwark acl check --file THIS_FILE --user NAME publish|subscribe TOPIC
# (--client-id ID too when a rule uses {client_id}).
";

const FIRST_RUN_ACL: &str = r##"# Every authenticated user (a certificate's name counts as one) its own subtree.
[[rule]]
permission = "allow"
action = "all"
topic = "devices/{username}/#"

# Examples, to adapt:
#
# Each client identifier its own subtree (ids containing + # / never match):
# [[rule]]
# permission = "allow"
# action = "all"
# topic = "devices/{client_id}/#"
#
# Sensor data read-only for the group "readers":
# [[rule]]
# permission = "allow"
# action = "subscribe"
# group = "readers"
# topic = "sensor/#"
"##;

fn load_config(
    path: Option<&PathBuf>,
    listen: Vec<SocketAddr>,
    data_dir: &std::path::Path,
    allow_anonymous: bool,
) -> Result<ServerConfig, String> {
    let mut config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            config::parse_in(&text, &path.display().to_string(), data_dir)
                .map_err(|err| err.to_string())?
        }
        None => ServerConfig {
            storage: bulwark_server::StorageSettings {
                path: Some(data_dir.join(config::STORE_FILE)),
                ..Default::default()
            },
            ..ServerConfig::default()
        },
    };
    if !listen.is_empty() {
        config.listeners = listen
            .into_iter()
            .enumerate()
            .map(|(i, bind)| ListenerConfig {
                dangerous_allow_anonymous: allow_anonymous,
                ..ListenerConfig::tcp(format!("tcp-{i}"), bind)
            })
            .collect();
        // Users and rules of the data directory, if there are some; without rules, these
        // loopback test listeners run without authorization (the server warns).
        let store = data_dir.join(PASSWORD_STORE);
        if path.is_none() && store.is_file() {
            config.auth.password_file = Some(store);
        } else if path.is_none() && !allow_anonymous {
            eprintln!("{}", no_password_store_notice(data_dir));
        }
        let acl = data_dir.join(ACL_FILE);
        if path.is_none() && acl.is_file() {
            config.acl.file = Some(acl);
        }
        if path.is_none() {
            config.bans.file = Some(data_dir.join(BANS_FILE));
        }
        config.validate().map_err(|err| err.to_string())?;
    }
    Ok(config)
}

fn serve(
    config_path: Option<PathBuf>,
    listen: Vec<SocketAddr>,
    data_dir: &std::path::Path,
    workers: Option<u16>,
    allow_anonymous: bool,
    log_format: LogFormat,
    log_level: &str,
) -> ExitCode {
    init_logging(log_format, log_level);
    let first_run = config_path.is_none() && listen.is_empty();
    let loaded = if first_run {
        check_data_dir(data_dir).and_then(|()| first_run_config(data_dir))
    } else {
        load_config(config_path.as_ref(), listen, data_dir, allow_anonymous).and_then(|config| {
            let uses_data_dir = config_path.is_none()
                || config
                    .storage
                    .path
                    .as_ref()
                    .is_some_and(|path| path.starts_with(data_dir));
            if uses_data_dir {
                check_data_dir(data_dir)?;
            }
            Ok(config)
        })
    };
    let mut config = match loaded {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if let Some(workers) = workers {
        config.workers = usize::from(workers);
    }
    // One worker: everything on this thread, which saves a cross-thread wake-up per hop.
    let threads = config.worker_threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(err) => {
                error!(%err, "cannot start");
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        };
        info!(
            version = env!("CARGO_PKG_VERSION"),
            workers = threads,
            "bulwark started"
        );
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// What `serve --listen` says when the data directory has no password store: without one, and
/// without anonymous access, no client can get in.
fn no_password_store_notice(data_dir: &std::path::Path) -> String {
    let store = data_dir.join(PASSWORD_STORE);
    format!(
        "bulwark: no password store ({} does not exist): no client can log in.\n\
         \x20 add a user, then start again:  bulwark user add NAME --file {}\n\
         \x20 or let anyone in, for local testing only:  bulwark serve --listen ADDR:PORT --dangerous-allow-anonymous\n\
         \x20 (`bulwark serve` without --listen makes a password store with the user \"admin\" in {})",
        store.display(),
        store.display(),
        data_dir.display()
    )
}

/// The data directory must be a directory, or not exist yet (it is made then).
fn check_data_dir(dir: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(format!(
            "--data-dir {}: this is a file, not a directory; name a directory (it is made if missing)",
            dir.display()
        )),
        _ => Ok(()),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot watch SIGTERM; only SIGINT stops the broker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn decode(hex: &str, client: bool, version: ProtocolVersion) -> ExitCode {
    let bytes = match parse_hex(hex) {
        Ok(bytes) => bytes,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let mut decoder = if client {
        Decoder::client(version, DecoderLimits::PROTOCOL)
    } else {
        Decoder::server(DecoderLimits::PROTOCOL)
    };
    decoder.set_authenticated();
    decoder.handle_bytes(&bytes);
    loop {
        match decoder.poll_packet() {
            Ok(Some(packet)) => println!("{packet:#?}"),
            Ok(None) => break,
            Err(err) => {
                println!("refused: {err}");
                println!("reason code: {}", err.reason_code());
                return ExitCode::FAILURE;
            }
        }
    }
    if decoder.buffered() > 0 {
        println!(
            "incomplete: {} bytes of a packet wait for more",
            decoder.buffered()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".to_owned());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("not a hex byte: {:?}", String::from_utf8_lossy(pair)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_password_goes_to_a_terminal_only() {
        let file = std::path::Path::new("data/admin-password.txt");
        let shown = admin_notice("Secret-Words-99", file, true);
        assert!(shown.contains("Secret-Words-99"), "{shown}");
        let logged = admin_notice("Secret-Words-99", file, false);
        assert!(!logged.contains("Secret-Words-99"), "{logged}");
        assert!(logged.contains("its password is in data/admin-password.txt"));
        // The command it suggests reads the file rather than holding the password.
        for text in [&shown, &logged] {
            assert!(
                text.contains("-P \"$(cat data/admin-password.txt)\""),
                "{text}"
            );
        }
    }

    #[test]
    fn the_first_run_listens_on_both_families_and_ipv6_is_optional() {
        let tls = bulwark_server::tls::TlsSettings::new("s.pem", "s.key");
        let listeners = first_run_listeners(&tls);
        let shown: Vec<(String, bool)> = listeners
            .iter()
            .map(|l| (l.bind.to_string(), l.optional))
            .collect();
        assert_eq!(
            shown,
            [
                ("127.0.0.1:1883".to_owned(), false),
                ("[::1]:1883".to_owned(), true),
                ("0.0.0.0:8883".to_owned(), false),
                ("[::]:8883".to_owned(), true),
            ]
        );
        assert!(
            listeners
                .iter()
                .all(|l| l.bind.port() == 8883 || l.bind.ip().is_loopback())
        );
    }
}
