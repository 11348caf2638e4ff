//! `storage-controller`: the storage controller daemon.

use std::time::Duration;

use common::{
    pki::Role,
    report::{report_service_to_clc, ReportSettings},
    rpc,
};
use proto::{storage_service_server::StorageServiceServer, ServiceReport};
use storage_controller::{
    backend::FileBackend,
    config::StorageConfig,
    exports::{self, Exports},
    grpc::Storage,
    snapshots::Snapshots,
    volumes::Volumes,
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
    // Exports listen on the advertised host unless told otherwise.
    let host = started
        .advertise
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| started.addr.ip().to_string());
    let export_listen = if config.export_listen.is_empty() {
        format!("{}:0", started.addr.ip())
    } else {
        config.export_listen.clone()
    };
    let (export_listener, export_addr) = rpc::bind(&export_listen).await?;
    let exports = Exports::open(
        &store,
        volumes.clone(),
        &config.state_dir.join("exports"),
        format!("{host}:{}", export_addr.port()),
    )?;
    tokio::spawn(exports::serve(
        exports.clone(),
        export_listener,
        started.trust.tls.clone(),
    ));
    tokio::spawn(exports.clone().supervise());
    let snapshots = Snapshots::open(&store, volumes.clone(), started.trust.clone())?;
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
    tracing::info!(name = %config.name, volumes = held, exports = %exports.endpoint, listen = %started.addr, clc = %config.clc, "storage controller ready");
    let incoming = started.trust.incoming(started.listener);
    rpc::serve_until_signal(|stop| {
        started
            .trust
            .server()
            .add_service(StorageServiceServer::new(Storage {
                volumes: volumes.clone(),
                exports: exports.clone(),
                snapshots: snapshots.clone(),
            }))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    store.flush()?;
    tracing::info!("storage controller stopped");
    Ok(())
}
