//! `storage-controller`: the storage controller daemon.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use common::{
    auth::VerifyCalls,
    report::{report_service_to_clc, ReportSettings},
    rpc,
    store::Store,
    telemetry,
};
use proto::{storage_service_server::StorageServiceServer, ServiceReport};
use storage_controller::{config::StorageConfig, grpc::Storage};
use tokio_stream::wrappers::TcpListenerStream;

/// The Gumtree storage controller.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: StorageConfig = common::config::load_or_default(args.config.as_deref())?;
    telemetry::init(&config.log_filter);
    if let Err(e) = run(config).await {
        tracing::error!("storage controller failed: {e:#}");
        return Err(e);
    }
    Ok(())
}

async fn run(config: StorageConfig) -> anyhow::Result<()> {
    let started = rpc::start(
        &config.state_dir,
        &config.cluster_secret_file,
        &config.listen,
        &config.advertise,
    )
    .await?;
    let store = Store::open(&config.state_dir.join("db")).context("opening the database")?;
    tokio::spawn(report_service_to_clc(
        ReportSettings {
            parent: config.clc.clone(),
            parent_kind: "cloud controller",
            secret: started.secret.clone(),
            component: config.name.clone(),
            heartbeat: Duration::from_secs(config.heartbeat_secs.max(1)),
        },
        ServiceReport {
            service_type: "storage".into(),
            name: config.name.clone(),
            partition: config.partition.clone(),
            endpoint: started.advertise.clone(),
            version: common::VERSION.into(),
            ..Default::default()
        },
    ));
    tracing::info!(name = %config.name, listen = %started.addr, clc = %config.clc, "storage controller ready");
    let incoming = TcpListenerStream::new(started.listener);
    rpc::serve_until_signal(|stop| {
        rpc::server()
            .add_service(StorageServiceServer::with_interceptor(
                Storage,
                VerifyCalls::new(started.secret.clone()),
            ))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    store.flush()?;
    tracing::info!("storage controller stopped");
    Ok(())
}
