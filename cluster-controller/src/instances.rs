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
    store::{Store, StoreError},
    time,
};
use proto::{
    node_service_client::NodeServiceClient, InstanceSpec, InstanceState, InstanceStatus, NodeView,
    RunInstanceRequest, ServiceState,
};
use tonic::Status;

pub use crate::ledger::Placed;
use crate::{
    ledger::Ledger,
    network::Subnet,
    nodes::Nodes,
    placement::{self, Candidate, Need, Settings},
};

type NodeClient = NodeServiceClient<common::rpc::Client>;

/// Placement and the calls down to nodes.
#[derive(Debug)]
pub struct ClusterInstances {
    nodes: Arc<Nodes>,
    ledger: Ledger,
    /// The specs placed and not started yet, by instance id: a launch's
    /// second call names its instances and adds their firewalls, nothing
    /// more.
    kept: Mutex<HashMap<String, InstanceSpec>>,
    settings: Settings,
    /// Serializes placement; holds the ROUNDROBIN cursor.
    placing: Mutex<usize>,
    /// How this CC proves itself to its nodes.
    trust: Trust,
    /// The private network (subnet and bridge name), when instances get addresses.
    network: Option<(Subnet, String)>,
    /// VXLAN id of the tunnels between the nodes' bridges (0: none).
    tunnel_id: u32,
    /// Placed instances their ready node has stopped reporting, since when.
    missing_since: Mutex<HashMap<String, i64>>,
    /// Instances migrating, with their target and what they hold there
    /// (room taken on the target until the move ends).
    moving: Mutex<HashMap<String, Reserved>>,
}

/// Room held on a migration's target: the node, what it holds, and until
/// when, for a planned migration not started yet (None: moving now).
type Reserved = (String, Need, Option<std::time::Instant>);

/// How long a planned migration holds its target's room.
const PLAN_HOLDS: std::time::Duration = std::time::Duration::from_secs(60);

/// An instance's place in [`ClusterInstances::moving`], given up when the
/// migration ends, however it ends.
struct Moving<'a> {
    of: &'a ClusterInstances,
    id: String,
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.of
            .moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// How long a ready node may leave a placed instance out of its reports
/// before the CC takes it for gone (a launch on its way is not reported yet).
pub const GONE_AFTER_MS: i64 = 30_000;

/// Why a cluster operation failed: the one error of the CC's core, mapped
/// to a gRPC status once, at the edge.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Not enough room on the nodes, or addresses in the private network:
    /// the CLC tells the user `InsufficientInstanceCapacity`.
    #[error("InsufficientInstanceCapacity: {0}")]
    Capacity(String),
    #[error("{0}")]
    NotFound(String),
    /// Refused while something else holds (a node with instances).
    #[error("{0}")]
    Refused(String),
    /// A node or the ledger cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// What a node answered, passed on as it is.
    #[error("{0}")]
    Node(Status),
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Capacity(_) => Status::resource_exhausted(e.to_string()),
            ClusterError::NotFound(m) => Status::not_found(m),
            ClusterError::Refused(m) => Status::failed_precondition(m),
            ClusterError::Unavailable(m) => Status::unavailable(m),
            ClusterError::Node(s) => s,
        }
    }
}

impl From<Status> for ClusterError {
    fn from(s: Status) -> Self {
        Self::Node(s)
    }
}

fn store_status(e: StoreError) -> ClusterError {
    tracing::error!(error = %e, "ledger write failed");
    ClusterError::Unavailable(format!("cannot record placement: {e}"))
}

