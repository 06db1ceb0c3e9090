//! A logged-in client's credentials: MQTT 5.0 re-authentication with the method of the
//! CONNECT ([MQTT-4.12.1-1]) and the end of credentials that expire (a JWT's `exp`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bulwark_acl::Principal;
use bulwark_auth::scram::{ScramHash, ScramServer};
use bulwark_proto::{Auth, Disconnect, Encoder, MqttString, Packet, ReasonCode};
use bytes::{Bytes, BytesMut};

use super::{Answer, Now, Outgoing, Request, Subject, auth_packet};
use crate::auth::{AuthService, Identity, Refusal};

/// What [`Reauth::poll_event`] reports.
#[derive(Debug)]
pub(crate) enum ReauthEvent {
    /// Ask the authentication service, then [`Reauth::handle_answer`].
    Request(Request),
    /// Count and record the outcome of a re-authentication; no answer.
    Record(Result<Identity, Refusal>),
    /// New credentials carry other groups or another token's ACL claim: the engine is to
    /// authorize with this principal from now on.
    Principal(Arc<Principal>),
    /// The connection is to close after what [`Reauth::poll_transmit`] has (a DISCONNECT, to
    /// a 5.0 client). `reason` is for the log.
    Closed { code: ReasonCode, reason: String },
    /// The credentials expired without a re-authentication: close as for
    /// [`ReauthEvent::Closed`].
    Expired,
}

/// The answer a re-authentication waits for.
#[derive(Debug)]
enum Waiting {
    Nothing,
    ScramStart,
    Jwt,
    ScramIdentity { server_final: Vec<u8> },
}

/// A logged-in client's credentials.
#[derive(Debug)]
pub(crate) struct Reauth {
    /// The CONNECT's Authentication Method: re-authentication uses it, or is not possible.
    method: Option<MqttString>,
    client_id: Box<str>,
    identity: Identity,
    principal: Arc<Principal>,
    /// When the credentials end.
    expires: Option<Instant>,
    /// The client's version and Maximum Packet Size.
    encoder: Encoder,
    /// A re-authentication or a close under way; `None` (one word) the rest of the time, which
    /// is nearly always: every connection keeps its `Reauth` for its whole life.
    busy: Option<Box<Exchange>>,
}

/// What a re-authentication (or the credentials' end) needs while it is under way.
#[derive(Debug)]
struct Exchange {
    /// A SCRAM re-authentication between its server-first and client-final messages.
    scram: Option<Box<ScramServer>>,
    waiting: Waiting,
    transmit: Outgoing,
    events: VecDeque<ReauthEvent>,
}

impl Exchange {
    fn new(encoder: Encoder) -> Self {
        Self {
            scram: None,
            waiting: Waiting::Nothing,
            transmit: Outgoing::new(encoder),
            events: VecDeque::new(),
        }
    }

    /// Nothing under way and nothing left for the driver.
    fn is_idle(&self) -> bool {
        self.scram.is_none()
            && matches!(self.waiting, Waiting::Nothing)
            && self.transmit.queue.is_empty()
            && self.events.is_empty()
    }
}

impl Reauth {
    /// The credentials of a login, `method` that of its CONNECT.
    pub(crate) fn new(
        identity: Identity,
        principal: Arc<Principal>,
        method: Option<MqttString>,
        client_id: &str,
        encoder: Encoder,
        now: Now,
    ) -> Self {
        Self {
            method,
            client_id: client_id.into(),
            expires: identity.expires_at.map(|at| now.instant_of(at)),
            identity,
            principal,
            encoder,
            busy: None,
        }
    }

    fn exchange(&mut self) -> &mut Exchange {
        let encoder = self.encoder;
        self.busy
            .get_or_insert_with(|| Box::new(Exchange::new(encoder)))
    }

