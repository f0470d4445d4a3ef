//! Fuzz the TCP framing codecs: arbitrary bytes, arbitrary splits into reads.
//! Run: `cargo fuzz run framing` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| host::framing::fuzz_decode(data));
