//! Live migration figures (scripts/bench-migration [ROUNDS]): the tiers on
//! separate hosts as the separate-hosts test sets them up, the tiny guest
//! serving its page through an elastic IP, moved from node to node ROUNDS
//! times (5 by default). For each move: how long `gumtree-admin migrate`
//! took, and the longest time a client on another host went without the
//! page (asked every 0.1 s, 1 s to answer). Then the same for the tiny
//! guest booting from an EBS volume (made as the quickstart makes its
//! own), which has no disk to copy. Then the medians and the worst.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tests::{
    clients::{self, register_tiny},
    harness::wait_for,
    probe::{http_get, Prober},
    separate::{set_up, Client, Setup},
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Moves `id` (serving its page at `web`) node to node `rounds` times: each
/// move's seconds and the longest time `outside` went without its page.
fn moves(
    s: &Setup,
    outside: &str,
    web: SocketAddr,
    id: &str,
    rounds: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut took, mut silent) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (from, to) = if s.on("node-a").contains(id) {
            ("node-a", "node-b")
        } else {
            ("node-b", "node-a")
        };
        let probe = Prober::start(
            outside,
            web,
            id,
            Duration::from_millis(100),
            Duration::from_secs(1),
        );
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        s.admin(&["migrate", id, "--to", to]);
        let ended = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        let samples = probe.stop();
        let secs = (ended - started).as_secs_f64();
        let gap = samples
            .longest_gap(started, ended)
            .unwrap_or_else(|| panic!("the page stopped answering after move {round}"));
        let (tries, failed) = samples.counts();
        println!(
            "move {round}: {from} -> {to} in {secs:.2} s; longest time without the page {:.2} s ({failed} of {tries} tries failed)",
            gap.as_secs_f64()
        );
        took.push(secs);
        silent.push(gap.as_secs_f64());
    }
    (took, silent)
}

/// Prints the median and worst of a series of moves.
fn summary(what: &str, rounds: usize, took: &[f64], silent: &[f64]) {
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "live migration of {what}, {rounds} moves: median {:.2} s, worst {:.2} s",
        median(took.to_vec()),
        max(took)
    );
    println!(
        "  downtime seen from another host through its elastic IP: median {:.2} s, worst {:.2} s",
        median(silent.to_vec()),
        max(silent)
    );
}

