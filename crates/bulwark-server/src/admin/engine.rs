//! The admin backend's lists and changes of the engine's state (sessions, subscriptions,
//! retained messages, the ACL dry run) and of the token file. Every look at the engine is a
//! page: one pass over one table, at most a page kept.

use std::sync::Arc;

use bulwark_acl::AclRules;
use bulwark_admin::backend::{
    AclCandidate, AclChange, AclDiff, AddedToken, NewToken, Page, Refusal, RetainedItem,
    RetainedQuery, SessionItem, SessionQuery, SubscriptionItem, SubscriptionQuery, TokenView,
};
use bulwark_auth::token::{Role, TokenRecord, TokenStore};
use bulwark_core::{DeleteSession, Revocation};
use bulwark_proto::{TopicFilter, TopicName};

use super::{AdminBackend, MAX_TOKEN_FILE};
use crate::bans::unix_now;
use crate::sync::lock;

/// Connections the ACL dry run checks in one look at the engine.
const DIFF_STEP: usize = 1000;
/// Changes the ACL dry run lists at most (it counts them all).
const DIFF_LISTED: usize = 1000;

/// The longest `duration_seconds` of a ban or a token: 100 years.
pub(super) const MAX_DURATION: u64 = 100 * 365 * 86_400;

/// Refuses a `duration_seconds` of 0 or over [`MAX_DURATION`]; `endless` says what leaving it
/// out gives.
pub(super) fn check_duration(duration: Option<u64>, endless: &str) -> Result<(), Refusal> {
    match duration {
        Some(0) => Err(Refusal::Invalid(format!(
            "duration_seconds: must be at least 1 (leave it out for {endless})"
        ))),
        Some(d) if d > MAX_DURATION => Err(Refusal::Invalid(format!(
            "duration_seconds: {d} is over {MAX_DURATION} (100 years; leave it out for {endless})"
        ))),
        _ => Ok(()),
    }
}

fn unavailable() -> Refusal {
    Refusal::Unavailable("the engine did not answer".to_owned())
}

/// The cursor of a subscription: its client identifier and filter, each in hex, so that any
/// text of either survives a query string.
fn subscription_cursor(client_id: &str, filter: &str) -> String {
    format!("{}.{}", hex(client_id), hex(filter))
}

fn hex(text: &str) -> String {
    use std::fmt::Write;
    text.bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    String::from_utf8(bytes?).ok()
}

fn parse_subscription_cursor(cursor: &str) -> Result<(String, String), Refusal> {
    cursor
        .split_once('.')
        .and_then(|(c, f)| Some((unhex(c)?, unhex(f)?)))
        .ok_or_else(|| Refusal::Invalid("after: not a cursor of this list".to_owned()))
}

fn token_view(record: &TokenRecord) -> TokenView {
    TokenView {
        name: record.name.clone(),
        id: record.id.clone(),
        role: record.role.to_string(),
        created: record.created,
        expires: record.expires,
    }
}

fn change_view(r: Revocation) -> AclChange {
    AclChange {
        client_id: r.client_id.to_string(),
        username: r.username.as_deref().map(str::to_owned),
        filter: r.filter,
        qos: r.qos as u8,
        change: if r.lowered_to.is_some() {
            "lower"
        } else {
            "revoke"
        }
        .to_owned(),
        new_qos: r.lowered_to.map(|q| q as u8),
        reason: r.reason,
    }
}

impl AdminBackend {
    pub(super) async fn session_page(
        &self,
        query: &SessionQuery,
        limit: usize,
    ) -> Result<Page<SessionItem>, Refusal> {
        let prefix = query.client_id.clone();
        let after = query.after.clone();
        let (found, more) = self
            .inspect(move |broker| broker.sessions_page(prefix.as_deref(), after.as_deref(), limit))
            .await
            .ok_or_else(unavailable)?;
        let next = more
            .then(|| found.last().map(|s| s.client_id.to_string()))
            .flatten();
        let items = found
            .into_iter()
            .map(|s| SessionItem {
                client_id: s.client_id.to_string(),
                username: s.owner.as_deref().map(str::to_owned),
                connected: s.connected,
                stored: s.stored,
                subscriptions: s.subscriptions,
                queued_messages: s.queued_messages,
                inflight: s.inflight,
                session_expiry_interval: s.expiry_interval,
            })
            .collect();
        Ok(Page { items, next })
    }

