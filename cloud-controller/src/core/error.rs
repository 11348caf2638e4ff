//! The core's errors. Each says what went wrong in the cloud's terms; the
//! wire layers render them (EC2 maps them to its codes and statuses).

use common::store::StoreError;

/// The kinds of resource an id can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Instance,
    Image,
    Kernel,
    Ramdisk,
    Group,
    KeyPair,
}

impl IdKind {
    /// The id prefixes this kind accepts.
    pub fn prefixes(self) -> &'static [&'static str] {
        match self {
            Self::Instance => &["i"],
            Self::Image | Self::Kernel | Self::Ramdisk => {
                &["ami", "aki", "ari", "emi", "eki", "eri"]
            }
            Self::Group => &["sg"],
            Self::KeyPair => &["key"],
        }
    }

    /// True when `id` has this kind's shape.
    pub fn well_formed(self, id: &str) -> bool {
        common::ids::well_formed(id, self.prefixes())
    }
}

/// Why a core operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// An id of the wrong shape.
    #[error("malformed {kind:?} id {id}")]
    Malformed { kind: IdKind, id: String },
    /// Ids (or names) the caller has nothing under.
    #[error("no {kind:?} {ids:?}")]
    NotFound { kind: IdKind, ids: Vec<String> },
    /// A parameter's value is not acceptable.
    #[error("{param}={value}: {why}")]
    InvalidValue {
        param: &'static str,
        value: String,
        why: String,
    },
    /// `min` > `max` in a launch.
    #[error("MinCount must not be greater than MaxCount")]
    Counts { min: usize },
    /// The account's instance count or memory quota.
    #[error("{0}")]
    InstanceLimit(String),
    /// The account's core quota.
    #[error("{0}")]
    VcpuLimit(String),
    /// No cluster is ENABLED to launch in.
    #[error("No availability zone is available.")]
    NoZone,
    /// No cluster has room.
    #[error("{0}")]
    Capacity(String),
    /// A client token used before with other parameters.
    #[error("the client token was already used with different parameters")]
    IdempotentMismatch,
    /// The request would have succeeded (a dry run).
    #[error("dry run")]
    DryRun,
    /// The instance's protection refuses it.
    #[error("{0}")]
    OperationNotPermitted(String),
    /// The instance is not in a state the operation can start from.
    #[error("instance {id} cannot be {wanted} from its state")]
    IncorrectState { id: String, wanted: &'static str },
    /// A tier the operation needs cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// The state of record failed.
    #[error("{0}")]
    Store(String),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failed");
        Self::Store(e.to_string())
    }
}
