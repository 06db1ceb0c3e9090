//! The engine's settings: capabilities announced in CONNACK and every per-session limit.

use std::time::Duration;

/// Settings of the broker engine, grouped by concern. Every field has a documented default
/// (`docs/config.md`, where the keys keep the names of the fields) and a documented behaviour at
/// the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// What one session may hold and ask for: keep alive, expiry, the inflight windows and the
    /// queue.
    pub sessions: SessionLimits,
    /// Sizes of what clients send: topics, client identifiers, user properties, packets, topic
    /// aliases.
    pub packets: PacketLimits,
    /// How much the retained store holds in all.
    pub retained: RetainedLimits,
    /// What the sessions of one user may hold together.
    pub per_user: UserQuotas,
    /// How often `$SYS/broker/...` topics are published; `None` disables them.
    pub sys_interval: Option<Duration>,
    /// When set, a 5.0 client that sends Request Response Information 1 gets Response
    /// Information `{prefix}{client_id}` in CONNACK, a base for its response topics.
    pub response_information_prefix: Option<String>,
    /// What happens to a PUBLISH the ACL denies when the client cannot be told with a reason
    /// code (QoS 0, or MQTT 3.1/3.1.1): dropped (acknowledged as usual) or the client is
    /// disconnected. A 5.0 QoS 1/2 PUBLISH always gets PUBACK/PUBREC 0x87.
    pub denied_publish: DeniedPublish,
}

/// What one session may hold and ask for: keep alive, expiry, the inflight windows and the
/// queue. Part of [`BrokerConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest keep alive a client may use, in seconds. A 5.0 client asking for more (or for
    /// 0, no keep alive, while this is below 65535) is told the maximum as Server Keep Alive;
    /// a 3.1/3.1.1 client is refused with return code 2 (identifier rejected), as Mosquitto does.
    pub max_keep_alive: u16,
    /// Longest Session Expiry Interval granted, in seconds. Larger requests (and 3.1.1 sessions
    /// with Clean Session 0, which never expire in the protocol) are cut to this; a 5.0 client is
    /// told the value in CONNACK.
    pub max_session_expiry_interval: u32,
    /// Receive Maximum announced to clients: QoS 2 messages from one client that may await
    /// PUBREL at once. One more: DISCONNECT 0x93 (3.1.1: the connection is closed).
    pub receive_maximum: u16,
    /// QoS 1 and 2 messages sent to one client and not yet acknowledged, at most; the
    /// client's own Receive Maximum lowers it. The rest wait in the session's queue.
    pub max_inflight_out: u16,
    /// Messages waiting in one session's queue (offline, or over its inflight window).
    pub max_queued_messages: usize,
    /// Payload and topic bytes waiting in one session's queue.
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for sessions whose client is offline.
    pub queue_qos0_offline: bool,
    /// What a session queue at `max_queued_messages` or `max_queued_bytes` does with one more
    /// QoS 1/2 message, once its queued QoS 0 messages are dropped.
    pub queue_full: crate::session::QueuePolicy,
    /// Subscriptions one session may hold; more are refused with SUBACK 0x97 (3.1.1: 0x80).
    pub max_subscriptions_per_session: usize,
}

/// Sizes of what clients send: topics, client identifiers, user properties, packets, topic
/// aliases. Part of [`BrokerConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketLimits {
    /// Levels of a topic name or filter; deeper ones are refused.
    pub max_topic_levels: usize,
    /// Bytes of a topic name or filter; longer ones are refused.
    pub max_topic_length: usize,
    /// Bytes of a client identifier; longer ones are refused at CONNECT.
    pub max_client_id_length: usize,
    /// User properties in one packet; more: CONNACK or DISCONNECT 0x97 (Quota exceeded).
    pub max_user_properties: usize,
    /// Maximum Packet Size announced in CONNACK (the server's decoder enforces it).
    pub max_packet_size: u32,
    /// Topic Alias Maximum announced to clients (aliases they may use towards the broker).
    pub topic_alias_maximum: u16,
    /// Whether the broker assigns topic aliases on what it sends to 5.0 clients that allow them.
    pub outbound_topic_aliases: bool,
}

/// How much the retained store holds in all. Part of [`BrokerConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedLimits {
    /// Retained messages kept in all; a message that would add one more is refused.
    pub max_retained_messages: usize,
    /// Bytes (topics and payloads) the retained store holds at most; a retained message that
    /// would take it over is refused like one over `max_retained_messages`. 0: no cap.
    pub max_retained_bytes: usize,
}

/// What the sessions of one user may hold together. Part of [`BrokerConfig`]; the default,
/// 0 everywhere, sets no cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserQuotas {
    /// Subscriptions one user's sessions may hold together; 0: no cap. At the cap a new
    /// filter gets SUBACK 0x97 (3.1.1: 0x80).
    pub max_subscriptions_per_user: usize,
    /// Retained messages one user may have stored; 0: no cap. At the cap a retained PUBLISH
    /// to a new topic gets 0x97 (5.0 QoS 1/2) and is not published.
    pub max_retained_per_user: usize,
    /// Retained bytes one user may have stored; 0: no cap. As `max_retained_per_user`.
    pub max_retained_bytes_per_user: usize,
}

/// What a denied PUBLISH that cannot carry a reason code does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeniedPublish {
    /// Dropped; QoS 1/2 are acknowledged as usual, so the client does not resend.
    #[default]
    Drop,
    /// The connection is closed (5.0: DISCONNECT 0x87 first).
    Disconnect,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            sessions: SessionLimits::default(),
            packets: PacketLimits::default(),
            retained: RetainedLimits::default(),
            per_user: UserQuotas::default(),
            sys_interval: Some(Duration::from_secs(10)),
            response_information_prefix: None,
            denied_publish: DeniedPublish::Drop,
        }
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_keep_alive: 65_535,
            max_session_expiry_interval: 7 * 24 * 3600,
            receive_maximum: 128,
            max_inflight_out: 128,
            max_queued_messages: 1000,
            max_queued_bytes: 8 * 1024 * 1024,
            queue_qos0_offline: false,
            queue_full: crate::session::QueuePolicy::DropNewest,
            max_subscriptions_per_session: 10_000,
        }
    }
}

impl Default for PacketLimits {
    fn default() -> Self {
        Self {
            max_topic_levels: 128,
            max_topic_length: 4096,
            max_client_id_length: 256,
            max_user_properties: 64,
            max_packet_size: 1024 * 1024,
            topic_alias_maximum: 64,
            outbound_topic_aliases: true,
        }
    }
}

impl Default for RetainedLimits {
    fn default() -> Self {
        Self {
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
        }
    }
}

impl BrokerConfig {
    /// Whether a topic name or filter is within `max_topic_length` and `max_topic_levels`.
    #[inline]
    pub(crate) fn topic_fits(&self, text: &str) -> bool {
        text.len() <= self.packets.max_topic_length
            && text.split('/').count() <= self.packets.max_topic_levels
    }
}