/// An EBS-backed guest made as the quickstart makes its own: a guest of
/// `ami` copies its root disk onto a volume, whose snapshot is the root of
/// a new image; launched, its instance id.
fn ebs_backed(client: &Client, ami: &str) -> String {
    let json = |line: &str| -> serde_json::Value {
        serde_json::from_str(&client.ec2(line)).expect("json")
    };
    let image = &json(&format!("ec2 describe-images --image-ids {ami}"))["Images"][0];
    let (aki, ari) = (
        image["KernelId"].as_str().expect("kernel").to_string(),
        image["RamdiskId"].as_str().expect("ramdisk").to_string(),
    );
    let copier = clients::launch_one_with(
        &|args| client.aws(&client.ec2, args),
        ami,
        &[
            "--user-data",
            "#!/bin/sh\nwhile [ ! -b /dev/vdb ]; do sleep 1; done\ndd if=/dev/vda of=/dev/vdb bs=1M count=16 conv=fsync 2>/dev/null\n",
        ],
    );
    let vol = client
        .ec2("ec2 create-volume --size 1 --availability-zone zone-1 --query VolumeId --output text")
        .trim()
        .to_string();
    let volume_state = || {
        json(&format!("ec2 describe-volumes --volume-ids {vol}"))["Volumes"][0]["State"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_for("the volume available", Duration::from_secs(60), || {
        (volume_state() == "available").then_some(())
    });
    wait_for("the copier running", Duration::from_secs(240), || {
        (clients::instance_state(&|args| client.aws(&client.ec2, args), &copier) == "running")
            .then_some(())
    });
    client.ec2(&format!(
        "ec2 attach-volume --volume-id {vol} --instance-id {copier} --device /dev/sdf"
    ));
    // Its user-data done (the tiny guest says so once the script ends).
    wait_for("the root disk copied", Duration::from_secs(240), || {
        client
            .aws(
                &client.ec2,
                &[
                    "ec2",
                    "get-console-output",
                    "--instance-id",
                    &copier,
                    "--output",
                    "text",
                ],
            )
            .stdout()
            .contains("GUMTREE-USER-DATA-RAN")
            .then_some(())
    });
    client.ec2(&format!("ec2 detach-volume --volume-id {vol}"));
    wait_for("the volume detached", Duration::from_secs(120), || {
        (volume_state() == "available").then_some(())
    });
    client.ec2(&format!("ec2 terminate-instances --instance-ids {copier}"));
    let snap = client
        .ec2(&format!(
            "ec2 create-snapshot --volume-id {vol} --query SnapshotId --output text"
        ))
        .trim()
        .to_string();
    wait_for("the snapshot completed", Duration::from_secs(120), || {
        (json(&format!("ec2 describe-snapshots --snapshot-ids {snap}"))["Snapshots"][0]["State"]
            == "completed")
            .then_some(())
    });
    let image = client
        .ec2(&format!(
            "ec2 register-image --name tiny-ebs-bench --root-device-name /dev/sda1 --kernel-id {aki} --ramdisk-id {ari} --block-device-mappings DeviceName=/dev/sda1,Ebs={{SnapshotId={snap}}} --query ImageId --output text"
        ))
        .trim()
        .to_string();
    clients::launch_one_with(&|args| client.aws(&client.ec2, args), &image, &[])
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(5);
    let tiny = clients::tiny_guest();
    let s = set_up();
    s.wait_ready();
    let client = s.client();
    let aws = |endpoint: &str, args: &[&str]| client.aws(endpoint, args);
    let (_, _, ami) = register_tiny(&tiny, &aws, &client.s3, &client.ec2);
    let id = clients::launch_one_with(&|args| aws(&client.ec2, args), &ami, &[]);
    let eip = client
        .ec2("ec2 allocate-address --domain standard --query PublicIp --output text")
        .trim()
        .to_string();
    client.ec2("ec2 authorize-security-group-ingress --group-name default --protocol tcp --port 80 --cidr 0.0.0.0/0");
    let web: SocketAddr = format!("{eip}:80").parse().expect("address");
    let outside = s.dc.netns("client");
    // Running, with the elastic IP, its page answering through it.
    let serving = |id: &str| {
        wait_for(&format!("{id} running"), Duration::from_secs(240), || {
            (clients::instance_state(&|args| aws(&client.ec2, args), id) == "running").then_some(())
        });
        client.ec2(&format!(
            "ec2 associate-address --instance-id {id} --public-ip {eip}"
        ));
        wait_for(
            &format!("{id}'s page through its elastic IP"),
            Duration::from_secs(240),
            || {
                http_get(&outside, web, Duration::from_secs(2))
                    .filter(|p| p.contains(id))
                    .map(|_| ())
            },
        );
    };
    serving(&id);
    let (took, silent) = moves(&s, &outside, web, &id, rounds);
    // The same guest booting from an EBS volume: nothing to copy but its
    // memory (its root volume is exported to the target).
    let ebs = ebs_backed(&client, &ami);
    serving(&ebs);
    let (ebs_took, ebs_silent) = moves(&s, &outside, web, &ebs, rounds);
    summary(
        "the tiny guest (256 MiB, its disk's top layer copied)",
        rounds,
        &took,
        &silent,
    );
    summary(
        "the EBS-backed tiny guest (256 MiB, no disk copied)",
        rounds,
        &ebs_took,
        &ebs_silent,
    );
    client.ec2(&format!("ec2 terminate-instances --instance-ids {ebs}"));
    client.ec2(&format!("ec2 terminate-instances --instance-ids {id}"));
    client.ec2(&format!("ec2 release-address --public-ip {eip}"));
}
