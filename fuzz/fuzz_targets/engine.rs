//! An operation-sequence fuzzer for the engine (DESIGN.md rule 8): bytes for up to four
//! connections go through each one's server decoder into one `Broker`, interleaved with
//! connection losses, clock jumps and ACL reloads (between none and two rule sets). Nothing
//! may panic, and everything the engine asks to send
//! must encode in the connection's version; a PUBLISH must also fit the client's Maximum
//! Packet Size. The journal for a durable store is on: after every step, the state its
//! operations describe must hold exactly the persistent sessions and QoS 1/2 messages the
//! engine holds, and at the end a new engine restored from it must hold them too.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_core::{
    Broker, BrokerConfig, ConnectAuth, ConnectionId, Image, Output, PacketLimits, RetainedLimits,
    SessionLimits,
};
use bulwark_acl::{AclRules, Principal};
use bulwark_proto::{Decoder, DecoderLimits, Encoder, Packet};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

struct Conn {
    decoder: Decoder,
    encoder: Option<Encoder>,
    closed: bool,
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let config = BrokerConfig {
        sessions: SessionLimits {
            receive_maximum: 3,
            max_inflight_out: 2,
            max_queued_messages: 4,
            ..SessionLimits::default()
        },
        retained: RetainedLimits {
            max_retained_messages: 3,
            ..RetainedLimits::default()
        },
        packets: PacketLimits {
            topic_alias_maximum: 2,
            max_topic_levels: 6,
            ..PacketLimits::default()
        },
        sys_interval: Some(Duration::from_secs(5)),
        ..BrokerConfig::default()
    };
    let mut broker = Broker::new(config.clone(), now);
    broker.enable_journal();
    let mut image = Image::new();
    let rule_sets = [
        None,
        AclRules::parse(
            "[[rule]]\npermission = \"allow\"\naction = \"all\"\nclients = \"any\"\ntopics = [\"#\", \"$SYS/#\"]\n\
             [[rule]]\npermission = \"deny\"\naction = \"all\"\nclients = \"any\"\ntopic = \"a/#\"\n",
            "a",
        )
        .ok()
        .map(Arc::new),
        AclRules::parse(
            "[[rule]]\npermission = \"allow\"\naction = \"subscribe\"\nclients = \"any\"\ntopic = \"+/b/#\"\n\
             [[rule]]\npermission = \"allow\"\naction = \"publish\"\nclients = \"any\"\ntopic = \"{client_id}/#\"\nmax_qos = 1\nretain = false\n",
            "b",
        )
        .ok()
        .map(Arc::new),
    ];
    assert!(rule_sets.iter().skip(1).all(Option::is_some));
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_id = 0u64;
    let mut rest = data;
    while let [op, arg, tail @ ..] = rest {
        rest = tail;
        let slot = u64::from(arg & 3);
        match op % 4 {
            // Bytes for a connection: a length byte, then that many bytes.
            0 | 1 => {
                let Some((&len, tail)) = rest.split_first() else { break };
                let len = usize::from(len).min(tail.len());
                let (chunk, tail) = tail.split_at(len);
                rest = tail;
                let conn = conns.entry(slot).or_insert_with(|| {
                    next_id += 1;
                    Conn {
                        decoder: Decoder::server(DecoderLimits::default()),
                        encoder: None,
                        closed: false,
                    }
                });
                if conn.closed {
                    continue;
                }
                conn.decoder.handle_bytes(chunk);
                loop {
                    match conn.decoder.poll_packet() {
                        Ok(Some(Packet::Connect(connect))) => {
                            let mut encoder = Encoder::new(connect.protocol_version);
                            if let Some(max) = connect.properties.maximum_packet_size {
                                encoder.set_max_packet_size(max.get());
                            }
                            conn.encoder = Some(encoder);
                            conn.decoder.set_authenticated();
                            // The CONNECT username as the identity: client identifiers belong to users.
                            let principal = Principal {
                                username: connect
                                    .username
                                    .as_ref()
                                    .map(|u| Arc::from(u.as_str())),
                                authenticated: connect.username.is_some(),
                                ..Principal::default()
                            };
                            let auth = ConnectAuth {
                                principal: Some(Arc::new(principal)),
                                ..ConnectAuth::default()
                            };
                            broker.handle_authenticated_connect(
                                ConnectionId(slot),
                                *connect,
                                auth,
                                now,
                            );
                        }
                        Ok(Some(packet)) => broker.handle_packet(ConnectionId(slot), packet, now),
                        Ok(None) => break,
                        Err(_) => {
                            conn.closed = true;
                            broker.handle_connection_lost(ConnectionId(slot), now);
                            break;
                        }
                    }
                }
            }
            2 => {
                if let Some(conn) = conns.get_mut(&slot) {
                    conn.closed = true;
                }
                broker.handle_connection_lost(ConnectionId(slot), now);
            }
            _ if arg & 0x80 != 0 => {
                let rules = rule_sets[usize::from(arg & 0x7f) % rule_sets.len()].clone();
                broker.set_acl(rules, now);
            }
            _ => {
                now += Duration::from_secs(u64::from(*arg));
                if broker.poll_timeout().is_some_and(|t| t <= now) {
                    broker.handle_timeout(now);
                }
            }
        }
        while broker.poll_event().is_some() {}
        image.apply_all(broker.take_store_ops());
        assert_eq!(
            broker.journaled(),
            (image.sessions(), image.messages()),
            "the journal and the engine disagree"
        );
        while let Some((conn, output)) = broker.poll_output() {
            let Some(state) = conns.get_mut(&conn.0) else {
                panic!("output for a connection that never connected: {conn:?}");
            };
            match output {
                Output::Close => {
                    state.closed = true;
                    // A fresh slot may connect again later, as a new connection.
                    conns.remove(&conn.0);
                }
                Output::Accepted(_) => {
                    if state.encoder.is_none() {
                        panic!("accepted before CONNECT: {conn:?}");
                    }
                }
                Output::Publish(publish) => {
                    let Some(encoder) = state.encoder else {
                        panic!("PUBLISH before CONNECT: {publish:?}");
                    };
                    if let Err(err) = encoder.encode(&publish.encodable(), &mut BytesMut::new()) {
                        panic!("the engine produced a PUBLISH that does not encode: {err}: {publish:?}");
                    }
                }
                Output::Packet(mut packet) => {
                    let Some(encoder) = state.encoder else {
                        panic!("packet before CONNECT: {packet:?}");
                    };
                    let mut buf = BytesMut::new();
                    let result = if matches!(*packet, Packet::Publish(_)) {
                        encoder.encode(packet.as_ref(), &mut buf)
                    } else {
                        encoder.encode_fitting(&mut packet, &mut buf)
                    };
                    if let Err(err) = result {
                        panic!("the engine produced a packet that does not encode: {err}: {packet:?}");
                    }
                }
            }
        }
    }
    while broker.poll_event().is_some() {}
    broker.begin_shutdown(now);
    while broker.poll_output().is_some() {}
    image.apply_all(broker.take_store_ops());
    assert_eq!(broker.journaled(), (image.sessions(), image.messages()));
    // A restart from the store brings back what was journaled.
    let mut restarted = Broker::new(config, now);
    restarted.restore(image.restored(), now);
    assert_eq!(restarted.journaled(), (image.sessions(), image.messages()));
});
