//! The TOML configuration file: read into a [`ServerConfig`], every problem reported at once.
//! `docs/config.md` documents each key; keep the two in step.
//!
//! The file is read in two steps. First serde reads it into [`ConfigFile`] and its section
//! structs, where every key is an `Option<`[`Field`]`<T>>`: a value of the wrong type is kept
//! rather than stopping the read, and keys a section does not know are kept too. Then one
//! validation pass turns the sections into a [`ServerConfig`], collecting every problem (unknown
//! keys with a suggestion, wrong types, values out of range, settings that contradict each
//! other) before the file is refused. The sections live by theme: [`listeners`] (listeners,
//! TLS, WebSocket), [`audit`] (`[audit]`), [`auth`] (`[auth]`, `[auth.backoff]`, `[auth.jwt]`, `[acl]`) and [`limits`]
//! (`[limits]`, `[mqtt]`, `[sys]`, `[server]`, `[storage]`, `[admission]`, `[bans]`, `[rate]`),
//! and [`admin`] (`[admin]`).

use std::path::Path;

use bulwark_server::{ConfigError, ServerConfig};
use toml::Table;

mod admin;
mod audit;
mod auth;
mod detect;
mod fields;
mod limits;
mod listeners;

use fields::{Field, Problems, did_you_mean, section, toml_error};
pub(crate) use listeners::parse_bind;

/// The store's file name in the data directory.
pub(crate) const STORE_FILE: &str = "store.redb";

/// What the server says when no listener is configured (a follow-on error when every
/// configured listener was refused).
const NO_LISTENER: &str = "listener: at least one listener is needed";

section! {
    /// The whole file: its sections.
    ConfigFile {
        listener: Vec<Field<listeners::ListenerSection>>,
        acl: auth::AclSection,
        storage: limits::StorageSection,
        bans: limits::BansSection,
        rate: limits::RateSection,
        admission: limits::AdmissionSection,
        auth: auth::AuthSection,
        audit: audit::AuditSection,
        detect: detect::DetectSection,
        limits: limits::LimitsSection,
        mqtt: limits::MqttSection,
        sys: limits::SysSection,
        server: limits::ServerSection,
        admin: admin::AdminSection,
    }
}

/// [`parse_in`] with the default data directory, `bulwark-data`.
pub(crate) fn parse(text: &str, source: &str) -> Result<ServerConfig, ConfigError> {
    parse_in(text, source, Path::new("bulwark-data"))
}

/// Reads a configuration file; relative paths are relative to the file, and the store lives
/// in `data_dir` unless `[storage]` says otherwise.
pub(crate) fn parse_in(
    text: &str,
    source: &str,
    data_dir: &Path,
) -> Result<ServerConfig, ConfigError> {
    let syntax = |err: toml::de::Error| ConfigError {
        problems: vec![toml_error(text, source, &err)],
    };
    // The syntax first, as a plain table: its errors carry the span of the mistake.
    text.parse::<Table>().map_err(syntax)?;
    // Every key is a lenient `Field`, so this read does not fail on a valid TOML document.
    // It reads the text rather than the table: a table hands its dates on as strings.
    let file: ConfigFile = toml::from_str(text).map_err(syntax)?;
    // Relative file names in the configuration are relative to the file itself.
    let base = Path::new(source).parent().unwrap_or(Path::new(""));
    validate(&file, base, data_dir)
}

/// The one validation pass: every section checked, every problem collected.
fn validate(file: &ConfigFile, base: &Path, data_dir: &Path) -> Result<ServerConfig, ConfigError> {
    use fields::Section as _;

    let mut p = Problems::default();
    let mut config = ServerConfig::default();
    let sections = || ConfigFile::KEYS.iter().copied();
    for key in file.unknown().keys() {
        p.push(format!(
            "{key}: unknown section or key{}",
            did_you_mean(key, sections())
        ));
    }

    let listener_refused = listeners::check(&mut p, &file.listener, base, &mut config);
    let per_user_connections = match p.section(&file.limits, "limits") {
        Some(section) => limits::check_limits(&mut p, section, &mut config),
        None => None,
    };
    if let Some(section) = p.section(&file.mqtt, "mqtt") {
        limits::check_mqtt(&mut p, section, &mut config);
    }
    if let Some(section) = p.section(&file.sys, "sys")
        && let Some(v) = p.integer(&section.interval, "sys", "interval", 0, 86_400)
    {
        config.broker.sys_interval = (v > 0).then(|| std::time::Duration::from_secs(v));
    }
    let mut legacy_audit_file = None;
    if let Some(section) = p.section(&file.auth, "auth") {
        (config.auth, legacy_audit_file) = auth::check_auth(&mut p, section, base);
    }
    let audit = p.section(&file.audit, "audit");
    config.audit = audit::check_audit(&mut p, audit, legacy_audit_file, base);
    let detect = p.section(&file.detect, "detect");
    config.detect = detect::check_detect(&mut p, detect);
    if let Some(v) = per_user_connections {
        config.auth.max_connections_per_user = fields::to_usize(v);
    }
    let acl = p.section(&file.acl, "acl");
    auth::check_acl(&mut p, acl, &mut config, base);
    let storage = p.section(&file.storage, "storage");
    config.storage = limits::check_storage(&mut p, storage, base, data_dir);
    if let Some(section) = p.section(&file.admission, "admission") {
        limits::check_admission(&mut p, section, &mut config.admission);
    }
    if let Some(section) = p.section(&file.bans, "bans") {
        limits::check_bans(&mut p, section, &mut config.bans, base);
    }
    if let Some(section) = p.section(&file.rate, "rate") {
        limits::check_rates(&mut p, section, &mut config.rates);
    }
    if let Some(section) = p.section(&file.server, "server") {
        limits::check_server(&mut p, section, &mut config);
    }
    if let Some(section) = p.section(&file.admin, "admin") {
        config.admin = Some(admin::check_admin(&mut p, section, base, data_dir));
    }

    if let Err(err) = config.validate() {
        // With listeners given and refused above, "none left" is not news.
        p.list.extend(
            err.problems
                .into_iter()
                .filter(|problem| !(listener_refused && problem == NO_LISTENER)),
        );
    }
    if p.list.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { problems: p.list })
    }
}

#[cfg(test)]
mod tests;
