//! The login gate: the [`LoginGuard`] (failed-login counts, serialized backoff, address bans),
//! the password checks under way that logins with the same credentials share (single
//! flight), and the rate of the events recorded for refusals that come in floods.
//!
//! One lock holds all three; every use of it is a short step (no waiting, no I/O under it).
//! The waits the guard asks for happen outside it, and the events are returned to the caller,
//! which records them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_auth::guard::{Admission, GuardSettings, LoginGuard};
use tokio::sync::watch;

use super::{Attempt, Counts, Identity, Refusal};
use crate::sync::lock;

/// Refusals of a banned or throttled address are recorded at most once per this period.
const QUIET_PERIOD: Duration = Duration::from_secs(10);
/// Addresses remembered for that, at most.
const QUIET_TABLE: usize = 10_000;

/// The login gate, behind one lock.
#[derive(Debug)]
pub(super) struct LoginGate {
    state: Mutex<GateState>,
}

/// What the lock of [`LoginGate`] holds.
#[derive(Debug)]
struct GateState {
    guard: LoginGuard,
    /// Password checks under way, by the fingerprint of their username and password: a login
    /// with the same credentials waits for that check instead of running its own.
    flights: HashMap<[u8; 32], Arc<Flight>>,
    /// Per address: when a refusal of a banned or throttled attempt was last recorded, and
    /// how many were not recorded since (they come in floods).
    quiet: HashMap<IpAddr, (Instant, u32)>,
    /// Logins decided since start, by result, method and the reason clients are told (labels
    /// from fixed sets).
    logins: std::collections::BTreeMap<LoginKey, u64>,
}

/// `(result, method, reason)` of a decided login: `success` or `failure`, the method as
/// [`crate::audit::method_label`] names it, and for a failure what the client is told.
pub(crate) type LoginKey = (&'static str, &'static str, &'static str);

/// An attempt past the gate: its outcome must be counted, or the attempt released (on drop)
/// so that it stops counting as in flight.
pub(crate) struct Ticket<'a> {
    gate: &'a LoginGate,
    address: IpAddr,
    username: Option<String>,
    /// Whether the guard counts this attempt in flight (false for attempts that skipped the
    /// backoff: no credentials on an anonymous listener, a login the cache knows).
    guarded: bool,
    /// Whether the guard is to be asked again before the credentials are evaluated: the
    /// attempt was admitted while none of its keys was in backoff.
    recheck: AtomicBool,
    open: bool,
}

impl std::fmt::Debug for Ticket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("address", &self.address)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.open && self.guarded {
            lock(&self.gate.state)
                .guard
                .release(self.address, self.username.as_deref());
        }
    }
}

impl Ticket<'_> {
    /// The address the attempt came from.
    pub(super) fn address(&self) -> IpAddr {
        self.address
    }
}

/// Whether an attempt guesses nothing, so that it skips the backoff (an address ban still
/// refuses it): a CONNECT without any credentials on a listener that lets anonymous clients in
/// (there is nothing to guess, and it must not wait for someone else's bad passwords from the
/// same address), or a login whose username and password the credential cache knows (`known`:
/// a hit needs the right password, so this is no guess either).
pub(super) fn guesses_nothing(attempt: &Attempt<'_>, has_password: bool, known: bool) -> bool {
    let anonymous = attempt.method == "connect"
        && attempt.username.is_none()
        && !has_password
        && attempt.listener.allow_anonymous;
    anonymous || known
}

impl LoginGate {
    /// A gate with these guard settings (refused if they make no sense).
    pub(super) fn new(settings: &GuardSettings) -> Result<Self, String> {
        settings
            .validate()
            .map_err(|err| format!("[auth] backoff: {err}"))?;
        Ok(Self {
            state: Mutex::new(GateState {
                guard: LoginGuard::new(settings.clone()),
                flights: HashMap::new(),
                quiet: HashMap::new(),
                logins: std::collections::BTreeMap::new(),
            }),
        })
    }

