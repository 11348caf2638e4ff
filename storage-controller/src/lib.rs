//! The storage controller (SC): EBS-style volumes and snapshots.

#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod exports;
pub mod fleece;
pub mod grpc;
pub mod snapshots;
pub mod volumes;
