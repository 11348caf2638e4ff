#![no_main]
//! cargo fuzz target: walrus::fuzzing::xml.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walrus::fuzzing::xml(data);
});
