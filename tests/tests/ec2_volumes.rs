//! EBS volumes through the EC2 API: made, listed, changed and deleted by
//! the zone's real storage controller, with the AWS CLI v2 and v1 and
//! boto3, and kept through kill -9 of the SC and a CLC restart.

use std::{fs, path::PathBuf, time::Duration};

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{wait_for, wait_for_text, Cloud, CloudOptions},
};

const GIB: u64 = 1 << 30;

/// Waits until volume `id` shows `state` (the CLI's waiters poll every
/// 15 s; this polls faster).
fn wait_volume(aws: &dyn Fn(&[&str]) -> clients::Run, id: &str, state: &str) {
    wait_for(&format!("{id} {state}"), Duration::from_secs(60), || {
        let d = json(&aws(&["ec2", "describe-volumes", "--volume-ids", id]).stdout());
        (d["Volumes"][0]["State"] == state).then_some(())
    });
}

/// Waits until snapshot `id` is completed.
fn wait_snapshot(aws: &dyn Fn(&[&str]) -> clients::Run, id: &str) {
    wait_for(&format!("{id} completed"), Duration::from_secs(120), || {
        let d = json(&aws(&["ec2", "describe-snapshots", "--snapshot-ids", id]).stdout());
        (d["Snapshots"][0]["State"] == "completed").then_some(())
    });
}

