//! A real guest on a node: the tiny guest's kernel, ramdisk and disk go to
//! Walrus as a user would put them there; the node fetches them, boots the
//! guest on libvirt (QEMU TCG here), and its serial console shows the boot
//! marker. Stop, start, reboot, an NC SIGKILL and terminate follow, and
//! nothing is left behind.

use std::{fs, process::Command, time::Duration};

use common::auth::{ClusterSecret, SignCalls};
use proto::{
    node_service_client::NodeServiceClient, ImageRef, InstanceRef, InstanceSpec, InstanceState,
    RunInstanceRequest,
};
use sha2::{Digest, Sha256};
use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{Cloud, CloudOptions},
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

type Nc = NodeServiceClient<InterceptedService<Channel, SignCalls>>;

const MARKER: &str = "GUMTREE-BOOT-OK";

async fn node(cloud: &Cloud) -> Nc {
    let channel = common::rpc::connect(&cloud.addr("nc-1").to_string())
        .await
        .expect("connect to nc-1");
    let secret = ClusterSecret::from_file(cloud.secret_file()).expect("secret");
    NodeServiceClient::with_interceptor(channel, SignCalls::new(secret, "test"))
}

fn domains() -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn console(nc: &mut Nc, id: &str) -> String {
    let out = nc
        .get_console_output(InstanceRef {
            instance_id: id.into(),
        })
        .await
        .expect("console")
        .into_inner();
    String::from_utf8_lossy(&out.output).into_owned()
}

async fn wait_markers(nc: &mut Nc, id: &str, count: usize, timeout: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let text = console(nc, id).await;
        if text.matches(MARKER).count() >= count {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{id}: {count} boot marker(s) not on the console after {timeout:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes the domain if a failed test left it.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-c", "qemu:///system", "destroy", &self.0])
            .output();
        let _ = Command::new("virsh")
            .args(["-c", "qemu:///system", "undefine", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_boots_the_tiny_guest_and_cleans_up() {
    let tiny = clients::tiny_guest();
    let mut cloud = Cloud::start_with(CloudOptions {
        real_libvirt: true,
        ..Default::default()
    });
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-node");
    fs::create_dir_all(&home).expect("home");
    let s3 = cloud.s3_endpoint();
    let aws = |args: &[&str]| clients::aws(AwsCli::V1, &creds, &home, &s3, args);
    aws(&["s3", "mb", "s3://tiny"]).expect_ok();
    let mut refs = Vec::new();
    for name in ["vmlinuz", "initrd.gz", "disk.img"] {
        let path = tiny.join(name);
        aws(&[
            "s3",
            "cp",
            path.to_str().unwrap_or_default(),
            &format!("s3://tiny/{name}"),
        ])
        .expect_ok();
        let data = fs::read(&path).expect("read");
        refs.push(ImageRef {
            id: String::new(),
            bucket: "tiny".into(),
            key: name.into(),
            sha256: hex::encode(Sha256::digest(&data)),
            size: data.len() as u64,
        });
    }
    let id = "i-0a1b2c3d4e5f60718".to_string();
    let _cleanup = Cleanup(id.clone());
    let spec = InstanceSpec {
        instance_id: id.clone(),
        account_id: "000000000000".into(),
        instance_type: "m1.small".into(),
        cores: 1,
        memory_mib: 256,
        disk_gib: 1,
        kernel: Some(refs[0].clone()),
        ramdisk: Some(refs[1].clone()),
        image: Some(refs[2].clone()),
        ..Default::default()
    };
    let mut nc = node(&cloud).await;
    let started = std::time::Instant::now();
    let status = nc
        .run_instance(RunInstanceRequest {
            spec: Some(spec.clone()),
            walrus: cloud.addr("walrus").to_string(),
        })
        .await
        .expect("run instance")
        .into_inner();
    assert_eq!(status.state, InstanceState::Running as i32, "{status:?}");
    assert!(
        domains().lines().any(|l| l.trim() == id),
        "libvirt has the domain"
    );
    let took = wait_markers(&mut nc, &id, 1, Duration::from_secs(120)).await;
    eprintln!(
        "boot marker {:?} after RunInstance ({took:?} of waiting)",
        started.elapsed()
    );
    let text = console(&mut nc, &id).await;
    assert!(
        text.contains("root disk: gumtree tiny guest root disk"),
        "{text}"
    );

    // The node now reports the core and memory as held.
    tests::harness::wait_for(
        "nc-1 to report 1 core held",
        Duration::from_secs(10),
        || {
            let nodes = cloud.admin_json(&["describe-nodes"]);
            let n = nodes
                .as_array()?
                .iter()
                .find(|n| n["name"] == "nc-1")?
                .clone();
            (n["cores_free"].as_u64() == Some(3)
                && n["memory_mib_free"].as_u64() == Some(4096 - 256))
            .then_some(())
        },
    );

    // Stop, start and reboot: each new boot prints the marker again.
    let stopped = nc
        .stop_instance(InstanceRef {
            instance_id: id.clone(),
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.state, InstanceState::Stopped as i32, "{stopped:?}");
    nc.start_instance(InstanceRef {
        instance_id: id.clone(),
    })
    .await
    .expect("start");
    wait_markers(&mut nc, &id, 2, Duration::from_secs(120)).await;
    nc.reboot_instance(InstanceRef {
        instance_id: id.clone(),
    })
    .await
    .expect("reboot");
    wait_markers(&mut nc, &id, 3, Duration::from_secs(120)).await;

    // The guest outlives a SIGKILL of its node controller, which finds it
    // again on restart.
    cloud.kill("nc-1");
    assert!(
        domains().lines().any(|l| l.trim() == id),
        "the guest still runs"
    );
    cloud.restart("nc-1");
    let mut nc = node(&cloud).await;
    assert!(console(&mut nc, &id).await.contains(MARKER));

    let gone = nc
        .terminate_instance(InstanceRef {
            instance_id: id.clone(),
        })
        .await
        .expect("terminate")
        .into_inner();
    assert_eq!(gone.state, InstanceState::Terminated as i32);
    assert!(
        !domains().lines().any(|l| l.trim() == id),
        "the domain is gone"
    );
    let instance_dir = cloud.dir().join("nc-1").join("instances").join(&id);
    assert!(!instance_dir.exists(), "its disk and console are gone");
}
