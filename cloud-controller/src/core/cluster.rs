//! How the core calls the clusters below: the [`ClusterApi`] trait, and
//! its gRPC implementation over the clusters the registry knows.

use std::sync::Arc;

use common::{pki::Role, rpc::Trust, time};
use proto::{
    cluster_service_client::ClusterServiceClient, GroupMembers, InstanceFirewall, InstanceRef,
    InstanceRefs, InstanceSpec, InstanceState, RunInstancesRequest, ServiceState,
};
use tonic::{Code, Status};

use crate::registry::{Registry, CLUSTER};

/// A cluster (availability zone) as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterInfo {
    pub name: String,
    pub zone: String,
    /// True while it is ENABLED.
    pub enabled: bool,
}

/// Where a cluster put an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub instance_id: String,
    pub node: String,
    /// Empty without a private network.
    pub private_ip: String,
    pub mac: String,
}

/// An instance a cluster could not start, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotStarted {
    pub instance_id: String,
    pub reason: String,
}

/// Why a call to a cluster failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {0} is unknown")]
    Unknown(String),
    #[error("cluster {0} is not ENABLED")]
    NotEnabled(String),
    /// Not enough room on its nodes (or its private network).
    #[error("{0}")]
    Capacity(String),
    /// The cluster does not know the instance (any more).
    #[error("{0}")]
    NotFound(String),
    /// The cluster refused or could not do it; `retry` when the reason may
    /// pass (nothing answered, or a tier below is unavailable).
    #[error("{message}")]
    Failed { message: String, retry: bool },
}

impl ClusterError {
    /// True when trying again later may succeed.
    pub fn retry(&self) -> bool {
        match self {
            Self::Unknown(_) | Self::NotEnabled(_) => true,
            Self::Failed { retry, .. } => *retry,
            Self::Capacity(_) | Self::NotFound(_) => false,
        }
    }

    fn from_status(cluster: &str, s: &Status) -> Self {
        match s.code() {
            // The CC says what ran out; the text's prefix is the EC2 code.
            Code::ResourceExhausted => Self::Capacity(
                s.message()
                    .trim_start_matches("InsufficientInstanceCapacity: ")
                    .to_string(),
            ),
            Code::NotFound => Self::NotFound(s.message().to_string()),
            _ => Self::Failed {
                retry: common::rpc::not_answered(s) || s.code() == Code::Unavailable,
                message: format!("cluster {cluster}: {}", s.message()),
            },
        }
    }
}

/// The power operations a cluster carries out on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Stop,
    Start,
    Reboot,
}

/// The clusters, as the core calls them. Every instance operation that
/// reaches below the CLC goes through here.
#[tonic::async_trait]
pub trait ClusterApi: Send + Sync + std::fmt::Debug {
    /// Every cluster, by name.
    fn clusters(&self) -> Vec<ClusterInfo>;
    /// Places `specs` on nodes of `cluster`, all or none; the cluster keeps
    /// them for [`ClusterApi::run`].
    async fn place(
        &self,
        cluster: &str,
        specs: Vec<InstanceSpec>,
        walrus: &str,
    ) -> Result<Vec<Placement>, ClusterError>;
    /// Starts placed instances: each named by id, with its firewall (the
    /// rest the cluster kept when it placed them). Returns those that
    /// could not start.
    async fn run(
        &self,
        cluster: &str,
        starts: Vec<(String, Option<InstanceFirewall>)>,
        walrus: &str,
    ) -> Result<Vec<NotStarted>, ClusterError>;
    async fn terminate(&self, cluster: &str, id: &str) -> Result<(), ClusterError>;
    async fn power(&self, cluster: &str, id: &str, what: Power) -> Result<(), ClusterError>;
    /// The guest's serial console so far.
    async fn console_output(&self, cluster: &str, id: &str) -> Result<Vec<u8>, ClusterError>;
    /// Opens the guest's serial console: what arrives on `typed` is typed
    /// into it; what it writes comes out of the answer, which ends when
    /// the console closes (dropping `typed` closes it).
    async fn open_console(
        &self,
        cluster: &str,
        id: &str,
        typed: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, ClusterError>;
    /// Replaces the firewalls of the named instances and the memberships
    /// of the groups listed; returns how many firewalls nodes applied.
    async fn set_firewalls(
        &self,
        cluster: &str,
        firewalls: Vec<InstanceFirewall>,
        groups: Vec<GroupMembers>,
    ) -> Result<u32, ClusterError>;
    async fn resize(
        &self,
        cluster: &str,
        id: &str,
        instance_type: &crate::instances::InstanceType,
    ) -> Result<(), ClusterError>;
    /// Powers off guest `id` on `node`, which the cloud has no record of.
    async fn stop_guest(&self, cluster: &str, node: &str, id: &str) -> Result<(), ClusterError>;
    /// Moves running instance `spec` live to another node of `cluster` (one
    /// of `destinations`, or the cluster's choice).
    async fn migrate(
        &self,
        cluster: &str,
        spec: InstanceSpec,
        walrus: &str,
        destinations: &[String],
    ) -> Result<super::migrate::Migrated, ClusterError>;
    /// The node instance `id` of `cluster` would migrate to (one of
    /// `destinations`, or the cluster's choice), its room held there for a
    /// minute; a `migrate` naming that node alone takes it.
    async fn plan_migration(
        &self,
        cluster: &str,
        id: &str,
        destinations: &[String],
    ) -> Result<String, ClusterError>;
    /// Takes `node` of `cluster` out of placement and migrations to it
    /// (`disabled`), or puts it back.
    async fn set_node_disabled(
        &self,
        cluster: &str,
        node: &str,
        disabled: bool,
    ) -> Result<(), ClusterError>;
    /// Attaches the volume exported at `connection` to instance `id` (as
    /// its root device when `root`); returns the guest's device.
    async fn attach_volume(
        &self,
        cluster: &str,
        id: &str,
        volume_id: &str,
        connection: &str,
        root: bool,
    ) -> Result<String, ClusterError>;
    /// Detaches `volume_id` from instance `id` (`force`: even if the guest
    /// does not let go).
    async fn detach_volume(
        &self,
        cluster: &str,
        id: &str,
        volume_id: &str,
        force: bool,
    ) -> Result<(), ClusterError>;
}

type Client = ClusterServiceClient<common::rpc::Client>;

/// The clusters the registry knows, over gRPC with mutual TLS.
#[derive(Debug, Clone)]
pub struct GrpcClusters {
    registry: Arc<Registry>,
    trust: Trust,
}

impl GrpcClusters {
    pub fn new(registry: Arc<Registry>, trust: Trust) -> Self {
        Self { registry, trust }
    }

