//! Metrics: what accounts publish (PutMetricData), what the nodes measure
//! of every instance and of themselves, and the queries over them
//! (statistics, metric math, listings). Each account sees only its own
//! series: every call takes the account it acts for.
//!
//! - EC2's metrics are the instance owner's, in `AWS/EC2`, per instance
//!   (`InstanceId`) and summed up per image (`ImageId`) and type
//!   (`InstanceType`); 5-minute points unless the instance has detailed
//!   monitoring (MonitorInstances), then 1-minute.
//! - Per attached volume, `AWS/EBS` (`VolumeId`).
//! - The nodes' own figures belong to the system account, in
//!   [`NODE_NAMESPACE`] (`Cluster`, `NodeName`).

use std::collections::BTreeMap;

use metric_store::{expr, Agg, Bucket, ListFilter, Listed, MetricId, Point, Span, Statistic};

use super::Cloud;

/// The namespace of the nodes' own metrics (the administrators').
pub const NODE_NAMESPACE: &str = "Gumtree/Node";

/// Why a monitoring call failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error(transparent)]
    Store(#[from] metric_store::StoreError),
    /// A metric math expression that cannot be evaluated.
    #[error("{0}")]
    Expression(String),
    /// No such alarm.
    #[error("{0}")]
    NotFound(String),
    /// The request asks for something that cannot be.
    #[error("{0}")]
    Invalid(String),
}

/// A datapoint an account publishes.
#[derive(Clone, Debug)]
pub struct Datum {
    pub metric: MetricId,
    pub at_secs: i64,
    pub agg: Agg,
    /// CloudWatch's unit name (`None` when not given).
    pub unit: String,
    /// StorageResolution 1.
    pub high_res: bool,
}

/// A query of GetMetricData.
#[derive(Clone, Debug)]
pub struct DataQuery {
    pub id: String,
    pub label: Option<String>,
    pub return_data: bool,
    pub what: DataSource,
}

/// Where a query's values come from.
#[derive(Clone, Debug)]
pub enum DataSource {
    Stat {
        metric: MetricId,
        period: i64,
        stat: Statistic,
        unit: Option<String>,
    },
    Expression(String),
}

/// A query's answer: its points, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct DataResult {
    pub id: String,
    pub label: String,
    pub points: Vec<(i64, f64)>,
}

impl Cloud {
    /// Stores `data` for `account_id`, durably before it returns.
    pub fn put_metric_data(&self, account_id: &str, data: &[Datum]) -> Result<(), MonitoringError> {
        let points: Vec<Point> = data
            .iter()
            .map(|d| Point {
                metric: d.metric.clone(),
                unit: d.unit.clone(),
                at_secs: d.at_secs,
                agg: d.agg.clone(),
                high_res: d.high_res,
            })
            .collect();
        self.metrics
            .put(account_id, &points, &[], common::time::unix_secs())?;
        Ok(())
    }

    /// `account_id`'s points of `metric` over `span` (GetMetricStatistics).
    pub fn metric_statistics(
        &self,
        account_id: &str,
        metric: &MetricId,
        span: Span,
        unit: Option<&str>,
    ) -> Result<Vec<Bucket>, MonitoringError> {
        Ok(self
            .metrics
            .statistics(account_id, metric, span, unit, common::time::unix_secs())?)
    }

    /// The unit `account_id`'s `metric` was last published with.
    pub fn metric_unit(
        &self,
        account_id: &str,
        metric: &MetricId,
    ) -> Result<Option<String>, MonitoringError> {
        Ok(self.metrics.series(account_id, metric)?.map(|m| m.unit))
    }

    /// A page of `account_id`'s metrics (ListMetrics).
    pub fn list_metrics(
        &self,
        account_id: &str,
        filter: &ListFilter,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Listed>, Option<Vec<u8>>), MonitoringError> {
        Ok(self.metrics.list(account_id, filter, after, limit)?)
    }

