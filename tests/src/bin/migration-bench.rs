//! Live migration figures (scripts/bench-migration [ROUNDS]): the tiers on
//! separate hosts as the separate-hosts test sets them up, the tiny guest
//! serving its page through an elastic IP, moved from node to node ROUNDS
//! times (5 by default). For each move: how long `gumtree-admin migrate`
//! took, and the longest time a client on another host went without the
//! page (asked every 0.1 s, 1 s to answer). Then the median and the worst.

use std::time::{Duration, Instant};

use tests::{
    clients::{self, register_tiny},
    harness::wait_for,
    probe::{http_get, Prober},
    separate::set_up,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(5);
    let tiny = clients::tiny_guest();
    let s = set_up();
    s.wait_ready();
    let client = s.client();
    let aws = |endpoint: &str, args: &[&str]| client.aws(endpoint, args);
    let (_, _, ami) = register_tiny(&tiny, &aws, &client.s3, &client.ec2);
    let id = clients::launch_one_with(&|args| aws(&client.ec2, args), &ami, &[]);
    let eip = client
        .ec2("ec2 allocate-address --domain standard --query PublicIp --output text")
        .trim()
        .to_string();
    wait_for("the guest running", Duration::from_secs(240), || {
        (clients::instance_state(&|args| aws(&client.ec2, args), &id) == "running").then_some(())
    });
    client.ec2(&format!(
        "ec2 associate-address --instance-id {id} --public-ip {eip}"
    ));
    client.ec2("ec2 authorize-security-group-ingress --group-name default --protocol tcp --port 80 --cidr 0.0.0.0/0");
    let web: std::net::SocketAddr = format!("{eip}:80").parse().expect("address");
    let outside = s.dc.netns("client");
    wait_for(
        "the guest's page through its elastic IP",
        Duration::from_secs(240),
        || {
            http_get(&outside, web, Duration::from_secs(2))
                .filter(|p| p.contains(&id))
                .map(|_| ())
        },
    );
    let (mut took, mut silent) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (from, to) = if s.on("node-a").contains(&id) {
            ("node-a", "node-b")
        } else {
            ("node-b", "node-a")
        };
        let probe = Prober::start(
            &outside,
            web,
            &id,
            Duration::from_millis(100),
            Duration::from_secs(1),
        );
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        s.admin(&["migrate", &id, "--to", to]);
        let ended = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        let samples = probe.stop();
        let secs = (ended - started).as_secs_f64();
        let gap = samples
            .longest_gap(started, ended)
            .unwrap_or_else(|| panic!("the page stopped answering after move {round}"));
        let (tries, failed) = samples.counts();
        println!(
            "move {round}: {from} -> {to} in {secs:.2} s; longest time without the page {:.2} s ({failed} of {tries} tries failed)",
            gap.as_secs_f64()
        );
        took.push(secs);
        silent.push(gap.as_secs_f64());
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "live migration of the tiny guest (256 MiB, its disk's top layer copied), {rounds} moves: median {:.2} s, worst {:.2} s",
        median(took.clone()),
        max(&took)
    );
    println!(
        "downtime seen from another host through its elastic IP: median {:.2} s, worst {:.2} s",
        median(silent.clone()),
        max(&silent)
    );
    client.ec2(&format!("ec2 terminate-instances --instance-ids {id}"));
    client.ec2(&format!("ec2 release-address --public-ip {eip}"));
}
