//! `[audit]`: the audit trail (`docs/audit.md`).

use std::path::Path;
use std::time::Duration;

use bulwark_server::audit::settings::{
    SyslogTarget, SyslogTransport, check_http_url, check_syslog_app,
};
use bulwark_server::{AuditFormat, AuditSettings};
use serde::Deserialize;

use super::fields::{Problems, section, to_usize};

/// `audit.format`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum FormatName {
    Chained,
    Plain,
}

section! {
    /// `[audit]`.
    AuditSection {
        file: String,
        format: FormatName,
        key_file: String,
        checkpoint_records: u64,
        checkpoint_interval: u64,
        segment_size: u64,
        segment_age: u64,
        retention_age: u64,
        retention_size: u64,
        queue: u64,
        export_file: String,
        export_records: bool,
        export_syslog: String,
        export_syslog_ca: String,
        export_syslog_cert: String,
        export_syslog_key: String,
        export_syslog_app: String,
        export_http: String,
        export_http_ca: String,
        export_http_token_file: String,
        export_queue: u64,
    }
}

/// The `[audit]` section; `legacy_file` is `[auth] audit_file`, which still names the trail
/// when `[audit] file` does not.
pub(super) fn check_audit(
    p: &mut Problems,
    a: Option<&AuditSection>,
    legacy_file: Option<std::path::PathBuf>,
    base: &Path,
) -> AuditSettings {
    let mut settings = AuditSettings {
        file: legacy_file.clone(),
        ..AuditSettings::default()
    };
    let Some(a) = a else {
        return settings;
    };
    let s = "audit";
    if let Some(file) = p.path(&a.file, s, "file", base) {
        if legacy_file.is_some() {
            p.push(
                "audit.file: auth.audit_file names the trail too; keep only audit.file".to_owned(),
            );
        }
        settings.file = Some(file);
    }
    match p.choice(&a.format, s, "format", "use \"chained\" or \"plain\"") {
        None | Some(FormatName::Chained) => {}
        Some(FormatName::Plain) => settings.format = AuditFormat::Plain,
    }
    settings.key_file = p.path(&a.key_file, s, "key_file", base);
    if let Some(v) = p.integer(&a.checkpoint_records, s, "checkpoint_records", 1, 1_000_000) {
        settings.checkpoint_records = v;
    }
    if let Some(v) = p.integer(&a.checkpoint_interval, s, "checkpoint_interval", 1, 86_400) {
        settings.checkpoint_interval = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&a.segment_size, s, "segment_size", 4096, 1 << 40) {
        settings.segment_size = v;
    }
    if let Some(v) = p.integer(&a.segment_age, s, "segment_age", 0, 366 * 86_400) {
        settings.segment_age = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&a.retention_age, s, "retention_age", 0, 100 * 366 * 86_400) {
        settings.retention_age = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&a.retention_size, s, "retention_size", 0, 1 << 50) {
        settings.retention_size = v;
    }
    if let Some(v) = p.integer(&a.queue, s, "queue", 16, 1_000_000) {
        settings.queue = to_usize(v);
    }
    settings.export_file = p.path(&a.export_file, s, "export_file", base);
    if let Some(v) = p.boolean(&a.export_records, s, "export_records") {
        settings.export_records = v;
    }
    check_remote_export(p, a, &mut settings, base);
    let chained = settings.format == AuditFormat::Chained;
    let remote = [
        (a.export_syslog.is_some(), "export_syslog"),
        (a.export_http.is_some(), "export_http"),
    ];
    if settings.file.is_none() {
        for (set, key) in [
            (a.key_file.is_some(), "key_file"),
            (a.export_file.is_some(), "export_file"),
            (a.format.is_some(), "format"),
        ]
        .into_iter()
        .chain(remote)
        {
            if set {
                p.push(format!("audit.{key}: no audit.file to go with it"));
            }
        }
    }
    if !chained {
        for (set, key) in [
            (a.key_file.is_some(), "key_file"),
            (a.checkpoint_records.is_some(), "checkpoint_records"),
            (a.checkpoint_interval.is_some(), "checkpoint_interval"),
            (a.export_file.is_some(), "export_file"),
        ]
        .into_iter()
        .chain(remote)
        {
            if set {
                p.push(format!(
                    "audit.{key}: only used with format = \"chained\" (a plain trail has no checkpoints)"
                ));
            }
        }
    }
    if settings.export_records && settings.export_file.is_none() && !settings.exports_remotely() {
        p.push(
            "audit.export_records: needs audit.export_file, audit.export_syslog or audit.export_http"
                .to_owned(),
        );
    }
    if let (Some(file), Some(export)) = (&settings.file, &settings.export_file)
        && file == export
    {
        p.push("audit.export_file: must not be the trail itself".to_owned());
    }
    settings
}

