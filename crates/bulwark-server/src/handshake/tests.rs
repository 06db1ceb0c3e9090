//! The handshake machines without sockets: a scripted authentication service answers their
//! requests, and what they send is decoded as a client would.

use std::num::NonZeroU32;

use bulwark_auth::scram::{ScramClient, ScramConfig, ScramCredentials, ScramError};
use bulwark_proto::{ClientId, ConnectProperties, Decoder, DecoderLimits};

use super::*;

const ALICE: &str = "alice";
const ALICE_PASSWORD: &str = "correct horse battery staple";

fn at_start() -> Now {
    Now {
        at: Instant::now(),
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000),
    }
}

fn later(now: Now, by: Duration) -> Now {
    Now {
        at: now.at + by,
        wall: now.wall + by,
    }
}

fn setup() -> Setup {
    Setup {
        listener: "mqtt".into(),
        peer: IpAddr::from([192, 0, 2, 7]),
        scram: true,
        jwt: true,
        certificate: None,
        cert_cn: None,
        reply_timeout: Duration::from_secs(10),
    }
}

fn connect(version: ProtocolVersion, username: Option<&str>) -> Box<Connect> {
    Box::new(Connect {
        protocol_version: version,
        clean_start: true,
        keep_alive: 30,
        properties: ConnectProperties::default(),
        client_id: ClientId::new("sensor-1").unwrap(),
        will: None,
        username: username.map(|u| MqttString::new(u).unwrap()),
        password: username.map(|_| Bytes::from_static(b"secret")),
    })
}

fn enhanced(method: &str, data: &[u8]) -> Box<Connect> {
    let mut connect = connect(ProtocolVersion::V5, None);
    connect.properties.authentication_method = Some(MqttString::new(method).unwrap());
    connect.properties.authentication_data = Some(Bytes::copy_from_slice(data));
    connect
}

fn identity(name: &str, method: &'static str) -> Identity {
    Identity {
        username: Some(Arc::from(name)),
        groups: Vec::new(),
        method,
        expires_at: None,
        acl: None,
        in_store: true,
    }
}

/// A scripted authentication service: alice with her SCRAM credentials, every gate open
/// unless told otherwise, a verdict that is the outcome it is given.
struct Service {
    config: ScramConfig,
    credentials: ScramCredentials,
    /// The answer to every token.
    jwt: Result<Identity, Refusal>,
    gate: Result<(), Refusal>,
    /// Kinds of the requests served, in order.
    asked: Vec<&'static str>,
    /// The users tokens were checked for.
    claimed: Vec<Option<String>>,
    /// What the machine asked to record.
    recorded: Vec<Result<Identity, Refusal>>,
}

impl Service {
    fn new() -> Self {
        Self {
            config: ScramConfig::new([7; 32]),
            credentials: ScramCredentials::derive(ScramHash::Sha256, ALICE_PASSWORD, 4096).unwrap(),
            jwt: Ok(identity(ALICE, "jwt")),
            gate: Ok(()),
            asked: Vec::new(),
            claimed: Vec::new(),
            recorded: Vec::new(),
        }
    }

    fn answer(&mut self, subject: Subject<'_>, request: Request) -> Answer {
        match request {
            Request::Gate { .. } => {
                self.asked.push("gate");
                Answer::Admitted(self.gate.clone())
            }
            Request::CheckConnect => {
                self.asked.push("chain");
                let name = subject.connect.and_then(|c| c.username.clone());
                Answer::Identity(match name {
                    Some(name) => Ok(identity(name.as_str(), "password")),
                    None => Ok(Identity {
                        username: None,
                        groups: Vec::new(),
                        method: "anonymous",
                        expires_at: None,
                        acl: None,
                        in_store: false,
                    }),
                })
            }
            Request::CheckJwt { claimed, .. } => {
                self.asked.push("jwt");
                self.claimed.push(claimed);
                Answer::Identity(self.jwt.clone())
            }
            Request::ScramStart { hash, client_first } => {
                self.asked.push("scram start");
                let credentials = self.credentials.clone();
                let started = ScramServer::start_os_rng(&self.config, hash, &client_first, |n| {
                    (n == ALICE).then_some(credentials)
                });
                Answer::ScramStarted(
                    started
                        .map(|(server, first)| (Box::new(server), first))
                        .map_err(|err: ScramError| AuthService::scram_refusal(&err)),
                )
            }
            Request::BeforeVerdict => {
                self.asked.push("verdict");
                Answer::Admitted(Ok(()))
            }
            Request::ScramIdentity { name, method } => {
                self.asked.push("scram identity");
                Answer::Identity(Ok(identity(&name, method)))
            }
            Request::Finish(result) => {
                self.asked.push("finish");
                Answer::Identity(result)
            }
        }
    }
}

