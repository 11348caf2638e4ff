//! Hosts of their own on one machine: each a network namespace with its own
//! address on a switch (a bridge in a namespace of its own), like a small
//! data-centre network, for tests that run the tiers apart as on separate
//! machines. A node host gets its own libvirtd (`scripts/host-libvirt`).
//! Nothing of it touches the machine's own network, and dropping the
//! [`DataCentre`] removes all of it: processes, libvirtds, namespaces.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::harness::die_with_parent;

/// The switch's subnet: host `n` is 10.77.0.`n + 1`.
const SUBNET: [u8; 3] = [10, 77, 0];

/// A program started on a host: (host, program, args, log).
type Started = (String, PathBuf, Vec<String>, PathBuf);

/// Simulated hosts joined by one switch.
pub struct DataCentre {
    tag: String,
    dir: tempfile::TempDir,
    hosts: Vec<(String, Ipv4Addr)>,
    libvirts: Vec<PathBuf>,
    procs: Mutex<Vec<(String, Child)>>,
    /// What was started on each host, to start it again.
    started: Mutex<Vec<Started>>,
}

impl DataCentre {
    /// A switch and no hosts yet.
    pub fn new() -> Self {
        let mut b = [0u8; 3];
        if let Ok(mut f) = fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut b);
        }
        let dc = Self {
            tag: hex::encode(b),
            dir: tempfile::Builder::new()
                .prefix("gumtree-hosts-")
                .tempdir()
                .expect("tempdir"),
            hosts: Vec::new(),
            libvirts: Vec::new(),
            procs: Mutex::new(Vec::new()),
            started: Mutex::new(Vec::new()),
        };
        let sw = dc.netns("switch");
        sh(&["ip", "netns", "add", &sw]);
        sh(&["ip", "-n", &sw, "link", "add", "sw", "type", "bridge"]);
        sh(&["ip", "-n", &sw, "link", "set", "sw", "up"]);
        sh(&["ip", "-n", &sw, "link", "set", "lo", "up"]);
        dc
    }

    /// The directory for the hosts' files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The network namespace of host `name`.
    pub fn netns(&self, name: &str) -> String {
        format!("gthost-{}-{name}", self.tag)
    }

    /// Adds host `name` (at most 15 characters) on the switch: its address.
    pub fn host(&mut self, name: &str) -> Ipv4Addr {
        let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], self.hosts.len() as u8 + 2);
        let (ns, sw) = (self.netns(name), self.netns("switch"));
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "-n", &sw, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        sh(&["ip", "-n", &sw, "link", "set", name, "master", "sw", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        self.hosts.push((name.to_string(), addr));
        addr
    }

    /// The address of host `name`, added before.
    pub fn address(&self, name: &str) -> Ipv4Addr {
        self.hosts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// A command that runs `program` on host `name`.
    pub fn command(&self, name: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns(name)])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `program` with `args` on host `name`, its output in `log`; it
    /// ends with the test, or when the data centre goes.
    pub fn spawn(&self, name: &str, program: &Path, args: &[&str], log: &Path) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = self.command(name, program);
        cmd.args(args)
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn on a host");
        lock(&self.procs).push((name.to_string(), child));
        lock(&self.started).push((
            name.to_string(),
            program.to_path_buf(),
            args.iter().map(|a| a.to_string()).collect(),
            log.to_path_buf(),
        ));
    }

    /// Kills (SIGKILL) what was started on host `name`, as a crash would.
    pub fn kill(&self, name: &str) {
        for (_, child) in lock(&self.procs).iter().filter(|(n, _)| n == name) {
            let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        }
    }

    /// Starts again what was started on host `name` (after [`Self::kill`]).
    pub fn restart(&self, name: &str) {
        let again: Vec<_> = {
            let mut started = lock(&self.started);
            let again = started
                .iter()
                .filter(|(n, ..)| n == name)
                .cloned()
                .collect();
            started.retain(|(n, ..)| n != name);
            again
        };
        for (_, program, args, log) in again {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.spawn(name, &program, &args, &log);
        }
    }

    /// Host `name`'s own libvirtd, with host UUID `uuid`: the libvirt URI
    /// its node controller uses. With `tls` (the node's internal_tls
    /// directory and its node name) it also takes other nodes' libvirtds on
    /// its address, port 16514, as scripts/host-libvirt says.
    pub fn start_libvirt(&mut self, name: &str, uuid: &str, tls: Option<(&Path, &str)>) -> String {
        let dir = self.dir.path().join(name).join("libvirt");
        fs::create_dir_all(&dir).expect("libvirt dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/host-libvirt");
        let mut cmd = Command::new(&script);
        cmd.args(["start"])
            .arg(&dir)
            .args([&self.netns(name), uuid]);
        if let Some((pki, node)) = tls {
            let address = self.address(name).to_string();
            cmd.arg(pki).args([node, &address]);
        }
        let out = cmd.output().expect("scripts/host-libvirt");
        self.libvirts.push(dir.clone());
        assert!(
            out.status.success(),
            "host-libvirt start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "qemu:///system?socket={}",
            dir.join("run/libvirt-sock").display()
        )
    }

    /// virsh against host `name`'s libvirtd.
    pub fn virsh(&self, name: &str, args: &[&str]) -> Output {
        let uri = format!(
            "qemu:///system?socket={}",
            self.dir
                .path()
                .join(name)
                .join("libvirt/run/libvirt-sock")
                .display()
        );
        Command::new("virsh")
            .args(["-c", &uri])
            .args(args)
            .output()
            .expect("virsh")
    }
}

impl Default for DataCentre {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DataCentre {
    fn drop(&mut self) {
        for (_, child) in lock(&self.procs).iter_mut() {
            let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        for (_, child) in lock(&self.procs).iter_mut() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/host-libvirt");
        for dir in &self.libvirts {
            let _ = Command::new(&script).arg("stop").arg(dir).output();
        }
        // Whatever still runs on a host (guests' QEMU, dnsmasq) goes with it.
        let names: Vec<String> = self
            .hosts
            .iter()
            .map(|(n, _)| n.clone())
            .chain(["switch".to_string()])
            .collect();
        for name in names {
            let ns = self.netns(&name);
            for _ in 0..50 {
                let pids = Command::new("ip")
                    .args(["netns", "pids", &ns])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let pids: Vec<i32> = pids
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
