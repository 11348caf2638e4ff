//! The nodes of this cluster: who they are (durable) and how they are (live).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use common::{
    report::{merge_node_report, ClusterSnapshot, StreamId},
    store::{Record, Store, StoreError, Table},
};
use proto::{ClusterReport, NodeReport, NodeView, ServiceState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::Status;

/// A node as recorded durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub endpoint: String,
    pub first_seen_ms: i64,
    /// Out of placement (an administrator's evacuation) until enabled.
    pub disabled: bool,
}

impl Record for NodeRecord {
    const TABLE: &'static str = "nodes";
    /// 2: `disabled` added.
    const SCHEMA: u32 = 2;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
    fn migrate(from: u32, value: serde_json::Value) -> Result<serde_json::Value, String> {
        common::store::add_field(from, value, &[("disabled", serde_json::Value::from(false))])
    }
}

#[derive(Debug)]
struct NodeLive {
    record: NodeRecord,
    report: Option<NodeReport>,
    stream: Option<StreamId>,
    last_report_ms: i64,
    ready: bool,
    /// The view last published, shared with the snapshots that hold it;
    /// `None` when the node changed since.
    view: Option<Arc<NodeView>>,
}

impl NodeLive {
    fn view(&self) -> NodeView {
        let r = self.report.as_ref();
        NodeView {
            name: self.record.name.clone(),
            endpoint: self.record.endpoint.clone(),
            state: if self.ready {
                ServiceState::Enabled
            } else {
                ServiceState::Notready
            } as i32,
            resources: r.and_then(|r| r.resources),
            hypervisor: r.map(|r| r.hypervisor.clone()).unwrap_or_default(),
            virt_reason: r.map(|r| r.virt_reason.clone()).unwrap_or_default(),
            last_report_unix_ms: self.last_report_ms,
            instances: r.map(|r| r.instances.clone()).unwrap_or_default(),
            unknown_guests: r.map(|r| r.unknown_guests.clone()).unwrap_or_default(),
            gone: Vec::new(),
            tunnel_address: r.map(|r| r.tunnel_address.clone()).unwrap_or_default(),
            disabled: self.record.disabled,
            load: r.and_then(|r| r.load.clone()),
            samples: r.map(|r| r.samples.clone()).unwrap_or_default(),
        }
    }
}

/// Whether two views of a node differ in more than their report time.
fn differ(a: &NodeView, b: &NodeView) -> bool {
    a.name != b.name
        || a.endpoint != b.endpoint
        || a.state != b.state
        || a.resources != b.resources
        || a.hypervisor != b.hypervisor
        || a.virt_reason != b.virt_reason
        || a.instances != b.instances
        || a.unknown_guests != b.unknown_guests
        || a.tunnel_address != b.tunnel_address
        || a.disabled != b.disabled
        || a.load != b.load
        || a.samples != b.samples
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, NodeLive>,
    streams: HashMap<StreamId, String>,
}