    fn client(&self, cluster: &str) -> Result<Client, ClusterError> {
        let service = self
            .registry
            .services(time::unix_ms())
            .into_iter()
            .find(|s| s.service_type == CLUSTER && s.name == cluster)
            .ok_or_else(|| ClusterError::Unknown(cluster.to_string()))?;
        if service.state != ServiceState::Enabled as i32 {
            return Err(ClusterError::NotEnabled(cluster.to_string()));
        }
        let channel = self
            .trust
            .channel(&service.endpoint, Role::Cc)
            .map_err(|e| ClusterError::Failed {
                message: format!("cluster {cluster}: {e}"),
                retry: true,
            })?;
        Ok(ClusterServiceClient::new(channel))
    }
}

fn refs(id: &str) -> InstanceRefs {
    InstanceRefs {
        instance_ids: vec![id.to_string()],
    }
}

#[tonic::async_trait]
impl ClusterApi for GrpcClusters {
    fn clusters(&self) -> Vec<ClusterInfo> {
        let mut v: Vec<ClusterInfo> = self
            .registry
            .services(time::unix_ms())
            .into_iter()
            .filter(|s| s.service_type == CLUSTER)
            .map(|s| ClusterInfo {
                name: s.name,
                zone: s.partition,
                enabled: s.state == ServiceState::Enabled as i32,
            })
            .collect();
        v.sort();
        v
    }

    async fn place(
        &self,
        cluster: &str,
        specs: Vec<InstanceSpec>,
        walrus: &str,
    ) -> Result<Vec<Placement>, ClusterError> {
        let reply = self
            .client(cluster)?
            .place_instances(RunInstancesRequest {
                instances: specs,
                walrus: walrus.to_string(),
            })
            .await
            .map_err(|s| ClusterError::from_status(cluster, &s))?;
        Ok(reply
            .into_inner()
            .instances
            .into_iter()
            .map(|s| Placement {
                instance_id: s.instance_id,
                node: s.node,
                private_ip: s.private_ip,
                mac: s.mac,
            })
            .collect())
    }

    async fn run(
        &self,
        cluster: &str,
        starts: Vec<(String, Option<InstanceFirewall>)>,
        walrus: &str,
    ) -> Result<Vec<NotStarted>, ClusterError> {
        // Only what is new travels: the cluster kept each spec it placed.
        let instances = starts
            .into_iter()
            .map(|(instance_id, firewall)| InstanceSpec {
                instance_id,
                firewall,
                ..Default::default()
            })
            .collect();
        let reply = self
            .client(cluster)?
            .run_instances(RunInstancesRequest {
                instances,
                walrus: walrus.to_string(),
            })
            .await
            .map_err(|s| ClusterError::from_status(cluster, &s))?;
        Ok(reply
            .into_inner()
            .instances
            .into_iter()
            .filter(|s| s.state == InstanceState::Terminated as i32)
            .map(|s| NotStarted {
                instance_id: s.instance_id,
                reason: s.reason,
            })
            .collect())
    }

    async fn terminate(&self, cluster: &str, id: &str) -> Result<(), ClusterError> {
        self.client(cluster)?
            .terminate_instances(refs(id))
            .await
            .map(|_| ())
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }

