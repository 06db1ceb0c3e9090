//! One task per connection: reads and decodes, forwards packets to the router, encodes and
//! writes what the router sends back, enforces the CONNECT timeout and keep alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bulwark_core::{ConnectionId, KeepAlive, Output};
use bulwark_proto::{
    ConnAck, Connect, ConnectReturnCode, DecodeError, Decoder, DecoderLimits, Disconnect, Encoder,
    Packet, ProtocolVersion, ReasonCode,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::outbox::Outbox;
use crate::router::{ToRouter, Traffic};
use crate::tls::IdentitySource;
use crate::transport::Transport;

/// Room made in the receive buffer before a read. The buffer is released whenever it holds no
/// partial packet, so an idle connection holds none.
const READ_CHUNK: usize = 4 * 1024;
/// Room for the first reads, until CONNECT is complete: a CONNECT is usually far smaller than
/// a read chunk, and thousands of connections arriving together would otherwise each leave a
/// chunk's worth of freed heap behind.
const CONNECT_CHUNK: usize = 512;

pub(crate) struct DriverContext {
    pub(crate) router: mpsc::Sender<ToRouter>,
    pub(crate) limits: DecoderLimits,
    pub(crate) connect_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) traffic: Arc<Traffic>,
}

/// How a listener turns a verified client certificate into the MQTT identity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertIdentity {
    pub(crate) source: IdentitySource,
    pub(crate) as_client_id: bool,
}

/// Why a connection ended, for the log.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields are read through Debug, in the log line"
)]
enum End {
    Closed,
    Io(std::io::Error),
    /// Boxed: `End` values sit in every connection's future, and a decode error is rare.
    Decode(Box<DecodeError>),
    KeepAlive,
    ConnectTimeout,
    WriteTimeout,
    Engine,
    RouterGone,
    /// A client certificate's identity was refused.
    Identity,
}

/// The task of one connection. A plain function returning the future, so that the socket
/// and context are moved into the future once, not kept both as arguments and as locals.
///
/// `accepted` is when the socket was accepted: the CONNECT timeout counts from then, TLS and
/// WebSocket handshakes included.
pub(crate) fn drive<S: Transport>(
    stream: S,
    peer: SocketAddr,
    conn: ConnectionId,
    ctx: Arc<DriverContext>,
    accepted: tokio::time::Instant,
    identity: Option<CertIdentity>,
) -> impl Future<Output = ()> {
    let mut driver = Driver {
        stream,
        accepted,
        identity,
        conn,
        decoder: Decoder::server(ctx.limits),
        encoder: Encoder::new(ProtocolVersion::V5),
        out: BytesMut::new(),
        ctx,
        registered: false,
    };
    async move {
        let end = driver.run().await;
        if driver.registered {
            let _ = driver.ctx.router.send(ToRouter::Lost { conn }).await;
        }
        match &end {
            End::Closed | End::Engine => debug!(%peer, conn = conn.0, ?end, "connection closed"),
            _ => info!(%peer, conn = conn.0, ?end, "connection ended"),
        }
    }
}

struct Driver<S> {
    stream: S,
    accepted: tokio::time::Instant,
    identity: Option<CertIdentity>,
    conn: ConnectionId,
    decoder: Decoder,
    encoder: Encoder,
    out: BytesMut,
    ctx: Arc<DriverContext>,
    registered: bool,
}

