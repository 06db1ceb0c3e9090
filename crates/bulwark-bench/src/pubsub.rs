//! The publish/subscribe scenarios: fan-in, pairs, fan-out and latency.
//!
//! Order of a run: every subscriber connects and has its SUBACK (the barrier), then every
//! publisher connects; then the clock starts. Publishers send for warm-up + duration, as fast
//! as the window, their inflight limit and the optional rate allow; subscribers count and time
//! what arrives. After the sending stops, the run drains (until every publication is accounted
//! for, nothing has arrived for 500 ms, or 5 s have passed), then every client disconnects.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulwark_proto::{Packet, PacketId, PubAck, PubComp, PubRec, PubRel, Publish, QoS, TopicName};
use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::client::{Client, ConnectParams, Target, pump, read_some};
use crate::payload::{self, Stamp};
use crate::procfs::Process;
use crate::stats::{LocalSamples, MessageStats, Report, RunSetup, SharedHistogram, per_second};
use crate::track::{Kind, SeqTracker};
use crate::window::Window;
use crate::{BenchError, BenchOptions, ErrorLog, Scenario, client_id, random_suffix};

/// Read room for publishers, which only receive acknowledgements.
const PUB_READ_CHUNK: usize = 4 * 1024;
/// Read room for subscribers: one read takes in hundreds of messages.
const SUB_READ_CHUNK: usize = 64 * 1024;
/// Publications encoded per write, at most, in batched mode (`--batched`); by default each
/// PUBLISH is written on its own, as a device writes.
const BATCH_MAX: u64 = 256;
/// A publisher stops encoding while this much is still unwritten.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// A window full for this long, with nothing arriving, is reset (see
/// `Window::reset_if_stalled`).
const STALL: Duration = Duration::from_secs(2);
/// A sequence gap open this long is taken as lost (see `track`): its window units go back.
const GAP_TIMEOUT: Duration = Duration::from_millis(500);
/// How often subscribers with open gaps look for timed-out ones.
const GAP_CHECK: Duration = Duration::from_millis(100);
/// Longest drain after the sending stops.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// The drain ends early when nothing has arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// How long publishers wait for their last acknowledgements after the stop.
const FINISH_GRACE: Duration = Duration::from_secs(1);
/// Longest sleep of a publisher loop, so that it notices the end of sending in time.
const TICK: Duration = Duration::from_millis(100);

/// Who publishes where and who subscribes to what.
#[derive(Debug)]
struct Layout {
    /// Topic of each publisher.
    publishers: Vec<String>,
    subscribers: Vec<SubSpec>,
    /// Subscribers that receive each publication.
    fanout: u64,
}

#[derive(Debug)]
struct SubSpec {
    filter: String,
    /// The publishers this subscriber hears: topic suffixes `offset..offset + count`.
    offset: usize,
    count: usize,
}

fn layout(scenario: Scenario, n: usize) -> Layout {
    match scenario {
        Scenario::FanIn => Layout {
            publishers: (0..n).map(|i| format!("bench/fanin/{i}")).collect(),
            subscribers: vec![SubSpec {
                filter: "bench/fanin/#".to_owned(),
                offset: 0,
                count: n,
            }],
            fanout: 1,
        },
        Scenario::FanOut => Layout {
            publishers: vec!["bench/fanout/0".to_owned()],
            subscribers: (0..n)
                .map(|_| SubSpec {
                    filter: "bench/fanout/0".to_owned(),
                    offset: 0,
                    count: 1,
                })
                .collect(),
            fanout: n as u64,
        },
        Scenario::Pairs
        | Scenario::Latency
        | Scenario::Flood
        | Scenario::Conn
        | Scenario::Churn => {
            let name = if scenario == Scenario::Latency {
                "latency"
            } else {
                "pairs"
            };
            Layout {
                publishers: (0..n).map(|i| format!("bench/{name}/{i}")).collect(),
                subscribers: (0..n)
                    .map(|i| SubSpec {
                        filter: format!("bench/{name}/{i}"),
                        offset: i,
                        count: 1,
                    })
                    .collect(),
                fanout: 1,
            }
        }
    }
}

