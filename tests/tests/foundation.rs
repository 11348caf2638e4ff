//! The foundation: all tiers up and visible, node liveness, refusing
//! strangers, durable writes, clean shutdown. Real processes, real gRPC.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{auth::ClusterSecret, pki::Role};
use nix::sys::signal::Signal;
use proto::{
    admin_service_client::AdminServiceClient, CreateAccountRequest, DescribeAccountsRequest,
};
use tests::harness::{binary, wait_for, Cloud, CloudOptions, Tier};

fn services(cloud: &Cloud) -> Vec<serde_json::Value> {
    cloud
        .admin_json(&["describe-services"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn all_tiers_come_up_and_the_clc_lists_each() {
    let cloud = Cloud::start();
    let expected = [
        ("cloud", "clc"),
        ("walrus", "walrus"),
        ("storage", "sc-1"),
        ("cluster", "cluster-1"),
    ];
    wait_for("every service ENABLED", Duration::from_secs(15), || {
        let listed = services(&cloud);
        expected
            .iter()
            .all(|(kind, name)| {
                listed.iter().any(|s| {
                    s["service_type"] == *kind && s["name"] == *name && s["state"] == "ENABLED"
                })
            })
            .then_some(())
    });
    let listed = services(&cloud);
    assert_eq!(listed.len(), 4, "exactly the four services: {listed:#?}");
    for (kind, name) in expected {
        let s = listed.iter().find(|s| s["name"] == name).expect("listed");
        assert_eq!(
            s["endpoint"],
            cloud.addr(name).to_string(),
            "{kind} {name} endpoint"
        );
    }
    let cluster = listed
        .iter()
        .find(|s| s["name"] == "cluster-1")
        .expect("cluster");
    assert_eq!(cluster["partition"], "zone-1");

    let node = wait_for("nc-1 ENABLED", Duration::from_secs(15), || {
        let nodes = cloud.admin_json(&["describe-nodes"]);
        nodes
            .as_array()?
            .iter()
            .find(|n| n["name"] == "nc-1" && n["state"] == "ENABLED")
            .cloned()
    });
    assert_eq!(node["cluster"], "cluster-1");
    assert_eq!(node["zone"], "zone-1");
    assert_eq!(node["endpoint"], cloud.addr("nc-1").to_string());
    assert_eq!(
        (node["cores_total"].as_u64(), node["cores_free"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(node["memory_mib_total"].as_u64(), Some(4096));
    let disk_total = node["disk_gib_total"].as_u64().expect("disk total");
    let disk_free = node["disk_gib_free"].as_u64().expect("disk free");
    assert!(
        disk_total > 0 && disk_free <= disk_total,
        "disk {disk_free}/{disk_total}"
    );

    // What an operator reads: the table.
    let table = cloud.admin(&["describe-nodes"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let row = text.lines().find(|l| l.contains("nc-1")).expect("nc-1 row");
    assert!(
        row.contains("ENABLED") && row.contains("4/4") && row.contains("4096/4096"),
        "{row}"
    );
}

#[test]
fn a_killed_node_goes_notready_and_comes_back() {
    let mut cloud = Cloud::start();
    wait_for("nc-1 ENABLED", Duration::from_secs(15), || {
        (cloud.node_state("nc-1").as_deref() == Some("ENABLED")).then_some(())
    });
    let killed = Instant::now();
    cloud.kill("nc-1");
    wait_for("nc-1 NOTREADY", Duration::from_secs(10), || {
        (cloud.node_state("nc-1").as_deref() == Some("NOTREADY")).then_some(())
    });
    eprintln!("nc-1 NOTREADY {:?} after SIGKILL", killed.elapsed());
    cloud.restart("nc-1");
    wait_for("nc-1 ENABLED again", Duration::from_secs(10), || {
        (cloud.node_state("nc-1").as_deref() == Some("ENABLED")).then_some(())
    });
    // Still one node, at its new endpoint.
    let nodes = cloud.admin_json(&["describe-nodes"]);
    let nodes = nodes.as_array().expect("array");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["endpoint"], cloud.addr("nc-1").to_string());
}

#[test]
fn a_silent_node_goes_notready_and_comes_back() {
    let cloud = Cloud::start();
    wait_for("nc-1 ENABLED", Duration::from_secs(15), || {
        (cloud.node_state("nc-1").as_deref() == Some("ENABLED")).then_some(())
    });
    // A frozen node keeps its connection open but stops reporting.
    cloud.signal("nc-1", Signal::SIGSTOP);
    let stopped = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("frozen nc-1 NOTREADY", Duration::from_secs(10), || {
            (cloud.node_state("nc-1").as_deref() == Some("NOTREADY")).then_some(())
        })
    }));
    cloud.signal("nc-1", Signal::SIGCONT);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    eprintln!("frozen nc-1 NOTREADY {:?} after SIGSTOP", stopped.elapsed());
    wait_for("thawed nc-1 ENABLED", Duration::from_secs(15), || {
        (cloud.node_state("nc-1").as_deref() == Some("ENABLED")).then_some(())
    });
}

#[test]
fn a_late_report_on_an_open_stream_is_suspicion_not_death() {
    // Reports every second, NOTREADY after 2 s of silence: a busy host
    // easily misses that.
    let cloud = Cloud::start_with(CloudOptions {
        clc_config: "report_timeout_secs = 2\n".into(),
        walrus_config: "heartbeat_secs = 1\n".into(),
        ..Default::default()
    });
    wait_for("walrus ENABLED", Duration::from_secs(10), || {
        (cloud.service_state("walrus").as_deref() == Some("ENABLED")).then_some(())
    });
    // Walrus stops reporting for 3.5 s, its connection open all along (a
    // saturated host): it stays ENABLED, and says it is late.
    cloud.signal("walrus", Signal::SIGSTOP);
    let frozen = Instant::now();
    let mut states = Vec::new();
    let mut late = false;
    while frozen.elapsed() < Duration::from_millis(3_500) {
        let listed = services(&cloud);
        let walrus = listed.iter().find(|s| s["name"] == "walrus").cloned();
        let walrus = walrus.unwrap_or_default();
        states.push(walrus["state"].as_str().unwrap_or_default().to_string());
        late |= walrus["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("late");
        std::thread::sleep(Duration::from_millis(200));
    }
    cloud.signal("walrus", Signal::SIGCONT);
    assert!(
        states.iter().all(|s| s == "ENABLED"),
        "Walrus flapped while late: {states:?}"
    );
    assert!(late, "the late reports were not shown");
    // Silent for good (longer than three timeouts, or its connection gone):
    // NOTREADY.
    wait_for("walrus to report again", Duration::from_secs(5), || {
        services(&cloud)
            .iter()
            .any(|s| s["name"] == "walrus" && s["detail"] == "")
            .then_some(())
    });
    cloud.signal("walrus", Signal::SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("frozen walrus NOTREADY", Duration::from_secs(12), || {
            (cloud.service_state("walrus").as_deref() == Some("NOTREADY")).then_some(())
        })
    }));
    cloud.signal("walrus", Signal::SIGCONT);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_cluster_with_the_wrong_secret_is_refused() {
    let mut cloud = Cloud::start();
    let clc = cloud.addr("clc");
    let wrong = cloud.dir().join("wrong.secret");
    std::fs::write(&wrong, ClusterSecret::generate()).expect("write");
    cloud.add(
        "rogue",
        Tier::Cluster,
        &format!("name = \"rogue\"\nzone = \"zone-9\"\nclc = \"{clc}\"\ncluster_secret_file = {wrong:?}\n"),
    );
    wait_for(
        "the rogue CC to be refused",
        Duration::from_secs(10),
        || {
            cloud
                .log("rogue")
                .contains("refused by cloud controller")
                .then_some(())
        },
    );
    // The real cluster is there; the stranger never is.
    wait_for("cluster-1 ENABLED", Duration::from_secs(10), || {
        (cloud.service_state("cluster-1").as_deref() == Some("ENABLED")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let listed = services(&cloud);
    assert!(listed.iter().all(|s| s["name"] != "rogue"), "{listed:#?}");
    assert!(cloud.log("clc").contains("refused internal call"));

    // The admin CLI with the wrong secret is refused too, and says why.
    let out = std::process::Command::new(binary("gumtree-admin"))
        .env("GUMTREE_CLC", clc.to_string())
        .env("GUMTREE_SECRET_FILE", &wrong)
        .env("GUMTREE_PKI_DIR", cloud.pki_dir())
        .arg("describe-services")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("internal call refused: signature does not match"),
        "{err}"
    );

    // And a raw gRPC call, over TLS with the administrator's certificate,
    // without any signature.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let trust = cloud.trust(Role::Admin, "admin");
    let code = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{clc}"))
            .expect("endpoint")
            .connect_with_connector(common::mtls::Connector::new(trust.tls.clone(), Role::Clc))
            .await
            .expect("connect");
        AdminServiceClient::new(channel)
            .describe_accounts(DescribeAccountsRequest {})
            .await
            .expect_err("unsigned call")
            .code()
    });
    assert_eq!(code, tonic::Code::Unauthenticated);
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_clc() {
    let mut cloud = Cloud::start();
    let clc = cloud.addr("clc").to_string();
    let trust = cloud.trust(Role::Admin, "test-admin");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (clc, trust, acked) = (clc.clone(), trust.clone(), acked.clone());
            rt.spawn(async move {
                let channel = trust.connect(&clc, Role::Clc).await.expect("connect");
                let mut client = AdminServiceClient::new(channel);
                for i in 0.. {
                    let name = format!("acct-{w}-{i}");
                    match client
                        .create_account(CreateAccountRequest { name: name.clone() })
                        .await
                    {
                        Ok(_) => acked.lock().expect("lock").push(name),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    wait_for("writes to be acknowledged", Duration::from_secs(30), || {
        (acked.lock().expect("lock").len() >= 200).then_some(())
    });
    cloud.kill("clc");
    rt.block_on(async {
        for w in writers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        }
    });
    let acked = acked.lock().expect("lock").clone();
    cloud.restart("clc");

    let listed = cloud.admin_json(&["describe-accounts"]);
    let names: std::collections::HashSet<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    eprintln!(
        "{} acknowledged, {} listed after SIGKILL",
        acked.len(),
        names.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged accounts lost: {lost:?}",
        lost.len()
    );
    assert!(names.contains("eucalyptus"), "the system account survives");

    // The tiers below find the restarted CLC by themselves.
    for name in ["cluster-1", "sc-1", "walrus"] {
        wait_for(
            &format!("{name} ENABLED after the CLC restart"),
            Duration::from_secs(15),
            || (cloud.service_state(name).as_deref() == Some("ENABLED")).then_some(()),
        );
    }
    wait_for(
        "nc-1 ENABLED after the CLC restart",
        Duration::from_secs(15),
        || (cloud.node_state("nc-1").as_deref() == Some("ENABLED")).then_some(()),
    );
}

#[test]
fn every_tier_stops_cleanly_on_sigterm() {
    let mut cloud = Cloud::start();
    wait_for("nc-1 ENABLED", Duration::from_secs(15), || {
        (cloud.node_state("nc-1").as_deref() == Some("ENABLED")).then_some(())
    });
    for name in ["nc-1", "cluster-1", "sc-1", "walrus", "clc"] {
        let status = cloud.terminate(name, Duration::from_secs(5));
        assert!(status.success(), "{name} exited with {status}");
        assert!(cloud.log(name).contains("stopped"), "{name} logs its stop");
    }
}

#[test]
fn unknown_config_fields_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("clc.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nreport_timeout = 6\n").expect("write");
    for tier in [
        Tier::Cloud,
        Tier::Cluster,
        Tier::Node,
        Tier::Storage,
        Tier::Walrus,
    ] {
        let out = std::process::Command::new(binary(tier.binary()))
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run");
        assert!(
            !out.status.success(),
            "{} accepted an unknown field",
            tier.binary()
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unknown field") && err.contains("report_timeout"),
            "{}: {err}",
            tier.binary()
        );
    }
}

#[test]
fn accounts_are_managed_from_the_admin_cli() {
    let cloud = Cloud::start();
    let created = cloud.admin_json(&["create-account", "lab"]);
    let id = created[0]["account_id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 12);
    let dup = cloud.admin(&["create-account", "lab"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let bad = cloud.admin(&["create-account", "Not Valid"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid account name"));

    let key = cloud.admin_json(&["create-access-key", "--account", "lab", "--user", "alice"]);
    assert_eq!(key[0]["account_id"], id.as_str());
    assert_eq!(key[0]["access_key_id"].as_str().map(str::len), Some(20));
    let keys = cloud.admin_json(&["describe-access-keys", "--account", &id]);
    assert_eq!(keys.as_array().map(Vec::len), Some(1));
    // Secrets are shown when a key is made, and later only when asked for.
    let secret = key[0]["secret_access_key"]
        .as_str()
        .expect("new key's secret");
    assert_eq!(
        keys[0]["secret_access_key"],
        serde_json::Value::Null,
        "{keys}"
    );
    let table = cloud.admin(&["describe-access-keys", "--account", &id]);
    assert!(!String::from_utf8_lossy(&table.stdout).contains(secret));
    let shown = cloud.admin_json(&["describe-access-keys", "--show-secrets", "--account", &id]);
    assert_eq!(shown[0]["secret_access_key"], secret);

    let system = cloud.admin_json(&["describe-access-keys", "--account", "eucalyptus"]);
    assert_eq!(system[0]["user_name"], "admin");
    let refuse = cloud.admin(&["delete-account", "eucalyptus"]);
    assert!(!refuse.status.success());

    cloud.admin_json(&["delete-account", "lab"]);
    let accounts = cloud.admin_json(&["describe-accounts"]);
    let names: Vec<&str> = accounts
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, vec!["eucalyptus"]);
}
