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

use crate::{instances::ClusterInstances, nodes::Nodes};

/// The cluster controller's service.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub nodes: Arc<Nodes>,
    pub instances: Arc<ClusterInstances>,
}

impl Cluster {
    /// Marks silent nodes NOTREADY and releases what nodes no longer have,
    /// forever; run it in its own task.
    pub async fn watch_liveness(self, timeout: Duration) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut reconciled = 0;
        loop {
            tick.tick().await;
            let now = time::unix_ms();
            self.nodes.expire(now, timeout.as_millis() as i64);
            // A scan of the whole ledger: every few seconds is plenty
            // against a 30 s grace.
            if now - reconciled >= 5_000 {
                self.instances.reconcile(now);
                reconciled = now;
            }
        }
    }
}

#[tonic::async_trait]
impl ClusterService for Cluster {
    type ReportNodeStream = ReceiverStream<Result<ReportAck, Status>>;

    async fn report_node(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<Self::ReportNodeStream>, Status> {
        let (on_report, on_end) = (self.nodes.clone(), self.nodes.clone());
        let caller = common::auth::caller(&request)?.name.clone();
        Ok(Response::new(accept_reports(
            request.into_inner(),
            move |id, report| {
                if report.node_name != caller {
                    tracing::warn!(%caller, named = %report.node_name, "refused a report: it names another node");
                    return Err(Status::permission_denied(format!(
                        "nc/{caller} may not report as node {:?}",
                        report.node_name
                    )));
                }
                on_report.node_report(id, report, time::unix_ms())
            },
            move |id, why| on_end.stream_ended(id, why),
        )))
    }

    async fn place_instances(
        &self,
        request: Request<RunInstancesRequest>,
    ) -> Result<Response<RunInstancesReply>, Status> {
        let r = request.into_inner();
        if r.instances.is_empty() {
            return Err(Status::invalid_argument("no instances to place"));
        }
        let placed = self.instances.place(r.instances)?;
        let instances = placed
            .into_iter()
            .map(|(spec, node, _)| InstanceStatus {
                instance_id: spec.instance_id,
                state: proto::InstanceState::Pending as i32,
                node,
                mac: spec.mac,
                private_ip: spec.private_ip,
                changed_unix_ms: time::unix_ms(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(RunInstancesReply { instances }))
    }

    async fn run_instances(
        &self,
        request: Request<RunInstancesRequest>,
    ) -> Result<Response<RunInstancesReply>, Status> {
        let r = request.into_inner();
        if r.instances.is_empty() {
            return Err(Status::invalid_argument("no instances to run"));
        }
        let instances = self.instances.run(r.instances, &r.walrus).await?;
        Ok(Response::new(RunInstancesReply { instances }))
    }

    async fn terminate_instances(
        &self,
        request: Request<InstanceRefs>,
    ) -> Result<Response<InstanceStatuses>, Status> {
        let mut out = Vec::new();
        for id in request.into_inner().instance_ids {
            out.push(self.instances.terminate(&id).await?);
        }
        Ok(Response::new(InstanceStatuses { instances: out }))
    }

    async fn stop_guest(
        &self,
        request: Request<proto::NodeGuest>,
    ) -> Result<Response<proto::NodeGuest>, Status> {
        let guest = request.into_inner();
        self.instances
            .stop_guest(&guest.node, &guest.instance_id)
            .await?;
        Ok(Response::new(guest))
    }

    async fn stop_instances(
        &self,
        request: Request<InstanceRefs>,
    ) -> Result<Response<InstanceStatuses>, Status> {
        self.power(request.into_inner(), Power::Stop).await
    }

    async fn start_instances(
        &self,
        request: Request<InstanceRefs>,
    ) -> Result<Response<InstanceStatuses>, Status> {
        self.power(request.into_inner(), Power::Start).await
    }

    async fn reboot_instances(
        &self,
        request: Request<InstanceRefs>,
    ) -> Result<Response<InstanceStatuses>, Status> {
        self.power(request.into_inner(), Power::Reboot).await
    }

    async fn attach_volume(
        &self,
        request: Request<proto::VolumeAttach>,
    ) -> Result<Response<proto::VolumeAttached>, Status> {
        let r = request.into_inner();
        let id = r.instance_id.clone();
        Ok(Response::new(
            self.instances
                .on_node(&id, |mut c, _| async move { c.attach_volume(r).await })
                .await?,
        ))
    }

    async fn detach_volume(
        &self,
        request: Request<proto::VolumeAttach>,
    ) -> Result<Response<proto::VolumeAttached>, Status> {
        let r = request.into_inner();
        let id = r.instance_id.clone();
        Ok(Response::new(
            self.instances
                .on_node(&id, |mut c, _| async move { c.detach_volume(r).await })
                .await?,
        ))
    }

    async fn migrate_instance(
        &self,
        request: Request<proto::MigrateInstanceOrder>,
    ) -> Result<Response<proto::MigrationDone>, Status> {
        let r = request.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("no instance to migrate"))?;
        Ok(Response::new(
            self.instances
                .migrate(spec, &r.walrus, &r.destinations)
                .await?,
        ))
    }

    type OpenConsoleStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<proto::ConsoleBytes, Status>> + Send>,
    >;

    /// Joins the CLC's console stream to the instance's node's.
    async fn open_console(
        &self,
        request: Request<Streaming<proto::ConsoleInput>>,
    ) -> Result<Response<Self::OpenConsoleStream>, Status> {
        use tokio_stream::StreamExt;
        let (first, typed) = proto::console_opening(request).await?;
        let (_, mut client) = self.instances.node_of(&first.instance_id)?;
        let upstream = tokio_stream::once(first).chain(typed.map_while(|m| m.ok()));
        let down = client.open_console(upstream).await?.into_inner();
        Ok(Response::new(Box::pin(down)))
    }

    async fn get_console_output(
        &self,
        request: Request<InstanceRef>,
    ) -> Result<Response<ConsoleOutput>, Status> {
        let id = request.into_inner().instance_id;
        Ok(Response::new(
            self.instances
                .on_node(&id, |mut c, r| async move { c.get_console_output(r).await })
                .await?,
        ))
    }

    async fn resize_instance(
        &self,
        request: Request<ResizeInstanceRequest>,
    ) -> Result<Response<InstanceStatus>, Status> {
        let r = request.into_inner();
        if !self
            .instances
            .fits_resize(&r.instance_id, r.cores, r.memory_mib)?
        {
            return Err(Status::resource_exhausted(format!(
                "InsufficientInstanceCapacity: the node of {} has no room for {} core(s), {} MiB",
                r.instance_id, r.cores, r.memory_mib
            )));
        }
        let id = r.instance_id.clone();
        let (cores, memory) = (r.cores, r.memory_mib);
        let status = self
            .instances
            .on_node(&id, |mut c, _| async move { c.resize_instance(r).await })
            .await?;
        self.instances.resized(&id, cores, memory)?;
        Ok(Response::new(status))
    }

    async fn set_firewalls(
        &self,
        request: Request<proto::Firewalls>,
    ) -> Result<Response<proto::FirewallsApplied>, Status> {
        let request = request.into_inner();
        let applied = self
            .instances
            .set_firewalls(request.firewalls, request.groups)
            .await?;
        Ok(Response::new(proto::FirewallsApplied { applied }))
    }

    async fn deregister_node(
        &self,
        request: Request<proto::NodeName>,
    ) -> Result<Response<proto::NodeName>, Status> {
        let node = request.into_inner();
        self.instances.deregister_node(&node.name)?;
        Ok(Response::new(node))
    }

    async fn plan_migration(
        &self,
        request: Request<proto::MigrateInstanceOrder>,
    ) -> Result<Response<proto::NodeName>, Status> {
        let r = request.into_inner();
        let id = r
            .spec
            .map(|s| s.instance_id)
            .ok_or_else(|| Status::invalid_argument("no instance to plan for"))?;
        Ok(Response::new(proto::NodeName {
            name: self.instances.plan_migration(&id, &r.destinations)?,
        }))
    }

    async fn set_node_disabled(
        &self,
        request: Request<proto::NodeDisabled>,
    ) -> Result<Response<proto::NodeView>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.instances.set_node_disabled(&r.name, r.disabled)?,
        ))
    }
}

/// What StopInstances, StartInstances and RebootInstances ask of a node.
#[derive(Clone, Copy, Debug)]
enum Power {
    Stop,
    Start,
    Reboot,
}

impl Cluster {
    /// Passes a stop, start or reboot of each instance to its node.
    async fn power(
        &self,
        refs: InstanceRefs,
        action: Power,
    ) -> Result<Response<InstanceStatuses>, Status> {
        let mut out = Vec::new();
        for id in refs.instance_ids {
            let status = self
                .instances
                .on_node(&id, |mut c, r| async move {
                    match action {
                        Power::Stop => c.stop_instance(r).await,
                        Power::Start => c.start_instance(r).await,
                        Power::Reboot => c.reboot_instance(r).await,
                    }
                })
                .await?;
            out.push(status);
        }
        Ok(Response::new(InstanceStatuses { instances: out }))
    }
}
