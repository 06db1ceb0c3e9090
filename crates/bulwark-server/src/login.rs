//! Serves the requests of the handshake machines (`crate::handshake`) with the authentication
//! service, the ban list and the live-connection registry: the I/O half of a login. It decides
//! nothing about packets; what it answers is what the service says.

use std::net::SocketAddr;

use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_core::ConnectionId;
use bulwark_limits::ban::{Ban, BanList};
use bulwark_proto::ReasonCode;

use crate::auth::{Attempt, AuthService, Identity, ListenerAuth, NotRegistered, Refusal, Ticket};
use crate::driver::DriverContext;
use crate::handshake::{Answer, Request, Subject};

/// One connection's side of the authentication service, for one login or re-authentication.
pub(crate) struct Login<'a> {
    ctx: &'a DriverContext,
    listener: &'a ListenerAuth,
    peer: SocketAddr,
    conn: ConnectionId,
    /// The attempt the gate admitted, until its outcome is counted.
    ticket: Option<Ticket<'a>>,
}

impl<'a> Login<'a> {
    pub(crate) fn new(
        ctx: &'a DriverContext,
        listener: &'a ListenerAuth,
        peer: SocketAddr,
        conn: ConnectionId,
    ) -> Self {
        Self {
            ctx,
            listener,
            peer,
            conn,
            ticket: None,
        }
    }

    fn attempt<'s>(&self, subject: &Subject<'s>) -> Attempt<'s>
    where
        'a: 's,
    {
        Attempt {
            listener: self.listener,
            peer: self.peer,
            client_id: subject.client_id,
            username: subject.username,
            method: subject.method,
            reauth: subject.reauth,
        }
    }

    /// Answers `request` of the machine whose attempt `subject` describes.
    pub(crate) async fn serve(&mut self, subject: Subject<'_>, request: Request) -> Answer {
        let auth = &self.ctx.auth;
        match request {
            Request::Gate { password } => {
                let attempt = self.attempt(&subject);
                let admitted = auth.gate(&attempt, password.as_deref()).await;
                Answer::Admitted(admitted.map(|ticket| self.ticket = Some(ticket)))
            }
            Request::CheckConnect => {
                let (Some(connect), Some(ticket)) = (subject.connect, self.ticket.as_ref()) else {
                    return Answer::Identity(Err(Refusal::failure(
                        ReasonCode::NotAuthorized,
                        "no CONNECT or no admission to check",
                    )));
                };
                let checked = auth
                    .check_connect(self.listener, connect, subject.certificate, ticket)
                    .await;
                Answer::Identity(checked)
            }
            Request::CheckJwt { token, claimed } => {
                let checked = auth
                    .check_jwt_data(&token, claimed.as_deref(), subject.client_id)
                    .await;
                Answer::Identity(checked)
            }
            Request::ScramStart { hash, client_first } => Answer::ScramStarted(
                auth.scram_start(hash, &client_first)
                    .map(|(server, first)| (Box::new(server), first))
                    .map_err(|err| AuthService::scram_refusal(&err)),
            ),
            Request::BeforeVerdict => Answer::Admitted(match &self.ticket {
                Some(ticket) => auth.before_verdict(ticket).await,
                None => Ok(()),
            }),
            Request::ScramIdentity { name, method } => {
                Answer::Identity(Ok(auth.scram_identity(&name, method)))
            }
            Request::Finish(result) => Answer::Identity(self.finish(subject, result).await),
        }
    }

    /// Checks a successful login against the bans and registers it (refused if the user was
    /// removed or disabled meanwhile, or is at its connection quota), then counts and records
    /// the outcome. Returns the verdict.
    async fn finish(
        &mut self,
        subject: Subject<'_>,
        result: Result<Identity, Refusal>,
    ) -> Result<Identity, Refusal> {
        let bans = &self.ctx.bans;
        let ip = self.peer.ip();
        let client_id = subject.client_id;
        let existing = result
            .as_ref()
            .ok()
            .and_then(|identity| bans.client_ban(ip, identity.username.as_deref(), client_id));
        let fresh = match (&existing, &result) {
            (None, Ok(identity)) => bans.connected(ip, identity.username.as_deref(), client_id),
            _ => None,
        };
        if let Some(ban) = &fresh {
            // Just made (flapping): the client id's other connections go too.
            ban_now(self.ctx, &self.listener.name, self.peer, ban).await;
        }
        let banned = existing.or(fresh);
        let attempt = self.attempt(&subject);
        let result = match result {
            Ok(_) if banned.is_some() => Err(Refusal::banned(
                banned.as_ref().map_or("banned", |b| b.reason.as_str()),
            )),
            Ok(identity) => match self.ctx.auth.register(self.conn, &attempt, &identity) {
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
        self.ctx
            .auth
            .conclude(self.ticket.take(), &attempt, &result)
            .await;
        result
    }

    /// Counts and records an outcome the machine reports (an exchange the client left, a
    /// re-authentication).
    pub(crate) async fn record(
        &mut self,
        subject: Subject<'_>,
        result: &Result<Identity, Refusal>,
    ) {
        let ticket = self.ticket.take();
        let attempt = self.attempt(&subject);
        self.ctx.auth.conclude(ticket, &attempt, result).await;
    }
}

/// Records a ban the broker just made and closes the live connections it covers.
pub(crate) async fn ban_now(ctx: &DriverContext, listener: &str, peer: SocketAddr, ban: &Ban) {
    let auth = &ctx.auth;
    let mut event = SecurityEvent::new(EventKind::Ban, std::time::SystemTime::now());
    event.listener = Some(listener.to_owned());
    event.remote = Some(peer.to_string());
    event.reason = Some(format!("{}: {}", ban.target, ban.reason));
    auth.audit.record(event);
    let now = crate::bans::unix_now();
    let list = {
        let mut list = BanList::new();
        let _ = list.add(ban.clone());
        list
    };
    let conns = auth.live_matching(|ip, user, id| list.client_ban(ip, user, id, now).is_some());
    crate::bans::enforce(auth, &ctx.router, conns, "banned").await;
}
