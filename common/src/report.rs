//! Report streams: how state travels up the tiers.
//!
//! A child (NC, CC, SC, Walrus) keeps one bidirectional stream open to its
//! parent. It sends its whole current report first; after that, whenever it
//! changes and as a heartbeat when nothing changed for a while, a delta:
//! what changed since the previous message of the stream (see
//! [`Snapshot`]), so that a report costs what changed, not every instance
//! of the node or cluster. The parent merges each delta into what it kept
//! of the stream ([`merge_node_report`], [`merge_cluster_report`]). The parent
//! acknowledges each report; the child re-opens the stream (with backoff)
//! when it ends, fails, or is not acknowledged in time. The parent marks the
//! child NOTREADY as soon as the stream ends, or when reports stop coming.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Code, Response, Status, Streaming};

use crate::{
    pki::Role,
    rpc::{Client, Trust},
};
use proto::{ClusterReport, InstanceStatus, NodeReport, NodeView, ReportAck, ServiceReport};

/// A report message: carries a sequence number within its stream.
pub trait Report: Clone + Send + Sync + 'static {
    /// Sets the sequence number before sending.
    fn set_seq(&mut self, seq: u64);
    /// The sequence number.
    fn seq(&self) -> u64;
}

macro_rules! impl_report {
    ($($t:ty),*) => {$(
        impl Report for $t {
            fn set_seq(&mut self, seq: u64) { self.seq = seq; }
            fn seq(&self) -> u64 { self.seq }
        }
    )*};
}
impl_report!(NodeReport, ClusterReport, ServiceReport);

/// What a child reports: its current state, which it turns into the
/// message for a parent that last received `sent` (`None`: nothing yet on
/// this stream, so the message is whole).
pub trait Snapshot: Clone + Send + Sync + 'static {
    type Message: Report;
    fn message(&self, sent: Option<&Self>) -> Self::Message;
}

/// A storage controller's or Walrus's report is small and does not change:
/// always whole.
impl Snapshot for ServiceReport {
    type Message = Self;
    fn message(&self, _sent: Option<&Self>) -> Self {
        self.clone()
    }
}

/// The instances of `now` that are new or differ from `before`, and the ids
/// of `before` that `now` no longer has.
fn instance_changes(
    before: &[InstanceStatus],
    now: &[InstanceStatus],
) -> (Vec<InstanceStatus>, Vec<String>) {
    if before == now {
        return (Vec::new(), Vec::new());
    }
    let old: HashMap<&str, &InstanceStatus> =
        before.iter().map(|s| (s.instance_id.as_str(), s)).collect();
    let changed = now
        .iter()
        .filter(|s| old.get(s.instance_id.as_str()) != Some(s))
        .cloned()
        .collect();
    let present: HashSet<&str> = now.iter().map(|s| s.instance_id.as_str()).collect();
    let gone = before
        .iter()
        .filter(|s| !present.contains(s.instance_id.as_str()))
        .map(|s| s.instance_id.clone())
        .collect();
    (changed, gone)
}

/// Applies a delta's instances to the kept ones (kept in id order).
fn merge_instances(kept: &mut Vec<InstanceStatus>, changed: Vec<InstanceStatus>, gone: &[String]) {
    if changed.is_empty() && gone.is_empty() {
        return;
    }
    let mut by_id: BTreeMap<String, InstanceStatus> =
        kept.drain(..).map(|s| (s.instance_id.clone(), s)).collect();
    for id in gone {
        by_id.remove(id);
    }
    for s in changed {
        by_id.insert(s.instance_id.clone(), s);
    }
    *kept = by_id.into_values().collect();
}

/// A node's report: whole on a new stream, then only its changed instances.
impl Snapshot for NodeReport {
    type Message = Self;
    fn message(&self, sent: Option<&Self>) -> Self {
        let Some(sent) = sent else {
            return Self {
                delta: false,
                gone: Vec::new(),
                ..self.clone()
            };
        };
        let (instances, gone) = instance_changes(&sent.instances, &self.instances);
        Self {
            node_name: self.node_name.clone(),
            endpoint: self.endpoint.clone(),
            resources: self.resources,
            hypervisor: self.hypervisor.clone(),
            instances,
            seq: 0,
            version: self.version.clone(),
            virt_reason: self.virt_reason.clone(),
            unknown_guests: self.unknown_guests.clone(),
            delta: true,
            gone,
            tunnel_address: self.tunnel_address.clone(),
            load: self.load.clone(),
            samples: self.samples.clone(),
        }
    }
}

