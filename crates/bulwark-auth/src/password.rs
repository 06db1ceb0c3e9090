//! The password store: users, their password hashes and groups, kept as TOML text.
//!
//! The caller reads and writes the file; this module parses and serializes text and
//! verifies passwords. The format:
//!
//! ```toml
//! # Bulwark password store: edit with `bulwark user`, not by hand.
//!
//! [[user]]
//! name = "alice"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>"
//! groups = ["ops"]        # optional, default []
//! disabled = false        # optional, default false
//! scram_sha256 = "..."    # optional, owned by the SCRAM module, kept verbatim
//! scram_sha512 = "..."    # optional, likewise
//! ```
//!
//! `password` is an argon2id PHC string (what [`hash_password`] makes) or a hash imported
//! from a Mosquitto password file (`$6$` salted SHA-512, `$7$` PBKDF2-HMAC-SHA512); a login
//! against anything other than an argon2id hash at the current parameters asks the caller to
//! re-hash the password ([`Verdict::Allow`] with `upgrade: true`).
//!
//! Neither passwords nor hashes ever appear in an error message or a `Debug` rendering.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::lenient::{Field, line_of, shown};

/// The comment line [`PasswordStore::to_toml`] writes first.
pub const STORE_HEADER: &str = "# Bulwark password store: edit with `bulwark user`, not by hand.";

/// Longest user or group name accepted, in bytes: the MQTT limit on a UTF-8 string.
pub const MAX_NAME_BYTES: usize = 65_535;

/// Most PBKDF2 iterations accepted in an imported Mosquitto `$7$` hash (Mosquitto itself
/// writes 101). The bound keeps a corrupt or hostile store from stalling every login.
pub const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;

/// Length in bytes of the digest in a Mosquitto `$6$` or `$7$` hash (SHA-512).
const MOSQUITTO_HASH_LEN: usize = 64;

/// Salt below this many bytes, or output below [`PREFERRED_OUTPUT_LEN`], asks for a re-hash.
const PREFERRED_SALT_LEN: usize = 16;
const PREFERRED_OUTPUT_LEN: usize = 32;

/// Password hashed into the dummy hash that unknown users are checked against.
const DUMMY_PASSWORD: &[u8] = b"bulwark: no such user";
/// Fixed salt of the dummy hash: it never verifies a real secret, so it need not be random.
const DUMMY_SALT: &[u8] = b"bulwark:no-user!";

const STORE_KEYS: &[&str] = &[
    "name",
    "password",
    "groups",
    "disabled",
    "scram_sha256",
    "scram_sha512",
];

/// Argon2id cost parameters.
///
/// The default is the OWASP minimum for argon2id: 19 MiB of memory, 2 passes, 1 lane.
/// [`Argon2Params::validate`] refuses anything weaker; configuration loading must call it, since
/// [`hash_password`] accepts any parameters argon2 itself accepts (tests use cheap ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Params {
    /// Memory cost in KiB (argon2 `m`).
    pub m_kib: u32,
    /// Number of passes (argon2 `t`).
    pub t: u32,
    /// Degree of parallelism, in lanes (argon2 `p`).
    pub p: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self {
            m_kib: 19_456,
            t: 2,
            p: 1,
        }
    }
}

impl Argon2Params {
    /// Largest memory cost accepted, in KiB (1 GiB).
    pub const MAX_M_KIB: u32 = 1 << 20;
    /// Largest number of passes accepted.
    pub const MAX_T: u32 = 64;
    /// Largest number of lanes accepted.
    pub const MAX_P: u32 = 64;

    /// Refuses parameters weaker than the default (the OWASP minimum) in memory or passes,
    /// zero lanes, and anything above [`Self::MAX_M_KIB`], [`Self::MAX_T`], [`Self::MAX_P`].
    pub fn validate(&self) -> Result<(), ParamsError> {
        let min = Self::default();
        if self.m_kib < min.m_kib || self.t < min.t || self.p < 1 {
            return Err(ParamsError::TooWeak {
                given: *self,
                minimum: min,
            });
        }
        if self.exceeds_limits() {
            return Err(ParamsError::TooLarge { given: *self });
        }
        Ok(())
    }

    /// True when these parameters cost less memory or fewer passes than the default.
    pub fn is_weaker_than_default(&self) -> bool {
        let min = Self::default();
        self.m_kib < min.m_kib || self.t < min.t
    }

