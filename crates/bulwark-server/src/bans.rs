//! Bans in the server: the ban list (persisted in `[bans] file`, reloaded when it changes),
//! checked at accept (addresses, before any TLS work) and after authentication (usernames and
//! client identifiers), and the abuse tracker that bans sources on its own: repeated protocol
//! violations and CONNECT timeouts from one address, and client identifiers that connect over
//! and over (flapping). Flapping is counted per user and client identifier, and its ban is on
//! that pair: a user that reconnects with someone else's client identifier bans only itself
//! from it, never the identifier's owner.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::sync::lock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulwark_acl::Cidr;
use bulwark_limits::ban::{Ban, BanList, BanTarget};
use tracing::{info, warn};

/// Largest ban file read, in bytes.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Sources and client identifiers the abuse tracker remembers at most.
const MAX_TRACKED: usize = 100_000;

/// Bans and automatic banning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanSettings {
    /// Where the ban list is kept (`bulwark ban` edits it; the broker adds its own bans).
    /// `None`: bans live in memory only and end with the process.
    pub file: Option<PathBuf>,
    /// Offences (protocol violations, CONNECT timeouts) from one address within `window`
    /// that ban it; 0: never.
    pub offences: u32,
    /// Connections of one user with one client identifier within `window` that ban that user
    /// from that identifier (flapping); 0: never.
    pub flaps: u32,
    /// The window both counts are taken over.
    pub window: Duration,
    /// How long an automatic ban lasts.
    pub duration: Duration,
    /// Sources never banned automatically (by default the loopback networks).
    pub exempt: Vec<Cidr>,
}

impl Default for BanSettings {
    fn default() -> Self {
        Self {
            file: None,
            offences: 20,
            flaps: 100,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(3600),
            exempt: bulwark_limits::admission::loopback(),
        }
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Default)]
struct Tracker {
    offences: HashMap<IpAddr, (u32, Instant)>,
    /// By (user, client id); `None`: anonymous clients.
    flaps: HashMap<(Option<String>, String), (u32, Instant)>,
}

