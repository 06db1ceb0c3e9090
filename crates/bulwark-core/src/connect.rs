//! The checks of a CONNECT that need nothing but the packet and the settings, and the
//! CONNACK that accepts or refuses it: small pure functions, called by
//! [`crate::Broker::handle_authenticated_connect`] in this order (which decides the reason
//! code when several apply).

use std::num::NonZeroU16;
use std::sync::Arc;

use bulwark_acl::Principal;
use bulwark_proto::{ConnAck, Connect, Encoder, MqttString, Packet, ProtocolVersion, ReasonCode};
use bytes::Bytes;

use crate::config::BrokerConfig;

/// The result of an enhanced authentication exchange (MQTT 5 AUTH) that the caller ran before
/// handing the CONNECT over: the CONNACK names the method and carries the final data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectAuth {
    /// The Authentication Method the exchange used.
    pub method: Option<MqttString>,
    /// The server's last Authentication Data, if the method has one.
    pub data: Option<Bytes>,
    /// Who the client was authenticated as, for the ACL (`None`: an anonymous client with
    /// nothing known of it).
    pub principal: Option<Arc<Principal>>,
}

/// Why a CONNECT is refused: the CONNACK's reason code, and the reason string (5.0).
pub(crate) type Refusal = (ReasonCode, &'static str);

/// What the checks of a CONNECT decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The client identifier it gave; `None`: it gave none, one is assigned.
    pub(crate) client_id: Option<Arc<str>>,
    /// The keep alive the CONNACK imposes (5.0 only), if the client's is not allowed.
    pub(crate) server_keep_alive: Option<u16>,
    /// The Session Expiry Interval asked for (3.1.1: 0 with Clean Session, never without).
    pub(crate) requested_expiry: u32,
    /// What is granted of it.
    pub(crate) expiry: u32,
}

impl Checked {
    /// The keep alive the client must honour.
    pub(crate) fn keep_alive(&self, connect: &Connect) -> u16 {
        self.server_keep_alive.unwrap_or(connect.keep_alive)
    }
}

/// Checks a CONNECT against the settings; `enhanced`: the caller ran an enhanced
/// authentication exchange (so the CONNECT may name an Authentication Method).
pub(crate) fn check(
    config: &BrokerConfig,
    connect: &Connect,
    enhanced: bool,
) -> Result<Checked, Refusal> {
    let version = connect.protocol_version;
    if connect.properties.authentication_method.is_some() && !enhanced {
        return Err((
            ReasonCode::BadAuthenticationMethod,
            "enhanced authentication is not supported",
        ));
    }
    let will_props = connect
        .will
        .as_ref()
        .map_or(0, |w| w.properties.user_properties.len());
    if connect.properties.user_properties.len() > config.packets.max_user_properties
        || will_props > config.packets.max_user_properties
    {
        return Err((ReasonCode::QuotaExceeded, "too many user properties"));
    }
    let client_id = if connect.client_id.is_empty() {
        // [MQTT-3.1.3-8]: 3.1.1 allows a zero-length id only with Clean Session 1;
        // MQTT 3.1 requires 1 to 23 characters.
        if version == ProtocolVersion::V3_1 || (!version.is_v5() && !connect.clean_start) {
            return Err((
                ReasonCode::ClientIdentifierNotValid,
                "a zero-length client identifier needs Clean Session",
            ));
        }
        None
    } else if connect.client_id.as_str().len() > config.packets.max_client_id_length {
        return Err((
            ReasonCode::ClientIdentifierNotValid,
            "client identifier too long",
        ));
    } else {
        Some(Arc::from(connect.client_id.as_str()))
    };
    let mut server_keep_alive = None;
    if keep_alive_exceeds(config, connect.keep_alive) {
        if version.is_v5() {
            server_keep_alive = Some(config.sessions.max_keep_alive);
        } else {
            return Err((
                ReasonCode::ClientIdentifierNotValid,
                "keep alive above the maximum",
            ));
        }
    }
    if let Some(will) = &connect.will
        && !config.topic_fits(will.topic.as_str())
    {
        return Err((ReasonCode::TopicNameInvalid, "will topic too long"));
    }
    let requested_expiry = if version.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    Ok(Checked {
        client_id,
        server_keep_alive,
        requested_expiry,
        expiry: requested_expiry.min(config.sessions.max_session_expiry_interval),
    })
}

/// Whether `keep_alive` is more than the broker allows (0, none, counts as the most).
fn keep_alive_exceeds(config: &BrokerConfig, keep_alive: u16) -> bool {
    let max = config.sessions.max_keep_alive;
    keep_alive > max || (keep_alive == 0 && max < u16::MAX)
}

