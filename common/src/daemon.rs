//! What every daemon's `main` does: parse `--config`, load it, set up
//! tracing, run on a multi-threaded runtime, and report a failure once with
//! its whole cause chain.

use std::{fmt::Display, future::Future, path::PathBuf, process::ExitCode};

use serde::de::DeserializeOwned;

/// A daemon's configuration.
pub trait DaemonConfig: DeserializeOwned + Default {
    /// The tracing filter to start with (`RUST_LOG` wins).
    fn log_filter(&self) -> &str;
}

/// Runs daemon `binary` (described by `about`) with `run`.
pub fn main<C, F, Fut, E>(binary: &'static str, about: &'static str, run: F) -> ExitCode
where
    C: DaemonConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let args = clap::Command::new(binary)
        .about(about)
        .version(crate::VERSION)
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Configuration file (TOML); the documented defaults apply without one"),
        )
        .get_matches();
    let config: C = match crate::config::load_or_default(
        args.get_one::<PathBuf>("config").map(PathBuf::as_path),
    ) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::telemetry::init(config.log_filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("{binary}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints an anyhow error's whole cause chain.
            tracing::error!("{binary} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