/// Where node `node` among `views` is reached.
fn endpoint_of(views: &[NodeView], node: &str) -> Option<String> {
    views
        .iter()
        .find(|v| v.name == node)
        .map(|v| v.endpoint.clone())
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
            ledger: Ledger::open(store)?,
            kept: Mutex::new(HashMap::new()),
            settings,
            placing: Mutex::new(0),
            trust,
            network,
            tunnel_id: 1,
            missing_since: Mutex::new(HashMap::new()),
            moving: Mutex::new(HashMap::new()),
        })
    }

    /// The VXLAN id of the tunnels between the nodes' bridges (0: none).
    pub fn with_tunnel_id(mut self, id: u32) -> Self {
        self.tunnel_id = id;
        self
    }

    /// Follows what the nodes report: an instance its ready node has not
    /// reported for [`GONE_AFTER_MS`] is gone below the CC, and what it
    /// held (capacity, private address) is free again.
    pub fn reconcile(&self, now_ms: i64) {
        let reported = self.nodes.reported();
        let _placing = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let ledger = self.ledger.list();
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
        // A launch whose start never came (its CLC went away) keeps
        // nothing once its placement is released.
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| self.ledger.contains(id));
    }

    fn forget_kept(&self, id: &str) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn client(&self, endpoint: &str) -> Result<NodeClient, ClusterError> {
        let channel = self
            .trust
            .channel(endpoint, Role::Nc)
            .map_err(|e| ClusterError::Unavailable(format!("node at {endpoint}: {e}")))?;
        Ok(NodeServiceClient::new(channel))
    }

    /// The cluster's private network as nodes build it now: the bridge,
    /// and the tunnel addresses of the ENABLED nodes that have one (each
    /// node leaves out its own).
    pub fn network_spec(&self) -> Option<proto::NetworkSpec> {
        let (subnet, bridge) = self.network.as_ref()?;
        let mut tunnel_peers: Vec<String> = self
            .views()
            .into_iter()
            .filter(|v| v.state == ServiceState::Enabled as i32 && !v.tunnel_address.is_empty())
            .map(|v| v.tunnel_address)
            .collect();
        tunnel_peers.sort();
        tunnel_peers.dedup();
        Some(proto::NetworkSpec {
            bridge: bridge.clone(),
            gateway: subnet.gateway().to_string(),
            prefix: u32::from(subnet.prefix()),
            tunnel_id: self.tunnel_id,
            tunnel_peers,
        })
    }

    /// Sends every ENABLED node the network as it is now (`network_spec`),
    /// so that each bridge's tunnels reach the nodes that came since.
    pub async fn push_network(&self) {
        let Some(spec) = self.network_spec() else {
            return;
        };
        for v in self
            .views()
            .into_iter()
            .filter(|v| v.state == ServiceState::Enabled as i32)
        {
            let Ok(mut client) = self.client(&v.endpoint) else {
                continue;
            };
            if let Err(e) = client.set_network(spec.clone()).await {
                tracing::warn!(node = %v.name, error = %e.message(), "node could not apply the network");
            }
        }
    }

    /// Each node's name, endpoint, state and resources: what placement and
    /// the calls down read. The views also hold every instance's status,
    /// which is not copied.
    fn views(&self) -> Vec<NodeView> {
        self.nodes
            .subscribe()
            .borrow()
            .nodes
            .iter()
            .map(|v| NodeView {
                name: v.name.clone(),
                endpoint: v.endpoint.clone(),
                state: v.state,
                resources: v.resources,
                tunnel_address: v.tunnel_address.clone(),
                disabled: v.disabled,
                ..Default::default()
            })
            .collect()
    }

    /// Where instance `id` runs, and a client for that node.
    pub fn node_of(&self, id: &str) -> Result<(String, NodeClient), ClusterError> {
        let placed = self
            .ledger
            .get(id)
            .ok_or_else(|| ClusterError::NotFound(format!("no instance {id} in this cluster")))?;
        let endpoint = endpoint_of(&self.views(), &placed.node)
            .ok_or_else(|| ClusterError::Unavailable(format!("node {} is unknown", placed.node)))?;
        Ok((placed.node, self.client(&endpoint)?))
    }

    /// Places every spec not placed yet, or none, and records the placement
    /// durably. Returns each spec (with its MAC) and its node's name and
    /// endpoint.
    /// The ENABLED nodes that `wanted` takes, with their room, in the order
    /// they joined, for placement.
    fn candidates(&self, views: &[NodeView], wanted: impl Fn(&str) -> bool) -> Vec<Candidate> {
        let moving = self.moving.lock().unwrap_or_else(|p| p.into_inner());
        views
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                v.state == ServiceState::Enabled as i32 && !v.disabled && wanted(&v.name)
            })
            .filter_map(|(i, v)| {
                let r = v.resources.as_ref()?;
                let used = self.ledger.usage(&v.name);
                let mut c = Candidate {
                    name: v.name.clone(),
                    joined: i,
                    cores_total: r.cores_total,
                    memory_mib_total: r.memory_mib_total,
                    disk_gib_total: r.disk_gib_total,
                    cores_used: used.cores,
                    memory_mib_used: used.memory_mib,
                    disk_gib_used: used.disk_gib,
                };
                // Instances on their way here hold their room already.
                let now = std::time::Instant::now();
                for (_, need, _) in moving
                    .values()
                    .filter(|(to, _, until)| *to == v.name && until.is_none_or(|u| u > now))
                {
                    c.cores_used += need.cores;
                    c.memory_mib_used += need.memory_mib;
                    c.disk_gib_used += need.disk_gib;
                }
                Some(c)
            })
            .collect()
    }

    /// Takes node `name` out of placement and migrations to it
    /// (`disabled`), or puts it back.
    pub fn set_node_disabled(&self, name: &str, disabled: bool) -> Result<NodeView, ClusterError> {
        self.nodes.set_disabled(name, disabled)
    }

    /// The instances migrating now, each with its target node.
    pub fn migrating(&self) -> Vec<(String, String)> {
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (_, _, until))| until.is_none())
            .map(|(id, (to, _, _))| (id.clone(), to.clone()))
            .collect()
    }

    pub fn place(
        &self,
        specs: Vec<InstanceSpec>,
    ) -> Result<Vec<(InstanceSpec, String, String)>, ClusterError> {
        let mut cursor = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let views = self.views();
        let endpoint_of = |node: &str| endpoint_of(&views, node).unwrap_or_default();
        let (mut done, specs): (Vec<_>, Vec<_>) = specs
            .into_iter()
            .partition(|s| self.ledger.contains(&s.instance_id));
        let mut already = Vec::new();
        for mut spec in done.drain(..) {
            let (node, ip) = self
                .ledger
                .get(&spec.instance_id)
                .map(|p| (p.node, p.private_ip))
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
            let mut candidates = self.candidates(&views, |_| true);
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
                        ClusterError::Capacity(format!(
                            "no node has room for {} instance(s) of {} core(s), {} MiB",
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
                    let used = self.ledger.used_ips();
                    subnet
                        .allocate(&used, specs.len())
                        .ok_or_else(|| {
                            ClusterError::Capacity(format!(
                                "the private network {subnet} has no room for {} more instance(s)",
                                specs.len()
                            ))
                        })?
                        .into_iter()
                        .map(|ip| ip.to_string())
                        .collect()
                }
            };
            let mut out = Vec::new();
            let mut ledger = Vec::new();
            for ((mut spec, node), ip) in specs.into_iter().zip(chosen).zip(addresses) {
                spec.private_ip = ip;
                spec.network = self.network_spec();
                let endpoint = endpoint_of(&node);
                if spec.mac.is_empty() {
                    spec.mac = mac_for(&spec.instance_id);
                }
                ledger.push(Placed {
                    instance_id: spec.instance_id.clone(),
                    node: node.clone(),
                    cores: spec.cores,
                    memory_mib: spec.memory_mib,
                    disk_gib: spec.disk_gib,
                    private_ip: spec.private_ip.clone(),
                });
                out.push((spec, node, endpoint));
            }
            // The whole placement in one durable write.
            self.ledger.put_all(&ledger).map_err(store_status)?;
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            for (spec, _, _) in &out {
                kept.insert(spec.instance_id.clone(), spec.clone());
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
    ) -> Result<Vec<InstanceStatus>, ClusterError> {
        let mut full = Vec::with_capacity(specs.len());
        let mut lost = Vec::new();
        {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            for spec in specs {
                if spec.image.is_some() {
                    kept.remove(&spec.instance_id);
                    full.push(spec);
                    continue;
                }
                // Only the id and firewall came: the rest was kept when
                // the instance was placed.
                match kept.remove(&spec.instance_id) {
                    Some(mut k) => {
                        k.firewall = spec.firewall;
                        full.push(k);
                    }
                    None => lost.push(spec.instance_id),
                }
            }
        }
        let mut not_started = Vec::new();
        for id in lost {
            tracing::warn!(instance_id = %id, "asked to start an instance whose launch this cluster does not hold");
            let _ = self.ledger.delete(&id);
            not_started.push(InstanceStatus {
                instance_id: id,
                state: InstanceState::Terminated as i32,
                reason: "Server.InternalError: the cluster restarted while the instance was launched; launch it again".into(),
                changed_unix_ms: time::unix_ms(),
                ..Default::default()
            });
        }
        let placed = self.place(full)?;
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
        not_started.extend(futures_util::future::join_all(launches).await);
        Ok(not_started)
    }

    /// Forgets node `name` for good: refused while it holds instances here
    /// or still reports (it would only come back).
    pub fn deregister_node(&self, name: &str) -> Result<(), ClusterError> {
        let held = self.ledger.on(name);
        if !held.is_empty() {
            return Err(ClusterError::Refused(format!(
                "node {name} holds instances {}: terminate them first",
                held.join(", ")
            )));
        }
        self.nodes.forget(name)
    }

    /// Terminates `id` on its node and releases what it held.
    pub async fn terminate(&self, id: &str) -> Result<InstanceStatus, ClusterError> {
        let status = match self.node_of(id) {
            Ok((_, mut client)) => client
                .terminate_instance(proto::InstanceRef {
                    instance_id: id.to_string(),
                })
                .await?
                .into_inner(),
            Err(ClusterError::NotFound(_)) => InstanceStatus {
                instance_id: id.to_string(),
                state: InstanceState::Terminated as i32,
                changed_unix_ms: time::unix_ms(),
                ..Default::default()
            },
            Err(e) => return Err(e),
        };
        self.ledger.delete(id).map_err(store_status)?;
        self.forget_kept(id);
        Ok(status)
    }

    /// Powers off guest `id` on `node` (the CLC's unknown-guest policy: the
    /// guest need not be placed here).
    pub async fn stop_guest(&self, node: &str, id: &str) -> Result<(), ClusterError> {
        let view = self
            .views()
            .into_iter()
            .find(|v| v.name == node)
            .ok_or_else(|| ClusterError::NotFound(format!("no node {node} in this cluster")))?;
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
    pub async fn on_node<T, F, Fut>(&self, id: &str, call: F) -> Result<T, ClusterError>
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
            Err(e) if common::rpc::not_answered(&e) => Err(ClusterError::Unavailable(format!(
                "node {node} did not answer: {}",
                e.message()
            ))),
            Err(e) => Err(ClusterError::Node(e)),
        }
    }

    /// Chooses the node `id` would migrate to and holds its room there
    /// for [`PLAN_HOLDS`], for what the CLC readies there first; a
    /// migration naming that node alone then takes it.
    pub fn plan_migration(&self, id: &str, allowed: &[String]) -> Result<String, ClusterError> {
        let placed = self
            .ledger
            .get(id)
            .ok_or_else(|| ClusterError::NotFound(format!("{id} is not in this cluster")))?;
        let views = self.views();
        self.choose_target(
            &placed,
            &views,
            allowed,
            Some(std::time::Instant::now() + PLAN_HOLDS),
        )
    }

    /// The node `placed` moves to (one of `allowed`, or placement's choice
    /// among the other nodes), its room held there: until `until`, or
    /// (None) for as long as the migration runs. A migration planned for
    /// one of `allowed` takes that plan.
    fn choose_target(
        &self,
        placed: &Placed,
        views: &[NodeView],
        allowed: &[String],
        until: Option<std::time::Instant>,
    ) -> Result<String, ClusterError> {
        let id = &placed.instance_id;
        let need = Need {
            cores: placed.cores,
            memory_mib: placed.memory_mib,
            disk_gib: placed.disk_gib,
        };
        let mut cursor = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut moving = self.moving.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            match moving.get(id).cloned() {
                Some((to, _, Some(u))) if u > now && allowed.contains(&to) => {
                    moving.insert(id.clone(), (to.clone(), need, until));
                    return Ok(to);
                }
                Some((_, _, Some(u))) if u <= now => {
                    moving.remove(id);
                }
                Some(_) => return Err(ClusterError::Refused(format!("{id} is migrating already"))),
                None => {}
            }
        }
        let candidates = self.candidates(views, |name| {
            name != placed.node && (allowed.is_empty() || allowed.iter().any(|a| a == name))
        });
        if candidates.is_empty() {
            return Err(ClusterError::Refused(if allowed.is_empty() {
                format!("no other enabled node in placement to move {id} to")
            } else {
                format!(
                    "none of {} is an enabled node in placement of this cluster other than {id}'s",
                    allowed.join(", ")
                )
            }));
        }
        let target = placement::place(&candidates, need, 1, &self.settings, &mut cursor)
            .and_then(|v| v.into_iter().next())
            .ok_or_else(|| {
                ClusterError::Capacity(format!(
                    "no room for {id} ({} core(s), {} MiB, {} GiB) on {}",
                    placed.cores,
                    placed.memory_mib,
                    placed.disk_gib,
                    candidates
                        .iter()
                        .map(|c| format!(
                            "{} ({} of {} core(s), {} of {} MiB free)",
                            c.name,
                            c.cores_total.saturating_sub(c.cores_used),
                            c.cores_total,
                            c.memory_mib_total.saturating_sub(c.memory_mib_used),
                            c.memory_mib_total
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), (target.clone(), need, until));
        Ok(target)
    }

    /// Moves running instance `spec` live to another ENABLED node with room
    /// for it: one of `allowed`, or (none named) the one placement chooses
    /// among the others. The target prepares it (images, disk, network,
    /// firewall, console log so far), the source moves its domain there,
    /// and the target takes it as its own; on any failure the target drops
    /// what it prepared and the instance runs on the source as before.
    pub async fn migrate(
        &self,
        mut spec: InstanceSpec,
        walrus: &str,
        allowed: &[String],
    ) -> Result<proto::MigrationDone, ClusterError> {
        let started = std::time::Instant::now();
        let id = spec.instance_id.clone();
        let placed = self
            .ledger
            .get(&id)
            .ok_or_else(|| ClusterError::NotFound(format!("{id} is not in this cluster")))?;
        let views = self.views();
        let source_endpoint = endpoint_of(&views, &placed.node)
            .ok_or_else(|| ClusterError::Unavailable(format!("node {} is unknown", placed.node)))?;
        let target = self.choose_target(&placed, &views, allowed, None)?;
        let _moving = Moving {
            of: self,
            id: id.clone(),
        };
        let target_endpoint = endpoint_of(&views, &target)
            .ok_or_else(|| ClusterError::Unavailable(format!("node {target} is unknown")))?;
        // The instance as its node has it: address, MAC, network.
        spec.private_ip = placed.private_ip.clone();
        spec.network = self.network_spec();
        if spec.mac.is_empty() {
            spec.mac = mac_for(&id);
        }
        tracing::info!(instance_id = %id, source = %placed.node, target = %target, "live migration starts");
        let mut source = self.client(&source_endpoint)?;
        let mut dest = self.client(&target_endpoint)?;
        let console = source
            .get_console_output(proto::InstanceRef {
                instance_id: id.clone(),
            })
            .await
            .map(|c| c.into_inner().output)
            .unwrap_or_default();
        let prepared = dest
            .prepare_migration(proto::PrepareMigrationRequest {
                run: Some(RunInstanceRequest {
                    spec: Some(spec),
                    walrus: walrus.to_string(),
                }),
                console,
            })
            .await
            .map_err(|e| {
                ClusterError::Refused(format!(
                    "node {target} could not prepare {id}: {}",
                    e.message()
                ))
            })?
            .into_inner();
        // The source moves it; meanwhile the target must stay: a target
        // gone mid-way (its node controller died) ends the migration, and
        // the instance runs on at the source.
        let mut aborter = source.clone();
        let mut watch = dest.clone();
        let migrating = source.migrate_instance(proto::MigrateInstanceRequest {
            instance_id: id.clone(),
            target: Some(prepared),
        });
        tokio::pin!(migrating);
        let mut target_gone: Option<String> = None;
        let moved = loop {
            tokio::select! {
                moved = &mut migrating => break moved,
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)), if target_gone.is_none() => {
                    let asked = watch.get_console_output(proto::InstanceRef { instance_id: id.clone() });
                    if let Ok(Err(e)) = tokio::time::timeout(std::time::Duration::from_secs(2), asked).await {
                        tracing::warn!(instance_id = %id, %target, error = %e.message(), "the target stopped answering during the migration; ending it");
                        target_gone = Some(e.message().to_string());
                        if let Err(e) = aborter
                            .abort_migration(proto::InstanceRef { instance_id: id.clone() })
                            .await
                        {
                            tracing::warn!(instance_id = %id, error = %e.message(), "the migration was not aborted");
                        }
                    }
                }
            }
        };
        let moved = match moved {
            Ok(m) => m.into_inner(),
            Err(e) => {
                let why = match &target_gone {
                    Some(gone) => format!(
                        "node {target} stopped answering during the migration ({gone}): {}",
                        e.message()
                    ),
                    None => e.message().to_string(),
                };
                let _ = dest
                    .finish_migration(proto::FinishMigrationRequest {
                        instance_id: id.clone(),
                        succeeded: false,
                        console: Vec::new(),
                        volumes: Vec::new(),
                    })
                    .await;
                tracing::warn!(instance_id = %id, source = %placed.node, target = %target, error = %e.message(), "live migration failed; the instance stays where it was");
                return Err(ClusterError::Refused(format!(
                    "{id} did not move to {target} and runs on {} as before: {why}",
                    placed.node,
                )));
            }
        };
        // It runs on the target now, whatever the rest says.
        self.ledger
            .put(&Placed {
                node: target.clone(),
                ..placed.clone()
            })
            .map_err(store_status)?;
        let status = dest
            .finish_migration(proto::FinishMigrationRequest {
                instance_id: id.clone(),
                succeeded: true,
                console: moved.console,
                volumes: moved.volumes,
            })
            .await
            .map_err(ClusterError::Node)?
            .into_inner();
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(instance_id = %id, source = %placed.node, target = %target, seconds, "live migration done");
        Ok(proto::MigrationDone {
            instance: Some(status),
            source: placed.node,
            destination: target,
            seconds,
        })
    }

    /// Passes each instance's firewall to the node that hosts it.
    pub async fn set_firewalls(
        &self,
        firewalls: Vec<proto::InstanceFirewall>,
        groups: Vec<proto::GroupMembers>,
    ) -> Result<u32, ClusterError> {
        let mut by_node: HashMap<String, Vec<proto::InstanceFirewall>> = HashMap::new();
        for f in firewalls {
            if let Some(p) = self.ledger.get(&f.instance_id) {
                by_node.entry(p.node.clone()).or_default().push(f);
            }
        }
        let views = self.views();
        // Memberships go to every ENABLED node: any may hold a guest whose
        // rules name the group.
        if !groups.is_empty() {
            for v in views
                .iter()
                .filter(|v| v.state == ServiceState::Enabled as i32)
            {
                by_node.entry(v.name.clone()).or_default();
            }
        }
        let mut applied = 0;
        for (node, firewalls) in by_node {
            let Some(view) = views.iter().find(|v| v.name == node) else {
                continue;
            };
            let mut client = self.client(&view.endpoint)?;
            let request = proto::Firewalls {
                firewalls,
                groups: groups.clone(),
            };
            match client.set_firewalls(request).await {
                Ok(r) => applied += r.into_inner().applied,
                Err(e) => {
                    tracing::warn!(%node, error = %e.message(), "node could not apply firewalls");
                }
            }
        }
        Ok(applied)
    }

    /// Records a resize in the ledger once the node accepted it.
    pub fn resized(&self, id: &str, cores: u32, memory_mib: u64) -> Result<(), ClusterError> {
        if let Some(mut p) = self.ledger.get(id) {
            p.cores = cores;
            p.memory_mib = memory_mib;
            self.ledger.put(&p).map_err(store_status)?;
        }
        Ok(())
    }

    /// Room left for a resize of `id` to `cores`/`memory_mib` on its node.
    pub fn fits_resize(&self, id: &str, cores: u32, memory_mib: u64) -> Result<bool, ClusterError> {
        let _placing = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let placed = self
            .ledger
            .get(id)
            .ok_or_else(|| ClusterError::NotFound(format!("no instance {id} in this cluster")))?;
        let Some(view) = self.views().into_iter().find(|v| v.name == placed.node) else {
            return Ok(false);
        };
        let Some(r) = view.resources else {
            return Ok(false);
        };
        let on_node = self.ledger.usage(&placed.node);
        let cores_used = on_node.cores - placed.cores;
        let memory_used = on_node.memory_mib - placed.memory_mib;
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
