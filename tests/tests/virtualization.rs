//! KVM is trusted only once a real Linux guest boots under it, and a guest
//! KVM lets down is restarted under TCG.
//!
//! The probe (`gumtree-probe-kvm`, also the node's `hypervisor = "auto"`)
//! is checked both ways on any host: the tiny guest booted under TCG is
//! seen, a kernel that does not boot is not. A node in `auto` mode runs
//! guests under what it chose. The watchdog is checked with an injected
//! fault, since the host may or may not have a working KVM: the node is
//! told to use KVM and runs guests through an emulator wrapper that hides
//! a KVM guest's console (as on hosts where KVM hangs a Linux kernel).
//! Where libvirt cannot run KVM guests at all, the KVM launch fails
//! instead; either way the guest must end up booted under TCG, with the
//! restart noted on its console, and the node must keep to TCG.

use std::{fs, os::unix::fs::PermissionsExt, process::Command, time::Duration};

use proto::InstanceState;
use tests::{
    clients,
    harness::{binary, wait_for, Cloud, CloudOptions},
    node::{console, node, run, tiny_guest_images, tiny_guest_spec, wait_markers, Cleanup, MARKER},
};

fn probe(args: &[&str]) -> (bool, String) {
    let tiny = clients::tiny_guest();
    let out = Command::new(binary("gumtree-probe-kvm"))
        .arg("--kernel")
        .arg(tiny.join("vmlinuz"))
        .arg("--initrd")
        .arg(tiny.join("initrd.gz"))
        .args(args)
        .output()
        .expect("gumtree-probe-kvm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[test]
fn the_probe_needs_a_real_linux_boot() {
    let tiny = clients::tiny_guest();
    // The probe sees a Linux guest boot (under TCG, which every host has).
    let (ok, said) = probe(&["--tcg"]);
    assert!(
        ok && said.starts_with("tcg: the test guest booted"),
        "{said}"
    );
    // ...and sees one that does not: an initramfs is no kernel.
    let out = Command::new(binary("gumtree-probe-kvm"))
        .arg("--kernel")
        .arg(tiny.join("initrd.gz"))
        .arg("--initrd")
        .arg(tiny.join("initrd.gz"))
        .args(["--tcg", "--deadline-secs", "10"])
        .output()
        .expect("gumtree-probe-kvm");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.starts_with("tcg: QEMU exited"),
        "{said}"
    );
    // KVM itself: a verdict with its reason, and the exit code to match.
    let (ok, said) = probe(&["--deadline-secs", "15"]);
    eprintln!("this host: {said}");
    if ok {
        assert!(
            said.starts_with("kvm: a Linux test guest booted under KVM"),
            "{said}"
        );
    } else {
        assert!(said.starts_with("qemu: ") && said.len() > 10, "{said}");
    }
}

/// The node's virtualization and why, from describe-nodes.
fn node_virt(cloud: &Cloud, name: &str) -> Option<(String, String)> {
    let nodes = cloud.admin_json(&["describe-nodes"]);
    let n = nodes
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)?
        .clone();
    Some((
        n["hypervisor"].as_str()?.to_string(),
        n["virt_reason"].as_str()?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_in_auto_mode_boots_guests_under_what_it_proved() {
    let tiny = clients::tiny_guest();
    let cloud = Cloud::start_with(CloudOptions {
        real_libvirt: true,
        cached_images: tiny_guest_images(),
        // The guests are the test's, not the cloud's: shown, left running.
        clc_config: "unknown_guests = \"report\"\n".into(),
        hypervisor: "auto",
        node_config: format!(
            "probe_kernel = {:?}\nprobe_ramdisk = {:?}\n",
            tiny.join("vmlinuz"),
            tiny.join("initrd.gz")
        ),
        ..Default::default()
    });
    let (virt, why) = wait_for("nc-1's virtualization", Duration::from_secs(60), || {
        node_virt(&cloud, "nc-1").filter(|(v, _)| !v.is_empty())
    });
    eprintln!("nc-1 chose {virt}: {why}");
    assert!(!why.is_empty());
    match virt.as_str() {
        "kvm" => assert!(why.contains("booted under KVM"), "{why}"),
        "qemu" => {
            assert!(!why.contains("configured"), "{why}");
            // The probe the scripts run agrees.
            let (ok, said) = probe(&["--libvirt", "qemu:///system"]);
            assert!(!ok, "the probe proved KVM but the node did not: {said}");
        }
        other => panic!("virtualization {other:?}"),
    }
    let id = "i-0a1b2c3d4e5f60720";
    let _cleanup = Cleanup(id.into());
    let mut nc = node(&cloud, "nc-1").await;
    run(&mut nc, &cloud, tiny_guest_spec(&cloud, id)).await;
    wait_markers(&mut nc, id, 1, Duration::from_secs(120)).await;
}

/// An emulator that runs QEMU, except that a KVM guest's kernel gets no
/// serial console: the guest runs, its console stays silent.
const SILENCING_EMULATOR: &str = r#"#!/bin/bash
args=("$@") kvm=0
for a in "${args[@]}"; do [[ $a == kvm || $a == *accel=kvm* ]] && kvm=1; done
if ((kvm)); then
  for i in "${!args[@]}"; do [[ ${args[i]} == -append ]] && args[i+1]="console=tty0 quiet"; done
fi
exec qemu-system-x86_64 "${args[@]}"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_kvm_guest_that_does_not_run_is_restarted_under_tcg() {
    let tools = tempfile::tempdir().expect("tempdir");
    let emulator = tools.path().join("qemu-silencing-kvm");
    fs::write(&emulator, SILENCING_EMULATOR).expect("write emulator");
    fs::set_permissions(&emulator, fs::Permissions::from_mode(0o755)).expect("chmod");
    let cloud = Cloud::start_with(CloudOptions {
        real_libvirt: true,
        cached_images: tiny_guest_images(),
        // The guests are the test's, not the cloud's: shown, left running.
        clc_config: "unknown_guests = \"report\"\n".into(),
        hypervisor: "kvm",
        node_config: format!("emulator = {emulator:?}\nkvm_watchdog_secs = 10\n"),
        ..Default::default()
    });
    assert_eq!(
        wait_for("nc-1's virtualization", Duration::from_secs(30), || {
            node_virt(&cloud, "nc-1").filter(|(v, _)| !v.is_empty())
        })
        .0,
        "kvm"
    );
    let mut nc = node(&cloud, "nc-1").await;
    let first = "i-0a1b2c3d4e5f60721";
    let _cleanup = Cleanup(first.into());
    let spec = tiny_guest_spec(&cloud, first);
    let status = run(&mut nc, &cloud, spec.clone()).await;
    assert_eq!(status.state, InstanceState::Running as i32, "{status:?}");
    // Booted in the end, under TCG, with the restart noted before the boot.
    wait_markers(&mut nc, first, 1, Duration::from_secs(180)).await;
    let text = console(&mut nc, first).await;
    let note = text
        .find("[gumtree node nc-1]")
        .unwrap_or_else(|| panic!("no restart note on the console:\n{text}"));
    assert!(
        text[note..].contains("starts again under QEMU TCG"),
        "{text}"
    );
    assert!(note < text.find(MARKER).unwrap_or(0), "{text}");
    let (virt, why) = wait_for("nc-1 to report qemu", Duration::from_secs(10), || {
        node_virt(&cloud, "nc-1").filter(|(v, _)| v == "qemu")
    });
    eprintln!("nc-1 now runs {virt}: {why}");
    assert!(why.contains(first), "{why}");
    // The same instance, its disk kept; the next guest starts under TCG.
    let disk = cloud
        .dir()
        .join("nc-1/instances")
        .join(first)
        .join("disk.qcow2");
    assert!(disk.exists(), "{}", disk.display());
    let second = "i-0a1b2c3d4e5f60722";
    let _cleanup2 = Cleanup(second.into());
    let mut spec2 = spec;
    spec2.instance_id = second.into();
    run(&mut nc, &cloud, spec2).await;
    wait_markers(&mut nc, second, 1, Duration::from_secs(120)).await;
    let text = console(&mut nc, second).await;
    assert!(!text.contains("[gumtree node"), "{text}");
}
