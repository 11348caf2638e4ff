//! The hypervisor under a node: libvirt (crate `virt`) in production, a
//! fake for unit tests, behind one trait.
//!
//! Domains are named after their instance (`i-...`), boot the instance's
//! kernel and ramdisk directly (or the disk's own boot loader), use a qcow2
//! overlay as their disk, and log their serial console to a file. QEMU runs
//! as root without relabelling (a static DAC label), so instance files may
//! live anywhere the NC can write.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::virt::Virt;

/// What a domain is doing, as libvirt says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused,
    /// Powered off (by itself or by us).
    Shutoff,
    /// Shutting down.
    ShuttingDown,
    Crashed,
    Other,
}

/// Why a hypervisor call failed.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("no domain {0}")]
    NoDomain(String),
    #[error("libvirt: {0}")]
    Libvirt(String),
}

/// How a domain is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    pub virt: Virt,
    /// The QEMU binary (or a wrapper) to run; libvirt's default when none.
    pub emulator: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: Option<PathBuf>,
    pub ramdisk: Option<PathBuf>,
    pub cmdline: String,
    /// The qcow2 overlay (none: a diskless guest, such as the KVM probe).
    pub disk: Option<PathBuf>,
    pub console_log: PathBuf,
    /// A virtio NIC on this bridge, with this MAC and tap device name.
    pub nic: Option<(String, String, String)>,
    /// EBS volumes attached, each reached over NBD on a local socket.
    pub volumes: Vec<VolumeDisk>,
}

/// An EBS volume as a guest disk: NBD over the node's relay socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    pub volume_id: String,
    /// The guest's device (`vdb`, `vdc`, ...).
    pub target: String,
    pub socket: PathBuf,
}

/// The serial number a guest sees for a volume: its id without the dash
/// (as EC2's NVMe volumes show it; virtio-blk keeps 20 characters).
pub fn volume_serial(volume_id: &str) -> String {
    volume_id.replacen('-', "", 1)
}

/// How long (seconds) a volume's relay keeps dialling its export when it
/// goes away (a storage controller restart) while the guest's I/O waits,
/// and the `reconnect delay` asked of QEMU.
pub const VOLUME_RECONNECT_SECS: u32 = 60;

