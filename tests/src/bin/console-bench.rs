//! Web console speed on loopback, release build: the first load of the
//! page (cold and warm cache) and the instance list over a simulated fleet
//! with `--instances N` (1,000 by default) instances on `--nodes N` (10)
//! node controllers on libvirt's test driver, measured in Debian's
//! Chromium by console_bench.py. Run it with `scripts/bench-console`.

use tests::{
    clients::{self, Credentials},
    ec2client::{first, Ec2},
    fleet::{fill, ready, register},
    harness::{Cloud, CloudOptions},
};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let instances = arg("--instances", 1000);
    let nodes = arg("--nodes", 10);
    let per_node = instances.div_ceil(nodes) + 10;
    let cloud = Cloud::start_with(CloudOptions {
        nodes,
        node_cores: per_node as u32,
        node_memory_mib: per_node as u64 * 256 + 1024,
        node_disk_gib: per_node as u64 * 5 + 100,
        console: true,
        cc_config: "private_subnet = \"172.16.0.0/16\"\n".into(),
        ..Default::default()
    });
    ready(&cloud, nodes);
    let dir = cloud.dir().join("bench-image");
    std::fs::create_dir_all(&dir).expect("dir");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("image");
    let ami = register(&cloud, &[(disk, "")]);
    let mut c = Ec2::new(&cloud.ec2_endpoint(), cloud.admin_key());
    let created = c.ok(
        "CreateSecurityGroup",
        &[("GroupName", "bench"), ("GroupDescription", "no rules")],
    );
    let group = first(&created, "groupId").expect("group id").to_string();
    fill(&mut c, &ami, &group, instances, instances);
    let password = "console bench password";
    cloud.set_password("eucalyptus", "admin", password);
    let home = cloud.dir().join("home-console-bench");
    std::fs::create_dir_all(&home).expect("home");
    let chromium = std::env::var("GUMTREE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let out = clients::python_script(
        &Credentials::new(cloud.admin_key()),
        &home,
        &clients::script("console_bench.py"),
        &[
            ("GUMTREE_CONSOLE_URL", &cloud.console_url()),
            ("GUMTREE_CHROMIUM", &chromium),
            ("GUMTREE_PASSWORD", password),
            ("GUMTREE_INSTANCES", &instances.to_string()),
        ],
    )
    .expect_ok();
    println!("web console over {nodes} simulated nodes (release build, loopback):");
    print!("{out}");
}
