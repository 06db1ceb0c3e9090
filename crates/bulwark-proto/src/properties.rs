//! MQTT 5.0 properties (§2.2.2), typed per packet.
//!
//! Each packet has its own struct holding exactly the properties the specification allows in
//! it; a property identifier that is not allowed is a Malformed Packet, a property that may
//! appear once appearing twice is a Protocol Error. User properties keep their order and
//! duplicates.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{Reader, put_binary, put_string, put_varint, varint_len};
use crate::{
    DecodeError, EncodeError, MqttString, PayloadFormat, QoS, SubscriptionId, TopicName, VARINT_MAX,
};

/// One User Property: a name and value pair. A packet may carry any number, in order, with
/// repeated names ([MQTT-3.3.2-17], §3.1.2.11.8).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserProperty {
    /// The name.
    pub name: MqttString,
    /// The value.
    pub value: MqttString,
}

impl UserProperty {
    /// A pair from two validated strings.
    pub fn new(name: MqttString, value: MqttString) -> Self {
        Self { name, value }
    }
}

/// A property as read off the wire, before the packet decides whether it may carry it.
#[derive(Debug)]
pub(crate) enum Prop {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(MqttString),
    ResponseTopic(MqttString),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(MqttString),
    ServerKeepAlive(u16),
    AuthenticationMethod(MqttString),
    AuthenticationData(Bytes),
    RequestProblemInformation(u8),
    WillDelayInterval(u32),
    RequestResponseInformation(u8),
    ResponseInformation(MqttString),
    ServerReference(MqttString),
    ReasonString(MqttString),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(u8),
    RetainAvailable(u8),
    UserProperty(UserProperty),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(u8),
    SubscriptionIdentifierAvailable(u8),
    SharedSubscriptionAvailable(u8),
}