/// The libvirt `<disk>` of a volume, opened through its relay's socket.
/// The relay ([`crate::nbd`]) hides a lost export from QEMU (the guest's
/// I/O waits). QEMU reconnects to the socket by itself when the relay goes
/// away (a node controller restart); the `<reconnect>` element would make
/// its I/O wait meanwhile too, but libvirt 9.0 (Debian 12) takes it only
/// for vhost-user disks and drops it here.
pub fn volume_disk_xml(v: &VolumeDisk) -> String {
    format!(
        "<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none' io='threads'/><source protocol='nbd'><host transport='unix' socket='{}'/><reconnect delay='{}'/></source><target dev='{}' bus='virtio'/><serial>{}</serial></disk>",
        esc(&v.socket.display().to_string()),
        VOLUME_RECONNECT_SECS,
        esc(&v.target),
        esc(&volume_serial(&v.volume_id))
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The libvirt domain XML for `spec`.
pub fn domain_xml(spec: &DomainSpec) -> String {
    let path = |p: &Path| esc(&p.display().to_string());
    let mut os = String::from("<type arch='x86_64' machine='pc'>hvm</type>");
    if let Some(k) = &spec.kernel {
        os.push_str(&format!("<kernel>{}</kernel>", path(k)));
        if let Some(r) = &spec.ramdisk {
            os.push_str(&format!("<initrd>{}</initrd>", path(r)));
        }
        os.push_str(&format!("<cmdline>{}</cmdline>", esc(&spec.cmdline)));
    } else {
        os.push_str("<boot dev='hd'/>");
    }
    let cpu = if spec.virt == Virt::Kvm {
        "<cpu mode='host-passthrough'/>"
    } else {
        ""
    };
    let nic = spec
        .nic
        .as_ref()
        .map(|(bridge, mac, tap)| {
            format!(
                "<interface type='bridge'><source bridge='{}'/><mac address='{}'/><target dev='{}'/><model type='virtio'/></interface>",
                esc(bridge),
                esc(mac),
                esc(tap)
            )
        })
        .unwrap_or_default();
    let emulator = spec
        .emulator
        .as_ref()
        .map(|e| format!("<emulator>{}</emulator>", path(e)))
        .unwrap_or_default();
    let disk = spec
        .disk
        .as_ref()
        .map(|d| format!("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>", path(d)))
        .unwrap_or_default();
    let volumes: String = spec.volumes.iter().map(volume_disk_xml).collect();
    format!(
        "<domain type='{virt}'>\
<name>{name}</name>\
<memory unit='MiB'>{mem}</memory>\
<vcpu>{vcpus}</vcpu>\
<os>{os}</os>\
<features><acpi/></features>{cpu}\
<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\
<devices>{emulator}{disk}{volumes}\
<serial type='pty'><log file='{console}' append='on'/><target port='0'/></serial>{nic}\
<memballoon model='none'/>\
</devices>\
<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>\
</domain>",
        virt = spec.virt.as_str(),
        name = esc(&spec.name),
        mem = spec.memory_mib,
        vcpus = spec.vcpus.max(1),
        console = path(&spec.console_log),
    )
}

/// Where and how a running domain moves to another node (live migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The target's libvirt (`qemu+tls://ADDRESS/system?pkipath=DIR`),
    /// which this node's libvirtd dials itself (peer to peer).
    pub dest_uri: String,
    /// Where QEMU sends the guest's memory (`tcp://ADDRESS`).
    pub migrate_uri: String,
    /// This node's paths in the domain's definition, each with the
    /// target's path for it.
    pub rewrite: Vec<(String, String)>,
    /// The guest's devices whose disks are copied to the target (the
    /// local disk's top layer); the rest (volumes) the target reaches
    /// itself.
    pub copy_disks: Vec<String>,
}

/// A hypervisor.
pub trait Hypervisor: Send + Sync + std::fmt::Debug {
    /// Defines the domain and starts it.
    fn launch(&self, spec: &DomainSpec) -> Result<(), HypervisorError>;
    /// Powers the domain off at once (it stays defined).
    fn power_off(&self, name: &str) -> Result<(), HypervisorError>;
    /// Reboots the domain.
    fn reboot(&self, name: &str) -> Result<(), HypervisorError>;
    /// Powers off and undefines the domain; fine if there is none.
    fn remove(&self, name: &str) -> Result<(), HypervisorError>;
    /// Every domain whose name starts with `prefix`, with its state.
    fn domains(&self, prefix: &str) -> Result<Vec<(String, DomainState)>, HypervisorError>;
    /// Adds a device (`<disk>` XML) to domain `name`: to the running guest
    /// and its definition.
    fn attach_device(&self, name: &str, xml: &str) -> Result<(), HypervisorError>;
    /// Removes a device (`<disk>` XML) from domain `name`.
    fn detach_device(&self, name: &str, xml: &str) -> Result<(), HypervisorError>;
    /// True while domain `name` has a disk with serial `serial` (a detach
    /// ends once the guest lets go).
    fn has_disk(&self, name: &str, serial: &str) -> Result<bool, HypervisorError>;
    /// Moves running domain `name` live to another node, with its disks'
    /// top layers (the target has their backing images); once the target
    /// runs it, it is defined there and no longer here.
    fn migrate(&self, name: &str, m: &Migration) -> Result<(), HypervisorError>;
    /// Ends the migration of domain `name` in progress (its `migrate`
    /// fails and it runs on here).
    fn abort_migration(&self, name: &str) -> Result<(), HypervisorError>;
    /// Every running domain whose name starts with `prefix`, with its
    /// counters so far (CPU time, disk and network I/O, memory).
    fn guest_stats(&self, prefix: &str) -> Result<Vec<GuestCounters>, HypervisorError>;
    /// Opens running domain `name`'s first serial port, taking it from
    /// whoever had it open.
    fn open_console(&self, name: &str) -> Result<ConsoleIo, HypervisorError>;
}

/// An open serial console: bytes the guest writes arrive on `output`
/// (which ends when the console closes); bytes sent on `input` are typed
/// into it. Dropping `input` closes it.
#[derive(Debug)]
pub struct ConsoleIo {
    pub output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub input: tokio::sync::mpsc::Sender<Vec<u8>>,
}

/// Bytes and requests read and written, since the domain started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

impl IoCounters {
    /// What passed from `before` to `self` (none if a counter went back:
    /// the domain started again).
    pub fn since(&self, before: &IoCounters) -> IoCounters {
        IoCounters {
            read_bytes: self.read_bytes.saturating_sub(before.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            read_ops: self.read_ops.saturating_sub(before.read_ops),
            write_ops: self.write_ops.saturating_sub(before.write_ops),
        }
    }
}

/// A running domain's counters, as libvirt gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestCounters {
    pub name: String,
    /// CPU time used (ns).
    pub cpu_ns: u64,
    pub vcpus: u32,
    /// Memory it holds (KiB): QEMU's resident set where libvirt has it,
    /// else its allocation.
    pub memory_kib: u64,
    /// Its own disks (not EBS volumes).
    pub disk: IoCounters,
    /// Each EBS volume (by volume id).
    pub volumes: Vec<(String, IoCounters)>,
    /// As the guest sees it: received is in.
    pub net_in_bytes: u64,
    pub net_out_bytes: u64,
    pub net_in_packets: u64,
    pub net_out_packets: u64,
}

/// The devices of a domain's XML: each disk's target and serial, and each
/// interface's target (tap) device.
pub fn devices_of(xml: &str) -> (Vec<(String, Option<String>)>, Vec<String>) {
    fn attr(seg: &str, tag: &str, name: &str) -> Option<String> {
        let at = seg.find(&format!("<{tag} "))?;
        let rest = &seg[at..];
        let end = rest.find('>')?;
        let el = &rest[..end];
        let key = format!("{name}=");
        let v = &el[el.find(&key)? + key.len()..];
        let q = v.chars().next()?;
        let v = &v[1..];
        Some(v[..v.find(q)?].to_string())
    }
    let mut disks = Vec::new();
    for seg in xml.split("<disk ").skip(1) {
        let seg = seg.split("</disk>").next().unwrap_or(seg);
        if !seg.contains("device='disk'") && !seg.contains("device=\"disk\"") {
            continue;
        }
        if let Some(dev) = attr(seg, "target", "dev") {
            let serial = seg
                .split_once("<serial>")
                .and_then(|(_, r)| r.split_once("</serial>"))
                .map(|(s, _)| s.to_string());
            disks.push((dev, serial));
        }
    }
    let mut nics = Vec::new();
    for seg in xml.split("<interface ").skip(1) {
        let seg = seg.split("</interface>").next().unwrap_or(seg);
        if let Some(dev) = attr(seg, "target", "dev") {
            nics.push(dev);
        }
    }
    (disks, nics)
}

/// libvirt, through one connection.
pub struct Libvirt {
    conn: Mutex<virt::connect::Connect>,
    uri: String,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt").field("uri", &self.uri).finish()
    }
}

