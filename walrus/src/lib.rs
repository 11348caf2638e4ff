//! Walrus: the S3-compatible object store, which also keeps images,
//! kernels, ramdisks and snapshots.

#![forbid(unsafe_code)]

pub mod config;
pub mod fuzzing;
pub mod grpc;
pub mod identity;
pub mod objects;
pub mod s3;
