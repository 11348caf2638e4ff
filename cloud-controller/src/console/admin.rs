//! The administrators' console calls: each runs the admin service's own
//! method (what `gumtree-admin` calls over gRPC), in process, and turns
//! its answer into JSON.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use proto::admin_service_server::AdminService;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Code;

use super::{json_body, json_response, read_small, ApiError, Body, Console};

fn status_error(s: tonic::Status) -> ApiError {
    let (status, code) = match s.code() {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "InvalidParameterValue"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "AlreadyExists"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "IncorrectState"),
        Code::ResourceExhausted => (StatusCode::CONFLICT, "InsufficientCapacity"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "AccessDenied"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
    };
    ApiError::new(status, code, s.message())
}

/// What an admin service method answers, or its error as the console's.
async fn answer<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ApiError> {
    call.await
        .map(tonic::Response::into_inner)
        .map_err(status_error)
}

fn state_name(state: i32) -> &'static str {
    match proto::ServiceState::try_from(state) {
        Ok(proto::ServiceState::Enabled) => "ENABLED",
        Ok(proto::ServiceState::Notready) => "NOTREADY",
        _ => "UNKNOWN",
    }
}

fn quota_json(q: Option<&proto::Quota>) -> Value {
    let q = q.cloned().unwrap_or_default();
    json!({
        "instances": q.instances,
        "cores": q.cores,
        "memoryMib": q.memory_mib,
        "volumes": q.volumes,
        "volumeGib": q.volume_gib,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QuotaAsk {
    account: String,
    instances: Option<u32>,
    cores: Option<u32>,
    memory_mib: Option<u64>,
    volumes: Option<u32>,
    volume_gib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserAsk {
    account: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoveAsk {
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    destination: String,
}

fn query_number(req: &Request<Incoming>, name: &str, default: u32) -> u32 {
    common::sigv4::parse_query(req.uri().query().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// Serves `/api/admin/…` for a caller known to be an administrator.
pub async fn route(
    console: &Console,
    method: Method,
    path: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let cloud = &console.ec2.cloud;
    let value = match (method, path) {
        (Method::GET, "/api/admin/overview") => {
            let services = answer(AdminService::describe_services(
                cloud,
                tonic::Request::new(proto::DescribeServicesRequest {}),
            ))
            .await?
            .services;
            let nodes = answer(AdminService::describe_nodes(
                cloud,
                tonic::Request::new(proto::DescribeNodesRequest {}),
            ))
            .await?
            .nodes;
            json!({
                "services": services.iter().map(|s| json!({
                    "type": s.service_type, "name": s.name, "partition": s.partition,
                    "state": state_name(s.state), "endpoint": s.public_endpoint,
                    "lastReport": s.last_report_unix_ms, "detail": s.detail,
                })).collect::<Vec<_>>(),
                "nodes": nodes.iter().filter_map(|c| c.node.as_ref().map(|n| {
                    let res = n.resources.unwrap_or_default();
                    json!({
                        "cluster": c.cluster_name, "zone": c.zone, "name": n.name,
                        "state": state_name(n.state), "disabled": n.disabled,
                        "hypervisor": n.hypervisor, "virtReason": n.virt_reason,
                        "lastReport": n.last_report_unix_ms,
                        "cores": [res.cores_total - res.cores_free.min(res.cores_total), res.cores_total],
                        "memoryMib": [res.memory_mib_total - res.memory_mib_free.min(res.memory_mib_total), res.memory_mib_total],
                        "diskGib": [res.disk_gib_total - res.disk_gib_free.min(res.disk_gib_total), res.disk_gib_total],
                        "instances": n.instances.iter().map(|i| i.instance_id.clone()).collect::<Vec<_>>(),
                    })
                })).collect::<Vec<_>>(),
            })
        }
        (Method::GET, "/api/admin/instances") => {
            let list = answer(AdminService::describe_instances(
                cloud,
                tonic::Request::new(proto::AdminDescribeInstancesRequest {}),
            ))
            .await?
            .instances;
            json!({"instances": list.iter().map(|i| json!({
                "instanceId": i.instance_id, "account": i.account_name, "accountId": i.account_id,
                "state": i.state, "detail": i.detail, "type": i.instance_type, "zone": i.zone,
                "cluster": i.cluster, "node": i.node, "privateIp": i.private_ip,
                "virt": i.virt, "launched": i.launch_unix_ms,
            })).collect::<Vec<_>>()})
        }
        (Method::GET, "/api/admin/node-metrics") => {
            let minutes = query_number(&req, "minutes", 60);
            let nodes = answer(AdminService::describe_node_metrics(
                cloud,
                tonic::Request::new(proto::DescribeNodeMetricsRequest { minutes }),
            ))
            .await?
            .nodes;
            json!({"nodes": nodes.iter().map(|n| json!({
                "cluster": n.cluster, "node": n.node, "state": state_name(n.state),
                "sampled": n.sampled_unix_ms, "cpu": n.cpu_percent, "memory": n.memory_percent,
                "disk": n.disk_percent, "instances": n.instances, "cores": n.cores,
                "guestsBusyCores": n.guests_busy_cores, "cpuAverage": n.cpu_average,
                "cpuMaximum": n.cpu_maximum, "memoryAverage": n.memory_average,
                "netIn": n.net_in_bytes, "netOut": n.net_out_bytes, "cpuByMinute": n.cpu_by_minute,
            })).collect::<Vec<_>>()})
        }
        (Method::GET, "/api/admin/events") => {
            let limit = query_number(&req, "limit", 100);
            let events = answer(AdminService::describe_events(
                cloud,
                tonic::Request::new(proto::DescribeEventsRequest { limit }),
            ))
            .await?
            .events;
            json!({"events": events.iter().map(|e| json!({
                "time": e.unix_ms, "kind": e.kind, "cluster": e.cluster, "node": e.node,
                "instanceId": e.instance_id, "message": e.message,
            })).collect::<Vec<_>>()})
        }
        (Method::GET, "/api/admin/accounts") => {
            let accounts = answer(AdminService::describe_accounts(
                cloud,
                tonic::Request::new(proto::DescribeAccountsRequest {}),
            ))
            .await?
            .accounts;
            let mut out = Vec::new();
            for a in accounts {
                let keys = answer(AdminService::describe_access_keys(
                    cloud,
                    tonic::Request::new(proto::DescribeAccessKeysRequest {
                        account: a.name.clone(),
                    }),
                ))
                .await?
                .keys;
                out.push(json!({
                    "name": a.name, "accountId": a.account_id, "created": a.created_unix_ms,
                    "quota": quota_json(a.quota.as_ref()),
                    "keys": keys.iter().map(|k| json!({
                        "accessKeyId": k.access_key_id, "user": k.user_name,
                    })).collect::<Vec<_>>(),
                }));
            }
            json!({"accounts": out})
        }
        (Method::POST, "/api/admin/accounts") => {
            let ask: UserAsk = json_body(&read_small(req.into_body()).await?)?;
            let a = answer(AdminService::create_account(
                cloud,
                tonic::Request::new(proto::CreateAccountRequest { name: ask.account }),
            ))
            .await?;
            json!({"name": a.name, "accountId": a.account_id})
        }
        (Method::POST, "/api/admin/quota") => {
            let ask: QuotaAsk = json_body(&read_small(req.into_body()).await?)?;
            let a = answer(AdminService::set_account_quota(
                cloud,
                tonic::Request::new(proto::SetAccountQuotaRequest {
                    account: ask.account,
                    quota: Some(proto::Quota {
                        instances: ask.instances,
                        cores: ask.cores,
                        memory_mib: ask.memory_mib,
                        volumes: ask.volumes,
                        volume_gib: ask.volume_gib,
                    }),
                }),
            ))
            .await?;
            json!({"name": a.name, "quota": quota_json(a.quota.as_ref())})
        }
        (Method::POST, "/api/admin/keys") => {
            let ask: UserAsk = json_body(&read_small(req.into_body()).await?)?;
            let k = answer(AdminService::create_access_key(
                cloud,
                tonic::Request::new(proto::CreateAccessKeyRequest {
                    account: ask.account,
                    user_name: ask.user,
                }),
            ))
            .await?;
            json!({"accessKeyId": k.access_key_id, "secretAccessKey": k.secret_access_key,
                   "user": k.user_name, "account": k.account_name})
        }
        (Method::POST, "/api/admin/password") => {
            let ask: UserAsk = json_body(&read_small(req.into_body()).await?)?;
            let p = answer(AdminService::set_login_profile(
                cloud,
                tonic::Request::new(proto::SetLoginProfileRequest {
                    account: ask.account,
                    user_name: ask.user,
                    password: ask.password,
                }),
            ))
            .await?;
            json!({"account": p.account_name, "user": p.user_name, "hasPassword": p.has_password})
        }
        (Method::POST, "/api/admin/migrate") => {
            let ask: MoveAsk = json_body(&read_small(req.into_body()).await?)?;
            let destination_hosts = if ask.destination.is_empty() {
                vec![]
            } else {
                vec![ask.destination]
            };
            let done = answer(AdminService::migrate_instances(
                cloud,
                tonic::Request::new(proto::MigrateInstancesRequest {
                    instance_id: ask.instance_id,
                    source_host: String::new(),
                    destination_hosts,
                }),
            ))
            .await?;
            json!({"migrations": done.migrations.iter().map(migration_json).collect::<Vec<_>>()})
        }
        (Method::POST, "/api/admin/evacuate") => {
            use tokio_stream::StreamExt;
            let ask: MoveAsk = json_body(&read_small(req.into_body()).await?)?;
            let destination_hosts = if ask.destination.is_empty() {
                vec![]
            } else {
                vec![ask.destination]
            };
            let mut stream = answer(AdminService::evacuate_node(
                cloud,
                tonic::Request::new(proto::EvacuateNodeRequest {
                    node: ask.node,
                    destination_hosts,
                }),
            ))
            .await?;
            let mut moved = Vec::new();
            while let Some(m) = stream.next().await {
                moved.push(migration_json(&m.map_err(status_error)?));
            }
            json!({"migrations": moved})
        }
        (Method::POST, "/api/admin/enable-node") => {
            let ask: MoveAsk = json_body(&read_small(req.into_body()).await?)?;
            AdminService::enable_node(
                cloud,
                tonic::Request::new(proto::EnableNodeRequest { node: ask.node }),
            )
            .await
            .map_err(status_error)?;
            json!({"enabled": true})
        }
        (m, p) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("No console call {m} {p}."),
            ))
        }
    };
    Ok(json_response(StatusCode::OK, &value))
}

fn migration_json(m: &proto::InstanceMigration) -> Value {
    json!({
        "instanceId": m.instance_id, "from": m.source, "to": m.destination,
        "ok": m.error.is_empty(), "error": m.error, "seconds": m.seconds,
    })
}
