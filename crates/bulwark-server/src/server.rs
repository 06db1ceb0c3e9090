//! Binding, accepting, and the orderly shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bulwark_core::{Broker, ConnectionId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::auth::{AuthService, AuthSettings, ListenerAuth};
use crate::config::{ConfigError, ListenerConfig, ListenerKind, ServerConfig};
use crate::driver::{CertIdentity, DriverContext, drive};
use crate::gate::{Gate, Permit};
use crate::proxy::TrustedProxies;
use crate::router::{Router, RouterParts, Traffic};
use crate::tls::{ClientAuth, TlsAcceptor, TlsError};
use crate::transport::{TlsStream, Transport};
use crate::ws::WsOptions;

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// A listener could not bind.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A TLS listener's certificate, key, CA bundle or CRL is not usable.
    Tls {
        /// The listener's name.
        listener: String,
        /// What is wrong.
        source: TlsError,
    },
    /// The password store or a JWT key is not usable.
    Auth(String),
    /// The audit trail, or its signing key, cannot be opened.
    Audit(String),
    /// The ACL file cannot be read or has mistakes.
    Acl(String),
    /// The ban file cannot be read or has mistakes.
    Bans(String),
    /// The durable store cannot be opened or read back.
    Store(bulwark_store::StoreError),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(err) => err.fmt(f),
            Self::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Self::Tls { listener, source } => write!(f, "listener {listener}: {source}"),
            Self::Store(err) => write!(f, "storage: {err}"),
            Self::Auth(err) => write!(f, "authentication: {err}"),
            Self::Audit(err) => write!(f, "audit: {err}"),
            Self::Acl(err) => write!(f, "ACL: {err}"),
            Self::Bans(err) => write!(f, "bans: {err}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// A server with its listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    listeners: Vec<Bound>,
    auth: Arc<AuthService>,
    acl: Option<(crate::acl::AclFile, Arc<bulwark_acl::AclRules>)>,
    bans: Arc<crate::bans::Bans>,
    /// The durable store and what it held at start; `None`: state in memory only.
    durable: Option<Durable>,
    /// The admin listener's socket, bound, and its TLS settings.
    admin: Option<(TcpListener, Option<Arc<TlsAcceptor>>)>,
    /// The detection task's half of its queue; `None`: no rules.
    detect: Option<crate::detect::DetectRx>,
}

/// A durable store and what it held at start.
type Durable = (Box<dyn bulwark_store::Store>, bulwark_store::Restored);

/// A bound listener and what it serves.
#[derive(Debug)]
struct Bound {
    name: String,
    max_connections: usize,
    socket: TcpListener,
    layers: Option<Arc<Layers>>,
    tls: Option<Arc<TlsAcceptor>>,
    kind: &'static str,
    auth: Arc<ListenerAuth>,
}