    /// Admission of an attempt: waits out a backoff delay; refuses banned addresses and
    /// attempts the backoff queue cannot take. An attempt that guesses nothing
    /// ([`guesses_nothing`]) only has its address's ban checked.
    pub(super) async fn admit(
        &self,
        attempt: &Attempt<'_>,
        guesses_nothing: bool,
    ) -> Result<Ticket<'_>, Refusal> {
        let now = Instant::now();
        let address = attempt.peer.ip();
        let ticket = |guarded: bool, recheck: bool| Ticket {
            gate: self,
            address,
            username: attempt.username.map(str::to_owned),
            guarded,
            recheck: AtomicBool::new(recheck),
            open: true,
        };
        if guesses_nothing {
            return match lock(&self.state).guard.banned_for(address, now) {
                Some(remaining) => Err(Refusal::address_banned(remaining)),
                None => Ok(ticket(false, false)),
            };
        }
        let (admission, recheck) = {
            let mut state = lock(&self.state);
            let recheck = !state.guard.in_backoff(address, attempt.username, now);
            (state.guard.admit(address, attempt.username, now), recheck)
        };
        match admission {
            Admission::Proceed { delay } => {
                let ticket = ticket(true, recheck);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                    self.not_banned(address)?;
                }
                Ok(ticket)
            }
            Admission::Throttled => Err(Refusal::throttled()),
            Admission::Banned { remaining } => Err(Refusal::address_banned(remaining)),
        }
    }

    /// Refuses an attempt whose address was banned while it waited its turn.
    pub(super) fn not_banned(&self, address: IpAddr) -> Result<(), Refusal> {
        match lock(&self.state).guard.banned_for(address, Instant::now()) {
            Some(remaining) => Err(Refusal::address_banned(remaining)),
            None => Ok(()),
        }
    }

    /// The guard's re-check right before an attempt's credentials are evaluated (see
    /// `AuthService::before_verdict`): the wait, or the refusal (once per ticket; zero after
    /// that, and for tickets admitted in backoff or unguarded).
    pub(super) fn recheck(&self, ticket: &Ticket<'_>) -> Result<Duration, Refusal> {
        if !ticket.guarded || !ticket.recheck.swap(false, Ordering::AcqRel) {
            return Ok(Duration::ZERO);
        }
        let admission = lock(&self.state).guard.recheck(
            ticket.address,
            ticket.username.as_deref(),
            Instant::now(),
        );
        match admission {
            Admission::Proceed { delay } => Ok(delay),
            Admission::Throttled => Err(Refusal::throttled()),
            Admission::Banned { remaining } => Err(Refusal::address_banned(remaining)),
        }
    }

    /// [`recheck`](Self::recheck), then its wait (after which the address must still not be
    /// banned).
    pub(super) async fn before_verdict(&self, ticket: &Ticket<'_>) -> Result<(), Refusal> {
        let delay = self.recheck(ticket)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
            self.not_banned(ticket.address)?;
        }
        Ok(())
    }

    /// Counts the outcome of a login (ending the admitted attempt, if there is a ticket) and
    /// returns the security events to record, in order. A success clears the username's
    /// failures however it was verified (the credential cache included).
    pub(super) fn conclude(
        &self,
        ticket: Option<Ticket<'_>>,
        attempt: &Attempt<'_>,
        result: &Result<Identity, Refusal>,
    ) -> Vec<SecurityEvent> {
        let now = Instant::now();
        let address = attempt.peer.ip();
        let mut ticket = ticket;
        // The attempt the guard counts in flight, if any, under the username it was admitted.
        let in_flight = ticket
            .as_ref()
            .filter(|t| t.guarded)
            .map(|t| t.username.clone());
        if let Some(t) = ticket.as_mut() {
            t.open = false;
        }
        drop(ticket);
        let username = attempt.username;
        let mut state = lock(&self.state);
        if let Some(admitted) = &in_flight {
            state.guard.release(address, admitted.as_deref());
        }
        let key = match result {
            Ok(identity) => (
                "success",
                crate::audit::method_label(Some(identity.method)),
                "",
            ),
            Err(refusal) => (
                "failure",
                crate::audit::method_label(Some(attempt.method)),
                refusal.public_reason(),
            ),
        };
        *state.logins.entry(key).or_default() += 1;
        match result {
            Ok(identity) => {
                state.guard.record_success(address, username, now);
                drop(state);
                let kind = if attempt.reauth {
                    EventKind::ReauthSuccess
                } else {
                    EventKind::AuthSuccess
                };
                let mut event = attempt.event(kind, None);
                event.username = identity.username.as_deref().map(str::to_owned);
                event.method = Some(identity.method.to_owned());
                vec![event]
            }
            Err(refusal) => {
                let outcome = match refusal.counts {
                    Counts::No => None,
                    Counts::AddressOnly => Some(state.guard.record_failure(address, None, now)),
                    Counts::Both => Some(state.guard.record_failure(address, username, now)),
                };
                let kind = match refusal.kind {
                    EventKind::AuthFailure if attempt.reauth => EventKind::ReauthFailure,
                    kind => kind,
                };
                let recorded = state.worth_recording(kind, address, &refusal.reason, now);
                drop(state);
                let mut events = Vec::new();
                if let Some(reason) = recorded {
                    events.push(attempt.event(kind, Some(reason)));
                }
                if let Some(outcome) = outcome.filter(|o| o.banned) {
                    let reason = format!(
                        "{} failed logins from this address",
                        outcome.address_failures
                    );
                    events.push(attempt.event(EventKind::Ban, Some(reason)));
                }
                events
            }
        }
    }

    /// Joins the check of these credentials under way, or leads a new one.
    pub(super) fn flight(&self, key: [u8; 32]) -> Role<'_> {
        let mut state = lock(&self.state);
        match state.flights.get(&key) {
            Some(flight) => Role::Wait(flight.0.subscribe()),
            None => {
                let flight = Arc::new(Flight::default());
                state.flights.insert(key, flight.clone());
                Role::Lead(Leader {
                    gate: self,
                    key,
                    flight,
                })
            }
        }
    }

    /// Logins decided since start.
    pub(super) fn login_counts(&self) -> Vec<(LoginKey, u64)> {
        lock(&self.state)
            .logins
            .iter()
            .map(|(k, n)| (*k, *n))
            .collect()
    }

    /// Addresses and usernames in backoff now.
    pub(super) fn backoff_counts(&self) -> (usize, usize) {
        lock(&self.state).guard.backoff_counts(Instant::now())
    }

    /// Prunes the guard's expired entries.
    pub(super) fn prune(&self) {
        lock(&self.state).guard.prune(Instant::now());
    }
}

