//! The TOML configuration file: read into a [`ServerConfig`], every problem reported at once.
//! `docs/config.md` documents each key; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_acl::Cidr;
use bulwark_core::{DeniedPublish, QueuePolicy};
use bulwark_limits::admission::AdmissionSettings;
use bulwark_limits::rate::{RateLimit, RateOverride};
use bulwark_proto::PROTOCOL_MAX_PACKET_SIZE;
use bulwark_server::tls::{CertFiles, ClientAuth, IdentitySource, TlsSettings, TlsVersion};
use bulwark_server::{
    AuthSettings, Authenticator, ConfigError, JwtAuthSettings, ListenerConfig, ListenerKind,
    ServerConfig, TrustedProxies, WsOptions,
};
use bulwark_store::SyncPolicy;
use toml::{Table, Value};

/// Sections and the keys each may hold; anything else is reported as unknown.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "listener",
        &[
            "name",
            "kind",
            "bind",
            "dangerous_plaintext",
            "proxy_protocol",
            "trusted_proxies",
            "max_connections",
            "tls",
            "websocket",
            "authenticators",
            "dangerous_allow_anonymous",
            "optional",
        ],
    ),
    ("acl", &["file", "dangerous_allow_all", "denied_publish"]),
    ("storage", &["kind", "path", "sync", "sync_interval"]),
    (
        "bans",
        &["file", "offences", "flaps", "window", "duration", "exempt"],
    ),
    (
        "rate",
        &[
            "messages_per_second",
            "messages_burst",
            "bytes_per_second",
            "bytes_burst",
            "override",
        ],
    ),
    (
        "rate.override",
        &[
            "listener",
            "user",
            "group",
            "messages_per_second",
            "messages_burst",
            "bytes_per_second",
            "bytes_burst",
        ],
    ),
    (
        "admission",
        &[
            "max_connections",
            "max_per_address",
            "max_per_prefix",
            "max_handshakes",
            "max_handshakes_per_address",
            "rate",
            "burst",
            "cooldown",
            "exempt",
            "max_tracked",
        ],
    ),
    (
        "auth",
        &[
            "password_file",
            "audit_file",
            "hash_concurrency",
            "max_pending_logins",
            "credential_cache_ttl",
            "credential_cache_size",
            "backoff",
            "jwt",
        ],
    ),
    (
        "auth.backoff",
        &[
            "after",
            "window",
            "initial_delay",
            "max_delay",
            "max_wait",
            "ban_after",
            "ban_duration",
            "max_tracked",
            "exempt",
        ],
    ),
    (
        "auth.jwt",
        &[
            "issuer",
            "audiences",
            "clock_skew",
            "username_claim",
            "client_id_claim",
            "acl_claim",
            "require_exp",
            "public_key_files",
            "hmac_secret_file",
            "jwks_file",
            "jwks_url",
            "jwks_ca_file",
            "jwks_refresh",
            "jwks_min_interval",
        ],
    ),
    (
        "listener.websocket",
        &[
            "path",
            "allowed_origins",
            "max_frame_size",
            "max_message_size",
        ],
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
            "dangerous_key_readable_by_others",
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
            "queue_full",
            "max_subscriptions_per_session",
            "max_topic_levels",
            "max_topic_length",
            "max_client_id_length",
            "max_user_properties",
            "max_retained_messages",
            "max_retained_bytes",
            "topic_alias_maximum",
            "max_connections_per_user",
            "max_subscriptions_per_user",
            "max_retained_per_user",
            "max_retained_bytes_per_user",
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
        &[
            "shutdown_grace",
            "workers",
            "tls_watch_interval",
            "memory_watermark",
        ],
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
                self.problems.push(format!(
                    "{shown}.{key}: unknown key{}",
                    did_you_mean(key, known.iter().copied())
                ));
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

/// What the server says when no listener is configured (a follow-on error when every
/// configured listener was refused).
const NO_LISTENER: &str = "listener: at least one listener is needed";

/// A listener's bind address, `IP:PORT`, or why it is not one, in the words a newcomer needs:
/// a host name instead of an address, a port out of range, an IPv6 address without brackets.
pub(crate) fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    const EXAMPLE: &str = "e.g. \"127.0.0.1:1883\" or \"[::1]:1883\" (this machine only), \
                           \"0.0.0.0:8883\" or \"[::]:8883\" (every interface)";
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && inner.parse::<std::net::Ipv6Addr>().is_ok()
    {
        return Err(format!("the port is missing: expected \"{text}:PORT\""));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(match text.parse::<std::net::IpAddr>() {
            Ok(_) => format!("the port is missing: expected IP:PORT, {EXAMPLE}"),
            Err(_) => format!("expected IP:PORT, {EXAMPLE}"),
        });
    };
    if host.is_empty() {
        return Err(format!("the address before the port is missing: {EXAMPLE}"));
    }
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let port_ok = port.parse::<u16>().is_ok();
    if ip.parse::<std::net::IpAddr>().is_ok() {
        if host.contains(':') && !host.starts_with('[') {
            return Err(format!(
                "an IPv6 address takes brackets before its port: \"[{host}]:{port}\""
            ));
        }
        if !port_ok {
            return Err(format!(
                "port {port:?} is not a port number: between 1 and 65535 (0 picks a free one)"
            ));
        }
    }
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "the port is missing: an IPv6 address takes brackets before its port, \"[{text}]:1883\""
        ));
    }
    Err(format!(
        "\"{host}\" is not an IP address: a listener binds to an IP address, not a host name; \
         {EXAMPLE}"
    ))
}

