//! The web console in a real browser (Debian's Chromium, driven by
//! Playwright): a user launches the tiny guest from the wizard and uses
//! its console log, serial console and charts, stops and terminates it,
//! uploads and downloads a file; the administrator sees the nodes and sets
//! a quota the user's next launch meets; a second account sees nothing of
//! the first's; forged requests are refused (console_ui.py). Screenshots
//! of every page go to `target/test-artefacts/console/`.

use std::{fs, path::Path};

use tests::{
    clients::{self, AwsCli, Credentials},
    fleet,
    harness::{guest_netns, Cloud, CloudOptions},
};

#[test]
fn the_web_console_in_a_browser() {
    if guest_netns().is_none() {
        eprintln!("skipped: needs libvirt and namespaces (run it with scripts/test)");
        return;
    }
    let chromium = std::env::var("GUMTREE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: scripts/test installs Debian's chromium"
    );
    let tiny = clients::tiny_guest();
    let cloud = Cloud::start_with(CloudOptions {
        node_cores: 2,
        node_memory_mib: 2048,
        real_libvirt: true,
        console: true,
        s3_tls: true,
        ..Default::default()
    });
    fleet::ready(&cloud, 1);
    let creds = Credentials::new(cloud.new_account("webuser"));
    cloud.new_account("stranger");
    let (user_pw, admin_pw, other_pw) =
        ("web user's pass", "admin's passphrase", "stranger danger");
    cloud.set_password("webuser", "admin", user_pw);
    cloud.set_password("eucalyptus", "admin", admin_pw);
    cloud.set_password("stranger", "admin", other_pw);
    let home = cloud.dir().join("home-console");
    fs::create_dir_all(&home).expect("home");
    let aws =
        |endpoint: &str, args: &[&str]| clients::aws(AwsCli::V2, &creds, &home, endpoint, args);
    let (_, _, ami) =
        clients::register_tiny(&tiny, &aws, &cloud.s3_endpoint(), &cloud.ec2_endpoint());
    let artefacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artefacts/console");
    let _ = fs::remove_dir_all(&artefacts);
    let run = clients::python_script(
        &creds,
        &home,
        &clients::script("console_ui.py"),
        &[
            ("GUMTREE_CONSOLE_URL", &cloud.console_url()),
            ("GUMTREE_CHROMIUM", &chromium),
            ("GUMTREE_AMI", &ami),
            ("GUMTREE_CA_FILE", &cloud.ca_file().display().to_string()),
            ("GUMTREE_ARTEFACTS", &artefacts.display().to_string()),
            ("GUMTREE_USER_PASSWORD", user_pw),
            ("GUMTREE_ADMIN_PASSWORD", admin_pw),
            ("GUMTREE_OTHER_PASSWORD", other_pw),
        ],
    );
    if !run.ok() {
        // What the tiers said, before the failure is reported.
        for tier in ["clc", "cluster-1", "nc-1"] {
            let log = cloud.log(tier);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {tier} (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    let out = run.expect_ok();
    eprintln!("{out}");
    assert!(out.contains("console ui: all checks passed"), "{out}");
    // Every page the script visited left its screenshot.
    let shots = fs::read_dir(&artefacts)
        .expect("artefacts")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert!(
        shots >= 20,
        "{shots} screenshots in {}",
        artefacts.display()
    );
}
