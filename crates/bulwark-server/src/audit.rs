//! The one sink of [`SecurityEvent`]s: each event goes to the log (a warning for refusals,
//! info otherwise) and, when an audit file is configured, into the audit trail: a record of
//! a hash chain with signed checkpoints (`docs/audit.md`), or a plain JSON line.
//!
//! The trail is written by its own thread ([`trail`]), so a slow disk never stalls a
//! connection task; the queue to it is bounded (`[audit] queue`, 8,192 events by default).
//! Nobody waits for room: an event the queue cannot take is dropped and counted, it is in the
//! log all the same, and the trail records how many were dropped as soon as there is room.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};

use bulwark_acl::event::{EventKind, SecurityEvent};
use tracing::{info, warn};

pub(crate) mod export;
pub mod settings;
pub(crate) mod trail;

pub use settings::{AuditFormat, AuditSettings};
use trail::{Msg, TrailCounts};

/// Where security events go. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    file: Option<SyncSender<Msg>>,
    trail: Arc<TrailCounts>,
    /// The remote exporters (syslog, HTTP), for their counts and the stop.
    remotes: export::Remotes,
    counts: Arc<EventCounts>,
    live: Arc<Live>,
    /// Detection rules, fed from the events that concern them.
    detect: Option<crate::detect::DetectTx>,
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

/// The record of a reload of `what` (`acl`, `bans`, `passwords`, `tls`) from `file`: what
/// is in force now, or why the reload was refused.
pub(crate) fn reload_event(
    what: &str,
    file: &std::path::Path,
    outcome: Result<String, String>,
) -> SecurityEvent {
    let mut event = SecurityEvent::new(EventKind::ConfigReload, std::time::SystemTime::now());
    event.action = Some(what.to_owned());
    event.target = Some(file.display().to_string());
    event.reason = Some(match outcome {
        Ok(done) => done,
        Err(err) => format!("refused, the previous contents stay in force: {err}"),
    });
    event
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
            EventKind::AdminAction | EventKind::AdminAuthFailure
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
            trail: Arc::default(),
            remotes: export::Remotes::default(),
            counts: Arc::default(),
            live: Arc::default(),
            detect: None,
        }
    }

    /// Events to the log and into the trail `settings` describe (log only without a file).
    /// Fails if the trail or its key cannot be opened, so a broker never runs without the
    /// audit trail it was configured to keep.
    pub(crate) fn open(settings: &AuditSettings) -> Result<Self, String> {
        if settings.file.is_none() {
            return Ok(Self::log_only());
        }
        let trail = Arc::new(TrailCounts::default());
        let remotes = export::Remotes::start(settings)?;
        let writer = trail::Writer::open_exporting(settings, trail.clone(), remotes.outbox())?;
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue.max(1));
        std::thread::Builder::new()
            .name("bulwark-audit".into())
            .spawn(move || writer.run(&rx))
            .map_err(|err| format!("cannot start the audit writer: {err}"))?;
        Ok(Self {
            file: Some(tx),
            trail,
            remotes,
            counts: Arc::default(),
            live: Arc::default(),
            detect: None,
        })
    }

    /// Records `event`: to the log, the event list and streams, and the trail's queue (never
    /// waiting: dropped and counted if the queue is full).
    pub(crate) fn record(&self, event: SecurityEvent) {
        log(&event);
        self.counts.count(&event);
        // One allocation shared by the trail's queue, the recent list, event streams and the
        // detection rules.
        let event = Arc::new(event);
        self.live.push(&event);
        if let Some(detect) = &self.detect
            && matches!(
                event.kind,
                EventKind::AuthFailure
                    | EventKind::ReauthFailure
                    | EventKind::AclDenied
                    | EventKind::ProtocolViolation
            )
        {
            detect.send(crate::detect::Input::Event(event.clone()));
        }
        if let Some(tx) = &self.file
            && let Err(TrySendError::Full(_)) = tx.try_send(Msg::Event(event))
        {
            self.trail.unreported.fetch_add(1, Ordering::Relaxed);
            let dropped = self.trail.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "audit queue full: security events not written to the trail (they are in this log)"
                );
            }
        }
    }

    /// Feeds the detection rules too.
    pub(crate) fn with_detect(mut self, detect: Option<crate::detect::DetectTx>) -> Self {
        self.detect = detect;
        self
    }

    /// The way to the detection rules, if any rule is configured.
    pub(crate) fn detect(&self) -> Option<&crate::detect::DetectTx> {
        self.detect.as_ref()
    }

    /// Writes what is queued, the stop record and a last checkpoint, and waits until they are
    /// on disk, then (at most [`export::CLOSE_WAIT`]) until the remote exporters have delivered
    /// what they hold. Events recorded afterwards go to the log only.
    pub(crate) async fn close(&self) {
        let Some(tx) = self.file.clone() else { return };
        let (done, wait) = tokio::sync::oneshot::channel();
        // The queue may be full: wait for room off the runtime's threads.
        let sent = tokio::task::spawn_blocking(move || tx.send(Msg::Stop(done)).is_ok()).await;
        if matches!(sent, Ok(true)) {
            let _ = wait.await;
        }
        let remotes = self.remotes.clone();
        remotes.close();
        let _ = tokio::task::spawn_blocking(move || remotes.wait(export::CLOSE_WAIT)).await;
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

    /// Events the audit trail's queue had no room for.
    pub(crate) fn dropped(&self) -> u64 {
        self.trail.dropped.load(Ordering::Relaxed)
    }

    /// Each remote exporter's counts (none without `export_syslog` or `export_http`).
    pub(crate) fn export_counts(&self) -> Vec<export::ExportCounts> {
        self.remotes.counts()
    }

    /// Records and checkpoints written, and failed writes, since start.
    pub(crate) fn trail_counts(&self) -> (u64, u64, u64) {
        (
            self.trail.records.load(Ordering::Relaxed),
            self.trail.checkpoints.load(Ordering::Relaxed),
            self.trail.write_errors.load(Ordering::Relaxed),
        )
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
