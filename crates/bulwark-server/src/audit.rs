//! The one sink of [`SecurityEvent`]s: each event goes to the log (a warning for refusals,
//! info otherwise) and, when an audit file is configured, as one JSON line appended to it.
//!
//! The file is written by its own thread, so a slow disk never stalls a connection task; the
//! queue to it is bounded ([`QUEUE`] events). Connection tasks wait for room (a flood of
//! failed logins is slowed, not forgotten); callers that must not wait (the router, the
//! reload task) drop an event when the queue is full and count it, and the count is logged.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bulwark_acl::event::SecurityEvent;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Events queued for the audit file at most.
pub(crate) const QUEUE: usize = 8192;

/// Where security events go. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    file: Option<mpsc::Sender<Arc<SecurityEvent>>>,
    dropped: Arc<AtomicU64>,
    counts: Arc<EventCounts>,
    live: Arc<Live>,
}

/// Events for the admin API: the latest [`RECENT`], and a broadcast to event streams (a
/// reader that falls [`STREAM`] events behind is told how many it missed).
#[derive(Debug)]
struct Live {
    recent: std::sync::Mutex<std::collections::VecDeque<Arc<SecurityEvent>>>,
    stream: tokio::sync::broadcast::Sender<Arc<SecurityEvent>>,
}

/// Events kept for `GET /api/v1/events`.
pub(crate) const RECENT: usize = 1000;
/// Events an event stream may fall behind.
pub(crate) const STREAM: usize = 1024;

impl Default for Live {
    fn default() -> Self {
        Self {
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(RECENT)),
            stream: tokio::sync::broadcast::channel(STREAM).0,
        }
    }
}

impl Live {
    fn push(&self, event: &Arc<SecurityEvent>) {
        {
            let mut recent = crate::sync::lock(&self.recent);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No stream open: nothing to do.
        let _ = self.stream.send(event.clone());
    }
}

/// An authentication method as a metric label: one of a fixed set (`""` for none, `other` for
/// anything else), so that clients cannot grow a table of counts.
pub(crate) fn method_label(method: Option<&str>) -> &'static str {
    match method {
        None => "",
        Some(m) if m.eq_ignore_ascii_case("password") => "password",
        Some(m) if m.eq_ignore_ascii_case("certificate") => "certificate",
        Some(m) if m.eq_ignore_ascii_case("jwt") => "jwt",
        Some(m) if m.eq_ignore_ascii_case("anonymous") => "anonymous",
        Some("token") => "token",
        Some("session") => "session",
        Some("connect") => "connect",
        Some("reauth") => "reauth",
        Some("certificate+password") => "certificate+password",
        Some(m) if m.eq_ignore_ascii_case("SCRAM-SHA-256") => "SCRAM-SHA-256",
        Some(m) if m.eq_ignore_ascii_case("SCRAM-SHA-512") => "SCRAM-SHA-512",
        Some(_) => "other",
    }
}

/// Security events since start by kind, authentication method and action (each label from a
/// fixed set, so that clients cannot grow the table), for metrics.
#[derive(Debug, Default)]
pub(crate) struct EventCounts {
    table: std::sync::Mutex<std::collections::BTreeMap<EventKey, u64>>,
}

