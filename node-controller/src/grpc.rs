//! The NC's gRPC service, called by its cluster controller.

use proto::{
    node_service_server::NodeService, ConsoleOutput, InstanceRef, InstanceStatus,
    ResizeInstanceRequest, RunInstanceRequest,
};
use std::sync::Arc;

use common::auth::ClusterSecret;
use proto::{PrepareImagesReply, PrepareImagesRequest, PreparedImage};
use tonic::{Request, Response, Status};

use crate::images::{ImageCache, ImageError, ImageRef, WalrusSource};

/// The node controller's service.
#[derive(Clone, Debug)]
pub struct Node {
    images: Arc<ImageCache>,
    secret: ClusterSecret,
    name: String,
}

impl Node {
    /// The service of node `name`, caching images in `images`.
    pub fn new(images: Arc<ImageCache>, secret: ClusterSecret, name: &str) -> Self {
        Self {
            images,
            secret,
            name: name.to_string(),
        }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available in this release"))
}

#[tonic::async_trait]
impl NodeService for Node {
    async fn run_instance(
        &self,
        _request: Request<RunInstanceRequest>,
    ) -> Result<Response<InstanceStatus>, Status> {
        Err(not_yet("RunInstance"))
    }

    async fn terminate_instance(
        &self,
        _request: Request<InstanceRef>,
    ) -> Result<Response<InstanceStatus>, Status> {
        Err(not_yet("TerminateInstance"))
    }

    async fn stop_instance(
        &self,
        _request: Request<InstanceRef>,
    ) -> Result<Response<InstanceStatus>, Status> {
        Err(not_yet("StopInstance"))
    }

    async fn start_instance(
        &self,
        _request: Request<InstanceRef>,
    ) -> Result<Response<InstanceStatus>, Status> {
        Err(not_yet("StartInstance"))
    }

    async fn reboot_instance(
        &self,
        _request: Request<InstanceRef>,
    ) -> Result<Response<InstanceStatus>, Status> {
        Err(not_yet("RebootInstance"))
    }

    async fn get_console_output(
        &self,
        _request: Request<InstanceRef>,
    ) -> Result<Response<ConsoleOutput>, Status> {
        Err(not_yet("GetConsoleOutput"))
    }

    async fn prepare_images(
        &self,
        request: Request<PrepareImagesRequest>,
    ) -> Result<Response<PrepareImagesReply>, Status> {
        let request = request.into_inner();
        let images: Vec<ImageRef> = request
            .images
            .into_iter()
            .map(ImageRef::try_from)
            .collect::<Result<_, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let source = WalrusSource::new(&request.walrus, self.secret.clone(), &self.name)
            .map_err(|e| Status::invalid_argument(format!("walrus address: {e}")))?;
        let mut out = Vec::new();
        for image in &images {
            let cached = self.images.get(&source, image).await.map_err(|e| match e {
                ImageError::Corrupt { .. } => Status::data_loss(e.to_string()),
                ImageError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
                ImageError::Fetch { .. } => Status::unavailable(e.to_string()),
                ImageError::BadRef(_) => Status::invalid_argument(e.to_string()),
                ImageError::Io(_) => Status::internal(e.to_string()),
            })?;
            out.push(PreparedImage {
                sha256: image.sha256.clone(),
                cached: cached.hit,
            });
        }
        Ok(Response::new(PrepareImagesReply { images: out }))
    }

    async fn resize_instance(
        &self,
        _request: Request<ResizeInstanceRequest>,
    ) -> Result<Response<InstanceStatus>, Status> {
        Err(not_yet("ResizeInstance"))
    }
}
