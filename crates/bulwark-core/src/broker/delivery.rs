//! What goes to clients: a message routed to its subscribers (and shared groups), queued
//! or sent within each client's window, retained messages on SUBSCRIBE, and what a session
//! has waiting when its client is back.

use super::*;

impl Broker {
    /// Stores or clears the retained copy, then delivers `message` to every matching
    /// subscription. Returns how many subscriptions matched.
    pub fn publish_message(&mut self, message: Arc<Message>, now: Instant) -> usize {
        if message.retain {
            if message.payload.is_empty() {
                if self
                    .routing
                    .retained
                    .remove(message.topic.as_str())
                    .is_some()
                {
                    self.journal
                        .push(StoreOp::RetainedCleared(message.topic.clone()));
                }
                self.quotas.removed(message.topic.as_str());
            } else {
                let owner = message.publisher.and_then(|k| self.clients.owner_of(k));
                // `$SYS` topics are the broker's own, published again after a restart.
                if self.journal.is_on() && !message.topic.is_system() {
                    self.journal.push(StoreOp::Retained {
                        message: message.clone(),
                        owner: owner.clone(),
                    });
                }
                self.quotas
                    .stored(message.topic.as_str(), message.cost(), owner);
                self.routing.retained.insert(message.clone());
            }
        }
        let matches = self
            .routing
            .take_matches(message.topic.as_str(), message.publisher);
        let matched = matches.matched();
        let mut at = 0;
        while let Some(target) = matches.next_merged(&mut at) {
            if target.checked && !self.may_receive(target.session, &message) {
                continue;
            }
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(target.qos),
                retain: target.retain_as_published && message.retain,
                subscription_ids: target.ids,
                group: None,
                seq: 0,
            };
            self.deliver_to(target.session, delivery, now);
        }
        for &group in &matches.groups {
            self.deliver_to_group(group, &message, None, now);
        }
        self.routing.give_back(matches);
        // Nothing outlives the call: the bodies are referenced by the outputs alone.
        self.bodies.clear();
        matched
    }

    /// Whether the connected client of `session` may receive `message` under its ACL's
    /// carve-outs. A parked session's messages are queued: what its client may not receive
    /// is dropped from the queue when it is back ([`Broker::prune`]).
    pub(super) fn may_receive(&self, session: SessionKey, message: &Message) -> bool {
        self.clients.may_receive(session, message)
    }

    /// Picks the next member of a shared group, round robin, preferring connected members,
    /// never `except`, never one whose carve-outs keep the message out.
    pub(super) fn deliver_to_group(
        &mut self,
        group: GroupKey,
        message: &Arc<Message>,
        except: Option<SessionKey>,
        now: Instant,
    ) -> bool {
        let clients = &self.clients;
        let Some(member) = self.routing.choose_member(
            group,
            except,
            |session| clients.may_receive(session, message),
            |session| clients.online.contains_key(&session),
        ) else {
            return false;
        };
        let delivery = Delivery {
            message: message.clone(),
            qos: message.qos.min(member.options.qos),
            retain: member.options.retain_as_published && message.retain,
            subscription_ids: member.id.into_iter().collect(),
            group: Some(group),
            seq: 0,
        };
        self.deliver_to(member.session, delivery, now);
        true
    }

    /// A delivery of a shared subscription leaves the session `from`: it goes to another
    /// member of its group.
    pub(super) fn redeliver_shared(&mut self, delivery: Delivery, from: SessionKey, now: Instant) {
        let Some(group) = delivery.group else {
            return;
        };
        if !self.deliver_to_group(group, &delivery.message, Some(from), now) {
            // No other member: it stays with the session that had it, if that still exists.
            self.deliver_to(from, delivery, now);
        }
    }

    /// Hands one delivery to a session: sent now if its client is connected and its window
    /// allows, otherwise queued (QoS 0 to a parked session only if so configured).
    pub(super) fn deliver_to(&mut self, session: SessionKey, delivery: Delivery, now: Instant) {
        let limits = self.limits();
        match self.clients.online.get(&session) {
            Some(&conn_id) => {
                let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                    return;
                };
                let window_open =
                    conn.session.inflight.len() < conn.send_window && conn.session.queue.is_empty();
                if delivery.qos == QoS::AtMostOnce || window_open {
                    self.send(conn_id, delivery, now);
                    return;
                }
                let topic = delivery.message.topic.clone();
                match conn.session.enqueue(&mut self.journal, delivery, limits) {
                    Ok(0) => {}
                    Ok(dropped) => {
                        self.queue_overflow(session, Some(conn_id), &topic, dropped, now)
                    }
                    Err(_) => {
                        self.queue_overflow(session, Some(conn_id), &topic, 1, now);
                        if limits.when_full == crate::session::QueuePolicy::Disconnect {
                            self.disconnect(
                                conn_id,
                                ReasonCode::QuotaExceeded,
                                "the session's queue is full (the client does not keep up)",
                                now,
                            );
                        }
                    }
                }
            }
            None => {
                if delivery.qos == QoS::AtMostOnce && !self.config.sessions.queue_qos0_offline {
                    self.stats.dropped.offline_qos0 += 1;
                    return;
                }
                let topic = delivery.message.topic.clone();
                match self
                    .clients
                    .parked
                    .enqueue(&mut self.journal, session, delivery, limits)
                {
                    Ok(None | Some(0)) => {}
                    Ok(Some(dropped)) => self.queue_overflow(session, None, &topic, dropped, now),
                    Err(_) => self.queue_overflow(session, None, &topic, 1, now),
                }
            }
        }
    }

    /// `dropped` messages of a session were lost to its full queue: counted, and recorded as
    /// a security event at most once per session every [`crate::authz::EVENT_WINDOW`] (see
    /// [`Reports::overflow`]: the events add up to every message dropped).
    pub(super) fn queue_overflow(
        &mut self,
        session: SessionKey,
        conn: Option<ConnectionId>,
        topic: &TopicName,
        dropped: usize,
        now: Instant,
    ) {
        self.stats.dropped.queue_full += dropped as u64;
        let Some(count) = self.reports.overflow(session, topic, dropped as u64, now) else {
            return;
        };
        let conn = conn.or_else(|| self.clients.online.get(&session).copied());
        self.overflow_event(session, conn, None, topic, count);
    }

    /// Reports the drops of every session whose window has ended since its last event.
    pub(super) fn report_overflows(&mut self, now: Instant) {
        for (session, topic, count) in self.reports.due_overflows(now) {
            let conn = self.clients.online.get(&session).copied();
            self.overflow_event(session, conn, None, &topic, count);
        }
    }

    /// The slow-consumer event of `count` messages of `session` dropped (`client_id`: its
    /// client id when neither a connection nor the store knows it any more).
    pub(super) fn overflow_event(
        &mut self,
        session: SessionKey,
        conn: Option<ConnectionId>,
        client_id: Option<Arc<str>>,
        topic: &TopicName,
        count: u64,
    ) {
        let principal = conn
            .and_then(|c| self.clients.conns.get(&c))
            .map(|c| c.authz.principal.clone())
            .unwrap_or_default();
        let client_id = match (conn.and_then(|c| self.clients.conns.get(&c)), client_id) {
            (Some(c), _) => c.session.client_id.clone(),
            (None, Some(id)) => id,
            (None, None) => self
                .clients
                .parked
                .get(session)
                .map_or_else(|| Arc::from(""), |s| s.client_id.clone()),
        };
        let policy = match self.config.sessions.queue_full {
            crate::session::QueuePolicy::DropNewest => "drop_newest",
            crate::session::QueuePolicy::DropOldest => "drop_oldest",
            crate::session::QueuePolicy::Disconnect => "disconnect",
        };
        self.push_event(AuthzEvent {
            kind: EventKind::SlowConsumer,
            client_id,
            principal,
            action: "deliver",
            topic: topic.as_str().into(),
            reason: format!("session queue full ({policy}): {count} message(s) dropped"),
        });
    }

    /// Sends queued messages while the client's window has room.
    pub(super) fn pump(&mut self, conn_id: ConnectionId, now: Instant) {
        loop {
            let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                return;
            };
            if conn.session.inflight.len() >= conn.send_window {
                // QoS 0 messages at the head need no window.
                if conn
                    .session
                    .queue
                    .front()
                    .is_none_or(|d| d.qos != QoS::AtMostOnce)
                {
                    return;
                }
            }
            let Some(delivery) = conn.session.dequeue(&mut self.journal) else {
                return;
            };
            if !self.send(conn_id, delivery, now) {
                return;
            }
        }
    }

    /// Builds and emits the PUBLISH for one delivery. Returns false if it had to go back to
    /// the queue (no packet identifier free).
    pub(super) fn send(&mut self, conn_id: ConnectionId, delivery: Delivery, now: Instant) -> bool {
        let (qos, payload) = (delivery.qos.as_u8(), delivery.message.payload.len());
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return false;
        };
        if delivery.message.is_expired(now) {
            self.stats.messages.expired += 1;
            return true;
        }
        let (mut body, size) = self.bodies.body_for(&delivery, &conn.encoder, now);
        let max = u64::from(conn.encoder.max_packet_size());
        if size > max {
            // [MQTT-3.1.2-25]: a message too large for the client is not sent to it.
            self.stats.dropped.too_large += 1;
            return true;
        }
        let mut packet_id = None;
        if delivery.qos != QoS::AtMostOnce {
            let Some(id) = conn.session.allocate_id() else {
                conn.session.requeue_front(&mut self.journal, delivery);
                return false;
            };
            packet_id = Some(id);
            let state = if delivery.qos == QoS::AtLeastOnce {
                OutState::AwaitPubAck
            } else {
                OutState::AwaitPubRec
            };
            conn.session.push_inflight(
                &mut self.journal,
                Inflight {
                    packet_id: id,
                    delivery,
                    state,
                },
            );
        }
        // A Topic Alias property takes 3 bytes; only assign one if they fit. The body then
        // becomes this connection's own.
        if conn.alias_max_out > 0 && size + 3 <= max {
            let mut own = Arc::unwrap_or_clone(body);
            conn.aliases
                .get_or_insert_with(Box::default)
                .apply_outbound(conn.alias_max_out, &mut own);
            body = Arc::new(own);
        }
        self.stats.messages.count_sent(qos, payload);
        self.outputs.push_back((
            conn_id,
            Output::Publish(OutgoingPublish {
                publish: body,
                packet_id,
                dup: false,
            }),
        ));
        true
    }

    /// Delivers the retained messages `filter` matches to `session` (those expired are
    /// cleared; each is checked against the client's ACL).
    pub(super) fn send_retained(
        &mut self,
        session: SessionKey,
        filter: &TopicFilter,
        qos: QoS,
        id: Option<SubscriptionId>,
        now: Instant,
    ) {
        let matching: Vec<Arc<Message>> = if filter.has_wildcards() {
            let mut found = Vec::new();
            self.routing
                .retained
                .matching(filter.match_filter(), &mut found);
            found.sort_by(|a, b| a.topic.cmp(&b.topic));
            found
        } else {
            self.routing
                .retained
                .get(filter.as_str())
                .cloned()
                .into_iter()
                .collect()
        };
        let conn_id = self.clients.online.get(&session).copied();
        for message in matching {
            if message.is_expired(now) {
                self.routing.retained.remove(message.topic.as_str());
                self.journal
                    .push(StoreOp::RetainedCleared(message.topic.clone()));
                self.quotas.removed(message.topic.as_str());
                self.stats.messages.expired += 1;
                continue;
            }
            // Defence in depth: the filter was granted, and still each message is checked.
            let allowed = conn_id
                .and_then(|c| self.clients.conns.get(&c))
                .and_then(|c| c.authz.acl())
                .is_none_or(|acl| acl.may_receive(message.topic.as_str()));
            if !allowed {
                if let Some(c) = conn_id {
                    self.record(
                        c,
                        EventKind::AclDenied,
                        "retained",
                        message.topic.as_str(),
                        "the client may not receive this topic".to_owned(),
                        now,
                    );
                }
                continue;
            }
            let delivery = Delivery {
                qos: message.qos.min(qos),
                retain: true,
                subscription_ids: id.into_iter().collect(),
                group: None,
                seq: 0,
                message,
            };
            self.deliver_to(session, delivery, now);
        }
    }

    /// Resends what was in flight (PUBLISH with DUP, or PUBREL), then sends from the queue.
    pub(super) fn resume(&mut self, conn_id: ConnectionId, now: Instant) {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        for (pos, inflight) in conn.session.inflight.iter().enumerate() {
            match inflight.state {
                OutState::AwaitPubComp => {
                    resend.push(Packet::PubRel(PubRel::new(inflight.packet_id)));
                }
                OutState::AwaitPubAck | OutState::AwaitPubRec => {
                    // A message whose QoS exchange began is delivered even if it expires now:
                    // the client may already hold it.
                    let mut publish = build_publish(&inflight.delivery, now);
                    publish.dup = true;
                    publish.packet_id = Some(inflight.packet_id);
                    if conn.encoder.fits(&publish) {
                        resend.push(Packet::Publish(publish));
                    } else {
                        expired.push(pos);
                    }
                }
            }
        }
        for pos in expired.into_iter().rev() {
            conn.session.remove_inflight(&mut self.journal, pos);
            self.stats.dropped.too_large += 1;
        }
        for packet in resend {
            if let Packet::Publish(publish) = &packet {
                self.stats
                    .messages
                    .count_sent(publish.qos.as_u8(), publish.payload.len());
            }
            self.outputs
                .push_back((conn_id, Output::Packet(Box::new(packet))));
        }
        self.pump(conn_id, now);
    }
}
