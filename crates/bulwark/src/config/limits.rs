//! The sections that bound the broker's work: `[limits]`, `[mqtt]`, `[sys]`, `[server]`,
//! `[storage]`, `[admission]`, `[bans]` and `[rate]` with its `[[rate.override]]` tables.

use std::path::Path;
use std::time::Duration;

use bulwark_acl::Cidr;
use bulwark_core::QueuePolicy;
use bulwark_limits::admission::AdmissionSettings;
use bulwark_limits::rate::{RateLimit, RateOverride};
use bulwark_proto::PROTOCOL_MAX_PACKET_SIZE;
use bulwark_server::{ServerConfig, StorageSettings};
use bulwark_store::SyncPolicy;
use serde::Deserialize;

use super::STORE_FILE;
use super::fields::{Field, Problems, describe, section, to_u16, to_u32, to_usize};

/// `limits.queue_full`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum QueueFullName {
    DropNewest,
    DropOldest,
    Disconnect,
}

section! {
    /// `[limits]`.
    LimitsSection {
        max_packet_size: u64,
        max_unauthenticated_packet_size: u64,
        connect_timeout: u64,
        write_timeout: u64,
        max_keep_alive: u64,
        max_session_expiry_interval: u64,
        receive_maximum: u64,
        max_inflight_out: u64,
        max_queued_messages: u64,
        max_queued_bytes: u64,
        queue_full: QueueFullName,
        max_subscriptions_per_session: u64,
        max_topic_levels: u64,
        max_topic_length: u64,
        max_client_id_length: u64,
        max_user_properties: u64,
        max_retained_messages: u64,
        max_retained_bytes: u64,
        topic_alias_maximum: u64,
        max_connections_per_user: u64,
        max_subscriptions_per_user: u64,
        max_retained_per_user: u64,
        max_retained_bytes_per_user: u64,
    }
}

section! {
    /// `[mqtt]`.
    MqttSection {
        queue_qos0_offline: bool,
        outbound_topic_aliases: bool,
        response_information_prefix: String,
    }
}

section! {
    /// `[sys]`.
    SysSection {
        interval: u64,
    }
}

section! {
    /// `[server]`.
    ServerSection {
        shutdown_grace: u64,
        workers: u64,
        tls_watch_interval: u64,
        memory_watermark: u64,
    }
}

/// `storage.kind`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum StorageKind {
    Disk,
    Memory,
}

/// `storage.sync`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum SyncName {
    Always,
    Periodic,
}

section! {
    /// `[storage]`.
    StorageSection {
        kind: StorageKind,
        path: String,
        sync: SyncName,
        sync_interval: u64,
    }
}

section! {
    /// `[admission]`: connection caps and rates, before any TLS work.
    AdmissionSection {
        max_connections: u64,
        max_per_address: u64,
        max_per_prefix: u64,
        max_handshakes: u64,
        max_handshakes_per_address: u64,
        rate: u64,
        burst: u64,
        cooldown: u64,
        exempt: Vec<String>,
        max_tracked: u64,
    }
}

section! {
    /// `[bans]`.
    BansSection {
        file: String,
        offences: u64,
        flaps: u64,
        window: u64,
        duration: u64,
        exempt: Vec<String>,
    }
}

section! {
    /// `[rate]`: the default per-client rate limit.
    RateSection {
        messages_per_second: u64,
        messages_burst: u64,
        bytes_per_second: u64,
        bytes_burst: u64,
        overrides = "override": Vec<Field<RateOverrideSection>>,
    }
}

section! {
    /// One `[[rate.override]]` table.
    RateOverrideSection {
        listener: String,
        user: Vec<String>,
        group: Vec<String>,
        messages_per_second: u64,
        messages_burst: u64,
        bytes_per_second: u64,
        bytes_burst: u64,
    }
}

