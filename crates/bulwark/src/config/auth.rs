//! `[auth]` with its `[auth.backoff]` and `[auth.jwt]` tables, and `[acl]`.

use std::path::Path;
use std::time::Duration;

use bulwark_core::DeniedPublish;
use bulwark_server::{AuthSettings, JwtAuthSettings, ServerConfig};
use serde::Deserialize;

use super::fields::{Field, Problems, describe, section, to_u32, to_usize};
use super::limits::cidr_list;

section! {
    /// `[auth]`.
    AuthSection {
        password_file: String,
        audit_file: String,
        hash_concurrency: u64,
        max_pending_logins: u64,
        credential_cache_ttl: u64,
        credential_cache_size: u64,
        backoff: BackoffSection,
        jwt: JwtSection,
    }
}

section! {
    /// `[auth.backoff]`: the login guard.
    BackoffSection {
        after: u64,
        window: u64,
        initial_delay: u64,
        max_delay: u64,
        max_wait: u64,
        ban_after: u64,
        ban_duration: u64,
        max_tracked: u64,
        exempt: Vec<String>,
    }
}

section! {
    /// `[auth.jwt]`: JSON Web Tokens as CONNECT passwords.
    JwtSection {
        issuer: String,
        audiences: Vec<String>,
        clock_skew: u64,
        username_claim: String,
        client_id_claim: String,
        acl_claim: String,
        require_exp: bool,
        public_key_files: Vec<String>,
        hmac_secret_file: String,
        jwks_file: String,
        jwks_url: String,
        jwks_ca_file: String,
        jwks_refresh: u64,
        jwks_min_interval: u64,
    }
}

/// `acl.denied_publish`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum DeniedPublishName {
    Drop,
    Disconnect,
}

section! {
    /// `[acl]`: an ACL file, or the explicit choice to run without authorization.
    AclSection {
        file: String,
        dangerous_allow_all: bool,
        denied_publish: DeniedPublishName,
    }
}

