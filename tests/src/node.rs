//! Driving one node controller directly over its gRPC service, with real
//! guests: the tiny guest put into Walrus, consoles read and waited on,
//! domains listed and cleaned up.

use std::{fs, process::Command, time::Duration};

use common::auth::{ClusterSecret, SignCalls};
use proto::{
    node_service_client::NodeServiceClient, ImageRef, InstanceRef, InstanceSpec, InstanceStatus,
    RunInstanceRequest,
};
use sha2::{Digest, Sha256};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{
    clients::{self, AwsCli, Credentials},
    harness::Cloud,
};

/// A signed client of a node's NodeService.
pub type Nc = NodeServiceClient<InterceptedService<Channel, SignCalls>>;

/// What the tiny guest prints once booted.
pub const MARKER: &str = "GUMTREE-BOOT-OK";

/// A client of node `name` of `cloud`.
pub async fn node(cloud: &Cloud, name: &str) -> Nc {
    let channel = common::rpc::connect(&cloud.addr(name).to_string())
        .await
        .unwrap_or_else(|e| panic!("connect to {name}: {e}"));
    let secret = ClusterSecret::from_file(cloud.secret_file()).expect("secret");
    NodeServiceClient::with_interceptor(channel, SignCalls::new(secret, "test"))
}

/// Runs `spec` on the node `nc` of `cloud`, fetching images from its Walrus.
pub async fn run(nc: &mut Nc, cloud: &Cloud, spec: InstanceSpec) -> InstanceStatus {
    nc.run_instance(RunInstanceRequest {
        spec: Some(spec),
        walrus: cloud.addr("walrus").to_string(),
    })
    .await
    .expect("run instance")
    .into_inner()
}

/// The names of libvirt's domains.
pub fn domains() -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An instance's console as the node returns it.
pub async fn console(nc: &mut Nc, id: &str) -> String {
    let out = nc
        .get_console_output(InstanceRef {
            instance_id: id.into(),
        })
        .await
        .expect("console")
        .into_inner();
    String::from_utf8_lossy(&out.output).into_owned()
}

/// Waits until the console shows `count` boot markers; how long it took.
pub async fn wait_markers(nc: &mut Nc, id: &str, count: usize, timeout: Duration) -> Duration {
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
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for verb in ["destroy", "undefine"] {
            let _ = Command::new("virsh")
                .args(["-c", "qemu:///system", verb, &self.0])
                .output();
        }
    }
}

/// Puts the tiny guest's kernel, ramdisk and disk into bucket `tiny` as a
/// user would (AWS CLI) and returns an instance spec of `id` that boots it.
pub fn tiny_guest_spec(cloud: &Cloud, id: &str) -> InstanceSpec {
    let tiny = clients::tiny_guest();
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-node");
    fs::create_dir_all(&home).expect("home");
    let s3 = cloud.s3_endpoint();
    let aws = |args: &[&str]| clients::aws(AwsCli::V1, &creds, &home, &s3, args);
    aws(&["s3", "mb", "s3://tiny"]);
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
    InstanceSpec {
        instance_id: id.into(),
        account_id: "000000000000".into(),
        instance_type: "m1.small".into(),
        cores: 1,
        memory_mib: 256,
        disk_gib: 1,
        kernel: Some(refs[0].clone()),
        ramdisk: Some(refs[1].clone()),
        image: Some(refs[2].clone()),
        ..Default::default()
    }
}
