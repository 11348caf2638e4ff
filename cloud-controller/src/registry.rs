//! The live view of every service and node in the cloud.
//!
//! Services (clusters, storage controllers, Walrus) and nodes are recorded
//! durably when first seen, so after a restart the CLC still lists them
//! (NOTREADY until they report again). Liveness is in memory: a service is
//! ENABLED while its report stream is open and reports keep coming.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use common::{
    report::{merge_cluster_report, StreamId},
    store::{Record, Store, StoreError, Table},
};
use proto::{
    ClusterNodeView, ClusterReport, NodeView, Resources, ServiceReport, ServiceState, ServiceView,
};
use serde::{Deserialize, Serialize};
use tonic::Status;

/// Kinds of service the CLC tracks.
pub const CLOUD: &str = "cloud";
/// A cluster controller.
pub const CLUSTER: &str = "cluster";
/// A storage controller.
pub const STORAGE: &str = "storage";
/// Walrus.
pub const WALRUS: &str = "walrus";

/// A service as recorded durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub service_type: String,
    pub name: String,
    pub partition: String,
    pub endpoint: String,
    pub public_endpoint: String,
    pub first_seen_ms: i64,
}

impl Record for ServiceRecord {
    const TABLE: &'static str = "services";
    const SCHEMA: u32 = 1;
    type Key = (String, String);
    fn key(&self) -> Self::Key {
        (self.service_type.clone(), self.name.clone())
    }
}

/// A node as recorded durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub cluster: String,
    pub name: String,
    pub endpoint: String,
    pub first_seen_ms: i64,
}

impl Record for NodeRecord {
    const TABLE: &'static str = "nodes";
    const SCHEMA: u32 = 1;
    type Key = (String, String);
    fn key(&self) -> Self::Key {
        (self.cluster.clone(), self.name.clone())
    }
}

/// How many report timeouts a service (or node) whose report stream is
/// still open may stay silent before it is NOTREADY.
pub const SUSPICION_FACTOR: i64 = 3;

#[derive(Debug, Clone)]
struct Liveness {
    stream: Option<StreamId>,
    last_report_ms: i64,
    ready: bool,
    detail: String,
}

#[derive(Default)]
struct Inner {
    services: BTreeMap<(String, String), (ServiceRecord, Option<Liveness>)>,
    nodes: BTreeMap<(String, String), NodeRecord>,
    /// The latest report of each cluster.
    clusters: HashMap<String, ClusterReport>,
    /// Which service each open stream belongs to.
    streams: HashMap<StreamId, (String, String)>,
    /// Each storage controller's room for volumes from its last report:
    /// (capacity, provisioned) GiB.
    room: HashMap<String, (u64, u64)>,
}

/// The CLC's view of the cloud.
pub struct Registry {
    own: ServiceRecord,
    services: Table<ServiceRecord>,
    nodes: Table<NodeRecord>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("own", &self.own).finish()
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn storage_failed(e: StoreError) -> Status {
    tracing::error!(error = %e, "store write failed");
    Status::unavailable(format!("cannot record: {e}"))
}

/// Names of services and nodes: what a DNS label or a host name may be.
fn check_name(what: &str, name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("invalid {what} name {name:?}")))
    }
}

