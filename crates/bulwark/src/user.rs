//! `bulwark user`: the password store's users, edited from the command line.
//!
//! Every command reads the store file (TOML, see `bulwark_auth::password`), changes it in
//! memory and writes it back atomically: a temporary file with mode 0600 in the same directory,
//! synced, then renamed over the store. A store that does not parse is never written.
//!
//! New passwords come from stdin (`--password-stdin`, one line), must pass the default
//! password policy, and are stored as an argon2id hash plus SCRAM-SHA-256 and SCRAM-SHA-512
//! credentials. No password or hash is ever printed.
//!
//! Exit codes: 0 done, 1 refused (policy, user exists, no such user, unusable name or group),
//! 2 bad input (a store or Mosquitto file that cannot be read or parsed, no password given).

use std::io::{self, BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bulwark_auth::password::{
    Argon2Params, NewCredentials, PasswordStore, StoreError, UserRecord, parse_mosquitto_file,
};
use bulwark_auth::policy::{MAX_PASSWORD_CHARS, PasswordPolicy};
use bulwark_server::files;

/// Where the store lives unless `--file` says otherwise.
const DEFAULT_STORE: &str = "bulwark-data/passwords.toml";
/// Largest store or Mosquitto password file read, in bytes.
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Longest password line read from stdin, in bytes: the policy's character limit in UTF-8,
/// plus the line ending.
const MAX_PASSWORD_LINE_BYTES: usize = MAX_PASSWORD_CHARS * 4 + 2;

/// Manage the users of the password store.
#[derive(Debug, clap::Args)]
pub(crate) struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

/// The argon2id cost of a new hash. The defaults are the OWASP minimum; less is refused.
#[derive(Debug, clap::Args)]
struct HashCost {
    /// argon2id memory cost in KiB (at least 19456, at most 1048576).
    #[arg(long, value_name = "KIB", default_value_t = Argon2Params::default().m_kib)]
    argon2_memory: u32,
    /// argon2id passes (at least 2, at most 64).
    #[arg(long, value_name = "N", default_value_t = Argon2Params::default().t)]
    argon2_passes: u32,
    /// argon2id lanes (1 to 64).
    #[arg(long, value_name = "N", default_value_t = Argon2Params::default().p)]
    argon2_lanes: u32,
}

impl HashCost {
    fn params(&self) -> Result<Argon2Params, Failure> {
        let params = Argon2Params {
            m_kib: self.argon2_memory,
            t: self.argon2_passes,
            p: self.argon2_lanes,
        };
        params
            .validate()
            .map_err(|err| Failure::refused(format!("argon2id parameters refused: {err}")))?;
        Ok(params)
    }
}

/// The store file, shared by every command.
#[derive(Debug, clap::Args)]
struct StoreFile {
    /// The password store file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STORE)]
    file: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Add a user (the store file is created if missing).
    Add {
        /// The user name, which becomes the MQTT identity.
        name: String,
        /// A group of the user (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Read the password from one line of stdin.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        cost: HashCost,
        #[command(flatten)]
        store: StoreFile,
    },
    /// Set a new password for a user.
    Passwd {
        /// The user name.
        name: String,
        /// Read the password from one line of stdin.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        cost: HashCost,
        #[command(flatten)]
        store: StoreFile,
    },
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
        #[command(flatten)]
        store: StoreFile,
    },
    /// Disable a user: the right password no longer logs in.
    Disable {
        /// The user name.
        name: String,
        #[command(flatten)]
        store: StoreFile,
    },
    /// Re-enable a disabled user.
    Enable {
        /// The user name.
        name: String,
        #[command(flatten)]
        store: StoreFile,
    },
    /// Replace the groups of a user (none given: no groups).
    Groups {
        /// The user name.
        name: String,
        /// The new groups.
        groups: Vec<String>,
        #[command(flatten)]
        store: StoreFile,
    },
    /// List the users: name, groups, disabled, hash kind, SCRAM keys. Never prints hashes.
    List {
        #[command(flatten)]
        store: StoreFile,
    },
    /// Import the users of a Mosquitto password file, keeping their hashes (the broker
    /// upgrades each to argon2id at its next login).
    ImportMosquitto {
        /// The Mosquitto password file (`user:hash` lines made by `mosquitto_passwd`).
        mosquitto_file: PathBuf,
        /// A group of every imported user (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        #[command(flatten)]
        store: StoreFile,
    },
}