/// Brings the report kept of a stream up to date with the next message of
/// that stream (whole or delta). The result is whole.
pub fn merge_node_report(kept: &mut NodeReport, incoming: NodeReport) {
    if !incoming.delta {
        *kept = incoming;
        return;
    }
    let NodeReport {
        node_name,
        endpoint,
        resources,
        hypervisor,
        instances,
        seq,
        version,
        virt_reason,
        unknown_guests,
        delta: _,
        gone,
        tunnel_address,
        load,
        samples,
    } = incoming;
    merge_instances(&mut kept.instances, instances, &gone);
    kept.node_name = node_name;
    kept.endpoint = endpoint;
    kept.resources = resources;
    kept.hypervisor = hypervisor;
    kept.seq = seq;
    kept.version = version;
    kept.virt_reason = virt_reason;
    kept.unknown_guests = unknown_guests;
    kept.tunnel_address = tunnel_address;
    kept.load = load;
    kept.samples = samples;
}

/// A cluster's state as its CC reports it: each node's view shared, so that
/// taking a snapshot copies no instance, and an unchanged node (the same
/// `Arc`) costs nothing to compare.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSnapshot {
    /// The cluster's report without its nodes.
    pub identity: ClusterReport,
    pub nodes: Vec<Arc<NodeView>>,
}

impl ClusterSnapshot {
    /// The whole report.
    pub fn whole(&self) -> ClusterReport {
        ClusterReport {
            nodes: self.nodes.iter().map(|n| NodeView::clone(n)).collect(),
            delta: false,
            ..self.identity.clone()
        }
    }
}

/// `view` without its instances.
fn node_header(view: &NodeView) -> NodeView {
    NodeView {
        name: view.name.clone(),
        endpoint: view.endpoint.clone(),
        state: view.state,
        resources: view.resources,
        hypervisor: view.hypervisor.clone(),
        last_report_unix_ms: view.last_report_unix_ms,
        instances: Vec::new(),
        virt_reason: view.virt_reason.clone(),
        unknown_guests: view.unknown_guests.clone(),
        gone: Vec::new(),
        disabled: view.disabled,
        tunnel_address: view.tunnel_address.clone(),
        load: view.load.clone(),
        samples: view.samples.clone(),
    }
}

/// Every node, each with only its changed instances.
impl Snapshot for ClusterSnapshot {
    type Message = ClusterReport;
    fn message(&self, sent: Option<&Self>) -> ClusterReport {
        let Some(sent) = sent else {
            return self.whole();
        };
        let before: HashMap<&str, &Arc<NodeView>> =
            sent.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let nodes = self
            .nodes
            .iter()
            .map(|now| {
                let mut view = node_header(now);
                match before.get(now.name.as_str()) {
                    Some(old) if Arc::ptr_eq(old, now) => {}
                    Some(old) => {
                        (view.instances, view.gone) =
                            instance_changes(&old.instances, &now.instances)
                    }
                    None => view.instances = now.instances.clone(),
                }
                view
            })
            .collect();
        ClusterReport {
            nodes,
            delta: true,
            ..self.identity.clone()
        }
    }
}

/// Brings the cluster report kept of a stream up to date with the next
/// message of that stream. A node a delta leaves out is gone.
pub fn merge_cluster_report(kept: &mut ClusterReport, incoming: ClusterReport) {
    if !incoming.delta {
        *kept = incoming;
        return;
    }
    let mut old: HashMap<String, Vec<InstanceStatus>> = kept
        .nodes
        .drain(..)
        .map(|n| (n.name, n.instances))
        .collect();
    let mut incoming = incoming;
    let nodes = std::mem::take(&mut incoming.nodes)
        .into_iter()
        .map(|mut n| {
            let gone = std::mem::take(&mut n.gone);
            let changed = std::mem::take(&mut n.instances);
            n.instances = old.remove(&n.name).unwrap_or_default();
            merge_instances(&mut n.instances, changed, &gone);
            n
        })
        .collect();
    *kept = ClusterReport {
        nodes,
        delta: false,
        ..incoming
    };
}

/// How a child reports to its parent.
#[derive(Clone, Debug)]
pub struct ReportSettings {
    /// The parent's gRPC endpoint (`host:port`).
    pub parent: String,
    /// Shown in logs: "cluster controller", "cloud controller".
    pub parent_kind: &'static str,
    /// The parent's role, which its certificate must name.
    pub parent_role: Role,
    /// How this component proves itself.
    pub trust: Trust,
    /// Send the report again after this long without a change.
    pub heartbeat: Duration,
}

