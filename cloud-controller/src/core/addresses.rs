//! Elastic IPs from the cloud's public pool: allocating, associating,
//! disassociating and releasing them. An instance an address leaves gets a
//! new one from the pool (when the cloud gives every instance one).

use super::{Cloud, CoreError, IdKind};
use crate::{addresses::Address, instances::InstanceState};

/// How a call names one of its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRef<'a> {
    PublicIp(&'a str),
    Allocation(&'a str),
    Association(&'a str),
}

impl Cloud {
    /// The account's address `which` names.
    pub fn own_address(
        &self,
        account_id: &str,
        which: AddressRef<'_>,
    ) -> Result<Address, CoreError> {
        let mine = self.addresses.of(account_id)?;
        let (found, kind, id) = match which {
            AddressRef::PublicIp(ip) => (
                mine.into_iter().find(|a| a.public_ip == ip),
                IdKind::Address,
                ip,
            ),
            AddressRef::Allocation(id) => (
                mine.into_iter().find(|a| a.allocation_id == id),
                IdKind::Allocation,
                id,
            ),
            AddressRef::Association(id) => (
                mine.into_iter()
                    .find(|a| a.association_id.as_deref() == Some(id)),
                IdKind::Association,
                id,
            ),
        };
        found.ok_or_else(|| CoreError::NotFound {
            kind,
            ids: vec![id.to_string()],
        })
    }

    /// After an address changed hands: the instance it left (if any, and
    /// still alive) gets a new public address from the pool, and the nodes
    /// hear of it.
    fn address_moved(&self, from: Option<&str>) {
        if let Some(Ok(Some(r))) = from.map(|id| self.instances.get(id)) {
            if !r.state.is_ending() {
                self.give_public_ip(&r.account_id, &r.instance_id);
            }
        }
        self.firewall_changed.notify_one();
    }

    /// Allocates an address to the account.
    pub fn allocate_address(&self, account_id: &str, dry_run: bool) -> Result<Address, CoreError> {
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let a = self
            .addresses
            .allocate(account_id)?
            .ok_or(CoreError::AddressLimit)?;
        tracing::info!(public_ip = %a.public_ip, account_id, "address allocated");
        Ok(a)
    }

    /// Moves the address to the account's instance `instance_id` (from
    /// wherever it was); returns the association id.
    pub fn associate_address(
        &self,
        account_id: &str,
        which: AddressRef<'_>,
        instance_id: &str,
        dry_run: bool,
    ) -> Result<String, CoreError> {
        let address = self.own_address(account_id, which)?;
        let instance = self
            .own_instances(account_id, &[instance_id.to_string()])?
            .remove(0);
        if matches!(
            instance.state,
            InstanceState::Terminated | InstanceState::ShuttingDown
        ) {
            return Err(CoreError::NotNow(instance_id.to_string()));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let association = self.addresses.associate(&address.public_ip, instance_id)?;
        tracing::info!(public_ip = %address.public_ip, instance_id, "address associated");
        self.address_moved(
            address
                .instance_id
                .as_deref()
                .filter(|from| *from != instance_id),
        );
        Ok(association)
    }

    /// Takes the address off its instance.
    pub fn disassociate_address(
        &self,
        account_id: &str,
        which: AddressRef<'_>,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let address = self.own_address(account_id, which)?;
        if dry_run {
            return Err(CoreError::DryRun);
        }
        self.addresses.disassociate(&address.public_ip)?;
        tracing::info!(public_ip = %address.public_ip, "address disassociated");
        self.address_moved(address.instance_id.as_deref());
        Ok(())
    }

    /// Gives the address back to the pool (disassociated first, as in
    /// EC2-Classic).
    pub fn release_address(
        &self,
        account_id: &str,
        which: AddressRef<'_>,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let address = self.own_address(account_id, which)?;
        if dry_run {
            return Err(CoreError::DryRun);
        }
        self.addresses.release(&address.public_ip)?;
        self.tags.forget(&address.allocation_id)?;
        tracing::info!(public_ip = %address.public_ip, "address released");
        self.address_moved(address.instance_id.as_deref());
        Ok(())
    }
}