    fn exceeds_limits(&self) -> bool {
        self.m_kib > Self::MAX_M_KIB || self.t > Self::MAX_T || self.p > Self::MAX_P
    }

    fn hasher(&self) -> Result<Argon2<'static>, HashError> {
        if self.exceeds_limits() {
            return Err(HashError::Params(ParamsError::TooLarge { given: *self }));
        }
        let params = Params::new(self.m_kib, self.t, self.p, None).map_err(HashError::Argon2)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Argon2 parameters refused by [`Argon2Params::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// Less memory or fewer passes than the minimum, or no lanes.
    #[error(
        "argon2 parameters m_kib = {}, t = {}, p = {} are weaker than the minimum \
         m_kib = {}, t = {}, p >= {} (OWASP recommendation for argon2id): raise them",
        given.m_kib, given.t, given.p, minimum.m_kib, minimum.t, minimum.p
    )]
    TooWeak {
        /// The parameters refused.
        given: Argon2Params,
        /// The minimum (the default).
        minimum: Argon2Params,
    },
    /// More than the limits a login may cost.
    #[error(
        "argon2 parameters m_kib = {}, t = {}, p = {} exceed the limits m_kib <= {}, t <= {}, \
         p <= {}: lower them",
        given.m_kib, given.t, given.p, Argon2Params::MAX_M_KIB, Argon2Params::MAX_T,
        Argon2Params::MAX_P
    )]
    TooLarge {
        /// The parameters refused.
        given: Argon2Params,
    },
}

/// Failure to hash a password with [`hash_password`].
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Parameters beyond the accepted limits.
    #[error(transparent)]
    Params(ParamsError),
    /// Argon2 refused the parameters.
    #[error("argon2: {0}")]
    Argon2(argon2::Error),
    /// Hashing failed (e.g. the system random source).
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
}

/// Hashes `password` with argon2id at `params` and a fresh random 16-byte salt, giving a PHC
/// string such as `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`.
///
/// Does not apply [`Argon2Params::validate`]: the caller validates configured parameters.
pub fn hash_password(password: &str, params: &Argon2Params) -> Result<String, HashError> {
    let hasher = params.hasher()?;
    let salt = SaltString::generate(&mut OsRng);
    hasher
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(HashError::Hash)
}

/// What a new password is stored as: its argon2id hash and its SCRAM-SHA-256 and SCRAM-SHA-512
/// keys (so that the user can log in either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredentials {
    /// The argon2id PHC string.
    pub hash: String,
    /// The SCRAM-SHA-256 store string.
    pub scram_sha256: String,
    /// The SCRAM-SHA-512 store string.
    pub scram_sha512: String,
}

impl NewCredentials {
    /// Hashes `password` (argon2id at `params`) and derives its SCRAM keys: slow on purpose,
    /// run it where waiting is fine (a blocking thread).
    pub fn derive(password: &str, params: &Argon2Params) -> Result<Self, String> {
        use crate::scram::{DEFAULT_ITERATIONS, ScramCredentials, ScramHash};
        let hash = hash_password(password, params)
            .map_err(|err| format!("cannot hash the password: {err}"))?;
        let scram = |kind: ScramHash| {
            ScramCredentials::derive(kind, password, DEFAULT_ITERATIONS)
                .map(|credentials| credentials.to_store_string())
                .map_err(|err| format!("cannot derive {kind} credentials: {err}"))
        };
        Ok(Self {
            hash,
            scram_sha256: scram(ScramHash::Sha256)?,
            scram_sha512: scram(ScramHash::Sha512)?,
        })
    }
}

/// Characters of generated passwords: letters and digits without look-alikes (0/O, 1/l/I).
const GENERATED_ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A random password of `len` characters from the operating system's generator (`None` if it
/// is unavailable). 24 characters carry about 140 bits.
pub fn generate_password(len: usize) -> Option<String> {
    let mut out = String::with_capacity(len);
    let n = GENERATED_ALPHABET.len();
    // Rejection sampling keeps every character equally likely.
    let limit = u8::MAX - (u8::MAX % u8::try_from(n).ok()?);
    while out.len() < len {
        let mut buf = [0u8; 32];
        rand_core::RngCore::try_fill_bytes(&mut OsRng, &mut buf).ok()?;
        for b in buf {
            if b < limit && out.len() < len {
                out.push(char::from(*GENERATED_ALPHABET.get(usize::from(b) % n)?));
            }
        }
    }
    Some(out)
}

/// The outcome of [`PasswordStore::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Right password. `upgrade`: the stored hash is a Mosquitto import or weaker than the
    /// current argon2id defaults, so the caller should store [`hash_password`] of the password
    /// it has just verified.
    Allow {
        /// Whether the stored hash should be replaced.
        upgrade: bool,
    },
    /// Unknown user or wrong password (deliberately indistinguishable).
    Deny,
    /// Right password, but the account is disabled.
    Disabled,
}

/// One user of the store.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user name, which becomes the MQTT identity.
    pub name: String,
    /// The stored password hash (argon2id PHC string or imported Mosquitto hash).
    pub password: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// A disabled user cannot log in.
    pub disabled: bool,
    /// SCRAM-SHA-256 credentials, opaque here and kept verbatim.
    pub scram_sha256: Option<String>,
    /// SCRAM-SHA-512 credentials, opaque here and kept verbatim.
    pub scram_sha512: Option<String>,
}

