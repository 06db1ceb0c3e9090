//! Arbitrary bytes decoded by a server's decoder and by a client's. Every packet that decodes
//! must encode in the decoder's protocol version and decode back, with a fresh decoder of the
//! same role, to an equal packet.
//!
//! The first byte is a selector: modulo 3 of its low nibble picks the protocol version of the
//! client's decoder; if its high bit is set, the server's stream starts with a valid CONNECT
//! and the client's with a valid CONNACK in that version, so that from the first run the rest
//! of the input reaches the decoders of every packet type.
#![no_main]

use bulwark_proto::{Packet, Role};
use bulwark_proto_fuzz::{assert_reencodes, decode_both_ways, opening, version_for};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let version = version_for(selector & 0x0F);
    let prefixed = selector & 0x80 != 0;

    for role in [Role::Server, Role::Client] {
        let mut stream = if prefixed {
            opening(role, version)
        } else {
            Vec::new()
        };
        stream.extend_from_slice(rest);
        let outcome = decode_both_ways(role, version, &stream, 0);
        let version = match (role, outcome.packets.first()) {
            (Role::Server, Some(Packet::Connect(connect))) => {
                // A server learns the version from the CONNECT.
                assert_eq!(outcome.version, Some(connect.protocol_version));
                connect.protocol_version
            }
            (Role::Server, _) => {
                assert!(
                    outcome.packets.is_empty(),
                    "a server decoded a packet before CONNECT"
                );
                continue;
            }
            (Role::Client, _) => version,
        };
        for packet in &outcome.packets {
            assert_reencodes(role, version, packet);
        }
    }
});
