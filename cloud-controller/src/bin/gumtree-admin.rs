//! `gumtree-admin`: the administrator's view of the cloud, from the CLC.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use common::{
    pki::{self, Identity, Role, TlsFiles},
    rpc, time,
};
use proto::{
    admin_service_client::AdminServiceClient, AdminDescribeInstancesRequest, ClusterNodeView,
    CreateAccessKeyRequest, CreateAccountRequest, DeleteAccountRequest, DeregisterNodeRequest,
    DescribeAccessKeysRequest, DescribeAccountsRequest, DescribeNodesRequest,
    DescribeServicesRequest, Quota, ServiceState, SetAccountQuotaRequest,
};
use serde::Serialize;

/// Administer a Gumtree cloud through its cloud controller.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The cloud controller's gRPC address.
    #[arg(long, env = "GUMTREE_CLC", default_value = "127.0.0.1:8780")]
    clc: String,
    /// File holding the cluster secret.
    #[arg(
        long,
        env = "GUMTREE_SECRET_FILE",
        default_value = "/var/lib/gumtree/cluster.secret"
    )]
    secret_file: PathBuf,
    /// The cluster's certificates: the CA and this tool's `admin-<name>`
    /// certificate and key.
    #[arg(long, env = "GUMTREE_PKI_DIR", default_value = "/var/lib/gumtree/pki")]
    pki_dir: PathBuf,
    /// The administrator's name in its certificate.
    #[arg(long, env = "GUMTREE_ADMIN_NAME", default_value = "admin")]
    admin_name: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Create the cluster CA in --pki-dir (nothing changes if it exists).
    Init {
        /// Make a new CA that signs from now on; the old one stays trusted
        /// until `retire-old-cas`. Reissue every certificate in between.
        #[arg(long)]
        rotate: bool,
    },
    /// Issue a component its certificate (`<role>-<name>.pem` and `.key`
    /// in --pki-dir unless --cert/--key say where). Running daemons use a
    /// replaced certificate for their next connections.
    Issue {
        /// clc, cc, nc, sc, walrus or admin.
        role: String,
        /// The component's name, as its config names it.
        name: String,
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// An address the certificate is also for (repeatable): a node's
        /// libvirtd is dialled by address for live migration.
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
    },
    /// Trust only the current CA from now on (after a rotation, once every
    /// component has a certificate from it).
    RetireOldCas,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The cluster's certificate authority and component certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Every service (cloud, clusters, storage, Walrus) and its state.
    DescribeServices,
    /// Every node with its capacity, state and virtualization.
    DescribeNodes,
    /// Every account's instances, with their node and virtualization.
    DescribeInstances,
    /// Remove a node that is gone for good (refused while it still reports
    /// or holds instances).
    DeregisterNode { node: String },
    /// Move a running instance live to another node of its cluster
    /// (MigrateInstances); the cluster chooses the node unless --to says.
    Migrate {
        instance: String,
        /// A node it may go to (repeatable).
        #[arg(long = "to")]
        to: Vec<String>,
    },
    /// Take a node out of placement for maintenance and move every running
    /// instance off it live, printing each move as it ends.
    Evacuate {
        node: String,
        /// A node the instances may go to (repeatable).
        #[arg(long = "to")]
        to: Vec<String>,
    },
    /// Put a node taken out of placement (evacuate) back in.
    Enable { node: String },
    /// What the cloud decided and did (rebalancing, migrations,
    /// evacuations), newest first, with the figures behind each.
    DescribeEvents {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Each node's load now (its latest sample: CPU, memory, disk, the
    /// cores its guests keep busy) and over the last minutes (CPU average
    /// and peak, memory, network), from the cloud's metrics.
    DescribeNodeMetrics {
        /// The window of the recent figures, in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
    },
    /// Create an account.
    CreateAccount { name: String },
    /// List accounts.
    DescribeAccounts,
    /// Delete an account and its access keys (refused while it holds
    /// instances, images or buckets, unless --purge).
    DeleteAccount {
        account: String,
        /// Terminate and delete everything it holds first, and list it.
        #[arg(long)]
        purge: bool,
    },
    /// Set an account's quota, enforced on RunInstances and CreateVolume (a
    /// limit left out is no limit).
    SetQuota {
        account: String,
        /// Most instances not yet terminated.
        #[arg(long)]
        instances: Option<u32>,
        /// Most virtual cores of those instances.
        #[arg(long)]
        cores: Option<u32>,
        /// Most memory of those instances, MiB.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Most EBS volumes held.
        #[arg(long)]
        volumes: Option<u32>,
        /// Most GiB of EBS volumes held.
        #[arg(long)]
        volume_gib: Option<u64>,
    },
    /// Create an access key for a user of an account.
    CreateAccessKey {
        #[arg(long)]
        account: String,
        /// User name; the account's admin user by default.
        #[arg(long, default_value = "admin")]
        user: String,
    },
    /// Set a user's password for the web console (read from standard
    /// input, one line, so it stays out of the process list); `--remove`
    /// takes it away.
    SetPassword {
        #[arg(long)]
        account: String,
        /// User name; the account's admin user by default.
        #[arg(long, default_value = "admin")]
        user: String,
        #[arg(long)]
        remove: bool,
    },
    /// List an account's access keys, with their secrets.
    DescribeAccessKeys {
        #[arg(long)]
        account: String,
        /// Print the secret keys too (hidden by default).
        #[arg(long)]
        show_secrets: bool,
    },
}

