//! The image registry through the EC2 Query API, driven by boto3, boto 2
//! and both AWS CLIs, with the image bytes in Walrus.

use std::fs;

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{wait_for, Cloud},
};

fn account_id(cloud: &Cloud, name: &str) -> String {
    let accounts = cloud.admin_json(&["describe-accounts"]);
    accounts
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .and_then(|a| a["account_id"].as_str())
        .expect("account listed")
        .to_string()
}

#[test]
fn images_are_registered_described_shared_and_deregistered() {
    let cloud = Cloud::start();
    wait_for(
        "walrus and the cluster ENABLED",
        std::time::Duration::from_secs(15),
        || {
            (cloud.service_state("walrus").as_deref() == Some("ENABLED")
                && cloud.service_state("cluster-1").as_deref() == Some("ENABLED"))
            .then_some(())
        },
    );
    let creds = Credentials::new(cloud.admin_key());
    let (other_key, other_secret) = cloud.new_account("other");
    let other_id = account_id(&cloud, "other");
    let home = cloud.dir().join("home-ec2");
    fs::create_dir_all(&home).expect("home");
    let ec2 = cloud.ec2_endpoint();
    let s3 = cloud.s3_endpoint();
    let run = clients::python_script(
        &creds,
        &home,
        &clients::script("ec2_images.py"),
        &[
            ("GUMTREE_EC2_ENDPOINT", &ec2),
            ("GUMTREE_S3_ENDPOINT", &s3),
            ("GUMTREE_OTHER_KEY", &other_key),
            ("GUMTREE_OTHER_SECRET", &other_secret),
            ("GUMTREE_OTHER_ID", &other_id),
        ],
    );
    let out = run.expect_ok();
    assert!(out.contains("ec2 images: all checks passed"), "{out}");

    // Both AWS CLIs see the kernel and ramdisk left registered.
    for which in [AwsCli::V1, AwsCli::V2] {
        let listed = clients::aws(
            which,
            &creds,
            &home,
            &ec2,
            &[
                "ec2",
                "describe-images",
                "--owners",
                "self",
                "--output",
                "json",
            ],
        )
        .expect_ok();
        let json: serde_json::Value = serde_json::from_str(&listed).expect("json");
        let mut types: Vec<&str> = json["Images"]
            .as_array()
            .expect("images")
            .iter()
            .filter_map(|i| i["ImageType"].as_str())
            .collect();
        types.sort();
        assert_eq!(types, ["kernel", "ramdisk"], "{which:?}: {listed}");
        let zones = clients::aws(
            which,
            &creds,
            &home,
            &ec2,
            &["ec2", "describe-availability-zones", "--output", "text"],
        )
        .expect_ok();
        assert!(
            zones.contains("zone-1") && zones.contains("available"),
            "{zones}"
        );
    }
    let wrong = Credentials {
        secret_key: "not-the-secret".into(),
        ..creds.clone()
    };
    clients::aws(AwsCli::V2, &wrong, &home, &ec2, &["ec2", "describe-images"])
        .expect_err("AuthFailure");
}
