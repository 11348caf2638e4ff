//! Starts a whole cloud as real processes on ephemeral loopback ports, with
//! all state in a temporary directory, and always tears it down: when the
//! [`Cloud`] is dropped (also when a test fails or panics) every process is
//! stopped, and a panicking test prints the tail of every log.
//!
//! The binaries come from the workspace's target directory (`cargo build
//! --workspace --bins`, which `scripts/test` runs first), or from
//! `GUMTREE_BIN_DIR`.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::pki::Role;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The tiers, by their binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Cloud,
    Cluster,
    Node,
    Storage,
    Walrus,
}

impl Tier {
    /// The daemon's binary name.
    pub fn binary(self) -> &'static str {
        match self {
            Tier::Cloud => "cloud-controller",
            Tier::Cluster => "cluster-controller",
            Tier::Node => "node-controller",
            Tier::Storage => "storage-controller",
            Tier::Walrus => "walrus",
        }
    }

    /// The role its certificate names.
    pub fn role(self) -> Role {
        match self {
            Tier::Cloud => Role::Clc,
            Tier::Cluster => Role::Cc,
            Tier::Node => Role::Nc,
            Tier::Storage => Role::Sc,
            Tier::Walrus => Role::Walrus,
        }
    }
}

struct Proc {
    tier: Tier,
    config: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    addr: Option<SocketAddr>,
}

/// Issues `role`/`name` its certificate in `pki` (replacing any).
fn issue(pki: &Path, role: Role, name: &str) -> common::pki::Identity {
    let who = common::pki::Identity {
        role,
        name: name.to_string(),
    };
    common::pki::issue_in(pki, &who).expect("issue a certificate");
    who
}

/// Directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GUMTREE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with advice when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Polls `fetch` every 100 ms until its text contains `needle` and returns
/// that text; after `timeout`, panics with the end of the last text (a
/// guest's console, say), so a failure shows what there was instead.
pub fn wait_for_text(
    what: &str,
    timeout: Duration,
    mut fetch: impl FnMut() -> String,
    needle: &str,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fetch();
        if text.contains(needle) {
            return text;
        }
        if Instant::now() >= deadline {
            let tail: String = {
                let chars: Vec<char> = text.chars().collect();
                chars[chars.len().saturating_sub(4000)..].iter().collect()
            };
            panic!("timed out after {timeout:?} waiting for {what} ({needle:?}); the text ends:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The network namespace scripts/test runs libvirtd in
/// (`GUMTREE_LIBVIRT_NETNS`), when it exists: real guests are networked
/// there.
pub fn guest_netns() -> Option<String> {
    std::env::var("GUMTREE_LIBVIRT_NETNS")
        .ok()
        .filter(|ns| !ns.is_empty() && Path::new("/run/netns").join(ns).exists())
}

fn rand_bytes() -> [u8; 3] {
    let mut b = [0u8; 3];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b
}

/// Options for [`Cloud::start_with`].
#[derive(Clone, Debug)]
pub struct CloudOptions {
    /// Number of node controllers (`nc-1`, `nc-2`, ...).
    pub nodes: usize,
    /// Cores each node offers.
    pub node_cores: u32,
    /// Memory each node offers, MiB.
    pub node_memory_mib: u64,
    /// Disk each node offers, GiB.
    pub node_disk_gib: u64,
    /// Walrus also serves S3 over HTTPS, with a self-signed certificate
    /// for `127.0.0.1` and `localhost` ([`Cloud::ca_file`]).
    pub s3_tls: bool,
    /// The CLC serves the web console over HTTPS ([`Cloud::console_url`]),
    /// with the certificate Walrus's HTTPS uses too.
    pub console: bool,
    /// Nodes run real guests on the machine's libvirtd (`qemu:///system`,
    /// TCG); otherwise they use libvirt's in-process test driver.
    pub real_libvirt: bool,
    /// The cluster's placement policy (its default when empty).
    pub placement: &'static str,
    /// Every new instance gets a public address from the pool (the CLC's
    /// `assign_public_ips`; off by default here, so tests count the pool
    /// as elastic IPs).
    pub assign_public_ips: bool,
    /// Each node's `hypervisor` (`qemu` by default).
    pub hypervisor: &'static str,
    /// More lines for each node's configuration.
    pub node_config: String,
    /// More lines for the CLC's configuration (`report_timeout_secs`
    /// replaces the harness's 6).
    pub clc_config: String,
    /// Extra lines for the cluster controller's config.
    pub cc_config: String,
    /// More lines for Walrus's configuration.
    pub walrus_config: String,
    /// More lines for the storage controller's configuration.
    pub sc_config: String,
    /// Files put into every node's image cache before it starts, as if
    /// fetched before (tests that drive a node directly, with no instance
    /// record at the CLC, which Walrus would refuse the download).
    pub cached_images: Vec<PathBuf>,
}

impl Default for CloudOptions {
    fn default() -> Self {
        Self {
            nodes: 1,
            node_cores: 4,
            node_memory_mib: 4096,
            node_disk_gib: 100,
            s3_tls: false,
            console: false,
            real_libvirt: false,
            placement: "",
            assign_public_ips: false,
            hypervisor: "qemu",
            node_config: String::new(),
            clc_config: String::new(),
            cc_config: String::new(),
            walrus_config: String::new(),
            sc_config: String::new(),
            cached_images: Vec::new(),
        }
    }
}

/// A running cloud: CLC `clc`, Walrus `walrus`, SC `sc-1`, CC `cluster-1`
/// and nodes `nc-1`...
pub struct Cloud {
    dir: TempDir,
    secret_file: PathBuf,
    /// The cluster CA and every component's certificate.
    pki: PathBuf,
    procs: BTreeMap<String, Proc>,
    outside: Option<Outside>,
}

/// The "outside world" of a cloud with real guests: a network namespace
/// joined by a veth pair to the one libvirtd (and so the nodes' networks)
/// lives in. The nodes put public addresses on the inner end; the outside
/// routes the public pool to it.
#[derive(Debug, Clone)]
pub struct Outside {
    /// The outside namespace.
    pub netns: String,
    /// Its address.
    pub ip: String,
    /// The inner end's name (the nodes' `public_interface`).
    pub interface: String,
    /// The public pool (`a.b.c.d-a.b.c.e`).
    pub pool: String,
}

impl Outside {
    /// Builds one next to libvirtd's namespace `inner`.
    fn make(inner: &str) -> Self {
        let r = rand_bytes();
        let tag = hex::encode(r);
        let net = format!("100.{}.{}", 64 + r[0] % 64, r[1]);
        let o = Outside {
            netns: format!("gtout-{tag}"),
            ip: format!("{net}.2"),
            interface: format!("gp{tag}"),
            pool: format!("{net}.10-{net}.15"),
        };
        let peer = format!("gq{tag}");
        let steps: [&[&str]; 9] = [
            &["ip", "netns", "add", &o.netns],
            &[
                "ip",
                "link",
                "add",
                &o.interface,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
            &["ip", "link", "set", &o.interface, "netns", inner],
            &["ip", "link", "set", &peer, "netns", &o.netns],
            &[
                "ip",
                "-n",
                inner,
                "addr",
                "add",
                &format!("{net}.1/30"),
                "dev",
                &o.interface,
            ],
            &["ip", "-n", inner, "link", "set", &o.interface, "up"],
            &[
                "ip",
                "-n",
                &o.netns,
                "addr",
                "add",
                &format!("{}/30", o.ip),
                "dev",
                &peer,
            ],
            &["ip", "-n", &o.netns, "link", "set", &peer, "up"],
            &[
                "ip",
                "-n",
                &o.netns,
                "route",
                "add",
                &format!("{net}.8/29"),
                "dev",
                &peer,
            ],
        ];
        for step in steps {
            let out = Command::new(step[0]).args(&step[1..]).output().expect("ip");
            assert!(
                out.status.success(),
                "{step:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        o
    }
}

impl Cloud {
    /// A cloud with one node.
    pub fn start() -> Self {
        Self::start_with(CloudOptions::default())
    }

    /// A cloud as `options` say, once every tier listens.
    pub fn start_with(options: CloudOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gumtree-test-")
            .tempdir()
            .expect("tempdir");
        let secret_file = dir.path().join("cluster.secret");
        fs::write(
            &secret_file,
            format!("{}\n", common::auth::ClusterSecret::generate()),
        )
        .expect("write secret");
        let pki = dir.path().join("pki");
        common::pki::init_ca(&pki, false).expect("the cluster CA");
        issue(&pki, Role::Admin, "admin");
        if options.real_libvirt {
            assert!(
                Path::new("/var/run/libvirt/libvirt-sock").exists(),
                "libvirtd is not running: run the suite with scripts/test, which starts it"
            );
        }
        // Real guests get a real private network, in the namespace
        // scripts/test runs libvirtd in, and an outside world to be reached
        // from through their public addresses.
        let netns = guest_netns().filter(|_| options.real_libvirt);
        let outside = netns.as_deref().map(Outside::make);
        let mut cloud = Self {
            dir,
            secret_file,
            pki,
            procs: BTreeMap::new(),
            outside: outside.clone(),
        };
        let pool = outside
            .as_ref()
            .map_or("203.0.113.10-203.0.113.12", |o| o.pool.as_str());
        let tls =
            (options.s3_tls || options.console).then(|| self_signed_certificate(cloud.dir.path()));
        let console = match (&tls, options.console) {
            (Some((cert, key)), true) => format!(
                "console_listen = \"127.0.0.1:0\"\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n"
            ),
            _ => String::new(),
        };
        cloud.add(
            "clc",
            Tier::Cloud,
            &format!(
                "{console}{}ec2_listen = \"127.0.0.1:0\"\npublic_ips = [{pool:?}]\nassign_public_ips = {}\n{}",
                if options.clc_config.contains("report_timeout_secs") {
                    ""
                } else {
                    "report_timeout_secs = 6\n"
                },
                options.assign_public_ips,
                options.clc_config,
            ),
        );
        let clc = cloud.addr("clc");
        let mut walrus =
            format!("name = \"walrus\"\nclc = \"{clc}\"\ns3_listen = \"127.0.0.1:0\"\n");
        if let (true, Some((cert, key))) = (options.s3_tls, &tls) {
            walrus.push_str(&format!(
                "s3_tls_listen = \"127.0.0.1:0\"\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n"
            ));
        }
        walrus.push_str(&options.walrus_config);
        cloud.add("walrus", Tier::Walrus, &walrus);
        cloud.add(
            "sc-1",
            Tier::Storage,
            &format!(
                "name = \"sc-1\"\npartition = \"zone-1\"\nclc = \"{clc}\"\n{}",
                options.sc_config
            ),
        );
        let mut cc = format!(
            "name = \"cluster-1\"\nzone = \"zone-1\"\nclc = \"{clc}\"\nnode_timeout_secs = 6\n"
        );
        if !options.placement.is_empty() {
            cc.push_str(&format!("placement_policy = {:?}\n", options.placement));
        }
        // Each cloud its own bridge and subnet.
        if netns.is_some() {
            let r: [u8; 3] = rand_bytes();
            cc.push_str(&format!(
                "bridge = \"gt{}\"\nprivate_subnet = \"10.{}.{}.0/24\"\n",
                hex::encode(r),
                64 + r[0] % 64,
                r[1]
            ));
        }
        cc.push_str(&options.cc_config);
        cloud.add("cluster-1", Tier::Cluster, &cc);
        let cc = cloud.addr("cluster-1");
        for i in 1..=options.nodes {
            let name = format!("nc-{i}");
            let cache = cloud.dir.path().join(&name).join("images");
            for file in &options.cached_images {
                fs::create_dir_all(&cache).expect("image cache");
                let data = fs::read(file).expect("read image");
                fs::write(cache.join(hex::encode(Sha256::digest(&data))), data)
                    .expect("seed the image cache");
            }
            cloud.add(
                &name,
                Tier::Node,
                &format!(
                    "name = \"{name}\"\ncc = \"{cc}\"\ncores = {}\nmemory_mib = {}\ndisk_gib = {}\nhypervisor = {:?}\nlibvirt_uri = \"{}\"\nclc = \"{clc}\"\n{}{}",
                    options.node_cores,
                    options.node_memory_mib,
                    options.node_disk_gib,
                    options.hypervisor,
                    if options.real_libvirt {
                        "qemu:///system"
                    } else {
                        "test:///default"
                    },
                    match (&netns, &outside) {
                        (Some(ns), Some(o)) => format!(
                            "netns = {ns:?}\nnetwork_dir = {:?}\npublic_interface = {:?}\n",
                            cloud.dir.path().join("net"),
                            o.interface
                        ),
                        _ => "manage_network = false\n".into(),
                    },
                    options.node_config,
                ),
            );
        }
        cloud
    }

    /// The outside world of a cloud with real guests.
    pub fn outside(&self) -> Option<&Outside> {
        self.outside.as_ref()
    }

    /// The temporary directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster secret file.
    pub fn secret_file(&self) -> &Path {
        &self.secret_file
    }

    /// The directory of the cluster CA and the certificates.
    pub fn pki_dir(&self) -> &Path {
        &self.pki
    }

    /// How a component `role`/`name` of this cloud would prove itself
    /// (a certificate issued for it now, and the cluster secret).
    pub fn trust(&self, role: Role, name: &str) -> common::rpc::Trust {
        let who = issue(&self.pki, role, name);
        common::rpc::Trust::load(
            &self.secret_file,
            &common::pki::TlsFiles::in_dir(&self.pki),
            &who,
        )
        .expect("load the certificate")
    }

    /// A client of daemon `name` (of `tier`), calling as `role`/`as_name`.
    pub async fn client(
        &self,
        name: &str,
        tier: Tier,
        role: Role,
        as_name: &str,
    ) -> common::rpc::Client {
        self.trust(role, as_name)
            .connect(&self.addr(name).to_string(), tier.role())
            .await
            .unwrap_or_else(|e| panic!("connect to {name}: {e}"))
    }

    /// Starts a daemon named `name` with `extra` config lines (listen, state
    /// directory and secret are added unless `extra` sets them) and waits
    /// until it listens.
    pub fn add(&mut self, name: &str, tier: Tier, extra: &str) {
        let state_dir = self.dir.path().join(name);
        fs::create_dir_all(&state_dir).expect("state dir");
        let mut text = String::new();
        let sets = |field: &str| {
            extra
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{field} =")))
        };
        if !sets("listen") {
            text.push_str("listen = \"127.0.0.1:0\"\n");
        }
        if !sets("cluster_secret_file") {
            text.push_str(&format!("cluster_secret_file = {:?}\n", self.secret_file));
        }
        // Its certificate, for the name its config gives (or its own).
        let configured = extra.lines().find_map(|l| {
            let value = l.trim_start().strip_prefix("name =")?;
            Some(value.trim().trim_matches('"').to_string())
        });
        if configured.is_none() {
            text.push_str(&format!("name = {name:?}\n"));
        }
        issue(
            &self.pki,
            tier.role(),
            configured.as_deref().unwrap_or(name),
        );
        if !sets("internal_tls") {
            text.push_str(&format!("internal_tls = {{ dir = {:?} }}\n", self.pki));
        }
        text.push_str(&format!(
            "state_dir = {state_dir:?}\nlog_filter = \"info,h2=warn,tower=warn\"\n"
        ));
        text.push_str(extra);
        let config = self.dir.path().join(format!("{name}.toml"));
        fs::write(&config, text).expect("write config");
        let log = self.dir.path().join(format!("{name}.log"));
        self.procs.insert(
            name.to_string(),
            Proc {
                tier,
                config,
                state_dir,
                log,
                child: None,
                addr: None,
            },
        );
        self.spawn(name);
    }

    fn proc(&self, name: &str) -> &Proc {
        self.procs
            .get(name)
            .unwrap_or_else(|| panic!("no process {name} in this cloud"))
    }

    fn spawn(&mut self, name: &str) {
        let p = self.procs.get_mut(name).expect("known process");
        let addr_file = p.state_dir.join(common::rpc::ADDR_FILE);
        let _ = fs::remove_file(&addr_file);
        // Walrus's client endpoints are bound after its gRPC one.
        let mut more_files = Vec::new();
        let config = fs::read_to_string(&p.config).unwrap_or_default();
        if p.tier == Tier::Walrus {
            more_files.push(p.state_dir.join("s3.addr"));
            if config.contains("s3_tls_listen") {
                more_files.push(p.state_dir.join("s3tls.addr"));
            }
        }
        if p.tier == Tier::Cloud && config.contains("ec2_listen") {
            more_files.push(p.state_dir.join("ec2.addr"));
        }
        if p.tier == Tier::Cloud && config.contains("console_listen") {
            more_files.push(p.state_dir.join("console.addr"));
        }
        for f in &more_files {
            let _ = fs::remove_file(f);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .expect("log file");
        let mut cmd = Command::new(binary(p.tier.binary()));
        cmd.arg("--config")
            .arg(&p.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        die_with_parent(&mut cmd);
        p.child = Some(cmd.spawn().expect("spawn daemon"));
        let (log_path, state_dir) = (p.log.clone(), p.state_dir.clone());
        let addr: SocketAddr = wait_for(
            &format!("{name} to listen"),
            Duration::from_secs(30),
            || {
                if let Some(status) = self
                    .procs
                    .get_mut(name)
                    .and_then(|p| p.child.as_mut())
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "{name} exited with {status} while starting:\n{}",
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                if more_files.iter().any(|f| read_addr(f).is_none()) {
                    return None;
                }
                fs::read_to_string(state_dir.join(common::rpc::ADDR_FILE))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            },
        );
        let p = self.procs.get_mut(name).expect("known process");
        if p.addr.is_none() {
            // Restarts must come back on the same port: the tiers below dial it.
            let text = fs::read_to_string(&p.config).expect("config");
            let mut text = pin_port(&text, "listen", addr);
            if let Some(s3) = read_addr(&p.state_dir.join("s3.addr")) {
                text = pin_port(&text, "s3_listen", s3);
            }
            if let Some(s3) = read_addr(&p.state_dir.join("s3tls.addr")) {
                text = pin_port(&text, "s3_tls_listen", s3);
            }
            if let Some(ec2) = read_addr(&p.state_dir.join("ec2.addr")) {
                text = pin_port(&text, "ec2_listen", ec2);
            }
            if let Some(console) = read_addr(&p.state_dir.join("console.addr")) {
                text = pin_port(&text, "console_listen", console);
            }
            fs::write(&p.config, text).expect("config");
        }
        p.addr = Some(addr);
    }

    /// Walrus's S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn s3_endpoint(&self) -> String {
        let addr = read_addr(&self.proc("walrus").state_dir.join("s3.addr"))
            .expect("walrus writes s3.addr");
        format!("http://{addr}")
    }

    /// The CLC's EC2 endpoint, `http://127.0.0.1:<port>/`.
    pub fn ec2_endpoint(&self) -> String {
        let addr = read_addr(&self.proc("clc").state_dir.join("ec2.addr"))
            .expect("the CLC writes ec2.addr");
        format!("http://{addr}/")
    }

    /// The web console, `https://127.0.0.1:<port>/` (with
    /// [`CloudOptions::console`]).
    pub fn console_url(&self) -> String {
        let addr = read_addr(&self.proc("clc").state_dir.join("console.addr"))
            .expect("the CLC writes console.addr when it serves the console");
        format!("https://{addr}/")
    }

    /// Walrus's HTTPS S3 endpoint, `https://127.0.0.1:<port>` (with
    /// [`CloudOptions::s3_tls`]).
    pub fn s3_https_endpoint(&self) -> String {
        let addr = read_addr(&self.proc("walrus").state_dir.join("s3tls.addr"))
            .expect("walrus writes s3tls.addr when it serves HTTPS");
        format!("https://{addr}")
    }

    /// The self-signed certificate HTTPS endpoints serve (with
    /// [`CloudOptions::s3_tls`]), as a CA bundle for clients.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    /// The system account's admin access key: (id, secret).
    pub fn admin_key(&self) -> (String, String) {
        self.account_key("eucalyptus")
    }

    /// The first access key of `account`: (id, secret).
    pub fn account_key(&self, account: &str) -> (String, String) {
        let keys = self.admin_json(&[
            "describe-access-keys",
            "--show-secrets",
            "--account",
            account,
        ]);
        let k = &keys[0];
        (
            k["access_key_id"].as_str().expect("key id").to_string(),
            k["secret_access_key"].as_str().expect("secret").to_string(),
        )
    }

    /// Creates `account` with an access key for its admin: (id, secret).
    pub fn new_account(&self, account: &str) -> (String, String) {
        self.admin_json(&["create-account", account]);
        self.admin_json(&["create-access-key", "--account", account]);
        self.account_key(account)
    }

    /// Where `name` listens.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.proc(name).addr.expect("started")
    }

    /// The log of `name` so far.
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(&self.proc(name).log).unwrap_or_default()
    }

    /// The process id of `name`.
    pub fn pid(&self, name: &str) -> Pid {
        let child = self.proc(name).child.as_ref().expect("running");
        Pid::from_raw(child.id() as i32)
    }

    /// Sends `signal` to `name`.
    pub fn signal(&self, name: &str, signal: Signal) {
        kill(self.pid(name), signal).expect("kill");
    }

    /// SIGKILLs `name` and reaps it.
    pub fn kill(&mut self, name: &str) {
        self.signal(name, Signal::SIGKILL);
        let p = self.procs.get_mut(name).expect("known process");
        if let Some(mut child) = p.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGTERMs `name` and waits up to `timeout` for it to exit; returns its status.
    pub fn terminate(&mut self, name: &str, timeout: Duration) -> std::process::ExitStatus {
        self.signal(name, Signal::SIGTERM);
        let p = self.procs.get_mut(name).expect("known process");
        let mut child = p.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `name` again with its config, on the same port.
    pub fn restart(&mut self, name: &str) {
        assert!(self.proc(name).child.is_none(), "{name} is still running");
        self.spawn(name);
    }

    /// Runs `gumtree-admin` against this cloud's CLC.
    pub fn admin(&self, args: &[&str]) -> Output {
        self.admin_command(args)
            .output()
            .expect("run gumtree-admin")
    }

    /// `gumtree-admin ARGS`, set up to reach this cloud's CLC.
    fn admin_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("gumtree-admin"));
        cmd.env("GUMTREE_CLC", self.addr("clc").to_string())
            .env("GUMTREE_SECRET_FILE", &self.secret_file)
            .env("GUMTREE_PKI_DIR", &self.pki)
            .args(args);
        cmd
    }

    /// Sets a user's console password with `gumtree-admin set-password`
    /// (which reads it from standard input).
    pub fn set_password(&self, account: &str, user: &str, password: &str) {
        use std::io::Write;
        let mut child = self
            .admin_command(&["set-password", "--account", account, "--user", user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gumtree-admin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write the password");
        let out = child
            .wait_with_output()
            .expect("gumtree-admin set-password");
        assert!(
            out.status.success(),
            "set-password failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `gumtree-admin -o json ARGS`, which must succeed, and parses its output.
    pub fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.admin(&all);
        assert!(
            out.status.success(),
            "gumtree-admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("gumtree-admin prints JSON")
    }

    /// The state of node `name` as the CLC shows it (`ENABLED` / `NOTREADY`).
    pub fn node_state(&self, name: &str) -> Option<String> {
        let nodes = self.admin_json(&["describe-nodes"]);
        nodes
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["state"].as_str().map(String::from))
    }

    /// The state of service `name` as the CLC shows it.
    pub fn service_state(&self, name: &str) -> Option<String> {
        let services = self.admin_json(&["describe-services"]);
        services
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["state"].as_str().map(String::from))
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // Children first, so parents do not log their departure as errors.
        let order: Vec<String> = self.procs.keys().rev().cloned().collect();
        for name in &order {
            if let Some(child) = self.procs.get(name).and_then(|p| p.child.as_ref()) {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for name in &order {
            let Some(p) = self.procs.get_mut(name) else {
                continue;
            };
            if let Some(mut child) = p.child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            if panicking {
                let log = fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!("----- last lines of {name}.log -----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        sweep_networks(&self.dir.path().join("net"));
        if let Some(o) = &self.outside {
            // The veth pair goes with the namespace.
            let _ = Command::new("ip").args(["netns", "del", &o.netns]).output();
        }
    }
}

/// Removes what the nodes' networks left (when a test failed before its
/// guests were terminated): dnsmasq, the bridge and its NAT rule.
fn sweep_networks(dir: &Path) {
    let Some(ns) = guest_netns() else { return };
    let in_ns = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()
    };
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let bridge = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = fs::read_to_string(entry.path().join("dnsmasq.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if let Ok(out) = in_ns(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-L",
            "PREROUTING",
            "-n",
            "--line-numbers",
        ]) {
            let mut numbers: Vec<u32> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(&format!("gumtree metadata {bridge} ")))
                .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                .collect();
            numbers.sort_unstable_by(|a, b| b.cmp(a));
            for n in numbers {
                let n = n.to_string();
                let _ = in_ns(&["iptables", "-w", "-t", "nat", "-D", "PREROUTING", &n]);
            }
        }
        let _ = in_ns(&["ip", "link", "del", &bridge]);
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert, key).
fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn read_addr(path: &Path) -> Option<SocketAddr> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Rewrites the line `field = "127.0.0.1:0"` to the port actually bound.
fn pin_port(config: &str, field: &str, addr: SocketAddr) -> String {
    config
        .lines()
        .map(|line| {
            if line.trim_start().starts_with(&format!("{field} =")) && line.contains(":0\"") {
                format!("{field} = \"{addr}\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The daemon dies with the test if the test process is killed outright.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}