impl Prop {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let id = r.varint("property identifier")?;
        Ok(match id {
            0x01 => Self::PayloadFormatIndicator(r.u8("Payload Format Indicator")?),
            0x02 => Self::MessageExpiryInterval(r.u32("Message Expiry Interval")?),
            0x03 => Self::ContentType(r.string("Content Type")?),
            0x08 => Self::ResponseTopic(r.string("Response Topic")?),
            0x09 => Self::CorrelationData(r.binary("Correlation Data")?),
            0x0B => Self::SubscriptionIdentifier(r.varint("Subscription Identifier")?),
            0x11 => Self::SessionExpiryInterval(r.u32("Session Expiry Interval")?),
            0x12 => Self::AssignedClientIdentifier(r.string("Assigned Client Identifier")?),
            0x13 => Self::ServerKeepAlive(r.u16("Server Keep Alive")?),
            0x15 => Self::AuthenticationMethod(r.string("Authentication Method")?),
            0x16 => Self::AuthenticationData(r.binary("Authentication Data")?),
            0x17 => Self::RequestProblemInformation(r.u8("Request Problem Information")?),
            0x18 => Self::WillDelayInterval(r.u32("Will Delay Interval")?),
            0x19 => Self::RequestResponseInformation(r.u8("Request Response Information")?),
            0x1A => Self::ResponseInformation(r.string("Response Information")?),
            0x1C => Self::ServerReference(r.string("Server Reference")?),
            0x1F => Self::ReasonString(r.string("Reason String")?),
            0x21 => Self::ReceiveMaximum(r.u16("Receive Maximum")?),
            0x22 => Self::TopicAliasMaximum(r.u16("Topic Alias Maximum")?),
            0x23 => Self::TopicAlias(r.u16("Topic Alias")?),
            0x24 => Self::MaximumQoS(r.u8("Maximum QoS")?),
            0x25 => Self::RetainAvailable(r.u8("Retain Available")?),
            0x26 => Self::UserProperty(UserProperty {
                name: r.string("User Property name")?,
                value: r.string("User Property value")?,
            }),
            0x27 => Self::MaximumPacketSize(r.u32("Maximum Packet Size")?),
            0x28 => Self::WildcardSubscriptionAvailable(r.u8("Wildcard Subscription Available")?),
            0x29 => {
                Self::SubscriptionIdentifierAvailable(r.u8("Subscription Identifier Available")?)
            }
            0x2A => Self::SharedSubscriptionAvailable(r.u8("Shared Subscription Available")?),
            _ => {
                return Err(DecodeError::malformed(
                    "MQTT-5 §2.2.2.2",
                    "unknown property identifier",
                ));
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Self::PayloadFormatIndicator(_) => "Payload Format Indicator",
            Self::MessageExpiryInterval(_) => "Message Expiry Interval",
            Self::ContentType(_) => "Content Type",
            Self::ResponseTopic(_) => "Response Topic",
            Self::CorrelationData(_) => "Correlation Data",
            Self::SubscriptionIdentifier(_) => "Subscription Identifier",
            Self::SessionExpiryInterval(_) => "Session Expiry Interval",
            Self::AssignedClientIdentifier(_) => "Assigned Client Identifier",
            Self::ServerKeepAlive(_) => "Server Keep Alive",
            Self::AuthenticationMethod(_) => "Authentication Method",
            Self::AuthenticationData(_) => "Authentication Data",
            Self::RequestProblemInformation(_) => "Request Problem Information",
            Self::WillDelayInterval(_) => "Will Delay Interval",
            Self::RequestResponseInformation(_) => "Request Response Information",
            Self::ResponseInformation(_) => "Response Information",
            Self::ServerReference(_) => "Server Reference",
            Self::ReasonString(_) => "Reason String",
            Self::ReceiveMaximum(_) => "Receive Maximum",
            Self::TopicAliasMaximum(_) => "Topic Alias Maximum",
            Self::TopicAlias(_) => "Topic Alias",
            Self::MaximumQoS(_) => "Maximum QoS",
            Self::RetainAvailable(_) => "Retain Available",
            Self::UserProperty(_) => "User Property",
            Self::MaximumPacketSize(_) => "Maximum Packet Size",
            Self::WildcardSubscriptionAvailable(_) => "Wildcard Subscription Available",
            Self::SubscriptionIdentifierAvailable(_) => "Subscription Identifier Available",
            Self::SharedSubscriptionAvailable(_) => "Shared Subscription Available",
        }
    }
}

/// A property as written: identifier and borrowed value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PropRef<'a> {
    Byte(u8, u8),
    Two(u8, u16),
    Four(u8, u32),
    Varint(u8, u32),
    Str(u8, &'a MqttString),
    Bin(u8, &'a [u8]),
    Pair(&'a UserProperty),
}

impl PropRef<'_> {
    fn len(self) -> usize {
        1 + match self {
            Self::Byte(..) => 1,
            Self::Two(..) => 2,
            Self::Four(..) => 4,
            Self::Varint(_, value) => varint_len(value),
            Self::Str(_, text) => 2 + text.len(),
            Self::Bin(_, data) => 2 + data.len(),
            Self::Pair(pair) => 4 + pair.name.len() + pair.value.len(),
        }
    }

    fn write(self, buf: &mut BytesMut) {
        match self {
            Self::Byte(id, value) => {
                buf.put_u8(id);
                buf.put_u8(value);
            }
            Self::Two(id, value) => {
                buf.put_u8(id);
                buf.put_u16(value);
            }
            Self::Four(id, value) => {
                buf.put_u8(id);
                buf.put_u32(value);
            }
            Self::Varint(id, value) => {
                buf.put_u8(id);
                put_varint(buf, value);
            }
            Self::Str(id, text) => {
                buf.put_u8(id);
                put_string(buf, text);
            }
            Self::Bin(id, data) => {
                buf.put_u8(id);
                put_binary(buf, data);
            }
            Self::Pair(pair) => {
                buf.put_u8(0x26);
                put_string(buf, &pair.name);
                put_string(buf, &pair.value);
            }
        }
    }
}

/// The per-packet property sets.
pub(crate) trait PropertySet: Default {
    /// The packet name, for errors.
    const PACKET: &'static str;
    /// Takes one property read off the wire, or says it is not allowed here.
    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError>;
    /// Calls `f` with every property to write, in identifier order.
    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>));
    /// Rules across properties, checked once all are read.
    fn check(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// Reads a Property Length and the properties it covers.
#[inline]
pub(crate) fn decode<P: PropertySet>(r: &mut Reader) -> Result<P, DecodeError> {
    let len = r.varint("property length")?;
    if len == 0 {
        // The common case on the hot path: nothing to read, nothing to check.
        return Ok(P::default());
    }
    let block = r.take(usize::try_from(len).unwrap_or(usize::MAX), "properties")?;
    let mut block = Reader::new(block);
    let mut set = P::default();
    while !block.is_empty() {
        set.apply(Prop::read(&mut block)?)?;
    }
    set.check()?;
    Ok(set)
}

/// Bytes of the properties, without the Property Length in front.
fn content_len<P: PropertySet>(set: &P) -> usize {
    let mut len = 0;
    set.visit(&mut |prop| len += prop.len());
    len
}

/// Bytes of the Property Length and the properties, or why they cannot be written: Binary Data
/// longer than its two-byte length can say (strings are bounded by construction), or more
/// properties than a Variable Byte Integer can count.
pub(crate) fn encoded_len<P: PropertySet>(set: &P) -> Result<usize, EncodeError> {
    let mut too_long = false;
    set.visit(&mut |prop| {
        if let PropRef::Bin(_, data) = prop {
            too_long |= data.len() > usize::from(u16::MAX);
        }
    });
    if too_long {
        return Err(EncodeError::Invalid(
            "binary property longer than 65,535 bytes",
        ));
    }
    let len = content_len(set);
    match u32::try_from(len) {
        Ok(count) if count <= VARINT_MAX => Ok(varint_len(count) + len),
        _ => Err(EncodeError::Invalid(
            "properties longer than a Variable Byte Integer counts",
        )),
    }
}

/// Writes the Property Length and the properties.
pub(crate) fn write<P: PropertySet>(set: &P, buf: &mut BytesMut) {
    let len = content_len(set);
    put_varint(buf, u32::try_from(len).unwrap_or(u32::MAX));
    set.visit(&mut |prop| prop.write(buf));
}

fn once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(value: u8, rule: &'static str, text: &'static str) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::protocol(rule, text)),
    }
}

