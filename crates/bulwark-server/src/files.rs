//! Small, careful file helpers shared by the server and the command line: bounded reads of
//! text files, atomic writes with owner-only permissions, and the password store's file.
//!
//! Writes go to a new file with mode 0600 next to the target, are synced, renamed over the
//! target, then the directory is synced: a reader sees the old file or the new one, never a
//! half-written one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bulwark_auth::password::PasswordStore;

/// Largest password store read, in bytes.
pub const MAX_STORE_BYTES: u64 = 16 << 20;

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Reads a UTF-8 text file of at most `max` bytes; errors name `what` and the file.
pub fn read_text(path: &Path, what: &str, max: u64) -> Result<String, String> {
    let file = File::open(path)
        .map_err(|err| format!("cannot open the {what} {}: {err}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read the {what} {}: {err}", path.display()))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
        return Err(format!(
            "the {what} {} is larger than {max} bytes",
            path.display()
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("the {what} {} is not UTF-8 text", path.display()))
}

/// Who besides the owner may read or write a file, from its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenTo {
    /// The file's permission bits (`mode & 0o777`).
    pub mode: u32,
    /// Others (not the owner, not the group) may read it.
    pub others_read: bool,
}

impl OpenTo {
    /// What a warning says: the mode and who may do what.
    pub fn describe(&self) -> String {
        let mut who = Vec::new();
        if self.mode & 0o040 != 0 {
            who.push("its group can read it");
        }
        if self.mode & 0o020 != 0 {
            who.push("its group can write it");
        }
        if self.mode & 0o004 != 0 {
            who.push("every user can read it");
        }
        if self.mode & 0o002 != 0 {
            who.push("every user can write it");
        }
        format!("mode {:04o}: {}", self.mode, who.join(", "))
    }
}

/// `Some` when users other than the file's owner may read or write `path` (group or other
/// permission bits set), as ssh checks its keys; `None` for an owner-only file, a file that
/// cannot be looked at (reading it reports that), or on systems without Unix modes.
pub fn open_to_others(path: &Path) -> Option<OpenTo> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(OpenTo {
            mode,
            others_read: mode & 0o004 != 0,
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Logs a warning when a file that holds secrets or decides access (the password store, the
/// ACL) may be read or written by users other than its owner: at start and at every reload.
pub fn warn_if_open(path: &Path, what: &str) {
    if let Some(open) = open_to_others(path) {
        tracing::warn!(
            file = %path.display(),
            "the {what} is open to other users ({}); restrict it with `chmod 600 {}`",
            open.describe(),
            path.display()
        );
    }
}

/// Reads and parses the password store. A missing file is an empty store when `create` is
/// set, an error naming the file otherwise.
pub fn load_store(path: &Path, create: bool) -> Result<PasswordStore, String> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(format!("{} is not a regular file", path.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if create {
                return Ok(PasswordStore::new());
            }
            return Err(format!(
                "no password store at {} (add a user with `bulwark user add`, or pass --file)",
                path.display()
            ));
        }
        Err(err) => return Err(format!("cannot look at {}: {err}", path.display())),
    }
    warn_if_open(path, "password store");
    let text = read_text(path, "password store", MAX_STORE_BYTES)?;
    PasswordStore::parse(&text).map_err(|err| format!("{}: {err}", path.display()))
}

/// Writes the password store atomically (see the module documentation).
pub fn save_store(path: &Path, store: &PasswordStore) -> Result<(), String> {
    write_atomic(path, store.to_toml().as_bytes())
}

/// Replaces `path` with `contents` atomically, mode 0600; the directory is created with mode
/// 0700 if missing.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure_dir(&dir)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp-{}-{nanos}", std::process::id()));
    let temp = dir.join(temp_name);
    let written = write_new(&temp, contents).and_then(|()| {
        fs::rename(&temp, path).map_err(|err| format!("cannot replace {}: {err}", path.display()))
    });
    if let Err(message) = written {
        let _ = fs::remove_file(&temp);
        return Err(message);
    }
    // Make the rename itself durable; a failure here leaves a correct file behind.
    if let Ok(handle) = File::open(&dir) {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// Creates `path` (never replacing a file) with mode 0600 and writes and syncs `contents`.
pub fn write_new(path: &Path, contents: &[u8]) -> Result<(), String> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    let mut file = options
        .open(path)
        .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), String> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => return Err(format!("{} exists and is not a directory", dir.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(format!("cannot look at {}: {err}", dir.display())),
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder
        .create(dir)
        .map_err(|err| format!("cannot create the directory {}: {err}", dir.display()))
}
