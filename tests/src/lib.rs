//! End-to-end test support: [`harness::Cloud`] starts the real daemons.

pub mod harness;
