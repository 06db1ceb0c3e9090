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

use crate::config::{ConfigError, ServerConfig};
use crate::driver::{DriverContext, drive};
use crate::router::{Router, Traffic};

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
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(err) => err.fmt(f),
            Self::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// A server with its listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    listeners: Vec<(String, TcpListener)>,
}

impl Server {
    /// Validates the configuration and binds every listener.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            let bound =
                TcpListener::bind(listener.bind)
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: listener.bind,
                        source,
                    })?;
            listeners.push((listener.name.clone(), bound));
        }
        Ok(Self { config, listeners })
    }

    /// The addresses the listeners are bound to (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok())
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
        for (name, listener) in listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(listener = %name, %addr, "listening (MQTT over TCP)");
            }
            let ctx = ctx.clone();
            let next_conn = next_conn.clone();
            let alive = alive_tx.clone();
            let mut stop = stop_rx.clone();
            accepters.spawn(async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let conn = ConnectionId(next_conn.fetch_add(1, Ordering::Relaxed));
                                let guard = alive.clone();
                                let ctx = ctx.clone();
                                tokio::spawn(async move {
                                    drive(stream, peer, conn, ctx).await;
                                    drop(guard);
                                });
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
