//! `cloud-controller`: the CLC daemon.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use cloud_controller::{
    accounts::Accounts,
    config::CloudConfig,
    core::{Cloud, Parts, Settings},
    ec2::{self, Ec2},
    registry::{self, Registry, ServiceRecord},
};
use common::{rpc, time};
use proto::{
    admin_service_server::AdminServiceServer, cloud_service_server::CloudServiceServer,
    identity_service_server::IdentityServiceServer, metadata_service_server::MetadataServiceServer,
};

fn main() -> std::process::ExitCode {
    common::daemon::main("cloud-controller", "The Gumtree cloud controller.", run)
}

async fn run(config: CloudConfig) -> anyhow::Result<()> {
    let common::daemon::Started {
        rpc: started,
        store,
    } = common::daemon::start(&config).await?;
    let accounts = Accounts::open(&store, &config.admin_account)?;
    let admin = accounts
        .bootstrap()
        .context("creating the system account")?;
    let registry = Registry::open(
        &store,
        ServiceRecord {
            service_type: registry::CLOUD.into(),
            name: config.name.clone(),
            partition: String::new(),
            endpoint: started.advertise.clone(),
            public_endpoint: String::new(),
            first_seen_ms: time::unix_ms(),
        },
    )?;
    let (ec2_listener, ec2_addr) = rpc::bind(&config.ec2_listen).await?;
    let tls = if config.ec2_tls_listen.is_empty() {
        None
    } else {
        let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
            anyhow::bail!("ec2_tls_listen needs tls_cert_file and tls_key_file");
        };
        let acceptor = common::tls::acceptor(cert, key).context("setting up HTTPS")?;
        let (listener, addr) = rpc::bind(&config.ec2_tls_listen).await?;
        Some((acceptor, listener, addr))
    };
    let cloud = Cloud::open(
        &store,
        Parts {
            registry: Arc::new(registry),
            accounts,
            trust: started.trust.clone(),
            public_ips: cloud_controller::addresses::parse_pool(&config.public_ips)?,
            settings: Settings {
                region: config.region.clone(),
                endpoint: match &tls {
                    Some((_, _, a)) => format!("https://{a}/"),
                    None => format!("http://{ec2_addr}/"),
                },
                admin_account: config.admin_account.clone(),
                assign_public_ips: config.assign_public_ips,
            },
            clusters: None,
            storage: None,
            metrics: Arc::new(
                metric_store::MetricStore::open(
                    &config.state_dir.join("metrics"),
                    config.metrics_cache_mib.max(1) * 1024 * 1024,
                )
                .context("opening the metric store")?,
            ),
        },
    )
    .context("opening the cloud's records")?;
    tokio::spawn(cloud.clone().watch_unknown_guests(
        config.unknown_guests,
        Duration::from_secs(config.unknown_guest_grace_secs),
        // Every record is read per scan: no more often than the other
        // reconciliations.
        Duration::from_secs(5),
    ));
    tokio::spawn(
        cloud
            .clone()
            .watch_liveness(Duration::from_secs(config.report_timeout_secs.max(1))),
    );
    let ec2 = Arc::new(Ec2 {
        cloud: cloud.clone(),
    });
    let imds = cloud_controller::imds::Imds::new(
        cloud.clone(),
        &started.trust.secret.derive("instance metadata tokens"),
        config.metadata_tokens_required,
    );
    tokio::spawn(ec2::serve(ec2_listener, None, ec2.clone()));
    tokio::spawn(cloud.clone().sync_firewalls());
    tokio::spawn(cloud.clone().keep_rebalancing(Duration::from_secs(2)));
    tokio::spawn(cloud.clone().finish_requests(Duration::from_secs(5)));
    tokio::spawn(cloud.clone().finish_volumes(Duration::from_secs(5)));
    tokio::spawn(cloud.clone().keep_evaluating_alarms(Duration::from_secs(5)));
    tokio::spawn(
        cloud
            .clone()
            .keep_collecting_metrics(Duration::from_secs(2)),
    );
    tokio::spawn(
        cloud
            .clone()
            .keep_metrics_trimmed(Duration::from_secs(3600)),
    );
    rpc::write_named_addr_file(&config.state_dir, "ec2.addr", ec2_addr)?;
    let console_addr = if config.console_listen.is_empty() {
        None
    } else {
        let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
            anyhow::bail!("console_listen needs tls_cert_file and tls_key_file");
        };
        let acceptor =
            common::tls::acceptor(cert, key).context("setting up the console's HTTPS")?;
        let trusted = common::tls::certificates(cert).context("reading tls_cert_file")?;
        let console = Arc::new(
            cloud_controller::console::build(
                ec2.clone(),
                &store,
                config.console_idle_minutes.max(1) * 60,
                &trusted,
            )
            .context("setting up the console")?,
        );
        let (listener, addr) = rpc::bind(&config.console_listen).await?;
        tokio::spawn(cloud_controller::console::serve(
            listener,
            acceptor,
            console.clone(),
        ));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(300));
            loop {
                tick.tick().await;
                if let Err(e) = console.sessions.expire() {
                    tracing::warn!(error = %e, "expiring console sessions failed");
                }
            }
        });
        rpc::write_named_addr_file(&config.state_dir, "console.addr", addr)?;
        Some(addr)
    };
    if let Some((acceptor, listener, addr)) = tls {
        tokio::spawn(ec2::serve(listener, Some(acceptor), ec2));
        rpc::write_named_addr_file(&config.state_dir, "ec2tls.addr", addr)?;
    }
    tracing::info!(
        listen = %started.addr,
        ec2 = %ec2_addr,
        console = ?console_addr.map(|a| format!("https://{a}/")),
        admin_account = %config.admin_account,
        admin_access_key = %admin.access_key_id,
        "cloud controller ready"
    );
    let incoming = started.trust.incoming(started.listener);
    rpc::serve_until_signal(|stop| {
        started
            .trust
            .server()
            .add_service(CloudServiceServer::new(cloud.clone()))
            .add_service(AdminServiceServer::new(cloud.clone()))
            .add_service(IdentityServiceServer::new(cloud.clone()))
            .add_service(MetadataServiceServer::new(imds.clone()))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    store.flush()?;
    tracing::info!("cloud controller stopped");
    Ok(())
}
