//! How the core calls the storage controllers: the [`StorageApi`] trait,
//! and its gRPC implementation over the SCs the registry knows (one per
//! availability zone).

use std::sync::Arc;

use common::{pki::Role, rpc::Trust, time};
use proto::{
    storage_service_client::StorageServiceClient, CreateSnapshotRequest, CreateVolumeRequest,
    ExportVolumeRequest, ServiceState, SnapshotRef, VolumeRef,
};
use tonic::Code;

use crate::registry::{Registry, STORAGE};

/// Why a call to a storage controller failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// No ENABLED storage controller serves the zone.
    #[error("no storage controller serves zone {0} now")]
    NoController(String),
    /// The SC refused the request (it will refuse it again).
    #[error("{0}")]
    Refused(String),
    /// The SC could not do it now; trying again may succeed.
    #[error("{0}")]
    Failed(String),
}

/// How far a snapshot is, as its storage controller says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// `pending`, `completed` or `error`.
    pub state: String,
    /// `0%` to `100%`.
    pub progress: String,
    pub reason: String,
    pub volume_size_gib: u64,
    pub stored_bytes: u64,
}

/// The storage controllers, as the core calls them.
#[tonic::async_trait]
pub trait StorageApi: Send + Sync + std::fmt::Debug {
    /// True when an ENABLED storage controller serves `zone`.
    fn serves(&self, zone: &str) -> bool;
    /// Makes volume `id` of `size_gib` GiB in `zone`, empty or from a
    /// snapshot (its id and Walrus's address); idempotent, so asked again it
    /// answers how far it is: `creating`, `available` or `error`.
    async fn create_volume(
        &self,
        zone: &str,
        id: &str,
        size_gib: u64,
        from: Option<(&str, &str)>,
    ) -> Result<String, StorageError>;
    /// Starts (or, asked again, reports on) snapshot `id` of `volume_id`
    /// into the Walrus at `walrus`.
    async fn create_snapshot(
        &self,
        zone: &str,
        id: &str,
        volume_id: &str,
        walrus: &str,
    ) -> Result<SnapshotProgress, StorageError>;
    /// Deletes snapshot `id` from Walrus; idempotent.
    async fn delete_snapshot(&self, zone: &str, id: &str, walrus: &str)
        -> Result<(), StorageError>;
    /// Deletes volume `id` in `zone` and its data; idempotent.
    async fn delete_volume(&self, zone: &str, id: &str) -> Result<(), StorageError>;
    /// Exports volume `id` to node `node`; returns how the node reaches it.
    async fn export(&self, zone: &str, id: &str, node: &str) -> Result<String, StorageError>;
    /// Exports volume `id`, exported to its instance's node, to `node` too:
    /// the target of the instance's live migration. Unexporting one of the
    /// two afterwards leaves it to the other.
    async fn export_also(&self, zone: &str, id: &str, node: &str) -> Result<String, StorageError>;
    /// Ends the export of volume `id` to `node`; idempotent.
    async fn unexport(&self, zone: &str, id: &str, node: &str) -> Result<(), StorageError>;
}

/// The storage controllers the registry knows, over gRPC with mutual TLS.
#[derive(Debug, Clone)]
pub struct GrpcStorage {
    registry: Arc<Registry>,
    trust: Trust,
}

impl GrpcStorage {
    pub fn new(registry: Arc<Registry>, trust: Trust) -> Self {
        Self { registry, trust }
    }

    fn endpoint(&self, zone: &str) -> Option<String> {
        self.registry
            .services(time::unix_ms())
            .into_iter()
            .find(|s| {
                s.service_type == STORAGE
                    && s.partition == zone
                    && s.state == ServiceState::Enabled as i32
            })
            .map(|s| s.endpoint)
    }