fn payload_format(value: u8) -> Result<PayloadFormat, DecodeError> {
    payload_format_in(value, "MQTT-5 §3.3.2.3.2")
}

/// The Payload Format Indicator of a PUBLISH, or (with its own section as `rule`) of a will.
fn payload_format_in(value: u8, rule: &'static str) -> Result<PayloadFormat, DecodeError> {
    match value {
        0 => Ok(PayloadFormat::Unspecified),
        1 => Ok(PayloadFormat::Utf8),
        _ => Err(DecodeError::protocol(
            rule,
            "Payload Format Indicator is neither 0 nor 1",
        )),
    }
}

/// Receive Maximum, in CONNECT (§3.1.2.11.3) or CONNACK (§3.2.2.3.3): never 0.
fn receive_maximum(value: u16, rule: &'static str) -> Result<NonZeroU16, DecodeError> {
    NonZeroU16::new(value).ok_or(DecodeError::protocol(rule, "Receive Maximum is 0"))
}

/// Maximum Packet Size, in CONNECT (§3.1.2.11.4) or CONNACK (§3.2.2.3.6): never 0.
fn maximum_packet_size(value: u32, rule: &'static str) -> Result<NonZeroU32, DecodeError> {
    NonZeroU32::new(value).ok_or(DecodeError::protocol(rule, "Maximum Packet Size is 0"))
}

/// A Response Topic is a topic name ([MQTT-3.3.2-14] for its wildcards, §4.7 otherwise).
fn response_topic(text: MqttString) -> Result<TopicName, DecodeError> {
    if text.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
        return Err(DecodeError::malformed(
            "MQTT-3.3.2-14",
            "Response Topic contains a wildcard character",
        ));
    }
    TopicName::from_string(text)
}

fn auth_data_needs_method(method: bool, data: bool) -> Result<(), DecodeError> {
    if data && !method {
        return Err(DecodeError::protocol(
            "MQTT-5 §3.1.2.11.10",
            "Authentication Data without an Authentication Method",
        ));
    }
    Ok(())
}

