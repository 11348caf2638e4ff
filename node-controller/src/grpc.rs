//! The NC's gRPC service, called by its cluster controller.

use proto::{
    node_service_server::NodeService, ConsoleOutput, InstanceRef, InstanceStatus,
    ResizeInstanceRequest, RunInstanceRequest,
};
use tonic::{Request, Response, Status};

/// The node controller's service.
#[derive(Clone, Debug, Default)]
pub struct Node;

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

    async fn resize_instance(
        &self,
        _request: Request<ResizeInstanceRequest>,
    ) -> Result<Response<InstanceStatus>, Status> {
        Err(not_yet("ResizeInstance"))
    }
}