/// The TOML syntax error `err` in `text`, with its line and column, and the key for a
/// duplicate.
fn toml_error(text: &str, source: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return format!("{source}: not valid TOML: {message}");
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    let mut detail = message.to_owned();
    if message.starts_with("duplicate key") {
        let key: String = text
            .get(span.start..)
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '"' | '.'))
            .collect();
        let key = key.trim_matches('"');
        if !key.is_empty() && !message.contains(key) {
            detail = format!("duplicate key `{key}` (a key may be set once per table)");
        }
    }
    let shown = text.lines().nth(line - 1).unwrap_or("").trim_end();
    format!("{source}:{line}:{column}: not valid TOML: {detail}\n      {line} | {shown}")
}

/// `; did you mean "x"?` for the known name closest to `unknown` (at most two edits apart, or
/// one of them contains the other), or nothing.
fn did_you_mean<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> String {
    let unknown_lower = unknown.to_ascii_lowercase();
    let best = known
        .map(|name| (edit_distance(&unknown_lower, name), name))
        .filter(|(distance, name)| {
            *distance <= 2.max(unknown.len() / 4)
                || (unknown.len() >= 4
                    && (name.contains(&unknown_lower) || unknown_lower.contains(name)))
        })
        .min_by_key(|(distance, _)| *distance);
    match best {
        Some((_, name)) => format!("; did you mean \"{name}\"?"),
        None => String::new(),
    }
}

