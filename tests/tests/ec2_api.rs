//! The EC2 API around instances: key pairs, tags, quotas, account
//! attributes, placement policies. Nodes run libvirt's test driver, so
//! instances start at once; real guests are ec2_instances.rs's.

use std::{collections::BTreeMap, fs, time::Duration};

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{wait_for, Cloud, CloudOptions},
};

fn cloud_of(nodes: usize, placement: &'static str) -> Cloud {
    cloud_with(CloudOptions {
        nodes,
        node_cores: 4,
        node_memory_mib: 4096,
        placement,
        ..Default::default()
    })
}

fn cloud_with(options: CloudOptions) -> Cloud {
    let nodes = options.nodes;
    let cloud = Cloud::start_with(options);
    wait_for(
        "walrus, cluster and nodes ENABLED",
        Duration::from_secs(30),
        || {
            let nodes_up = cloud
                .admin_json(&["describe-nodes"])
                .as_array()?
                .iter()
                .filter(|n| n["state"] == "ENABLED")
                .count();
            (nodes_up == nodes
                && cloud.service_state("walrus").as_deref() == Some("ENABLED")
                && cloud.service_state("cluster-1").as_deref() == Some("ENABLED"))
            .then_some(())
        },
    );
    cloud
}

#[test]
fn key_pairs_tags_quotas_and_account_attributes() {
    let cloud = cloud_of(3, "");
    let creds = Credentials::new(cloud.admin_key());
    let (other_key, other_secret) = cloud.new_account("other");
    let quota = cloud.admin_json(&["set-quota", "other", "--instances", "3", "--cores", "4"]);
    assert_eq!(quota[0]["max_instances"], 3, "{quota}");
    assert_eq!(
        quota[0]["max_memory_mib"],
        serde_json::Value::Null,
        "{quota}"
    );
    let home = cloud.dir().join("home-api");
    fs::create_dir_all(&home).expect("home");
    let run = clients::python_script(
        &creds,
        &home,
        &clients::script("ec2_api.py"),
        &[
            ("GUMTREE_EC2_ENDPOINT", &cloud.ec2_endpoint()),
            ("GUMTREE_S3_ENDPOINT", &cloud.s3_endpoint()),
            ("GUMTREE_OTHER_KEY", &other_key),
            ("GUMTREE_OTHER_SECRET", &other_secret),
        ],
    );
    let out = run.expect_ok();
    eprintln!("{out}");
    assert!(out.contains("ec2 api: all checks passed"), "{out}");
    // The quota shows in the admin's account list.
    let accounts = cloud.admin_json(&["describe-accounts"]);
    let other = accounts
        .as_array()
        .expect("accounts")
        .iter()
        .find(|a| a["name"] == "other")
        .expect("other");
    assert_eq!(other["max_cores"], 4, "{other}");
}

