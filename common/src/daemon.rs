//! What every daemon's `main` does: parse `--config`, load it, set up
//! tracing, run on a multi-threaded runtime, and report a failure once with
//! its whole cause chain.

use std::{fmt::Display, future::Future, path::PathBuf, process::ExitCode};

use serde::de::DeserializeOwned;

/// A daemon's configuration.
pub trait DaemonConfig: DeserializeOwned + Default {
    /// The tracing filter to start with (`RUST_LOG` wins).
    fn log_filter(&self) -> &str;
    /// Where the daemon starts from: its state, secret, certificates,
    /// identity and gRPC address.
    fn start_at(&self) -> crate::rpc::StartAt<'_>;
}

/// A started daemon: its gRPC listener and trust, and its database.
#[derive(Debug)]
pub struct Started {
    pub rpc: crate::rpc::Started,
    pub store: crate::store::Store,
}

/// The start every daemon makes: the state directory, the secret and the
/// certificates, the gRPC listener and its address file, then the database
/// (`db` in the state directory).
pub async fn start<C: DaemonConfig>(config: &C) -> Result<Started, StartError> {
    let at = config.start_at();
    let db = at.state_dir.join("db");
    let rpc = crate::rpc::start(at).await?;
    let store = crate::store::Store::open(&db)
        .map_err(|source| StartError::Database { path: db, source })?;
    Ok(Started { rpc, store })
}

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Rpc(#[from] crate::rpc::StartError),
    #[error("cannot open the database {path}: {source}")]
    Database {
        path: PathBuf,
        source: crate::store::StoreError,
    },
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
