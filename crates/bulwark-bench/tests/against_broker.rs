//! Every scenario, briefly, against a real Bulwark broker in this process: the load generator
//! receives what it sends, and at QoS 1 and 2 loses nothing and sees nothing twice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::net::SocketAddr;
use std::time::Duration;

use bulwark_bench::{BenchOptions, Report, Scenario, run_scenario};
use bulwark_proto::{ProtocolVersion, QoS};

struct Broker {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Broker {
    async fn start() -> Self {
        Self::with_listener(bulwark_server::ListenerConfig::tcp(
            "t",
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await
    }

    /// A broker with one TLS listener, the test certificate of tests/data (ECDSA P-256, for
    /// localhost and 127.0.0.1, signed by tests/data/ca.pem).
    async fn start_tls() -> Self {
        // A checkout gives the key the umask's mode; the broker serves owner-only keys.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data("server.key"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        let tls = bulwark_server::tls::TlsSettings::new(data("server.pem"), data("server.key"));
        Self::with_listener(bulwark_server::ListenerConfig::tls(
            "t",
            "127.0.0.1:0".parse().unwrap(),
            tls,
        ))
        .await
    }

    async fn with_listener(listener: bulwark_server::ListenerConfig) -> Self {
        Self::configured(listener, |_| {}).await
    }

    async fn configured(
        mut listener: bulwark_server::ListenerConfig,
        configure: impl FnOnce(&mut bulwark_server::ServerConfig),
    ) -> Self {
        // The bench measures the broker's message path; authentication has its own tests.
        listener.dangerous_allow_anonymous = true;
        let mut c = bulwark_server::ServerConfig {
            listeners: vec![listener],
            ..Default::default()
        };
        c.broker.sys_interval = None;
        configure(&mut c);
        let s = bulwark_server::Server::bind(c).await.unwrap();
        let addr = s.local_addrs()[0];
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(s.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    fn options(&self, scenario: Scenario) -> BenchOptions {
        let mut o = BenchOptions::new(scenario, self.addr.ip().to_string(), self.addr.port());
        o.load.duration = Duration::from_secs(1);
        o.load.warmup = Duration::from_millis(200);
        o
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn assert_delivered(report: &Report, qos: QoS) {
    assert!(report.messages.received > 0, "{}", report.to_table());
    assert!(report.messages.published > 0, "{}", report.to_table());
    assert_eq!(report.errors, 0, "{}", report.to_table());
    let latency = report.latency.expect("latency samples");
    assert!(latency.p50_us > 0.0 && latency.p50_us <= latency.max_us);
    if qos != QoS::AtMostOnce {
        assert_eq!(report.messages.lost, 0, "{}", report.to_table());
        assert_eq!(report.messages.duplicates, 0, "{}", report.to_table());
        assert_eq!(report.messages.reordered, 0, "{}", report.to_table());
        assert_eq!(
            report.messages.received,
            report.messages.expected,
            "{}",
            report.to_table()
        );
        assert_eq!(report.messages.window_resets, 0, "{}", report.to_table());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_scenarios_at_every_qos() {
    let broker = Broker::start().await;
    for (scenario, n) in [
        (Scenario::FanIn, 8),
        (Scenario::Pairs, 4),
        (Scenario::FanOut, 8),
    ] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut o = broker.options(scenario);
            o.load.connections = Some(n);
            o.load.qos = qos;
            let report = run_scenario(&o).await.unwrap();
            assert_delivered(&report, qos);
            if scenario == Scenario::FanOut {
                assert_eq!(
                    report.messages.expected,
                    report.messages.published * n as u64
                );
            }
        }
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_and_a_fixed_rate() {
    let broker = Broker::start().await;
    let mut o = broker.options(Scenario::Latency);
    o.load.connections = Some(5);
    o.load.rate = Some(1000);
    o.load.qos = QoS::ExactlyOnce;
    o.connect.version = ProtocolVersion::V5;
    o.load.payload = 16;
    let report = run_scenario(&o).await.unwrap();
    assert_delivered(&report, o.load.qos);
    // 1000 msg/s for 1 s: the timer keeps the rate, give or take a tick.
    assert!(
        (800..=1200).contains(&report.messages.published),
        "{}",
        report.to_table()
    );

    let mut o = broker.options(Scenario::Pairs);
    o.load.connections = Some(3);
    o.load.qos = QoS::AtLeastOnce;
    o.connect.version = ProtocolVersion::V5;
    o.load.window = Some(10);
    let report = run_scenario(&o).await.unwrap();
    assert_delivered(&report, o.load.qos);
    assert_eq!(report.setup.window, 10);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_scenarios() {
    let broker = Broker::start().await;
    let mut o = broker.options(Scenario::Conn);
    o.load.connections = Some(50);
    o.broker_pid = Some(std::process::id());
    let report = run_scenario(&o).await.unwrap();
    let connect = report.connect.as_ref().unwrap();
    assert_eq!(connect.connected, 50, "{}", report.to_table());
    assert_eq!(connect.failed, 0);
    assert!(connect.per_second > 0.0);
    assert!(connect.latency.is_some());
    assert_eq!(report.errors, 0, "{}", report.to_table());
    #[cfg(target_os = "linux")]
    {
        assert!(report.memory.is_some(), "{}", report.to_table());
        assert!(report.cpu.broker_cpu_percent.is_some());
    }

    let mut o = broker.options(Scenario::Churn);
    o.load.workers = 2;
    let report = run_scenario(&o).await.unwrap();
    let connect = report.connect.as_ref().unwrap();
    assert!(connect.connected > 0, "{}", report.to_table());
    assert_eq!(connect.failed, 0, "{}", report.to_table());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_full_handshakes() {
    let broker = Broker::start_tls().await;
    for scenario in [Scenario::Churn, Scenario::Conn] {
        let mut o = broker.options(scenario);
        o.connect.tls_ca = Some(data("ca.pem"));
        o.connect.tls_resume = false;
        o.load.workers = 2;
        o.load.connections = Some(20);
        let report = run_scenario(&o).await.unwrap();
        assert!(report.setup.tls, "{}", report.to_table());
        let connect = report.connect.as_ref().unwrap();
        assert!(connect.connected > 0, "{}", report.to_table());
        assert_eq!(connect.failed, 0, "{}", report.to_table());
        assert_eq!(report.errors, 0, "{}", report.to_table());
    }
    let mut o = broker.options(Scenario::Pairs);
    o.connect.tls_ca = Some(data("ca.pem"));
    o.connect.tls_resume = false;
    o.load.connections = Some(3);
    o.load.qos = QoS::AtLeastOnce;
    let report = run_scenario(&o).await.unwrap();
    assert_delivered(&report, o.load.qos);

    // Trusting the broker's own certificate, not its issuer: no connection, and no hang.
    let mut o = broker.options(Scenario::Churn);
    o.connect.tls_ca = Some(data("server.pem"));
    o.load.duration = Duration::from_millis(200);
    o.load.warmup = Duration::ZERO;
    let report = run_scenario(&o).await;
    match report {
        Err(err) => assert!(err.to_string().contains("TLS"), "{err}"),
        Ok(report) => {
            let connect = report.connect.as_ref().unwrap();
            assert_eq!(connect.connected, 0, "{}", report.to_table());
            assert!(connect.failed > 0, "{}", report.to_table());
        }
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_attacks_from_another_address_and_compares() {
    // Admission as shipped, but with the loopback no longer exempt, so that the attack from
    // 127.0.0.2 meets the per-source caps; a short CONNECT timeout for the slowloris.
    let listener = bulwark_server::ListenerConfig::tcp("t", "127.0.0.1:0".parse().unwrap());
    let broker = Broker::configured(listener, |c| {
        c.admission.exempt = Vec::new();
        c.connect_timeout = Duration::from_millis(500);
    })
    .await;
    let mut o = broker.options(Scenario::Flood);
    o.load.connections = Some(5);
    o.load.rate = Some(500);
    o.attack.slowloris = 40;
    o.attack.slowloris_interval = Duration::from_millis(100);
    o.attack.flood_rate = 400;
    let report = run_scenario(&o).await.unwrap();
    let table = report.to_table();
    assert_eq!(report.setup.scenario, Scenario::Flood, "{table}");
    assert_delivered(&report, QoS::AtMostOnce);
    let flood = report.flood.as_ref().expect("flood figures");
    assert!(flood.baseline_latency.is_some(), "{table}");
    assert!(flood.p99_ratio.is_some_and(|r| r > 0.0), "{table}");
    let a = &flood.attack;
    assert_eq!(a.source, "127.0.0.2", "{table}");
    // Past its burst (200) the attacker's address is over its rate (100/s) and in cooldown:
    // most of the flood is refused, and only the burst and the rate's refill were let in.
    assert!(a.flood_attempts > 400, "{table}");
    assert!(a.flood_refused > a.flood_accepted, "{table}");
    assert!(a.flood_accepted <= 200 + 100 * 5, "{table}");
    // Slowloris sockets were closed by the broker (refused at once, or at the CONNECT
    // timeout), never held for much longer than the timeout.
    assert!(a.slowloris_opened > 0 && a.slowloris_closed > 0, "{table}");
    assert!(a.slowloris_longest_s < 3.0, "{table}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut o = BenchOptions::new(Scenario::Pairs, "127.0.0.1", port);
    o.load.connections = Some(1);
    o.load.duration = Duration::from_millis(100);
    o.load.warmup = Duration::ZERO;
    assert!(run_scenario(&o).await.is_err());
}