fn lv(e: virt::error::Error) -> HypervisorError {
    if matches!(
        e.code(),
        virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomain)
    ) {
        HypervisorError::NoDomain(e.message().to_string())
    } else {
        HypervisorError::Libvirt(e.to_string())
    }
}

fn state_of(d: &virt::domain::Domain) -> DomainState {
    use virt::{domain::DomainState as S, enumutil::Enum};
    match d.state() {
        Ok((Enum::Known(S::Running), _)) | Ok((Enum::Known(S::Blocked), _)) => DomainState::Running,
        Ok((Enum::Known(S::Paused), _)) | Ok((Enum::Known(S::PMSuspended), _)) => {
            DomainState::Paused
        }
        Ok((Enum::Known(S::Shutoff), _)) => DomainState::Shutoff,
        Ok((Enum::Known(S::Shutdown), _)) => DomainState::ShuttingDown,
        Ok((Enum::Known(S::Crashed), _)) => DomainState::Crashed,
        _ => DomainState::Other,
    }
}

impl Libvirt {
    /// Connects to `uri` (`qemu:///system`, or `test:///default` in tests).
    pub fn connect(uri: &str) -> Result<Self, HypervisorError> {
        let conn = virt::connect::Connect::open(Some(uri)).map_err(lv)?;
        Ok(Self {
            conn: Mutex::new(conn),
            uri: uri.to_string(),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&virt::connect::Connect) -> Result<T, virt::error::Error>,
    ) -> Result<T, HypervisorError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(lv)
    }
}