impl UserRecord {
    /// The kind of the stored hash, from its prefix (the hash itself is never shown).
    pub fn hash_kind(&self) -> &'static str {
        if self.password.starts_with("$argon2id$") {
            "argon2id"
        } else if self.password.starts_with("$6$") {
            "mosquitto-sha512 (will upgrade at next login)"
        } else if self.password.starts_with("$7$") {
            "mosquitto-pbkdf2 (will upgrade at next login)"
        } else {
            "unknown"
        }
    }
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |present: bool| if present { "<redacted>" } else { "<none>" };
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("password", &redacted(true))
            .field("groups", &self.groups)
            .field("disabled", &self.disabled)
            .field("scram_sha256", &redacted(self.scram_sha256.is_some()))
            .field("scram_sha512", &redacted(self.scram_sha512.is_some()))
            .finish()
    }
}

/// Problems with the store text or with a change to the store.
///
/// Names are shown escaped and shortened; passwords and hashes are never shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The text is not TOML.
    #[error("password store, line {line}: not valid TOML: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// The text is TOML but breaks the store's rules; every problem found is listed.
    #[error("password store has {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        /// One message per problem, each naming the user (`user #3 "alice"`).
        problems: Vec<String>,
    },
    /// [`PasswordStore::add`] of a name already present.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// A change to a user that does not exist.
    #[error("no such user {0:?}")]
    NoSuchUser(String),
    /// A user name that may not be used.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name, escaped and shortened.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A group name that may not be used.
    #[error("user {user:?}: invalid group {group:?}: {reason}")]
    InvalidGroup {
        /// The user.
        user: String,
        /// The group, escaped and shortened.
        group: String,
        /// Why it is refused.
        reason: String,
    },
    /// A password hash that is neither argon2id nor a supported Mosquitto hash.
    #[error("user {user:?}: unusable password hash: {reason}")]
    InvalidHash {
        /// The user.
        user: String,
        /// Why it is refused (the hash itself is not shown).
        reason: String,
    },
}

/// The users, in file order, with an index by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordStore {
    users: Vec<UserRecord>,
    by_name: HashMap<String, usize>,
}

