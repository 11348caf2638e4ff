//! Instances from RunInstances to terminate, on real libvirt guests (QEMU
//! TCG here), driven by boto3 and both AWS CLIs.

use std::{fs, process::Command, time::Duration};

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{wait_for, Cloud, CloudOptions},
};

fn our_domains(cloud: &Cloud) -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .expect("virsh");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| l.starts_with("i-"))
        .collect();
    // Only those this cloud's nodes made (other tests may run guests too).
    names
        .into_iter()
        .filter(|n| {
            (1..=2).any(|i| {
                cloud
                    .dir()
                    .join(format!("nc-{i}/instances"))
                    .join(n)
                    .exists()
            })
        })
        .collect()
}

/// Destroys whatever guests this cloud's nodes left, if the test failed.
struct Sweep(std::path::PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        for i in 1..=2 {
            let dir = self.0.join(format!("nc-{i}/instances"));
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system", "destroy", &name])
                    .output();
                let _ = Command::new("virsh")
                    .args(["-c", "qemu:///system", "undefine", &name])
                    .output();
            }
        }
    }
}

#[test]
fn instances_run_boot_stop_start_and_terminate() {
    let tiny = clients::tiny_guest();
    let mut cloud = Cloud::start_with(CloudOptions {
        nodes: 2,
        node_cores: 2,
        node_memory_mib: 2048,
        real_libvirt: true,
        ..Default::default()
    });
    let _sweep = Sweep(cloud.dir().to_path_buf());
    wait_for(
        "walrus, cluster and both nodes ENABLED",
        Duration::from_secs(30),
        || {
            let nodes = cloud.admin_json(&["describe-nodes"]);
            let ready = nodes
                .as_array()?
                .iter()
                .filter(|n| n["state"] == "ENABLED")
                .count();
            (ready == 2
                && cloud.service_state("walrus").as_deref() == Some("ENABLED")
                && cloud.service_state("cluster-1").as_deref() == Some("ENABLED"))
            .then_some(())
        },
    );
    let creds = Credentials::new(cloud.admin_key());
    let (other_key, other_secret) = cloud.new_account("other");
    let home = cloud.dir().join("home-instances");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let tiny_dir = tiny.display().to_string();
    let netns = tests::harness::guest_netns()
        .expect("guests are networked in the namespace scripts/test runs libvirtd in: run the suite with scripts/test");
    let outside = cloud
        .outside()
        .expect("real guests have an outside world")
        .clone();
    let run = clients::python_script(
        &creds,
        &home,
        &clients::script("ec2_instances.py"),
        &[
            ("GUMTREE_EC2_ENDPOINT", &ec2),
            ("GUMTREE_S3_ENDPOINT", &cloud.s3_endpoint()),
            ("GUMTREE_OTHER_KEY", &other_key),
            ("GUMTREE_OTHER_SECRET", &other_secret),
            ("GUMTREE_TINY_GUEST", &tiny_dir),
            ("GUMTREE_NETNS", &netns),
            ("GUMTREE_OUTSIDE_NETNS", &outside.netns),
            ("GUMTREE_OUTSIDE_IP", &outside.ip),
        ],
    );
    let out = run.expect_ok();
    eprintln!("{out}");
    assert!(out.contains("instances: all checks passed"), "{out}");

    // From here the metadata service requires IMDSv2 tokens: the guests'
    // own client (IMDSv2) still reads its instance id; a tokenless read
    // from the guest's user-data script is refused.
    let config = cloud.dir().join("clc.toml");
    let text = fs::read_to_string(&config).expect("config");
    fs::write(&config, format!("{text}metadata_tokens_required = true\n")).expect("config");
    cloud.terminate("clc", Duration::from_secs(10));
    cloud.restart("clc");
    let tokenless = "#!/bin/sh\necho \"TOKENLESS-READ: $(timeout 5 wget -O - http://169.254.169.254/latest/meta-data/instance-id 2>&1 | tr '\\n' ' ') TOKENLESS-END\"\n";

    // The AWS CLIs, as a user types them.
    let ami = {
        let listed = clients::aws(
            AwsCli::V2,
            &creds,
            &home,
            &ec2,
            &[
                "ec2",
                "describe-images",
                "--owners",
                "self",
                "--filters",
                "Name=name,Values=tiny",
                "--query",
                "Images[0].ImageId",
                "--output",
                "text",
            ],
        )
        .expect_ok();
        listed.trim().to_string()
    };
    for which in [AwsCli::V1, AwsCli::V2] {
        let aws = |args: &[&str]| clients::aws(which, &creds, &home, &ec2, args);
        let id = aws(&[
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "m1.small",
            "--user-data",
            tokenless,
            "--query",
            "Instances[0].InstanceId",
            "--output",
            "text",
        ])
        .expect_ok()
        .trim()
        .to_string();
        assert!(id.starts_with("i-"), "{which:?}: {id}");
        aws(&["ec2", "wait", "instance-running", "--instance-ids", &id]).expect_ok();
        let console = wait_for(
            &format!("{which:?}: the tokenless read's outcome"),
            Duration::from_secs(180),
            || {
                let text = aws(&[
                    "ec2",
                    "get-console-output",
                    "--instance-id",
                    &id,
                    "--output",
                    "text",
                ])
                .expect_ok();
                let ran = text.split("GUMTREE-NET-OK").nth(1)?.to_string();
                // The whole line: a slow serial console may be read while
                // the guest is still writing it.
                let line = ran
                    .lines()
                    .find(|l| l.starts_with("TOKENLESS-READ: ") && l.contains(" TOKENLESS-END"))?;
                Some((text.clone(), line.to_string()))
            },
        );
        let (text, ran) = console;
        assert!(text.contains("GUMTREE-BOOT-OK"), "{which:?}: {text}");
        assert!(
            text.contains("metadata IMDSv2") && text.contains(&format!("instance-id {id}")),
            "{which:?}: the guest's own IMDSv2 client reads its id: {text}"
        );
        assert!(
            ran.contains("401 Unauthorized") && !ran.contains(&id),
            "{which:?}: a tokenless read is refused: {ran}"
        );
        aws(&["ec2", "terminate-instances", "--instance-ids", &id]).expect_ok();
        aws(&["ec2", "wait", "instance-terminated", "--instance-ids", &id]).expect_ok();
    }
    // Nothing left: no domain, no instance directory.
    wait_for("no guest left", Duration::from_secs(10), || {
        our_domains(&cloud).is_empty().then_some(())
    });
    for i in 1..=2 {
        let dir = cloud.dir().join(format!("nc-{i}/instances"));
        let left: Vec<_> = fs::read_dir(&dir).into_iter().flatten().flatten().collect();
        assert!(left.is_empty(), "nc-{i} left {left:?}");
    }
    // Nor any of the network: bridge, dnsmasq, NAT, firewall and guard
    // rules, public addresses.
    let cc = fs::read_to_string(cloud.dir().join("cluster-1.toml")).expect("cc config");
    let bridge = cc
        .lines()
        .find_map(|l| l.strip_prefix("bridge = "))
        .expect("bridge")
        .trim_matches('"')
        .to_string();
    let in_ns = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &netns])
            .args(args)
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let leftovers = || {
        let links = in_ns(&["ip", "-o", "link", "show"]);
        let nat = in_ns(&["iptables", "-w", "-t", "nat", "-S"]);
        let filter = in_ns(&["iptables", "-w", "-S"]);
        let bridged = in_ns(&["ebtables", "-L"]);
        let public = in_ns(&["ip", "-o", "addr", "show", "dev", &outside.interface]);
        let dnsmasq = Command::new("pgrep")
            .args(["-f", &format!("dnsmasq.*{}", cloud.dir().display())])
            .output()
            .expect("pgrep");
        let mut left: Vec<String> = Vec::new();
        left.extend(
            links
                .lines()
                .filter(|l| l.contains(&format!(" {bridge}:")))
                .map(|l| format!("link: {l}")),
        );
        left.extend(
            nat.lines()
                .chain(filter.lines())
                .filter(|l| l.contains(&bridge) || l.contains("-j GT") || l.starts_with("-N GT"))
                .map(|l| format!("iptables: {l}")),
        );
        left.extend(
            bridged
                .lines()
                .filter(|l| l.contains("GTS-"))
                .map(|l| format!("ebtables: {l}")),
        );
        left.extend(
            public
                .lines()
                .filter(|l| l.contains("/32"))
                .map(|l| format!("address: {l}")),
        );
        if !dnsmasq.stdout.is_empty() {
            left.push(format!(
                "dnsmasq: {}",
                String::from_utf8_lossy(&dnsmasq.stdout).trim()
            ));
        }
        left
    };
    let mut left = leftovers();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        left = leftovers();
    }
    assert!(left.is_empty(), "the network was not torn down: {left:#?}");
}
