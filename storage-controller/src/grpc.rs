//! The SC's gRPC service, called by the CLC.

use proto::{
    storage_service_server::StorageService, CreateSnapshotRequest, CreateVolumeRequest,
    ExportVolumeRequest, SnapshotRef, SnapshotStatus, VolumeExport, VolumeRef, VolumeStatus,
};
use tonic::{Request, Response, Status};

/// The storage controller's service.
#[derive(Clone, Debug, Default)]
pub struct Storage;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available in this release"))
}

#[tonic::async_trait]
impl StorageService for Storage {
    async fn create_volume(
        &self,
        _request: Request<CreateVolumeRequest>,
    ) -> Result<Response<VolumeStatus>, Status> {
        Err(not_yet("CreateVolume"))
    }

    async fn delete_volume(
        &self,
        _request: Request<VolumeRef>,
    ) -> Result<Response<VolumeStatus>, Status> {
        Err(not_yet("DeleteVolume"))
    }

    async fn export_volume(
        &self,
        _request: Request<ExportVolumeRequest>,
    ) -> Result<Response<VolumeExport>, Status> {
        Err(not_yet("ExportVolume"))
    }

    async fn unexport_volume(
        &self,
        _request: Request<ExportVolumeRequest>,
    ) -> Result<Response<VolumeStatus>, Status> {
        Err(not_yet("UnexportVolume"))
    }

    async fn create_snapshot(
        &self,
        _request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<SnapshotStatus>, Status> {
        Err(not_yet("CreateSnapshot"))
    }

    async fn delete_snapshot(
        &self,
        _request: Request<SnapshotRef>,
    ) -> Result<Response<SnapshotStatus>, Status> {
        Err(not_yet("DeleteSnapshot"))
    }
}
