//! One task per connection: reads and decodes, forwards packets to the router, encodes and
//! writes what the router sends back, enforces the CONNECT timeout and keep alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bulwark_acl::Principal;
use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_auth::scram::{ScramHash, ScramServer};
use bulwark_core::{ConnectAuth, ConnectionId, KeepAlive, Output};
use bulwark_proto::{
    Auth, ConnAck, Connect, ConnectReturnCode, DecodeError, Decoder, DecoderLimits, Disconnect,
    Encoder, MqttString, Packet, ProtocolVersion, ReasonCode,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::auth::{
    Attempt, AuthService, Authenticator, Counts, Identity, ListenerAuth, NotRegistered, Refusal,
    Ticket,
};
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
    pub(crate) auth: Arc<AuthService>,
    /// Per-client message and byte rates.
    pub(crate) rates: bulwark_limits::rate::RateSettings,
    /// The ban list and the abuse tracker.
    pub(crate) bans: Arc<crate::bans::Bans>,
}

/// How a listener turns a verified client certificate into the MQTT identity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertIdentity {
    pub(crate) source: IdentitySource,
    pub(crate) as_client_id: bool,
}

/// The Authentication Method of a token given as Authentication Data.
const JWT_METHOD: &str = "JWT";

/// A connection's authentication state, lent to [`Driver::reauthenticate`].
struct Reauth<'a> {
    method: Option<&'a MqttString>,
    /// Whether the CONNACK went out: re-authentication may only start after it.
    connack_sent: bool,
    client_id: &'a str,
    identity: &'a mut Identity,
    principal: &'a mut Arc<Principal>,
    /// Boxed: a re-authentication is rare, and the state sits in every connection's future.
    scram: &'a mut Option<Box<ScramServer>>,
    expires: &'a mut Option<tokio::time::Instant>,
}

/// Whether the engine closed a connection with `code` for a limit rather than a protocol
/// error.
fn is_limit(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::QuotaExceeded
            | ReasonCode::ReceiveMaximumExceeded
            | ReasonCode::PacketTooLarge
            | ReasonCode::MessageRateTooHigh
    )
}

/// The method name of a re-authentication, as a static string for the identity.
fn method_name(method: &MqttString) -> &'static str {
    match ScramHash::from_method(method.as_str()) {
        Some(hash) => hash.method(),
        None => JWT_METHOD,
    }
}

/// The runtime instant of a wall-clock deadline (now if it has passed).
fn deadline_of(at: std::time::SystemTime) -> tokio::time::Instant {
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
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
    /// The engine closed the connection because its client broke the protocol or a limit.
    Expelled(ReasonCode),
    RouterGone,
    /// A client certificate's identity was refused.
    Identity,
    /// The credentials were refused at CONNECT or at re-authentication.
    Refused,
    /// The credentials expired (a JWT's `exp`) without a re-authentication.
    Expired,
}

/// The task of one connection. A plain function returning the future, so that the socket
/// and context are moved into the future once, not kept both as arguments and as locals.
///
/// The CONNECT timeout counts from when the socket was accepted (`permit.at`), TLS and
/// WebSocket handshakes included.
pub(crate) fn drive<S: Transport>(
    stream: S,
    peer: SocketAddr,
    conn: ConnectionId,
    ctx: Arc<DriverContext>,
    identity: Option<CertIdentity>,
    listener: Arc<ListenerAuth>,
    permit: Arc<crate::gate::Permit>,
) -> impl Future<Output = ()> {
    let accepted = permit.at;
    let mut driver = Driver {
        stream,
        peer,
        accepted,
        identity,
        listener,
        conn,
        decoder: Decoder::server(ctx.limits),
        encoder: Encoder::new(ProtocolVersion::V5),
        out: BytesMut::new(),
        ctx,
        registered: false,
        permit,
    };
    async move {
        let end = driver.run().await;
        if driver.registered {
            let _ = driver.ctx.router.send(ToRouter::Lost { conn }).await;
        }
        driver.ctx.auth.unregister(conn);
        let violation = match &end {
            End::Decode(err) => Some(err.reason_code()),
            End::Expelled(code) => Some(*code),
            _ => None,
        };
        if let Some(code) = violation {
            driver.ctx.traffic.expelled.fetch_add(1, Ordering::Relaxed);
            driver.violation_event(code, &end).await;
        }
        let offence = match &end {
            End::Decode(_) => Some("protocol violation"),
            End::Expelled(code) if is_limit(*code) => Some("limit exceeded"),
            End::Expelled(_) => Some("protocol violation"),
            End::ConnectTimeout => Some("CONNECT timeout"),
            _ => None,
        };
        if let Some(what) = offence
            && let Some(ban) = driver.ctx.bans.offence(peer.ip(), what)
        {
            driver.ban_now(&ban).await;
        }
        match &end {
            End::Closed | End::Engine => debug!(%peer, conn = conn.0, ?end, "connection closed"),
            _ => info!(%peer, conn = conn.0, ?end, "connection ended"),
        }
        if end.closed_by_broker() {
            driver.linger().await;
        }
    }
}

