//! `gumtree-probe-kvm`: proves KVM works on this host the way the node
//! controller's `hypervisor = "auto"` does, by booting a real Linux test
//! guest (the tiny guest) under it; the scripts use it to decide how to
//! start libvirtd. Prints `kvm: <how>` and exits 0, or `qemu: <why>` and
//! exits 1. With `--tcg` it boots the guest under TCG instead and prints
//! `tcg: <how or why not>` (a check of the probe itself).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use node_controller::{
    hypervisor::Libvirt,
    virt::{boot_with_qemu, prove_kvm, ProbeGuest, Virt, PROBE_DEADLINE},
};

#[derive(Parser)]
#[command(about = "Proves KVM with a real Linux boot (prints kvm: or qemu: and why)")]
struct Args {
    /// The test guest's kernel (the tiny guest's vmlinuz).
    #[arg(long)]
    kernel: PathBuf,
    /// The test guest's initramfs (the tiny guest's initrd.gz).
    #[arg(long)]
    initrd: PathBuf,
    /// Also boot it through this libvirt connection, as guests run.
    #[arg(long)]
    libvirt: Option<String>,
    /// Seconds the guest has to print its boot marker.
    #[arg(long, default_value_t = PROBE_DEADLINE.as_secs())]
    deadline_secs: u64,
    /// Boot the test guest under TCG instead (checks the probe itself).
    #[arg(long)]
    tcg: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let deadline = Duration::from_secs(args.deadline_secs);
    let work = std::env::temp_dir();
    let result = ProbeGuest::existing(&args.kernel, &args.initrd).and_then(|guest| {
        if args.tcg {
            return boot_with_qemu(&guest, Virt::Qemu, &work, deadline)
                .map(|t| format!("the test guest booted under TCG in {:.1}s", t.as_secs_f64()));
        }
        let hv = match &args.libvirt {
            Some(uri) => Some(Libvirt::connect(uri).map_err(|e| e.to_string())?),
            None => None,
        };
        prove_kvm(
            Some(&guest),
            hv.as_ref().map(|h| h as _),
            None,
            &work,
            deadline,
        )
    });
    let (label, fallback) = if args.tcg {
        ("tcg", "tcg")
    } else {
        ("kvm", "qemu")
    };
    match result {
        Ok(how) => {
            println!("{label}: {how}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("{fallback}: {why}");
            ExitCode::FAILURE
        }
    }
}
