//! An EBS snapshot's state, shared by the cloud controller (its record of
//! each snapshot) and the storage controller (the one that takes it), and
//! named on the wire between them as EC2 names it.

use serde::{Deserialize, Serialize};

/// A snapshot's state, as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
}

impl SnapshotState {
    /// EC2's name (also the storage controller's, on the wire).
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Error => "error",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "completed" => Some(Self::Completed),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_both_ways_and_match_serde() {
        for s in [
            SnapshotState::Pending,
            SnapshotState::Completed,
            SnapshotState::Error,
        ] {
            assert_eq!(SnapshotState::parse(s.name()), Some(s));
            assert_eq!(
                serde_json::to_value(s).expect("json"),
                serde_json::Value::String(s.name().into())
            );
        }
        assert_eq!(SnapshotState::parse("done"), None);
    }
}
