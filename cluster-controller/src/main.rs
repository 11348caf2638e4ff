//! `cluster-controller`: the CC daemon.

use std::{sync::Arc, time::Duration};

use cluster_controller::network::{NetworkMode, Subnet};
use cluster_controller::{
    config::ClusterConfig, grpc::Cluster, instances::ClusterInstances, nodes::Nodes, placement,
};
use common::{
    pki::Role,
    report::{keep_reporting, ReportSettings},
    rpc,
};
use proto::{
    cloud_service_client::CloudServiceClient, cluster_service_server::ClusterServiceServer,
    ClusterReport,
};

fn main() -> std::process::ExitCode {
    common::daemon::main("cluster-controller", "The Gumtree cluster controller.", run)
}

async fn run(config: ClusterConfig) -> anyhow::Result<()> {
    let common::daemon::Started {
        rpc: started,
        store,
    } = common::daemon::start(&config).await?;
    let nodes = Arc::new(Nodes::open(
        &store,
        ClusterReport {
            cluster_name: config.name.clone(),
            zone: config.zone.clone(),
            endpoint: started.advertise.clone(),
            placement_policy: config.placement_policy.as_str().into(),
            version: common::VERSION.into(),
            rebalance: Some(proto::RebalanceSettings {
                enabled: config.rebalance,
                threshold_percent: config.rebalance_threshold,
                window_secs: config.rebalance_window_secs,
                cooldown_secs: config.rebalance_cooldown_secs,
            }),
            ..Default::default()
        },
    )?);
    let instances = Arc::new(
        ClusterInstances::open(
            nodes.clone(),
            &store,
            placement::Settings {
                policy: config.placement_policy,
                cpu_ratio: config.cpu_overcommit.max(0.1),
                memory_ratio: config.memory_overcommit.max(0.1),
                threshold: config.placement_threshold,
            },
            started.trust.clone(),
            match config.network_mode {
                NetworkMode::ManagedNoVlan => Some((
                    config.private_subnet.parse::<Subnet>()?,
                    config.bridge.clone(),
                )),
                NetworkMode::None => None,
            },
        )?
        .with_tunnel_id(config.tunnel_id),
    );
    let cluster = Cluster {
        nodes: nodes.clone(),
        instances: instances.clone(),
    };
    tokio::spawn(
        cluster
            .clone()
            .watch_liveness(Duration::from_secs(config.node_timeout_secs.max(1))),
    );
    {
        // Each node's bridge learns of the nodes that come (and forgets
        // those that go): at once when the set of ENABLED nodes changes,
        // and every 10 s in case a node missed it.
        let instances = instances.clone();
        let mut changes = nodes.subscribe();
        tokio::spawn(async move {
            let mut last = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let spec = instances.network_spec();
                        let now = spec.map(|s| s.tunnel_peers).unwrap_or_default();
                        if now == last {
                            continue;
                        }
                        last = now;
                    }
                }
                instances.push_network().await;
            }
        });
    }
    tokio::spawn(keep_reporting(
        ReportSettings {
            parent: config.clc.clone(),
            parent_kind: "cloud controller",
            parent_role: Role::Clc,
            trust: started.trust.clone(),
            heartbeat: Duration::from_secs(config.heartbeat_secs.max(1)),
        },
        nodes.subscribe(),
        |client, reports| async move {
            CloudServiceClient::new(client)
                .report_cluster(reports)
                .await
        },
    ));
    tracing::info!(
        cluster = %config.name,
        zone = %config.zone,
        listen = %started.addr,
        clc = %config.clc,
        placement = config.placement_policy.as_str(),
        "cluster controller ready"
    );
    let incoming = started.trust.incoming(started.listener);
    rpc::serve_until_signal(|stop| {
        started
            .trust
            .server()
            .add_service(ClusterServiceServer::new(cluster))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    store.flush()?;
    tracing::info!("cluster controller stopped");
    Ok(())
}