/// The `[auth]` section and its `[auth.backoff]` and `[auth.jwt]` tables; also the audit file
/// `audit_file` still names (`[audit] file` is its place now).
pub(super) fn check_auth(
    p: &mut Problems,
    a: &AuthSection,
    base: &Path,
) -> (AuthSettings, Option<std::path::PathBuf>) {
    let s = "auth";
    let audit_file = p.path(&a.audit_file, s, "audit_file", base);
    let mut auth = AuthSettings {
        password_file: p.path(&a.password_file, s, "password_file", base),
        ..AuthSettings::default()
    };
    if let Some(v) = p.integer(&a.hash_concurrency, s, "hash_concurrency", 0, 1024) {
        auth.hash_concurrency = to_usize(v);
    }
    if let Some(v) = p.integer(&a.max_pending_logins, s, "max_pending_logins", 1, 1_000_000) {
        auth.max_pending_logins = to_usize(v);
    }
    if let Some(v) = p.integer(
        &a.credential_cache_ttl,
        s,
        "credential_cache_ttl",
        0,
        86_400,
    ) {
        auth.credential_cache_ttl = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(
        &a.credential_cache_size,
        s,
        "credential_cache_size",
        0,
        10_000_000,
    ) {
        auth.credential_cache_size = to_usize(v);
    }
    match &a.backoff {
        None => {}
        Some(Field::Given(b)) => check_backoff(p, b, &mut auth),
        Some(Field::Wrong(other)) => p.push(format!(
            "auth.backoff: expected a table, found {}",
            describe(other)
        )),
    }
    match &a.jwt {
        None => {}
        Some(Field::Given(j)) => auth.jwt = Some(check_jwt(p, j, base)),
        Some(Field::Wrong(other)) => p.push(format!(
            "auth.jwt: expected a table, found {}",
            describe(other)
        )),
    }
    (auth, audit_file)
}

/// `[auth.backoff]`, checked as a whole by the login guard's own validation.
fn check_backoff(p: &mut Problems, b: &BackoffSection, auth: &mut AuthSettings) {
    let s = "auth.backoff";
    p.unknown_keys(b, s);
    let g = &mut auth.guard;
    let secs = Duration::from_secs;
    if let Some(v) = p.integer(&b.after, s, "after", 1, 1000) {
        g.backoff_after = to_u32(v);
    }
    if let Some(v) = p.integer(&b.window, s, "window", 1, 86_400) {
        g.window = secs(v);
    }
    if let Some(v) = p.integer(&b.initial_delay, s, "initial_delay", 1, 3600) {
        g.initial_delay = secs(v);
    }
    if let Some(v) = p.integer(&b.max_delay, s, "max_delay", 1, 3600) {
        g.max_delay = secs(v);
    }
    if let Some(v) = p.integer(&b.max_wait, s, "max_wait", 1, 3600) {
        g.max_wait = secs(v);
    }
    if let Some(v) = p.integer(&b.ban_after, s, "ban_after", 0, 100_000) {
        g.ban_after = to_u32(v);
    }
    if let Some(v) = p.integer(&b.ban_duration, s, "ban_duration", 1, 30 * 86_400) {
        g.ban_duration = secs(v);
    }
    if let Some(v) = p.integer(&b.max_tracked, s, "max_tracked", 1, 100_000_000) {
        g.max_tracked = to_usize(v);
    }
    if let Some(exempt) = cidr_list(p, &b.exempt, s, "exempt") {
        g.exempt = exempt;
    }
    if let Err(err) = g.validate() {
        p.push(format!("auth.backoff: {err}"));
    }
}

fn check_jwt(p: &mut Problems, j: &JwtSection, base: &Path) -> JwtAuthSettings {
    let s = "auth.jwt";
    p.unknown_keys(j, s);
    let mut jwt = JwtAuthSettings {
        issuer: p.string(&j.issuer, s, "issuer").map(str::to_owned),
        audiences: p.string_list(&j.audiences, s, "audiences"),
        client_id_claim: p
            .string(&j.client_id_claim, s, "client_id_claim")
            .map(str::to_owned),
        acl_claim: p.string(&j.acl_claim, s, "acl_claim").map(str::to_owned),
        public_key_files: p
            .string_list(&j.public_key_files, s, "public_key_files")
            .into_iter()
            .map(|path| base.join(path))
            .collect(),
        hmac_secret_file: p.path(&j.hmac_secret_file, s, "hmac_secret_file", base),
        jwks_file: p.path(&j.jwks_file, s, "jwks_file", base),
        jwks_url: p.string(&j.jwks_url, s, "jwks_url").map(str::to_owned),
        jwks_ca_file: p.path(&j.jwks_ca_file, s, "jwks_ca_file", base),
        ..JwtAuthSettings::default()
    };
    if let Some(v) = p.string(&j.username_claim, s, "username_claim") {
        v.clone_into(&mut jwt.username_claim);
    }
    if let Some(v) = p.integer(&j.clock_skew, s, "clock_skew", 0, 300) {
        jwt.clock_skew = Duration::from_secs(v);
    }
    if let Some(v) = p.boolean(&j.require_exp, s, "require_exp") {
        jwt.require_exp = v;
    }
    if let Some(v) = p.integer(&j.jwks_refresh, s, "jwks_refresh", 30, 86_400) {
        jwt.jwks_refresh = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&j.jwks_min_interval, s, "jwks_min_interval", 1, 3600) {
        jwt.jwks_min_interval = Duration::from_secs(v);
    }
    jwt
}

/// `[acl]` (`None` when the file has no such section, which is a problem of its own: running
/// without an ACL must be chosen explicitly).
pub(super) fn check_acl(
    p: &mut Problems,
    acl: Option<&AclSection>,
    config: &mut ServerConfig,
    base: &Path,
) {
    let s = "acl";
    let (file, allow_all) = match acl {
        Some(a) => {
            if let Some(v) = p.choice(
                &a.denied_publish,
                s,
                "denied_publish",
                "use \"drop\" or \"disconnect\"",
            ) {
                config.broker.denied_publish = match v {
                    DeniedPublishName::Drop => DeniedPublish::Drop,
                    DeniedPublishName::Disconnect => DeniedPublish::Disconnect,
                };
            }
            (
                p.path(&a.file, s, "file", base),
                p.boolean(&a.dangerous_allow_all, s, "dangerous_allow_all")
                    .unwrap_or(false),
            )
        }
        None => (None, false),
    };
    match (file, allow_all) {
        (Some(_), true) => {
            p.push("acl: give either file or dangerous_allow_all = true, not both".to_owned());
        }
        (Some(file), false) => config.acl.file = Some(file),
        (None, true) => config.acl.file = None,
        (None, false) => p.push(
            "acl: no ACL file: set [acl] file = \"acl.toml\" (rules, default deny: docs/acl.md), \
             or dangerous_allow_all = true to let every client publish and subscribe anywhere"
                .to_owned(),
        ),
    }
}
