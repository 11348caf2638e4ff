//! `node-controller`: the NC daemon.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use common::{
    pki::Role,
    report::{keep_reporting, ReportSettings},
    rpc,
};
use node_controller::network::{HostNetwork, LinuxNetwork, Relay};
use node_controller::{
    config::NodeConfig,
    grpc::Node,
    hypervisor::{Hypervisor, Libvirt},
    images::ImageCache,
    instances::Instances,
    resources,
    virt::{ProbeGuest, Virt, Virtualization, PROBE_DEADLINE},
};
use proto::{
    cluster_service_client::ClusterServiceClient, node_service_server::NodeServiceServer,
    NodeReport,
};
use tokio::sync::watch;

fn main() -> std::process::ExitCode {
    common::daemon::main("node-controller", "The Gumtree node controller.", run)
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let name = config.node_name();
    let common::daemon::Started {
        rpc: started,
        store,
    } = common::daemon::start(&config).await?;
    let instance_dir = config.instance_dir();
    std::fs::create_dir_all(&instance_dir)
        .with_context(|| format!("creating {}", instance_dir.display()))?;
    let cache_dir = config.image_cache_dir();
    let images = ImageCache::open(&cache_dir, config.image_cache_mib.saturating_mul(1 << 20))
        .with_context(|| format!("opening the image cache {}", cache_dir.display()))?;
    let images = Arc::new(images);
    let hv: Arc<dyn Hypervisor> = Arc::new(
        Libvirt::connect(&config.libvirt_uri)
            .with_context(|| format!("connecting to libvirt at {}", config.libvirt_uri))?,
    );
    let virt = {
        let (configured, store, hv, dir) = (
            config.hypervisor.clone(),
            store.clone(),
            hv.clone(),
            config.state_dir.clone(),
        );
        let guest = match (&config.probe_kernel, &config.probe_ramdisk) {
            (Some(k), Some(r)) => match ProbeGuest::existing(k, r) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(error = %e, "no test guest to prove KVM with");
                    None
                }
            },
            _ => None,
        };
        let emulator = config.emulator.clone();
        tokio::task::spawn_blocking(move || {
            Virtualization::choose(
                &configured,
                &store,
                hv.as_ref(),
                guest.as_ref(),
                emulator.as_deref(),
                &dir,
                PROBE_DEADLINE,
            )
        })
        .await??
        .with_watchdog(Duration::from_secs(config.kvm_watchdog_secs))
    };
    let virt = Arc::new(virt);
    let (virt_type, why) = virt.current();
    if virt_type == Virt::Kvm {
        tracing::info!(virt = %virt_type, %why, "virtualization chosen");
    } else {
        tracing::warn!(virt = %virt_type, %why, "no KVM acceleration: guests run under QEMU TCG (slower)");
    }
    let tunnel_address = config
        .tunnel_address(&started.advertise)
        .map_err(anyhow::Error::msg)?
        .filter(|_| config.manage_network);
    let network = config.manage_network.then(|| -> Arc<dyn HostNetwork> {
        Arc::new(
            LinuxNetwork::new(
                (!config.netns.is_empty()).then(|| config.netns.clone()),
                &config.network_dir,
                config.metadata_port,
                Relay {
                    clc: config.clc.clone(),
                    trust: started.trust.clone(),
                },
            )
            .with_public_interface(
                (!config.public_interface.is_empty()).then(|| config.public_interface.clone()),
            )
            .with_tunnel_address(tunnel_address),
        )
    });
    let instances = Arc::new(
        Instances::open(
            hv,
            images.clone(),
            &store,
            &instance_dir,
            &name,
            virt.clone(),
            network,
        )
        .context("opening the instance records")?,
    );
    instances.reattach().await;
    instances.settle_incoming().await;
    match (&tunnel_address, config.migration_tls_dir.as_str()) {
        (_, "") => {}
        (Some(address), dir) => {
            instances.serve_migrations(address.to_string(), dir.into());
            tracing::info!(%address, tls_dir = dir, "live migrations to and from this node");
        }
        (None, _) => tracing::warn!(
            "migration_tls_dir is set but the node has no tunnel address: it takes no part in live migrations"
        ),
    }
    let relays = node_controller::volumes::VolumeRelays::new(
        &config.state_dir.join("volumes"),
        started.trust.tls.clone(),
        &node_controller::volumes::VolumeRelays::program_beside_this(),
    )
    .context("the volume relay directory")?;
    instances.serve_volumes(Arc::new(relays));
    {
        // The relays of attached volumes outlive a restart; any missing is
        // started again (QEMU reconnects to it).
        let instances = instances.clone();
        tokio::spawn(async move { instances.relay_volumes().await });
    }
    let node = Node::new(images, instances.clone(), started.trust.clone());
    let heartbeat = Duration::from_secs(config.heartbeat_secs.max(1));
    let report = NodeReport {
        node_name: name.clone(),
        endpoint: started.advertise.clone(),
        resources: Some(resources::measure(&config, &instance_dir).context("measuring the host")?),
        hypervisor: virt_type.to_string(),
        virt_reason: why,
        version: common::VERSION.into(),
        tunnel_address: tunnel_address.map(|a| a.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    let (updates, reports) = watch::channel(report);

    // Guests started under KVM are watched until they show they run.
    let watched = instances.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            watched.kvm_watchdog().await;
        }
    });

    // Instances change state under us (a guest powers off) and capacity
    // too (a disk fills up): look every second, push only real changes.
    let measure_config = config.clone();
    let watched = instances.clone();
    let load_every = config.load_sample_secs.max(1);
    let sample_every = config.sample_secs.max(1);
    let sample_dir = instance_dir.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut measure_failed: Option<String> = None;
        let mut sampler = node_controller::load::LoadSampler::default();
        let mut metrics = node_controller::metrics::MetricSampler::default();
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            // What the guests used: the load every load_sample_secs, the
            // metrics every sample_secs, from one reading of libvirt.
            let (load_due, sample_due) = (
                ticks.is_multiple_of(load_every),
                ticks.is_multiple_of(sample_every),
            );
            let stats = if load_due || sample_due {
                match watched.guest_stats().await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the guests' counters");
                        None
                    }
                }
            } else {
                None
            };
            let (load, sampled_metrics) = match stats {
                None => (None, None),
                Some(stats) => {
                    let now = std::time::Instant::now();
                    let now_ms = common::time::unix_ms();
                    let load = if load_due {
                        let times: Vec<(String, u64, u64)> = stats
                            .iter()
                            .map(|g| (g.name.clone(), g.cpu_ns, g.memory_kib))
                            .collect();
                        sampler.sample(now, now_ms, &times, node_controller::load::host_cpu())
                    } else {
                        None
                    };
                    let sample = if sample_due {
                        let dir = sample_dir.clone();
                        let (host, state) = tokio::task::spawn_blocking(move || {
                            (
                                node_controller::metrics::host_counters(),
                                node_controller::metrics::host_state(&dir),
                            )
                        })
                        .await
                        .unwrap_or_default();
                        metrics
                            .sample(now, now_ms, stats, host, state)
                            .map(|_| metrics.recent())
                    } else {
                        None
                    };
                    (load, sample)
                }
            };
            ticks += 1;
            let (statuses, (cores, memory), unknown) = match watched.survey().await {
                Ok(s) => (
                    s.statuses
                        .into_iter()
                        .map(proto::InstanceStatus::from)
                        .collect::<Vec<_>>(),
                    (s.cores_held, s.memory_held),
                    s.unknown
                        .into_iter()
                        .map(proto::InstanceStatus::from)
                        .collect::<Vec<_>>(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read instance states");
                    continue;
                }
            };
            // A directory removed under us is made again (its file
            // system is what the node offers); a failure is logged once.
            let _ = std::fs::create_dir_all(&instance_dir);
            let mut now = match resources::measure(&measure_config, &instance_dir) {
                Ok(r) => {
                    measure_failed = None;
                    r
                }
                Err(e) => {
                    let e = e.to_string();
                    if measure_failed.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, dir = %instance_dir.display(), "cannot measure host resources");
                        measure_failed = Some(e);
                    }
                    continue;
                }
            };
            now.cores_free = now.cores_total.saturating_sub(cores);
            now.memory_mib_free = now.memory_mib_total.saturating_sub(memory);
            let (virt, why) = watched.virtualization();
            updates.send_if_modified(|r| {
                let virt_changed = r.hypervisor != virt.as_str() || r.virt_reason != why;
                r.hypervisor = virt.to_string();
                r.virt_reason = why;
                let same_states = r.instances.len() == statuses.len()
                    && r.instances
                        .iter()
                        .zip(&statuses)
                        .all(|(a, b)| a.instance_id == b.instance_id && a.state == b.state);
                let changed = r.resources.as_ref() != Some(&now)
                    || !same_states
                    || virt_changed
                    || r.unknown_guests != unknown;
                r.resources = Some(now);
                r.instances = statuses;
                r.unknown_guests = unknown;
                let sampled = load.is_some() || sampled_metrics.is_some();
                if let Some(load) = load {
                    r.load = Some(load);
                }
                if let Some(samples) = sampled_metrics {
                    r.samples = samples;
                }
                changed || sampled
            });
        }
    });
    tokio::spawn(keep_reporting(
        ReportSettings {
            parent: config.cc.clone(),
            parent_kind: "cluster controller",
            parent_role: Role::Cc,
            trust: started.trust.clone(),
            heartbeat,
        },
        reports,
        |client, reports| async move { ClusterServiceClient::new(client).report_node(reports).await },
    ));
    tracing::info!(node = %name, listen = %started.addr, cc = %config.cc, "node controller ready");
    let incoming = started.trust.incoming(started.listener);
    rpc::serve_until_signal(|stop| {
        started
            .trust
            .server()
            .add_service(NodeServiceServer::new(node))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    tracing::info!("node controller stopped");
    Ok(())
}