/// `[limits]`; returns `max_connections_per_user`, which belongs to the authentication
/// settings and is applied once `[auth]` is read.
pub(super) fn check_limits(
    p: &mut Problems,
    l: &LimitsSection,
    config: &mut ServerConfig,
) -> Option<u64> {
    let s = "limits";
    let b = &mut config.broker;
    let max_pkt = u64::from(PROTOCOL_MAX_PACKET_SIZE);
    if let Some(v) = p.integer(&l.max_packet_size, s, "max_packet_size", 64, max_pkt) {
        config.decoder.max_packet_size = to_u32(v);
        b.packets.max_packet_size = to_u32(v);
    }
    if let Some(v) = p.integer(
        &l.max_unauthenticated_packet_size,
        s,
        "max_unauthenticated_packet_size",
        64,
        max_pkt,
    ) {
        config.decoder.max_unauthenticated_packet_size = to_u32(v);
    }
    if let Some(v) = p.integer(&l.connect_timeout, s, "connect_timeout", 1, 3600) {
        config.connect_timeout = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&l.write_timeout, s, "write_timeout", 1, 3600) {
        config.write_timeout = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&l.max_keep_alive, s, "max_keep_alive", 1, 65_535) {
        b.sessions.max_keep_alive = to_u16(v);
    }
    if let Some(v) = p.integer(
        &l.max_session_expiry_interval,
        s,
        "max_session_expiry_interval",
        0,
        u64::from(u32::MAX),
    ) {
        b.sessions.max_session_expiry_interval = to_u32(v);
    }
    if let Some(v) = p.integer(&l.receive_maximum, s, "receive_maximum", 1, 65_535) {
        b.sessions.receive_maximum = to_u16(v);
    }
    if let Some(v) = p.integer(&l.max_inflight_out, s, "max_inflight_out", 1, 65_535) {
        b.sessions.max_inflight_out = to_u16(v);
    }
    let count = 100_000_000;
    let bytes = 1 << 40;
    if let Some(v) = p.integer(&l.max_queued_messages, s, "max_queued_messages", 0, count) {
        b.sessions.max_queued_messages = to_usize(v);
    }
    if let Some(v) = p.integer(&l.max_queued_bytes, s, "max_queued_bytes", 0, bytes) {
        b.sessions.max_queued_bytes = to_usize(v);
    }
    if let Some(v) = p.integer(
        &l.max_subscriptions_per_session,
        s,
        "max_subscriptions_per_session",
        1,
        10_000_000,
    ) {
        b.sessions.max_subscriptions_per_session = to_usize(v);
    }
    if let Some(v) = p.integer(&l.max_topic_levels, s, "max_topic_levels", 1, 65_535) {
        b.packets.max_topic_levels = to_usize(v);
    }
    if let Some(v) = p.integer(&l.max_topic_length, s, "max_topic_length", 1, 65_535) {
        b.packets.max_topic_length = to_usize(v);
    }
    if let Some(v) = p.integer(
        &l.max_client_id_length,
        s,
        "max_client_id_length",
        23,
        65_535,
    ) {
        b.packets.max_client_id_length = to_usize(v);
    }
    if let Some(v) = p.integer(&l.max_user_properties, s, "max_user_properties", 0, 65_535) {
        b.packets.max_user_properties = to_usize(v);
    }
    if let Some(v) = p.integer(
        &l.max_retained_messages,
        s,
        "max_retained_messages",
        0,
        count,
    ) {
        b.retained.max_retained_messages = to_usize(v);
    }
    if let Some(v) = p.integer(&l.topic_alias_maximum, s, "topic_alias_maximum", 0, 65_535) {
        b.packets.topic_alias_maximum = to_u16(v);
    }
    if let Some(v) = p.choice(
        &l.queue_full,
        s,
        "queue_full",
        "use \"drop_newest\", \"drop_oldest\" or \"disconnect\"",
    ) {
        b.sessions.queue_full = match v {
            QueueFullName::DropNewest => QueuePolicy::DropNewest,
            QueueFullName::DropOldest => QueuePolicy::DropOldest,
            QueueFullName::Disconnect => QueuePolicy::Disconnect,
        };
    }
    if let Some(v) = p.integer(&l.max_retained_bytes, s, "max_retained_bytes", 0, bytes) {
        b.retained.max_retained_bytes = to_usize(v);
    }
    if let Some(v) = p.integer(
        &l.max_subscriptions_per_user,
        s,
        "max_subscriptions_per_user",
        0,
        count,
    ) {
        b.per_user.max_subscriptions_per_user = to_usize(v);
    }
    if let Some(v) = p.integer(
        &l.max_retained_per_user,
        s,
        "max_retained_per_user",
        0,
        count,
    ) {
        b.per_user.max_retained_per_user = to_usize(v);
    }
    if let Some(v) = p.integer(
        &l.max_retained_bytes_per_user,
        s,
        "max_retained_bytes_per_user",
        0,
        bytes,
    ) {
        b.per_user.max_retained_bytes_per_user = to_usize(v);
    }
    p.integer(
        &l.max_connections_per_user,
        s,
        "max_connections_per_user",
        0,
        count,
    )
}