/// Live and in the definition when the domain runs, else the definition.
fn affect(d: &virt::domain::Domain) -> Result<u32, virt::error::Error> {
    Ok(if d.is_active()? {
        virt::sys::VIR_DOMAIN_AFFECT_LIVE | virt::sys::VIR_DOMAIN_AFFECT_CONFIG
    } else {
        virt::sys::VIR_DOMAIN_AFFECT_CONFIG
    })
}

impl Hypervisor for Libvirt {
    fn open_console(&self, name: &str) -> Result<ConsoleIo, HypervisorError> {
        let stream = self.with(|c| {
            let d = c.lookup_domain_by_name(name)?;
            let stream = virt::stream::Stream::new(c, 0)?;
            d.open_console(None, &stream, virt::sys::VIR_DOMAIN_CONSOLE_FORCE)?;
            Ok(stream)
        })?;
        let (out_tx, output) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let (input, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        // Blocking reads and writes, each on its own thread; closing the
        // input aborts the stream, which ends the read.
        let reader = stream.clone();
        let who = name.to_string();
        std::thread::Builder::new()
            .name("console-read".into())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match reader.recv(&mut buf) {
                        Ok(n) if n > 0 => {
                            if out_tx.blocking_send(buf[..n as usize].to_vec()).is_err() {
                                break;
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            tracing::debug!(domain = %who, error = %e, "console stream ended");
                            break;
                        }
                    }
                }
            })
            .map_err(|e| HypervisorError::Libvirt(format!("cannot start a console thread: {e}")))?;
        std::thread::Builder::new()
            .name("console-write".into())
            .spawn(move || {
                'typing: while let Some(data) = in_rx.blocking_recv() {
                    let mut at = 0;
                    while at < data.len() {
                        match stream.send(&data[at..]) {
                            Ok(n) if n > 0 => at += n as usize,
                            _ => break 'typing,
                        }
                    }
                }
                let _ = stream.abort();
            })
            .map_err(|e| HypervisorError::Libvirt(format!("cannot start a console thread: {e}")))?;
        Ok(ConsoleIo { output, input })
    }

    fn attach_device(&self, name: &str, xml: &str) -> Result<(), HypervisorError> {
        self.with(|c| {
            let d = c.lookup_domain_by_name(name)?;
            d.attach_device_flags(xml, affect(&d)?)
        })
    }

    fn detach_device(&self, name: &str, xml: &str) -> Result<(), HypervisorError> {
        self.with(|c| {
            let d = c.lookup_domain_by_name(name)?;
            d.detach_device_flags(xml, affect(&d)?)
        })
    }

    fn has_disk(&self, name: &str, serial: &str) -> Result<bool, HypervisorError> {
        let xml = self.with(|c| c.lookup_domain_by_name(name)?.xml_desc(0))?;
        Ok(xml.contains(&format!("<serial>{}</serial>", esc(serial))))
    }

    fn migrate(&self, name: &str, m: &Migration) -> Result<(), HypervisorError> {
        // The domain's handle, so the migration's seconds do not hold the
        // connection from every other call.
        let d = self.with(|c| c.lookup_domain_by_name(name))?;
        let mut xml = d
            .xml_desc(virt::sys::VIR_DOMAIN_XML_MIGRATABLE)
            .map_err(lv)?;
        for (from, to) in &m.rewrite {
            xml = xml.replace(&format!("'{}'", esc(from)), &format!("'{}'", esc(to)));
            xml = xml.replace(&format!(">{}<", esc(from)), &format!(">{}<", esc(to)));
        }
        let params = virt::domain::MigrateParameters {
            dest_xml: Some(xml),
            uri: Some(m.migrate_uri.clone()),
            migrate_disks: m.copy_disks.clone(),
            ..Default::default()
        };
        let mut flags = virt::sys::VIR_MIGRATE_LIVE
            | virt::sys::VIR_MIGRATE_PEER2PEER
            | virt::sys::VIR_MIGRATE_PERSIST_DEST
            | virt::sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        if !m.copy_disks.is_empty() {
            flags |= virt::sys::VIR_MIGRATE_NON_SHARED_INC;
        }
        d.migrate_to_uri3(Some(&m.dest_uri), params, flags)
            .map_err(lv)
    }

    fn abort_migration(&self, name: &str) -> Result<(), HypervisorError> {
        // The virt crate has no safe virDomainAbortJob: virsh calls it.
        let out = std::process::Command::new("virsh")
            .args(["-c", &self.uri, "domjobabort", name])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| HypervisorError::Libvirt(format!("virsh domjobabort: {e}")))?;
        if !out.status.success() {
            return Err(HypervisorError::Libvirt(format!(
                "virsh domjobabort {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn launch(&self, spec: &DomainSpec) -> Result<(), HypervisorError> {
        let xml = domain_xml(spec);
        self.with(|c| {
            let d = c.define_domain_xml(&xml)?;
            if let Err(e) = d.create() {
                let _ = d.undefine();
                return Err(e);
            }
            Ok(())
        })
    }

    fn power_off(&self, name: &str) -> Result<(), HypervisorError> {
        self.with(|c| {
            let d = c.lookup_domain_by_name(name)?;
            if d.is_active()? {
                d.destroy()?;
            }
            Ok(())
        })
    }

    fn reboot(&self, name: &str) -> Result<(), HypervisorError> {
        // A hard reset: the tiny guests have no ACPI daemon to ask.
        self.with(|c| c.lookup_domain_by_name(name)?.reset())
    }

    fn remove(&self, name: &str) -> Result<(), HypervisorError> {
        match self.with(|c| {
            let d = c.lookup_domain_by_name(name)?;
            if d.is_active()? {
                d.destroy()?;
            }
            d.undefine()
        }) {
            Err(HypervisorError::NoDomain(_)) => Ok(()),
            other => other,
        }
    }

    fn guest_stats(&self, prefix: &str) -> Result<Vec<GuestCounters>, HypervisorError> {
        self.with(|c| {
            let mut out = Vec::new();
            for d in c.list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)? {
                let name = d.name()?;
                if !name.starts_with(prefix) {
                    continue;
                }
                let info = d.info()?;
                let rss = d.memory_stats(0).ok().and_then(|m| {
                    m.iter()
                        .find(|s| s.tag == virt::sys::VIR_DOMAIN_MEMORY_STAT_RSS)
                        .map(|s| s.val)
                });
                let mut g = GuestCounters {
                    name,
                    cpu_ns: info.cpu_time,
                    vcpus: info.nr_virt_cpu,
                    memory_kib: rss.unwrap_or(info.memory),
                    ..Default::default()
                };
                // A device can go between the XML and its counters.
                let (disks, nics) = devices_of(&d.xml_desc(0)?);
                for (dev, serial) in disks {
                    let Ok(b) = d.block_stats(&dev) else { continue };
                    let io = IoCounters {
                        read_bytes: b.rd_bytes.max(0) as u64,
                        write_bytes: b.wr_bytes.max(0) as u64,
                        read_ops: b.rd_req.max(0) as u64,
                        write_ops: b.wr_req.max(0) as u64,
                    };
                    match serial.filter(|s| s.starts_with("vol")) {
                        Some(s) => g.volumes.push((s.replacen("vol", "vol-", 1), io)),
                        None => {
                            g.disk.read_bytes += io.read_bytes;
                            g.disk.write_bytes += io.write_bytes;
                            g.disk.read_ops += io.read_ops;
                            g.disk.write_ops += io.write_ops;
                        }
                    }
                }
                for nic in nics {
                    let Ok(n) = d.interface_stats(&nic) else {
                        continue;
                    };
                    g.net_in_bytes += n.rx_bytes.max(0) as u64;
                    g.net_out_bytes += n.tx_bytes.max(0) as u64;
                    g.net_in_packets += n.rx_packets.max(0) as u64;
                    g.net_out_packets += n.tx_packets.max(0) as u64;
                }
                out.push(g);
            }
            Ok(out)
        })
    }

    fn domains(&self, prefix: &str) -> Result<Vec<(String, DomainState)>, HypervisorError> {
        self.with(|c| {
            let mut out = Vec::new();
            for d in c.list_all_domains(0)? {
                let name = d.name()?;
                if name.starts_with(prefix) {
                    out.push((name, state_of(&d)));
                }
            }
            Ok(out)
        })
    }
}

/// A hypervisor in memory, for unit tests and simulated fleets.
#[derive(Debug, Default)]
pub struct Fake {
    domains: Mutex<HashMap<String, (DomainSpec, DomainState)>>,
    /// Launches of this type fail, as libvirt fails a KVM guest on a host
    /// where KVM does not work.
    refused: Mutex<Option<Virt>>,
}

impl Fake {
    /// Makes launches of domains of type `virt` fail from now on.
    pub fn refuse(&self, virt: Virt) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(virt);
    }

    /// Sets a domain's state, as if the guest did something.
    pub fn set_state(&self, name: &str, state: DomainState) {
        if let Some(d) = self
            .domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(name)
        {
            d.1 = state;
        }
    }

    /// The spec a domain was launched with.
    pub fn spec(&self, name: &str) -> Option<DomainSpec> {
        self.domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|d| d.0.clone())
    }

    fn change(&self, name: &str, f: impl FnOnce(&mut DomainState)) -> Result<(), HypervisorError> {
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        let d = domains
            .get_mut(name)
            .ok_or_else(|| HypervisorError::NoDomain(name.to_string()))?;
        f(&mut d.1);
        Ok(())
    }
}