/// Keeps the report stream to the parent open for as long as the future runs.
///
/// `open` starts the RPC on a fresh channel with the stream of reports to send.
pub async fn keep_reporting<N, F, Fut, S>(
    settings: ReportSettings,
    updates: watch::Receiver<N>,
    mut open: F,
) where
    N: Snapshot,
    F: FnMut(Client, ReceiverStream<N::Message>) -> Fut,
    Fut: Future<Output = Result<Response<S>, Status>>,
    S: Stream<Item = Result<ReportAck, Status>> + Unpin,
{
    let mut backoff = Duration::from_millis(200);
    let mut joined_once = false;
    let mut last_problem = String::new();
    loop {
        let problem = match settings
            .trust
            .connect(&settings.parent, settings.parent_role)
            .await
        {
            Err(e) => format!(
                "cannot reach {} at {}: {e}",
                settings.parent_kind, settings.parent
            ),
            Ok(channel) => {
                let (tx, rx) = mpsc::channel(4);
                let pump = tokio::spawn(pump(updates.clone(), tx, settings.heartbeat));
                let outcome = match open(channel, ReceiverStream::new(rx)).await {
                    Err(status) => Err(status),
                    Ok(response) => {
                        let mut acks = response.into_inner();
                        // Two missed heartbeats and the parent counts as gone.
                        let patience = settings.heartbeat * 3;
                        let mut acked = 0u64;
                        loop {
                            match tokio::time::timeout(patience, acks.next()).await {
                                Err(_) => {
                                    break Err(Status::deadline_exceeded("no acknowledgement"))
                                }
                                Ok(None) => break Ok(()),
                                Ok(Some(Err(status))) => break Err(status),
                                Ok(Some(Ok(_ack))) => {
                                    acked += 1;
                                    if acked == 1 {
                                        backoff = Duration::from_millis(200);
                                        last_problem.clear();
                                        tracing::info!(
                                            parent = %settings.parent,
                                            rejoined = joined_once,
                                            "joined {}", settings.parent_kind
                                        );
                                        joined_once = true;
                                    }
                                }
                            }
                        }
                    }
                };
                pump.abort();
                match outcome {
                    Ok(()) => format!("{} closed the report stream", settings.parent_kind),
                    Err(status) if status.code() == Code::Unauthenticated => format!(
                        "refused by {} at {}: {} (is cluster_secret_file the cloud's secret?)",
                        settings.parent_kind,
                        settings.parent,
                        status.message()
                    ),
                    Err(status) => format!(
                        "report stream to {} failed: {}: {}",
                        settings.parent_kind,
                        status.code(),
                        status.message()
                    ),
                }
            }
        };
        // Say each distinct problem once, not on every retry.
        if problem != last_problem {
            if problem.contains("refused") {
                tracing::error!(parent = %settings.parent, "{problem}");
            } else {
                tracing::warn!(parent = %settings.parent, "{problem}");
            }
            last_problem = problem;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Feeds the stream: the whole report now, then what changed on every
/// change and heartbeat. A message is in the stream once queued: if the
/// stream breaks after, the next stream starts whole again.
async fn pump<N: Snapshot>(
    mut updates: watch::Receiver<N>,
    tx: mpsc::Sender<N::Message>,
    heartbeat: Duration,
) {
    let mut seq = 0u64;
    let mut sent: Option<N> = None;
    loop {
        seq += 1;
        let now = updates.borrow_and_update().clone();
        let mut report = now.message(sent.as_ref());
        report.set_seq(seq);
        if tx.send(report).await.is_err() {
            return;
        }
        sent = Some(now);
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(heartbeat) => {}
        }
    }
}

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// Identifies one accepted report stream, so that the end of a stream that
/// was already replaced by a newer one does not mark its sender NOTREADY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(pub u64);

/// Parent side: runs `on_report` for each report and acknowledges it, then
/// `on_end` once when the stream ends (cleanly or not). An error from
/// `on_report` is sent to the child and ends the stream.
pub fn accept_reports<M, H, E>(
    mut inbound: Streaming<M>,
    mut on_report: H,
    on_end: E,
) -> ReceiverStream<Result<ReportAck, Status>>
where
    M: Report,
    H: FnMut(StreamId, M) -> Result<(), Status> + Send + 'static,
    E: FnOnce(StreamId, Option<Status>) + Send + 'static,
{
    let id = StreamId(NEXT_STREAM.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let end = loop {
            match inbound.message().await {
                Ok(Some(report)) => {
                    let seq = report.seq();
                    if let Err(status) = on_report(id, report) {
                        let _ = tx.send(Err(status.clone())).await;
                        break Some(status);
                    }
                    if tx.send(Ok(ReportAck { seq })).await.is_err() {
                        break None;
                    }
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        on_end(id, end);
    });
    ReceiverStream::new(rx)
}

/// Keeps a storage controller's or Walrus's report stream to the CLC open.
pub async fn report_service_to_clc(settings: ReportSettings, report: ServiceReport) {
    // The report of such a service does not change while it runs.
    let (_keep, updates) = watch::channel(report);
    report_service_changes(settings, updates).await
}

/// Keeps a service's report stream to the CLC open, sending each report
/// `updates` gives (a storage controller's room for volumes changes).
pub async fn report_service_changes(
    settings: ReportSettings,
    updates: watch::Receiver<ServiceReport>,
) {
    keep_reporting(settings, updates, |client, reports| async move {
        proto::cloud_service_client::CloudServiceClient::new(client)
            .report_service(reports)
            .await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, state: i32) -> InstanceStatus {
        InstanceStatus {
            instance_id: id.into(),
            state,
            ..Default::default()
        }
    }

    fn node(ids: &[(&str, i32)]) -> NodeReport {
        NodeReport {
            node_name: "nc-1".into(),
            instances: ids.iter().map(|(id, s)| status(id, *s)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn node_deltas_carry_only_changes_and_merge_back_to_the_whole() {
        let first = node(&[("i-1", 1), ("i-2", 1)]);
        let whole = first.message(None);
        assert!(!whole.delta);
        let mut kept = NodeReport::default();
        merge_node_report(&mut kept, whole);
        assert_eq!(kept.instances, first.instances);

        // A heartbeat with no change carries no instance.
        let beat = first.message(Some(&first));
        assert!(beat.delta && beat.instances.is_empty() && beat.gone.is_empty());

        // i-1 changes, i-2 goes, i-3 comes.
        let second = node(&[("i-1", 2), ("i-3", 0)]);
        let delta = second.message(Some(&first));
        assert!(delta.delta);
        let ids: Vec<&str> = delta
            .instances
            .iter()
            .map(|s| s.instance_id.as_str())
            .collect();
        assert_eq!(ids, vec!["i-1", "i-3"]);
        assert_eq!(delta.gone, vec!["i-2".to_string()]);
        merge_node_report(&mut kept, delta);
        assert_eq!(kept.instances, second.instances);
        assert!(!kept.delta && kept.gone.is_empty());
    }

    fn view(name: &str, ids: &[(&str, i32)]) -> Arc<NodeView> {
        Arc::new(NodeView {
            name: name.into(),
            instances: ids.iter().map(|(id, s)| status(id, *s)).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn cluster_deltas_list_every_node_with_only_changed_instances() {
        let a = view("nc-1", &[("i-1", 1)]);
        let b = view("nc-2", &[("i-2", 1), ("i-3", 1)]);
        let first = ClusterSnapshot {
            identity: ClusterReport {
                cluster_name: "cc".into(),
                ..Default::default()
            },
            nodes: vec![a.clone(), b],
        };
        let mut kept = ClusterReport::default();
        merge_cluster_report(&mut kept, first.message(None));
        assert_eq!(kept, first.whole());

        // nc-1 unchanged (same Arc), nc-2 loses i-3, nc-3 joins.
        let second = ClusterSnapshot {
            identity: first.identity.clone(),
            nodes: vec![a, view("nc-2", &[("i-2", 1)]), view("nc-3", &[("i-4", 0)])],
        };
        let delta = second.message(Some(&first));
        assert!(delta.delta);
        let sizes: Vec<(usize, usize)> = delta
            .nodes
            .iter()
            .map(|n| (n.instances.len(), n.gone.len()))
            .collect();
        assert_eq!(sizes, vec![(0, 0), (0, 1), (1, 0)]);
        merge_cluster_report(&mut kept, delta);
        assert_eq!(kept, second.whole());

        // A node left out of a delta is gone.
        let third = ClusterSnapshot {
            identity: first.identity.clone(),
            nodes: vec![second.nodes[2].clone()],
        };
        merge_cluster_report(&mut kept, third.message(Some(&second)));
        assert_eq!(kept, third.whole());
    }
}