/// How a run of the machine ended.
#[derive(Debug)]
enum Outcome {
    Accepted(Box<Accepted>),
    Refused(ReasonCode, String),
    Abandoned,
    /// Waiting for the client.
    Waiting,
}

/// Serves the machine's requests until it waits for the client or is over.
fn run(handshake: &mut Handshake, service: &mut Service, now: Now) -> Outcome {
    while let Some(event) = handshake.poll_event() {
        match event {
            HandshakeEvent::Request(request) => {
                let answer = service.answer(handshake.subject(), request);
                handshake.handle_answer(answer, now);
            }
            HandshakeEvent::Record(result) => service.recorded.push(result),
            HandshakeEvent::Accepted(accepted) => return Outcome::Accepted(accepted),
            HandshakeEvent::Refused { code, reason } => return Outcome::Refused(code, reason),
            HandshakeEvent::Abandoned => return Outcome::Abandoned,
        }
    }
    Outcome::Waiting
}

/// The packets the machine has for the client, decoded as the client would.
fn sent(handshake: &mut Handshake, version: ProtocolVersion) -> Vec<Packet> {
    let mut out = BytesMut::new();
    while handshake.poll_transmit(&mut out) {}
    decode(&out, version)
}

fn decode(bytes: &[u8], version: ProtocolVersion) -> Vec<Packet> {
    let mut decoder = Decoder::client(version, DecoderLimits::default());
    decoder.handle_bytes(bytes);
    let mut packets = Vec::new();
    while let Some(packet) = decoder.poll_packet().unwrap() {
        packets.push(packet);
    }
    packets
}

fn connack(packets: &[Packet]) -> &ConnAck {
    match packets {
        [Packet::ConnAck(ack)] => ack,
        other => panic!("expected one CONNACK, got {other:?}"),
    }
}

fn auth_of(packets: &[Packet]) -> &Auth {
    match packets {
        [Packet::Auth(auth)] => auth,
        other => panic!("expected one AUTH, got {other:?}"),
    }
}

fn client_auth(code: ReasonCode, method: &str, data: &[u8]) -> Auth {
    Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: Some(MqttString::new(method).unwrap()),
            authentication_data: Some(Bytes::copy_from_slice(data)),
            ..AuthProperties::default()
        },
    }
}

#[test]
fn a_plain_login_goes_through_the_gate_and_the_chain() {
    let mut service = Service::new();
    let mut handshake = Handshake::new(connect(ProtocolVersion::V5, Some(ALICE)), setup());
    let Outcome::Accepted(accepted) = run(&mut handshake, &mut service, at_start()) else {
        panic!("not accepted");
    };
    assert_eq!(service.asked, ["gate", "chain", "finish"]);
    assert!(sent(&mut handshake, ProtocolVersion::V5).is_empty());
    assert_eq!(accepted.auth.method, None);
    let principal = accepted.auth.principal.as_deref().unwrap();
    assert_eq!(principal.username.as_deref(), Some(ALICE));
    assert_eq!(principal.listener.as_deref(), Some("mqtt"));
    assert_eq!(principal.address, Some(IpAddr::from([192, 0, 2, 7])));
    assert!(principal.authenticated);
    assert_eq!(accepted.reauth.identity().username.as_deref(), Some(ALICE));
    assert_eq!(handshake.into_connect().client_id.as_str(), "sensor-1");
}

#[test]
fn an_anonymous_login_is_not_authenticated() {
    let mut service = Service::new();
    let mut handshake = Handshake::new(connect(ProtocolVersion::V3_1_1, None), setup());
    let Outcome::Accepted(accepted) = run(&mut handshake, &mut service, at_start()) else {
        panic!("not accepted");
    };
    let principal = accepted.auth.principal.as_deref().unwrap();
    assert_eq!(principal.username, None);
    assert!(!principal.authenticated);
}

#[test]
fn a_refused_gate_skips_the_credentials() {
    let mut service = Service::new();
    service.gate = Err(Refusal::banned("address banned for 60 s more"));
    let mut handshake = Handshake::new(connect(ProtocolVersion::V5, Some(ALICE)), setup());
    let outcome = run(&mut handshake, &mut service, at_start());
    assert!(
        matches!(&outcome, Outcome::Refused(ReasonCode::Banned, why) if why.contains("60 s")),
        "{outcome:?}"
    );
    assert_eq!(service.asked, ["gate", "finish"]);
    let packets = sent(&mut handshake, ProtocolVersion::V5);
    let ack = connack(&packets);
    assert_eq!(ack.reason_code, ReasonCode::Banned);
    // The client is told the public reason only.
    assert_eq!(
        ack.properties
            .reason_string
            .as_ref()
            .map(MqttString::as_str),
        Some("banned")
    );
}