/// A command that did not complete: the message and the exit status.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// Refused: exit status 1.
    fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }

    /// Bad input: exit status 2.
    fn input(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Syntax { .. } | StoreError::Invalid { .. } => Self::input(err.to_string()),
            _ => Self::refused(err.to_string()),
        }
    }
}

/// Runs `bulwark user ...`.
pub(crate) fn run(args: UserArgs) -> ExitCode {
    match execute(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn execute(command: UserCommand) -> Result<(), Failure> {
    match command {
        UserCommand::Add {
            name,
            groups,
            password_stdin,
            cost,
            store,
        } => add(&store.file, &name, groups, password_stdin, cost.params()?),
        UserCommand::Passwd {
            name,
            password_stdin,
            cost,
            store,
        } => passwd(&store.file, &name, password_stdin, cost.params()?),
        UserCommand::Remove { name, store } => edit(&store.file, |users| {
            users.remove(&name)?;
            println!("removed user {}", shown(&name));
            Ok(())
        }),
        UserCommand::Disable { name, store } => edit(&store.file, |users| {
            users.set_disabled(&name, true)?;
            println!("disabled user {}", shown(&name));
            Ok(())
        }),
        UserCommand::Enable { name, store } => edit(&store.file, |users| {
            users.set_disabled(&name, false)?;
            println!("enabled user {}", shown(&name));
            Ok(())
        }),
        UserCommand::Groups {
            name,
            groups,
            store,
        } => edit(&store.file, |users| {
            users.set_groups(&name, groups.clone())?;
            println!(
                "user {}: groups set to {}",
                shown(&name),
                shown_groups(&groups)
            );
            Ok(())
        }),
        UserCommand::List { store } => list(&store.file),
        UserCommand::ImportMosquitto {
            mosquitto_file,
            groups,
            store,
        } => import_mosquitto(&store.file, &mosquitto_file, &groups),
    }
}

fn add(
    path: &Path,
    name: &str,
    groups: Vec<String>,
    password_stdin: bool,
    cost: Argon2Params,
) -> Result<(), Failure> {
    let mut store = load(path, true)?;
    // Name and groups first, so that a refusal costs no password and no hashing.
    check_entry(name, &groups)?;
    if store.get(name).is_some() {
        return Err(StoreError::UserExists(shown(name)).into());
    }
    let password = read_new_password(name, password_stdin)?;
    let credentials = NewCredentials::derive(&password, &cost).map_err(Failure::input)?;
    drop(password);
    store.add_with(name, &credentials, groups)?;
    save(path, &store)?;
    println!(
        "added user {} to {} (argon2id, SCRAM-SHA-256, SCRAM-SHA-512)",
        shown(name),
        path.display()
    );
    Ok(())
}

fn passwd(
    path: &Path,
    name: &str,
    password_stdin: bool,
    cost: Argon2Params,
) -> Result<(), Failure> {
    let mut store = load(path, false)?;
    if store.get(name).is_none() {
        return Err(StoreError::NoSuchUser(shown(name)).into());
    }
    let password = read_new_password(name, password_stdin)?;
    let credentials = NewCredentials::derive(&password, &cost).map_err(Failure::input)?;
    drop(password);
    store.set_credentials(name, &credentials)?;
    save(path, &store)?;
    println!("new password set for user {}", shown(name));
    Ok(())
}

/// Loads an existing store, applies `change` and writes the store back.
fn edit(
    path: &Path,
    change: impl FnOnce(&mut PasswordStore) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut store = load(path, false)?;
    change(&mut store)?;
    save(path, &store)
}

fn list(path: &Path) -> Result<(), Failure> {
    let store = load(path, false)?;
    if store.is_empty() {
        println!("no users in {}", path.display());
        return Ok(());
    }
    for user in store.users() {
        println!("{}", list_line(user));
    }
    Ok(())
}

/// One line of `user list`: everything but the secrets.
fn list_line(user: &UserRecord) -> String {
    let scram = match (user.scram_sha256.is_some(), user.scram_sha512.is_some()) {
        (true, true) => "SCRAM-SHA-256, SCRAM-SHA-512",
        (true, false) => "SCRAM-SHA-256",
        (false, true) => "SCRAM-SHA-512",
        (false, false) => "none",
    };
    format!(
        "{}  groups: {}  disabled: {}  hash: {}  scram: {}",
        shown(&user.name),
        shown_groups(&user.groups),
        if user.disabled { "yes" } else { "no" },
        user.hash_kind(),
        scram
    )
}

fn import_mosquitto(path: &Path, mosquitto_file: &Path, groups: &[String]) -> Result<(), Failure> {
    let mut store = load(path, true)?;
    let text = read_text(mosquitto_file, "Mosquitto password file")?;
    let entries = parse_mosquitto_file(&text).map_err(|problems| {
        Failure::input(format!(
            "{}: cannot import:\n  {}",
            mosquitto_file.display(),
            problems.replace('\n', "\n  ")
        ))
    })?;
    if entries.is_empty() {
        return Err(Failure::input(format!(
            "{}: no users in the file, nothing imported",
            mosquitto_file.display()
        )));
    }
    let existing: Vec<String> = entries
        .iter()
        .filter(|(name, _)| store.get(name).is_some())
        .map(|(name, _)| shown(name))
        .collect();
    if !existing.is_empty() {
        return Err(Failure::refused(format!(
            "nothing imported: these users already exist in {}: {} (remove them first or \
             edit the Mosquitto file)",
            path.display(),
            existing.join(", ")
        )));
    }
    for (name, hash) in &entries {
        store.add(name, hash, groups.to_vec())?;
    }
    save(path, &store)?;
    println!(
        "imported {} user(s) from {} into {}; their Mosquitto hashes keep working for \
         password logins. At each user's first password login the broker replaces the hash \
         with argon2id and adds SCRAM-SHA-256/512 keys; until then (or until `bulwark user \
         passwd`) the user cannot log in with SCRAM (MQTT 5 enhanced authentication)",
        entries.len(),
        mosquitto_file.display(),
        path.display()
    );
    Ok(())
}

/// Refuses a name or groups the store would refuse, before anything costly happens.
fn check_entry(name: &str, groups: &[String]) -> Result<(), Failure> {
    // The store's own checks, run against a well-formed placeholder hash in a scratch store:
    // 16 zero bytes of salt and 64 of digest, in Mosquitto `$6$` form. It is never stored.
    let placeholder = format!("$6${}${}", "A".repeat(22) + "==", "A".repeat(86) + "==");
    PasswordStore::new()
        .add(name, &placeholder, groups.to_vec())
        .map_err(Failure::from)
}

/// Reads a new password and checks it against the default policy.
fn read_new_password(name: &str, password_stdin: bool) -> Result<String, Failure> {
    let password = if password_stdin {
        read_password_line(&mut io::stdin().lock())?
    } else if io::stdin().is_terminal() {
        prompt_new_password()?
    } else {
        return Err(Failure::input(
            "pass --password-stdin to read the password from stdin (or run on a terminal to be asked)",
        ));
    };
    PasswordPolicy::default()
        .check(name, &password)
        .map_err(|err| Failure::refused(format!("password refused: {err}")))?;
    Ok(password)
}

/// Asks for the new password twice on the terminal, without echo.
fn prompt_new_password() -> Result<String, Failure> {
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt).map_err(|err| {
            Failure::input(format!("cannot read the password from the terminal: {err}"))
        })
    };
    let first = ask("New password: ")?;
    if first.chars().count() > MAX_PASSWORD_CHARS {
        return Err(Failure::refused(format!(
            "password refused: longer than {MAX_PASSWORD_CHARS} characters"
        )));
    }
    if ask("Repeat it: ")? != first {
        return Err(Failure::refused(
            "the two passwords differ; nothing was changed",
        ));
    }
    Ok(first)
}

