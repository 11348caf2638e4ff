//! A cloud made ready, and a simulated fleet for benchmarks: nodes on
//! libvirt's test driver, an image to launch and many instances launched.

use std::{path::PathBuf, time::Duration};

use crate::{
    clients::{self, AwsCli, Credentials},
    ec2client::{first, Ec2},
    harness::{wait_for, Cloud, CloudOptions},
};

/// `NAME N` from the command line, else `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A cloud of `nodes` node controllers on libvirt's test driver with room
/// for `instances` m1.small instances among them (and their private
/// addresses), as `options` says otherwise; once every node is ENABLED.
pub fn start(nodes: usize, instances: usize, options: CloudOptions) -> Cloud {
    let per_node = instances.div_ceil(nodes) + 40;
    let cloud = Cloud::start_with(CloudOptions {
        nodes,
        node_cores: per_node as u32,
        node_memory_mib: per_node as u64 * 256 + 1024,
        node_disk_gib: per_node as u64 * 5 + 100,
        // Room for every instance's private address.
        cc_config: "private_subnet = \"172.16.0.0/16\"\n".into(),
        ..options
    });
    ready(&cloud, nodes);
    cloud
}

/// What to launch on a simulated fleet: the admin's EC2 client, a 1 MiB
/// image and a security group of its own with no rules (the default group
/// lets every member reach every other, so each instance's rules would name
/// every address on record: see the note in the README).
pub fn launchable(cloud: &Cloud) -> (Ec2, String, String) {
    let dir = cloud.dir().join("bench-image");
    std::fs::create_dir_all(&dir).expect("dir");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("image");
    let ami = register(cloud, &[(disk, "")]);
    let mut c = Ec2::new(&cloud.ec2_endpoint(), cloud.admin_key());
    let created = c.ok(
        "CreateSecurityGroup",
        &[("GroupName", "bench"), ("GroupDescription", "no rules")],
    );
    let group = first(&created, "groupId").expect("group id").to_string();
    (c, ami, group)
}

/// Waits until every one of `nodes` nodes, Walrus and the cluster are ENABLED.
pub fn ready(cloud: &Cloud, nodes: usize) {
    wait_for("all nodes ENABLED", Duration::from_secs(120), || {
        let up = cloud
            .admin_json(&["describe-nodes"])
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "ENABLED")
            .count();
        (up == nodes
            && cloud.service_state("walrus").as_deref() == Some("ENABLED")
            && cloud.service_state("cluster-1").as_deref() == Some("ENABLED"))
        .then_some(())
    });
}

/// Uploads `files` to bucket `bench` as the admin and registers them as images
/// (`kind` "kernel" or "ramdisk" for those; the last, a machine image, gets the
/// ones before as its kernel and ramdisk); returns the machine image's id.
pub fn register(cloud: &Cloud, files: &[(PathBuf, &str)]) -> String {
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-bench");
    std::fs::create_dir_all(&home).expect("home");
    let s3 = cloud.s3_endpoint();
    let ec2 = cloud.ec2_endpoint();
    let aws =
        |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, endpoint, args);
    aws(&s3, &["s3", "mb", "s3://bench"]).expect_ok();
    let mut ids: Vec<(String, String)> = Vec::new();
    for (path, kind) in files {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let mut cp = vec![
            "s3".to_string(),
            "cp".into(),
            path.display().to_string(),
            format!("s3://bench/{name}"),
        ];
        if !kind.is_empty() {
            cp.extend(["--metadata".into(), format!("image-type={kind}")]);
        }
        let cp: Vec<&str> = cp.iter().map(String::as_str).collect();
        aws(&s3, &cp).expect_ok();
        let mut reg = vec![
            "ec2".to_string(),
            "register-image".into(),
            "--image-location".into(),
            format!("bench/{name}"),
            "--name".into(),
            format!("bench-{name}"),
            "--query".into(),
            "ImageId".into(),
            "--output".into(),
            "text".into(),
        ];
        if kind.is_empty() {
            for (k, id) in &ids {
                reg.extend([format!("--{k}-id"), id.clone()]);
            }
        }
        let reg: Vec<&str> = reg.iter().map(String::as_str).collect();
        let id = aws(&ec2, &reg).expect_ok().trim().to_string();
        ids.push((kind.to_string(), id));
    }
    ids.pop().expect("an image").1
}

/// Launches `n` m1.small instances of `ami` in `group`, 100 a call (retrying
/// 503s as the SDKs do), and waits until none is pending; says how many of
/// `total` did not start.
pub fn fill(c: &mut Ec2, ami: &str, group: &str, n: usize, total: usize) {
    let mut left = n;
    let mut retried = 0;
    while left > 0 {
        let batch = left.min(100).to_string();
        let (status, body) = c.call(
            "RunInstances",
            &[
                ("ImageId", ami),
                ("InstanceType", "m1.small"),
                ("MinCount", &batch),
                ("MaxCount", &batch),
                ("SecurityGroupId.1", group),
            ],
        );
        // A client retries what the cloud answers 503 (as the SDKs do).
        if status == 503 && retried < 20 {
            retried += 1;
            eprintln!("RunInstances answered 503, retried: {body}");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        assert_eq!(status, 200, "RunInstances: {body}");
        left -= left.min(100);
    }
    if retried > 0 {
        println!("(filling took {retried} retries of a 503)");
    }
    // Until none is pending: running, or terminated by a failed start
    // (counted and shown, not hidden).
    let count = |c: &mut Ec2, state: &str| {
        c.ok(
            "DescribeInstances",
            &[
                ("Filter.1.Name", "instance-state-name"),
                ("Filter.1.Value.1", state),
            ],
        )
        .matches("<instanceId>")
        .count()
    };
    wait_for("no instance pending", Duration::from_secs(600), || {
        (count(c, "pending") == 0).then_some(())
    });
    let running = count(c, "running");
    if running != total {
        println!(
            "({} of {total} instances did not start: terminated with a reason)",
            total - running
        );
    }
}
