//! Untrusted bytes into the header, manifest, signature and root parsers: must never
//! panic, hang or allocate beyond the format's limits.
//!
//! Run: `cd bundle/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run parse_metadata -- -max_total_time=60`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_bundle::fuzz_parse(data);
});
