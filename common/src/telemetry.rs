//! One tracing set-up for every daemon.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to stderr. `RUST_LOG` overrides `filter` (the config's `log_filter`).
pub fn init(filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}
