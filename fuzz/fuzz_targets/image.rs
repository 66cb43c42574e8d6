#![no_main]

use std::sync::Once;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // libFuzzer's hook aborts on any panic, even one the server catches (a third-party decoder's,
    // which ferroserve answers with a 400). Panics nobody catches still end the run: they
    // unwind into libfuzzer-sys, which aborts.
    static QUIET: Once = Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("caught: {info}"))));
    ferroserve_tasks::fuzzing::image(data)
});
