//! `[admin]`: the admin listener (HTTP API and Prometheus metrics).

use std::path::Path;
use std::time::Duration;

use bulwark_server::AdminSettings;

use super::fields::{Field, Problems, section};

/// The token file's name in the data directory.
pub(crate) const TOKEN_FILE: &str = "admin-tokens.toml";

section! {
    /// `[admin]`: present, the admin listener runs.
    AdminSection {
        bind: String,
        tokens: String,
        max_failures: u64,
        lockout: u64,
        tls: super::listeners::TlsSection,
        certificate_roles: toml::Table,
    }
}

pub(super) fn check_admin(
    p: &mut Problems,
    t: &AdminSection,
    base: &Path,
    data_dir: &Path,
) -> AdminSettings {
    let s = "admin";
    let tokens = p
        .path(&t.tokens, s, "tokens", base)
        .unwrap_or_else(|| data_dir.join(TOKEN_FILE));
    let mut admin = AdminSettings::new(tokens);
    if let Some(text) = p.string(&t.bind, s, "bind") {
        match super::parse_bind(text) {
            Ok(addr) => admin.bind = addr,
            Err(err) => p.push(format!("admin.bind = {text:?}: {err}")),
        }
    }
    if let Some(v) = p.integer(&t.max_failures, s, "max_failures", 1, 1_000_000) {
        admin.max_failures = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = p.integer(&t.lockout, s, "lockout", 1, 86_400) {
        admin.lockout = Duration::from_secs(v);
    }
    match &t.certificate_roles {
        None => {}
        Some(Field::Given(roles)) => {
            for (identity, role) in roles {
                let parsed = role
                    .as_str()
                    .ok_or_else(|| {
                        format!(
                            "expected a role name, found {}",
                            super::fields::describe(role)
                        )
                    })
                    .and_then(|text| text.parse::<bulwark_auth::token::Role>());
                match parsed {
                    Ok(role) if !identity.is_empty() => {
                        admin.certificate_roles.push((identity.clone(), role));
                    }
                    Ok(_) => p.push("admin.certificate_roles: an empty identity".to_owned()),
                    Err(err) => p.push(format!("admin.certificate_roles.{identity:?}: {err}")),
                }
            }
        }
        Some(Field::Wrong(other)) => p.push(format!(
            "admin.certificate_roles: expected a table of identity = \"role\", found {}",
            super::fields::describe(other)
        )),
    }
    match &t.tls {
        None => {}
        Some(Field::Given(tls)) => {
            p.unknown_keys(tls, "admin.tls");
            admin.tls = super::listeners::check_tls(p, tls, "admin.tls", base).map(Box::new);
        }
        Some(Field::Wrong(other)) => p.push(format!(
            "admin.tls: expected a table, found {}",
            super::fields::describe(other)
        )),
    }
    admin
}