/// What every task of a run shares.
#[derive(Debug)]
struct Shared {
    /// The start of the run: every timestamp is nanoseconds since this.
    epoch: Instant,
    measure_start_ns: u64,
    measure_end_ns: u64,
    window: Window,
    units_per_message: u64,
    qos: QoS,
    payload: usize,
    /// PUBLISHes a publisher encodes before writing: 1 (device-like) or [`BATCH_MAX`].
    per_write: u64,
    inflight: u16,
    keep_alive: Duration,
    published: AtomicU64,
    received: AtomicU64,
    window_resets: AtomicU64,
    latency: SharedHistogram,
    errors: ErrorLog,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    fn measured(&self, sent_ns: u64) -> bool {
        (self.measure_start_ns..self.measure_end_ns).contains(&sent_ns)
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct PubStats {
    measured: u64,
    unacked: u64,
}

#[derive(Debug, Default)]
struct SubStats {
    measured: u64,
    duplicates: u64,
    reordered: u64,
}

pub(crate) async fn run(o: &BenchOptions) -> Result<Report, BenchError> {
    let n = o.connections();
    let layout = layout(o.scenario, n);
    let target = Target::for_clients(&o.connect)?;
    let params = ConnectParams::new(&o.connect, o.load.qos);
    let sub_params = ConnectParams {
        persistent: o.load.persistent,
        ..params.clone()
    };
    let random = random_suffix();

    // The barrier: every subscription is in place before anything is published.
    let sub_ids: Vec<(String, Option<String>)> = layout
        .subscribers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                client_id(o.scenario, "sub", i, &random),
                Some(s.filter.clone()),
            )
        })
        .collect();
    let subs = connect_many(&target, &sub_params, sub_ids, o, SUB_READ_CHUNK).await?;
    let pub_ids = (0..layout.publishers.len())
        .map(|i| (client_id(o.scenario, "pub", i, &random), None))
        .collect();
    let pubs = connect_many(&target, &params, pub_ids, o, PUB_READ_CHUNK).await?;

    let units = o.window_units(layout.fanout);
    let epoch = Instant::now();
    let measure_start = o.load.warmup;
    let measure_end = o.load.warmup + o.load.duration;
    let shared = Arc::new(Shared {
        epoch,
        measure_start_ns: nanos(measure_start),
        measure_end_ns: nanos(measure_end),
        window: Window::new(units, layout.fanout),
        units_per_message: layout.fanout,
        qos: o.load.qos,
        payload: o.load.payload,
        per_write: if o.load.batched { BATCH_MAX } else { 1 },
        inflight: o.load.inflight,
        keep_alive: Duration::from_secs(u64::from(o.connect.keep_alive.max(1))),
        published: AtomicU64::new(0),
        received: AtomicU64::new(0),
        window_resets: AtomicU64::new(0),
        latency: SharedHistogram::new(),
        errors: ErrorLog::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut sub_tasks = JoinSet::new();
    for (client, spec) in subs.into_iter().zip(&layout.subscribers) {
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        let (offset, count) = (spec.offset, spec.count);
        sub_tasks.spawn(subscriber(client, offset, count, shared, stop));
    }
    let publishers = layout.publishers.len();
    let per_publisher = o.rate().map(|r| r as f64 / publishers.max(1) as f64);
    let mut pub_tasks = JoinSet::new();
    for (i, (client, topic)) in pubs.into_iter().zip(&layout.publishers).enumerate() {
        let topic = TopicName::new(topic).map_err(|err| BenchError::Setup(err.to_string()))?;
        // Spread the publishers' timers evenly over one interval, so the total rate is smooth
        // rather than `publishers` messages at once.
        let rate = per_publisher.map(|per_sec| {
            let offset = (i as f64 / publishers.max(1) as f64) / per_sec;
            (
                per_sec,
                epoch + Duration::try_from_secs_f64(offset).unwrap_or_default(),
            )
        });
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        pub_tasks.spawn(publisher(client, topic, rate, shared, stop));
    }

    // Measure, then drain.
    let broker = o.broker_pid.map(Process::Pid);
    let mut progress = Progress::new(o.progress, epoch, &shared);
    progress.wait_until(epoch + measure_start).await;
    let cpu_start = crate::conn::samples(broker);
    progress.wait_until(epoch + measure_end).await;
    let cpu_end = crate::conn::samples(broker);
    let drain_deadline = Instant::now() + DRAIN_MAX;
    let mut last_received = shared.received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while shared.window.outstanding() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let received = shared.received.load(Ordering::Relaxed);
        if received != last_received {
            last_received = received;
            last_change = Instant::now();
        } else if last_change.elapsed() >= DRAIN_IDLE {
            break;
        }
    }
    let _ = stop_tx.send(true);

    let mut published = 0;
    let mut unacked = 0;
    while let Some(joined) = pub_tasks.join_next().await {
        match joined {
            Ok(stats) => {
                published += stats.measured;
                unacked += stats.unacked;
            }
            Err(err) => shared.errors.record(&BenchError::Internal(err.to_string())),
        }
    }
    let mut received = 0;
    let mut duplicates = 0;
    let mut reordered = 0;
    while let Some(joined) = sub_tasks.join_next().await {
        match joined {
            Ok(stats) => {
                received += stats.measured;
                duplicates += stats.duplicates;
                reordered += stats.reordered;
            }
            Err(err) => shared.errors.record(&BenchError::Internal(err.to_string())),
        }
    }

    let expected = published.saturating_mul(layout.fanout);
    let (errors, first_error) = shared.errors.take();
    Ok(Report {
        setup: RunSetup {
            scenario: o.scenario,
            broker: o.connect.broker(),
            tls: o.connect.tls_ca.is_some(),
            protocol: o.connect.version.to_string(),
            qos: o.load.qos.as_u8(),
            payload_bytes: o.load.payload,
            connections: publishers + layout.subscribers.len(),
            publishers,
            subscribers: layout.subscribers.len(),
            window: units / layout.fanout.max(1),
            rate_limit: o.rate(),
            batched: o.load.batched,
            loader_processes: 1,
            warmup_s: o.load.warmup.as_secs_f64(),
            measured_s: o.load.duration.as_secs_f64(),
        },
        messages: MessageStats {
            published,
            expected,
            received,
            published_per_s: per_second(published, o.load.duration),
            received_per_s: per_second(received, o.load.duration),
            lost: expected.saturating_sub(received),
            duplicates,
            reordered,
            window_resets: shared.window_resets.load(Ordering::Relaxed),
            unacked,
        },
        latency: shared.latency.summary(),
        connect: None,
        memory: None,
        cpu: crate::conn::percent(cpu_start, cpu_end),
        errors,
        first_error,
        flood: None,
    })
}