fn not_allowed<P: PropertySet>(prop: &Prop) -> DecodeError {
    DecodeError::not_allowed(prop.name(), P::PACKET)
}

macro_rules! visit_opt {
    ($f:ident, $value:expr, $variant:ident, $id:literal) => {
        if let Some(value) = $value {
            $f(PropRef::$variant($id, value));
        }
    };
}

fn visit_users<'a>(users: &'a [UserProperty], f: &mut dyn FnMut(PropRef<'a>)) {
    for pair in users {
        f(PropRef::Pair(pair));
    }
}

/// CONNECT properties (§3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Seconds the session outlives the connection; 0 or absent: ends with it.
    pub session_expiry_interval: Option<u32>,
    /// How many QoS 1 and 2 publications the client processes at once.
    pub receive_maximum: Option<NonZeroU16>,
    /// The largest packet the client accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// The highest Topic Alias the client accepts from the server.
    pub topic_alias_maximum: Option<u16>,
    /// Asks the server for Response Information in CONNACK.
    pub request_response_information: Option<bool>,
    /// Whether the server may send Reason Strings and User Properties on failures.
    pub request_problem_information: Option<bool>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
    /// Name of the extended authentication method.
    pub authentication_method: Option<MqttString>,
    /// Method-specific authentication data.
    pub authentication_data: Option<Bytes>,
}

impl PropertySet for ConnectProperties {
    const PACKET: &'static str = "CONNECT";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::SessionExpiryInterval(v) => once(
                &mut self.session_expiry_interval,
                v,
                "Session Expiry Interval",
            ),
            Prop::ReceiveMaximum(v) => once(
                &mut self.receive_maximum,
                receive_maximum(v, "MQTT-5 §3.1.2.11.3")?,
                "Receive Maximum",
            ),
            Prop::MaximumPacketSize(v) => once(
                &mut self.maximum_packet_size,
                maximum_packet_size(v, "MQTT-5 §3.1.2.11.4")?,
                "Maximum Packet Size",
            ),
            Prop::TopicAliasMaximum(v) => {
                once(&mut self.topic_alias_maximum, v, "Topic Alias Maximum")
            }
            Prop::RequestResponseInformation(v) => once(
                &mut self.request_response_information,
                flag(
                    v,
                    "MQTT-5 §3.1.2.11.6",
                    "Request Response Information is neither 0 nor 1",
                )?,
                "Request Response Information",
            ),
            Prop::RequestProblemInformation(v) => once(
                &mut self.request_problem_information,
                flag(
                    v,
                    "MQTT-5 §3.1.2.11.7",
                    "Request Problem Information is neither 0 nor 1",
                )?,
                "Request Problem Information",
            ),
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            Prop::AuthenticationMethod(v) => {
                once(&mut self.authentication_method, v, "Authentication Method")
            }
            Prop::AuthenticationData(v) => {
                once(&mut self.authentication_data, v, "Authentication Data")
            }
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_opt!(f, self.session_expiry_interval, Four, 0x11);
        visit_opt!(f, self.authentication_method.as_ref(), Str, 0x15);
        visit_opt!(f, self.authentication_data.as_deref(), Bin, 0x16);
        visit_opt!(
            f,
            self.request_problem_information.map(u8::from),
            Byte,
            0x17
        );
        visit_opt!(
            f,
            self.request_response_information.map(u8::from),
            Byte,
            0x19
        );
        visit_opt!(f, self.receive_maximum.map(NonZeroU16::get), Two, 0x21);
        visit_opt!(f, self.topic_alias_maximum, Two, 0x22);
        visit_users(&self.user_properties, f);
        visit_opt!(f, self.maximum_packet_size.map(NonZeroU32::get), Four, 0x27);
    }

    fn check(&self) -> Result<(), DecodeError> {
        auth_data_needs_method(
            self.authentication_method.is_some(),
            self.authentication_data.is_some(),
        )
    }
}

