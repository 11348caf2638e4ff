//! The CLC's gRPC services: report streams from the tiers below, and admin calls.

use std::{sync::Arc, time::Duration};

use common::{auth::caller, pki::Role, report::accept_reports, time};
use proto::{
    admin_service_server::AdminService, cloud_service_server::CloudService,
    identity_service_server::IdentityService, ClusterReport, CreateAccessKeyRequest,
    CreateAccountRequest, DeleteAccountRequest, DescribeAccessKeysReply, DescribeAccessKeysRequest,
    DescribeAccountsReply, DescribeAccountsRequest, DescribeNodesReply, DescribeNodesRequest,
    DescribeServicesReply, DescribeServicesRequest, LookupAccessKeyRequest, ReportAck,
    ServiceReport, SetAccountQuotaRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    accounts::{self, AccountError, Accounts},
    registry::{self, Registry},
};

/// Both services share the CLC's state.
#[derive(Clone, Debug)]
pub struct Cloud {
    pub registry: Arc<Registry>,
    pub accounts: Accounts,
    pub instances: Arc<crate::instances::Instances>,
    pub images: Arc<crate::images::Images>,
    /// How this CLC proves itself to the other tiers.
    pub trust: common::rpc::Trust,
    /// What else an account holds (an account purge removes it).
    pub keypairs: Arc<crate::keypairs::KeyPairs>,
    pub security_groups: Arc<crate::security_groups::SecurityGroups>,
    pub addresses: Arc<crate::addresses::Addresses>,
    pub tags: Arc<crate::tags::Tags>,
    /// Guests nodes report that the cloud has no record of (or only a
    /// terminated one), and what the policy did about them.
    pub unknown_guests: Arc<std::sync::Mutex<UnknownGuests>>,
}

/// What the cloud does with a guest it has no record of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownGuestPolicy {
    /// Power it off (its disks stay): the default.
    Stop,
    /// Only show it to the administrator.
    Report,
}

/// An unknown guest: where it is, since when, what was done.
#[derive(Clone, Debug)]
pub struct UnknownGuest {
    pub cluster: String,
    pub node: String,
    pub instance_id: String,
    pub running: bool,
    pub first_seen_ms: i64,
    pub detail: String,
}

/// The unknown guests by (cluster, node, instance id).
pub type UnknownGuests = std::collections::BTreeMap<(String, String, String), UnknownGuest>;

impl Cloud {
    /// Deletes account `name` once it holds nothing: no instance that is
    /// not terminated, no image, no bucket (else [`AccountError::InUse`],
    /// naming them). Every path that deletes accounts (the admin service,
    /// Euare) comes here.
    pub async fn delete_account(&self, name: &str) -> Result<accounts::Account, AccountError> {
        let account = self.accounts.find(name)?;
        self.accounts.deletable(&account)?;
        let id = &account.account_id;
        let mut held = Vec::new();
        let mut note = |what: &str, items: Vec<String>| {
            if !items.is_empty() {
                held.push(format!("{} {what} ({})", items.len(), items.join(", ")));
            }
        };
        note(
            "instance(s)",
            self.instances
                .list()?
                .into_iter()
                .filter(|r| &r.account_id == id && r.state != "terminated")
                .map(|r| r.instance_id)
                .collect(),
        );
        note(
            "image(s)",
            self.images
                .list()?
                .into_iter()
                .filter(|i| &i.owner_id == id)
                .map(|i| i.image_id)
                .collect(),
        );
        note("bucket(s)", self.buckets_of(id).await?);
        if !held.is_empty() {
            return Err(AccountError::InUse(format!(
                "Account {} still has {}; remove them first.",
                account.name,
                held.join(", ")
            )));
        }
        self.accounts.delete(&account.name)
    }

