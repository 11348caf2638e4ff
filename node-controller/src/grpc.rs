//! The NC's gRPC service, called by its cluster controller.

use std::sync::Arc;

use common::rpc::Trust;
use proto::{
    node_service_server::NodeService, ConsoleOutput, InstanceRef, InstanceStatus,
    PrepareImagesReply, PrepareImagesRequest, PreparedImage, ResizeInstanceRequest,
    RunInstanceRequest,
};
use tonic::{Request, Response, Status};

use crate::{
    images::{ImageCache, ImageError, ImageRef, WalrusSource},
    instances::{GuestStatus, InstanceError, Instances, Launch, Policy, PolicyRule},
    network::{FlowRule, NetSpec},
};

/// A guest's status as the CC reads it.
impl From<GuestStatus> for InstanceStatus {
    fn from(s: GuestStatus) -> Self {
        InstanceStatus {
            instance_id: s.instance_id,
            state: proto::InstanceState::from(s.state) as i32,
            node: s.node,
            private_ip: s.private_ip,
            mac: s.mac,
            reason: s.reason,
            changed_unix_ms: s.changed_ms,
            virt: s.virt.map(|v| v.to_string()).unwrap_or_default(),
            guest_output: s.guest_output,
        }
    }
}

/// A private network as the CC sent it.
fn net_spec(n: &proto::NetworkSpec) -> Result<NetSpec, Status> {
    NetSpec::new(&n.bridge, &n.gateway, n.prefix)
        .and_then(|s| s.with_tunnel(n.tunnel_id, &n.tunnel_peers))
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A guest's firewall as the CLC sent it.
fn policy(f: &proto::InstanceFirewall) -> Policy {
    let flows = |rules: &[proto::FirewallRule]| {
        rules
            .iter()
            .map(|r| PolicyRule {
                flow: FlowRule {
                    protocol: r.protocol.clone(),
                    from_port: r.from_port,
                    to_port: r.to_port,
                    cidrs: r.cidrs.clone(),
                },
                groups: r.source_groups.clone(),
            })
            .collect()
    };
    Policy::new(flows(&f.ingress), flows(&f.egress), f.public_ip.clone())
}

/// The node controller's service.
#[derive(Clone, Debug)]
pub struct Node {
    images: Arc<ImageCache>,
    instances: Arc<Instances>,
    trust: Trust,
}

impl Node {
    /// The service of the node `trust` names.
    pub fn new(images: Arc<ImageCache>, instances: Arc<Instances>, trust: Trust) -> Self {
        Self {
            images,
            instances,
            trust,
        }
    }

    fn source(&self, walrus: &str) -> Result<WalrusSource, Status> {
        WalrusSource::new(walrus, &self.trust)
            .map_err(|e| Status::invalid_argument(format!("walrus address: {e}")))
    }
}

fn image_status(e: &ImageError) -> Status {
    match e {
        ImageError::Corrupt { .. } => Status::data_loss(e.to_string()),
        ImageError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        ImageError::Fetch { .. } => Status::unavailable(e.to_string()),
        ImageError::BadRef(_) => Status::invalid_argument(e.to_string()),
        ImageError::Io(_) => Status::internal(e.to_string()),
    }
}

fn status(e: InstanceError) -> Status {
    match &e {
        InstanceError::Invalid(_) => Status::invalid_argument(e.to_string()),
        InstanceError::NotFound(_) => Status::not_found(e.to_string()),
        InstanceError::Volume(_) => Status::failed_precondition(e.to_string()),
        InstanceError::Image(i) => image_status(i),
        _ => Status::internal(e.to_string()),
    }
}

fn image_ref(r: Option<proto::ImageRef>) -> Result<Option<ImageRef>, Status> {
    match r {
        Some(r) if !r.key.is_empty() => ImageRef::try_from(r)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string())),
        _ => Ok(None),
    }
}

#[tonic::async_trait]
impl NodeService for Node {
    async fn run_instance(
        &self,
        request: Request<RunInstanceRequest>,
    ) -> Result<Response<InstanceStatus>, Status> {
        let request = request.into_inner();
        let source = self.source(&request.walrus)?;
        let launch = launch_of(request.spec)?;
        self.instances
            .launch(&source, launch)
            .await
            .map(|s| Response::new(s.into()))
            .map_err(status)
    }