/// Closes a socket refused at accept with a reset rather than a FIN: a flood of refused
/// connections then leaves no TIME_WAIT state behind (the broker would be the side that
/// closed first) and costs the kernel one packet instead of a teardown.
fn refuse(stream: tokio::net::TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Binds a listening socket. An IPv6 address listens on IPv6 only, so that `[::]:P` and
/// `0.0.0.0:P` can both be listeners (the first run has both) and each listener's address is
/// exactly what it serves, whatever the host's `bindv6only` setting.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // As tokio's own bind: a restarted broker can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Whether a bind failed because the host lacks the address or its family (no IPv6).
fn address_unavailable(err: &std::io::Error) -> bool {
    /// `EAFNOSUPPORT` on Linux: the kernel has no IPv6.
    const FAMILY_NOT_SUPPORTED: i32 = 97;
    err.kind() == std::io::ErrorKind::AddrNotAvailable
        || err.raw_os_error() == Some(FAMILY_NOT_SUPPORTED)
}

/// What stands between an accepted socket and MQTT: a PROXY header, TLS, WebSocket, in that
/// order. `None` in [`Bound`] for plain TCP, which takes the direct path.
#[derive(Debug)]
struct Layers {
    proxy: Option<TrustedProxies>,
    tls: Option<Arc<TlsAcceptor>>,
    ws: Option<WsOptions>,
    auth: Arc<ListenerAuth>,
}

/// Opens the durable store `[storage]` names and reads back what it holds (`None`: state in
/// memory only).
fn open_store(storage: &crate::config::StorageSettings) -> Result<Option<Durable>, ServerError> {
    let Some(path) = &storage.path else {
        info!("storage in memory: sessions and retained messages are lost at a restart");
        return Ok(None);
    };
    let mut store =
        bulwark_store::DiskStore::open(path, storage.sync).map_err(ServerError::Store)?;
    let restored = bulwark_store::Store::load(&mut store).map_err(ServerError::Store)?;
    info!(path = %path.display(), sync = ?storage.sync, "durable storage");
    Ok(Some((Box::new(store), restored)))
}

impl Bound {
    /// Loads a listener's certificates and binds its socket; `None` for an optional listener
    /// whose address this host does not have.
    fn bind(listener: &ListenerConfig, auth: &AuthSettings) -> Result<Option<Self>, ServerError> {
        // Certificates first: a listener never binds with files it cannot serve.
        let tls = match listener.kind.tls() {
            None => None,
            Some(settings) => Some(Arc::new(TlsAcceptor::new(settings.clone()).map_err(
                |source| ServerError::Tls {
                    listener: listener.name.clone(),
                    source,
                },
            )?)),
        };
        let socket = match bind_listener(listener.bind) {
            Ok(socket) => socket,
            Err(source) if listener.optional && address_unavailable(&source) => {
                warn!(
                    listener = %listener.name,
                    addr = %listener.bind,
                    error = %source,
                    "this host does not have the address: listener skipped"
                );
                return Ok(None);
            }
            Err(source) => {
                return Err(ServerError::Bind {
                    addr: listener.bind,
                    source,
                });
            }
        };
        if listener.dangerous_plaintext && !listener.bind.ip().is_loopback() {
            warn!(
                listener = %listener.name,
                addr = %listener.bind,
                "dangerous_plaintext: MQTT in clear text on a non-loopback address"
            );
        }
        if listener.dangerous_allow_anonymous {
            warn!(
                listener = %listener.name,
                "dangerous_allow_anonymous: clients without credentials are let in"
            );
        }
        let chain = listener.chain(auth);
        info!(
            listener = %listener.name,
            authenticators = ?chain.iter().map(|a| a.name()).collect::<Vec<_>>(),
            "authentication chain"
        );
        let listener_auth = Arc::new(ListenerAuth {
            name: Arc::from(listener.name.as_str()),
            chain,
            allow_anonymous: listener.dangerous_allow_anonymous,
        });
        let ws = listener.kind.websocket().cloned();
        let layers =
            (tls.is_some() || ws.is_some() || listener.proxy_protocol.is_some()).then(|| {
                Arc::new(Layers {
                    proxy: listener.proxy_protocol.clone(),
                    tls: tls.clone(),
                    ws,
                    auth: listener_auth.clone(),
                })
            });
        Ok(Some(Self {
            auth: listener_auth,
            name: listener.name.clone(),
            max_connections: listener.max_connections,
            socket,
            layers,
            tls,
            kind: match &listener.kind {
                ListenerKind::Tcp => "MQTT over TCP",
                ListenerKind::Tls(_) => "MQTT over TLS",
                ListenerKind::Ws(_) => "MQTT over WebSocket",
                ListenerKind::Wss(..) => "MQTT over WebSocket over TLS",
            },
        }))
    }
}

impl Server {
    /// Validates the configuration and binds every listener.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        // The store first: a broker that cannot read back what it acknowledged does not start.
        let durable = open_store(&config.storage)?;
        let (detect_tx, detect) = crate::detect::channel(&config.detect).unzip();
        let audit = crate::audit::Audit::open(&config.audit)
            .map_err(ServerError::Audit)?
            .with_detect(detect_tx);
        let auth = Arc::new(AuthService::new(&config.auth, audit).map_err(ServerError::Auth)?);
        let bans =
            Arc::new(crate::bans::Bans::open(config.bans.clone()).map_err(ServerError::Bans)?);
        let acl = match &config.acl.file {
            Some(path) => Some(crate::acl::AclFile::open(path).map_err(ServerError::Acl)?),
            None => {
                warn!(
                    "no ACL file: authorization is off, every client may publish and subscribe anywhere"
                );
                None
            }
        };
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            if let Some(bound) = Bound::bind(listener, &config.auth)? {
                listeners.push(bound);
            }
        }
        let admin = match &config.admin {
            Some(admin) => {
                let tls = match &admin.tls {
                    Some(tls) => Some(Arc::new(TlsAcceptor::new((**tls).clone()).map_err(
                        |source| ServerError::Tls {
                            listener: "admin".to_owned(),
                            source,
                        },
                    )?)),
                    None => None,
                };
                let socket = bind_listener(admin.bind).map_err(|source| ServerError::Bind {
                    addr: admin.bind,
                    source,
                })?;
                Some((socket, tls))
            }
            None => None,
        };
        Ok(Self {
            config,
            listeners,
            auth,
            acl,
            bans,
            durable,
            admin,
            detect,
        })
    }

    /// The admin listener's address, if there is one (useful with port 0).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(s, _)| s.local_addr().ok())
    }

    /// Keeps persistent sessions, their QoS 1/2 messages and retained messages in `store`:
    /// what it holds now is read back (and restored when the server runs), and from then on
    /// every QoS 1/2 PUBLISH is acknowledged only once it is committed there.
    pub fn with_store(
        mut self,
        mut store: Box<dyn bulwark_store::Store>,
    ) -> Result<Self, bulwark_store::StoreError> {
        let restored = store.load()?;
        self.durable = Some((store, restored));
        Ok(self)
    }

    /// The addresses the listeners are bound to (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` completes, then sends 5.0 clients DISCONNECT 0x8B, flushes
    /// and returns once every connection is closed (or the grace period ran out).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            listeners,
            auth,
            acl,
            bans,
            durable,
            admin,
            detect,
        } = self;
        let (acl_file, rules) = match acl {
            Some((file, rules)) => (Some(file), Some(rules)),
            None => (None, None),
        };
        let Some((broker, held)) = start_engine(&config, rules, durable) else {
            return;
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let store_metrics = held.as_ref().map(crate::durable::Held::metrics);
        let (ctx, router_task) = start_router(&config, broker, held, &auth, &bans, &stop_rx);
        let gate = Arc::new(Gate::new(
            config.admission.clone(),
            auth.audit.clone(),
            ctx.traffic.clone(),
            bans.clone(),
        ));
        let mut tasks = JoinSet::new();
        let admin_tls = admin.as_ref().and_then(|(_, tls)| tls.clone());
        let reload_now = Arc::new(tokio::sync::Notify::new());
        let reloads = Reloads {
            now: reload_now.clone(),
            tls: listeners
                .iter()
                .filter_map(|l| l.tls.clone())
                .chain(admin_tls)
                .collect(),
            acl: acl_file,
            bans,
            auth: auth.clone(),
            router: ctx.router.clone(),
        };
        if let (Some((socket, tls)), Some(settings)) = (admin, config.admin.clone()) {
            let listener_tls = listeners
                .iter()
                .filter_map(|l| Some((l.name.clone(), l.tls.clone()?)))
                .chain(tls.clone().map(|t| ("admin".to_owned(), t)))
                .collect();
            let backend = crate::admin::AdminBackend::new(crate::admin::AdminParts {
                settings,
                router: ctx.router.clone(),
                auth: auth.clone(),
                bans: reloads.bans.clone(),
                traffic: ctx.traffic.clone(),
                store: store_metrics,
                tls: listener_tls,
                memory_watermark: config.memory_watermark,
                reload: crate::admin::ReloadParts {
                    now: reload_now.clone(),
                    acl_file: config.acl.file.clone(),
                    ban_file: config.bans.file.clone(),
                    listener_names: config.listeners.iter().map(|l| l.name.clone()).collect(),
                    other_identities: config.other_identity_sources(),
                },
                config: crate::admin::effective_config(&config),
            });
            tasks.spawn(serve_admin(socket, tls, backend, stop_rx.clone()));
        }
        if let Some(detect) = detect {
            let acting = crate::detect::Acting {
                auth: auth.clone(),
                router: reloads.router.clone(),
                bans: reloads.bans.clone(),
            };
            tasks.spawn(crate::detect::run(detect, acting, stop_rx.clone()));
        }
        start_background(&mut tasks, &config, reloads, &gate, &stop_rx);
        // Every connection's task holds a clone; when all are dropped, every one has ended.
        let (alive, alive_rx) = mpsc::channel::<()>(1);
        let accepting = Accepting {
            ctx,
            gate,
            next_conn: Arc::new(AtomicU64::new(1)),
            alive,
            stop: stop_rx,
        };
        for listener in listeners {
            listener.start(&mut tasks, accepting.clone());
        }
        drop(accepting);
        shutdown.await;
        wind_down(
            config.shutdown_grace,
            &stop_tx,
            tasks,
            alive_rx,
            router_task,
        )
        .await;
        // Last: the trail's stop record and final checkpoint cover the shutdown's events.
        auth.audit.close().await;
    }
}

