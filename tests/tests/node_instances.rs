//! A real guest on a node: the tiny guest's kernel, ramdisk and disk go to
//! Walrus as a user would put them there; the node fetches them, boots the
//! guest on libvirt (QEMU TCG here), and its serial console shows the boot
//! marker. Stop, start, reboot, an NC SIGKILL and terminate follow, and
//! nothing is left behind.

use std::time::Duration;

use proto::{InstanceRef, InstanceState};
use tests::{
    harness::{Cloud, CloudOptions},
    node::{
        console, domains, node, run, tiny_guest_images, tiny_guest_spec, wait_markers, Cleanup,
        MARKER,
    },
};

#[tokio::test(flavor = "multi_thread")]
async fn a_node_boots_the_tiny_guest_and_cleans_up() {
    let mut cloud = Cloud::start_with(CloudOptions {
        real_libvirt: true,
        cached_images: tiny_guest_images(),
        // The guest is the test's, not the cloud's: shown, left running.
        clc_config: "unknown_guests = \"report\"\n".into(),
        ..Default::default()
    });
    let id = "i-0a1b2c3d4e5f60718".to_string();
    let _cleanup = Cleanup(id.clone());
    let spec = tiny_guest_spec(&cloud, &id);
    let mut nc = node(&cloud, "nc-1").await;
    let started = std::time::Instant::now();
    let status = run(&mut nc, &cloud, spec).await;
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
    let mut nc = node(&cloud, "nc-1").await;
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