fn json(out: &str) -> serde_json::Value {
    if out.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn volumes_are_made_listed_and_deleted_by_the_storage_controller() {
    let mut cloud = Cloud::start_with(CloudOptions {
        nodes: 1,
        sc_config: "capacity_gib = 20\n".into(),
        ..Default::default()
    });
    wait_for(
        "cluster and storage controller ENABLED",
        Duration::from_secs(30),
        || {
            (cloud.service_state("cluster-1").as_deref() == Some("ENABLED")
                && cloud.service_state("sc-1").as_deref() == Some("ENABLED"))
            .then_some(())
        },
    );
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-volumes");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let aws = |which: AwsCli, args: &[&str]| clients::aws(which, &creds, &home, &ec2, args);
    let v2 = |args: &[&str]| json(&aws(AwsCli::V2, args).expect_ok());

    // Made: creating at once, then available, its data a 2 GiB file on the SC.
    let made = v2(&[
        "ec2",
        "create-volume",
        "--size",
        "2",
        "--availability-zone",
        "zone-1",
        "--tag-specifications",
        "ResourceType=volume,Tags=[{Key=Name,Value=data}]",
    ]);
    let id = made["VolumeId"].as_str().expect("VolumeId").to_string();
    assert!(id.starts_with("vol-"), "{made}");
    assert_eq!(made["Size"], 2, "{made}");
    assert_eq!(made["AvailabilityZone"], "zone-1", "{made}");
    assert_eq!(made["VolumeType"], "gp2", "{made}");
    assert_eq!(made["Tags"][0]["Value"], "data", "{made}");
    aws(
        AwsCli::V2,
        &["ec2", "wait", "volume-available", "--volume-ids", &id],
    )
    .expect_ok();
    let size = fs::metadata(volume_file(&cloud, &id))
        .expect("the SC holds the volume")
        .len();
    assert_eq!(size, 2 * GIB);

    // A second, standard volume made by the v1 CLI.
    let other = json(
        &aws(
            AwsCli::V1,
            &[
                "ec2",
                "create-volume",
                "--size",
                "1",
                "--volume-type",
                "standard",
                "--availability-zone",
                "zone-1",
            ],
        )
        .expect_ok(),
    );
    let other_id = other["VolumeId"].as_str().expect("VolumeId").to_string();
    wait_volume(&|a: &[&str]| aws(AwsCli::V2, a), &other_id, "available");

    // Listed, by id and by filters.
    let listed = v2(&["ec2", "describe-volumes"]);
    assert_eq!(
        listed["Volumes"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    let by_tag = v2(&[
        "ec2",
        "describe-volumes",
        "--filters",
        "Name=tag:Name,Values=da*",
        "Name=status,Values=available",
    ]);
    assert_eq!(
        by_tag["Volumes"].as_array().map(Vec::len),
        Some(1),
        "{by_tag}"
    );
    assert_eq!(by_tag["Volumes"][0]["VolumeId"], id.as_str(), "{by_tag}");
    assert_eq!(by_tag["Volumes"][0]["Attachments"], serde_json::json!([]));
    let by_size = v2(&[
        "ec2",
        "describe-volumes",
        "--filters",
        "Name=size,Values=1",
        "Name=volume-type,Values=standard",
    ]);
    assert_eq!(
        by_size["Volumes"][0]["VolumeId"],
        other_id.as_str(),
        "{by_size}"
    );
    let status = v2(&["ec2", "describe-volume-status", "--volume-ids", &id]);
    assert_eq!(
        status["VolumeStatuses"][0]["VolumeStatus"]["Status"], "ok",
        "{status}"
    );
    aws(
        AwsCli::V2,
        &[
            "ec2",
            "modify-volume-attribute",
            "--volume-id",
            &id,
            "--auto-enable-io",
        ],
    )
    .expect_ok();
    let attr = v2(&[
        "ec2",
        "describe-volume-attribute",
        "--volume-id",
        &id,
        "--attribute",
        "autoEnableIO",
    ]);
    assert_eq!(attr["AutoEnableIO"]["Value"], true, "{attr}");

    // Bad input: EC2's codes, nothing made.
    let bad = [
        (
            vec!["--size", "0", "--availability-zone", "zone-1"],
            "InvalidParameterValue",
        ),
        (
            vec![
                "--size",
                "2000",
                "--volume-type",
                "standard",
                "--availability-zone",
                "zone-1",
            ],
            "InvalidParameterValue",
        ),
        (
            vec!["--size", "1", "--availability-zone", "zone-9"],
            "InvalidParameterValue",
        ),
        (vec!["--availability-zone", "zone-1"], "MissingParameter"),
        (
            vec![
                "--size",
                "1",
                "--volume-type",
                "io1",
                "--availability-zone",
                "zone-1",
            ],
            "InvalidParameterValue",
        ),
        (
            vec![
                "--snapshot-id",
                "snap-0123456789abcdef0",
                "--availability-zone",
                "zone-1",
            ],
            "InvalidSnapshot.NotFound",
        ),
        // More than the SC's capacity (20 GiB here).
        (
            vec!["--size", "30", "--availability-zone", "zone-1"],
            "InsufficientVolumeCapacity",
        ),
    ];
    // The SC tells what its volumes take of its capacity.
    wait_for("the SC's room reported", Duration::from_secs(10), || {
        let services = cloud.admin_json(&["describe-services"]);
        let sc = services
            .as_array()?
            .iter()
            .find(|s| s["name"] == "sc-1")?
            .clone();
        sc["detail"].as_str()?.contains("of 20 GiB").then_some(())
    });
    for (args, code) in bad {
        let mut all = vec!["ec2", "create-volume"];
        all.extend(args);
        aws(AwsCli::V2, &all).expect_err(code);
    }
    aws(
        AwsCli::V2,
        &["ec2", "delete-volume", "--volume-id", "vol-xyz"],
    )
    .expect_err("InvalidVolumeID.Malformed");
    aws(
        AwsCli::V2,
        &[
            "ec2",
            "describe-volumes",
            "--volume-ids",
            "vol-0123456789abcdef0",
        ],
    )
    .expect_err("InvalidVolume.NotFound");
    aws(
        AwsCli::V2,
        &[
            "ec2",
            "create-volume",
            "--size",
            "1",
            "--availability-zone",
            "zone-1",
            "--dry-run",
        ],
    )
    .expect_err("DryRunOperation");
    let after = v2(&["ec2", "describe-volumes"]);
    assert_eq!(
        after["Volumes"].as_array().map(Vec::len),
        Some(2),
        "{after}"
    );

    // Another account sees none of them and can delete none.
    let (key, secret) = cloud.new_account("other");
    let theirs = Credentials::new((key, secret));
    let run_theirs = |args: &[&str]| clients::aws(AwsCli::V2, &theirs, &home, &ec2, args);
    let seen = json(&run_theirs(&["ec2", "describe-volumes"]).expect_ok());
    assert_eq!(seen["Volumes"], serde_json::json!([]), "{seen}");
    run_theirs(&["ec2", "delete-volume", "--volume-id", &id]).expect_err("InvalidVolume.NotFound");

    // boto3 sees the same, paged; boto 2 too, and makes, snapshots and
    // restores volumes.
    let script = home.join("volumes.py");
    fs::write(
        &script,
        r#"
import os, time, urllib.parse, boto, boto3
ec2 = boto3.client("ec2", endpoint_url=os.environ["GUMTREE_EC2_ENDPOINT"], region_name="gumtree")
pages = ec2.get_paginator("describe_volumes").paginate(PaginationConfig={"PageSize": 5})
ids = [v["VolumeId"] for p in pages for v in p["Volumes"]]
print(" ".join(sorted(ids)))

# boto 2.49's connect_euca (SigV2, /services/Eucalyptus), as older
# Eucalyptus scripts do it: volumes, a snapshot and a volume made from it.
u = urllib.parse.urlparse(os.environ["GUMTREE_EC2_ENDPOINT"])
conn = boto.connect_euca(host=u.hostname, port=u.port, is_secure=False, path="/services/Eucalyptus",
                         aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])
print("boto2 " + " ".join(sorted(v.id for v in conn.get_all_volumes())))
def wait(what, get, want):
    for _ in range(300):
        if get() == want:
            return
        time.sleep(0.2)
    raise AssertionError("%s never %s" % (what, want))
v = conn.create_volume(2, "zone-1")
assert v.size == 2 and v.zone == "zone-1" and v.status in ("creating", "available"), vars(v)
wait(v.id, v.update, "available")
snap = conn.create_snapshot(v.id, "from boto 2")
assert snap.volume_id == v.id and snap.description == "from boto 2", vars(snap)
wait(snap.id, lambda: (snap.update(), snap.status)[1], "completed")
assert snap.progress == "100%" and snap.volume_size == 2, vars(snap)
assert snap.id in [s.id for s in conn.get_all_snapshots(owner="self")]
w = conn.create_volume(3, "zone-1", snapshot=snap.id)
wait(w.id, w.update, "available")
assert w.snapshot_id == snap.id and w.size == 3, vars(w)
assert conn.delete_volume(w.id) and conn.delete_volume(v.id) and conn.delete_snapshot(snap.id)
wait("the volumes gone", lambda: {w.id, v.id} & {x.id for x in conn.get_all_volumes()}, set())
try:
    conn.get_all_volumes(["vol-00000000000000000"])
    raise AssertionError("an unknown volume must fail")
except boto.exception.EC2ResponseError as e:
    assert e.error_code == "InvalidVolume.NotFound", e.error_code
print("boto2 ok")
"#,
    )
    .expect("script");
    let boto = clients::python_script(&creds, &home, &script, &[("GUMTREE_EC2_ENDPOINT", &ec2)])
        .expect_ok();
    let mut want = [id.clone(), other_id.clone()];
    want.sort();
    let lines: Vec<&str> = boto.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(want.join(" ").as_str()),
        "{boto}"
    );
    assert_eq!(
        lines.get(1).copied(),
        Some(format!("boto2 {}", want.join(" ")).as_str()),
        "{boto}"
    );
    assert_eq!(lines.last().copied(), Some("boto2 ok"), "{boto}");

    // kill -9 of the SC and a CLC restart lose nothing.
    cloud.kill("sc-1");
    cloud.restart("sc-1");
    cloud.terminate("clc", Duration::from_secs(10));
    cloud.restart("clc");
    wait_for("storage controller back", Duration::from_secs(30), || {
        (cloud.service_state("sc-1").as_deref() == Some("ENABLED")).then_some(())
    });
    let kept = v2(&["ec2", "describe-volumes", "--volume-ids", &id, &other_id]);
    assert_eq!(kept["Volumes"].as_array().map(Vec::len), Some(2), "{kept}");
    assert!(volume_file(&cloud, &id).exists());

    // Deleted: gone from the listing and from the SC's disk.
    assert_eq!(
        v2(&["ec2", "delete-volume", "--volume-id", &id]),
        serde_json::Value::Null
    );
    wait_for("the volume gone", Duration::from_secs(60), || {
        (!aws(
            AwsCli::V2,
            &["ec2", "describe-volumes", "--volume-ids", &id],
        )
        .ok())
        .then_some(())
    });
    aws(
        AwsCli::V2,
        &["ec2", "describe-volumes", "--volume-ids", &id],
    )
    .expect_err("InvalidVolume.NotFound");
    assert!(
        !volume_file(&cloud, &id).exists(),
        "the SC removed its data"
    );
    let left = v2(&["ec2", "describe-volumes"]);
    assert_eq!(left["Volumes"].as_array().map(Vec::len), Some(1), "{left}");
}

/// Held by each test that runs guests: on a small host under TCG, guests
/// of two such tests at once starve each other.
static GUESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The file of `vol` on the SC (sc-1).
fn volume_file(cloud: &Cloud, vol: &str) -> PathBuf {
    cloud.dir().join("sc-1/volumes").join(format!("{vol}.img"))
}

/// Writes `data` at `offset` of `vol`'s file on the SC, behind the
/// guest's back.
fn write_at(cloud: &Cloud, vol: &str, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(volume_file(cloud, vol))
        .expect("the volume's file");
    f.write_all_at(data, offset).expect("write");
    f.sync_all().expect("sync");
}

/// `len` bytes at `offset` of `vol`'s file on the SC.
fn read_at(cloud: &Cloud, vol: &str, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(volume_file(cloud, vol)).expect("the volume's file");
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).expect("read");
    buf
}

