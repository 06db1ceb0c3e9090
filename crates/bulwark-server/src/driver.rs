//! One task per connection: reads and decodes, forwards packets to the router, encodes and
//! writes what the router sends back, enforces the CONNECT timeout and keep alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_core::{ConnectionId, KeepAlive, Output};
use bulwark_proto::{
    Connect, DecodeError, Decoder, DecoderLimits, Disconnect, Encoder, MqttString, Packet,
    ProtocolVersion, ReasonCode,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::auth::{AuthService, Authenticator, ListenerAuth};
use crate::handshake::{Accepted, Handshake, HandshakeEvent, Now, Reauth, ReauthEvent, Setup};
use crate::login::Login;
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

/// Hands `msg` to the router; resolves to `Err` once the router is gone. A plain function
/// returning a small future: the channel's waiting send, several hundred bytes, is boxed and
/// made only when the channel is full, so that no connection's future is sized for it.
fn to_router(router: &mpsc::Sender<ToRouter>, msg: ToRouter) -> ToRouterSend<'_> {
    match router.try_send(msg) {
        Ok(()) => ToRouterSend::Done(Ok(())),
        Err(mpsc::error::TrySendError::Full(msg)) => {
            ToRouterSend::Waiting(Box::pin(router.send(msg)))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => ToRouterSend::Done(Err(())),
    }
}

/// See [`to_router`].
enum ToRouterSend<'a> {
    Done(Result<(), ()>),
    Waiting(
        std::pin::Pin<
            Box<dyn Future<Output = Result<(), mpsc::error::SendError<ToRouter>>> + Send + 'a>,
        >,
    ),
}

impl Future for ToRouterSend<'_> {
    type Output = Result<(), ()>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Self::Done(result) => std::task::Poll::Ready(*result),
            Self::Waiting(send) => send.as_mut().poll(cx).map(|sent| sent.map_err(|_| ())),
        }
    }
}

