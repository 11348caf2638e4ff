//! EC2 errors as EC2 sends them: `<Response><Errors><Error>` with an AWS
//! code, and the HTTP status AWS uses for it.

use http::StatusCode;

use crate::core::{CoreError, IdKind};

/// One EC2 error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub code: String,
    pub status: StatusCode,
    pub message: String,
    /// Rendered in IAM's `<ErrorResponse>` envelope (the Euare API).
    pub iam: bool,
}

impl Ec2Error {
    /// An error with any code, as a client error (400).
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            iam: false,
        }
    }

    /// The same error, for an IAM (Euare) client.
    pub fn for_iam(mut self) -> Self {
        self.iam = true;
        self
    }

    /// With another HTTP status.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// `MissingParameter`.
    pub fn missing(name: &str) -> Self {
        Self::new(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    /// `InvalidParameterValue`.
    pub fn invalid_value(name: &str, value: &str, why: &str) -> Self {
        Self::new(
            "InvalidParameterValue",
            format!("Value ({value}) for parameter {name} is invalid. {why}"),
        )
    }

    /// `AuthFailure` (401).
    pub fn auth_failure() -> Self {
        Self::new(
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        )
        .status(StatusCode::UNAUTHORIZED)
    }

    /// `UnauthorizedOperation` (403).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new("UnauthorizedOperation", message).status(StatusCode::FORBIDDEN)
    }

    /// `DryRunOperation` (412): the request would have succeeded.
    pub fn dry_run() -> Self {
        Self::new(
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
        .status(StatusCode::PRECONDITION_FAILED)
    }

    /// `InternalError` (500).
    pub fn internal() -> Self {
        Self::new(
            "InternalError",
            "An internal error has occurred. Please try again.",
        )
        .status(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// `Unavailable` (503): a tier we depend on does not answer.
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            "Unavailable",
            format!("The service is unavailable: {what}. Please try again shortly."),
        )
        .status(StatusCode::SERVICE_UNAVAILABLE)
    }

    /// The XML body.
    pub fn to_xml(&self, request_id: &str) -> String {
        if self.iam {
            let kind = if self.status.is_server_error() {
                "Receiver"
            } else {
                "Sender"
            };
            return format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
                escape(&self.code),
                escape(&self.message)
            );
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
            escape(&self.code),
            escape(&self.message)
        )
    }
}

pub use common::xml::escape;