/// Writes a mark on the first sector of `vol`'s file on the SC, behind
/// the guest's back (a guest that probes its disks shows it).
fn write_mark(cloud: &Cloud, vol: &str, mark: &str) {
    let mut sector = format!("GUMTREE-MARK {mark}\n").into_bytes();
    sector.resize(512, 0);
    write_at(cloud, vol, 0, &sector);
}

/// A cloud of `nodes` nodes on real libvirt, with Walrus and the SC
/// ENABLED.
fn guest_cloud(nodes: usize) -> Cloud {
    let cloud = Cloud::start_with(CloudOptions {
        nodes,
        node_cores: 2,
        node_memory_mib: 2048,
        real_libvirt: true,
        ..Default::default()
    });
    wait_for("the cloud ENABLED", Duration::from_secs(30), || {
        let listed = cloud.admin_json(&["describe-nodes"]);
        let ready = listed
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "ENABLED")
            .count();
        (ready == nodes
            && cloud.service_state("walrus").as_deref() == Some("ENABLED")
            && cloud.service_state("sc-1").as_deref() == Some("ENABLED"))
        .then_some(())
    });
    cloud
}

/// Destroys whatever guests this cloud's nodes left, if the test failed.
struct Sweep(PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        for i in 1..=2 {
            let dir = self.0.join(format!("nc-{i}/instances"));
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                for verb in ["destroy", "undefine"] {
                    let _ = std::process::Command::new("virsh")
                        .args(["-c", "qemu:///system", verb, &name])
                        .output();
                }
            }
        }
    }
}