    /// Whether nothing is held beyond the credentials (no exchange under way).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.busy.is_none()
    }

    /// Lets the exchange go once nothing is under way or waiting for the driver.
    fn settle(&mut self) {
        if self.busy.as_ref().is_some_and(|e| e.is_idle()) {
            self.busy = None;
        }
    }

    /// Who the client is authenticated as.
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Who is re-authenticating, for the authentication service.
    pub(crate) fn subject(&self) -> Subject<'_> {
        Subject {
            client_id: &self.client_id,
            username: self.identity.username.as_deref(),
            method: "reauth",
            reauth: true,
            connect: None,
            certificate: None,
        }
    }

    /// An AUTH packet from the client. `connack_sent`: whether the login's CONNACK went out
    /// (re-authentication may only start after it).
    pub(crate) fn handle_auth(&mut self, packet: Auth, connack_sent: bool) {
        let Some(method) = self.method.clone().filter(|_| connack_sent) else {
            let why = if self.method.is_none() {
                "[MQTT-4.12.0-7] AUTH without an Authentication Method in CONNECT"
            } else {
                "[MQTT-4.12.1-1] re-authentication before the CONNACK"
            };
            self.close(ReasonCode::ProtocolError, why);
            return;
        };
        if packet.properties.authentication_method.as_ref() != Some(&method) {
            self.close(
                ReasonCode::ProtocolError,
                "[MQTT-4.12.1-1] re-authentication must use the method of the CONNECT",
            );
            return;
        }
        let data = packet.properties.authentication_data.unwrap_or_default();
        let hash = ScramHash::from_method(method.as_str());
        match (packet.reason_code, hash) {
            (ReasonCode::ReAuthenticate, _)
                if self.busy.as_ref().is_some_and(|e| e.scram.is_some()) =>
            {
                self.out_of_sequence()
            }
            (ReasonCode::ReAuthenticate, Some(hash)) => {
                self.ask(
                    Waiting::ScramStart,
                    Request::ScramStart {
                        hash,
                        client_first: data,
                    },
                );
            }
            (ReasonCode::ReAuthenticate, None) => {
                let claimed = self.identity.username.as_deref().map(str::to_owned);
                self.ask(
                    Waiting::Jwt,
                    Request::CheckJwt {
                        token: data,
                        claimed,
                    },
                );
            }
            (ReasonCode::ContinueAuthentication, Some(hash)) => {
                match self.exchange().scram.take() {
                    None => self.out_of_sequence(),
                    Some(server) => match server.finish(&data) {
                        Ok((server_final, name)) if self.same_user(Some(&name)) => self.ask(
                            Waiting::ScramIdentity { server_final },
                            Request::ScramIdentity {
                                name,
                                method: hash.method(),
                            },
                        ),
                        Ok(_) => self.fail(Refusal::reauth("SCRAM: a different username")),
                        Err(err) => self.fail(AuthService::scram_refusal(&err)),
                    },
                }
            }
            _ => self.out_of_sequence(),
        }
    }

    /// The authentication service's answer to the last [`Request`].
    pub(crate) fn handle_answer(&mut self, answer: Answer, now: Now) {
        match (
            std::mem::replace(&mut self.exchange().waiting, Waiting::Nothing),
            answer,
        ) {
            (Waiting::ScramStart, Answer::ScramStarted(started)) => match started {
                Ok((server, first)) if self.same_user(Some(server.username())) => {
                    self.exchange().scram = Some(server);
                    self.push_auth(ReasonCode::ContinueAuthentication, Some(first));
                }
                Ok(_) => self.fail(Refusal::reauth("SCRAM: a different username")),
                Err(refusal) => self.fail(refusal),
            },
            (Waiting::Jwt, Answer::Identity(checked)) => match checked {
                Ok(identity) if self.same_user(identity.username.as_deref()) => {
                    self.succeed(identity, None, now);
                }
                Ok(_) => self.fail(Refusal::reauth("JWT: a different username")),
                Err(refusal) => self.fail(refusal),
            },
            (Waiting::ScramIdentity { server_final }, Answer::Identity(checked)) => match checked {
                Ok(identity) => self.succeed(identity, Some(server_final), now),
                Err(refusal) => self.fail(refusal),
            },
            // An answer to a question not asked.
            (_, _) => self.out_of_sequence(),
        }
    }

    fn same_user(&self, name: Option<&str>) -> bool {
        name == self.identity.username.as_deref()
    }

    fn ask(&mut self, waiting: Waiting, request: Request) {
        let exchange = self.exchange();
        exchange.waiting = waiting;
        exchange.events.push_back(ReauthEvent::Request(request));
    }

    /// New credentials for the same user: recorded, their groups and claim given to the
    /// engine if they changed, their end tracked, the client told.
    fn succeed(&mut self, identity: Identity, server_final: Option<Vec<u8>>, now: Now) {
        self.exchange()
            .events
            .push_back(ReauthEvent::Record(Ok(identity.clone())));
        self.expires = identity.expires_at.map(|at| now.instant_of(at));
        if identity.groups != self.identity.groups || identity.acl != self.identity.acl {
            let mut principal = (*self.principal).clone();
            principal.groups = identity.groups.clone();
            principal.claim = identity.acl.clone();
            self.principal = Arc::new(principal);
            let principal = self.principal.clone();
            self.exchange()
                .events
                .push_back(ReauthEvent::Principal(principal));
        }
        self.identity = identity;
        self.push_auth(ReasonCode::Success, server_final);
    }

    /// A failed re-authentication: recorded, and the connection closes with 0x87.
    fn fail(&mut self, refusal: Refusal) {
        let reason = refusal.reason.clone();
        self.exchange()
            .events
            .push_back(ReauthEvent::Record(Err(refusal)));
        self.push_disconnect(ReasonCode::NotAuthorized, "re-authentication failed");
        self.exchange().events.push_back(ReauthEvent::Closed {
            code: ReasonCode::NotAuthorized,
            reason,
        });
    }

    fn out_of_sequence(&mut self) {
        self.close(
            ReasonCode::ProtocolError,
            "AUTH out of sequence for this authentication method",
        );
    }

    /// Closes the connection with `code`, telling a 5.0 client `why`.
    fn close(&mut self, code: ReasonCode, why: &str) {
        if let Some(exchange) = &mut self.busy {
            exchange.scram = None;
        }
        self.push_disconnect(code, why);
        self.exchange().events.push_back(ReauthEvent::Closed {
            code,
            reason: why.to_owned(),
        });
    }

    fn push_disconnect(&mut self, code: ReasonCode, why: &str) {
        if self.encoder.version().is_v5() {
            let mut disconnect = Disconnect::new(code);
            disconnect.properties.reason_string = MqttString::new(why).ok();
            self.exchange()
                .transmit
                .push(Packet::Disconnect(disconnect));
        }
    }

    fn push_auth(&mut self, code: ReasonCode, data: Option<Vec<u8>>) {
        let packet = auth_packet(code, self.method.clone(), data.map(Bytes::from));
        self.exchange().transmit.push(packet);
    }

    /// When the credentials end (once the CONNACK went out, the driver counts from it: the
    /// credentials' end never overtakes it).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.expires
    }

    /// The time has come (or passed) for [`Reauth::poll_timeout`]: the credentials expired
    /// without a re-authentication.
    pub(crate) fn handle_timeout(&mut self, now: Now) {
        if self.expires.is_some_and(|at| now.at >= at) {
            self.expires = None;
            self.push_disconnect(ReasonCode::NotAuthorized, "credentials expired");
            self.exchange().events.push_back(ReauthEvent::Expired);
        }
    }

    /// Encodes the next packet for the client into `out`, fitting its Maximum Packet Size;
    /// false when there is none.
    pub(crate) fn poll_transmit(&mut self, out: &mut BytesMut) -> bool {
        let Some(exchange) = &mut self.busy else {
            return false;
        };
        let sent = exchange.transmit.poll(out);
        self.settle();
        sent
    }

    /// What the driver is to do next.
    pub(crate) fn poll_event(&mut self) -> Option<ReauthEvent> {
        let event = self.busy.as_mut()?.events.pop_front();
        if event.is_none() {
            self.settle();
        }
        event
    }
}
