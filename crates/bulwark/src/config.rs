//! The TOML configuration file: read into a [`ServerConfig`], every problem reported at once.
//! `docs/config.md` documents each key; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_proto::PROTOCOL_MAX_PACKET_SIZE;
use bulwark_server::tls::{CertFiles, ClientAuth, IdentitySource, TlsSettings, TlsVersion};
use bulwark_server::{ConfigError, ListenerConfig, ListenerKind, ServerConfig};
use toml::{Table, Value};

/// Sections and the keys each may hold; anything else is reported as unknown.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "listener",
        &["name", "kind", "bind", "dangerous_plaintext", "tls"],
    ),
    (
        "listener.tls",
        &[
            "cert",
            "key",
            "ocsp",
            "sni",
            "min_version",
            "alpn",
            "handshake_timeout",
            "client_auth",
            "client_ca",
            "crl",
            "identity",
            "identity_as_client_id",
        ],
    ),
    ("listener.tls.sni", &["cert", "key", "ocsp"]),
    (
        "limits",
        &[
            "max_packet_size",
            "max_unauthenticated_packet_size",
            "connect_timeout",
            "write_timeout",
            "max_keep_alive",
            "max_session_expiry_interval",
            "receive_maximum",
            "max_inflight_out",
            "max_queued_messages",
            "max_queued_bytes",
            "max_subscriptions_per_session",
            "max_topic_levels",
            "max_topic_length",
            "max_client_id_length",
            "max_user_properties",
            "max_retained_messages",
            "topic_alias_maximum",
        ],
    ),
    (
        "mqtt",
        &[
            "queue_qos0_offline",
            "outbound_topic_aliases",
            "response_information_prefix",
        ],
    ),
    ("sys", &["interval"]),
    (
        "server",
        &["shutdown_grace", "workers", "tls_watch_interval"],
    ),
];

struct Reader {
    problems: Vec<String>,
}

impl Reader {
    fn integer(
        &mut self,
        table: &Table,
        section: &str,
        key: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let value = table.get(key)?;
        match value.as_integer().and_then(|v| u64::try_from(v).ok()) {
            Some(v) if (min..=max).contains(&v) => Some(v),
            Some(v) => {
                self.problems.push(format!(
                    "{section}.{key} = {v}: must be between {min} and {max}"
                ));
                None
            }
            None => {
                self.problems.push(format!(
                    "{section}.{key}: expected a non-negative integer, found {}",
                    describe(value)
                ));
                None
            }
        }
    }

    fn boolean(&mut self, table: &Table, section: &str, key: &str) -> Option<bool> {
        let value = table.get(key)?;
        let parsed = value.as_bool();
        if parsed.is_none() {
            self.problems.push(format!(
                "{section}.{key}: expected true or false, found {}",
                describe(value)
            ));
        }
        parsed
    }

