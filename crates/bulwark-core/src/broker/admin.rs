//! What the admin API reads and changes in the engine: pages of sessions, subscriptions and
//! retained messages, deleting a stored session or a retained message, the totals of the
//! queues, and what a new ACL would revoke. Every read is one pass over the table it lists
//! and keeps at most a page's worth of entries (a partial selection, not a sort of all).

use super::*;

/// One session in a list ([`Broker::sessions_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Its client identifier.
    pub client_id: Arc<str>,
    /// The user it belongs to (`None`: an anonymous client's).
    pub owner: Option<Arc<str>>,
    /// Whether its client is connected.
    pub connected: bool,
    /// Whether the durable store keeps it (a persistent session with a store on).
    pub stored: bool,
    /// Subscriptions it holds.
    pub subscriptions: usize,
    /// Messages waiting to be sent.
    pub queued_messages: usize,
    /// QoS 1 and 2 messages sent and not completed.
    pub inflight: usize,
    /// Session Expiry Interval, in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
}

/// One subscription in a list ([`Broker::subscriptions_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEntry {
    /// The session that holds it.
    pub client_id: Arc<str>,
    /// The filter and options as granted.
    pub record: SubscriptionRecord,
}

/// One retained message in a list ([`Broker::retained_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedSummary {
    /// Its topic.
    pub topic: TopicName,
    /// QoS as published.
    pub qos: QoS,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Seconds left of its Message Expiry Interval (`None`: it does not expire).
    pub expires_in: Option<u32>,
    /// The user it counts against (`None`: an anonymous client's, or the broker's).
    pub owner: Option<Arc<str>>,
}

/// What the queues of all sessions hold ([`Broker::queue_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTotals {
    /// Messages waiting, all sessions together.
    pub queued_messages: usize,
    /// Their bytes (payload and topic).
    pub queued_bytes: usize,
    /// QoS 1 and 2 messages in flight.
    pub inflight: usize,
    /// The longest queue of one session.
    pub longest_queue: usize,
}

/// A subscription a new ACL would take away or lower ([`Broker::acl_preview`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The session that holds it.
    pub client_id: Arc<str>,
    /// The user of its connection.
    pub username: Option<Arc<str>>,
    /// The filter as subscribed.
    pub filter: String,
    /// The QoS granted now.
    pub qos: QoS,
    /// `None`: removed; `Some(q)`: kept with its QoS lowered to `q`.
    pub lowered_to: Option<QoS>,
    /// Why, as the ACL explains its decision.
    pub reason: String,
}

/// One step of [`Broker::acl_preview`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclPreviewStep {
    /// What this step found.
    pub revocations: Vec<Revocation>,
    /// Connections checked in this step.
    pub checked: usize,
    /// Where the next step starts (`None`: every connection was checked).
    pub next: Option<ConnectionId>,
}

/// Why [`Broker::delete_session`] did not delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteSession {
    /// No session has that client identifier.
    NotFound,
    /// Its client is connected: disconnect it first.
    Connected,
}

/// The `limit` smallest of `items` in order, and whether there were more.
fn smallest<T: Ord>(items: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    smallest_by(items, limit, |a, b| a.cmp(b))
}