impl GateState {
    /// Refusals of banned and throttled attempts arrive in floods: one event per address every
    /// [`QUIET_PERIOD`], saying how many were left out. Every other event is recorded.
    fn worth_recording(
        &mut self,
        kind: EventKind,
        address: IpAddr,
        reason: &str,
        now: Instant,
    ) -> Option<String> {
        if !matches!(kind, EventKind::BannedRefused | EventKind::Throttled) {
            return Some(reason.to_owned());
        }
        let quiet = &mut self.quiet;
        if quiet.len() >= QUIET_TABLE {
            quiet.retain(|_, (at, _)| now.saturating_duration_since(*at) < QUIET_PERIOD);
            if quiet.len() >= QUIET_TABLE {
                quiet.clear();
            }
        }
        let key = bulwark_auth::guard::address_key(address);
        match quiet.get_mut(&key) {
            Some((at, left_out)) if now.saturating_duration_since(*at) < QUIET_PERIOD => {
                *left_out = left_out.saturating_add(1);
                None
            }
            Some((at, left_out)) => {
                let reason = match *left_out {
                    0 => reason.to_owned(),
                    n => format!("{reason} ({n} more from this address not recorded)"),
                };
                *at = now;
                *left_out = 0;
                Some(reason)
            }
            None => {
                quiet.insert(key, (now, 0));
                Some(reason.to_owned())
            }
        }
    }
}

/// How a shared password check ended, as the logins that waited for it see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlightOutcome {
    /// The password is right (as of this store generation).
    Allowed { generation: u64 },
    /// The password is wrong, or the user unknown or disabled.
    Refused,
    /// No verdict (server busy, the check's client left, the guard refused it): each waiting
    /// login checks for itself.
    Abandoned,
}

/// A password check under way, that logins with the same credentials wait for.
#[derive(Debug, Default)]
struct Flight(watch::Sender<Option<FlightOutcome>>);

/// A login's part in a password check of its credentials.
#[derive(Debug)]
pub(super) enum Role<'a> {
    /// It runs the check, and tells the others how it ended.
    Lead(Leader<'a>),
    /// It waits for the check under way.
    Wait(watch::Receiver<Option<FlightOutcome>>),
}

/// The login that runs a shared check. Dropped without [`Leader::finish`] (its client went
/// away mid-check), the check counts as abandoned.
#[derive(Debug)]
pub(super) struct Leader<'a> {
    gate: &'a LoginGate,
    key: [u8; 32],
    flight: Arc<Flight>,
}