/// The user a session made by this CONNECT belongs to: the authenticated one when the caller
/// names a principal, the CONNECT's username only when it names none (no authentication
/// ran); `None`: an anonymous client.
pub(crate) fn owner(connect: &Connect, principal: Option<&Principal>) -> Option<Arc<str>> {
    match principal {
        Some(principal) => principal.username.clone(),
        None => connect.username.as_ref().map(|u| Arc::from(u.as_str())),
    }
}

/// The CONNACK refusing a connection with `code` (and, in 5.0, `why`).
pub(crate) fn refusal(version: ProtocolVersion, code: ReasonCode, why: &str) -> ConnAck {
    let mut connack = ConnAck::new(false, code);
    if version.is_v5() {
        connack.properties.reason_string = MqttString::new(why).ok();
    }
    connack
}

/// What a CONNACK accepting a connection says, besides the enhanced authentication's result.
pub(crate) struct ConnackFields<'a> {
    pub(crate) version: ProtocolVersion,
    pub(crate) expiry: u32,
    pub(crate) requested_expiry: u32,
    pub(crate) assigned: Option<&'a str>,
    pub(crate) server_keep_alive: Option<u16>,
    pub(crate) response_information: bool,
    pub(crate) client_id: &'a str,
}

/// The CONNACK accepting a connection, within the client's Maximum Packet Size: a
/// property is sent only where its value differs from what its absence means (§3.2.2.3),
/// and the optional Response Information goes first when room is short. `None` when even
/// that does not fit.
pub(crate) fn fitting_connack(
    config: &BrokerConfig,
    fields: &ConnackFields<'_>,
    method: Option<MqttString>,
    data: Option<Bytes>,
    encoder: &Encoder,
) -> Option<Box<ConnAck>> {
    let mut connack = Box::new(ConnAck::new(false, ReasonCode::Success));
    if !fields.version.is_v5() {
        return Some(connack);
    }
    let p = &mut connack.properties;
    if fields.expiry != fields.requested_expiry {
        p.session_expiry_interval = Some(fields.expiry);
    }
    // Absent: 65,535, no limit, 0, and "available" for the four capabilities, which
    // this broker always has.
    p.receive_maximum =
        NonZeroU16::new(config.sessions.receive_maximum).filter(|m| m.get() < u16::MAX);
    p.maximum_packet_size = std::num::NonZeroU32::new(config.packets.max_packet_size)
        .filter(|m| m.get() < bulwark_proto::PROTOCOL_MAX_PACKET_SIZE);
    p.topic_alias_maximum = Some(config.packets.topic_alias_maximum).filter(|m| *m > 0);
    p.assigned_client_identifier = fields.assigned.and_then(|id| MqttString::new(id).ok());
    p.server_keep_alive = fields.server_keep_alive;
    p.authentication_method = method;
    p.authentication_data = data;
    if fields.response_information {
        p.response_information = config
            .response_information_prefix
            .as_ref()
            .and_then(|prefix| MqttString::new(&format!("{prefix}{}", fields.client_id)).ok());
    }
    let mut packet = Packet::ConnAck(connack);
    if !encoder.fits(&packet) {
        packet.strip_diagnostics();
        if let Packet::ConnAck(ack) = &mut packet {
            ack.properties.response_information = None;
        }
    }
    match packet {
        Packet::ConnAck(ack) if encoder.fits(&*ack) => Some(ack),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::config::{PacketLimits, SessionLimits};
    use bulwark_proto::ClientId;

    fn connect(version: ProtocolVersion, id: &str) -> Connect {
        Connect::new(version, ClientId::new(id).unwrap())
    }

    fn config() -> BrokerConfig {
        BrokerConfig {
            sessions: SessionLimits {
                max_keep_alive: 100,
                max_session_expiry_interval: 1000,
                ..SessionLimits::default()
            },
            packets: PacketLimits {
                max_client_id_length: 8,
                ..PacketLimits::default()
            },
            ..BrokerConfig::default()
        }
    }

    fn refused(connect: &Connect) -> Option<ReasonCode> {
        check(&config(), connect, false).err().map(|(code, _)| code)
    }

    #[test]
    fn client_identifiers_are_given_assigned_or_refused() {
        let c = check(&config(), &connect(ProtocolVersion::V5, "abc"), false).unwrap();
        assert_eq!(c.client_id.as_deref(), Some("abc"));
        // Empty: assigned in 5.0 and in 3.1.1 with Clean Session.
        assert_eq!(
            check(&config(), &connect(ProtocolVersion::V5, ""), false)
                .unwrap()
                .client_id,
            None
        );
        assert_eq!(
            check(&config(), &connect(ProtocolVersion::V3_1_1, ""), false)
                .unwrap()
                .client_id,
            None
        );
        let mut keep = connect(ProtocolVersion::V3_1_1, "");
        keep.clean_start = false;
        assert_eq!(refused(&keep), Some(ReasonCode::ClientIdentifierNotValid));
        assert_eq!(
            refused(&connect(ProtocolVersion::V3_1, "")),
            Some(ReasonCode::ClientIdentifierNotValid)
        );
        assert_eq!(
            refused(&connect(ProtocolVersion::V5, "123456789")),
            Some(ReasonCode::ClientIdentifierNotValid)
        );
    }

    #[test]
    fn a_keep_alive_over_the_maximum_is_imposed_in_5_0_and_refused_before() {
        let mut c = connect(ProtocolVersion::V5, "a");
        c.keep_alive = 50;
        let checked = check(&config(), &c, false).unwrap();
        assert_eq!(
            (checked.server_keep_alive, checked.keep_alive(&c)),
            (None, 50)
        );
        for over in [101, 0] {
            c.keep_alive = over;
            let checked = check(&config(), &c, false).unwrap();
            assert_eq!(
                (checked.server_keep_alive, checked.keep_alive(&c)),
                (Some(100), 100)
            );
        }
        let mut old = connect(ProtocolVersion::V3_1_1, "a");
        old.keep_alive = 101;
        assert_eq!(refused(&old), Some(ReasonCode::ClientIdentifierNotValid));
    }

    #[test]
    fn session_expiry_is_asked_and_granted_by_version() {
        let mut c = connect(ProtocolVersion::V5, "a");
        c.properties.session_expiry_interval = Some(5000);
        let checked = check(&config(), &c, false).unwrap();
        assert_eq!((checked.requested_expiry, checked.expiry), (5000, 1000));
        let mut old = connect(ProtocolVersion::V3_1_1, "a");
        assert_eq!(check(&config(), &old, false).unwrap().requested_expiry, 0);
        old.clean_start = false;
        let checked = check(&config(), &old, false).unwrap();
        assert_eq!((checked.requested_expiry, checked.expiry), (u32::MAX, 1000));
    }

    #[test]
    fn an_authentication_method_needs_an_exchange() {
        let mut c = connect(ProtocolVersion::V5, "a");
        c.properties.authentication_method = MqttString::new("SCRAM-SHA-256").ok();
        assert_eq!(refused(&c), Some(ReasonCode::BadAuthenticationMethod));
        assert!(check(&config(), &c, true).is_ok());
    }

    #[test]
    fn the_owner_is_the_principal_s_user_when_there_is_one() {
        let mut c = connect(ProtocolVersion::V5, "a");
        c.username = MqttString::new("from-connect").ok();
        assert_eq!(owner(&c, None).as_deref(), Some("from-connect"));
        let alice = Principal {
            username: Some("alice".into()),
            ..Principal::default()
        };
        assert_eq!(owner(&c, Some(&alice)).as_deref(), Some("alice"));
        assert_eq!(owner(&c, Some(&Principal::default())), None);
    }

    #[test]
    fn the_accepting_connack_drops_response_information_before_it_does_not_fit() {
        let config = BrokerConfig {
            response_information_prefix: Some("reply/".to_owned()),
            ..BrokerConfig::default()
        };
        let fields = ConnackFields {
            version: ProtocolVersion::V5,
            expiry: 10,
            requested_expiry: 10,
            assigned: None,
            server_keep_alive: None,
            response_information: true,
            client_id: "client",
        };
        let roomy = Encoder::new(ProtocolVersion::V5);
        let ack = fitting_connack(&config, &fields, None, None, &roomy).unwrap();
        assert_eq!(
            ack.properties
                .response_information
                .as_ref()
                .map(MqttString::as_str),
            Some("reply/client")
        );
        // Equal to what was asked: not sent.
        assert_eq!(ack.properties.session_expiry_interval, None);
        let mut tight = Encoder::new(ProtocolVersion::V5);
        let bare = fitting_connack(
            &config,
            &ConnackFields {
                response_information: false,
                ..fields
            },
            None,
            None,
            &roomy,
        )
        .unwrap();
        let size = u32::try_from(roomy.encoded_len(&Packet::ConnAck(bare)).unwrap()).unwrap();
        tight.set_max_packet_size(size);
        let ack = fitting_connack(&config, &fields, None, None, &tight).unwrap();
        assert_eq!(ack.properties.response_information, None);
        tight.set_max_packet_size(2);
        assert!(fitting_connack(&config, &fields, None, None, &tight).is_none());
        // 3.1.1: nothing but the code.
        let old = ConnackFields {
            version: ProtocolVersion::V3_1_1,
            ..fields
        };
        assert_eq!(
            *fitting_connack(&config, &old, None, None, &roomy).unwrap(),
            ConnAck::new(false, ReasonCode::Success)
        );
    }
}
