//! Compute benchmark, on loopback against whole clouds started by the test
//! harness:
//!
//! 1. launch latency of the tiny guest on real libvirt (TCG here):
//!    RunInstances to the kernel's first console line (next to the same
//!    guest as a bare `virsh create`, and their ratio), to `running` in
//!    DescribeInstances, to the boot marker
//!    in GetConsoleOutput, and (when guests are networked, as in
//!    scripts/bench-ec2) to its user-data, read from the metadata service,
//!    on the console; median and max of `--launches N`; then, from an
//!    outside namespace, AssociateAddress until the guest's port 80
//!    answers through the elastic IP, and a revoke until it stops (N rounds);
//! 2. over a simulated fleet of 100 nodes (node controllers on libvirt's
//!    test driver): RunInstances API latency (median of 20 launches of one
//!    instance) with 10 instances on record and with `--instances N`
//!    (10,000 by default), and DescribeInstances requests/s at N: whole
//!    listings, pages of 100, one instance by InstanceId and by the
//!    instance-id filter.
//!
//! Run it with `scripts/bench-ec2` (release build, libvirtd and the tiny
//! guest made ready). The EC2 client here is a minimal keep-alive HTTP/1.1
//! client signing with SigV4, so the figures are the server's.

use std::time::{Duration, Instant};

use base64::Engine;
use tests::{
    clients,
    ec2client::{first, Ec2},
    fleet::{fill, launchable, ready, register, start},
    harness::{wait_for, Cloud, CloudOptions},
};

fn state_of(c: &mut Ec2, id: &str) -> String {
    let body = c.ok("DescribeInstances", &[("InstanceId.1", id)]);
    let state = body
        .find("<instanceState>")
        .map(|i| &body[i..])
        .unwrap_or("");
    first(state, "name").unwrap_or("").to_string()
}

