//! Fuzzes the record decoder: whatever the bytes, it returns, never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hongbao::fuzzing::record(data));