/// How long a connection the broker closed is still read (and what is read discarded), so
/// that the client reads the last packet sent (a DISCONNECT, a refusing CONNACK) before the
/// close: closing a socket with unread input makes the kernel reset the connection, and a
/// reset throws away what the client had not read yet.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much input is discarded while lingering.
const LINGER_BYTES: usize = 1024 * 1024;

impl End {
    /// Whether the broker ended the connection while its client may still be writing (and
    /// reading what the broker said last).
    fn closed_by_broker(&self) -> bool {
        match self {
            Self::Decode(_)
            | Self::KeepAlive
            | Self::Engine
            | Self::Expelled(_)
            | Self::Identity
            | Self::Refused
            | Self::Expired => true,
            // The client closed, or the socket failed, or does not drain what it is sent,
            // or never said anything: nothing to wait for.
            Self::Closed
            | Self::Io(_)
            | Self::WriteTimeout
            | Self::ConnectTimeout
            | Self::RouterGone => false,
        }
    }
}

struct Driver<S> {
    stream: S,
    peer: SocketAddr,
    accepted: tokio::time::Instant,
    identity: Option<CertIdentity>,
    listener: Arc<ListenerAuth>,
    conn: ConnectionId,
    decoder: Decoder,
    encoder: Encoder,
    out: BytesMut,
    ctx: Arc<DriverContext>,
    registered: bool,
    /// Its place in admission control, released when the connection ends.
    permit: Arc<crate::gate::Permit>,
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

    /// Closes the sending side, then reads and discards until the client closes too, for
    /// at most [`LINGER`] and [`LINGER_BYTES`] (and not past the router's end).
    async fn linger(&mut self) {
        let drain = async {
            // Already shut down on some paths; a failure here still leaves input to read.
            let _ = self.stream.shutdown().await;
            // On the heap: every connection's future would carry a buffer on the stack.
            let mut scratch = vec![0u8; 4096];
            let mut discarded = 0;
            while discarded < LINGER_BYTES {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => discarded += n,
                }
            }
        };
        // At shutdown the router goes once every connection is closed: no lingering then.
        let router = self.ctx.router.clone();
        let _ = tokio::time::timeout(LINGER, async {
            tokio::select! {
                () = drain => {}
                () = router.closed() => {}
            }
        })
        .await;
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

    /// Records a `protocol_violation` event: the connection was closed with `code`.
    async fn violation_event(&self, code: ReasonCode, end: &End) {
        let mut event =
            SecurityEvent::new(EventKind::ProtocolViolation, std::time::SystemTime::now());
        event.listener = Some(self.listener.name.to_string());
        event.remote = Some(self.peer.to_string());
        event.reason = Some(match end {
            End::Decode(err) => format!("{code}: {err}"),
            _ => code.to_string(),
        });
        self.ctx.auth.audit.record(event).await;
    }

    /// Records a ban the broker just made and closes the live connections it covers.
    async fn ban_now(&self, ban: &bulwark_limits::ban::Ban) {
        let mut event = SecurityEvent::new(EventKind::Ban, std::time::SystemTime::now());
        event.listener = Some(self.listener.name.to_string());
        event.remote = Some(self.peer.to_string());
        event.reason = Some(format!("{}: {}", ban.target, ban.reason));
        self.ctx.auth.audit.record(event).await;
        let now = crate::bans::unix_now();
        let list = {
            let mut list = bulwark_limits::ban::BanList::new();
            let _ = list.add(ban.clone());
            list
        };
        let conns = self
            .ctx
            .auth
            .live_matching(|ip, user, id| list.client_ban(ip, user, id, now).is_some());
        crate::bans::enforce(&self.ctx.auth, &self.ctx.router, conns, "banned").await;
    }