/// Polls `id`'s console until it shows `needle`, at most `limit` after
/// `since`.
fn wait_console(c: &mut Ec2, id: &str, needle: &str, since: Instant, limit: Duration) {
    loop {
        let body = c.ok("GetConsoleOutput", &[("InstanceId", id)]);
        let text = first(&body, "output")
            .and_then(|o| base64::engine::general_purpose::STANDARD.decode(o).ok())
            .unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(needle) {
            return;
        }
        assert!(
            since.elapsed() < limit,
            "{id}: no {needle:?} on the console"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the kernel prints first on the serial console.
const KERNEL_FIRST_LINE: &str = "Linux version";

/// The baseline of the launch path: the tiny guest as a bare `virsh
/// create` of a domain built as the node builds it (kernel, initrd, a qcow2
/// overlay of its disk, a serial log; no network), timed to the kernel's
/// first console line. Seconds, one per boot.
fn bare_boots(dir: &std::path::Path, virt: &str, memory_mib: u64, boots: usize) -> Vec<f64> {
    let tiny = clients::tiny_guest();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut times = Vec::new();
    for n in 0..boots {
        let name = format!("gumtree-bench-bare-{}-{n}", std::process::id());
        let overlay = dir.join(format!("{name}.qcow2"));
        let console = dir.join(format!("{name}.console"));
        let xml_file = dir.join(format!("{name}.xml"));
        let disk = tiny.join("disk.img");
        run(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            &disk.display().to_string(),
            &overlay.display().to_string(),
        ]);
        let cpu = if virt == "kvm" {
            "<cpu mode='host-passthrough'/>"
        } else {
            ""
        };
        let xml = format!(
            "<domain type='{virt}'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>\
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>\
<cmdline>console=ttyS0 root=/dev/vda ro panic=1</cmdline></os><features><acpi/></features>{cpu}\
<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash><devices>\
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{overlay}'/><target dev='vda' bus='virtio'/></disk>\
<serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>\
<console type='file'><source path='{console}' append='on'/><target type='serial' port='0'/></console>\
<memballoon model='none'/></devices>\
<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel></domain>",
            kernel = tiny.join("vmlinuz").display(),
            initrd = tiny.join("initrd.gz").display(),
            overlay = overlay.display(),
            console = console.display(),
        );
        std::fs::write(&xml_file, xml).expect("domain xml");
        let started = Instant::now();
        run(&[
            "virsh",
            "-q",
            "-c",
            "qemu:///system",
            "create",
            &xml_file.display().to_string(),
        ]);
        loop {
            let text = std::fs::read(&console).unwrap_or_default();
            if String::from_utf8_lossy(&text).contains(KERNEL_FIRST_LINE) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{name}: no kernel line on its console"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(started.elapsed().as_secs_f64());
        run(&["virsh", "-q", "-c", "qemu:///system", "destroy", &name]);
        let _ = std::fs::remove_file(&overlay);
        let _ = std::fs::remove_file(&console);
        let _ = std::fs::remove_file(&xml_file);
    }
    times
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, *v.last().unwrap_or(&0.0))
}

fn launch_latency(launches: usize) {
    let tiny = clients::tiny_guest();
    let cloud = Cloud::start_with(CloudOptions {
        nodes: 1,
        node_cores: 2,
        node_memory_mib: 2048,
        real_libvirt: true,
        ..Default::default()
    });
    ready(&cloud, 1);
    let ami = register(
        &cloud,
        &[
            (tiny.join("vmlinuz"), "kernel"),
            (tiny.join("initrd.gz"), "ramdisk"),
            (tiny.join("disk.img"), ""),
        ],
    );
    let mut c = Ec2::new(&cloud.ec2_endpoint(), cloud.admin_key());
    let networked = tests::harness::guest_netns().is_some();
    let user_data = base64::engine::general_purpose::STANDARD.encode("bench user-data line\n");
    let (mut to_running, mut to_marker, mut to_user_data) = (Vec::new(), Vec::new(), Vec::new());
    let mut to_kernel = Vec::new();
    for n in 0..launches {
        let start = Instant::now();
        let body = c.ok(
            "RunInstances",
            &[
                ("ImageId", &ami),
                ("InstanceType", "m1.small"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("UserData", &user_data),
            ],
        );
        let id = first(&body, "instanceId").expect("instance id").to_string();
        let limit = Duration::from_secs(300);
        wait_console(&mut c, &id, KERNEL_FIRST_LINE, start, limit);
        let kernel = start.elapsed().as_secs_f64();
        to_kernel.push(kernel);
        while state_of(&mut c, &id) != "running" {
            assert!(start.elapsed() < Duration::from_secs(180), "{id} never ran");
            std::thread::sleep(Duration::from_millis(50));
        }
        let running = start.elapsed().as_secs_f64();
        wait_console(&mut c, &id, "GUMTREE-BOOT-OK", start, limit);
        let marker = start.elapsed().as_secs_f64();
        let mut line = format!(
            "launch {}: kernel's first line {kernel:.2} s, running {running:.2} s, boot marker {marker:.2} s",
            n + 1
        );
        if networked {
            wait_console(&mut c, &id, "bench user-data line", start, limit);
            let shown = start.elapsed().as_secs_f64();
            line.push_str(&format!(", user-data on the console {shown:.2} s"));
            to_user_data.push(shown);
        }
        println!("{line}");
        to_running.push(running);
        to_marker.push(marker);
        c.ok("TerminateInstances", &[("InstanceId.1", &id)]);
        while state_of(&mut c, &id) != "terminated" {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Some(outside) = cloud.outside() {
        elastic_ip_latency(&mut c, &ami, &outside.netns, launches);
    }
    let virt = cloud.admin_json(&["describe-nodes"])[0]["hypervisor"]
        .as_str()
        .unwrap_or("qemu")
        .to_string();
    let virt = if virt == "kvm" { "kvm" } else { "qemu" };
    let bare = bare_boots(cloud.dir(), virt, 256, launches);
    let (bare_median, bare_max) = median_max(bare);
    let (m, x) = median_max(to_kernel);
    println!("RunInstances -> kernel's first console line: median {m:.2} s, max {x:.2} s ({launches} launches)");
    println!("bare virsh create -> kernel's first console line: median {bare_median:.2} s, max {bare_max:.2} s ({launches} boots, {virt}); ratio {:.2}", m / bare_median);
    let (m, x) = median_max(to_running);
    println!("RunInstances -> running:      median {m:.2} s, max {x:.2} s ({launches} launches)");
    let (m, x) = median_max(to_marker);
    println!("RunInstances -> boot marker:  median {m:.2} s, max {x:.2} s ({launches} launches)");
    if to_user_data.is_empty() {
        println!(
            "(guests not networked: run it through scripts/bench-ec2 for the user-data figure)"
        );
    } else {
        let (m, x) = median_max(to_user_data);
        println!(
            "RunInstances -> user-data on the console: median {m:.2} s, max {x:.2} s ({launches} launches)"
        );
    }
}

/// Waits until a TCP connection to `addr` from network namespace `netns`
/// succeeds (`open`) or fails (not `open`); the seconds it took. Each try
/// gives up after 0.1 s.
fn until_reachable(netns: &str, addr: std::net::SocketAddr, open: bool) -> f64 {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path).expect("outside namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let start = Instant::now();
            loop {
                let ok =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok();
                if ok == open {
                    return start.elapsed().as_secs_f64();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{addr} never {}",
                    if open {
                        "answered"
                    } else {
                        "stopped answering"
                    }
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .expect("probe thread")
    })
}

/// From the outside world: how long after AssociateAddress a guest's port
/// 80 answers through the address, and how long after a revoke it stops.
fn elastic_ip_latency(c: &mut Ec2, ami: &str, outside: &str, rounds: usize) {
    let body = c.ok(
        "CreateSecurityGroup",
        &[("GroupName", "bench-web"), ("GroupDescription", "port 80")],
    );
    let group = first(&body, "groupId").expect("group id").to_string();
    let port80 = [
        ("GroupId", group.as_str()),
        ("IpPermissions.1.IpProtocol", "tcp"),
        ("IpPermissions.1.FromPort", "80"),
        ("IpPermissions.1.ToPort", "80"),
        ("IpPermissions.1.IpRanges.1.CidrIp", "0.0.0.0/0"),
    ];
    c.ok("AuthorizeSecurityGroupIngress", &port80);
    let body = c.ok(
        "RunInstances",
        &[
            ("ImageId", ami),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("SecurityGroupId.1", &group),
        ],
    );
    let id = first(&body, "instanceId").expect("instance id").to_string();
    let limit = Duration::from_secs(180);
    wait_console(c, &id, "GUMTREE-NET-OK", Instant::now(), limit);
    let body = c.ok("AllocateAddress", &[]);
    let public = first(&body, "publicIp").expect("address").to_string();
    let addr: std::net::SocketAddr = format!("{public}:80").parse().expect("address");
    let (mut associated, mut revoked) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        c.ok(
            "AssociateAddress",
            &[("PublicIp", &public), ("InstanceId", &id)],
        );
        let called = t.elapsed().as_secs_f64();
        associated.push(called + until_reachable(outside, addr, true));
        let t = Instant::now();
        c.ok("RevokeSecurityGroupIngress", &port80);
        let called = t.elapsed().as_secs_f64();
        revoked.push(called + until_reachable(outside, addr, false));
        c.ok("AuthorizeSecurityGroupIngress", &port80);
        c.ok("DisassociateAddress", &[("PublicIp", &public)]);
        until_reachable(outside, addr, false);
    }
    let (m, x) = median_max(associated);
    println!("AssociateAddress -> port 80 answers from outside: median {m:.2} s, max {x:.2} s ({rounds} rounds)");
    let (m, x) = median_max(revoked);
    println!("RevokeSecurityGroupIngress -> port 80 closed from outside: median {m:.2} s, max {x:.2} s ({rounds} rounds)");
    c.ok("TerminateInstances", &[("InstanceId.1", &id)]);
    while state_of(c, &id) != "terminated" {
        std::thread::sleep(Duration::from_millis(100));
    }
    c.ok("ReleaseAddress", &[("PublicIp", &public)]);
}

/// RunInstances API latency (one instance, with a ClientToken as boto3
/// sends one): median and max of `rounds` launches.
fn launch_api_latency(c: &mut Ec2, ami: &str, group: &str, rounds: usize) -> (f64, f64) {
    let mut ms = Vec::new();
    for _ in 0..rounds {
        let token = format!("bench-{}", rand_token());
        let started = Instant::now();
        c.ok(
            "RunInstances",
            &[
                ("ImageId", ami),
                ("InstanceType", "m1.small"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("ClientToken", &token),
                ("SecurityGroupId.1", group),
            ],
        );
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    median_max(ms)
}

fn rand_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{nanos:09}-{}", std::process::id())
}

/// Over a simulated fleet of `nodes` node controllers (libvirt's test
/// driver): RunInstances latency with 10 instances on record and with
/// `instances`, then DescribeInstances requests/s at `instances`.
fn scale(nodes: usize, instances: usize, seconds: u64, clients: usize) {
    let started = Instant::now();
    let cloud = start(nodes, instances, CloudOptions::default());
    println!(
        "fleet: {nodes} node controllers (libvirt test driver) up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (mut c, ami, group) = launchable(&cloud);
    let rounds = 20;
    fill(&mut c, &ami, &group, 10, 10);
    let (small_median, small_max) = launch_api_latency(&mut c, &ami, &group, rounds);
    println!(
        "RunInstances API latency, 10 instances on record: median {small_median:.1} ms, max {small_max:.1} ms ({rounds} launches of one)"
    );
    let started = Instant::now();
    let on_record = 10 + rounds;
    fill(&mut c, &ami, &group, instances - on_record, instances);
    println!(
        "{instances} instances on record over {nodes} nodes, none pending, {:.1} s after the first RunInstances",
        started.elapsed().as_secs_f64()
    );
    let (big_median, big_max) = launch_api_latency(&mut c, &ami, &group, rounds);
    println!(
        "RunInstances API latency, {instances} instances on record: median {big_median:.1} ms, max {big_max:.1} ms ({rounds} launches of one); ratio {:.2}",
        big_median / small_median
    );
    let instances = instances + rounds;
    wait_for("no instance pending", Duration::from_secs(600), || {
        let body = c.ok(
            "DescribeInstances",
            &[
                ("Filter.1.Name", "instance-state-name"),
                ("Filter.1.Value.1", "pending"),
            ],
        );
        (!body.contains("<instanceId>")).then_some(())
    });
    let endpoint = cloud.ec2_endpoint();
    // One instance in the middle of the listing, asked for by id and by
    // the instance-id filter (which must not cost a full scan).
    let listing = c.ok("DescribeInstances", &[]);
    let ids: Vec<&str> = listing
        .split("<instanceId>")
        .skip(1)
        .filter_map(|s| s.split('<').next())
        .collect();
    let one = ids[ids.len() / 2].to_string();
    let mut rates = Vec::new();
    for (label, params) in [
        ("whole listing", vec![]),
        ("pages of 100", vec![("MaxResults", "100")]),
        (
            "one instance by InstanceId",
            vec![("InstanceId.1", one.as_str())],
        ),
        (
            "one instance by instance-id filter",
            vec![
                ("Filter.1.Name", "instance-id"),
                ("Filter.1.Value.1", one.as_str()),
            ],
        ),
    ] {
        let until = Instant::now() + Duration::from_secs(seconds);
        let counts: Vec<(usize, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    let endpoint = endpoint.clone();
                    let key = cloud.admin_key();
                    let params = params.clone();
                    s.spawn(move || {
                        let mut c = Ec2::new(&endpoint, key);
                        let (mut requests, mut bytes) = (0, 0);
                        while Instant::now() < until {
                            let body = c.ok("DescribeInstances", &params);
                            let expected = match params.first() {
                                None => Some(instances),
                                Some((name, _)) if name.starts_with("MaxResults") => None,
                                Some(_) => Some(1),
                            };
                            if let Some(n) = expected {
                                assert_eq!(body.matches("<instanceId>").count(), n);
                            }
                            requests += 1;
                            bytes += body.len();
                        }
                        (requests, bytes)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client"))
                .collect()
        });
        let requests: usize = counts.iter().map(|c| c.0).sum();
        let bytes: usize = counts.iter().map(|c| c.1).sum();
        let rate = requests as f64 / seconds as f64;
        rates.push(rate);
        println!(
            "DescribeInstances, {label}: {rate:.1} requests/s ({clients} clients, {seconds} s, {:.0} KiB per response)",
            bytes as f64 / requests.max(1) as f64 / 1024.0
        );
    }
    println!(
        "DescribeInstances at {instances}: by instance-id filter / by InstanceId = {:.2}",
        rates[3] / rates[2].max(f64::MIN_POSITIVE)
    );
}

fn main() {
    let mut launches = 5;
    let mut skip_launch = false;
    let mut instances = 10_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--launches" => {
                launches = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--launches N")
            }
            "--no-launch" => skip_launch = true,
            "--instances" => {
                instances = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--instances N")
            }
            other => {
                panic!("unknown argument {other}; use --launches N, --instances N or --no-launch")
            }
        }
    }
    if !skip_launch {
        launch_latency(launches);
    }
    scale(100, instances, 10, 2);
}
