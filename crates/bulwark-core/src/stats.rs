//! What the engine counts ([`Stats`]) and publishes of it under `$SYS` ([`Sys`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_proto::{PublishProperties, QoS, TopicName};
use bytes::Bytes;

use crate::message::Message;

/// Counters, read for `$SYS` and metrics, grouped by what they count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted, refused and expelled.
    pub connections: ConnectionCounts,
    /// PUBLISH packets received, sent and expired.
    pub messages: MessageCounts,
    /// Messages dropped on their way to a subscriber.
    pub dropped: DropCounts,
    /// Bytes read from and written to clients.
    pub bytes: ByteCounts,
    /// What the ACL refused.
    pub denied: DenialCounts,
    /// Retained messages refused because `max_retained_messages` was reached.
    pub retained_refused: u64,
    /// Authorization events dropped because the caller did not drain them.
    pub events_dropped: u64,
}

/// Connections, counted since start. Part of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Connections accepted since start.
    pub total: u64,
    /// Sockets refused by admission control before any handshake (reported by the server
    /// with [`crate::Broker::add_refused`]).
    pub refused: u64,
    /// Connections closed because their client broke the protocol or a limit (reported by
    /// the server with [`crate::Broker::add_expelled`]: it also sees what the decoder refuses).
    pub expelled: u64,
}

/// PUBLISH packets, counted since start. Part of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// PUBLISH packets received from clients.
    pub received: u64,
    /// PUBLISH packets sent to clients.
    pub sent: u64,
    /// Messages discarded because their Message Expiry Interval ran out before delivery.
    pub expired: u64,
    /// `received` by the QoS of the PUBLISH (0, 1, 2).
    pub received_by_qos: [u64; 3],
    /// `sent` by the QoS of the PUBLISH (0, 1, 2).
    pub sent_by_qos: [u64; 3],
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub received_payload_by_qos: [u64; 3],
    /// Payload bytes of the PUBLISH packets sent, by QoS.
    pub sent_payload_by_qos: [u64; 3],
}

impl MessageCounts {
    /// A PUBLISH received with `qos` (0 to 2) and `payload` bytes.
    #[inline]
    pub(crate) fn count_received(&mut self, qos: u8, payload: usize) {
        self.received += 1;
        let at = usize::from(qos);
        if let (Some(n), Some(b)) = (
            self.received_by_qos.get_mut(at),
            self.received_payload_by_qos.get_mut(at),
        ) {
            *n += 1;
            *b += payload as u64;
        }
    }

    /// A PUBLISH sent with `qos` (0 to 2) and `payload` bytes.
    #[inline]
    pub(crate) fn count_sent(&mut self, qos: u8, payload: usize) {
        self.sent += 1;
        let at = usize::from(qos);
        if let (Some(n), Some(b)) = (
            self.sent_by_qos.get_mut(at),
            self.sent_payload_by_qos.get_mut(at),
        ) {
            *n += 1;
            *b += payload as u64;
        }
    }
}

/// Messages not delivered to a subscriber, by cause. Part of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Messages not queued because a session's queue was full.
    pub queue_full: u64,
    /// Messages not sent because they were larger than the subscriber's Maximum Packet Size.
    pub too_large: u64,
    /// QoS 0 messages not queued for offline sessions (`queue_qos0_offline = false`).
    pub offline_qos0: u64,
    /// Queued messages dropped because memory was over its watermark ([`crate::Broker::shed`]).
    pub shed: u64,
    /// QoS 0 messages the server dropped because their connection's unsent backlog was over
    /// `max_queued_bytes` (reported with [`crate::Broker::add_dropped_backlog`]).
    pub backlog: u64,
}

/// Traffic, reported by the server with [`crate::Broker::add_traffic`]. Part of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteCounts {
    /// Bytes read from clients.
    pub received: u64,
    /// Bytes written to clients.
    pub sent: u64,
}

/// What the ACL refused. Part of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DenialCounts {
    /// PUBLISH packets (and wills) the ACL refused.
    pub publishes: u64,
    /// Subscriptions the ACL refused or removed.
    pub subscriptions: u64,
}

/// The version `$SYS/broker/version` reports.
const VERSION: &str = concat!("bulwark ", env!("CARGO_PKG_VERSION"));

