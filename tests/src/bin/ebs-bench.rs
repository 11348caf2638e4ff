//! EBS benchmark, on loopback against a whole cloud started by the test
//! harness, with one tiny guest on real libvirt (TCG here):
//!
//! 1. CreateVolume (1 GiB) until DescribeVolumes shows it available;
//! 2. AttachVolume until the guest's console shows the new disk;
//! 3. inside the guest, 128 MiB written and read back with direct I/O on
//!    the attached volume, next to the same file attached straight to the
//!    domain as a local disk (`virsh attach-disk`), and their ratio;
//! 4. a snapshot of 256 MiB of data into Walrus (MiB/s), and what a second
//!    snapshot stores after 1 MiB of the 1 GiB volume changed.
//!
//! Run it with `scripts/bench-ebs` (release build, libvirtd and the tiny
//! guest made ready).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use base64::Engine;
use tests::{
    clients::{self, AwsCli, Credentials},
    ec2client::{first, Ec2},
    harness::{wait_for, Cloud, CloudOptions},
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn console(c: &mut Ec2, id: &str) -> String {
    let body = c.ok("GetConsoleOutput", &[("InstanceId", id)]);
    let raw = first(&body, "output")
        .and_then(|o| base64::engine::general_purpose::STANDARD.decode(o).ok())
        .unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\r', "")
}

fn wait_console(c: &mut Ec2, id: &str, needle: &str, limit: Duration) -> String {
    let since = Instant::now();
    loop {
        let text = console(c, id);
        if text.contains(needle) {
            return text;
        }
        assert!(
            since.elapsed() < limit,
            "{id}: no {needle:?} on the console"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn volume_state(c: &mut Ec2, id: &str) -> (String, String) {
    let body = c.ok("DescribeVolumes", &[("VolumeId.1", id)]);
    let attach = body
        .find("<attachmentSet>")
        .map(|i| &body[i..])
        .and_then(|b| first(b, "status"))
        .unwrap_or("")
        .to_string();
    (first(&body, "status").unwrap_or("").to_string(), attach)
}

fn create_volume(c: &mut Ec2, gib: &str) -> (String, f64) {
    let t = Instant::now();
    let body = c.ok(
        "CreateVolume",
        &[("Size", gib), ("AvailabilityZone", "zone-1")],
    );
    let id = first(&body, "volumeId").expect("volumeId").to_string();
    while volume_state(c, &id).0 != "available" {
        std::thread::sleep(Duration::from_millis(5));
    }
    (id, t.elapsed().as_secs_f64() * 1000.0)
}

/// Seconds `qemu-img bench` takes for 256 MiB in 1 MiB requests, one at
/// a time, on the NBD export at `socket` (`write` or read).
fn qemu_img_bench(socket: &Path, write: bool) -> f64 {
    let mut cmd = std::process::Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw", "-s", "1M", "-c", "256", "-d", "1"]);
    if write {
        cmd.arg("-w");
    }
    let out = cmd
        .arg(format!("nbd+unix:///?socket={}", socket.display()))
        .output()
        .expect("qemu-img");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qemu-img bench: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split("Run completed in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("qemu-img bench's time")
}

/// Stops the bench when the guest says its I/O failed.
fn no_failed_bench(console: &str) {
    if let Some(line) = console.lines().find(|l| l.contains("bench failed")) {
        panic!("in the guest: {line}");
    }
}

/// The guest's figures for `disk`: (write ms, read ms) for 128 MiB.
fn guest_figures(text: &str, disk: &str) -> (f64, f64) {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(&format!("disk {disk} bench")))
        .expect("bench line");
    let num = |key: &str| -> f64 {
        line.split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("figure")
    };
    (num("write-ms "), num("read-ms "))
}

fn mibps(ms: f64) -> f64 {
    128.0 / (ms / 1000.0)
}

fn stored_bytes(log: &Path, snap: &str) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("snapshot completed") && l.contains(snap))
        .find_map(|l| {
            l.split("stored_bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn snapshot(c: &mut Ec2, vol: &str) -> (String, f64) {
    let t = Instant::now();
    let body = c.ok("CreateSnapshot", &[("VolumeId", vol)]);
    let id = first(&body, "snapshotId").expect("snapshotId").to_string();
    loop {
        let body = c.ok("DescribeSnapshots", &[("SnapshotId.1", &id)]);
        match first(&body, "status") {
            Some("completed") => break,
            Some("error") => panic!("snapshot {id} failed: {body}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    (id, t.elapsed().as_secs_f64())
}

fn main() {
    let tiny = clients::tiny_guest();
    let cloud = Cloud::start_with(CloudOptions {
        nodes: 1,
        node_cores: 2,
        node_memory_mib: 2048,
        real_libvirt: true,
        ..Default::default()
    });
    wait_for("the cloud ENABLED", Duration::from_secs(120), || {
        (cloud.service_state("sc-1").as_deref() == Some("ENABLED")
            && cloud.service_state("walrus").as_deref() == Some("ENABLED")
            && cloud.service_state("cluster-1").as_deref() == Some("ENABLED"))
        .then_some(())
    });
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-bench");
    std::fs::create_dir_all(&home).expect("home");
    let s3 = cloud.s3_endpoint();
    let ec2 = cloud.ec2_endpoint();
    let aws =
        |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, endpoint, args);
    let (_, _, ami) = clients::register_tiny(&tiny, &|e: &str, a: &[&str]| aws(e, a), &s3, &ec2);
    let mut c = Ec2::new(&ec2, cloud.admin_key());

    // 1. CreateVolume to available.
    let mut made = Vec::new();
    let mut vols = Vec::new();
    for _ in 0..10 {
        let (id, ms) = create_volume(&mut c, "1");
        made.push(ms);
        vols.push(id);
    }
    println!(
        "CreateVolume (1 GiB) to available: median {:.1} ms of {}",
        median(made.clone()),
        made.len()
    );

    // A guest that times what it is given.
    let user_data =
        base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\ntouch /tmp/bench\n");
    let body = c.ok(
        "RunInstances",
        &[
            ("ImageId", &ami),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("UserData", &user_data),
        ],
    );
    let instance = first(&body, "instanceId").expect("instanceId").to_string();
    wait_console(
        &mut c,
        &instance,
        "GUMTREE-USER-DATA-RAN",
        Duration::from_secs(300),
    );

    // 2. AttachVolume until the guest sees it, and 3. I/O on it.
    let mut attach = Vec::new();
    let mut nbd = Vec::new();
    let mut host_path: Vec<String> = Vec::new();
    for vol in vols.iter().take(3) {
        // Figures of earlier disks (named alike: one disk at a time) are
        // on the console already; this one's come after them.
        let benched = console(&mut c, &instance).matches("bench write-ms").count();
        let t = Instant::now();
        c.ok(
            "AttachVolume",
            &[
                ("VolumeId", vol),
                ("InstanceId", &instance),
                ("Device", "/dev/sdf"),
            ],
        );
        let serial = vol.replacen('-', "", 1);
        wait_console(
            &mut c,
            &instance,
            &format!("serial {serial}"),
            Duration::from_secs(120),
        );
        attach.push(t.elapsed().as_secs_f64() * 1000.0);
        let text = wait_for("the guest's figures", Duration::from_secs(600), || {
            let t = console(&mut c, &instance);
            no_failed_bench(&t);
            (t.matches("bench write-ms").count() > benched).then_some(t)
        });
        let disk = text
            .lines()
            .rev()
            .find_map(|l| {
                l.split("disk added ")
                    .nth(1)
                    .filter(|r| r.contains(&serial))
            })
            .and_then(|r| r.split_whitespace().next())
            .expect("disk name")
            .to_string();
        nbd.push(guest_figures(&text, &disk));
        if host_path.is_empty() {
            // The same path without the guest: qemu-img on the host, on
            // the node's relay socket (relay, TLS, the SC, qemu-nbd) and
            // on qemu-nbd's own socket.
            let relay = cloud.dir().join("nc-1/volumes").join(format!("{vol}.sock"));
            let direct = cloud.dir().join("sc-1/exports").join(format!("{vol}.sock"));
            for (what, socket) in [("relay", &relay), ("qemu-nbd", &direct)] {
                let w = qemu_img_bench(socket, true);
                let r = qemu_img_bench(socket, false);
                host_path.push(format!(
                    "{what} write {:.0} MiB/s, read {:.0} MiB/s",
                    256.0 / w,
                    256.0 / r
                ));
            }
        }
        let removed = console(&mut c, &instance)
            .matches(&format!("disk removed {disk}"))
            .count();
        c.ok("DetachVolume", &[("VolumeId", vol)]);
        while volume_state(&mut c, vol).0 != "available" {
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_for("the guest lets go", Duration::from_secs(60), || {
            console(&mut c, &instance)
                .matches(&format!("disk removed {disk}"))
                .count()
                .gt(&removed)
                .then_some(())
        });
    }
    println!(
        "AttachVolume to the disk on the guest's console: median {:.0} ms of {}",
        median(attach.clone()),
        attach.len()
    );
    println!(
        "On the host, qemu-img bench, 1 MiB requests one at a time: {}",
        host_path.join("; ")
    );
    // The same kind of file, attached straight to the domain.
    let benched = console(&mut c, &instance).matches("bench write-ms").count();
    let local = cloud.dir().join("local-disk.img");
    std::fs::File::create(&local)
        .and_then(|f| f.set_len(1 << 30))
        .expect("local disk");
    let out = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "attach-disk", &instance])
        .arg(&local)
        .args(["vdz", "--driver", "qemu", "--subdriver", "raw", "--live"])
        .output()
        .expect("virsh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The guest names it as it likes (the next vdX): the newest figures.
    let text = wait_for("the local disk's figures", Duration::from_secs(600), || {
        let t = console(&mut c, &instance);
        no_failed_bench(&t);
        (t.matches("bench write-ms").count() > benched).then_some(t)
    });
    let disk = text
        .lines()
        .rev()
        .find_map(|l| l.split("GUMTREE-TINY-GUEST: disk ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("the local disk's name")
        .to_string();
    let (lw, lr) = guest_figures(&text, &disk);
    let (nw, nr) = (
        median(nbd.iter().map(|f| f.0).collect()),
        median(nbd.iter().map(|f| f.1).collect()),
    );
    println!(
        "In the guest, 128 MiB direct I/O, TCG: volume write {:.1} MiB/s, read {:.1} MiB/s; local file write {:.1} MiB/s, read {:.1} MiB/s; ratio write {:.2}, read {:.2}",
        mibps(nw),
        mibps(nr),
        mibps(lw),
        mibps(lr),
        lw / nw,
        lr / nr
    );

    // 4. Snapshots into Walrus.
    let vol = &vols[9];
    let file = cloud.dir().join("sc-1/volumes").join(format!("{vol}.img"));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("volume file");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for n in 0..256u64 {
            let mut c = chunk.clone();
            c[..8].copy_from_slice(&n.to_le_bytes());
            f.write_all_at(&c, n << 20).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let (first_snap, secs) = snapshot(&mut c, vol);
    let log = cloud.dir().join("sc-1.log");
    println!(
        "CreateSnapshot of 256 MiB of data (1 GiB volume) to completed: {:.2} s, {:.1} MiB/s; stored {} MiB",
        secs,
        256.0 / secs,
        stored_bytes(&log, &first_snap) >> 20
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("volume file");
        f.write_all_at(&vec![0x5A; 1 << 20], 77 << 20)
            .expect("write");
        f.sync_all().expect("sync");
    }
    let (second, secs) = snapshot(&mut c, vol);
    println!(
        "Second snapshot after 1 MiB changed: {:.2} s, stored {} bytes ({:.2} MiB)",
        secs,
        stored_bytes(&log, &second),
        stored_bytes(&log, &second) as f64 / f64::from(1 << 20)
    );
    c.ok("TerminateInstances", &[("InstanceId.1", &instance)]);
}