    /// GetMetricData: every query's points from `start` to `end`, metric
    /// math evaluated once the queries it names are.
    pub fn metric_data(
        &self,
        account_id: &str,
        queries: &[DataQuery],
        start: i64,
        end: i64,
    ) -> Result<Vec<DataResult>, MonitoringError> {
        let mut series: BTreeMap<String, expr::Series> = BTreeMap::new();
        let mut metric_ids = Vec::new();
        for q in queries {
            if let DataSource::Stat {
                metric,
                period,
                stat,
                unit,
            } = &q.what
            {
                let buckets = self.metric_statistics(
                    account_id,
                    metric,
                    Span {
                        start,
                        end,
                        period: *period,
                    },
                    unit.as_deref(),
                )?;
                let s: expr::Series = buckets
                    .iter()
                    .filter_map(|b| Some((b.at, b.agg.get(*stat)?)))
                    .collect();
                series.insert(q.id.clone(), s);
                metric_ids.push(q.id.clone());
            }
        }
        // Expressions, each once what it names is known.
        let mut many: BTreeMap<String, Vec<(String, expr::Series)>> = BTreeMap::new();
        let mut numbers: BTreeMap<String, f64> = BTreeMap::new();
        let mut left: Vec<&DataQuery> = queries
            .iter()
            .filter(|q| matches!(q.what, DataSource::Expression(_)))
            .collect();
        while !left.is_empty() {
            let before = left.len();
            let mut still = Vec::new();
            for q in left {
                let DataSource::Expression(text) = &q.what else {
                    continue;
                };
                let refs = expr::references(text, &metric_ids).map_err(|e| {
                    MonitoringError::Expression(format!("Error in expression '{}': {e}", q.id))
                })?;
                if let Some(r) = refs.iter().find(|r| !queries.iter().any(|q| &q.id == *r)) {
                    return Err(MonitoringError::Expression(format!(
                        "Error in expression '{}': Unrecognized metric id: {r}",
                        q.id
                    )));
                }
                if !refs.iter().all(|r| series.contains_key(r)) {
                    still.push(q);
                    continue;
                }
                match expr::evaluate(text, &series, &metric_ids).map_err(|e| {
                    MonitoringError::Expression(format!("Error in expression '{}': {e}", q.id))
                })? {
                    expr::Value::Series(s) => {
                        series.insert(q.id.clone(), s);
                    }
                    expr::Value::Number(n) => {
                        numbers.insert(q.id.clone(), n);
                        series.insert(q.id.clone(), expr::Series::new());
                    }
                    expr::Value::Many(m) => {
                        many.insert(q.id.clone(), m);
                        series.insert(q.id.clone(), expr::Series::new());
                    }
                }
            }
            if still.len() == before {
                return Err(MonitoringError::Expression(
                    "Circular dependency between the expressions' ids.".into(),
                ));
            }
            left = still;
        }
        // A number shows at every time any series has.
        let times: std::collections::BTreeSet<i64> =
            series.values().flat_map(|s| s.keys().copied()).collect();
        let mut out = Vec::new();
        for q in queries.iter().filter(|q| q.return_data) {
            let label = |fallback: &str| q.label.clone().unwrap_or_else(|| fallback.to_string());
            if let Some(n) = numbers.get(&q.id) {
                out.push(DataResult {
                    id: q.id.clone(),
                    label: label(&q.id),
                    points: times
                        .iter()
                        .map(|t| (*t, *n))
                        .filter(|(_, n)| n.is_finite())
                        .collect(),
                });
            } else if let Some(m) = many.get(&q.id) {
                for (sub, s) in m {
                    out.push(DataResult {
                        id: q.id.clone(),
                        label: format!("{} {sub}", label(&q.id)),
                        points: s.iter().map(|(t, v)| (*t, *v)).collect(),
                    });
                }
            } else {
                let fallback = match &q.what {
                    DataSource::Stat { metric, .. } => metric.name.clone(),
                    DataSource::Expression(_) => q.id.clone(),
                };
                out.push(DataResult {
                    id: q.id.clone(),
                    label: label(&fallback),
                    points: series
                        .get(&q.id)
                        .map(|s| s.iter().map(|(t, v)| (*t, *v)).collect())
                        .unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }
}

impl Cloud {
    /// Drops points and alarm history past their retention every `every`.
    pub async fn keep_metrics_trimmed(self, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let metrics = self.metrics.clone();
            let swept = tokio::task::spawn_blocking(move || {
                let points = metrics.sweep(common::time::unix_secs())?;
                let history = metrics.sweep_history(common::time::unix_ms())?;
                Ok::<_, metric_store::StoreError>((points, history))
            })
            .await;
            match swept {
                Ok(Ok((points, history))) if points + history > 0 => {
                    tracing::info!(points, history, "dropped metrics past their retention")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot trim the metric store"),
                _ => {}
            }
        }
    }
}

/// What the metrics of an instance need to know of it.
#[derive(Clone, Debug)]
pub struct InstanceInfo {
    pub account_id: String,
    pub image_id: String,
    pub instance_type: String,
    /// Detailed monitoring: 1-minute points (else 5-minute).
    pub detailed: bool,
}

fn point(metric: MetricId, unit: &str, at: i64, v: f64) -> Point {
    Point {
        metric,
        unit: unit.to_string(),
        at_secs: at,
        agg: Agg::of(v, 1.0),
        high_res: false,
    }
}

fn dim(name: &str, value: &str) -> metric_store::Dimension {
    metric_store::Dimension::new(name, value)
}

/// The points one node sample makes: the host's for the system account
/// (`admin_account`), each guest's for its owner in `AWS/EC2` (per
/// instance, image, type and all together) and its volumes' in `AWS/EBS`.
/// Guests the cloud has no record of are left out.
pub fn points_of(
    sample: &proto::MetricSample,
    cluster: &str,
    node: &str,
    admin_account: &str,
    instance: &dyn Fn(&str) -> Option<InstanceInfo>,
) -> Vec<(String, Point)> {
    let at = sample.at_unix_ms.div_euclid(1000);
    let mut out = Vec::new();
    if let Some(h) = &sample.host {
        let m = |name: &str| {
            MetricId::new(
                NODE_NAMESPACE,
                name,
                vec![dim("Cluster", cluster), dim("NodeName", node)],
            )
        };
        let pct = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 / total as f64 * 100.0
            }
        };
        for (name, unit, v) in [
            ("CPUUtilization", "Percent", h.cpu_percent),
            (
                "MemoryUtilization",
                "Percent",
                pct(h.memory_used_bytes, h.memory_total_bytes),
            ),
            ("MemoryUsed", "Bytes", h.memory_used_bytes as f64),
            (
                "DiskUtilization",
                "Percent",
                pct(h.disk_used_bytes, h.disk_total_bytes),
            ),
            ("DiskUsed", "Bytes", h.disk_used_bytes as f64),
            ("NetworkIn", "Bytes", h.net_in_bytes as f64),
            ("NetworkOut", "Bytes", h.net_out_bytes as f64),
            ("Instances", "Count", f64::from(h.guests)),
        ] {
            out.push((admin_account.to_string(), point(m(name), unit, at, v)));
        }
    }
    for g in &sample.guests {
        let Some(info) = instance(&g.instance_id) else {
            continue;
        };
        // Basic monitoring: one point per 5 minutes, as EC2 keeps it.
        let at = if info.detailed {
            at
        } else {
            at.div_euclid(300) * 300
        };
        let disk = g.disk.unwrap_or_default();
        let figures = [
            ("CPUUtilization", "Percent", g.cpu_percent),
            ("NetworkIn", "Bytes", g.net_in_bytes as f64),
            ("NetworkOut", "Bytes", g.net_out_bytes as f64),
            ("NetworkPacketsIn", "Count", g.net_in_packets as f64),
            ("NetworkPacketsOut", "Count", g.net_out_packets as f64),
            ("DiskReadBytes", "Bytes", disk.read_bytes as f64),
            ("DiskWriteBytes", "Bytes", disk.write_bytes as f64),
            ("DiskReadOps", "Count", disk.read_ops as f64),
            ("DiskWriteOps", "Count", disk.write_ops as f64),
            ("StatusCheckFailed", "Count", 0.0),
            ("StatusCheckFailed_Instance", "Count", 0.0),
            ("StatusCheckFailed_System", "Count", 0.0),
        ];
        let dimension_sets = [
            vec![dim("InstanceId", &g.instance_id)],
            vec![dim("ImageId", &info.image_id)],
            vec![dim("InstanceType", &info.instance_type)],
            vec![],
        ];
        for dims in &dimension_sets {
            for (name, unit, v) in figures {
                out.push((
                    info.account_id.clone(),
                    point(MetricId::new("AWS/EC2", name, dims.clone()), unit, at, v),
                ));
            }
        }
        for v in &g.volumes {
            let io = v.io.unwrap_or_default();
            let m =
                |name: &str| MetricId::new("AWS/EBS", name, vec![dim("VolumeId", &v.volume_id)]);
            for (name, unit, x) in [
                ("VolumeReadBytes", "Bytes", io.read_bytes as f64),
                ("VolumeWriteBytes", "Bytes", io.write_bytes as f64),
                ("VolumeReadOps", "Count", io.read_ops as f64),
                ("VolumeWriteOps", "Count", io.write_ops as f64),
            ] {
                out.push((info.account_id.clone(), point(m(name), unit, at, x)));
            }
        }
    }
    out
}

impl Cloud {
    /// Stores the nodes' new samples every `every`: each node's samples
    /// newer than the last one stored (a mark kept with the points, so a
    /// sample that comes again after a restart counts once).
    pub async fn keep_collecting_metrics(self, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        let mut marks: std::collections::HashMap<String, i64> = Default::default();
        let admin = match self.accounts.find(&self.settings.admin_account) {
            Ok(a) => a.account_id,
            Err(e) => {
                tracing::error!(error = %e, "no system account: node metrics are not kept");
                String::new()
            }
        };
        loop {
            tick.tick().await;
            for view in self.registry.nodes() {
                let Some(node) = view.node else { continue };
                if node.samples.is_empty() {
                    continue;
                }
                let key = format!("node/{}/{}", view.cluster_name, node.name);
                let mark = match marks.get(&key) {
                    Some(m) => *m,
                    None => self.metrics.mark(&key).ok().flatten().unwrap_or(0),
                };
                let fresh: Vec<&proto::MetricSample> = node
                    .samples
                    .iter()
                    .filter(|s| s.at_unix_ms > mark)
                    .collect();
                let Some(newest) = fresh.iter().map(|s| s.at_unix_ms).max() else {
                    continue;
                };
                let lookup = |id: &str| -> Option<InstanceInfo> {
                    let r = self.instances.get(id).ok()??;
                    Some(InstanceInfo {
                        account_id: r.account_id,
                        image_id: r.image_id,
                        instance_type: r.instance_type,
                        detailed: r.monitoring,
                    })
                };
                let mut by_account: std::collections::BTreeMap<String, Vec<Point>> =
                    Default::default();
                for s in fresh {
                    for (account, p) in
                        points_of(s, &view.cluster_name, &node.name, &admin, &lookup)
                    {
                        if !account.is_empty() {
                            by_account.entry(account).or_default().push(p);
                        }
                    }
                }
                let batches: Vec<(&str, &[Point])> = by_account
                    .iter()
                    .map(|(a, p)| (a.as_str(), p.as_slice()))
                    .collect();
                let metrics = self.metrics.clone();
                let marks_now = vec![(key.clone(), newest)];
                let stored = tokio::task::block_in_place(|| {
                    metrics.put_many(&batches, &marks_now, common::time::unix_secs())
                });
                match stored {
                    Ok(()) => {
                        marks.insert(key, newest);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, node = %node.name, "cannot store a node's samples")
                    }
                }
            }
        }
    }
}

/// A node's load now and lately (`gumtree-admin describe-node-metrics`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeMetrics {
    pub cluster: String,
    pub node: String,
    pub state: i32,
    pub sampled_unix_ms: i64,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub disk_percent: f64,
    pub instances: u32,
    pub guests_busy_cores: f64,
    pub cores: u32,
    pub cpu_average: f64,
    pub cpu_maximum: f64,
    pub memory_average: f64,
    pub net_in_bytes: f64,
    pub net_out_bytes: f64,
    pub cpu_by_minute: Vec<f64>,
}

