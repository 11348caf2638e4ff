//! The security group policy as the nodes enforce it: each live instance's
//! firewall is its groups' rules with its public address, a rule naming a
//! source group naming it by id; the members of each such group (their
//! private addresses) travel separately, once per cluster, and each node
//! resolves them. So an instance that comes or goes changes one
//! membership, not the firewall of every other member of its groups.
//! Also the task that keeps the nodes in step.

use crate::instances::InstanceState;
use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use proto::{FirewallRule, GroupMembers, InstanceFirewall};

use super::{Cloud, CoreError};
use crate::{
    instances::InstanceRecord,
    security_groups::{Rule, SecurityGroup},
};

/// True when `r` holds an address and can receive traffic.
fn live(r: &InstanceRecord) -> bool {
    !r.private_ip.is_empty()
        && !matches!(
            r.state,
            InstanceState::Terminated | InstanceState::ShuttingDown
        )
}

/// Everything a firewall is computed from.
struct Policy {
    groups: HashMap<String, SecurityGroup>,
    public: HashMap<String, String>,
}

impl Policy {
    fn render(rules: &[Rule]) -> Vec<FirewallRule> {
        rules
            .iter()
            .map(|rule| FirewallRule {
                protocol: rule.protocol.clone(),
                from_port: rule.from_port,
                to_port: rule.to_port,
                cidrs: rule.cidrs.clone(),
                source_groups: rule.groups.iter().map(|g| g.group_id.clone()).collect(),
            })
            .collect()
    }

    fn firewall(&self, r: &InstanceRecord) -> InstanceFirewall {
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for g in r
            .security_groups
            .iter()
            .filter_map(|id| self.groups.get(id))
        {
            ingress.extend(Self::render(&g.ingress));
            egress.extend(Self::render(&g.egress));
        }
        InstanceFirewall {
            instance_id: r.instance_id.clone(),
            ingress,
            egress,
            public_ip: self.public.get(&r.instance_id).cloned().unwrap_or_default(),
        }
    }
}

/// The groups `firewalls` name as sources.
fn named_groups<'a>(firewalls: impl IntoIterator<Item = &'a InstanceFirewall>) -> BTreeSet<String> {
    firewalls
        .into_iter()
        .flat_map(|f| f.ingress.iter().chain(f.egress.iter()))
        .flat_map(|rule| rule.source_groups.iter().cloned())
        .collect()
}

/// Each group's live members' addresses as /32 blocks, sorted.
fn members_of<'a>(
    records: impl IntoIterator<Item = &'a InstanceRecord>,
) -> HashMap<String, Vec<String>> {
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for r in records.into_iter().filter(|r| live(r)) {
        for g in &r.security_groups {
            members
                .entry(g.clone())
                .or_default()
                .push(format!("{}/32", r.private_ip));
        }
    }
    for m in members.values_mut() {
        m.sort();
        m.dedup();
    }
    members
}

/// What one cluster's nodes enforce: its live instances' firewalls, and the
/// memberships of the groups their rules name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClusterPolicy {
    pub firewalls: HashMap<String, InstanceFirewall>,
    pub groups: HashMap<String, Vec<String>>,
}

impl Cloud {
    fn groups_by_id(&self) -> Result<HashMap<String, SecurityGroup>, CoreError> {
        Ok(self
            .security_groups
            .all()?
            .into_iter()
            .map(|g| (g.group_id.clone(), g))
            .collect())
    }

    /// True when some rule names one of `groups` as its source (so a
    /// change of their members changes other instances' firewalls).
    pub fn named_as_source(&self, groups: &[String]) -> Result<bool, CoreError> {
        Ok(self.security_groups.all()?.iter().any(|g| {
            g.ingress
                .iter()
                .chain(g.egress.iter())
                .any(|rule| rule.groups.iter().any(|s| groups.contains(&s.group_id)))
        }))
    }

    /// Every live instance's firewall and the memberships they need, by
    /// cluster.
    pub fn firewalls(&self) -> Result<HashMap<String, ClusterPolicy>, CoreError> {
        let live_records: Vec<InstanceRecord> =
            self.instances.list()?.into_iter().filter(live).collect();
        let policy = Policy {
            groups: self.groups_by_id()?,
            public: self.addresses.by_instance()?,
        };
        let members = members_of(&live_records);
        let mut out: HashMap<String, ClusterPolicy> = HashMap::new();
        for r in &live_records {
            let f = policy.firewall(r);
            out.entry(r.cluster.clone())
                .or_default()
                .firewalls
                .insert(f.instance_id.clone(), f);
        }
        for c in out.values_mut() {
            c.groups = named_groups(c.firewalls.values())
                .into_iter()
                .map(|g| {
                    let m = members.get(&g).cloned().unwrap_or_default();
                    (g, m)
                })
                .collect();
        }
        Ok(out)
    }

    /// The firewalls of `records` alone (a launch's new instances start
    /// with their rules in place at a cost that does not grow with the
    /// cloud; the memberships their rules name follow with the next push).
    pub fn firewalls_of(
        &self,
        records: &[InstanceRecord],
    ) -> Result<HashMap<String, InstanceFirewall>, CoreError> {
        let mut public = self.addresses.by_instance()?;
        public.retain(|id, _| records.iter().any(|r| &r.instance_id == id));
        let policy = Policy {
            groups: self.groups_by_id()?,
            public,
        };
        Ok(records
            .iter()
            .map(|r| (r.instance_id.clone(), policy.firewall(r)))
            .collect())
    }

    /// Keeps the nodes' firewalls in step with the security groups, forever
    /// (run it in its own task): whenever something changed
    /// ([`Cloud::firewall_changed`]) each cluster gets the firewalls and
    /// memberships that differ from what it was last sent; every 10 s it
    /// gets all of them (a node that restarted, a cluster that was away).
    pub async fn sync_firewalls(self) {
        let mut sent: HashMap<String, ClusterPolicy> = HashMap::new();
        loop {
            let changed = tokio::select! {
                _ = self.firewall_changed.notified() => true,
                _ = tokio::time::sleep(Duration::from_secs(10)) => false,
            };
            let started = Instant::now();
            let all = match self.firewalls() {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!(error = %e, "firewalls not computed");
                    continue;
                }
            };
            for (cluster, now) in all {
                let before = sent.entry(cluster.clone()).or_default();
                let firewalls: Vec<InstanceFirewall> = now
                    .firewalls
                    .values()
                    .filter(|f| !changed || before.firewalls.get(&f.instance_id) != Some(*f))
                    .cloned()
                    .collect();
                let groups: Vec<GroupMembers> = now
                    .groups
                    .iter()
                    .filter(|(g, m)| !changed || before.groups.get(*g) != Some(*m))
                    .map(|(g, m)| GroupMembers {
                        group_id: g.clone(),
                        addresses: m.clone(),
                    })
                    .collect();
                if firewalls.is_empty() && groups.is_empty() {
                    *before = now;
                    continue;
                }
                let (count, group_count) = (firewalls.len(), groups.len());
                match self
                    .clusters
                    .set_firewalls(&cluster, firewalls, groups)
                    .await
                {
                    Ok(applied) => {
                        *before = now;
                        tracing::debug!(%cluster, count, groups = group_count, applied, elapsed_ms = started.elapsed().as_millis() as u64, "firewalls pushed")
                    }
                    Err(e) => {
                        // Sent in full next time.
                        *before = ClusterPolicy::default();
                        tracing::debug!(%cluster, error = %e, "firewalls not pushed")
                    }
                }
            }
        }
    }
}
