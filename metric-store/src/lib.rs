//! Gumtree's metrics, as CloudWatch keeps them: series named by account,
//! namespace, metric name and dimensions; points as statistic sets at the
//! resolutions CloudWatch keeps, for as long as it keeps them; metric math
//! over them; alarms and their history. No I/O but its own sled database:
//! the cloud controller feeds it (from the nodes' samples and PutMetricData)
//! and its CloudWatch API reads it.
#![forbid(unsafe_code)]

pub mod agg;
pub mod alarm;
pub mod expr;
pub mod store;

pub use agg::{Agg, Statistic};
pub use store::{Bucket, ListFilter, Listed, MetricStore, Point, SeriesMeta, Span, StoreError};

/// A dimension of a metric: a name and its value.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Dimension {
    pub name: String,
    pub value: String,
}

impl Dimension {
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.to_string(),
            value: value.to_string(),
        }
    }
}

/// Which metric: its namespace, name and dimensions (kept sorted by name,
/// so the same dimensions in any order name the same series).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MetricId {
    pub namespace: String,
    pub name: String,
    pub dimensions: Vec<Dimension>,
}

impl MetricId {
    pub fn new(namespace: &str, name: &str, mut dimensions: Vec<Dimension>) -> Self {
        dimensions.sort();
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            dimensions,
        }
    }

    /// The value of dimension `name`, if it has one.
    pub fn dimension(&self, name: &str) -> Option<&str> {
        self.dimensions
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.value.as_str())
    }
}