impl PasswordStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses store text, reporting every problem found: TOML syntax (first error only),
    /// unknown keys, wrong types, missing `name` or `password`, empty or unsafe names
    /// (control characters, NUL, `+`, `#`, `/`), duplicate names, unsafe or duplicate groups,
    /// and password hashes that are neither argon2id PHC strings nor supported Mosquitto hashes.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let syntax = |err: toml::de::Error| StoreError::Syntax {
            line: err.span().map_or(1, |span| line_of(text, span.start)),
            message: err.message().trim_end().to_owned(),
        };
        // The syntax first, as a plain table, then the lenient typed read (which a valid
        // TOML document always passes).
        toml::from_str::<toml::Table>(text).map_err(syntax)?;
        let file: StoreFile = toml::from_str(text).map_err(syntax)?;
        let mut problems = Vec::new();
        for key in file.unknown.keys() {
            problems.push(format!(
                "unknown top-level key {:?}: the file holds only [[user]] tables",
                shown(key)
            ));
        }
        let mut users = Vec::new();
        match &file.user {
            None => {}
            Some(Field::Given(items)) => {
                for (index, item) in items.iter().enumerate() {
                    match item {
                        Field::Given(entry) => {
                            if let Some(user) = check_user(index, entry, &mut problems) {
                                users.push(user);
                            }
                        }
                        Field::Wrong(_) => problems.push(format!(
                            "user #{}: not a table (write each user as a [[user]] section)",
                            index + 1
                        )),
                    }
                }
            }
            Some(Field::Wrong(_)) => problems.push(
                "`user` is not an array of tables: write each user as a [[user]] section"
                    .to_owned(),
            ),
        }
        let mut store = Self::new();
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        for (position, user) in users {
            if let Some(first) = first_seen.get(&user.name) {
                problems.push(format!(
                    "{}: duplicate name, already used by user #{}",
                    label(position, Some(&user.name)),
                    first + 1
                ));
            } else {
                first_seen.insert(user.name.clone(), position);
                store.insert(user);
            }
        }
        if problems.is_empty() {
            Ok(store)
        } else {
            Err(StoreError::Invalid { problems })
        }
    }

    /// Serializes the store; [`PasswordStore::parse`] of the result gives an equal store.
    /// Comments other than the header are not kept.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(STORE_HEADER);
        out.push('\n');
        for user in &self.users {
            out.push_str("\n[[user]]\n");
            push_key(&mut out, "name", &toml_string(&user.name));
            push_key(&mut out, "password", &toml_string(&user.password));
            let groups: Vec<String> = user.groups.iter().map(|g| toml_string(g)).collect();
            push_key(&mut out, "groups", &format!("[{}]", groups.join(", ")));
            push_key(
                &mut out,
                "disabled",
                if user.disabled { "true" } else { "false" },
            );
            if let Some(scram) = &user.scram_sha256 {
                push_key(&mut out, "scram_sha256", &toml_string(scram));
            }
            if let Some(scram) = &user.scram_sha512 {
                push_key(&mut out, "scram_sha512", &toml_string(scram));
            }
        }
        out
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&UserRecord> {
        self.by_name.get(name).and_then(|&i| self.users.get(i))
    }

    /// All users, in file order.
    pub fn users(&self) -> impl Iterator<Item = &UserRecord> {
        self.users.iter()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds an enabled user with no SCRAM credentials. `password_hash` is a PHC string from
    /// [`hash_password`] or a Mosquitto `$6$`/`$7$` hash. Refuses an existing name, an unsafe
    /// name or group, and an unusable hash.
    pub fn add(
        &mut self,
        name: &str,
        password_hash: &str,
        groups: Vec<String>,
    ) -> Result<(), StoreError> {
        if let Err(reason) = check_name(name) {
            return Err(StoreError::InvalidName {
                name: shown(name),
                reason: reason.to_owned(),
            });
        }
        if self.by_name.contains_key(name) {
            return Err(StoreError::UserExists(shown(name)));
        }
        check_hash_for(name, password_hash)?;
        check_groups_for(name, &groups)?;
        self.insert(UserRecord {
            name: name.to_owned(),
            password: password_hash.to_owned(),
            groups,
            disabled: false,
            scram_sha256: None,
            scram_sha512: None,
        });
        Ok(())
    }

    /// Removes the user called `name`, returning its record.
    pub fn remove(&mut self, name: &str) -> Result<UserRecord, StoreError> {
        let index = self
            .by_name
            .remove(name)
            .ok_or_else(|| StoreError::NoSuchUser(shown(name)))?;
        if index >= self.users.len() {
            return Err(StoreError::NoSuchUser(shown(name)));
        }
        let removed = self.users.remove(index);
        for slot in self.by_name.values_mut() {
            if *slot > index {
                *slot -= 1;
            }
        }
        Ok(removed)
    }

    /// Replaces the password hash of `name`. Also drops the user's SCRAM credentials, which
    /// were derived from the old password: the caller stores new ones with
    /// [`PasswordStore::set_scram`].
    pub fn set_password(&mut self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        check_hash_for(name, password_hash)?;
        let user = self.get_mut(name)?;
        user.password = password_hash.to_owned();
        user.scram_sha256 = None;
        user.scram_sha512 = None;
        Ok(())
    }

    /// Disables or re-enables `name`.
    pub fn set_disabled(&mut self, name: &str, disabled: bool) -> Result<(), StoreError> {
        self.get_mut(name)?.disabled = disabled;
        Ok(())
    }

    /// Replaces the groups of `name`.
    pub fn set_groups(&mut self, name: &str, groups: Vec<String>) -> Result<(), StoreError> {
        check_groups_for(name, &groups)?;
        self.get_mut(name)?.groups = groups;
        Ok(())
    }

    /// Replaces the SCRAM credential strings of `name` (opaque here, stored verbatim).
    /// Adds user `name` with `credentials` and `groups` (refused as [`PasswordStore::add`]
    /// refuses).
    pub fn add_with(
        &mut self,
        name: &str,
        credentials: &NewCredentials,
        groups: Vec<String>,
    ) -> Result<(), StoreError> {
        self.add(name, &credentials.hash, groups)?;
        self.set_scram(
            name,
            Some(credentials.scram_sha256.clone()),
            Some(credentials.scram_sha512.clone()),
        )
    }

    /// Gives user `name` new `credentials`.
    pub fn set_credentials(
        &mut self,
        name: &str,
        credentials: &NewCredentials,
    ) -> Result<(), StoreError> {
        self.set_password(name, &credentials.hash)?;
        self.set_scram(
            name,
            Some(credentials.scram_sha256.clone()),
            Some(credentials.scram_sha512.clone()),
        )
    }

    pub fn set_scram(
        &mut self,
        name: &str,
        scram_sha256: Option<String>,
        scram_sha512: Option<String>,
    ) -> Result<(), StoreError> {
        let user = self.get_mut(name)?;
        user.scram_sha256 = scram_sha256;
        user.scram_sha512 = scram_sha512;
        Ok(())
    }

    /// Checks `password` for `name`.
    ///
    /// Every call runs one argon2id verification at least as costly as the default
    /// parameters' (unknown users and Mosquitto-hash users are checked against a fixed dummy
    /// hash as well), so the time taken does not tell which names exist. A disabled user gets
    /// [`Verdict::Disabled`] only with the right password, [`Verdict::Deny`] otherwise.
    pub fn verify(&self, name: &str, password: &[u8]) -> Verdict {
        let Some(user) = self.get(name) else {
            run_dummy_verification(password);
            return Verdict::Deny;
        };
        let (matched, upgrade) = match parse_hash(&user.password) {
            Ok(StoredHash::Argon2id(hash)) => {
                let upgrade = argon2_needs_upgrade(&hash);
                (argon2_verify(&hash, password), upgrade)
            }
            Ok(mosquitto) => {
                run_dummy_verification(password);
                (mosquitto_matches(&mosquitto, password), true)
            }
            Err(_) => {
                // Unreachable through parse/add/set_password, which check the hash; deny at
                // the same cost anyway.
                run_dummy_verification(password);
                (false, false)
            }
        };
        match (matched, user.disabled) {
            (false, _) => Verdict::Deny,
            (true, true) => Verdict::Disabled,
            (true, false) => Verdict::Allow { upgrade },
        }
    }

    fn insert(&mut self, user: UserRecord) {
        self.by_name.insert(user.name.clone(), self.users.len());
        self.users.push(user);
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut UserRecord, StoreError> {
        self.by_name
            .get(name)
            .copied()
            .and_then(|i| self.users.get_mut(i))
            .ok_or_else(|| StoreError::NoSuchUser(shown(name)))
    }
}

/// Reads a Mosquitto password file (`user:hash` lines; blank lines and `#` comments skipped)
/// into `(name, hash)` pairs. Every line is checked: a usable name, no duplicate, and a
/// well-formed `$6$` or `$7$` hash. All problems are reported, one per line, each naming the
/// line number; hashes are never echoed.
pub fn parse_mosquitto_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, hash)) = line.split_once(':') else {
            problems.push(format!(
                "line {line_no}: expected `user:hash` (no `:` found)"
            ));
            continue;
        };
        let hash = hash.trim_end();
        if let Err(reason) = check_name(name) {
            problems.push(format!(
                "line {line_no}: user name {:?}: {reason}",
                shown(name)
            ));
            continue;
        }
        if !(hash.starts_with("$6$") || hash.starts_with("$7$")) {
            problems.push(format!(
                "line {line_no}: user {:?}: not a Mosquitto $6$ or $7$ hash (a plain-text \
                 password file must first be hashed with `mosquitto_passwd -U`)",
                shown(name)
            ));
            continue;
        }
        if let Err(reason) = parse_hash(hash) {
            problems.push(format!("line {line_no}: user {:?}: {reason}", shown(name)));
            continue;
        }
        if let Some(first) = first_line.get(name) {
            problems.push(format!(
                "line {line_no}: user {:?} already appears on line {first}",
                shown(name)
            ));
            continue;
        }
        first_line.insert(name, line_no);
        entries.push((name.to_owned(), hash.to_owned()));
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems.join("\n"))
    }
}

