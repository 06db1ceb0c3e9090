//! The life of a session around its connections: the CONNECT that opens one (checked by
//! `crate::connect`), the end of a session, and its will.

use super::*;

impl Broker {
    /// Refuses a CONNECT with `code` (and `why`, in 5.0), then closes.
    pub(super) fn refuse(
        &mut self,
        conn: ConnectionId,
        version: ProtocolVersion,
        code: ReasonCode,
        why: &str,
    ) {
        let connack = connect::refusal(version, code, why);
        self.push(conn, Packet::ConnAck(Box::new(connack)));
        self.outputs.push_back((conn, Output::Close));
    }

    /// Handles the CONNECT that opened connection `conn`, whose credentials the caller has
    /// already checked; `auth` is what the CONNACK carries back for enhanced authentication.
    pub fn handle_authenticated_connect(
        &mut self,
        conn: ConnectionId,
        connect: Connect,
        auth: ConnectAuth,
        now: Instant,
    ) {
        let version = connect.protocol_version;
        let principal = auth.principal.clone().unwrap_or_default();
        if self.shutting_down {
            return self.refuse(
                conn,
                version,
                ReasonCode::ServerUnavailable,
                "shutting down",
            );
        }
        let checked = match connect::check(&self.config, &connect, auth.method.is_some()) {
            Ok(checked) => checked,
            Err((code, why)) => return self.refuse(conn, version, code, why),
        };
        let keep_alive = checked.keep_alive(&connect);
        let Checked {
            client_id,
            server_keep_alive,
            requested_expiry,
            expiry,
        } = checked;
        let mut assigned = None;
        let client_id = match client_id {
            Some(id) => id,
            None => {
                let id = self.clients.assign_client_id();
                assigned = Some(id.clone());
                id
            }
        };
        // A client identifier, live or with a stored session, belongs to the user who made it:
        // another user neither takes the connection over nor resumes the session. The user is
        // the authenticated one; without a principal (no authentication ran), the CONNECT's.
        let owner = connect::owner(&connect, auth.principal.as_deref());
        if let Some(key) = self.clients.client_ids.get(&client_id)
            && self.clients.owners.get(key).is_some_and(|o| *o != owner)
        {
            self.push_event(AuthzEvent {
                kind: EventKind::ClientIdRefused,
                client_id: client_id.clone(),
                principal,
                action: "connect",
                topic: "".into(),
                reason: "the client identifier belongs to another user's session".to_owned(),
            });
            return self.refuse(
                conn,
                version,
                ReasonCode::NotAuthorized,
                "the client identifier belongs to another user",
            );
        }
        let authz = ConnAuthz::new(self.acl.as_deref(), principal.clone(), &client_id);
        if let (Some(will), Some(acl)) = (&connect.will, authz.acl()) {
            let (topic, qos, retain) = (will.topic.as_str(), will.qos.as_u8(), will.retain);
            if !acl.may_publish(topic, qos, retain) {
                self.stats.denied.publishes += 1;
                self.push_event(AuthzEvent {
                    kind: EventKind::AclDenied,
                    client_id: client_id.clone(),
                    principal,
                    action: "will",
                    topic: topic.into(),
                    reason: acl.check_publish(topic, qos, retain).to_string(),
                });
                return self.refuse(
                    conn,
                    version,
                    ReasonCode::NotAuthorized,
                    "the will message is not authorized",
                );
            }
        }
        let mut encoder = Encoder::new(version);
        if let Some(max) = connect.properties.maximum_packet_size {
            encoder.set_max_packet_size(max.get());
        }
        // Checked before anything changes (a takeover included): a client whose Maximum
        // Packet Size leaves no room for the CONNACK cannot use the connection [MQTT-3.1.2-25].
        let connack = ConnackFields {
            version,
            expiry,
            requested_expiry,
            assigned: assigned.as_deref(),
            server_keep_alive,
            response_information: connect.properties.request_response_information == Some(true),
            client_id: &client_id,
        };
        let Some(mut connack) =
            connect::fitting_connack(&self.config, &connack, auth.method, auth.data, &encoder)
        else {
            return self.refuse(
                conn,
                version,
                ReasonCode::PacketTooLarge,
                "the CONNACK does not fit the client's Maximum Packet Size",
            );
        };
        // Takeover: the old connection goes first, its will and session handled as a loss.
        if let Some(&key) = self.clients.client_ids.get(&client_id)
            && let Some(&old) = self.clients.online.get(&key)
        {
            self.disconnect(
                old,
                ReasonCode::SessionTakenOver,
                "another connection took over",
                now,
            );
        }
        let existing = self
            .clients
            .client_ids
            .get(&client_id)
            .copied()
            .and_then(|key| self.clients.parked.take(key));
        let (mut session, present) = match existing {
            Some(session) if !connect.clean_start => {
                self.wills.cancel(session.key);
                (session, true)
            }
            Some(session) => {
                self.end_session(session, now);
                (self.clients.new_session(client_id.clone(), expiry), false)
            }
            None => (self.clients.new_session(client_id.clone(), expiry), false),
        };
        self.clients.owners.insert(session.key, owner);
        session.expiry_interval = expiry;
        session.parked_at = None;
        if self.journal.is_on() {
            if expiry > 0 {
                if !session.is_journaled() {
                    session.start_journal(&mut self.journal);
                }
            } else if session.is_journaled() {
                // No longer persistent: it ends with this connection, and a restart before
                // that must not bring it back.
                self.journal.push(StoreOp::SessionEnded {
                    client_id: session.client_id.clone(),
                });
                session.stop_journal();
            }
        }

        let client_window = connect
            .properties
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get);
        let send_window = usize::from(
            client_window
                .min(self.config.sessions.max_inflight_out)
                .max(1),
        );
        let alias_max_out = if version.is_v5() && self.config.packets.outbound_topic_aliases {
            connect.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        };
        let key = session.key;
        let state = Conn {
            session,
            version,
            encoder,
            send_window,
            alias_max_out,
            aliases: None,
            problem_information: connect.properties.request_problem_information != Some(false),
            will: connect.will.map(Box::new),
            connect_expiry_was_zero: requested_expiry == 0,
            authz,
        };
        self.clients.conns.insert(conn, Box::new(state));
        self.touch(conn);
        if present {
            // The stored session may hold what this identity (or the rules since) no longer
            // allows.
            self.prune(conn, now);
        }
        self.clients.online.insert(key, conn);
        self.stats.connections.total += 1;

