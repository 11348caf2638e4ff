//! Who signed a request: access keys are the CLC's, looked up over gRPC and
//! cached for a short while (a deleted key stops working within a minute).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{pki::Role, rpc::Trust};
use proto::{
    identity_service_client::IdentityServiceClient, LookupAccessKeyRequest, NodeReadRequest,
};
use tonic::Code;

/// How long a found key is trusted without asking again.
const FOUND_TTL: Duration = Duration::from_secs(60);
/// How long an unknown key stays unknown.
const MISSING_TTL: Duration = Duration::from_secs(2);
/// How long a node may keep reading an image after the CLC said it may
/// (a launch reads its image within seconds).
const NODE_READ_TTL: Duration = Duration::from_secs(30);

/// The owner of an access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account_id: String,
    pub account_name: String,
    pub user_name: String,
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the cloud controller for identity: {0}")]
pub struct Unavailable(String);

/// Access-key lookups against the CLC.
#[derive(Debug)]
pub struct Identity {
    client: IdentityServiceClient<common::rpc::Client>,
    cache: Mutex<HashMap<String, (Option<Caller>, Instant)>>,
    /// (node, bucket, key) the CLC allowed, and when.
    node_reads: Mutex<HashMap<(String, String, String), Instant>>,
}

impl Identity {
    /// Looks keys up at the CLC's gRPC address `clc`.
    pub fn new(clc: &str, trust: &Trust) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            client: IdentityServiceClient::new(trust.channel(clc, Role::Clc)?),
            cache: Mutex::new(HashMap::new()),
            node_reads: Mutex::new(HashMap::new()),
        })
    }

    /// Whether node `node` may read bucket/key: only while one of its
    /// instances uses that image (the CLC knows).
    pub async fn node_may_read(
        &self,
        node: &str,
        bucket: &str,
        key: &str,
    ) -> Result<bool, Unavailable> {
        let id = (node.to_string(), bucket.to_string(), key.to_string());
        {
            let reads = self.node_reads.lock().unwrap_or_else(|p| p.into_inner());
            if reads
                .get(&id)
                .is_some_and(|at| at.elapsed() < NODE_READ_TTL)
            {
                return Ok(true);
            }
        }
        let allowed = self
            .client
            .clone()
            .node_may_read(NodeReadRequest {
                node: id.0.clone(),
                bucket: id.1.clone(),
                key: id.2.clone(),
            })
            .await
            .map_err(|s| Unavailable(s.message().to_string()))?
            .into_inner()
            .allowed;
        if allowed {
            let mut reads = self.node_reads.lock().unwrap_or_else(|p| p.into_inner());
            reads.retain(|_, at| at.elapsed() < NODE_READ_TTL);
            reads.insert(id, Instant::now());
        }
        Ok(allowed)
    }

    /// The caller owning `access_key_id`, or None if there is no such key.
    pub async fn lookup(&self, access_key_id: &str) -> Result<Option<Caller>, Unavailable> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((caller, at)) = cache.get(access_key_id) {
                let ttl = if caller.is_some() {
                    FOUND_TTL
                } else {
                    MISSING_TTL
                };
                if at.elapsed() < ttl {
                    return Ok(caller.clone());
                }
            }
        }
        let reply = self
            .client
            .clone()
            .lookup_access_key(LookupAccessKeyRequest {
                access_key_id: access_key_id.to_string(),
            })
            .await;
        let caller = match reply {
            Ok(r) => {
                let k = r.into_inner();
                Some(Caller {
                    access_key_id: k.access_key_id,
                    secret_access_key: k.secret_access_key,
                    account_id: k.account_id,
                    account_name: k.account_name,
                    user_name: k.user_name,
                })
            }
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(Unavailable(status.message().to_string())),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(access_key_id.to_string(), (caller.clone(), Instant::now()));
        Ok(caller)
    }
}