#[test]
fn a_volume_moves_its_data_between_running_guests_on_two_nodes() {
    let _guests = GUESTS.lock().unwrap_or_else(|p| p.into_inner());
    let tiny = clients::tiny_guest();
    let mut cloud = guest_cloud(2);
    let _sweep = Sweep(cloud.dir().to_path_buf());
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-attach");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let s3 = cloud.s3_endpoint();
    let aws =
        |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, endpoint, args);
    let v2 = |args: &[&str]| json(&aws(&ec2, args).expect_ok());

    // The tiny guest, as users register it.
    let (_, _, ami) = clients::register_tiny(&tiny, &|e: &str, a: &[&str]| aws(e, a), &s3, &ec2);

    let console = |id: &str| -> String {
        let out = v2(&["ec2", "get-console-output", "--instance-id", id, "--latest"]);
        out["Output"].as_str().unwrap_or_default().replace('\r', "")
    };
    let wait_console = |id: &str, what: &str, needle: &str| -> String {
        wait_for_text(what, Duration::from_secs(120), || console(id), needle)
    };
    let launch = |user_data: Option<&str>| -> String {
        let mut args = vec![
            "ec2",
            "run-instances",
            "--image-id",
            &ami,
            "--query",
            "Instances[0].InstanceId",
            "--output",
            "text",
        ];
        if let Some(u) = user_data {
            args.extend(["--user-data", u]);
        }
        let id = aws(&ec2, &args).expect_ok().trim().to_string();
        wait_for("the instance running", Duration::from_secs(120), || {
            (clients::instance_state(&|a| aws(&ec2, a), &id) == "running").then_some(())
        });
        id
    };
    let node_of = |cloud: &Cloud, id: &str| -> String {
        let all = cloud.admin_json(&["describe-instances"]);
        all.as_array()
            .and_then(|a| a.iter().find(|i| i["instance_id"] == id))
            .and_then(|i| i["node"].as_str())
            .unwrap_or_default()
            .to_string()
    };

    // A guest whose user-data leaves a mark for the disks it is given.
    let a = launch(Some(
        "#!/bin/sh\necho from-a > /tmp/mark\ntouch /tmp/probe\n",
    ));
    wait_console(&a, "guest a's user-data", "GUMTREE-USER-DATA-RAN");
    // A volume made with `args`, once available.
    let new_volume = |args: &[&str]| -> String {
        let mut all = vec!["ec2", "create-volume", "--availability-zone", "zone-1"];
        all.extend(args);
        let id = v2(&all)["VolumeId"].as_str().expect("VolumeId").to_string();
        wait_volume(&|a: &[&str]| aws(&ec2, a), &id, "available");
        id
    };
    let vol = new_volume(&["--size", "1"]);

    let attached = v2(&[
        "ec2",
        "attach-volume",
        "--volume-id",
        &vol,
        "--instance-id",
        &a,
        "--device",
        "/dev/sdf",
    ]);
    assert_eq!(attached["State"], "attaching", "{attached}");
    assert_eq!(attached["Device"], "/dev/sdf", "{attached}");
    wait_volume(&|a: &[&str]| aws(&ec2, a), &vol, "in-use");
    wait_for("the attachment attached", Duration::from_secs(60), || {
        let d = v2(&["ec2", "describe-volumes", "--volume-ids", &vol]);
        (d["Volumes"][0]["Attachments"][0]["State"] == "attached").then_some(())
    });
    let text = wait_console(&a, "guest a marks the new disk", "marked GUMTREE-MARK");
    assert!(
        text.contains(&format!(
            "disk added vdb 1024 MiB serial {}",
            vol.replacen('-', "", 1)
        )),
        "{text}"
    );
    assert!(
        text.contains("disk vdb marked GUMTREE-MARK from-a"),
        "{text}"
    );
    let described = v2(&["ec2", "describe-instances", "--instance-ids", &a]);
    let mapping = &described["Reservations"][0]["Instances"][0]["BlockDeviceMappings"][0];
    assert_eq!(mapping["DeviceName"], "/dev/sdf", "{described}");
    assert_eq!(mapping["Ebs"]["VolumeId"], vol.as_str(), "{described}");
    // Its I/O shows in CloudWatch per volume (AWS/EBS), as its node samples
    // it: the guest keeps reading it.
    let cloudwatch = format!("{ec2}services/CloudWatch");
    let volume_io = |metric: &str| {
        clients::cloudwatch_total(
            &|args| aws(&cloudwatch, args),
            "AWS/EBS",
            metric,
            ("VolumeId", &vol),
            "Sum",
        )
    };
    wait_for(
        "the volume's I/O in CloudWatch",
        Duration::from_secs(60),
        || (volume_io("VolumeReadOps") + volume_io("VolumeWriteOps") > 0.0).then_some(()),
    );

    // In use: EC2's answers, nothing changed.
    aws(
        &ec2,
        &[
            "ec2",
            "attach-volume",
            "--volume-id",
            &vol,
            "--instance-id",
            &a,
            "--device",
            "/dev/sdg",
        ],
    )
    .expect_err("VolumeInUse");
    aws(&ec2, &["ec2", "delete-volume", "--volume-id", &vol]).expect_err("VolumeInUse");
    aws(
        &ec2,
        &[
            "ec2",
            "attach-volume",
            "--volume-id",
            &vol,
            "--instance-id",
            &a,
            "--device",
            "/dev/foo",
        ],
    )
    .expect_err("InvalidParameterValue");

    // The export serves only the node it was made for: another node's
    // certificate is refused at the storage controller.
    let sc_log = fs::read_to_string(cloud.dir().join("sc-1.log")).unwrap_or_default();
    let endpoint = sc_log
        .split("exports=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the SC logs its export address")
        .to_string();
    let (host, port) = endpoint.rsplit_once(':').expect("host:port");
    let other_node = if node_of(&cloud, &a) == "nc-1" {
        "nc-2"
    } else {
        "nc-1"
    };
    let stranger = cloud.trust(common::pki::Role::Nc, other_node);
    let answer = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let port: u16 = port.parse().expect("port");
            let mut s = common::mtls::dial(&stranger.tls, host, port, common::pki::Role::Sc)
                .await
                .expect("TLS to the SC");
            s.write_all(format!("{vol}\n").as_bytes())
                .await
                .expect("ask");
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(s);
            let _ = r.read_line(&mut line).await;
            line
        });
    assert!(
        answer.starts_with("ERR"),
        "{other_node} was served: {answer:?}"
    );

    // kill -9 of the SC while the guest reads its volume: the guest's
    // reads wait for the restarted SC (same export address, export
    // restored; the node's relay dials it again) and go on, with what the
    // volume holds now (written into its file while the SC was away), and
    // none of them fails.
    wait_console(
        &a,
        "guest a reads its volume",
        "disk vdb now holds GUMTREE-MARK from-a",
    );
    cloud.kill("sc-1");
    write_mark(&cloud, &vol, "after-restart");
    std::thread::sleep(Duration::from_secs(2));
    cloud.restart("sc-1");
    let text = wait_console(
        &a,
        "guest a reads through the restarted SC",
        "disk vdb now holds GUMTREE-MARK after-restart",
    );
    assert!(
        !text.contains("disk vdb now holds \n") && !text.contains("I/O error, dev vdb"),
        "a read failed while the SC was away:\n{text}"
    );
    let d = v2(&["ec2", "describe-volumes", "--volume-ids", &vol]);
    assert_eq!(
        d["Volumes"][0]["Attachments"][0]["State"], "attached",
        "{d}"
    );

    // kill -9 of guest a's node controller: the volume's relay is a
    // process of its own, so the guest goes on reading its volume while
    // the node controller is away (it sees a mark written meanwhile), and
    // the restarted node controller takes the same relay back.
    let node = node_of(&cloud, &a);
    let pid_file = cloud
        .dir()
        .join(&node)
        .join("volumes")
        .join(format!("{vol}.pid"));
    let relay_pid = || {
        fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let relay_before = relay_pid();
    assert!(
        !relay_before.is_empty(),
        "no relay pid file at {}",
        pid_file.display()
    );
    cloud.kill(&node);
    write_mark(&cloud, &vol, "while-the-node-was-away");
    // (The console is read from its file: the API asks the node for it.)
    let console_file = cloud
        .dir()
        .join(&node)
        .join("instances")
        .join(&a)
        .join("console.log");
    let text = wait_for_text(
        "guest a reads its volume with its node controller gone",
        Duration::from_secs(60),
        || String::from_utf8_lossy(&fs::read(&console_file).unwrap_or_default()).replace('\r', ""),
        "disk vdb now holds GUMTREE-MARK while-the-node-was-away",
    );
    assert!(
        !text.contains("disk vdb now holds \n") && !text.contains("I/O error, dev vdb"),
        "a read failed while the node controller was away:\n{text}"
    );
    cloud.restart(&node);
    wait_for_text(
        "the node controller takes its relay back",
        Duration::from_secs(60),
        || cloud.log(&node),
        "volume relay restored",
    );
    assert_eq!(relay_pid(), relay_before, "the relay was started again");
    write_mark(&cloud, &vol, "after-the-node-restart");
    wait_console(
        &a,
        "guest a reads its volume after the node controller's restart",
        "disk vdb now holds GUMTREE-MARK after-the-node-restart",
    );

    // A snapshot holds its volume as it was when asked for: a write that
    // comes through the volume's export while the snapshot is read (here
    // qemu-io's, on the node's end of the export, beside the guest's
    // QEMU) is not in it.
    let data: Vec<u8> = (0..32 << 20).map(|i: u32| (i % 241) as u8).collect();
    write_at(&cloud, &vol, 1 << 20, &data);
    let moment = v2(&["ec2", "create-snapshot", "--volume-id", &vol])["SnapshotId"]
        .as_str()
        .expect("SnapshotId")
        .to_string();
    let socket = cloud
        .dir()
        .join(&node)
        .join("volumes")
        .join(format!("{vol}.sock"));
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x77 33554432 1M"])
        .arg(format!("nbd+unix:///?socket={}", socket.display()))
        .output()
        .expect("qemu-io");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrote 1048576/1048576 bytes"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read_at(&cloud, &vol, 32 << 20, 1 << 20),
        vec![0x77; 1 << 20],
        "the write reached the volume"
    );
    wait_snapshot(&|a: &[&str]| aws(&ec2, a), &moment);
    let then = new_volume(&["--snapshot-id", &moment]);
    assert!(
        read_at(&cloud, &then, 1 << 20, 32 << 20) == data,
        "the snapshot holds the volume of its moment, not a write that came after"
    );
    v2(&["ec2", "delete-volume", "--volume-id", &then]);

    // Detached: the guest sees the disk go.
    let detached = v2(&["ec2", "detach-volume", "--volume-id", &vol]);
    assert_eq!(detached["State"], "detaching", "{detached}");
    wait_volume(&|a: &[&str]| aws(&ec2, a), &vol, "available");
    wait_console(&a, "guest a loses the disk", "disk removed vdb");

    // Another guest, on the other node, finds the mark.
    let b = launch(None);
    wait_console(&b, "guest b booted", "GUMTREE-BOOT-OK");
    if node_of(&cloud, &b) == node_of(&cloud, &a) {
        eprintln!("note: both guests landed on {}", node_of(&cloud, &a));
    }
    v2(&[
        "ec2",
        "attach-volume",
        "--volume-id",
        &vol,
        "--instance-id",
        &b,
        "--device",
        "/dev/sdh",
    ]);
    // kill -9 of the SC while it attaches: the attachment is made once the
    // SC is back.
    cloud.kill("sc-1");
    cloud.restart("sc-1");
    let text = wait_console(&b, "guest b reads the mark", "holds GUMTREE-MARK");
    assert!(
        text.contains("disk vdb holds GUMTREE-MARK after-the-node-restart"),
        "{text}"
    );

    // Its instance gone, the volume is free again.
    aws(
        &ec2,
        &["ec2", "terminate-instances", "--instance-ids", &a, &b],
    )
    .expect_ok();
    wait_for("the volume freed", Duration::from_secs(60), || {
        let d = v2(&["ec2", "describe-volumes", "--volume-ids", &vol]);
        (d["Volumes"][0]["State"] == "available").then_some(())
    });
    v2(&["ec2", "delete-volume", "--volume-id", &vol]);
}

