//! Bearer tokens for the admin HTTP API, each with a role; the store keeps SHA-256 hashes of
//! them, never the tokens.
//!
//! A token reads `bwk_<id>_<key>`: `id` is 16 lowercase hex digits (8 random bytes) that name
//! the token in the store and in logs, `key` is 32 random bytes in unpadded base64url. The key
//! carries 256 bits, so a plain SHA-256 hash is safe to store (no password stretching is
//! needed), and the token is shown once, when it is issued. The store file, written by
//! `bulwark admin token`:
//!
//! ```toml
//! [[token]]
//! id = "3f9a0c1d2e4b5a69"
//! name = "ci"                 # [A-Za-z0-9._-], 1 to 64 characters, unique
//! role = "viewer"             # viewer, operator or admin
//! sha256 = "<64 hex digits>"  # of the whole token
//! created = 1764657600        # Unix time in seconds
//! expires = 1767249600        # optional; left out: never
//! ```
//!
//! Time is an argument (Unix seconds); nothing here reads a clock or a file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::lenient::{line_of, shown};
use toml::{Spanned, Value};

use crate::lenient::describe;

/// What every token starts with, so that a leaked one is recognizable (secret scanners).
const SECRET_PREFIX: &str = "bwk_";
/// Random bytes of a token's id.
const ID_BYTES: usize = 8;
/// Hex digits of a token's id.
const ID_LEN: usize = ID_BYTES * 2;
/// Random bytes of a token's key.
const KEY_BYTES: usize = 32;
/// Longest presented token hashed; a real one has 64 bytes, and the bound keeps a caller from
/// making the broker hash megabytes.
const MAX_SECRET_BYTES: usize = 256;
/// Longest token name.
const MAX_NAME_LEN: usize = 64;
/// Tries at an id not in use before giving up (a clash of 64-bit random ids is already
/// unlikely once).
const ID_TRIES: usize = 8;
/// What a presented token with no known id is compared against: a hash nothing is known to
/// hash to, so the comparison costs the same and never matches.
const DUMMY_DIGEST: [u8; 32] = [0; 32];

/// The keys of a `[[token]]` table.
const TOKEN_KEYS: &[&str] = &["id", "name", "role", "sha256", "created", "expires"];

/// The comment [`TokenStore::to_toml`] writes first.
const HEADER: &str = "# Bulwark admin API tokens: SHA-256 hashes only, never the tokens themselves.\n\
                      # Written by `bulwark admin token` (add, list, remove); not edited by hand.\n";

/// Admin roles, least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Looks, changes nothing.
    Viewer,
    /// Also changes what the broker does.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The role as written in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether a holder of this role may do what `needed` may: roles are ordered, each
    /// allowing what the ones below it allow.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            _ => Err(format!(
                "unknown role {:?}: the roles are viewer, operator and admin",
                shown(text)
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One token as the store keeps it: everything but the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// 16 lowercase hex digits, also part of the token.
    pub id: String,
    /// What the token is for, unique in the store.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the whole token.
    pub sha256: [u8; 32],
    /// When it was issued (Unix seconds).
    pub created: u64,
    /// When it stops working (Unix seconds); `None`: never.
    pub expires: Option<u64>,
}

