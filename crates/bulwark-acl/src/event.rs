//! The one structured record of a security-relevant event: every authentication success and
//! failure, every ban and forced disconnect. The server writes each as one JSON line to the
//! audit file and to the log; keeping one type (and one sink) is what lets the audit file
//! become tamper-evident later without touching the places that raise events.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client was authenticated at CONNECT.
    AuthSuccess,
    /// A client's credentials were refused at CONNECT.
    AuthFailure,
    /// A 5.0 client re-authenticated during its session.
    ReauthSuccess,
    /// A 5.0 client's re-authentication failed; the connection is closed.
    ReauthFailure,
    /// A source address was banned after repeated failures.
    Ban,
    /// A connection from a banned address was refused.
    BannedRefused,
    /// A login was refused without checking it: too many attempts queued in backoff.
    Throttled,
    /// The broker closed a live connection for a security reason (user removed or disabled,
    /// credentials expired, certificate revoked).
    ForcedDisconnect,
    /// The ACL refused a PUBLISH, SUBSCRIBE, will or retained delivery.
    AclDenied,
    /// An ACL reload (or a resumed session's new identity) removed a subscription.
    SubscriptionRevoked,
    /// A client identifier that belongs to another user's session was refused.
    ClientIdRefused,
    /// A socket was closed at accept by admission control (a per-source cap or rate).
    ConnectionRefused,
    /// A session's queue was full: messages were dropped, or its client disconnected.
    SlowConsumer,
    /// Memory went over its watermark: new connections refused, queued messages shed.
    Overload,
    /// The broker closed a connection whose client broke the protocol (a malformed packet, an
    /// invalid topic alias, ...) or one of its limits (a QoS 2 flood past the Receive
    /// Maximum, too many user properties, a packet over the maximum size, ...).
    ProtocolViolation,
    /// A request to the admin API that changed something, or tried to (with who made it, what
    /// it was about and how it ended).
    AdminAction,
    /// A request to the admin API without a valid token.
    AdminAuthFailure,
    /// A file the broker reads while it runs (the ACL, the ban list, the password store, TLS
    /// certificates) was reloaded, or a reload was refused and the previous contents stay.
    ConfigReload,
    /// A detection rule fired (`docs/detection.md`): which, about whom, what was measured and
    /// what the broker did about it.
    Detection,
}

impl EventKind {
    /// The name written in the audit file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AuthSuccess => "auth_success",
            Self::AuthFailure => "auth_failure",
            Self::ReauthSuccess => "reauth_success",
            Self::ReauthFailure => "reauth_failure",
            Self::Ban => "ban",
            Self::BannedRefused => "banned_refused",
            Self::Throttled => "throttled",
            Self::ForcedDisconnect => "forced_disconnect",
            Self::AclDenied => "acl_denied",
            Self::SubscriptionRevoked => "subscription_revoked",
            Self::ClientIdRefused => "client_id_refused",
            Self::ConnectionRefused => "connection_refused",
            Self::SlowConsumer => "slow_consumer",
            Self::Overload => "overload",
            Self::ProtocolViolation => "protocol_violation",
            Self::AdminAction => "admin_action",
            Self::AdminAuthFailure => "admin_auth_failure",
            Self::ConfigReload => "config_reload",
            Self::Detection => "detection",
        }
    }

    /// Whether the event means something was refused (logged as a warning).
    pub const fn is_refusal(self) -> bool {
        !matches!(
            self,
            Self::AuthSuccess | Self::ReauthSuccess | Self::AdminAction | Self::ConfigReload
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One security event. Fields that do not apply are left out of the JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityEvent {
    /// When, as RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What happened.
    pub kind: EventKind,
    /// The listener's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// The client's address (`ip:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The MQTT client identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The username the client presented or was authenticated as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The authentication method (`password`, `certificate`, `jwt`, `SCRAM-SHA-256`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// What the client tried: `publish`, `subscribe`, `will`, `retained`, `connect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The topic or topic filter concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who did it, for admin actions: `token:{name}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What an admin action was about (a client id, a ban's target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl SecurityEvent {
    /// An event of `kind` at `time`, every other field empty.
    pub fn new(kind: EventKind, time: SystemTime) -> Self {
        Self {
            time: rfc3339(time),
            kind,
            listener: None,
            remote: None,
            client_id: None,
            username: None,
            method: None,
            action: None,
            topic: None,
            reason: None,
            actor: None,
            target: None,
        }
    }

    /// The event as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        // Serializing plain strings and an enum cannot fail; fall back to a minimal record
        // rather than lose the event if it ever did.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"time\":\"{}\",\"kind\":\"{}\"}}",
                self.time,
                self.kind.as_str()
            )
        })
    }
}

/// `time` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (times before 1970 are written as the epoch).
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the usual era-based
/// conversion: 400-year eras of 146,097 days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_176_799); // 2026-12-02T01:59:59Z
        assert_eq!(rfc3339(t), "2026-12-02T01:59:59.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_107_542_400); // 2100-03-01
        assert_eq!(rfc3339(t), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn json_line_leaves_out_empty_fields() {
        let mut event = SecurityEvent::new(EventKind::AuthFailure, UNIX_EPOCH);
        event.username = Some("al\"ice".into());
        event.reason = Some("bad username or password".into());
        let line = event.to_json_line();
        assert_eq!(
            line,
            r#"{"time":"1970-01-01T00:00:00.000Z","kind":"auth_failure","username":"al\"ice","reason":"bad username or password"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["kind"], "auth_failure");
        assert!(EventKind::AuthFailure.is_refusal());
        assert!(!EventKind::AuthSuccess.is_refusal());
    }
}
