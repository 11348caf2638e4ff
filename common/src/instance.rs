//! Instance states and ids as every tier names them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An instance's state, as EC2 names and numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceState {
    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Running,
        Self::ShuttingDown,
        Self::Terminated,
        Self::Stopping,
        Self::Stopped,
    ];

    /// EC2's name: `pending`, `running`, `shutting-down`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }

    /// EC2's code (the low byte of `instanceState.code`).
    pub fn code(self) -> u32 {
        match self {
            Self::Pending => 0,
            Self::Running => 16,
            Self::ShuttingDown => 32,
            Self::Terminated => 48,
            Self::Stopping => 64,
            Self::Stopped => 80,
        }
    }

    /// The state named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// True while the instance is gone or going: it holds no address and
    /// takes no traffic.
    pub fn is_ending(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Terminated)
    }
}

/// The state as the tiers' reports carry it.
impl From<InstanceState> for proto::InstanceState {
    fn from(s: InstanceState) -> Self {
        use proto::InstanceState as W;
        match s {
            InstanceState::Pending => W::Pending,
            InstanceState::Running => W::Running,
            InstanceState::ShuttingDown => W::ShuttingDown,
            InstanceState::Terminated => W::Terminated,
            InstanceState::Stopping => W::Stopping,
            InstanceState::Stopped => W::Stopped,
        }
    }
}

/// A reported state; one left unspecified is taken for pending.
impl From<proto::InstanceState> for InstanceState {
    fn from(s: proto::InstanceState) -> Self {
        use proto::InstanceState as W;
        match s {
            W::Running => Self::Running,
            W::ShuttingDown => Self::ShuttingDown,
            W::Terminated => Self::Terminated,
            W::Stopping => Self::Stopping,
            W::Stopped => Self::Stopped,
            W::Pending | W::Unspecified => Self::Pending,
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An instance id (`i-` and 8 or 17 hex digits), checked once, here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

/// An id that is not an instance id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed instance id {0:?}")]
pub struct MalformedId(pub String);

impl InstanceId {
    /// `id`, if it has an instance id's shape.
    pub fn parse(id: &str) -> Result<Self, MalformedId> {
        if crate::ids::well_formed(id, &["i"]) {
            Ok(Self(id.to_string()))
        } else {
            Err(MalformedId(id.to_string()))
        }
    }

    /// A new random id.
    pub fn generate() -> Self {
        Self(crate::ids::resource_id("i"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstanceId {
    type Error = MalformedId;
    fn try_from(s: String) -> Result<Self, MalformedId> {
        Self::parse(&s)
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for InstanceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_ec2s_names_and_codes_and_store_as_names() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::from_name(s.name()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).expect("json"),
                format!("\"{}\"", s.name())
            );
        }
        assert_eq!(InstanceState::ShuttingDown.code(), 32);
        assert_eq!(InstanceState::from_name("gone"), None);
        assert!(InstanceState::Terminated.is_ending());
        assert!(!InstanceState::Stopped.is_ending());
    }

    #[test]
    fn instance_ids_are_checked_once() {
        assert!(InstanceId::parse("i-0123abcd").is_ok());
        assert!(InstanceId::parse("i-0123456789abcdef0").is_ok());
        for bad in ["i-123", "ami-0123abcd", "i-0123abcz", "", "i-"] {
            assert_eq!(InstanceId::parse(bad), Err(MalformedId(bad.into())));
        }
        let id = InstanceId::generate();
        assert!(InstanceId::parse(id.as_str()).is_ok());
        assert!(serde_json::from_str::<InstanceId>("\"i-xyz\"").is_err());
    }
}