/// `export_syslog`, `export_http` and the keys that go with them. Files are read when the
/// broker starts (a missing or unusable one stops the start with its name).
fn check_remote_export(
    p: &mut Problems,
    a: &AuditSection,
    settings: &mut AuditSettings,
    base: &Path,
) {
    let s = "audit";
    if let Some(url) = p.string(&a.export_syslog, s, "export_syslog") {
        match SyslogTarget::parse(url) {
            Ok(target) => settings.export_syslog = Some(target),
            Err(err) => p.push(format!("audit.export_syslog = \"{url}\": {err}")),
        }
    }
    settings.export_syslog_ca = p.path(&a.export_syslog_ca, s, "export_syslog_ca", base);
    settings.export_syslog_cert = p.path(&a.export_syslog_cert, s, "export_syslog_cert", base);
    settings.export_syslog_key = p.path(&a.export_syslog_key, s, "export_syslog_key", base);
    if let Some(app) = p.string(&a.export_syslog_app, s, "export_syslog_app") {
        match check_syslog_app(app) {
            Ok(()) => settings.export_syslog_app = app.to_owned(),
            Err(err) => p.push(format!("audit.export_syslog_app: {err}")),
        }
    }
    let tls = settings
        .export_syslog
        .as_ref()
        .map(|t| t.transport == SyslogTransport::Tls);
    match tls {
        Some(true) => {
            if a.export_syslog_ca.is_none() {
                p.push(
                    "audit.export_syslog: tls:// needs audit.export_syslog_ca (the PEM file of the CA the receiver's certificate chains to)"
                        .to_owned(),
                );
            }
            if a.export_syslog_cert.is_some() != a.export_syslog_key.is_some() {
                p.push(
                    "audit.export_syslog_cert and audit.export_syslog_key: give both (a client certificate and its key) or neither"
                        .to_owned(),
                );
            }
        }
        Some(false) => {
            for (set, key) in [
                (a.export_syslog_ca.is_some(), "export_syslog_ca"),
                (a.export_syslog_cert.is_some(), "export_syslog_cert"),
                (a.export_syslog_key.is_some(), "export_syslog_key"),
            ] {
                if set {
                    p.push(format!(
                        "audit.{key}: only used with export_syslog = \"tls://HOST:PORT\""
                    ));
                }
            }
        }
        // No (usable) export_syslog: a problem was reported if one was given.
        None if a.export_syslog.is_none() => {
            for (set, key) in [
                (a.export_syslog_ca.is_some(), "export_syslog_ca"),
                (a.export_syslog_cert.is_some(), "export_syslog_cert"),
                (a.export_syslog_key.is_some(), "export_syslog_key"),
                (a.export_syslog_app.is_some(), "export_syslog_app"),
            ] {
                if set {
                    p.push(format!("audit.{key}: no audit.export_syslog to go with it"));
                }
            }
        }
        None => {}
    }
    if let Some(url) = p.string(&a.export_http, s, "export_http") {
        match check_http_url(url) {
            Ok(()) => settings.export_http = Some(url.to_owned()),
            Err(err) => p.push(format!("audit.export_http: {err}")),
        }
    }
    settings.export_http_ca = p.path(&a.export_http_ca, s, "export_http_ca", base);
    settings.export_http_token_file =
        p.path(&a.export_http_token_file, s, "export_http_token_file", base);
    if a.export_http.is_none() {
        for (set, key) in [
            (a.export_http_ca.is_some(), "export_http_ca"),
            (a.export_http_token_file.is_some(), "export_http_token_file"),
        ] {
            if set {
                p.push(format!("audit.{key}: no audit.export_http to go with it"));
            }
        }
    } else if a.export_http_ca.is_some()
        && settings.export_http.as_deref().is_some_and(|url| {
            !url.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        })
    {
        p.push("audit.export_http_ca: only used with an https:// export_http".to_owned());
    }
    if let Some(v) = p.integer(&a.export_queue, s, "export_queue", 16, 1_000_000) {
        settings.export_queue = to_usize(v);
    }
    if a.export_queue.is_some() && a.export_syslog.is_none() && a.export_http.is_none() {
        p.push(
            "audit.export_queue: no audit.export_syslog or audit.export_http to go with it"
                .to_owned(),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

    use super::super::parse;
    use bulwark_server::audit::settings::{SyslogTarget, SyslogTransport};

    /// `[audit]` with `keys` (and a trail), in a file that otherwise takes the defaults.
    fn audit(keys: &str) -> Result<bulwark_server::ServerConfig, Vec<String>> {
        let text = format!(
            "[acl]\ndangerous_allow_all = true\n[audit]\nfile = \"/var/lib/bulwark/audit.jsonl\"\n{keys}\n"
        );
        parse(&text, "test").map_err(|err| err.problems)
    }

    fn problems(keys: &str) -> Vec<String> {
        audit(keys).err().unwrap_or_default()
    }

    #[test]
    fn remote_export_keys_are_read() {
        let config = audit(
            r#"export_syslog = "tls://logs.example.com:6514"
export_syslog_ca = "/etc/bulwark/syslog-ca.pem"
export_syslog_cert = "/etc/bulwark/client.pem"
export_syslog_key = "/etc/bulwark/client.key"
export_syslog_app = "bulwark-eu1"
export_http = "https://anchor.example.com/v1/audit"
export_http_ca = "/etc/bulwark/anchor-ca.pem"
export_http_token_file = "/etc/bulwark/anchor.token"
export_queue = 100
export_records = true"#,
        )
        .unwrap();
        let a = config.audit;
        assert_eq!(
            a.export_syslog,
            Some(SyslogTarget {
                transport: SyslogTransport::Tls,
                host: "logs.example.com".into(),
                port: 6514
            })
        );
        assert_eq!(a.export_syslog_app, "bulwark-eu1");
        assert_eq!(
            a.export_http.as_deref(),
            Some("https://anchor.example.com/v1/audit")
        );
        assert_eq!(a.export_queue, 100);
        assert!(a.export_records, "export_records works without export_file");
        assert!(a.export_http_token_file.is_some() && a.export_syslog_key.is_some());
    }

    #[test]
    fn defaults_without_remote_export() {
        let a = audit("").unwrap().audit;
        assert_eq!(a.export_syslog, None);
        assert_eq!(a.export_http, None);
        assert_eq!(a.export_syslog_app, "bulwark");
        assert_eq!(a.export_queue, 4096);
    }

    #[test]
    fn syslog_addresses_are_checked() {
        for (url, transport, host, port) in [
            (
                "udp://127.0.0.1:514",
                SyslogTransport::Udp,
                "127.0.0.1",
                514,
            ),
            ("tcp://logs:601", SyslogTransport::Tcp, "logs", 601),
            ("UDP://[::1]:514", SyslogTransport::Udp, "::1", 514),
        ] {
            let a = audit(&format!("export_syslog = \"{url}\"")).unwrap().audit;
            let target = a.export_syslog.unwrap();
            assert_eq!(
                (target.transport, target.host.as_str(), target.port),
                (transport, host, port)
            );
        }
        for (url, says) in [
            ("syslog://h:514", "unknown scheme"),
            ("h:514", "no scheme"),
            ("udp://h", "no port"),
            ("udp://h:0", "is not a port"),
            ("udp://h:514/x", "is not a port"),
            ("udp://::1:514", "IPv6 address goes in brackets"),
            ("udp://[::1]", "needs a port"),
            ("tcp://:514", "not a host name"),
        ] {
            let found = problems(&format!("export_syslog = \"{url}\""));
            assert!(
                found
                    .iter()
                    .any(|p| p.contains("audit.export_syslog") && p.contains(says)),
                "{url}: {found:?}"
            );
        }
    }

    #[test]
    fn tls_syslog_needs_a_ca_and_both_halves_of_a_client_certificate() {
        let found = problems(r#"export_syslog = "tls://h:6514""#);
        assert!(
            found
                .iter()
                .any(|p| p.contains("needs audit.export_syslog_ca")),
            "{found:?}"
        );
        let found = problems(
            r#"export_syslog = "tls://h:6514"
export_syslog_ca = "ca.pem"
export_syslog_cert = "c.pem""#,
        );
        assert!(found.iter().any(|p| p.contains("give both")), "{found:?}");
        let found = problems(
            r#"export_syslog = "udp://h:514"
export_syslog_ca = "ca.pem""#,
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("only used with export_syslog = \"tls://")),
            "{found:?}"
        );
        let found = problems(r#"export_syslog_app = "has space""#);
        assert!(found.iter().any(|p| p.contains("APP-NAME")), "{found:?}");
        assert!(
            found.iter().any(|p| p.contains("no audit.export_syslog")),
            "{found:?}"
        );
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let found = problems(r#"export_http = "http://anchor.example.com/audit""#);
        assert!(
            found
                .iter()
                .any(|p| p.contains("plaintext")
                    && p.contains("use https://anchor.example.com/audit")),
            "{found:?}"
        );
        assert!(!found.iter().any(|p| p.contains("dangerous_")), "{found:?}");
        for url in [
            "http://127.0.0.1:8080/a",
            "http://[::1]:8080/a",
            "http://localhost/a",
        ] {
            let a = audit(&format!("export_http = \"{url}\"")).unwrap().audit;
            assert_eq!(a.export_http.as_deref(), Some(url));
        }
        let found = problems(r#"export_http = "https://user:pw@h/a""#);
        assert!(
            found.iter().any(|p| p.contains("export_http_token_file")),
            "{found:?}"
        );
        let found = problems(r#"export_http = "ftp://h/a""#);
        assert!(
            found.iter().any(|p| p.contains("unknown scheme")),
            "{found:?}"
        );
        let found = problems(r#"export_http_token = "secret""#);
        assert!(found.iter().any(|p| p.contains("unknown key")), "{found:?}");
    }

    #[test]
    fn remote_export_needs_a_chained_trail() {
        let found = problems(
            r#"format = "plain"
export_syslog = "udp://127.0.0.1:514""#,
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("audit.export_syslog: only used with format")),
            "{found:?}"
        );
        let text = "[acl]\ndangerous_allow_all = true\n[audit]\nexport_http = \"https://h/a\"\n";
        let found = parse(text, "test").unwrap_err().problems;
        assert!(
            found
                .iter()
                .any(|p| p.contains("audit.export_http: no audit.file")),
            "{found:?}"
        );
    }
}