    /// The common name of the verified client certificate, for ACL rules and templates.
    fn certificate_cn(&self) -> Option<Arc<str>> {
        let leaf = self.stream.peer_certificates().and_then(<[_]>::first)?;
        crate::tls::certificate_identity(leaf, IdentitySource::CommonName)
            .ok()
            .flatten()
            .map(Arc::from)
    }

    /// With a verified client certificate on a listener that maps it, the certificate's
    /// identity replaces the CONNECT's username (and client identifier, if so configured):
    /// the client cannot claim another. Returns the certificate's identity, if one was applied.
    fn apply_certificate_identity(&self, connect: &mut Connect) -> Result<Option<String>, String> {
        let (Some(mapping), Some(leaf)) = (
            self.identity,
            self.stream.peer_certificates().and_then(<[_]>::first),
        ) else {
            return Ok(None);
        };
        let Some(identity) = crate::tls::certificate_identity(leaf, mapping.source)? else {
            return Err(format!(
                "the client certificate has no {:?} to take the identity from",
                mapping.source
            ));
        };
        connect.username = Some(
            MqttString::new(&identity)
                .map_err(|e| format!("certificate identity {identity:?}: {e}"))?,
        );
        if mapping.as_client_id {
            connect.client_id = bulwark_proto::ClientId::new(&identity)
                .map_err(|e| format!("certificate identity {identity:?} as client id: {e}"))?;
        }
        Ok(Some(identity))
    }

