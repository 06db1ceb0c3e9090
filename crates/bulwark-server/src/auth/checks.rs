//! The checks the chain runs that need several parts: a username and password (credential
//! cache, shared checks, the guard's re-check, the hashing pool, hash upgrades) and a JWT (the
//! keys, then the store for disabled users and groups).

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bulwark_acl::AclRules;
use bulwark_acl::event::EventKind;
use bulwark_auth::password::{PasswordStore, Verdict};
use bulwark_proto::ReasonCode;

use super::credentials::{Snapshot, groups_of, store_identity};
use super::gate::{self, FlightOutcome, Role, Ticket};
use super::{AuthService, Counts, Identity, Refusal};

impl AuthService {
    /// Checks a username and password: from the credential cache if it knows them, else by
    /// joining a check of the same credentials already under way (single flight: a fleet that
    /// reconnects at once costs one hash check per user), else by a hash check of its own.
    pub(super) async fn password(
        self: &Arc<Self>,
        ticket: &Ticket<'_>,
        name: &str,
        password: &[u8],
        method: &'static str,
    ) -> Result<Identity, Refusal> {
        loop {
            // The store generation this check starts from: a reload meanwhile must not leave
            // the password it replaced in the credential cache.
            let Snapshot {
                generation,
                store,
                cached,
                fingerprint,
            } = self.credentials.snapshot(name, password, Instant::now());
            if cached && store.get(name).is_some_and(|r| !r.disabled) {
                return Ok(store_identity(&store, name, method));
            }
            let leader = match fingerprint.map(|key| self.gate.flight(key)) {
                Some(Role::Wait(waiting)) => match gate::outcome_of(waiting).await {
                    Some(FlightOutcome::Allowed { generation })
                        if generation == self.credentials.generation() =>
                    {
                        let store = self.credentials.store();
                        if store.get(name).is_some_and(|r| !r.disabled) {
                            return Ok(store_identity(&store, name, method));
                        }
                        continue;
                    }
                    Some(FlightOutcome::Refused) => {
                        // The same guess as one that just failed: it tells nothing new, so
                        // it is not counted again.
                        return Err(Refusal {
                            code: ReasonCode::BadUserNameOrPassword,
                            reason: "unknown user or wrong password (the same credentials \
                                     failed in a concurrent login)"
                                .into(),
                            counts: Counts::No,
                            kind: EventKind::AuthFailure,
                        });
                    }
                    // Abandoned, or the store changed meanwhile: check again.
                    _ => continue,
                },
                Some(Role::Lead(leader)) => Some(leader),
                None => None,
            };
            let result = self
                .verify_password(ticket, name, password, method, generation, store)
                .await;
            if let Some(leader) = leader {
                leader.finish(match &result {
                    Ok(_) => FlightOutcome::Allowed { generation },
                    Err(refusal) if refusal.counts == Counts::Both => FlightOutcome::Refused,
                    Err(_) => FlightOutcome::Abandoned,
                });
            }
            return result;
        }
    }

    /// One hash check of a username and password, after the guard's re-check.
    async fn verify_password(
        self: &Arc<Self>,
        ticket: &Ticket<'_>,
        name: &str,
        password: &[u8],
        method: &'static str,
        generation: u64,
        store: Arc<PasswordStore>,
    ) -> Result<Identity, Refusal> {
        // The guard is asked again when the check gets its turn, not when it joins the queue:
        // the failures of the checks before it are known by then.
        let Some(mut turn) = self.pool.turn().await else {
            return Err(Refusal::busy());
        };
        let delay = self.gate.recheck(ticket)?;
        if !delay.is_zero() {
            // Waiting is not done holding a thread's permit.
            drop(turn);
            tokio::time::sleep(delay).await;
            self.gate.not_banned(ticket.address())?;
            turn = self.pool.turn().await.ok_or_else(Refusal::busy)?;
        }
        let old_hash = store.get(name).map(|r| r.password.clone());
        let (owned_name, owned_password) = (name.to_owned(), password.to_vec());
        let checked = store.clone();
        let Some(verdict) = turn
            .run(move || checked.verify(&owned_name, &owned_password))
            .await
        else {
            return Err(Refusal::busy());
        };
        match verdict {
            Verdict::Allow { upgrade } => {
                self.credentials
                    .remember(generation, name, password, Instant::now());
                if let (true, Some(old)) = (upgrade, old_hash)
                    && let Ok(text) = std::str::from_utf8(password)
                {
                    let (this, name, text) = (Arc::clone(self), name.to_owned(), text.to_owned());
                    tokio::spawn(async move {
                        if let Some(path) = this.credentials.path() {
                            this.upgrades
                                .upgrade(path, &this.pool, &name, &text, &old)
                                .await;
                        }
                    });
                }
                Ok(store_identity(&store, name, method))
            }
            Verdict::Deny => Err(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "unknown user or wrong password",
            )),
            Verdict::Disabled => Err(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "user is disabled",
            )),
        }
    }

    /// Checks a JWT (from the password field or 5.0 Authentication Data): its signature and
    /// claims, the CONNECT's username against the token's, the store's disabled flag and
    /// groups, and the ACL claim.
    pub(super) async fn jwt(
        &self,
        token: &[u8],
        username: Option<&str>,
        client_id: &str,
    ) -> Result<Identity, Refusal> {
        let Some(jwt) = &self.jwt else {
            return Err(Refusal {
                code: ReasonCode::BadAuthenticationMethod,
                reason: "JWT authentication is not configured".into(),
                counts: Counts::No,
                kind: EventKind::AuthFailure,
            });
        };
        let Ok(token) = std::str::from_utf8(token) else {
            return Err(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "JWT: not UTF-8",
            ));
        };
        let claims = jwt.verify(token, client_id).await.map_err(|err| {
            Refusal::failure(ReasonCode::BadUserNameOrPassword, format!("JWT: {err}"))
        })?;
        if username.is_some_and(|u| !u.is_empty() && u != claims.username) {
            return Err(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "JWT: the CONNECT username differs from the token's",
            ));
        }
        let store = self.credentials.store();
        if store.get(&claims.username).is_some_and(|r| r.disabled) {
            return Err(Refusal::failure(
                ReasonCode::BadUserNameOrPassword,
                "JWT: user is disabled in the password store",
            ));
        }
        // The token is valid until exp plus the skew it was accepted with; a time past what
        // the clock can hold means no end (and never a panic).
        let skew = jwt.settings().clock_skew.as_secs();
        let expires_at = claims
            .expires_at
            .and_then(|exp| UNIX_EPOCH.checked_add(Duration::from_secs(exp.saturating_add(skew))));
        let acl = match claims.acl.as_ref().map(AclRules::from_claim).transpose() {
            Ok(rules) => rules.map(Arc::new),
            Err(err) => {
                return Err(Refusal::failure(
                    ReasonCode::NotAuthorized,
                    format!("JWT: the ACL claim is not usable: {err}"),
                ));
            }
        };
        Ok(Identity {
            groups: groups_of(&store, &claims.username),
            in_store: store.get(&claims.username).is_some(),
            username: Some(Arc::from(claims.username.as_str())),
            method: "jwt",
            expires_at,
            acl,
        })
    }
}
