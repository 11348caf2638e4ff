//! The CLC's gRPC services: report streams from the tiers below, and admin calls.

use crate::instances::InstanceState;
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

pub use crate::core::{Cloud, UnknownGuest, UnknownGuestPolicy, UnknownGuests};
use crate::{
    accounts::{self, AccountError},
    registry,
};

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
        AccountError::PasswordPolicy => Status::invalid_argument(e.to_string()),
        AccountError::LoginExists(_) => Status::already_exists(e.to_string()),
        AccountError::NoLoginProfile(_) => Status::not_found(e.to_string()),
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
            volumes: a.quota.volumes,
            volume_gib: a.quota.volume_gib,
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
                // Merged first: a delta's whole is what the stream sent
                // so far. The message itself is small unless it is a
                // stream's first, whole one.
                let sent = report.clone();
                on_report.cluster_report(id, report, time::unix_ms())?;
                let whole = || match sent.delta {
                    true => on_report.cluster(&sent.cluster_name),
                    false => Some(sent.clone()),
                };
                if let Err(e) = instances.observe(&sent, whole) {
                    tracing::error!(error = %e, "cannot record instance states");
                }
                Ok(())
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
                    volumes: q.volumes,
                    volume_gib: q.volume_gib,
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

    async fn set_login_profile(
        &self,
        request: Request<proto::SetLoginProfileRequest>,
    ) -> Result<Response<proto::SetLoginProfileReply>, Status> {
        let r = request.into_inner();
        let user = if r.user_name.is_empty() {
            accounts::ADMIN_USER
        } else {
            &r.user_name
        };
        let account = self.accounts.find(&r.account).map_err(account_status)?;
        if r.password.is_empty() {
            self.accounts
                .delete_login_profile(&account.name, user)
                .map_err(account_status)?;
        } else {
            self.accounts
                .set_password(&account.name, user, &r.password, None)
                .map_err(account_status)?;
        }
        tracing::info!(account = %account.name, user, removed = r.password.is_empty(), "console password set");
        Ok(Response::new(proto::SetLoginProfileReply {
            account_name: account.name,
            user_name: user.to_string(),
            has_password: !r.password.is_empty(),
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
        // Migrating instances are `migrating` here (users see `running`).
        let migrating = self
            .migrating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let instances = records
            .into_iter()
            .map(|r| proto::AdminInstance {
                state: match migrating.get(&r.instance_id) {
                    Some(_) if r.state == InstanceState::Running => "migrating".into(),
                    _ => r.state.name().to_string(),
                },
                detail: match migrating.get(&r.instance_id) {
                    Some(from) => format!("migrating from {from}"),
                    None => String::new(),
                },
                account_name: names.get(&r.account_id).cloned().unwrap_or_default(),
                virt: if r.state == InstanceState::Running {
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
                private_ip: r.private_ip,
                launch_unix_ms: r.launch_ms,
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

    async fn migrate_instances(
        &self,
        request: Request<proto::MigrateInstancesRequest>,
    ) -> Result<Response<proto::MigrateInstancesReply>, Status> {
        let r = request.into_inner();
        let mut migrations = Vec::new();
        match (r.instance_id.is_empty(), r.source_host.is_empty()) {
            (false, true) => {
                let done = self
                    .migrate_instance(&r.instance_id, &r.destination_hosts)
                    .await
                    .map_err(admin_status)?;
                migrations.push(migration_proto(&r.instance_id, &Ok(done)));
            }
            (true, false) => {
                self.migrate_host(&r.source_host, &r.destination_hosts, &mut |id, done| {
                    migrations.push(migration_proto(id, done))
                })
                .await
                .map_err(admin_status)?;
            }
            _ => {
                return Err(Status::invalid_argument(
                    "name one instance or one source host",
                ))
            }
        }
        Ok(Response::new(proto::MigrateInstancesReply { migrations }))
    }

    type EvacuateNodeStream =
        tokio_stream::wrappers::UnboundedReceiverStream<Result<proto::InstanceMigration, Status>>;

    async fn evacuate_node(
        &self,
        request: Request<proto::EvacuateNodeRequest>,
    ) -> Result<Response<Self::EvacuateNodeStream>, Status> {
        let r = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cloud = self.clone();
        // Each migration as it ends; the evacuation goes on if the caller
        // stops listening.
        tokio::spawn(async move {
            let progress = tx.clone();
            let done = cloud
                .evacuate_node(&r.node, &r.destination_hosts, &mut |id, done| {
                    let _ = progress.send(Ok(migration_proto(id, done)));
                })
                .await;
            match done {
                Ok(moved) => tracing::info!(node = %r.node, moved, "node evacuated"),
                Err(e) => {
                    let _ = tx.send(Err(admin_status(e)));
                }
            }
        });
        Ok(Response::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    async fn describe_node_metrics(
        &self,
        request: Request<proto::DescribeNodeMetricsRequest>,
    ) -> Result<Response<proto::DescribeNodeMetricsReply>, Status> {
        let minutes = match request.into_inner().minutes {
            0 => 60,
            n => i64::from(n.min(24 * 60)),
        };
        let nodes = self
            .node_metrics(minutes)
            .map_err(|e| Status::unavailable(format!("cannot read the node metrics: {e}")))?
            .into_iter()
            .map(|n| proto::NodeMetrics {
                cluster: n.cluster,
                node: n.node,
                state: n.state,
                sampled_unix_ms: n.sampled_unix_ms,
                cpu_percent: n.cpu_percent,
                memory_percent: n.memory_percent,
                disk_percent: n.disk_percent,
                instances: n.instances,
                guests_busy_cores: n.guests_busy_cores,
                cores: n.cores,
                cpu_average: n.cpu_average,
                cpu_maximum: n.cpu_maximum,
                memory_average: n.memory_average,
                net_in_bytes: n.net_in_bytes,
                net_out_bytes: n.net_out_bytes,
                cpu_by_minute: n.cpu_by_minute,
            })
            .collect();
        Ok(Response::new(proto::DescribeNodeMetricsReply { nodes }))
    }

    async fn describe_events(
        &self,
        request: Request<proto::DescribeEventsRequest>,
    ) -> Result<Response<proto::DescribeEventsReply>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n as usize,
        };
        let events = self
            .events
            .newest(limit)
            .map_err(|e| Status::unavailable(format!("cannot read the events: {e}")))?
            .into_iter()
            .map(|e| proto::CloudEvent {
                unix_ms: e.unix_ms,
                kind: e.kind,
                cluster: e.cluster,
                node: e.node,
                instance_id: e.instance_id,
                message: e.message,
            })
            .collect();
        Ok(Response::new(proto::DescribeEventsReply { events }))
    }

    async fn enable_node(
        &self,
        request: Request<proto::EnableNodeRequest>,
    ) -> Result<Response<proto::ClusterNodeView>, Status> {
        let name = request.into_inner().node;
        self.enable_node(&name).await.map_err(admin_status)?;
        let mut view = self
            .registry
            .nodes()
            .into_iter()
            .find(|v| v.node.as_ref().is_some_and(|n| n.name == name))
            .unwrap_or_default();
        // Its cluster has put it back; its next report says so too.
        if let Some(n) = view.node.as_mut() {
            n.disabled = false;
        }
        Ok(Response::new(view))
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
            .filter(|r| {
                r.node == name && r.cluster == cluster && r.state != InstanceState::Terminated
            })
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
        // A node of the cluster an instance migrates in prepares its images
        // (the cluster chose it; the instance is still the source's).
        let migrating = self
            .migrating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let cluster = self.registry.cluster_of_node(&r.node).map(|(c, _)| c);
        for record in self.instances.list().map_err(internal)? {
            let incoming = migrating.contains_key(&record.instance_id)
                && cluster.as_deref() == Some(record.cluster.as_str());
            if (record.node == r.node || incoming) && record.state != InstanceState::Terminated {
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

/// A core error as an admin call's status.
fn admin_status(e: crate::core::CoreError) -> Status {
    use crate::core::CoreError;
    match e {
        CoreError::NotFound { .. } | CoreError::InvalidValue { .. } => {
            Status::not_found(e.to_string())
        }
        CoreError::IncorrectState { .. } => Status::failed_precondition(e.to_string()),
        CoreError::Capacity(_) => Status::resource_exhausted(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

/// One instance's migration, or why it did not move.
fn migration_proto(
    id: &str,
    done: &Result<crate::core::migrate::Migrated, crate::core::CoreError>,
) -> proto::InstanceMigration {
    match done {
        Ok(m) => proto::InstanceMigration {
            instance_id: id.to_string(),
            source: m.source.clone(),
            destination: m.destination.clone(),
            seconds: m.seconds,
            error: String::new(),
        },
        Err(e) => proto::InstanceMigration {
            instance_id: id.to_string(),
            error: e.to_string(),
            ..Default::default()
        },
    }
}

/// A report stream whose reports name another component than its certificate.
fn impersonation(what: &str, named: &str, caller: &str) -> Status {
    tracing::warn!(%caller, %named, "refused a report: it names another {what}");
    Status::permission_denied(format!("{caller} may not report as {what} {named:?}"))
}