/// The engine, with the ACL rules and what the durable store held at start restored, and the
/// store's writer thread (`None` without a store). `None` if the writer cannot start: without
/// it nothing durable could be acknowledged, so the server does not serve.
fn start_engine(
    config: &ServerConfig,
    rules: Option<Arc<bulwark_acl::AclRules>>,
    durable: Option<Durable>,
) -> Option<(Broker, Option<crate::durable::Held>)> {
    let mut broker = Broker::new(config.broker.clone(), Instant::now());
    broker.set_acl(rules, Instant::now());
    let Some((store, restored)) = durable else {
        return Some((broker, None));
    };
    let (sessions, retained) = broker.restore(restored, Instant::now());
    info!(sessions, retained, "restored from the store");
    match crate::durable::Held::start(store) {
        Ok(held) => Some((broker, Some(held))),
        Err(err) => {
            error!(%err, "cannot start the store's writer thread; not serving");
            None
        }
    }
}

/// Starts the router task that owns `broker`; returns what every driver shares (the way to
/// the router among it) and the router's task.
fn start_router(
    config: &ServerConfig,
    broker: Broker,
    held: Option<crate::durable::Held>,
    auth: &Arc<AuthService>,
    bans: &Arc<crate::bans::Bans>,
    stop: &watch::Receiver<bool>,
) -> (Arc<DriverContext>, tokio::task::JoinHandle<()>) {
    let (router_tx, router_rx) = mpsc::channel(4096);
    let traffic = Arc::new(Traffic::default());
    let router = Router::new(RouterParts {
        broker,
        rx: router_rx,
        traffic: traffic.clone(),
        shutdown: stop.clone(),
        max_backlog: config.broker.sessions.max_queued_bytes,
        audit: auth.audit.clone(),
        held,
    });
    let router_task = tokio::spawn(router.run());
    let ctx = Arc::new(DriverContext {
        router: router_tx,
        limits: config.decoder,
        connect_timeout: config.connect_timeout,
        write_timeout: config.write_timeout,
        traffic,
        auth: auth.clone(),
        rates: config.rates.clone(),
        bans: bans.clone(),
    });
    (ctx, router_task)
}