/// Will properties, carried in CONNECT's payload (§3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Seconds the server waits after the connection is lost before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// Whether the will payload is UTF-8 text.
    pub payload_format_indicator: Option<PayloadFormat>,
    /// Lifetime of the will message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// MIME-like description of the payload.
    pub content_type: Option<MqttString>,
    /// Topic for a response to the will message.
    pub response_topic: Option<TopicName>,
    /// Data that ties a response to the request.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
}

impl PropertySet for WillProperties {
    const PACKET: &'static str = "the Will Properties";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::WillDelayInterval(v) => {
                once(&mut self.will_delay_interval, v, "Will Delay Interval")
            }
            Prop::PayloadFormatIndicator(v) => once(
                &mut self.payload_format_indicator,
                payload_format_in(v, "MQTT-5 §3.1.3.2.3")?,
                "Payload Format Indicator",
            ),
            Prop::MessageExpiryInterval(v) => once(
                &mut self.message_expiry_interval,
                v,
                "Message Expiry Interval",
            ),
            Prop::ContentType(v) => once(&mut self.content_type, v, "Content Type"),
            Prop::ResponseTopic(v) => once(
                &mut self.response_topic,
                response_topic(v)?,
                "Response Topic",
            ),
            Prop::CorrelationData(v) => once(&mut self.correlation_data, v, "Correlation Data"),
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_opt!(
            f,
            self.payload_format_indicator.map(|v| v as u8),
            Byte,
            0x01
        );
        visit_opt!(f, self.message_expiry_interval, Four, 0x02);
        visit_opt!(f, self.content_type.as_ref(), Str, 0x03);
        visit_opt!(
            f,
            self.response_topic.as_ref().map(TopicName::as_mqtt_str),
            Str,
            0x08
        );
        visit_opt!(f, self.correlation_data.as_deref(), Bin, 0x09);
        visit_opt!(f, self.will_delay_interval, Four, 0x18);
        visit_users(&self.user_properties, f);
    }
}

/// CONNACK properties (§3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// The session expiry the server uses, if it differs from the client's.
    pub session_expiry_interval: Option<u32>,
    /// How many QoS 1 and 2 publications the server processes at once.
    pub receive_maximum: Option<NonZeroU16>,
    /// The highest QoS the server supports: 0 or 1 (absent means 2).
    pub maximum_qos: Option<QoS>,
    /// Whether the server supports retained messages.
    pub retain_available: Option<bool>,
    /// The largest packet the server accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// The client identifier the server assigned to a client that sent an empty one.
    pub assigned_client_identifier: Option<MqttString>,
    /// The highest Topic Alias the server accepts from the client.
    pub topic_alias_maximum: Option<u16>,
    /// Human-readable diagnostics.
    pub reason_string: Option<MqttString>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
    /// Whether the server supports wildcard subscriptions.
    pub wildcard_subscription_available: Option<bool>,
    /// Whether the server supports Subscription Identifiers.
    pub subscription_identifiers_available: Option<bool>,
    /// Whether the server supports shared subscriptions.
    pub shared_subscription_available: Option<bool>,
    /// The keep alive the server imposes instead of the client's.
    pub server_keep_alive: Option<u16>,
    /// Basis for building response topics.
    pub response_information: Option<MqttString>,
    /// Another server the client may use.
    pub server_reference: Option<MqttString>,
    /// Name of the extended authentication method.
    pub authentication_method: Option<MqttString>,
    /// Method-specific authentication data.
    pub authentication_data: Option<Bytes>,
}

