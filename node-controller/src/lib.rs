//! The node controller (NC): one per host; runs instances and reports the
//! host's capacity and its instances' real state to its cluster controller.

#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod hypervisor;
pub mod images;
pub mod instances;
pub mod load;
pub mod metrics;
pub mod network;
pub mod resources;
pub mod virt;
pub mod volumes;