/// Reads one line (at most [`MAX_PASSWORD_LINE_BYTES`]) and strips one `\n` or `\r\n`.
fn read_password_line(input: &mut impl BufRead) -> Result<String, Failure> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_PASSWORD_LINE_BYTES + 1).unwrap_or(u64::MAX);
    input
        .take(limit)
        .read_until(b'\n', &mut bytes)
        .map_err(|err| Failure::input(format!("cannot read the password from stdin: {err}")))?;
    if bytes.is_empty() {
        return Err(Failure::input(
            "no password on stdin (expected one line with --password-stdin)",
        ));
    }
    if bytes.len() > MAX_PASSWORD_LINE_BYTES {
        return Err(Failure::refused(format!(
            "password refused: longer than {MAX_PASSWORD_CHARS} characters"
        )));
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    String::from_utf8(bytes)
        .map_err(|_| Failure::input("the password read from stdin is not UTF-8"))
}

/// Reads and parses the store. A missing file is an empty store when `create` is set, an
/// error naming the file otherwise.
fn load(path: &Path, create: bool) -> Result<PasswordStore, Failure> {
    files::load_store(path, create)
        .map_err(|err| Failure::input(format!("{err}\nnothing was changed")))
}

/// Reads a UTF-8 text file of at most [`MAX_FILE_BYTES`].
fn read_text(path: &Path, what: &str) -> Result<String, Failure> {
    files::read_text(path, what, MAX_FILE_BYTES).map_err(Failure::input)
}