    fn client(
        &self,
        zone: &str,
    ) -> Result<StorageServiceClient<common::rpc::Client>, StorageError> {
        let endpoint = self
            .endpoint(zone)
            .ok_or_else(|| StorageError::NoController(zone.to_string()))?;
        let channel = self
            .trust
            .channel(&endpoint, Role::Sc)
            .map_err(|e| StorageError::Failed(format!("storage controller of {zone}: {e}")))?;
        Ok(StorageServiceClient::new(channel))
    }
}

fn from_status(zone: &str, s: tonic::Status) -> StorageError {
    let message = format!("storage controller of {zone}: {}", s.message());
    match s.code() {
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::Unimplemented
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::NotFound => StorageError::Refused(message),
        _ => StorageError::Failed(message),
    }
}

#[tonic::async_trait]
impl StorageApi for GrpcStorage {
    fn serves(&self, zone: &str) -> bool {
        self.endpoint(zone).is_some()
    }

    async fn create_volume(
        &self,
        zone: &str,
        id: &str,
        size_gib: u64,
        from: Option<(&str, &str)>,
    ) -> Result<String, StorageError> {
        let (snapshot_id, walrus) = from.unwrap_or_default();
        let reply = self
            .client(zone)?
            .create_volume(CreateVolumeRequest {
                volume_id: id.to_string(),
                size_gib,
                snapshot_id: snapshot_id.to_string(),
                walrus: walrus.to_string(),
            })
            .await
            .map_err(|s| from_status(zone, s))?;
        Ok(reply.into_inner().state)
    }

    async fn create_snapshot(
        &self,
        zone: &str,
        id: &str,
        volume_id: &str,
        walrus: &str,
    ) -> Result<SnapshotProgress, StorageError> {
        let s = self
            .client(zone)?
            .create_snapshot(CreateSnapshotRequest {
                snapshot_id: id.to_string(),
                volume_id: volume_id.to_string(),
                walrus: walrus.to_string(),
            })
            .await
            .map_err(|s| from_status(zone, s))?
            .into_inner();
        Ok(SnapshotProgress {
            state: s.state,
            progress: s.progress,
            reason: s.reason,
            volume_size_gib: s.volume_size_gib,
            stored_bytes: s.stored_bytes,
        })
    }

    async fn delete_snapshot(
        &self,
        zone: &str,
        id: &str,
        walrus: &str,
    ) -> Result<(), StorageError> {
        self.client(zone)?
            .delete_snapshot(SnapshotRef {
                snapshot_id: id.to_string(),
                walrus: walrus.to_string(),
            })
            .await
            .map_err(|s| from_status(zone, s))?;
        Ok(())
    }

    async fn delete_volume(&self, zone: &str, id: &str) -> Result<(), StorageError> {
        self.client(zone)?
            .delete_volume(VolumeRef {
                volume_id: id.to_string(),
            })
            .await
            .map_err(|s| from_status(zone, s))?;
        Ok(())
    }

    async fn export(&self, zone: &str, id: &str, node: &str) -> Result<String, StorageError> {
        let reply = self
            .client(zone)?
            .export_volume(ExportVolumeRequest {
                volume_id: id.to_string(),
                node_name: node.to_string(),
                migrating: false,
            })
            .await
            .map_err(|s| from_status(zone, s))?;
        Ok(reply.into_inner().connection)
    }

    async fn export_also(&self, zone: &str, id: &str, node: &str) -> Result<String, StorageError> {
        let reply = self
            .client(zone)?
            .export_volume(ExportVolumeRequest {
                volume_id: id.to_string(),
                node_name: node.to_string(),
                migrating: true,
            })
            .await
            .map_err(|s| from_status(zone, s))?;
        Ok(reply.into_inner().connection)
    }

    async fn unexport(&self, zone: &str, id: &str, node: &str) -> Result<(), StorageError> {
        match self
            .client(zone)?
            .unexport_volume(ExportVolumeRequest {
                volume_id: id.to_string(),
                node_name: node.to_string(),
                migrating: false,
            })
            .await
        {
            Ok(_) => Ok(()),
            // A volume gone is no longer exported.
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(from_status(zone, s)),
        }
    }
}
