//! Automatic rebalancing (off unless a cluster's CC turns it on): a node
//! whose guests keep more than the threshold of its cores busy for the
//! window has the instance that best brings it under moved live to the
//! least loaded node that it would not overload as much; a moved instance
//! stays put for the cooldown, and both nodes are judged afresh. Every
//! decision is an event with the figures behind it.

use std::collections::HashMap;

use proto::RebalanceSettings;

use super::Cloud;
use crate::{events::Event, instances::InstanceState};

/// A node as rebalancing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLoad {
    pub name: String,
    pub cores: u32,
    /// Cores its guests kept busy over the last sample.
    pub busy: f64,
    /// Its running instances with the cores each kept busy.
    pub guests: Vec<(String, f64)>,
    /// It may take an instance (ENABLED, in placement).
    pub takes: bool,
}

impl NodeLoad {
    fn percent(&self, busy: f64) -> f64 {
        if self.cores == 0 {
            return 0.0;
        }
        busy / f64::from(self.cores) * 100.0
    }
}

/// A move rebalancing decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub instance_id: String,
    pub from: String,
    pub to: String,
    /// Why, with the figures.
    pub why: String,
}

/// What rebalancing remembers between looks (per cluster and node).
#[derive(Debug, Default)]
pub struct RebalanceState {
    /// Since when each node is above the threshold.
    above_since: HashMap<(String, String), i64>,
    /// When each instance was last moved (or tried).
    moved_at: HashMap<String, i64>,
    /// Nodes judged afresh after a move: not before this.
    quiet_until: HashMap<(String, String), i64>,
}

/// Looks at `nodes` of `cluster` at `now_ms`: the move to make, if any
/// (one at a time).
pub fn decide(
    cluster: &str,
    settings: &RebalanceSettings,
    nodes: &[NodeLoad],
    now_ms: i64,
    state: &mut RebalanceState,
) -> Option<Move> {
    let window_ms = settings.window_secs as i64 * 1000;
    let cooldown_ms = settings.cooldown_secs as i64 * 1000;
    let key = |n: &str| (cluster.to_string(), n.to_string());
    let mut due = Vec::new();
    for n in nodes {
        let quiet = state
            .quiet_until
            .get(&key(&n.name))
            .is_some_and(|u| *u > now_ms);
        if quiet || n.percent(n.busy) <= settings.threshold_percent {
            state.above_since.remove(&key(&n.name));
            continue;
        }
        let since = *state.above_since.entry(key(&n.name)).or_insert(now_ms);
        if now_ms - since >= window_ms {
            due.push((n, now_ms - since));
        }
    }
    // The most loaded first.
    due.sort_by(|a, b| b.0.percent(b.0.busy).total_cmp(&a.0.percent(a.0.busy)));
    for (source, above_ms) in due {
        let excess = source.busy - settings.threshold_percent / 100.0 * f64::from(source.cores);
        let mut movable: Vec<&(String, f64)> = source
            .guests
            .iter()
            .filter(|(id, cpu)| {
                *cpu > 0.0
                    && state
                        .moved_at
                        .get(id)
                        .is_none_or(|at| now_ms - at >= cooldown_ms)
            })
            .collect();
        // The least that brings it under, else the most there is.
        movable.sort_by(|a, b| a.1.total_cmp(&b.1));
        let Some((id, cpu)) = movable
            .iter()
            .find(|(_, cpu)| *cpu >= excess)
            .or(movable.last())
            .map(|g| (g.0.clone(), g.1))
        else {
            continue;
        };
        let before = source.percent(source.busy);
        let mut targets: Vec<&NodeLoad> = nodes
            .iter()
            .filter(|t| t.takes && t.name != source.name)
            .collect();
        targets.sort_by(|a, b| a.percent(a.busy).total_cmp(&b.percent(b.busy)));
        // Only where it ends up less loaded than it is here.
        let Some(to) = targets
            .into_iter()
            .find(|t| t.percent(t.busy + cpu) < before)
        else {
            continue;
        };
        return Some(Move {
            instance_id: id.clone(),
            from: source.name.clone(),
            to: to.name.clone(),
            why: format!(
                "{} kept {:.2} of {} cores busy ({before:.0}%) for {} s, above {:.0}% (window {} s): {id} ({cpu:.2} cores) moves to {} ({:.2} of {} cores busy, {:.0}%)",
                source.name,
                source.busy,
                source.cores,
                above_ms / 1000,
                settings.threshold_percent,
                settings.window_secs,
                to.name,
                to.busy,
                to.cores,
                to.percent(to.busy),
            ),
        });
    }
    None
}