impl Hypervisor for Fake {
    /// The fake's console echoes what is typed, as a terminal would.
    fn open_console(&self, name: &str) -> Result<ConsoleIo, HypervisorError> {
        if !self
            .domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
        {
            return Err(HypervisorError::NoDomain(name.to_string()));
        }
        let (out_tx, output) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let (input, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        std::thread::spawn(move || {
            while let Some(data) = in_rx.blocking_recv() {
                if out_tx.blocking_send(data).is_err() {
                    break;
                }
            }
        });
        Ok(ConsoleIo { output, input })
    }

    fn attach_device(&self, name: &str, xml: &str) -> Result<(), HypervisorError> {
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        let d = domains
            .get_mut(name)
            .ok_or_else(|| HypervisorError::NoDomain(name.to_string()))?;
        let serial = xml
            .split("<serial>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap_or_default();
        if d.0.volumes.iter().any(|v| v.volume_id == serial) {
            return Err(HypervisorError::Libvirt(format!(
                "{serial} is attached already"
            )));
        }
        let target = xml
            .split("<target dev='")
            .nth(1)
            .and_then(|s| s.split('\'').next())
            .unwrap_or_default();
        let socket = xml
            .split("socket='")
            .nth(1)
            .and_then(|s| s.split('\'').next())
            .unwrap_or_default();
        d.0.volumes.push(VolumeDisk {
            volume_id: serial.replacen("vol", "vol-", 1),
            target: target.to_string(),
            socket: socket.into(),
        });
        Ok(())
    }

    fn has_disk(&self, name: &str, serial: &str) -> Result<bool, HypervisorError> {
        let domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        let d = domains
            .get(name)
            .ok_or_else(|| HypervisorError::NoDomain(name.to_string()))?;
        Ok(d.0
            .volumes
            .iter()
            .any(|v| volume_serial(&v.volume_id) == serial))
    }

    fn detach_device(&self, name: &str, xml: &str) -> Result<(), HypervisorError> {
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        let d = domains
            .get_mut(name)
            .ok_or_else(|| HypervisorError::NoDomain(name.to_string()))?;
        d.0.volumes.retain(|v| volume_disk_xml(v) != xml);
        Ok(())
    }

    fn abort_migration(&self, _name: &str) -> Result<(), HypervisorError> {
        Ok(())
    }

    fn guest_stats(&self, prefix: &str) -> Result<Vec<GuestCounters>, HypervisorError> {
        Ok(self
            .domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(n, (_, st))| n.starts_with(prefix) && *st == DomainState::Running)
            .map(|(n, (spec, _))| GuestCounters {
                name: n.clone(),
                vcpus: spec.vcpus,
                memory_kib: spec.memory_mib * 1024,
                ..Default::default()
            })
            .collect())
    }

    fn migrate(&self, name: &str, _m: &Migration) -> Result<(), HypervisorError> {
        // It leaves this hypervisor (the target's is another one).
        self.domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| HypervisorError::NoDomain(name.to_string()))
    }