    async fn set_firewalls(
        &self,
        request: Request<proto::Firewalls>,
    ) -> Result<Response<proto::FirewallsApplied>, Status> {
        let request = request.into_inner();
        let firewalls: Vec<(String, Policy)> = request
            .firewalls
            .iter()
            .map(|f| (f.instance_id.clone(), policy(f)))
            .collect();
        let groups: Vec<(String, Vec<String>)> = request
            .groups
            .into_iter()
            .map(|g| (g.group_id, g.addresses))
            .collect();
        let applied = self
            .instances
            .set_firewalls(&firewalls, &groups)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::FirewallsApplied { applied }))
    }

    async fn prepare_migration(
        &self,
        request: Request<proto::PrepareMigrationRequest>,
    ) -> Result<Response<proto::MigrationTarget>, Status> {
        let request = request.into_inner();
        let run = request
            .run
            .ok_or_else(|| Status::invalid_argument("no instance to prepare"))?;
        let source = self.source(&run.walrus)?;
        let launch = launch_of(run.spec)?;
        let id = launch.instance_id.clone();
        let target = self
            .instances
            .prepare_incoming(&source, launch, &request.console)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::MigrationTarget {
            instance_id: id,
            address: target.address,
            disk: target.paths.disk,
            kernel: target.paths.kernel,
            ramdisk: target.paths.ramdisk,
            console_log: target.paths.console_log,
            volumes: target
                .paths
                .volumes
                .into_iter()
                .map(|(volume_id, socket)| proto::VolumeSocket { volume_id, socket })
                .collect(),
        }))
    }

    async fn migrate_instance(
        &self,
        request: Request<proto::MigrateInstanceRequest>,
    ) -> Result<Response<proto::MigratedOut>, Status> {
        let request = request.into_inner();
        let t = request
            .target
            .ok_or_else(|| Status::invalid_argument("no migration target"))?;
        let target = crate::instances::MigrationTarget {
            address: t.address,
            paths: crate::instances::MigrationPaths {
                disk: t.disk,
                kernel: t.kernel,
                ramdisk: t.ramdisk,
                console_log: t.console_log,
                volumes: t
                    .volumes
                    .into_iter()
                    .map(|v| (v.volume_id, v.socket))
                    .collect(),
            },
        };
        self.instances
            .migrate_out(&request.instance_id, &target)
            .await
            .map(|(s, console, volumes)| {
                Response::new(proto::MigratedOut {
                    instance: Some(s.into()),
                    console,
                    volumes: volumes
                        .into_iter()
                        .map(|v| proto::AttachedVolume {
                            volume_id: v.volume_id,
                            connection: v.connection,
                            device: v.target,
                        })
                        .collect(),
                })
            })
            .map_err(status)
    }

    async fn finish_migration(
        &self,
        request: Request<proto::FinishMigrationRequest>,
    ) -> Result<Response<InstanceStatus>, Status> {
        let request = request.into_inner();
        self.instances
            .finish_incoming(
                &request.instance_id,
                request.succeeded,
                &request.console,
                &request
                    .volumes
                    .into_iter()
                    .map(attachment_of)
                    .collect::<Vec<_>>(),
            )
            .await
            .map(|s| Response::new(s.into()))
            .map_err(status)
    }

    async fn abort_migration(
        &self,
        request: Request<InstanceRef>,
    ) -> Result<Response<InstanceRef>, Status> {
        let r = request.into_inner();
        self.instances
            .abort_migration(&r.instance_id)
            .await
            .map_err(status)?;
        Ok(Response::new(r))
    }

    async fn set_network(
        &self,
        request: Request<proto::NetworkSpec>,
    ) -> Result<Response<proto::NetworkSpec>, Status> {
        let spec = request.into_inner();
        let net = net_spec(&spec)?;
        self.instances.set_network(&net).await.map_err(status)?;
        Ok(Response::new(spec))
    }

    async fn terminate_instance(
        &self,
        request: Request<InstanceRef>,
    ) -> Result<Response<InstanceStatus>, Status> {
        self.instances
            .remove(&request.get_ref().instance_id)
            .await
            .map(|s| Response::new(s.into()))
            .map_err(status)
    }

    async fn stop_guest(
        &self,
        request: Request<InstanceRef>,
    ) -> Result<Response<InstanceRef>, Status> {
        self.instances
            .stop_guest(&request.get_ref().instance_id)
            .await
            .map_err(status)?;
        Ok(Response::new(request.into_inner()))
    }

    async fn attach_volume(
        &self,
        request: Request<proto::VolumeAttach>,
    ) -> Result<Response<proto::VolumeAttached>, Status> {
        let r = request.into_inner();
        let device = self
            .instances
            .attach_volume(&r.instance_id, &r.volume_id, &r.connection, r.root)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::VolumeAttached {
            volume_id: r.volume_id,
            device,
        }))
    }

    async fn detach_volume(
        &self,
        request: Request<proto::VolumeAttach>,
    ) -> Result<Response<proto::VolumeAttached>, Status> {
        let r = request.into_inner();
        self.instances
            .detach_volume(&r.instance_id, &r.volume_id, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::VolumeAttached {
            volume_id: r.volume_id,
            device: String::new(),
        }))
    }

    async fn stop_instance(
        &self,
        request: Request<InstanceRef>,
    ) -> Result<Response<InstanceStatus>, Status> {
        self.instances
            .stop(&request.get_ref().instance_id)
            .await
            .map(|s| Response::new(s.into()))
            .map_err(status)
    }

    async fn start_instance(
        &self,
        request: Request<InstanceRef>,
    ) -> Result<Response<InstanceStatus>, Status> {
        self.instances
            .start(&request.get_ref().instance_id)
            .await
            .map(|s| Response::new(s.into()))
            .map_err(status)
    }

    async fn reboot_instance(
        &self,
        request: Request<InstanceRef>,
    ) -> Result<Response<InstanceStatus>, Status> {
        self.instances
            .reboot(&request.get_ref().instance_id)
            .await
            .map(|s| Response::new(s.into()))
            .map_err(status)
    }

    type OpenConsoleStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<proto::ConsoleBytes, Status>> + Send>,
    >;

    async fn open_console(
        &self,
        request: Request<tonic::Streaming<proto::ConsoleInput>>,
    ) -> Result<Response<Self::OpenConsoleStream>, Status> {
        use tokio_stream::StreamExt;
        let (first, mut typed) = proto::console_opening(request).await?;
        let io = self
            .instances
            .open_console(&first.instance_id)
            .await
            .map_err(status)?;
        tracing::info!(instance_id = %first.instance_id, "serial console opened");
        let input = io.input;
        if !first.data.is_empty() {
            let _ = input.send(first.data).await;
        }
        // Typing goes on until the other end closes; then the console
        // closes too.
        tokio::spawn(async move {
            while let Ok(Some(m)) = typed.message().await {
                if !m.data.is_empty() && input.send(m.data).await.is_err() {
                    break;
                }
            }
        });
        let output = tokio_stream::wrappers::ReceiverStream::new(io.output)
            .map(|data| Ok(proto::ConsoleBytes { data }));
        Ok(Response::new(Box::pin(output)))
    }

    async fn get_console_output(
        &self,
        request: Request<InstanceRef>,
    ) -> Result<Response<ConsoleOutput>, Status> {
        let id = request.into_inner().instance_id;
        let output = self.instances.console(&id).await.map_err(status)?;
        Ok(Response::new(ConsoleOutput {
            instance_id: id,
            output,
            timestamp_unix_ms: common::time::unix_ms(),
        }))
    }

    async fn resize_instance(
        &self,
        request: Request<ResizeInstanceRequest>,
    ) -> Result<Response<InstanceStatus>, Status> {
        let r = request.into_inner();
        self.instances
            .resize(&r.instance_id, &r.instance_type, r.cores, r.memory_mib)
            .await
            .map(|s| Response::new(s.into()))
            .map_err(status)
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
        let source = self.source(&request.walrus)?;
        let mut out = Vec::new();
        for image in &images {
            let cached = self
                .images
                .get(&source, image)
                .await
                .map_err(|e| image_status(&e))?;
            out.push(PreparedImage {
                sha256: image.sha256.clone(),
                cached: cached.hit,
            });
        }
        Ok(Response::new(PrepareImagesReply { images: out }))
    }
}

