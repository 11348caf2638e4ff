//! Which virtualization a node's guests run under, and how that is decided.
//!
//! A `/dev/kvm` can exist and still not run guests: on nested and
//! paravirtual hosts a boot sector runs under KVM while a real Linux kernel
//! hangs at its first unusual instruction, its console silent. So KVM is
//! trusted only once a real Linux guest (the tiny guest's kernel and
//! initramfs) has printed its boot marker under it: first through QEMU
//! directly (quick to fail), then through libvirt, as guests are run.
//! Afterwards a watchdog (in [`crate::instances`]) keeps checking: a guest
//! that cannot run under KVM makes the node fall back to TCG for good,
//! which [`Virtualization`] keeps in the node's store.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

use crate::hypervisor::{DomainSpec, Hypervisor};

/// What the test guest prints on its serial console once it has booted.
pub const BOOT_MARKER: &str = "GUMTREE-BOOT-OK";

/// How long a test guest may take to print [`BOOT_MARKER`]. The tiny guest
/// needs ~2 s under KVM and ~4 s under TCG on this kind of machine.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// The virtualization guests run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Virt {
    /// Hardware acceleration through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation (TCG).
    Qemu,
}

impl Virt {
    /// The libvirt domain type (and the name reports use).
    pub fn as_str(self) -> &'static str {
        match self {
            Virt::Kvm => "kvm",
            Virt::Qemu => "qemu",
        }
    }
}

impl std::fmt::Display for Virt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guest that prints [`BOOT_MARKER`] on its serial console once booted:
/// the tiny guest's kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl ProbeGuest {
    /// The guest from `kernel` and `initrd`, when both files exist.
    pub fn existing(kernel: &Path, initrd: &Path) -> Result<Self, String> {
        for f in [kernel, initrd] {
            if !f.is_file() {
                return Err(format!("the test guest's {} is missing", f.display()));
            }
        }
        Ok(Self {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
        })
    }
}

const CMDLINE: &str = "console=ttyS0 panic=-1";

