//! Driving one node controller directly over its gRPC service, with real
//! guests: the tiny guest put into Walrus, consoles read and waited on,
//! domains listed and cleaned up.

use std::{fs, process::Command, time::Duration};

use common::pki::Role;
use proto::{
    node_service_client::NodeServiceClient, ImageRef, InstanceRef, InstanceSpec, InstanceStatus,
    RunInstanceRequest,
};
use sha2::{Digest, Sha256};

use crate::{
    clients,
    harness::{Cloud, Tier},
};

/// A client of a node's NodeService, calling as a cluster controller.
pub type Nc = NodeServiceClient<common::rpc::Client>;

/// What the tiny guest prints once booted.
pub const MARKER: &str = "GUMTREE-BOOT-OK";

/// A client of node `name` of `cloud`.
pub async fn node(cloud: &Cloud, name: &str) -> Nc {
    NodeServiceClient::new(cloud.client(name, Tier::Node, Role::Cc, "test-cc").await)
}

/// Runs `spec` on the node `nc` of `cloud` (its images must be in the
/// node's cache: [`tiny_guest_images`]; Walrus serves a node only images
/// its instances use, and these have no record at the CLC).
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

/// The tiny guest's kernel, ramdisk and disk, for
/// [`crate::harness::CloudOptions::cached_images`].
pub fn tiny_guest_images() -> Vec<std::path::PathBuf> {
    let tiny = clients::tiny_guest();
    ["vmlinuz", "initrd.gz", "disk.img"]
        .iter()
        .map(|name| tiny.join(name))
        .collect()
}

/// An instance spec of `id` that boots the tiny guest from the node's
/// image cache (the cloud must start with [`tiny_guest_images`] cached).
pub fn tiny_guest_spec(_cloud: &Cloud, id: &str) -> InstanceSpec {
    let tiny = clients::tiny_guest();
    let mut refs = Vec::new();
    for name in ["vmlinuz", "initrd.gz", "disk.img"] {
        let path = tiny.join(name);
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