    async fn power(&self, cluster: &str, id: &str, what: Power) -> Result<(), ClusterError> {
        let mut c = self.client(cluster)?;
        let answer = match what {
            Power::Stop => c.stop_instances(refs(id)).await,
            Power::Start => c.start_instances(refs(id)).await,
            Power::Reboot => c.reboot_instances(refs(id)).await,
        };
        answer
            .map(|_| ())
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }

    async fn plan_migration(
        &self,
        cluster: &str,
        id: &str,
        destinations: &[String],
    ) -> Result<String, ClusterError> {
        Ok(self
            .client(cluster)?
            .plan_migration(proto::MigrateInstanceOrder {
                spec: Some(InstanceSpec {
                    instance_id: id.to_string(),
                    ..Default::default()
                }),
                walrus: String::new(),
                destinations: destinations.to_vec(),
            })
            .await
            .map_err(|s| ClusterError::from_status(cluster, &s))?
            .into_inner()
            .name)
    }

    async fn set_node_disabled(
        &self,
        cluster: &str,
        node: &str,
        disabled: bool,
    ) -> Result<(), ClusterError> {
        self.client(cluster)?
            .set_node_disabled(proto::NodeDisabled {
                name: node.to_string(),
                disabled,
            })
            .await
            .map(|_| ())
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }

    async fn migrate(
        &self,
        cluster: &str,
        spec: InstanceSpec,
        walrus: &str,
        destinations: &[String],
    ) -> Result<super::migrate::Migrated, ClusterError> {
        let id = spec.instance_id.clone();
        let done = self
            .client(cluster)?
            .migrate_instance(proto::MigrateInstanceOrder {
                spec: Some(spec),
                walrus: walrus.to_string(),
                destinations: destinations.to_vec(),
            })
            .await
            .map_err(|s| ClusterError::from_status(cluster, &s))?
            .into_inner();
        Ok(super::migrate::Migrated {
            instance_id: id,
            source: done.source,
            destination: done.destination,
            seconds: done.seconds,
        })
    }

    async fn open_console(
        &self,
        cluster: &str,
        id: &str,
        typed: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, ClusterError> {
        use tokio_stream::StreamExt;
        let first = proto::ConsoleInput {
            instance_id: id.to_string(),
            data: Vec::new(),
        };
        let upstream = tokio_stream::once(first).chain(
            tokio_stream::wrappers::ReceiverStream::new(typed).map(|data| proto::ConsoleInput {
                instance_id: String::new(),
                data,
            }),
        );
        let mut down = self
            .client(cluster)?
            .open_console(upstream)
            .await
            .map_err(|s| ClusterError::from_status(cluster, &s))?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(bytes)) = down.message().await {
                if tx.send(bytes.data).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    async fn console_output(&self, cluster: &str, id: &str) -> Result<Vec<u8>, ClusterError> {
        self.client(cluster)?
            .get_console_output(InstanceRef {
                instance_id: id.to_string(),
            })
            .await
            .map(|o| o.into_inner().output)
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }

    async fn set_firewalls(
        &self,
        cluster: &str,
        firewalls: Vec<InstanceFirewall>,
        groups: Vec<GroupMembers>,
    ) -> Result<u32, ClusterError> {
        self.client(cluster)?
            .set_firewalls(proto::Firewalls { firewalls, groups })
            .await
            .map(|r| r.into_inner().applied)
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }

    async fn resize(
        &self,
        cluster: &str,
        id: &str,
        t: &crate::instances::InstanceType,
    ) -> Result<(), ClusterError> {
        self.client(cluster)?
            .resize_instance(proto::ResizeInstanceRequest {
                instance_id: id.to_string(),
                instance_type: t.name.clone(),
                cores: t.cores,
                memory_mib: t.memory_mib,
            })
            .await
            .map(|_| ())
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }

    async fn stop_guest(&self, cluster: &str, node: &str, id: &str) -> Result<(), ClusterError> {
        self.client(cluster)?
            .stop_guest(proto::NodeGuest {
                node: node.to_string(),
                instance_id: id.to_string(),
            })
            .await
            .map(|_| ())
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }

    async fn attach_volume(
        &self,
        cluster: &str,
        id: &str,
        volume_id: &str,
        connection: &str,
        root: bool,
    ) -> Result<String, ClusterError> {
        self.client(cluster)?
            .attach_volume(proto::VolumeAttach {
                instance_id: id.to_string(),
                volume_id: volume_id.to_string(),
                connection: connection.to_string(),
                force: false,
                root,
            })
            .await
            .map(|r| r.into_inner().device)
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }

    async fn detach_volume(
        &self,
        cluster: &str,
        id: &str,
        volume_id: &str,
        force: bool,
    ) -> Result<(), ClusterError> {
        self.client(cluster)?
            .detach_volume(proto::VolumeAttach {
                instance_id: id.to_string(),
                volume_id: volume_id.to_string(),
                connection: String::new(),
                force,
                root: false,
            })
            .await
            .map(|_| ())
            .map_err(|s| ClusterError::from_status(cluster, &s))
    }
}