impl Leader<'_> {
    /// Tells the waiting logins how the check ended.
    pub(super) fn finish(self, outcome: FlightOutcome) {
        self.flight.0.send_replace(Some(outcome));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.gate.state);
        if state
            .flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            state.flights.remove(&self.key);
        }
        drop(state);
        self.flight.0.send_if_modified(|outcome| {
            if outcome.is_none() {
                *outcome = Some(FlightOutcome::Abandoned);
                true
            } else {
                false
            }
        });
    }
}

/// The outcome a waiting login reads from a shared check (`None`: the check is gone without
/// one, which counts as abandoned).
pub(super) async fn outcome_of(
    mut waiting: watch::Receiver<Option<FlightOutcome>>,
) -> Option<FlightOutcome> {
    waiting
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|outcome| *outcome)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bulwark_proto::ReasonCode;

    use super::*;
    use crate::auth::ListenerAuth;

    fn listener(allow_anonymous: bool) -> ListenerAuth {
        ListenerAuth {
            name: Arc::from("test"),
            chain: Vec::new(),
            allow_anonymous,
        }
    }

    fn attempt<'a>(listener: &'a ListenerAuth, peer: &str, user: Option<&'a str>) -> Attempt<'a> {
        Attempt {
            listener,
            peer: peer.parse::<SocketAddr>().unwrap(),
            client_id: "c1",
            username: user,
            method: "connect",
            reauth: false,
        }
    }

    /// Backoff from the second failure, a ban at the fourth; no address exempt.
    fn gate() -> LoginGate {
        LoginGate::new(&GuardSettings {
            backoff_after: 2,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            ban_after: 4,
            exempt: Vec::new(),
            ..GuardSettings::default()
        })
        .unwrap()
    }

    fn wrong() -> Result<Identity, Refusal> {
        Err(Refusal::failure(
            ReasonCode::BadUserNameOrPassword,
            "wrong password",
        ))
    }

    fn alice() -> Result<Identity, Refusal> {
        Ok(Identity {
            username: Some(Arc::from("alice")),
            groups: Vec::new(),
            method: "password",
            expires_at: None,
            acl: None,
            in_store: true,
        })
    }

    #[test]
    fn settings_that_make_no_sense_are_refused() {
        let err = LoginGate::new(&GuardSettings {
            backoff_after: 0,
            ..GuardSettings::default()
        })
        .unwrap_err();
        assert!(err.starts_with("[auth] backoff:"), "{err}");
    }

    #[test]
    fn only_anonymous_connects_and_known_logins_guess_nothing() {
        let open = listener(true);
        let closed = listener(false);
        let bare = attempt(&open, "192.0.2.1:1000", None);
        assert!(guesses_nothing(&bare, false, false));
        assert!(
            !guesses_nothing(&bare, true, false),
            "a password is a guess"
        );
        assert!(!guesses_nothing(
            &attempt(&closed, "192.0.2.1:1000", None),
            false,
            false
        ));
        let named = attempt(&closed, "192.0.2.1:1000", Some("alice"));
        assert!(!guesses_nothing(&named, true, false));
        assert!(guesses_nothing(&named, true, true), "the cache knows it");
        let scram = Attempt {
            method: "SCRAM-SHA-256",
            ..bare
        };
        assert!(!guesses_nothing(&scram, false, false));
    }

    #[tokio::test]
    async fn failures_slow_then_ban_an_address_and_the_ban_is_one_event() {
        let gate = gate();
        let open = listener(false);
        let guess = attempt(&open, "192.0.2.7:1000", Some("alice"));
        let mut kinds = Vec::new();
        for _ in 0..4 {
            let ticket = gate.admit(&guess, false).await.unwrap();
            for event in gate.conclude(Some(ticket), &guess, &wrong()) {
                kinds.push(event.kind);
            }
        }
        assert_eq!(
            kinds,
            [
                EventKind::AuthFailure,
                EventKind::AuthFailure,
                EventKind::AuthFailure,
                EventKind::AuthFailure,
                EventKind::Ban
            ]
        );
        let refused = gate.admit(&guess, false).await.unwrap_err();
        assert_eq!(refused.code, ReasonCode::Banned);
        assert_eq!(refused.counts, Counts::No);
        // Even an attempt that guesses nothing is refused while the address is banned.
        let bare = attempt(&open, "192.0.2.7:1001", None);
        assert!(gate.admit(&bare, true).await.is_err());
        assert!(gate.not_banned("192.0.2.7".parse().unwrap()).is_err());
        // Another address is not.
        let other = attempt(&open, "192.0.2.8:1000", Some("bob"));
        let ticket = gate.admit(&other, false).await.unwrap();
        let events = gate.conclude(Some(ticket), &other, &alice());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::AuthSuccess);
        assert_eq!(events[0].username.as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn refusals_of_a_banned_address_are_recorded_once_per_quiet_period() {
        let gate = gate();
        let open = listener(false);
        let guess = attempt(&open, "192.0.2.9:1000", Some("alice"));
        for _ in 0..4 {
            let ticket = gate.admit(&guess, false).await.unwrap();
            gate.conclude(Some(ticket), &guess, &wrong());
        }
        let mut recorded = 0;
        for _ in 0..10 {
            let refusal = gate.admit(&guess, false).await.unwrap_err();
            recorded += gate.conclude(None, &guess, &Err(refusal)).len();
        }
        assert_eq!(recorded, 1);
    }

    #[tokio::test]
    async fn a_recheck_applies_failures_counted_since_admission_once() {
        let gate = gate();
        let open = listener(false);
        let guess = attempt(&open, "192.0.2.10:1000", Some("alice"));
        // Three attempts admitted at once, none of their keys in backoff yet.
        let first = gate.admit(&guess, false).await.unwrap();
        let second = gate.admit(&guess, false).await.unwrap();
        let third = gate.admit(&guess, false).await.unwrap();
        assert_eq!(gate.recheck(&first).unwrap(), Duration::ZERO);
        gate.conclude(Some(first), &guess, &wrong());
        gate.conclude(None, &guess, &wrong());
        // Past the threshold now: the next to be evaluated waits, once.
        assert!(gate.recheck(&second).unwrap() > Duration::ZERO);
        assert_eq!(gate.recheck(&second).unwrap(), Duration::ZERO);
        gate.before_verdict(&third).await.unwrap();
        // An attempt that guessed nothing is never rechecked.
        let bare = attempt(&open, "192.0.2.11:1000", None);
        let unguarded = gate.admit(&bare, true).await.unwrap();
        assert_eq!(gate.recheck(&unguarded).unwrap(), Duration::ZERO);
    }

    #[test]
    fn a_dropped_ticket_stops_counting_in_flight() {
        let gate = gate();
        let address: IpAddr = "192.0.2.12".parse().unwrap();
        let ticket = Ticket {
            gate: &gate,
            address,
            username: Some("alice".into()),
            guarded: true,
            recheck: AtomicBool::new(false),
            open: true,
        };
        assert_eq!(ticket.address(), address);
        drop(ticket);
        // Nothing in flight is left: concluding without a ticket releases nothing more.
        let open = listener(false);
        let guess = attempt(&open, "192.0.2.12:1000", Some("alice"));
        assert_eq!(gate.conclude(None, &guess, &alice()).len(), 1);
    }

    #[tokio::test]
    async fn logins_with_the_same_credentials_share_one_check() {
        let gate = gate();
        let Role::Lead(leader) = gate.flight([1; 32]) else {
            panic!("the first one leads");
        };
        let Role::Wait(waiting) = gate.flight([1; 32]) else {
            panic!("the second one waits");
        };
        let Role::Lead(other) = gate.flight([2; 32]) else {
            panic!("other credentials lead their own check");
        };
        drop(other);
        let waiter = tokio::spawn(outcome_of(waiting));
        leader.finish(FlightOutcome::Allowed { generation: 3 });
        assert_eq!(
            waiter.await.unwrap(),
            Some(FlightOutcome::Allowed { generation: 3 })
        );
        // The check is over: the next login leads a new one.
        assert!(matches!(gate.flight([1; 32]), Role::Lead(_)));
    }

    #[tokio::test]
    async fn a_leader_that_goes_away_abandons_its_check() {
        let gate = gate();
        let Role::Lead(leader) = gate.flight([5; 32]) else {
            panic!("the first one leads");
        };
        let Role::Wait(waiting) = gate.flight([5; 32]) else {
            panic!("the second one waits");
        };
        drop(leader);
        assert_eq!(outcome_of(waiting).await, Some(FlightOutcome::Abandoned));
        let Role::Lead(next) = gate.flight([5; 32]) else {
            panic!("a new check");
        };
        next.finish(FlightOutcome::Refused);
    }
}
