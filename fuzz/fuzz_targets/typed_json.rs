//! `nimify_tests::fuzz::typed_json` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nimify_tests::fuzz::typed_json(data));