    pub(super) async fn remove_session(&self, client_id: &str) -> Result<(), Refusal> {
        let id = client_id.to_owned();
        match self
            .operate(move |broker, now| broker.delete_session(&id, now))
            .await
            .ok_or_else(unavailable)?
        {
            Ok(()) => Ok(()),
            Err(DeleteSession::NotFound) => Err(Refusal::NotFound(format!(
                "no session has the client id {client_id:?}"
            ))),
            Err(DeleteSession::Connected) => Err(Refusal::Conflict(format!(
                "the client {client_id:?} is connected: kick it first (a session ends with \
                 its connection only if it was not persistent)"
            ))),
        }
    }

    pub(super) async fn subscription_page(
        &self,
        query: &SubscriptionQuery,
        limit: usize,
    ) -> Result<Page<SubscriptionItem>, Refusal> {
        let after = query
            .after
            .as_deref()
            .map(parse_subscription_cursor)
            .transpose()?;
        let prefix = query.client_id.clone();
        let filter = query.filter.clone();
        let (found, more) = self
            .inspect(move |broker| {
                broker.subscriptions_page(
                    prefix.as_deref(),
                    filter.as_deref(),
                    after.as_ref().map(|(c, f)| (c.as_str(), f.as_str())),
                    limit,
                )
            })
            .await
            .ok_or_else(unavailable)?;
        let next = more
            .then(|| {
                found
                    .last()
                    .map(|s| subscription_cursor(&s.client_id, s.record.filter.as_str()))
            })
            .flatten();
        let items = found
            .into_iter()
            .map(|s| SubscriptionItem {
                client_id: s.client_id.to_string(),
                filter: s.record.filter.as_str().to_owned(),
                qos: s.record.options.qos as u8,
                no_local: s.record.options.no_local,
                retain_as_published: s.record.options.retain_as_published,
                retain_handling: s.record.options.retain_handling as u8,
                subscription_identifier: s.record.id.map(|id| id.get()),
            })
            .collect();
        Ok(Page { items, next })
    }

    pub(super) async fn retained_list(
        &self,
        query: &RetainedQuery,
        limit: usize,
    ) -> Result<Page<RetainedItem>, Refusal> {
        let text = query.filter.clone().unwrap_or_else(|| "#".to_owned());
        let filter = TopicFilter::new(&text).map_err(|e| {
            Refusal::Invalid(format!("filter: {text:?} is not a topic filter: {e}"))
        })?;
        if filter.is_shared() {
            return Err(Refusal::Invalid(format!(
                "filter: {text:?} is a shared subscription; give the topic filter alone"
            )));
        }
        let after = query.after.clone();
        let (found, more) = self
            .operate(move |broker, now| {
                broker.retained_page(filter.match_filter(), after.as_deref(), limit, now)
            })
            .await
            .ok_or_else(unavailable)?;
        let next = more
            .then(|| found.last().map(|r| r.topic.as_str().to_owned()))
            .flatten();
        let items = found
            .into_iter()
            .map(|r| RetainedItem {
                topic: r.topic.as_str().to_owned(),
                qos: r.qos as u8,
                payload_bytes: r.payload_bytes,
                expires_in: r.expires_in,
                username: r.owner.as_deref().map(str::to_owned),
            })
            .collect();
        Ok(Page { items, next })
    }

    pub(super) async fn remove_retained(&self, topic: &str) -> Result<(), Refusal> {
        let name = TopicName::new(topic)
            .map_err(|e| Refusal::Invalid(format!("topic: {topic:?} is not a topic name: {e}")))?;
        let deleted = self
            .operate(move |broker, _| broker.delete_retained(name.as_str()))
            .await
            .ok_or_else(unavailable)?;
        if deleted {
            Ok(())
        } else {
            Err(Refusal::NotFound(format!(
                "no message is retained on {topic:?}"
            )))
        }
    }