impl Registry {
    /// Loads the recorded services and nodes. `own` is the CLC itself.
    pub fn open(store: &Store, own: ServiceRecord) -> Result<Self, StoreError> {
        let services = store.table::<ServiceRecord>()?;
        let nodes = store.table::<NodeRecord>()?;
        let mut inner = Inner::default();
        for s in services.list()? {
            inner.services.insert(s.key(), (s, None));
        }
        for n in nodes.list()? {
            inner.nodes.insert(n.key(), n);
        }
        Ok(Self {
            own,
            services,
            nodes,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a report of a service; new or moved services are written durably.
    fn upsert(
        &self,
        inner: &mut Inner,
        stream: StreamId,
        record: ServiceRecord,
        now_ms: i64,
    ) -> Result<(), Status> {
        let key = record.key();
        let known = inner.services.get(&key).map(|(r, _)| r.clone());
        let record = match known {
            Some(old)
                if old.endpoint == record.endpoint
                    && old.partition == record.partition
                    && old.public_endpoint == record.public_endpoint =>
            {
                old
            }
            Some(old) => {
                let moved = ServiceRecord {
                    first_seen_ms: old.first_seen_ms,
                    ..record
                };
                self.services.put(&moved).map_err(storage_failed)?;
                moved
            }
            None => {
                tracing::info!(service_type = %record.service_type, name = %record.name,
                    endpoint = %record.endpoint, "new service registered");
                self.services.put(&record).map_err(storage_failed)?;
                record
            }
        };
        let was_ready = inner
            .services
            .get(&key)
            .and_then(|(_, l)| l.as_ref())
            .is_some_and(|l| l.ready);
        if !was_ready {
            tracing::info!(service_type = %key.0, name = %key.1, "service ENABLED");
        }
        inner.streams.insert(stream, key.clone());
        inner.services.insert(
            key,
            (
                record,
                Some(Liveness {
                    stream: Some(stream),
                    last_report_ms: now_ms,
                    ready: true,
                    detail: String::new(),
                }),
            ),
        );
        Ok(())
    }

    /// A report from a cluster controller: whole when its stream opens,
    /// then deltas, which are merged into what the stream sent before.
    pub fn cluster_report(
        &self,
        stream: StreamId,
        report: ClusterReport,
        now_ms: i64,
    ) -> Result<(), Status> {
        check_name("cluster", &report.cluster_name)?;
        check_name("zone", &report.zone)?;
        for node in &report.nodes {
            check_name("node", &node.name)?;
        }
        let mut inner = self.lock();
        let key = (CLUSTER.to_string(), report.cluster_name.clone());
        let same_stream = inner
            .services
            .get(&key)
            .and_then(|(_, l)| l.as_ref())
            .is_some_and(|l| l.stream == Some(stream));
        if report.delta && !(same_stream && inner.clusters.contains_key(&report.cluster_name)) {
            return Err(Status::failed_precondition(
                "a delta report before the whole one: reopen the stream",
            ));
        }
        self.upsert(
            &mut inner,
            stream,
            ServiceRecord {
                service_type: CLUSTER.into(),
                name: report.cluster_name.clone(),
                partition: report.zone.clone(),
                endpoint: report.endpoint.clone(),
                public_endpoint: String::new(),
                first_seen_ms: now_ms,
            },
            now_ms,
        )?;
        for node in &report.nodes {
            let key = (report.cluster_name.clone(), node.name.clone());
            let changed = inner
                .nodes
                .get(&key)
                .is_none_or(|n| n.endpoint != node.endpoint);
            if changed {
                let record = NodeRecord {
                    cluster: key.0.clone(),
                    name: key.1.clone(),
                    endpoint: node.endpoint.clone(),
                    first_seen_ms: inner.nodes.get(&key).map_or(now_ms, |n| n.first_seen_ms),
                };
                self.nodes.put(&record).map_err(storage_failed)?;
                inner.nodes.insert(key, record);
            }
        }
        match inner.clusters.get_mut(&report.cluster_name) {
            Some(kept) if report.delta => merge_cluster_report(kept, report),
            _ => {
                inner.clusters.insert(report.cluster_name.clone(), report);
            }
        }
        Ok(())
    }

    /// The whole report of `cluster`, as its reports so far add up to.
    pub fn cluster(&self, cluster: &str) -> Option<ClusterReport> {
        self.lock().clusters.get(cluster).cloned()
    }

    /// A report from a storage controller or Walrus.
    pub fn service_report(
        &self,
        stream: StreamId,
        report: ServiceReport,
        now_ms: i64,
    ) -> Result<(), Status> {
        if report.service_type != STORAGE && report.service_type != WALRUS {
            return Err(invalid(format!(
                "unknown service type {:?}: expected {STORAGE} or {WALRUS}",
                report.service_type
            )));
        }
        check_name(&report.service_type, &report.name)?;
        let mut inner = self.lock();
        if report.service_type == STORAGE && report.capacity_gib > 0 {
            inner.room.insert(
                report.name.clone(),
                (report.capacity_gib, report.provisioned_gib),
            );
        }
        self.upsert(
            &mut inner,
            stream,
            ServiceRecord {
                service_type: report.service_type,
                name: report.name,
                partition: report.partition,
                endpoint: report.endpoint,
                public_endpoint: report.public_endpoint,
                first_seen_ms: now_ms,
            },
            now_ms,
        )
    }

    /// A report stream ended; its service goes NOTREADY unless a newer stream replaced it.
    pub fn stream_ended(&self, stream: StreamId, why: Option<Status>) {
        let mut inner = self.lock();
        let Some(key) = inner.streams.remove(&stream) else {
            return;
        };
        if let Some((_, Some(live))) = inner.services.get_mut(&key) {
            if live.stream == Some(stream) {
                live.stream = None;
                live.ready = false;
                live.detail = match why {
                    Some(s) => format!("report stream failed: {}", s.message()),
                    None => "report stream ended".into(),
                };
                tracing::warn!(service_type = %key.0, name = %key.1, detail = %live.detail, "service NOTREADY");
            }
        }
    }

    /// Marks NOTREADY every service silent for longer than `timeout_ms`.
    /// One whose report stream is still open (its connection answers
    /// keep-alives) is only suspected while late: a busy host's heartbeat
    /// can be late without the service being gone. It goes NOTREADY when
    /// the stream ends, or after [`SUSPICION_FACTOR`] times the timeout.
    pub fn expire(&self, now_ms: i64, timeout_ms: i64) {
        let mut inner = self.lock();
        for ((kind, name), (_, live)) in inner.services.iter_mut() {
            let Some(live) = live else { continue };
            let silent = now_ms - live.last_report_ms;
            if !live.ready || silent <= timeout_ms {
                continue;
            }
            if live.stream.is_some() && silent <= timeout_ms * SUSPICION_FACTOR {
                let detail = format!("late: no report for {} s", silent / 1000);
                if live.detail != detail {
                    if !live.detail.starts_with("late") {
                        tracing::info!(service_type = %kind, %name, "service late: its stream is open, so it stays ENABLED for now");
                    }
                    live.detail = detail;
                }
                continue;
            }
            live.ready = false;
            live.detail = format!("no report for {} s", silent / 1000);
            tracing::warn!(service_type = %kind, %name, detail = %live.detail, "service NOTREADY");
        }
    }

    /// Every service, the CLC itself first.
    pub fn services(&self, now_ms: i64) -> Vec<ServiceView> {
        let inner = self.lock();
        let mut out = vec![ServiceView {
            service_type: CLOUD.into(),
            name: self.own.name.clone(),
            partition: String::new(),
            endpoint: self.own.endpoint.clone(),
            public_endpoint: self.own.public_endpoint.clone(),
            state: ServiceState::Enabled as i32,
            last_report_unix_ms: now_ms,
            detail: String::new(),
        }];
        for (record, live) in inner.services.values() {
            let (state, last, detail) = match live {
                Some(l) if l.ready => {
                    // A cluster's placement policy, as its last report gave it.
                    let detail = match inner.clusters.get(&record.name) {
                        Some(r) if record.service_type == CLUSTER && l.detail.is_empty() => {
                            format!("placement {}", r.placement_policy)
                        }
                        Some(r) if record.service_type == CLUSTER => {
                            format!("placement {}; {}", r.placement_policy, l.detail)
                        }
                        _ => match inner.room.get(&record.name) {
                            Some((capacity, provisioned)) if record.service_type == STORAGE => {
                                let room = format!("volumes take {provisioned} of {capacity} GiB");
                                if l.detail.is_empty() {
                                    room
                                } else {
                                    format!("{room}; {}", l.detail)
                                }
                            }
                            _ => l.detail.clone(),
                        },
                    };
                    (ServiceState::Enabled, l.last_report_ms, detail)
                }
                Some(l) => (ServiceState::Notready, l.last_report_ms, l.detail.clone()),
                None => (
                    ServiceState::Notready,
                    0,
                    "not reported since the CLC started".into(),
                ),
            };
            out.push(ServiceView {
                service_type: record.service_type.clone(),
                name: record.name.clone(),
                partition: record.partition.clone(),
                endpoint: record.endpoint.clone(),
                public_endpoint: record.public_endpoint.clone(),
                state: state as i32,
                last_report_unix_ms: last,
                detail,
            });
        }
        out
    }

    fn cluster_ready(inner: &Inner, cluster: &str) -> bool {
        inner
            .services
            .get(&(CLUSTER.to_string(), cluster.to_string()))
            .and_then(|(_, l)| l.as_ref())
            .is_some_and(|l| l.ready)
    }

    /// The room for volumes (capacity, provisioned GiB) of zone `zone`'s
    /// storage controller, as it last reported it.
    pub fn storage_room(&self, zone: &str) -> Option<(u64, u64)> {
        let inner = self.lock();
        inner
            .services
            .values()
            .find(|(r, _)| r.service_type == STORAGE && r.partition == zone)
            .and_then(|(r, _)| inner.room.get(&r.name).copied())
    }

    /// The internal endpoint of an ENABLED Walrus, if there is one.
    pub fn enabled_walrus(&self) -> Option<String> {
        self.services(common::time::unix_ms())
            .into_iter()
            .find(|s| s.service_type == WALRUS && s.state == ServiceState::Enabled as i32)
            .map(|s| s.endpoint)
    }

    /// An ENABLED Walrus's endpoint, else the last one known: nodes need it
    /// only for images they have not cached.
    pub fn known_walrus(&self) -> Option<String> {
        self.enabled_walrus().or_else(|| {
            self.services(common::time::unix_ms())
                .into_iter()
                .find(|s| s.service_type == WALRUS)
                .map(|s| s.endpoint)
        })
    }

    /// The cluster node `name` belongs to, and that cluster's endpoint.
    pub fn cluster_of_node(&self, name: &str) -> Option<(String, String)> {
        let inner = self.lock();
        let record = inner.nodes.values().find(|n| n.name == name)?;
        let endpoint = inner
            .services
            .get(&(CLUSTER.to_string(), record.cluster.clone()))
            .map(|(s, _)| s.endpoint.clone())?;
        Some((record.cluster.clone(), endpoint))
    }

    /// Forgets node `name` of `cluster` (durably), once its cluster has.
    pub fn forget_node(&self, cluster: &str, name: &str) -> Result<(), Status> {
        let key = (cluster.to_string(), name.to_string());
        self.nodes.delete(&key).map_err(storage_failed)?;
        let mut inner = self.lock();
        inner.nodes.remove(&key);
        if let Some(report) = inner.clusters.get_mut(cluster) {
            report.nodes.retain(|n| n.name != name);
        }
        Ok(())
    }

    /// Every node of every cluster. A node of a cluster that is not ready is
    /// NOTREADY: nobody can vouch for it.
    /// Each reporting cluster's rebalancing settings.
    pub fn rebalance_settings(&self) -> Vec<(String, proto::RebalanceSettings)> {
        let inner = self.lock();
        let mut v: Vec<_> = inner
            .clusters
            .iter()
            .filter_map(|(name, r)| Some((name.clone(), r.rebalance?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn nodes(&self) -> Vec<ClusterNodeView> {
        let inner = self.lock();
        inner
            .nodes
            .values()
            .map(|record| {
                let report = inner.clusters.get(&record.cluster);
                let zone = report.map(|r| r.zone.clone()).unwrap_or_else(|| {
                    inner
                        .services
                        .get(&(CLUSTER.to_string(), record.cluster.clone()))
                        .map(|(s, _)| s.partition.clone())
                        .unwrap_or_default()
                });
                let seen = report.and_then(|r| r.nodes.iter().find(|n| n.name == record.name));
                let mut node = seen.cloned().unwrap_or_else(|| NodeView {
                    name: record.name.clone(),
                    endpoint: record.endpoint.clone(),
                    state: ServiceState::Notready as i32,
                    resources: Some(Resources::default()),
                    ..Default::default()
                });
                if !Self::cluster_ready(&inner, &record.cluster) {
                    node.state = ServiceState::Notready as i32;
                }
                ClusterNodeView {
                    cluster_name: record.cluster.clone(),
                    zone,
                    node: Some(node),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(store: &Store) -> Registry {
        Registry::open(
            store,
            ServiceRecord {
                service_type: CLOUD.into(),
                name: "clc".into(),
                partition: String::new(),
                endpoint: "127.0.0.1:1".into(),
                public_endpoint: String::new(),
                first_seen_ms: 0,
            },
        )
        .expect("registry")
    }

    fn cluster(nodes: &[(&str, ServiceState)]) -> ClusterReport {
        ClusterReport {
            cluster_name: "cc-1".into(),
            zone: "zone-1".into(),
            endpoint: "127.0.0.1:2".into(),
            nodes: nodes
                .iter()
                .map(|(n, s)| NodeView {
                    name: n.to_string(),
                    endpoint: "127.0.0.1:3".into(),
                    state: *s as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn state_of(views: &[ServiceView], name: &str) -> ServiceState {
        let v = views
            .iter()
            .find(|v| v.name == name)
            .expect("service listed");
        ServiceState::try_from(v.state).expect("state")
    }

    #[test]
    fn stream_end_and_silence_make_services_notready() {
        let store = Store::temporary().expect("store");
        let reg = registry(&store);
        let s1 = StreamId(1);
        reg.cluster_report(s1, cluster(&[("nc-1", ServiceState::Enabled)]), 1_000)
            .expect("report");
        assert_eq!(
            state_of(&reg.services(1_000), "cc-1"),
            ServiceState::Enabled
        );
        let nodes = reg.nodes();
        assert_eq!(nodes.len(), 1);
        assert_eq!(
            nodes[0].node.as_ref().map(|n| n.state),
            Some(ServiceState::Enabled as i32)
        );

        // A newer stream replaces the old; the old one's end changes nothing.
        let s2 = StreamId(2);
        reg.cluster_report(s2, cluster(&[("nc-1", ServiceState::Enabled)]), 2_000)
            .expect("report");
        reg.stream_ended(s1, None);
        assert_eq!(
            state_of(&reg.services(2_000), "cc-1"),
            ServiceState::Enabled
        );

        // Late, with its stream open: suspected, still ENABLED.
        reg.expire(9_000, 6_000);
        assert_eq!(
            state_of(&reg.services(9_000), "cc-1"),
            ServiceState::Enabled
        );
        assert!(reg
            .services(9_000)
            .iter()
            .any(|s| s.name == "cc-1" && s.detail.contains("late: no report for 7 s")));
        // Silent for three timeouts: NOTREADY.
        reg.expire(2_000 + 18_001, 6_000);
        assert_eq!(
            state_of(&reg.services(20_001), "cc-1"),
            ServiceState::Notready
        );
        // Nodes of a cluster that is gone cannot be vouched for.
        assert_eq!(
            reg.nodes()[0].node.as_ref().map(|n| n.state),
            Some(ServiceState::Notready as i32)
        );

        reg.cluster_report(s2, cluster(&[("nc-1", ServiceState::Enabled)]), 9_500)
            .expect("report");
        assert_eq!(
            state_of(&reg.services(9_500), "cc-1"),
            ServiceState::Enabled
        );
        reg.stream_ended(s2, Some(Status::unavailable("gone")));
        assert_eq!(
            state_of(&reg.services(9_600), "cc-1"),
            ServiceState::Notready
        );
    }

    #[test]
    fn services_and_nodes_are_remembered_across_restarts() {
        let store = Store::temporary().expect("store");
        {
            let reg = registry(&store);
            reg.cluster_report(StreamId(1), cluster(&[("nc-1", ServiceState::Enabled)]), 1)
                .expect("report");
            reg.service_report(
                StreamId(2),
                ServiceReport {
                    service_type: WALRUS.into(),
                    name: "walrus".into(),
                    endpoint: "127.0.0.1:4".into(),
                    ..Default::default()
                },
                1,
            )
            .expect("report");
        }
        let reg = registry(&store);
        let services = reg.services(5);
        assert_eq!(services.len(), 3);
        assert_eq!(state_of(&services, "walrus"), ServiceState::Notready);
        let nodes = reg.nodes();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].cluster_name, "cc-1");
        assert_eq!(nodes[0].zone, "zone-1");
    }

    #[test]
    fn bad_reports_are_refused() {
        let store = Store::temporary().expect("store");
        let reg = registry(&store);
        let mut bad = cluster(&[]);
        bad.cluster_name = "has space".into();
        assert_eq!(
            reg.cluster_report(StreamId(1), bad, 1)
                .expect_err("bad name")
                .code(),
            tonic::Code::InvalidArgument
        );
        let err = reg
            .service_report(
                StreamId(2),
                ServiceReport {
                    service_type: "bogus".into(),
                    name: "x".into(),
                    ..Default::default()
                },
                1,
            )
            .expect_err("bad type");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(reg.services(1).len(), 1);
    }
}
