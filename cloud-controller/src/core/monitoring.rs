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