    /// Deletes account `name` and everything it holds: its keys first (it
    /// can make nothing new meanwhile), then its instances (terminated: the
    /// intent is durable, carried out even if a node is down now), images,
    /// buckets with their objects, addresses, key pairs, security groups
    /// and tags. Returns the account and what was removed, one line each.
    /// Running it again after a failure half-way finishes the job.
    pub async fn purge_account(
        &self,
        name: &str,
    ) -> Result<(accounts::Account, Vec<String>), AccountError> {
        let account = self.accounts.find(name)?;
        self.accounts.deletable(&account)?;
        let id = account.account_id.clone();
        let mut removed = Vec::new();
        let keys = self.accounts.revoke_keys(&account.name)?;
        if keys > 0 {
            removed.push(format!("{keys} access key(s)"));
        }
        for r in self.instances.list()? {
            if r.account_id != id || r.state == "terminated" {
                continue;
            }
            if r.state != "shutting-down" {
                self.instances.set_state(
                    &r.instance_id,
                    "shutting-down",
                    "Client.UserInitiatedShutdown: account deleted",
                    None,
                )?;
            }
            self.addresses.instance_gone(&r.instance_id)?;
            removed.push(format!("instance {} (terminating)", r.instance_id));
        }
        for image in self.images.list()? {
            if image.owner_id == id && self.images.deregister(&image.image_id)? {
                removed.push(format!("image {}", image.image_id));
            }
        }
        for bucket in self.delete_buckets_of(&id).await? {
            removed.push(format!("bucket {bucket} (with its objects)"));
        }
        for address in self.addresses.of(&id)? {
            self.addresses.release(&address.public_ip)?;
            removed.push(format!("address {}", address.public_ip));
        }
        for pair in self.keypairs.of(&id)? {
            self.keypairs.delete(&id, &pair.name)?;
            removed.push(format!("key pair {}", pair.name));
        }
        for group in self.security_groups.of(&id)? {
            self.security_groups.delete(&id, &group.group_id)?;
            removed.push(format!(
                "security group {} ({})",
                group.group_id, group.name
            ));
        }
        let tags = self.tags.all(&id)?;
        let resources: std::collections::BTreeSet<&str> =
            tags.iter().map(|t| t.resource_id.as_str()).collect();
        for resource in &resources {
            self.tags.forget(resource)?;
        }
        if !tags.is_empty() {
            removed.push(format!("{} tag(s)", tags.len()));
        }
        let account = self.accounts.delete(&account.name)?;
        Ok((account, removed))
    }

    /// Deletes the buckets account `id` owns in Walrus, with their objects.
    async fn delete_buckets_of(&self, id: &str) -> Result<Vec<String>, AccountError> {
        let owner = proto::BucketOwner {
            owner_id: id.to_string(),
        };
        let unavailable = |why: String| {
            AccountError::Unavailable(format!("cannot delete the account's buckets: {why}"))
        };
        let reply = self
            .walrus()
            .map_err(unavailable)?
            .delete_buckets(owner)
            .await
            .map_err(|s| unavailable(s.message().to_string()))?;
        Ok(reply.into_inner().names)
    }

    /// The buckets account `id` owns, as Walrus says.
    async fn buckets_of(&self, id: &str) -> Result<Vec<String>, AccountError> {
        let owner = proto::BucketOwner {
            owner_id: id.to_string(),
        };
        let unavailable = |why: String| {
            AccountError::Unavailable(format!("cannot check the account's buckets: {why}"))
        };
        let reply = self
            .walrus()
            .map_err(unavailable)?
            .list_buckets(owner)
            .await
            .map_err(|s| unavailable(s.message().to_string()))?;
        Ok(reply.into_inner().names)
    }

    /// A client of the ENABLED Walrus's internal service.
    pub fn walrus(
        &self,
    ) -> Result<proto::walrus_internal_client::WalrusInternalClient<common::rpc::Client>, String>
    {
        let endpoint = self
            .registry
            .enabled_walrus()
            .ok_or_else(|| "no Walrus is ENABLED".to_string())?;
        let channel = self
            .trust
            .channel(&endpoint, Role::Walrus)
            .map_err(|e| e.to_string())?;
        Ok(proto::walrus_internal_client::WalrusInternalClient::new(
            channel,
        ))
    }

