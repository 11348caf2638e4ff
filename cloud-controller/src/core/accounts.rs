//! Deleting accounts: refused while they hold anything, or purged of
//! everything they hold.

use crate::instances::InstanceState;
use common::pki::Role;

use super::Cloud;
use crate::accounts::{self, AccountError};

impl Cloud {
    /// Deletes account `name` once it holds nothing: no instance that is
    /// not terminated, no image, no bucket (else [`AccountError::InUse`],
    /// naming them). Every path that deletes accounts (the admin service,
    /// Euare) comes here.
    pub async fn delete_account(&self, name: &str) -> Result<accounts::Account, AccountError> {
        let account = self.accounts.find(name)?;
        self.accounts.deletable(&account)?;
        let id = &account.account_id;
        let mut held = Vec::new();
        let mut note = |what: &str, items: Vec<String>| {
            if !items.is_empty() {
                held.push(format!("{} {what} ({})", items.len(), items.join(", ")));
            }
        };
        note(
            "instance(s)",
            self.instances
                .list()?
                .into_iter()
                .filter(|r| &r.account_id == id && r.state != InstanceState::Terminated)
                .map(|r| r.instance_id)
                .collect(),
        );
        note(
            "image(s)",
            self.images
                .list()?
                .into_iter()
                .filter(|i| &i.owner_id == id)
                .map(|i| i.image_id)
                .collect(),
        );
        note(
            "volume(s)",
            self.volumes
                .of(id)?
                .into_iter()
                .map(|v| v.volume_id)
                .collect(),
        );
        note("bucket(s)", self.buckets_of(id).await?);
        if !held.is_empty() {
            return Err(AccountError::InUse(format!(
                "Account {} still has {}; remove them first.",
                account.name,
                held.join(", ")
            )));
        }
        self.accounts.delete(&account.name)
    }

    /// Deletes account `name` and everything it holds: its keys first (it
    /// can make nothing new meanwhile), then its instances (terminated: the
    /// intent is durable, carried out even if a node is down now), images,
    /// buckets with their objects, volumes, addresses, key pairs, security groups
    /// and tags. Returns the account and what was removed, one line each.
    /// Running it again after a failure half-way finishes the job.
    pub async fn purge_account(
        &self,
        name: &str,
    ) -> Result<(accounts::Account, Vec<String>), AccountError> {
        let account = self.accounts.find(name)?;
        self.accounts.deletable(&account)?;
        let id = account.account_id.clone();
        let mut removed = Vec::new();
        let keys = self.accounts.revoke_keys(&account.name)?;
        if keys > 0 {
            removed.push(format!("{keys} access key(s)"));
        }
        for r in self.instances.list()? {
            if r.account_id != id || r.state == InstanceState::Terminated {
                continue;
            }
            if r.state != InstanceState::ShuttingDown {
                self.instances.set_state(
                    &r.instance_id,
                    InstanceState::ShuttingDown,
                    "Client.UserInitiatedShutdown: account deleted",
                    None,
                )?;
            }
            self.addresses.instance_gone(&r.instance_id)?;
            removed.push(format!("instance {} (terminating)", r.instance_id));
        }
        for image in self.images.list()? {
            if image.owner_id == id && self.images.deregister(&image.image_id)? {
                removed.push(format!("image {}", image.image_id));
            }
        }
        for bucket in self.delete_buckets_of(&id).await? {
            removed.push(format!("bucket {bucket} (with its objects)"));
        }
        for v in self.volumes.of(&id)? {
            if v.state != crate::volumes::VolumeState::Deleting {
                self.volumes.put(&crate::volumes::VolumeRecord {
                    state: crate::volumes::VolumeState::Deleting,
                    attachment: None,
                    ..v.clone()
                })?;
            }
            // The storage controller deletes its data now or, if it is
            // away, when the volume task next runs.
            self.carry_out_volume(&v.volume_id).await;
            removed.push(format!("volume {}", v.volume_id));
        }
        for address in self.addresses.of(&id)? {
            self.addresses.release(&address.public_ip)?;
            removed.push(format!("address {}", address.public_ip));
        }
        for pair in self.keypairs.of(&id)? {
            self.keypairs.delete(&id, &pair.name)?;
            removed.push(format!("key pair {}", pair.name));
        }
        for group in self.security_groups.of(&id)? {
            self.security_groups.delete(&id, &group.group_id)?;
            removed.push(format!(
                "security group {} ({})",
                group.group_id, group.name
            ));
        }
        let tags = self.tags.all(&id)?;
        let resources: std::collections::BTreeSet<&str> =
            tags.iter().map(|t| t.resource_id.as_str()).collect();
        for resource in &resources {
            self.tags.forget(resource)?;
        }
        if !tags.is_empty() {
            removed.push(format!("{} tag(s)", tags.len()));
        }
        let account = self.accounts.delete(&account.name)?;
        Ok((account, removed))
    }

    /// Deletes the buckets account `id` owns in Walrus, with their objects.
    async fn delete_buckets_of(&self, id: &str) -> Result<Vec<String>, AccountError> {
        let owner = proto::BucketOwner {
            owner_id: id.to_string(),
        };
        let unavailable = |why: String| {
            AccountError::Unavailable(format!("cannot delete the account's buckets: {why}"))
        };
        let reply = self
            .walrus()
            .map_err(unavailable)?
            .delete_buckets(owner)
            .await
            .map_err(|s| unavailable(s.message().to_string()))?;
        Ok(reply.into_inner().names)
    }

    /// The buckets account `id` owns, as Walrus says.
    async fn buckets_of(&self, id: &str) -> Result<Vec<String>, AccountError> {
        let owner = proto::BucketOwner {
            owner_id: id.to_string(),
        };
        let unavailable = |why: String| {
            AccountError::Unavailable(format!("cannot check the account's buckets: {why}"))
        };
        let reply = self
            .walrus()
            .map_err(unavailable)?
            .list_buckets(owner)
            .await
            .map_err(|s| unavailable(s.message().to_string()))?;
        Ok(reply.into_inner().names)
    }

    /// A client of the ENABLED Walrus's internal service.
    pub fn walrus(
        &self,
    ) -> Result<proto::walrus_internal_client::WalrusInternalClient<common::rpc::Client>, String>
    {
        let endpoint = self
            .registry
            .enabled_walrus()
            .ok_or_else(|| "no Walrus is ENABLED".to_string())?;
        let channel = self
            .trust
            .channel(&endpoint, Role::Walrus)
            .map_err(|e| e.to_string())?;
        Ok(proto::walrus_internal_client::WalrusInternalClient::new(
            channel,
        ))
    }
}
