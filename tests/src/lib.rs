//! End-to-end test support: [`harness::Cloud`] starts the real daemons and
//! [`clients`] runs the real clients against them.

pub mod clients;
pub mod ec2client;
pub mod fleet;
pub mod harness;
pub mod hosts;
pub mod node;
pub mod probe;
pub mod rawhttp;
pub mod separate;
