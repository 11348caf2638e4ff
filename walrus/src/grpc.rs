//! Walrus's internal gRPC service.

use proto::{walrus_internal_server::WalrusInternal, ObjectChunk, ObjectInfo, ObjectRef};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Walrus's internal service.
#[derive(Clone, Debug, Default)]
pub struct Internal;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available in this release"))
}

#[tonic::async_trait]
impl WalrusInternal for Internal {
    type GetObjectStream = ReceiverStream<Result<ObjectChunk, Status>>;

    async fn get_object(
        &self,
        _request: Request<ObjectRef>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        Err(not_yet("GetObject"))
    }

    async fn head_object(
        &self,
        _request: Request<ObjectRef>,
    ) -> Result<Response<ObjectInfo>, Status> {
        Err(not_yet("HeadObject"))
    }

    async fn put_object(
        &self,
        _request: Request<Streaming<ObjectChunk>>,
    ) -> Result<Response<ObjectInfo>, Status> {
        Err(not_yet("PutObject"))
    }
}
