//! Arbitrary bytes into a client's decoder. The first byte picks the protocol version (modulo
//! 3) and the chunk size (divided by 3; 0: all at once). Nothing may panic, the split may not
//! change the result, and an error must stick.
#![no_main]

use bulwark_proto::Role;
use bulwark_proto_fuzz::{decode_both_ways, version_for};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let version = version_for(selector);
    decode_both_ways(Role::Client, version, rest, usize::from(selector / 3));
});