impl PropertySet for ConnAckProperties {
    const PACKET: &'static str = "CONNACK";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::SessionExpiryInterval(v) => once(
                &mut self.session_expiry_interval,
                v,
                "Session Expiry Interval",
            ),
            Prop::ReceiveMaximum(v) => once(
                &mut self.receive_maximum,
                receive_maximum(v, "MQTT-5 §3.2.2.3.3")?,
                "Receive Maximum",
            ),
            Prop::MaximumQoS(v) => {
                let qos = match v {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => {
                        return Err(DecodeError::protocol(
                            "MQTT-5 §3.2.2.3.4",
                            "Maximum QoS is neither 0 nor 1",
                        ));
                    }
                };
                once(&mut self.maximum_qos, qos, "Maximum QoS")
            }
            Prop::RetainAvailable(v) => once(
                &mut self.retain_available,
                flag(
                    v,
                    "MQTT-5 §3.2.2.3.5",
                    "Retain Available is neither 0 nor 1",
                )?,
                "Retain Available",
            ),
            Prop::MaximumPacketSize(v) => once(
                &mut self.maximum_packet_size,
                maximum_packet_size(v, "MQTT-5 §3.2.2.3.6")?,
                "Maximum Packet Size",
            ),
            Prop::AssignedClientIdentifier(v) => once(
                &mut self.assigned_client_identifier,
                v,
                "Assigned Client Identifier",
            ),
            Prop::TopicAliasMaximum(v) => {
                once(&mut self.topic_alias_maximum, v, "Topic Alias Maximum")
            }
            Prop::ReasonString(v) => once(&mut self.reason_string, v, "Reason String"),
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            Prop::WildcardSubscriptionAvailable(v) => once(
                &mut self.wildcard_subscription_available,
                flag(
                    v,
                    "MQTT-5 §3.2.2.3.11",
                    "Wildcard Subscription Available is neither 0 nor 1",
                )?,
                "Wildcard Subscription Available",
            ),
            Prop::SubscriptionIdentifierAvailable(v) => once(
                &mut self.subscription_identifiers_available,
                flag(
                    v,
                    "MQTT-5 §3.2.2.3.12",
                    "Subscription Identifiers Available is neither 0 nor 1",
                )?,
                "Subscription Identifier Available",
            ),
            Prop::SharedSubscriptionAvailable(v) => once(
                &mut self.shared_subscription_available,
                flag(
                    v,
                    "MQTT-5 §3.2.2.3.13",
                    "Shared Subscription Available is neither 0 nor 1",
                )?,
                "Shared Subscription Available",
            ),
            Prop::ServerKeepAlive(v) => once(&mut self.server_keep_alive, v, "Server Keep Alive"),
            Prop::ResponseInformation(v) => {
                once(&mut self.response_information, v, "Response Information")
            }
            Prop::ServerReference(v) => once(&mut self.server_reference, v, "Server Reference"),
            Prop::AuthenticationMethod(v) => {
                once(&mut self.authentication_method, v, "Authentication Method")
            }
            Prop::AuthenticationData(v) => {
                once(&mut self.authentication_data, v, "Authentication Data")
            }
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_opt!(f, self.session_expiry_interval, Four, 0x11);
        visit_opt!(f, self.assigned_client_identifier.as_ref(), Str, 0x12);
        visit_opt!(f, self.server_keep_alive, Two, 0x13);
        visit_opt!(f, self.authentication_method.as_ref(), Str, 0x15);
        visit_opt!(f, self.authentication_data.as_deref(), Bin, 0x16);
        visit_opt!(f, self.response_information.as_ref(), Str, 0x1A);
        visit_opt!(f, self.server_reference.as_ref(), Str, 0x1C);
        visit_opt!(f, self.reason_string.as_ref(), Str, 0x1F);
        visit_opt!(f, self.receive_maximum.map(NonZeroU16::get), Two, 0x21);
        visit_opt!(f, self.topic_alias_maximum, Two, 0x22);
        visit_opt!(f, self.maximum_qos.map(QoS::as_u8), Byte, 0x24);
        visit_opt!(f, self.retain_available.map(u8::from), Byte, 0x25);
        visit_users(&self.user_properties, f);
        visit_opt!(f, self.maximum_packet_size.map(NonZeroU32::get), Four, 0x27);
        visit_opt!(
            f,
            self.wildcard_subscription_available.map(u8::from),
            Byte,
            0x28
        );
        visit_opt!(
            f,
            self.subscription_identifiers_available.map(u8::from),
            Byte,
            0x29
        );
        visit_opt!(
            f,
            self.shared_subscription_available.map(u8::from),
            Byte,
            0x2A
        );
    }
}