    fn launch(&self, spec: &DomainSpec) -> Result<(), HypervisorError> {
        if *self.refused.lock().unwrap_or_else(|p| p.into_inner()) == Some(spec.virt) {
            return Err(HypervisorError::Libvirt(format!(
                "{} guests do not start here",
                spec.virt
            )));
        }
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        if domains.contains_key(&spec.name) {
            return Err(HypervisorError::Libvirt(format!(
                "domain {} already exists",
                spec.name
            )));
        }
        domains.insert(spec.name.clone(), (spec.clone(), DomainState::Running));
        Ok(())
    }

    fn power_off(&self, name: &str) -> Result<(), HypervisorError> {
        self.change(name, |s| *s = DomainState::Shutoff)
    }

    fn reboot(&self, name: &str) -> Result<(), HypervisorError> {
        self.change(name, |_| {})
    }

    fn remove(&self, name: &str) -> Result<(), HypervisorError> {
        self.domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }

    fn domains(&self, prefix: &str) -> Result<Vec<(String, DomainState)>, HypervisorError> {
        Ok(self
            .domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, (_, s))| (n.clone(), *s))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> DomainSpec {
        DomainSpec {
            name: name.into(),
            virt: Virt::Qemu,
            emulator: None,
            vcpus: 1,
            memory_mib: 256,
            kernel: Some("/cache/k".into()),
            ramdisk: Some("/cache/r".into()),
            cmdline: "console=ttyS0 a<b".into(),
            disk: Some("/inst/i-1/disk.qcow2".into()),
            console_log: "/inst/i-1/console.log".into(),
            nic: None,
            volumes: Vec::new(),
        }
    }