/// Starts the tasks beside the listeners: the file watcher (always: it also keeps SIGHUP from
/// terminating the process), the JWKS refresh and, with a watermark, the memory watch.
fn start_background(
    tasks: &mut JoinSet<()>,
    config: &ServerConfig,
    reloads: Reloads,
    gate: &Arc<Gate>,
    stop: &watch::Receiver<bool>,
) {
    let auth = reloads.auth.clone();
    let router = reloads.router.clone();
    tasks.spawn(watch_files(
        reloads,
        config.tls_watch_interval,
        stop.clone(),
    ));
    tasks.spawn(auth.clone().refresh_jwks(stop.clone()));
    if config.memory_watermark > 0 {
        tasks.spawn(crate::memory::watch(
            config.memory_watermark,
            gate.clone(),
            router,
            auth.audit.clone(),
            stop.clone(),
        ));
    }
}

/// Serves the admin API until the server stops.
async fn serve_admin(
    socket: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    backend: crate::admin::AdminBackend,
    mut stop: watch::Receiver<bool>,
) {
    if let Ok(addr) = socket.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(%addr, "admin API listening ({scheme})");
    }
    let stopped = async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    // HTTP/2 or HTTP/1.1 by ALPN, on the TLS settings in force at each handshake.
    let tls = tls.map(|acceptor| -> bulwark_admin::TlsConfig {
        Arc::new(move || {
            let mut config = (*acceptor.config()).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(config)
        })
    });
    bulwark_admin::serve(socket, Arc::new(backend), tls, stopped).await;
}