impl<S: Transport> Driver<S> {
    /// Waits until the socket is readable before making room, so that a connection waiting
    /// for its next packet holds no receive buffer.
    async fn read_some(&mut self, room: usize) -> Result<usize, End> {
        let n = if S::READINESS {
            loop {
                // poll_read_ready keeps its waker in the socket's registration, not in this
                // future: `readable()` would add a waiter node to every idle connection's future.
                std::future::poll_fn(|cx| self.stream.poll_read_ready(cx))
                    .await
                    .map_err(End::Io)?;
                let buf = self.decoder.buffer_mut();
                buf.reserve(room);
                match self.stream.try_read_buf(buf) {
                    Ok(n) => break n,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        // Readiness was stale: do not hold the room while waiting again.
                        self.release_read_buffer();
                    }
                    Err(err) => return Err(End::Io(err)),
                }
            }
        } else {
            let buf = self.decoder.buffer_mut();
            buf.reserve(room);
            self.stream.read_buf(buf).await.map_err(End::Io)?
        };
        if n == 0 {
            return Err(End::Closed);
        }
        self.ctx
            .traffic
            .received
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Gives the receive buffer back once it holds no partial packet.
    fn release_read_buffer(&mut self) {
        if self.decoder.buffered() == 0 {
            *self.decoder.buffer_mut() = BytesMut::new();
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        // The flush matters for TLS and WebSocket, whose streams may hold encoded bytes back
        // (a no-op on TCP).
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(self.ctx.write_timeout, write)
            .await
            .map_err(|_| End::WriteTimeout)?
            .map_err(End::Io)?;
        self.ctx
            .traffic
            .sent
            .fetch_add(self.out.len() as u64, Ordering::Relaxed);
        // Released rather than kept: an idle connection holds no write buffer.
        self.out = BytesMut::new();
        Ok(())
    }

    /// With a verified client certificate on a listener that maps it, the certificate's
    /// identity replaces the CONNECT's username (and client identifier, if so configured):
    /// the client cannot claim another.
    fn apply_certificate_identity(&self, connect: &mut Connect) -> Result<(), String> {
        let (Some(mapping), Some(leaf)) = (
            self.identity,
            self.stream.peer_certificates().and_then(<[_]>::first),
        ) else {
            return Ok(());
        };
        let Some(identity) = crate::tls::certificate_identity(leaf, mapping.source)? else {
            return Err(format!(
                "the client certificate has no {:?} to take the identity from",
                mapping.source
            ));
        };
        connect.username = Some(
            bulwark_proto::MqttString::new(&identity)
                .map_err(|e| format!("certificate identity {identity:?}: {e}"))?,
        );
        if mapping.as_client_id {
            connect.client_id = bulwark_proto::ClientId::new(&identity)
                .map_err(|e| format!("certificate identity {identity:?} as client id: {e}"))?;
        }
        Ok(())
    }

    /// Answers a CONNECT with a refusal and closes: CONNACK with `code` (its 3.1.1 return
    /// code where one exists).
    async fn refuse(&mut self, version: ProtocolVersion, code: ReasonCode, why: &str) {
        if version.is_v5() {
            let mut connack = ConnAck::new(false, code);
            connack.properties.reason_string = bulwark_proto::MqttString::new(why).ok();
            let _ = Encoder::new(version)
                .encode_fitting(&mut Packet::ConnAck(Box::new(connack)), &mut self.out);
        } else if ConnectReturnCode::from_reason(code).is_some() {
            let _ = Encoder::new(version).encode(&ConnAck::new(false, code), &mut self.out);
        }
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// Answers a CONNECT the decoder refused, where the protocol gives a way to.
    async fn refuse_connect(&mut self, err: &DecodeError) {
        let code = err.reason_code();
        match self.decoder.protocol_version() {
            Some(version) if version.is_v5() => {
                let mut connack = ConnAck::new(false, code);
                connack.properties.reason_string =
                    bulwark_proto::MqttString::new(&err.to_string()).ok();
                let _ = Encoder::new(version)
                    .encode_fitting(&mut Packet::ConnAck(Box::new(connack)), &mut self.out);
            }
            // 3.1.1 has return codes only for some refusals; others just close.
            Some(version)
                if ConnectReturnCode::from_reason(code).is_some()
                    && !matches!(
                        code,
                        ReasonCode::MalformedPacket | ReasonCode::ProtocolError
                    ) =>
            {
                let _ = Encoder::new(version).encode(&ConnAck::new(false, code), &mut self.out);
            }
            Some(_) => {}
            None if code == ReasonCode::UnsupportedProtocolVersion => {
                // An unknown protocol level: answer as 3.1.1 would, return code 1.
                let _ = Encoder::new(ProtocolVersion::V3_1_1)
                    .encode(&ConnAck::new(false, code), &mut self.out);
            }
            None => {}
        }
        let _ = self.flush().await;
    }

    /// Phase 1: a complete CONNECT within the timeout. Boxed by the caller, so that its
    /// states do not enlarge the future every connection keeps for its whole life.
    async fn read_connect(&mut self) -> Result<Box<Connect>, End> {
        let deadline = self.accepted + self.ctx.connect_timeout;
        loop {
            let err = match self.decoder.poll_packet() {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(_)) => return Err(End::Engine),
                Ok(None) => None,
                Err(err) => Some(err),
            };
            if let Some(err) = err {
                self.refuse_connect(&err).await;
                return Err(End::Decode(Box::new(err)));
            }
            match tokio::time::timeout_at(deadline, self.read_some(CONNECT_CHUNK)).await {
                Ok(Ok(_)) => {}
                Ok(Err(end)) => return Err(end),
                Err(_) => return Err(End::ConnectTimeout),
            }
        }
    }

    async fn run(&mut self) -> End {
        let mut connect = match Box::pin(self.read_connect()).await {
            Ok(connect) => connect,
            Err(end) => return end,
        };
        if let Err(why) = self.apply_certificate_identity(&mut connect) {
            info!(conn = self.conn.0, %why, "client certificate identity refused");
            self.refuse(connect.protocol_version, ReasonCode::NotAuthorized, &why)
                .await;
            return End::Identity;
        }
        let version = connect.protocol_version;
        self.encoder = Encoder::new(version);
        if let Some(max) = connect.properties.maximum_packet_size {
            self.encoder.set_max_packet_size(max.get());
        }
        let mut keep_alive_secs = connect.keep_alive;
        let outbox = Arc::new(Outbox::default());
        let registration = ToRouter::Connect {
            conn: self.conn,
            connect,
            outbox: outbox.clone(),
        };
        if self.ctx.router.send(registration).await.is_err() {
            return End::RouterGone;
        }
        self.registered = true;
        let mut keep_alive = KeepAlive::new(keep_alive_secs, Instant::now());
        let mut batch: Vec<Packet> = Vec::new();
        self.release_read_buffer();

        // Phase 2: packets both ways until one side ends it.
        loop {
            let ka_deadline = keep_alive.poll_deadline();
            let ka_sleep = async {
                match ka_deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = self.read_some(READ_CHUNK) => {
                    if let Err(end) = read {
                        return end;
                    }
                    keep_alive.handle_activity(Instant::now());
                    let failure = loop {
                        match self.decoder.poll_packet() {
                            Ok(Some(Packet::PingReq)) => {
                                // Answered here: the engine need not see keep-alive traffic.
                                let _ = self.encoder.encode(&Packet::PingResp, &mut self.out);
                            }
                            Ok(Some(packet)) => batch.push(packet),
                            Ok(None) => break None,
                            Err(err) => break Some(Box::new(err)),
                        }
                    };
                    self.release_read_buffer();
                    if !batch.is_empty() {
                        let packets = std::mem::take(&mut batch);
                        let msg = ToRouter::Packets { conn: self.conn, packets };
                        if self.ctx.router.send(msg).await.is_err() {
                            return End::RouterGone;
                        }
                    }
                    if let Some(err) = failure {
                        if version.is_v5() {
                            let mut d = Disconnect::new(err.reason_code());
                            d.properties.reason_string =
                                bulwark_proto::MqttString::new(&err.to_string()).ok();
                            let _ = self
                                .encoder
                                .encode_fitting(&mut Packet::Disconnect(d), &mut self.out);
                        }
                        let _ = self.flush().await;
                        return End::Decode(err);
                    }
                    if let Err(end) = self.flush().await {
                        return end;
                    }
                }
                () = outbox.ready() => {
                    let mut close = false;
                    for output in outbox.take() {
                        match output {
                            Output::Publish(publish) => {
                                if let Err(err) = self.encoder.encode(&publish.encodable(), &mut self.out) {
                                    debug!(conn = self.conn.0, %err, "message not sent");
                                }
                            }
                            Output::Packet(mut packet) => {
                                if let Packet::ConnAck(ack) = packet.as_ref() {
                                    if !ack.reason_code.is_error() {
                                        self.decoder.set_authenticated();
                                    }
                                    if let Some(server) = ack.properties.server_keep_alive {
                                        keep_alive_secs = server;
                                        keep_alive = KeepAlive::new(keep_alive_secs, Instant::now());
                                    }
                                }
                                if let Err(err) = self.encoder.encode_fitting(&mut packet, &mut self.out) {
                                    debug!(conn = self.conn.0, %err, "packet not sent");
                                }
                            }
                            Output::Close => close = true,
                        }
                        if close {
                            break;
                        }
                    }
                    if let Err(end) = self.flush().await {
                        return end;
                    }
                    if close {
                        let _ = self.stream.shutdown().await;
                        return End::Engine;
                    }
                }
                () = ka_sleep => {
                    if version.is_v5() {
                        let _ = self
                            .encoder
                            .encode(&Disconnect::new(ReasonCode::KeepAliveTimeout), &mut self.out);
                        let _ = self.flush().await;
                    }
                    return End::KeepAlive;
                }
            }
        }
    }
}
