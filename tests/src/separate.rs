//! The tiers on separate hosts, set up as the README's "Running the tiers
//! on separate hosts" says: every tier in a network namespace of its own
//! with its own address on one switch, each node with its own libvirtd
//! (own mount and network namespace, own host UUID); used by the
//! separate-hosts test and the migration bench.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    clients::{self, aws_binary, AwsCli, Credentials, Run},
    harness::{binary, wait_for},
    hosts::DataCentre,
};

/// The hosts: name, and the tier with its certificate role and name.
pub const TIERS: &[(&str, &str, &str)] = &[
    ("clc", "clc", "clc"),
    ("walrus", "walrus", "walrus"),
    ("sc", "sc", "sc-1"),
    ("cc", "cc", "cluster-1"),
    ("node-a", "nc", "node-a"),
    ("node-b", "nc", "node-b"),
];

/// The elastic IPs: addresses of the switch's subnet no host has.
pub const POOL: &str = "10.77.0.200-10.77.0.209";

pub struct Setup {
    pub dc: DataCentre,
    /// The client host's directory: the admin's certificates and secret.
    pub client: PathBuf,
    pub clc: String,
    pub walrus: String,
}

impl Setup {
    pub fn admin(&self, args: &[&str]) -> String {
        self.try_admin(args)
            .unwrap_or_else(|e| panic!("gumtree-admin {args:?}: {e}"))
    }