#[test]
fn snapshots_go_to_walrus_incrementally_and_make_volumes() {
    let mut cloud = Cloud::start_with(CloudOptions {
        nodes: 1,
        ..Default::default()
    });
    wait_for(
        "walrus and the storage controller ENABLED",
        Duration::from_secs(30),
        || {
            (cloud.service_state("walrus").as_deref() == Some("ENABLED")
                && cloud.service_state("sc-1").as_deref() == Some("ENABLED")
                && cloud.service_state("cluster-1").as_deref() == Some("ENABLED"))
            .then_some(())
        },
    );
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-snapshots");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let aws = |args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, &ec2, args);
    let v2 = |args: &[&str]| json(&aws(args).expect_ok());
    let new_volume = |args: &[&str]| -> String {
        let mut all = vec!["ec2", "create-volume", "--availability-zone", "zone-1"];
        all.extend(args);
        let id = v2(&all)["VolumeId"].as_str().expect("VolumeId").to_string();
        wait_volume(&aws, &id, "available");
        id
    };
    let snapshot = |vol: &str, description: &str| -> String {
        let made = v2(&[
            "ec2",
            "create-snapshot",
            "--volume-id",
            vol,
            "--description",
            description,
            "--tag-specifications",
            "ResourceType=snapshot,Tags=[{Key=Name,Value=backup}]",
        ]);
        assert_eq!(made["State"], "pending", "{made}");
        assert_eq!(made["VolumeSize"], 1, "{made}");
        let id = made["SnapshotId"].as_str().expect("SnapshotId").to_string();
        wait_snapshot(&aws, &id);
        id
    };
    let stored = |snap: &str| -> u64 {
        let log = fs::read_to_string(cloud.dir().join("sc-1.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("snapshot completed") && l.contains(snap))
            .find_map(|l| {
                l.split("stored_bytes=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("the SC logs what a snapshot stored")
    };

    // A 1 GiB volume with 3 MiB of data in it.
    let vol = new_volume(&["--size", "1"]);
    let pattern: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    write_at(&cloud, &vol, 100 << 20, &pattern);
    let first = snapshot(&vol, "first");
    assert_eq!(
        stored(&first),
        3 << 20,
        "only the chunks with data are stored"
    );
    // 1 MiB changed: the next snapshot stores that chunk alone.
    write_at(&cloud, &vol, 101 << 20, &[0xAB; 1 << 20]);
    let second = snapshot(&vol, "second");
    assert_eq!(stored(&second), 1 << 20, "an incremental snapshot");

    let listed = v2(&["ec2", "describe-snapshots", "--owner-ids", "self"]);
    assert_eq!(
        listed["Snapshots"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    let filtered = v2(&[
        "ec2",
        "describe-snapshots",
        "--filters",
        "Name=description,Values=sec*",
        "Name=tag:Name,Values=backup",
    ]);
    assert_eq!(
        filtered["Snapshots"][0]["SnapshotId"],
        second.as_str(),
        "{filtered}"
    );
    assert_eq!(filtered["Snapshots"][0]["Progress"], "100%", "{filtered}");

    // A volume from the first snapshot holds the first data, at any size
    // from the snapshot's up; smaller is refused.
    aws(&[
        "ec2",
        "create-volume",
        "--availability-zone",
        "zone-1",
        "--snapshot-id",
        &first,
        "--size",
        "0",
    ])
    .expect_err("InvalidParameterValue");
    let restored = new_volume(&["--snapshot-id", &first, "--size", "2"]);
    let described = v2(&["ec2", "describe-volumes", "--volume-ids", &restored]);
    assert_eq!(
        described["Volumes"][0]["SnapshotId"],
        first.as_str(),
        "{described}"
    );
    assert_eq!(described["Volumes"][0]["Size"], 2, "{described}");
    assert_eq!(read_at(&cloud, &restored, 100 << 20, 3 << 20), pattern);
    assert_eq!(read_at(&cloud, &restored, 0, 4096), vec![0; 4096]);
    let by_snapshot = v2(&[
        "ec2",
        "describe-volumes",
        "--filters",
        &format!("Name=snapshot-id,Values={first}"),
    ]);
    assert_eq!(by_snapshot["Volumes"].as_array().map(Vec::len), Some(1));

    // Another account: none of it, until it may make volumes from one.
    let (key, secret) = cloud.new_account("other");
    let theirs = Credentials::new((key, secret));
    let as_other = |args: &[&str]| clients::aws(AwsCli::V2, &theirs, &home, &ec2, args);
    let seen = json(&as_other(&["ec2", "describe-snapshots"]).expect_ok());
    assert_eq!(seen["Snapshots"], serde_json::json!([]), "{seen}");
    as_other(&[
        "ec2",
        "create-volume",
        "--availability-zone",
        "zone-1",
        "--snapshot-id",
        &second,
    ])
    .expect_err("InvalidSnapshot.NotFound");
    let other_id = json(&as_other(&["sts", "get-caller-identity"]).stdout())["Account"]
        .as_str()
        .map(str::to_string);
    let other_id = match other_id {
        Some(id) => id,
        None => cloud
            .admin_json(&["describe-accounts"])
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == "other"))
            .and_then(|x| x["account_id"].as_str())
            .expect("other's id")
            .to_string(),
    };
    aws(&[
        "ec2",
        "modify-snapshot-attribute",
        "--snapshot-id",
        &second,
        "--attribute",
        "createVolumePermission",
        "--operation-type",
        "add",
        "--user-ids",
        &other_id,
    ])
    .expect_ok();
    let attr = v2(&[
        "ec2",
        "describe-snapshot-attribute",
        "--snapshot-id",
        &second,
        "--attribute",
        "createVolumePermission",
    ]);
    assert_eq!(
        attr["CreateVolumePermissions"][0]["UserId"],
        other_id.as_str(),
        "{attr}"
    );
    let shared = json(
        &as_other(&[
            "ec2",
            "create-volume",
            "--availability-zone",
            "zone-1",
            "--snapshot-id",
            &second,
        ])
        .expect_ok(),
    );
    let shared_id = shared["VolumeId"].as_str().expect("VolumeId").to_string();
    wait_volume(&as_other, &shared_id, "available");
    assert_eq!(
        read_at(&cloud, &shared_id, 101 << 20, 1 << 20),
        vec![0xAB; 1 << 20]
    );
    as_other(&["ec2", "delete-snapshot", "--snapshot-id", &second])
        .expect_err("InvalidSnapshot.NotFound");

    // Deleted: gone, and the chunks only it held with it; the first
    // snapshot still makes whole volumes.
    aws(&["ec2", "delete-snapshot", "--snapshot-id", &second]).expect_ok();
    aws(&["ec2", "describe-snapshots", "--snapshot-ids", &second])
        .expect_err("InvalidSnapshot.NotFound");
    aws(&["ec2", "delete-snapshot", "--snapshot-id", "snap-bad"])
        .expect_err("InvalidSnapshotID.Malformed");
    let again = new_volume(&["--snapshot-id", &first]);
    assert_eq!(read_at(&cloud, &again, 100 << 20, 3 << 20), pattern);

    // kill -9 of the SC in the middle of a snapshot: after its restart the
    // snapshot completes (never `completed` with data missing) and holds
    // the volume's data.
    let big = new_volume(&["--size", "1"]);
    let data: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    write_at(&cloud, &big, 0, &data);
    let made = v2(&["ec2", "create-snapshot", "--volume-id", &big]);
    let cut = made["SnapshotId"].as_str().expect("SnapshotId").to_string();
    std::thread::sleep(Duration::from_millis(300));
    cloud.kill("sc-1");
    cloud.restart("sc-1");
    wait_snapshot(&aws, &cut);
    let restored = new_volume(&["--snapshot-id", &cut]);
    assert!(
        read_at(&cloud, &restored, 0, 64 << 20) == data,
        "the snapshot cut off by kill -9 holds the volume's data"
    );
}

/// The instance-store tiny guest's root disk, copied onto a volume from
/// inside a running guest and snapshotted, becomes an EBS-backed image (as
/// users turn an instance-store AMI into an EBS one); instances of it boot
/// from their own root volume, keep it through stop and start, and lose it
/// on termination as its mapping says.
#[test]
fn an_ebs_backed_image_boots_from_its_root_volume_and_keeps_it_through_stop_and_start() {
    let _guests = GUESTS.lock().unwrap_or_else(|p| p.into_inner());
    let tiny = clients::tiny_guest();
    let cloud = guest_cloud(1);
    let _sweep = Sweep(cloud.dir().to_path_buf());
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-ebs");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let s3 = cloud.s3_endpoint();
    let aws =
        |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, endpoint, args);
    let v2 = |args: &[&str]| json(&aws(&ec2, args).expect_ok());
    let ec2_run = |a: &[&str]| aws(&ec2, a);
    let (aki, ari, ami) =
        clients::register_tiny(&tiny, &|e: &str, a: &[&str]| aws(e, a), &s3, &ec2);
    let console = |id: &str| -> String {
        let out = v2(&["ec2", "get-console-output", "--instance-id", id, "--latest"]);
        out["Output"].as_str().unwrap_or_default().replace('\r', "")
    };
    let wait_console = |id: &str, what: &str, needle: &str| -> String {
        wait_for_text(what, Duration::from_secs(180), || console(id), needle)
    };
    let wait_state = |id: &str, state: &str| {
        wait_for(&format!("{id} {state}"), Duration::from_secs(180), || {
            (clients::instance_state(&ec2_run, id) == state).then_some(())
        });
    };

    // A running instance-store guest copies its root disk onto a volume.
    let copier = v2(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--user-data",
        // The copy is read back past the page cache and made again until
        // it is whole; a retry shows on the console (GUMTREE-COPY-RETRY).
        "#!/bin/sh\nwhile [ ! -b /dev/vdb ]; do sleep 1; done\nwant=$(dd if=/dev/vda bs=1M count=16 2>/dev/null | md5sum)\nfor i in 1 2 3 4 5 6 7 8 9 10; do\n  dd if=/dev/vda of=/dev/vdb bs=1M count=16 conv=fsync 2>/dev/null\n  if [ \"$(dd if=/dev/vdb bs=1M count=16 iflag=direct 2>/dev/null | md5sum)\" = \"$want\" ]; then echo GUMTREE-ROOT-COPIED; exit 0; fi\n  echo GUMTREE-COPY-RETRY $i; sleep 1\ndone\necho GUMTREE-COPY-FAILED\n",
    ])["Instances"][0]["InstanceId"]
        .as_str()
        .expect("InstanceId")
        .to_string();
    let vol = v2(&[
        "ec2",
        "create-volume",
        "--size",
        "1",
        "--availability-zone",
        "zone-1",
    ])["VolumeId"]
        .as_str()
        .expect("VolumeId")
        .to_string();
    wait_volume(&ec2_run, &vol, "available");
    wait_state(&copier, "running");
    v2(&[
        "ec2",
        "attach-volume",
        "--volume-id",
        &vol,
        "--instance-id",
        &copier,
        "--device",
        "/dev/sdf",
    ]);
    // (At a line's start: the user-data, printed on the console before it
    // runs, has the words after an `echo`.)
    wait_console(&copier, "the root disk copied", "\nGUMTREE-ROOT-COPIED");
    v2(&["ec2", "detach-volume", "--volume-id", &vol]);
    wait_volume(&ec2_run, &vol, "available");
    let snap = v2(&["ec2", "create-snapshot", "--volume-id", &vol])["SnapshotId"]
        .as_str()
        .expect("SnapshotId")
        .to_string();
    wait_snapshot(&ec2_run, &snap);
    aws(
        &ec2,
        &["ec2", "terminate-instances", "--instance-ids", &copier],
    )
    .expect_ok();

    // Registered with its root device mapped to the snapshot.
    let mapping = format!("DeviceName=/dev/sda1,Ebs={{SnapshotId={snap}}}");
    aws(
        &ec2,
        &[
            "ec2",
            "register-image",
            "--name",
            "tiny-ebs-bad",
            "--root-device-name",
            "/dev/sda1",
            "--block-device-mappings",
            "DeviceName=/dev/sda1,Ebs={SnapshotId=snap-0123456789abcdef0}",
        ],
    )
    .expect_err("InvalidSnapshot.NotFound");
    aws(
        &ec2,
        &[
            "ec2",
            "register-image",
            "--name",
            "tiny-ebs-bad",
            "--root-device-name",
            "/dev/sda1",
            "--block-device-mappings",
            "DeviceName=/dev/sdz9z,Ebs={VolumeSize=1}",
        ],
    )
    .expect_err("InvalidBlockDeviceMapping");
    let ebs_ami = v2(&[
        "ec2",
        "register-image",
        "--name",
        "tiny-ebs",
        "--root-device-name",
        "/dev/sda1",
        "--block-device-mappings",
        &mapping,
        "--kernel-id",
        &aki,
        "--ramdisk-id",
        &ari,
    ])["ImageId"]
        .as_str()
        .expect("ImageId")
        .to_string();
    let image = &v2(&["ec2", "describe-images", "--image-ids", &ebs_ami])["Images"][0];
    assert_eq!(image["RootDeviceType"], "ebs", "{image}");
    assert_eq!(image["RootDeviceName"], "/dev/sda1", "{image}");
    let root_map = &image["BlockDeviceMappings"][0];
    assert_eq!(root_map["DeviceName"], "/dev/sda1", "{image}");
    assert_eq!(root_map["Ebs"]["SnapshotId"], snap.as_str(), "{image}");
    assert_eq!(root_map["Ebs"]["VolumeSize"], 1, "{image}");
    assert_eq!(root_map["Ebs"]["DeleteOnTermination"], true, "{image}");
    aws(&ec2, &["ec2", "delete-snapshot", "--snapshot-id", &snap])
        .expect_err("InvalidSnapshot.InUse");

    // Launched with one more volume from the launch's own mapping.
    let id = v2(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ebs_ami,
        "--block-device-mappings",
        "DeviceName=/dev/sdg,Ebs={VolumeSize=2,DeleteOnTermination=false}",
        "--user-data",
        "#!/bin/sh\nprintf 'GUMTREE-MARK kept\\n' | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null\necho GUMTREE-ROOT-MARKED\n",
    ])["Instances"][0]["InstanceId"]
        .as_str()
        .expect("InstanceId")
        .to_string();
    wait_state(&id, "running");
    let text = wait_console(&id, "the EBS guest marks its root", "\nGUMTREE-ROOT-MARKED");
    assert!(
        text.contains("root disk: gumtree tiny guest root disk"),
        "the root came from the snapshot:\n{text}"
    );
    assert!(!text.contains("disk vda holds"), "a fresh root: {text}");
    wait_console(&id, "the launch's extra volume", "disk added vdb 2048 MiB");
    let described = v2(&["ec2", "describe-instances", "--instance-ids", &id]);
    let instance = &described["Reservations"][0]["Instances"][0];
    assert_eq!(instance["RootDeviceType"], "ebs", "{instance}");
    assert_eq!(instance["RootDeviceName"], "/dev/sda1", "{instance}");
    let mappings = instance["BlockDeviceMappings"]
        .as_array()
        .expect("mappings");
    let volume_at = |device: &str| -> String {
        mappings
            .iter()
            .find(|m| m["DeviceName"] == device)
            .and_then(|m| m["Ebs"]["VolumeId"].as_str())
            .unwrap_or_else(|| panic!("no {device} in {instance}"))
            .to_string()
    };
    let root = volume_at("/dev/sda1");
    let extra = volume_at("/dev/sdg");
    let root_volume = &v2(&["ec2", "describe-volumes", "--volume-ids", &root])["Volumes"][0];
    assert_eq!(root_volume["SnapshotId"], snap.as_str(), "{root_volume}");
    assert_eq!(root_volume["State"], "in-use", "{root_volume}");
    assert_eq!(
        root_volume["Attachments"][0]["DeleteOnTermination"], true,
        "{root_volume}"
    );
    aws(&ec2, &["ec2", "detach-volume", "--volume-id", &root]).expect_err("IncorrectState");

    // Stopped and started: the same root, with what the guest wrote.
    v2(&["ec2", "stop-instances", "--instance-ids", &id]);
    wait_state(&id, "stopped");
    v2(&["ec2", "start-instances", "--instance-ids", &id]);
    wait_state(&id, "running");
    wait_console(
        &id,
        "the restarted guest finds its mark",
        "disk vda holds GUMTREE-MARK kept",
    );

    // CreateImage: the instance is stopped, its volumes snapshotted, and it
    // runs again; an instance of the new image boots from a copy of the root
    // as it was, mark included.
    let copy = v2(&[
        "ec2",
        "create-image",
        "--instance-id",
        &id,
        "--name",
        "tiny-ebs-copy",
    ])["ImageId"]
        .as_str()
        .expect("ImageId")
        .to_string();
    wait_for("the new image available", Duration::from_secs(240), || {
        let d = v2(&["ec2", "describe-images", "--image-ids", &copy]);
        let state = d["Images"][0]["State"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_ne!(state, "failed", "{d}");
        (state == "available").then_some(d)
    });
    wait_state(&id, "running");
    let image = &v2(&["ec2", "describe-images", "--image-ids", &copy])["Images"][0];
    assert_eq!(image["RootDeviceType"], "ebs", "{image}");
    let devices = image["BlockDeviceMappings"].as_array().expect("mappings");
    assert_eq!(devices.len(), 2, "{image}");
    let copied_root = devices
        .iter()
        .find(|d| d["DeviceName"] == "/dev/sda1")
        .expect("the root mapping");
    let copied_snap = copied_root["Ebs"]["SnapshotId"]
        .as_str()
        .expect("a snapshot")
        .to_string();
    let from = &v2(&["ec2", "describe-snapshots", "--snapshot-ids", &copied_snap])["Snapshots"][0];
    assert_eq!(from["VolumeId"], root.as_str(), "{from}");
    let second = v2(&[
        "ec2",
        "run-instances",
        "--image-id",
        &copy,
        "--block-device-mappings",
        "DeviceName=/dev/sdg,NoDevice=\"\"",
    ])["Instances"][0]["InstanceId"]
        .as_str()
        .expect("InstanceId")
        .to_string();
    wait_console(
        &second,
        "the image's copy of the root boots with the mark",
        "disk vda holds GUMTREE-MARK kept",
    );
    aws(
        &ec2,
        &["ec2", "terminate-instances", "--instance-ids", &second],
    )
    .expect_ok();
    aws(
        &ec2,
        &[
            "ec2",
            "create-image",
            "--instance-id",
            &copier,
            "--name",
            "from-instance-store",
        ],
    )
    .expect_err("UnsupportedOperation");

    // Reverted to its launch state: a new root from the image's snapshot,
    // the same instance, its extra volume still there; the old root stays.
    // The console keeps its last 64 KiB: the boot before is told apart by
    // its text, not counted.
    let boot_before = console(&id)
        .rsplit("Linux version")
        .next()
        .unwrap_or_default()
        .to_string();
    let task = v2(&[
        "ec2",
        "create-replace-root-volume-task",
        "--instance-id",
        &id,
    ])["ReplaceRootVolumeTask"]["ReplaceRootVolumeTaskId"]
        .as_str()
        .expect("ReplaceRootVolumeTaskId")
        .to_string();
    wait_for("the root replaced", Duration::from_secs(240), || {
        let d = v2(&[
            "ec2",
            "describe-replace-root-volume-tasks",
            "--filters",
            &format!("Name=instance-id,Values={id}"),
        ]);
        let t = &d["ReplaceRootVolumeTasks"][0];
        assert_eq!(t["ReplaceRootVolumeTaskId"], task.as_str(), "{d}");
        if t["TaskState"] == "failed" {
            let log = fs::read_to_string(cloud.dir().join("clc.log")).unwrap_or_default();
            let why: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("root") || l.contains("not attached"))
                .collect();
            panic!("{d}\n{}", why.join("\n"));
        }
        (t["TaskState"] == "succeeded").then_some(())
    });
    wait_state(&id, "running");
    let text = wait_for(
        "the reverted guest booted",
        Duration::from_secs(180),
        || {
            let text = console(&id);
            let last = text.rsplit("Linux version").next().unwrap_or_default();
            (last != boot_before && last.contains("\nGUMTREE-ROOT-MARKED")).then_some(text)
        },
    );
    let last_boot = text.rsplit("Linux version").next().unwrap_or_default();
    assert!(
        last_boot.contains("GUMTREE-BOOT-OK") && !last_boot.contains("disk vda holds"),
        "the reverted root has no mark:\n{last_boot}"
    );
    let described = v2(&["ec2", "describe-instances", "--instance-ids", &id]);
    let instance = &described["Reservations"][0]["Instances"][0];
    let mappings = instance["BlockDeviceMappings"]
        .as_array()
        .expect("mappings");
    let now_root = mappings
        .iter()
        .find(|m| m["DeviceName"] == "/dev/sda1")
        .and_then(|m| m["Ebs"]["VolumeId"].as_str())
        .expect("a root")
        .to_string();
    assert_ne!(now_root, root, "{instance}");
    assert!(
        mappings.iter().any(|m| m["DeviceName"] == "/dev/sdg"),
        "{instance}"
    );
    wait_volume(&ec2_run, &root, "available");
    v2(&["ec2", "delete-volume", "--volume-id", &root]);
    let root = now_root;

    // Terminated: the root goes with it; the extra volume stays, free.
    aws(&ec2, &["ec2", "terminate-instances", "--instance-ids", &id]).expect_ok();
    wait_for("the root volume deleted", Duration::from_secs(120), || {
        aws(&ec2, &["ec2", "describe-volumes", "--volume-ids", &root])
            .stderr()
            .contains("InvalidVolume.NotFound")
            .then_some(())
    });
    wait_volume(&ec2_run, &extra, "available");
    v2(&["ec2", "delete-volume", "--volume-id", &extra]);
    v2(&["ec2", "deregister-image", "--image-id", &ebs_ami]);
    v2(&["ec2", "delete-snapshot", "--snapshot-id", &snap]);
    v2(&["ec2", "deregister-image", "--image-id", &copy]);
    v2(&["ec2", "delete-volume", "--volume-id", &vol]);
}