/// Connects clients, `--workers` at a time, subscribing those that have a filter; keeps the
/// order of `ids`. Any failure fails the run: a scenario with missing clients measures
/// something else.
async fn connect_many(
    target: &Target,
    params: &ConnectParams,
    ids: Vec<(String, Option<String>)>,
    o: &BenchOptions,
    read_chunk: usize,
) -> Result<Vec<Client>, BenchError> {
    let limit = Arc::new(Semaphore::new(o.load.workers.max(1)));
    let qos = o.load.qos;
    let count = ids.len();
    let mut set = JoinSet::new();
    for (index, (id, filter)) in ids.into_iter().enumerate() {
        let (target, params, limit) = (target.clone(), params.clone(), limit.clone());
        set.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .map_err(|err| BenchError::Internal(err.to_string()))?;
            let (mut client, _) = Client::connect(&target, &params, &id, read_chunk).await?;
            if let Some(filter) = filter {
                client.subscribe(&filter, qos).await?;
            }
            Ok::<_, BenchError>((index, client))
        });
    }
    let mut slots: Vec<Option<Client>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (index, client) = joined.map_err(|err| BenchError::Internal(err.to_string()))??;
        if let Some(slot) = slots.get_mut(index) {
            *slot = Some(client);
        }
    }
    slots
        .into_iter()
        .map(|slot| slot.ok_or_else(|| BenchError::Internal("a client went missing".to_owned())))
        .collect()
}

