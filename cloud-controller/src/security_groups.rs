//! Security groups: per-account sets of ingress and egress rules. Every
//! account has a group named `default` (made on first use) that lets its
//! members reach each other; every group starts with egress open to all.

use common::{
    ids,
    store::{Record, Store, StoreError, Table},
    time,
};
use serde::{Deserialize, Serialize};

/// A source or destination group of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupRef {
    pub account_id: String,
    pub group_id: String,
}

/// One permission: a protocol and port range, from (or to) CIDRs and groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `tcp`, `udp`, `icmp` or `-1` (all).
    pub protocol: String,
    /// First port (ICMP: type); -1 with protocol `-1` or for all ICMP types.
    pub from_port: i32,
    /// Last port (ICMP: code).
    pub to_port: i32,
    pub cidrs: Vec<String>,
    pub groups: Vec<GroupRef>,
}

impl Rule {
    fn same_ports(&self, other: &Rule) -> bool {
        self.protocol == other.protocol
            && self.from_port == other.from_port
            && self.to_port == other.to_port
    }

    /// The rule that lets everything out.
    pub fn all_out() -> Self {
        Self {
            protocol: "-1".into(),
            from_port: -1,
            to_port: -1,
            cidrs: vec!["0.0.0.0/0".into()],
            groups: Vec::new(),
        }
    }
}

/// A security group, keyed by (account id, group id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub account_id: String,
    pub group_id: String,
    pub name: String,
    pub description: String,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    pub created_ms: i64,
}

impl Record for SecurityGroup {
    const TABLE: &'static str = "security_groups";
    const SCHEMA: u32 = 1;
    type Key = (String, String);
    fn key(&self) -> Self::Key {
        (self.account_id.clone(), self.group_id.clone())
    }
}

/// What changing a group's rules found.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Done,
    /// Authorize: the permission (or part of it) is there already.
    Duplicate,
    /// Revoke: the permission (or part of it) is not there.
    Missing,
}

/// Adds `add` to `rules`; Duplicate (and no change) if any of its sources is there.
pub fn authorize(rules: &mut Vec<Rule>, add: &Rule) -> Change {
    if let Some(r) = rules.iter_mut().find(|r| r.same_ports(add)) {
        if add.cidrs.iter().any(|c| r.cidrs.contains(c))
            || add.groups.iter().any(|g| r.groups.contains(g))
        {
            return Change::Duplicate;
        }
        r.cidrs.extend(add.cidrs.iter().cloned());
        r.groups.extend(add.groups.iter().cloned());
    } else {
        rules.push(add.clone());
    }
    Change::Done
}

/// Removes `remove` from `rules`; Missing (and no change) if any of its
/// sources is not there.
pub fn revoke(rules: &mut Vec<Rule>, remove: &Rule) -> Change {
    let Some(at) = rules.iter().position(|r| r.same_ports(remove)) else {
        return Change::Missing;
    };
    let r = &mut rules[at];
    if !remove.cidrs.iter().all(|c| r.cidrs.contains(c))
        || !remove.groups.iter().all(|g| r.groups.contains(g))
    {
        return Change::Missing;
    }
    r.cidrs.retain(|c| !remove.cidrs.contains(c));
    r.groups.retain(|g| !remove.groups.contains(g));
    if r.cidrs.is_empty() && r.groups.is_empty() {
        rules.remove(at);
    }
    Change::Done
}

/// The security group store.
#[derive(Debug)]
pub struct SecurityGroups {
    table: Table<SecurityGroup>,
    /// Serializes read-modify-write of groups.
    writing: std::sync::Mutex<()>,
}

impl SecurityGroups {
    /// The groups in `store`.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
            writing: std::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every group of `account_id`, made with its `default` group if it had none.
    pub fn of(&self, account_id: &str) -> Result<Vec<SecurityGroup>, StoreError> {
        let mut p = account_id.as_bytes().to_vec();
        p.push(0);
        let groups = self.table.scan_prefix(&p)?;
        if groups.iter().any(|g| g.name == "default") {
            return Ok(groups);
        }
        let _w = self.lock();
        let groups = self.table.scan_prefix(&p)?;
        if groups.iter().any(|g| g.name == "default") {
            return Ok(groups);
        }
        let group_id = ids::resource_id("sg");
        let default = SecurityGroup {
            account_id: account_id.to_string(),
            group_id: group_id.clone(),
            name: "default".into(),
            description: "default group".into(),
            ingress: vec![Rule {
                protocol: "-1".into(),
                from_port: -1,
                to_port: -1,
                cidrs: Vec::new(),
                groups: vec![GroupRef {
                    account_id: account_id.to_string(),
                    group_id,
                }],
            }],
            egress: vec![Rule::all_out()],
            created_ms: time::unix_ms(),
        };
        self.table.put(&default)?;
        let mut all = groups;
        all.push(default);
        Ok(all)
    }

