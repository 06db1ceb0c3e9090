//! Admission control in the server: every accepted socket asks the shared
//! [`bulwark_limits::admission::Admission`] before any TLS, WebSocket or MQTT work is spent
//! on it, and holds a [`Permit`] for as long as it lives.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_limits::admission::{Admission, AdmissionSettings, Refused};

use crate::audit::Audit;
use crate::router::Traffic;

/// Refusals of one source are recorded as security events at most this often.
const EVENT_INTERVAL: Duration = Duration::from_secs(10);
/// Sources whose last event time is remembered, at most.
const MAX_EVENT_SOURCES: usize = 10_000;

/// The admission state shared by every listener.
#[derive(Debug)]
pub(crate) struct Gate {
    state: Mutex<Admission>,
    audit: Audit,
    /// Counts the sockets refused, for `$SYS`.
    traffic: Arc<Traffic>,
    bans: Arc<crate::bans::Bans>,
    /// Set while memory is over its watermark: every new socket is refused.
    pub(crate) overloaded: AtomicBool,
    last_events: Mutex<std::collections::HashMap<IpAddr, Instant>>,
}

impl Gate {
    pub(crate) fn new(
        settings: AdmissionSettings,
        audit: Audit,
        traffic: Arc<Traffic>,
        bans: Arc<crate::bans::Bans>,
    ) -> Self {
        Self {
            state: Mutex::new(Admission::new(settings)),
            audit,
            traffic,
            bans,
            overloaded: AtomicBool::new(false),
            last_events: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Admission> {
        crate::sync::lock(&self.state)
    }

    /// Admits a socket from `ip` (`per_source`: false for a trusted proxy's own address, which
    /// counts in the totals only until the PROXY header names the client).
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        listener: &str,
        per_source: bool,
        at: tokio::time::Instant,
    ) -> Result<Permit, Refused> {
        let now = Instant::now();
        let result = if self.overloaded.load(Ordering::Relaxed) {
            Err(Refused::Overloaded)
        } else if per_source && self.bans.address_ban(ip).is_some() {
            Err(Refused::Banned)
        } else if per_source {
            self.lock().admit(ip, now)
        } else {
            self.lock().admit_counted(ip)
        };
        match result {
            Ok(()) => Ok(Permit {
                at,
                gate: self.clone(),
                ip: Mutex::new(ip),
                done: AtomicBool::new(false),
            }),
            Err(why) => {
                self.traffic.refuse(why);
                self.report(ip, listener, why, now);
                Err(why)
            }
        }
    }

    /// A security event for a refusal of one source, at most once per source every
    /// [`EVENT_INTERVAL`]; a full broker is logged, not recorded per socket.
    fn report(&self, ip: IpAddr, listener: &str, why: Refused, now: Instant) {
        if !why.is_per_source() {
            return;
        }
        {
            let mut last = crate::sync::lock(&self.last_events);
            if last
                .get(&ip)
                .is_some_and(|t| now.saturating_duration_since(*t) < EVENT_INTERVAL)
            {
                return;
            }
            if last.len() >= MAX_EVENT_SOURCES {
                last.retain(|_, t| now.saturating_duration_since(*t) < EVENT_INTERVAL);
                if last.len() >= MAX_EVENT_SOURCES {
                    return;
                }
            }
            last.insert(ip, now);
        }
        let kind = if why == Refused::Banned {
            EventKind::BannedRefused
        } else {
            EventKind::ConnectionRefused
        };
        let mut event = SecurityEvent::new(kind, std::time::SystemTime::now());
        event.listener = Some(listener.to_owned());
        event.remote = Some(ip.to_string());
        event.reason = Some(why.as_str().to_owned());
        self.audit.record(event);
    }
}

/// One admitted socket's place: released when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    /// When the socket was accepted: the CONNECT timeout counts from then, every handshake
    /// included.
    pub(crate) at: tokio::time::Instant,
    gate: Arc<Gate>,
    ip: Mutex<IpAddr>,
    done: AtomicBool,
}

impl Permit {
    /// The connection is authenticated: it no longer counts as in its handshake.
    pub(crate) fn handshake_done(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            let ip = *crate::sync::lock(&self.ip);
            self.gate.lock().handshake_done(ip);
        }
    }

    /// The PROXY header named the client behind a trusted proxy: the socket now counts
    /// against the client's address, which must itself be admitted.
    pub(crate) fn rebind(&self, client: IpAddr, listener: &str) -> Result<(), Refused> {
        let now = Instant::now();
        let mut ip = crate::sync::lock(&self.ip);
        let result = {
            let mut state = self.gate.lock();
            let result = if self.gate.bans.address_ban(client).is_some() {
                Err(Refused::Banned)
            } else {
                state.admit(client, now)
            };
            if result.is_ok() {
                state.release(*ip, true);
            }
            result
        };
        match result {
            Ok(()) => {
                *ip = client;
                Ok(())
            }
            Err(why) => {
                drop(ip);
                self.gate.traffic.refuse(why);
                self.gate.report(client, listener, why, now);
                Err(why)
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let ip = *self
            .ip
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let in_handshake = !*self.done.get_mut();
        self.gate.lock().release(ip, in_handshake);
    }
}