    pub(super) async fn diff_acl(&self, candidate: AclCandidate) -> Result<AclDiff, Refusal> {
        let (rules, source) = match candidate.acl {
            Some(text) => {
                let rules = AclRules::parse(&text, "request")
                    .map_err(|err| Refusal::Invalid(format!("acl: {err}")))?;
                (rules, "request".to_owned())
            }
            None => {
                let path = self.parts.reload.acl_file.clone().ok_or_else(|| {
                    Refusal::Invalid(
                        "acl: no ACL file is configured ([acl] file): give the new ACL's text"
                            .to_owned(),
                    )
                })?;
                let rules = crate::acl::load(&path)
                    .map_err(|err| Refusal::Invalid(format!("the ACL file: {err}")))?;
                (rules, path.display().to_string())
            }
        };
        let rules = Arc::new(rules);
        let mut diff = AclDiff {
            source,
            clients_checked: 0,
            changes: Vec::new(),
            total_changes: 0,
            truncated: false,
        };
        // A step at a time, each a bounded look: the router serves clients in between.
        let mut from = None;
        loop {
            let step_rules = rules.clone();
            let step = self
                .inspect(move |broker| broker.acl_preview(Some(&step_rules), from, DIFF_STEP))
                .await
                .ok_or_else(unavailable)?;
            diff.clients_checked += step.checked;
            diff.total_changes += step.revocations.len();
            let room = DIFF_LISTED.saturating_sub(diff.changes.len());
            diff.changes
                .extend(step.revocations.into_iter().take(room).map(change_view));
            match step.next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        diff.truncated = diff.total_changes > diff.changes.len();
        diff.changes
            .sort_by(|a, b| (&a.client_id, &a.filter).cmp(&(&b.client_id, &b.filter)));
        Ok(diff)
    }

    pub(super) fn token_list(&self) -> Vec<TokenView> {
        self.tokens
            .current()
            .records()
            .iter()
            .map(token_view)
            .collect()
    }

    /// The token file as it is now (none: an empty store), for an edit.
    fn read_tokens(&self) -> Result<TokenStore, Refusal> {
        let path = &self.tokens.path;
        if !path.exists() {
            return Ok(TokenStore::new());
        }
        crate::files::read_text(path, "the admin token file", MAX_TOKEN_FILE)
            .and_then(|text| {
                TokenStore::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
            })
            .map_err(Refusal::Unavailable)
    }

    /// Writes `store` to the token file and puts it in force at once.
    fn write_tokens(&self, store: TokenStore) -> Result<(), Refusal> {
        let path = &self.tokens.path;
        crate::files::write_atomic(path, store.to_toml().as_bytes())
            .map_err(Refusal::Unavailable)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        *lock(&self.tokens.cached) = (mtime, Arc::new(store));
        Ok(())
    }

    pub(super) async fn issue_token(&self, token: NewToken) -> Result<AddedToken, Refusal> {
        let role: Role = token
            .role
            .parse()
            .map_err(|err| Refusal::Invalid(format!("role: {err}")))?;
        let now = unix_now();
        check_duration(token.duration_seconds, "a token until removed")?;
        let expires = token.duration_seconds.map(|d| now.saturating_add(d));
        let _edit = self.token_edit.lock().await;
        let mut store = self.read_tokens()?;
        if store.records().iter().any(|r| r.name == token.name) {
            return Err(Refusal::Conflict(format!(
                "a token named {:?} exists already",
                token.name
            )));
        }
        let (record, secret) = store
            .issue(&token.name, role, now, expires)
            .map_err(|err| Refusal::Invalid(err.to_string()))?;
        self.write_tokens(store)?;
        Ok(AddedToken {
            token: token_view(&record),
            secret,
        })
    }

    pub(super) async fn revoke_token(&self, name_or_id: &str) -> Result<(), Refusal> {
        let _edit = self.token_edit.lock().await;
        let mut store = self.read_tokens()?;
        if !store.remove(name_or_id) {
            return Err(Refusal::NotFound(format!(
                "no token has the name or id {name_or_id:?}"
            )));
        }
        self.write_tokens(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_cursors_carry_any_text() {
        for (c, f) in [("a", "b/#"), ("", "$share/g/x"), ("ü.\u{1}&=", "+/+/%")] {
            let cursor = subscription_cursor(c, f);
            assert_eq!(
                parse_subscription_cursor(&cursor),
                Ok((c.to_owned(), f.to_owned()))
            );
        }
        for bad in ["", "zz.00", "0.00", "6162", "ff.61"] {
            assert!(parse_subscription_cursor(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod document {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

    use bulwark_proto::ReasonCode;

    /// The kick's reason codes in the OpenAPI document are exactly those the server takes.
    #[test]
    fn the_documented_kick_codes_are_the_ones_taken() {
        let doc: serde_json::Value = serde_json::from_str(bulwark_admin::api::OPENAPI).unwrap();
        let documented: Vec<u64> =
            doc["components"]["schemas"]["Kick"]["properties"]["reason_code"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .collect();
        let taken: Vec<u64> = (0..=255u8)
            .filter(|c| {
                ReasonCode::from_u8(*c)
                    .is_some_and(|c| c.server_may_disconnect_with() && c.is_error())
            })
            .map(u64::from)
            .collect();
        assert_eq!(documented, taken);
    }
}