    /// Every group of every account (for finding who references whom).
    pub fn all(&self) -> Result<Vec<SecurityGroup>, StoreError> {
        self.table.list()
    }

    /// Creates a group; false if the account has one of that name.
    pub fn create(&self, group: &SecurityGroup) -> Result<bool, StoreError> {
        let existing = self.of(&group.account_id)?;
        let _w = self.lock();
        if existing.iter().any(|g| g.name == group.name)
            || self
                .table
                .scan_prefix(&[group.account_id.as_bytes(), &[0]].concat())?
                .iter()
                .any(|g| g.name == group.name)
        {
            return Ok(false);
        }
        self.table.put(group)?;
        Ok(true)
    }

    /// Applies `change` to the stored group (read, change, write under a lock).
    pub fn update<T>(
        &self,
        account_id: &str,
        group_id: &str,
        change: impl FnOnce(&mut SecurityGroup) -> T,
    ) -> Result<Option<T>, StoreError> {
        let _w = self.lock();
        let key = (account_id.to_string(), group_id.to_string());
        let Some(mut g) = self.table.get(&key)? else {
            return Ok(None);
        };
        let out = change(&mut g);
        self.table.put(&g)?;
        Ok(Some(out))
    }

    /// Deletes a group.
    pub fn delete(&self, account_id: &str, group_id: &str) -> Result<(), StoreError> {
        let _w = self.lock();
        self.table
            .delete(&(account_id.to_string(), group_id.to_string()))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: i32, cidr: &str) -> Rule {
        Rule {
            protocol: "tcp".into(),
            from_port: port,
            to_port: port,
            cidrs: vec![cidr.into()],
            groups: Vec::new(),
        }
    }

    #[test]
    fn rules_merge_and_split_like_ec2_permissions() {
        let mut rules = Vec::new();
        assert_eq!(authorize(&mut rules, &tcp(22, "10.0.0.0/8")), Change::Done);
        assert_eq!(
            authorize(&mut rules, &tcp(22, "192.168.0.0/16")),
            Change::Done
        );
        assert_eq!(rules.len(), 1, "same protocol and ports: one permission");
        assert_eq!(rules[0].cidrs.len(), 2);
        assert_eq!(
            authorize(&mut rules, &tcp(22, "10.0.0.0/8")),
            Change::Duplicate
        );
        assert_eq!(authorize(&mut rules, &tcp(80, "0.0.0.0/0")), Change::Done);
        assert_eq!(revoke(&mut rules, &tcp(443, "0.0.0.0/0")), Change::Missing);
        assert_eq!(
            revoke(&mut rules, &tcp(22, "172.16.0.0/12")),
            Change::Missing
        );
        assert_eq!(revoke(&mut rules, &tcp(22, "10.0.0.0/8")), Change::Done);
        assert_eq!(revoke(&mut rules, &tcp(22, "192.168.0.0/16")), Change::Done);
        assert_eq!(rules, vec![tcp(80, "0.0.0.0/0")]);
    }

    #[test]
    fn every_account_gets_one_default_group() {
        let store = Store::temporary().expect("store");
        let sg = SecurityGroups::open(&store).expect("open");
        let first = sg.of("111").expect("of");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].name, "default");
        assert_eq!(first[0].ingress[0].groups[0].group_id, first[0].group_id);
        assert_eq!(sg.of("111").expect("again"), first);
        let web = SecurityGroup {
            account_id: "111".into(),
            group_id: "sg-1".into(),
            name: "web".into(),
            description: "web".into(),
            ingress: Vec::new(),
            egress: vec![Rule::all_out()],
            created_ms: 0,
        };
        assert!(sg.create(&web).expect("create"));
        assert!(!sg
            .create(&SecurityGroup {
                group_id: "sg-2".into(),
                ..web.clone()
            })
            .expect("dup"));
        assert_eq!(sg.of("222").expect("other")[0].account_id, "222");
        assert_eq!(sg.of("111").expect("mine").len(), 2);
    }
}