/// Stops accepting, tells the router and the drivers to close, and waits for the
/// connections to end and the router's last commit, each at most until the grace period
/// has passed.
async fn wind_down(
    grace: std::time::Duration,
    stop: &watch::Sender<bool>,
    mut tasks: JoinSet<()>,
    mut alive: mpsc::Receiver<()>,
    router_task: tokio::task::JoinHandle<()>,
) {
    info!("shutting down");
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    while tasks.join_next().await.is_some() {}
    let drained = tokio::time::timeout_at(deadline, alive.recv()).await;
    if drained.is_err() {
        warn!("connections still open after the grace period; leaving them");
    }
    // The router ends once the store has the last commit. A store that cannot finish it
    // (a disk that hangs) does not hold the exit past the grace period: nothing it had
    // not stored was acknowledged, so nothing acknowledged is lost.
    if tokio::time::timeout_at(deadline, router_task)
        .await
        .is_err()
    {
        warn!(
            "the store did not finish its last commit within the grace period; stopping without it (what it had not stored was not acknowledged)"
        );
    }
    info!("stopped");
}

/// What every listener's accept loop shares.
#[derive(Clone)]
struct Accepting {
    ctx: Arc<DriverContext>,
    gate: Arc<Gate>,
    next_conn: Arc<AtomicU64>,
    /// Held by every connection's task (in its [`ConnGuard`]).
    alive: mpsc::Sender<()>,
    stop: watch::Receiver<bool>,
}

impl Bound {
    /// Starts this listener's accept loop.
    fn start(self, tasks: &mut JoinSet<()>, shared: Accepting) {
        if let Ok(addr) = self.socket.local_addr() {
            info!(listener = %self.name, %addr, "listening ({})", self.kind);
        }
        let accept = AcceptLoop {
            behind_proxy: self.layers.as_ref().is_some_and(|l| l.proxy.is_some()),
            open: Arc::new(AtomicUsize::new(0)),
            last_refusal_log: None,
            listener: self,
            shared,
        };
        tasks.spawn(accept.run());
    }
}