/// QoS 1/2 state of one outgoing publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

async fn publisher(
    mut client: Client,
    topic: TopicName,
    rate: Option<(f64, Instant)>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> PubStats {
    let mut stats = PubStats::default();
    let mut inflight = VecDeque::new();
    let result = publish_loop(
        &mut client,
        topic,
        rate,
        &shared,
        stop,
        &mut stats,
        &mut inflight,
    )
    .await;
    stats.unacked = inflight.len() as u64;
    match result {
        Ok(()) => {
            let _ = client.disconnect(false).await;
        }
        Err(err) => shared.errors.record(&err),
    }
    stats
}

async fn publish_loop(
    c: &mut Client,
    topic: TopicName,
    rate: Option<(f64, Instant)>,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
    stats: &mut PubStats,
    inflight: &mut VecDeque<(u16, Phase)>,
) -> Result<(), BenchError> {
    let send_end = shared.epoch + Duration::from_nanos(shared.measure_end_ns);
    let qos = shared.qos;
    let cap = if qos == QoS::AtMostOnce {
        usize::MAX
    } else {
        usize::from(shared.inflight.min(c.receive_maximum).max(1))
    };
    let mut publish = Publish::new(topic, Bytes::new());
    publish.qos = qos;
    let mut scratch = BytesMut::new();
    let mut next_id: u16 = 0;
    let mut seq: u64 = 0;
    let mut last_write = Instant::now();
    let mut stopping: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(at) = stopping
            && (inflight.is_empty() || now >= at + FINISH_GRACE)
        {
            return Ok(());
        }
        let sending = stopping.is_none() && now < send_end;
        let mut want = 0;
        // Device-like: the next PUBLISH only once the last one is written.
        let room = if shared.per_write == 1 {
            c.out.is_empty()
        } else {
            c.out.len() < OUT_HIGH_WATER
        };
        if sending && room {
            want = shared.per_write;
            if qos != QoS::AtMostOnce {
                want = want.min(cap.saturating_sub(inflight.len()) as u64);
            }
            if let Some((per_sec, first)) = rate {
                let due = match now.checked_duration_since(first) {
                    Some(elapsed) => ((elapsed.as_secs_f64() * per_sec) as u64).saturating_add(1),
                    None => 0,
                };
                want = want.min(due.saturating_sub(seq));
            }
        }
        let notified = shared.window.notified();
        tokio::pin!(notified);
        let mut waiting = None;
        if want > 0 {
            notified.as_mut().enable();
            let guard = shared.window.wait_guard();
            let granted = shared.window.try_acquire(want, shared.units_per_message);
            if granted > 0 {
                drop(guard);
                shared.window.pass_on();
                let sent_ns = shared.now_ns();
                let mut encoded = 0;
                for _ in 0..granted {
                    if qos != QoS::AtMostOnce {
                        let Some(id) = allocate_id(&mut next_id, inflight) else {
                            break;
                        };
                        publish.packet_id = Some(id);
                        inflight.push_back((id.get(), Phase::Sent));
                    }
                    if scratch.capacity() < shared.payload {
                        scratch.reserve(shared.payload * shared.per_write as usize);
                    }
                    payload::write(&mut scratch, shared.payload, Stamp { sent_ns, seq });
                    publish.payload = scratch.split().freeze();
                    c.encode(&publish)?;
                    if shared.measured(sent_ns) {
                        stats.measured += 1;
                    }
                    seq += 1;
                    encoded += 1;
                }
                if encoded < granted {
                    shared
                        .window
                        .release((granted - encoded) * shared.units_per_message);
                }
                shared.published.fetch_add(encoded, Ordering::Relaxed);
            } else {
                if shared.window.reset_if_stalled(STALL) {
                    shared.window_resets.fetch_add(1, Ordering::Relaxed);
                }
                waiting = Some(guard);
            }
        }
        if now >= last_write + shared.keep_alive && c.out.is_empty() {
            c.encode(&Packet::PingReq)?;
        }
        let mut wake = now + TICK;
        if sending {
            wake = wake.min(send_end);
            if let Some((per_sec, first)) = rate {
                let next_due = Duration::try_from_secs_f64(seq as f64 / per_sec)
                    .ok()
                    .and_then(|due| first.checked_add(due))
                    .unwrap_or(now + TICK);
                wake = wake.min(next_due.max(now));
            }
        }
        let blocked = waiting.is_some();
        tokio::select! {
            biased;
            read = read_some(&mut c.rd, &mut c.dec, PUB_READ_CHUNK) => {
                match read {
                    Ok(0) => return Err(BenchError::Closed("acknowledgements")),
                    Ok(_) => {}
                    Err(err) => return Err(BenchError::io("read from the broker", err)),
                }
                while let Some(packet) = c.dec.poll_packet()? {
                    on_publisher_packet(c, packet, inflight)?;
                }
            }
            written = pump(&mut c.wr, &mut c.out, &mut c.dirty), if !c.out.is_empty() || c.dirty => {
                written.map_err(|err| BenchError::io("write to the broker", err))?;
                last_write = Instant::now();
            }
            () = &mut notified, if blocked => {}
            _ = stop.changed(), if stopping.is_none() => {
                stopping = Some(Instant::now());
            }
            () = sleep_until(wake) => {}
        }
        drop(waiting);
    }
}

