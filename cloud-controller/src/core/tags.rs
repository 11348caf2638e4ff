//! Tags on an account's resources: which ids an account may tag, the
//! per-resource limit, setting and removing them.

use super::{error::IdKind, Cloud, CoreError};
use crate::tags::{Tag, MAX_TAGS};

/// A tag as a request gives it: key, and value (`None`: any value, when
/// removing; empty, when setting).
pub type TagPair = (String, Option<String>);

impl Cloud {
    /// The EC2 resource type of `id` if account `account_id` may tag it:
    /// its own instances, groups, addresses and key pairs, and the images
    /// it can see (tags are the tagging account's own).
    pub fn taggable(&self, account_id: &str, id: &str) -> Result<&'static str, CoreError> {
        let prefix = id.split('-').next().unwrap_or("");
        let not_found = |kind| CoreError::NotFound {
            kind,
            ids: vec![id.to_string()],
        };
        match prefix {
            "ami" | "aki" | "ari" | "emi" | "eki" | "eri" => {
                self.visible_image(account_id, id)?;
                Ok("image")
            }
            "i" => {
                self.own_instances(account_id, &[id.to_string()])?;
                Ok("instance")
            }
            "eipalloc" => {
                if !self
                    .addresses
                    .of(account_id)?
                    .iter()
                    .any(|a| a.allocation_id == id)
                {
                    return Err(not_found(IdKind::Allocation));
                }
                Ok("elastic-ip")
            }
            "vol" => {
                self.own_volume(account_id, id)?;
                Ok("volume")
            }
            "snap" => {
                self.own_snapshot(account_id, id)?;
                Ok("snapshot")
            }
            "sg" => {
                self.own_group(account_id, Some(id), None)?;
                Ok("security-group")
            }
            "key" => {
                if !self
                    .keypairs
                    .of(account_id)?
                    .iter()
                    .any(|k| k.key_pair_id == id)
                {
                    return Err(not_found(IdKind::KeyPairId));
                }
                Ok("key-pair")
            }
            _ => Err(CoreError::InvalidId(id.to_string())),
        }
    }

    /// CreateTags: sets `tags` on every one of `ids` or, when one cannot be
    /// tagged or would pass [`MAX_TAGS`], on none.
    pub fn create_tags(
        &self,
        account_id: &str,
        ids: &[String],
        tags: &[TagPair],
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let mut all = Vec::new();
        let kinds = ids
            .iter()
            .map(|id| self.taggable(account_id, id))
            .collect::<Result<Vec<_>, _>>()?;
        if dry_run {
            return Err(CoreError::DryRun);
        }
        for (id, kind) in ids.iter().zip(kinds) {
            let existing = self.tags.of(account_id, id)?;
            let new_keys = tags
                .iter()
                .filter(|(k, _)| !existing.iter().any(|t| &t.key == k))
                .count();
            if existing.len() + new_keys > MAX_TAGS {
                return Err(CoreError::TagLimit(id.clone()));
            }
            all.extend(tags.iter().map(|(k, v)| Tag {
                account_id: account_id.to_string(),
                resource_id: id.clone(),
                resource_type: kind.to_string(),
                key: k.clone(),
                value: v.clone().unwrap_or_default(),
            }));
        }
        Ok(self.tags.set(&all)?)
    }

    /// DeleteTags: removes `tags` (a key, or a key with its value) from
    /// `ids`, or every tag of the account on them when `tags` is empty.
    pub fn delete_tags(
        &self,
        account_id: &str,
        ids: &[String],
        tags: &[TagPair],
        dry_run: bool,
    ) -> Result<(), CoreError> {
        for id in ids {
            self.taggable(account_id, id)?;
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        for id in ids {
            if tags.is_empty() {
                for t in self.tags.of(account_id, id)? {
                    self.tags.remove(account_id, id, &t.key, None)?;
                }
            }
            for (k, v) in tags {
                self.tags.remove(account_id, id, k, v.as_deref())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{
        fake::{launch, system_account, test_cloud, FakeCluster},
        launch::LaunchRequest,
    };
    use super::*;

    #[tokio::test]
    async fn tags_go_on_own_resources_only_and_within_the_limit() {
        let (cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 4)));
        let me = system_account(&cloud);
        let id = launch(&cloud, &me, 1, LaunchRequest::default())
            .await
            .records[0]
            .instance_id
            .clone();
        let ids = vec![id.clone()];
        let pair = |k: &str| (k.to_string(), Some("v".to_string()));
        cloud
            .create_tags(&me, &ids, &[pair("Name")], false)
            .expect("tagged");
        assert_eq!(cloud.tags.of(&me, &id).expect("tags").len(), 1);
        // Another account's instance is not there for it.
        assert!(matches!(
            cloud.create_tags("000000000222", &ids, &[pair("x")], false),
            Err(CoreError::NotFound {
                kind: IdKind::Instance,
                ..
            })
        ));
        assert!(matches!(
            cloud.create_tags(&me, &["subnet-1".into()], &[pair("x")], false),
            Err(CoreError::InvalidId(_))
        ));
        assert!(matches!(
            cloud.create_tags(&me, &["vol-1".into()], &[pair("x")], false),
            Err(CoreError::Malformed {
                kind: IdKind::Volume,
                ..
            })
        ));
        // Past the limit: nothing is added.
        let many: Vec<TagPair> = (0..MAX_TAGS).map(|n| pair(&format!("k{n}"))).collect();
        assert!(matches!(
            cloud.create_tags(&me, &ids, &many, false),
            Err(CoreError::TagLimit(_))
        ));
        assert_eq!(cloud.tags.of(&me, &id).expect("tags").len(), 1);
        // A dry run changes nothing.
        assert_eq!(
            cloud.delete_tags(&me, &ids, &[], true),
            Err(CoreError::DryRun)
        );
        cloud.delete_tags(&me, &ids, &[], false).expect("deleted");
        assert!(cloud.tags.of(&me, &id).expect("tags").is_empty());
    }
}
