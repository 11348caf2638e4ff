#![no_main]
//! cargo fuzz target: cloud_controller::cloudwatch::fuzzing::requests.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cloud_controller::cloudwatch::fuzzing::requests(data);
});