    /// Finds guests the nodes report that the cloud has no record of (or
    /// only a terminated one), forever: the administrator sees them in
    /// `describe-instances`, and with [`UnknownGuestPolicy::Stop`] a running
    /// one is powered off once it has been unknown for `grace`. Run it in
    /// its own task.
    pub async fn watch_unknown_guests(
        self,
        policy: UnknownGuestPolicy,
        grace: Duration,
        every: Duration,
    ) {
        let grace_ms = grace.as_millis() as i64;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Ok(records) = self.instances.list() else {
                continue;
            };
            let live: std::collections::HashSet<String> = records
                .into_iter()
                .filter(|r| r.state != "terminated")
                .map(|r| r.instance_id)
                .collect();
            let now = time::unix_ms();
            let mut seen = UnknownGuests::new();
            for view in self.registry.nodes() {
                let Some(node) = view.node else { continue };
                if node.state != proto::ServiceState::Enabled as i32 {
                    continue;
                }
                for s in node.instances.iter().chain(&node.unknown_guests) {
                    if live.contains(&s.instance_id) {
                        continue;
                    }
                    let key = (
                        view.cluster_name.clone(),
                        node.name.clone(),
                        s.instance_id.clone(),
                    );
                    let running = s.state == proto::InstanceState::Running as i32
                        || s.state == proto::InstanceState::Pending as i32;
                    seen.insert(
                        key.clone(),
                        UnknownGuest {
                            cluster: key.0,
                            node: key.1,
                            instance_id: key.2,
                            running,
                            first_seen_ms: now,
                            detail: String::new(),
                        },
                    );
                }
            }
            let mut to_stop = Vec::new();
            {
                let mut known = self
                    .unknown_guests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                for (key, guest) in seen.iter_mut() {
                    if let Some(before) = known.get(key) {
                        guest.first_seen_ms = before.first_seen_ms;
                        guest.detail = before.detail.clone();
                    } else {
                        tracing::warn!(node = %guest.node, instance_id = %guest.instance_id, "a guest the cloud has no record of");
                    }
                    let due = now - guest.first_seen_ms >= grace_ms;
                    guest.detail = match (policy, guest.running, due) {
                        (UnknownGuestPolicy::Report, _, _) => {
                            "not in the cloud's records (policy: report)".into()
                        }
                        (UnknownGuestPolicy::Stop, true, true) => {
                            to_stop.push(guest.clone());
                            "not in the cloud's records: stopping it (policy: stop)".into()
                        }
                        (UnknownGuestPolicy::Stop, true, false) => {
                            "not in the cloud's records: stopped if it stays so (policy: stop)"
                                .into()
                        }
                        (UnknownGuestPolicy::Stop, false, _) => {
                            "not in the cloud's records: stopped (policy: stop)".into()
                        }
                    };
                }
                *known = seen;
            }
            for guest in to_stop {
                let Some((_, endpoint)) = self.registry.cluster_of_node(&guest.node) else {
                    continue;
                };
                let Ok(channel) = self.trust.channel(&endpoint, Role::Cc) else {
                    continue;
                };
                let stopped = proto::cluster_service_client::ClusterServiceClient::new(channel)
                    .stop_guest(proto::NodeGuest {
                        node: guest.node.clone(),
                        instance_id: guest.instance_id.clone(),
                    })
                    .await;
                match stopped {
                    Ok(_) => {
                        tracing::warn!(node = %guest.node, instance_id = %guest.instance_id, "stopped a guest the cloud has no record of")
                    }
                    Err(e) => {
                        tracing::warn!(node = %guest.node, instance_id = %guest.instance_id, error = %e.message(), "cannot stop a guest the cloud has no record of")
                    }
                }
            }
        }
    }

    /// Marks silent services NOTREADY, forever; run it in its own task.
    pub async fn watch_liveness(self, timeout: Duration) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            self.registry
                .expire(time::unix_ms(), timeout.as_millis() as i64);
        }
    }
}