/// The ban list in force and the abuse tracker.
#[derive(Debug)]
pub(crate) struct Bans {
    settings: BanSettings,
    list: RwLock<Arc<BanList>>,
    seen: Mutex<Option<SystemTime>>,
    tracker: Mutex<Tracker>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the ban file (a missing one is an empty list).
pub fn load(path: &Path) -> Result<BanList, String> {
    if !path.exists() {
        return Ok(BanList::new());
    }
    let text = crate::files::read_text(path, "the ban file", MAX_FILE_BYTES)?;
    BanList::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

impl Bans {
    /// Loads the ban file, if there is one; a file that does not parse stops the start.
    pub(crate) fn open(settings: BanSettings) -> Result<Self, String> {
        let (list, seen) = match &settings.file {
            Some(path) => {
                let list = load(path)?;
                info!(file = %path.display(), bans = list.bans().len(), "ban list loaded");
                (list, mtime(path))
            }
            None => (BanList::new(), None),
        };
        Ok(Self {
            settings,
            list: RwLock::new(Arc::new(list)),
            seen: Mutex::new(seen),
            tracker: Mutex::new(Tracker::default()),
        })
    }

    fn list(&self) -> Arc<BanList> {
        crate::sync::read(&self.list).clone()
    }

    /// The ban in force on this address, if any.
    pub(crate) fn address_ban(&self, ip: IpAddr) -> Option<Ban> {
        self.list().address_ban(ip, unix_now()).cloned()
    }

    /// The ban in force on this client, if any.
    pub(crate) fn client_ban(
        &self,
        ip: IpAddr,
        username: Option<&str>,
        client_id: &str,
    ) -> Option<Ban> {
        self.list()
            .client_ban(ip, username, client_id, unix_now())
            .cloned()
    }

    /// Re-reads the file if it changed (or `forced`); the new list, when it did and parses.
    pub(crate) fn reload(&self, forced: bool, audit: &crate::audit::Audit) -> Option<Arc<BanList>> {
        let path = self.settings.file.as_ref()?;
        let now = mtime(path);
        {
            let mut seen = lock(&self.seen);
            if !forced && *seen == now {
                return None;
            }
            *seen = now;
        }
        match load(path) {
            Ok(list) => {
                info!(file = %path.display(), bans = list.bans().len(), "ban list reloaded");
                let done = format!("reloaded: {} bans", list.bans().len());
                audit.record(crate::audit::reload_event("bans", path, Ok(done)));
                let list = Arc::new(list);
                *crate::sync::write(&self.list) = list.clone();
                Some(list)
            }
            Err(err) => {
                warn!(file = %path.display(), %err, "ban list reload failed; the bans in force stay");
                audit.record(crate::audit::reload_event(
                    "bans",
                    path,
                    Err(err.to_string()),
                ));
                None
            }
        }
    }

    /// Whether any exempt address lies in `net` (a network ban would cover it).
    pub(crate) fn exempt_within(&self, net: &Cidr) -> bool {
        self.settings.exempt.iter().any(|c| c.overlaps(net))
    }

    pub(crate) fn exempt(&self, ip: IpAddr) -> bool {
        self.settings.exempt.iter().any(|c| c.contains(ip))
    }

    /// Counts one offence from `ip`; the ban it earned, if this one was the last straw.
    pub(crate) fn offence(&self, ip: IpAddr, what: &str) -> Option<Ban> {
        let limit = self.settings.offences;
        if limit == 0 || self.exempt(ip) {
            return None;
        }
        let count = {
            let mut t = lock(&self.tracker);
            bump(&mut t.offences, ip, self.settings.window)
        };
        (count >= limit).then(|| {
            lock(&self.tracker).offences.remove(&ip);
            self.auto_ban(
                BanTarget::Address(Cidr::host(ip)),
                format!(
                    "auto: {count} {what}s within {} s",
                    self.settings.window.as_secs()
                ),
            )
        })
    }

    /// Counts one connection of `username` (`None`: anonymous) with `client_id` from `ip`; the
    /// ban it earned by flapping, if any: on that user's use of that client id only.
    pub(crate) fn connected(
        &self,
        ip: IpAddr,
        username: Option<&str>,
        client_id: &str,
    ) -> Option<Ban> {
        let limit = self.settings.flaps;
        if limit == 0 || client_id.is_empty() || self.exempt(ip) {
            return None;
        }
        let key = (username.map(str::to_owned), client_id.to_owned());
        let count = {
            let mut t = lock(&self.tracker);
            bump(&mut t.flaps, key.clone(), self.settings.window)
        };
        (count >= limit).then(|| {
            lock(&self.tracker).flaps.remove(&key);
            let (username, client_id) = key;
            self.auto_ban(
                BanTarget::UserClientId {
                    username,
                    client_id,
                },
                format!(
                    "auto: {count} connections within {} s (flapping)",
                    self.settings.window.as_secs()
                ),
            )
        })
    }

    /// Adds an automatic ban to the list in force and to the file.
    fn auto_ban(&self, target: BanTarget, reason: String) -> Ban {
        let now = unix_now();
        let ban = Ban {
            target,
            expires: Some(now.saturating_add(self.settings.duration.as_secs())),
            reason,
            created: now,
            by: "auto".to_owned(),
        };
        if let Err(err) = self.change(|list| list.add(ban.clone()).map_err(|e| e.to_string())) {
            warn!(%err, "automatic ban not added or not written to the ban file");
        }
        ban
    }

    /// Adds `ban` (replacing one on the same target) to the list in force and to the file.
    pub(crate) fn add(&self, ban: Ban) -> Result<(), String> {
        self.change(|list| list.add(ban.clone()).map_err(|e| e.to_string()))
    }

    /// Lifts the ban on `target`; whether there was one.
    pub(crate) fn remove(&self, target: &BanTarget) -> Result<bool, String> {
        let mut found = false;
        self.change(|list| {
            found = list.remove(target);
            Ok(())
        })?;
        Ok(found)
    }

    /// Applies `edit` to the list in force (and, with a file, to what the file holds, which
    /// `bulwark ban` may have changed meanwhile), expired bans pruned. The list in force
    /// changes even when the file cannot be written (the error says so).
    fn change(
        &self,
        mut edit: impl FnMut(&mut BanList) -> Result<(), String>,
    ) -> Result<(), String> {
        let now = unix_now();
        let mut guard = crate::sync::write(&self.list);
        let mut list = (**guard).clone();
        list.prune(now);
        edit(&mut list)?;
        let mut written = Ok(());
        if let Some(path) = &self.settings.file {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Err(err) = crate::files::ensure_dir(dir)
            {
                written = Err(format!("the ban file cannot be written: {err}"));
            }
            // The file may have changed under us (`bulwark ban`): start from what it holds.
            let mut on_disk = load(path).unwrap_or_else(|_| list.clone());
            on_disk.prune(now);
            if edit(&mut on_disk).is_ok() {
                list = on_disk;
            }
            if written.is_ok() {
                match crate::files::write_atomic(path, list.to_toml().as_bytes()) {
                    Ok(()) => *lock(&self.seen) = mtime(path),
                    Err(err) => written = Err(format!("the ban file cannot be written: {err}")),
                }
            }
        }
        *guard = Arc::new(list);
        written
    }

    /// The bans in force now (expired ones left out).
    pub(crate) fn in_force(&self) -> Vec<Ban> {
        let now = unix_now();
        self.list()
            .bans()
            .iter()
            .filter(|b| b.active(now))
            .cloned()
            .collect()
    }
}

/// Closes live connections a ban now covers (5.0: DISCONNECT 0x98 Administrative action, as
/// 0x8A Banned is a CONNACK code only), each a forced-disconnect security event.
pub(crate) async fn enforce(
    auth: &crate::auth::AuthService,
    router: &tokio::sync::mpsc::Sender<crate::router::ToRouter>,
    conns: Vec<bulwark_core::ConnectionId>,
    why: &'static str,
) {
    if conns.is_empty() {
        return;
    }
    for conn in &conns {
        auth.forced_disconnect(*conn, why);
    }
    let _ = router
        .send(crate::router::ToRouter::Kick {
            conns,
            code: bulwark_proto::ReasonCode::AdministrativeAction,
            why,
        })
        .await;
}

/// Counts one more event for `key` within `window`; returns the count.
fn bump<K: std::hash::Hash + Eq>(
    table: &mut HashMap<K, (u32, Instant)>,
    key: K,
    window: Duration,
) -> u32 {
    let now = Instant::now();
    if table.len() >= MAX_TRACKED {
        table.retain(|_, (_, since)| now.saturating_duration_since(*since) < window);
        if table.len() >= MAX_TRACKED {
            // Still full of live counts: the newest source is not tracked (and not banned).
            return 0;
        }
    }
    let entry = table.entry(key).or_insert((0, now));
    if now.saturating_duration_since(entry.1) >= window {
        *entry = (0, now);
    }
    entry.0 += 1;
    entry.0
}