/// The launch a RunInstance request asks for.
fn launch_of(spec: Option<proto::InstanceSpec>) -> Result<Launch, Status> {
    let spec = spec.ok_or_else(|| Status::invalid_argument("no instance spec"))?;
    Ok(Launch {
        instance_id: spec.instance_id,
        instance_type: spec.instance_type,
        cores: spec.cores,
        memory_mib: spec.memory_mib,
        disk_gib: spec.disk_gib,
        image: match image_ref(spec.image)? {
            Some(image) => Some(image),
            None if !spec.root_volume_id.is_empty() => None,
            None => return Err(Status::invalid_argument("no image")),
        },
        root_volume: Some(spec.root_volume_id).filter(|v| !v.is_empty()),
        kernel: image_ref(spec.kernel)?,
        ramdisk: image_ref(spec.ramdisk)?,
        network: match &spec.network {
            Some(n) if !spec.private_ip.is_empty() && !spec.mac.is_empty() => Some(net_spec(n)?),
            _ => None,
        },
        firewall: spec.firewall.as_ref().map(policy),
        mac: spec.mac,
        private_ip: spec.private_ip,
        incoming: false,
        volumes: spec.volumes.into_iter().map(attachment_of).collect(),
    })
}

fn attachment_of(v: proto::AttachedVolume) -> crate::instances::VolumeAttachment {
    crate::instances::VolumeAttachment {
        volume_id: v.volume_id,
        target: v.device,
        connection: v.connection,
    }
}