fn account_status(e: AccountError) -> Status {
    match e {
        AccountError::InvalidName(_) | AccountError::InvalidUserName(_) => {
            Status::invalid_argument(e.to_string())
        }
        AccountError::Exists(_) => Status::already_exists(e.to_string()),
        AccountError::NoSuchAccount(_) => Status::not_found(e.to_string()),
        AccountError::Protected(_) | AccountError::InUse(_) => {
            Status::failed_precondition(e.to_string())
        }
        AccountError::Unavailable(_) => Status::unavailable(e.to_string()),
        AccountError::Store(_) => {
            tracing::error!(error = %e, "account store failed");
            Status::unavailable(e.to_string())
        }
    }
}

fn account_proto(a: accounts::Account) -> proto::Account {
    proto::Account {
        account_id: a.account_id,
        name: a.name,
        created_unix_ms: a.created_ms,
        quota: Some(proto::Quota {
            instances: a.quota.instances,
            cores: a.quota.cores,
            memory_mib: a.quota.memory_mib,
        }),
    }
}

fn key_proto(k: accounts::AccessKey) -> proto::AccessKey {
    proto::AccessKey {
        account_id: k.account_id,
        account_name: k.account_name,
        user_name: k.user_name,
        access_key_id: k.access_key_id,
        secret_access_key: k.secret_access_key,
        created_unix_ms: k.created_ms,
    }
}

type AckStream = ReceiverStream<Result<ReportAck, Status>>;

#[tonic::async_trait]
impl CloudService for Cloud {
    type ReportClusterStream = AckStream;
    type ReportServiceStream = AckStream;

    async fn report_cluster(
        &self,
        request: Request<Streaming<ClusterReport>>,
    ) -> Result<Response<Self::ReportClusterStream>, Status> {
        let (on_report, on_end) = (self.registry.clone(), self.registry.clone());
        let instances = self.instances.clone();
        let caller = caller(&request)?.name.clone();
        Ok(Response::new(accept_reports(
            request.into_inner(),
            move |id, report| {
                if report.cluster_name != caller {
                    return Err(impersonation("cluster", &report.cluster_name, &caller));
                }
                if let Err(e) = instances.observe(&report) {
                    tracing::error!(error = %e, "cannot record instance states");
                }
                on_report.cluster_report(id, report, time::unix_ms())
            },
            move |id, why| on_end.stream_ended(id, why),
        )))
    }

    async fn report_service(
        &self,
        request: Request<Streaming<ServiceReport>>,
    ) -> Result<Response<Self::ReportServiceStream>, Status> {
        let (on_report, on_end) = (self.registry.clone(), self.registry.clone());
        let caller = caller(&request)?.clone();
        Ok(Response::new(accept_reports(
            request.into_inner(),
            move |id, report| {
                let role = match report.service_type.as_str() {
                    registry::WALRUS => Role::Walrus,
                    _ => Role::Sc,
                };
                if report.name != caller.name || role != caller.role {
                    return Err(impersonation(
                        &report.service_type,
                        &report.name,
                        &caller.to_string(),
                    ));
                }
                on_report.service_report(id, report, time::unix_ms())
            },
            move |id, why| on_end.stream_ended(id, why),
        )))
    }
}

#[tonic::async_trait]
impl AdminService for Cloud {
    async fn describe_services(
        &self,
        _request: Request<DescribeServicesRequest>,
    ) -> Result<Response<DescribeServicesReply>, Status> {
        Ok(Response::new(DescribeServicesReply {
            services: self.registry.services(time::unix_ms()),
        }))
    }

    async fn describe_nodes(
        &self,
        _request: Request<DescribeNodesRequest>,
    ) -> Result<Response<DescribeNodesReply>, Status> {
        Ok(Response::new(DescribeNodesReply {
            nodes: self.registry.nodes(),
        }))
    }

