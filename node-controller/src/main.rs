//! `node-controller`: the NC daemon.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use common::{
    auth::VerifyCalls,
    report::{keep_reporting, ReportSettings},
    rpc,
};
use node_controller::{config::NodeConfig, grpc::Node, images::ImageCache, resources};
use proto::{
    cluster_service_client::ClusterServiceClient, node_service_server::NodeServiceServer,
    NodeReport,
};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

fn main() -> std::process::ExitCode {
    common::daemon::main("node-controller", "The Gumtree node controller.", run)
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let started = rpc::start(
        &config.state_dir,
        &config.cluster_secret_file,
        &config.listen,
        &config.advertise,
    )
    .await?;
    let name = config.node_name();
    let instance_dir = config.instance_dir();
    std::fs::create_dir_all(&instance_dir)
        .with_context(|| format!("creating {}", instance_dir.display()))?;
    let cache_dir = config.image_cache_dir();
    let images = ImageCache::open(&cache_dir, config.image_cache_mib.saturating_mul(1 << 20))
        .with_context(|| format!("opening the image cache {}", cache_dir.display()))?;
    let node = Node::new(Arc::new(images), started.secret.clone(), &name);
    let heartbeat = Duration::from_secs(config.heartbeat_secs.max(1));
    let report = NodeReport {
        node_name: name.clone(),
        endpoint: started.advertise.clone(),
        resources: Some(resources::measure(&config, &instance_dir).context("measuring the host")?),
        hypervisor: "none".into(),
        version: common::VERSION.into(),
        ..Default::default()
    };
    let (updates, reports) = watch::channel(report);

    // Capacity can change under us (disk fills up): re-measure now and then,
    // and push only real changes.
    let measure_config = config.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            match resources::measure(&measure_config, &instance_dir) {
                Ok(now) => {
                    updates.send_if_modified(|r| {
                        let changed = r.resources.as_ref() != Some(&now);
                        r.resources = Some(now);
                        changed
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot measure host resources"),
            }
        }
    });
    tokio::spawn(keep_reporting(
        ReportSettings {
            parent: config.cc.clone(),
            parent_kind: "cluster controller",
            secret: started.secret.clone(),
            component: name.clone(),
            heartbeat,
        },
        reports,
        |channel, sign, reports| async move {
            ClusterServiceClient::with_interceptor(channel, sign)
                .report_node(reports)
                .await
        },
    ));
    tracing::info!(node = %name, listen = %started.addr, cc = %config.cc, "node controller ready");
    let incoming = TcpListenerStream::new(started.listener);
    rpc::serve_until_signal(|stop| {
        rpc::server()
            .add_service(NodeServiceServer::with_interceptor(
                node,
                VerifyCalls::new(started.secret.clone()),
            ))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    tracing::info!("node controller stopped");
    Ok(())
}