/// PUBLISH properties (§3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Whether the payload is UTF-8 text.
    pub payload_format_indicator: Option<PayloadFormat>,
    /// Lifetime of the message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// An alias standing for the topic name (never 0).
    pub topic_alias: Option<NonZeroU16>,
    /// Topic for a response.
    pub response_topic: Option<TopicName>,
    /// Data that ties a response to the request.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
    /// Identifiers of the subscriptions that matched (server to client only, [MQTT-3.3.4-6]).
    pub subscription_identifiers: Vec<SubscriptionId>,
    /// MIME-like description of the payload.
    pub content_type: Option<MqttString>,
}

impl PropertySet for PublishProperties {
    const PACKET: &'static str = "PUBLISH";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::PayloadFormatIndicator(v) => once(
                &mut self.payload_format_indicator,
                payload_format(v)?,
                "Payload Format Indicator",
            ),
            Prop::MessageExpiryInterval(v) => once(
                &mut self.message_expiry_interval,
                v,
                "Message Expiry Interval",
            ),
            Prop::TopicAlias(v) => {
                // §3.3.4: a Topic Alias of 0 is answered with 0x94 (Topic Alias invalid).
                let alias = NonZeroU16::new(v).ok_or(DecodeError::new(
                    crate::ReasonCode::TopicAliasInvalid,
                    "MQTT-3.3.2-8",
                    "Topic Alias is 0",
                ))?;
                once(&mut self.topic_alias, alias, "Topic Alias")
            }
            Prop::ResponseTopic(v) => once(
                &mut self.response_topic,
                response_topic(v)?,
                "Response Topic",
            ),
            Prop::CorrelationData(v) => once(&mut self.correlation_data, v, "Correlation Data"),
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            Prop::SubscriptionIdentifier(v) => {
                let id = SubscriptionId::new(v).ok_or(DecodeError::protocol(
                    "MQTT-5 §3.3.2.3.8",
                    "Subscription Identifier is 0",
                ))?;
                self.subscription_identifiers.push(id);
                Ok(())
            }
            Prop::ContentType(v) => once(&mut self.content_type, v, "Content Type"),
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_opt!(
            f,
            self.payload_format_indicator.map(|v| v as u8),
            Byte,
            0x01
        );
        visit_opt!(f, self.message_expiry_interval, Four, 0x02);
        visit_opt!(f, self.content_type.as_ref(), Str, 0x03);
        visit_opt!(
            f,
            self.response_topic.as_ref().map(TopicName::as_mqtt_str),
            Str,
            0x08
        );
        visit_opt!(f, self.correlation_data.as_deref(), Bin, 0x09);
        for id in &self.subscription_identifiers {
            f(PropRef::Varint(0x0B, id.get()));
        }
        visit_opt!(f, self.topic_alias.map(NonZeroU16::get), Two, 0x23);
        visit_users(&self.user_properties, f);
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: a Reason String and
/// User Properties (§3.4.2.2 and the like).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Human-readable diagnostics.
    pub reason_string: Option<MqttString>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
}

impl AckProperties {
    /// True when there is nothing to encode.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl PropertySet for AckProperties {
    const PACKET: &'static str = "an acknowledgement packet";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::ReasonString(v) => once(&mut self.reason_string, v, "Reason String"),
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_opt!(f, self.reason_string.as_ref(), Str, 0x1F);
        visit_users(&self.user_properties, f);
    }
}

/// SUBSCRIBE properties (§3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Identifier the server attaches to messages delivered for these subscriptions.
    pub subscription_identifier: Option<SubscriptionId>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
}

impl PropertySet for SubscribeProperties {
    const PACKET: &'static str = "SUBSCRIBE";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::SubscriptionIdentifier(v) => {
                let id = SubscriptionId::new(v).ok_or(DecodeError::protocol(
                    "MQTT-5 §3.8.2.1.2",
                    "Subscription Identifier is 0",
                ))?;
                once(
                    &mut self.subscription_identifier,
                    id,
                    "Subscription Identifier",
                )
            }
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_opt!(
            f,
            self.subscription_identifier.map(SubscriptionId::get),
            Varint,
            0x0B
        );
        visit_users(&self.user_properties, f);
    }
}

/// UNSUBSCRIBE properties (§3.10.2.1): User Properties only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
}

