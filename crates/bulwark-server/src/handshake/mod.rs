//! The connection handshake as a state machine without I/O: from a decoded CONNECT to a
//! logged-in client (or a refusal), and after that its re-authentications and the end of its
//! credentials ([`Reauth`]).
//!
//! The machines decide which AUTH, CONNACK and DISCONNECT packets go out and when, and what to
//! ask of the authentication service; they read no socket and no clock. The driver feeds them
//! the client's packets ([`Handshake::handle_packet`]), the time
//! ([`Handshake::handle_timeout`]) and the service's answers ([`Handshake::handle_answer`]),
//! writes what [`Handshake::poll_transmit`] encodes, and acts on
//! [`Handshake::poll_event`]: a [`Request`] to the service (`crate::login` serves them),
//! an outcome to record, the login accepted or refused.
//!
//! Flows at CONNECT:
//! - no Authentication Method: the login gate, then the listener's authenticator chain;
//! - `SCRAM-SHA-256` / `SCRAM-SHA-512` on a listener that offers SCRAM: the client-first
//!   message in the CONNECT, the server-first message in an AUTH (Continue authentication),
//!   the client-final message in the client's AUTH, the server-final message in the CONNACK;
//! - `JWT`: the token as the CONNECT's Authentication Data;
//! - any other method: refused with Bad authentication method.
//!
//! Every login ends with [`Request::Finish`] (bans, registration, counts, the security event),
//! whose answer is the verdict.

mod reauth;
#[cfg(test)]
mod tests;

pub(crate) use reauth::{Reauth, ReauthEvent};

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bulwark_acl::Principal;
use bulwark_acl::event::EventKind;
use bulwark_auth::scram::{ScramHash, ScramServer};
use bulwark_core::ConnectAuth;
use bulwark_proto::{
    Auth, AuthProperties, ConnAck, Connect, ConnectReturnCode, DecodeError, Encoder, MqttString,
    Packet, ProtocolVersion, ReasonCode,
};
use bytes::{Bytes, BytesMut};

use crate::auth::{AuthService, Counts, Identity, Refusal};

/// The Authentication Method of a token given as Authentication Data.
pub(crate) const JWT_METHOD: &str = "JWT";

/// One moment on both clocks: the machines read neither themselves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    /// For deadlines.
    pub(crate) at: Instant,
    /// For the end of credentials, which is a wall-clock time (a JWT's `exp`).
    pub(crate) wall: SystemTime,
}

impl Now {
    /// The instant of a wall-clock time (this instant if it has passed).
    fn instant_of(self, at: SystemTime) -> Instant {
        self.at + at.duration_since(self.wall).unwrap_or(Duration::ZERO)
    }
}

/// What a login needs to know of its connection and listener.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// The listener's name (for the principal).
    pub(crate) listener: Arc<str>,
    /// The client's address (for the principal).
    pub(crate) peer: IpAddr,
    /// Whether the listener offers SCRAM over AUTH packets.
    pub(crate) scram: bool,
    /// Whether the listener offers JWT as Authentication Data (and keys are configured).
    pub(crate) jwt: bool,
    /// The identity of a verified client certificate the listener maps: it binds the user.
    pub(crate) certificate: Option<String>,
    /// The common name of the verified client certificate (for the principal).
    pub(crate) cert_cn: Option<Arc<str>>,
    /// How long the client has for each reply in an exchange.
    pub(crate) reply_timeout: Duration,
}