    async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let name = request.into_inner().name;
        let account = self.accounts.create(&name).map_err(account_status)?;
        tracing::info!(account = %account.name, account_id = %account.account_id, "account created");
        Ok(Response::new(account_proto(account)))
    }

    async fn set_account_quota(
        &self,
        request: Request<SetAccountQuotaRequest>,
    ) -> Result<Response<proto::Account>, Status> {
        let r = request.into_inner();
        let q = r.quota.unwrap_or_default();
        let account = self
            .accounts
            .set_quota(
                &r.account,
                accounts::Quota {
                    instances: q.instances,
                    cores: q.cores,
                    memory_mib: q.memory_mib,
                },
            )
            .map_err(account_status)?;
        tracing::info!(account = %account.name, quota = ?account.quota, "quota set");
        Ok(Response::new(account_proto(account)))
    }

    async fn describe_accounts(
        &self,
        _request: Request<DescribeAccountsRequest>,
    ) -> Result<Response<DescribeAccountsReply>, Status> {
        let accounts = self.accounts.list().map_err(account_status)?;
        Ok(Response::new(DescribeAccountsReply {
            accounts: accounts.into_iter().map(account_proto).collect(),
        }))
    }

    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<proto::DeleteAccountReply>, Status> {
        let request = request.into_inner();
        let (account, removed) = if request.purge {
            self.purge_account(&request.account)
                .await
                .map_err(account_status)?
        } else {
            let account = self
                .delete_account(&request.account)
                .await
                .map_err(account_status)?;
            (account, Vec::new())
        };
        tracing::info!(account = %account.name, removed = ?removed, "account deleted");
        Ok(Response::new(proto::DeleteAccountReply {
            account: Some(account_proto(account)),
            removed,
        }))
    }

    async fn create_access_key(
        &self,
        request: Request<CreateAccessKeyRequest>,
    ) -> Result<Response<proto::AccessKey>, Status> {
        let req = request.into_inner();
        let user = if req.user_name.is_empty() {
            accounts::ADMIN_USER
        } else {
            &req.user_name
        };
        let key = self
            .accounts
            .create_key(&req.account, user)
            .map_err(account_status)?;
        Ok(Response::new(key_proto(key)))
    }

    async fn describe_access_keys(
        &self,
        request: Request<DescribeAccessKeysRequest>,
    ) -> Result<Response<DescribeAccessKeysReply>, Status> {
        let keys = self
            .accounts
            .keys_of(&request.into_inner().account)
            .map_err(account_status)?;
        Ok(Response::new(DescribeAccessKeysReply {
            keys: keys.into_iter().map(key_proto).collect(),
        }))
    }

    async fn describe_instances(
        &self,
        _request: Request<proto::AdminDescribeInstancesRequest>,
    ) -> Result<Response<proto::AdminDescribeInstancesReply>, Status> {
        let names: std::collections::HashMap<String, String> = self
            .accounts
            .list()
            .map_err(account_status)?
            .into_iter()
            .map(|a| (a.account_id, a.name))
            .collect();
        // What each node says its guests run under.
        let virt: std::collections::HashMap<String, String> = self
            .registry
            .nodes()
            .into_iter()
            .filter_map(|v| v.node)
            .flat_map(|n| n.instances)
            .map(|i| (i.instance_id, i.virt))
            .collect();
        let mut records = self
            .instances
            .list()
            .map_err(|e| Status::unavailable(format!("cannot read the instances: {e}")))?;
        records.sort_by(|a, b| (a.launch_ms, &a.instance_id).cmp(&(b.launch_ms, &b.instance_id)));
        let instances = records
            .into_iter()
            .map(|r| proto::AdminInstance {
                account_name: names.get(&r.account_id).cloned().unwrap_or_default(),
                virt: if r.state == "running" {
                    virt.get(&r.instance_id).cloned().unwrap_or_default()
                } else {
                    String::new()
                },
                instance_id: r.instance_id,
                account_id: r.account_id,
                instance_type: r.instance_type,
                zone: r.zone,
                cluster: r.cluster,
                node: r.node,
                state: r.state,
                private_ip: r.private_ip,
                launch_unix_ms: r.launch_ms,
                detail: String::new(),
            })
            .collect::<Vec<_>>();
        let mut instances = instances;
        // And the guests nodes have that the cloud has no record of.
        let unknown = self
            .unknown_guests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        instances.extend(unknown.into_values().map(|g| proto::AdminInstance {
            instance_id: g.instance_id,
            cluster: g.cluster,
            node: g.node,
            state: "unknown".into(),
            detail: format!(
                "{}; {}",
                if g.running { "running" } else { "stopped" },
                g.detail
            ),
            launch_unix_ms: g.first_seen_ms,
            ..Default::default()
        }));
        Ok(Response::new(proto::AdminDescribeInstancesReply {
            instances,
        }))
    }

    async fn deregister_node(
        &self,
        request: Request<proto::DeregisterNodeRequest>,
    ) -> Result<Response<proto::ClusterNodeView>, Status> {
        let name = request.into_inner().node;
        let (cluster, endpoint) = self
            .registry
            .cluster_of_node(&name)
            .ok_or_else(|| Status::not_found(format!("no node {name} in this cloud")))?;
        let view = self
            .registry
            .nodes()
            .into_iter()
            .find(|v| v.cluster_name == cluster && v.node.as_ref().is_some_and(|n| n.name == name))
            .unwrap_or_default();
        let held: Vec<String> = self
            .instances
            .list()
            .map_err(|e| Status::unavailable(format!("cannot read the instances: {e}")))?
            .into_iter()
            .filter(|r| r.node == name && r.cluster == cluster && r.state != "terminated")
            .map(|r| r.instance_id)
            .collect();
        if !held.is_empty() {
            return Err(Status::failed_precondition(format!(
                "node {name} holds instances {}: terminate them first",
                held.join(", ")
            )));
        }
        let channel = self
            .trust
            .channel(&endpoint, Role::Cc)
            .map_err(|e| Status::unavailable(format!("cluster {cluster}: {e}")))?;
        proto::cluster_service_client::ClusterServiceClient::new(channel)
            .deregister_node(proto::NodeName { name: name.clone() })
            .await?;
        self.registry.forget_node(&cluster, &name)?;
        tracing::info!(node = %name, %cluster, "node deregistered");
        Ok(Response::new(view))
    }
}