/// Levenshtein distance (insertions, deletions, substitutions), over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let delete = previous.get(j + 1).copied().unwrap_or(0) + 1;
            let insert = current.get(j).copied().unwrap_or(0) + 1;
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
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
    if !matches!(kind, "tcp" | "tls" | "ws" | "wss") {
        r.problems.push(format!(
            "{section}.kind = \"{kind}\": expected \"tcp\", \"tls\", \"ws\" or \"wss\""
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
        Some(bind) => match parse_bind(bind) {
            Ok(bind) => Some(bind),
            Err(why) => {
                r.problems
                    .push(format!("{section}.bind = \"{bind}\": {why}"));
                None
            }
        },
        None if table.contains_key("bind") => None,
        None => {
            r.problems.push(format!("{section}.bind: missing"));
            None
        }
    };
    let proxy_protocol = match r.boolean(table, section, "proxy_protocol") {
        Some(true) => {
            let entries = r.string_list(table, section, "trusted_proxies");
            match TrustedProxies::parse(&entries) {
                Ok(trusted) => Some(trusted),
                Err(why) => {
                    r.problems.push(format!("{section}.trusted_proxies: {why}"));
                    None
                }
            }
        }
        _ => {
            if table.contains_key("trusted_proxies") {
                r.problems.push(format!(
                    "{section}.trusted_proxies is set but proxy_protocol is not true"
                ));
            }
            None
        }
    };
    let max_connections = r
        .integer(table, section, "max_connections", 0, 10_000_000)
        .map_or(0, to_usize);
    let wants_tls = matches!(kind, "tls" | "wss");
    let tls_section = format!("{section}.tls");
    let tls = match (wants_tls, table.get("tls")) {
        (true, Some(Value::Table(tls))) => {
            r.unknown_keys_as(tls, "listener.tls", &tls_section);
            Some(read_tls(r, tls, &tls_section, base))
        }
        (true, Some(other)) => {
            r.problems.push(format!(
                "{tls_section}: expected a table, found {}",
                describe(other)
            ));
            return None;
        }
        (true, None) => {
            r.problems.push(format!(
                "{tls_section}: missing (a {kind} listener needs at least cert and key)"
            ));
            return None;
        }
        (false, Some(_)) => {
            r.problems.push(format!(
                "{tls_section}: only a listener with kind = \"tls\" or \"wss\" takes TLS settings"
            ));
            return None;
        }
        (false, None) => None,
    };
    let wants_ws = matches!(kind, "ws" | "wss");
    let ws_section = format!("{section}.websocket");
    let ws = match (wants_ws, table.get("websocket")) {
        (true, Some(Value::Table(ws))) => {
            r.unknown_keys_as(ws, "listener.websocket", &ws_section);
            read_websocket(r, ws, &ws_section)
        }
        (true, Some(other)) => {
            r.problems.push(format!(
                "{ws_section}: expected a table, found {}",
                describe(other)
            ));
            return None;
        }
        (true, None) => WsOptions::default(),
        (false, Some(_)) => {
            r.problems.push(format!(
                "{ws_section}: only a listener with kind = \"ws\" or \"wss\" takes WebSocket settings"
            ));
            return None;
        }
        (false, None) => WsOptions::default(),
    };
    let kind = match (kind, tls) {
        ("tls", Some(tls)) => ListenerKind::Tls(Box::new(tls?)),
        ("wss", Some(tls)) => ListenerKind::Wss(Box::new(tls?), ws),
        ("ws", _) => ListenerKind::Ws(ws),
        _ => ListenerKind::Tcp,
    };
    let mut authenticators = Vec::new();
    let names = r.string_list(table, section, "authenticators");
    let listed = names.len();
    for name in names {
        match Authenticator::from_name(&name) {
            Some(a) if authenticators.contains(&a) => r.problems.push(format!(
                "{section}.authenticators: \"{name}\" is listed twice"
            )),
            Some(a) => authenticators.push(a),
            None => r.problems.push(format!(
                "{section}.authenticators: unknown authenticator \"{name}\" (expected {})",
                Authenticator::ALL
                    .iter()
                    .map(|a| format!("\"{}\"", a.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if table.contains_key("authenticators") && listed == 0 {
        r.problems.push(format!(
            "{section}.authenticators: an empty chain would refuse every client; leave the key out for the default chain"
        ));
    }
    let dangerous_allow_anonymous = r
        .boolean(table, section, "dangerous_allow_anonymous")
        .unwrap_or(false);
    let optional = r.boolean(table, section, "optional").unwrap_or(false);
    Some(ListenerConfig {
        name,
        bind: bind?,
        kind,
        dangerous_plaintext,
        proxy_protocol,
        max_connections,
        authenticators,
        dangerous_allow_anonymous,
        optional,
    })
}

/// The `[auth]` section and its `[auth.backoff]` and `[auth.jwt]` tables.
fn read_auth(r: &mut Reader, table: &Table, base: &Path) -> AuthSettings {
    let s = "auth";
    let mut auth = AuthSettings {
        password_file: path(r, table, s, "password_file", base),
        audit_file: path(r, table, s, "audit_file", base),
        ..AuthSettings::default()
    };
    if let Some(v) = r.integer(table, s, "hash_concurrency", 0, 1024) {
        auth.hash_concurrency = to_usize(v);
    }
    if let Some(v) = r.integer(table, s, "max_pending_logins", 1, 1_000_000) {
        auth.max_pending_logins = to_usize(v);
    }
    if let Some(v) = r.integer(table, s, "credential_cache_ttl", 0, 86_400) {
        auth.credential_cache_ttl = Duration::from_secs(v);
    }
    if let Some(v) = r.integer(table, s, "credential_cache_size", 0, 10_000_000) {
        auth.credential_cache_size = to_usize(v);
    }
    match table.get("backoff") {
        None => {}
        Some(Value::Table(t)) => {
            let s = "auth.backoff";
            r.unknown_keys(t, s);
            let g = &mut auth.guard;
            let secs = Duration::from_secs;
            if let Some(v) = r.integer(t, s, "after", 1, 1000) {
                g.backoff_after = to_u32(v);
            }
            if let Some(v) = r.integer(t, s, "window", 1, 86_400) {
                g.window = secs(v);
            }
            if let Some(v) = r.integer(t, s, "initial_delay", 1, 3600) {
                g.initial_delay = secs(v);
            }
            if let Some(v) = r.integer(t, s, "max_delay", 1, 3600) {
                g.max_delay = secs(v);
            }
            if let Some(v) = r.integer(t, s, "max_wait", 1, 3600) {
                g.max_wait = secs(v);
            }
            if let Some(v) = r.integer(t, s, "ban_after", 0, 100_000) {
                g.ban_after = to_u32(v);
            }
            if let Some(v) = r.integer(t, s, "ban_duration", 1, 30 * 86_400) {
                g.ban_duration = secs(v);
            }
            if let Some(v) = r.integer(t, s, "max_tracked", 1, 100_000_000) {
                g.max_tracked = to_usize(v);
            }
            if let Some(exempt) = cidr_list(r, t, s, "exempt") {
                g.exempt = exempt;
            }
            if let Err(err) = g.validate() {
                r.problems.push(format!("auth.backoff: {err}"));
            }
        }
        Some(other) => r.problems.push(format!(
            "auth.backoff: expected a table, found {}",
            describe(other)
        )),
    }
    match table.get("jwt") {
        None => {}
        Some(Value::Table(t)) => auth.jwt = Some(read_jwt(r, t, base)),
        Some(other) => r.problems.push(format!(
            "auth.jwt: expected a table, found {}",
            describe(other)
        )),
    }
    auth
}

/// `[admission]`: connection caps and rates, before any TLS work.
fn read_admission(r: &mut Reader, t: &Table, a: &mut AdmissionSettings) {
    let s = "admission";
    let count = 100_000_000;
    if let Some(v) = r.integer(t, s, "max_connections", 0, count) {
        a.max_connections = to_usize(v);
    }
    if let Some(v) = r.integer(t, s, "max_per_address", 0, count) {
        a.max_per_address = to_usize(v);
    }
    if let Some(v) = r.integer(t, s, "max_per_prefix", 0, count) {
        a.max_per_prefix = to_usize(v);
    }
    if let Some(v) = r.integer(t, s, "max_handshakes", 0, count) {
        a.max_handshakes = to_usize(v);
    }
    if let Some(v) = r.integer(t, s, "max_handshakes_per_address", 0, count) {
        a.max_handshakes_per_address = to_usize(v);
    }
    if let Some(v) = r.integer(t, s, "rate", 0, 1_000_000) {
        a.rate = to_u32(v);
    }
    if let Some(v) = r.integer(t, s, "burst", 1, 1_000_000) {
        a.burst = to_u32(v);
    }
    if let Some(v) = r.integer(t, s, "cooldown", 0, 86_400) {
        a.cooldown = Duration::from_secs(v);
    }
    if let Some(v) = r.integer(t, s, "max_tracked", 1, 100_000_000) {
        a.max_tracked = to_usize(v);
    }
    if let Some(exempt) = cidr_list(r, t, s, "exempt") {
        a.exempt = exempt;
    }
}

/// A list of networks (`10.0.0.0/8`, `::1`), if the key is there.
fn cidr_list(r: &mut Reader, t: &Table, s: &str, key: &str) -> Option<Vec<Cidr>> {
    if !t.contains_key(key) {
        return None;
    }
    let mut out = Vec::new();
    for text in r.string_list(t, s, key) {
        match Cidr::parse(&text) {
            Ok(cidr) => out.push(cidr),
            Err(err) => r.problems.push(format!("{s}.{key}: {err}")),
        }
    }
    Some(out)
}

/// The four keys of a rate limit; a burst left out is one second's worth.
fn read_rate_limit(r: &mut Reader, t: &Table, s: &str) -> RateLimit {
    let mut limit = RateLimit::default();
    if let Some(v) = r.integer(t, s, "messages_per_second", 0, 10_000_000) {
        limit.messages_per_second = to_u32(v);
    }
    limit.messages_burst = match r.integer(t, s, "messages_burst", 1, 10_000_000) {
        Some(v) => to_u32(v),
        None => limit.messages_per_second,
    };
    if let Some(v) = r.integer(t, s, "bytes_per_second", 0, 1 << 40) {
        limit.bytes_per_second = v;
    }
    limit.bytes_burst = match r.integer(t, s, "bytes_burst", 1, 1 << 40) {
        Some(v) => v,
        None => limit.bytes_per_second,
    };
    limit
}

/// `[acl]`: an ACL file, or the explicit choice to run without authorization.
fn read_acl(r: &mut Reader, root: &Table, config: &mut ServerConfig, base: &Path) {
    let s = "acl";
    let section = r.section(root, s);
    let (file, allow_all) = match section {
        Some(t) => {
            if let Some(v) = r.string(t, s, "denied_publish") {
                config.broker.denied_publish = match v {
                    "drop" => DeniedPublish::Drop,
                    "disconnect" => DeniedPublish::Disconnect,
                    other => {
                        r.problems.push(format!(
                            "acl.denied_publish = \"{other}\": use \"drop\" or \"disconnect\""
                        ));
                        DeniedPublish::Drop
                    }
                };
            }
            (
                path(r, t, s, "file", base),
                r.boolean(t, s, "dangerous_allow_all").unwrap_or(false),
            )
        }
        None => (None, false),
    };
    match (file, allow_all) {
        (Some(_), true) => r
            .problems
            .push("acl: give either file or dangerous_allow_all = true, not both".to_owned()),
        (Some(file), false) => config.acl.file = Some(file),
        (None, true) => config.acl.file = None,
        (None, false) => r.problems.push(
            "acl: no ACL file: set [acl] file = \"acl.toml\" (rules, default deny: docs/acl.md), \
             or dangerous_allow_all = true to let every client publish and subscribe anywhere"
                .to_owned(),
        ),
    }
}

fn read_jwt(r: &mut Reader, t: &Table, base: &Path) -> JwtAuthSettings {
    let s = "auth.jwt";
    r.unknown_keys(t, s);
    let mut jwt = JwtAuthSettings {
        issuer: r.string(t, s, "issuer").map(str::to_owned),
        audiences: r.string_list(t, s, "audiences"),
        client_id_claim: r.string(t, s, "client_id_claim").map(str::to_owned),
        acl_claim: r.string(t, s, "acl_claim").map(str::to_owned),
        public_key_files: r
            .string_list(t, s, "public_key_files")
            .into_iter()
            .map(|p| base.join(p))
            .collect(),
        hmac_secret_file: path(r, t, s, "hmac_secret_file", base),
        jwks_file: path(r, t, s, "jwks_file", base),
        jwks_url: r.string(t, s, "jwks_url").map(str::to_owned),
        jwks_ca_file: path(r, t, s, "jwks_ca_file", base),
        ..JwtAuthSettings::default()
    };
    if let Some(v) = r.string(t, s, "username_claim") {
        jwt.username_claim = v.to_owned();
    }
    if let Some(v) = r.integer(t, s, "clock_skew", 0, 300) {
        jwt.clock_skew = Duration::from_secs(v);
    }
    if let Some(v) = r.boolean(t, s, "require_exp") {
        jwt.require_exp = v;
    }
    if let Some(v) = r.integer(t, s, "jwks_refresh", 30, 86_400) {
        jwt.jwks_refresh = Duration::from_secs(v);
    }
    if let Some(v) = r.integer(t, s, "jwks_min_interval", 1, 3600) {
        jwt.jwks_min_interval = Duration::from_secs(v);
    }
    jwt
}

fn read_websocket(r: &mut Reader, table: &Table, section: &str) -> WsOptions {
    let mut ws = WsOptions::default();
    if let Some(path) = r.string(table, section, "path") {
        ws.path = path.to_owned();
    }
    ws.allowed_origins = r.string_list(table, section, "allowed_origins");
    let max = u64::from(PROTOCOL_MAX_PACKET_SIZE);
    if let Some(v) = r.integer(table, section, "max_frame_size", 16, max) {
        ws.max_frame_size = to_usize(v);
    }
    if let Some(v) = r.integer(table, section, "max_message_size", 16, max) {
        ws.max_message_size = to_usize(v);
    }
    ws
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
    if let Some(v) = r.boolean(table, section, "dangerous_key_readable_by_others") {
        settings.dangerous_key_readable_by_others = v;
    }
    settings.cert = cert?;
    Some(settings)
}

/// The store's file name in the data directory.
pub(crate) const STORE_FILE: &str = "store.redb";

/// [`parse_in`] with the default data directory, `bulwark-data`.
pub(crate) fn parse(text: &str, source: &str) -> Result<ServerConfig, ConfigError> {
    parse_in(text, source, Path::new("bulwark-data"))
}

/// `[storage]`: on disk in `data_dir` unless the file says otherwise.
fn read_storage(
    r: &mut Reader,
    root: &Table,
    config: &mut ServerConfig,
    base: &Path,
    data_dir: &Path,
) {
    let s = "storage";
    let mut settings = bulwark_server::StorageSettings {
        path: Some(data_dir.join(STORE_FILE)),
        sync: SyncPolicy::Always,
    };
    if let Some(t) = r.section(root, s) {
        let path = path(r, t, s, "path", base);
        match r.string(t, s, "kind") {
            None | Some("disk") => {
                if let Some(path) = path {
                    settings.path = Some(path);
                }
            }
            Some("memory") => {
                settings.path = None;
                if path.is_some() {
                    r.problems
                        .push("storage.path: not used with kind = \"memory\"".to_owned());
                }
            }
            Some(other) => r.problems.push(format!(
                "storage.kind = \"{other}\": use \"disk\" or \"memory\""
            )),
        }
        let interval = r
            .integer(t, s, "sync_interval", 1, 3_600)
            .map(Duration::from_secs);
        match r.string(t, s, "sync") {
            None | Some("always") => {
                if interval.is_some() {
                    r.problems.push(
                        "storage.sync_interval: only used with sync = \"periodic\"".to_owned(),
                    );
                }
            }
            Some("periodic") => {
                settings.sync = SyncPolicy::Periodic(interval.unwrap_or(Duration::from_secs(1)));
            }
            Some(other) => r.problems.push(format!(
                "storage.sync = \"{other}\": use \"always\" or \"periodic\""
            )),
        }
    }
    config.storage = settings;
}

/// Reads a configuration file; relative paths are relative to the file, and the store lives
/// in `data_dir` unless `[storage]` says otherwise.
pub(crate) fn parse_in(
    text: &str,
    source: &str,
    data_dir: &Path,
) -> Result<ServerConfig, ConfigError> {
    // Relative file names in the configuration are relative to the file itself.
    let base = Path::new(source).parent().unwrap_or(Path::new(""));
    let root: Table = text.parse().map_err(|err: toml::de::Error| ConfigError {
        problems: vec![toml_error(text, source, &err)],
    })?;
    let mut r = Reader {
        problems: Vec::new(),
    };
    let mut config = ServerConfig::default();
    for key in root.keys() {
        if !SECTIONS.iter().any(|(name, _)| name == key) {
            let sections = SECTIONS
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| !name.contains('.'));
            r.problems.push(format!(
                "{key}: unknown section or key{}",
                did_you_mean(key, sections)
            ));
        }
    }

    // Whether a listener was given but refused: then "no listener left" is a follow-on error.
    let mut listener_refused = false;
    if let Some(value) = root.get("listener") {
        match value.as_array() {
            Some(entries) => {
                config.listeners.clear();
                for (i, entry) in entries.iter().enumerate() {
                    let section = format!("listener[{i}]");
                    let Some(table) = entry.as_table() else {
                        r.problems.push(format!("{section}: expected a table"));
                        listener_refused = true;
                        continue;
                    };
                    r.unknown_keys_as(table, "listener", &section);
                    match read_listener(&mut r, table, &section, i, base) {
                        Some(listener) => config.listeners.push(listener),
                        None => listener_refused = true,
                    }
                }
            }
            None => {
                r.problems
                    .push("listener: expected [[listener]] tables".to_owned());
                listener_refused = true;
            }
        }
    }

    // A [limits] key of the authentication settings, applied once [auth] is read.
    let mut per_user_connections = None;
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
        if let Some(v) = r.string(t, s, "queue_full") {
            b.queue_full = match v {
                "drop_newest" => QueuePolicy::DropNewest,
                "drop_oldest" => QueuePolicy::DropOldest,
                "disconnect" => QueuePolicy::Disconnect,
                other => {
                    r.problems.push(format!(
                        "limits.queue_full = \"{other}\": use \"drop_newest\", \"drop_oldest\" or \"disconnect\""
                    ));
                    QueuePolicy::DropNewest
                }
            };
        }
        if let Some(v) = r.integer(t, s, "max_retained_bytes", 0, 1 << 40) {
            b.max_retained_bytes = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_subscriptions_per_user", 0, 100_000_000) {
            b.max_subscriptions_per_user = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_retained_per_user", 0, 100_000_000) {
            b.max_retained_per_user = to_usize(v);
        }
        if let Some(v) = r.integer(t, s, "max_retained_bytes_per_user", 0, 1 << 40) {
            b.max_retained_bytes_per_user = to_usize(v);
        }
        per_user_connections = r.integer(t, s, "max_connections_per_user", 0, 100_000_000);
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
    if let Some(t) = r.section(&root, "sys")
        && let Some(v) = r.integer(t, "sys", "interval", 0, 86_400)
    {
        config.broker.sys_interval = (v > 0).then(|| Duration::from_secs(v));
    }
    if let Some(t) = r.section(&root, "auth") {
        config.auth = read_auth(&mut r, t, base);
    }
    if let Some(v) = per_user_connections {
        config.auth.max_connections_per_user = to_usize(v);
    }
    read_acl(&mut r, &root, &mut config, base);
    read_storage(&mut r, &root, &mut config, base, data_dir);
    if let Some(t) = r.section(&root, "admission") {
        read_admission(&mut r, t, &mut config.admission);
    }
    if let Some(t) = r.section(&root, "bans") {
        let s = "bans";
        let b = &mut config.bans;
        b.file = path(&mut r, t, s, "file", base);
        if let Some(v) = r.integer(t, s, "offences", 0, 1_000_000) {
            b.offences = to_u32(v);
        }
        if let Some(v) = r.integer(t, s, "flaps", 0, 1_000_000) {
            b.flaps = to_u32(v);
        }
        if let Some(v) = r.integer(t, s, "window", 1, 86_400) {
            b.window = Duration::from_secs(v);
        }
        if let Some(v) = r.integer(t, s, "duration", 1, 365 * 86_400) {
            b.duration = Duration::from_secs(v);
        }
        if let Some(exempt) = cidr_list(&mut r, t, s, "exempt") {
            b.exempt = exempt;
        }
    }
    if let Some(t) = r.section(&root, "rate") {
        config.rates.default = read_rate_limit(&mut r, t, "rate");
        match t.get("override") {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let section = format!("rate.override[{i}]");
                    let Some(o) = item.as_table() else {
                        r.problems.push(format!("{section}: expected a table"));
                        continue;
                    };
                    r.unknown_keys_as(o, "rate.override", &section);
                    let listener = r.string(o, &section, "listener").map(str::to_owned);
                    let users = r.string_list(o, &section, "user");
                    let groups = r.string_list(o, &section, "group");
                    let limit = read_rate_limit(&mut r, o, &section);
                    config.rates.overrides.push(RateOverride {
                        listener,
                        users,
                        groups,
                        limit,
                    });
                }
            }
            Some(other) => r.problems.push(format!(
                "rate.override: expected [[rate.override]] tables, found {}",
                describe(other)
            )),
        }
    }
    if let Some(t) = r.section(&root, "server") {
        if let Some(v) = r.integer(t, "server", "shutdown_grace", 0, 3600) {
            config.shutdown_grace = Duration::from_secs(v);
        }
        if let Some(v) = r.integer(t, "server", "memory_watermark", 0, 1 << 50) {
            config.memory_watermark = v;
        }
        if let Some(v) = r.integer(t, "server", "tls_watch_interval", 1, 3600) {
            config.tls_watch_interval = Duration::from_secs(v);
        }
        if let Some(v) = r.integer(t, "server", "workers", 0, 1024) {
            config.workers = usize::try_from(v).unwrap_or(1024);
        }
    }
    if let Err(err) = config.validate() {
        // With listeners given and refused above, "none left" is not news.
        r.problems.extend(
            err.problems
                .into_iter()
                .filter(|p| !(listener_refused && p == NO_LISTENER)),
        );
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

    /// `text` with the explicit choice to run without an ACL, which every file must make.
    fn open(text: &str) -> String {
        format!("{text}\n[acl]\ndangerous_allow_all = true\n")
    }

    #[test]
    fn empty_file_gives_the_secure_defaults() {
        let err = parse("", "test").unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.contains("acl: no ACL file")),
            "{err}"
        );
        let config = parse(&open(""), "test").unwrap();
        // The library's defaults, but the store on disk, synced at every commit.
        assert_eq!(
            config,
            ServerConfig {
                storage: bulwark_server::StorageSettings {
                    path: Some(PathBuf::from("bulwark-data/store.redb")),
                    sync: SyncPolicy::Always,
                },
                ..ServerConfig::default()
            }
        );
        assert_eq!(config.listeners.len(), 1);
        assert!(config.listeners.first().unwrap().bind.ip().is_loopback());
    }

    #[test]
    fn storage_is_read() {
        let dir = Path::new("/var/lib/b");
        let config = parse_in(&open(""), "/etc/b/bulwark.toml", dir).unwrap();
        assert_eq!(
            config.storage.path,
            Some(PathBuf::from("/var/lib/b/store.redb"))
        );
        let config = parse_in(
            &open("[storage]\npath = \"s/x.redb\"\nsync = \"periodic\"\nsync_interval = 5\n"),
            "/etc/b/bulwark.toml",
            dir,
        )
        .unwrap();
        assert_eq!(config.storage.path, Some(PathBuf::from("/etc/b/s/x.redb")));
        assert_eq!(
            config.storage.sync,
            SyncPolicy::Periodic(Duration::from_secs(5))
        );
        let config = parse_in(&open("[storage]\nkind = \"memory\"\n"), "t", dir).unwrap();
        assert_eq!(config.storage.path, None);
        let err = parse_in(
            &open("[storage]\nkind = \"tape\"\nsync = \"never\"\nsync_interval = 0\nx = 1\n"),
            "t",
            dir,
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for part in [
            "storage.kind = \"tape\"",
            "storage.sync = \"never\"",
            "storage.sync_interval = 0",
            "storage.x",
        ] {
            assert!(all.contains(part), "{part}: {all}");
        }
        let err = parse_in(&open("[storage]\nsync_interval = 2\n"), "t", dir).unwrap_err();
        assert!(
            err.problems
                .join("\n")
                .contains("only used with sync = \"periodic\"")
        );
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
        let config = parse(&open(text), "test").unwrap();
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
        let err = parse(&open(text), "test").unwrap_err();
        let all = err.problems.join("\n");
        for expected in [
            "colour: unknown",
            "listener[0].port: unknown key",
            "sends credentials and payloads in clear text",
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
    fn tls_listeners_are_read_with_paths_relative_to_the_file() {
        let text = r#"
            [[listener]]
            kind = "tls"
            bind = "0.0.0.0:8883"
            [listener.tls]
            cert = "server.pem"
            key = "/abs/server.key"
            min_version = "1.3"
            alpn = ["mqtt"]
            handshake_timeout = 3
            client_auth = "required"
            client_ca = "ca.pem"
            crl = "revoked.crl"
            identity = "san_uri"
            identity_as_client_id = true
            [[listener.tls.sni]]
            cert = "b.pem"
            key = "b.key"
        "#;
        let config = parse(&open(text), "/etc/bulwark/bulwark.toml").unwrap();
        let listener = config.listeners.first().unwrap();
        assert_eq!(listener.name, "tls-0");
        let tls = listener.kind.tls().unwrap();
        assert_eq!(tls.cert.cert, PathBuf::from("/etc/bulwark/server.pem"));
        assert_eq!(tls.cert.key, PathBuf::from("/abs/server.key"));
        assert_eq!(tls.min_version, TlsVersion::V1_3);
        assert_eq!(tls.alpn, vec!["mqtt".to_owned()]);
        assert_eq!(tls.handshake_timeout, Duration::from_secs(3));
        assert_eq!(tls.client_auth, ClientAuth::Required);
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/bulwark/ca.pem")));
        assert_eq!(tls.crl, vec![PathBuf::from("/etc/bulwark/revoked.crl")]);
        assert_eq!(tls.identity, IdentitySource::SanUri);
        assert!(tls.identity_as_client_id);
        assert_eq!(tls.sni.len(), 1);
    }

    #[test]
    fn listener_mistakes_are_explained() {
        let text = r#"
            [[listener]]
            kind = "quic"
            bind = "127.0.0.1:1"
            [[listener]]
            bind = "127.0.0.1:2"
            [listener.tls]
            cert = "a"
            [[listener]]
            kind = "tls"
            bind = "127.0.0.1:3"
            [listener.tls]
            cert = "a"
            min_version = "1.0"
            client_auth = "maybe"
            colour = 1
            [[listener]]
            bind = "10.0.0.1:1883"
            [[listener]]
            kind = "tls"
            bind = "10.0.0.1:8883"
            [listener.tls]
            cert = "a"
            key = "b"
        "#;
        let err = parse(&open(text), "test").unwrap_err();
        let all = err.problems.join("\n");
        for expected in [
            "listener[0].kind = \"quic\": expected \"tcp\", \"tls\", \"ws\" or \"wss\"",
            "listener[1].tls: only a listener with kind = \"tls\" or \"wss\" takes TLS settings",
            "listener[2].tls.key: missing",
            "listener[2].tls.min_version = \"1.0\"",
            "listener[2].tls.client_auth = \"maybe\"",
            "listener[2].tls.colour: unknown key",
            "a tcp listener on a non-loopback address sends credentials",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn websocket_and_proxy_settings_are_read() {
        let text = r#"
            [[listener]]
            kind = "ws"
            bind = "127.0.0.1:8080"
            proxy_protocol = true
            trusted_proxies = ["10.0.0.0/8", "::1"]
            max_connections = 500
            [listener.websocket]
            path = "/mqtt-ws"
            allowed_origins = ["https://app.example"]
            max_frame_size = 65536
            [[listener]]
            kind = "wss"
            bind = "127.0.0.1:8443"
            [listener.tls]
            cert = "c.pem"
            key = "k.pem"
            [[listener]]
            bind = "127.0.0.1:1883"
            trusted_proxies = ["10.0.0.0/8"]
            [[listener]]
            bind = "127.0.0.1:1884"
            proxy_protocol = true
            trusted_proxies = ["10.0.0.0/33"]
            [[listener]]
            bind = "127.0.0.1:1885"
            [listener.websocket]
            path = "/x"
        "#;
        let err = parse(&open(text), "test").unwrap_err();
        let all = err.problems.join("\n");
        for expected in [
            "listener[2].trusted_proxies is set but proxy_protocol is not true",
            "listener[3].trusted_proxies: ",
            "10.0.0.0/33",
            "listener[4].websocket: only a listener with kind = \"ws\" or \"wss\"",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 3, "{all}");
        let good = text
            .split("[[listener]]\n            bind = \"127.0.0.1:1883\"")
            .next()
            .unwrap();
        let config = parse(&open(good), "test").unwrap();
        let ws = config.listeners.first().unwrap();
        let options = ws.kind.websocket().unwrap();
        assert_eq!(options.path, "/mqtt-ws");
        assert_eq!(
            options.allowed_origins,
            vec!["https://app.example".to_owned()]
        );
        assert_eq!(options.max_frame_size, 65536);
        assert_eq!(ws.max_connections, 500);
        let trusted = ws.proxy_protocol.as_ref().unwrap();
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(!trusted.contains("192.168.0.1".parse().unwrap()));
        let wss = config.listeners.get(1).unwrap();
        assert_eq!(wss.kind.name(), "wss");
        assert_eq!(wss.kind.websocket().unwrap().path, "/mqtt");
        assert!(wss.kind.tls().is_some());
    }

    #[test]
    fn acl_choices_are_read() {
        let config = parse(
            "[acl]\nfile = \"acl.toml\"\ndenied_publish = \"disconnect\"\n",
            "/etc/b/b.toml",
        )
        .unwrap();
        assert_eq!(config.acl.file, Some(PathBuf::from("/etc/b/acl.toml")));
        assert_eq!(config.broker.denied_publish, DeniedPublish::Disconnect);
        let err = parse(
            "[acl]\nfile = \"a\"\ndangerous_allow_all = true\ndenied_publish = \"ignore\"\n",
            "t",
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("not both"), "{all}");
        assert!(all.contains("acl.denied_publish = \"ignore\""), "{all}");
    }

    #[test]
    fn the_login_backoff_exempt_list_is_read() {
        let config = parse(&open("[admission]\n"), "t").unwrap();
        assert_eq!(config.auth.guard.exempt.len(), 2, "loopback by default");
        let text = "[auth.backoff]\nexempt = [\"10.0.0.0/8\"]\n";
        let config = parse(&open(text), "t").unwrap();
        assert_eq!(config.auth.guard.exempt.len(), 1);
        let config = parse(&open("[auth.backoff]\nexempt = []\n"), "t").unwrap();
        assert!(config.auth.guard.exempt.is_empty());
        let err = parse(&open("[auth.backoff]\nexempt = [\"x\"]\n"), "t").unwrap_err();
        assert!(
            err.problems.join("\n").contains("auth.backoff.exempt"),
            "{err:?}"
        );
    }

    #[test]
    fn admission_is_read() {
        let text =
            "[admission]\nmax_per_address = 7\nrate = 0\ncooldown = 3\nexempt = [\"10.0.0.0/8\"]\n";
        let config = parse(&open(text), "t").unwrap();
        let a = &config.admission;
        assert_eq!(a.max_per_address, 7);
        assert_eq!(a.rate, 0);
        assert_eq!(a.cooldown, Duration::from_secs(3));
        assert_eq!(a.exempt.len(), 1);
        let err = parse(
            &open("[admission]\nexempt = [\"10.0.0.0/40\"]\nburst = 0\nsize = 1\n"),
            "t",
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("admission.exempt"), "{all}");
        assert!(all.contains("admission.burst = 0"), "{all}");
        assert!(all.contains("admission.size"), "{all}");
    }

    #[test]
    fn rates_are_read() {
        let text = "[rate]\nmessages_per_second = 50\n[[rate.override]]\ngroup = \"meters\"\nbytes_per_second = 100\nbytes_burst = 500\n";
        let config = parse(&open(text), "t").unwrap();
        assert_eq!(config.rates.default.messages_per_second, 50);
        assert_eq!(config.rates.default.messages_burst, 50, "a second's worth");
        let o = &config.rates.overrides[0];
        assert_eq!(o.groups, vec!["meters".to_owned()]);
        assert_eq!((o.limit.bytes_per_second, o.limit.bytes_burst), (100, 500));
        let err = parse(
            &open("[rate]\nspeed = 1\n[[rate.override]]\nuser = 5\n"),
            "t",
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("rate.speed: unknown key"), "{all}");
        assert!(all.contains("rate.override[0].user"), "{all}");
    }

    #[test]
    fn bans_are_read() {
        let text =
            "[bans]\nfile = \"bans.toml\"\noffences = 3\nflaps = 0\nduration = 60\nexempt = []\n";
        let config = parse(&open(text), "/etc/b/b.toml").unwrap();
        let b = &config.bans;
        assert_eq!(b.file, Some(PathBuf::from("/etc/b/bans.toml")));
        assert_eq!((b.offences, b.flaps), (3, 0));
        assert_eq!(b.duration, Duration::from_secs(60));
        assert!(b.exempt.is_empty());
        let err = parse(&open("[bans]\nexempt = [\"x\"]\nwindow = 0\n"), "t").unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("bans.exempt") && all.contains("bans.window = 0"),
            "{all}"
        );
    }

    #[test]
    fn bad_toml_names_the_file_line_and_column() {
        let err = parse("[limits\n", "bulwark.toml").unwrap_err();
        let first = err.problems.first().unwrap();
        assert!(
            first.starts_with("bulwark.toml:1:8: not valid TOML: unclosed table"),
            "{first}"
        );
        assert!(first.contains("1 | [limits"), "{first}");
        let err = parse(
            "[acl]\ndangerous_allow_all = true\n[[listener]]\nbind = \"127.0.0.1:1\"\nbind = \"127.0.0.1:2\"\n",
            "b.toml",
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        let first = err.problems.first().unwrap();
        assert!(
            first.starts_with("b.toml:5:1: not valid TOML: duplicate key `bind`"),
            "{first}"
        );
    }

    #[test]
    fn unknown_keys_and_sections_get_a_suggestion() {
        let text = "[limts]\n[[listener]]\nbind = \"127.0.0.1:1\"\nkidn = \"tcp\"\n[limits]\nmax_packet_sise = 100\ncolour = 1\n";
        let err = parse(&open(text), "t").unwrap_err();
        let all = err.problems.join("\n");
        for expected in [
            "limts: unknown section or key; did you mean \"limits\"?",
            "listener[0].kidn: unknown key; did you mean \"kind\"?",
            "limits.max_packet_sise: unknown key; did you mean \"max_packet_size\"?",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert!(
            all.contains("limits.colour: unknown key\n")
                || all.ends_with("limits.colour: unknown key"),
            "{all}"
        );
    }

    #[test]
    fn a_refused_listener_causes_no_follow_on_errors() {
        let err = parse(&open("[[listener]]\nbind = \"localhost:1885\"\n"), "t").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        // Without any listener given, the default one serves; an empty list is still refused.
        let err = parse(&open("listener = []\n"), "t").unwrap_err();
        assert!(err.to_string().contains("at least one listener"), "{err}");
    }

    #[test]
    fn bad_bind_addresses_are_explained() {
        for (bind, expected) in [
            ("localhost", "expected IP:PORT"),
            ("localhost:1885", "\"localhost\" is not an IP address"),
            ("127.0.0.1:99999", "port \"99999\" is not a port number"),
            ("127.0.0.1", "the port is missing"),
            ("::1", "the port is missing"),
            ("[::1]", "the port is missing"),
            ("", "expected IP:PORT"),
            (":1883", "the address before the port is missing"),
            ("fe80::1:1883", "takes brackets"),
            ("127.0.0.1:port", "not a port number"),
        ] {
            let err = parse_bind(bind).unwrap_err();
            assert!(err.contains(expected), "{bind}: {err}");
        }
        assert_eq!(
            parse_bind("[::1]:1883").unwrap(),
            "[::1]:1883".parse::<SocketAddr>().unwrap()
        );
        let err = parse(&open("[[listener]]\nbind = \"localhost\"\n"), "t").unwrap_err();
        assert!(err.to_string().contains("expected IP:PORT"), "{err}");
    }
}