#[test]
fn refusals_of_3_1_1_clients_use_return_codes_where_there_are_some() {
    for (code, expected) in [
        (
            ReasonCode::BadUserNameOrPassword,
            Some(ReasonCode::BadUserNameOrPassword),
        ),
        (ReasonCode::Banned, Some(ReasonCode::NotAuthorized)),
        (
            ReasonCode::QuotaExceeded,
            Some(ReasonCode::ServerUnavailable),
        ),
        (
            ReasonCode::BadAuthenticationMethod,
            Some(ReasonCode::BadUserNameOrPassword),
        ),
        (ReasonCode::ProtocolError, None),
    ] {
        let mut service = Service::new();
        service.gate = Err(Refusal::failure(code, "refused"));
        let mut handshake = Handshake::new(connect(ProtocolVersion::V3_1_1, Some(ALICE)), setup());
        let outcome = run(&mut handshake, &mut service, at_start());
        assert!(
            matches!(outcome, Outcome::Refused(c, _) if c == code),
            "{outcome:?}"
        );
        let packets = sent(&mut handshake, ProtocolVersion::V3_1_1);
        match expected {
            Some(expected) => {
                let ack = connack(&packets);
                assert_eq!(ack.reason_code, expected, "{code:?}");
                assert_eq!(ack.properties.reason_string, None);
            }
            None => assert!(packets.is_empty(), "{code:?}: {packets:?}"),
        }
    }
}

#[test]
fn refusals_of_5_0_clients_carry_the_reason_code_itself() {
    let mut service = Service::new();
    service.gate = Err(Refusal::quota("too many"));
    let mut handshake = Handshake::new(connect(ProtocolVersion::V5, Some(ALICE)), setup());
    run(&mut handshake, &mut service, at_start());
    let packets = sent(&mut handshake, ProtocolVersion::V5);
    assert_eq!(connack(&packets).reason_code, ReasonCode::QuotaExceeded);
}

#[test]
fn a_refusing_connack_fits_the_clients_maximum_packet_size() {
    let refused = |max: Option<u32>| {
        let mut connect = connect(ProtocolVersion::V5, Some(ALICE));
        connect.properties.maximum_packet_size = max.and_then(NonZeroU32::new);
        let mut service = Service::new();
        service.gate = Err(Refusal::failure(ReasonCode::BadUserNameOrPassword, "no"));
        let mut handshake = Handshake::new(connect, setup());
        run(&mut handshake, &mut service, at_start());
        let mut out = BytesMut::new();
        while handshake.poll_transmit(&mut out) {}
        out
    };
    let full = refused(None);
    let with_reason = decode(&full, ProtocolVersion::V5);
    assert!(connack(&with_reason).properties.reason_string.is_some());
    // Too small for the reason string: the CONNACK goes without it.
    let max = u32::try_from(full.len()).unwrap() - 1;
    let small = refused(Some(max));
    assert!(small.len() <= max as usize, "{} > {max}", small.len());
    let packets = decode(&small, ProtocolVersion::V5);
    let ack = connack(&packets);
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    assert_eq!(ack.properties.reason_string, None);
}

#[test]
fn an_unknown_method_is_refused_before_the_gate() {
    let mut service = Service::new();
    let mut handshake = Handshake::new(enhanced("KERBEROS", b""), setup());
    let outcome = run(&mut handshake, &mut service, at_start());
    assert!(
        matches!(&outcome, Outcome::Refused(ReasonCode::BadAuthenticationMethod, why)
            if why.contains("KERBEROS")),
        "{outcome:?}"
    );
    assert_eq!(service.asked, ["finish"]);
    assert_eq!(handshake.subject().method, "enhanced");
    let packets = sent(&mut handshake, ProtocolVersion::V5);
    assert_eq!(
        connack(&packets).reason_code,
        ReasonCode::BadAuthenticationMethod
    );
}

#[test]
fn a_method_the_listener_does_not_offer_is_refused() {
    for (method, mut listener) in [("SCRAM-SHA-256", setup()), ("JWT", setup())] {
        listener.scram = false;
        listener.jwt = false;
        let mut service = Service::new();
        let mut handshake = Handshake::new(enhanced(method, b"n,,n=alice,r=abc"), listener);
        let outcome = run(&mut handshake, &mut service, at_start());
        assert!(
            matches!(
                outcome,
                Outcome::Refused(ReasonCode::BadAuthenticationMethod, _)
            ),
            "{method}: {outcome:?}"
        );
        assert_eq!(service.asked, ["finish"], "{method}");
    }
}

