//! The SC's gRPC service, called by the CLC: a thin layer over
//! [`Volumes`].

use proto::{
    storage_service_server::StorageService, CreateSnapshotRequest, CreateVolumeRequest,
    ExportVolumeRequest, SnapshotRef, SnapshotStatus, VolumeExport, VolumeRef, VolumeStatus,
};
use tonic::{Request, Response, Status};

use crate::{
    exports::{ExportError, Exports},
    snapshots::{SnapshotError, SnapshotRecord, Snapshots},
    volumes::{VolumeError, VolumeRecord, Volumes},
};

/// The storage controller's service.
#[derive(Clone, Debug)]
pub struct Storage {
    pub volumes: Volumes,
    pub exports: Exports,
    pub snapshots: Snapshots,
}

impl From<VolumeError> for Status {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::InvalidId(_) | VolumeError::InvalidSize(_) => {
                Status::invalid_argument(e.to_string())
            }
            VolumeError::NotFound(_) => Status::not_found(e.to_string()),
            VolumeError::Conflict { .. } => Status::already_exists(e.to_string()),
            VolumeError::Capacity { .. } => Status::resource_exhausted(e.to_string()),
            VolumeError::Backend(_) | VolumeError::Store(_) | VolumeError::Fleece(_) => {
                tracing::error!(error = %e, "volume operation failed");
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<ExportError> for Status {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::Volume(v) => v.into(),
            ExportError::NotAvailable(..)
            | ExportError::Elsewhere(..)
            | ExportError::NotExported(..) => Status::failed_precondition(e.to_string()),
            ExportError::Server(..) | ExportError::Store(_) => {
                tracing::error!(error = %e, "export failed");
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Volume(v) => v.into(),
            SnapshotError::InvalidId(_) => Status::invalid_argument(e.to_string()),
            SnapshotError::Missing(_) => Status::not_found(e.to_string()),
            SnapshotError::Walrus(_) => Status::unavailable(e.to_string()),
            SnapshotError::Bad(..) | SnapshotError::Store(_) => Status::internal(e.to_string()),
        }
    }
}

fn snapshot_status(r: &SnapshotRecord) -> SnapshotStatus {
    SnapshotStatus {
        snapshot_id: r.snapshot_id.clone(),
        state: r.state.name().into(),
        progress: format!("{}%", r.progress),
        reason: r.reason.clone(),
        volume_size_gib: r.volume_size_gib,
        stored_bytes: r.stored_bytes,
    }
}

fn status(r: &VolumeRecord) -> VolumeStatus {
    VolumeStatus {
        volume_id: r.volume_id.clone(),
        state: r.state.name().into(),
        size_gib: r.size_gib,
    }
}

/// Runs blocking volume work (file creation, fsync) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl StorageService for Storage {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<VolumeStatus>, Status> {
        let req = request.into_inner();
        if !req.snapshot_id.is_empty() {
            let r = self
                .snapshots
                .create_volume(&req.volume_id, req.size_gib, &req.snapshot_id, &req.walrus)
                .map_err(Status::from)?;
            tracing::info!(volume = %r.volume_id, snapshot = %req.snapshot_id, state = r.state.name(), "volume from a snapshot");
            return Ok(Response::new(status(&r)));
        }
        let volumes = self.volumes.clone();
        let r = blocking(move || volumes.create(&req.volume_id, req.size_gib)).await?;
        tracing::info!(volume = %r.volume_id, size_gib = r.size_gib, "volume created");
        Ok(Response::new(status(&r)))
    }

    async fn delete_volume(
        &self,
        request: Request<VolumeRef>,
    ) -> Result<Response<VolumeStatus>, Status> {
        let id = request.into_inner().volume_id;
        if self.exports.exported(&id).map_err(Status::from)? {
            return Err(Status::failed_precondition(format!(
                "volume {id} is exported to a node"
            )));
        }
        let volumes = self.volumes.clone();
        let id2 = id.clone();
        blocking(move || volumes.delete(&id2)).await?;
        tracing::info!(volume = %id, "volume deleted");
        Ok(Response::new(VolumeStatus {
            volume_id: id,
            state: "deleted".into(),
            size_gib: 0,
        }))
    }

    async fn export_volume(
        &self,
        request: Request<ExportVolumeRequest>,
    ) -> Result<Response<VolumeExport>, Status> {
        let req = request.into_inner();
        let connection = if req.migrating {
            self.exports.export_also(&req.volume_id, &req.node_name)
        } else {
            self.exports.export(&req.volume_id, &req.node_name)
        }
        .map_err(Status::from)?;
        self.exports
            .served(&req.volume_id)
            .await
            .map_err(Status::from)?;
        tracing::info!(volume = %req.volume_id, node = %req.node_name, migrating = req.migrating, "volume exported");
        Ok(Response::new(VolumeExport {
            volume_id: req.volume_id,
            connection,
        }))
    }

    async fn unexport_volume(
        &self,
        request: Request<ExportVolumeRequest>,
    ) -> Result<Response<VolumeStatus>, Status> {
        let req = request.into_inner();
        self.exports
            .unexport(&req.volume_id, &req.node_name)
            .map_err(Status::from)?;
        tracing::info!(volume = %req.volume_id, node = %req.node_name, "volume export ended");
        let r = self
            .volumes
            .get(&req.volume_id)
            .map_err(Status::from)?
            .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
        Ok(Response::new(status(&r)))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<SnapshotStatus>, Status> {
        let req = request.into_inner();
        let r = self
            .snapshots
            .create(&req.snapshot_id, &req.volume_id, &req.walrus)
            .map_err(Status::from)?;
        Ok(Response::new(snapshot_status(&r)))
    }

    async fn delete_snapshot(
        &self,
        request: Request<SnapshotRef>,
    ) -> Result<Response<SnapshotStatus>, Status> {
        let req = request.into_inner();
        self.snapshots
            .delete(&req.snapshot_id, &req.walrus)
            .await
            .map_err(Status::from)?;
        tracing::info!(snapshot = %req.snapshot_id, "snapshot deleted");
        Ok(Response::new(SnapshotStatus {
            snapshot_id: req.snapshot_id,
            state: "deleted".into(),
            ..Default::default()
        }))
    }
}
