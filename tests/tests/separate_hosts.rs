//! The tiers on separate hosts ([`tests::separate`]): real guests on both
//! nodes reach each other on their private addresses across the nodes, and
//! move live between them.

use std::{fs, path::Path, process::Output, time::Duration};

use tests::{
    clients::{self, register_tiny},
    harness::{guest_netns, wait_for},
    probe::{http_get, Prober},
    separate::{logs, run, set_up},
};

#[test]
fn guests_on_two_hosts_reach_each_other_on_their_private_addresses() {
    if guest_netns().is_none() {
        eprintln!("skipped: needs libvirt and namespaces (run it with scripts/test)");
        return;
    }
    let tiny = clients::tiny_guest();
    let s = set_up();
    // 5. Every service ENABLED and both nodes, through the CLC's address.
    s.wait_ready();
    let client = s.client();
    let aws = |endpoint: &str, args: &[&str]| client.aws(endpoint, args);
    let (ec2, s3) = (client.ec2.clone(), client.s3.clone());
    let (_, _, ami) = register_tiny(&tiny, &aws, &s3, &ec2);
    let ec2_call = |line: &str| client.ec2(line);
    let launch = |user_data: &str| -> String {
        clients::launch_one_with(&|args| aws(&ec2, args), &ami, &["--user-data", user_data])
    };
    let describe = |id: &str| -> serde_json::Value {
        let out = ec2_call(&format!("ec2 describe-instances --instance-ids {id}"));
        let d: serde_json::Value = serde_json::from_str(&out).expect("json");
        d["Reservations"][0]["Instances"][0].clone()
    };
    let console = |id: &str| -> String {
        let line = format!("ec2 get-console-output --instance-id {id} --output text");
        aws(&ec2, &line.split_whitespace().collect::<Vec<_>>()).stdout()
    };
    // Guest a counts on its console, with its uptime, once a second.
    let a = launch(
        "#!/bin/sh\n(i=0; while :; do i=$((i+1)); echo \"GUMTREE-COUNT $i $(cut -d' ' -f1 /proc/uptime)\"; if [ -b /dev/vdb ]; then echo \"count $i\" | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null && echo \"GUMTREE-VDB-WROTE $i\"; fi; sleep 1; done) > /dev/console 2>&1 &\n",
    );
    let a_ip = wait_for("guest a running", Duration::from_secs(240), || {
        let d = describe(&a);
        (d["State"]["Name"] == "running")
            .then(|| d["PrivateIpAddress"].as_str().map(str::to_string))
            .flatten()
    });
    // Guest b asks guest a's web server (it serves its instance id) across
    // the nodes, and pings it.
    let b = launch(&format!(
        "#!/bin/sh\nfor i in $(seq 1 60); do\n  if got=$(timeout 5 wget -q -O - http://{a_ip}/); then echo \"GUMTREE-PEER-SAYS $got\"; break; fi\n  sleep 1\ndone\nping -c 3 -W 2 {a_ip} > /tmp/ping 2>&1 && echo GUMTREE-PEER-PINGED || cat /tmp/ping\n"
    ));
    wait_for("guest b running", Duration::from_secs(240), || {
        (describe(&b)["State"]["Name"] == "running").then_some(())
    });
    // Each on its own node, each node's domain in its own libvirtd.
    let on = |node: &str| s.on(node);
    let (on_a, on_b) = (on("node-a"), on("node-b"));
    assert!(
        (on_a.contains(&a) && on_b.contains(&b)) || (on_a.contains(&b) && on_b.contains(&a)),
        "the guests are not one on each node: node-a has {on_a:?}, node-b {on_b:?}"
    );
    for node in ["node-a", "node-b"] {
        let caps = s.dc.virsh(node, &["capabilities"]);
        let caps = String::from_utf8_lossy(&caps.stdout).into_owned();
        let n = if node == "node-a" { 1 } else { 2 };
        assert!(
            caps.contains(&format!(
                "<uuid>6a6d7c1e-0000-4000-8000-00000000000{n}</uuid>"
            )),
            "{node}'s libvirtd has not its own host UUID"
        );
    }
    // The nodes' libvirtds take each other over TLS with the nodes'
    // certificates (live migration's transport), and refuse another
    // component's certificate.
    let dial = |from: &str, pki: &Path, to: &str| -> Output {
        let uri = format!(
            "qemu+tls://{}/system?pkipath={}&no_tty=1",
            s.dc.address(to),
            pki.display()
        );
        s.dc.command(from, Path::new("virsh"))
            .args(["-c", &uri, "hostname"])
            .output()
            .expect("virsh")
    };
    let node_tls = |node: &str| s.dc.dir().join(node).join("libvirt/tls");
    let out = dial("node-a", &node_tls("node-a"), "node-b");
    assert!(
        out.status.success(),
        "node-a's libvirt TLS credentials did not reach node-b's libvirtd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dial("node-b", &node_tls("node-b"), "node-a");
    assert!(
        out.status.success(),
        "node-b to node-a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stranger = s.dc.dir().join("sc-as-libvirt-client");
    fs::create_dir_all(&stranger).expect("dir");
    let sc_pki = s.dc.dir().join("sc").join("pki");
    for (from, to) in [
        ("ca.pem", "cacert.pem"),
        ("sc-sc-1.pem", "clientcert.pem"),
        ("sc-sc-1.key", "clientkey.pem"),
    ] {
        fs::copy(sc_pki.join(from), stranger.join(to)).expect("copy");
    }
    let out = dial("sc", &stranger, "node-a");
    assert!(
        !out.status.success(),
        "node-a's libvirtd took a storage controller's certificate"
    );
    // (From the same host, a node's certificate gets in: the refusal was
    // the certificate's.)
    let out = dial("sc", &node_tls("node-b"), "node-a");
    assert!(
        out.status.success(),
        "sc to node-a with node-b's certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = wait_for("guest b to reach guest a", Duration::from_secs(240), || {
        let out = console(&b);
        (out.contains("GUMTREE-USER-DATA-RAN")).then_some(out)
    });
    assert!(
        said.contains(&format!("GUMTREE-PEER-SAYS {a}")),
        "guest b did not reach guest a's web server at {a_ip} across the nodes:\n{said}\n{}",
        logs(&s)
    );
    assert!(
        said.contains("\nGUMTREE-PEER-PINGED"),
        "no ping across the nodes:\n{said}"
    );
    // Both read their metadata through their own node's relay to the CLC.
    assert!(said.contains(&format!("instance-id {b}")), "{said}");
    assert!(console(&a).contains(&format!("instance-id {a}")));
    // A volume of the SC's host appears in guest b on its node's host.
    let vol = ec2_call(
        "ec2 create-volume --size 1 --availability-zone zone-1 --query VolumeId --output text",
    )
    .trim()
    .to_string();
    let volume_state = |field: &str| -> String {
        let out = ec2_call(&format!("ec2 describe-volumes --volume-ids {vol}"));
        let d: serde_json::Value = serde_json::from_str(&out).expect("json");
        let v = &d["Volumes"][0];
        match field {
            "attachment" => v["Attachments"][0]["State"].as_str(),
            _ => v["State"].as_str(),
        }
        .unwrap_or_default()
        .to_string()
    };
    wait_for("the volume available", Duration::from_secs(60), || {
        (volume_state("state") == "available").then_some(())
    });
    ec2_call(&format!(
        "ec2 attach-volume --volume-id {vol} --instance-id {b} --device /dev/sdf"
    ));
    let serial = format!("serial {}", vol.replace('-', ""));
    wait_for("the volume in guest b", Duration::from_secs(120), || {
        (volume_state("attachment") == "attached" && console(&b).contains(&serial)).then_some(())
    });
    ec2_call(&format!("ec2 detach-volume --volume-id {vol}"));
    wait_for("the volume detached", Duration::from_secs(120), || {
        (volume_state("state") == "available").then_some(())
    });
    ec2_call(&format!("ec2 delete-volume --volume-id {vol}"));
    // Live migration: guest a moves to the other node's host, its memory
    // and its disk's top layer over the nodes' libvirt TLS, while the
    // client host asks its page through an elastic IP all along.
    let (from, to) = if on("node-a").contains(&a) {
        ("node-a", "node-b")
    } else {
        ("node-b", "node-a")
    };
    let eip = ec2_call("ec2 allocate-address --domain standard --query PublicIp --output text")
        .trim()
        .to_string();
    ec2_call(&format!(
        "ec2 associate-address --instance-id {a} --public-ip {eip}"
    ));
    ec2_call("ec2 authorize-security-group-ingress --group-name default --protocol tcp --port 80 --cidr 0.0.0.0/0");
    let web: std::net::SocketAddr = format!("{eip}:80").parse().expect("address");
    let client_ns = s.dc.netns("client");
    let page = || http_get(&client_ns, web, Duration::from_secs(2)).unwrap_or_default();
    wait_for(
        "guest a's page through its elastic IP from the client host",
        Duration::from_secs(90),
        || page().contains(&a).then_some(()),
    );
    // Its address, DNAT and rules are on its node, and nowhere else.
    let rules = |node: &str, table: &str| -> String {
        run(s
            .dc
            .command(node, Path::new("iptables"))
            .args(["-w", "-t", table, "-S"]))
    };
    let tap = format!(
        "gi{}",
        a.trim_start_matches("i-")
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(13)
            .collect::<String>()
    );
    let holds = |node: &str| -> (bool, bool) {
        (
            rules(node, "nat").contains(&format!("-d {eip}/32")),
            rules(node, "filter").contains(&format!("GTI-{tap}")),
        )
    };
    assert_eq!(holds(from), (true, true), "{from} has not a's rules");
    assert_eq!(holds(to), (false, false), "{to} has a's rules already");
    // A volume attached to it, which it writes every second.
    let va = ec2_call(
        "ec2 create-volume --size 1 --availability-zone zone-1 --query VolumeId --output text",
    )
    .trim()
    .to_string();
    let va_state = || -> String {
        let out = ec2_call(&format!("ec2 describe-volumes --volume-ids {va}"));
        let d: serde_json::Value = serde_json::from_str(&out).expect("json");
        d["Volumes"][0]["State"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_for("a's volume available", Duration::from_secs(60), || {
        (va_state() == "available").then_some(())
    });
    ec2_call(&format!(
        "ec2 attach-volume --volume-id {va} --instance-id {a} --device /dev/sdf"
    ));
    wait_for(
        "guest a writing its volume",
        Duration::from_secs(120),
        || console(&a).contains("\nGUMTREE-VDB-WROTE").then_some(()),
    );
    let before = console(&a);
    // Nowhere to go: refused, and it stays where it is.
    let refused = s
        .try_admin(&["migrate", &a, "--to", "no-such-node"])
        .expect_err("a migration to a node that does not exist");
    assert!(refused.contains("no-such-node"), "{refused}");
    assert!(on(from).contains(&a));
    let probe = Prober::start(
        &client_ns,
        web,
        &a,
        Duration::from_millis(100),
        Duration::from_secs(1),
    );
    std::thread::sleep(Duration::from_secs(2));
    // Its metrics: CPUUtilization samples under its instance id (summed
    // over the last hours), from the node it runs on.
    let cloudwatch = format!("{ec2}services/CloudWatch");
    let samples_of = |id: &str| {
        clients::cloudwatch_total(
            &|args| aws(&cloudwatch, args),
            "AWS/EC2",
            "CPUUtilization",
            ("InstanceId", id),
            "SampleCount",
        )
    };
    let before_move = wait_for(
        "guest a's CPUUtilization in CloudWatch",
        Duration::from_secs(60),
        || Some(samples_of(&a)).filter(|n| *n > 0.0),
    );
    let started = std::time::Instant::now();
    // While it moves, the admin sees it migrating (from its node); users
    // see it running.
    let (moved, shown) = std::thread::scope(|scope| {
        let moving = scope.spawn(|| s.admin(&["migrate", &a, "--to", to]));
        let mut shown = None;
        while !moving.is_finished() && shown.is_none() {
            let row = s.admin_row("describe-instances", "instance_id", &a);
            if row["state"] == "migrating" {
                shown = Some((row["detail"].clone(), describe(&a)["State"]["Name"].clone()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (moving.join().expect("the migrate thread"), shown)
    });
    let ended = std::time::Instant::now();
    let (detail, user_state) = shown.expect("the admin never saw a migrating");
    assert_eq!(detail, format!("migrating from {from}").as_str());
    assert_eq!(user_state, "running");
    std::thread::sleep(Duration::from_secs(5));
    let samples = probe.stop();
    eprintln!("gumtree-admin migrate {a} --to {to}:\n{moved}");
    assert!(
        moved
            .lines()
            .any(|l| l.starts_with(&a) && l.contains(from) && l.contains(to)),
        "gumtree-admin migrate: {moved}\n{}",
        logs(&s)
    );
    let gap = samples.longest_gap(started, ended);
    let (tries, failed) = samples.counts();
    eprintln!(
        "migration: {:.2} s; through the elastic IP from outside, the longest time without an answer was {gap:?} ({failed} of {tries} tries, 0.1 s apart with 1 s to answer, failed)",
        (ended - started).as_secs_f64()
    );
    let gap = gap.unwrap_or_else(|| {
        panic!(
            "guest a's page stopped answering through {eip} after the migration\n{}",
            logs(&s)
        )
    });
    assert!(
        gap < Duration::from_secs(20),
        "guest a was unreachable through {eip} for {gap:?}"
    );
    assert!(
        on(to).contains(&a),
        "{a} is not in {to}'s libvirtd after the migration"
    );
    assert!(!on(from).contains(&a), "{a} is still in {from}'s libvirtd");
    // Its address and rules moved with it.
    assert_eq!(holds(to), (true, true), "{to} has not a's rules");
    assert_eq!(holds(from), (false, false), "{from} kept a's rules");
    // The same boot, still counting, its console log in one piece: every
    // count from 1 on, and its uptime going on.
    let last_before = counts(&before).last().copied().expect("guest a counts");
    let after = wait_for(
        "guest a counting on after its migration",
        Duration::from_secs(60),
        || {
            let c = console(&a);
            (counts(&c).last().is_some_and(|l| l.0 >= last_before.0 + 5)).then_some(c)
        },
    );
    assert_eq!(after.matches("GUMTREE-BOOT-OK").count(), 1, "{after}");
    // One series across the move: samples go on adding up under its id,
    // now from the node it moved to (the other no longer has it).
    let moved_at = samples_of(&a);
    assert!(moved_at >= before_move, "{moved_at} < {before_move}");
    wait_for(
        "guest a's samples from its new node",
        Duration::from_secs(60),
        || (samples_of(&a) > moved_at).then_some(()),
    );
    assert!(after.contains(&format!("instance-id {a}")), "{after}");
    let seen = counts(&after);
    let numbers: Vec<u64> = seen.iter().map(|c| c.0).collect();
    // (One line may be cut by a kernel message printed into it.)
    let missing = (1..=*numbers.last().expect("counts"))
        .filter(|n| !numbers.contains(n))
        .count();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]) && numbers[0] <= 2 && missing <= 1,
        "guest a's counts are not one run from 1 on: {numbers:?}\n{after}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "guest a's uptime went back: {seen:?}"
    );
    let d = describe(&a);
    assert_eq!(d["State"]["Name"], "running");
    assert_eq!(d["PublicIpAddress"], eip.as_str());
    // Its volume came along: it goes on writing it from the new node, and
    // detaches from there.
    let wrote = |text: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("GUMTREE-VDB-WROTE ")?.parse().ok())
            .max()
            .unwrap_or(0)
    };
    let wrote_before = wrote(&before);
    wait_for(
        "guest a writing its volume on the new node",
        Duration::from_secs(60),
        || (wrote(&console(&a)) >= wrote_before + 5).then_some(()),
    );
    ec2_call(&format!("ec2 detach-volume --volume-id {va}"));
    wait_for("a's volume detached", Duration::from_secs(120), || {
        (va_state() == "available").then_some(())
    });
    ec2_call(&format!("ec2 delete-volume --volume-id {va}"));
    let admin_node = |id: &str| -> String {
        s.admin_row("describe-instances", "instance_id", id)["node"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(admin_node(&a), to, "the admin view's node of {a}");
    // Its security group still decides: closed, then open again, on its
    // new node.
    ec2_call("ec2 revoke-security-group-ingress --group-name default --protocol tcp --port 80 --cidr 0.0.0.0/0");
    wait_for(
        "port 80 closed through the elastic IP after the revoke",
        Duration::from_secs(60),
        || {
            http_get(&client_ns, web, Duration::from_secs(1))
                .is_none()
                .then_some(())
        },
    );
    ec2_call("ec2 authorize-security-group-ingress --group-name default --protocol tcp --port 80 --cidr 0.0.0.0/0");
    wait_for(
        "port 80 open again through the elastic IP",
        Duration::from_secs(60),
        || page().contains(&a).then_some(()),
    );
    // Still on its private address: a new guest fetches its page. It lands
    // on the other node: a and b fill this one (two cores, one each).
    let c = launch(&format!(
        "#!/bin/sh\nfor i in $(seq 1 60); do\n  if got=$(timeout 5 wget -q -O - http://{a_ip}/); then echo \"GUMTREE-PEER-SAYS $got\"; break; fi\n  sleep 1\ndone\n"
    ));
    let said = wait_for(
        "guest c to reach the moved guest a",
        Duration::from_secs(240),
        || {
            let out = console(&c);
            (out.contains("GUMTREE-USER-DATA-RAN")).then_some(out)
        },
    );
    assert!(
        said.contains(&format!("GUMTREE-PEER-SAYS {a}")),
        "guest a is not reachable at {a_ip} after its migration:\n{said}\n{}",
        logs(&s)
    );
    assert!(on(from).contains(&c), "c is not on {from}");
    // A full node takes no migration: refused with the room it has, and c
    // runs on where it was.
    let full = s
        .try_admin(&["migrate", &c, "--to", to])
        .expect_err("a migration to a full node");
    assert!(
        full.contains("no room") && full.contains(&format!("{to} (0 of 2 core(s)")),
        "{full}"
    );
    assert!(on(from).contains(&c) && !on(to).contains(&c));
    assert_eq!(describe(&c)["State"]["Name"], "running");
    // Evacuate: b goes, and c moves off its node, which leaves placement.
    ec2_call(&format!("ec2 terminate-instances --instance-ids {b}"));
    wait_for("b gone from its node", Duration::from_secs(120), || {
        (!on(to).contains(&b)).then_some(())
    });
    // A target that dies mid-way: its node controller is killed (as a
    // crash would) once it has prepared c. The migration ends, c runs on
    // at its source, and the restarted node drops what it had prepared.
    let to_log = s.dc.dir().join("logs").join(format!("{to}.log"));
    let log_has = |what: &str| -> usize {
        fs::read_to_string(&to_log)
            .unwrap_or_default()
            .matches(what)
            .count()
    };
    let prepared = format!("prepared for an incoming live migration instance_id={c}");
    let prepared_before = log_has(&prepared);
    // (Tried again while the CC still counts b's room as taken.)
    let died = wait_for(
        "a migration of c that its target prepares",
        Duration::from_secs(60),
        || {
            std::thread::scope(|scope| {
                let moving = scope.spawn(|| s.try_admin(&["migrate", &c, "--to", to]));
                loop {
                    if log_has(&prepared) > prepared_before {
                        s.dc.kill(to);
                        return Some(moving.join().expect("the migrate thread"));
                    }
                    if moving.is_finished() {
                        match moving.join().expect("the migrate thread") {
                            Err(e) if e.contains("no room") => return None,
                            other => panic!(
                                "c's migration ended before its target prepared it: {other:?}"
                            ),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        },
    );
    let died = died.expect_err("a migration whose target died");
    assert!(
        died.contains("stopped answering") && died.contains(&format!("runs on {from} as before")),
        "{died}\n{}",
        logs(&s)
    );
    assert!(
        on(from).contains(&c) && !on(to).contains(&c),
        "c is not running on {from} alone: {from} has {:?}, {to} {:?}",
        on(from),
        on(to)
    );
    assert_eq!(describe(&c)["State"]["Name"], "running");
    let settled = "settled a migration this node was taking when it stopped";
    s.dc.restart(to);
    wait_for(
        "the restarted node to settle what it was taking",
        Duration::from_secs(60),
        || (log_has(settled) > 0).then_some(()),
    );
    assert!(
        fs::read_to_string(&to_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(settled) && l.contains(&c) && l.contains("taken=false")),
        "{to} did not drop the migration it was taking"
    );
    assert!(!on(to).contains(&c));
    // (The CC counts b's room free once it is terminated, and the
    // restarted node ENABLED once it reports.)
    let evacuated = wait_for(
        "an evacuation that moves c",
        Duration::from_secs(60),
        || s.try_admin(&["evacuate", from]).ok(),
    );
    eprintln!("gumtree-admin evacuate {from}:\n{evacuated}");
    assert!(
        evacuated.contains(&format!("{c} moved from {from} to {to}")),
        "{evacuated}"
    );
    assert!(on(to).contains(&c) && !on(from).contains(&c));
    let node_state = |node: &str| -> String {
        s.admin_row("describe-nodes", "name", node)["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_for("the node shown DISABLED", Duration::from_secs(30), || {
        (node_state(from) == "DISABLED").then_some(())
    });
    // Placement avoids it: with a gone, the next launch goes to the other
    // node though this one is empty.
    ec2_call(&format!("ec2 terminate-instances --instance-ids {a}"));
    wait_for("a gone from its node", Duration::from_secs(120), || {
        (!on(to).contains(&a)).then_some(())
    });
    // Its room is free once the node has reported it gone (libvirt may
    // show it gone a moment before).
    wait_for("a's room free again", Duration::from_secs(60), || {
        (s.admin_row("describe-nodes", "name", to)["cores_free"].as_u64()? >= 1).then_some(())
    });
    let d = launch("guest d");
    wait_for("guest d placed", Duration::from_secs(60), || {
        Some(admin_node(&d)).filter(|n| !n.is_empty())
    });
    assert_eq!(admin_node(&d), to, "d was placed on the evacuated node");
    // Enabled again, it takes the next launch (the other node is full).
    let enabled = s.admin(&["enable", from]);
    assert!(enabled.contains("ENABLED"), "{enabled}");
    let e = launch("guest e");
    wait_for("guest e placed", Duration::from_secs(60), || {
        Some(admin_node(&e)).filter(|n| !n.is_empty())
    });
    assert_eq!(admin_node(&e), from, "e was not placed on the enabled node");
    ec2_call(&format!(
        "ec2 terminate-instances --instance-ids {c} {d} {e}"
    ));
    ec2_call(&format!("ec2 release-address --public-ip {eip}"));
    wait_for("all terminated", Duration::from_secs(120), || {
        [&a, &b, &c, &d, &e]
            .iter()
            .all(|i| describe(i)["State"]["Name"] == "terminated")
            .then_some(())
    });
    for node in ["node-a", "node-b"] {
        assert_eq!(on(node).trim(), "", "{node} keeps a domain");
    }
}

/// What guest a printed on its console: (count, uptime) a line.
fn counts(console: &str) -> Vec<(u64, f64)> {
    console
        .lines()
        .filter_map(|l| {
            let mut w = l.trim().strip_prefix("GUMTREE-COUNT ")?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}
