//! The EC2 API around instances: key pairs, tags, quotas, account
//! attributes, placement policies. Nodes run libvirt's test driver, so
//! instances start at once; real guests are ec2_instances.rs's.

use std::{collections::BTreeMap, fs, time::Duration};

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{wait_for, Cloud, CloudOptions},
};

fn cloud_of(nodes: usize, placement: &'static str) -> Cloud {
    let cloud = Cloud::start_with(CloudOptions {
        nodes,
        node_cores: 4,
        node_memory_mib: 4096,
        placement,
        ..Default::default()
    });
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

/// Instances per node after a MaxCount=3 launch with the AWS CLI.
fn launch_three(cloud: &Cloud) -> Vec<u64> {
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-cli");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let s3 = cloud.s3_endpoint();
    let file = home.join("disk.img");
    fs::write(&file, vec![7u8; 65536]).expect("image file");
    let aws =
        |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, endpoint, args);
    aws(&s3, &["s3", "mb", "s3://img"]).expect_ok();
    aws(
        &s3,
        &["s3", "cp", &file.display().to_string(), "s3://img/disk.img"],
    )
    .expect_ok();
    let ami = aws(
        &ec2,
        &[
            "ec2",
            "register-image",
            "--image-location",
            "img/disk.img",
            "--name",
            "disk",
            "--query",
            "ImageId",
            "--output",
            "text",
        ],
    )
    .expect_ok()
    .trim()
    .to_string();
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
