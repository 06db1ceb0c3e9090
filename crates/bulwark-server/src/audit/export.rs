//! Remote export of the audit trail: checkpoints (and with `export_records`, every record) to a
//! syslog receiver (RFC 5424 over UDP, TCP or TLS) and to an HTTP endpoint, so that a copy the
//! broker's host cannot rewrite proves the trail was not cut short (`docs/audit.md`).
//!
//! The writer thread hands each line to [`Outbox::offer`], which only takes a lock for a queue
//! push: the network is never waited on by the writer, and so never by a connection. Each
//! remote has its own thread and its own bounded queue ([`AuditSettings::export_queue`]
//! lines). When a queue is full the oldest line that is not a checkpoint goes first (a
//! checkpoint vouches for every record before it, so it is the line worth keeping); only a
//! queue of nothing but checkpoints loses its oldest checkpoint. Every dropped line is counted.
//!
//! A failed delivery is retried after 1 s, doubling to at most 60 s ([`BACKOFF_MIN`],
//! [`BACKOFF_MAX`]), with a new connection. Delivery is at least once: lines of a batch that
//! failed halfway are sent again, so a receiver may see a line twice (an anchor with
//! duplicates verifies the same).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bulwark_acl::event::rfc3339;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tracing::{info, warn};

use super::settings::{AuditSettings, SyslogTarget, SyslogTransport};

/// The first wait after a failed delivery; doubled after each further failure.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Connecting (each address), the TLS handshake, one write, one whole HTTP request: a remote
/// that hangs costs its thread this long per attempt, never the writer.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for the exporters to deliver what is still queued.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Lines sent to a syslog receiver in one write.
const BATCH_LINES: usize = 256;
/// Bytes of lines sent in one write, at most (a single longer line goes alone).
const BATCH_BYTES: usize = 256 << 10;
/// The largest UDP payload (IPv4's limit); a longer message cannot be sent and is dropped.
const MAX_DATAGRAM: usize = 65_507;
/// The largest HTTP response body read (then discarded, so that the connection is reused).
const MAX_RESPONSE: u64 = 64 << 10;
/// The largest token file.
const MAX_TOKEN: u64 = 4096;
/// Peer data read and thrown away before each write at most: syslog receivers send nothing,
/// so this only bounds the work a misbehaving one can cause.
const MAX_DISCARD: usize = 64;
/// syslog facility 10, authpriv (RFC 5424 section 6.2.1: security/authorization messages).
const FACILITY: u8 = 10;
/// Severity of checkpoints: notice, a normal but significant condition.
const NOTICE: u8 = 5;
/// Severity of every other record: informational.
const INFO: u8 = 6;

/// A line waiting for a remote.
#[derive(Debug, Clone)]
struct Line {
    text: Arc<str>,
    checkpoint: bool,
    /// When the writer handed it over (the syslog TIMESTAMP).
    at: SystemTime,
}

/// One remote's counts, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExportCounts {
    /// `syslog` or `http`.
    pub(crate) target: &'static str,
    /// Lines delivered since start (a UDP datagram counts once sent).
    pub(crate) delivered: u64,
    /// Lines dropped since start: queue full, too large to send, or still queued at stop.
    pub(crate) dropped: u64,
    /// Deliveries that failed (each retried) since start.
    pub(crate) failures: u64,
    /// Lines waiting now.
    pub(crate) queued: u64,
}

/// What one remote's thread and the writer share.
#[derive(Debug)]
struct Shared {
    /// `syslog` or `http`, for metrics.
    target: &'static str,
    /// Where, for logs (an HTTP URL without its query).
    name: String,
    capacity: usize,
    state: Mutex<State>,
    /// Lines arrived, or the exporter is to close.
    wake: Condvar,
    /// The exporter thread ended.
    ended: Condvar,
    delivered: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    lines: VecDeque<Line>,
    /// No more lines will come: deliver what is queued and end.
    closing: bool,
    ended: bool,
}

