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
    /// A key pair by name.
    KeyPair,
    /// A key pair by id.
    KeyPairId,
    /// An elastic IP by its address.
    Address,
    Allocation,
    Association,
    Volume,
    Snapshot,
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
            Self::KeyPair => &[],
            Self::KeyPairId => &["key"],
            Self::Address => &[],
            Self::Allocation => &["eipalloc"],
            Self::Association => &["eipassoc"],
            Self::Volume => &["vol"],
            Self::Snapshot => &["snap"],
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
    /// A group of that name exists already.
    #[error("{0}")]
    GroupExists(String),
    /// A resource that cannot be deleted (a `default` group).
    #[error("{0}")]
    CannotDelete(String),
    /// Something still depends on the resource.
    #[error("{0}")]
    DependencyViolation(String),
    /// The group (its id) has the rule already.
    #[error("the rule exists in {0}")]
    RuleExists(String),
    /// The group (its id) has no such rule.
    #[error("no such rule in {0}")]
    RuleMissing(String),
    /// The account has a key pair of that name.
    #[error("key pair {0} exists")]
    KeyPairExists(String),
    /// Key material that is no public key.
    #[error("{0}")]
    KeyFormat(String),
    /// The cloud's public pool has no address left.
    #[error("the public address pool is exhausted")]
    AddressLimit,
    /// The instance (its id) is not in a state the operation can use.
    #[error("instance {0} is not in a valid state")]
    NotNow(String),
    /// The caller may not do this to a resource it can see.
    #[error("{0}")]
    Unauthorized(String),
    /// The instance's protection refuses it.
    #[error("{0}")]
    OperationNotPermitted(String),
    /// The instance is not in a state the operation can start from.
    #[error("instance {id} cannot be {wanted} from its state")]
    IncorrectState { id: String, wanted: &'static str },
    /// A tier the operation needs cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// What an image location names is no image.
    #[error("{0}")]
    InvalidManifest(String),
    /// Parameters that do not go together.
    #[error("{0}")]
    Combination(String),
    /// The account has an image of that name.
    #[error("{0}")]
    DuplicateImageName(String),
    /// A launch permission's account id that is none.
    #[error("invalid account id {0}")]
    InvalidAttributeItem(String),
    /// The instance (its id) must be stopped for this.
    #[error("instance {0} is not stopped")]
    NotStopped(String),
    /// An id of no kind of resource the operation takes.
    #[error("the ID {0} is not valid")]
    InvalidId(String),
    /// The resource (its id) has as many tags as it may.
    #[error("the tag limit of {0} is reached")]
    TagLimit(String),
    /// A parameter the request needs.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// The volume is attached (the message names where).
    #[error("{0}")]
    VolumeInUse(String),
    /// The volume is not in a state the operation can use.
    #[error("{0}")]
    IncorrectVolumeState(String),
    /// The volume and the instance are in different zones.
    #[error("{0}")]
    ZoneMismatch(String),
    /// The volume is not attached to that instance.
    #[error("{0}")]
    AttachmentNotFound(String),
    /// A snapshot an image uses (the message names it).
    #[error("{0}")]
    SnapshotInUse(String),
    /// A block device mapping that cannot be (the message says why).
    #[error("{0}")]
    BlockDeviceMapping(String),
    /// The account's volume quota (count or GiB) is reached.
    #[error("{0}")]
    VolumeLimit(String),
    /// The zone's storage controller has no room for the volume(s).
    #[error("{0}")]
    VolumeCapacity(String),
    /// The image cannot be launched yet (or any more).
    #[error("{0}")]
    ImageUnavailable(String),
    /// Not something this kind of resource does (the message says why).
    #[error("{0}")]
    Unsupported(String),
    /// The state of record failed.
    #[error("{0}")]
    Store(String),
}

/// `value` of `param` as a name: 1 to 255 printable ASCII characters
/// (`why` says so when it is not).
pub fn printable_name(param: &'static str, value: &str, why: &str) -> Result<(), CoreError> {
    if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(CoreError::InvalidValue {
            param,
            value: value.to_string(),
            why: why.to_string(),
        });
    }
    Ok(())
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failed");
        Self::Store(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_take_eucalyptus_prefixes_too() {
        let image = |id| IdKind::Image.well_formed(id);
        assert!(image("ami-0123456789abcdef0"));
        assert!(image("eki-12345678"));
        assert!(!image("ami-xyz"));
        assert!(!image("i-0123456789abcdef0"));
        assert!(!image("ami-"));
    }
}