/// `(kind, method, action)` of [`EventCounts`].
pub(crate) type EventKey = (&'static str, &'static str, &'static str);

impl EventCounts {
    fn count(&self, event: &SecurityEvent) {
        let method = method_label(event.method.as_deref());
        let admin = matches!(
            event.kind,
            bulwark_acl::event::EventKind::AdminAction
                | bulwark_acl::event::EventKind::AdminAuthFailure
        );
        let action = match event.action.as_deref() {
            None => "",
            // An admin action's is the request line: the kind says enough.
            Some(_) if admin => "",
            Some("publish") => "publish",
            Some("subscribe") => "subscribe",
            Some("will") => "will",
            Some("retained") => "retained",
            Some("connect") => "connect",
            Some(_) => "other",
        };
        *crate::sync::lock(&self.table)
            .entry((event.kind.as_str(), method, action))
            .or_default() += 1;
    }

    /// Every count so far.
    pub(crate) fn snapshot(&self) -> Vec<(EventKey, u64)> {
        crate::sync::lock(&self.table)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

impl Audit {
    /// Events to the log only.
    pub(crate) fn log_only() -> Self {
        Self {
            file: None,
            dropped: Arc::new(AtomicU64::new(0)),
            counts: Arc::default(),
            live: Arc::default(),
        }
    }

    /// Events to the log and appended to `path` (created with mode 0600 if missing). Fails if
    /// the file cannot be opened, so a broker never runs without the audit trail it was
    /// configured to keep.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::files::ensure_dir(dir)?;
        }
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .map_err(|err| format!("cannot open the audit file {}: {err}", path.display()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("bulwark-audit".into())
            .spawn(move || write_loop(rx, BufWriter::new(file), &path))
            .map_err(|err| format!("cannot start the audit writer: {err}"))?;
        Ok(Self {
            file: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            counts: Arc::default(),
            live: Arc::default(),
        })
    }

    /// Records `event`, waiting for room in the file's queue.
    pub(crate) async fn record(&self, event: SecurityEvent) {
        log(&event);
        self.counts.count(&event);
        // One allocation shared by the file's queue, the recent list and event streams.
        let event = Arc::new(event);
        self.live.push(&event);
        if let Some(tx) = &self.file {
            let _ = tx.send(event).await;
        }
    }

    /// Records `event` without waiting: dropped (and counted) if the file's queue is full.
    pub(crate) fn record_now(&self, event: SecurityEvent) {
        log(&event);
        self.counts.count(&event);
        let event = Arc::new(event);
        self.live.push(&event);
        if let Some(tx) = &self.file
            && tx.try_send(event).is_err()
        {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "audit file queue full: security events not written"
                );
            }
        }
    }
}

impl Audit {
    /// Security events since start, for metrics.
    pub(crate) fn counts(&self) -> Vec<(EventKey, u64)> {
        self.counts.snapshot()
    }

    /// Security events as they are recorded.
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<SecurityEvent>> {
        self.live.stream.subscribe()
    }

    /// The latest security events, oldest first, at most `limit`.
    pub(crate) fn recent(&self, limit: usize) -> Vec<Arc<SecurityEvent>> {
        let recent = crate::sync::lock(&self.live.recent);
        recent
            .iter()
            .skip(recent.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// Events the audit file's queue had no room for.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn log(event: &SecurityEvent) {
    let e = event;
    if e.kind.is_refusal() {
        warn!(
            kind = %e.kind,
            listener = e.listener.as_deref(),
            remote = e.remote.as_deref(),
            client_id = e.client_id.as_deref(),
            username = e.username.as_deref(),
            method = e.method.as_deref(),
            action = e.action.as_deref(),
            topic = e.topic.as_deref(),
            reason = e.reason.as_deref(),
            actor = e.actor.as_deref(),
            target = e.target.as_deref(),
            "security event"
        );
    } else {
        info!(
            kind = %e.kind,
            listener = e.listener.as_deref(),
            remote = e.remote.as_deref(),
            client_id = e.client_id.as_deref(),
            username = e.username.as_deref(),
            method = e.method.as_deref(),
            action = e.action.as_deref(),
            actor = e.actor.as_deref(),
            target = e.target.as_deref(),
            reason = e.reason.as_deref(),
            "security event"
        );
    }
}

/// Appends events until every sender is gone; flushes whenever the queue runs empty.
fn write_loop(
    mut rx: mpsc::Receiver<Arc<SecurityEvent>>,
    mut out: BufWriter<std::fs::File>,
    path: &Path,
) {
    let mut failed = false;
    while let Some(event) = rx.blocking_recv() {
        let mut line = event.to_json_line();
        line.push('\n');
        let mut result = out.write_all(line.as_bytes());
        while let Ok(event) = rx.try_recv() {
            let mut line = event.to_json_line();
            line.push('\n');
            result = result.and_then(|()| out.write_all(line.as_bytes()));
        }
        result = result.and_then(|()| out.flush());
        match result {
            Err(err) if !failed => {
                warn!(file = %path.display(), %err, "cannot write the audit file");
                failed = true;
            }
            Err(_) => {}
            Ok(()) => failed = false,
        }
    }
}