/// The `limit` first of `items` in the order `cmp` gives, and whether there were more.
fn smallest_by<T>(
    mut items: Vec<T>,
    limit: usize,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> (Vec<T>, bool) {
    let more = items.len() > limit;
    if more {
        if limit == 0 {
            items.clear();
        } else {
            items.select_nth_unstable_by(limit - 1, &cmp);
            items.truncate(limit);
        }
    }
    items.sort_unstable_by(&cmp);
    (items, more)
}

impl Broker {
    /// Up to `limit` sessions, connected or not, in client identifier order: those whose
    /// identifier starts with `prefix` and sorts after `after`. The flag says whether more
    /// follow.
    pub fn sessions_page(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<SessionSummary>, bool) {
        let names: Vec<(&Arc<str>, SessionKey)> = self
            .clients
            .client_ids
            .iter()
            .filter(|(id, _)| prefix.is_none_or(|p| id.starts_with(p)))
            .filter(|(id, _)| after.is_none_or(|a| &***id > a))
            .map(|(id, key)| (id, *key))
            .collect();
        let (names, more) = smallest(names, limit);
        let items = names
            .into_iter()
            .filter_map(|(id, key)| {
                let session = self.clients.session(key)?;
                Some(SessionSummary {
                    client_id: id.clone(),
                    owner: self.clients.owner_of(key),
                    connected: self.clients.online.contains_key(&key),
                    stored: session.is_journaled(),
                    subscriptions: session.subscriptions.len(),
                    queued_messages: session.queue.len(),
                    inflight: session.inflight.len(),
                    expiry_interval: session.expiry_interval,
                })
            })
            .collect();
        (items, more)
    }

    /// Ends the stored session of `client_id` whose client is away, as its expiry would: its
    /// subscriptions and queued messages go (and from the durable store), and a will waiting
    /// for its delay is published now [MQTT-3.1.3-9].
    pub fn delete_session(&mut self, client_id: &str, now: Instant) -> Result<(), DeleteSession> {
        let key = *self
            .clients
            .client_ids
            .get(client_id)
            .ok_or(DeleteSession::NotFound)?;
        if self.clients.online.contains_key(&key) {
            return Err(DeleteSession::Connected);
        }
        let session = self
            .clients
            .parked
            .take(key)
            .ok_or(DeleteSession::NotFound)?;
        self.end_session(session, now);
        Ok(())
    }

    /// Up to `limit` subscriptions in (client identifier, filter) order, after `after`: those
    /// of sessions whose identifier starts with `client_prefix`, and whose filter is `filter`
    /// exactly when one is given.
    pub fn subscriptions_page(
        &self,
        client_prefix: Option<&str>,
        filter: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> (Vec<SubscriptionEntry>, bool) {
        let mut found: Vec<(&Arc<str>, &str, &SubscriptionRecord)> = Vec::new();
        for (id, key) in &self.clients.client_ids {
            if client_prefix.is_some_and(|p| !id.starts_with(p))
                || after.is_some_and(|(a, _)| &**id < a)
            {
                continue;
            }
            let Some(session) = self.clients.session(*key) else {
                continue;
            };
            for (text, record) in &session.subscriptions {
                let text: &str = text.as_ref();
                if filter.is_some_and(|f| f != text)
                    || after.is_some_and(|(a, f)| (&**id, text) <= (a, f))
                {
                    continue;
                }
                found.push((id, text, record));
            }
        }
        let (found, more) = smallest_by(found, limit, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let items = found
            .into_iter()
            .map(|(id, _, record)| SubscriptionEntry {
                client_id: id.clone(),
                record: record.clone(),
            })
            .collect();
        (items, more)
    }

    /// Up to `limit` retained messages whose topic `filter` matches (as a subscription's
    /// would: `#` leaves out `$` topics), in topic order after `after`.
    pub fn retained_page(
        &self,
        filter: &str,
        after: Option<&str>,
        limit: usize,
        now: Instant,
    ) -> (Vec<RetainedSummary>, bool) {
        let mut matching = Vec::new();
        self.routing.retained.matching(filter, &mut matching);
        matching.retain(|m| after.is_none_or(|a| m.topic.as_str() > a) && !m.is_expired(now));
        let (matching, more) = smallest_by(matching, limit, |a, b| {
            a.topic.as_str().cmp(b.topic.as_str())
        });
        let items = matching
            .into_iter()
            .map(|m| RetainedSummary {
                topic: m.topic.clone(),
                qos: m.qos,
                payload_bytes: m.payload.len(),
                expires_in: m.remaining_expiry(now),
                owner: self.quotas.retained_owner(m.topic.as_str()),
            })
            .collect();
        (items, more)
    }

    /// Deletes the message retained on `topic` (and from the durable store), as a retained
    /// PUBLISH with an empty payload would. Returns whether there was one.
    pub fn delete_retained(&mut self, topic: &str) -> bool {
        let Some(message) = self.routing.retained.remove(topic) else {
            return false;
        };
        self.journal
            .push(StoreOp::RetainedCleared(message.topic.clone()));
        self.quotas.removed(topic);
        true
    }

    /// Connected clients by protocol: MQTT 3.1, 3.1.1 and 5.0, in that order (one pass over the
    /// connections).
    pub fn connections_by_protocol(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for conn in self.clients.conns.values() {
            let at = match conn.version {
                ProtocolVersion::V3_1 => 0,
                ProtocolVersion::V3_1_1 => 1,
                ProtocolVersion::V5 => 2,
            };
            if let Some(n) = counts.get_mut(at) {
                *n += 1;
            }
        }
        counts
    }

    /// What the queues of all sessions hold: one pass over the sessions.
    pub fn queue_totals(&self) -> QueueTotals {
        let mut totals = QueueTotals::default();
        let mut add = |session: &Session| {
            totals.queued_messages += session.queue.len();
            totals.queued_bytes += session.queued_bytes();
            totals.inflight += session.inflight.len();
            totals.longest_queue = totals.longest_queue.max(session.queue.len());
        };
        for conn in self.clients.conns.values() {
            add(&conn.session);
        }
        for session in self.clients.parked.iter() {
            add(session);
        }
        totals
    }

    /// What putting `rules` in force would do to the subscriptions of connected clients, as
    /// [`Broker::set_acl`] would apply it: checks the connections from `from` on, at most
    /// `budget` of them, in connection order. Nothing changes.
    pub fn acl_preview(
        &self,
        rules: Option<&AclRules>,
        from: Option<ConnectionId>,
        budget: usize,
    ) -> AclPreviewStep {
        let ids: Vec<ConnectionId> = self
            .clients
            .conns
            .keys()
            .copied()
            .filter(|c| from.is_none_or(|f| *c >= f))
            .collect();
        let (mut ids, more) = smallest(ids, budget.saturating_add(1));
        let next = if more || ids.len() > budget {
            ids.pop()
        } else {
            None
        };
        let mut step = AclPreviewStep {
            checked: ids.len(),
            next,
            ..AclPreviewStep::default()
        };
        let Some(rules) = rules else {
            return step;
        };
        for id in ids {
            let Some(conn) = self.clients.conns.get(&id) else {
                continue;
            };
            let principal = &conn.authz.principal;
            let acl = rules.resolve(principal, &conn.session.client_id);
            let mut mine: Vec<Revocation> = Vec::new();
            for (text, record) in &conn.session.subscriptions {
                let qos = record.options.qos;
                let decision = acl.check_subscribe(record.filter.match_filter(), qos.as_u8());
                let lowered_to = if !decision.allowed {
                    None
                } else if decision.qos < qos.as_u8() {
                    Some(QoS::from_u8(decision.qos).unwrap_or(QoS::AtMostOnce))
                } else {
                    continue;
                };
                mine.push(Revocation {
                    client_id: conn.session.client_id.clone(),
                    username: principal.username.clone(),
                    filter: text.to_string(),
                    qos,
                    lowered_to,
                    reason: decision.to_string(),
                });
            }
            mine.sort_by(|a, b| a.filter.cmp(&b.filter));
            step.revocations.extend(mine);
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::smallest;

    #[test]
    fn smallest_keeps_the_first_items_in_order_and_says_whether_more_follow() {
        assert_eq!(smallest(vec![5, 1, 4, 2, 3], 2), (vec![1, 2], true));
        assert_eq!(smallest(vec![3, 1, 2], 3), (vec![1, 2, 3], false));
        assert_eq!(smallest(vec![3, 1], 0), (vec![], true));
        assert_eq!(smallest(Vec::<u8>::new(), 0), (vec![], false));
    }
}
