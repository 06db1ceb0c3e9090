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

use crate::auth::{AuthService, ListenerAuth};
use crate::config::{ConfigError, ListenerKind, ServerConfig};
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
    /// The password store, a JWT key or the audit file is not usable.
    Auth(String),
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
    durable: Option<(Box<dyn bulwark_store::Store>, bulwark_store::Restored)>,
}

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

impl Server {
    /// Validates the configuration and binds every listener.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        // The store first: a broker that cannot read back what it acknowledged does not start.
        let durable = match &config.storage.path {
            Some(path) => {
                let mut store = bulwark_store::DiskStore::open(path, config.storage.sync)
                    .map_err(ServerError::Store)?;
                let restored =
                    bulwark_store::Store::load(&mut store).map_err(ServerError::Store)?;
                info!(path = %path.display(), sync = ?config.storage.sync, "durable storage");
                Some((Box::new(store) as Box<dyn bulwark_store::Store>, restored))
            }
            None => {
                info!("storage in memory: sessions and retained messages are lost at a restart");
                None
            }
        };
        let auth = Arc::new(AuthService::new(&config.auth).map_err(ServerError::Auth)?);
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
                    continue;
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
            let chain = listener.chain(&config.auth);
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
            listeners.push(Bound {
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
            });
        }
        Ok(Self {
            config,
            listeners,
            auth,
            acl,
            bans,
            durable,
        })
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
        } = self;
        let (acl_file, rules) = match acl {
            Some((file, rules)) => (Some(file), Some(rules)),
            None => (None, None),
        };
        let mut broker = Broker::new(config.broker.clone(), Instant::now());
        broker.set_acl(rules, Instant::now());
        let held = match durable {
            Some((store, restored)) => {
                let (sessions, retained) = broker.restore(restored, Instant::now());
                info!(sessions, retained, "restored from the store");
                match crate::durable::Held::start(store) {
                    Ok(held) => Some(held),
                    Err(err) => {
                        // Without its writer nothing durable could be acknowledged.
                        error!(%err, "cannot start the store's writer thread; not serving");
                        return;
                    }
                }
            }
            None => None,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (router_tx, router_rx) = mpsc::channel(4096);
        let traffic = Arc::new(Traffic::default());
        let router = Router::new(RouterParts {
            broker,
            rx: router_rx,
            traffic: traffic.clone(),
            shutdown: stop_rx.clone(),
            max_backlog: config.broker.max_queued_bytes,
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
        let next_conn = Arc::new(AtomicU64::new(1));
        let gate = Arc::new(Gate::new(
            config.admission.clone(),
            auth.audit.clone(),
            ctx.traffic.clone(),
            bans.clone(),
        ));
        let mut accepters = JoinSet::new();
        // Every driver holds a clone; when all are dropped, every connection has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let acceptors: Vec<Arc<TlsAcceptor>> =
            listeners.iter().filter_map(|l| l.tls.clone()).collect();
        // Always: it also keeps SIGHUP from terminating the process.
        accepters.spawn(watch_files(
            acceptors,
            acl_file,
            bans.clone(),
            auth.clone(),
            config.tls_watch_interval,
            stop_rx.clone(),
            ctx.router.clone(),
        ));
        accepters.spawn(auth.clone().refresh_jwks(stop_rx.clone()));
        if config.memory_watermark > 0 {
            accepters.spawn(crate::memory::watch(
                config.memory_watermark,
                gate.clone(),
                ctx.router.clone(),
                auth.audit.clone(),
                stop_rx.clone(),
            ));
        }
        for Bound {
            name,
            max_connections,
            socket,
            layers,
            kind,
            auth: listener_auth,
            ..
        } in listeners
        {
            let open = Arc::new(AtomicUsize::new(0));
            let mut last_refusal_log: Option<tokio::time::Instant> = None;
            if let Ok(addr) = socket.local_addr() {
                info!(listener = %name, %addr, "listening ({kind})");
            }
            let ctx = ctx.clone();
            let next_conn = next_conn.clone();
            let gate = gate.clone();
            let behind_proxy = layers.as_ref().is_some_and(|l| l.proxy.is_some());
            let alive = alive_tx.clone();
            let mut stop = stop_rx.clone();
            let listener_auth = listener_auth.clone();
            accepters.spawn(async move {
                loop {
                    tokio::select! {
                        accepted = socket.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let at = tokio::time::Instant::now();
                                if max_connections > 0 && open.load(Ordering::Relaxed) >= max_connections {
                                    // At the cap: closed at once, before any handshake work.
                                    refuse(stream);
                                    if last_refusal_log.is_none_or(|t| at.duration_since(t) >= std::time::Duration::from_secs(1)) {
                                        warn!(listener = %name, %peer, max_connections, "connection refused: listener at max_connections");
                                        last_refusal_log = Some(at);
                                    }
                                    continue;
                                }
                                // Before any TLS work. Behind a trusted proxy the client's own
                                // address is admitted once the PROXY header names it.
                                let Ok(permit) = gate.admit(peer.ip(), &name, !behind_proxy, at) else {
                                    refuse(stream);
                                    continue;
                                };
                                let permit = Arc::new(permit);
                                let _ = stream.set_nodelay(true);
                                let conn = ConnectionId(next_conn.fetch_add(1, Ordering::Relaxed));
                                let guard = ConnGuard::new(alive.clone(), (max_connections > 0).then(|| open.clone()));
                                let ctx = ctx.clone();
                                let listener_auth = listener_auth.clone();
                                match &layers {
                                    None => {
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
                            Err(err) => {
                                // Out of descriptors and the like: wait a moment, keep serving.
                                warn!(listener = %name, %err, "accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        },
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        drop(ctx);
        drop(alive_tx);
        shutdown.await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + config.shutdown_grace;
        while accepters.join_next().await.is_some() {}
        let drained = tokio::time::timeout_at(deadline, alive_rx.recv()).await;
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

/// Reloads TLS listeners' files, the password store and the ACL file when they change
/// (checked every `interval`) and on SIGHUP. A reload that fails leaves the previous
/// certificates, users or rules in force and logs why. Connections whose certificate is now revoked, or whose user was removed
/// or disabled, are closed.
async fn watch_files(
    acceptors: Vec<Arc<TlsAcceptor>>,
    mut acl: Option<crate::acl::AclFile>,
    bans: Arc<crate::bans::Bans>,
    auth: Arc<AuthService>,
    interval: std::time::Duration,
    mut stop: watch::Receiver<bool>,
    router: mpsc::Sender<crate::router::ToRouter>,
) {
    let mut seen: Vec<_> = acceptors
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
        let forced = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            _ = hangup => true,
            _ = stop.changed() => return,
        };
        if forced {
            info!("SIGHUP: reloading TLS files, the password store and the ACL");
        }
        if let Some(rules) = acl.as_mut().and_then(|file| file.reload(forced)) {
            let _ = router.send(crate::router::ToRouter::Acl(rules)).await;
        }
        if let Some(list) = bans.reload(forced) {
            let now = crate::bans::unix_now();
            let conns =
                auth.live_matching(|ip, user, id| list.client_ban(ip, user, id, now).is_some());
            crate::bans::enforce(&auth, &router, conns, "banned (ban list reloaded)").await;
        }
        auth.prune();
        auth.reload_jwt_files(forced);
        let removed = auth.reload_store(forced).await;
        if !removed.is_empty() {
            for conn in &removed {
                auth.forced_disconnect(*conn, "user removed or disabled in the password store");
            }
            let _ = router
                .send(crate::router::ToRouter::Kick {
                    conns: removed,
                    code: bulwark_proto::ReasonCode::AdministrativeAction,
                    why: "user removed or disabled",
                })
                .await;
        }
        for (acceptor, seen) in acceptors.iter().zip(seen.iter_mut()) {
            let now = mtimes(&acceptor.settings().files());
            if !forced && now == *seen {
                continue;
            }
            *seen = now;
            let cert = acceptor.settings().cert.cert.display().to_string();
            match acceptor.reload() {
                Ok(revoked) if revoked.is_empty() => info!(%cert, "TLS certificates reloaded"),
                Ok(conns) => {
                    warn!(%cert, connections = conns.len(), "TLS certificates reloaded; closing connections whose client certificate is now revoked");
                    for conn in &conns {
                        auth.forced_disconnect(*conn, "client certificate revoked");
                    }
                    let _ = router
                        .send(crate::router::ToRouter::Kick {
                            conns,
                            code: bulwark_proto::ReasonCode::NotAuthorized,
                            why: "client certificate revoked",
                        })
                        .await;
                }
                Err(err) => {
                    warn!(%cert, %err, "TLS reload failed; the previous certificates stay in service")
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