pub(super) fn check_mqtt(p: &mut Problems, m: &MqttSection, config: &mut ServerConfig) {
    let s = "mqtt";
    if let Some(v) = p.boolean(&m.queue_qos0_offline, s, "queue_qos0_offline") {
        config.broker.sessions.queue_qos0_offline = v;
    }
    if let Some(v) = p.boolean(&m.outbound_topic_aliases, s, "outbound_topic_aliases") {
        config.broker.packets.outbound_topic_aliases = v;
    }
    if let Some(v) = p.string(
        &m.response_information_prefix,
        s,
        "response_information_prefix",
    ) {
        if v.contains(['+', '#']) || v.contains('\0') {
            p.push(format!(
                "mqtt.response_information_prefix = \"{v}\": must not contain +, # or NUL"
            ));
        } else {
            config.broker.response_information_prefix = Some(v.to_owned());
        }
    }
}

pub(super) fn check_server(p: &mut Problems, t: &ServerSection, config: &mut ServerConfig) {
    let s = "server";
    if let Some(v) = p.integer(&t.shutdown_grace, s, "shutdown_grace", 0, 3600) {
        config.shutdown_grace = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&t.memory_watermark, s, "memory_watermark", 0, 1 << 50) {
        config.memory_watermark = v;
    }
    if let Some(v) = p.integer(&t.tls_watch_interval, s, "tls_watch_interval", 1, 3600) {
        config.tls_watch_interval = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&t.workers, s, "workers", 0, 1024) {
        config.workers = usize::try_from(v).unwrap_or(1024);
    }
}

/// `[storage]`: on disk in `data_dir` unless the file says otherwise.
pub(super) fn check_storage(
    p: &mut Problems,
    storage: Option<&StorageSection>,
    base: &Path,
    data_dir: &Path,
) -> StorageSettings {
    let s = "storage";
    let mut settings = StorageSettings {
        path: Some(data_dir.join(STORE_FILE)),
        sync: SyncPolicy::Always,
    };
    let Some(t) = storage else {
        return settings;
    };
    let path = p.path(&t.path, s, "path", base);
    match p.choice(&t.kind, s, "kind", "use \"disk\" or \"memory\"") {
        None if t.kind.is_some() => {}
        None | Some(StorageKind::Disk) => {
            if let Some(path) = path {
                settings.path = Some(path);
            }
        }
        Some(StorageKind::Memory) => {
            settings.path = None;
            if path.is_some() {
                p.push("storage.path: not used with kind = \"memory\"".to_owned());
            }
        }
    }
    let interval = p
        .integer(&t.sync_interval, s, "sync_interval", 1, 3_600)
        .map(Duration::from_secs);
    match p.choice(&t.sync, s, "sync", "use \"always\" or \"periodic\"") {
        None if t.sync.is_some() => {}
        None | Some(SyncName::Always) => {
            if interval.is_some() {
                p.push("storage.sync_interval: only used with sync = \"periodic\"".to_owned());
            }
        }
        Some(SyncName::Periodic) => {
            settings.sync = SyncPolicy::Periodic(interval.unwrap_or(Duration::from_secs(1)));
        }
    }
    settings
}

pub(super) fn check_admission(p: &mut Problems, t: &AdmissionSection, a: &mut AdmissionSettings) {
    let s = "admission";
    let count = 100_000_000;
    if let Some(v) = p.integer(&t.max_connections, s, "max_connections", 0, count) {
        a.max_connections = to_usize(v);
    }
    if let Some(v) = p.integer(&t.max_per_address, s, "max_per_address", 0, count) {
        a.max_per_address = to_usize(v);
    }
    if let Some(v) = p.integer(&t.max_per_prefix, s, "max_per_prefix", 0, count) {
        a.max_per_prefix = to_usize(v);
    }
    if let Some(v) = p.integer(&t.max_handshakes, s, "max_handshakes", 0, count) {
        a.max_handshakes = to_usize(v);
    }
    if let Some(v) = p.integer(
        &t.max_handshakes_per_address,
        s,
        "max_handshakes_per_address",
        0,
        count,
    ) {
        a.max_handshakes_per_address = to_usize(v);
    }
    if let Some(v) = p.integer(&t.rate, s, "rate", 0, 1_000_000) {
        a.rate = to_u32(v);
    }
    if let Some(v) = p.integer(&t.burst, s, "burst", 1, 1_000_000) {
        a.burst = to_u32(v);
    }
    if let Some(v) = p.integer(&t.cooldown, s, "cooldown", 0, 86_400) {
        a.cooldown = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&t.max_tracked, s, "max_tracked", 1, count) {
        a.max_tracked = to_usize(v);
    }
    if let Some(exempt) = cidr_list(p, &t.exempt, s, "exempt") {
        a.exempt = exempt;
    }
}

