//! The CC's side of instances: placing them (with a durable ledger of what
//! it placed where), starting them on their nodes, and passing later calls
//! to the node that hosts each one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use common::{
    pki::Role,
    rpc::Trust,
    store::{Record, Store, StoreError, Table},
    time,
};
use proto::{
    node_service_client::NodeServiceClient, InstanceSpec, InstanceState, InstanceStatus, NodeView,
    RunInstanceRequest, ServiceState,
};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::{
    network::Subnet,
    nodes::Nodes,
    placement::{self, Candidate, Need, Settings},
};

/// An instance this CC placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub instance_id: String,
    pub node: String,
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Its private address; empty without a private network.
    pub private_ip: String,
}

impl Record for Placed {
    const TABLE: &'static str = "placed";
    /// 2: `private_ip` added.
    const SCHEMA: u32 = 2;
    type Key = String;
    fn key(&self) -> String {
        self.instance_id.clone()
    }
    fn migrate(from: u32, value: serde_json::Value) -> Result<serde_json::Value, String> {
        common::store::add_field(from, value, &[("private_ip", serde_json::Value::from(""))])
    }
}

type NodeClient = NodeServiceClient<common::rpc::Client>;

/// Placement and the calls down to nodes.
#[derive(Debug)]
pub struct ClusterInstances {
    nodes: Arc<Nodes>,
    ledger: Table<Placed>,
    settings: Settings,
    /// Serializes placement; holds the ROUNDROBIN cursor.
    placing: Mutex<usize>,
    /// How this CC proves itself to its nodes.
    trust: Trust,
    /// The private network (subnet and bridge name), when instances get addresses.
    network: Option<(Subnet, String)>,
    /// Placed instances their ready node has stopped reporting, since when.
    missing_since: Mutex<HashMap<String, i64>>,
}

/// How long a ready node may leave a placed instance out of its reports
/// before the CC takes it for gone (a launch on its way is not reported yet).
pub const GONE_AFTER_MS: i64 = 30_000;

fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "ledger write failed");
    Status::unavailable(format!("cannot record placement: {e}"))
}

/// A MAC in the locally administered range, from the instance id.
fn mac_for(instance_id: &str) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(instance_id.as_bytes());
    format!(
        "d0:0d:{:02x}:{:02x}:{:02x}:{:02x}",
        digest[0], digest[1], digest[2], digest[3]
    )
}