#[tonic::async_trait]
impl IdentityService for Cloud {
    async fn lookup_access_key(
        &self,
        request: Request<LookupAccessKeyRequest>,
    ) -> Result<Response<proto::AccessKey>, Status> {
        let id = request.into_inner().access_key_id;
        match self.accounts.key(&id).map_err(account_status)? {
            Some(key) => Ok(Response::new(key_proto(key))),
            None => Err(Status::not_found(format!("no access key {id}"))),
        }
    }

    async fn node_may_read(
        &self,
        request: Request<proto::NodeReadRequest>,
    ) -> Result<Response<proto::NodeReadReply>, Status> {
        let r = request.into_inner();
        let internal = |e: common::store::StoreError| Status::internal(e.to_string());
        let mut wanted = std::collections::HashSet::new();
        for record in self.instances.list().map_err(internal)? {
            if record.node == r.node && record.state != "terminated" {
                wanted.insert(record.image_id);
                wanted.extend(record.kernel_id);
                wanted.extend(record.ramdisk_id);
            }
        }
        let mut allowed = false;
        for image_id in wanted {
            let image = self
                .images
                .get(&image_id)
                .map_err(|e| Status::internal(e.to_string()))?;
            if image.is_some_and(|i| i.bucket == r.bucket && i.key == r.key) {
                allowed = true;
                break;
            }
        }
        Ok(Response::new(proto::NodeReadReply { allowed }))
    }
}

/// A report stream whose reports name another component than its certificate.
fn impersonation(what: &str, named: &str, caller: &str) -> Status {
    tracing::warn!(%caller, %named, "refused a report: it names another {what}");
    Status::permission_denied(format!("{caller} may not report as {what} {named:?}"))
}
