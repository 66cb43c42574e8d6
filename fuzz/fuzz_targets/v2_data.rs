#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferroserve_http::fuzzing::v2_data(data));