#[test]
fn every_new_instance_gets_a_public_address_from_the_pool() {
    let cloud = cloud_with(CloudOptions {
        assign_public_ips: true,
        ..Default::default()
    });
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-public");
    fs::create_dir_all(&home).expect("home");
    let ami = register_disk(&cloud, &creds, &home);
    let ec2 = cloud.ec2_endpoint();
    let aws = |args: &[&str]| -> serde_json::Value {
        let out = clients::aws(AwsCli::V2, &creds, &home, &ec2, args).expect_ok();
        if out.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&out).expect("json")
        }
    };
    let public_of = |id: &str| -> Option<String> {
        let d = aws(&["ec2", "describe-instances", "--instance-ids", id]);
        d["Reservations"][0]["Instances"][0]["PublicIpAddress"]
            .as_str()
            .map(str::to_string)
    };
    // The harness's pool: 203.0.113.10 to .12.
    let run = aws(&["ec2", "run-instances", "--image-id", &ami, "--count", "2"]);
    let ids: Vec<String> = run["Instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["InstanceId"].as_str().expect("id").to_string())
        .collect();
    let given: Vec<Option<String>> = ids.iter().map(|id| public_of(id)).collect();
    assert_eq!(
        given,
        [Some("203.0.113.10".into()), Some("203.0.113.11".into())],
        "each instance has one, from the pool"
    );
    assert_eq!(
        run["Instances"][0]["PublicIpAddress"], "203.0.113.10",
        "RunInstances already shows it"
    );
    let listed = aws(&["ec2", "describe-addresses"]);
    assert_eq!(
        listed["Addresses"],
        serde_json::json!([]),
        "not elastic IPs"
    );
    // An elastic IP takes its place; the address it had goes back.
    let eip = aws(&["ec2", "allocate-address"]);
    assert_eq!(eip["PublicIp"], "203.0.113.12");
    let eip_id = eip["AllocationId"]
        .as_str()
        .expect("allocation")
        .to_string();
    let associate = || {
        aws(&[
            "ec2",
            "associate-address",
            "--instance-id",
            &ids[0],
            "--allocation-id",
            &eip_id,
        ])
    };
    associate();
    assert_eq!(public_of(&ids[0]).as_deref(), Some("203.0.113.12"));
    let second = aws(&["ec2", "allocate-address"]);
    assert_eq!(
        second["PublicIp"], "203.0.113.10",
        "the launch address was freed"
    );
    // Disassociated with the pool exhausted: no public address at all.
    aws(&["ec2", "disassociate-address", "--public-ip", "203.0.113.12"]);
    assert_eq!(public_of(&ids[0]), None);
    // With one free again, the next disassociation gives it a new one.
    aws(&[
        "ec2",
        "release-address",
        "--allocation-id",
        second["AllocationId"].as_str().expect("allocation"),
    ]);
    associate();
    aws(&["ec2", "disassociate-address", "--public-ip", "203.0.113.12"]);
    assert_eq!(public_of(&ids[0]).as_deref(), Some("203.0.113.10"));
    // Terminated, an instance gives its address back.
    aws(&["ec2", "terminate-instances", "--instance-ids", &ids[1]]);
    wait_for("the instance gone", Duration::from_secs(20), || {
        let d = aws(&["ec2", "describe-instances", "--instance-ids", &ids[1]]);
        (d["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated").then_some(())
    });
    assert_eq!(
        aws(&["ec2", "allocate-address"])["PublicIp"],
        "203.0.113.11"
    );
}

/// Uploads a small disk image and registers it with the AWS CLI: its id.
fn register_disk(cloud: &Cloud, creds: &Credentials, home: &std::path::Path) -> String {
    let ec2 = cloud.ec2_endpoint();
    let s3 = cloud.s3_endpoint();
    let file = home.join("disk.img");
    fs::write(&file, vec![7u8; 65536]).expect("image file");
    let aws = |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, creds, home, endpoint, args);
    aws(&s3, &["s3", "mb", "s3://img"]).expect_ok();
    aws(
        &s3,
        &["s3", "cp", &file.display().to_string(), "s3://img/disk.img"],
    )
    .expect_ok();
    clients::register_image(&|args| aws(&ec2, args), "img/disk.img", "disk")
}

/// The admin's AWS CLI (v2) against a cloud's EC2 endpoint, in a home of
/// its own, with a disk image registered.
struct AdminCli {
    creds: Credentials,
    home: std::path::PathBuf,
    ec2: String,
    ami: String,
}

impl AdminCli {
    fn new(cloud: &Cloud, name: &str) -> Self {
        let creds = Credentials::new(cloud.admin_key());
        let home = cloud.dir().join(format!("home-{name}"));
        fs::create_dir_all(&home).expect("home");
        let ami = register_disk(cloud, &creds, &home);
        Self {
            creds,
            home,
            ec2: cloud.ec2_endpoint(),
            ami,
        }
    }

    fn run(&self, args: &[&str]) -> clients::Run {
        clients::aws(AwsCli::V2, &self.creds, &self.home, &self.ec2, args)
    }
}

/// Launches one instance of `ami` with the AWS CLI that `aws` runs; its id.
fn launch_one(aws: &dyn Fn(&[&str]) -> clients::Run, ami: &str) -> String {
    clients::launch_one(aws, ami)
}

/// Launches one instance of `ami` and waits until it runs; its id.
fn launch_running(aws: &dyn Fn(&[&str]) -> clients::Run, ami: &str) -> String {
    let id = clients::launch_one(aws, ami);
    aws(&["ec2", "wait", "instance-running", "--instance-ids", &id]).expect_ok();
    id
}