    /// Answers a CONNECT with a refusal and closes: CONNACK with `code` (its 3.1.1 return
    /// code where one exists).
    async fn refuse(&mut self, version: ProtocolVersion, code: ReasonCode, why: &str) {
        if version.is_v5() {
            let mut connack = ConnAck::new(false, code);
            connack.properties.reason_string = MqttString::new(why).ok();
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
                connack.properties.reason_string = MqttString::new(&err.to_string()).ok();
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

    /// Reads one packet before the CONNACK (an AUTH of an exchange), within `deadline`.
    async fn read_early_packet(&mut self, deadline: tokio::time::Instant) -> Result<Packet, End> {
        loop {
            match self.decoder.poll_packet() {
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(err) => return Err(End::Decode(Box::new(err))),
            }
            match tokio::time::timeout_at(deadline, self.read_some(CONNECT_CHUNK)).await {
                Ok(Ok(_)) => {}
                Ok(Err(end)) => return Err(end),
                Err(_) => return Err(End::ConnectTimeout),
            }
        }
    }

    /// Encodes an AUTH packet for the client.
    fn push_auth(&mut self, code: ReasonCode, method: &MqttString, data: Option<Vec<u8>>) {
        let mut auth = Auth {
            reason_code: code,
            properties: bulwark_proto::AuthProperties::default(),
        };
        auth.properties.authentication_method = Some(method.clone());
        auth.properties.authentication_data = data.map(bytes::Bytes::from);
        let _ = self
            .encoder
            .encode_fitting(&mut Packet::Auth(auth), &mut self.out);
    }

    /// Authenticates the CONNECT: the listener's chain, or the enhanced authentication
    /// exchange its Authentication Method asks for. On refusal the client has been answered
    /// and the connection is to close.
    async fn authenticate(
        &mut self,
        connect: &mut Connect,
        certificate: Option<String>,
    ) -> Result<(Identity, ConnectAuth), End> {
        let auth = self.ctx.auth.clone();
        let listener = self.listener.clone();
        let client_id = connect.client_id.as_str().to_owned();
        let username = connect.username.as_ref().map(|u| u.as_str().to_owned());
        let Some(method) = connect.properties.authentication_method.clone() else {
            let attempt = Attempt {
                listener: &listener,
                peer: self.peer,
                client_id: &client_id,
                username: username.as_deref(),
                method: "connect",
                reauth: false,
            };
            let (ticket, result) = match auth.gate(&attempt, connect.password.as_deref()).await {
                Ok(ticket) => {
                    let result = auth
                        .check_connect(&listener, connect, certificate.as_deref(), &ticket)
                        .await;
                    (Some(ticket), result)
                }
                Err(refusal) => (None, Err(refusal)),
            };
            return self
                .finish_login(&auth, ticket, &attempt, result, ConnectAuth::default())
                .await;
        };
        let name = method.as_str();
        if let Some(hash) =
            ScramHash::from_method(name).filter(|_| listener.has(Authenticator::Scram))
        {
            return self
                .scram_connect(connect, hash, method, &client_id, certificate)
                .await;
        }
        let attempt = Attempt {
            listener: &listener,
            peer: self.peer,
            client_id: &client_id,
            username: username.as_deref(),
            method: if name == JWT_METHOD {
                JWT_METHOD
            } else {
                "enhanced"
            },
            reauth: false,
        };
        if name != JWT_METHOD || !listener.has(Authenticator::Jwt) || !auth.has_jwt() {
            let refusal = Refusal {
                code: ReasonCode::BadAuthenticationMethod,
                reason: format!("authentication method {name:?} is not offered on this listener"),
                counts: Counts::No,
                kind: EventKind::AuthFailure,
            };
            return self
                .finish_login(&auth, None, &attempt, Err(refusal), ConnectAuth::default())
                .await;
        }
        let token = connect
            .properties
            .authentication_data
            .clone()
            .unwrap_or_default();
        let (ticket, result) = match auth.gate(&attempt, None).await {
            Ok(ticket) => {
                // A certificate's identity binds the token's user too.
                let claimed = certificate.as_deref().or(username.as_deref());
                let result = auth.check_jwt_data(&token, claimed, &client_id).await;
                (Some(ticket), result)
            }
            Err(refusal) => (None, Err(refusal)),
        };
        let reply = ConnectAuth {
            method: Some(method),
            data: None,
            principal: None,
        };
        self.finish_login(&auth, ticket, &attempt, result, reply)
            .await
    }

    /// Counts and records the outcome of a login, registers a successful one (refused if the
    /// user was removed or disabled meanwhile), answers a refusal.
    async fn finish_login(
        &mut self,
        auth: &AuthService,
        ticket: Option<Ticket<'_>>,
        attempt: &Attempt<'_>,
        result: Result<Identity, Refusal>,
        reply: ConnectAuth,
    ) -> Result<(Identity, ConnectAuth), End> {
        let bans = &self.ctx.bans;
        let ip = self.peer.ip();
        let existing = result.as_ref().ok().and_then(|identity| {
            bans.client_ban(ip, identity.username.as_deref(), attempt.client_id)
        });
        let fresh = match (&existing, &result) {
            (None, Ok(identity)) => {
                bans.connected(ip, identity.username.as_deref(), attempt.client_id)
            }
            _ => None,
        };
        if let Some(ban) = &fresh {
            // Just made (flapping): the client id's other connections go too.
            self.ban_now(ban).await;
        }
        let banned = existing.or(fresh);
        let result = match result {
            Ok(_) if banned.is_some() => Err(Refusal::banned(
                banned.as_ref().map_or("banned", |b| b.reason.as_str()),
            )),
            Ok(identity) => match auth.register(self.conn, attempt, &identity) {
                Ok(()) => Ok(identity),
                Err(NotRegistered::Gone) => Err(Refusal::failure(
                    ReasonCode::BadUserNameOrPassword,
                    "the user was removed or disabled during the login",
                )),
                Err(NotRegistered::Quota) => Err(Refusal::quota(
                    "the user has max_connections_per_user connections open",
                )),
            },
            other => other,
        };
        auth.conclude(ticket, attempt, &result).await;
        match result {
            Ok(identity) => Ok((identity, reply)),
            Err(refusal) => {
                let version = self.encoder.version();
                self.refuse(version, refusal.code, refusal.public_reason())
                    .await;
                Err(End::Refused)
            }
        }
    }

    /// SCRAM over AUTH packets at CONNECT: client-first in the CONNECT, server-first in an
    /// AUTH, client-final in the client's AUTH, server-final in the CONNACK.
    async fn scram_connect(
        &mut self,
        connect: &Connect,
        hash: ScramHash,
        method: MqttString,
        client_id: &str,
        certificate: Option<String>,
    ) -> Result<(Identity, ConnectAuth), End> {
        let auth = self.ctx.auth.clone();
        let listener = self.listener.clone();
        let first = connect
            .properties
            .authentication_data
            .clone()
            .unwrap_or_default();
        let started = auth.scram_start(hash, &first);
        let username = started
            .as_ref()
            .ok()
            .map(|(server, _)| server.username().to_owned());
        let attempt = Attempt {
            listener: &listener,
            peer: self.peer,
            client_id,
            username: username.as_deref(),
            method: hash.method(),
            reauth: false,
        };
        let (server, server_first) = match started {
            Ok(started) => started,
            Err(err) => {
                let refusal = AuthService::scram_refusal(&err);
                return self
                    .finish_login(&auth, None, &attempt, Err(refusal), ConnectAuth::default())
                    .await;
            }
        };
        // A verified certificate names the user; SCRAM may not log in as another.
        if let Some(name) = certificate.as_deref()
            && Some(name) != username.as_deref()
        {
            let refusal = Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "SCRAM: the username differs from the client certificate's identity",
            );
            return self
                .finish_login(&auth, None, &attempt, Err(refusal), ConnectAuth::default())
                .await;
        }
        let ticket = match auth.gate(&attempt, None).await {
            Ok(ticket) => ticket,
            Err(refusal) => {
                return self
                    .finish_login(&auth, None, &attempt, Err(refusal), ConnectAuth::default())
                    .await;
            }
        };
        self.push_auth(
            ReasonCode::ContinueAuthentication,
            &method,
            Some(server_first),
        );
        let deadline = tokio::time::Instant::now() + self.ctx.connect_timeout;
        let reply = match self.flush().await {
            Ok(()) => self.read_early_packet(deadline).await,
            Err(end) => Err(end),
        };
        let outcome = match reply {
            Ok(Packet::Auth(reply))
                if reply.reason_code == ReasonCode::ContinueAuthentication
                    && reply.properties.authentication_method.as_ref() == Some(&method) =>
            {
                let data = reply.properties.authentication_data.unwrap_or_default();
                // Failures counted since the exchange began apply before its proof is checked.
                auth.before_verdict(&ticket).await.and_then(|()| {
                    server
                        .finish(&data)
                        .map(|(server_final, name)| {
                            (auth.scram_identity(&name, hash.method()), server_final)
                        })
                        .map_err(|err| AuthService::scram_refusal(&err))
                })
            }
            Ok(_) => Err(Refusal::failure(
                ReasonCode::ProtocolError,
                "SCRAM: expected AUTH with Continue authentication and the same method",
            )),
            Err(end) => {
                // The client left: that says nothing about the username it named.
                let refusal = Refusal {
                    code: ReasonCode::NotAuthorized,
                    reason: "SCRAM: the client left the exchange".into(),
                    counts: Counts::AddressOnly,
                    kind: EventKind::AuthFailure,
                };
                auth.conclude(Some(ticket), &attempt, &Err(refusal)).await;
                return Err(end);
            }
        };
        let (result, server_final) = match outcome {
            Ok((identity, server_final)) => (Ok(identity), Some(server_final)),
            Err(refusal) => (Err(refusal), None),
        };
        let reply = ConnectAuth {
            method: Some(method),
            data: server_final.map(bytes::Bytes::from),
            principal: None,
        };
        self.finish_login(&auth, Some(ticket), &attempt, result, reply)
            .await
    }

    /// Sends DISCONNECT `code` (5.0) and flushes: the connection is to close.
    async fn disconnect(&mut self, code: ReasonCode, why: &str) {
        if self.encoder.version().is_v5() {
            let mut d = Disconnect::new(code);
            d.properties.reason_string = MqttString::new(why).ok();
            let _ = self
                .encoder
                .encode_fitting(&mut Packet::Disconnect(d), &mut self.out);
        }
        let _ = self.flush().await;
    }

    /// Handles an AUTH packet after the CONNACK: 5.0 re-authentication with the method of
    /// the CONNECT ([MQTT-4.12.1-1]). A failure closes the connection with 0x87.
    async fn reauthenticate(&mut self, packet: Auth, state: Reauth<'_>) -> Result<(), End> {
        let Some(method) = state.method.filter(|_| state.connack_sent) else {
            let why = if state.method.is_none() {
                "[MQTT-4.12.0-7] AUTH without an Authentication Method in CONNECT"
            } else {
                "[MQTT-4.12.1-1] re-authentication before the CONNACK"
            };
            self.disconnect(ReasonCode::ProtocolError, why).await;
            return Err(End::Refused);
        };
        if packet.properties.authentication_method.as_ref() != Some(method) {
            self.disconnect(
                ReasonCode::ProtocolError,
                "[MQTT-4.12.1-1] re-authentication must use the method of the CONNECT",
            )
            .await;
            return Err(End::Refused);
        }
        let auth = self.ctx.auth.clone();
        let listener = self.listener.clone();
        let username = state.identity.username.as_deref().map(str::to_owned);
        let data = packet.properties.authentication_data.unwrap_or_default();
        let attempt = Attempt {
            listener: &listener,
            peer: self.peer,
            client_id: state.client_id,
            username: username.as_deref(),
            method: "reauth",
            reauth: true,
        };
        let hash = ScramHash::from_method(method.as_str());
        let result = match (packet.reason_code, hash) {
            (ReasonCode::ReAuthenticate, _) if state.scram.is_some() => Err(None),
            (ReasonCode::ReAuthenticate, Some(hash)) => match auth.scram_start(hash, &data) {
                Ok((server, first)) if Some(server.username()) == username.as_deref() => {
                    *state.scram = Some(Box::new(server));
                    self.push_auth(ReasonCode::ContinueAuthentication, method, Some(first));
                    return self.flush().await;
                }
                Ok(_) => Err(Some(Refusal::reauth("SCRAM: a different username"))),
                Err(err) => Err(Some(AuthService::scram_refusal(&err))),
            },
            (ReasonCode::ReAuthenticate, None) => {
                match auth
                    .check_jwt_data(&data, username.as_deref(), state.client_id)
                    .await
                {
                    Ok(identity) if identity.username.as_deref() == username.as_deref() => {
                        Ok((identity, None))
                    }
                    Ok(_) => Err(Some(Refusal::reauth("JWT: a different username"))),
                    Err(refusal) => Err(Some(refusal)),
                }
            }
            (ReasonCode::ContinueAuthentication, Some(_)) => match state.scram.take() {
                None => Err(None),
                Some(server) => match server.finish(&data) {
                    Ok((server_final, name)) if Some(name.as_str()) == username.as_deref() => Ok((
                        auth.scram_identity(&name, method_name(method)),
                        Some(server_final),
                    )),
                    Ok(_) => Err(Some(Refusal::reauth("SCRAM: a different username"))),
                    Err(err) => Err(Some(AuthService::scram_refusal(&err))),
                },
            },
            _ => Err(None),
        };
        match result {
            Ok((identity, reply)) => {
                auth.conclude(None, &attempt, &Ok(identity.clone())).await;
                *state.expires = identity.expires_at.map(deadline_of);
                // New credentials may carry other groups or another token's ACL claim.
                if identity.groups != state.identity.groups || identity.acl != state.identity.acl {
                    let mut principal = (**state.principal).clone();
                    principal.groups = identity.groups.clone();
                    principal.claim = identity.acl.clone();
                    *state.principal = Arc::new(principal);
                    let update = ToRouter::Principal {
                        conn: self.conn,
                        principal: state.principal.clone(),
                    };
                    if self.ctx.router.send(update).await.is_err() {
                        return Err(End::RouterGone);
                    }
                }
                *state.identity = identity;
                self.push_auth(ReasonCode::Success, method, reply);
                self.flush().await
            }
            Err(None) => {
                self.disconnect(
                    ReasonCode::ProtocolError,
                    "AUTH out of sequence for this authentication method",
                )
                .await;
                Err(End::Refused)
            }
            Err(Some(refusal)) => {
                auth.conclude(None, &attempt, &Err(refusal)).await;
                self.disconnect(ReasonCode::NotAuthorized, "re-authentication failed")
                    .await;
                Err(End::Refused)
            }
        }
    }

    async fn run(&mut self) -> End {
        let mut connect = match Box::pin(self.read_connect()).await {
            Ok(connect) => connect,
            Err(end) => return end,
        };
        let certificate = match self.apply_certificate_identity(&mut connect) {
            Ok(certificate) => certificate,
            Err(why) => {
                info!(conn = self.conn.0, %why, "client certificate identity refused");
                self.refuse(connect.protocol_version, ReasonCode::NotAuthorized, &why)
                    .await;
                return End::Identity;
            }
        };
        let version = connect.protocol_version;
        self.encoder = Encoder::new(version);
        if let Some(max) = connect.properties.maximum_packet_size {
            self.encoder.set_max_packet_size(max.get());
        }
        let cert_cn = self.certificate_cn();
        // Boxed: the exchange's states need not live in the connection's future.
        let (mut identity, mut connect_auth) =
            match Box::pin(self.authenticate(&mut connect, certificate)).await {
                Ok(done) => done,
                Err(end) => return end,
            };
        // The engine knows the client by its authenticated identity only (sessions belong to
        // it); an anonymous client has none.
        connect.username = identity
            .username
            .as_deref()
            .and_then(|name| MqttString::new(name).ok());
        let mut principal = Arc::new(Principal {
            username: identity.username.clone(),
            groups: identity.groups.clone(),
            cert_cn,
            listener: Some(self.listener.name.clone()),
            address: Some(self.peer.ip()),
            authenticated: identity.method != "anonymous",
            claim: identity.acl.clone(),
        });
        connect_auth.principal = Some(principal.clone());
        self.permit.handshake_done();
        let method = connect_auth.method.clone();
        let client_id = connect.client_id.as_str().to_owned();
        let mut reauth: Option<Box<ScramServer>> = None;
        let mut expires = identity.expires_at.map(deadline_of);
        let mut keep_alive_secs = connect.keep_alive;
        let outbox = Arc::new(Outbox::default());
        let registration = ToRouter::Connect {
            conn: self.conn,
            connect,
            outbox: outbox.clone(),
            auth: connect_auth,
        };
        if self.ctx.router.send(registration).await.is_err() {
            return End::RouterGone;
        }
        self.registered = true;
        let mut keep_alive = KeepAlive::new(keep_alive_secs, Instant::now());
        let mut batch: Vec<Packet> = Vec::new();
        let mut connack_sent = false;
        self.release_read_buffer();
        // Over its rate, the client is not read until it is back within it: TCP carries the
        // backpressure to it, and nothing it sent is dropped. Boxed: most clients have none.
        let mut limiter = {
            let groups: Vec<&str> = identity.groups.iter().map(|g| &**g).collect();
            let limit = self.ctx.rates.for_client(
                &self.listener.name,
                identity.username.as_deref(),
                &groups,
            );
            bulwark_limits::rate::Limiter::new(limit, Instant::now()).map(Box::new)
        };
        let mut paused_until: Option<tokio::time::Instant> = None;
        // Packets the client sent right behind its CONNECT, in the same read, are handled
        // before the next read (which may only find the end of the stream).
        let mut decode_first = self.decoder.buffered() > 0;
        // The router asked for everything the client has sent so far (a takeover waits).
        let mut drain_asked = false;

        // Phase 2: packets both ways until one side ends it.
        loop {
            if drain_asked && !decode_first && !self.stream.input_waiting() {
                drain_asked = false;
                let msg = ToRouter::Drained { conn: self.conn };
                if self.ctx.router.send(msg).await.is_err() {
                    return End::RouterGone;
                }
            }
            let ka_deadline = keep_alive.poll_deadline();
            let ka_sleep = async {
                match ka_deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            // Counted from the CONNACK on: the credentials' end never overtakes it.
            let expiry_deadline = expires.filter(|_| connack_sent);
            let expiry = async {
                match expiry_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let pause = async {
                match paused_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let mut published = 0u64;
            tokio::select! {
                read = async {
                    if decode_first {
                        decode_first = false;
                        Ok(0)
                    } else {
                        self.read_some(READ_CHUNK).await
                    }
                }, if paused_until.is_none() => {
                    let read = match read {
                        Ok(n) => n,
                        Err(end) => return end,
                    };
                    keep_alive.handle_activity(Instant::now());
                    // Packets go to the engine in order; an AUTH is handled where it stands,
                    // after the packets before it and before the ones after it.
                    let failure = loop {
                        let mut auth = None;
                        let failure = loop {
                            match self.decoder.poll_packet() {
                                Ok(Some(Packet::PingReq)) => {
                                    // Answered here: the engine need not see keep-alive traffic.
                                    let _ = self.encoder.encode(&Packet::PingResp, &mut self.out);
                                }
                                Ok(Some(Packet::Auth(packet))) => {
                                    auth = Some(packet);
                                    break None;
                                }
                                Ok(Some(packet)) => {
                                    published += u64::from(matches!(packet, Packet::Publish(_)));
                                    batch.push(packet);
                                }
                                Ok(None) => break None,
                                Err(err) => break Some(Box::new(err)),
                            }
                        };
                        if !batch.is_empty() {
                            let packets = std::mem::take(&mut batch);
                            let msg = ToRouter::Packets { conn: self.conn, packets };
                            if self.ctx.router.send(msg).await.is_err() {
                                return End::RouterGone;
                            }
                        }
                        let Some(packet) = auth else {
                            break failure;
                        };
                        let state = Reauth {
                            method: method.as_ref(),
                            connack_sent,
                            client_id: &client_id,
                            identity: &mut identity,
                            principal: &mut principal,
                            scram: &mut reauth,
                            expires: &mut expires,
                        };
                        if let Err(end) = Box::pin(self.reauthenticate(packet, state)).await {
                            return end;
                        }
                    };
                    self.release_read_buffer();
                    if let Some(err) = failure {
                        if version.is_v5() {
                            let mut d = Disconnect::new(err.reason_code());
                            d.properties.reason_string =
                                MqttString::new(&err.to_string()).ok();
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
                    if let Some(limiter) = limiter.as_mut() {
                        let wait = limiter.take(published, read as u64, Instant::now());
                        if !wait.is_zero() {
                            paused_until = Some(tokio::time::Instant::now() + wait);
                        }
                    }
                }
                () = pause => {
                    paused_until = None;
                    // The client was not silent: it was not being read.
                    keep_alive.handle_activity(Instant::now());
                }
                () = outbox.ready() => {
                    drain_asked |= outbox.take_drain();
                    let mut close = false;
                    for output in outbox.take() {
                        match output {
                            Output::Publish(publish) => {
                                if let Err(err) = self.encoder.encode(&publish.encodable(), &mut self.out) {
                                    debug!(conn = self.conn.0, %err, "message not sent");
                                }
                            }
                            Output::Accepted(accepted) => {
                                self.decoder.set_authenticated();
                                connack_sent = true;
                                if accepted.keep_alive != keep_alive_secs {
                                    keep_alive_secs = accepted.keep_alive;
                                    keep_alive = KeepAlive::new(keep_alive_secs, Instant::now());
                                }
                            }
                            Output::Packet(mut packet) => {
                                if let Err(err) = self.encoder.encode_fitting(&mut packet, &mut self.out) {
                                    if matches!(*packet, Packet::ConnAck(_)) {
                                        // Only a client with a Maximum Packet Size below 5
                                        // bytes gets here: the engine closes it next.
                                        warn!(peer = %self.peer, conn = self.conn.0, %err,
                                            "closing: not even a CONNACK fits the client's Maximum Packet Size");
                                    } else {
                                        debug!(conn = self.conn.0, %err, "packet not sent");
                                    }
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
                        return match outbox.offence() {
                            Some(code) => End::Expelled(code),
                            None => End::Engine,
                        };
                    }
                }
                () = expiry => {
                    if version.is_v5() {
                        let mut d = Disconnect::new(ReasonCode::NotAuthorized);
                        d.properties.reason_string = MqttString::new("credentials expired").ok();
                        let _ = self.encoder.encode_fitting(&mut Packet::Disconnect(d), &mut self.out);
                        let _ = self.flush().await;
                    }
                    self.ctx.auth.forced_disconnect(self.conn, "credentials expired (JWT exp) without re-authentication");
                    return End::Expired;
                }
                () = ka_sleep, if paused_until.is_none() => {
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