/// What `$SYS` reports besides the counters: the engine's tables, measured at publication.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gauges {
    /// Connected clients.
    pub(crate) connected: usize,
    /// Sessions, connected or parked.
    pub(crate) sessions: usize,
    /// Subscriptions of all sessions.
    pub(crate) subscriptions: usize,
    /// Retained messages.
    pub(crate) retained: usize,
    /// Bytes of retained messages.
    pub(crate) retained_bytes: usize,
}

/// The `$SYS` schedule: since when the broker runs, and when the next publication is due.
#[derive(Debug)]
pub(crate) struct Sys {
    started: Instant,
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Sys {
    /// Publications every `interval` (`None`: never), the first at `now`.
    pub(crate) fn new(interval: Option<Duration>, now: Instant) -> Self {
        Self {
            started: now,
            interval,
            next: interval.map(|_| now),
        }
    }

    /// When the next publication is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a publication is due at `now`; if so, the one after is scheduled.
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        match (self.next, self.interval) {
            (Some(at), Some(interval)) if at <= now => {
                self.next = now.checked_add(interval);
                true
            }
            _ => false,
        }
    }

    /// The retained `$SYS/broker/...` messages for `stats` and `gauges` at `now`.
    pub(crate) fn messages(
        &self,
        stats: &Stats,
        gauges: Gauges,
        now: Instant,
    ) -> Vec<Arc<Message>> {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let s = stats;
        let values: [(&str, String); 18] = [
            ("version", VERSION.to_owned()),
            ("uptime", format!("{uptime} seconds")),
            ("clients/connected", gauges.connected.to_string()),
            ("clients/total", gauges.sessions.to_string()),
            ("clients/connections", s.connections.total.to_string()),
            ("messages/received", s.messages.received.to_string()),
            ("messages/sent", s.messages.sent.to_string()),
            (
                "messages/dropped",
                (s.dropped.queue_full + s.dropped.too_large + s.dropped.shed + s.dropped.backlog)
                    .to_string(),
            ),
            ("bytes/received", s.bytes.received.to_string()),
            ("bytes/sent", s.bytes.sent.to_string()),
            ("subscriptions/count", gauges.subscriptions.to_string()),
            ("retained messages/count", gauges.retained.to_string()),
            ("retained messages/bytes", gauges.retained_bytes.to_string()),
            ("messages/expired", s.messages.expired.to_string()),
            ("clients/refused", s.connections.refused.to_string()),
            ("clients/expelled", s.connections.expelled.to_string()),
            ("messages/denied", s.denied.publishes.to_string()),
            ("subscriptions/denied", s.denied.subscriptions.to_string()),
        ];
        values
            .into_iter()
            .filter_map(|(name, value)| {
                let topic = TopicName::new(&format!("$SYS/broker/{name}")).ok()?;
                Some(Arc::new(Message {
                    topic,
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: PublishProperties::default(),
                    expires_at: None,
                    publisher: None,
                }))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn publications_follow_the_interval_and_report_the_counters() {
        let now = Instant::now();
        let mut sys = Sys::new(Some(Duration::from_secs(10)), now);
        assert_eq!(sys.next_due(), Some(now));
        assert!(sys.take_due(now));
        assert!(!sys.take_due(now + Duration::from_secs(9)));
        assert!(sys.take_due(now + Duration::from_secs(10)));
        assert_eq!(sys.next_due(), Some(now + Duration::from_secs(20)));
        let stats = Stats {
            dropped: DropCounts {
                queue_full: 1,
                shed: 2,
                ..DropCounts::default()
            },
            ..Stats::default()
        };
        let gauges = Gauges {
            connected: 3,
            ..Gauges::default()
        };
        let messages = sys.messages(&stats, gauges, now + Duration::from_secs(5));
        let value = |name: &str| {
            let m = messages
                .iter()
                .find(|m| m.topic.as_str() == format!("$SYS/broker/{name}"))
                .unwrap();
            assert!(m.retain);
            String::from_utf8(m.payload.to_vec()).unwrap()
        };
        assert_eq!(value("uptime"), "5 seconds");
        assert_eq!(value("messages/dropped"), "3");
        assert_eq!(value("clients/connected"), "3");
        assert_eq!(messages.len(), 18);
        assert!(!Sys::new(None, now).take_due(now));
    }
}
