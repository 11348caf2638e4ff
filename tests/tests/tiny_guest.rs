//! The default tiny guest on its own, under plain QEMU (TCG) with QEMU's
//! user-mode network, and a stand-in metadata service at 169.254.169.254
//! (tests/clients/imds_responder.py): it takes a DHCP lease, asks for an
//! IMDSv2 token (falling back to IMDSv1), prints its instance id and its
//! user-data, verbatim, on the serial console, and runs the user-data when
//! it is a script.

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tests::{clients, harness::wait_for};

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const USER_DATA: &str =
    "#!/bin/sh\necho 'hello from user-data' $HOME\n  indented line\nlast line, no newline";

/// Boots the guest against a responder in `mode`; its console once it is done.
fn boot(mode: &str) -> String {
    let tiny = clients::tiny_guest();
    let dir = tempfile::tempdir().expect("tempdir");
    let console = dir.path().join("console.log");
    let responder = clients::script("imds_responder.py");
    let netdev = format!(
        "user,id=n0,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.20,guestfwd=tcp:169.254.169.254:80-cmd:{} {} {mode}",
        clients::python().display(),
        responder.display()
    );
    let _qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "pc,accel=tcg",
                "-m",
                "256",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .args(["-no-reboot", "-nodefaults"])
            .arg("-kernel")
            .arg(tiny.join("vmlinuz"))
            .arg("-initrd")
            .arg(tiny.join("initrd.gz"))
            .args(["-append", "console=ttyS0 quiet"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
            .env("GUMTREE_TEST_INSTANCE_ID", "i-0123456789abcdef0")
            .env("GUMTREE_TEST_USER_DATA", USER_DATA)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64"),
    );
    wait_for(
        &format!("the guest's network marker ({mode})"),
        Duration::from_secs(90),
        || {
            let text = fs::read_to_string(&console).unwrap_or_default();
            text.contains("GUMTREE-USER-DATA-RAN")
                .then_some(text.replace('\r', ""))
        },
    )
}

fn user_data_of(console: &str) -> &str {
    let start = console
        .find("GUMTREE-USER-DATA-BEGIN\n")
        .map(|i| i + "GUMTREE-USER-DATA-BEGIN\n".len())
        .unwrap_or_else(|| panic!("no user-data on the console:\n{console}"));
    let end = console[start..]
        .find("\nGUMTREE-USER-DATA-END")
        .unwrap_or_else(|| panic!("user-data not ended:\n{console}"));
    &console[start..start + end]
}

#[test]
fn the_guest_reads_its_metadata_with_imdsv2() {
    let console = boot("v2");
    assert!(
        console.contains("GUMTREE-TINY-GUEST: network eth0 169.254.169.20/24"),
        "{console}"
    );
    assert!(
        console.contains("GUMTREE-TINY-GUEST: metadata IMDSv2"),
        "{console}"
    );
    assert!(
        console.contains("GUMTREE-TINY-GUEST: instance-id i-0123456789abcdef0"),
        "{console}"
    );
    assert_eq!(user_data_of(&console), USER_DATA);
    // No disk came or went, so the console reports none.
    assert!(!console.contains("disk removed"), "{console}");
    assert!(!console.contains("disk added"), "{console}");
    // A user-data script is run, as cloud-init runs it.
    let after = console.split("GUMTREE-NET-OK").nth(1).unwrap_or_default();
    assert!(after.contains("hello from user-data"), "{console}");
}

#[test]
fn the_guest_falls_back_to_imdsv1() {
    let console = boot("v1");
    assert!(
        console.contains("GUMTREE-TINY-GUEST: metadata IMDSv1"),
        "{console}"
    );
    assert!(
        console.contains("GUMTREE-TINY-GUEST: instance-id i-0123456789abcdef0"),
        "{console}"
    );
    assert_eq!(user_data_of(&console), USER_DATA);
}
