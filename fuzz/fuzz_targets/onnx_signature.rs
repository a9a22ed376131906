//! `nimify_tests::fuzz::onnx_signature` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nimify_tests::fuzz::onnx_signature(data));