#[derive(Serialize)]
struct ServiceOut {
    service_type: String,
    name: String,
    partition: String,
    state: &'static str,
    endpoint: String,
    public_endpoint: String,
    last_report: String,
    detail: String,
}

#[derive(Serialize)]
struct NodeOut {
    cluster: String,
    zone: String,
    name: String,
    state: &'static str,
    endpoint: String,
    hypervisor: String,
    virt_reason: String,
    cores_total: u32,
    cores_free: u32,
    memory_mib_total: u64,
    memory_mib_free: u64,
    disk_gib_total: u64,
    disk_gib_free: u64,
    instances: usize,
    /// Cores its guests kept busy over the last sample, and the host's CPU
    /// use (percent).
    cpu_busy_cores: f64,
    host_cpu_percent: f64,
    last_report: String,
}

#[derive(Serialize)]
struct InstanceOut {
    instance_id: String,
    account: String,
    account_id: String,
    instance_type: String,
    state: String,
    zone: String,
    node: String,
    virt: String,
    private_ip: String,
    launched: String,
    /// For a guest the cloud has no record of: what the policy did.
    detail: String,
}

#[derive(Serialize)]
struct AccountOut {
    name: String,
    account_id: String,
    created: String,
    max_instances: Option<u32>,
    max_cores: Option<u32>,
    max_memory_mib: Option<u64>,
    max_volumes: Option<u32>,
    max_volume_gib: Option<u64>,
}

#[derive(Serialize)]
struct KeyOut {
    account_name: String,
    account_id: String,
    user_name: String,
    access_key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_access_key: Option<String>,
    created: String,
}

fn state_name(state: i32) -> &'static str {
    match ServiceState::try_from(state) {
        Ok(ServiceState::Enabled) => "ENABLED",
        _ => "NOTREADY",
    }
}

/// A node's state: DISABLED when it reports but is out of placement.
fn node_state(n: &proto::NodeView) -> &'static str {
    match state_name(n.state) {
        "ENABLED" if n.disabled => "DISABLED",
        s => s,
    }
}