/// What a machine asks of the authentication service; answered with an [`Answer`].
#[derive(Debug)]
pub(crate) enum Request {
    /// Admission through the login gate (backoff, bans); `password` is the CONNECT's, for a
    /// login without an Authentication Method. Answered with [`Answer::Admitted`].
    Gate { password: Option<Bytes> },
    /// The listener's authenticator chain over the CONNECT ([`Subject::connect`]). Answered
    /// with [`Answer::Identity`].
    CheckConnect,
    /// A token given as Authentication Data, which must name `claimed` if that is set.
    /// Answered with [`Answer::Identity`].
    CheckJwt {
        token: Bytes,
        claimed: Option<String>,
    },
    /// Starts a SCRAM exchange with the client-first message. Answered with
    /// [`Answer::ScramStarted`].
    ScramStart {
        hash: ScramHash,
        client_first: Bytes,
    },
    /// The gate's second look before a SCRAM proof is verified. Answered with
    /// [`Answer::Admitted`].
    BeforeVerdict,
    /// The identity of a user who completed a SCRAM exchange. Answered with
    /// [`Answer::Identity`].
    ScramIdentity { name: String, method: &'static str },
    /// The outcome of a login: checked against the bans, registered as a live connection,
    /// counted and recorded. Answered with [`Answer::Identity`]: the verdict.
    Finish(Result<Identity, Refusal>),
}

/// The authentication service's answer to a [`Request`].
#[derive(Debug)]
pub(crate) enum Answer {
    /// To [`Request::Gate`] and [`Request::BeforeVerdict`].
    Admitted(Result<(), Refusal>),
    /// To [`Request::CheckConnect`], [`Request::CheckJwt`], [`Request::ScramIdentity`] and
    /// [`Request::Finish`].
    Identity(Result<Identity, Refusal>),
    /// To [`Request::ScramStart`]: the server side and the server-first message.
    ScramStarted(Result<(Box<ScramServer>, Vec<u8>), Refusal>),
}

/// Who is attempting a login, as the authentication service records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) username: Option<&'a str>,
    /// The method name in the audit trail.
    pub(crate) method: &'a str,
    /// A re-authentication during the session.
    pub(crate) reauth: bool,
    /// The CONNECT (at CONNECT only).
    pub(crate) connect: Option<&'a Connect>,
    /// The client certificate's identity, if the listener maps one.
    pub(crate) certificate: Option<&'a str>,
}

/// A login the service accepted: what the engine is given with the CONNECT
/// ([`Handshake::into_connect`]), and the machine that follows the credentials from there on.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// For the CONNACK (method, server-final data) and the principal.
    pub(crate) auth: ConnectAuth,
    pub(crate) reauth: Box<Reauth>,
}

/// What [`Handshake::poll_event`] reports.
#[derive(Debug)]
pub(crate) enum HandshakeEvent {
    /// Ask the authentication service, then [`Handshake::handle_answer`].
    Request(Request),
    /// Count and record this outcome (an exchange the client left); no answer.
    Record(Result<Identity, Refusal>),
    /// Logged in: hand the CONNECT ([`Handshake::into_connect`]) to the engine.
    Accepted(Box<Accepted>),
    /// Refused: send what [`Handshake::poll_transmit`] has (a CONNACK, where the version has
    /// a code for it) and close. `reason` is for the log; the client is told less.
    Refused { code: ReasonCode, reason: String },
    /// The client left (or went silent) in the middle of an exchange: close, nothing to send.
    Abandoned,
}

/// How an admitted login goes on.
#[derive(Debug)]
enum Flow {
    /// The listener's authenticator chain over the CONNECT.
    Chain,
    /// A token from the Authentication Data.
    Jwt { token: Bytes },
    /// A SCRAM exchange, its server-first message to be sent.
    Scram {
        server: Box<ScramServer>,
        server_first: Vec<u8>,
    },
}

/// Where a login stands: each state but the last waits for one input.
#[derive(Debug)]
enum State {
    /// The gate's answer to [`Request::Gate`].
    Gate(Flow),
    /// The identity from the chain or the token.
    Check,
    /// The service's answer to [`Request::ScramStart`].
    ScramStart,
    /// The client's AUTH with the client-final message, until `deadline`.
    ClientFinal {
        server: Box<ScramServer>,
        deadline: Instant,
    },
    /// The gate's second look, before the proof in `data` is checked.
    Verdict {
        server: Box<ScramServer>,
        data: Bytes,
    },
    /// The identity of the user whose proof was right.
    ScramIdentity { server_final: Vec<u8> },
    /// The verdict of [`Request::Finish`].
    Finish,
    /// Over.
    Done,
}

/// A client's login, from its CONNECT to accepted or refused.
#[derive(Debug)]
pub(crate) struct Handshake {
    connect: Box<Connect>,
    setup: Setup,
    state: State,
    /// The attempt's username (a SCRAM exchange names its own) and method, for the gate and
    /// the audit trail.
    username: Option<String>,
    method: &'static str,
    /// The method and last server data the CONNACK carries.
    reply: ConnectAuth,
    transmit: Outgoing,
    events: VecDeque<HandshakeEvent>,
}