/// The next free packet identifier after `next` (1 to 65535, skipping those in flight).
fn allocate_id(next: &mut u16, inflight: &VecDeque<(u16, Phase)>) -> Option<PacketId> {
    for _ in 0..=inflight.len() {
        *next = next.checked_add(1).unwrap_or(1);
        let candidate = *next;
        if !inflight.iter().any(|&(id, _)| id == candidate) {
            return PacketId::new(candidate);
        }
    }
    None
}

fn remove_inflight(inflight: &mut VecDeque<(u16, Phase)>, id: u16) -> Option<Phase> {
    let position = inflight.iter().position(|&(pending, _)| pending == id)?;
    inflight.remove(position).map(|(_, phase)| phase)
}

fn on_publisher_packet(
    c: &mut Client,
    packet: Packet,
    inflight: &mut VecDeque<(u16, Phase)>,
) -> Result<(), BenchError> {
    match packet {
        Packet::PubAck(ack) => {
            remove_inflight(inflight, ack.packet_id.get());
        }
        Packet::PubRec(rec) => {
            let id = rec.packet_id.get();
            if rec.reason_code.is_error() {
                // A refused QoS 2 publication ends at PUBREC [MQTT-4.3.3-?]: no PUBREL.
                remove_inflight(inflight, id);
            } else {
                if let Some(entry) = inflight.iter_mut().find(|(pending, _)| *pending == id) {
                    entry.1 = Phase::Released;
                }
                c.encode(&PubRel::new(rec.packet_id))?;
            }
        }
        Packet::PubComp(comp) => {
            remove_inflight(inflight, comp.packet_id.get());
        }
        Packet::Disconnect(d) => return Err(BenchError::Disconnected(d.reason_code)),
        // Not subscribed, but a broker may still deliver (a retained message, a mistake):
        // acknowledge it so that its state does not leak.
        Packet::Publish(p) => acknowledge(c, &p)?,
        Packet::PubRel(rel) => c.encode(&PubComp::new(rel.packet_id))?,
        _ => {}
    }
    Ok(())
}

fn acknowledge(c: &mut Client, p: &Publish) -> Result<(), BenchError> {
    match (p.qos, p.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => c.encode(&PubAck::new(id)),
        (QoS::ExactlyOnce, Some(id)) => c.encode(&PubRec::new(id)),
        _ => Ok(()),
    }
}

