//! Instance and node metrics from real guests (QEMU here), sampled by the
//! node every 10 s (its default): CPUUtilization of a busy and an idle
//! guest in every CloudWatch protocol, network counters while a guest
//! serves HTTP, an alarm whose EC2 stop action stops the busy instance,
//! another account seeing none of it (cloudwatch_guests.py); then the
//! administrator's view of the node's load (`describe-node-metrics`).

use std::{fs, time::Duration};

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{guest_netns, wait_for, Cloud, CloudOptions},
};

#[test]
fn guests_metrics_alarms_and_the_nodes_load() {
    if guest_netns().is_none() {
        eprintln!("skipped: needs libvirt and namespaces (run it with scripts/test)");
        return;
    }
    let tiny = clients::tiny_guest();
    let cloud = Cloud::start_with(CloudOptions {
        node_cores: 2,
        node_memory_mib: 2048,
        real_libvirt: true,
        assign_public_ips: true,
        ..Default::default()
    });
    wait_for(
        "walrus, cluster and node ENABLED",
        Duration::from_secs(30),
        || {
            let nodes = cloud.admin_json(&["describe-nodes"]);
            (nodes.as_array()?.iter().any(|n| n["state"] == "ENABLED")
                && cloud.service_state("walrus").as_deref() == Some("ENABLED")
                && cloud.service_state("cluster-1").as_deref() == Some("ENABLED"))
            .then_some(())
        },
    );
    let creds = Credentials::new(cloud.new_account("watcher"));
    let (other_key, other_secret) = cloud.new_account("stranger");
    let home = cloud.dir().join("home-cw-guests");
    fs::create_dir_all(&home).expect("home");
    let aws =
        |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, endpoint, args);
    let (_, _, ami) =
        clients::register_tiny(&tiny, &aws, &cloud.s3_endpoint(), &cloud.ec2_endpoint());
    let outside = cloud
        .outside()
        .expect("real guests have an outside world")
        .clone();
    let run = clients::python_script(
        &creds,
        &home,
        &clients::script("cloudwatch_guests.py"),
        &[
            ("GUMTREE_EC2_ENDPOINT", &cloud.ec2_endpoint()),
            (
                "GUMTREE_CW_ENDPOINT",
                &format!("{}services/CloudWatch", cloud.ec2_endpoint()),
            ),
            ("GUMTREE_AMI", &ami),
            ("GUMTREE_OTHER_KEY", &other_key),
            ("GUMTREE_OTHER_SECRET", &other_secret),
            ("GUMTREE_OUTSIDE_NETNS", &outside.netns),
            (
                "GUMTREE_AWS_V2",
                &clients::aws_binary(AwsCli::V2).display().to_string(),
            ),
            ("GUMTREE_SAMPLE_SECS", "10"),
        ],
    );
    let out = run.expect_ok();
    eprintln!("{out}");
    assert!(
        out.contains("cloudwatch guests: all checks passed"),
        "{out}"
    );

    // The administrator sees the node's load now and over the last hour.
    let nodes = cloud.admin_json(&["describe-node-metrics", "--minutes", "30"]);
    let node = &nodes[0];
    assert_eq!(node["node"], "nc-1", "{nodes}");
    assert!(
        node["sampled"].as_str().is_some_and(|s| !s.is_empty()),
        "{node}"
    );
    assert!(
        node["memory_percent"].as_f64().is_some_and(|m| m > 0.0),
        "{node}"
    );
    assert!(
        node["disk_percent"].as_f64().is_some_and(|d| d > 0.0),
        "{node}"
    );
    // The busy guest kept the host's CPU up while it ran.
    assert!(
        node["cpu_maximum"].as_f64().is_some_and(|c| c > 25.0),
        "{node}"
    );
    assert!(
        node["cpu_by_minute"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "{node}"
    );
    // The alarm's stop is in the administrators' event log.
    let events = cloud.admin_json(&["describe-events"]);
    assert!(
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "alarm"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("busy-cpu") && m.contains("ec2:stop")))),
        "{events}"
    );
    let table = cloud.admin(&["describe-node-metrics"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("CPU-AVG%") && table.contains("nc-1"),
        "{table}"
    );
    eprintln!("{table}");
}