impl Handshake {
    /// Starts the login of `connect` (whose username a client certificate's identity may have
    /// replaced already).
    pub(crate) fn new(connect: Box<Connect>, setup: Setup) -> Self {
        let mut encoder = Encoder::new(connect.protocol_version);
        if let Some(max) = connect.properties.maximum_packet_size {
            encoder.set_max_packet_size(max.get());
        }
        let username = connect.username.as_ref().map(|u| u.as_str().to_owned());
        let mut handshake = Self {
            connect,
            setup,
            state: State::Done,
            username,
            method: "connect",
            reply: ConnectAuth::default(),
            transmit: Outgoing::new(encoder),
            events: VecDeque::new(),
        };
        handshake.start();
        handshake
    }

    /// The encoder for this client: its version and Maximum Packet Size.
    pub(crate) fn encoder(&self) -> Encoder {
        self.transmit.encoder
    }

    /// Who is logging in, for the authentication service.
    pub(crate) fn subject(&self) -> Subject<'_> {
        Subject {
            client_id: self.connect.client_id.as_str(),
            username: self.username.as_deref(),
            method: self.method,
            reauth: false,
            connect: Some(&self.connect),
            certificate: self.setup.certificate.as_deref(),
        }
    }

    fn start(&mut self) {
        let Some(method) = self.connect.properties.authentication_method.clone() else {
            let password = self.connect.password.clone();
            self.ask(State::Gate(Flow::Chain), Request::Gate { password });
            return;
        };
        let data = self
            .connect
            .properties
            .authentication_data
            .clone()
            .unwrap_or_default();
        let name = method.as_str();
        if let Some(hash) = ScramHash::from_method(name).filter(|_| self.setup.scram) {
            self.method = hash.method();
            self.reply.method = Some(method);
            self.ask(
                State::ScramStart,
                Request::ScramStart {
                    hash,
                    client_first: data,
                },
            );
            return;
        }
        self.method = if name == JWT_METHOD {
            JWT_METHOD
        } else {
            "enhanced"
        };
        if name != JWT_METHOD || !self.setup.jwt {
            let refusal = Refusal {
                code: ReasonCode::BadAuthenticationMethod,
                reason: format!("authentication method {name:?} is not offered on this listener"),
                counts: Counts::No,
                kind: EventKind::AuthFailure,
            };
            self.finish(Err(refusal));
            return;
        }
        self.reply.method = Some(method);
        self.ask(
            State::Gate(Flow::Jwt { token: data }),
            Request::Gate { password: None },
        );
    }

    fn ask(&mut self, state: State, request: Request) {
        self.state = state;
        self.events.push_back(HandshakeEvent::Request(request));
    }

    /// Hands the outcome to [`Request::Finish`].
    fn finish(&mut self, result: Result<Identity, Refusal>) {
        self.ask(State::Finish, Request::Finish(result));
    }

    /// The authentication service's answer to the last [`Request`].
    pub(crate) fn handle_answer(&mut self, answer: Answer, now: Now) {
        match (std::mem::replace(&mut self.state, State::Done), answer) {
            (State::Gate(_), Answer::Admitted(Err(refusal))) => self.finish(Err(refusal)),
            (State::Gate(Flow::Chain), Answer::Admitted(Ok(()))) => {
                self.ask(State::Check, Request::CheckConnect);
            }
            (State::Gate(Flow::Jwt { token }), Answer::Admitted(Ok(()))) => {
                // A certificate's identity binds the token's user too.
                let claimed = self.setup.certificate.clone().or(self.username.clone());
                self.ask(State::Check, Request::CheckJwt { token, claimed });
            }
            (
                State::Gate(Flow::Scram {
                    server,
                    server_first,
                }),
                Answer::Admitted(Ok(())),
            ) => {
                self.push_auth(ReasonCode::ContinueAuthentication, Some(server_first));
                self.state = State::ClientFinal {
                    server,
                    deadline: now.at + self.setup.reply_timeout,
                };
            }
            (State::Check, Answer::Identity(result)) => self.finish(result),
            (State::ScramStart, Answer::ScramStarted(started)) => self.scram_started(started),
            (State::Verdict { server, data }, Answer::Admitted(admitted)) => {
                let proof = admitted.and_then(|()| {
                    server
                        .finish(&data)
                        .map_err(|err| AuthService::scram_refusal(&err))
                });
                match proof {
                    Ok((server_final, name)) => {
                        let method = self.method;
                        self.ask(
                            State::ScramIdentity { server_final },
                            Request::ScramIdentity { name, method },
                        );
                    }
                    Err(refusal) => self.finish(Err(refusal)),
                }
            }
            (State::ScramIdentity { server_final }, Answer::Identity(result)) => {
                if result.is_ok() {
                    self.reply.data = Some(Bytes::from(server_final));
                }
                self.finish(result);
            }
            (State::Finish, Answer::Identity(verdict)) => match verdict {
                Ok(identity) => self.accept(identity, now),
                Err(refusal) => {
                    self.refuse_with(refusal.code, refusal.public_reason(), refusal.reason);
                }
            },
            // An answer to a question not asked: the login cannot go on.
            (_, _) => self.refuse(
                ReasonCode::ImplementationSpecificError,
                "the login went out of step",
            ),
        }
    }

    fn scram_started(&mut self, started: Result<(Box<ScramServer>, Vec<u8>), Refusal>) {
        let (server, server_first) = match started {
            Ok(started) => started,
            Err(refusal) => {
                self.username = None;
                self.finish(Err(refusal));
                return;
            }
        };
        self.username = Some(server.username().to_owned());
        // A verified certificate names the user; SCRAM may not log in as another.
        if let Some(name) = self.setup.certificate.as_deref()
            && Some(name) != self.username.as_deref()
        {
            self.finish(Err(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "SCRAM: the username differs from the client certificate's identity",
            )));
            return;
        }
        self.ask(
            State::Gate(Flow::Scram {
                server,
                server_first,
            }),
            Request::Gate { password: None },
        );
    }

    /// A packet from the client while the machine waits for one (the AUTH of an exchange).
    pub(crate) fn handle_packet(&mut self, packet: Packet) {
        let State::ClientFinal { server, .. } = std::mem::replace(&mut self.state, State::Done)
        else {
            self.refuse(ReasonCode::ProtocolError, "a packet before the CONNACK");
            return;
        };
        match packet {
            Packet::Auth(reply)
                if reply.reason_code == ReasonCode::ContinueAuthentication
                    && reply.properties.authentication_method == self.reply.method =>
            {
                let data = reply.properties.authentication_data.unwrap_or_default();
                // Failures counted since the exchange began apply before its proof is checked.
                self.ask(State::Verdict { server, data }, Request::BeforeVerdict);
            }
            _ => self.finish(Err(Refusal::failure(
                ReasonCode::ProtocolError,
                "SCRAM: expected AUTH with Continue authentication and the same method",
            ))),
        }
    }

    /// When the machine waits for the client: the deadline of its reply.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::ClientFinal { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The time has come (or passed) for [`Handshake::poll_timeout`]: the client left the
    /// exchange.
    pub(crate) fn handle_timeout(&mut self, now: Now) {
        if self
            .poll_timeout()
            .is_some_and(|deadline| now.at >= deadline)
        {
            self.handle_lost();
        }
    }

    /// The connection failed or closed while the machine waited for the client. The client
    /// left: that says nothing about the username it named, so only its address is counted.
    pub(crate) fn handle_lost(&mut self) {
        if !matches!(self.state, State::ClientFinal { .. }) {
            return;
        }
        self.state = State::Done;
        self.events.push_back(HandshakeEvent::Record(Err(Refusal {
            code: ReasonCode::NotAuthorized,
            reason: "SCRAM: the client left the exchange".into(),
            counts: Counts::AddressOnly,
            kind: EventKind::AuthFailure,
        })));
        self.events.push_back(HandshakeEvent::Abandoned);
    }

    /// Refuses the login now with `code`, telling the client `why` (a client certificate
    /// whose identity cannot be used).
    pub(crate) fn refuse(&mut self, code: ReasonCode, why: &str) {
        self.refuse_with(code, why, why.to_owned());
    }

    /// Refuses the login with `code`, telling the client `public` and the log `reason`.
    fn refuse_with(&mut self, code: ReasonCode, public: &str, reason: String) {
        self.state = State::Done;
        if let Some(connack) = refusal(self.transmit.encoder.version(), code, public) {
            self.transmit.push(connack);
        }
        self.events
            .push_back(HandshakeEvent::Refused { code, reason });
    }

    fn accept(&mut self, identity: Identity, now: Now) {
        let principal = Arc::new(Principal {
            username: identity.username.clone(),
            groups: identity.groups.clone(),
            cert_cn: self.setup.cert_cn.clone(),
            listener: Some(self.setup.listener.clone()),
            address: Some(self.setup.peer),
            authenticated: identity.method != "anonymous",
            claim: identity.acl.clone(),
            quarantine: None,
        });
        let mut auth = std::mem::take(&mut self.reply);
        auth.principal = Some(principal.clone());
        let reauth = Reauth::new(
            identity,
            principal,
            auth.method.clone(),
            self.connect.client_id.as_str(),
            self.transmit.encoder,
            now,
        );
        self.state = State::Done;
        self.events
            .push_back(HandshakeEvent::Accepted(Box::new(Accepted {
                auth,
                reauth: Box::new(reauth),
            })));
    }

    /// The CONNECT, for the engine once the login is accepted.
    pub(crate) fn into_connect(self) -> Box<Connect> {
        self.connect
    }

    fn push_auth(&mut self, code: ReasonCode, data: Option<Vec<u8>>) {
        self.transmit.push(auth_packet(
            code,
            self.reply.method.clone(),
            data.map(Bytes::from),
        ));
    }

    /// Encodes the next packet for the client into `out`, fitting its Maximum Packet Size;
    /// false when there is none.
    pub(crate) fn poll_transmit(&mut self, out: &mut BytesMut) -> bool {
        self.transmit.poll(out)
    }

    /// What the driver is to do next; `None` while the machine waits for the client.
    pub(crate) fn poll_event(&mut self) -> Option<HandshakeEvent> {
        self.events.pop_front()
    }
}