/// A stored hash, checked and decoded.
enum StoredHash<'a> {
    Argon2id(PasswordHash<'a>),
    /// Mosquitto `$6$`: SHA-512 over password || salt.
    MosquittoSha512 {
        salt: Vec<u8>,
        digest: Vec<u8>,
    },
    /// Mosquitto `$7$`: PBKDF2-HMAC-SHA512.
    MosquittoPbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        digest: Vec<u8>,
    },
}

const UNSUPPORTED_HASH: &str = "neither an argon2id PHC string ($argon2id$...) nor a Mosquitto \
                                $6$/$7$ hash";

/// Checks a stored hash string's structure. The reasons never quote the hash.
fn parse_hash(hash: &str) -> Result<StoredHash<'_>, String> {
    if let Some(rest) = hash.strip_prefix("$6$") {
        let mut fields = rest.split('$');
        let (Some(salt), Some(digest), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err("Mosquitto $6$ hash: expected $6$<salt>$<hash>".to_owned());
        };
        let (salt, digest) = decode_mosquitto_fields("$6$", salt, digest)?;
        return Ok(StoredHash::MosquittoSha512 { salt, digest });
    }
    if let Some(rest) = hash.strip_prefix("$7$") {
        let mut fields = rest.split('$');
        let (Some(iterations), Some(salt), Some(digest), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err("Mosquitto $7$ hash: expected $7$<iterations>$<salt>$<hash>".to_owned());
        };
        let iterations = match iterations.parse::<u32>() {
            Ok(n) if (1..=MAX_PBKDF2_ITERATIONS).contains(&n) && !iterations.starts_with('+') => n,
            _ => {
                return Err(format!(
                    "Mosquitto $7$ hash: iteration count must be a number from 1 to \
                     {MAX_PBKDF2_ITERATIONS}"
                ));
            }
        };
        let (salt, digest) = decode_mosquitto_fields("$7$", salt, digest)?;
        return Ok(StoredHash::MosquittoPbkdf2 {
            iterations,
            salt,
            digest,
        });
    }
    if !hash.starts_with("$argon2") {
        return Err(UNSUPPORTED_HASH.to_owned());
    }
    let parsed = PasswordHash::new(hash)
        .map_err(|_| "malformed argon2 PHC string ($argon2id$v=19$m=..,t=..,p=..$salt$hash)")?;
    if Algorithm::try_from(parsed.algorithm) != Ok(Algorithm::Argon2id) {
        return Err("argon2 hash is not argon2id (argon2i and argon2d are refused)".to_owned());
    }
    if parsed
        .version
        .is_some_and(|v| v != u32::from(Version::V0x13))
    {
        return Err("argon2id hash is not version 19 (v=19)".to_owned());
    }
    let params =
        Params::try_from(&parsed).map_err(|err| format!("argon2id parameters invalid: {err}"))?;
    let costs = Argon2Params {
        m_kib: params.m_cost(),
        t: params.t_cost(),
        p: params.p_cost(),
    };
    if costs.exceeds_limits() {
        return Err(ParamsError::TooLarge { given: costs }.to_string());
    }
    let Some(salt) = parsed.salt else {
        return Err("argon2id hash has no salt".to_owned());
    };
    let mut salt_buf = [0u8; 64];
    match salt.decode_b64(&mut salt_buf) {
        Ok(bytes) if bytes.len() >= argon2::MIN_SALT_LEN => {}
        _ => {
            return Err(format!(
                "argon2id salt is not base64 of at least {} bytes",
                argon2::MIN_SALT_LEN
            ));
        }
    }
    if parsed.hash.is_none() {
        return Err("argon2id PHC string has no hash".to_owned());
    }
    Ok(StoredHash::Argon2id(parsed))
}