pub(super) fn check_bans(
    p: &mut Problems,
    t: &BansSection,
    b: &mut bulwark_server::bans::BanSettings,
    base: &Path,
) {
    let s = "bans";
    b.file = p.path(&t.file, s, "file", base);
    if let Some(v) = p.integer(&t.offences, s, "offences", 0, 1_000_000) {
        b.offences = to_u32(v);
    }
    if let Some(v) = p.integer(&t.flaps, s, "flaps", 0, 1_000_000) {
        b.flaps = to_u32(v);
    }
    if let Some(v) = p.integer(&t.window, s, "window", 1, 86_400) {
        b.window = Duration::from_secs(v);
    }
    if let Some(v) = p.integer(&t.duration, s, "duration", 1, 365 * 86_400) {
        b.duration = Duration::from_secs(v);
    }
    if let Some(exempt) = cidr_list(p, &t.exempt, s, "exempt") {
        b.exempt = exempt;
    }
}

pub(super) fn check_rates(
    p: &mut Problems,
    t: &RateSection,
    rates: &mut bulwark_limits::rate::RateSettings,
) {
    rates.default = rate_limit(
        p,
        [
            &t.messages_per_second,
            &t.messages_burst,
            &t.bytes_per_second,
            &t.bytes_burst,
        ],
        "rate",
    );
    match &t.overrides {
        None => {}
        Some(Field::Given(items)) => {
            for (i, item) in items.iter().enumerate() {
                let section = format!("rate.override[{i}]");
                let Field::Given(o) = item else {
                    p.push(format!("{section}: expected a table"));
                    continue;
                };
                p.unknown_keys(o, &section);
                let listener = p
                    .string(&o.listener, &section, "listener")
                    .map(str::to_owned);
                let users = p.string_list(&o.user, &section, "user");
                let groups = p.string_list(&o.group, &section, "group");
                let limit = rate_limit(
                    p,
                    [
                        &o.messages_per_second,
                        &o.messages_burst,
                        &o.bytes_per_second,
                        &o.bytes_burst,
                    ],
                    &section,
                );
                rates.overrides.push(RateOverride {
                    listener,
                    users,
                    groups,
                    limit,
                });
            }
        }
        Some(Field::Wrong(other)) => p.push(format!(
            "rate.override: expected [[rate.override]] tables, found {}",
            describe(other)
        )),
    }
}

/// The four keys of a rate limit (messages per second and burst, bytes per second and burst);
/// a burst left out is one second's worth.
fn rate_limit(
    p: &mut Problems,
    [mps, mb, bps, bb]: [&Option<Field<u64>>; 4],
    s: &str,
) -> RateLimit {
    let mut limit = RateLimit::default();
    if let Some(v) = p.integer(mps, s, "messages_per_second", 0, 10_000_000) {
        limit.messages_per_second = to_u32(v);
    }
    limit.messages_burst = match p.integer(mb, s, "messages_burst", 1, 10_000_000) {
        Some(v) => to_u32(v),
        None => limit.messages_per_second,
    };
    if let Some(v) = p.integer(bps, s, "bytes_per_second", 0, 1 << 40) {
        limit.bytes_per_second = v;
    }
    limit.bytes_burst = match p.integer(bb, s, "bytes_burst", 1, 1 << 40) {
        Some(v) => v,
        None => limit.bytes_per_second,
    };
    limit
}

/// A list of networks (`10.0.0.0/8`, `::1`), if the key is there.
pub(super) fn cidr_list(
    p: &mut Problems,
    field: &Option<Field<Vec<String>>>,
    s: &str,
    key: &str,
) -> Option<Vec<Cidr>> {
    field.as_ref()?;
    let mut out = Vec::new();
    for text in p.string_list(field, s, key) {
        match Cidr::parse(&text) {
            Ok(cidr) => out.push(cidr),
            Err(err) => p.push(format!("{s}.{key}: {err}")),
        }
    }
    Some(out)
}