    #[test]
    fn domain_xml_boots_the_kernel_and_logs_the_console() {
        let xml = domain_xml(&spec("i-1"));
        assert!(xml.starts_with(
            "<domain type='qemu'><name>i-1</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        ));
        assert!(xml.contains("<kernel>/cache/k</kernel><initrd>/cache/r</initrd><cmdline>console=ttyS0 a&lt;b</cmdline>"));
        assert!(xml.contains("<source file='/inst/i-1/disk.qcow2'/>"));
        assert!(xml.contains("<serial type='pty'><log file='/inst/i-1/console.log' append='on'/>"));
        let mut disk_boot = spec("i-2");
        disk_boot.kernel = None;
        disk_boot.virt = Virt::Kvm;
        disk_boot.emulator = Some("/usr/local/bin/qemu-wrapper".into());
        let xml = domain_xml(&disk_boot);
        assert!(xml.contains("<boot dev='hd'/>") && !xml.contains("<kernel>"));
        assert!(xml.contains("host-passthrough"));
        assert!(xml.contains("<emulator>/usr/local/bin/qemu-wrapper</emulator>"));
        let mut diskless = spec("i-3");
        diskless.disk = None;
        assert!(!domain_xml(&diskless).contains("<disk"));
    }

    #[test]
    fn the_fake_follows_the_trait() {
        let hv = Fake::default();
        hv.launch(&spec("i-1")).expect("launch");
        assert!(hv.launch(&spec("i-1")).is_err(), "names are unique");
        assert_eq!(
            hv.domains("i-").expect("list"),
            vec![("i-1".to_string(), DomainState::Running)]
        );
        hv.power_off("i-1").expect("off");
        assert_eq!(hv.domains("i-").expect("list")[0].1, DomainState::Shutoff);
        hv.reboot("i-1").expect("reboot");
        hv.remove("i-1").expect("remove");
        hv.remove("i-1").expect("remove twice is fine");
        assert!(hv.domains("i-").expect("list").is_empty());
        assert!(matches!(
            hv.reboot("i-1"),
            Err(HypervisorError::NoDomain(_))
        ));
    }

    #[test]
    fn a_domains_disks_volumes_and_nics_are_found_in_its_xml() {
        let mut s = spec("i-1");
        s.nic = Some(("br0".into(), "d0:0d:00:00:00:01".into(), "tap-i1".into()));
        s.volumes.push(VolumeDisk {
            volume_id: "vol-0123".into(),
            target: "vdb".into(),
            socket: "/run/v.sock".into(),
        });
        let (disks, nics) = devices_of(&domain_xml(&s));
        assert_eq!(
            disks,
            vec![
                ("vda".to_string(), None),
                ("vdb".to_string(), Some("vol0123".to_string()))
            ]
        );
        assert_eq!(nics, vec!["tap-i1".to_string()]);
    }

    #[test]
    fn libvirt_test_driver_gives_guest_counters() {
        let hv = Libvirt::connect("test:///default").expect("test driver");
        let stats = hv.guest_stats("").expect("stats");
        // The driver's own domain `test` runs with one disk and a NIC.
        let test = stats
            .iter()
            .find(|g| g.name == "test")
            .expect("domain test");
        assert!(test.vcpus >= 1 && test.memory_kib > 0, "{test:?}");
        assert!(test.cpu_ns > 0, "{test:?}");
    }

    #[test]
    fn libvirt_test_driver_runs_the_same_calls() {
        // libvirt's built-in test driver: no daemon needed.
        let hv = Libvirt::connect("test:///default").expect("test driver");
        let before = hv.domains("i-").expect("list").len();
        hv.launch(&spec("i-test1")).expect("launch");
        assert!(hv
            .domains("i-")
            .expect("list")
            .contains(&("i-test1".to_string(), DomainState::Running)));
        hv.power_off("i-test1").expect("off");
        hv.remove("i-test1").expect("remove");
        assert_eq!(hv.domains("i-").expect("list").len(), before);
        assert!(matches!(
            hv.reboot("i-test1"),
            Err(HypervisorError::NoDomain(_))
        ));
    }
}