/// Both clocks now, for the handshake machines.
fn now() -> Now {
    Now {
        at: tokio::time::Instant::now().into_std(),
        wall: std::time::SystemTime::now(),
    }
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
        login: Told::Nothing,
        permit,
    };
    // `peer` and `conn` are read from the driver, not captured again: the future is kept small.
    async move {
        let end = driver.run().await;
        let (peer, conn) = (driver.peer, driver.conn);
        if driver.registered {
            let _ = to_router(&driver.ctx.router, ToRouter::Lost { conn }).await;
        }
        let who = driver.ctx.auth.unregister(conn);
        if driver.login != Told::Nothing
            && let Some(detect) = driver.ctx.auth.audit.detect()
            && let Some((client_id, username)) = &who
        {
            let login = crate::detect::Login {
                username: username.clone(),
                client_id: Arc::from(client_id.as_str()),
                certificate: (driver.login == Told::CertificateLogin)
                    .then(|| username.clone())
                    .flatten(),
            };
            detect.send(login.into_input(driver.peer, false));
        }
        let violation = match &end {
            End::Decode(err) => Some(err.reason_code()),
            End::Expelled(code) => Some(*code),
            _ => None,
        };
        if let Some(code) = violation {
            driver.ctx.traffic.expel(code);
            // Boxed, as is the ban below: these futures are large and run only after an
            // offence, and every connection's future would otherwise be sized for them.
            Box::pin(driver.violation_event(code, &end, who)).await;
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
            Box::pin(crate::login::ban_now(
                &driver.ctx,
                &driver.listener.name,
                peer,
                &ban,
            ))
            .await;
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

/// What the detection rules were told of a connection's login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Nothing,
    Login,
    CertificateLogin,
}

/// How often a paused client's driver looks at whether its throttle changed.
const THROTTLE_CHECK: Duration = Duration::from_secs(1);

/// What a connection published since its last sample for the detection rules.
#[derive(Debug)]
struct Sample {
    client_id: Arc<str>,
    username: Option<Arc<str>>,
    started: Instant,
    messages: u64,
    bytes: u64,
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
    /// What the detection rules were told of this login, to tell them of its end (who it was
    /// is the registry's, read back as the connection ends).
    login: Told,
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
    /// Records a protocol violation; `who` is the client id and username of a client that
    /// had logged in.
    async fn violation_event(
        &self,
        code: ReasonCode,
        end: &End,
        who: Option<(String, Option<Arc<str>>)>,
    ) {
        let mut event =
            SecurityEvent::new(EventKind::ProtocolViolation, std::time::SystemTime::now());
        event.listener = Some(self.listener.name.to_string());
        event.remote = Some(self.peer.to_string());
        if let Some((client_id, username)) = who {
            event.client_id = Some(client_id);
            event.username = username.as_deref().map(str::to_owned);
        }
        event.reason = Some(match end {
            End::Decode(err) => format!("{code}: {err}"),
            _ => code.to_string(),
        });
        self.ctx.auth.audit.record(event);
    }

    /// Tells the detection rules that counts logins that the engine accepted this client.
    fn observe_login(&mut self, identity: &crate::auth::Identity, assigned: Option<&str>) {
        let Some(detect) = self.ctx.auth.audit.detect().filter(|d| d.logins) else {
            return;
        };
        let Some((client_id, username)) = self.ctx.auth.who(self.conn) else {
            return;
        };
        let client_id = assigned.map_or(client_id, Arc::from);
        let certificate = identity
            .method
            .starts_with("certificate")
            .then(|| username.clone())
            .flatten();
        self.login = if certificate.is_some() {
            Told::CertificateLogin
        } else {
            Told::Login
        };
        let login = crate::detect::Login {
            username,
            client_id,
            certificate,
        };
        detect.send(login.into_input(self.peer, true));
    }

    /// Which throttles and quarantines of the detection rules are in force (0 without rules).
    fn restrictions_generation(&self) -> u64 {
        self.ctx
            .auth
            .audit
            .detect()
            .map_or(0, |d| d.restrictions.generation())
    }

    /// The rate limiter for this client: its listener's, user's or groups' rate, lowered by a
    /// detection rule's throttle. `None`: not limited.
    fn limiter(
        &self,
        identity: &crate::auth::Identity,
    ) -> Option<Box<bulwark_limits::rate::Limiter>> {
        bulwark_limits::rate::Limiter::new(self.rate_limit(identity), Instant::now()).map(Box::new)
    }

    /// After throttles changed (`restrictions_seen` is behind): the limiter made again if this
    /// client's limit changed (else kept, debt and all: another client's throttle gives this
    /// one no fresh burst), and whether it was.
    fn renew_limiter(
        &self,
        identity: &crate::auth::Identity,
        limiter: &mut Option<Box<bulwark_limits::rate::Limiter>>,
        restrictions_seen: &mut u64,
    ) -> bool {
        let generation = self.restrictions_generation();
        if generation == *restrictions_seen {
            return false;
        }
        *restrictions_seen = generation;
        let limit = self.rate_limit(identity);
        let current = limiter.as_ref().map(|l| l.limit()).unwrap_or_default();
        let unlimited = limiter.is_none() && limit.is_unlimited();
        if unlimited || (limiter.is_some() && current == limit) {
            return false;
        }
        *limiter = bulwark_limits::rate::Limiter::new(limit, Instant::now()).map(Box::new);
        true
    }

    /// This client's rate limit, a throttle included.
    fn rate_limit(&self, identity: &crate::auth::Identity) -> bulwark_limits::rate::RateLimit {
        let groups: Vec<&str> = identity.groups.iter().map(|g| &**g).collect();
        let mut limit =
            self.ctx
                .rates
                .for_client(&self.listener.name, identity.username.as_deref(), &groups);
        if let Some(detect) = self.ctx.auth.audit.detect()
            && let Some((client_id, username)) = self.ctx.auth.who(self.conn)
        {
            let rate =
                detect
                    .restrictions
                    .throttle(self.peer.ip(), username.as_deref(), &client_id);
            limit = crate::detect::throttled(limit, rate);
        }
        limit
    }

    /// `auth` with its principal restricted to an ACL group, if a detection rule put this
    /// client in quarantine.
    fn quarantined(
        &self,
        mut auth: bulwark_core::ConnectAuth,
        client_id: &str,
    ) -> bulwark_core::ConnectAuth {
        let Some(detect) = self.ctx.auth.audit.detect() else {
            return auth;
        };
        let username = auth.principal.as_ref().and_then(|p| p.username.clone());
        if let Some(group) =
            detect
                .restrictions
                .quarantine(self.peer.ip(), username.as_deref(), client_id)
        {
            let mut principal = auth.principal.as_deref().cloned().unwrap_or_default();
            principal.groups = vec![group.clone()];
            principal.quarantine = Some(group);
            auth.principal = Some(Arc::new(principal));
        }
        auth
    }

    /// Tells the detection rules about subscriptions to wildcards near the root (allowed or
    /// not: asking is what counts).
    fn observe_subscribe(&self, subscribe: &bulwark_proto::Subscribe) {
        let Some(detect) = self.ctx.auth.audit.detect() else {
            return;
        };
        let Some(depth) = detect.root_depth else {
            return;
        };
        for s in &subscribe.subscriptions {
            let filter = s.filter.as_str();
            if bulwark_limits::detect::wildcard_depth(filter).is_some_and(|d| d <= depth)
                && let Some((client_id, username)) = self.ctx.auth.who(self.conn)
            {
                detect.send(crate::detect::Input::Subscribed {
                    username,
                    client_id,
                    peer: self.peer,
                    filter: filter.to_owned(),
                });
            }
        }
    }

    /// Counts what the client published and hands the detection rules a sample every
    /// [`crate::detect::SAMPLE_EVERY`]. `bytes` is what was read with the messages (PUBLISH
    /// packets are nearly all of it).
    fn observe_published(&self, sample: &mut Option<Box<Sample>>, messages: u64, bytes: u64) {
        let Some(detect) = self.ctx.auth.audit.detect().filter(|d| d.samples) else {
            return;
        };
        let now = Instant::now();
        let s = match sample {
            Some(s) => s,
            None => {
                let Some((client_id, username)) = self.ctx.auth.who(self.conn) else {
                    return;
                };
                sample.insert(Box::new(Sample {
                    client_id,
                    username,
                    started: now,
                    messages: 0,
                    bytes: 0,
                }))
            }
        };
        s.messages = s.messages.saturating_add(messages);
        s.bytes = s.bytes.saturating_add(bytes);
        if now.duration_since(s.started) >= crate::detect::SAMPLE_EVERY {
            detect.send(crate::detect::Input::Published {
                username: s.username.clone(),
                client_id: s.client_id.clone(),
                peer: self.peer,
                messages: s.messages,
                bytes: s.bytes,
            });
            s.started = now;
            s.messages = 0;
            s.bytes = 0;
        }
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
                let version = self.decoder.protocol_version();
                crate::handshake::refuse_undecodable(version, &err, &mut self.out);
                let _ = self.flush().await;
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

    /// Phase 1b: the login of `connect`, driven by the handshake machine. On refusal the
    /// client has been answered and the connection is to close. Boxed by the caller, as
    /// [`Driver::read_connect`] is.
    async fn handshake(
        &mut self,
        mut connect: Box<Connect>,
    ) -> Result<(Box<Connect>, Accepted), End> {
        let certificate = self.apply_certificate_identity(&mut connect);
        let ctx = self.ctx.clone();
        let listener = self.listener.clone();
        let setup = Setup {
            listener: listener.name.clone(),
            peer: self.peer.ip(),
            scram: listener.has(Authenticator::Scram),
            jwt: listener.has(Authenticator::Jwt) && ctx.auth.has_jwt(),
            certificate: certificate.as_ref().ok().cloned().flatten(),
            cert_cn: self.certificate_cn(),
            reply_timeout: ctx.connect_timeout,
        };
        let mut handshake = Handshake::new(connect, setup);
        self.encoder = handshake.encoder();
        if let Err(why) = certificate {
            info!(conn = self.conn.0, %why, "client certificate identity refused");
            handshake.refuse(ReasonCode::NotAuthorized, &why);
            while handshake.poll_transmit(&mut self.out) {}
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
            return Err(End::Identity);
        }
        let mut login = Login::new(&ctx, &listener, self.peer, self.conn);
        // Why the connection failed while the machine waited for the client.
        let mut lost = End::Closed;
        loop {
            match handshake.poll_event() {
                Some(HandshakeEvent::Request(request)) => {
                    let answer = login.serve(handshake.subject(), request).await;
                    handshake.handle_answer(answer, now());
                }
                Some(HandshakeEvent::Record(result)) => {
                    login.record(handshake.subject(), &result).await;
                }
                Some(HandshakeEvent::Accepted(accepted)) => {
                    return Ok((handshake.into_connect(), *accepted));
                }
                Some(HandshakeEvent::Refused { code, reason }) => {
                    debug!(peer = %self.peer, conn = self.conn.0, %code, %reason, "login refused");
                    while handshake.poll_transmit(&mut self.out) {}
                    let _ = self.flush().await;
                    let _ = self.stream.shutdown().await;
                    return Err(End::Refused);
                }
                Some(HandshakeEvent::Abandoned) => return Err(lost),
                None => {
                    let Some(deadline) = handshake.poll_timeout() else {
                        // Waiting for nothing: the machine lost its step.
                        handshake.refuse(ReasonCode::ImplementationSpecificError, "login stalled");
                        continue;
                    };
                    while handshake.poll_transmit(&mut self.out) {}
                    let deadline = tokio::time::Instant::from_std(deadline);
                    let read = match self.flush().await {
                        Ok(()) => self.read_early_packet(deadline).await,
                        Err(end) => Err(end),
                    };
                    match read {
                        Ok(packet) => handshake.handle_packet(packet),
                        Err(End::ConnectTimeout) => {
                            lost = End::ConnectTimeout;
                            handshake.handle_timeout(now());
                        }
                        Err(end) => {
                            lost = end;
                            handshake.handle_lost();
                        }
                    }
                }
            }
        }
    }

    /// Serves what the re-authentication machine asks for after the client's AUTH, and sends
    /// its reply. `Err` when the connection is to close (the client has been told).
    async fn reauthenticate(&mut self, reauth: &mut Reauth) -> Result<(), End> {
        let ctx = self.ctx.clone();
        let listener = self.listener.clone();
        let mut login = Login::new(&ctx, &listener, self.peer, self.conn);
        let mut closed = false;
        while let Some(event) = reauth.poll_event() {
            match event {
                ReauthEvent::Request(request) => {
                    let answer = login.serve(reauth.subject(), request).await;
                    reauth.handle_answer(answer, now());
                }
                ReauthEvent::Record(result) => login.record(reauth.subject(), &result).await,
                ReauthEvent::Principal(principal) => {
                    let update = ToRouter::Principal {
                        conn: self.conn,
                        principal,
                    };
                    if to_router(&ctx.router, update).await.is_err() {
                        return Err(End::RouterGone);
                    }
                }
                ReauthEvent::Closed { code, reason } => {
                    debug!(peer = %self.peer, conn = self.conn.0, %code, %reason, "re-authentication refused");
                    closed = true;
                }
                ReauthEvent::Expired => closed = true,
            }
        }
        while reauth.poll_transmit(&mut self.out) {}
        if closed {
            let _ = self.flush().await;
            return Err(End::Refused);
        }
        self.flush().await
    }

    async fn run(&mut self) -> End {
        let connect = match Box::pin(self.read_connect()).await {
            Ok(connect) => connect,
            Err(end) => return end,
        };
        // In a block of its own: what the handshake left (the CONNECT, the accepted exchange)
        // is gone before the packet loop, whose state every idle connection holds.
        let (version, mut keep_alive_secs, mut reauth, outbox) = {
            // Boxed: the exchange's states need not live in the connection's future.
            let (connect, accepted) = match Box::pin(self.handshake(connect)).await {
                Ok(done) => done,
                Err(end) => return end,
            };
            let Accepted {
                auth: connect_auth,
                reauth,
            } = accepted;
            let version = connect.protocol_version;
            self.permit.handshake_done();
            let keep_alive_secs = connect.keep_alive;
            let outbox = Arc::new(Outbox::default());
            let connect_auth = self.quarantined(connect_auth, connect.client_id.as_str());
            let registration = ToRouter::Connect {
                conn: self.conn,
                connect,
                outbox: outbox.clone(),
                auth: connect_auth,
            };
            if to_router(&self.ctx.router, registration).await.is_err() {
                return End::RouterGone;
            }
            (version, keep_alive_secs, reauth, outbox)
        };
        self.registered = true;
        let mut keep_alive = KeepAlive::new(keep_alive_secs, Instant::now());
        let mut batch: Vec<Packet> = Vec::new();
        let mut connack_sent = false;
        self.release_read_buffer();
        // Over its rate, the client is not read until it is back within it: TCP carries the
        // backpressure to it, and nothing it sent is dropped. Boxed: most clients have none.
        // A detection rule's throttle lowers the rate; the limiter is made again whenever
        // throttles change (`restrictions_seen`).
        let mut restrictions_seen = self.restrictions_generation();
        let mut limiter = self.limiter(reauth.identity());
        let mut paused_until: Option<tokio::time::Instant> = None;
        // What the client published for the detection rules, made at its first PUBLISH when
        // a rule looks at rates or sizes. Boxed: most connections never need it.
        let mut sample: Option<Box<Sample>> = None;
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
                if to_router(&self.ctx.router, msg).await.is_err() {
                    return End::RouterGone;
                }
            }
            // One timer for three deadlines (a timer is over a hundred bytes of every
            // connection's future): keep alive, not while paused (the client is not being
            // read); the credentials' end, counted from the CONNACK on so that it never
            // overtakes it; the end of a rate pause.
            let wake = [
                keep_alive
                    .poll_deadline()
                    .filter(|_| paused_until.is_none()),
                reauth.poll_timeout().filter(|_| connack_sent),
                paused_until.map(tokio::time::Instant::into_std),
                // While paused, a look every second at whether a throttle changed (one that
                // ends must not leave the client waiting out a debt it ran up under it).
                paused_until
                    .filter(|_| self.ctx.auth.audit.detect().is_some())
                    .map(|_| Instant::now() + THROTTLE_CHECK),
            ]
            .into_iter()
            .flatten()
            .min();
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
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
                        // Boxed: AUTH is rare, and every connection's future would hold it.
                        let mut auth = None;
                        let failure = loop {
                            match self.decoder.poll_packet() {
                                Ok(Some(Packet::PingReq)) => {
                                    // Answered here: the engine need not see keep-alive traffic.
                                    let _ = self.encoder.encode(&Packet::PingResp, &mut self.out);
                                }
                                Ok(Some(Packet::Auth(packet))) => {
                                    auth = Some(Box::new(packet));
                                    break None;
                                }
                                Ok(Some(packet)) => {
                                    published += u64::from(matches!(packet, Packet::Publish(_)));
                                    if let Packet::Subscribe(subscribe) = &packet {
                                        self.observe_subscribe(subscribe);
                                    }
                                    batch.push(packet);
                                }
                                Ok(None) => break None,
                                Err(err) => break Some(Box::new(err)),
                            }
                        };
                        if !batch.is_empty() {
                            let packets = std::mem::take(&mut batch);
                            let msg = ToRouter::Packets { conn: self.conn, packets };
                            if to_router(&self.ctx.router, msg).await.is_err() {
                                return End::RouterGone;
                            }
                        }
                        let Some(packet) = auth else {
                            break failure;
                        };
                        reauth.handle_auth(*packet, connack_sent);
                        if let Err(end) = Box::pin(self.reauthenticate(&mut reauth)).await {
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
                    // Every read once a sample exists: a large PUBLISH spans several reads, and
                    // the bytes of all of them are its size.
                    if published > 0 || sample.is_some() {
                        self.observe_published(&mut sample, published, read as u64);
                    }
                    self.renew_limiter(reauth.identity(), &mut limiter, &mut restrictions_seen);
                    if let Some(limiter) = limiter.as_mut() {
                        let wait = limiter.take(published, read as u64, Instant::now());
                        if !wait.is_zero() {
                            paused_until = Some(tokio::time::Instant::now() + wait);
                        }
                    }
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
                                self.observe_login(reauth.identity(), accepted.assigned_client_id.as_deref());
                                if let Some(id) = &accepted.assigned_client_id {
                                    // The registry knew the CONNECT's empty id: lists, kicks
                                    // and bans by client id see the one the client uses.
                                    self.ctx.auth.assigned_client_id(self.conn, id);
                                }
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
                () = timer => {
                    // The timer's clock: the deadlines it fired for are due by it. They are
                    // asked again rather than kept across the wait (every byte kept there is
                    // in every idle connection's future).
                    let at = now().at;
                    if paused_until.is_some()
                        && self.renew_limiter(reauth.identity(), &mut limiter, &mut restrictions_seen)
                    {
                        // A new limit: the debt run up under the old one is forgiven.
                        paused_until = Some(tokio::time::Instant::now());
                    }
                    if paused_until.is_some_and(|due| due.into_std() <= at) {
                        paused_until = None;
                        // The client was not silent: it was not being read.
                        keep_alive.handle_activity(at);
                    }
                    if connack_sent && reauth.poll_timeout().is_some_and(|due| due <= at) {
                        reauth.handle_timeout(now());
                        if matches!(reauth.poll_event(), Some(ReauthEvent::Expired)) {
                            while reauth.poll_transmit(&mut self.out) {}
                            let _ = self.flush().await;
                            self.ctx.auth.forced_disconnect(self.conn, "credentials expired (JWT exp) without re-authentication");
                            return End::Expired;
                        }
                    }
                    if paused_until.is_none()
                        && keep_alive.poll_deadline().is_some_and(|due| due <= at)
                    {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn lost(n: u64) -> ToRouter {
        ToRouter::Lost {
            conn: ConnectionId(n),
        }
    }

    /// A send to the router goes straight into a channel with room, waits (boxed) while the
    /// channel is full, and fails once the router is gone; nothing is lost or reordered.
    #[tokio::test]
    async fn sends_to_the_router_wait_for_room_and_fail_when_it_is_gone() {
        let (tx, mut rx) = mpsc::channel(1);
        to_router(&tx, lost(1)).await.unwrap();
        let mut waiting = std::pin::pin!(to_router(&tx, lost(2)));
        assert!(matches!(*waiting, ToRouterSend::Waiting(_)));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert!(matches!(rx.recv().await, Some(ToRouter::Lost { conn }) if conn.0 == 1));
        assert_eq!(
            waiting.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Ok(()))
        );
        assert!(matches!(rx.recv().await, Some(ToRouter::Lost { conn }) if conn.0 == 2));
        drop(rx);
        assert_eq!(to_router(&tx, lost(3)).await, Err(()));
    }
}
