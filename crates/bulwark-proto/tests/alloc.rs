//! Decoding a small PUBLISH allocates nothing beyond the shared input buffer: topic and
//! payload are slices of it. Measured with dhat's heap statistics, which count every
//! allocation in the process: this test is a plain `main` (`harness = false`), so no test
//! runner thread allocates meanwhile (on a loaded machine libtest's did, now and then).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code (a plain main, so clippy cannot tell)"
)]

use bulwark_proto::{
    ClientId, Connect, Decoder, DecoderLimits, Encoder, Packet, PacketId, ProtocolVersion, Publish,
    QoS, TopicName,
};
use bytes::{Bytes, BytesMut};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn wire(version: ProtocolVersion) -> (Bytes, Bytes) {
    let encoder = Encoder::new(version);
    let mut connect = BytesMut::new();
    encoder
        .encode(
            &Connect::new(version, ClientId::new("alloc").unwrap()),
            &mut connect,
        )
        .unwrap();
    let mut publish = Publish::new(
        TopicName::new("sensors/plant-7/line-3/temperature").unwrap(),
        Bytes::from(vec![0x5A; 64]),
    );
    publish.qos = QoS::AtLeastOnce;
    publish.packet_id = PacketId::new(4242);
    let mut bytes = BytesMut::new();
    encoder.encode(&publish, &mut bytes).unwrap();
    (connect.freeze(), bytes.freeze())
}

const NAME: &str = "decoding_a_64_byte_qos1_publish_allocates_nothing";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // What test runners ask of a test binary (`--list`, as cargo-nextest does): one test,
    // not ignored.
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{NAME}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return;
    }
    decoding_a_64_byte_qos1_publish_allocates_nothing();
    println!("test {NAME} ... ok");
}

fn decoding_a_64_byte_qos1_publish_allocates_nothing() {
    let _profiler = dhat::Profiler::builder().testing().eprint_json().build();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (connect, publish) = wire(version);
        let mut decoder = Decoder::server(DecoderLimits::default());
        decoder.handle_bytes(&connect);
        assert!(matches!(
            decoder.poll_packet(),
            Ok(Some(Packet::Connect(_)))
        ));
        // The first packet turns the receive buffer into shared storage: that one allocation
        // belongs to the buffer, not to the packet.
        decoder.handle_bytes(&publish);
        assert!(matches!(
            decoder.poll_packet(),
            Ok(Some(Packet::Publish(_)))
        ));

        let before = dhat::HeapStats::get();
        for _ in 0..1_000 {
            decoder.handle_bytes(&publish);
            let Ok(Some(Packet::Publish(packet))) = decoder.poll_packet() else {
                panic!("expected a PUBLISH");
            };
            assert_eq!(packet.payload.len(), 64);
        }
        let after = dhat::HeapStats::get();
        dhat::assert_eq!(after.total_blocks, before.total_blocks);
    }
}
