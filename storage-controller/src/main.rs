//! `storage-controller`: the storage controller daemon.

use std::time::Duration;

use common::{
    pki::Role,
    report::{report_service_changes, ReportSettings},
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
    // Its room for volumes: the configured capacity, else the size of the
    // file system that holds them.
    let capacity = if config.capacity_gib > 0 {
        config.capacity_gib
    } else {
        let fs = nix::sys::statvfs::statvfs(&config.state_dir)?;
        (fs.blocks() as u64 * fs.fragment_size() as u64) >> 30
    };
    volumes.set_capacity(capacity);
    let report = {
        let (name, partition, endpoint) = (
            config.name.clone(),
            config.partition.clone(),
            started.advertise.clone(),
        );
        move |provisioned: u64| ServiceReport {
            service_type: "storage".into(),
            name: name.clone(),
            partition: partition.clone(),
            endpoint: endpoint.clone(),
            version: common::VERSION.into(),
            capacity_gib: capacity,
            provisioned_gib: provisioned,
            ..Default::default()
        }
    };
    let (room, updates) = tokio::sync::watch::channel(report(volumes.provisioned_gib()?));
    tokio::spawn(report_service_changes(
        ReportSettings {
            parent: config.clc.clone(),
            parent_kind: "cloud controller",
            parent_role: Role::Clc,
            trust: started.trust.clone(),
            heartbeat: Duration::from_secs(config.heartbeat_secs.max(1)),
        },
        updates,
    ));
    {
        // What its volumes take, told to the CLC when it changes.
        let volumes = volumes.clone();
        let report = report.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(now) = volumes.provisioned_gib() {
                    room.send_if_modified(|r| {
                        let changed = r.provisioned_gib != now;
                        if changed {
                            *r = report(now);
                        }
                        changed
                    });
                }
            }
        });
    }
    tracing::info!(name = %config.name, volumes = held, capacity_gib = capacity, exports = %exports.endpoint, listen = %started.addr, clc = %config.clc, "storage controller ready");
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
