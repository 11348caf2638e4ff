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
    // Without a configured address, exports take a free port once and keep
    // it: the nodes' relays of attached volumes hold it, and must find the
    // export there again after a restart (or a kill -9).
    let remembered = std::fs::read_to_string(config.state_dir.join("exports.addr"))
        .ok()
        .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port());
    let (export_listener, export_addr) = if !config.export_listen.is_empty() {
        rpc::bind(&config.export_listen).await?
    } else {
        let ip = started.addr.ip();
        match remembered {
            Some(port) => match rpc::bind(&format!("{ip}:{port}")).await {
                Ok(bound) => bound,
                Err(e) => {
                    tracing::error!(error = %e, port, "the exports' port of last time is taken: attached volumes must be attached again");
                    rpc::bind(&format!("{ip}:0")).await?
                }
            },
            None => rpc::bind(&format!("{ip}:0")).await?,
        }
    };
    if config.export_listen.is_empty() && remembered != Some(export_addr.port()) {
        rpc::write_named_addr_file(&config.state_dir, "exports.addr", export_addr)?;
    }
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