async fn subscriber(
    mut client: Client,
    offset: usize,
    count: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> SubStats {
    let mut stats = SubStats::default();
    let mut samples = LocalSamples::default();
    let result = subscribe_loop(
        &mut client,
        offset,
        count,
        &shared,
        stop,
        &mut stats,
        &mut samples,
    )
    .await;
    samples.flush(&shared.latency);
    match result {
        Ok(()) => {
            let _ = client.disconnect(false).await;
        }
        Err(err) => shared.errors.record(&err),
    }
    stats
}

async fn subscribe_loop(
    c: &mut Client,
    offset: usize,
    count: usize,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
    stats: &mut SubStats,
    samples: &mut LocalSamples,
) -> Result<(), BenchError> {
    let mut trackers = vec![SeqTracker::new(); count];
    let mut last_write = Instant::now();
    let chunk = c.read_chunk();
    let gap_timeout = nanos(GAP_TIMEOUT);
    // Whether some tracker may hold a gap whose units have not gone back yet.
    let mut open_gaps = false;
    let mut next_gap_check = Instant::now();
    loop {
        if open_gaps && Instant::now() >= next_gap_check {
            let now_ns = shared.now_ns();
            let units: u64 = trackers
                .iter_mut()
                .map(|t| t.expire(now_ns, gap_timeout))
                .sum();
            shared.window.release(units);
            open_gaps = trackers.iter().any(SeqTracker::has_open_gaps);
            next_gap_check = Instant::now() + GAP_CHECK;
        }
        if last_write.elapsed() >= shared.keep_alive && c.out.is_empty() {
            c.encode(&Packet::PingReq)?;
        }
        let mut wake = last_write + shared.keep_alive;
        if open_gaps {
            wake = wake.min(next_gap_check);
        }
        tokio::select! {
            // Acknowledgements first: brokers send a subscriber only a few unacknowledged
            // QoS 1/2 messages at a time (Mosquitto 20), so a late PUBACK stalls delivery.
            biased;
            written = pump(&mut c.wr, &mut c.out, &mut c.dirty), if !c.out.is_empty() || c.dirty => {
                written.map_err(|err| BenchError::io("write to the broker", err))?;
                last_write = Instant::now();
            }
            read = read_some(&mut c.rd, &mut c.dec, chunk) => {
                match read {
                    Ok(0) => return Err(BenchError::Closed("publications")),
                    Ok(_) => {}
                    Err(err) => return Err(BenchError::io("read from the broker", err)),
                }
                let now_ns = shared.now_ns();
                let mut units = 0;
                let mut unique = 0;
                while let Some(packet) = c.dec.poll_packet()? {
                    match packet {
                        Packet::Publish(p) => {
                            acknowledge(c, &p)?;
                            let Some(stamp) = payload::read(&p.payload) else {
                                continue;
                            };
                            let Some(tracker) = publisher_slot(&p.topic, offset)
                                .and_then(|slot| trackers.get_mut(slot))
                            else {
                                continue;
                            };
                            let seen = tracker.observe(stamp.seq, now_ns);
                            units += seen.release;
                            match seen.kind {
                                Kind::New => open_gaps |= tracker.has_open_gaps(),
                                Kind::Late => stats.reordered += 1,
                                Kind::Duplicate => {
                                    stats.duplicates += 1;
                                    continue;
                                }
                            }
                            unique += 1;
                            if shared.measured(stamp.sent_ns) {
                                stats.measured += 1;
                                samples.push(now_ns.saturating_sub(stamp.sent_ns), &shared.latency);
                            }
                        }
                        Packet::PubRel(rel) => c.encode(&PubComp::new(rel.packet_id))?,
                        Packet::Disconnect(d) => return Err(BenchError::Disconnected(d.reason_code)),
                        _ => {}
                    }
                }
                shared.window.release(units);
                shared.received.fetch_add(unique, Ordering::Relaxed);
            }
            _ = stop.changed() => return Ok(()),
            () = sleep_until(wake) => {}
        }
    }
}

/// The publisher a topic belongs to: its last level, a number, minus the subscriber's offset.
fn publisher_slot(topic: &TopicName, offset: usize) -> Option<usize> {
    topic
        .as_str()
        .rsplit('/')
        .next()?
        .parse::<usize>()
        .ok()?
        .checked_sub(offset)
}

/// The progress line, once a second on standard error.
struct Progress<'a> {
    enabled: bool,
    epoch: Instant,
    shared: &'a Shared,
    next: Instant,
    last: (u64, u64, Instant),
}

