//! `bulwark admin token`: the bearer tokens of the admin HTTP API, kept as SHA-256 hashes in a
//! file the broker reads. A token is shown once, when it is added; the file never holds it.
//!
//! `add` prints the token alone on standard output, so that a script can take it
//! (`TOKEN=$(bulwark admin token add ci --role viewer)`), and a note on standard error.
//!
//! Exit codes: 0 done, 1 refused (a name in use, no such token, the file is full), 2 bad input
//! (a file that cannot be read or parsed, a bad name, role or duration).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bulwark_auth::token::{Role, TokenRecord, TokenStore};
use bulwark_server::files;

use crate::ban::{now, parse_duration, utc};

/// Where the tokens live unless `--file` says otherwise (the server's default too).
pub(crate) const DEFAULT_FILE: &str = "bulwark-data/admin-tokens.toml";

/// Largest token file read, in bytes: a full store takes about 250 KiB.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// The admin API.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// The admin API's tokens: add (shown once), list, remove.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Make a token and print it (once: only its hash is kept).
    Add {
        /// What the token is for: letters, digits, '.', '_' and '-', at most 64.
        name: String,
        /// What it may do: viewer (look only), operator (also act), admin (everything).
        #[arg(long)]
        role: Role,
        /// How long it works: seconds, or with a unit (90s, 10m, 2h, 7d); left out: until
        /// removed.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// The token file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_FILE)]
        file: PathBuf,
    },
    /// Show the tokens: name, id, role, created, expires (never the hashes).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// The token file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_FILE)]
        file: PathBuf,
    },
    /// Remove a token, by name or id: it stops working when the broker reloads the file.
    Remove {
        /// The token's name, or its id.
        #[arg(value_name = "NAME_OR_ID")]
        name_or_id: String,
        /// The token file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_FILE)]
        file: PathBuf,
    },
}

/// Runs `bulwark admin ...`.
pub(crate) fn run(args: AdminArgs) -> ExitCode {
    let AdminCommand::Token(command) = args.command;
    let result = match command {
        TokenCommand::Add {
            name,
            role,
            expires,
            file,
        } => add(&name, role, expires.as_deref(), &file),
        TokenCommand::List { json, file } => list(json, &file),
        TokenCommand::Remove { name_or_id, file } => remove(&name_or_id, &file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn add(name: &str, role: Role, expires: Option<&str>, file: &Path) -> Result<(), (u8, String)> {
    let now = now();
    let expires = match expires {
        Some(d) => Some(now.saturating_add(parse_duration(d).map_err(|e| (2, e))?)),
        None => None,
    };
    let mut store = load(file)?;
    // Refusals first, so that they get status 1 and the rest of what `issue` refuses 2.
    if store.records().iter().any(|r| r.name == name) {
        return Err((
            1,
            format!(
                "a token named {name:?} exists already in {}",
                file.display()
            ),
        ));
    }
    if store.records().len() >= TokenStore::MAX_TOKENS {
        return Err((
            1,
            format!(
                "{} holds {} tokens already: remove one first",
                file.display(),
                TokenStore::MAX_TOKENS
            ),
        ));
    }
    let (record, secret) = store
        .issue(name, role, now, expires)
        .map_err(|e| (2, e.to_string()))?;
    save(file, &store)?;
    // Shown only once it is saved: a token printed but not kept would never work.
    println!("{secret}");
    eprintln!(
        "token {:?} (id {}, role {}, {}) added to {}; it is shown once and cannot be shown again",
        record.name,
        record.id,
        record.role,
        match record.expires {
            Some(e) => format!("expires {}", utc(e)),
            None => "never expires".to_owned(),
        },
        file.display()
    );
    Ok(())
}

fn list(json: bool, file: &Path) -> Result<(), (u8, String)> {
    let store = load(file)?;
    let now = now();
    if json {
        for record in store.records() {
            println!("{}", json_line(record));
        }
        return Ok(());
    }
    if store.records().is_empty() {
        println!("no tokens");
        return Ok(());
    }
    let rows: Vec<[String; 5]> = store
        .records()
        .iter()
        .map(|r| {
            let expires = match r.expires {
                None => "never".to_owned(),
                Some(e) if e > now => utc(e),
                Some(e) => format!("{} (expired)", utc(e)),
            };
            [
                r.name.clone(),
                r.id.clone(),
                r.role.to_string(),
                utc(r.created),
                expires,
            ]
        })
        .collect();
    let header = ["NAME", "ID", "ROLE", "CREATED", "EXPIRES"].map(str::to_owned);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(())
}

/// One token as a JSON object. Names are `[A-Za-z0-9._-]` (the store refuses others), ids
/// hex and roles fixed words, so nothing needs escaping.
fn json_line(record: &TokenRecord) -> String {
    let expires = record
        .expires
        .map_or_else(|| "null".to_owned(), |e| e.to_string());
    format!(
        "{{\"name\":\"{}\",\"id\":\"{}\",\"role\":\"{}\",\"created\":{},\"expires\":{expires}}}",
        record.name, record.id, record.role, record.created
    )
}

fn remove(name_or_id: &str, file: &Path) -> Result<(), (u8, String)> {
    let mut store = load(file)?;
    if !store.remove(name_or_id) {
        return Err((
            1,
            format!(
                "no token with the name or id {name_or_id:?} in {}",
                file.display()
            ),
        ));
    }
    save(file, &store)?;
    println!("removed the token {name_or_id}");
    Ok(())
}

/// The store in `path`; no file is an empty store.
fn load(path: &Path) -> Result<TokenStore, (u8, String)> {
    if !path.exists() {
        return Ok(TokenStore::new());
    }
    let text = files::read_text(path, "token file", MAX_FILE_BYTES).map_err(|e| (2, e))?;
    TokenStore::parse(&text, &path.display().to_string()).map_err(|e| (2, e.to_string()))
}

/// Writes the store atomically; `write_atomic` makes the directory (mode 0700) if missing and
/// the file with mode 0600, so that only the broker's user reads even the hashes.
fn save(path: &Path, store: &TokenStore) -> Result<(), (u8, String)> {
    files::write_atomic(path, store.to_toml().as_bytes()).map_err(|e| (2, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_name_every_column_but_the_hash() {
        let record = TokenRecord {
            id: "0123456789abcdef".to_owned(),
            name: "ci".to_owned(),
            role: Role::Viewer,
            sha256: [7; 32],
            created: 10,
            expires: None,
        };
        assert_eq!(
            json_line(&record),
            r#"{"name":"ci","id":"0123456789abcdef","role":"viewer","created":10,"expires":null}"#
        );
        let record = TokenRecord {
            expires: Some(20),
            ..record
        };
        assert!(json_line(&record).ends_with(r#""expires":20}"#));
    }
}