/// Packets waiting for the client, and how they are encoded for it.
#[derive(Debug)]
struct Outgoing {
    /// The client's version and Maximum Packet Size.
    encoder: Encoder,
    queue: VecDeque<Packet>,
}

impl Outgoing {
    fn new(encoder: Encoder) -> Self {
        Self {
            encoder,
            queue: VecDeque::new(),
        }
    }

    fn push(&mut self, packet: Packet) {
        self.queue.push_back(packet);
    }

    /// Encodes the next packet into `out`, fitting the client's Maximum Packet Size (a packet
    /// that cannot be made to fit is not sent); false when there is none.
    fn poll(&mut self, out: &mut BytesMut) -> bool {
        let Some(mut packet) = self.queue.pop_front() else {
            return false;
        };
        let _ = self.encoder.encode_fitting(&mut packet, out);
        true
    }
}

/// An AUTH packet of an exchange.
fn auth_packet(code: ReasonCode, method: Option<MqttString>, data: Option<Bytes>) -> Packet {
    Packet::Auth(Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: method,
            authentication_data: data,
            ..AuthProperties::default()
        },
    })
}

/// The CONNACK refusing a login with `code`, telling a 5.0 client `why`; `None` where 3.1.1
/// has no return code for it (the connection just closes).
pub(crate) fn refusal(version: ProtocolVersion, code: ReasonCode, why: &str) -> Option<Packet> {
    if version.is_v5() {
        let mut connack = ConnAck::new(false, code);
        connack.properties.reason_string = MqttString::new(why).ok();
        Some(Packet::ConnAck(Box::new(connack)))
    } else {
        ConnectReturnCode::from_reason(code)
            .is_some()
            .then(|| Packet::ConnAck(Box::new(ConnAck::new(false, code))))
    }
}

/// Answers a CONNECT the decoder refused (`version`: the protocol level it read, if any),
/// where the protocol gives a way to: appends the CONNACK to `out`.
pub(crate) fn refuse_undecodable(
    version: Option<ProtocolVersion>,
    err: &DecodeError,
    out: &mut BytesMut,
) {
    let code = err.reason_code();
    let (version, mut connack) = match version {
        Some(version) if version.is_v5() => {
            let Some(connack) = refusal(version, code, &err.to_string()) else {
                return;
            };
            (version, connack)
        }
        // 3.1.1 has return codes only for some refusals; others just close.
        Some(version)
            if !matches!(
                code,
                ReasonCode::MalformedPacket | ReasonCode::ProtocolError
            ) =>
        {
            let Some(connack) = refusal(version, code, "") else {
                return;
            };
            (version, connack)
        }
        Some(_) => return,
        // An unknown protocol level: answer as 3.1.1 would, return code 1.
        None if code == ReasonCode::UnsupportedProtocolVersion => (
            ProtocolVersion::V3_1_1,
            Packet::ConnAck(Box::new(ConnAck::new(false, code))),
        ),
        None => return,
    };
    let _ = Encoder::new(version).encode_fitting(&mut connack, out);
}