/// One listener's accept loop.
struct AcceptLoop {
    listener: Bound,
    shared: Accepting,
    /// Whether a trusted proxy's PROXY header names the client (admitted once it does).
    behind_proxy: bool,
    /// Connections open (counted only with `max_connections`).
    open: Arc<AtomicUsize>,
    /// When a refusal at `max_connections` was last logged (at most once a second).
    last_refusal_log: Option<tokio::time::Instant>,
}

impl AcceptLoop {
    async fn run(mut self) {
        let mut stop = self.shared.stop.clone();
        loop {
            tokio::select! {
                accepted = self.listener.socket.accept() => match accepted {
                    Ok((stream, peer)) => self.accepted(stream, peer),
                    Err(err) => {
                        // Out of descriptors and the like: wait a moment, keep serving.
                        warn!(listener = %self.listener.name, %err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = stop.changed() => break,
            }
        }
    }

    /// Admits an accepted socket (or closes it at once) and starts its connection's task.
    fn accepted(&mut self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let at = tokio::time::Instant::now();
        let Bound {
            name,
            max_connections,
            layers,
            auth,
            ..
        } = &self.listener;
        let max_connections = *max_connections;
        if max_connections > 0 && self.open.load(Ordering::Relaxed) >= max_connections {
            // At the cap: closed at once, before any handshake work.
            refuse(stream);
            self.shared
                .ctx
                .traffic
                .listener_full
                .fetch_add(1, Ordering::Relaxed);
            if self
                .last_refusal_log
                .is_none_or(|t| at.duration_since(t) >= std::time::Duration::from_secs(1))
            {
                warn!(listener = %name, %peer, max_connections, "connection refused: listener at max_connections");
                self.last_refusal_log = Some(at);
            }
            return;
        }
        // Before any TLS work. Behind a trusted proxy the client's own address is admitted
        // once the PROXY header names it.
        let Ok(permit) = self
            .shared
            .gate
            .admit(peer.ip(), name, !self.behind_proxy, at)
        else {
            refuse(stream);
            return;
        };
        let permit = Arc::new(permit);
        let _ = stream.set_nodelay(true);
        let conn = ConnectionId(self.shared.next_conn.fetch_add(1, Ordering::Relaxed));
        let guard = ConnGuard::new(
            self.shared.alive.clone(),
            (max_connections > 0).then(|| self.open.clone()),
        );
        let ctx = self.shared.ctx.clone();
        match layers {
            None => {
                let listener_auth = auth.clone();
                tokio::spawn(async move {
                    drive(stream, peer, conn, ctx, None, listener_auth, permit).await;
                    drop(guard);
                });
            }
            Some(layers) => {
                let layers = layers.clone();
                tokio::spawn(async move {
                    serve_layered(stream, peer, conn, ctx, &layers, permit).await;
                    drop(guard);
                });
            }
        }
    }
}

/// Reads the PROXY header, completes the TLS and WebSocket handshakes (all within the CONNECT
/// timeout, counted from `at`; TLS also within its own handshake timeout), then drives the
/// connection.
async fn serve_layered(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    conn: ConnectionId,
    ctx: Arc<DriverContext>,
    layers: &Layers,
    permit: Arc<Permit>,
) {
    let at = permit.at;
    let deadline = at + ctx.connect_timeout;
    let peer = match &layers.proxy {
        None => peer,
        Some(trusted) => {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let limit = left.min(crate::proxy::DEFAULT_HEADER_TIMEOUT);
            match crate::proxy::accept(&mut stream, peer, trusted, limit).await {
                Ok(client) => {
                    if let Err(why) = permit.rebind(client.ip(), &layers.auth.name) {
                        info!(%peer, %client, conn = conn.0, why = why.as_str(), "connection refused");
                        return;
                    }
                    client
                }
                Err(err) => {
                    info!(%peer, conn = conn.0, %err, "PROXY protocol header refused");
                    return;
                }
            }
        }
    };
    let Some(acceptor) = &layers.tls else {
        return serve_websocket(stream, peer, conn, ctx, None, layers, permit).await;
    };
    let settings = acceptor.settings();
    let limit = deadline.min(at + settings.handshake_timeout);
    let handshake = tokio_rustls::TlsAcceptor::from(acceptor.config()).accept(stream);
    let tls: TlsStream = match tokio::time::timeout_at(limit, handshake).await {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err(err)) => {
            info!(%peer, conn = conn.0, %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            info!(%peer, conn = conn.0, "TLS handshake timed out");
            return;
        }
    };
    let identity = (settings.client_auth != ClientAuth::None).then_some(CertIdentity {
        source: settings.identity,
        as_client_id: settings.identity_as_client_id,
    });
    // Kept for revocation on a CRL reload for as long as the connection lasts.
    let registered = match tls.get_ref().1.peer_certificates() {
        Some(chain) if !chain.is_empty() => {
            acceptor.register(conn, chain);
            true
        }
        _ => false,
    };
    serve_websocket(tls, peer, conn, ctx, identity, layers, permit).await;
    if registered {
        acceptor.unregister(conn);
    }
}

/// Completes the WebSocket handshake where the listener has one, then drives the connection.
async fn serve_websocket<S: Transport>(
    stream: S,
    peer: SocketAddr,
    conn: ConnectionId,
    ctx: Arc<DriverContext>,
    identity: Option<CertIdentity>,
    layers: &Layers,
    permit: Arc<Permit>,
) {
    let listener = layers.auth.clone();
    let at = permit.at;
    let Some(options) = &layers.ws else {
        return drive(stream, peer, conn, ctx, identity, listener, permit).await;
    };
    let deadline = at + ctx.connect_timeout;
    match tokio::time::timeout_at(deadline, crate::ws::accept(stream, options)).await {
        Ok(Ok(ws)) => drive(ws, peer, conn, ctx, identity, listener, permit).await,
        Ok(Err(err)) => info!(%peer, conn = conn.0, %err, "WebSocket handshake refused"),
        Err(_) => info!(%peer, conn = conn.0, "WebSocket handshake timed out"),
    }
}

/// The modification times of `files` (`None` for one that cannot be read).
fn mtimes(files: &[std::path::PathBuf]) -> Vec<Option<std::time::SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// What the file watcher reloads, and where it sends what changed.
struct Reloads {
    /// Asks for a reload of everything now (the admin API), as SIGHUP does.
    now: Arc<tokio::sync::Notify>,
    /// The acceptors of the TLS listeners.
    tls: Vec<Arc<TlsAcceptor>>,
    acl: Option<crate::acl::AclFile>,
    bans: Arc<crate::bans::Bans>,
    auth: Arc<AuthService>,
    router: mpsc::Sender<crate::router::ToRouter>,
}

/// Reloads TLS listeners' files, the password store and the ACL file when they change
/// (checked every `interval`) and on SIGHUP. A reload that fails leaves the previous
/// certificates, users or rules in force and logs why. Connections whose certificate is now
/// revoked, or whose user was removed or disabled, are closed.
async fn watch_files(
    mut reloads: Reloads,
    interval: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen: Vec<_> = reloads
        .tls
        .iter()
        .map(|a| mtimes(&a.settings().files()))
        .collect();
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        let asked = reloads.now.clone();
        let forced = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            _ = hangup => {
                info!("SIGHUP: reloading TLS files, the password store and the ACL");
                true
            }
            () = asked.notified() => {
                info!("reload asked through the admin API: TLS files, the password store and the ACL");
                true
            }
            _ = stop.changed() => return,
        };
        reloads.acl(forced).await;
        reloads.bans(forced).await;
        reloads.auth.prune();
        reloads.auth.reload_jwt_files(forced);
        reloads.passwords(forced).await;
        reloads.tls(forced, &mut seen).await;
    }
}

impl Reloads {
    /// The ACL file: changed rules go to the router whole.
    async fn acl(&mut self, forced: bool) {
        if let Some(rules) = self
            .acl
            .as_mut()
            .and_then(|file| file.reload(forced, &self.auth.audit))
        {
            let _ = self.router.send(crate::router::ToRouter::Acl(rules)).await;
        }
    }

