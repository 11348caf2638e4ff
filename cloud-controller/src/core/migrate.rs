//! Live migration of a running instance to another node of its cluster
//! (Eucalyptus' MigrateInstances, for the cloud's administrators): the
//! instance is described to its cluster as a launch describes it, and the
//! cluster moves it.

use proto::{ImageRef, InstanceSpec};

use super::{Cloud, CoreError, IdKind};
use crate::instances::InstanceState;

/// A migration that happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    pub instance_id: String,
    pub source: String,
    pub destination: String,
    pub seconds: f64,
}

impl Cloud {
    /// Moves running instance `id` (of any account) live to another node of
    /// its cluster: one of `destinations`, or the cluster's choice.
    pub async fn migrate_instance(
        &self,
        id: &str,
        destinations: &[String],
    ) -> Result<Migrated, CoreError> {
        let not_found = || CoreError::NotFound {
            kind: IdKind::Instance,
            ids: vec![id.to_string()],
        };
        let r = self.instances.get(id)?.ok_or_else(not_found)?;
        if r.state != InstanceState::Running {
            return Err(CoreError::IncorrectState {
                id: id.to_string(),
                wanted: "running",
            });
        }
        let image = |image_id: &str, kind: IdKind| -> Result<ImageRef, CoreError> {
            let i = self
                .images
                .get(image_id)?
                .ok_or_else(|| CoreError::NotFound {
                    kind,
                    ids: vec![image_id.to_string()],
                })?;
            Ok(super::launch::image_ref(&i))
        };
        let itype = self
            .instances
            .instance_type(&r.instance_type)?
            .ok_or_else(|| {
                CoreError::Unavailable(format!("instance type {} is gone", r.instance_type))
            })?;
        let walrus = self
            .registry
            .known_walrus()
            .ok_or_else(|| CoreError::Unavailable("no Walrus is known".into()))?;
        let spec = InstanceSpec {
            instance_id: r.instance_id.clone(),
            account_id: r.account_id.clone(),
            instance_type: itype.name.clone(),
            cores: itype.cores,
            memory_mib: itype.memory_mib,
            disk_gib: itype.disk_gib,
            image: Some(image(&r.image_id, IdKind::Image)?),
            kernel: r
                .kernel_id
                .as_deref()
                .map(|k| image(k, IdKind::Kernel))
                .transpose()?,
            ramdisk: r
                .ramdisk_id
                .as_deref()
                .map(|k| image(k, IdKind::Ramdisk))
                .transpose()?,
            security_groups: r.security_groups.clone(),
            firewall: self.firewalls_of(std::slice::from_ref(&r))?.remove(id),
            mac: r.mac.clone(),
            private_ip: r.private_ip.clone(),
            ..Default::default()
        };
        let done = self
            .clusters
            .migrate(&r.cluster, spec, &walrus, destinations)
            .await
            .map_err(|e| match e {
                super::cluster::ClusterError::Capacity(m) => CoreError::Capacity(m),
                e => CoreError::Unavailable(e.to_string()),
            })?;
        tracing::info!(instance_id = %id, source = %done.source, destination = %done.destination, seconds = done.seconds, "instance migrated");
        Ok(done)
    }
}
