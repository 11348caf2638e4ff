//! The CLC's side of the instance metadata service: nodes relay their
//! guests' requests here (gRPC `MetadataService`), and the answer comes
//! from [`crate::metadata`]. The instance is the one whose private address
//! sent the request, in the cluster of the node that relays it (addresses
//! are unique in a cluster; a host's relay may serve the guests of every
//! node controller on that host): a guest cannot read another's metadata,
//! nor a node ask for another cluster's guests.

use crate::instances::InstanceState;
use common::{auth::caller, time};
use proto::{metadata_service_server::MetadataService, MetadataReply, MetadataRequest};
use tonic::{Request, Response, Status};

use crate::{
    core::Cloud,
    metadata::{answer, InstanceView, Tokens},
};

/// The metadata service.
#[derive(Debug, Clone)]
pub struct Imds {
    cloud: Cloud,
    tokens: Tokens,
    tokens_required: bool,
}

impl Imds {
    /// Over `cloud`; tokens keyed by `secret`; with `tokens_required`,
    /// IMDSv1 reads are refused.
    pub fn new(cloud: Cloud, secret: &[u8], tokens_required: bool) -> Self {
        Self {
            cloud,
            tokens: Tokens::new(secret),
            tokens_required,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "metadata lookup failed");
    Status::internal("metadata lookup failed")
}

#[tonic::async_trait]
impl MetadataService for Imds {
    async fn get(
        &self,
        request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataReply>, Status> {
        // The relaying node, as its certificate names it.
        let node = caller(&request)?.name.clone();
        let req = request.into_inner();
        let cloud = &self.cloud;
        let cluster = cloud
            .registry
            .nodes()
            .into_iter()
            .find(|n| n.node.as_ref().is_some_and(|v| v.name == node))
            .map(|n| n.cluster_name);
        // By the address index: the cost does not grow with the cloud.
        let mut claims: Vec<_> = if req.source_ip.is_empty() {
            Vec::new()
        } else {
            match &cluster {
                Some(c) => cloud.instances.at_address(c, &req.source_ip),
                None => cloud
                    .instances
                    .list()
                    .map_err(internal)?
                    .into_iter()
                    .filter(|r| r.node == node && r.private_ip == req.source_ip)
                    .collect(),
            }
        };
        claims.retain(|r| {
            !matches!(
                r.state,
                InstanceState::Terminated | InstanceState::ShuttingDown
            )
        });
        if claims.len() > 1 {
            // Two live records claim the address: answering for either could
            // hand one tenant's data to another. Nothing until they are
            // reconciled.
            let ids: Vec<&str> = claims.iter().map(|r| r.instance_id.as_str()).collect();
            tracing::warn!(%node, source_ip = %req.source_ip, instances = ?ids, "several instances claim this address: no metadata served");
            claims.clear();
        }
        let Some(record) = claims.pop() else {
            tracing::info!(%node, source_ip = %req.source_ip, "metadata request from no known instance");
            return Ok(Response::new(MetadataReply {
                status: 404,
                content_type: "text/plain".into(),
                body: b"Not Found".to_vec(),
            }));
        };
        let image = cloud.images.get(&record.image_id).map_err(internal)?;
        let public_key = match &record.key_name {
            Some(name) => cloud
                .keypairs
                .get(&record.account_id, name)
                .map_err(internal)?
                .map(|k| (k.name, k.public_key)),
            None => None,
        };
        let groups = cloud
            .security_groups
            .of(&record.account_id)
            .map_err(internal)?
            .into_iter()
            .filter(|g| record.security_groups.contains(&g.group_id))
            .map(|g| (g.group_id, g.name))
            .collect();
        let public_ip = cloud
            .addresses
            .by_instance()
            .map_err(internal)?
            .remove(&record.instance_id);
        let view = InstanceView {
            record: &record,
            image_location: image
                .as_ref()
                .map(|i| format!("{}/{}", i.bucket, i.key))
                .unwrap_or_default(),
            architecture: image
                .as_ref()
                .map_or_else(|| "x86_64".to_string(), |i| i.architecture.clone()),
            public_key,
            security_groups: groups,
            public_ip,
            region: cloud.settings.region.clone(),
        };
        let headers: Vec<(String, String)> = req.headers.into_iter().collect();
        let reply = answer(
            &view,
            &req.method,
            &req.path,
            &headers,
            &self.tokens,
            self.tokens_required,
            time::unix_secs(),
        );
        tracing::info!(instance_id = %record.instance_id, method = %req.method, path = %req.path, status = reply.status, bytes = reply.body.len(), "metadata");
        Ok(Response::new(MetadataReply {
            status: u32::from(reply.status),
            content_type: reply.content_type.to_string(),
            body: reply.body,
        }))
    }
}