impl PropertySet for UnsubscribeProperties {
    const PACKET: &'static str = "UNSUBSCRIBE";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_users(&self.user_properties, f);
    }
}

/// DISCONNECT properties (§3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// New session expiry, sent by the client only ([MQTT-3.14.2-2]).
    pub session_expiry_interval: Option<u32>,
    /// Human-readable diagnostics.
    pub reason_string: Option<MqttString>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
    /// Another server the client may use.
    pub server_reference: Option<MqttString>,
}

impl DisconnectProperties {
    /// True when there is nothing to encode.
    pub fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
            && self.server_reference.is_none()
    }
}

impl PropertySet for DisconnectProperties {
    const PACKET: &'static str = "DISCONNECT";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::SessionExpiryInterval(v) => once(
                &mut self.session_expiry_interval,
                v,
                "Session Expiry Interval",
            ),
            Prop::ReasonString(v) => once(&mut self.reason_string, v, "Reason String"),
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            Prop::ServerReference(v) => once(&mut self.server_reference, v, "Server Reference"),
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_opt!(f, self.session_expiry_interval, Four, 0x11);
        visit_opt!(f, self.server_reference.as_ref(), Str, 0x1C);
        visit_opt!(f, self.reason_string.as_ref(), Str, 0x1F);
        visit_users(&self.user_properties, f);
    }
}

/// AUTH properties (§3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// Name of the extended authentication method.
    pub authentication_method: Option<MqttString>,
    /// Method-specific authentication data.
    pub authentication_data: Option<Bytes>,
    /// Human-readable diagnostics.
    pub reason_string: Option<MqttString>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
}

impl AuthProperties {
    /// True when there is nothing to encode.
    pub fn is_empty(&self) -> bool {
        self.authentication_method.is_none()
            && self.authentication_data.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
    }
}

impl PropertySet for AuthProperties {
    const PACKET: &'static str = "AUTH";

    fn apply(&mut self, prop: Prop) -> Result<(), DecodeError> {
        match prop {
            Prop::AuthenticationMethod(v) => {
                once(&mut self.authentication_method, v, "Authentication Method")
            }
            Prop::AuthenticationData(v) => {
                once(&mut self.authentication_data, v, "Authentication Data")
            }
            Prop::ReasonString(v) => once(&mut self.reason_string, v, "Reason String"),
            Prop::UserProperty(pair) => {
                self.user_properties.push(pair);
                Ok(())
            }
            other => Err(not_allowed::<Self>(&other)),
        }
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(PropRef<'a>)) {
        visit_opt!(f, self.authentication_method.as_ref(), Str, 0x15);
        visit_opt!(f, self.authentication_data.as_deref(), Bin, 0x16);
        visit_opt!(f, self.reason_string.as_ref(), Str, 0x1F);
        visit_users(&self.user_properties, f);
    }
    // No `check`: AUTH always needs its Authentication Method (§3.15.2.2.2), which
    // `Auth::decode` enforces, so Authentication Data alone fails there.
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use crate::{EncodeError, Encoder, ProtocolVersion, Publish, TopicName};

    #[test]
    fn binary_properties_longer_than_their_length_field_are_refused_not_truncated() {
        let mut publish =
            Publish::new(TopicName::new("t").unwrap(), Bytes::from_static(b"payload"));
        publish.properties.correlation_data = Some(Bytes::from(vec![7; 70_000]));
        let mut buf = BytesMut::new();
        let result = Encoder::new(ProtocolVersion::V5).encode(&publish, &mut buf);
        assert_eq!(
            result,
            Err(EncodeError::Invalid(
                "binary property longer than 65,535 bytes"
            ))
        );
        assert!(buf.is_empty());
        // 3.1.1 carries no properties, so the same message encodes there.
        assert!(
            Encoder::new(ProtocolVersion::V3_1_1)
                .encode(&publish, &mut buf)
                .is_ok()
        );
        publish.properties.correlation_data = Some(Bytes::from(vec![7; 65_535]));
        assert!(
            Encoder::new(ProtocolVersion::V5)
                .encode(&publish, &mut buf)
                .is_ok()
        );
    }
}
