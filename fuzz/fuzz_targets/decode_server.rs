//! Arbitrary bytes into a server's decoder, split into chunks whose size the first byte picks
//! (0: all at once). Nothing may panic, the split may not change the result, and an error
//! must stick.
#![no_main]

use bulwark_proto::{ProtocolVersion, Role};
use bulwark_proto_fuzz::decode_both_ways;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    decode_both_ways(Role::Server, ProtocolVersion::V5, rest, usize::from(chunk));
});
