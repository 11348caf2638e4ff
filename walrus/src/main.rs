//! `walrus`: the Walrus daemon.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use common::{
    pki::Role,
    report::{report_service_to_clc, ReportSettings},
    rpc,
};
use proto::{walrus_internal_server::WalrusInternalServer, ServiceReport};
use walrus::{
    config::WalrusConfig,
    grpc::Internal,
    identity::Identity,
    objects::ObjectStore,
    s3::{self, Settings, S3},
};

fn main() -> std::process::ExitCode {
    common::daemon::main("walrus", "The Gumtree Walrus (S3 store).", run)
}

async fn run(config: WalrusConfig) -> anyhow::Result<()> {
    let common::daemon::Started {
        rpc: started,
        store,
    } = common::daemon::start(&config).await?;
    let objects = ObjectStore::open(&config.state_dir.join("objects"), &store)
        .await
        .context("opening the object store")?;
    let identity = Arc::new(Identity::new(&config.clc, &started.trust)?);
    let (s3_listener, s3_addr) = rpc::bind(&config.s3_listen).await?;
    rpc::write_named_addr_file(&config.state_dir, "s3.addr", s3_addr)?;
    let internal = Internal::new(objects.clone(), identity.clone());
    let s3 = Arc::new(S3 {
        objects,
        identity,
        settings: Settings {
            domain: config.s3_domain.clone(),
            region: config.region.clone(),
        },
    });
    tokio::spawn(s3::serve(s3_listener, None, s3.clone()));
    let tls_addr = if config.s3_tls_listen.is_empty() {
        None
    } else {
        let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
            anyhow::bail!("s3_tls_listen needs tls_cert_file and tls_key_file");
        };
        let acceptor = common::tls::acceptor(cert, key).context("setting up HTTPS")?;
        let (listener, addr) = rpc::bind(&config.s3_tls_listen).await?;
        rpc::write_named_addr_file(&config.state_dir, "s3tls.addr", addr)?;
        tokio::spawn(s3::serve(listener, Some(acceptor), s3));
        Some(addr)
    };
    tokio::spawn(report_service_to_clc(
        ReportSettings {
            parent: config.clc.clone(),
            parent_kind: "cloud controller",
            parent_role: Role::Clc,
            trust: started.trust.clone(),
            heartbeat: Duration::from_secs(config.heartbeat_secs.max(1)),
        },
        ServiceReport {
            service_type: "walrus".into(),
            name: config.name.clone(),
            partition: String::new(),
            endpoint: started.advertise.clone(),
            public_endpoint: match tls_addr {
                Some(a) => format!("https://{a}"),
                None => format!("http://{s3_addr}"),
            },
            version: common::VERSION.into(),
            ..Default::default()
        },
    ));
    tracing::info!(name = %config.name, listen = %started.addr, s3 = %s3_addr, s3_tls = ?tls_addr, clc = %config.clc, "Walrus ready");
    let incoming = started.trust.incoming(started.listener);
    rpc::serve_until_signal(|stop| {
        started
            .trust
            .server()
            .add_service(WalrusInternalServer::new(internal))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    store.flush()?;
    tracing::info!("Walrus stopped");
    Ok(())
}