fn decode_mosquitto_fields(
    kind: &str,
    salt: &str,
    digest: &str,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let salt = BASE64
        .decode(salt)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("Mosquitto {kind} hash: salt is not non-empty standard base64"))?;
    let digest = BASE64
        .decode(digest)
        .ok()
        .filter(|d| d.len() == MOSQUITTO_HASH_LEN)
        .ok_or_else(|| {
            format!(
                "Mosquitto {kind} hash: hash is not standard base64 of {MOSQUITTO_HASH_LEN} bytes"
            )
        })?;
    Ok((salt, digest))
}

fn argon2_needs_upgrade(hash: &PasswordHash<'_>) -> bool {
    let Ok(params) = Params::try_from(hash) else {
        return true;
    };
    let costs = Argon2Params {
        m_kib: params.m_cost(),
        t: params.t_cost(),
        p: params.p_cost(),
    };
    let mut salt_buf = [0u8; 64];
    let salt_len = hash
        .salt
        .and_then(|s| s.decode_b64(&mut salt_buf).ok().map(<[u8]>::len))
        .unwrap_or(0);
    let output_len = hash.hash.map_or(0, |h| h.len());
    costs.is_weaker_than_default()
        || salt_len < PREFERRED_SALT_LEN
        || output_len < PREFERRED_OUTPUT_LEN
}