impl Shared {
    fn new(target: &'static str, name: String, capacity: usize) -> Self {
        Self {
            target,
            name,
            capacity: capacity.max(1),
            state: Mutex::default(),
            wake: Condvar::new(),
            ended: Condvar::new(),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn push(&self, line: Line) {
        let mut state = crate::sync::lock(&self.state);
        if state.closing {
            drop(state);
            self.count_dropped(1);
            return;
        }
        state.lines.push_back(line);
        let dropped = self.trim(&mut state);
        drop(state);
        self.wake.notify_one();
        self.count_dropped(dropped);
    }

    /// Drops lines past the capacity, the oldest that is not a checkpoint first; how many.
    fn trim(&self, state: &mut State) -> u64 {
        let mut dropped = 0;
        while state.lines.len() > self.capacity {
            let oldest = state.lines.iter().position(|l| !l.checkpoint).unwrap_or(0);
            state.lines.remove(oldest);
            dropped += 1;
        }
        dropped
    }

    fn count_dropped(&self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        let after = before.saturating_add(n);
        // A warning each time the count passes 1, 2, 4, 8, ...: visible without flooding the log.
        if after.checked_ilog2() > before.checked_ilog2() {
            warn!(
                remote = %self.name,
                dropped = after,
                "audit export: lines dropped (the queue was full, or a line could not be sent)"
            );
        }
    }

    /// The next lines to send (at most `lines` and about `bytes`), waiting for some; `None` once
    /// closing with nothing left. The flag says whether the exporter is closing.
    fn take(&self, lines: usize, bytes: usize) -> Option<(Vec<Line>, bool)> {
        let mut state = crate::sync::lock(&self.state);
        while state.lines.is_empty() && !state.closing {
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let mut batch = Vec::new();
        let mut size = 0;
        while batch.len() < lines {
            let Some(next) = state.lines.front() else {
                break;
            };
            if !batch.is_empty() && size + next.text.len() > bytes {
                break;
            }
            size += next.text.len();
            if let Some(line) = state.lines.pop_front() {
                batch.push(line);
            }
        }
        if batch.is_empty() {
            return None;
        }
        Some((batch, state.closing))
    }

    /// Puts a batch that could not be delivered back at the head of the queue.
    fn requeue(&self, batch: Vec<Line>) {
        let mut state = crate::sync::lock(&self.state);
        for line in batch.into_iter().rev() {
            state.lines.push_front(line);
        }
        let dropped = self.trim(&mut state);
        drop(state);
        self.count_dropped(dropped);
    }

    /// Waits `wait`, or less if the exporter is told to close.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut state = crate::sync::lock(&self.state);
        while !state.closing {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Gives up on what is queued (at stop, the remote failing): counted as dropped.
    fn abandon(&self) {
        let n = {
            let mut state = crate::sync::lock(&self.state);
            let n = state.lines.len();
            state.lines.clear();
            n
        };
        if n > 0 {
            warn!(remote = %self.name, lines = n, "audit export: the broker stops; lines not delivered");
        }
        self.count_dropped(u64::try_from(n).unwrap_or(u64::MAX));
    }

    fn close(&self) {
        crate::sync::lock(&self.state).closing = true;
        self.wake.notify_all();
    }

    fn end(&self) {
        crate::sync::lock(&self.state).ended = true;
        self.ended.notify_all();
    }

    /// Waits until the exporter thread ended, at most until `until`; whether it did.
    fn wait_ended(&self, until: Instant) -> bool {
        let mut state = crate::sync::lock(&self.state);
        while !state.ended {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .ended
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn counts(&self) -> ExportCounts {
        let queued = crate::sync::lock(&self.state).lines.len();
        ExportCounts {
            target: self.target,
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            queued: u64::try_from(queued).unwrap_or(u64::MAX),
        }
    }
}

/// The remote exporters of a trail (none without `export_syslog` and `export_http`). Cheap to
/// clone; the server keeps one for metrics and the stop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Remotes {
    remotes: Arc<Vec<Arc<Shared>>>,
}

impl Remotes {
    /// Reads what each configured remote needs (CA, client certificate and key, token) and
    /// starts its thread. Errors name the file or setting, so that a broker never runs without
    /// the export it was configured to make.
    pub(crate) fn start(settings: &AuditSettings) -> Result<Self, String> {
        let mut remotes = Vec::new();
        let mut sinks = Vec::new();
        if let Some(target) = &settings.export_syslog {
            let syslog = Syslog::new(settings, target)?;
            remotes.push(Arc::new(Shared::new(
                "syslog",
                format!("syslog {target}"),
                settings.export_queue,
            )));
            sinks.push(Sink::Syslog(Box::new(syslog)));
        }
        if let Some(url) = &settings.export_http {
            let http = Http::new(settings, url)?;
            remotes.push(Arc::new(Shared::new(
                "http",
                format!("http {}", without_query(url)),
                settings.export_queue,
            )));
            sinks.push(Sink::Http(Box::new(http)));
        }
        let started = Self {
            remotes: Arc::new(remotes),
        };
        for (shared, sink) in started.remotes.iter().zip(sinks) {
            let shared = shared.clone();
            let thread = format!("bulwark-export-{}", shared.target);
            let spawned = std::thread::Builder::new()
                .name(thread)
                .spawn(move || run(&shared, sink));
            if let Err(err) = spawned {
                started.close();
                return Err(format!("cannot start the audit exporter: {err}"));
            }
        }
        for shared in started.remotes.iter() {
            info!(remote = %shared.name, queue = shared.capacity, "audit export: started");
        }
        Ok(started)
    }

    /// The writer's handle.
    pub(crate) fn outbox(&self) -> Option<Outbox> {
        (!self.remotes.is_empty()).then(|| Outbox(self.clone()))
    }

    /// Each remote's counts.
    pub(crate) fn counts(&self) -> Vec<ExportCounts> {
        self.remotes.iter().map(|r| r.counts()).collect()
    }

    /// No more lines: each exporter delivers what is queued and ends.
    pub(crate) fn close(&self) {
        for remote in self.remotes.iter() {
            remote.close();
        }
    }

    /// Blocks until every exporter has ended, at most `within`; whether they all did.
    pub(crate) fn wait(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        let mut all = true;
        for remote in self.remotes.iter() {
            if !remote.wait_ended(until) {
                warn!(remote = %remote.name, "audit export: still delivering at stop; giving up on it");
                all = false;
            }
        }
        all
    }
}

/// The writer thread's handle on the exporters: lines go in, nothing waits. Dropping it (the
/// writer ended) tells the exporters that nothing more will come.
#[derive(Debug)]
pub(crate) struct Outbox(Remotes);

impl Outbox {
    /// Queues `line` for every remote (dropping the oldest non-checkpoint lines of a full
    /// queue). Never blocks on the network.
    pub(crate) fn offer(&self, line: &str, checkpoint: bool) {
        let line = Line {
            text: Arc::from(line),
            checkpoint,
            at: SystemTime::now(),
        };
        for remote in self.0.remotes.iter() {
            remote.push(line.clone());
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Where one exporter thread delivers.
enum Sink {
    Syslog(Box<Syslog>),
    Http(Box<Http>),
}

impl Sink {
    /// Sends `lines`; `Ok(n)`: delivered, but `n` of them could never be (too large) and were
    /// left out.
    fn deliver(&mut self, lines: &[Line]) -> Result<usize, String> {
        match self {
            Self::Syslog(s) => s.deliver(lines),
            Self::Http(h) => h.deliver(lines),
        }
    }

    fn batch_lines(&self) -> usize {
        match self {
            Self::Syslog(_) => BATCH_LINES,
            // One line per request: a request's status says which line arrived.
            Self::Http(_) => 1,
        }
    }
}

/// An exporter thread: takes lines, delivers them, retries with backoff, ends when closed.
fn run(shared: &Shared, mut sink: Sink) {
    let mut backoff = BACKOFF_MIN;
    // Failures in a row (logged at the first, then at 2, 4, 8, ...).
    let mut failing: u64 = 0;
    // Failed attempts after the close: one more try (a new connection) is allowed.
    let mut closing_failures = 0;
    while let Some((batch, closing)) = shared.take(sink.batch_lines(), BATCH_BYTES) {
        match sink.deliver(&batch) {
            Ok(skipped) => {
                let sent = batch.len().saturating_sub(skipped);
                shared
                    .delivered
                    .fetch_add(u64::try_from(sent).unwrap_or(u64::MAX), Ordering::Relaxed);
                shared.count_dropped(u64::try_from(skipped).unwrap_or(u64::MAX));
                if failing > 0 {
                    info!(remote = %shared.name, failures = failing, "audit export: delivering again");
                }
                failing = 0;
                backoff = BACKOFF_MIN;
            }
            Err(why) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                failing += 1;
                if failing.is_power_of_two() {
                    warn!(
                        remote = %shared.name,
                        error = %why,
                        failures = failing,
                        retry_in_s = backoff.as_secs(),
                        "audit export: delivery failed; the lines stay queued and are retried"
                    );
                }
                shared.requeue(batch);
                if closing {
                    closing_failures += 1;
                    if closing_failures >= 2 {
                        shared.abandon();
                        break;
                    }
                    continue;
                }
                shared.pause(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    shared.end();
}

// ----- syslog --------------------------------------------------------------------------------

/// An RFC 5424 syslog client.
struct Syslog {
    target: SyslogTarget,
    /// `HOSTNAME APP-NAME PROCID` of every message.
    origin: String,
    tls: Option<Arc<ClientConfig>>,
    conn: Option<Conn>,
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Syslog {
    fn new(settings: &AuditSettings, target: &SyslogTarget) -> Result<Self, String> {
        super::settings::check_syslog_app(&settings.export_syslog_app)
            .map_err(|err| format!("audit export_syslog_app: {err}"))?;
        let tls = match target.transport {
            SyslogTransport::Tls => {
                let Some(ca) = &settings.export_syslog_ca else {
                    return Err("audit export_syslog: tls:// needs export_syslog_ca (the CA the receiver's certificate chains to)".to_owned());
                };
                let client = match (&settings.export_syslog_cert, &settings.export_syslog_key) {
                    (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                    (None, None) => None,
                    _ => {
                        return Err(
                            "audit export_syslog_cert and export_syslog_key go together".to_owned()
                        );
                    }
                };
                Some(syslog_tls(ca, client)?)
            }
            SyslogTransport::Udp | SyslogTransport::Tcp => None,
        };
        let origin = format!(
            "{} {} {}",
            hostname(),
            settings.export_syslog_app,
            std::process::id()
        );
        Ok(Self {
            target: target.clone(),
            origin,
            tls,
            conn: None,
        })
    }

    /// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`, MSG the
    /// record's line exactly as in the trail.
    fn message(&self, line: &Line) -> String {
        let severity = if line.checkpoint { NOTICE } else { INFO };
        format!(
            "<{}>1 {} {} {} - {}",
            FACILITY * 8 + severity,
            rfc3339(line.at),
            self.origin,
            msgid(&line.text),
            line.text
        )
    }

    fn deliver(&mut self, lines: &[Line]) -> Result<usize, String> {
        let stale = match &mut self.conn {
            Some(Conn::Tcp(stream)) => tcp_closed(stream),
            Some(Conn::Tls(stream)) => tls_closed(stream),
            Some(Conn::Udp(_)) | None => false,
        };
        if stale {
            self.conn = None;
        }
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let mut skipped = 0;
        let result = match &mut conn {
            Conn::Udp(socket) => {
                let mut sent = Ok(());
                for line in lines {
                    let message = self.message(line);
                    if message.len() > MAX_DATAGRAM {
                        skipped += 1;
                        warn!(
                            bytes = message.len(),
                            "audit export: a record is too large for a UDP datagram; dropped"
                        );
                        continue;
                    }
                    if let Err(err) = socket.send(message.as_bytes()) {
                        sent = Err(err);
                        break;
                    }
                }
                sent
            }
            Conn::Tcp(stream) => {
                let frames = self.frames(lines);
                stream.write_all(&frames).and_then(|()| stream.flush())
            }
            Conn::Tls(stream) => {
                let frames = self.frames(lines);
                stream.write_all(&frames).and_then(|()| stream.flush())
            }
        };
        match result {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(skipped)
            }
            // The connection is dropped: the next attempt makes a new one.
            Err(err) => Err(format!("{}: {err}", self.target)),
        }
    }

    /// Octet-counted frames (RFC 6587 section 3.4.1): `LEN SP MSG` each, no separator.
    fn frames(&self, lines: &[Line]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in lines {
            let message = self.message(line);
            out.extend_from_slice(message.len().to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(message.as_bytes());
        }
        out
    }

    fn connect(&self) -> Result<Conn, String> {
        let target = &self.target;
        let addrs = resolve(&target.host, target.port).map_err(|err| format!("{target}: {err}"))?;
        match target.transport {
            SyslogTransport::Udp => {
                let mut last = None;
                for addr in addrs {
                    let local: SocketAddr = if addr.is_ipv4() {
                        SocketAddr::from(([0, 0, 0, 0], 0))
                    } else {
                        SocketAddr::from(([0_u16; 8], 0))
                    };
                    match UdpSocket::bind(local).and_then(|s| s.connect(addr).map(|()| s)) {
                        Ok(socket) => return Ok(Conn::Udp(socket)),
                        Err(err) => last = Some(err),
                    }
                }
                Err(format!(
                    "{target}: {}",
                    last.map_or_else(|| "no address".to_owned(), |e| e.to_string())
                ))
            }
            SyslogTransport::Tcp => Ok(Conn::Tcp(
                tcp_connect(&addrs).map_err(|err| format!("{target}: {err}"))?,
            )),
            SyslogTransport::Tls => {
                let Some(config) = &self.tls else {
                    return Err(format!("{target}: no TLS settings"));
                };
                let tcp = tcp_connect(&addrs).map_err(|err| format!("{target}: {err}"))?;
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|err| format!("{target}: {err}"))?;
                let conn = ClientConnection::new(config.clone(), name)
                    .map_err(|err| format!("{target}: {err}"))?;
                let mut stream = StreamOwned::new(conn, tcp);
                // The handshake now, so that a certificate problem is the error of this attempt.
                while stream.conn.is_handshaking() {
                    stream
                        .conn
                        .complete_io(&mut stream.sock)
                        .map_err(|err| format!("{target}: TLS handshake: {err}"))?;
                }
                Ok(Conn::Tls(Box::new(stream)))
            }
        }
    }
}

fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the name has no address",
        ));
    }
    Ok(addrs)
}

/// Connects to the first address that answers, with [`IO_TIMEOUT`] each and on every read and
/// write after.
fn tcp_connect(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, IO_TIMEOUT) {
            Ok(stream) => {
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// Whether the receiver closed the connection: checked before each write, since a write into
/// a connection the peer has closed still succeeds once and the lines would be lost.
fn tcp_closed(stream: &mut TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0_u8; 512];
    let mut closed = false;
    for _ in 0..MAX_DISCARD {
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    closed || stream.set_nonblocking(false).is_err()
}

/// [`tcp_closed`] through TLS: a `close_notify`, an alert, or the socket's end.
fn tls_closed(stream: &mut StreamOwned<ClientConnection, TcpStream>) -> bool {
    if stream.sock.set_nonblocking(true).is_err() {
        return true;
    }
    let mut closed = false;
    for _ in 0..MAX_DISCARD {
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                if stream.conn.process_new_packets().is_err() {
                    closed = true;
                    break;
                }
                let mut buf = [0_u8; 512];
                match stream.conn.reader().read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    closed || stream.sock.set_nonblocking(false).is_err()
}

/// The MSGID: `checkpoint` or the record's kind (`-` if it has none that fits: 1 to 32
/// printable ASCII characters).
fn msgid(line: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: Option<String>,
    }
    serde_json::from_str::<Kind>(line)
        .ok()
        .and_then(|k| k.kind)
        .filter(|k| !k.is_empty() && k.len() <= 32 && k.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".to_owned())
}

/// This host's name for the HOSTNAME field (the kernel's, or `-` when it cannot be read or is
/// not 1 to 255 printable ASCII characters).
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| {
            !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| (33..=126).contains(&b))
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// The client TLS settings for a `tls://` receiver: only the roots of `ca`, TLS 1.2 or 1.3 with
/// the listeners' cipher-suite policy, and a client certificate when given.
fn syslog_tls(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca, "export_syslog_ca")? {
        roots
            .add(cert)
            .map_err(|err| format!("audit export_syslog_ca {}: {err}", ca.display()))?;
    }
    let builder = ClientConfig::builder_with_provider(crate::tls::client_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| format!("audit export_syslog: TLS versions: {err}"))?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = load_certs(cert, "export_syslog_cert")?;
            let pem = std::fs::read(key).map_err(|err| {
                format!(
                    "cannot read the audit export_syslog_key {}: {err}",
                    key.display()
                )
            })?;
            crate::files::warn_if_open(key, "syslog client key (export_syslog_key)");
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
                format!(
                    "audit export_syslog_key {}: no usable PRIVATE KEY block ({err})",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|err| {
                    format!(
                        "audit export_syslog_key {} does not fit export_syslog_cert {}: {err}",
                        key.display(),
                        cert.display()
                    )
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file (at least one).
fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|err| format!("cannot read the audit {key} {}: {err}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("audit {key} {}: not valid PEM: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "audit {key} {}: no CERTIFICATE block found",
            path.display()
        ));
    }
    Ok(certs)
}

// ----- HTTP ----------------------------------------------------------------------------------

/// POSTs each line to an endpoint.
struct Http {
    url: String,
    agent: ureq::Agent,
    token_file: Option<PathBuf>,
    token: Option<String>,
}

impl Http {
    fn new(settings: &AuditSettings, url: &str) -> Result<Self, String> {
        super::settings::check_http_url(url).map_err(|err| format!("audit export_http: {err}"))?;
        let https = url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let roots = match &settings.export_http_ca {
            Some(ca) => {
                let certs = load_certs(ca, "export_http_ca")?;
                // The HTTP client skips roots it cannot parse without a word: check them here,
                // so that a bad file is an error rather than a smaller trust set.
                let mut store = RootCertStore::empty();
                let (_, ignored) = store.add_parsable_certificates(certs.iter().cloned());
                if ignored > 0 {
                    return Err(format!(
                        "audit export_http_ca {}: {ignored} certificate(s) cannot be used as a trust anchor",
                        ca.display()
                    ));
                }
                ureq::tls::RootCerts::from(
                    certs
                        .iter()
                        .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
                        .collect::<Vec<_>>(),
                )
            }
            None => ureq::tls::RootCerts::WebPki,
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(roots)
            .unversioned_rustls_crypto_provider(crate::tls::client_provider())
            .build();
        let mut config = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(https)
            // A redirect could move the records to another host or to plaintext.
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(IO_TIMEOUT));
        if !https {
            // Plain http:// is to loopback only (checked above): no proxy in between.
            config = config.proxy(None);
        }
        let token = match &settings.export_http_token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        Ok(Self {
            url: url.to_owned(),
            agent: config.build().new_agent(),
            token_file: settings.export_http_token_file.clone(),
            token,
        })
    }

    fn deliver(&mut self, lines: &[Line]) -> Result<usize, String> {
        for line in lines {
            self.post(line)?;
        }
        Ok(0)
    }

    fn post(&mut self, line: &Line) -> Result<(), String> {
        let mut request = self
            .agent
            .post(self.url.as_str())
            .header("Content-Type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = request
            .send(line.text.as_bytes())
            .map_err(|err| err.to_string())?;
        let status = response.status().as_u16();
        // Read to the end so that the connection can carry the next request.
        let _ = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec();
        if (200..300).contains(&status) {
            return Ok(());
        }
        if matches!(status, 401 | 403)
            && let Some(path) = &self.token_file
        {
            // The token may have been replaced in its file: the next attempt sends the new one.
            match read_token(path) {
                Ok(token) => self.token = Some(token),
                Err(err) => warn!(%err, "audit export: cannot read the token again"),
            }
        }
        Err(format!("HTTP status {status}"))
    }
}

/// The bearer token: the file's content without surrounding whitespace, printable ASCII.
fn read_token(path: &Path) -> Result<String, String> {
    let text = crate::files::read_text(path, "audit export_http_token_file", MAX_TOKEN)?;
    crate::files::warn_if_open(path, "audit export token file");
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(format!(
            "the audit export_http_token_file {} must hold one token of printable ASCII characters",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// A URL without its query and fragment, for logs (a query may carry a key).
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code"
    )]

    use super::*;

    fn line(text: &str, checkpoint: bool) -> Line {
        Line {
            text: Arc::from(text),
            checkpoint,
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        }
    }

    fn texts(shared: &Shared) -> Vec<String> {
        crate::sync::lock(&shared.state)
            .lines
            .iter()
            .map(|l| l.text.to_string())
            .collect()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_lines_that_are_not_checkpoints() {
        let shared = Shared::new("syslog", "test".into(), 3);
        shared.push(line("r1", false));
        shared.push(line("c1", true));
        shared.push(line("r2", false));
        shared.push(line("r3", false));
        assert_eq!(texts(&shared), ["c1", "r2", "r3"]);
        shared.push(line("c2", true));
        shared.push(line("c3", true));
        assert_eq!(texts(&shared), ["c1", "c2", "c3"]);
        // Only checkpoints left: the oldest of them goes.
        shared.push(line("c4", true));
        assert_eq!(texts(&shared), ["c2", "c3", "c4"]);
        // A record that does not fit among checkpoints is the oldest non-checkpoint: itself.
        shared.push(line("r4", false));
        assert_eq!(texts(&shared), ["c2", "c3", "c4"]);
        assert_eq!(shared.counts().dropped, 5);
        assert_eq!(shared.counts().queued, 3);
    }

    #[test]
    fn a_failed_batch_goes_back_to_the_head_of_the_queue() {
        let shared = Shared::new("http", "test".into(), 4);
        for (text, checkpoint) in [("r1", false), ("c1", true), ("r2", false)] {
            shared.push(line(text, checkpoint));
        }
        let (batch, closing) = shared.take(2, BATCH_BYTES).unwrap();
        assert!(!closing);
        assert_eq!(batch.len(), 2);
        shared.push(line("r3", false));
        shared.push(line("r4", false));
        shared.push(line("c2", true));
        shared.requeue(batch);
        // r1, c1 back in front; six lines in a queue of four: r1 and r2 go.
        assert_eq!(texts(&shared), ["c1", "r3", "r4", "c2"]);
        assert_eq!(shared.counts().dropped, 2);
        shared.close();
        shared.push(line("late", false));
        assert_eq!(
            shared.counts().dropped,
            3,
            "nothing is queued after the close"
        );
        let mut all = Vec::new();
        while let Some((batch, closing)) = shared.take(BATCH_LINES, BATCH_BYTES) {
            assert!(closing);
            all.extend(batch.into_iter().map(|l| l.text.to_string()));
        }
        assert_eq!(all, ["c1", "r3", "r4", "c2"]);
    }

    #[test]
    fn a_batch_is_bounded_in_bytes_but_takes_at_least_one_line() {
        let shared = Shared::new("syslog", "test".into(), 10);
        let big = "x".repeat(100);
        for _ in 0..3 {
            shared.push(line(&big, false));
        }
        assert_eq!(shared.take(10, 150).unwrap().0.len(), 1);
        assert_eq!(shared.take(10, 250).unwrap().0.len(), 2);
    }

    fn syslog(settings: &AuditSettings) -> Syslog {
        let mut syslog = Syslog::new(settings, settings.export_syslog.as_ref().unwrap()).unwrap();
        syslog.origin = "host bulwark 42".into();
        syslog
    }

    fn udp_settings() -> AuditSettings {
        AuditSettings {
            export_syslog: Some(SyslogTarget::parse("udp://127.0.0.1:9").unwrap()),
            ..AuditSettings::default()
        }
    }

    #[test]
    fn messages_are_rfc_5424_with_the_record_as_msg() {
        let s = syslog(&udp_settings());
        let checkpoint =
            r#"{"seq":3,"prev":"ab","time":"t","kind":"checkpoint","key":"k","sig":"s"}"#;
        assert_eq!(
            s.message(&line(checkpoint, true)),
            format!("<85>1 2023-11-14T22:13:20.123Z host bulwark 42 checkpoint - {checkpoint}")
        );
        let event =
            r#"{"seq":2,"prev":"ab","time":"t","kind":"auth_failure","reason":"\"kind\":\"x\""}"#;
        assert_eq!(
            s.message(&line(event, false)),
            format!("<86>1 2023-11-14T22:13:20.123Z host bulwark 42 auth_failure - {event}")
        );
        let frames = s.frames(&[line(checkpoint, true), line(event, false)]);
        let first = s.message(&line(checkpoint, true));
        let second = s.message(&line(event, false));
        assert_eq!(
            String::from_utf8(frames).unwrap(),
            format!("{} {first}{} {second}", first.len(), second.len())
        );
    }

    #[test]
    fn msgid_is_the_kind_when_it_fits() {
        assert_eq!(msgid(r#"{"seq":1,"kind":"trail_start"}"#), "trail_start");
        assert_eq!(msgid(r#"{"seq":1}"#), "-");
        assert_eq!(msgid("not json"), "-");
        assert_eq!(msgid(&format!(r#"{{"kind":"{}"}}"#, "k".repeat(33))), "-");
        assert_eq!(msgid(r#"{"kind":"a b"}"#), "-");
    }

    #[test]
    fn tls_needs_a_readable_ca() {
        let settings = AuditSettings {
            export_syslog: Some(SyslogTarget::parse("tls://127.0.0.1:6514").unwrap()),
            ..AuditSettings::default()
        };
        let err = Remotes::start(&settings).unwrap_err();
        assert!(err.contains("export_syslog_ca"), "{err}");
        let settings = AuditSettings {
            export_syslog_ca: Some("/nonexistent/bulwark-ca.pem".into()),
            ..settings
        };
        let err = Remotes::start(&settings).unwrap_err();
        assert!(err.contains("/nonexistent/bulwark-ca.pem"), "{err}");
    }

    #[test]
    fn a_missing_token_file_stops_the_start() {
        let settings = AuditSettings {
            export_http: Some("http://127.0.0.1:9/audit".into()),
            export_http_token_file: Some("/nonexistent/bulwark.token".into()),
            ..AuditSettings::default()
        };
        let err = Remotes::start(&settings).unwrap_err();
        assert!(err.contains("/nonexistent/bulwark.token"), "{err}");
    }

    /// A receiver that is down: each attempt fails and is counted, the line stays queued, and
    /// the close gives up on it (counted as dropped) without waiting for the backoff.
    #[test]
    fn failures_to_a_receiver_that_is_down_are_counted_and_retried() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let settings = AuditSettings {
            export_syslog: Some(SyslogTarget::parse(&format!("tcp://127.0.0.1:{port}")).unwrap()),
            ..AuditSettings::default()
        };
        let remotes = Remotes::start(&settings).unwrap();
        let outbox = remotes.outbox().unwrap();
        outbox.offer(r#"{"seq":1,"prev":"0","kind":"checkpoint"}"#, true);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let counts = remotes.counts();
            if counts[0].failures >= 1 {
                assert_eq!(counts[0].queued, 1, "{counts:?}");
                assert_eq!(counts[0].delivered, 0, "{counts:?}");
                break;
            }
            assert!(Instant::now() < deadline, "no failure counted: {counts:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        drop(outbox);
        assert!(remotes.wait(CLOSE_WAIT));
        assert!(
            started.elapsed() < BACKOFF_MAX / 2,
            "the close waited for the backoff"
        );
        let counts = &remotes.counts()[0];
        assert_eq!(
            (counts.target, counts.queued, counts.dropped),
            ("syslog", 0, 1),
            "{counts:?}"
        );
        assert!(counts.failures >= 2, "{counts:?}");
    }
}
