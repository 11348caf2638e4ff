//! Automatic rebalancing on the separate-hosts setup ([`tests::separate`]),
//! its cluster set to rebalance (threshold 40 % of a node's cores, window
//! 10 s, cooldown 120 s): a guest running a busy loop from its user-data
//! and an idle one share a node while the other node is out of placement;
//! once it is back, the busy guest moves there by itself, the decision is
//! an event with its figures, and nothing moves back.

use std::time::{Duration, Instant};

use tests::{
    clients::{self, register_tiny},
    harness::{guest_netns, wait_for},
    separate::{logs, set_up_with},
};

#[test]
fn a_busy_node_sheds_its_busy_guest_to_an_idle_node_and_it_stays() {
    if guest_netns().is_none() {
        eprintln!("skipped: needs libvirt and namespaces (run it with scripts/test)");
        return;
    }
    let tiny = clients::tiny_guest();
    let s = set_up_with(
        "rebalance = true\nrebalance_threshold = 40.0\nrebalance_window_secs = 10\nrebalance_cooldown_secs = 120\n",
    );
    s.wait_ready();
    let client = s.client();
    let aws = |endpoint: &str, args: &[&str]| client.aws(endpoint, args);
    let (_, _, ami) = register_tiny(&tiny, &aws, &client.s3, &client.ec2);
    let launch = |user_data: &str| -> String {
        clients::launch_one_with(
            &|args| aws(&client.ec2, args),
            &ami,
            &["--user-data", user_data],
        )
    };
    let running = |id: &str| {
        wait_for(&format!("{id} running"), Duration::from_secs(240), || {
            (clients::instance_state(&|args| aws(&client.ec2, args), id) == "running").then_some(())
        });
    };
    // Both on node-a: node-b is out of placement meanwhile (an evacuation
    // of a node that holds nothing).
    let out = s.admin(&["evacuate", "node-b"]);
    assert!(out.contains("0 of 0 instance(s) moved"), "{out}");
    let busy = launch("#!/bin/sh\n(while :; do :; done) > /dev/null 2>&1 &\n");
    let idle = launch("idle");
    running(&busy);
    running(&idle);
    let (on_a, on_b) = (s.on("node-a"), s.on("node-b"));
    assert!(
        on_a.contains(&busy) && on_a.contains(&idle) && on_b.trim().is_empty(),
        "node-a has {on_a:?}, node-b {on_b:?}"
    );
    let node = |name: &str| s.admin_row("describe-nodes", "name", name);
    // Its load shows: the busy guest keeps about a core of node-a's two.
    wait_for("node-a's load above 40%", Duration::from_secs(60), || {
        (node("node-a")["cpu_busy_cores"].as_f64()? > 0.8).then_some(())
    });
    let events = || -> Vec<serde_json::Value> {
        let out = s.admin(&["-o", "json", "describe-events"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let rebalanced = |e: &serde_json::Value| e["kind"] == "rebalance";
    // Nothing moves while there is nowhere to go.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        !events().iter().any(rebalanced),
        "a move with node-b out of placement: {:?}",
        events()
    );
    assert!(s.on("node-a").contains(&busy));
    // Back in placement: the busy guest moves there by itself.
    let enabled = Instant::now();
    s.admin(&["enable", "node-b"]);
    wait_for(
        "the busy guest moved to node-b by rebalancing",
        Duration::from_secs(90),
        || {
            (s.on("node-b").contains(&busy)
                && events().iter().any(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("moved from node-a to node-b"))
                }))
            .then_some(())
        },
    );
    eprintln!(
        "rebalanced {:.1} s after node-b came back:\n{}",
        enabled.elapsed().as_secs_f64(),
        s.admin(&["describe-events"])
    );
    let decided: Vec<serde_json::Value> = events().into_iter().filter(rebalanced).collect();
    let why = decided
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("above 40%"))
        })
        .unwrap_or_else(|| panic!("no rebalancing decision among {decided:?}\n{}", logs(&s)));
    assert_eq!(why["instance_id"], busy.as_str());
    assert_eq!(why["node"], "node-a");
    assert!(
        why["message"]
            .as_str()
            .is_some_and(|m| m.contains("moves to node-b") && m.contains("cores busy")),
        "{why}"
    );
    assert!(
        decided.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("moved from node-a to node-b"))),
        "{decided:?}"
    );
    assert!(s.on("node-a").contains(&idle), "the idle guest moved too");
    // node-b is the busy one now, above the threshold past its window: the
    // guest stays there (cooldown), and nothing else moves.
    let moves = decided.len();
    wait_for("node-b's load above 40%", Duration::from_secs(60), || {
        (node("node-b")["cpu_busy_cores"].as_f64()? > 0.8).then_some(())
    });
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(
        events().into_iter().filter(rebalanced).count(),
        moves,
        "something moved again: {:?}",
        events()
    );
    assert!(s.on("node-b").contains(&busy) && s.on("node-a").contains(&idle));
    client.ec2(&format!(
        "ec2 terminate-instances --instance-ids {busy} {idle}"
    ));
    wait_for("both gone", Duration::from_secs(120), || {
        (s.on("node-a").trim().is_empty() && s.on("node-b").trim().is_empty()).then_some(())
    });
}
