//! The configuration in force as `GET /api/v1/config` shows it: one object per section of the
//! configuration file (`docs/config.md`), with the file's section and key names, every value
//! filled in (defaults included), and nothing secret.
//!
//! Values: durations in whole seconds under the file's key (a duration that is not a whole
//! number of seconds, which only a library caller can set, is given in milliseconds under the
//! key with `_ms` appended), sizes and counts as numbers, paths and addresses as strings, an
//! unset optional value as `null`. Sections the configuration does not have (`[admin]`,
//! `[auth.jwt]`, a listener's `tls` or `websocket`) are `null`.
//!
//! Secrets: the configuration holds key material and shared secrets only as files, and only
//! their paths are shown; no file is read here. The one place a secret can be written inline is
//! a URL (`auth.jwt.jwks_url`): credentials in it (`https://user:password@host/`) and its query
//! string and fragment (where API keys travel) are replaced by `<redacted>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_acl::Cidr;
use bulwark_core::{DeniedPublish, QueuePolicy};
use bulwark_limits::rate::{RateLimit, RateOverride};
use bulwark_store::SyncPolicy;
use serde_json::{Map, Value};

use crate::auth::{AuthSettings, JwtAuthSettings};
use crate::config::{AdminSettings, ListenerConfig, ServerConfig};
use crate::proxy::TrustedProxies;
use crate::tls::{CertFiles, ClientAuth, IdentitySource, TlsSettings, TlsVersion};
use crate::ws::WsOptions;

/// What stands in for a secret that is configured inline.
const REDACTED: &str = "<redacted>";

/// The configuration in force as the admin API shows it (`GET /api/v1/config`): every section,
/// defaults included, secrets left out.
///
/// The keys are the file's sections: `listener` (an array, one object per `[[listener]]`),
/// `acl`, `admission`, `bans`, `rate`, `auth`, `audit`, `detect`, `limits`, `mqtt`, `sys`, `storage`, `server`
/// and `admin` (`null` when the admin listener is off).
pub(crate) fn effective(config: &ServerConfig) -> Value {
    Obj::new()
        .set(
            "listener",
            config
                .listeners
                .iter()
                .map(|l| listener(l, &config.auth))
                .collect::<Vec<_>>(),
        )
        .set("acl", acl(config))
        .set("admission", admission(config))
        .set("bans", bans(config))
        .set("rate", rate(config))
        .set("auth", auth(&config.auth))
        .set("audit", audit(&config.audit))
        .set("detect", detect(&config.detect))
        .set("limits", limits(config))
        .set("mqtt", mqtt(config))
        .set(
            "sys",
            Obj::new()
                .secs("interval", config.broker.sys_interval.unwrap_or_default())
                .done(),
        )
        .set("storage", storage(config))
        .set("server", server(config))
        .set("admin", config.admin.as_ref().map_or(Value::Null, admin))
        .done()
}