    /// The ban list: live connections it now bans are closed.
    async fn bans(&self, forced: bool) {
        if let Some(list) = self.bans.reload(forced, &self.auth.audit) {
            let now = crate::bans::unix_now();
            let conns = self
                .auth
                .live_matching(|ip, user, id| list.client_ban(ip, user, id, now).is_some());
            crate::bans::enforce(
                &self.auth,
                &self.router,
                conns,
                "banned (ban list reloaded)",
            )
            .await;
        }
    }

    /// The password store: connections of users it removed or disabled are closed.
    async fn passwords(&self, forced: bool) {
        let removed = self.auth.reload_store(forced).await;
        self.close(
            removed,
            bulwark_proto::ReasonCode::AdministrativeAction,
            "user removed or disabled in the password store",
            "user removed or disabled",
        )
        .await;
    }

    /// Closes `conns` (if any) with `code`, each a forced-disconnect security event saying
    /// `reason`; `why` is for the log.
    async fn close(
        &self,
        conns: Vec<ConnectionId>,
        code: bulwark_proto::ReasonCode,
        reason: &str,
        why: &'static str,
    ) {
        if conns.is_empty() {
            return;
        }
        for conn in &conns {
            self.auth.forced_disconnect(*conn, reason);
        }
        let _ = self
            .router
            .send(crate::router::ToRouter::Kick { conns, code, why })
            .await;
    }

