//! Binding, accepting, and the orderly shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bulwark_core::{Broker, ConnectionId, MemoryStore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::{ConfigError, ListenerKind, ServerConfig};
use crate::driver::{CertIdentity, DriverContext, drive};
use crate::router::{Router, Traffic};
use crate::tls::{ClientAuth, TlsAcceptor, TlsError};

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
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(err) => err.fmt(f),
            Self::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Self::Tls { listener, source } => write!(f, "listener {listener}: {source}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// A server with its listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    listeners: Vec<Bound>,
}

/// A bound listener and what it serves.
#[derive(Debug)]
struct Bound {
    name: String,
    socket: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
}

impl Server {
    /// Validates the configuration and binds every listener.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            // Certificates first: a listener never binds with files it cannot serve.
            let tls = match &listener.kind {
                ListenerKind::Tcp => None,
                ListenerKind::Tls(settings) => Some(Arc::new(
                    TlsAcceptor::new((**settings).clone()).map_err(|source| ServerError::Tls {
                        listener: listener.name.clone(),
                        source,
                    })?,
                )),
            };
            let socket =
                TcpListener::bind(listener.bind)
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: listener.bind,
                        source,
                    })?;
            if listener.dangerous_plaintext && !listener.bind.ip().is_loopback() {
                warn!(
                    listener = %listener.name,
                    addr = %listener.bind,
                    "dangerous_plaintext: MQTT in clear text on a non-loopback address"
                );
            }
            listeners.push(Bound {
                name: listener.name.clone(),
                socket,
                tls,
            });
        }
        Ok(Self { config, listeners })
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
        let Self { config, listeners } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (router_tx, router_rx) = mpsc::channel(4096);
        let traffic = Arc::new(Traffic::default());
        let router = Router {
            broker: Broker::new(
                config.broker.clone(),
                Box::new(MemoryStore::new()),
                Instant::now(),
            ),
            rx: router_rx,
            traffic: traffic.clone(),
            shutdown: stop_rx.clone(),
            max_backlog: config.broker.max_queued_bytes,
            dropped_qos0: Arc::new(AtomicU64::new(0)),
            groups: Vec::new(),
            slots: std::collections::HashMap::new(),
            spare: Vec::new(),
        };
        let router_task = tokio::spawn(router.run());
        let ctx = Arc::new(DriverContext {
            router: router_tx,
            limits: config.decoder,
            connect_timeout: config.connect_timeout,
            write_timeout: config.write_timeout,
            traffic,
        });
        let next_conn = Arc::new(AtomicU64::new(1));
        let mut accepters = JoinSet::new();
        // Every driver holds a clone; when all are dropped, every connection has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let acceptors: Vec<Arc<TlsAcceptor>> =
            listeners.iter().filter_map(|l| l.tls.clone()).collect();
        if !acceptors.is_empty() {
            accepters.spawn(watch_tls_files(
                acceptors,
                config.tls_watch_interval,
                stop_rx.clone(),
            ));
        }
        for Bound { name, socket, tls } in listeners {
            let kind = if tls.is_some() {
                "MQTT over TLS"
            } else {
                "MQTT over TCP"
            };
            if let Ok(addr) = socket.local_addr() {
                info!(listener = %name, %addr, "listening ({kind})");
            }
            let ctx = ctx.clone();
            let next_conn = next_conn.clone();
            let alive = alive_tx.clone();
            let mut stop = stop_rx.clone();
            accepters.spawn(async move {
                loop {
                    tokio::select! {
                        accepted = socket.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let at = tokio::time::Instant::now();
                                let _ = stream.set_nodelay(true);
                                let conn = ConnectionId(next_conn.fetch_add(1, Ordering::Relaxed));
                                let guard = alive.clone();
                                let ctx = ctx.clone();
                                match &tls {
                                    None => {
                                        tokio::spawn(async move {
                                            drive(stream, peer, conn, ctx, at, None).await;
                                            drop(guard);
                                        });
                                    }
                                    Some(acceptor) => {
                                        let acceptor = acceptor.clone();
                                        tokio::spawn(async move {
                                            serve_tls(stream, peer, conn, ctx, at, &acceptor).await;
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
        while accepters.join_next().await.is_some() {}
        let drained = tokio::time::timeout(config.shutdown_grace, alive_rx.recv()).await;
        if drained.is_err() {
            warn!("connections still open after the grace period; leaving them");
        }
        let _ = router_task.await;
        info!("stopped");
    }
}

/// Completes the TLS handshake within the listener's handshake timeout (and the CONNECT
/// timeout, which counts from `at`), then drives the connection.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    conn: ConnectionId,
    ctx: Arc<DriverContext>,
    at: tokio::time::Instant,
    acceptor: &TlsAcceptor,
) {
    let settings = acceptor.settings();
    let limit = settings.handshake_timeout.min(ctx.connect_timeout);
    let handshake = tokio_rustls::TlsAcceptor::from(acceptor.config()).accept(stream);
    let tls = match tokio::time::timeout_at(at + limit, handshake).await {
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
    drive(tls, peer, conn, ctx, at, identity).await;
}

/// The modification times of `files` (`None` for one that cannot be read).
fn mtimes(files: &[std::path::PathBuf]) -> Vec<Option<std::time::SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads a TLS listener's files when they change (checked every few seconds) and on
/// SIGHUP. A reload that fails leaves the previous certificates serving and logs why.
async fn watch_tls_files(
    acceptors: Vec<Arc<TlsAcceptor>>,
    interval: std::time::Duration,
    mut stop: watch::Receiver<bool>,
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
        for (acceptor, seen) in acceptors.iter().zip(seen.iter_mut()) {
            let now = mtimes(&acceptor.settings().files());
            if !forced && now == *seen {
                continue;
            }
            *seen = now;
            let cert = acceptor.settings().cert.cert.display().to_string();
            match acceptor.reload() {
                Ok(()) => info!(%cert, "TLS certificates reloaded"),
                Err(err) => {
                    warn!(%cert, %err, "TLS reload failed; the previous certificates stay in service")
                }
            }
        }
    }
}