    fn string<'a>(&mut self, table: &'a Table, section: &str, key: &str) -> Option<&'a str> {
        let value = table.get(key)?;
        let parsed = value.as_str();
        if parsed.is_none() {
            self.problems.push(format!(
                "{section}.{key}: expected a string, found {}",
                describe(value)
            ));
        }
        parsed
    }

    fn unknown_keys(&mut self, table: &Table, section: &str) {
        self.unknown_keys_as(table, section, section);
    }

    /// Reports keys of `table` that section `kind` does not have, naming them under `shown`
    /// (e.g. `listener[0].tls`).
    fn unknown_keys_as(&mut self, table: &Table, kind: &str, shown: &str) {
        let known = SECTIONS
            .iter()
            .find(|(name, _)| *name == kind)
            .map_or(&[][..], |(_, keys)| *keys);
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                self.problems.push(format!("{shown}.{key}: unknown key"));
            }
        }
    }

    /// A list of strings; a single string is taken as a list of one.
    fn string_list(&mut self, table: &Table, section: &str, key: &str) -> Vec<String> {
        match table.get(key) {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) => out.push(s.to_owned()),
                        None => self.problems.push(format!(
                            "{section}.{key}: expected strings, found {}",
                            describe(item)
                        )),
                    }
                }
                out
            }
            Some(other) => {
                self.problems.push(format!(
                    "{section}.{key}: expected a list of strings, found {}",
                    describe(other)
                ));
                Vec::new()
            }
        }
    }

    fn section<'a>(&mut self, root: &'a Table, name: &str) -> Option<&'a Table> {
        let value = root.get(name)?;
        let table = value.as_table();
        match table {
            Some(table) => self.unknown_keys(table, name),
            None => self.problems.push(format!(
                "[{name}]: expected a table, found {}",
                describe(value)
            )),
        }
        table
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string \"{s}\""),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn to_u16(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Parses the text of a configuration file; `source` names it in errors.
/// One `[[listener]]` table; `None` (with the problems recorded) if it is not usable.
fn read_listener(
    r: &mut Reader,
    table: &Table,
    section: &str,
    index: usize,
    base: &Path,
) -> Option<ListenerConfig> {
    let kind = r.string(table, section, "kind").unwrap_or("tcp");
    if !matches!(kind, "tcp" | "tls") {
        r.problems.push(format!(
            "{section}.kind = \"{kind}\": expected \"tcp\" or \"tls\""
        ));
        return None;
    }
    let name = r
        .string(table, section, "name")
        .map_or_else(|| format!("{kind}-{index}"), str::to_owned);
    let dangerous_plaintext = r
        .boolean(table, section, "dangerous_plaintext")
        .unwrap_or(false);
    let bind = match r.string(table, section, "bind") {
        Some(bind) => match bind.parse::<SocketAddr>() {
            Ok(bind) => Some(bind),
            Err(_) => {
                r.problems.push(format!(
                    "{section}.bind = \"{bind}\": expected ADDRESS:PORT, e.g. \"127.0.0.1:1883\" or \"[::1]:1883\""
                ));
                None
            }
        },
        None if table.contains_key("bind") => None,
        None => {
            r.problems.push(format!("{section}.bind: missing"));
            None
        }
    };
    let tls_section = format!("{section}.tls");
    let kind = match (kind, table.get("tls")) {
        ("tls", Some(Value::Table(tls))) => {
            r.unknown_keys_as(tls, "listener.tls", &tls_section);
            ListenerKind::Tls(Box::new(read_tls(r, tls, &tls_section, base)?))
        }
        ("tls", Some(other)) => {
            r.problems.push(format!(
                "{tls_section}: expected a table, found {}",
                describe(other)
            ));
            return None;
        }
        ("tls", None) => {
            r.problems.push(format!(
                "{tls_section}: missing (a tls listener needs at least cert and key)"
            ));
            return None;
        }
        (_, Some(_)) => {
            r.problems.push(format!(
                "{tls_section}: only a listener with kind = \"tls\" takes TLS settings"
            ));
            return None;
        }
        (_, None) => ListenerKind::Tcp,
    };
    Some(ListenerConfig {
        name,
        bind: bind?,
        kind,
        dangerous_plaintext,
    })
}

fn path(r: &mut Reader, table: &Table, section: &str, key: &str, base: &Path) -> Option<PathBuf> {
    r.string(table, section, key).map(|p| base.join(p))
}

fn read_cert_files(r: &mut Reader, table: &Table, section: &str, base: &Path) -> Option<CertFiles> {
    let cert = path(r, table, section, "cert", base);
    let key = path(r, table, section, "key", base);
    let ocsp = path(r, table, section, "ocsp", base);
    for (name, value) in [("cert", &cert), ("key", &key)] {
        if value.is_none() && !table.contains_key(name) {
            r.problems.push(format!("{section}.{name}: missing"));
        }
    }
    Some(CertFiles {
        cert: cert?,
        key: key?,
        ocsp,
    })
}

fn read_tls(r: &mut Reader, table: &Table, section: &str, base: &Path) -> Option<TlsSettings> {
    let cert = read_cert_files(r, table, section, base);
    let mut sni = Vec::new();
    match table.get("sni") {
        None => {}
        Some(Value::Array(entries)) => {
            for (i, entry) in entries.iter().enumerate() {
                let sub = format!("{section}.sni[{i}]");
                match entry.as_table() {
                    Some(t) => {
                        r.unknown_keys_as(t, "listener.tls.sni", &sub);
                        sni.extend(read_cert_files(r, t, &sub, base));
                    }
                    None => r.problems.push(format!("{sub}: expected a table")),
                }
            }
        }
        Some(other) => r.problems.push(format!(
            "{section}.sni: expected [[listener.tls.sni]] tables, found {}",
            describe(other)
        )),
    }
    let mut settings = TlsSettings::new(PathBuf::new(), PathBuf::new());
    settings.sni = sni;
    match r.string(table, section, "min_version") {
        None | Some("1.2") => {}
        Some("1.3") => settings.min_version = TlsVersion::V1_3,
        Some(other) => r.problems.push(format!(
            "{section}.min_version = \"{other}\": expected \"1.2\" or \"1.3\" (nothing older \
             is offered)"
        )),
    }
    settings.alpn = r.string_list(table, section, "alpn");
    if let Some(v) = r.integer(table, section, "handshake_timeout", 1, 3600) {
        settings.handshake_timeout = Duration::from_secs(v);
    }
    match r.string(table, section, "client_auth") {
        None | Some("none") => {}
        Some("optional") => settings.client_auth = ClientAuth::Optional,
        Some("required") => settings.client_auth = ClientAuth::Required,
        Some(other) => r.problems.push(format!(
            "{section}.client_auth = \"{other}\": expected \"none\", \"optional\" or \"required\""
        )),
    }
    settings.client_ca = path(r, table, section, "client_ca", base);
    settings.crl = r
        .string_list(table, section, "crl")
        .into_iter()
        .map(|p| base.join(p))
        .collect();
    match r.string(table, section, "identity") {
        None | Some("cn") => {}
        Some("san_dns") => settings.identity = IdentitySource::SanDns,
        Some("san_uri") => settings.identity = IdentitySource::SanUri,
        Some("san_email") => settings.identity = IdentitySource::SanEmail,
        Some("dn") => settings.identity = IdentitySource::SubjectDn,
        Some(other) => r.problems.push(format!(
            "{section}.identity = \"{other}\": expected \"cn\", \"san_dns\", \"san_uri\", \
             \"san_email\" or \"dn\""
        )),
    }
    if let Some(v) = r.boolean(table, section, "identity_as_client_id") {
        settings.identity_as_client_id = v;
    }
    settings.cert = cert?;
    Some(settings)
}

pub(crate) fn parse(text: &str, source: &str) -> Result<ServerConfig, ConfigError> {
    // Relative file names in the configuration are relative to the file itself.
    let base = Path::new(source).parent().unwrap_or(Path::new(""));
    let root: Table = text.parse().map_err(|err: toml::de::Error| ConfigError {
        problems: vec![format!("{source}: not valid TOML: {}", err.message())],
    })?;
    let mut r = Reader {
        problems: Vec::new(),
    };
    let mut config = ServerConfig::default();
    for key in root.keys() {
        if !SECTIONS.iter().any(|(name, _)| name == key) {
            r.problems.push(format!("{key}: unknown section or key"));
        }
    }

    if let Some(value) = root.get("listener") {
        match value.as_array() {
            Some(entries) => {
                config.listeners.clear();
                for (i, entry) in entries.iter().enumerate() {
                    let section = format!("listener[{i}]");
                    let Some(table) = entry.as_table() else {
                        r.problems.push(format!("{section}: expected a table"));
                        continue;
                    };
                    r.unknown_keys(table, "listener");
                    if let Some(listener) = read_listener(&mut r, table, &section, i, base) {
                        config.listeners.push(listener);
                    }
                }
            }
            None => r
                .problems
                .push("listener: expected [[listener]] tables".to_owned()),
        }
    }

    if let Some(t) = r.section(&root, "limits") {
        let s = "limits";
        let b = &mut config.broker;
        let max_pkt = u64::from(PROTOCOL_MAX_PACKET_SIZE);
        if let Some(v) = r.integer(t, s, "max_packet_size", 64, max_pkt) {
            config.decoder.max_packet_size = to_u32(v);
            b.max_packet_size = to_u32(v);
        }
        if let Some(v) = r.integer(t, s, "max_unauthenticated_packet_size", 64, max_pkt) {
            config.decoder.max_unauthenticated_packet_size = to_u32(v);
        }
        if let Some(v) = r.integer(t, s, "connect_timeout", 1, 3600) {
            config.connect_timeout = Duration::from_secs(v);
        }
        if let Some(v) = r.integer(t, s, "write_timeout", 1, 3600) {
            config.write_timeout = Duration::from_secs(v);
        }
        if let Some(v) = r.integer(t, s, "max_keep_alive", 1, 65_535) {
            b.max_keep_alive = to_u16(v);
        }
        if let Some(v) = r.integer(t, s, "max_session_expiry_interval", 0, u64::from(u32::MAX)) {
            b.max_session_expiry_interval = to_u32(v);
        }
        if let Some(v) = r.integer(t, s, "receive_maximum", 1, 65_535) {
            b.receive_maximum = to_u16(v);
        }
        if let Some(v) = r.integer(t, s, "max_inflight_out", 1, 65_535) {
            b.max_inflight_out = to_u16(v);
        }
        if let Some(v) = r.integer(t, s, "max_queued_messages", 0, 100_000_000) {
            b.max_queued_messages = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_queued_bytes", 0, 1 << 40) {
            b.max_queued_bytes = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_subscriptions_per_session", 1, 10_000_000) {
            b.max_subscriptions_per_session = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_topic_levels", 1, 65_535) {
            b.max_topic_levels = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_topic_length", 1, 65_535) {
            b.max_topic_length = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_client_id_length", 23, 65_535) {
            b.max_client_id_length = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_user_properties", 0, 65_535) {
            b.max_user_properties = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_retained_messages", 0, 100_000_000) {
            b.max_retained_messages = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "topic_alias_maximum", 0, 65_535) {
            b.topic_alias_maximum = to_u16(v);
        }
    }
    if let Some(t) = r.section(&root, "mqtt") {
        if let Some(v) = r.boolean(t, "mqtt", "queue_qos0_offline") {
            config.broker.queue_qos0_offline = v;
        }
        if let Some(v) = r.boolean(t, "mqtt", "outbound_topic_aliases") {
            config.broker.outbound_topic_aliases = v;
        }
        if let Some(v) = r.string(t, "mqtt", "response_information_prefix") {
            if v.contains(['+', '#']) || v.contains('\0') {
                r.problems.push(format!(
                    "mqtt.response_information_prefix = \"{v}\": must not contain +, # or NUL"
                ));
            } else {
                config.broker.response_information_prefix = Some(v.to_owned());
            }
        }
    }
    if let Some(t) = r.section(&root, "sys") {
        if let Some(v) = r.integer(t, "sys", "interval", 0, 86_400) {
            config.broker.sys_interval = (v > 0).then(|| Duration::from_secs(v));
        }
    }
    if let Some(t) = r.section(&root, "server") {
        if let Some(v) = r.integer(t, "server", "shutdown_grace", 0, 3600) {
            config.shutdown_grace = Duration::from_secs(v);
        }
        if let Some(v) = r.integer(t, "server", "tls_watch_interval", 1, 3600) {
            config.tls_watch_interval = Duration::from_secs(v);
        }
        if let Some(v) = r.integer(t, "server", "workers", 0, 1024) {
            config.workers = usize::try_from(v).unwrap_or(1024);
        }
    }
    if let Err(err) = config.validate() {
        r.problems.extend(err.problems);
    }
    if r.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError {
            problems: r.problems,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_secure_defaults() {
        let config = parse("", "test").unwrap();
        assert_eq!(config, ServerConfig::default());
        assert_eq!(config.listeners.len(), 1);
        assert!(config.listeners.first().unwrap().bind.ip().is_loopback());
    }

    #[test]
    fn keys_are_read() {
        let text = r#"
            [[listener]]
            name = "a"
            bind = "127.0.0.1:1999"
            [[listener]]
            bind = "[::1]:2000"
            [limits]
            max_packet_size = 2048
            max_unauthenticated_packet_size = 1024
            receive_maximum = 10
            max_topic_levels = 8
            [mqtt]
            queue_qos0_offline = true
            [sys]
            interval = 0
            [server]
            workers = 3
        "#;
        let config = parse(text, "test").unwrap();
        assert_eq!(config.workers, 3);
        assert_eq!(config.worker_threads(), 3);
        assert_eq!(config.listeners.len(), 2);
        assert_eq!(config.listeners.get(1).unwrap().name, "tcp-1");
        assert_eq!(config.decoder.max_packet_size, 2048);
        assert_eq!(config.broker.max_packet_size, 2048);
        assert_eq!(config.broker.receive_maximum, 10);
        assert_eq!(config.broker.max_topic_levels, 8);
        assert!(config.broker.queue_qos0_offline);
        assert_eq!(config.broker.sys_interval, None);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            colour = "blue"
            [[listener]]
            bind = "0.0.0.0:1883"
            port = 5
            [limits]
            receive_maximum = 0
            max_topic_levels = "many"
            max_packet_size = 100
            max_unauthenticated_packet_size = 200
            [mqtt]
            queue_qos0_offline = "yes"
            [server]
            workers = 5000
        "#;
        let err = parse(text, "test").unwrap_err();
        let all = err.problems.join("\n");
        for expected in [
            "colour: unknown",
            "listener.port: unknown key",
            "only loopback addresses",
            "limits.receive_maximum = 0: must be between 1 and 65535",
            "limits.max_topic_levels: expected a non-negative integer, found the string \"many\"",
            "max_unauthenticated_packet_size must not exceed",
            "mqtt.queue_qos0_offline: expected true or false",
            "server.workers = 5000: must be between 0 and 1024",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 8, "{all}");
    }

    #[test]
    fn bad_toml_names_the_file() {
        let err = parse("[limits\n", "bulwark.toml").unwrap_err();
        assert!(
            err.problems
                .first()
                .unwrap()
                .starts_with("bulwark.toml: not valid TOML")
        );
    }

    #[test]
    fn bad_bind_address_is_explained() {
        let err = parse("[[listener]]\nbind = \"localhost\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("expected ADDRESS:PORT"), "{err}");
    }
}