/// Verifies with the parameters in the hash; the comparison inside argon2 is constant-time.
fn argon2_verify(hash: &PasswordHash<'_>, password: &[u8]) -> bool {
    #[cfg(test)]
    probe::record(&hash.to_string());
    Argon2::default().verify_password(password, hash).is_ok()
}

fn mosquitto_matches(hash: &StoredHash<'_>, password: &[u8]) -> bool {
    let (computed, expected) = match hash {
        StoredHash::Argon2id(_) => return false,
        StoredHash::MosquittoSha512 { salt, digest } => {
            let mut sha = Sha512::new();
            sha.update(password);
            sha.update(salt);
            (sha.finalize().to_vec(), digest)
        }
        StoredHash::MosquittoPbkdf2 {
            iterations,
            salt,
            digest,
        } => {
            let mut out = vec![0u8; MOSQUITTO_HASH_LEN];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
            (out, digest)
        }
    };
    computed.ct_eq(expected).into()
}

/// The hash unknown users are checked against: argon2id at the default parameters, computed
/// on first use. `None` only if argon2 refused its own default parameters.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let hasher = Argon2Params::default().hasher().ok()?;
            let salt = SaltString::encode_b64(DUMMY_SALT).ok()?;
            hasher
                .hash_password(DUMMY_PASSWORD, &salt)
                .ok()
                .map(|hash| hash.to_string())
        })
        .as_deref()
}

/// Spends one default-cost argon2id verification, discarding the result.
fn run_dummy_verification(password: &[u8]) {
    if let Some(hash) = dummy_hash().and_then(|h| PasswordHash::new(h).ok()) {
        let _ = argon2_verify(&hash, password);
    }
}

/// Why a user or group name is refused, if it is.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("longer than 65535 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character or NUL");
    }
    if name.contains(['+', '#', '/']) {
        return Err(
            "contains `+`, `#` or `/`, which would act as topic wildcards or levels \
                    where the name is substituted into ACL patterns",
        );
    }
    Ok(())
}

fn check_hash_for(user: &str, hash: &str) -> Result<(), StoreError> {
    parse_hash(hash)
        .map(|_| ())
        .map_err(|reason| StoreError::InvalidHash {
            user: shown(user),
            reason,
        })
}

fn check_groups_for(user: &str, groups: &[String]) -> Result<(), StoreError> {
    for (i, group) in groups.iter().enumerate() {
        let reason = match check_name(group) {
            Err(reason) => reason,
            Ok(()) if groups.iter().take(i).any(|g| g == group) => "listed twice",
            Ok(()) => continue,
        };
        return Err(StoreError::InvalidGroup {
            user: shown(user),
            group: shown(group),
            reason: reason.to_owned(),
        });
    }
    Ok(())
}

/// The store file as serde reads it: every value kept, of the right type or not, so that
/// [`PasswordStore::parse`] can name every problem.
#[derive(Deserialize)]
struct StoreFile {
    user: Option<Field<Vec<Field<UserEntry>>>>,
    /// Keys other than `user`.
    #[serde(flatten)]
    unknown: toml::Table,
}

