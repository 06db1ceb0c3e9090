//! `[[listener]]` tables and their `tls`, `tls.sni` and `websocket` tables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_proto::PROTOCOL_MAX_PACKET_SIZE;
use bulwark_server::tls::{CertFiles, ClientAuth, IdentitySource, TlsSettings, TlsVersion};
use bulwark_server::{
    Authenticator, ListenerConfig, ListenerKind, ServerConfig, TrustedProxies, WsOptions,
};
use serde::Deserialize;
use toml::Value;

use super::fields::{Field, Problems, describe, section, to_usize};

/// A listener's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum KindName {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl KindName {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    fn takes_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }

    fn takes_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }
}

/// `min_version` of a TLS listener.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum MinVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// `client_auth` of a TLS listener.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ClientAuthName {
    None,
    Optional,
    Required,
}

/// `identity` of a TLS listener: where a client certificate's identity is read.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum IdentityName {
    Cn,
    SanDns,
    SanUri,
    SanEmail,
    Dn,
}

section! {
    /// One `[[listener]]` table.
    ListenerSection {
        name: String,
        kind: KindName,
        bind: String,
        dangerous_plaintext: bool,
        proxy_protocol: bool,
        trusted_proxies: Vec<String>,
        max_connections: u64,
        tls: TlsSection,
        websocket: WebSocketSection,
        authenticators: Vec<String>,
        dangerous_allow_anonymous: bool,
        optional: bool,
    }
}

section! {
    /// `[listener.tls]`.
    TlsSection {
        cert: String,
        key: String,
        ocsp: String,
        sni: Vec<Field<SniSection>>,
        min_version: MinVersion,
        alpn: Vec<String>,
        handshake_timeout: u64,
        client_auth: ClientAuthName,
        client_ca: String,
        crl: Vec<String>,
        identity: IdentityName,
        identity_as_client_id: bool,
        dangerous_key_readable_by_others: bool,
    }
}

section! {
    /// One `[[listener.tls.sni]]` table: another certificate, chosen by server name.
    SniSection {
        cert: String,
        key: String,
        ocsp: String,
    }
}

section! {
    /// `[listener.websocket]`.
    WebSocketSection {
        path: String,
        allowed_origins: Vec<String>,
        max_frame_size: u64,
        max_message_size: u64,
    }
}

/// The `[[listener]]` tables into `config.listeners`; true if a listener was given but
/// refused (then "no listener left" is a follow-on error).
pub(super) fn check(
    p: &mut Problems,
    field: &Option<Field<Vec<Field<ListenerSection>>>>,
    base: &Path,
    config: &mut ServerConfig,
) -> bool {
    let mut refused = false;
    match field {
        None => {}
        Some(Field::Given(entries)) => {
            config.listeners.clear();
            for (i, entry) in entries.iter().enumerate() {
                let section = format!("listener[{i}]");
                let Field::Given(listener) = entry else {
                    p.push(format!("{section}: expected a table"));
                    refused = true;
                    continue;
                };
                p.unknown_keys(listener, &section);
                match check_listener(p, listener, &section, i, base) {
                    Some(listener) => config.listeners.push(listener),
                    None => refused = true,
                }
            }
        }
        Some(Field::Wrong(_)) => {
            p.push("listener: expected [[listener]] tables".to_owned());
            refused = true;
        }
    }
    refused
}