impl ClusterInstances {
    /// Over `nodes`, with the ledger in `store`.
    pub fn open(
        nodes: Arc<Nodes>,
        store: &Store,
        settings: Settings,
        trust: Trust,
        network: Option<(Subnet, String)>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            nodes,
            ledger: store.table()?,
            settings,
            placing: Mutex::new(0),
            trust,
            network,
            missing_since: Mutex::new(HashMap::new()),
        })
    }

    /// Follows what the nodes report: an instance its ready node has not
    /// reported for [`GONE_AFTER_MS`] is gone below the CC, and what it
    /// held (capacity, private address) is free again.
    pub fn reconcile(&self, now_ms: i64) {
        let reported = self.nodes.reported();
        let _placing = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(ledger) = self.ledger.list() else {
            return;
        };
        let mut missing = self.missing_since.lock().unwrap_or_else(|p| p.into_inner());
        let mut still = std::collections::HashSet::new();
        for p in ledger {
            let Some(ids) = reported.get(&p.node) else {
                continue;
            };
            if ids.contains(&p.instance_id) {
                continue;
            }
            let since = *missing.entry(p.instance_id.clone()).or_insert(now_ms);
            if now_ms - since < GONE_AFTER_MS {
                still.insert(p.instance_id);
                continue;
            }
            match self.ledger.delete(&p.instance_id) {
                Ok(_) => {
                    tracing::warn!(instance_id = %p.instance_id, node = %p.node, "the node no longer has the instance: its placement is released")
                }
                Err(e) => tracing::error!(error = %e, "ledger write failed"),
            }
        }
        missing.retain(|id, _| still.contains(id));
    }

    fn client(&self, endpoint: &str) -> Result<NodeClient, Status> {
        let channel = self
            .trust
            .channel(endpoint, Role::Nc)
            .map_err(|e| Status::unavailable(format!("node at {endpoint}: {e}")))?;
        Ok(NodeServiceClient::new(channel))
    }

    fn network_spec(&self) -> Option<proto::NetworkSpec> {
        self.network
            .as_ref()
            .map(|(subnet, bridge)| proto::NetworkSpec {
                bridge: bridge.clone(),
                gateway: subnet.gateway().to_string(),
                prefix: u32::from(subnet.prefix()),
            })
    }

    fn views(&self) -> Vec<NodeView> {
        self.nodes.subscribe().borrow().nodes.clone()
    }

    /// Where instance `id` runs, and a client for that node.
    fn node_of(&self, id: &str) -> Result<(String, NodeClient), Status> {
        let placed = self
            .ledger
            .get(&id.to_string())
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no instance {id} in this cluster")))?;
        let view = self
            .views()
            .into_iter()
            .find(|v| v.name == placed.node)
            .ok_or_else(|| Status::unavailable(format!("node {} is unknown", placed.node)))?;
        Ok((placed.node, self.client(&view.endpoint)?))
    }

    /// Places every spec not placed yet, or none, and records the placement
    /// durably. Returns each spec (with its MAC) and its node's name and
    /// endpoint.
    pub fn place(
        &self,
        specs: Vec<InstanceSpec>,
    ) -> Result<Vec<(InstanceSpec, String, String)>, Status> {
        let mut cursor = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let views = self.views();
        let ledger = self.ledger.list().map_err(store_status)?;
        let endpoint_of = |node: &str| {
            views
                .iter()
                .find(|v| v.name == node)
                .map(|v| v.endpoint.clone())
                .unwrap_or_default()
        };
        let (mut done, specs): (Vec<_>, Vec<_>) = specs
            .into_iter()
            .partition(|s| ledger.iter().any(|p| p.instance_id == s.instance_id));
        let mut already = Vec::new();
        for mut spec in done.drain(..) {
            let (node, ip) = ledger
                .iter()
                .find(|p| p.instance_id == spec.instance_id)
                .map(|p| (p.node.clone(), p.private_ip.clone()))
                .unwrap_or_default();
            spec.private_ip = ip;
            spec.network = self.network_spec();
            if spec.mac.is_empty() {
                spec.mac = mac_for(&spec.instance_id);
            }
            let endpoint = endpoint_of(&node);
            already.push((spec, node, endpoint));
        }
        let placed: Vec<(InstanceSpec, String, String)> = {
            let mut candidates: Vec<Candidate> = views
                .iter()
                .enumerate()
                .filter(|(_, v)| v.state == ServiceState::Enabled as i32)
                .filter_map(|(i, v)| {
                    let r = v.resources.as_ref()?;
                    let mine = ledger.iter().filter(|p| p.node == v.name);
                    Some(Candidate {
                        name: v.name.clone(),
                        joined: i,
                        cores_total: r.cores_total,
                        memory_mib_total: r.memory_mib_total,
                        disk_gib_total: r.disk_gib_total,
                        cores_used: mine.clone().map(|p| p.cores).sum(),
                        memory_mib_used: mine.clone().map(|p| p.memory_mib).sum(),
                        disk_gib_used: mine.map(|p| p.disk_gib).sum(),
                    })
                })
                .collect();
            let mut chosen = Vec::with_capacity(specs.len());
            let cursor = &mut *cursor;
            for spec in &specs {
                let need = Need {
                    cores: spec.cores,
                    memory_mib: spec.memory_mib,
                    disk_gib: spec.disk_gib,
                };
                let node = placement::place(&candidates, need, 1, &self.settings, cursor)
                    .and_then(|v| v.into_iter().next())
                    .ok_or_else(|| {
                        Status::resource_exhausted(format!(
                            "InsufficientInstanceCapacity: no node has room for {} instance(s) of {} core(s), {} MiB",
                            specs.len(),
                            spec.cores,
                            spec.memory_mib
                        ))
                    })?;
                if let Some(c) = candidates.iter_mut().find(|c| c.name == node) {
                    c.cores_used += need.cores;
                    c.memory_mib_used += need.memory_mib;
                    c.disk_gib_used += need.disk_gib;
                }
                chosen.push(node);
            }
            let addresses: Vec<String> = match &self.network {
                None => vec![String::new(); specs.len()],
                Some((subnet, _)) => {
                    let used: std::collections::BTreeSet<std::net::Ipv4Addr> = ledger
                        .iter()
                        .filter_map(|p| p.private_ip.parse().ok())
                        .collect();
                    subnet
                        .allocate(&used, specs.len())
                        .ok_or_else(|| {
                            Status::resource_exhausted(format!(
                                "InsufficientInstanceCapacity: the private network {subnet} has no room for {} more instance(s)",
                                specs.len()
                            ))
                        })?
                        .into_iter()
                        .map(|ip| ip.to_string())
                        .collect()
                }
            };
            let mut out = Vec::new();
            for ((mut spec, node), ip) in specs.into_iter().zip(chosen).zip(addresses) {
                spec.private_ip = ip;
                spec.network = self.network_spec();
                let endpoint = endpoint_of(&node);
                if spec.mac.is_empty() {
                    spec.mac = mac_for(&spec.instance_id);
                }
                self.ledger
                    .put(&Placed {
                        instance_id: spec.instance_id.clone(),
                        node: node.clone(),
                        cores: spec.cores,
                        memory_mib: spec.memory_mib,
                        disk_gib: spec.disk_gib,
                        private_ip: spec.private_ip.clone(),
                    })
                    .map_err(store_status)?;
                out.push((spec, node, endpoint));
            }
            out
        };
        for (spec, node, _) in &placed {
            tracing::info!(instance_id = %spec.instance_id, node = %node, private_ip = %spec.private_ip, policy = self.settings.policy.as_str(), "instance placed");
        }
        already.extend(placed);
        Ok(already)
    }

    /// Places what is not placed yet (all or nothing) and starts each
    /// instance on its node. Instances whose node fails to start them come
    /// back terminated, with the reason, and hold nothing.
    pub async fn run(
        &self,
        specs: Vec<InstanceSpec>,
        walrus: &str,
    ) -> Result<Vec<InstanceStatus>, Status> {
        let placed = self.place(specs)?;
        let launches = placed.into_iter().map(|(spec, node, endpoint)| async move {
            let id = spec.instance_id.clone();
            let result = async {
                let mut client = self.client(&endpoint)?;
                client
                    .run_instance(RunInstanceRequest {
                        spec: Some(spec),
                        walrus: walrus.to_string(),
                    })
                    .await
                    .map(|r| r.into_inner())
            }
            .await;
            match result {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(instance_id = %id, node = %node, error = %e.message(), "node could not start the instance");
                    let _ = self.ledger.delete(&id);
                    // What went wrong inside stays in the log; the user is
                    // told what happened in EC2's terms.
                    let why = if common::rpc::not_answered(&e) {
                        "the node did not answer".to_string()
                    } else {
                        e.message().to_string()
                    };
                    InstanceStatus {
                        instance_id: id,
                        state: InstanceState::Terminated as i32,
                        node,
                        reason: format!("Server.InternalError: {why}"),
                        changed_unix_ms: time::unix_ms(),
                        ..Default::default()
                    }
                }
            }
        });
        Ok(futures_util::future::join_all(launches).await)
    }

    /// Forgets node `name` for good: refused while it holds instances here
    /// or still reports (it would only come back).
    pub fn deregister_node(&self, name: &str) -> Result<(), Status> {
        let held: Vec<String> = self
            .ledger
            .list()
            .map_err(|e| Status::unavailable(format!("cannot read placements: {e}")))?
            .into_iter()
            .filter(|p| p.node == name)
            .map(|p| p.instance_id)
            .collect();
        if !held.is_empty() {
            return Err(Status::failed_precondition(format!(
                "node {name} holds instances {}: terminate them first",
                held.join(", ")
            )));
        }
        self.nodes.forget(name)
    }

    /// Terminates `id` on its node and releases what it held.
    pub async fn terminate(&self, id: &str) -> Result<InstanceStatus, Status> {
        let status = match self.node_of(id) {
            Ok((_, mut client)) => client
                .terminate_instance(proto::InstanceRef {
                    instance_id: id.to_string(),
                })
                .await?
                .into_inner(),
            Err(e) if e.code() == tonic::Code::NotFound => InstanceStatus {
                instance_id: id.to_string(),
                state: InstanceState::Terminated as i32,
                changed_unix_ms: time::unix_ms(),
                ..Default::default()
            },
            Err(e) => return Err(e),
        };
        self.ledger.delete(&id.to_string()).map_err(store_status)?;
        Ok(status)
    }

    /// Powers off guest `id` on `node` (the CLC's unknown-guest policy: the
    /// guest need not be placed here).
    pub async fn stop_guest(&self, node: &str, id: &str) -> Result<(), Status> {
        let view = self
            .views()
            .into_iter()
            .find(|v| v.name == node)
            .ok_or_else(|| Status::not_found(format!("no node {node} in this cluster")))?;
        let mut client = self.client(&view.endpoint)?;
        client
            .stop_guest(proto::InstanceRef {
                instance_id: id.to_string(),
            })
            .await?;
        tracing::warn!(%node, instance_id = %id, "a guest the cloud has no record of was stopped");
        Ok(())
    }

    /// Passes a call for `id` to its node.
    pub async fn on_node<T, F, Fut>(&self, id: &str, call: F) -> Result<T, Status>
    where
        F: FnOnce(NodeClient, proto::InstanceRef) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (node, client) = self.node_of(id)?;
        let answer = call(
            client,
            proto::InstanceRef {
                instance_id: id.to_string(),
            },
        )
        .await;
        match answer {
            Ok(reply) => Ok(reply.into_inner()),
            // A node that did not answer is unavailable, which the CLC
            // takes as "ask again later", not as a refusal.
            Err(e) if common::rpc::not_answered(&e) => Err(Status::unavailable(format!(
                "node {node} did not answer: {}",
                e.message()
            ))),
            Err(e) => Err(e),
        }
    }

    /// Passes each instance's firewall to the node that hosts it.
    pub async fn set_firewalls(
        &self,
        firewalls: Vec<proto::InstanceFirewall>,
    ) -> Result<u32, Status> {
        let ledger = self.ledger.list().map_err(store_status)?;
        let mut by_node: HashMap<String, Vec<proto::InstanceFirewall>> = HashMap::new();
        for f in firewalls {
            if let Some(p) = ledger.iter().find(|p| p.instance_id == f.instance_id) {
                by_node.entry(p.node.clone()).or_default().push(f);
            }
        }
        let views = self.views();
        let mut applied = 0;
        for (node, firewalls) in by_node {
            let Some(view) = views.iter().find(|v| v.name == node) else {
                continue;
            };
            let mut client = self.client(&view.endpoint)?;
            match client.set_firewalls(proto::Firewalls { firewalls }).await {
                Ok(r) => applied += r.into_inner().applied,
                Err(e) => {
                    tracing::warn!(%node, error = %e.message(), "node could not apply firewalls");
                }
            }
        }
        Ok(applied)
    }

    /// Records a resize in the ledger once the node accepted it.
    pub fn resized(&self, id: &str, cores: u32, memory_mib: u64) -> Result<(), Status> {
        if let Some(mut p) = self.ledger.get(&id.to_string()).map_err(store_status)? {
            p.cores = cores;
            p.memory_mib = memory_mib;
            self.ledger.put(&p).map_err(store_status)?;
        }
        Ok(())
    }

    /// Room left for a resize of `id` to `cores`/`memory_mib` on its node.
    pub fn fits_resize(&self, id: &str, cores: u32, memory_mib: u64) -> Result<bool, Status> {
        let _placing = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let placed = self
            .ledger
            .get(&id.to_string())
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no instance {id} in this cluster")))?;
        let Some(view) = self.views().into_iter().find(|v| v.name == placed.node) else {
            return Ok(false);
        };
        let Some(r) = view.resources else {
            return Ok(false);
        };
        let others: Vec<Placed> = self
            .ledger
            .list()
            .map_err(store_status)?
            .into_iter()
            .filter(|p| p.node == placed.node && p.instance_id != id)
            .collect();
        let cores_used: u32 = others.iter().map(|p| p.cores).sum();
        let memory_used: u64 = others.iter().map(|p| p.memory_mib).sum();
        Ok(
            cores_used + cores <= (r.cores_total as f64 * self.settings.cpu_ratio) as u32
                && memory_used + memory_mib
                    <= (r.memory_mib_total as f64 * self.settings.memory_ratio) as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_locally_administered_and_stable() {
        let a = mac_for("i-0123456789abcdef0");
        assert_eq!(a, mac_for("i-0123456789abcdef0"));
        assert!(a.starts_with("d0:0d:"));
        assert_eq!(a.len(), 17);
        assert_ne!(a, mac_for("i-0123456789abcdef1"));
    }
}