impl From<CoreError> for Ec2Error {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Malformed { kind, id } => match kind {
                IdKind::Instance => Self::new(
                    "InvalidInstanceID.Malformed",
                    format!("Invalid id: \"{id}\""),
                ),
                IdKind::Group => Self::new(
                    "InvalidGroupId.Malformed",
                    format!("Invalid id: \"{id}\" (expecting \"sg-...\")"),
                ),
                IdKind::Image
                | IdKind::Kernel
                | IdKind::Ramdisk
                | IdKind::KeyPair
                | IdKind::KeyPairId => {
                    Self::new("InvalidAMIID.Malformed", format!("Invalid id: \"{id}\""))
                }
                IdKind::Address => Self::invalid_value("PublicIp", &id, "Not an address."),
                IdKind::Allocation => Self::new(
                    "InvalidAllocationID.Malformed",
                    format!("Invalid id: \"{id}\""),
                ),
                IdKind::Association => Self::new(
                    "InvalidAssociationID.Malformed",
                    format!("Invalid id: \"{id}\""),
                ),
                IdKind::Volume => Self::new(
                    "InvalidVolumeID.Malformed",
                    format!("Invalid id: \"{id}\" (expecting \"vol-...\")"),
                ),
                IdKind::Snapshot => Self::new(
                    "InvalidSnapshotID.Malformed",
                    format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
                ),
            },
            CoreError::NotFound { kind, ids } => {
                let list = ids.join(", ");
                match kind {
                    IdKind::Instance => Self::new(
                        "InvalidInstanceID.NotFound",
                        format!(
                            "The instance ID{} '{list}' do{} not exist",
                            if ids.len() > 1 { "s" } else { "" },
                            if ids.len() > 1 { "" } else { "es" }
                        ),
                    ),
                    IdKind::Image => Self::new(
                        "InvalidAMIID.NotFound",
                        format!("The image id '[{list}]' does not exist"),
                    ),
                    IdKind::Kernel => Self::new(
                        "InvalidAKIID.NotFound",
                        format!("The kernel ID '{list}' does not exist"),
                    ),
                    IdKind::Ramdisk => Self::new(
                        "InvalidARIID.NotFound",
                        format!("The ramdisk ID '{list}' does not exist"),
                    ),
                    IdKind::Group => Self::new(
                        "InvalidGroup.NotFound",
                        format!("The security group '{list}' does not exist"),
                    ),
                    IdKind::KeyPair => Self::new(
                        "InvalidKeyPair.NotFound",
                        format!("The key pair '{list}' does not exist"),
                    ),
                    IdKind::KeyPairId => Self::new(
                        "InvalidKeyPair.NotFound",
                        format!("The key pair ID '{list}' does not exist"),
                    ),
                    IdKind::Address => Self::new(
                        "InvalidAddress.NotFound",
                        format!("Address '{list}' not found."),
                    ),
                    IdKind::Allocation => Self::new(
                        "InvalidAllocationID.NotFound",
                        format!("The allocation ID '{list}' does not exist"),
                    ),
                    IdKind::Association => Self::new(
                        "InvalidAssociationID.NotFound",
                        format!("The association ID '{list}' does not exist"),
                    ),
                    IdKind::Volume => Self::new(
                        "InvalidVolume.NotFound",
                        format!(
                            "The volume{} '{list}' do{} not exist.",
                            if ids.len() > 1 { "s" } else { "" },
                            if ids.len() > 1 { "" } else { "es" }
                        ),
                    ),
                    IdKind::Snapshot => Self::new(
                        "InvalidSnapshot.NotFound",
                        format!("The snapshot '{list}' does not exist."),
                    ),
                }
            }
            CoreError::Missing(name) => Self::missing(name),
            CoreError::ZoneMismatch(m) => Self::new("InvalidVolume.ZoneMismatch", m),
            CoreError::AttachmentNotFound(m) => Self::new("InvalidAttachment.NotFound", m),
            CoreError::VolumeInUse(m) => Self::new("VolumeInUse", m),
            CoreError::IncorrectVolumeState(m) => Self::new("IncorrectState", m),
            CoreError::InvalidValue { param, value, why } => {
                Self::invalid_value(param, &value, &why)
            }
            CoreError::Counts { min } => Self::invalid_value(
                "MinCount",
                &min.to_string(),
                "MinCount must not be greater than MaxCount.",
            ),
            CoreError::InstanceLimit(m) => Self::new("InstanceLimitExceeded", m),
            CoreError::VcpuLimit(m) => Self::new("VcpuLimitExceeded", m),
            CoreError::NoZone => Self::new(
                "InsufficientInstanceCapacity",
                "No availability zone is available.",
            )
            .status(StatusCode::SERVICE_UNAVAILABLE),
            CoreError::Capacity(m) => Self::new("InsufficientInstanceCapacity", m),
            CoreError::IdempotentMismatch => Self::new(
                "IdempotentParameterMismatch",
                "The client token was already used with different parameters",
            ),
            CoreError::DryRun => Self::dry_run(),
            CoreError::GroupExists(m) => Self::new("InvalidGroup.Duplicate", m),
            CoreError::CannotDelete(m) => Self::new("CannotDelete", m),
            CoreError::DependencyViolation(m) => Self::new("DependencyViolation", m),
            CoreError::RuleExists(group) => Self::new(
                "InvalidPermission.Duplicate",
                format!("the specified rule already exists in security group {group}"),
            ),
            CoreError::RuleMissing(group) => Self::new(
                "InvalidPermission.NotFound",
                format!("The specified rule does not exist in security group {group}"),
            ),
            CoreError::KeyPairExists(name) => Self::new(
                "InvalidKeyPair.Duplicate",
                format!("The keypair '{name}' already exists."),
            ),
            CoreError::KeyFormat(m) => Self::new("InvalidKey.Format", m),
            CoreError::AddressLimit => Self::new(
                "AddressLimitExceeded",
                "The maximum number of addresses has been reached: the cloud's public pool is exhausted.",
            ),
            CoreError::NotNow(id) => Self::new(
                "IncorrectInstanceState",
                format!("The instance '{id}' is not in a valid state for this operation."),
            ),
            CoreError::Unauthorized(m) => Self::unauthorized(m),
            CoreError::OperationNotPermitted(m) => Self::new("OperationNotPermitted", m),
            CoreError::IncorrectState { id, wanted } => Self::new(
                "IncorrectInstanceState",
                format!("The instance '{id}' is not in a state from which it can be {wanted}."),
            ),
            CoreError::Unavailable(m) => Self::unavailable(&m),
            CoreError::InvalidManifest(m) => Self::new("InvalidManifest", m),
            CoreError::Combination(m) => Self::new("InvalidParameterCombination", m),
            CoreError::DuplicateImageName(m) => Self::new("InvalidAMIName.Duplicate", m),
            CoreError::InvalidAttributeItem(u) => Self::new(
                "InvalidAMIAttributeItemValue",
                format!("Invalid attribute item value \"{u}\" for userId item type."),
            ),
            CoreError::NotStopped(id) => Self::new(
                "IncorrectInstanceState",
                format!("The instance '{id}' is not in the 'stopped' state."),
            ),
            CoreError::InvalidId(id) => {
                Self::new("InvalidID", format!("The ID '{id}' is not valid"))
            }
            CoreError::TagLimit(id) => Self::new(
                "TagLimitExceeded",
                format!(
                    "The maximum number of tags ({}) for resource '{id}' has been reached.",
                    crate::tags::MAX_TAGS
                ),
            ),
            CoreError::SnapshotInUse(m) => Self::new("InvalidSnapshot.InUse", m),
            CoreError::BlockDeviceMapping(m) => Self::new("InvalidBlockDeviceMapping", m),
            CoreError::VolumeLimit(m) => Self::new("VolumeLimitExceeded", m),
            CoreError::VolumeCapacity(m) => Self::new("InsufficientVolumeCapacity", m),
            CoreError::ImageUnavailable(m) => Self::new("InvalidAMIID.Unavailable", m),
            CoreError::Unsupported(m) => Self::new("UnsupportedOperation", m),
            CoreError::Store(_) => Self::internal(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_in_the_ec2_envelope() {
        let e = Ec2Error::new(
            "InvalidAMIID.NotFound",
            "The image id '[ami-1]' does not exist",
        );
        assert_eq!(
            e.to_xml("r-1"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>InvalidAMIID.NotFound</Code><Message>The image id &apos;[ami-1]&apos; does not exist</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
        );
        assert_eq!(Ec2Error::auth_failure().status, StatusCode::UNAUTHORIZED);
        assert_eq!(Ec2Error::dry_run().status.as_u16(), 412);
    }
}
