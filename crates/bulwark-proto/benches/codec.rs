//! Decoding and encoding speed of the packets on the broker's hot path: a QoS 1 PUBLISH with a
//! 64 B and a 4 KiB payload, and a SUBSCRIBE with ten filters. Results: docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark set-up")]

use std::hint::black_box;

use bulwark_proto::{
    ClientId, Connect, Decoder, DecoderLimits, Encoder, Packet, PacketId, ProtocolVersion, Publish,
    QoS, Subscribe, SubscribeProperties, Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn publish(payload_len: usize) -> Publish {
    let mut publish = Publish::new(
        TopicName::new("sensors/plant-7/line-3/temperature").unwrap(),
        Bytes::from(vec![0x5A; payload_len]),
    );
    publish.qos = QoS::AtLeastOnce;
    publish.packet_id = PacketId::new(4242);
    publish
}

fn subscribe() -> Subscribe {
    let subscriptions = (0..10)
        .map(|i| Subscription {
            filter: TopicFilter::new(&format!("devices/device-{i}/+/telemetry/#")).unwrap(),
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        })
        .collect();
    Subscribe {
        packet_id: PacketId::new(7).unwrap(),
        properties: SubscribeProperties::default(),
        subscriptions,
    }
}

fn encode<P: bulwark_proto::Encode>(version: ProtocolVersion, packet: &P) -> Bytes {
    let mut buf = BytesMut::new();
    Encoder::new(version).encode(packet, &mut buf).unwrap();
    buf.freeze()
}

/// A server-side decoder that has already accepted a CONNECT.
fn connected_decoder(version: ProtocolVersion) -> Decoder {
    let mut decoder = Decoder::server(DecoderLimits::default());
    decoder.handle_bytes(&encode(
        version,
        &Connect::new(version, ClientId::new("bench").unwrap()),
    ));
    assert!(matches!(
        decoder.poll_packet(),
        Ok(Some(Packet::Connect(_)))
    ));
    decoder.set_authenticated();
    decoder
}

/// `decode`: `poll_packet` on a decoder whose buffer already holds the packet, as after a socket
/// read into `Decoder::buffer_mut` (the packet is dropped outside the timing).
/// `decode_stream`: the whole cycle for one packet: copy in with `handle_bytes`, decode, drop.
fn bench_decode(c: &mut Criterion, name: &str, version: ProtocolVersion, wire: &Bytes) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function(name, |b| {
        b.iter_batched_ref(
            || {
                let mut decoder = connected_decoder(version);
                decoder.handle_bytes(wire);
                decoder
            },
            |decoder| decoder.poll_packet().unwrap().unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let mut group = c.benchmark_group("decode_stream");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    let mut decoder = connected_decoder(version);
    group.bench_function(name, |b| {
        b.iter(|| {
            decoder.handle_bytes(black_box(wire));
            drop(black_box(decoder.poll_packet().unwrap().unwrap()));
        })
    });
    group.finish();
}

fn bench_encode<P: bulwark_proto::Encode>(
    c: &mut Criterion,
    name: &str,
    version: ProtocolVersion,
    packet: &P,
) {
    let mut group = c.benchmark_group("encode");
    let encoder = Encoder::new(version);
    let mut buf = BytesMut::with_capacity(8192);
    group.bench_function(name, |b| {
        b.iter(|| {
            buf.clear();
            black_box(encoder.encode(black_box(packet), &mut buf).unwrap())
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    for (version, tag) in [
        (ProtocolVersion::V3_1_1, "v3.1.1"),
        (ProtocolVersion::V5, "v5"),
    ] {
        for len in [64, 4096] {
            let packet = publish(len);
            let name = format!("publish_qos1_{len}B_{tag}");
            bench_decode(c, &name, version, &encode(version, &packet));
            bench_encode(c, &name, version, &packet);
        }
        let packet = subscribe();
        let name = format!("subscribe_10_filters_{tag}");
        bench_decode(c, &name, version, &encode(version, &packet));
        bench_encode(c, &name, version, &packet);
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
