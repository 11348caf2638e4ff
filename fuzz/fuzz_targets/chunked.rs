#![no_main]
//! cargo fuzz target: walrus::fuzzing::chunked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walrus::fuzzing::chunked(data);
});