impl<'a> Progress<'a> {
    fn new(enabled: bool, epoch: Instant, shared: &'a Shared) -> Self {
        Self {
            enabled,
            epoch,
            shared,
            next: epoch + Duration::from_secs(1),
            last: (0, 0, epoch),
        }
    }

    /// Sleeps until `deadline`, printing a line each second on the way.
    async fn wait_until(&mut self, deadline: Instant) {
        while self.enabled && self.next < deadline {
            sleep_until(self.next).await;
            self.print();
            self.next += Duration::from_secs(1);
        }
        sleep_until(deadline).await;
    }

    fn print(&mut self) {
        let now = Instant::now();
        let published = self.shared.published.load(Ordering::Relaxed);
        let received = self.shared.received.load(Ordering::Relaxed);
        let (p0, r0, t0) = self.last;
        let elapsed = now.duration_since(t0);
        let phase = if now < self.epoch + Duration::from_nanos(self.shared.measure_start_ns) {
            "warm-up"
        } else {
            "measure"
        };
        eprintln!(
            "[{:>4.0}s] {phase} | published {:>9}/s | received {:>9}/s | in flight {}",
            now.duration_since(self.epoch).as_secs_f64(),
            crate::stats::rate(per_second(published.saturating_sub(p0), elapsed)),
            crate::stats::rate(per_second(received.saturating_sub(r0), elapsed)),
            crate::stats::thousands(
                self.shared.window.outstanding() / self.shared.units_per_message.max(1)
            ),
        );
        self.last = (published, received, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let l = layout(Scenario::FanIn, 3);
        assert_eq!(
            l.publishers,
            ["bench/fanin/0", "bench/fanin/1", "bench/fanin/2"]
        );
        assert_eq!(l.subscribers.len(), 1);
        assert_eq!(l.subscribers[0].filter, "bench/fanin/#");
        assert_eq!(l.subscribers[0].count, 3);
        let l = layout(Scenario::FanOut, 4);
        assert_eq!(l.publishers.len(), 1);
        assert_eq!(l.subscribers.len(), 4);
        assert_eq!(l.fanout, 4);
        let l = layout(Scenario::Pairs, 2);
        assert_eq!(l.subscribers[1].filter, "bench/pairs/1");
        assert_eq!(l.subscribers[1].offset, 1);
    }

    #[test]
    fn slots_from_topics() {
        let topic = TopicName::new("bench/pairs/12").unwrap();
        assert_eq!(publisher_slot(&topic, 12), Some(0));
        assert_eq!(publisher_slot(&topic, 0), Some(12));
        assert_eq!(publisher_slot(&topic, 13), None);
        assert_eq!(publisher_slot(&TopicName::new("a/b").unwrap(), 0), None);
    }

    #[test]
    fn packet_ids_skip_zero_and_those_in_flight() {
        let mut inflight = VecDeque::new();
        let mut next = u16::MAX - 1;
        assert_eq!(
            allocate_id(&mut next, &inflight).map(PacketId::get),
            Some(u16::MAX)
        );
        inflight.push_back((1, Phase::Sent));
        inflight.push_back((2, Phase::Released));
        // Wraps past 0, skips 1 and 2.
        assert_eq!(
            allocate_id(&mut next, &inflight).map(PacketId::get),
            Some(3)
        );
        assert_eq!(remove_inflight(&mut inflight, 2), Some(Phase::Released));
        assert_eq!(remove_inflight(&mut inflight, 2), None);
        assert_eq!(inflight.len(), 1);
    }
}
