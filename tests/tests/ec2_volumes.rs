//! EBS volumes through the EC2 API: made, listed, changed and deleted by
//! the zone's real storage controller, with the AWS CLI v2 and v1 and
//! boto3, and kept through kill -9 of the SC and a CLC restart.

use std::{fs, path::PathBuf, time::Duration};

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{wait_for, Cloud, CloudOptions},
};

const GIB: u64 = 1 << 30;

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
    let sc_volumes = cloud.dir().join("sc-1").join("volumes");
    let volume_file = |id: &str| -> PathBuf { sc_volumes.join(format!("{id}.img")) };

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
    let size = fs::metadata(volume_file(&id))
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
    aws(
        AwsCli::V2,
        &["ec2", "wait", "volume-available", "--volume-ids", &other_id],
    )
    .expect_ok();

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
    ];
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

    // boto3 sees the same, paged.
    let script = home.join("volumes.py");
    fs::write(
        &script,
        r#"
import os, boto3
ec2 = boto3.client("ec2", endpoint_url=os.environ["GUMTREE_EC2_ENDPOINT"], region_name="gumtree")
pages = ec2.get_paginator("describe_volumes").paginate(PaginationConfig={"PageSize": 5})
ids = [v["VolumeId"] for p in pages for v in p["Volumes"]]
print(" ".join(sorted(ids)))
"#,
    )
    .expect("script");
    let boto = clients::python_script(&creds, &home, &script, &[("GUMTREE_EC2_ENDPOINT", &ec2)])
        .expect_ok();
    let mut want = [id.clone(), other_id.clone()];
    want.sort();
    assert_eq!(boto.trim(), want.join(" "));

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
    assert!(volume_file(&id).exists());

    // Deleted: gone from the listing and from the SC's disk.
    assert_eq!(
        v2(&["ec2", "delete-volume", "--volume-id", &id]),
        serde_json::Value::Null
    );
    aws(
        AwsCli::V2,
        &["ec2", "wait", "volume-deleted", "--volume-ids", &id],
    )
    .expect_ok();
    assert!(!volume_file(&id).exists(), "the SC removed its data");
    let left = v2(&["ec2", "describe-volumes"]);
    assert_eq!(left["Volumes"].as_array().map(Vec::len), Some(1), "{left}");
}