impl Cloud {
    /// One look at every cluster that rebalances: at most one move each,
    /// carried out and recorded as events.
    pub async fn rebalance(&self, state: &mut RebalanceState) {
        let now_ms = common::time::unix_ms();
        for (cluster, settings) in self.registry.rebalance_settings() {
            if !settings.enabled {
                continue;
            }
            let running: std::collections::HashSet<String> = match self.instances.list() {
                Ok(all) => all
                    .into_iter()
                    .filter(|r| r.cluster == cluster && r.state == InstanceState::Running)
                    .map(|r| r.instance_id)
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "rebalancing cannot read the instances");
                    return;
                }
            };
            let migrating = self
                .migrating
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let nodes: Vec<NodeLoad> = self
                .registry
                .nodes()
                .into_iter()
                .filter(|v| v.cluster_name == cluster)
                .filter_map(|v| v.node)
                .filter_map(|n| {
                    let load = n.load.as_ref()?;
                    Some(NodeLoad {
                        cores: n.resources.map(|r| r.cores_total).unwrap_or(0),
                        busy: load.cpu_busy_cores,
                        guests: load
                            .guests
                            .iter()
                            .filter(|g| {
                                running.contains(&g.instance_id)
                                    && !migrating.contains_key(&g.instance_id)
                            })
                            .map(|g| (g.instance_id.clone(), g.cpu_cores))
                            .collect(),
                        takes: n.state == proto::ServiceState::Enabled as i32 && !n.disabled,
                        name: n.name,
                    })
                })
                .collect();
            let Some(m) = decide(&cluster, &settings, &nodes, now_ms, state) else {
                continue;
            };
            let event = |message: String| Event {
                unix_ms: common::time::unix_ms(),
                seq: 0,
                kind: "rebalance".into(),
                cluster: cluster.clone(),
                node: m.from.clone(),
                instance_id: m.instance_id.clone(),
                message,
            };
            let _ = self.events.record(event(m.why.clone()));
            state.moved_at.insert(m.instance_id.clone(), now_ms);
            let done = self
                .migrate_instance(&m.instance_id, std::slice::from_ref(&m.to))
                .await;
            let message = match &done {
                Ok(d) => format!(
                    "{} moved from {} to {} in {:.1} s",
                    m.instance_id, d.source, d.destination, d.seconds
                ),
                Err(e) => format!("{} did not move to {}: {e}", m.instance_id, m.to),
            };
            let _ = self.events.record(event(message));
            // Both nodes are judged afresh, on samples taken after the move.
            let after = common::time::unix_ms() + settings.window_secs as i64 * 1000;
            for n in [&m.from, &m.to] {
                state
                    .quiet_until
                    .insert((cluster.clone(), n.clone()), after);
                state.above_since.remove(&(cluster.clone(), n.clone()));
            }
        }
    }

    /// Rebalances every `every`, forever.
    pub async fn keep_rebalancing(self, every: std::time::Duration) {
        let mut state = RebalanceState::default();
        loop {
            tokio::time::sleep(every).await;
            self.rebalance(&mut state).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RebalanceSettings {
        RebalanceSettings {
            enabled: true,
            threshold_percent: 40.0,
            window_secs: 10,
            cooldown_secs: 60,
        }
    }

    fn node(name: &str, guests: &[(&str, f64)]) -> NodeLoad {
        NodeLoad {
            name: name.into(),
            cores: 2,
            busy: guests.iter().map(|g| g.1).sum(),
            guests: guests.iter().map(|(i, c)| (i.to_string(), *c)).collect(),
            takes: true,
        }
    }

    #[test]
    fn a_node_above_the_threshold_for_the_window_sheds_what_brings_it_under() {
        let mut state = RebalanceState::default();
        let busy = [("i-busy", 1.0), ("i-idle", 0.02)];
        let nodes = [node("a", &busy), node("b", &[]), node("c", &[("i-c", 0.3)])];
        // Above, but not for the window yet.
        assert_eq!(decide("cl", &settings(), &nodes, 0, &mut state), None);
        assert_eq!(decide("cl", &settings(), &nodes, 9_999, &mut state), None);
        let m = decide("cl", &settings(), &nodes, 10_000, &mut state).expect("a move");
        // The idle guest would not bring a under; the busy one goes to the
        // least loaded node.
        assert_eq!(
            (m.instance_id.as_str(), m.from.as_str(), m.to.as_str()),
            ("i-busy", "a", "b")
        );
        assert!(
            m.why.contains("51%") && m.why.contains("above 40%"),
            "{}",
            m.why
        );
        // Dipping under starts the window again.
        let mut state = RebalanceState::default();
        decide("cl", &settings(), &nodes, 0, &mut state);
        let calm = [node("a", &[("i-busy", 0.5)]), node("b", &[])];
        assert_eq!(decide("cl", &settings(), &calm, 5_000, &mut state), None);
        assert_eq!(decide("cl", &settings(), &nodes, 10_000, &mut state), None);
    }

    #[test]
    fn a_moved_instance_does_not_move_back_within_the_cooldown() {
        let mut state = RebalanceState::default();
        state.moved_at.insert("i-busy".into(), 0);
        // It went to b, which is above the threshold now; a is empty.
        let nodes = [node("a", &[]), node("b", &[("i-busy", 1.0)])];
        decide("cl", &settings(), &nodes, 1_000, &mut state);
        assert_eq!(decide("cl", &settings(), &nodes, 30_000, &mut state), None);
        // After it, moving it back would not leave a less loaded than b is.
        assert_eq!(decide("cl", &settings(), &nodes, 70_000, &mut state), None);
        // Nor does anything move to a node out of placement, or one it
        // would load as much.
        let mut state = RebalanceState::default();
        let mut out = node("b", &[]);
        out.takes = false;
        let nodes = [node("a", &[("i-1", 1.0)]), out];
        decide("cl", &settings(), &nodes, 0, &mut state);
        assert_eq!(decide("cl", &settings(), &nodes, 20_000, &mut state), None);
    }
}