    pub fn try_admin(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .dc
            .command("client", &binary("gumtree-admin"))
            .args(["--clc", &format!("{}:8780", self.clc)])
            .arg("--secret-file")
            .arg(self.client.join("cluster.secret"))
            .arg("--pki-dir")
            .arg(self.client.join("pki"))
            .args(args)
            .output()
            .expect("gumtree-admin");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn copy_into(from: &Path, names: &[&str], to: &Path) {
    fs::create_dir_all(to).expect("dir");
    for n in names {
        fs::copy(from.join(n), to.join(n)).unwrap_or_else(|e| panic!("copy {n}: {e}"));
        if n.ends_with(".key") || *n == "cluster.secret" {
            fs::set_permissions(to.join(n), fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
}

/// Steps 1 to 5 of the README: one secret and one CA, each host its
/// certificate, listen/advertise/clc/cc, the tiers started in order.
pub fn set_up() -> Setup {
    set_up_with("")
}

/// As [`set_up`], with `cc_extra` lines in the cluster controller's
/// configuration.
pub fn set_up_with(cc_extra: &str) -> Setup {
    let mut dc = DataCentre::new();
    let mut addr = std::collections::HashMap::new();
    for (host, _, _) in TIERS {
        addr.insert(*host, dc.host(host).to_string());
    }
    dc.host("client");
    let root = dc.dir().to_path_buf();
    // 2. One cluster secret, made as the README makes it.
    let admin_host = root.join("admin");
    fs::create_dir_all(&admin_host).expect("dir");
    let secret = run(Command::new("sh")
        .arg("-c")
        .arg("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"));
    assert_eq!(secret.len(), 64, "{secret:?}");
    fs::write(admin_host.join("cluster.secret"), format!("{secret}\n")).expect("secret");
    let pki = admin_host.join("pki");
    let admin = binary("gumtree-admin");
    run(Command::new(&admin)
        .arg("--pki-dir")
        .arg(&pki)
        .args(["pki", "init"]));
    let mut issued = vec![("admin", "admin")];
    issued.extend(TIERS.iter().map(|(_, role, name)| (*role, *name)));
    for (role, name) in &issued {
        // Nodes' certificates name their addresses too: their libvirtds
        // are dialled by address (live migration).
        let ip: Vec<String> = match addr.get(name) {
            Some(a) if *role == "nc" => vec!["--ip".into(), a.clone()],
            _ => vec![],
        };
        run(Command::new(&admin)
            .arg("--pki-dir")
            .arg(&pki)
            .args(["pki", "issue", role, name])
            .args(&ip));
    }
    assert!(
        pki.join("ca.key").exists(),
        "the CA's key stays on the admin host"
    );
    let (clc, cc) = (addr["clc"].clone(), addr["cc"].clone());
    for (host, role, name) in TIERS {
        let dir = root.join(host);
        let (cert, key) = (format!("{role}-{name}.pem"), format!("{role}-{name}.key"));
        copy_into(&pki, &["ca.pem", &cert, &key], &dir.join("pki"));
        copy_into(&admin_host, &["cluster.secret"], &dir);
        assert!(!dir.join("pki/ca.key").exists());
    }
    let client = root.join("client");
    copy_into(
        &pki,
        &["ca.pem", "admin-admin.pem", "admin-admin.key"],
        &client.join("pki"),
    );
    copy_into(&admin_host, &["cluster.secret"], &client);
    // 3. The configurations.
    let common = |host: &str| {
        let dir = root.join(host);
        format!(
            "state_dir = {:?}\ncluster_secret_file = {:?}\ninternal_tls = {{ dir = {:?} }}\nlog_filter = \"info,h2=warn,tower=warn\"\n",
            dir.join("state"),
            dir.join("cluster.secret"),
            dir.join("pki")
        )
    };
    let configs = [
        (
            "clc",
            // Elastic IPs on the switch's subnet: the node that holds one
            // answers for it there.
            format!(
                "listen = \"0.0.0.0:8780\"\nec2_listen = \"0.0.0.0:8773\"\nreport_timeout_secs = 6\npublic_ips = [\"{POOL}\"]\nassign_public_ips = false\n"
            ),
        ),
        (
            "walrus",
            format!(
                "listen = \"0.0.0.0:8777\"\nadvertise = \"{}:8777\"\nclc = \"{clc}:8780\"\ns3_listen = \"0.0.0.0:8779\"\n",
                addr["walrus"]
            ),
        ),
        (
            "sc",
            format!(
                "name = \"sc-1\"\npartition = \"zone-1\"\nlisten = \"0.0.0.0:8776\"\nadvertise = \"{}:8776\"\nclc = \"{clc}:8780\"\n",
                addr["sc"]
            ),
        ),
        (
            "cc",
            format!(
                "name = \"cluster-1\"\nzone = \"zone-1\"\nlisten = \"0.0.0.0:8774\"\nadvertise = \"{cc}:8774\"\nclc = \"{clc}:8780\"\nplacement_policy = \"ROUNDROBIN\"\n{cc_extra}"
            ),
        ),
    ];
    let logs = root.join("logs");
    fs::create_dir_all(&logs).expect("logs");
    // 4. The CLC first, then Walrus, the SC and the CC, then the nodes.
    let bins = [
        ("clc", "cloud-controller"),
        ("walrus", "walrus"),
        ("sc", "storage-controller"),
        ("cc", "cluster-controller"),
    ];
    for ((host, text), (_, bin)) in configs.iter().zip(bins) {
        let file = root.join(host).join("config.toml");
        fs::write(&file, format!("{text}{}", common(host))).expect("config");
        let file = file.display().to_string();
        dc.spawn(
            host,
            &binary(bin),
            &["--config", &file],
            &logs.join(format!("{host}.log")),
        );
    }
    for (i, node) in ["node-a", "node-b"].into_iter().enumerate() {
        let pki = root.join(node).join("pki");
        let uri = dc.start_libvirt(
            node,
            &format!("6a6d7c1e-0000-4000-8000-00000000000{}", i + 1),
            Some((&pki, node)),
        );
        let text = format!(
            "name = \"{node}\"\nlisten = \"0.0.0.0:8775\"\nadvertise = \"{}:8775\"\ncc = \"{cc}:8774\"\nclc = \"{clc}:8780\"\nlibvirt_uri = \"{uri}\"\nhypervisor = \"qemu\"\nnetwork_dir = {:?}\npublic_interface = \"eth0\"\nmigration_tls_dir = {:?}\ncores = 2\nmemory_mib = 2048\n{}",
            addr[node],
            root.join(node).join("net"),
            root.join(node).join("libvirt/tls"),
            common(node)
        );
        let file = root.join(node).join("config.toml");
        fs::write(&file, text).expect("config");
        let file = file.display().to_string();
        dc.spawn(
            node,
            &binary("node-controller"),
            &["--config", &file],
            &logs.join(format!("{node}.log")),
        );
    }
    let walrus = addr["walrus"].clone();
    Setup {
        dc,
        client,
        clc,
        walrus,
    }
}

pub fn logs(s: &Setup) -> String {
    let mut out = String::new();
    for (host, _, _) in TIERS {
        let text = fs::read_to_string(s.dc.dir().join("logs").join(format!("{host}.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        out.push_str(&format!("--- {host}\n"));
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

impl Setup {
    /// Step 5: waits until every service is ENABLED, and both nodes.
    pub fn wait_ready(&self) {
        wait_for(
            "every service ENABLED and both nodes",
            Duration::from_secs(60),
            || {
                let services = self.try_admin(&["-o", "json", "describe-services"]).ok()?;
                let nodes = self.try_admin(&["-o", "json", "describe-nodes"]).ok()?;
                let services: serde_json::Value = serde_json::from_str(&services).ok()?;
                let nodes: serde_json::Value = serde_json::from_str(&nodes).ok()?;
                let services = services.as_array()?;
                let enabled = |v: &serde_json::Value| v["state"].as_str() == Some("ENABLED");
                (services.len() >= 4
                    && services.iter().all(enabled)
                    && nodes.as_array()?.iter().filter(|n| enabled(n)).count() == 2)
                    .then_some(())
            },
        );
    }

    /// The AWS CLI on the client host with the admin's access key, as the
    /// quickstart reads it.
    pub fn client(&self) -> Client<'_> {
        let keys = self.admin(&[
            "describe-access-keys",
            "--show-secrets",
            "--account",
            "eucalyptus",
        ]);
        let line = keys
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("admin"))
            .unwrap_or_else(|| panic!("no admin key in {keys}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let home = self.dc.dir().join("client-home");
        fs::create_dir_all(&home).expect("home");
        Client {
            setup: self,
            creds: Credentials::new((words[2].to_string(), words[3].to_string())),
            home,
            ec2: format!("http://{}:8773/", self.clc),
            s3: format!("http://{}:8779/", self.walrus),
        }
    }

    /// The row of `gumtree-admin -o json COMMAND` whose `field` is
    /// `value` (null when there is none).
    pub fn admin_row(&self, command: &str, field: &str, value: &str) -> serde_json::Value {
        let out = self.admin(&["-o", "json", command]);
        let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
        rows.as_array()
            .into_iter()
            .flatten()
            .find(|r| r[field] == value)
            .cloned()
            .unwrap_or_default()
    }

    /// The domains in node `node`'s libvirtd, a name a line.
    pub fn on(&self, node: &str) -> String {
        let out = self.dc.virsh(node, &["list", "--name"]);
        assert!(
            out.status.success(),
            "virsh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The AWS CLI on the client host.
pub struct Client<'a> {
    setup: &'a Setup,
    creds: Credentials,
    home: PathBuf,
    /// The EC2 and S3 endpoints.
    pub ec2: String,
    pub s3: String,
}

impl Client<'_> {
    /// `aws --endpoint-url ENDPOINT ARGS...`.
    pub fn aws(&self, endpoint: &str, args: &[&str]) -> Run {
        let mut cmd = self.creds.command(Path::new("ip"), &self.home);
        cmd.args(["netns", "exec", &self.setup.dc.netns("client")])
            .arg(aws_binary(AwsCli::V2))
            .args(["--endpoint-url", endpoint])
            .args(args);
        clients::run(format!("aws {}", args.join(" ")), cmd)
    }

    /// An EC2 call written as its command line (no argument has a space):
    /// its output.
    pub fn ec2(&self, line: &str) -> String {
        let args: Vec<&str> = line.split_whitespace().collect();
        self.aws(&self.ec2, &args).expect_ok()
    }
}