#[derive(Serialize)]
struct MigrationOut {
    instance_id: String,
    source: String,
    destination: String,
    seconds: f64,
    /// Why it did not move (it runs where it was).
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

impl From<proto::InstanceMigration> for MigrationOut {
    fn from(m: proto::InstanceMigration) -> Self {
        Self {
            instance_id: m.instance_id,
            source: m.source,
            destination: m.destination,
            seconds: m.seconds,
            error: m.error,
        }
    }
}

const MIGRATION_HEADER: &[&str] = &["INSTANCE", "FROM", "TO", "SECONDS", "ERROR"];

fn migration_cells(m: &MigrationOut) -> Vec<String> {
    vec![
        m.instance_id.clone(),
        m.source.clone(),
        m.destination.clone(),
        if m.error.is_empty() {
            format!("{:.1}", m.seconds)
        } else {
            String::new()
        },
        m.error.clone(),
    ]
}

fn when(ms: i64) -> String {
    if ms <= 0 {
        "never".into()
    } else {
        time::iso8601_ms(ms)
    }
}

/// Prints nodes as describe-nodes does.
fn print_nodes(out: Output, nodes: Vec<ClusterNodeView>) -> anyhow::Result<()> {
    let rows: Vec<NodeOut> = nodes
        .into_iter()
        .map(|v| {
            let n = v.node.unwrap_or_default();
            let r = n.resources.unwrap_or_default();
            NodeOut {
                cluster: v.cluster_name,
                zone: v.zone,
                state: node_state(&n),
                name: n.name,
                endpoint: n.endpoint,
                hypervisor: n.hypervisor,
                virt_reason: n.virt_reason,
                cores_total: r.cores_total,
                cores_free: r.cores_free,
                memory_mib_total: r.memory_mib_total,
                memory_mib_free: r.memory_mib_free,
                disk_gib_total: r.disk_gib_total,
                disk_gib_free: r.disk_gib_free,
                instances: n.instances.len(),
                cpu_busy_cores: n.load.as_ref().map_or(0.0, |l| l.cpu_busy_cores),
                host_cpu_percent: n.load.as_ref().map_or(0.0, |l| l.host_cpu_percent),
                last_report: when(n.last_report_unix_ms),
            }
        })
        .collect();
    print(
        out,
        &[
            "CLUSTER",
            "ZONE",
            "NODE",
            "STATE",
            "CORES(FREE/TOTAL)",
            "MEMORY-MIB(FREE/TOTAL)",
            "DISK-GIB(FREE/TOTAL)",
            "INSTANCES",
            "CPU-BUSY",
            "LAST-REPORT",
            "ENDPOINT",
            "VIRT",
            "WHY",
        ],
        &rows,
        |n| {
            vec![
                n.cluster.clone(),
                n.zone.clone(),
                n.name.clone(),
                n.state.into(),
                format!("{}/{}", n.cores_free, n.cores_total),
                format!("{}/{}", n.memory_mib_free, n.memory_mib_total),
                format!("{}/{}", n.disk_gib_free, n.disk_gib_total),
                n.instances.to_string(),
                format!("{:.2}", n.cpu_busy_cores),
                n.last_report.clone(),
                n.endpoint.clone(),
                n.hypervisor.clone(),
                n.virt_reason.clone(),
            ]
        },
    )
}

/// Prints rows as aligned columns under a header, or as JSON.
fn print<T: Serialize>(
    output: Output,
    header: &[&str],
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    let mut text = String::new();
    match output {
        Output::Json => text = serde_json::to_string_pretty(rows)? + "\n",
        Output::Table => {
            let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
            table.extend(rows.iter().map(cells));
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    table
                        .iter()
                        .map(|r| r.get(i).map_or(0, |c| c.len()))
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for row in table {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                text.push_str(line.join("  ").trim_end());
                text.push('\n');
            }
        }
    }
    write_stdout(&text)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

type Client = AdminServiceClient<rpc::Client>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("gumtree-admin: {e:#}");
        std::process::exit(1);
    }
}

