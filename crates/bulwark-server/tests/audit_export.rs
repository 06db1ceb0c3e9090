//! Remote export of the audit trail end to end: a broker on 127.0.0.1 with a small
//! `checkpoint_records`, anonymous logins refused to cause events, and receivers started by
//! each test on real sockets: syslog over UDP, TCP and TLS (RFC 5424, octet-counted framing on
//! streams) and a minimal HTTP server. After the broker stops, what each receiver got is
//! compared with the trail on disk byte for byte and fed to `bulwark_audit::Verifier` as an
//! anchor. Every wait is bounded polling; no sleep hides a race.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_audit::{Head, PublicKey, Report, Segment, Verifier};
use bulwark_proto::{ProtocolVersion, ReasonCode};
use bulwark_server::ServerConfig;
use bulwark_server::audit::settings::SyslogTarget;
use common::{Raw, TestServer, connect_packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// How long a test waits for lines to reach a receiver (retries back off from 1 s).
const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "anchor-token-5b1e";

/// What a receiver got: messages (syslog) or request bodies, in arrival order.
type Got = Arc<Mutex<Vec<String>>>;

/// A temporary directory holding the trail, its key and the test's certificates.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(common::unique("bulwark-audit-export"));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A broker keeping its trail here (a checkpoint every 3 records), `adjust`ed.
    async fn start(&self, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        common::start_secure_with(|config| {
            config.audit.file = Some(self.path("audit.jsonl"));
            config.audit.checkpoint_records = 3;
            adjust(config);
        })
        .await
    }

    /// The trail's lines (one segment: nothing here rotates).
    fn trail(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn checkpoints(&self) -> Vec<String> {
        self.trail()
            .into_iter()
            .filter(|l| Head::parse(l.as_bytes()).unwrap().is_checkpoint())
            .collect()
    }

    /// Verifies the trail with `anchor` as an exported copy, trusting the broker's key.
    fn verify(&self, anchor: &[String]) -> Report {
        let key = std::fs::read_to_string(self.path("audit-signing.pub")).unwrap();
        let trail = std::fs::read(self.path("audit.jsonl")).unwrap();
        let mut copy = anchor.join("\n");
        copy.push('\n');
        Verifier::new()
            .trust(PublicKey::parse(&key).unwrap())
            .anchor("export", copy.into_bytes())
            .verify(&[Segment {
                name: "audit.jsonl",
                bytes: &trail,
            }])
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` anonymous logins, each refused (an `auth_failure` record each).
async fn refuse_anonymous(server: &TestServer, n: usize) {
    for _ in 0..n {
        let id = common::unique("anon");
        let (_, ack) = Raw::connect(server.addr, &connect_packet(ProtocolVersion::V5, &id)).await;
        assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    }
}

/// Polls `done` on what `got` holds until it is true; fails with `what` after [`WAIT`].
async fn wait_until(got: &Got, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let now = got.lock().unwrap();
            if done(&now) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: got {now:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn contains_all(got: &[String], lines: &[String]) -> bool {
    lines.iter().all(|l| got.contains(l))
}

// ----- receivers -----------------------------------------------------------------------------

/// A syslog receiver over UDP: one message per datagram.
async fn udp_receiver() -> (SyslogTarget, Got) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let got = Got::default();
    let out = got.clone();
    tokio::spawn(async move {
        let mut buf = vec![0_u8; 65_536];
        while let Ok(n) = socket.recv(&mut buf).await {
            out.lock()
                .unwrap()
                .push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
    });
    let target = SyslogTarget::parse(&format!("udp://127.0.0.1:{port}")).unwrap();
    (target, got)
}

/// Reads octet-counted frames (`LEN SP MSG`, RFC 6587 section 3.4.1) until the stream ends;
/// anything else is pushed to `bad`.
async fn read_frames(mut stream: impl AsyncRead + Unpin, got: Got, bad: Got) {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 8192];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(space) = buf.iter().position(|b| *b == b' ') {
            let Some(len) = std::str::from_utf8(&buf[..space])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                bad.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                return;
            };
            if buf.len() < space + 1 + len {
                break;
            }
            let message = buf[space + 1..space + 1 + len].to_vec();
            buf.drain(..space + 1 + len);
            got.lock()
                .unwrap()
                .push(String::from_utf8(message).unwrap());
        }
    }
}

/// A syslog receiver over TCP on `listener`; frames it cannot read go to the second list.
fn tcp_receiver(listener: TcpListener) -> (Got, Got) {
    let (got, bad) = (Got::default(), Got::default());
    let (out, wrong) = (got.clone(), bad.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(read_frames(stream, out.clone(), wrong.clone()));
        }
    });
    (got, bad)
}

/// One request as the HTTP server saw it.
#[derive(Debug, Clone)]
struct Request {
    request_line: String,
    content_type: String,
    authorization: String,
    body: String,
    /// The status it was answered with.
    status: u16,
}

/// A minimal HTTP server: one request per connection, answered `statuses[i]` for the i-th
/// request and 200 after those.
fn http_server(listener: TcpListener, statuses: Vec<u16>) -> Arc<Mutex<Vec<Request>>> {
    let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0_u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i);
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap().to_owned();
            let mut headers = std::collections::HashMap::new();
            for line in lines {
                let (name, value) = line.split_once(':').unwrap();
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
            let length: usize = headers["content-length"].parse().unwrap();
            let mut body = buf[head_end + 4..].to_vec();
            while body.len() < length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
            let status = {
                let mut all = seen.lock().unwrap();
                let status = statuses.get(all.len()).copied().unwrap_or(200);
                all.push(Request {
                    request_line,
                    content_type: headers.get("content-type").cloned().unwrap_or_default(),
                    authorization: headers.get("authorization").cloned().unwrap_or_default(),
                    body: String::from_utf8(body).unwrap(),
                    status,
                });
                status
            };
            let answer = format!(
                "HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    requests
}

/// The bodies answered with a 2xx, in a list a waiter can poll.
fn delivered(requests: &Arc<Mutex<Vec<Request>>>) -> Vec<String> {
    requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.body.clone())
        .collect()
}

async fn wait_delivered(requests: &Arc<Mutex<Vec<Request>>>, what: &str, lines: &[String]) {
    let deadline = Instant::now() + WAIT;
    while !contains_all(&delivered(requests), lines) {
        assert!(
            Instant::now() < deadline,
            "{what}: {:#?}",
            requests.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that nothing listens on now (bound, then closed).
async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ----- RFC 5424 ------------------------------------------------------------------------------

/// Checks that `message` is `<PRI>1 TIMESTAMP HOSTNAME bulwark PROCID MSGID - MSG` with the
/// facility authpriv, notice for checkpoints and info otherwise, MSGID the record's kind, and
/// MSG a record; returns MSG.
fn rfc5424(message: &str) -> String {
    let rest = message.strip_prefix('<').expect(message);
    let (pri, rest) = rest.split_once('>').expect(message);
    let parts: Vec<&str> = rest.splitn(7, ' ').collect();
    assert_eq!(parts.len(), 7, "{message}");
    let (version, timestamp, host, app, procid, msgid) =
        (parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]);
    let (structured, msg) = parts[6].split_once(' ').expect(message);
    assert_eq!(version, "1", "{message}");
    assert!(
        timestamp.len() == 24 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
        "{message}"
    );
    assert!(
        !host.is_empty() && host.bytes().all(|b| (33..=126).contains(&b)),
        "{message}"
    );
    assert_eq!(app, "bulwark", "{message}");
    assert_eq!(procid, std::process::id().to_string(), "{message}");
    assert_eq!(structured, "-", "{message}");
    let head = Head::parse(msg.as_bytes()).unwrap_or_else(|e| panic!("{e}: {message}"));
    assert_eq!(Some(msgid), head.kind.as_deref(), "{message}");
    let severity = if head.is_checkpoint() { 5 } else { 6 };
    assert_eq!(pri, (10 * 8 + severity).to_string(), "{message}");
    msg.to_owned()
}

fn messages(got: &Got) -> Vec<String> {
    got.lock().unwrap().iter().map(|m| rfc5424(m)).collect()
}

/// The MSG parts of `all` (what follows the seventh space), unchecked: for polling.
fn msgs(all: &[String]) -> Vec<String> {
    all.iter()
        .filter_map(|m| m.splitn(8, ' ').nth(7).map(str::to_owned))
        .collect()
}

// ----- tests ---------------------------------------------------------------------------------

/// UDP syslog and HTTP with `export_records`: every record reaches both, as the trail has it,
/// and the copies anchor the whole trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_goes_to_udp_syslog_and_http() {
    let fixture = Fixture::new();
    let (target, udp) = udp_receiver().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = http_server(listener, Vec::new());
    std::fs::write(fixture.path("token"), format!("{TOKEN}\n")).unwrap();
    let server = fixture
        .start(|c| {
            c.audit.export_records = true;
            c.audit.export_syslog = Some(target);
            c.audit.export_http = Some(format!("http://127.0.0.1:{port}/audit/v1?src=test"));
            c.audit.export_http_token_file = Some(fixture.path("token"));
        })
        .await;
    refuse_anonymous(&server, 4).await;
    // Delivered while the broker runs, not only at the stop.
    wait_until(&udp, "a checkpoint over UDP before the stop", |all| {
        msgs(all)
            .iter()
            .any(|m| m.contains(r#""kind":"checkpoint""#))
    })
    .await;
    server.stop().await;

    let trail = fixture.trail();
    assert!(trail.len() >= 8, "{trail:#?}");
    wait_until(&udp, "every record over UDP", |all| {
        contains_all(&msgs(all), &trail)
    })
    .await;
    wait_delivered(&requests, "every record over HTTP", &trail).await;

    let syslog = messages(&udp);
    assert_eq!(
        syslog, trail,
        "one datagram per record, in order, each as in the trail"
    );
    let http = delivered(&requests);
    assert_eq!(http, trail);
    for request in requests.lock().unwrap().iter() {
        assert_eq!(request.request_line, "POST /audit/v1?src=test HTTP/1.1");
        assert_eq!(request.content_type, "application/json");
        assert_eq!(request.authorization, format!("Bearer {TOKEN}"));
    }
    for copy in [&syslog, &http] {
        let report = fixture.verify(copy);
        assert!(!report.tampered(), "{:#?}", report.findings);
        assert_eq!(report.anchored, trail.len() as u64);
    }
}

/// TCP syslog, checkpoints only: octet-counted frames, and the checkpoints received are the
/// trail's own, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_go_to_tcp_syslog_in_octet_counted_frames() {
    let fixture = Fixture::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tcp, bad) = tcp_receiver(listener);
    let server = fixture
        .start(|c| {
            c.audit.export_syslog =
                Some(SyslogTarget::parse(&format!("tcp://127.0.0.1:{port}")).unwrap());
        })
        .await;
    refuse_anonymous(&server, 7).await;
    server.stop().await;

    let checkpoints = fixture.checkpoints();
    assert!(checkpoints.len() >= 3, "{:#?}", fixture.trail());
    wait_until(&tcp, "every checkpoint over TCP", |all| {
        contains_all(&msgs(all), &checkpoints)
    })
    .await;
    assert!(bad.lock().unwrap().is_empty(), "{:?}", bad.lock().unwrap());
    let received = messages(&tcp);
    assert_eq!(
        received, checkpoints,
        "checkpoints only, in order, byte for byte"
    );
    let report = fixture.verify(&received);
    assert!(!report.tampered(), "{:#?}", report.findings);
    assert_eq!(report.anchored, checkpoints.len() as u64);
}

/// An endpoint that answers 500 gets the same line again (after the backoff), and the line
/// counts as delivered once it answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_failure_is_retried_with_the_same_line() {
    let fixture = Fixture::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = http_server(listener, vec![500]);
    let server = fixture
        .start(|c| c.audit.export_http = Some(format!("http://127.0.0.1:{port}/anchor")))
        .await;
    refuse_anonymous(&server, 2).await;
    // trail_start and two failures: a checkpoint, refused once, then sent again.
    let deadline = Instant::now() + WAIT;
    while requests.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "{:#?}", requests.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let seen = requests.lock().unwrap();
        assert_eq!((seen[0].status, seen[1].status), (500, 200));
        assert_eq!(seen[0].body, seen[1].body, "the retry sends the same line");
        assert!(
            Head::parse(seen[0].body.as_bytes())
                .unwrap()
                .is_checkpoint()
        );
        assert_eq!(seen[0].authorization, "", "no token file, no Authorization");
    }
    server.stop().await;
    let checkpoints = fixture.checkpoints();
    wait_delivered(&requests, "every checkpoint over HTTP", &checkpoints).await;
    assert_eq!(delivered(&requests), checkpoints);
    let report = fixture.verify(&delivered(&requests));
    assert!(!report.tampered(), "{:#?}", report.findings);
    assert!(report.anchored > 0);
}

/// Receivers that are down when the broker starts: it starts and serves all the same, and
/// once they are up the checkpoints reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_down_at_start_do_not_stop_the_broker() {
    let fixture = Fixture::new();
    let (syslog_port, http_port) = (free_port().await, free_port().await);
    let started = Instant::now();
    let server = fixture
        .start(|c| {
            c.audit.export_syslog =
                Some(SyslogTarget::parse(&format!("tcp://127.0.0.1:{syslog_port}")).unwrap());
            c.audit.export_http = Some(format!("http://127.0.0.1:{http_port}/anchor"));
        })
        .await;
    // Logins are answered at once, while every delivery fails.
    refuse_anonymous(&server, 5).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let first = fixture.checkpoints();
    assert!(!first.is_empty(), "{:#?}", fixture.trail());

    let (tcp, bad) = tcp_receiver(TcpListener::bind(("127.0.0.1", syslog_port)).await.unwrap());
    let requests = http_server(
        TcpListener::bind(("127.0.0.1", http_port)).await.unwrap(),
        Vec::new(),
    );
    // Retried with backoff (1 s, 2 s, ...) until the receivers answer.
    wait_until(&tcp, "the checkpoints after the receiver came up", |all| {
        contains_all(&msgs(all), &first)
    })
    .await;
    wait_delivered(&requests, "the checkpoints over HTTP", &first).await;
    refuse_anonymous(&server, 1).await;
    server.stop().await;

    let checkpoints = fixture.checkpoints();
    wait_until(&tcp, "every checkpoint over TCP", |all| {
        contains_all(&msgs(all), &checkpoints)
    })
    .await;
    wait_delivered(&requests, "every checkpoint over HTTP", &checkpoints).await;
    assert!(bad.lock().unwrap().is_empty());
    for copy in [messages(&tcp), delivered(&requests)] {
        let unique: BTreeSet<&String> = copy.iter().collect();
        assert_eq!(unique.len(), checkpoints.len(), "{copy:#?}");
        let report = fixture.verify(&copy);
        assert!(!report.tampered(), "{:#?}", report.findings);
        assert!(report.anchored >= checkpoints.len() as u64);
    }
}

/// TLS syslog with a client certificate: the receiver trusts the test's CA for clients, the
/// broker trusts it (only) for the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_go_to_tls_syslog_with_a_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let fixture = Fixture::new();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Export CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(fixture.path("ca.pem"), ca.pem()).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = |san: SanType, cn: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![san];
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert, key)
    };
    let (server_cert, server_key) = leaf(SanType::IpAddress([127, 0, 0, 1].into()), "receiver");
    let (client_cert, client_key) = leaf(SanType::DnsName("broker".try_into().unwrap()), "broker");
    std::fs::write(fixture.path("client.pem"), client_cert.pem()).unwrap();
    common::write_private_key(&fixture.path("client.key"), &client_key.serialize_pem());

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (got, bad) = (Got::default(), Got::default());
    let (out, wrong) = (got.clone(), bad.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            match acceptor.accept(stream).await {
                Ok(tls) => {
                    let peer = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                    if peer == 0 {
                        wrong.lock().unwrap().push("no client certificate".into());
                    }
                    tokio::spawn(read_frames(tls, out.clone(), wrong.clone()));
                }
                Err(err) => wrong.lock().unwrap().push(format!("handshake: {err}")),
            }
        }
    });

    let server = fixture
        .start(|c| {
            c.audit.export_syslog = Some(SyslogTarget::parse(&format!("tls://{addr}")).unwrap());
            c.audit.export_syslog_ca = Some(fixture.path("ca.pem"));
            c.audit.export_syslog_cert = Some(fixture.path("client.pem"));
            c.audit.export_syslog_key = Some(fixture.path("client.key"));
        })
        .await;
    refuse_anonymous(&server, 4).await;
    server.stop().await;

    let checkpoints = fixture.checkpoints();
    wait_until(&got, "every checkpoint over TLS", |all| {
        contains_all(&msgs(all), &checkpoints)
    })
    .await;
    assert!(bad.lock().unwrap().is_empty(), "{:?}", bad.lock().unwrap());
    let received = messages(&got);
    assert_eq!(received, checkpoints);
    let report = fixture.verify(&received);
    assert!(!report.tampered(), "{:#?}", report.findings);
    assert_eq!(report.anchored, checkpoints.len() as u64);
}