/// Writes the store atomically (mode 0600, see `bulwark_server::files`).
fn save(path: &Path, store: &PasswordStore) -> Result<(), Failure> {
    files::save_store(path, store).map_err(Failure::input)
}

/// A name as printed: escaped where it holds anything but printable characters.
fn shown(name: &str) -> String {
    if name
        .chars()
        .all(|c| !c.is_whitespace() && c.escape_debug().len() == 1 && c != '"' && c != '\'')
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

fn shown_groups(groups: &[String]) -> String {
    if groups.is_empty() {
        "(none)".to_owned()
    } else {
        groups
            .iter()
            .map(|group| shown(group))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The first run's administrator: if `store` does not exist yet, creates it with the user
/// `admin` and a generated password, writes the password to `password_file` (mode 0600,
/// never overwritten) and returns it so the caller can print it once. `None` if the store
/// already exists.
pub(crate) fn ensure_admin(store: &Path, password_file: &Path) -> Result<Option<String>, String> {
    if store.exists() {
        return Ok(None);
    }
    let password = bulwark_auth::password::generate_password(24)
        .ok_or("the operating system's random generator is unavailable")?;
    let credentials = NewCredentials::derive(&password, &Argon2Params::default())?;
    let mut users = PasswordStore::new();
    users
        .add_with("admin", &credentials, vec!["admins".into()])
        .map_err(|err| err.to_string())?;
    if let Some(dir) = password_file.parent() {
        files::ensure_dir(dir)?;
    }
    files::write_new(password_file, format!("{password}\n").as_bytes())?;
    files::save_store(store, &users)?;
    Ok(Some(password))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code"
    )]

    use super::*;

    #[test]
    fn password_line_strips_one_line_ending() {
        let read = |input: &[u8]| read_password_line(&mut io::Cursor::new(input.to_vec()));
        assert_eq!(read(b"secret\n").unwrap(), "secret");
        assert_eq!(read(b"secret\r\n").unwrap(), "secret");
        assert_eq!(read(b"secret").unwrap(), "secret");
        assert_eq!(read(b"secret\n\n").unwrap(), "secret");
        assert_eq!(read(b"two words \r\r\n").unwrap(), "two words \r");
        assert_eq!(read(b"\n").unwrap(), "");
        assert_eq!(read(b"").unwrap_err().code, 2);
        assert_eq!(read(b"\xff\xfe\n").unwrap_err().code, 2);
        let long = vec![b'a'; MAX_PASSWORD_LINE_BYTES + 10];
        let err = read(&long).unwrap_err();
        assert_eq!(err.code, 1);
        assert!(!err.message.contains("aaaa"), "{}", err.message);
    }

    #[test]
    fn entry_checks_use_the_store_rules() {
        assert!(check_entry("alice", &["ops".to_owned()]).is_ok());
        assert_eq!(check_entry("a/b", &[]).unwrap_err().code, 1);
        assert_eq!(check_entry("", &[]).unwrap_err().code, 1);
        assert_eq!(
            check_entry("alice", &["a#".to_owned()]).unwrap_err().code,
            1
        );
        assert_eq!(
            check_entry("alice", &["g".to_owned(), "g".to_owned()])
                .unwrap_err()
                .code,
            1
        );
    }

    #[test]
    fn list_line_hides_secrets() {
        let user = UserRecord {
            name: "bob".to_owned(),
            password: "$7$101$c2FsdA==$secretdigest".to_owned(),
            groups: vec!["ops".to_owned(), "dev".to_owned()],
            disabled: true,
            scram_sha256: None,
            scram_sha512: Some("i=4096,s=x,k=secretkey,v=y".to_owned()),
        };
        let line = list_line(&user);
        assert_eq!(
            line,
            "bob  groups: ops,dev  disabled: yes  hash: mosquitto-pbkdf2 (will upgrade at \
             next login)  scram: SCRAM-SHA-512"
        );
        assert_eq!(shown("a b"), "\"a b\"");
        assert_eq!(shown("é\u{202e}"), "\"é\\u{202e}\"");
        assert_eq!(shown("été"), "été");
    }
}