/// One `[[user]]` table as serde reads it; its keys are [`STORE_KEYS`].
#[derive(Deserialize)]
struct UserEntry {
    name: Option<Field<String>>,
    password: Option<Field<String>>,
    groups: Option<Field<Vec<Field<String>>>>,
    disabled: Option<Field<bool>>,
    scram_sha256: Option<Field<String>>,
    scram_sha512: Option<Field<String>>,
    /// Keys the store does not know.
    #[serde(flatten)]
    unknown: toml::Table,
}

/// Checks one `[[user]]` table, adding its problems; `None` when it has any.
fn check_user(
    index: usize,
    entry: &UserEntry,
    problems: &mut Vec<String>,
) -> Option<(usize, UserRecord)> {
    let before = problems.len();
    let name = match &entry.name {
        Some(Field::Given(name)) => Some(name.as_str()),
        Some(Field::Wrong(_)) => {
            problems.push(format!("{}: `name` is not a string", label(index, None)));
            None
        }
        None => {
            problems.push(format!("{}: `name` is missing", label(index, None)));
            None
        }
    };
    let who = label(index, name);
    if let Some(Err(reason)) = name.map(check_name) {
        problems.push(format!("{who}: name {reason}"));
    }
    for key in entry.unknown.keys() {
        problems.push(format!(
            "{who}: unknown key {:?} (known: {})",
            shown(key),
            STORE_KEYS.join(", ")
        ));
    }
    let password = match &entry.password {
        Some(Field::Given(hash)) => {
            if let Err(reason) = parse_hash(hash) {
                problems.push(format!("{who}: `password`: {reason}"));
            }
            Some(hash.clone())
        }
        Some(Field::Wrong(_)) => {
            problems.push(format!("{who}: `password` is not a string"));
            None
        }
        None => {
            problems.push(format!("{who}: `password` is missing"));
            None
        }
    };
    let mut groups = Vec::new();
    match &entry.groups {
        None => {}
        Some(Field::Given(items)) => {
            for item in items {
                match item {
                    Field::Given(group) => {
                        if let Err(reason) = check_name(group) {
                            problems.push(format!("{who}: group {:?}: {reason}", shown(group)));
                        } else if groups.contains(group) {
                            problems.push(format!("{who}: group {:?} listed twice", shown(group)));
                        } else {
                            groups.push(group.clone());
                        }
                    }
                    Field::Wrong(_) => problems.push(format!("{who}: `groups` holds a non-string")),
                }
            }
        }
        Some(Field::Wrong(_)) => {
            problems.push(format!("{who}: `groups` is not an array of strings"));
        }
    }
    let disabled = match &entry.disabled {
        None => false,
        Some(Field::Given(disabled)) => *disabled,
        Some(Field::Wrong(_)) => {
            problems.push(format!("{who}: `disabled` is not true or false"));
            false
        }
    };
    let mut scram = |key: &str, field: &Option<Field<String>>| match field {
        None => None,
        Some(Field::Given(value)) => Some(value.clone()),
        Some(Field::Wrong(_)) => {
            problems.push(format!("{who}: `{key}` is not a string"));
            None
        }
    };
    let scram_sha256 = scram("scram_sha256", &entry.scram_sha256);
    let scram_sha512 = scram("scram_sha512", &entry.scram_sha512);
    if problems.len() != before {
        return None;
    }
    Some((
        index,
        UserRecord {
            name: name?.to_owned(),
            password: password?,
            groups,
            disabled,
            scram_sha256,
            scram_sha512,
        },
    ))
}

/// `user #3 "alice"`, or `user #3` when the name is unknown.
fn label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("user #{} {:?}", index + 1, shown(name)),
        None => format!("user #{}", index + 1),
    }
}

fn push_key(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str(" = ");
    out.push_str(value);
    out.push('\n');
}

/// A TOML basic string holding `value`.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Records, per test thread, which argon2 hashes were verified.
#[cfg(test)]
mod probe {
    use std::cell::RefCell;

    thread_local! {
        static VERIFIED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn record(phc: &str) {
        VERIFIED.with(|v| v.borrow_mut().push(phc.to_owned()));
    }

    /// The hashes verified since the last call.
    pub(super) fn take() -> Vec<String> {
        VERIFIED.with(|v| std::mem::take(&mut *v.borrow_mut()))
    }
}

#[cfg(test)]
mod tests;
