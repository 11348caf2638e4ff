//! The cluster controller (CC): one per availability zone; knows its nodes,
//! places instances on them and reports the whole cluster to the CLC.

#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod instances;
pub mod ledger;
pub mod network;
pub mod nodes;
pub mod placement;
