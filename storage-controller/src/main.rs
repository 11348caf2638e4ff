//! `storage-controller`: the storage controller daemon.

use std::time::Duration;

use common::{
    pki::Role,
    report::{report_service_to_clc, ReportSettings},
    rpc,
};
use proto::{storage_service_server::StorageServiceServer, ServiceReport};
use storage_controller::{
    backend::FileBackend, config::StorageConfig, grpc::Storage, volumes::Volumes,
};

fn main() -> std::process::ExitCode {
    common::daemon::main("storage-controller", "The Gumtree storage controller.", run)
}

async fn run(config: StorageConfig) -> anyhow::Result<()> {
    let common::daemon::Started {
        rpc: started,
        store,
    } = common::daemon::start(&config).await?;
    let backend = FileBackend::open(&config.state_dir.join("volumes"))?;
    let volumes = Volumes::open(&store, std::sync::Arc::new(backend))?;
    let held = volumes.list()?.len();
    tokio::spawn(report_service_to_clc(
        ReportSettings {
            parent: config.clc.clone(),
            parent_kind: "cloud controller",
            parent_role: Role::Clc,
            trust: started.trust.clone(),
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
    tracing::info!(name = %config.name, volumes = held, listen = %started.addr, clc = %config.clc, "storage controller ready");
    let incoming = started.trust.incoming(started.listener);
    rpc::serve_until_signal(|stop| {
        started
            .trust
            .server()
            .add_service(StorageServiceServer::new(Storage {
                volumes: volumes.clone(),
            }))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    store.flush()?;
    tracing::info!("storage controller stopped");
    Ok(())
}
