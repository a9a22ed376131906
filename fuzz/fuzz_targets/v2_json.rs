//! `nimify_tests::fuzz::v2_json` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nimify_tests::fuzz::v2_json(data));