#[test]
fn a_jwt_login_checks_the_token_and_answers_with_the_method() {
    let mut service = Service::new();
    let mut handshake = Handshake::new(enhanced("JWT", b"a.b.c"), setup());
    let Outcome::Accepted(accepted) = run(&mut handshake, &mut service, at_start()) else {
        panic!("not accepted");
    };
    assert_eq!(service.asked, ["gate", "jwt", "finish"]);
    assert_eq!(service.claimed, [None]);
    assert_eq!(
        accepted.auth.method.as_ref().map(MqttString::as_str),
        Some("JWT")
    );
    assert_eq!(accepted.auth.data, None);
}

#[test]
fn a_certificate_binds_the_user_of_a_token() {
    let mut service = Service::new();
    let mut listener = setup();
    listener.certificate = Some("bob".into());
    let mut connect = enhanced("JWT", b"a.b.c");
    connect.username = Some(MqttString::new(ALICE).unwrap());
    let mut handshake = Handshake::new(connect, listener);
    run(&mut handshake, &mut service, at_start());
    assert_eq!(service.claimed, [Some("bob".to_owned())]);

    let mut service = Service::new();
    let mut connect = enhanced("JWT", b"a.b.c");
    connect.username = Some(MqttString::new(ALICE).unwrap());
    let mut handshake = Handshake::new(connect, setup());
    run(&mut handshake, &mut service, at_start());
    assert_eq!(service.claimed, [Some(ALICE.to_owned())]);
}