/// Waits until `console` shows [`BOOT_MARKER`]; `gone` says whether the
/// guest ended first (with why).
fn wait_for_marker(
    console: &Path,
    deadline: Duration,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        if std::fs::read(console).is_ok_and(|s| contains(&s, BOOT_MARKER.as_bytes())) {
            return Ok(started.elapsed());
        }
        if let Some(why) = gone() {
            return Err(why);
        }
        if started.elapsed() > deadline {
            let printed = std::fs::metadata(console).map(|m| m.len()).unwrap_or(0);
            return Err(if printed == 0 {
                format!("its console stayed silent for {}s", deadline.as_secs())
            } else {
                format!(
                    "it printed {printed} bytes but no boot marker within {}s",
                    deadline.as_secs()
                )
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Boots `guest` with QEMU itself (the binary libvirt runs), under `accel`
/// with the CPU libvirt gives such a guest, and waits for its marker.
pub fn boot_with_qemu(
    guest: &ProbeGuest,
    accel: Virt,
    work_dir: &Path,
    deadline: Duration,
) -> Result<Duration, String> {
    let console = work_dir.join(format!("virt-probe-{}.console", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let mut cmd = std::process::Command::new("qemu-system-x86_64");
    cmd.args(["-machine", &format!("pc,accel={}", tcg_name(accel))]);
    if accel == Virt::Kvm {
        cmd.args(["-cpu", "host"]);
    }
    let mut child = cmd
        .args(["-m", "256", "-smp", "1", "-nodefaults", "-display", "none"])
        .args(["-no-reboot", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .args(["-append", CMDLINE])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-system-x86_64: {e}"))?;
    let mut stderr = child.stderr.take();
    let result = wait_for_marker(&console, deadline, || {
        let status = child.try_wait().ok().flatten()?;
        let mut said = String::new();
        if let Some(s) = stderr.as_mut() {
            use std::io::Read;
            let _ = s.read_to_string(&mut said);
        }
        let said = said.lines().last().unwrap_or("").trim().to_string();
        Some(format!(
            "QEMU exited ({status}) before the guest booted: {said}"
        ))
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&console);
    result
}

fn tcg_name(v: Virt) -> &'static str {
    match v {
        Virt::Kvm => "kvm",
        Virt::Qemu => "tcg",
    }
}

/// Boots `guest` as a libvirt domain of type `virt`, exactly as guests are
/// run, and waits for its marker; the domain is removed afterwards.
pub fn boot_with_libvirt(
    hv: &dyn Hypervisor,
    guest: &ProbeGuest,
    virt: Virt,
    emulator: Option<&Path>,
    work_dir: &Path,
    deadline: Duration,
) -> Result<Duration, String> {
    let name = format!("gumtree-probe-{}", std::process::id());
    let console = work_dir.join(format!("{name}.console"));
    let _ = std::fs::remove_file(&console);
    let spec = DomainSpec {
        name: name.clone(),
        virt,
        emulator: emulator.map(Path::to_path_buf),
        vcpus: 1,
        memory_mib: 256,
        kernel: Some(guest.kernel.clone()),
        ramdisk: Some(guest.initrd.clone()),
        cmdline: CMDLINE.into(),
        disk: None,
        console_log: console.clone(),
        nic: None,
        volumes: Vec::new(),
    };
    let _ = hv.remove(&name);
    let started = Instant::now();
    let result = hv
        .launch(&spec)
        .map_err(|e| format!("libvirt could not start it: {e}"))
        .and_then(|()| {
            wait_for_marker(
                &console,
                deadline.saturating_sub(started.elapsed()),
                || match hv.domains(&name) {
                    Ok(d) if d.is_empty() => Some("the domain is gone".into()),
                    Ok(d) => match d[0].1 {
                        crate::hypervisor::DomainState::Running => None,
                        other => Some(format!("libvirt shows it {other:?}")),
                    },
                    Err(e) => Some(e.to_string()),
                },
            )
        })
        .map(|_| started.elapsed());
    let _ = hv.remove(&name);
    let _ = std::fs::remove_file(&console);
    result
}

/// Whether `/dev/kvm` can be opened for reading and writing.
pub fn dev_kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Proves KVM with `guest`: QEMU first, then libvirt (when `hv` is given).
/// Ok says how; Err says why KVM is not to be used.
pub fn prove_kvm(
    guest: Option<&ProbeGuest>,
    hv: Option<&dyn Hypervisor>,
    emulator: Option<&Path>,
    work_dir: &Path,
    deadline: Duration,
) -> Result<String, String> {
    if !dev_kvm_opens() {
        return Err("/dev/kvm is missing or cannot be opened".into());
    }
    let guest = guest
        .ok_or("no test guest (probe_kernel, probe_ramdisk) to prove KVM with a real Linux boot")?;
    let qemu = boot_with_qemu(guest, Virt::Kvm, work_dir, deadline)
        .map_err(|e| format!("a Linux test guest did not boot under KVM: {e}"))?;
    let mut how = format!(
        "a Linux test guest booted under KVM in {:.1}s",
        qemu.as_secs_f64()
    );
    if let Some(hv) = hv {
        let lv = boot_with_libvirt(hv, guest, Virt::Kvm, emulator, work_dir, deadline)
            .map_err(|e| format!("libvirt did not boot a Linux test guest under KVM: {e}"))?;
        how.push_str(&format!(" (through libvirt in {:.1}s)", lv.as_secs_f64()));
    }
    Ok(how)
}

/// What the node learnt about KVM on this host, kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvmVerdict {
    /// Always `kvm`: one record.
    pub name: String,
    /// Why KVM is not used.
    pub reason: String,
    pub at_ms: i64,
}

impl Record for KvmVerdict {
    const TABLE: &'static str = "kvm_verdict";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// The node's virtualization: chosen at start, switched to TCG for good
/// when KVM lets a guest down.
#[derive(Debug)]
pub struct Virtualization {
    current: Mutex<(Virt, String)>,
    verdicts: Option<Table<KvmVerdict>>,
    emulator: Option<PathBuf>,
    /// How long a guest started under KVM may keep its console silent
    /// before KVM is taken for broken here (zero: no watchdog).
    watchdog: Duration,
}

impl Virtualization {
    /// Fixed at `virt` (tests; `hypervisor = "kvm"` or `"qemu"`).
    pub fn fixed(virt: Virt, why: &str) -> Self {
        Self {
            current: Mutex::new((virt, why.to_string())),
            verdicts: None,
            emulator: None,
            watchdog: Duration::ZERO,
        }
    }

    /// Decides for `configured` (`kvm`, `qemu` or `auto`): `auto` uses KVM
    /// only when [`prove_kvm`] boots `guest` under it and no earlier
    /// verdict in `store` found it unusable here.
    #[allow(clippy::too_many_arguments)]
    pub fn choose(
        configured: &str,
        store: &Store,
        hv: &dyn Hypervisor,
        guest: Option<&ProbeGuest>,
        emulator: Option<&Path>,
        work_dir: &Path,
        deadline: Duration,
    ) -> Result<Self, StoreError> {
        let verdicts = store.table::<KvmVerdict>()?;
        let (virt, why) = match configured {
            "kvm" => (Virt::Kvm, "configured (hypervisor = \"kvm\")".to_string()),
            "qemu" => (Virt::Qemu, "configured (hypervisor = \"qemu\")".to_string()),
            _ => match verdicts.get(&"kvm".to_string())? {
                Some(v) => (
                    Virt::Qemu,
                    format!(
                        "KVM failed a guest here at {}: {} (set hypervisor = \"kvm\" to use it anyway)",
                        common::time::iso8601_ms(v.at_ms),
                        v.reason
                    ),
                ),
                None => match prove_kvm(guest, Some(hv), emulator, work_dir, deadline) {
                    Ok(how) => (Virt::Kvm, how),
                    Err(why) => (Virt::Qemu, why),
                },
            },
        };
        Ok(Self {
            current: Mutex::new((virt, why)),
            verdicts: Some(verdicts),
            emulator: emulator.map(Path::to_path_buf),
            watchdog: Duration::ZERO,
        })
    }

    /// What guests run under now, and why.
    pub fn current(&self) -> (Virt, String) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The QEMU binary (or wrapper) domains run, when not libvirt's own.
    pub fn emulator(&self) -> Option<&Path> {
        self.emulator.as_deref()
    }

    /// Sets how long a guest started under KVM may keep its console
    /// silent (zero: no watchdog).
    pub fn with_watchdog(mut self, watchdog: Duration) -> Self {
        self.watchdog = watchdog;
        self
    }

    /// How long a guest started under KVM may keep its console silent.
    pub fn watchdog(&self) -> Duration {
        self.watchdog
    }

    /// KVM let a guest down (`why`): guests run under TCG from now on, also
    /// after a restart. True when this switched the node.
    pub fn kvm_failed(&self, why: &str) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 == Virt::Qemu {
            return false;
        }
        let reason = format!("KVM did not run a guest: {why}");
        tracing::warn!(%reason, "KVM marked unusable on this host; guests run under QEMU TCG from now on");
        if let Some(t) = &self.verdicts {
            let verdict = KvmVerdict {
                name: "kvm".into(),
                reason: why.to_string(),
                at_ms: common::time::unix_ms(),
            };
            if let Err(e) = t.put(&verdict) {
                tracing::warn!(error = %e, "cannot record that KVM is unusable");
            }
        }
        *current = (Virt::Qemu, reason);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Fake;

    #[test]
    fn configured_types_are_taken_as_they_are() {
        let store = Store::temporary().expect("store");
        let hv = Fake::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Virtualization::choose("qemu", &store, &hv, None, None, dir.path(), PROBE_DEADLINE)
            .expect("choose");
        assert_eq!(v.current().0, Virt::Qemu);
        let v = Virtualization::choose("kvm", &store, &hv, None, None, dir.path(), PROBE_DEADLINE)
            .expect("choose");
        assert_eq!(v.current().0, Virt::Kvm);
    }

    #[test]
    fn auto_without_a_test_guest_is_tcg_and_says_why() {
        let store = Store::temporary().expect("store");
        let hv = Fake::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Virtualization::choose("auto", &store, &hv, None, None, dir.path(), PROBE_DEADLINE)
            .expect("choose");
        let (virt, why) = v.current();
        assert_eq!(virt, Virt::Qemu);
        assert!(
            why.contains("/dev/kvm") || why.contains("no test guest"),
            "{why}"
        );
    }

    #[test]
    fn a_kvm_failure_switches_to_tcg_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("store");
        let hv = Fake::default();
        let v = Virtualization::choose("kvm", &store, &hv, None, None, dir.path(), PROBE_DEADLINE)
            .expect("choose");
        assert!(v.kvm_failed("i-1: its console stayed silent for 30s"));
        assert!(!v.kvm_failed("again"), "only the first failure switches");
        let (virt, why) = v.current();
        assert_eq!(virt, Virt::Qemu);
        assert!(why.contains("console stayed silent"), "{why}");
        // Remembered: `auto` does not try KVM again on this host.
        let v = Virtualization::choose("auto", &store, &hv, None, None, dir.path(), PROBE_DEADLINE)
            .expect("choose");
        let (virt, why) = v.current();
        assert_eq!(virt, Virt::Qemu);
        assert!(why.contains("KVM failed a guest here"), "{why}");
    }

    #[test]
    fn the_marker_wait_tells_silence_from_other_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console");
        let err =
            wait_for_marker(&console, Duration::from_millis(200), || None).expect_err("no marker");
        assert!(err.contains("silent"), "{err}");
        std::fs::write(&console, "Linux version 6.1\n").expect("write");
        let err =
            wait_for_marker(&console, Duration::from_millis(200), || None).expect_err("no marker");
        assert!(err.contains("no boot marker"), "{err}");
        std::fs::write(&console, format!("x\n{BOOT_MARKER}\n")).expect("write");
        assert!(wait_for_marker(&console, Duration::from_millis(200), || None).is_ok());
        let _ = std::fs::remove_file(&console);
        let err = wait_for_marker(&console, Duration::from_secs(5), || Some("gone".into()))
            .expect_err("gone");
        assert_eq!(err, "gone");
    }
}