/// One `[[listener]]` table; `None` (with the problems recorded) if it is not usable.
fn check_listener(
    p: &mut Problems,
    l: &ListenerSection,
    section: &str,
    index: usize,
    base: &Path,
) -> Option<ListenerConfig> {
    let kind = match &l.kind {
        None => KindName::Tcp,
        Some(Field::Given(kind)) => *kind,
        Some(Field::Wrong(Value::String(kind))) => {
            p.push(format!(
                "{section}.kind = \"{kind}\": expected \"tcp\", \"tls\", \"ws\" or \"wss\""
            ));
            return None;
        }
        Some(Field::Wrong(_)) => {
            // Reported as a wrong type; the listener is read as the default kind.
            p.choice(&l.kind, section, "kind", "");
            KindName::Tcp
        }
    };
    let name = p
        .string(&l.name, section, "name")
        .map_or_else(|| format!("{}-{index}", kind.name()), str::to_owned);
    let dangerous_plaintext = p
        .boolean(&l.dangerous_plaintext, section, "dangerous_plaintext")
        .unwrap_or(false);
    let bind = match p.string(&l.bind, section, "bind") {
        Some(bind) => match parse_bind(bind) {
            Ok(bind) => Some(bind),
            Err(why) => {
                p.push(format!("{section}.bind = \"{bind}\": {why}"));
                None
            }
        },
        None if l.bind.is_some() => None,
        None => {
            p.push(format!("{section}.bind: missing"));
            None
        }
    };
    let proxy_protocol = match p.boolean(&l.proxy_protocol, section, "proxy_protocol") {
        Some(true) => {
            let entries = p.string_list(&l.trusted_proxies, section, "trusted_proxies");
            match TrustedProxies::parse(&entries) {
                Ok(trusted) => Some(trusted),
                Err(why) => {
                    p.push(format!("{section}.trusted_proxies: {why}"));
                    None
                }
            }
        }
        _ => {
            if l.trusted_proxies.is_some() {
                p.push(format!(
                    "{section}.trusted_proxies is set but proxy_protocol is not true"
                ));
            }
            None
        }
    };
    let max_connections = p
        .integer(
            &l.max_connections,
            section,
            "max_connections",
            0,
            10_000_000,
        )
        .map_or(0, to_usize);
    let tls_section = format!("{section}.tls");
    let tls = match (kind.takes_tls(), &l.tls) {
        (true, Some(Field::Given(tls))) => {
            p.unknown_keys(tls, &tls_section);
            Some(check_tls(p, tls, &tls_section, base))
        }
        (true, Some(Field::Wrong(other))) => {
            p.push(format!(
                "{tls_section}: expected a table, found {}",
                describe(other)
            ));
            return None;
        }
        (true, None) => {
            p.push(format!(
                "{tls_section}: missing (a {} listener needs at least cert and key)",
                kind.name()
            ));
            return None;
        }
        (false, Some(_)) => {
            p.push(format!(
                "{tls_section}: only a listener with kind = \"tls\" or \"wss\" takes TLS settings"
            ));
            return None;
        }
        (false, None) => None,
    };
    let ws_section = format!("{section}.websocket");
    let ws = match (kind.takes_websocket(), &l.websocket) {
        (true, Some(Field::Given(ws))) => {
            p.unknown_keys(ws, &ws_section);
            check_websocket(p, ws, &ws_section)
        }
        (true, Some(Field::Wrong(other))) => {
            p.push(format!(
                "{ws_section}: expected a table, found {}",
                describe(other)
            ));
            return None;
        }
        (false, Some(_)) => {
            p.push(format!(
                "{ws_section}: only a listener with kind = \"ws\" or \"wss\" takes WebSocket settings"
            ));
            return None;
        }
        (_, None) => WsOptions::default(),
    };
    let kind = match (kind, tls) {
        (KindName::Tls, Some(tls)) => ListenerKind::Tls(Box::new(tls?)),
        (KindName::Wss, Some(tls)) => ListenerKind::Wss(Box::new(tls?), ws),
        (KindName::Ws, _) => ListenerKind::Ws(ws),
        _ => ListenerKind::Tcp,
    };
    let authenticators = check_authenticators(p, &l.authenticators, section);
    let dangerous_allow_anonymous = p
        .boolean(
            &l.dangerous_allow_anonymous,
            section,
            "dangerous_allow_anonymous",
        )
        .unwrap_or(false);
    let optional = p.boolean(&l.optional, section, "optional").unwrap_or(false);
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

/// A listener's `authenticators` chain: known names, each once, and not an empty list.
fn check_authenticators(
    p: &mut Problems,
    field: &Option<Field<Vec<String>>>,
    section: &str,
) -> Vec<Authenticator> {
    let mut authenticators = Vec::new();
    let names = p.string_list(field, section, "authenticators");
    let listed = names.len();
    for name in names {
        match Authenticator::from_name(&name) {
            Some(a) if authenticators.contains(&a) => p.push(format!(
                "{section}.authenticators: \"{name}\" is listed twice"
            )),
            Some(a) => authenticators.push(a),
            None => p.push(format!(
                "{section}.authenticators: unknown authenticator \"{name}\" (expected {})",
                Authenticator::ALL
                    .iter()
                    .map(|a| format!("\"{}\"", a.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if field.is_some() && listed == 0 {
        p.push(format!(
            "{section}.authenticators: an empty chain would refuse every client; leave the key out for the default chain"
        ));
    }
    authenticators
}

fn check_websocket(p: &mut Problems, w: &WebSocketSection, section: &str) -> WsOptions {
    let mut ws = WsOptions::default();
    if let Some(path) = p.string(&w.path, section, "path") {
        path.clone_into(&mut ws.path);
    }
    ws.allowed_origins = p.string_list(&w.allowed_origins, section, "allowed_origins");
    let max = u64::from(PROTOCOL_MAX_PACKET_SIZE);
    if let Some(v) = p.integer(&w.max_frame_size, section, "max_frame_size", 16, max) {
        ws.max_frame_size = to_usize(v);
    }
    if let Some(v) = p.integer(&w.max_message_size, section, "max_message_size", 16, max) {
        ws.max_message_size = to_usize(v);
    }
    ws
}

/// A certificate, its key and an optional OCSP response; `cert` and `key` are required.
fn check_cert_files(
    p: &mut Problems,
    [cert, key, ocsp]: [&Option<Field<String>>; 3],
    section: &str,
    base: &Path,
) -> Option<CertFiles> {
    let cert_path = p.path(cert, section, "cert", base);
    let key_path = p.path(key, section, "key", base);
    let ocsp = p.path(ocsp, section, "ocsp", base);
    for (name, field) in [("cert", cert), ("key", key)] {
        if field.is_none() {
            p.push(format!("{section}.{name}: missing"));
        }
    }
    Some(CertFiles {
        cert: cert_path?,
        key: key_path?,
        ocsp,
    })
}

pub(super) fn check_tls(
    p: &mut Problems,
    t: &TlsSection,
    section: &str,
    base: &Path,
) -> Option<TlsSettings> {
    let cert = check_cert_files(p, [&t.cert, &t.key, &t.ocsp], section, base);
    let mut sni = Vec::new();
    match &t.sni {
        None => {}
        Some(Field::Given(entries)) => {
            for (i, entry) in entries.iter().enumerate() {
                let sub = format!("{section}.sni[{i}]");
                match entry {
                    Field::Given(s) => {
                        p.unknown_keys(s, &sub);
                        sni.extend(check_cert_files(p, [&s.cert, &s.key, &s.ocsp], &sub, base));
                    }
                    Field::Wrong(_) => p.push(format!("{sub}: expected a table")),
                }
            }
        }
        Some(Field::Wrong(other)) => p.push(format!(
            "{section}.sni: expected [[listener.tls.sni]] tables, found {}",
            describe(other)
        )),
    }
    let mut settings = TlsSettings::new(PathBuf::new(), PathBuf::new());
    settings.sni = sni;
    if let Some(MinVersion::V1_3) = p.choice(
        &t.min_version,
        section,
        "min_version",
        "expected \"1.2\" or \"1.3\" (nothing older is offered)",
    ) {
        settings.min_version = TlsVersion::V1_3;
    }
    settings.alpn = p.string_list(&t.alpn, section, "alpn");
    if let Some(v) = p.integer(&t.handshake_timeout, section, "handshake_timeout", 1, 3600) {
        settings.handshake_timeout = Duration::from_secs(v);
    }
    match p.choice(
        &t.client_auth,
        section,
        "client_auth",
        "expected \"none\", \"optional\" or \"required\"",
    ) {
        None | Some(ClientAuthName::None) => {}
        Some(ClientAuthName::Optional) => settings.client_auth = ClientAuth::Optional,
        Some(ClientAuthName::Required) => settings.client_auth = ClientAuth::Required,
    }
    settings.client_ca = p.path(&t.client_ca, section, "client_ca", base);
    settings.crl = p
        .string_list(&t.crl, section, "crl")
        .into_iter()
        .map(|path| base.join(path))
        .collect();
    match p.choice(
        &t.identity,
        section,
        "identity",
        "expected \"cn\", \"san_dns\", \"san_uri\", \"san_email\" or \"dn\"",
    ) {
        None | Some(IdentityName::Cn) => {}
        Some(IdentityName::SanDns) => settings.identity = IdentitySource::SanDns,
        Some(IdentityName::SanUri) => settings.identity = IdentitySource::SanUri,
        Some(IdentityName::SanEmail) => settings.identity = IdentitySource::SanEmail,
        Some(IdentityName::Dn) => settings.identity = IdentitySource::SubjectDn,
    }
    if let Some(v) = p.boolean(&t.identity_as_client_id, section, "identity_as_client_id") {
        settings.identity_as_client_id = v;
    }
    if let Some(v) = p.boolean(
        &t.dangerous_key_readable_by_others,
        section,
        "dangerous_key_readable_by_others",
    ) {
        settings.dangerous_key_readable_by_others = v;
    }
    settings.cert = cert?;
    Some(settings)
}

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
