//! The CC's gRPC service: node report streams, and the instance calls from the CLC.

use std::{sync::Arc, time::Duration};

use common::{report::accept_reports, time};
use proto::{
    cluster_service_server::ClusterService, ConsoleOutput, InstanceRef, InstanceRefs,
    InstanceStatus, InstanceStatuses, NodeReport, ReportAck, ResizeInstanceRequest,
    RunInstancesReply, RunInstancesRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::nodes::Nodes;

/// The cluster controller's service.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub nodes: Arc<Nodes>,
}

impl Cluster {
    /// Marks silent nodes NOTREADY, forever; run it in its own task.
    pub async fn watch_liveness(self, timeout: Duration) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            self.nodes
                .expire(time::unix_ms(), timeout.as_millis() as i64);
        }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available in this release"))
}

#[tonic::async_trait]
impl ClusterService for Cluster {
    type ReportNodeStream = ReceiverStream<Result<ReportAck, Status>>;

    async fn report_node(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<Self::ReportNodeStream>, Status> {
        let (on_report, on_end) = (self.nodes.clone(), self.nodes.clone());
        Ok(Response::new(accept_reports(
            request.into_inner(),
            move |id, report| on_report.node_report(id, report, time::unix_ms()),
            move |id, why| on_end.stream_ended(id, why),
        )))
    }

    async fn run_instances(
        &self,
        _request: Request<RunInstancesRequest>,
    ) -> Result<Response<RunInstancesReply>, Status> {
        Err(not_yet("RunInstances"))
    }

    async fn terminate_instances(
        &self,
        _request: Request<InstanceRefs>,
    ) -> Result<Response<InstanceStatuses>, Status> {
        Err(not_yet("TerminateInstances"))
    }

    async fn stop_instances(
        &self,
        _request: Request<InstanceRefs>,
    ) -> Result<Response<InstanceStatuses>, Status> {
        Err(not_yet("StopInstances"))
    }

    async fn start_instances(
        &self,
        _request: Request<InstanceRefs>,
    ) -> Result<Response<InstanceStatuses>, Status> {
        Err(not_yet("StartInstances"))
    }

    async fn reboot_instances(
        &self,
        _request: Request<InstanceRefs>,
    ) -> Result<Response<InstanceStatuses>, Status> {
        Err(not_yet("RebootInstances"))
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
