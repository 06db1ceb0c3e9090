//! What clients send after their CONNECT: PUBLISH (with its checks and answer), the
//! acknowledgements of messages sent to them, SUBSCRIBE and UNSUBSCRIBE; and the authorization
//! decisions and events they cause.

use super::*;

impl Broker {
    /// An acknowledgement's properties: the reason string of an error, if the client wants
    /// it (Request Problem Information).
    pub(super) fn ack_properties(
        &self,
        conn: ConnectionId,
        code: ReasonCode,
        why: &str,
    ) -> AckProperties {
        let mut props = AckProperties::default();
        let wanted = self
            .clients
            .conns
            .get(&conn)
            .is_some_and(|c| c.problem_information);
        if code.is_error() && wanted {
            props.reason_string = MqttString::new(why).ok();
        }
        props
    }

    /// Answers a QoS 1/2 PUBLISH with PUBACK or PUBREC and `code`.
    pub(super) fn answer_publish(
        &mut self,
        conn: ConnectionId,
        qos: QoS,
        packet_id: Option<PacketId>,
        code: ReasonCode,
        why: &str,
    ) {
        let Some(packet_id) = packet_id else {
            return;
        };
        let properties = self.ack_properties(conn, code, why);
        let packet = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(PubAck {
                packet_id,
                reason_code: code,
                properties,
            }),
            QoS::ExactlyOnce => Packet::PubRec(PubRec {
                packet_id,
                reason_code: code,
                properties,
            }),
        };
        self.push(conn, packet);
    }

    /// A PUBLISH from a client: topic alias, limits, `$SYS`, the QoS 2 duplicate rule, the
    /// ACL and retained quotas, then routing and the answer.
    pub(super) fn handle_publish(&mut self, conn_id: ConnectionId, publish: Publish, now: Instant) {
        self.stats
            .messages
            .count_received(publish.qos.as_u8(), publish.payload.len());
        let max_user = self.config.packets.max_user_properties;
        let alias_max = self.config.packets.topic_alias_maximum;
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let Publish {
            qos,
            retain,
            mut topic,
            packet_id,
            mut properties,
            payload,
            ..
        } = publish;
        if properties.user_properties.len() > max_user {
            return self.expel(
                conn_id,
                ReasonCode::QuotaExceeded,
                "too many user properties",
                now,
            );
        }
        if let Some(alias) = properties.topic_alias.take() {
            if alias.get() > alias_max {
                return self.expel(
                    conn_id,
                    ReasonCode::TopicAliasInvalid,
                    "topic alias above the Topic Alias Maximum",
                    now,
                );
            }
            if topic.is_empty() {
                match conn.aliases.as_ref().and_then(|a| a.inbound(alias.get())) {
                    Some(known) => topic = known.clone(),
                    None => {
                        return self.expel(
                            conn_id,
                            ReasonCode::ProtocolError,
                            "unknown topic alias",
                            now,
                        );
                    }
                }
            } else {
                conn.aliases
                    .get_or_insert_with(Box::default)
                    .set_inbound(alias.get(), topic.clone());
            }
        }
        let session_key = conn.session.key;
        // Decided while the connection is at hand (one table lookup less); acted on below,
        // after the checks every client gets.
        let allowed = conn.authz.may_publish(topic.as_str(), qos.as_u8(), retain);
        if !self.config.topic_fits(topic.as_str()) {
            return self.expel(
                conn_id,
                ReasonCode::TopicNameInvalid,
                "topic name too long or too deep",
                now,
            );
        }
        if topic.as_str() == "$SYS" || topic.as_str().starts_with("$SYS/") {
            // Clients must not forge the broker's own statistics.
            return self.answer_publish(
                conn_id,
                qos,
                packet_id,
                ReasonCode::NotAuthorized,
                "$SYS topics are written by the broker only",
            );
        }
        if qos == QoS::ExactlyOnce {
            let Some(id) = packet_id else { return };
            let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                return;
            };
            if conn.session.qos2_received(id) {
                // A resend before PUBREL: answered, not delivered again.
                return self.push(conn_id, Packet::PubRec(PubRec::new(id)));
            }
            if conn.session.qos2_pending() >= usize::from(self.config.sessions.receive_maximum) {
                return self.expel(
                    conn_id,
                    ReasonCode::ReceiveMaximumExceeded,
                    "more QoS 2 messages awaiting PUBREL than the Receive Maximum",
                    now,
                );
            }
        }
        if !allowed {
            return self.deny_publish(conn_id, &topic, qos, retain, packet_id, now);
        }
        if retain && !payload.is_empty() {
            let owner = self.clients.owner_of(session_key);
            let cost = payload.len() + topic.as_str().len();
            if let Some(why) = self.retained_refusal(topic.as_str(), cost, owner.as_ref()) {
                self.stats.retained_refused += 1;
                return self.answer_publish(
                    conn_id,
                    qos,
                    packet_id,
                    ReasonCode::QuotaExceeded,
                    why,
                );
            }
        }
        let expires_at = Message::expiry_from(now, properties.message_expiry_interval);
        properties.message_expiry_interval = None;
        let message = Arc::new(Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at,
            publisher: Some(session_key),
        });
        let matched = self.publish_message(message, now);
        let code = if matched == 0 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        if qos == QoS::ExactlyOnce
            && let (Some(id), Some(conn)) = (packet_id, self.clients.conns.get_mut(&conn_id))
        {
            conn.session.qos2_record(&mut self.journal, id);
        }
        let v5 = self.clients.conns.get(&conn_id).is_some_and(|c| c.is_v5());
        let code = if v5 { code } else { ReasonCode::Success };
        self.answer_publish(conn_id, qos, packet_id, code, "");
    }

    /// Why a retained message of `cost` bytes stored by `owner` may not replace what `topic`
    /// holds, if it may not.
    pub(super) fn retained_refusal(
        &self,
        topic: &str,
        cost: usize,
        owner: Option<&Arc<str>>,
    ) -> Option<&'static str> {
        let c = &self.config;
        if !self.routing.retained.contains(topic)
            && self.routing.retained.len() >= c.retained.max_retained_messages
        {
            return Some("retained message limit reached");
        }
        let ((count, bytes), total) = self.quotas.after_store(topic, cost, owner);
        let over = |limit: usize, value: usize| limit > 0 && value > limit;
        if over(c.retained.max_retained_bytes, total) {
            return Some("retained bytes limit reached");
        }
        if owner.is_some() {
            if over(c.per_user.max_retained_per_user, count) {
                return Some("retained messages per user limit reached");
            }
            if over(c.per_user.max_retained_bytes_per_user, bytes) {
                return Some("retained bytes per user limit reached");
            }
        }
        None
    }

    /// Adds `n` (negative: removes) subscriptions to the count of the session's user.
    pub(super) fn count_subscriptions(&mut self, key: SessionKey, n: isize) {
        if let Some(user) = self.clients.owner_of(key) {
            self.quotas.add_subscriptions(&user, n);
        }
    }

    /// A PUBLISH the ACL refused: a 5.0 QoS 1/2 one is answered 0x87; others are dropped
    /// (acknowledged as usual) or end the connection, as `denied_publish` says.
    pub(super) fn deny_publish(
        &mut self,
        conn_id: ConnectionId,
        topic: &TopicName,
        qos: QoS,
        retain: bool,
        packet_id: Option<PacketId>,
        now: Instant,
    ) {
        self.stats.denied.publishes += 1;
        let Some(conn) = self.clients.conns.get(&conn_id) else {
            return;
        };
        let v5 = conn.is_v5();
        let reason = conn.authz.acl().map_or_else(String::new, |acl| {
            acl.check_publish(topic.as_str(), qos.as_u8(), retain)
                .to_string()
        });
        self.record(
            conn_id,
            EventKind::AclDenied,
            "publish",
            topic.as_str(),
            reason,
            now,
        );
        if v5 && qos != QoS::AtMostOnce {
            return self.answer_publish(
                conn_id,
                qos,
                packet_id,
                ReasonCode::NotAuthorized,
                "not authorized",
            );
        }
        match self.config.denied_publish {
            DeniedPublish::Disconnect => {
                self.disconnect(
                    conn_id,
                    ReasonCode::NotAuthorized,
                    "publish not authorized",
                    now,
                );
            }
            DeniedPublish::Drop => {
                if qos == QoS::ExactlyOnce
                    && let (Some(id), Some(conn)) =
                        (packet_id, self.clients.conns.get_mut(&conn_id))
                {
                    conn.session.qos2_record(&mut self.journal, id);
                }
                self.answer_publish(conn_id, qos, packet_id, ReasonCode::Success, "");
            }
        }
    }

    /// Records an authorization event of a connection, within its event budget.
    pub(super) fn record(
        &mut self,
        conn_id: ConnectionId,
        kind: EventKind,
        action: &'static str,
        topic: &str,
        reason: String,
        now: Instant,
    ) {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let Some(suppressed) = conn.authz.admit_event(now) else {
            return;
        };
        let reason = if suppressed > 0 {
            format!("{reason} ({suppressed} earlier events of this connection not recorded)")
        } else {
            reason
        };
        let event = AuthzEvent {
            kind,
            client_id: conn.session.client_id.clone(),
            principal: conn.authz.principal.clone(),
            action,
            topic: topic.into(),
            reason,
        };
        self.push_event(event);
    }

    /// Holds an event for [`Broker::poll_event`] (counted as dropped when too many wait).
    pub(super) fn push_event(&mut self, event: AuthzEvent) {
        if !self.reports.push_event(event) {
            self.stats.events_dropped += 1;
        }
    }

    /// Resolves connection `conn_id`'s rules again (with a new principal, if given) and
    /// prunes what they no longer allow.
    pub(super) fn reauthorize(
        &mut self,
        conn_id: ConnectionId,
        principal: Option<Arc<Principal>>,
        now: Instant,
    ) {
        let rules = self.acl.clone();
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let principal = principal.unwrap_or_else(|| conn.authz.principal.clone());
        let fresh = ConnAuthz::new(rules.as_deref(), principal, &conn.session.client_id);
        conn.authz.replace(fresh);
        self.prune(conn_id, now);
    }

    /// Removes the subscriptions connection `conn_id`'s rules do not allow (and lowers the
    /// QoS of those allowed at a lower one), and drops queued messages it may not receive.
    pub(super) fn prune(&mut self, conn_id: ConnectionId, now: Instant) {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let Conn { session, authz, .. } = &mut **conn;
        let Some(acl) = authz.acl() else {
            return;
        };
        let key = session.key;
        let mut revoked = Vec::new();
        // Every subscription kept is indexed again: its QoS may be lower now, and whether its
        // messages are checked follows the carve-outs of the rules in force.
        let mut kept = Vec::new();
        for (text, record) in &mut session.subscriptions {
            let decision =
                acl.check_subscribe(record.filter.match_filter(), record.options.qos.as_u8());
            if !decision.allowed {
                revoked.push((text.clone(), decision.to_string()));
            } else {
                if decision.qos < record.options.qos.as_u8() {
                    record.options.qos = QoS::from_u8(decision.qos).unwrap_or(QoS::AtMostOnce);
                }
                kept.push((record.clone(), !decision.carve_outs.is_empty()));
            }
        }
        session.retain_queued(&mut self.journal, |d| {
            acl.may_receive(d.message.topic.as_str())
        });
        let mut filters = Vec::with_capacity(revoked.len());
        for (text, reason) in revoked {
            if let Some(record) = session.subscriptions.remove(&text) {
                filters.push((record.filter, reason));
            }
        }
        for (record, checked) in kept {
            self.routing
                .index(key, &record.filter, record.options, record.id, checked);
        }
        self.touch(conn_id);
        for (filter, reason) in filters {
            self.routing.subscriptions = self.routing.subscriptions.saturating_sub(1);
            self.count_subscriptions(key, -1);
            self.stats.denied.subscriptions += 1;
            self.routing.unindex(key, &filter);
            self.record(
                conn_id,
                EventKind::SubscriptionRevoked,
                "subscribe",
                filter.as_str(),
                reason,
                now,
            );
        }
    }

    /// The state of the outgoing message `packet_id` names, if it is in flight.
    pub(super) fn inflight_state(
        &self,
        conn_id: ConnectionId,
        packet_id: PacketId,
    ) -> Option<OutState> {
        let conn = self.clients.conns.get(&conn_id)?;
        let pos = conn.session.inflight_position(packet_id)?;
        conn.session.inflight.get(pos).map(|i| i.state)
    }

    /// An acknowledgement of the wrong type for the message in flight under its identifier
    /// (a PUBREC or PUBCOMP for a QoS 1 message, a PUBACK for a QoS 2 one, a PUBCOMP before
    /// the PUBREL): the client and the server no longer agree on the exchange, a Protocol
    /// Error (§4.3.2, §4.3.3, §4.13) in every version.
    pub(super) fn wrong_acknowledgement(&mut self, conn_id: ConnectionId, why: &str, now: Instant) {
        self.expel(conn_id, ReasonCode::ProtocolError, why, now);
    }

    /// The exchange of the outgoing message `packet_id` is complete: its place in the window
    /// goes to the next message.
    pub(super) fn completed(&mut self, conn_id: ConnectionId, packet_id: PacketId, now: Instant) {
        if let Some(conn) = self.clients.conns.get_mut(&conn_id)
            && let Some(pos) = conn.session.inflight_position(packet_id)
        {
            conn.session.remove_inflight(&mut self.journal, pos);
        }
        self.pump(conn_id, now);
    }

    /// PUBACK: a QoS 1 message delivered.
    pub(super) fn handle_puback(
        &mut self,
        conn_id: ConnectionId,
        packet_id: PacketId,
        now: Instant,
    ) {
        match self.inflight_state(conn_id, packet_id) {
            Some(OutState::AwaitPubAck) => self.completed(conn_id, packet_id, now),
            Some(OutState::AwaitPubRec | OutState::AwaitPubComp) => {
                self.wrong_acknowledgement(conn_id, "PUBACK for a QoS 2 message", now);
            }
            // A late duplicate (the message was acknowledged already): nothing to do.
            None => {}
        }
    }

    /// PUBREC: a QoS 2 message received (or refused) by the client.
    pub(super) fn handle_pubrec(&mut self, conn_id: ConnectionId, rec: PubRec, now: Instant) {
        match self.inflight_state(conn_id, rec.packet_id) {
            Some(OutState::AwaitPubRec) => {
                let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                    return;
                };
                let pos = conn.session.inflight_position(rec.packet_id);
                if rec.reason_code.is_error() {
                    // The client refused the message: the exchange ends here (§4.3.3).
                    if let Some(p) = pos {
                        conn.session.remove_inflight(&mut self.journal, p);
                    }
                    self.pump(conn_id, now);
                } else {
                    if let Some(p) = pos {
                        conn.session.mark_released(&mut self.journal, p);
                    }
                    self.push(conn_id, Packet::PubRel(PubRel::new(rec.packet_id)));
                }
            }
            // A PUBREC sent again (ours was lost or is on its way): the PUBREL again.
            Some(OutState::AwaitPubComp) => {
                self.push(conn_id, Packet::PubRel(PubRel::new(rec.packet_id)));
            }
            Some(OutState::AwaitPubAck) => {
                self.wrong_acknowledgement(conn_id, "PUBREC for a QoS 1 message", now);
            }
            // A refusal of nothing ends nothing: a PUBREL only follows a PUBREC below 0x80
            // [MQTT-4.3.3-4].
            None if rec.reason_code.is_error() => {}
            None => {
                let Some(conn) = self.clients.conns.get(&conn_id) else {
                    return;
                };
                // 5.0 answers an identifier it does not know with 0x92 (§3.6.2.1); 3.1.1
                // has only the plain PUBREL.
                let mut rel = PubRel::new(rec.packet_id);
                if conn.is_v5() {
                    rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.push(conn_id, Packet::PubRel(rel));
            }
        }
    }

    /// PUBREL of a QoS 2 message from the client: answered with PUBCOMP.
    pub(super) fn handle_pubrel(&mut self, conn_id: ConnectionId, packet_id: PacketId) {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let known = conn.session.qos2_release(&mut self.journal, packet_id);
        let mut comp = PubComp::new(packet_id);
        if !known && conn.is_v5() {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.push(conn_id, Packet::PubComp(comp));
    }

    /// PUBCOMP: a QoS 2 message's exchange is complete.
    pub(super) fn handle_pubcomp(
        &mut self,
        conn_id: ConnectionId,
        packet_id: PacketId,
        now: Instant,
    ) {
        match self.inflight_state(conn_id, packet_id) {
            Some(OutState::AwaitPubComp) => self.completed(conn_id, packet_id, now),
            Some(OutState::AwaitPubAck) => {
                self.wrong_acknowledgement(conn_id, "PUBCOMP for a QoS 1 message", now);
            }
            Some(OutState::AwaitPubRec) => {
                self.wrong_acknowledgement(conn_id, "PUBCOMP before PUBREC and PUBREL", now);
            }
            // A late duplicate of a PUBCOMP already received: nothing to do.
            None => {}
        }
    }

    /// SUBSCRIBE: each filter checked (limits, ACL, quotas), indexed, answered in one SUBACK,
    /// then the retained messages it asks for.
    pub(super) fn handle_subscribe(
        &mut self,
        conn_id: ConnectionId,
        subscribe: Subscribe,
        now: Instant,
    ) {
        if subscribe.properties.user_properties.len() > self.config.packets.max_user_properties {
            return self.expel(
                conn_id,
                ReasonCode::QuotaExceeded,
                "too many user properties",
                now,
            );
        }
        let Some(conn) = self.clients.conns.get(&conn_id) else {
            return;
        };
        let session_key = conn.session.key;
        let id = subscribe.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained_for = Vec::new();
        let mut denied = Vec::new();
        for sub in subscribe.subscriptions {
            let text: Box<str> = sub.filter.as_str().into();
            let decision = self
                .clients
                .conns
                .get(&conn_id)
                .and_then(|c| c.authz.acl())
                .map(|acl| acl.check_subscribe(sub.filter.match_filter(), sub.options.qos.as_u8()));
            let code = if !self.config.topic_fits(sub.filter.as_str()) {
                ReasonCode::TopicFilterInvalid
            } else if let Some(d) = decision.as_ref().filter(|d| !d.allowed) {
                self.stats.denied.subscriptions += 1;
                denied.push((text, d.to_string()));
                ReasonCode::NotAuthorized
            } else {
                let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                    return;
                };
                let existed = conn.session.subscriptions.contains_key(&text);
                let per_user = self.config.per_user.max_subscriptions_per_user;
                let user_full = per_user > 0
                    && self
                        .clients
                        .owners
                        .get(&session_key)
                        .and_then(Option::as_deref)
                        .is_some_and(|u| self.quotas.subscriptions_of(u) >= per_user);
                if !existed
                    && (conn.session.subscriptions.len()
                        >= self.config.sessions.max_subscriptions_per_session
                        || user_full)
                {
                    ReasonCode::QuotaExceeded
                } else {
                    let mut options = sub.options;
                    if let Some(d) = &decision {
                        options.qos = QoS::from_u8(d.qos).unwrap_or(QoS::AtMostOnce);
                    }
                    conn.session.subscriptions.insert(
                        text,
                        SubscriptionRecord {
                            filter: sub.filter.clone(),
                            options,
                            id,
                        },
                    );
                    if !existed {
                        self.routing.subscriptions += 1;
                        self.count_subscriptions(session_key, 1);
                    }
                    let checked = decision.as_ref().is_some_and(|d| !d.carve_outs.is_empty());
                    self.routing
                        .index(session_key, &sub.filter, options, id, checked);
                    let send = match options.retain_handling {
                        RetainHandling::SendOnSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                    // Retained messages are not sent for shared subscriptions (§4.8.2).
                    if send && !sub.filter.is_shared() {
                        retained_for.push((sub.filter, options.qos, id));
                    }
                    match options.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                    }
                }
            };
            codes.push(code);
        }
        let failed = codes.iter().any(|c| c.is_error());
        let properties = if failed {
            self.ack_properties(
                conn_id,
                ReasonCode::UnspecifiedError,
                "a filter was refused",
            )
        } else {
            AckProperties::default()
        };
        self.push(
            conn_id,
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                properties,
                reason_codes: codes,
            }),
        );
        for (filter, reason) in denied {
            self.record(
                conn_id,
                EventKind::AclDenied,
                "subscribe",
                &filter,
                reason,
                now,
            );
        }
        for (filter, qos, id) in retained_for {
            self.send_retained(session_key, &filter, qos, id, now);
        }
    }

    /// UNSUBSCRIBE: each filter removed, answered in one UNSUBACK.
    pub(super) fn handle_unsubscribe(&mut self, conn_id: ConnectionId, unsubscribe: Unsubscribe) {
        let mut codes = Vec::with_capacity(unsubscribe.filters.len());
        for filter in unsubscribe.filters {
            let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                return;
            };
            let key = conn.session.key;
            let removed = conn.session.subscriptions.remove(filter.as_str());
            codes.push(if removed.is_some() {
                self.routing.subscriptions = self.routing.subscriptions.saturating_sub(1);
                self.count_subscriptions(key, -1);
                self.routing.unindex(key, &filter);
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.push(
            conn_id,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: AckProperties::default(),
                reason_codes: codes,
            }),
        );
    }
}