        connack.session_present = present;
        self.outputs.push_back((
            conn,
            Output::Accepted(Box::new(Accepted {
                keep_alive,
                assigned_client_id: assigned,
            })),
        ));
        self.push(conn, Packet::ConnAck(connack));
        self.resume(conn, now);
    }

    /// Ends a session: its subscriptions go, its will is sent, its shared messages move.
    pub(super) fn end_session(&mut self, mut session: Session, now: Instant) {
        let key = session.key;
        if session.is_journaled() {
            self.journal.push(StoreOp::SessionEnded {
                client_id: session.client_id.clone(),
            });
            session.stop_journal();
        }
        let records: Vec<TopicFilter> = session
            .subscriptions
            .drain()
            .map(|(_, record)| record.filter)
            .collect();
        self.routing.subscriptions = self.routing.subscriptions.saturating_sub(records.len());
        self.count_subscriptions(key, -isize::try_from(records.len()).unwrap_or(isize::MAX));
        for filter in &records {
            self.routing.unindex(key, filter);
        }
        if self.clients.client_ids.get(&session.client_id) == Some(&key) {
            self.clients.client_ids.remove(&session.client_id);
        }
        // Drops not reported yet are reported now: the session's record goes.
        if let Some((topic, count)) = self.reports.session_ended(key) {
            self.overflow_event(key, None, Some(session.client_id.clone()), &topic, count);
        }
        // The will goes first: a retained will counts for the session's user.
        if let Some(pending) = self.wills.cancel(key) {
            self.publish_will(key, pending, now);
        }
        self.clients.owners.remove(&key);
        for delivery in take_shared(&mut self.journal, &mut session, true) {
            self.redeliver_shared(delivery, key, now);
        }
    }

    /// Records a parked persistent session again (its will was sent).
    pub(super) fn save_parked(&mut self, key: SessionKey) {
        if let Some(session) = self.clients.parked.get(key)
            && session.is_journaled()
        {
            let record = self.record_of(session, session.parked_at, None);
            self.journal.push(StoreOp::Session(Box::new(record)));
        }
    }

    /// Publishes every will due at `now`.
    pub(super) fn fire_due_wills(&mut self, now: Instant) {
        while let Some((key, pending)) = self.wills.take_due(now) {
            self.publish_will(key, pending, now);
            self.save_parked(key);
        }
    }

    /// Publishes a will, if the ACL in force and the retained quotas still allow it.
    pub(super) fn publish_will(&mut self, key: SessionKey, pending: PendingWill, now: Instant) {
        let will = *pending.will;
        // Checked again: the rules may have changed since the CONNECT.
        if let Some(rules) = &self.acl {
            let acl = rules.resolve(&pending.principal, &pending.client_id);
            let (topic, qos, retain) = (will.topic.as_str(), will.qos.as_u8(), will.retain);
            if !acl.may_publish(topic, qos, retain) {
                self.stats.denied.publishes += 1;
                let reason = acl.check_publish(topic, qos, retain).to_string();
                self.push_event(AuthzEvent {
                    kind: EventKind::AclDenied,
                    client_id: pending.client_id,
                    principal: pending.principal,
                    action: "will",
                    topic: topic.into(),
                    reason,
                });
                return;
            }
        }
        if will.retain && !will.payload.is_empty() {
            let owner = self.clients.owner_of(key);
            let cost = will.payload.len() + will.topic.as_str().len();
            if self
                .retained_refusal(will.topic.as_str(), cost, owner.as_ref())
                .is_some()
            {
                self.stats.retained_refused += 1;
                return;
            }
        }
        self.publish_message(Arc::new(will_message(will, key, now)), now);
    }
}

/// Takes the deliveries that came through shared subscriptions out of a session: queued
/// ones, and in-flight ones not yet received (`all`: also those awaiting PUBREC).
pub(super) fn take_shared(
    journal: &mut Journal,
    session: &mut Session,
    all: bool,
) -> Vec<Delivery> {
    let mut moved = session.take_queued(journal, |d| d.group.is_some() && d.qos != QoS::AtMostOnce);
    let mut pos = 0;
    while let Some(inflight) = session.inflight.get(pos) {
        let movable = inflight.delivery.group.is_some()
            && match inflight.state {
                OutState::AwaitPubAck => true,
                OutState::AwaitPubRec => all,
                OutState::AwaitPubComp => false,
            };
        if movable {
            if let Some(mut inflight) = session.remove_inflight(journal, pos) {
                // It leaves this session: the next one numbers it anew.
                inflight.delivery.seq = 0;
                moved.push(inflight.delivery);
            }
        } else {
            pos += 1;
        }
    }
    moved
}
