//! What the durable store is told (the journal) and what it brings back at start.

use super::*;

impl Broker {
    /// Records every change to persistent sessions and retained messages from now on, for a
    /// durable store: call before the first connection (after [`Broker::restore`]), then drain
    /// [`Broker::take_store_ops`] after every call, as [`Broker::poll_output`].
    pub fn enable_journal(&mut self) {
        if !self.journal.is_on() {
            self.journal = Journal::on();
        }
    }

    /// The changes to durable state since the last call, oldest first: the caller commits
    /// them (atomically, as one batch) before it sends this round's outputs.
    pub fn take_store_ops(&mut self) -> Vec<StoreOp> {
        if !self.journal.is_on() {
            return Vec::new();
        }
        let mut dirty = mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for conn_id in dirty.drain(..) {
            if let Some(conn) = self.clients.conns.get(&conn_id)
                && conn.session.is_journaled()
            {
                let will = conn.will.as_deref().map(|w| WillRecord {
                    at: None,
                    delay: will_delay(conn.version, w),
                    will: w.clone(),
                    principal: conn.authz.principal.clone(),
                });
                let record = self.record_of(&conn.session, None, will);
                self.journal.push(StoreOp::Session(Box::new(record)));
            }
        }
        self.dirty = dirty;
        self.journal.take()
    }

    /// The durable record of `session`, parked since `disconnected_at` (`None`: connected)
    /// with `will` waiting.
    pub(super) fn record_of(
        &self,
        session: &Session,
        disconnected_at: Option<Instant>,
        will: Option<WillRecord>,
    ) -> SessionRecord {
        let mut subscriptions: Vec<SubscriptionRecord> =
            session.subscriptions.values().cloned().collect();
        subscriptions.sort_unstable_by(|a, b| a.filter.as_str().cmp(b.filter.as_str()));
        SessionRecord {
            client_id: session.client_id.clone(),
            owner: self.clients.owner_of(session.key),
            expiry_interval: session.expiry_interval,
            subscriptions,
            disconnected_at,
            will,
        }
    }

    /// Brings back what a durable store read at start, and turns the journal on
    /// ([`Broker::enable_journal`]): persistent sessions, parked, with their subscriptions,
    /// queued and in-flight messages, QoS 2 identifiers and pending wills (a session whose
    /// client was connected when the broker stopped counts as disconnected at `now`: its
    /// expiry and will delay run from the restart), and the retained messages. Time spent down
    /// counts: a session or message whose expiry ran out meanwhile expires at the first
    /// [`Broker::handle_timeout`] or delivery. Messages restored from shared subscriptions stay
    /// with their session. Call once, on a new engine, before the first connection. Returns
    /// how many sessions and retained messages were restored.
    pub fn restore(&mut self, restored: Restored, now: Instant) -> (usize, usize) {
        self.enable_journal();
        let mut sessions = 0;
        for r in restored.sessions {
            let record = r.record;
            if self.clients.client_ids.contains_key(&record.client_id) {
                continue;
            }
            if record.expiry_interval == 0 {
                // Expired while the broker was down (the store counted the time off).
                self.journal.push(StoreOp::SessionEnded {
                    client_id: record.client_id,
                });
                continue;
            }
            let mut session = self
                .clients
                .new_session(record.client_id.clone(), record.expiry_interval);
            let key = session.key;
            session.start_journal(&mut self.journal);
            let parked_at = record.disconnected_at.unwrap_or(now);
            session.parked_at = Some(parked_at);
            self.clients.owners.insert(key, record.owner);
            let mut count = 0isize;
            for sub in record.subscriptions {
                // Checked or not is decided when the session's client is back (`prune`):
                // until then its messages are queued, and what it may not receive is
                // dropped from the queue then.
                self.routing
                    .index(key, &sub.filter, sub.options, sub.id, false);
                if session
                    .subscriptions
                    .insert(sub.filter.as_str().into(), sub)
                    .is_none()
                {
                    count += 1;
                }
            }
            self.routing.subscriptions += count.unsigned_abs();
            self.count_subscriptions(key, count);
            for (seq, mut delivery, sent) in r.messages {
                delivery.seq = seq;
                delivery.group = None;
                session.restore_message(delivery, sent);
            }
            for id in r.qos2_received {
                session.restore_qos2(id);
            }
            if let Some(w) = record.will {
                let at = w.at.unwrap_or_else(|| {
                    now.checked_add(Duration::from_secs(u64::from(w.delay)))
                        .unwrap_or(now)
                });
                self.wills.schedule(
                    key,
                    PendingWill {
                        at,
                        will: Box::new(w.will),
                        principal: w.principal,
                        client_id: session.client_id.clone(),
                    },
                );
            }
            let expires_at = if session.expiry_interval == u32::MAX {
                None
            } else {
                parked_at.checked_add(Duration::from_secs(u64::from(session.expiry_interval)))
            };
            self.clients.parked.park(session, expires_at);
            sessions += 1;
        }
        let mut retained = 0;
        for (message, owner) in restored.retained {
            if message.is_expired(now) {
                self.journal
                    .push(StoreOp::RetainedCleared(message.topic.clone()));
                continue;
            }
            self.quotas
                .stored(message.topic.as_str(), message.cost(), owner);
            self.routing.retained.insert(message);
            retained += 1;
        }
        (sessions, retained)
    }

    /// Marks connection `conn_id`'s session as changed, for [`Broker::take_store_ops`].
    pub(super) fn touch(&mut self, conn_id: ConnectionId) {
        if self.journal.is_on() {
            self.dirty.push(conn_id);
        }
    }
}
