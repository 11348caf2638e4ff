//! Security groups: creating, deleting and changing their rules. What the
//! rules mean for each instance is [`super::firewall`].

use common::time;

use super::{Cloud, CoreError};
use crate::{
    instances::InstanceState,
    security_groups::{authorize, revoke, Change, Rule, SecurityGroup},
    tags::Tag,
};

/// A group to create.
#[derive(Debug, Clone, Default)]
pub struct NewGroup {
    pub account_id: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<(String, Option<String>)>,
}

/// Which of its groups a call names: by id, else by name.
#[derive(Debug, Clone, Copy)]
pub struct GroupName<'a> {
    pub id: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl Cloud {
    /// Creates a group (its egress open, its ingress closed, as EC2 does).
    pub fn create_group(
        &self,
        req: NewGroup,
        dry_run: bool,
    ) -> Result<(SecurityGroup, Vec<Tag>), CoreError> {
        for (param, v) in [
            ("GroupName", &req.name),
            ("GroupDescription", &req.description),
        ] {
            super::error::printable_name(param, v, "Use 1 to 255 ASCII characters.")?;
        }
        if req.name.starts_with("sg-") {
            return Err(CoreError::InvalidValue {
                param: "GroupName",
                value: req.name,
                why: "Group names may not start with sg-.".into(),
            });
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let group = SecurityGroup {
            account_id: req.account_id.clone(),
            group_id: common::ids::resource_id("sg"),
            name: req.name.clone(),
            description: req.description,
            ingress: Vec::new(),
            egress: vec![Rule::all_out()],
            created_ms: time::unix_ms(),
        };
        if !self.security_groups.create(&group)? {
            return Err(CoreError::GroupExists(format!(
                "The security group '{}' already exists",
                req.name
            )));
        }
        let tags = self.tag_new(
            &req.account_id,
            &[(&group.group_id, "security-group")],
            &req.tags,
        )?;
        tracing::info!(group_id = %group.group_id, name = %group.name, "security group created");
        Ok((group, tags))
    }

    /// Deletes one of the account's groups: never `default`, nor one that a
    /// live instance is in or another group's rule names.
    pub fn delete_group(
        &self,
        account_id: &str,
        which: GroupName<'_>,
        dry_run: bool,
    ) -> Result<SecurityGroup, CoreError> {
        let group = self.own_group(account_id, which.id, which.name)?;
        if group.name == "default" {
            return Err(CoreError::CannotDelete(
                "The default security group cannot be deleted".into(),
            ));
        }
        let in_use = self
            .instances
            .in_groups([&group.group_id])
            .iter()
            .any(|r| r.state != InstanceState::Terminated);
        let referenced = self
            .security_groups
            .all()?
            .into_iter()
            .filter(|g| g.group_id != group.group_id)
            .any(|g| {
                g.ingress
                    .iter()
                    .chain(g.egress.iter())
                    .any(|r| r.groups.iter().any(|s| s.group_id == group.group_id))
            });
        if in_use || referenced {
            return Err(CoreError::DependencyViolation(format!(
                "resource {} has a dependent object",
                group.group_id
            )));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        self.security_groups
            .delete(&group.account_id, &group.group_id)?;
        self.tags.forget(&group.group_id)?;
        tracing::info!(group_id = %group.group_id, "security group deleted");
        Ok(group)
    }

    /// Adds (`add`) or removes `rules` of a group's ingress (or `egress`),
    /// all or none; the nodes hear of it.
    pub fn change_rules(
        &self,
        group: &SecurityGroup,
        egress: bool,
        add: bool,
        rules: &[Rule],
        dry_run: bool,
    ) -> Result<(), CoreError> {
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let outcome = self
            .security_groups
            .update(&group.account_id, &group.group_id, |g| {
                let list = if egress {
                    &mut g.egress
                } else {
                    &mut g.ingress
                };
                let before = list.clone();
                for r in rules {
                    let change = if add {
                        authorize(list, r)
                    } else {
                        revoke(list, r)
                    };
                    if change != Change::Done {
                        *list = before;
                        return change;
                    }
                }
                Change::Done
            })?
            .ok_or_else(|| CoreError::NotFound {
                kind: super::IdKind::Group,
                ids: vec![group.group_id.clone()],
            })?;
        match outcome {
            Change::Done => {}
            Change::Duplicate => {
                return Err(CoreError::RuleExists(group.group_id.clone()));
            }
            Change::Missing => return Err(CoreError::RuleMissing(group.group_id.clone())),
        }
        tracing::info!(group_id = %group.group_id, egress, add, rules = rules.len(), "security group rules changed");
        self.firewall_changed.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::{
        fake::{launch, system_account, test_cloud, FakeCluster},
        launch::LaunchRequest,
    };

    #[tokio::test]
    async fn groups_in_use_stay_and_rule_changes_reach_the_nodes() {
        let fake = Arc::new(FakeCluster::new(1, 8));
        let (cloud, _dir) = test_cloud(fake.clone());
        let me = system_account(&cloud);
        let new = |name: &str| NewGroup {
            account_id: me.clone(),
            name: name.into(),
            description: "web servers".into(),
            tags: vec![("team".into(), Some("a".into()))],
        };
        assert!(matches!(
            cloud.create_group(new("sg-web"), false),
            Err(CoreError::InvalidValue {
                param: "GroupName",
                ..
            })
        ));
        let (web, tags) = cloud.create_group(new("web"), false).expect("create");
        assert_eq!(tags.len(), 1);
        assert!(matches!(
            cloud.create_group(new("web"), false),
            Err(CoreError::GroupExists(_))
        ));
        let launched = launch(
            &cloud,
            &me,
            1,
            LaunchRequest {
                group_ids: vec![web.group_id.clone()],
                ..Default::default()
            },
        )
        .await;
        let by_id = GroupName {
            id: Some(&web.group_id),
            name: None,
        };
        assert!(matches!(
            cloud.delete_group(&me, by_id, false),
            Err(CoreError::DependencyViolation(_))
        ));
        let ssh = Rule {
            protocol: "tcp".into(),
            from_port: 22,
            to_port: 22,
            cidrs: vec!["0.0.0.0/0".into()],
            groups: Vec::new(),
        };
        cloud
            .change_rules(&web, false, true, std::slice::from_ref(&ssh), false)
            .expect("authorize");
        assert!(matches!(
            cloud.change_rules(&web, false, true, std::slice::from_ref(&ssh), false),
            Err(CoreError::RuleExists(_))
        ));
        // The nodes get the instance's new rules from the sync task.
        let sync = tokio::spawn(cloud.clone().sync_firewalls());
        let id = launched.records[0].instance_id.clone();
        let mut pushed = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            pushed = fake
                .state()
                .pushed
                .iter()
                .any(|f| f.instance_id == id && f.ingress.iter().any(|r| r.from_port == 22));
            if pushed {
                break;
            }
        }
        sync.abort();
        assert!(pushed, "the rule reached the cluster");
        cloud
            .change_rules(&web, false, false, std::slice::from_ref(&ssh), false)
            .expect("revoke");
        assert!(matches!(
            cloud.change_rules(&web, false, false, &[ssh], false),
            Err(CoreError::RuleMissing(_))
        ));
        cloud
            .terminate(&me, std::slice::from_ref(&id), false)
            .await
            .expect("terminate");
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        cloud
            .delete_group(&me, by_id, false)
            .expect("no longer in use");
        assert!(matches!(
            cloud.delete_group(
                &me,
                GroupName {
                    id: None,
                    name: Some("default")
                },
                false
            ),
            Err(CoreError::CannotDelete(_))
        ));
    }
}