/// A JSON object under construction.
struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Self {
        Self(Map::new())
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// A duration: whole seconds under `key`, or milliseconds under `{key}_ms` when it is not a
    /// whole number of seconds.
    fn secs(self, key: &str, d: Duration) -> Self {
        if d.subsec_nanos() == 0 {
            self.set(key, d.as_secs())
        } else {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            self.set(&format!("{key}_ms"), ms)
        }
    }

    fn path(self, key: &str, path: Option<&Path>) -> Self {
        self.set(key, path.map_or(Value::Null, path_value))
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn path_value(path: &Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

fn paths(list: &[PathBuf]) -> Vec<Value> {
    list.iter().map(|p| path_value(p)).collect()
}

fn cidrs(list: &[Cidr]) -> Vec<Value> {
    list.iter().map(|c| Value::String(c.to_string())).collect()
}

fn strings(list: &[String]) -> Vec<Value> {
    list.iter().map(|s| Value::String(s.clone())).collect()
}

fn optional(text: Option<&str>) -> Value {
    text.map_or(Value::Null, |t| Value::String(t.to_owned()))
}

fn listener(l: &ListenerConfig, auth: &AuthSettings) -> Value {
    let chain: Vec<Value> = l
        .chain(auth)
        .into_iter()
        .map(|a| Value::from(a.name()))
        .collect();
    Obj::new()
        .set("name", l.name.as_str())
        .set("kind", l.kind.name())
        .set("bind", l.bind.to_string())
        .set("optional", l.optional)
        .set("dangerous_plaintext", l.dangerous_plaintext)
        .set("dangerous_allow_anonymous", l.dangerous_allow_anonymous)
        .set("max_connections", l.max_connections)
        .set("proxy_protocol", l.proxy_protocol.is_some())
        .set(
            "trusted_proxies",
            l.proxy_protocol.as_ref().map_or_else(Vec::new, trusted),
        )
        .set("authenticators", chain)
        .set("tls", l.kind.tls().map_or(Value::Null, tls))
        .set(
            "websocket",
            l.kind.websocket().map_or(Value::Null, websocket),
        )
        .done()
}

/// The networks of `trusted_proxies`.
fn trusted(proxies: &TrustedProxies) -> Vec<Value> {
    cidrs(proxies.networks())
}

fn cert_files(c: &CertFiles) -> Value {
    Obj::new()
        .path("cert", Some(&c.cert))
        .path("key", Some(&c.key))
        .path("ocsp", c.ocsp.as_deref())
        .done()
}

fn tls(t: &TlsSettings) -> Value {
    let min_version = match t.min_version {
        TlsVersion::V1_2 => "1.2",
        TlsVersion::V1_3 => "1.3",
    };
    let client_auth = match t.client_auth {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    };
    let identity = match t.identity {
        IdentitySource::CommonName => "cn",
        IdentitySource::SanDns => "san_dns",
        IdentitySource::SanUri => "san_uri",
        IdentitySource::SanEmail => "san_email",
        IdentitySource::SubjectDn => "dn",
    };
    Obj::new()
        .path("cert", Some(&t.cert.cert))
        .path("key", Some(&t.cert.key))
        .path("ocsp", t.cert.ocsp.as_deref())
        .set("sni", t.sni.iter().map(cert_files).collect::<Vec<_>>())
        .set("min_version", min_version)
        .set("alpn", strings(&t.alpn))
        .secs("handshake_timeout", t.handshake_timeout)
        .set("client_auth", client_auth)
        .path("client_ca", t.client_ca.as_deref())
        .set("crl", paths(&t.crl))
        .set("identity", identity)
        .set("identity_as_client_id", t.identity_as_client_id)
        .set(
            "dangerous_key_readable_by_others",
            t.dangerous_key_readable_by_others,
        )
        .done()
}

fn websocket(ws: &WsOptions) -> Value {
    Obj::new()
        .set("path", ws.path.as_str())
        .set("allowed_origins", strings(&ws.allowed_origins))
        .set("max_frame_size", ws.max_frame_size)
        .set("max_message_size", ws.max_message_size)
        .done()
}

fn acl(config: &ServerConfig) -> Value {
    let denied_publish = match config.broker.denied_publish {
        DeniedPublish::Drop => "drop",
        DeniedPublish::Disconnect => "disconnect",
    };
    Obj::new()
        .path("file", config.acl.file.as_deref())
        // Without a file there is no authorization, which the file spells this way.
        .set("dangerous_allow_all", config.acl.file.is_none())
        .set("denied_publish", denied_publish)
        .done()
}

fn admission(config: &ServerConfig) -> Value {
    let a = &config.admission;
    Obj::new()
        .set("max_connections", a.max_connections)
        .set("max_per_address", a.max_per_address)
        .set("max_per_prefix", a.max_per_prefix)
        .set("max_handshakes", a.max_handshakes)
        .set("max_handshakes_per_address", a.max_handshakes_per_address)
        .set("rate", a.rate)
        .set("burst", a.burst)
        .secs("cooldown", a.cooldown)
        .set("exempt", cidrs(&a.exempt))
        .set("max_tracked", a.max_tracked)
        .done()
}

fn bans(config: &ServerConfig) -> Value {
    let b = &config.bans;
    Obj::new()
        .path("file", b.file.as_deref())
        .set("offences", b.offences)
        .set("flaps", b.flaps)
        .secs("window", b.window)
        .secs("duration", b.duration)
        .set("exempt", cidrs(&b.exempt))
        .done()
}

fn rate_limit(obj: Obj, limit: &RateLimit) -> Obj {
    obj.set("messages_per_second", limit.messages_per_second)
        .set("messages_burst", limit.messages_burst)
        .set("bytes_per_second", limit.bytes_per_second)
        .set("bytes_burst", limit.bytes_burst)
}

fn rate_override(o: &RateOverride) -> Value {
    let obj = Obj::new()
        .set("listener", optional(o.listener.as_deref()))
        .set("user", strings(&o.users))
        .set("group", strings(&o.groups));
    rate_limit(obj, &o.limit).done()
}

fn rate(config: &ServerConfig) -> Value {
    let r = &config.rates;
    rate_limit(Obj::new(), &r.default)
        .set(
            "override",
            r.overrides.iter().map(rate_override).collect::<Vec<_>>(),
        )
        .done()
}

fn auth(a: &AuthSettings) -> Value {
    let g = &a.guard;
    let backoff = Obj::new()
        .set("after", g.backoff_after)
        .secs("window", g.window)
        .secs("initial_delay", g.initial_delay)
        .secs("max_delay", g.max_delay)
        .secs("max_wait", g.max_wait)
        .set("ban_after", g.ban_after)
        .secs("ban_duration", g.ban_duration)
        .set("max_tracked", g.max_tracked)
        .set("exempt", cidrs(&g.exempt))
        .done();
    Obj::new()
        .path("password_file", a.password_file.as_deref())
        .set("hash_concurrency", a.hash_concurrency)
        .set("max_pending_logins", a.max_pending_logins)
        .secs("credential_cache_ttl", a.credential_cache_ttl)
        .set("credential_cache_size", a.credential_cache_size)
        .set("backoff", backoff)
        .set("jwt", a.jwt.as_ref().map_or(Value::Null, jwt))
        .done()
}

fn audit(a: &crate::audit::AuditSettings) -> Value {
    Obj::new()
        .path("file", a.file.as_deref())
        .set(
            "format",
            match a.format {
                crate::audit::AuditFormat::Chained => "chained",
                crate::audit::AuditFormat::Plain => "plain",
            },
        )
        .path("key_file", a.key_path().as_deref())
        .set("checkpoint_records", a.checkpoint_records)
        .secs("checkpoint_interval", a.checkpoint_interval)
        .set("segment_size", a.segment_size)
        .secs("segment_age", a.segment_age)
        .secs("retention_age", a.retention_age)
        .set("retention_size", a.retention_size)
        .set("queue", a.queue)
        .path("export_file", a.export_file.as_deref())
        .set("export_records", a.export_records)
        .set(
            "export_syslog",
            a.export_syslog
                .as_ref()
                .map_or(Value::Null, |t| Value::String(t.to_string())),
        )
        .path("export_syslog_ca", a.export_syslog_ca.as_deref())
        .path("export_syslog_cert", a.export_syslog_cert.as_deref())
        .path("export_syslog_key", a.export_syslog_key.as_deref())
        .set("export_syslog_app", a.export_syslog_app.as_str())
        .set(
            "export_http",
            a.export_http
                .as_deref()
                .map_or(Value::Null, |url| Value::String(redact_url(url))),
        )
        .path("export_http_ca", a.export_http_ca.as_deref())
        // The token file's name only: the token itself is never read here.
        .path(
            "export_http_token_file",
            a.export_http_token_file.as_deref(),
        )
        .set("export_queue", a.export_queue)
        .done()
}

fn detect(d: &bulwark_limits::detect::DetectSettings) -> Value {
    let rules: Vec<Value> = d
        .rules
        .iter()
        .map(|r| {
            Obj::new()
                .set("name", r.name.as_str())
                .set("kind", r.kind.as_str())
                .set("per", r.per.as_str())
                .secs("window", r.window)
                .set("threshold", r.threshold)
                .set("factor", r.factor)
                .set("warmup", r.warmup)
                .set("max_depth", r.max_depth)
                .set(
                    "respond",
                    r.responses.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
                )
                .secs("duration", r.duration)
                .set(
                    "throttle_messages_per_second",
                    r.throttle_messages_per_second,
                )
                .set("quarantine_group", optional(r.quarantine_group.as_deref()))
                .done()
        })
        .collect();
    Obj::new()
        .set("max_tracked", d.max_tracked)
        .set("rule", rules)
        .done()
}

fn jwt(j: &JwtAuthSettings) -> Value {
    Obj::new()
        .set("issuer", optional(j.issuer.as_deref()))
        .set("audiences", strings(&j.audiences))
        .secs("clock_skew", j.clock_skew)
        .set("username_claim", j.username_claim.as_str())
        .set("client_id_claim", optional(j.client_id_claim.as_deref()))
        .set("acl_claim", optional(j.acl_claim.as_deref()))
        .set("require_exp", j.require_exp)
        .set("public_key_files", paths(&j.public_key_files))
        .path("hmac_secret_file", j.hmac_secret_file.as_deref())
        .path("jwks_file", j.jwks_file.as_deref())
        .set(
            "jwks_url",
            j.jwks_url
                .as_deref()
                .map_or(Value::Null, |url| Value::String(redact_url(url))),
        )
        .path("jwks_ca_file", j.jwks_ca_file.as_deref())
        .secs("jwks_refresh", j.jwks_refresh)
        .secs("jwks_min_interval", j.jwks_min_interval)
        .done()
}

/// A URL with what may be a secret in it replaced by [`REDACTED`]: the user information
/// (`user:password@`), the query string and the fragment. Scheme, host, port and path stay.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}{}", authority.get(at..).unwrap_or("@")),
        None => authority.to_owned(),
    };
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, extra) = tail.split_at(path_end);
    let mut out = format!("{scheme}{host}{path}");
    if extra.starts_with('?') {
        out.push('?');
        out.push_str(REDACTED);
    }
    if extra.contains('#') {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

fn limits(config: &ServerConfig) -> Value {
    let b = &config.broker;
    let queue_full = match b.sessions.queue_full {
        QueuePolicy::DropNewest => "drop_newest",
        QueuePolicy::DropOldest => "drop_oldest",
        QueuePolicy::Disconnect => "disconnect",
    };
    Obj::new()
        .set("max_packet_size", config.decoder.max_packet_size)
        .set(
            "max_unauthenticated_packet_size",
            config.decoder.max_unauthenticated_packet_size,
        )
        .secs("connect_timeout", config.connect_timeout)
        .secs("write_timeout", config.write_timeout)
        .set("max_keep_alive", b.sessions.max_keep_alive)
        .set(
            "max_session_expiry_interval",
            b.sessions.max_session_expiry_interval,
        )
        .set("receive_maximum", b.sessions.receive_maximum)
        .set("max_inflight_out", b.sessions.max_inflight_out)
        .set("max_queued_messages", b.sessions.max_queued_messages)
        .set("max_queued_bytes", b.sessions.max_queued_bytes)
        .set("queue_full", queue_full)
        .set(
            "max_subscriptions_per_session",
            b.sessions.max_subscriptions_per_session,
        )
        .set("max_topic_levels", b.packets.max_topic_levels)
        .set("max_topic_length", b.packets.max_topic_length)
        .set("max_client_id_length", b.packets.max_client_id_length)
        .set("max_user_properties", b.packets.max_user_properties)
        .set("max_retained_messages", b.retained.max_retained_messages)
        .set("max_retained_bytes", b.retained.max_retained_bytes)
        .set("topic_alias_maximum", b.packets.topic_alias_maximum)
        .set(
            "max_connections_per_user",
            config.auth.max_connections_per_user,
        )
        .set(
            "max_subscriptions_per_user",
            b.per_user.max_subscriptions_per_user,
        )
        .set("max_retained_per_user", b.per_user.max_retained_per_user)
        .set(
            "max_retained_bytes_per_user",
            b.per_user.max_retained_bytes_per_user,
        )
        .done()
}

fn mqtt(config: &ServerConfig) -> Value {
    let b = &config.broker;
    Obj::new()
        .set("queue_qos0_offline", b.sessions.queue_qos0_offline)
        .set("outbound_topic_aliases", b.packets.outbound_topic_aliases)
        .set(
            "response_information_prefix",
            optional(b.response_information_prefix.as_deref()),
        )
        .done()
}

fn storage(config: &ServerConfig) -> Value {
    let s = &config.storage;
    let obj = Obj::new()
        .set("kind", if s.path.is_some() { "disk" } else { "memory" })
        .path("path", s.path.as_deref());
    match s.sync {
        SyncPolicy::Always => obj.set("sync", "always").set("sync_interval", Value::Null),
        SyncPolicy::Periodic(every) => obj.set("sync", "periodic").secs("sync_interval", every),
    }
    .done()
}

fn server(config: &ServerConfig) -> Value {
    Obj::new()
        .secs("shutdown_grace", config.shutdown_grace)
        .set("workers", config.workers)
        .secs("tls_watch_interval", config.tls_watch_interval)
        .set("memory_watermark", config.memory_watermark)
        .done()
}

fn admin(a: &AdminSettings) -> Value {
    Obj::new()
        .set("bind", a.bind.to_string())
        .path("tokens", Some(&a.tokens))
        .set("max_failures", a.max_failures)
        .secs("lockout", a.lockout)
        .set("tls", a.tls.as_deref().map_or(Value::Null, tls))
        .set(
            "certificate_roles",
            a.certificate_roles
                .iter()
                .map(|(identity, role)| (identity.clone(), Value::from(role.as_str())))
                .collect::<Map<String, Value>>(),
        )
        .done()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::json;

    use super::*;
    use crate::auth::Authenticator;
    use crate::bans::BanSettings;
    use crate::config::{AclSettings, ListenerKind, StorageSettings};
    use bulwark_limits::rate::RateSettings;

    const SECTIONS: [&str; 14] = [
        "listener",
        "acl",
        "admission",
        "bans",
        "rate",
        "auth",
        "audit",
        "detect",
        "limits",
        "mqtt",
        "sys",
        "storage",
        "server",
        "admin",
    ];

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_config_renders_every_section() {
        let config = ServerConfig::default();
        let v = effective(&config);
        let top = v.as_object().expect("an object");
        for key in SECTIONS {
            assert!(top.contains_key(key), "missing section {key}");
        }
        assert_eq!(top.len(), SECTIONS.len(), "unexpected sections: {v}");

        let l = &v["listener"][0];
        assert_eq!(v["listener"].as_array().unwrap().len(), 1);
        assert_eq!(l["name"], "tcp-0");
        assert_eq!(l["kind"], "tcp");
        assert_eq!(l["bind"], "127.0.0.1:1883");
        assert_eq!(l["authenticators"], json!(["scram", "password"]));
        assert_eq!(l["proxy_protocol"], false);
        assert_eq!(l["trusted_proxies"], json!([]));
        assert_eq!(l["max_connections"], 0);
        assert_eq!(l["tls"], Value::Null);
        assert_eq!(l["websocket"], Value::Null);

        assert_eq!(v["limits"]["max_packet_size"], 1_048_576);
        assert_eq!(v["limits"]["max_unauthenticated_packet_size"], 65_536);
        assert_eq!(v["limits"]["connect_timeout"], 10);
        assert_eq!(v["limits"]["write_timeout"], 60);
        assert_eq!(v["limits"]["max_session_expiry_interval"], 604_800);
        assert_eq!(v["limits"]["queue_full"], "drop_newest");
        assert_eq!(v["limits"]["max_connections_per_user"], 0);
        assert_eq!(v["mqtt"]["outbound_topic_aliases"], true);
        assert_eq!(v["mqtt"]["response_information_prefix"], Value::Null);
        assert_eq!(v["sys"]["interval"], 10);
        assert_eq!(v["acl"]["file"], Value::Null);
        assert_eq!(v["acl"]["dangerous_allow_all"], true);
        assert_eq!(v["acl"]["denied_publish"], "drop");
        assert_eq!(v["admission"]["max_connections"], 100_000);
        assert_eq!(v["admission"]["cooldown"], 10);
        assert_eq!(v["admission"]["exempt"], json!(["127.0.0.0/8", "::1/128"]));
        assert_eq!(v["bans"]["file"], Value::Null);
        assert_eq!(v["bans"]["duration"], 3600);
        assert_eq!(v["rate"]["messages_per_second"], 0);
        assert_eq!(v["rate"]["override"], json!([]));
        assert_eq!(v["auth"]["password_file"], Value::Null);
        assert_eq!(v["auth"]["max_pending_logins"], 1024);
        assert_eq!(v["auth"]["backoff"]["after"], 5);
        assert_eq!(v["auth"]["backoff"]["window"], 300);
        assert_eq!(v["auth"]["backoff"]["ban_duration"], 600);
        assert_eq!(v["auth"]["jwt"], Value::Null);
        assert_eq!(v["storage"]["kind"], "memory");
        assert_eq!(v["storage"]["path"], Value::Null);
        assert_eq!(v["storage"]["sync"], "always");
        assert_eq!(v["server"]["shutdown_grace"], 5);
        assert_eq!(v["server"]["workers"], 0);
        assert_eq!(v["server"]["tls_watch_interval"], 5);
        assert_eq!(v["server"]["memory_watermark"], config.memory_watermark);
        assert_eq!(v["admin"], Value::Null);

        let mut with_admin = config;
        with_admin.admin = Some(AdminSettings::new("data/admin-tokens.toml".into()));
        let v = effective(&with_admin);
        assert_eq!(v["admin"]["bind"], "127.0.0.1:9883");
        assert_eq!(v["admin"]["tokens"], "data/admin-tokens.toml");
        assert_eq!(v["admin"]["max_failures"], 10);
        assert_eq!(v["admin"]["lockout"], 60);
        assert_eq!(v["admin"]["tls"], Value::Null);
        assert_eq!(v["admin"]["certificate_roles"], json!({}));
    }

    /// A configuration that sets every secret it can: key material and the HMAC secret as
    /// files (whose contents must never show) and credentials, an API key and a fragment in the
    /// JWKS URL (the one place a secret can be written inline).
    #[test]
    fn inline_secrets_are_redacted_and_files_are_not_read() {
        let dir = std::env::temp_dir().join(format!(
            "bulwark-config-view-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("server.key");
        let hmac = dir.join("jwt.secret");
        let tokens = dir.join("admin-tokens.toml");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nKEYMATERIAL-7f3a\n").unwrap();
        std::fs::write(&hmac, "hmac-shared-secret-0123456789abcdef0123").unwrap();
        std::fs::write(&tokens, "hash = \"token-hash-99c1\"\n").unwrap();

        let mut tls = TlsSettings::new(dir.join("server.pem"), &key);
        tls.client_auth = ClientAuth::Required;
        tls.client_ca = Some(dir.join("ca.pem"));
        tls.crl = vec![dir.join("revoked.crl")];
        tls.alpn = vec!["mqtt".to_owned()];
        tls.min_version = TlsVersion::V1_3;
        tls.sni = vec![CertFiles {
            cert: dir.join("other.pem"),
            key: key.clone(),
            ocsp: Some(dir.join("other.ocsp.der")),
        }];
        let mut secure = ListenerConfig::tls("secure", addr("0.0.0.0:8883"), tls.clone());
        secure.proxy_protocol =
            Some(TrustedProxies::parse(&["10.0.0.0/8".to_owned(), "fd00::1".to_owned()]).unwrap());
        secure.max_connections = 5000;
        let mut web = ListenerConfig::tcp("web", addr("127.0.0.1:8080"));
        web.kind = ListenerKind::Wss(Box::new(tls.clone()), WsOptions::default());
        web.authenticators = vec![Authenticator::Jwt, Authenticator::Password];

        let config = ServerConfig {
            listeners: vec![secure, web],
            auth: AuthSettings {
                password_file: Some(dir.join("passwords.toml")),
                jwt: Some(JwtAuthSettings {
                    issuer: Some("https://id.example.com".to_owned()),
                    audiences: vec!["bulwark".to_owned()],
                    public_key_files: vec![dir.join("jwt.pub")],
                    hmac_secret_file: Some(hmac.clone()),
                    jwks_url: Some(
                        "https://svc:pa55-word-31@id.example.com:8443/keys.json?api_key=k-77d2#frag-5e"
                            .to_owned(),
                    ),
                    jwks_ca_file: Some(dir.join("id-ca.pem")),
                    ..JwtAuthSettings::default()
                }),
                ..AuthSettings::default()
            },
            acl: AclSettings {
                file: Some(dir.join("acl.toml")),
            },
            bans: BanSettings {
                file: Some(dir.join("bans.toml")),
                ..BanSettings::default()
            },
            rates: RateSettings::default(),
            storage: StorageSettings {
                path: Some(dir.join("store.redb")),
                sync: SyncPolicy::Periodic(Duration::from_secs(2)),
            },
            admin: Some(AdminSettings {
                bind: addr("0.0.0.0:9883"),
                tls: Some(Box::new(tls)),
                tokens: tokens.clone(),
                max_failures: 3,
                lockout: Duration::from_secs(120),
                certificate_roles: vec![(
                    "scraper".to_owned(),
                    bulwark_auth::token::Role::Viewer,
                )],
            }),
            ..ServerConfig::default()
        };
        let v = effective(&config);
        let text = serde_json::to_string(&v).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        for secret in [
            "KEYMATERIAL-7f3a",
            "PRIVATE KEY",
            "hmac-shared-secret",
            "token-hash-99c1",
            "pa55-word-31",
            "svc:",
            "k-77d2",
            "api_key",
            "frag-5e",
        ] {
            assert!(!text.contains(secret), "{secret:?} shown in {text}");
        }
        assert!(text.contains(REDACTED));
        let jwt = &v["auth"]["jwt"];
        assert_eq!(
            jwt["jwks_url"],
            "https://<redacted>@id.example.com:8443/keys.json?<redacted>#<redacted>"
        );
        // Paths are not secrets: they are shown.
        let shown = |p: &Path| Value::String(p.to_string_lossy().into_owned());
        assert_eq!(jwt["hmac_secret_file"], shown(&hmac));
        assert_eq!(
            jwt["public_key_files"],
            json!([shown(&dir.join("jwt.pub"))])
        );
        assert_eq!(jwt["issuer"], "https://id.example.com");
        assert_eq!(jwt["audiences"], json!(["bulwark"]));
        assert_eq!(jwt["clock_skew"], 30);
        assert_eq!(jwt["jwks_refresh"], 300);

        let secure = &v["listener"][0];
        assert_eq!(secure["kind"], "tls");
        assert_eq!(secure["bind"], "0.0.0.0:8883");
        assert_eq!(
            secure["authenticators"],
            json!(["certificate", "scram", "jwt", "password"])
        );
        assert_eq!(secure["proxy_protocol"], true);
        assert_eq!(
            secure["trusted_proxies"],
            json!(["10.0.0.0/8", "fd00::1/128"])
        );
        assert_eq!(secure["max_connections"], 5000);
        assert_eq!(secure["tls"]["key"], shown(&key));
        assert_eq!(secure["tls"]["client_auth"], "required");
        assert_eq!(secure["tls"]["client_ca"], shown(&dir.join("ca.pem")));
        assert_eq!(
            secure["tls"]["crl"],
            json!([shown(&dir.join("revoked.crl"))])
        );
        assert_eq!(secure["tls"]["min_version"], "1.3");
        assert_eq!(secure["tls"]["alpn"], json!(["mqtt"]));
        assert_eq!(secure["tls"]["handshake_timeout"], 10);
        assert_eq!(
            secure["tls"]["sni"][0]["cert"],
            shown(&dir.join("other.pem"))
        );
        assert_eq!(secure["websocket"], Value::Null);

        let web = &v["listener"][1];
        assert_eq!(web["kind"], "wss");
        assert_eq!(web["authenticators"], json!(["jwt", "password"]));
        assert_eq!(web["websocket"]["path"], "/mqtt");
        assert_eq!(web["tls"]["cert"], shown(&dir.join("server.pem")));

        assert_eq!(v["acl"]["dangerous_allow_all"], false);
        assert_eq!(v["storage"]["kind"], "disk");
        assert_eq!(v["storage"]["sync"], "periodic");
        assert_eq!(v["storage"]["sync_interval"], 2);
        assert_eq!(v["admin"]["tokens"], shown(&tokens));
        assert_eq!(v["admin"]["lockout"], 120);
        assert_eq!(v["admin"]["tls"]["client_auth"], "required");
        assert_eq!(v["admin"]["certificate_roles"]["scraper"], "viewer");
    }

    #[test]
    fn sub_second_durations_use_ms_keys() {
        let config = ServerConfig {
            connect_timeout: Duration::from_millis(1500),
            shutdown_grace: Duration::from_millis(250),
            ..ServerConfig::default()
        };
        let v = effective(&config);
        assert_eq!(v["limits"]["connect_timeout_ms"], 1500);
        assert!(v["limits"].get("connect_timeout").is_none());
        assert_eq!(v["server"]["shutdown_grace_ms"], 250);
        assert_eq!(v["limits"]["write_timeout"], 60);
    }

    #[test]
    fn urls_lose_credentials_queries_and_fragments() {
        for (url, shown) in [
            (
                "https://id.example.com/.well-known/jwks.json",
                "https://id.example.com/.well-known/jwks.json",
            ),
            ("https://u:p@h/x", "https://<redacted>@h/x"),
            ("https://u@h", "https://<redacted>@h"),
            ("https://h?key=1", "https://h?<redacted>"),
            ("https://h/p#t", "https://h/p#<redacted>"),
            ("u:p@h/x?y", "<redacted>@h/x?<redacted>"),
            ("https://a@b@h/x", "https://<redacted>@h/x"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn rate_overrides_use_the_file_keys() {
        let mut config = ServerConfig::default();
        config.rates.overrides.push(RateOverride {
            listener: Some("public".to_owned()),
            users: Vec::new(),
            groups: vec!["meters".to_owned()],
            limit: RateLimit {
                messages_per_second: 10,
                messages_burst: 10,
                bytes_per_second: 10_240,
                bytes_burst: 10_240,
            },
        });
        let v = effective(&config);
        assert_eq!(
            v["rate"]["override"],
            json!([{
                "listener": "public",
                "user": [],
                "group": ["meters"],
                "messages_per_second": 10,
                "messages_burst": 10,
                "bytes_per_second": 10_240,
                "bytes_burst": 10_240,
            }])
        );
    }
}
