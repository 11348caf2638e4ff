//! `walrus`: the Walrus daemon.

use std::time::Duration;

use anyhow::Context;
use common::{
    auth::VerifyCalls,
    report::{report_service_to_clc, ReportSettings},
    rpc,
    store::Store,
};
use proto::{walrus_internal_server::WalrusInternalServer, ServiceReport};
use tokio_stream::wrappers::TcpListenerStream;
use walrus::{config::WalrusConfig, grpc::Internal};

fn main() -> std::process::ExitCode {
    common::daemon::main("walrus", "The Gumtree Walrus (S3 store).", run)
}

async fn run(config: WalrusConfig) -> anyhow::Result<()> {
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
            service_type: "walrus".into(),
            name: config.name.clone(),
            partition: String::new(),
            endpoint: started.advertise.clone(),
            version: common::VERSION.into(),
            ..Default::default()
        },
    ));
    tracing::info!(name = %config.name, listen = %started.addr, clc = %config.clc, "Walrus ready");
    let incoming = TcpListenerStream::new(started.listener);
    rpc::serve_until_signal(|stop| {
        rpc::server()
            .add_service(WalrusInternalServer::with_interceptor(
                Internal,
                VerifyCalls::new(started.secret.clone()),
            ))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    store.flush()?;
    tracing::info!("Walrus stopped");
    Ok(())
}