/// The cluster's nodes. Every change is published as a new [`ClusterSnapshot`].
pub struct Nodes {
    table: Table<NodeRecord>,
    inner: Mutex<Inner>,
    identity: ClusterReport,
    updates: watch::Sender<ClusterSnapshot>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("cluster", &self.identity.cluster_name)
            .finish()
    }
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Nodes {
    /// Loads the recorded nodes. `identity` is this cluster's report without nodes.
    pub fn open(store: &Store, identity: ClusterReport) -> Result<Self, StoreError> {
        let table = store.table::<NodeRecord>()?;
        let mut inner = Inner::default();
        for record in table.list()? {
            inner.nodes.insert(
                record.name.clone(),
                NodeLive {
                    record,
                    report: None,
                    stream: None,
                    last_report_ms: 0,
                    ready: false,
                    view: None,
                },
            );
        }
        let (updates, _) = watch::channel(ClusterSnapshot {
            identity: identity.clone(),
            nodes: Vec::new(),
        });
        let nodes = Self {
            table,
            inner: Mutex::new(inner),
            identity,
            updates,
        };
        nodes.publish(&mut nodes.lock(), true);
        Ok(nodes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports to send up: changes now, the rest at heartbeats.
    pub fn subscribe(&self) -> watch::Receiver<ClusterSnapshot> {
        self.updates.subscribe()
    }

    /// Publishes the nodes, making views again only of those that changed.
    /// The reporter wakes when `changed`, or when a node's view differs in
    /// more than its report time: a heartbeat only refreshes timestamps,
    /// which go up with the next report.
    fn publish(&self, inner: &mut Inner, mut changed: bool) {
        let nodes = inner
            .nodes
            .values_mut()
            .map(|n| {
                if let Some(view) = &n.view {
                    return view.clone();
                }
                let view = Arc::new(n.view());
                changed = changed
                    || self
                        .updates
                        .borrow()
                        .nodes
                        .iter()
                        .all(|old| old.name != view.name || differ(old, &view));
                n.view = Some(view.clone());
                view
            })
            .collect::<Vec<_>>();
        self.updates.send_if_modified(|current| {
            let changed = changed || current.nodes.len() != nodes.len();
            current.nodes = nodes;
            changed
        });
    }

    /// A report from a node.
    pub fn node_report(
        &self,
        stream: StreamId,
        report: NodeReport,
        now_ms: i64,
    ) -> Result<(), Status> {
        if !valid_node_name(&report.node_name) {
            return Err(Status::invalid_argument(format!(
                "invalid node name {:?}",
                report.node_name
            )));
        }
        let mut inner = self.lock();
        let name = report.node_name.clone();
        let known = inner.nodes.get(&name).map(|n| n.record.clone());
        let record = match known {
            Some(r) if r.endpoint == report.endpoint => r,
            other => {
                let record = NodeRecord {
                    name: name.clone(),
                    endpoint: report.endpoint.clone(),
                    first_seen_ms: other.as_ref().map_or(now_ms, |r| r.first_seen_ms),
                    disabled: other.is_some_and(|r| r.disabled),
                };
                self.table.put(&record).map_err(|e| {
                    tracing::error!(error = %e, "store write failed");
                    Status::unavailable(format!("cannot record node: {e}"))
                })?;
                record
            }
        };
        let was_ready = inner.nodes.get(&name).is_some_and(|n| n.ready);
        if !was_ready {
            tracing::info!(node = %name, endpoint = %record.endpoint, "node ENABLED");
        }
        // A delta adds to what this stream sent before; a stream opens whole.
        let kept = inner
            .nodes
            .get_mut(&name)
            .filter(|n| n.stream == Some(stream))
            .and_then(|n| n.report.take());
        let report = match (kept, report.delta) {
            (_, false) => report,
            (Some(mut kept), true) => {
                merge_node_report(&mut kept, report);
                kept
            }
            (None, true) => {
                return Err(Status::failed_precondition(
                    "a delta report before the whole one: reopen the stream",
                ))
            }
        };
        inner.streams.insert(stream, name.clone());
        inner.nodes.insert(
            name,
            NodeLive {
                record,
                report: Some(report),
                stream: Some(stream),
                last_report_ms: now_ms,
                ready: true,
                view: None,
            },
        );
        self.publish(&mut inner, false);
        Ok(())
    }

    /// A node's report stream ended: NOTREADY unless a newer stream replaced it.
    pub fn stream_ended(&self, stream: StreamId, why: Option<Status>) {
        let mut inner = self.lock();
        let Some(name) = inner.streams.remove(&stream) else {
            return;
        };
        if let Some(node) = inner.nodes.get_mut(&name) {
            if node.stream == Some(stream) {
                node.stream = None;
                node.ready = false;
                node.view = None;
                let why = why.map(|s| s.message().to_string()).unwrap_or_default();
                tracing::warn!(node = %name, %why, "node NOTREADY: report stream ended");
                self.publish(&mut inner, true);
            }
        }
    }

    /// The instances each ready node reported last, by node name.
    pub fn reported(&self) -> HashMap<String, std::collections::HashSet<String>> {
        self.lock()
            .nodes
            .iter()
            .filter(|(_, n)| n.ready)
            .filter_map(|(name, n)| {
                let r = n.report.as_ref()?;
                Some((
                    name.clone(),
                    r.instances.iter().map(|i| i.instance_id.clone()).collect(),
                ))
            })
            .collect()
    }

    /// Takes node `name` out of placement (`disabled`) or puts it back,
    /// durably: its view as it is now.
    pub fn set_disabled(
        &self,
        name: &str,
        disabled: bool,
    ) -> Result<NodeView, crate::instances::ClusterError> {
        let mut inner = self.lock();
        let Some(node) = inner.nodes.get_mut(name) else {
            return Err(crate::instances::ClusterError::NotFound(format!(
                "no node {name} in this cluster"
            )));
        };
        if node.record.disabled != disabled {
            let record = NodeRecord {
                disabled,
                ..node.record.clone()
            };
            self.table.put(&record).map_err(|e| {
                tracing::error!(error = %e, "store write failed");
                crate::instances::ClusterError::Unavailable(format!("cannot record the node: {e}"))
            })?;
            node.record = record;
            node.view = None;
            tracing::info!(node = %name, disabled, "node {}", if disabled { "taken out of placement" } else { "back in placement" });
        }
        let view = node.view();
        self.publish(&mut inner, true);
        Ok(view)
    }

    /// Forgets node `name` (durably): NOT_FOUND when unknown,
    /// FAILED_PRECONDITION while it still reports.
    pub fn forget(&self, name: &str) -> Result<(), crate::instances::ClusterError> {
        let mut inner = self.lock();
        match inner.nodes.get(name) {
            None => {
                return Err(crate::instances::ClusterError::NotFound(format!(
                    "no node {name} in this cluster"
                )))
            }
            Some(n) if n.ready => {
                return Err(crate::instances::ClusterError::Refused(format!(
                    "node {name} is ENABLED (it still reports): stop its node controller first"
                )))
            }
            Some(_) => {}
        }
        self.table.delete(&name.to_string()).map_err(|e| {
            tracing::error!(error = %e, "store write failed");
            crate::instances::ClusterError::Unavailable(format!("cannot forget node: {e}"))
        })?;
        inner.nodes.remove(name);
        inner.streams.retain(|_, n| n != name);
        tracing::info!(node = %name, "node deregistered");
        self.publish(&mut inner, true);
        Ok(())
    }

    /// Marks NOTREADY every node silent for longer than `timeout_ms`; one
    /// whose report stream is still open only after [`SUSPICION_FACTOR`]
    /// times that (a busy host's heartbeat can be late; a dead or frozen
    /// node's stream ends when it stops answering keep-alives).
    pub fn expire(&self, now_ms: i64, timeout_ms: i64) {
        let mut inner = self.lock();
        let mut changed = false;
        for (name, node) in inner.nodes.iter_mut() {
            let limit = if node.stream.is_some() {
                timeout_ms * SUSPICION_FACTOR
            } else {
                timeout_ms
            };
            if node.ready && now_ms - node.last_report_ms > limit {
                node.ready = false;
                node.view = None;
                changed = true;
                tracing::warn!(node = %name, "node NOTREADY: no report for {} ms", now_ms - node.last_report_ms);
            }
        }
        if changed {
            self.publish(&mut inner, true);
        }
    }
}

/// How many timeouts a node whose report stream is open may stay silent.
pub const SUSPICION_FACTOR: i64 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(store: &Store) -> Nodes {
        Nodes::open(
            store,
            ClusterReport {
                cluster_name: "cc".into(),
                zone: "z".into(),
                ..Default::default()
            },
        )
        .expect("nodes")
    }

    fn report(name: &str, cores_free: u32) -> NodeReport {
        NodeReport {
            node_name: name.into(),
            endpoint: "127.0.0.1:9".into(),
            resources: Some(proto::Resources {
                cores_total: 4,
                cores_free,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn heartbeats_do_not_wake_the_reporter_but_changes_do() {
        let store = Store::temporary().expect("store");
        let n = nodes(&store);
        let mut rx = n.subscribe();
        rx.borrow_and_update();
        n.node_report(StreamId(1), report("nc-1", 4), 1_000)
            .expect("report");
        assert!(rx.has_changed().expect("open"));
        rx.borrow_and_update();
        n.node_report(StreamId(1), report("nc-1", 4), 3_000)
            .expect("heartbeat");
        assert!(
            !rx.has_changed().expect("open"),
            "a heartbeat is not a change"
        );
        assert_eq!(rx.borrow().nodes[0].last_report_unix_ms, 3_000);
        n.node_report(StreamId(1), report("nc-1", 2), 4_000)
            .expect("change");
        assert!(rx.has_changed().expect("open"));
    }

    #[test]
    fn deltas_merge_into_the_streams_report_and_need_a_whole_one_first() {
        use common::report::Snapshot;
        let store = Store::temporary().expect("store");
        let n = nodes(&store);
        let status = |id: &str| proto::InstanceStatus {
            instance_id: id.into(),
            ..Default::default()
        };
        let mut first = report("nc-1", 4);
        first.instances = vec![status("i-1"), status("i-2")];
        let mut second = first.clone();
        second.instances = vec![status("i-2"), status("i-3")];
        // A delta on a stream that sent nothing whole is refused.
        assert!(n
            .node_report(StreamId(1), second.message(Some(&first)), 1_000)
            .is_err());
        n.node_report(StreamId(1), first.message(None), 1_000)
            .expect("whole");
        n.node_report(StreamId(1), second.message(Some(&first)), 2_000)
            .expect("delta");
        let ids: Vec<String> = n.subscribe().borrow().nodes[0]
            .instances
            .iter()
            .map(|s| s.instance_id.clone())
            .collect();
        assert_eq!(ids, vec!["i-2", "i-3"]);
        // Nor does a delta carry over to the node's next stream.
        assert!(n
            .node_report(StreamId(2), second.message(Some(&second)), 3_000)
            .is_err());
    }

    #[test]
    fn nodes_go_notready_on_stream_end_or_silence_and_are_remembered() {
        let store = Store::temporary().expect("store");
        {
            let n = nodes(&store);
            let rx = n.subscribe();
            n.node_report(StreamId(1), report("nc-1", 4), 1_000)
                .expect("report");
            n.node_report(StreamId(2), report("nc-2", 4), 1_000)
                .expect("report");
            n.stream_ended(StreamId(1), None);
            // nc-2's stream is open: late is suspicion, not death...
            n.expire(8_000, 6_000);
            let states: Vec<i32> = rx.borrow().nodes.iter().map(|v| v.state).collect();
            assert_eq!(
                states,
                vec![ServiceState::Notready as i32, ServiceState::Enabled as i32]
            );
            // ... until three timeouts of silence.
            n.expire(1_000 + 18_001, 6_000);
            let states: Vec<i32> = rx.borrow().nodes.iter().map(|v| v.state).collect();
            assert_eq!(states, vec![ServiceState::Notready as i32; 2]);
        }
        let n = nodes(&store);
        let names: Vec<String> = n
            .subscribe()
            .borrow()
            .nodes
            .iter()
            .map(|v| v.name.clone())
            .collect();
        assert_eq!(names, vec!["nc-1", "nc-2"]);
        assert!(n
            .node_report(StreamId(3), report("bad name", 1), 1)
            .is_err());
    }

    #[test]
    fn a_disabled_node_stays_disabled_across_restarts_and_reports_until_enabled() {
        let store = Store::temporary().expect("store");
        let view = |n: &Nodes| n.subscribe().borrow().nodes[0].as_ref().clone();
        {
            let n = nodes(&store);
            assert!(n.set_disabled("nc-1", true).is_err(), "an unknown node");
            n.node_report(StreamId(1), report("nc-1", 4), 1_000)
                .expect("report");
            assert!(n.set_disabled("nc-1", true).expect("disable").disabled);
            assert!(view(&n).disabled);
            // A new endpoint (the node moved) keeps it out of placement.
            let moved = NodeReport {
                endpoint: "127.0.0.1:10".into(),
                ..report("nc-1", 4)
            };
            n.node_report(StreamId(2), moved, 2_000).expect("report");
            assert!(view(&n).disabled);
        }
        let n = nodes(&store);
        n.node_report(StreamId(3), report("nc-1", 4), 3_000)
            .expect("report");
        let v = view(&n);
        assert!(v.disabled && v.state == ServiceState::Enabled as i32);
        assert!(!n.set_disabled("nc-1", false).expect("enable").disabled);
        assert!(!view(&nodes(&store)).disabled, "enabled durably");
    }
}
