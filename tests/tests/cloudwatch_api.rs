//! The CloudWatch API with today's clients: boto3 (smithy-rpc-v2-cbor),
//! hand-signed awsJson1_0 and Query calls (cloudwatch_api.py), the AWS CLI
//! v2 from Debian (Query) and v1 from PyPI; and metrics kept across a
//! kill -9 of the cloud controller. Instance metrics from real guests are
//! cloudwatch_guests.rs's.

use std::{fs, time::Duration};

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{wait_for, Cloud},
};

fn cw_endpoint(cloud: &Cloud) -> String {
    format!("{}services/CloudWatch", cloud.ec2_endpoint())
}

/// `get-metric-statistics` of the test's `Jobs` metric (Queue=main) in
/// namespace `ns`: its Sum and SampleCount.
fn jobs<'a>(ns: &'a str, start: &'a str, end: &'a str, period: &'a str) -> Vec<&'a str> {
    vec![
        "cloudwatch",
        "get-metric-statistics",
        "--namespace",
        ns,
        "--metric-name",
        "Jobs",
        "--dimensions",
        "Name=Queue,Value=main",
        "--start-time",
        start,
        "--end-time",
        end,
        "--period",
        period,
        "--statistics",
        "Sum",
        "SampleCount",
        "--output",
        "json",
    ]
}

#[test]
fn custom_metrics_alarms_and_errors_in_every_protocol() {
    let mut cloud = Cloud::start();
    let creds = Credentials::new(cloud.new_account("metrics"));
    let (other_key, other_secret) = cloud.new_account("neighbour");
    let home = cloud.dir().join("home-cw");
    fs::create_dir_all(&home).expect("home");
    let endpoint = cw_endpoint(&cloud);
    let run = clients::python_script(
        &creds,
        &home,
        &clients::script("cloudwatch_api.py"),
        &[
            ("GUMTREE_CW_ENDPOINT", &endpoint),
            ("GUMTREE_OTHER_KEY", &other_key),
            ("GUMTREE_OTHER_SECRET", &other_secret),
        ],
    );
    let out = run.expect_ok();
    eprintln!("{out}");
    assert!(out.contains("cloudwatch api: all checks passed"), "{out}");

    // The AWS CLIs: v2 from Debian speaks Query, v1 from PyPI whatever its
    // botocore picks.
    let now = common::time::unix_secs();
    let start = common::time::iso8601_ms((now - 600) * 1000);
    let end = common::time::iso8601_ms((now + 60) * 1000);
    for (cli, ns, value) in [
        (AwsCli::V2, "Lab/CliV2", "7.5"),
        (AwsCli::V1, "Lab/CliV1", "2.5"),
    ] {
        let aws = |args: &[&str]| clients::aws(cli, &creds, &home, &endpoint, args);
        for _ in 0..2 {
            aws(&[
                "cloudwatch",
                "put-metric-data",
                "--namespace",
                ns,
                "--metric-name",
                "Jobs",
                "--unit",
                "Count",
                "--value",
                value,
                "--dimensions",
                "Queue=main",
            ])
            .expect_ok();
        }
        let got = aws(&jobs(ns, &start, &end, "3600")).expect_ok();
        let v: serde_json::Value = serde_json::from_str(&got).expect("json");
        let sum: f64 = value.parse::<f64>().expect("value") * 2.0;
        assert_eq!(v["Datapoints"][0]["Sum"], sum, "{cli:?}: {v}");
        assert_eq!(v["Datapoints"][0]["SampleCount"], 2.0, "{cli:?}: {v}");
        assert_eq!(v["Datapoints"][0]["Unit"], "Count", "{cli:?}: {v}");
        let listed = aws(&[
            "cloudwatch",
            "list-metrics",
            "--namespace",
            ns,
            "--output",
            "json",
        ])
        .expect_ok();
        assert!(listed.contains("\"Queue\""), "{cli:?}: {listed}");
        // A bad period is refused with CloudWatch's code.
        let refused = aws(&jobs(ns, &start, &end, "61"));
        refused.expect_err("InvalidParameterValue");
    }

    // What was acknowledged survives a kill -9 of the cloud controller.
    cloud.kill("clc");
    cloud.restart("clc");
    let sum = wait_for(
        "CloudWatch back after the restart",
        Duration::from_secs(30),
        || {
            let run = clients::aws(
                AwsCli::V2,
                &creds,
                &home,
                &cw_endpoint(&cloud),
                &jobs("Lab/CliV2", &start, &end, "3600"),
            );
            let v: serde_json::Value = serde_json::from_str(&run.stdout()).ok()?;
            v["Datapoints"][0]["Sum"].as_f64()
        },
    );
    assert_eq!(sum, 15.0);
}