    /// The TLS listeners' files that changed since `seen` (all of them when `forced`):
    /// connections whose client certificate the new CRLs revoke are closed.
    async fn tls(&self, forced: bool, seen: &mut [Vec<Option<std::time::SystemTime>>]) {
        for (acceptor, seen) in self.tls.iter().zip(seen.iter_mut()) {
            let now = mtimes(&acceptor.settings().files());
            if !forced && now == *seen {
                continue;
            }
            *seen = now;
            let cert = acceptor.settings().cert.cert.display().to_string();
            match acceptor.reload() {
                Ok(revoked) if revoked.is_empty() => {
                    info!(%cert, "TLS certificates reloaded");
                    let done = "reloaded".to_owned();
                    self.auth.audit.record(crate::audit::reload_event(
                        "tls",
                        std::path::Path::new(&cert),
                        Ok(done),
                    ));
                }
                Ok(conns) => {
                    let done = format!(
                        "reloaded; {} connection(s) with a now revoked client certificate closed",
                        conns.len()
                    );
                    self.auth.audit.record(crate::audit::reload_event(
                        "tls",
                        std::path::Path::new(&cert),
                        Ok(done),
                    ));
                    warn!(%cert, connections = conns.len(), "TLS certificates reloaded; closing connections whose client certificate is now revoked");
                    let why = "client certificate revoked";
                    self.close(conns, bulwark_proto::ReasonCode::NotAuthorized, why, why)
                        .await;
                }
                Err(err) => {
                    warn!(%cert, %err, "TLS reload failed; the previous certificates stay in service");
                    self.auth.audit.record(crate::audit::reload_event(
                        "tls",
                        std::path::Path::new(&cert),
                        Err(err.to_string()),
                    ));
                }
            }
        }
    }
}

/// Held by each connection's task: while any exists the server has connections open; with a
/// listener cap it also holds one of the listener's slots.
#[derive(Debug)]
struct ConnGuard {
    _alive: mpsc::Sender<()>,
    slots: Option<Arc<AtomicUsize>>,
}

impl ConnGuard {
    fn new(alive: mpsc::Sender<()>, slots: Option<Arc<AtomicUsize>>) -> Self {
        if let Some(open) = &slots {
            open.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            _alive: alive,
            slots,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(open) = &self.slots {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