impl TokenRecord {
    /// Whether the token still works at `now`.
    fn live(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// Why a token file or a new token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct TokenError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl TokenError {
    fn one(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

/// The tokens, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStore {
    records: Vec<TokenRecord>,
}

/// The file as the typed pass reads it; other top-level keys were reported by the first pass.
#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    token: Vec<Spanned<RawTable>>,
}

/// A table with the place of every key, read without types so that each problem can be named.
type RawTable = BTreeMap<Spanned<String>, Spanned<Value>>;

impl TokenStore {
    /// Tokens a store holds at most.
    pub const MAX_TOKENS: usize = 1000;

    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a token file. Every problem is reported, each with `source` and its line: TOML
    /// syntax (the first error only), unknown keys, missing keys, values of the wrong type, a
    /// bad id, name, role or hash, and ids or names used twice.
    pub fn parse(text: &str, source: &str) -> Result<Self, TokenError> {
        let at = |offset: usize| format!("{source}:{}", line_of(text, offset));
        // First the shape of the file: this read takes any TOML document, so its error is
        // the syntax error.
        let top: BTreeMap<Spanned<String>, IgnoredAny> = toml::from_str(text).map_err(|err| {
            let place = err
                .span()
                .map_or_else(|| format!("{source}:1"), |s| at(s.start));
            TokenError::one(format!(
                "{place}: not valid TOML: {}",
                err.message().trim_end()
            ))
        })?;
        let mut problems = Vec::new();
        for key in top.keys().filter(|k| k.get_ref() != "token") {
            problems.push(format!(
                "{}: unknown top-level key {:?}: the file holds only [[token]] tables",
                at(key.span().start),
                shown(key.get_ref())
            ));
        }
        let raw: RawFile = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(err) => {
                let place = err
                    .span()
                    .map_or_else(|| format!("{source}:1"), |s| at(s.start));
                problems.push(format!(
                    "{place}: `token` must be an array of tables: write each token as a \
                     [[token]] section"
                ));
                return Err(TokenError { problems });
            }
        };
        if raw.token.len() > Self::MAX_TOKENS {
            problems.push(format!("{source}: more than {} tokens", Self::MAX_TOKENS));
            return Err(TokenError { problems });
        }
        let mut records = Vec::with_capacity(raw.token.len());
        for (index, table) in raw.token.iter().enumerate() {
            let line = line_of(text, table.span().start);
            if let Some(record) =
                check_token(index, table.get_ref(), text, source, line, &mut problems)
            {
                records.push(record);
            }
        }
        // Names and ids used twice, among all tables, those with other problems too.
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (index, table) in raw.token.iter().enumerate() {
            let place = format!("{source}:{}", line_of(text, table.span().start));
            let table = table.get_ref();
            let name = valid_string(table, "name", |n| check_name(n).is_ok());
            let who = label(index, name);
            if let Some(name) = name {
                let first = *names.entry(name).or_insert(index);
                if first != index {
                    problems.push(format!(
                        "{place}: {who}: the name is used already by token #{}",
                        first + 1
                    ));
                }
            }
            if let Some(id) = valid_string(table, "id", is_id) {
                let first = *ids.entry(id).or_insert(index);
                if first != index {
                    problems.push(format!(
                        "{place}: {who}: the id {id} is used already by token #{}",
                        first + 1
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(Self { records })
        } else {
            Err(TokenError { problems })
        }
    }

    /// The store as TOML text; [`TokenStore::parse`] of it gives an equal store.
    pub fn to_toml(&self) -> String {
        let quote = |s: &str| Value::String(s.to_owned()).to_string();
        let mut out = String::from(HEADER);
        for record in &self.records {
            out.push_str("\n[[token]]\n");
            out.push_str(&format!("id = {}\n", quote(&record.id)));
            out.push_str(&format!("name = {}\n", quote(&record.name)));
            out.push_str(&format!("role = {}\n", quote(record.role.as_str())));
            out.push_str(&format!("sha256 = {}\n", quote(&hex(&record.sha256))));
            out.push_str(&format!("created = {}\n", record.created));
            if let Some(expires) = record.expires {
                out.push_str(&format!("expires = {expires}\n"));
            }
        }
        out
    }

    /// Every token, live or expired, in file order.
    pub fn records(&self) -> &[TokenRecord] {
        &self.records
    }

    /// Issues a new token called `name` (`[A-Za-z0-9._-]`, 1 to 64 characters, not in use),
    /// created at `now`, working until `expires` (Unix seconds; `None`: until removed). Gives
    /// the record and the token itself, which the store does not keep: show it once.
    ///
    /// Refused: a bad or taken name, an expiry not after `now`, a full store, times past what
    /// the file can hold, and a failure of the system's random source.
    pub fn issue(
        &mut self,
        name: &str,
        role: Role,
        now: u64,
        expires: Option<u64>,
    ) -> Result<(TokenRecord, String), TokenError> {
        let mut problems = Vec::new();
        if let Err(why) = check_name(name) {
            problems.push(format!("token name {:?}: {why}", shown(name)));
        } else if self.records.iter().any(|r| r.name == name) {
            problems.push(format!("a token named {name:?} exists already"));
        }
        if self.records.len() >= Self::MAX_TOKENS {
            problems.push(format!(
                "the store holds {} tokens already: remove one first",
                Self::MAX_TOKENS
            ));
        }
        // The file writes times as TOML integers, which are signed.
        if i64::try_from(now).is_err() || expires.is_some_and(|e| i64::try_from(e).is_err()) {
            problems.push("the time is past what the token file can hold".to_owned());
        }
        if expires.is_some_and(|e| e <= now) {
            problems.push("the token would have expired already".to_owned());
        }
        if !problems.is_empty() {
            return Err(TokenError { problems });
        }
        let id = self.fresh_id()?;
        let mut key = [0u8; KEY_BYTES];
        fill_random(&mut key)?;
        let secret = format!("{SECRET_PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(key));
        let record = TokenRecord {
            id,
            name: name.to_owned(),
            role,
            sha256: Sha256::digest(secret.as_bytes()).into(),
            created: now,
            expires,
        };
        self.records.push(record.clone());
        Ok((record, secret))
    }

    /// Removes the token called `name_or_id`, or else the one with that id; whether one was
    /// removed. A name is looked for first: a name may be 16 hex digits, but it was chosen,
    /// while an id was not.
    pub fn remove(&mut self, name_or_id: &str) -> bool {
        let position = self
            .records
            .iter()
            .position(|r| r.name == name_or_id)
            .or_else(|| self.records.iter().position(|r| r.id == name_or_id));
        match position {
            Some(index) => {
                self.records.remove(index);
                true
            }
            None => false,
        }
    }

    /// The record of the token `secret`, if it is one of the store's and has not expired at
    /// `now`.
    ///
    /// The record is found by the id inside the token, then the SHA-256 of the whole token is
    /// compared with the stored one in constant time. A token with an unknown or malformed id
    /// is hashed and compared all the same (against a hash nothing matches), so the time taken
    /// does not tell whether an id exists. Tokens longer than 256 bytes are refused unhashed.
    pub fn verify(&self, secret: &str, now: u64) -> Option<&TokenRecord> {
        if secret.len() > MAX_SECRET_BYTES {
            return None;
        }
        let id = secret_id(secret);
        // Every record is looked at, after a match too, so that the time taken does not
        // depend on where in the store the id is, or whether it is there at all.
        let mut found = None;
        for record in &self.records {
            if id == Some(record.id.as_str()) {
                found = Some(record);
            }
        }
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let expected = found.map_or(&DUMMY_DIGEST, |r| &r.sha256);
        let matched = bool::from(digest.ct_eq(expected));
        found.filter(|r| matched && r.live(now))
    }

    /// A random id no token of the store has.
    fn fresh_id(&self) -> Result<String, TokenError> {
        for _ in 0..ID_TRIES {
            let mut bytes = [0u8; ID_BYTES];
            fill_random(&mut bytes)?;
            let id = hex(&bytes);
            if self.records.iter().all(|r| r.id != id) {
                return Ok(id);
            }
        }
        Err(TokenError::one(
            "no unused token id found: the system's random source repeats itself".to_owned(),
        ))
    }
}

/// A fresh random secret of `bytes` bytes in base64url without padding (dashboard session
/// cookies, CSRF tokens); `None` if the system's random source fails.
pub fn random_secret(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    OsRng.try_fill_bytes(&mut buf).ok()?;
    Some(URL_SAFE_NO_PAD.encode(buf))
}

/// SHA-256 of `data`: how session secrets are kept, so that a memory dump does not hold them.
pub fn digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

fn fill_random(buf: &mut [u8]) -> Result<(), TokenError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|err| TokenError::one(format!("the system's random source failed: {err}")))
}

/// The id inside a token of the right form (`bwk_` + 16 lowercase hex digits + `_` + key).
fn secret_id(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    let id = rest.get(..ID_LEN)?;
    let key = rest.get(ID_LEN..)?.strip_prefix('_')?;
    (is_id(id) && !key.is_empty()).then_some(id)
}

fn is_id(text: &str) -> bool {
    text.len() == ID_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a token name is refused, if it is. The grammar keeps names safe to print in logs and
/// tables and to write unescaped in JSON.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may hold only letters, digits, `.`, `_` and `-`".to_owned());
    }
    Ok(())
}

/// Checks one `[[token]]` table, adding its problems; `None` when it has any.
fn check_token(
    index: usize,
    table: &RawTable,
    text: &str,
    source: &str,
    line: usize,
    problems: &mut Vec<String>,
) -> Option<TokenRecord> {
    let before = problems.len();
    let who = label(
        index,
        valid_string(table, "name", |n| check_name(n).is_ok()),
    );
    let mut entries: Vec<(&Spanned<String>, &Spanned<Value>)> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let (mut id, mut name, mut role, mut sha256, mut created, mut expires) =
        (None, None, None, None, None, None);
    for (key, value) in entries {
        let place = format!("{source}:{}", line_of(text, key.span().start));
        let found = describe(value.get_ref());
        let string = value.get_ref().as_str();
        let key = key.get_ref().as_str();
        let problem = match key {
            "id" => match string {
                Some(s) if is_id(s) => {
                    id = Some(s.to_owned());
                    None
                }
                Some(_) => Some("`id` must be 16 lowercase hex digits".to_owned()),
                None => Some(format!("`id` must be a string, not {found}")),
            },
            "name" => match string {
                Some(s) => match check_name(s) {
                    Ok(()) => {
                        name = Some(s.to_owned());
                        None
                    }
                    Err(why) => Some(format!("name {:?} {why}", shown(s))),
                },
                None => Some(format!("`name` must be a string, not {found}")),
            },
            "role" => match string.map(Role::from_str) {
                Some(Ok(r)) => {
                    role = Some(r);
                    None
                }
                Some(Err(why)) => Some(why),
                None => Some(format!("`role` must be a string, not {found}")),
            },
            "sha256" => match string {
                Some(s) => match unhex32(s) {
                    Some(hash) => {
                        sha256 = Some(hash);
                        None
                    }
                    // The hash is not shown: a long value would drown the message.
                    None => Some(format!(
                        "`sha256` must be 64 hex digits (a SHA-256 hash), not {} characters",
                        s.chars().count()
                    )),
                },
                None => Some(format!("`sha256` must be a string, not {found}")),
            },
            "created" | "expires" => match value.get_ref() {
                Value::Integer(i) if *i >= 0 => {
                    let secs = u64::try_from(*i).ok();
                    if key == "created" {
                        created = secs;
                    } else {
                        expires = secs;
                    }
                    None
                }
                _ => Some(format!(
                    "`{key}` must be a time in Unix seconds (0 or more), not {found}"
                )),
            },
            _ => Some(format!(
                "unknown key {:?} (known: {})",
                shown(key),
                TOKEN_KEYS.join(", ")
            )),
        };
        if let Some(problem) = problem {
            problems.push(format!("{place}: {who}: {problem}"));
        }
    }
    for required in ["id", "name", "role", "sha256", "created"] {
        if !table.contains_key(required) {
            problems.push(format!("{source}:{line}: {who}: `{required}` is missing"));
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(TokenRecord {
        id: id?,
        name: name?,
        role: role?,
        sha256: sha256?,
        created: created?,
        expires,
    })
}

/// The string under `key`, if there is one and `valid` takes it.
fn valid_string<'t>(
    table: &'t RawTable,
    key: &str,
    valid: impl Fn(&str) -> bool,
) -> Option<&'t str> {
    table
        .get(key)
        .and_then(|v| v.get_ref().as_str())
        .filter(|s| valid(s))
}

/// `token #3 "ci"`, or `token #3` when the name is unknown.
fn label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("token #{} {name:?}", index + 1),
        None => format!("token #{}", index + 1),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits (either case) as 32 bytes.
fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let [high, low] = pair else { return None };
        *slot = nibble(*high)? << 4 | nibble(*low)?;
    }
    Some(out)
}

/// A hex digit's value; `from_str_radix` would also take a sign.
fn nibble(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests;