impl Cloud {
    /// Every node's latest sample and its figures over the last `minutes`.
    pub fn node_metrics(&self, minutes: i64) -> Result<Vec<NodeMetrics>, MonitoringError> {
        let admin = self
            .accounts
            .find(&self.settings.admin_account)
            .map_err(|e| MonitoringError::Invalid(e.to_string()))?
            .account_id;
        let now = common::time::unix_secs();
        let span = Span {
            start: now - minutes.max(1) * 60,
            end: now + 60,
            period: 60,
        };
        let mut out = Vec::new();
        for view in self.registry.nodes() {
            let Some(n) = view.node else { continue };
            let metric = |name: &str| {
                MetricId::new(
                    NODE_NAMESPACE,
                    name,
                    vec![dim("Cluster", &view.cluster_name), dim("NodeName", &n.name)],
                )
            };
            let cpu = self.metric_statistics(&admin, &metric("CPUUtilization"), span, None)?;
            let memory =
                self.metric_statistics(&admin, &metric("MemoryUtilization"), span, None)?;
            let total = |b: &[metric_store::Bucket]| {
                let mut all: Option<Agg> = None;
                for x in b {
                    match &mut all {
                        Some(a) => a.merge(&x.agg),
                        None => all = Some(x.agg.clone()),
                    }
                }
                all
            };
            let sum_of = |name: &str| -> Result<f64, MonitoringError> {
                let b = self.metric_statistics(&admin, &metric(name), span, None)?;
                Ok(b.iter().map(|x| x.agg.sum).sum())
            };
            let latest = n.samples.last();
            let host = latest.and_then(|s| s.host.as_ref());
            let pct = |used: u64, total: u64| {
                if total == 0 {
                    0.0
                } else {
                    used as f64 / total as f64 * 100.0
                }
            };
            let cpu_all = total(&cpu);
            out.push(NodeMetrics {
                cluster: view.cluster_name.clone(),
                node: n.name.clone(),
                state: n.state,
                sampled_unix_ms: latest.map(|s| s.at_unix_ms).unwrap_or(0),
                cpu_percent: host.map(|h| h.cpu_percent).unwrap_or(0.0),
                memory_percent: host
                    .map(|h| pct(h.memory_used_bytes, h.memory_total_bytes))
                    .unwrap_or(0.0),
                disk_percent: host
                    .map(|h| pct(h.disk_used_bytes, h.disk_total_bytes))
                    .unwrap_or(0.0),
                instances: host.map(|h| h.guests).unwrap_or(0),
                guests_busy_cores: n.load.as_ref().map(|l| l.cpu_busy_cores).unwrap_or(0.0),
                cores: n.resources.map(|r| r.cores_total).unwrap_or(0),
                cpu_average: cpu_all
                    .as_ref()
                    .and_then(|a| a.get(Statistic::Average))
                    .unwrap_or(0.0),
                cpu_maximum: cpu_all
                    .as_ref()
                    .and_then(|a| a.get(Statistic::Maximum))
                    .unwrap_or(0.0),
                memory_average: total(&memory)
                    .and_then(|a| a.get(Statistic::Average))
                    .unwrap_or(0.0),
                net_in_bytes: sum_of("NetworkIn")?,
                net_out_bytes: sum_of("NetworkOut")?,
                cpu_by_minute: cpu
                    .iter()
                    .filter_map(|b| b.agg.get(Statistic::Average))
                    .collect(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_sample_makes_ec2_ebs_and_node_points_for_their_owners() {
        let sample = proto::MetricSample {
            at_unix_ms: 1_800_000_130_000,
            secs: 10.0,
            host: Some(proto::HostSample {
                cpu_percent: 40.0,
                memory_used_bytes: 1,
                memory_total_bytes: 4,
                guests: 2,
                ..Default::default()
            }),
            guests: vec![
                proto::GuestSample {
                    instance_id: "i-basic".into(),
                    cpu_percent: 99.5,
                    net_out_bytes: 1500,
                    volumes: vec![proto::VolumeIoSample {
                        volume_id: "vol-1".into(),
                        io: Some(proto::IoSample {
                            write_bytes: 4096,
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                },
                proto::GuestSample {
                    instance_id: "i-detailed".into(),
                    cpu_percent: 1.0,
                    ..Default::default()
                },
                proto::GuestSample {
                    instance_id: "i-unknown".into(),
                    ..Default::default()
                },
            ],
        };
        let lookup = |id: &str| -> Option<InstanceInfo> {
            Some(InstanceInfo {
                account_id: if id == "i-basic" { "111" } else { "222" }.into(),
                image_id: "ami-1".into(),
                instance_type: "m1.small".into(),
                detailed: id == "i-detailed",
            })
            .filter(|_| id != "i-unknown")
        };
        let points = points_of(&sample, "cl", "node-a", "000", &lookup);
        let find = |account: &str, ns: &str, name: &str, dims: Vec<metric_store::Dimension>| {
            points
                .iter()
                .find(|(a, p)| a == account && p.metric == MetricId::new(ns, name, dims.clone()))
                .map(|(_, p)| (p.at_secs, p.agg.sum))
        };
        let t = 1_800_000_130;
        // Basic monitoring: the 5-minute bucket; detailed: the sample's time.
        assert_eq!(
            find(
                "111",
                "AWS/EC2",
                "CPUUtilization",
                vec![dim("InstanceId", "i-basic")]
            ),
            Some((t - t % 300, 99.5))
        );
        assert_eq!(
            find(
                "222",
                "AWS/EC2",
                "CPUUtilization",
                vec![dim("InstanceId", "i-detailed")]
            ),
            Some((t, 1.0))
        );
        assert_eq!(
            find(
                "111",
                "AWS/EC2",
                "NetworkOut",
                vec![dim("ImageId", "ami-1")]
            ),
            Some((t - t % 300, 1500.0))
        );
        assert!(find("111", "AWS/EC2", "CPUUtilization", vec![]).is_some());
        assert_eq!(
            find(
                "111",
                "AWS/EBS",
                "VolumeWriteBytes",
                vec![dim("VolumeId", "vol-1")]
            ),
            Some((t - t % 300, 4096.0))
        );
        assert_eq!(
            find(
                "000",
                NODE_NAMESPACE,
                "MemoryUtilization",
                vec![dim("Cluster", "cl"), dim("NodeName", "node-a")]
            ),
            Some((t, 25.0))
        );
        // Nothing of an instance the cloud does not know, nothing crosses accounts.
        assert!(!points
            .iter()
            .any(|(_, p)| p.metric.dimension("InstanceId") == Some("i-unknown")));
        assert!(!points
            .iter()
            .any(|(a, p)| a == "222" && p.metric.dimension("InstanceId") == Some("i-basic")));
    }
}
