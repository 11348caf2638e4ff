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

/// An instance's place in [`Cloud::migrating`], given up when its
/// migration ends, however it ends.
struct Migrating<'a>(&'a Cloud, &'a str);

impl Drop for Migrating<'_> {
    fn drop(&mut self) {
        self.0
            .migrating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.1);
    }
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
        {
            let mut migrating = self.migrating.lock().unwrap_or_else(|p| p.into_inner());
            if migrating.contains_key(id) {
                return Err(CoreError::Unavailable(format!("{id} is migrating already")));
            }
            migrating.insert(id.to_string(), r.node.clone());
        }
        let _migrating = Migrating(self, id);
        self.move_instance(&r, destinations).await
    }

    async fn move_instance(
        &self,
        r: &crate::instances::InstanceRecord,
        destinations: &[String],
    ) -> Result<Migrated, CoreError> {
        let id = r.instance_id.as_str();
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
            firewall: self.firewalls_of(std::slice::from_ref(r))?.remove(id),
            mac: r.mac.clone(),
            private_ip: r.private_ip.clone(),
            ..Default::default()
        };
        let cluster_error = |e: super::cluster::ClusterError| match e {
            super::cluster::ClusterError::Capacity(m) => CoreError::Capacity(m),
            e => CoreError::Unavailable(e.to_string()),
        };
        // Its volumes (the root one of an EBS-backed instance too) go on
        // from the same storage controller: exported to the target before
        // the move, and handed over to it after (or taken back from it when
        // the move fails).
        let volumes: Vec<crate::volumes::VolumeRecord> = self
            .volumes
            .list()?
            .into_iter()
            .filter(|v| v.attachment.as_ref().is_some_and(|a| a.instance_id == id))
            .collect();
        if volumes.is_empty() {
            let done = self
                .clusters
                .migrate(&r.cluster, spec, &walrus, destinations)
                .await
                .map_err(cluster_error)?;
            return self.moved(id, done);
        }
        let mut spec = spec;
        spec.root_volume_id = volumes
            .iter()
            .find(|v| {
                v.attachment
                    .as_ref()
                    .is_some_and(|a| r.root_device.as_deref() == Some(a.device.as_str()))
            })
            .map(|v| v.volume_id.clone())
            .unwrap_or_default();
        let target = self
            .clusters
            .plan_migration(&r.cluster, id, destinations)
            .await
            .map_err(cluster_error)?;
        let target_ref = &target;
        let take_back = |exported: Vec<crate::volumes::VolumeRecord>| async move {
            for v in exported {
                if let Err(e) = self
                    .storage
                    .unexport(&v.zone, &v.volume_id, target_ref)
                    .await
                {
                    tracing::warn!(volume = %v.volume_id, error = %e, "a migration's export to its target not ended");
                }
            }
        };
        let mut exported = Vec::new();
        for v in &volumes {
            match self
                .storage
                .export_also(&v.zone, &v.volume_id, &target)
                .await
            {
                Ok(connection) => {
                    spec.volumes.push(proto::AttachedVolume {
                        volume_id: v.volume_id.clone(),
                        connection,
                        device: String::new(),
                    });
                    exported.push(v.clone());
                }
                Err(e) => {
                    take_back(exported).await;
                    return Err(CoreError::Unavailable(format!(
                        "{} could not be exported to {target}: {e}",
                        v.volume_id
                    )));
                }
            }
        }
        let done = match self
            .clusters
            .migrate(&r.cluster, spec, &walrus, std::slice::from_ref(&target))
            .await
        {
            Ok(done) => done,
            Err(e) => {
                take_back(exported).await;
                return Err(cluster_error(e));
            }
        };
        for v in &volumes {
            if let Err(e) = self
                .storage
                .unexport(&v.zone, &v.volume_id, &done.source)
                .await
            {
                tracing::warn!(volume = %v.volume_id, source = %done.source, error = %e, "a migrated instance's volume still exported to its source");
            }
        }
        self.moved(id, done)
    }

    /// Records where migrated instance `id` runs now.
    fn moved(&self, id: &str, done: Migrated) -> Result<Migrated, CoreError> {
        // Where it runs now (the cluster's reports say so too, later).
        self.instances
            .set_state(id, InstanceState::Running, "", Some(&done.destination))?;
        tracing::info!(instance_id = %id, source = %done.source, destination = %done.destination, seconds = done.seconds, "instance migrated");
        Ok(done)
    }
}

/// A node to migrate instances off.
fn unknown_node(node: &str) -> CoreError {
    CoreError::InvalidValue {
        param: "node",
        value: node.to_string(),
        why: "no node of that name in this cloud".into(),
    }
}

impl Cloud {
    /// The running instances on `node`, oldest first.
    pub fn running_on(&self, node: &str) -> Result<Vec<String>, CoreError> {
        let mut on: Vec<_> = self
            .instances
            .list()?
            .into_iter()
            .filter(|i| i.node == node && i.state == InstanceState::Running)
            .collect();
        on.sort_by(|a, b| (a.launch_ms, &a.instance_id).cmp(&(b.launch_ms, &b.instance_id)));
        Ok(on.into_iter().map(|i| i.instance_id).collect())
    }

    /// Moves every running instance off `node`, one at a time (each move
    /// takes the network and both nodes' time), telling `progress` of each
    /// as it ends; one that does not move runs on where it was and the
    /// rest are still tried. How many moved.
    pub async fn migrate_host(
        &self,
        node: &str,
        destinations: &[String],
        progress: &mut (dyn FnMut(&str, &Result<Migrated, CoreError>) + Send),
    ) -> Result<usize, CoreError> {
        self.registry
            .cluster_of_node(node)
            .ok_or_else(|| unknown_node(node))?;
        let mut moved = 0;
        for id in self.running_on(node)? {
            let done = self.migrate_instance(&id, destinations).await;
            moved += usize::from(done.is_ok());
            progress(&id, &done);
        }
        Ok(moved)
    }

    /// Takes `node` out of placement for maintenance (no launch and no
    /// migration goes to it until [`Self::enable_node`]) and moves every
    /// running instance off it. Whatever could not move is in `progress`.
    pub async fn evacuate_node(
        &self,
        node: &str,
        destinations: &[String],
        progress: &mut (dyn FnMut(&str, &Result<Migrated, CoreError>) + Send),
    ) -> Result<usize, CoreError> {
        self.set_node_disabled(node, true).await?;
        let running = self.running_on(node)?;
        let _ = self.events.record(crate::events::Event {
            unix_ms: common::time::unix_ms(),
            seq: 0,
            kind: "evacuation".into(),
            cluster: self
                .registry
                .cluster_of_node(node)
                .map(|(c, _)| c)
                .unwrap_or_default(),
            node: node.to_string(),
            instance_id: String::new(),
            message: format!(
                "{node} taken out of placement; moving {} running instance(s) off it",
                running.len()
            ),
        });
        self.migrate_host(node, destinations, progress).await
    }

    /// Puts `node` back in placement.
    pub async fn enable_node(&self, node: &str) -> Result<(), CoreError> {
        self.set_node_disabled(node, false).await
    }

    async fn set_node_disabled(&self, node: &str, disabled: bool) -> Result<(), CoreError> {
        let (cluster, _) = self
            .registry
            .cluster_of_node(node)
            .ok_or_else(|| unknown_node(node))?;
        self.clusters
            .set_node_disabled(&cluster, node, disabled)
            .await
            .map_err(|e| CoreError::Unavailable(e.to_string()))
    }
}
