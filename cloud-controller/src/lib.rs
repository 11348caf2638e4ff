//! The cloud controller (CLC): the cloud's state of record and its front door.
//!
//! This crate holds the daemon's pieces (`cloud-controller`) and the admin
//! CLI (`gumtree-admin`), which talks to the daemon's `AdminService`.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod addresses;
pub mod cloudwatch;
pub mod config;
pub mod console;
pub mod core;
pub mod ec2;
pub mod events;
pub mod grpc;
pub mod images;
pub mod imds;
pub mod instances;
pub mod keypairs;
pub mod metadata;
pub mod registry;
pub mod security_groups;
pub mod snapshots;
pub mod tags;
pub mod volumes;