/// Runs a SCRAM-SHA-256 login of alice up to the server-first message.
fn scram_start(
    password: &str,
    listener: Setup,
    service: &mut Service,
    now: Now,
) -> (Handshake, ScramClient, Auth) {
    let mut client = ScramClient::new(ScramHash::Sha256, ALICE, password).unwrap();
    let mut handshake = Handshake::new(enhanced("SCRAM-SHA-256", &client.client_first()), listener);
    let outcome = run(&mut handshake, service, now);
    assert!(matches!(outcome, Outcome::Waiting), "{outcome:?}");
    let packets = sent(&mut handshake, ProtocolVersion::V5);
    let server_first = auth_of(&packets).clone();
    assert_eq!(server_first.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(
        server_first
            .properties
            .authentication_method
            .as_ref()
            .map(MqttString::as_str),
        Some("SCRAM-SHA-256")
    );
    let data = server_first.properties.authentication_data.clone().unwrap();
    let client_final = client.client_final(&data).unwrap();
    (
        handshake,
        client,
        client_auth(
            ReasonCode::ContinueAuthentication,
            "SCRAM-SHA-256",
            &client_final,
        ),
    )
}

#[test]
fn a_scram_login_succeeds_with_the_server_final_message_in_the_connack() {
    let mut service = Service::new();
    let now = at_start();
    let (mut handshake, client, client_final) =
        scram_start(ALICE_PASSWORD, setup(), &mut service, now);
    assert_eq!(
        handshake.poll_timeout(),
        Some(now.at + Duration::from_secs(10))
    );
    assert_eq!(handshake.subject().username, Some(ALICE));
    assert_eq!(handshake.subject().method, "SCRAM-SHA-256");
    handshake.handle_packet(Packet::Auth(client_final));
    let Outcome::Accepted(accepted) = run(&mut handshake, &mut service, now) else {
        panic!("not accepted");
    };
    assert_eq!(
        service.asked,
        ["scram start", "gate", "verdict", "scram identity", "finish"]
    );
    client
        .verify_server_final(accepted.auth.data.as_deref().unwrap())
        .unwrap();
    assert_eq!(accepted.reauth.identity().method, "SCRAM-SHA-256");
    assert_eq!(handshake.poll_timeout(), None);
}

#[test]
fn a_scram_login_with_a_wrong_password_is_refused() {
    let mut service = Service::new();
    let (mut handshake, _, client_final) =
        scram_start("not the password", setup(), &mut service, at_start());
    handshake.handle_packet(Packet::Auth(client_final));
    let outcome = run(&mut handshake, &mut service, at_start());
    assert!(
        matches!(&outcome, Outcome::Refused(ReasonCode::BadUserNameOrPassword, why)
            if why.starts_with("SCRAM:")),
        "{outcome:?}"
    );
    let packets = sent(&mut handshake, ProtocolVersion::V5);
    let ack = connack(&packets);
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    assert_eq!(ack.properties.authentication_data, None);
}

#[test]
fn a_scram_login_of_another_user_than_the_certificates_is_refused() {
    let mut service = Service::new();
    let mut listener = setup();
    listener.certificate = Some("bob".into());
    let client = ScramClient::new(ScramHash::Sha256, ALICE, ALICE_PASSWORD).unwrap();
    let mut handshake = Handshake::new(enhanced("SCRAM-SHA-256", &client.client_first()), listener);
    let outcome = run(&mut handshake, &mut service, at_start());
    assert!(
        matches!(
            outcome,
            Outcome::Refused(ReasonCode::BadUserNameOrPassword, _)
        ),
        "{outcome:?}"
    );
    assert_eq!(service.asked, ["scram start", "finish"]);
}

#[test]
fn a_malformed_client_first_message_is_refused() {
    let mut service = Service::new();
    let mut handshake = Handshake::new(enhanced("SCRAM-SHA-256", b"not scram"), setup());
    let outcome = run(&mut handshake, &mut service, at_start());
    assert!(
        matches!(
            outcome,
            Outcome::Refused(ReasonCode::BadUserNameOrPassword, _)
        ),
        "{outcome:?}"
    );
    assert_eq!(handshake.subject().username, None);
}

#[test]
fn an_unexpected_packet_during_the_exchange_is_a_protocol_error() {
    let other_method = client_auth(ReasonCode::ContinueAuthentication, "SCRAM-SHA-512", b"x");
    let other_code = client_auth(ReasonCode::ReAuthenticate, "SCRAM-SHA-256", b"x");
    for packet in [
        Packet::PingReq,
        Packet::Auth(other_method),
        Packet::Auth(other_code),
    ] {
        let mut service = Service::new();
        let (mut handshake, _, _) = scram_start(ALICE_PASSWORD, setup(), &mut service, at_start());
        handshake.handle_packet(packet);
        let outcome = run(&mut handshake, &mut service, at_start());
        assert!(
            matches!(outcome, Outcome::Refused(ReasonCode::ProtocolError, _)),
            "{outcome:?}"
        );
        let packets = sent(&mut handshake, ProtocolVersion::V5);
        assert_eq!(connack(&packets).reason_code, ReasonCode::ProtocolError);
        assert_eq!(service.asked.last(), Some(&"finish"));
    }
}

#[test]
fn a_client_that_leaves_the_exchange_is_counted_by_address_only() {
    let mut service = Service::new();
    let now = at_start();
    let (mut handshake, _, _) = scram_start(ALICE_PASSWORD, setup(), &mut service, now);
    // Not yet.
    handshake.handle_timeout(later(now, Duration::from_secs(9)));
    assert!(matches!(
        run(&mut handshake, &mut service, now),
        Outcome::Waiting
    ));
    handshake.handle_timeout(later(now, Duration::from_secs(10)));
    assert!(matches!(
        run(&mut handshake, &mut service, now),
        Outcome::Abandoned
    ));
    assert!(sent(&mut handshake, ProtocolVersion::V5).is_empty());
    let [Err(refusal)] = service.recorded.as_slice() else {
        panic!("{:?}", service.recorded);
    };
    assert_eq!(refusal.counts, Counts::AddressOnly);

    let mut service = Service::new();
    let (mut handshake, _, _) = scram_start(ALICE_PASSWORD, setup(), &mut service, now);
    handshake.handle_lost();
    assert!(matches!(
        run(&mut handshake, &mut service, now),
        Outcome::Abandoned
    ));
    assert_eq!(service.recorded.len(), 1);
}

#[test]
fn a_certificate_identity_refusal_is_sent_as_is() {
    let mut handshake = Handshake::new(connect(ProtocolVersion::V5, Some(ALICE)), setup());
    handshake.refuse(
        ReasonCode::NotAuthorized,
        "the client certificate has no CN",
    );
    // The refusal comes after the login's first question, which is left unanswered.
    assert!(matches!(
        handshake.poll_event(),
        Some(HandshakeEvent::Request(Request::Gate { .. }))
    ));
    assert!(matches!(
        handshake.poll_event(),
        Some(HandshakeEvent::Refused {
            code: ReasonCode::NotAuthorized,
            ..
        })
    ));
    let packets = sent(&mut handshake, ProtocolVersion::V5);
    let ack = connack(&packets);
    assert_eq!(
        ack.properties
            .reason_string
            .as_ref()
            .map(MqttString::as_str),
        Some("the client certificate has no CN")
    );
}

/// What a server's decoder says of a CONNECT with fixed-header byte `first` and protocol
/// level `level`, and the version it read.
fn undecodable(first: u8, level: u8) -> (Option<ProtocolVersion>, DecodeError) {
    let mut decoder = Decoder::server(DecoderLimits::default());
    decoder.handle_bytes(&[
        first, 13, 0, 4, b'M', b'Q', b'T', b'T', level, 2, 0, 60, 0, 0, 0,
    ]);
    let err = decoder.poll_packet().unwrap_err();
    (decoder.protocol_version(), err)
}

#[test]
fn undecodable_connects_are_answered_in_the_clients_version() {
    // Reserved flags set: malformed.
    let (version, err) = undecodable(0x11, 4);
    assert_eq!(version, Some(ProtocolVersion::V3_1_1));
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    let mut out = BytesMut::new();
    refuse_undecodable(version, &err, &mut out);
    assert!(
        out.is_empty(),
        "3.1.1 has no return code for a malformed packet"
    );

    let (version, err) = undecodable(0x11, 5);
    refuse_undecodable(version, &err, &mut out);
    let packets = decode(&out, ProtocolVersion::V5);
    let ack = connack(&packets);
    assert_eq!(ack.reason_code, ReasonCode::MalformedPacket);
    assert!(ack.properties.reason_string.is_some());

    let (version, err) = undecodable(0x10, 9);
    assert_eq!(version, None);
    assert_eq!(err.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    let mut out = BytesMut::new();
    refuse_undecodable(version, &err, &mut out);
    assert_eq!(&out[..], [0x20, 0x02, 0x00, 0x01]);
}

// Re-authentication and the end of credentials.

fn reauth(method: Option<&str>, identity: Identity, now: Now) -> Reauth {
    let principal = Arc::new(Principal {
        username: identity.username.clone(),
        groups: identity.groups.clone(),
        cert_cn: None,
        listener: Some("mqtt".into()),
        address: None,
        authenticated: true,
        claim: None,
        quarantine: None,
    });
    Reauth::new(
        identity,
        principal,
        method.map(|m| MqttString::new(m).unwrap()),
        "sensor-1",
        Encoder::new(ProtocolVersion::V5),
        now,
    )
}

/// Serves the re-authentication's requests; returns its events other than requests.
fn run_reauth(reauth: &mut Reauth, service: &mut Service, now: Now) -> Vec<ReauthEvent> {
    let mut events = Vec::new();
    while let Some(event) = reauth.poll_event() {
        match event {
            ReauthEvent::Request(request) => {
                let answer = service.answer(reauth.subject(), request);
                reauth.handle_answer(answer, now);
            }
            other => events.push(other),
        }
    }
    events
}

/// What the re-authentication machine sends, decoded by a client that had its CONNACK.
fn reauth_sent(reauth: &mut Reauth) -> Vec<Packet> {
    let mut out = BytesMut::new();
    let connack = Packet::ConnAck(Box::new(ConnAck::new(false, ReasonCode::Success)));
    Encoder::new(ProtocolVersion::V5)
        .encode(&connack, &mut out)
        .unwrap();
    while reauth.poll_transmit(&mut out) {}
    let mut packets = decode(&out, ProtocolVersion::V5);
    packets.remove(0);
    packets
}

fn disconnect_of(packets: &[Packet]) -> (ReasonCode, String) {
    match packets {
        [Packet::Disconnect(d)] => (
            d.reason_code,
            d.properties
                .reason_string
                .as_ref()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
        ),
        other => panic!("expected one DISCONNECT, got {other:?}"),
    }
}

#[test]
fn a_jwt_reauthentication_renews_the_credentials() {
    let now = at_start();
    let mut old = identity(ALICE, "jwt");
    old.expires_at = Some(now.wall + Duration::from_secs(60));
    let mut machine = reauth(Some("JWT"), old, now);
    assert_eq!(
        machine.poll_timeout(),
        Some(now.at + Duration::from_secs(60))
    );
    let mut service = Service::new();
    let mut renewed = identity(ALICE, "jwt");
    renewed.expires_at = Some(now.wall + Duration::from_secs(600));
    renewed.groups = vec!["ops".into()];
    service.jwt = Ok(renewed);
    machine.handle_auth(client_auth(ReasonCode::ReAuthenticate, "JWT", b"t"), true);
    let events = run_reauth(&mut machine, &mut service, now);
    assert!(
        matches!(
            events.as_slice(),
            [ReauthEvent::Record(Ok(_)), ReauthEvent::Principal(p)] if p.groups == ["ops".into()]
        ),
        "{events:?}"
    );
    assert_eq!(
        machine.poll_timeout(),
        Some(now.at + Duration::from_secs(600))
    );
    let packets = reauth_sent(&mut machine);
    assert_eq!(auth_of(&packets).reason_code, ReasonCode::Success);
}

#[test]
fn a_reauthentication_as_another_user_is_refused() {
    let now = at_start();
    let mut machine = reauth(Some("JWT"), identity(ALICE, "jwt"), now);
    let mut service = Service::new();
    // A token of bob's (the service would refuse it for the claimed alice; the machine does
    // not rely on that).
    service.jwt = Ok(identity("bob", "jwt"));
    machine.handle_auth(client_auth(ReasonCode::ReAuthenticate, "JWT", b"t"), true);
    let events = run_reauth(&mut machine, &mut service, now);
    assert_eq!(service.claimed, [Some(ALICE.to_owned())]);
    assert!(
        matches!(
            events.as_slice(),
            [ReauthEvent::Record(Err(r)), ReauthEvent::Closed { code: ReasonCode::NotAuthorized, .. }]
                if r.reason == "JWT: a different username"
        ),
        "{events:?}"
    );
    let (code, why) = disconnect_of(&reauth_sent(&mut machine));
    assert_eq!(code, ReasonCode::NotAuthorized);
    assert_eq!(why, "re-authentication failed");

    // SCRAM: the client-first message names bob.
    let mut machine = reauth(Some("SCRAM-SHA-256"), identity(ALICE, "SCRAM-SHA-256"), now);
    let client = ScramClient::new(ScramHash::Sha256, "bob", "x").unwrap();
    let first = client.client_first();
    machine.handle_auth(
        client_auth(ReasonCode::ReAuthenticate, "SCRAM-SHA-256", &first),
        true,
    );
    let events = run_reauth(&mut machine, &mut Service::new(), now);
    assert!(
        matches!(events.as_slice(), [ReauthEvent::Record(Err(r)), ReauthEvent::Closed { .. }]
            if r.reason == "SCRAM: a different username"),
        "{events:?}"
    );
}

/// Starts a SCRAM-SHA-256 re-authentication of alice; returns the server-first message.
fn scram_reauth_start(machine: &mut Reauth, client: &ScramClient, service: &mut Service) -> Bytes {
    machine.handle_auth(
        client_auth(
            ReasonCode::ReAuthenticate,
            "SCRAM-SHA-256",
            &client.client_first(),
        ),
        true,
    );
    assert!(run_reauth(machine, service, at_start()).is_empty());
    let packets = reauth_sent(machine);
    let server_first = auth_of(&packets);
    assert_eq!(server_first.reason_code, ReasonCode::ContinueAuthentication);
    server_first.properties.authentication_data.clone().unwrap()
}

/// Sends `client`'s final message for `server_first` to the machine.
fn scram_reauth_final(machine: &mut Reauth, client: &mut ScramClient, server_first: &[u8]) {
    let client_final = client.client_final(server_first).unwrap();
    machine.handle_auth(
        client_auth(
            ReasonCode::ContinueAuthentication,
            "SCRAM-SHA-256",
            &client_final,
        ),
        true,
    );
}

#[test]
fn a_scram_reauthentication_takes_two_rounds() {
    let now = at_start();
    let mut machine = reauth(Some("SCRAM-SHA-256"), identity(ALICE, "SCRAM-SHA-256"), now);
    let mut service = Service::new();
    let mut client = ScramClient::new(ScramHash::Sha256, ALICE, ALICE_PASSWORD).unwrap();
    assert!(machine.is_idle(), "nothing held before an AUTH comes");
    let server_first = scram_reauth_start(&mut machine, &client, &mut service);
    assert!(!machine.is_idle(), "the SCRAM exchange is under way");
    scram_reauth_final(&mut machine, &mut client, &server_first);
    let events = run_reauth(&mut machine, &mut service, now);
    assert!(
        matches!(events.as_slice(), [ReauthEvent::Record(Ok(_))]),
        "{events:?}"
    );
    assert_eq!(
        service.asked,
        ["scram start", "scram identity"],
        "no gate for a re-authentication"
    );
    let packets = reauth_sent(&mut machine);
    let success = auth_of(&packets);
    assert_eq!(success.reason_code, ReasonCode::Success);
    client
        .verify_server_final(success.properties.authentication_data.as_deref().unwrap())
        .unwrap();
    assert!(machine.is_idle(), "the exchange is let go once it is over");
}

#[test]
fn a_scram_reauthentication_with_a_wrong_password_fails() {
    let now = at_start();
    let mut machine = reauth(Some("SCRAM-SHA-256"), identity(ALICE, "SCRAM-SHA-256"), now);
    let mut service = Service::new();
    let mut client = ScramClient::new(ScramHash::Sha256, ALICE, "a guess").unwrap();
    let server_first = scram_reauth_start(&mut machine, &client, &mut service);
    scram_reauth_final(&mut machine, &mut client, &server_first);
    let events = run_reauth(&mut machine, &mut service, now);
    assert!(
        matches!(events.as_slice(), [ReauthEvent::Record(Err(r)), ReauthEvent::Closed { .. }]
            if r.code == ReasonCode::BadUserNameOrPassword),
        "{events:?}"
    );
    assert_eq!(
        disconnect_of(&reauth_sent(&mut machine)).0,
        ReasonCode::NotAuthorized
    );
}

#[test]
fn a_second_scram_start_in_the_middle_of_the_exchange_is_out_of_sequence() {
    let now = at_start();
    let mut machine = reauth(Some("SCRAM-SHA-256"), identity(ALICE, "SCRAM-SHA-256"), now);
    let mut service = Service::new();
    let client = ScramClient::new(ScramHash::Sha256, ALICE, ALICE_PASSWORD).unwrap();
    scram_reauth_start(&mut machine, &client, &mut service);
    machine.handle_auth(
        client_auth(
            ReasonCode::ReAuthenticate,
            "SCRAM-SHA-256",
            &client.client_first(),
        ),
        true,
    );
    let events = run_reauth(&mut machine, &mut service, now);
    assert!(
        matches!(events.as_slice(), [ReauthEvent::Closed { code: ReasonCode::ProtocolError, reason }]
            if reason.contains("out of sequence")),
        "{events:?}"
    );
}

#[test]
fn reauthentication_out_of_turn_is_a_protocol_error() {
    let now = at_start();
    const REAUTH: ReasonCode = ReasonCode::ReAuthenticate;
    const CONTINUE: ReasonCode = ReasonCode::ContinueAuthentication;
    // (the CONNECT's method, CONNACK sent, the AUTH's code and method, the reason given)
    let cases = [
        (None, true, REAUTH, "JWT", "[MQTT-4.12.0-7]"),
        (Some("JWT"), false, REAUTH, "JWT", "before the CONNACK"),
        (
            Some("JWT"),
            true,
            REAUTH,
            "SCRAM-SHA-256",
            "method of the CONNECT",
        ),
        (
            Some("SCRAM-SHA-256"),
            true,
            CONTINUE,
            "SCRAM-SHA-256",
            "out of sequence",
        ),
    ];
    for (method, connack_sent, code, auth_method, expected) in cases {
        let packet = client_auth(code, auth_method, b"t");
        let mut machine = reauth(method, identity(ALICE, "jwt"), now);
        let mut service = Service::new();
        machine.handle_auth(packet, connack_sent);
        let events = run_reauth(&mut machine, &mut service, now);
        assert!(
            matches!(
                events.as_slice(),
                [ReauthEvent::Closed {
                    code: ReasonCode::ProtocolError,
                    ..
                }]
            ),
            "{expected}: {events:?}"
        );
        assert!(service.asked.is_empty(), "{expected}");
        let (code, why) = disconnect_of(&reauth_sent(&mut machine));
        assert_eq!(code, ReasonCode::ProtocolError);
        assert!(why.contains(expected), "{why:?} lacks {expected:?}");
    }
}

#[test]
fn credentials_that_expire_close_the_connection() {
    let now = at_start();
    let mut expiring = identity(ALICE, "jwt");
    expiring.expires_at = Some(now.wall + Duration::from_secs(30));
    let mut machine = reauth(Some("JWT"), expiring.clone(), now);
    machine.handle_timeout(later(now, Duration::from_secs(29)));
    assert!(machine.poll_event().is_none());
    machine.handle_timeout(later(now, Duration::from_secs(30)));
    assert!(matches!(machine.poll_event(), Some(ReauthEvent::Expired)));
    let (code, why) = disconnect_of(&reauth_sent(&mut machine));
    assert_eq!(code, ReasonCode::NotAuthorized);
    assert_eq!(why, "credentials expired");
    assert_eq!(machine.poll_timeout(), None);

    // Already over when the login completes: due at once.
    let mut expired = expiring;
    expired.expires_at = Some(now.wall - Duration::from_secs(1));
    let machine = reauth(Some("JWT"), expired, now);
    assert_eq!(machine.poll_timeout(), Some(now.at));

    // A 3.1.1 client has no DISCONNECT to read: the connection just closes.
    let mut expiring = identity(ALICE, "password");
    expiring.expires_at = Some(now.wall);
    let mut machine = Reauth::new(
        expiring,
        Arc::new(Principal::default()),
        None,
        "sensor-1",
        Encoder::new(ProtocolVersion::V3_1_1),
        now,
    );
    machine.handle_timeout(now);
    assert!(matches!(machine.poll_event(), Some(ReauthEvent::Expired)));
    let mut out = BytesMut::new();
    while machine.poll_transmit(&mut out) {}
    assert!(out.is_empty());
}