/// Instances per node after a MaxCount=3 launch with the AWS CLI.
fn launch_three(cloud: &Cloud) -> Vec<u64> {
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-cli");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let ami = register_disk(cloud, &creds, &home);
    let aws =
        |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, endpoint, args);
    let ids = aws(
        &ec2,
        &[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--count",
            "3",
            "--query",
            "Instances[].InstanceId",
            "--output",
            "text",
        ],
    )
    .expect_ok();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let mut wait = vec!["ec2", "wait", "instance-running", "--instance-ids"];
    wait.extend(&ids);
    aws(&ec2, &wait).expect_ok();
    wait_for(
        "the nodes to report the instances",
        Duration::from_secs(15),
        || {
            let per_node: BTreeMap<String, u64> = cloud
                .admin_json(&["describe-nodes"])
                .as_array()?
                .iter()
                .map(|n| {
                    (
                        n["name"].as_str().unwrap_or_default().to_string(),
                        n["instances"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            (per_node.values().sum::<u64>() == 3).then(|| per_node.into_values().collect())
        },
    )
}

#[test]
fn round_robin_spreads_a_reservation_over_the_nodes() {
    let cloud = cloud_of(3, "ROUNDROBIN");
    let services = cloud.admin_json(&["describe-services"]);
    let cluster = services
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "cluster-1")
        .expect("cluster");
    assert_eq!(cluster["detail"], "placement ROUNDROBIN", "{cluster}");
    assert_eq!(launch_three(&cloud), vec![1, 1, 1]);
}

#[test]
fn power_save_packs_a_reservation_onto_one_node() {
    let cloud = cloud_of(3, "POWERSAVE");
    let mut per_node = launch_three(&cloud);
    per_node.sort();
    assert_eq!(per_node, vec![0, 0, 3]);
}

mod metadata {
    use super::*;
    use common::pki::Role;
    use proto::{metadata_service_client::MetadataServiceClient, MetadataRequest};
    use tests::harness::Tier;

    type Client = MetadataServiceClient<common::rpc::Client>;

    /// A client that relays as node `node` would (with a certificate naming it).
    async fn relay(cloud: &Cloud, node: &str) -> Client {
        MetadataServiceClient::new(cloud.client("clc", Tier::Cloud, Role::Nc, node).await)
    }

    async fn get(
        c: &mut Client,
        ip: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u32, String) {
        let reply = c
            .get(MetadataRequest {
                source_ip: ip.into(),
                method: method.into(),
                path: path.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .await
            .expect("metadata call")
            .into_inner();
        (
            reply.status,
            String::from_utf8_lossy(&reply.body).into_owned(),
        )
    }

    /// Which of the two nodes hosts the guest at `ip`.
    async fn host_of(ip: &str, nodes: &mut [Client; 2]) -> usize {
        for (i, n) in nodes.iter_mut().enumerate() {
            if get(n, ip, "GET", "/latest/meta-data/", &[]).await.0 == 200 {
                return i;
            }
        }
        panic!("no node hosts {ip}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn each_guest_reads_its_own_metadata_through_its_node() {
        let mut cloud = tokio::task::block_in_place(|| cloud_of(2, "ROUNDROBIN"));
        let (ids, ips) = tokio::task::block_in_place(|| {
            let creds = Credentials::new(cloud.admin_key());
            let home = cloud.dir().join("home-imds");
            fs::create_dir_all(&home).expect("home");
            let ami = register_disk(&cloud, &creds, &home);
            let ec2 = cloud.ec2_endpoint();
            let aws = |args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, &ec2, args);
            aws(&["ec2", "create-key-pair", "--key-name", "imds-key"]).expect_ok();
            let out = aws(&[
                "ec2",
                "run-instances",
                "--image-id",
                &ami,
                "--count",
                "2",
                "--key-name",
                "imds-key",
                "--user-data",
                "hello from user-data",
                "--query",
                "Instances[].[InstanceId,PrivateIpAddress]",
                "--output",
                "text",
            ])
            .expect_ok();
            let rows: Vec<(String, String)> = out
                .lines()
                .map(|l| {
                    let mut f = l.split_whitespace();
                    (
                        f.next().expect("id").to_string(),
                        f.next().expect("ip").to_string(),
                    )
                })
                .collect();
            assert_eq!(rows.len(), 2, "{out}");
            let mut wait = vec!["ec2", "wait", "instance-running", "--instance-ids"];
            wait.extend(rows.iter().map(|r| r.0.as_str()));
            aws(&wait).expect_ok();
            (
                rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
                rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
            )
        });
        let mut nodes = [relay(&cloud, "nc-1").await, relay(&cloud, "nc-2").await];
        let mut stranger = relay(&cloud, "nc-9").await;
        for (id, ip) in ids.iter().zip(&ips) {
            // Any node of its cluster relays for it (a host's relay may serve
            // several node controllers); a stranger to the cluster gets nothing.
            for n in nodes.iter_mut() {
                assert_eq!(
                    get(n, ip, "GET", "/latest/meta-data/instance-id", &[]).await,
                    (200, id.clone())
                );
            }
            assert_eq!(
                get(
                    &mut stranger,
                    ip,
                    "GET",
                    "/latest/meta-data/instance-id",
                    &[]
                )
                .await
                .0,
                404
            );
            assert_eq!(
                get(
                    &mut nodes[0],
                    "10.255.255.254",
                    "GET",
                    "/latest/meta-data/",
                    &[]
                )
                .await
                .0,
                404
            );
            let host = 0;
            let n = &mut nodes[host];
            assert_eq!(
                get(n, ip, "GET", "/latest/user-data", &[]).await,
                (200, "hello from user-data".into())
            );
            assert_eq!(
                get(n, ip, "GET", "/latest/meta-data/local-ipv4", &[]).await,
                (200, ip.clone())
            );
            let key = get(
                n,
                ip,
                "GET",
                "/latest/meta-data/public-keys/0/openssh-key",
                &[],
            )
            .await;
            assert!(key.0 == 200 && key.1.starts_with("ssh-rsa "), "{key:?}");
            let doc = get(
                n,
                ip,
                "GET",
                "/latest/dynamic/instance-identity/document",
                &[],
            )
            .await;
            let doc: serde_json::Value = serde_json::from_str(&doc.1).expect("identity document");
            assert_eq!(doc["instanceId"], id.as_str());
            // IMDSv2: a token for this guest works here and nowhere else.
            let (status, token) = get(
                n,
                ip,
                "PUT",
                "/latest/api/token",
                &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
            )
            .await;
            assert_eq!(status, 200);
            let with = [("X-aws-ec2-metadata-token", token.as_str())];
            assert_eq!(
                get(n, ip, "GET", "/latest/meta-data/instance-id", &with).await,
                (200, id.clone())
            );
        }
        // A token of one guest is refused for the other.
        let first = host_of(&ips[0], &mut nodes).await;
        let (_, token) = get(
            &mut nodes[first],
            &ips[0],
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .await;
        let second = host_of(&ips[1], &mut nodes).await;
        assert_eq!(
            get(
                &mut nodes[second],
                &ips[1],
                "GET",
                "/latest/meta-data/instance-id",
                &[("X-aws-ec2-metadata-token", token.as_str())]
            )
            .await
            .0,
            401
        );
        // "Tokens required": IMDSv1 reads are refused, IMDSv2 still works.
        let config = cloud.dir().join("clc.toml");
        let text = fs::read_to_string(&config).expect("config");
        fs::write(&config, format!("{text}metadata_tokens_required = true\n")).expect("config");
        tokio::task::block_in_place(|| {
            cloud.terminate("clc", Duration::from_secs(10));
            cloud.restart("clc");
        });
        let mut n = relay(&cloud, &format!("nc-{}", first + 1)).await;
        assert_eq!(
            get(&mut n, &ips[0], "GET", "/latest/meta-data/instance-id", &[])
                .await
                .0,
            401
        );
        let (_, token) = get(
            &mut n,
            &ips[0],
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .await;
        assert_eq!(
            get(
                &mut n,
                &ips[0],
                "GET",
                "/latest/meta-data/instance-id",
                &[("X-aws-ec2-metadata-token", token.as_str())]
            )
            .await,
            (200, ids[0].clone())
        );
    }
}

#[test]
fn a_launch_on_a_node_that_hangs_ends_with_an_ec2_reason() {
    let cloud = cloud_of(1, "");
    let cli = AdminCli::new(&cloud, "hang");
    let (ami, aws) = (&cli.ami, |args: &[&str]| cli.run(args));
    // The node hangs (as a host under a frozen hypervisor would) but the
    // cluster still takes it for ready when the launch is placed.
    cloud.signal("nc-1", nix::sys::signal::Signal::SIGSTOP);
    let id = launch_one(&aws, ami);
    let reason = wait_for("the launch to fail", Duration::from_secs(60), || {
        let out = aws(&["ec2", "describe-instances", "--instance-ids", &id]).expect_ok();
        let d: serde_json::Value = serde_json::from_str(&out).ok()?;
        let i = &d["Reservations"][0]["Instances"][0];
        (i["State"]["Name"] == "terminated").then(|| i["StateReason"].clone())
    });
    cloud.signal("nc-1", nix::sys::signal::Signal::SIGCONT);
    assert_eq!(
        reason,
        serde_json::json!({"Code": "Server.InternalError", "Message": "Server.InternalError: the node did not answer"}),
        "{reason}"
    );
}

#[test]
fn administrators_see_every_instance_and_deregister_gone_nodes() {
    let mut cloud = cloud_of(2, "");
    let (other_key, other_secret) = cloud.new_account("other");
    let other = Credentials::new((other_key, other_secret));
    let admin = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-admin-view");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let ami = register_disk(&cloud, &other, &home);
    let as_other = |args: &[&str]| clients::aws(AwsCli::V2, &other, &home, &ec2, args);
    let as_admin = |args: &[&str]| clients::aws(AwsCli::V2, &admin, &home, &ec2, args);
    let id = launch_one(&as_other, &ami);
    as_other(&["ec2", "wait", "instance-running", "--instance-ids", &id]).expect_ok();
    let ids = |out: String| -> Vec<String> {
        let d: serde_json::Value = serde_json::from_str(&out).expect("json");
        d["Reservations"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["Instances"].as_array().cloned().unwrap_or_default())
            .map(|i| i["InstanceId"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // Eucalyptus' verbose form: the administrator sees other accounts'.
    assert_eq!(
        ids(as_admin(&["ec2", "describe-instances"]).expect_ok()),
        Vec::<String>::new()
    );
    let verbose = as_admin(&["ec2", "describe-instances", "--instance-ids", "verbose"]).expect_ok();
    assert_eq!(ids(verbose.clone()), [id.as_str()], "{verbose}");
    let other_id = cloud
        .admin_json(&["describe-accounts"])
        .as_array()
        .expect("accounts")
        .iter()
        .find(|a| a["name"] == "other")
        .and_then(|a| a["account_id"].as_str().map(str::to_string))
        .expect("other's id");
    assert!(
        verbose.contains(&format!("\"OwnerId\": \"{other_id}\"")),
        "{verbose}"
    );
    // Anyone else's verbose is just their own.
    let mine = as_other(&["ec2", "describe-instances", "--instance-ids", "verbose"]).expect_ok();
    assert_eq!(ids(mine), [id.as_str()]);

    // gumtree-admin describe-instances: account, node, virtualization, state.
    let listed = wait_for(
        "the node to report the instance",
        Duration::from_secs(10),
        || {
            let all = cloud.admin_json(&["describe-instances"]);
            let i = all
                .as_array()?
                .iter()
                .find(|i| i["instance_id"] == id.as_str())?
                .clone();
            (i["virt"] == "qemu").then_some(i)
        },
    );
    assert_eq!(listed["account"], "other", "{listed}");
    assert_eq!(listed["state"], "running", "{listed}");
    let busy = listed["node"].as_str().expect("node").to_string();
    let idle = if busy == "nc-1" { "nc-2" } else { "nc-1" };

    // deregister-node: not while a node reports or holds instances.
    let refused = cloud.admin(&["deregister-node", &busy]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(&id) && said.contains("holds instances"),
        "{said}"
    );
    let refused = cloud.admin(&["deregister-node", idle]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ENABLED"),
        "{refused:?}"
    );
    let unknown = cloud.admin(&["deregister-node", "nc-9"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no node nc-9"),
        "{unknown:?}"
    );
    // A node gone for good is removed, from the CLC's view and its cluster's.
    cloud.kill(idle);
    wait_for(
        "the idle node to be NOTREADY",
        Duration::from_secs(20),
        || (cloud.node_state(idle).as_deref() == Some("NOTREADY")).then_some(()),
    );
    let gone = cloud.admin(&["deregister-node", idle]);
    assert!(gone.status.success(), "{gone:?}");
    let names: Vec<String> = cloud
        .admin_json(&["describe-nodes"])
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, [busy.as_str()]);
    cloud.kill("cluster-1");
    cloud.restart("cluster-1");
    wait_for("the cluster back", Duration::from_secs(20), || {
        (cloud.node_state(&busy).as_deref() == Some("ENABLED")).then_some(())
    });
    assert_eq!(
        cloud.node_state(idle),
        None,
        "the cluster forgot it durably"
    );

    // An account that still holds an instance, an image or a bucket is not
    // deleted (Euare's DeleteAccount comes to the same check: ec2_api.py).
    let refused = cloud.admin(&["delete-account", "other"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    for held in [id.as_str(), ami.as_str(), "1 bucket(s) (img)"] {
        assert!(said.contains(held), "{held} in {said}");
    }
    as_other(&["ec2", "terminate-instances", "--instance-ids", &id]).expect_ok();
    as_other(&["ec2", "wait", "instance-terminated", "--instance-ids", &id]).expect_ok();
    let still = cloud.admin(&["delete-account", "other"]);
    assert!(
        String::from_utf8_lossy(&still.stderr).contains(&ami),
        "{still:?}"
    );
    as_other(&["ec2", "deregister-image", "--image-id", &ami]).expect_ok();
    let s3 = cloud.s3_endpoint();
    clients::aws(
        AwsCli::V2,
        &other,
        &home,
        &s3,
        &["s3", "rb", "--force", "s3://img"],
    )
    .expect_ok();
    cloud.admin_json(&["delete-account", "other"]);
    let accounts = cloud.admin_json(&["describe-accounts"]);
    assert!(
        !accounts
            .as_array()
            .expect("accounts")
            .iter()
            .any(|a| a["name"] == "other"),
        "{accounts}"
    );
}

#[test]
fn status_checks_fail_while_the_node_is_silent() {
    let cloud = cloud_of(1, "");
    let cli = AdminCli::new(&cloud, "status");
    let (ami, aws) = (&cli.ami, |args: &[&str]| cli.run(args));
    let id = launch_running(&aws, ami);
    let status = || -> (String, String, String) {
        let out = aws(&["ec2", "describe-instance-status", "--instance-ids", &id]).expect_ok();
        let d: serde_json::Value = serde_json::from_str(&out).expect("json");
        let s = &d["InstanceStatuses"][0];
        (
            s["SystemStatus"]["Status"]
                .as_str()
                .unwrap_or_default()
                .into(),
            s["InstanceStatus"]["Status"]
                .as_str()
                .unwrap_or_default()
                .into(),
            s["InstanceStatus"]["Details"][0]["Status"]
                .as_str()
                .unwrap_or_default()
                .into(),
        )
    };
    // libvirt's test driver runs no guest: nothing ever shows on its
    // console, so its own check has not passed (real guests pass it once
    // they print: ec2_instances.py).
    assert_eq!(
        status(),
        ("ok".into(), "initializing".into(), "initializing".into())
    );
    // The node stops reporting (hung): nobody can vouch for its guests.
    cloud.signal("nc-1", nix::sys::signal::Signal::SIGSTOP);
    let seen = wait_for("the checks to fail", Duration::from_secs(30), || {
        let s = status();
        (s.0 != "ok").then_some(s)
    });
    cloud.signal("nc-1", nix::sys::signal::Signal::SIGCONT);
    assert_eq!(
        seen,
        (
            "impaired".into(),
            "insufficient-data".into(),
            "insufficient-data".into()
        )
    );
    wait_for("the checks to pass again", Duration::from_secs(30), || {
        (status().0 == "ok").then_some(())
    });
}

#[test]
fn a_terminate_asked_while_the_node_is_down_is_carried_out_when_it_is_back() {
    let mut cloud = cloud_of(1, "");
    let cli = AdminCli::new(&cloud, "intent");
    let (ami, aws) = (&cli.ami, |args: &[&str]| cli.run(args));
    let id = launch_running(&aws, ami);
    let state = || clients::instance_state(&aws, &id);
    cloud.kill("nc-1");
    let out = aws(&["ec2", "terminate-instances", "--instance-ids", &id]).expect_ok();
    assert!(out.contains("shutting-down"), "{out}");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        state(),
        "shutting-down",
        "not terminated while its node is down"
    );
    cloud.restart("nc-1");
    wait_for(
        "the termination to be carried out",
        Duration::from_secs(30),
        || (state() == "terminated").then_some(()),
    );
    // The guest is gone from the node too (its reports catch up).
    wait_for("the node to hold nothing", Duration::from_secs(10), || {
        let nodes = cloud.admin_json(&["describe-nodes"]);
        let n = nodes
            .as_array()?
            .iter()
            .find(|n| n["name"] == "nc-1")?
            .clone();
        (n["state"] == "ENABLED" && n["instances"] == 0).then_some(())
    });
}

#[test]
fn an_account_is_purged_with_everything_it_holds() {
    let cloud = cloud_of(1, "");
    let lab = Credentials::new(cloud.new_account("lab"));
    let home = cloud.dir().join("home-lab");
    fs::create_dir_all(&home).expect("home");
    let ami = register_disk(&cloud, &lab, &home);
    let ec2 = cloud.ec2_endpoint();
    let aws = |args: &[&str]| clients::aws(AwsCli::V2, &lab, &home, &ec2, args);
    let id = launch_one(&aws, &ami);
    aws(&["ec2", "wait", "instance-running", "--instance-ids", &id]).expect_ok();
    let ip = aws(&[
        "ec2",
        "allocate-address",
        "--query",
        "PublicIp",
        "--output",
        "text",
    ])
    .expect_ok()
    .trim()
    .to_string();
    aws(&["ec2", "create-key-pair", "--key-name", "lab-key"]).expect_ok();
    aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "web",
        "--description",
        "web",
    ])
    .expect_ok();
    aws(&[
        "ec2",
        "create-tags",
        "--resources",
        &id,
        "--tags",
        "Key=owner,Value=lab",
    ])
    .expect_ok();
    // Without --purge: refused, nothing touched.
    let refused = cloud.admin(&["delete-account", "lab"]);
    assert!(!refused.status.success());
    aws(&["ec2", "describe-instances", "--instance-ids", &id]).expect_ok();
    // With it: everything goes, and the answer says what.
    let purged = cloud.admin(&["delete-account", "lab", "--purge"]);
    let said = String::from_utf8_lossy(&purged.stdout);
    assert!(purged.status.success(), "{purged:?}");
    for item in [
        format!("removed instance {id} (terminating)"),
        format!("removed image {ami}"),
        "removed bucket img (with its objects)".to_string(),
        format!("removed address {ip}"),
        "removed key pair lab-key".to_string(),
        "(web)".to_string(),
        "removed 1 tag(s)".to_string(),
        "deleted account lab".to_string(),
    ] {
        assert!(said.contains(&item), "{item:?} in {said}");
    }
    let accounts = cloud.admin_json(&["describe-accounts"]);
    assert!(!accounts.to_string().contains("\"lab\""), "{accounts}");
    // Its key no longer works; its instance ends; its names are free again.
    aws(&["ec2", "describe-instances"]).expect_err("AuthFailure");
    wait_for("the instance terminated", Duration::from_secs(30), || {
        let all = cloud.admin_json(&["describe-instances"]);
        all.as_array()?
            .iter()
            .find(|i| i["instance_id"] == id.as_str() && i["state"] == "terminated")
            .map(|_| ())
    });
    let admin = Credentials::new(cloud.admin_key());
    let admin_home = cloud.dir().join("home-purge-admin");
    fs::create_dir_all(&admin_home).expect("home");
    let s3 = cloud.s3_endpoint();
    clients::aws(
        AwsCli::V2,
        &admin,
        &admin_home,
        &s3,
        &["s3", "mb", "s3://img"],
    )
    .expect_ok();
    let again = clients::aws(
        AwsCli::V2,
        &admin,
        &admin_home,
        &ec2,
        &[
            "ec2",
            "allocate-address",
            "--query",
            "PublicIp",
            "--output",
            "text",
        ],
    )
    .expect_ok();
    assert_eq!(again.trim(), ip, "the address went back to the pool");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_the_cloud_has_no_record_of_is_shown_and_stopped() {
    let cloud = tokio::task::block_in_place(|| {
        cloud_with(CloudOptions {
            cached_images: tests::node::tiny_guest_images(),
            clc_config: "unknown_guest_grace_secs = 3\n".into(),
            ..Default::default()
        })
    });
    // A guest started on the node behind the CLC's back (as a cluster
    // controller would, with no instance record).
    let id = "i-0badc0ffee0000001";
    let mut nc = tests::node::node(&cloud, "nc-1").await;
    let spec = tests::node::tiny_guest_spec(&cloud, id);
    let status = tests::node::run(&mut nc, &cloud, spec).await;
    assert_eq!(
        status.state,
        proto::InstanceState::Running as i32,
        "{status:?}"
    );
    let unknown = |cloud: &Cloud| -> Option<serde_json::Value> {
        cloud
            .admin_json(&["describe-instances"])
            .as_array()?
            .iter()
            .find(|i| i["instance_id"] == id)
            .cloned()
    };
    // The administrator sees it at once, then the policy stops it.
    let shown = tokio::task::block_in_place(|| {
        wait_for("the guest shown", Duration::from_secs(15), || {
            unknown(&cloud)
        })
    });
    assert_eq!(shown["state"], "unknown", "{shown}");
    assert_eq!(shown["node"], "nc-1", "{shown}");
    let stopped = tokio::task::block_in_place(|| {
        wait_for(
            "the guest stopped by policy",
            Duration::from_secs(30),
            || {
                unknown(&cloud).filter(|i| {
                    i["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("stopped; ") && d.contains("policy: stop"))
                })
            },
        )
    });
    assert!(
        stopped["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not in the cloud's records"),
        "{stopped}"
    );
    let on_node = nc
        .terminate_instance(proto::InstanceRef {
            instance_id: id.into(),
        })
        .await
        .expect("the node still has it (stopped, not destroyed)")
        .into_inner();
    assert_eq!(on_node.instance_id, id);
    assert!(cloud
        .log("clc")
        .contains("stopped a guest the cloud has no record of"));
}

#[test]
fn a_stop_and_a_start_asked_while_the_node_is_away_are_carried_out_when_it_is_back() {
    use nix::sys::signal::Signal;
    let cloud = cloud_of(1, "");
    let cli = AdminCli::new(&cloud, "intent-stop");
    let (ami, aws) = (&cli.ami, |args: &[&str]| cli.run(args));
    let id = launch_running(&aws, ami);
    let state = || clients::instance_state(&aws, &id);
    // The node hangs (its process frozen: libvirt's test driver lives in
    // it, so a kill would lose the guest).
    let away = |what: &str, args: &[&str], shows: &str, then: &str| {
        cloud.signal("nc-1", Signal::SIGSTOP);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for("nc-1 NOTREADY", Duration::from_secs(15), || {
                (cloud.node_state("nc-1").as_deref() == Some("NOTREADY")).then_some(())
            });
            let out = aws(args).expect_ok();
            assert!(out.contains(shows), "{what}: {out}");
            std::thread::sleep(Duration::from_secs(6));
            assert_eq!(
                state(),
                shows,
                "{what}: nothing changes while the node is away"
            );
        }));
        cloud.signal("nc-1", Signal::SIGCONT);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        wait_for(
            &format!("the {what} to be carried out"),
            Duration::from_secs(30),
            || (state() == then).then_some(()),
        );
    };
    away(
        "stop",
        &["ec2", "stop-instances", "--instance-ids", &id],
        "stopping",
        "stopped",
    );
    away(
        "start",
        &["ec2", "start-instances", "--instance-ids", &id],
        "pending",
        "running",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_gone_below_the_clc_is_terminated_in_its_records() {
    let cloud = cloud_with(CloudOptions {
        assign_public_ips: true,
        ..Default::default()
    });
    let cli = AdminCli::new(&cloud, "reconcile");
    let (ami, aws) = (&cli.ami, |args: &[&str]| cli.run(args));
    let id = launch_running(&aws, ami);
    let instance = |id: &str| -> serde_json::Value {
        let out = aws(&["ec2", "describe-instances", "--instance-ids", id]).expect_ok();
        let d: serde_json::Value = serde_json::from_str(&out).expect("json");
        d["Reservations"][0]["Instances"][0].clone()
    };
    assert_eq!(instance(&id)["PublicIpAddress"], "203.0.113.10");
    let private_ip = instance(&id)["PrivateIpAddress"].clone();
    assert!(private_ip.is_string(), "{private_ip}");
    // The node loses the instance behind the CLC's back.
    let mut nc = tests::node::node(&cloud, "nc-1").await;
    let dropped = std::time::Instant::now();
    nc.terminate_instance(proto::InstanceRef {
        instance_id: id.clone(),
    })
    .await
    .expect("terminate on the node");
    let gone = wait_for("the records to follow", Duration::from_secs(60), || {
        let i = instance(&id);
        (i["State"]["Name"] == "terminated").then_some(i)
    });
    assert_eq!(
        gone["StateReason"]["Message"], "Server.InternalError: the node no longer has the instance",
        "{gone}"
    );
    // What it held is free again: the next instance gets its public address.
    wait_for("the address released", Duration::from_secs(20), || {
        instance(&id)["PublicIpAddress"].is_null().then_some(())
    });
    // Its cluster lets go of its private address too (it gives the lowest
    // free one), once the node has left it out for 30 s (checked every 5 s).
    std::thread::sleep(Duration::from_secs(45).saturating_sub(dropped.elapsed()));
    let next = launch_one(&aws, ami);
    let next = instance(&next);
    assert_eq!(next["PublicIpAddress"], "203.0.113.10", "{next}");
    assert_eq!(next["PrivateIpAddress"], private_ip, "{next}");
}

#[test]
fn a_launch_of_cached_images_does_not_need_walrus() {
    let mut cloud = cloud_of(1, "");
    let cli = AdminCli::new(&cloud, "cached");
    let (ami, aws) = (&cli.ami, |args: &[&str]| cli.run(args));
    let first = launch_one(&aws, ami);
    aws(&["ec2", "wait", "instance-running", "--instance-ids", &first]).expect_ok();
    // Walrus goes away; the node has the image cached.
    cloud.kill("walrus");
    wait_for("walrus NOTREADY", Duration::from_secs(20), || {
        (cloud.service_state("walrus").as_deref() == Some("NOTREADY")).then_some(())
    });
    let second = launch_one(&aws, ami);
    aws(&["ec2", "wait", "instance-running", "--instance-ids", &second]).expect_ok();
}
