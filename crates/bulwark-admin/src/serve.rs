//! The admin listener's accept loop: plain HTTP on loopback, or HTTPS (TLS 1.2+ from the
//! broker's own rustls settings, client certificates where they are required), HTTP/1.1 and
//! HTTP/2 either way, each connection on its own task and bounded in number and time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::Backend;
use crate::backend::PeerCertificate;

/// The TLS settings in force, asked for at each handshake (so that a reload applies to the
/// next connection).
pub type TlsConfig = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

/// Connections served at once; one more waits in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// A TLS handshake must end within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this (HTTP/1.1), and an idle connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this, whatever it is doing: every answer of this API is
/// small and bounded.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Serves the admin API on `listener` (over TLS with `tls`) until `shutdown` completes.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    tls: Option<TlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = crate::api::router(backend);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(%err, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let app = app.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let served =
                tokio::time::timeout(CONNECTION_LIFETIME, connection(stream, peer, app, tls)).await;
            if served.is_err() {
                debug!(%peer, "admin connection closed at its lifetime");
            }
            drop(permit);
        });
    }
}

/// One connection: the TLS handshake if any, then HTTP until the client is done.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    tls: Option<TlsConfig>,
) {
    let _ = stream.set_nodelay(true);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder.http2().max_concurrent_streams(16);
    // Every request carries the peer's address, and its verified client certificate if it
    // presented one.
    let service = |certificate: Option<PeerCertificate>| {
        TowerToHyperService::new(app.map_request(
            move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                if let Some(certificate) = &certificate {
                    request.extensions_mut().insert(certificate.clone());
                }
                request
            },
        ))
    };
    let served = match tls {
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service(None))
                .await
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config());
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        debug!(%peer, %err, "admin TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "admin TLS handshake timed out");
                        return;
                    }
                };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| PeerCertificate(Arc::new(leaf.as_ref().to_vec())));
            builder
                .serve_connection(TokioIo::new(stream), service(certificate))
                .await
        }
    };
    if let Err(err) = served {
        debug!(%peer, %err, "admin connection ended with an error");
    }
}