/// The `pki` commands: files only, no cloud controller needed.
fn run_pki(dir: &std::path::Path, command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { rotate } => {
            let outcome = pki::init_ca(dir, rotate)?;
            let what = match outcome {
                pki::CaOutcome::Created => "created the cluster CA",
                pki::CaOutcome::Kept => "the cluster CA exists already; nothing changed",
                pki::CaOutcome::Rotated => {
                    "made a new CA; reissue every certificate, then run `pki retire-old-cas`"
                }
            };
            write_stdout(&format!("{what} in {}\n", dir.display()))
        }
        PkiCommand::Issue {
            role,
            name,
            cert,
            key,
            ips,
        } => {
            let who = Identity {
                role: role.parse::<Role>()?,
                name,
            };
            let files = TlsFiles {
                cert,
                key,
                ..TlsFiles::in_dir(dir)
            };
            let (cert, key) = (files.cert(&who), files.key(&who));
            pki::issue_for_addresses(dir, &who, &ips, (&cert, &key))?;
            write_stdout(&format!(
                "issued {who}: {} and {}\n",
                cert.display(),
                key.display()
            ))
        }
        PkiCommand::RetireOldCas => {
            let n = pki::retire_old_cas(dir)?;
            write_stdout(&format!("{n} old CA(s) no longer trusted\n"))
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Pki(command) = args.command {
        return run_pki(&args.pki_dir, command);
    }
    let trust = rpc::Trust::load(
        &args.secret_file,
        &TlsFiles::in_dir(&args.pki_dir),
        &Identity {
            role: Role::Admin,
            name: args.admin_name.clone(),
        },
    )?;
    let mut client: Client = AdminServiceClient::new(
        trust
            .connect(&args.clc, Role::Clc)
            .await
            .with_context(|| format!("cannot reach the cloud controller at {}", args.clc))?,
    );
    let out = args.output;
    match args.command {
        Command::Pki(_) => unreachable!("handled above"),
        Command::DescribeServices => {
            let reply = client
                .describe_services(DescribeServicesRequest {})
                .await?
                .into_inner();
            let rows: Vec<ServiceOut> = reply
                .services
                .into_iter()
                .map(|s| ServiceOut {
                    state: state_name(s.state),
                    last_report: when(s.last_report_unix_ms),
                    service_type: s.service_type,
                    name: s.name,
                    partition: s.partition,
                    endpoint: s.endpoint,
                    public_endpoint: s.public_endpoint,
                    detail: s.detail,
                })
                .collect();
            print(
                out,
                &[
                    "TYPE",
                    "NAME",
                    "PARTITION",
                    "STATE",
                    "ENDPOINT",
                    "LAST-REPORT",
                    "DETAIL",
                ],
                &rows,
                |s| {
                    vec![
                        s.service_type.clone(),
                        s.name.clone(),
                        s.partition.clone(),
                        s.state.into(),
                        s.endpoint.clone(),
                        s.last_report.clone(),
                        s.detail.clone(),
                    ]
                },
            )
        }
        Command::DescribeNodes => {
            let reply = client
                .describe_nodes(DescribeNodesRequest {})
                .await?
                .into_inner();
            print_nodes(out, reply.nodes)
        }
        Command::DescribeInstances => {
            let reply = client
                .describe_instances(AdminDescribeInstancesRequest {})
                .await?
                .into_inner();
            let rows: Vec<InstanceOut> = reply
                .instances
                .into_iter()
                .map(|i| InstanceOut {
                    instance_id: i.instance_id,
                    account: i.account_name,
                    account_id: i.account_id,
                    instance_type: i.instance_type,
                    state: i.state,
                    zone: i.zone,
                    node: i.node,
                    virt: i.virt,
                    private_ip: i.private_ip,
                    launched: when(i.launch_unix_ms),
                    detail: i.detail,
                })
                .collect();
            print(
                out,
                &[
                    "INSTANCE",
                    "ACCOUNT",
                    "TYPE",
                    "STATE",
                    "ZONE",
                    "NODE",
                    "VIRT",
                    "PRIVATE-IP",
                    "LAUNCHED",
                    "DETAIL",
                ],
                &rows,
                |i| {
                    vec![
                        i.instance_id.clone(),
                        i.account.clone(),
                        i.instance_type.clone(),
                        i.state.clone(),
                        i.zone.clone(),
                        i.node.clone(),
                        i.virt.clone(),
                        i.private_ip.clone(),
                        i.launched.clone(),
                        i.detail.clone(),
                    ]
                },
            )
        }
        Command::Migrate { instance, to } => {
            let reply = client
                .migrate_instances(proto::MigrateInstancesRequest {
                    instance_id: instance,
                    source_host: String::new(),
                    destination_hosts: to,
                })
                .await?
                .into_inner();
            let rows: Vec<MigrationOut> = reply.migrations.into_iter().map(Into::into).collect();
            print(out, MIGRATION_HEADER, &rows, migration_cells)
        }
        Command::Evacuate { node, to } => {
            let mut stream = client
                .evacuate_node(proto::EvacuateNodeRequest {
                    node: node.clone(),
                    destination_hosts: to,
                })
                .await?
                .into_inner();
            if let Output::Table = out {
                write_stdout(&format!(
                    "{node} is out of placement; moving its running instances off it\n"
                ))?;
            }
            let mut rows = Vec::new();
            while let Some(m) = stream.message().await? {
                let m = MigrationOut::from(m);
                if let Output::Table = out {
                    let line = if m.error.is_empty() {
                        format!(
                            "{} moved from {} to {} in {:.1} s\n",
                            m.instance_id, m.source, m.destination, m.seconds
                        )
                    } else {
                        format!("{} did not move: {}\n", m.instance_id, m.error)
                    };
                    write_stdout(&line)?;
                }
                rows.push(m);
            }
            let stayed = rows.iter().filter(|m| !m.error.is_empty()).count();
            match out {
                Output::Json => print(out, MIGRATION_HEADER, &rows, migration_cells)?,
                Output::Table => write_stdout(&format!(
                    "{} of {} instance(s) moved; {node} stays out of placement until `gumtree-admin enable {node}`\n",
                    rows.len() - stayed,
                    rows.len()
                ))?,
            }
            if stayed > 0 {
                anyhow::bail!("{stayed} instance(s) did not move off {node}");
            }
            Ok(())
        }
        Command::DescribeNodeMetrics { minutes } => {
            #[derive(Serialize)]
            struct NodeMetricsOut {
                cluster: String,
                node: String,
                state: String,
                sampled: String,
                cpu_percent: f64,
                memory_percent: f64,
                disk_percent: f64,
                instances: u32,
                guests_busy_cores: f64,
                cores: u32,
                cpu_average: f64,
                cpu_maximum: f64,
                memory_average: f64,
                net_in_bytes: f64,
                net_out_bytes: f64,
                cpu_by_minute: Vec<f64>,
            }
            let reply = client
                .describe_node_metrics(proto::DescribeNodeMetricsRequest { minutes })
                .await?
                .into_inner();
            let r1 = |f: f64| (f * 10.0).round() / 10.0;
            let rows: Vec<NodeMetricsOut> = reply
                .nodes
                .into_iter()
                .map(|n| NodeMetricsOut {
                    state: state_name(n.state).to_string(),
                    sampled: if n.sampled_unix_ms > 0 {
                        when(n.sampled_unix_ms)
                    } else {
                        String::new()
                    },
                    cpu_percent: r1(n.cpu_percent),
                    memory_percent: r1(n.memory_percent),
                    disk_percent: r1(n.disk_percent),
                    guests_busy_cores: (n.guests_busy_cores * 100.0).round() / 100.0,
                    cpu_average: r1(n.cpu_average),
                    cpu_maximum: r1(n.cpu_maximum),
                    memory_average: r1(n.memory_average),
                    cpu_by_minute: n.cpu_by_minute.into_iter().map(r1).collect(),
                    cluster: n.cluster,
                    node: n.node,
                    instances: n.instances,
                    cores: n.cores,
                    net_in_bytes: n.net_in_bytes,
                    net_out_bytes: n.net_out_bytes,
                })
                .collect();
            let bytes = |b: f64| {
                if b >= 1e9 {
                    format!("{:.1}G", b / 1e9)
                } else if b >= 1e6 {
                    format!("{:.1}M", b / 1e6)
                } else if b >= 1e3 {
                    format!("{:.1}K", b / 1e3)
                } else {
                    format!("{b:.0}")
                }
            };
            print(
                out,
                &[
                    "CLUSTER",
                    "NODE",
                    "STATE",
                    "CPU%",
                    "MEM%",
                    "DISK%",
                    "INSTANCES",
                    "GUEST-CORES",
                    "CPU-AVG%",
                    "CPU-MAX%",
                    "NET-IN",
                    "NET-OUT",
                ],
                &rows,
                |n| {
                    vec![
                        n.cluster.clone(),
                        n.node.clone(),
                        n.state.clone(),
                        format!("{:.1}", n.cpu_percent),
                        format!("{:.1}", n.memory_percent),
                        format!("{:.1}", n.disk_percent),
                        n.instances.to_string(),
                        format!("{:.2}/{}", n.guests_busy_cores, n.cores),
                        format!("{:.1}", n.cpu_average),
                        format!("{:.1}", n.cpu_maximum),
                        bytes(n.net_in_bytes),
                        bytes(n.net_out_bytes),
                    ]
                },
            )
        }
        Command::DescribeEvents { limit } => {
            #[derive(Serialize)]
            struct EventOut {
                time: String,
                kind: String,
                cluster: String,
                node: String,
                instance_id: String,
                message: String,
            }
            let reply = client
                .describe_events(proto::DescribeEventsRequest { limit })
                .await?
                .into_inner();
            let rows: Vec<EventOut> = reply
                .events
                .into_iter()
                .map(|e| EventOut {
                    time: when(e.unix_ms),
                    kind: e.kind,
                    cluster: e.cluster,
                    node: e.node,
                    instance_id: e.instance_id,
                    message: e.message,
                })
                .collect();
            print(
                out,
                &["TIME", "KIND", "CLUSTER", "NODE", "INSTANCE", "WHAT"],
                &rows,
                |e| {
                    vec![
                        e.time.clone(),
                        e.kind.clone(),
                        e.cluster.clone(),
                        e.node.clone(),
                        e.instance_id.clone(),
                        e.message.clone(),
                    ]
                },
            )
        }
        Command::Enable { node } => {
            let view = client
                .enable_node(proto::EnableNodeRequest { node })
                .await?
                .into_inner();
            print_nodes(out, vec![view])
        }
        Command::DeregisterNode { node } => {
            let view = client
                .deregister_node(DeregisterNodeRequest { node })
                .await?
                .into_inner();
            print_nodes(out, vec![view])
        }
        Command::CreateAccount { name } => {
            let a = client
                .create_account(CreateAccountRequest { name })
                .await?
                .into_inner();
            print_accounts(out, vec![a])
        }
        Command::SetQuota {
            account,
            instances,
            cores,
            memory_mib,
            volumes,
            volume_gib,
        } => {
            let a = client
                .set_account_quota(SetAccountQuotaRequest {
                    account,
                    quota: Some(Quota {
                        instances,
                        cores,
                        memory_mib,
                        volumes,
                        volume_gib,
                    }),
                })
                .await?
                .into_inner();
            print_accounts(out, vec![a])
        }
        Command::DescribeAccounts => {
            let reply = client
                .describe_accounts(DescribeAccountsRequest {})
                .await?
                .into_inner();
            print_accounts(out, reply.accounts)
        }
        Command::DeleteAccount { account, purge } => {
            let reply = client
                .delete_account(DeleteAccountRequest { account, purge })
                .await?
                .into_inner();
            match out {
                Output::Json => write_stdout(&format!(
                    "{}\n",
                    serde_json::json!({
                        "account": reply.account.as_ref().map(|a| serde_json::json!({
                            "name": a.name, "account_id": a.account_id,
                        })),
                        "removed": reply.removed,
                    })
                )),
                Output::Table => {
                    let mut text = String::new();
                    for item in &reply.removed {
                        text.push_str(&format!("removed {item}\n"));
                    }
                    if let Some(a) = &reply.account {
                        text.push_str(&format!("deleted account {} ({})\n", a.name, a.account_id));
                    }
                    write_stdout(&text)
                }
            }
        }
        Command::CreateAccessKey { account, user } => {
            let k = client
                .create_access_key(CreateAccessKeyRequest {
                    account,
                    user_name: user,
                })
                .await?
                .into_inner();
            print_keys(out, vec![k], true)
        }
        Command::SetPassword {
            account,
            user,
            remove,
        } => {
            let password = if remove {
                String::new()
            } else {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                anyhow::ensure!(!line.is_empty(), "no password on standard input");
                line
            };
            let r = client
                .set_login_profile(proto::SetLoginProfileRequest {
                    account,
                    user_name: user,
                    password,
                })
                .await?
                .into_inner();
            println!(
                "{} {} {}",
                r.account_name,
                r.user_name,
                if r.has_password {
                    "password set"
                } else {
                    "password removed"
                }
            );
            Ok(())
        }
        Command::DescribeAccessKeys {
            account,
            show_secrets,
        } => {
            let reply = client
                .describe_access_keys(DescribeAccessKeysRequest { account })
                .await?
                .into_inner();
            print_keys(out, reply.keys, show_secrets)
        }
    }
}

fn print_accounts(out: Output, accounts: Vec<proto::Account>) -> anyhow::Result<()> {
    let rows: Vec<AccountOut> = accounts
        .into_iter()
        .map(|a| {
            let q = a.quota.unwrap_or_default();
            AccountOut {
                name: a.name,
                account_id: a.account_id,
                created: when(a.created_unix_ms),
                max_instances: q.instances,
                max_cores: q.cores,
                max_memory_mib: q.memory_mib,
                max_volumes: q.volumes,
                max_volume_gib: q.volume_gib,
            }
        })
        .collect();
    let limit = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    print(
        out,
        &[
            "ACCOUNT",
            "ACCOUNT-ID",
            "CREATED",
            "INSTANCES",
            "CORES",
            "MEMORY-MIB",
            "VOLUMES",
            "VOLUME-GIB",
        ],
        &rows,
        |a| {
            vec![
                a.name.clone(),
                a.account_id.clone(),
                a.created.clone(),
                limit(a.max_instances.map(|v| v.to_string())),
                limit(a.max_cores.map(|v| v.to_string())),
                limit(a.max_memory_mib.map(|v| v.to_string())),
                limit(a.max_volumes.map(|v| v.to_string())),
                limit(a.max_volume_gib.map(|v| v.to_string())),
            ]
        },
    )
}

/// Prints access keys; their secrets only when `secrets` (a new key's,
/// or asked for with --show-secrets).
fn print_keys(out: Output, keys: Vec<proto::AccessKey>, secrets: bool) -> anyhow::Result<()> {
    let rows: Vec<KeyOut> = keys
        .into_iter()
        .map(|k| KeyOut {
            account_name: k.account_name,
            account_id: k.account_id,
            user_name: k.user_name,
            access_key_id: k.access_key_id,
            secret_access_key: secrets.then_some(k.secret_access_key),
            created: when(k.created_unix_ms),
        })
        .collect();
    print(
        out,
        &[
            "ACCOUNT",
            "USER",
            "ACCESS-KEY-ID",
            "SECRET-ACCESS-KEY",
            "CREATED",
        ],
        &rows,
        |k| {
            vec![
                k.account_name.clone(),
                k.user_name.clone(),
                k.access_key_id.clone(),
                k.secret_access_key
                    .clone()
                    .unwrap_or_else(|| "(--show-secrets)".into()),
                k.created.clone(),
            ]
        },
    )
}
