//! What several Gumtree tiers need: configuration loading, telemetry, the
//! cluster-secret authentication of internal calls, resource ids, host
//! resources, the durable store on sled and the report streams that carry
//! state up the tiers.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod daemon;
pub mod host;
pub mod http;
pub mod ids;
pub mod instance;
pub mod mtls;
pub mod nbd;
pub mod pki;
pub mod report;
pub mod rpc;
pub mod shutdown;
pub mod sigv2;
pub mod sigv4;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod xml;

/// Version string every daemon reports to the tier above it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
