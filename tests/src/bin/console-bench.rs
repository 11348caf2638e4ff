//! Web console speed on loopback, release build: the first load of the
//! page (cold and warm cache) and the instance list over a simulated fleet
//! with `--instances N` (1,000 by default) instances on `--nodes N` (10)
//! node controllers on libvirt's test driver, measured in Debian's
//! Chromium by console_bench.py. Run it with `scripts/bench-console`.

use tests::{
    clients::{self, Credentials},
    fleet::{arg, fill, launchable, start},
    harness::CloudOptions,
};

fn main() {
    let instances = arg("--instances", 1000);
    let nodes = arg("--nodes", 10);
    let cloud = start(
        nodes,
        instances,
        CloudOptions {
            console: true,
            ..Default::default()
        },
    );
    let (mut c, ami, group) = launchable(&cloud);
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
