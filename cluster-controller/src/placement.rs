//! Choosing nodes for new instances.
//!
//! Capacity is the node's reported total (times the configured overcommit
//! ratio) less what the CC itself has placed there: the CC's own ledger, not
//! the node's "free" figure, so two RunInstances at once can never both
//! take the last core. A request is placed whole or not at all.

use crate::config::PlacementPolicy;

/// A node that can take instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// Order in which the node joined.
    pub joined: usize,
    pub cores_total: u32,
    pub memory_mib_total: u64,
    pub disk_gib_total: u64,
    /// Held by instances placed on it.
    pub cores_used: u32,
    pub memory_mib_used: u64,
    pub disk_gib_used: u64,
}

/// What one instance needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

/// Placement settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub policy: PlacementPolicy,
    /// Virtual cores per physical core offered (1.0: no overcommit).
    pub cpu_ratio: f64,
    /// Memory offered per MiB of node memory (1.0: no overcommit).
    pub memory_ratio: f64,
    /// THRESHOLD: skip nodes whose core or memory usage is above this share.
    pub threshold: f64,
}

impl Candidate {
    fn cores_cap(&self, s: &Settings) -> u32 {
        (self.cores_total as f64 * s.cpu_ratio).floor() as u32
    }

    fn memory_cap(&self, s: &Settings) -> u64 {
        (self.memory_mib_total as f64 * s.memory_ratio).floor() as u64
    }

    fn fits(&self, need: &Need, s: &Settings) -> bool {
        self.cores_used + need.cores <= self.cores_cap(s)
            && self.memory_mib_used + need.memory_mib <= self.memory_cap(s)
            && self.disk_gib_used + need.disk_gib <= self.disk_gib_total
    }

    /// The larger of core and memory usage, as a share of capacity.
    fn usage(&self, s: &Settings) -> f64 {
        let c = self.cores_used as f64 / self.cores_cap(s).max(1) as f64;
        let m = self.memory_mib_used as f64 / self.memory_cap(s).max(1) as f64;
        c.max(m)
    }

    fn take(&mut self, need: &Need) {
        self.cores_used += need.cores;
        self.memory_mib_used += need.memory_mib;
        self.disk_gib_used += need.disk_gib;
    }
}

/// Places `count` instances needing `need` each. `next` is the ROUNDROBIN
/// cursor (the index after the last node used), updated on success.
/// Returns the node of each instance, or None when they do not all fit.
pub fn place(
    candidates: &[Candidate],
    need: Need,
    count: usize,
    settings: &Settings,
    next: &mut usize,
) -> Option<Vec<String>> {
    let mut nodes: Vec<Candidate> = candidates.to_vec();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut cursor = *next;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let n = nodes.len();
        let pick = match settings.policy {
            PlacementPolicy::Greedy => (0..n).find(|&i| nodes[i].fits(&need, settings)),
            PlacementPolicy::FirstFit => {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by_key(|&i| nodes[i].joined);
                order.into_iter().find(|&i| nodes[i].fits(&need, settings))
            }
            PlacementPolicy::RoundRobin => (0..n)
                .map(|k| (cursor + k) % n.max(1))
                .find(|&i| n > 0 && nodes[i].fits(&need, settings)),
            PlacementPolicy::Threshold => (0..n).map(|k| (cursor + k) % n.max(1)).find(|&i| {
                n > 0
                    && nodes[i].usage(settings) < settings.threshold
                    && nodes[i].fits(&need, settings)
            }),
            PlacementPolicy::PowerSave => (0..n)
                .filter(|&i| nodes[i].fits(&need, settings))
                .max_by(|&a, &b| {
                    nodes[a]
                        .usage(settings)
                        .partial_cmp(&nodes[b].usage(settings))
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(nodes[b].name.cmp(&nodes[a].name))
                }),
        }?;
        nodes[pick].take(&need);
        out.push(nodes[pick].name.clone());
        cursor = (pick + 1) % n.max(1);
    }
    *next = cursor;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, joined: usize, cores: u32, used: u32) -> Candidate {
        Candidate {
            name: name.into(),
            joined,
            cores_total: cores,
            memory_mib_total: 4096,
            disk_gib_total: 100,
            cores_used: used,
            memory_mib_used: used as u64 * 256,
            disk_gib_used: used as u64 * 5,
        }
    }

    const SMALL: Need = Need {
        cores: 1,
        memory_mib: 256,
        disk_gib: 5,
    };

    fn settings(policy: PlacementPolicy) -> Settings {
        Settings {
            policy,
            cpu_ratio: 1.0,
            memory_ratio: 1.0,
            threshold: 0.5,
        }
    }

    fn run(policy: PlacementPolicy, nodes: &[Candidate], count: usize) -> Option<Vec<String>> {
        let mut next = 0;
        place(nodes, SMALL, count, &settings(policy), &mut next)
    }

    #[test]
    fn policies_spread_or_pack_as_named() {
        let nodes = [
            node("nc-1", 2, 4, 0),
            node("nc-2", 1, 4, 1),
            node("nc-3", 0, 4, 0),
        ];
        assert_eq!(
            run(PlacementPolicy::RoundRobin, &nodes, 3).expect("fits"),
            ["nc-1", "nc-2", "nc-3"]
        );
        assert_eq!(
            run(PlacementPolicy::Greedy, &nodes, 3).expect("fits"),
            ["nc-1", "nc-1", "nc-1"]
        );
        assert_eq!(
            run(PlacementPolicy::FirstFit, &nodes, 2).expect("fits"),
            ["nc-3", "nc-3"],
            "in the order nodes joined"
        );
        assert_eq!(
            run(PlacementPolicy::PowerSave, &nodes, 3).expect("fits"),
            ["nc-2", "nc-2", "nc-2"],
            "onto the busiest node that fits"
        );
        // THRESHOLD (0.5): nc-2 is at 1/4; after one more it is at 2/4 and skipped.
        let busy = [node("nc-1", 0, 4, 2), node("nc-2", 1, 4, 1)];
        assert_eq!(
            run(PlacementPolicy::Threshold, &busy, 1).expect("fits"),
            ["nc-2"]
        );
        assert_eq!(run(PlacementPolicy::Threshold, &busy, 2), None);
    }

    #[test]
    fn all_or_nothing_and_no_overcommit() {
        let nodes = [node("nc-1", 0, 2, 1), node("nc-2", 1, 2, 2)];
        assert_eq!(run(PlacementPolicy::RoundRobin, &nodes, 2), None);
        assert_eq!(
            run(PlacementPolicy::RoundRobin, &nodes, 1).expect("one fits"),
            ["nc-1"]
        );
        let mut s = settings(PlacementPolicy::Greedy);
        s.cpu_ratio = 2.0;
        let mut next = 0;
        assert_eq!(
            place(&nodes, SMALL, 4, &s, &mut next).map(|v| v.len()),
            Some(4),
            "overcommit ratio 2 doubles the cores"
        );
        assert_eq!(run(PlacementPolicy::RoundRobin, &[], 1), None);
    }

    #[test]
    fn round_robin_continues_where_it_left_off() {
        let nodes = [node("nc-1", 0, 8, 0), node("nc-2", 1, 8, 0)];
        let s = settings(PlacementPolicy::RoundRobin);
        let mut next = 0;
        assert_eq!(place(&nodes, SMALL, 1, &s, &mut next).expect("a"), ["nc-1"]);
        assert_eq!(place(&nodes, SMALL, 1, &s, &mut next).expect("b"), ["nc-2"]);
        assert_eq!(place(&nodes, SMALL, 1, &s, &mut next).expect("c"), ["nc-1"]);
    }
}
