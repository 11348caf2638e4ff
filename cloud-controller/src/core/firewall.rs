//! The security group policy as the nodes enforce it: each live instance's
//! firewall is its groups' rules, source groups turned into their members'
//! private addresses, with its public address; and the task that keeps the
//! nodes in step.

use crate::instances::InstanceState;
use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use proto::{FirewallRule, InstanceFirewall};

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
    /// Group id to its live members' addresses, as /32 blocks.
    members: HashMap<String, Vec<String>>,
    public: HashMap<String, String>,
}

impl Policy {
    fn render(&self, rules: &[Rule]) -> Vec<FirewallRule> {
        rules
            .iter()
            .filter_map(|rule| {
                let mut cidrs = rule.cidrs.clone();
                for g in &rule.groups {
                    cidrs.extend(self.members.get(&g.group_id).into_iter().flatten().cloned());
                }
                (!cidrs.is_empty()).then(|| FirewallRule {
                    protocol: rule.protocol.clone(),
                    from_port: rule.from_port,
                    to_port: rule.to_port,
                    cidrs,
                })
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
            ingress.extend(self.render(&g.ingress));
            egress.extend(self.render(&g.egress));
        }
        InstanceFirewall {
            instance_id: r.instance_id.clone(),
            ingress,
            egress,
            public_ip: self.public.get(&r.instance_id).cloned().unwrap_or_default(),
        }
    }
}

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
    members
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

    /// Every live instance's firewall, by cluster.
    pub fn firewalls(&self) -> Result<HashMap<String, Vec<InstanceFirewall>>, CoreError> {
        let live_records: Vec<InstanceRecord> =
            self.instances.list()?.into_iter().filter(live).collect();
        let policy = Policy {
            groups: self.groups_by_id()?,
            members: members_of(&live_records),
            public: self.addresses.by_instance()?,
        };
        let mut out: HashMap<String, Vec<InstanceFirewall>> = HashMap::new();
        for r in &live_records {
            out.entry(r.cluster.clone())
                .or_default()
                .push(policy.firewall(r));
        }
        Ok(out)
    }

    /// The firewalls of `records` alone: reads only the members of the
    /// groups their rules name (a launch's new instances start with their
    /// rules in place at a cost that does not grow with the cloud).
    pub fn firewalls_of(
        &self,
        records: &[InstanceRecord],
    ) -> Result<HashMap<String, InstanceFirewall>, CoreError> {
        let groups = self.groups_by_id()?;
        let sources: BTreeSet<String> = records
            .iter()
            .flat_map(|r| r.security_groups.iter())
            .filter_map(|id| groups.get(id))
            .flat_map(|g| g.ingress.iter().chain(g.egress.iter()))
            .flat_map(|rule| rule.groups.iter().map(|g| g.group_id.clone()))
            .collect();
        // The new instances count as members as the caller has them (their
        // records may not show their addresses yet).
        let mut by_id: std::collections::BTreeMap<String, InstanceRecord> = self
            .instances
            .in_groups(&sources)
            .into_iter()
            .map(|r| (r.instance_id.clone(), r))
            .collect();
        for r in records {
            by_id.insert(r.instance_id.clone(), r.clone());
        }
        let members = members_of(by_id.values());
        let mut public = self.addresses.by_instance()?;
        public.retain(|id, _| records.iter().any(|r| &r.instance_id == id));
        let policy = Policy {
            groups,
            members,
            public,
        };
        Ok(records
            .iter()
            .map(|r| (r.instance_id.clone(), policy.firewall(r)))
            .collect())
    }

    /// Keeps the nodes' firewalls in step with the security groups, forever
    /// (run it in its own task): whenever something changed
    /// ([`Cloud::firewall_changed`]) each cluster gets the firewalls that
    /// differ from what it was last sent; every 10 s it gets all of them
    /// (a node that restarted, a cluster that was away).
    pub async fn sync_firewalls(self) {
        let mut sent: HashMap<String, HashMap<String, InstanceFirewall>> = HashMap::new();
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
            for (cluster, firewalls) in all {
                let before = sent.entry(cluster.clone()).or_default();
                let push: Vec<InstanceFirewall> = firewalls
                    .iter()
                    .filter(|f| !changed || before.get(&f.instance_id) != Some(f))
                    .cloned()
                    .collect();
                let now: HashMap<String, InstanceFirewall> = firewalls
                    .into_iter()
                    .map(|f| (f.instance_id.clone(), f))
                    .collect();
                if push.is_empty() {
                    *before = now;
                    continue;
                }
                let count = push.len();
                match self.clusters.set_firewalls(&cluster, push).await {
                    Ok(applied) => {
                        *before = now;
                        tracing::debug!(%cluster, count, applied, elapsed_ms = started.elapsed().as_millis() as u64, "firewalls pushed")
                    }
                    Err(e) => {
                        // Sent in full next time.
                        before.clear();
                        tracing::debug!(%cluster, error = %e, "firewalls not pushed")
                    }
                }
            }
        }
    }
}
