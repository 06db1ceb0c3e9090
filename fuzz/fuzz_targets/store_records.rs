//! The durable store's record layout: bytes read back from a store file (damaged, truncated,
//! hand-edited) never panic the reader, and every record that reads back writes out and
//! reads back the same. The input is a record body; the target also tries it with a valid
//! checksum appended, so that the fuzzer reaches past the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bulwark_store::check_record_bytes(data);
});
