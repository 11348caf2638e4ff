//! Checkpoint and revert: CreateReplaceRootVolumeTask puts an EBS-backed
//! instance's root back to its launch state (the snapshot its root was made
//! from), to a snapshot of its root, or to an image's root snapshot. A new
//! volume is made from the snapshot; the instance is stopped, its old root
//! detached and the new one attached as its root device, and it starts
//! again. It keeps its id, addresses and other volumes; the old root stays
//! (`available`) unless DeleteReplacedRootVolume.

use std::time::Duration;

use common::time;

use super::{describe::Paging, Cloud, CoreError};
use crate::{
    images::ImageKind,
    instances::InstanceState,
    volumes::{Attachment, ReplaceRootTask, VolumeRecord, VolumeState},
};

/// A CreateReplaceRootVolumeTask request.
#[derive(Debug, Clone, Default)]
pub struct ReplaceRootRequest {
    pub account_id: String,
    pub instance_id: String,
    pub snapshot_id: Option<String>,
    pub image_id: Option<String>,
    pub delete_replaced: bool,
}

impl Cloud {
    /// CreateReplaceRootVolumeTask (see the module's documentation).
    pub async fn replace_root_volume(
        &self,
        req: ReplaceRootRequest,
        dry_run: bool,
    ) -> Result<ReplaceRootTask, CoreError> {
        let r = self
            .own_instances(&req.account_id, std::slice::from_ref(&req.instance_id))?
            .remove(0);
        let Some(root_device) = r.root_device.clone() else {
            return Err(CoreError::Unsupported(format!(
                "The instance '{}' does not have an 'ebs' root device type: its root volume cannot be replaced.",
                r.instance_id
            )));
        };
        if !matches!(r.state, InstanceState::Running | InstanceState::Stopped) {
            return Err(CoreError::IncorrectState {
                id: r.instance_id.clone(),
                wanted: "given a new root volume",
            });
        }
        if self.root_tasks.list()?.iter().any(|t| {
            t.instance_id == r.instance_id && matches!(t.state.as_str(), "pending" | "in-progress")
        }) {
            return Err(CoreError::IncorrectVolumeState(format!(
                "A root volume replacement of '{}' is in progress.",
                r.instance_id
            )));
        }
        let old = self
            .volumes
            .of(&req.account_id)?
            .into_iter()
            .find(|v| {
                v.attachment.as_ref().is_some_and(|a| {
                    a.instance_id == r.instance_id
                        && a.device == root_device
                        && a.state == "attached"
                })
            })
            .ok_or_else(|| {
                CoreError::IncorrectVolumeState(format!(
                    "The root volume of '{}' is not attached.",
                    r.instance_id
                ))
            })?;
        let snapshot_id = match (&req.snapshot_id, &req.image_id) {
            (Some(_), Some(_)) => {
                return Err(CoreError::Combination(
                    "Give a SnapshotId or an ImageId, not both.".into(),
                ))
            }
            (Some(s), None) => {
                let snap = self.restorable_snapshot(&req.account_id, s)?;
                if snap.volume_id != old.volume_id && old.snapshot_id.as_deref() != Some(s) {
                    return Err(CoreError::InvalidValue {
                        param: "SnapshotId",
                        value: s.clone(),
                        why: format!(
                            "The snapshot must be of the instance's root volume {}.",
                            old.volume_id
                        ),
                    });
                }
                snap.snapshot_id
            }
            (None, Some(i)) => {
                let image = self.launchable_image(&req.account_id, i, ImageKind::Machine)?;
                image
                    .ebs_root()
                    .and_then(|e| e.snapshot_id.clone())
                    .ok_or_else(|| CoreError::InvalidValue {
                        param: "ImageId",
                        value: i.clone(),
                        why: "The image is not EBS-backed.".into(),
                    })?
            }
            (None, None) => old.snapshot_id.clone().ok_or_else(|| {
                CoreError::Unsupported(format!(
                    "The root volume {} was not made from a snapshot: give a SnapshotId.",
                    old.volume_id
                ))
            })?,
        };
        if !self.storage.serves(&r.zone) {
            return Err(CoreError::Unavailable(format!(
                "no storage controller serves {} now",
                r.zone
            )));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let task = ReplaceRootTask {
            task_id: common::ids::resource_id("replacevol"),
            account_id: req.account_id.clone(),
            instance_id: r.instance_id.clone(),
            state: "pending".into(),
            start_ms: time::unix_ms(),
            complete_ms: None,
            snapshot_id,
            image_id: req.image_id.clone(),
            snapshot_asked: req.snapshot_id.is_some(),
            delete_replaced: req.delete_replaced,
            old_volume_id: old.volume_id.clone(),
            new_volume_id: None,
            reason: String::new(),
        };
        self.root_tasks.put(&task)?;
        tracing::info!(task = %task.task_id, instance_id = %r.instance_id, snapshot = %task.snapshot_id, "replacing a root volume");
        let cloud = self.clone();
        let id = task.task_id.clone();
        tokio::spawn(async move { cloud.carry_out_root_task(&id).await });
        Ok(task)
    }

    /// DescribeReplaceRootVolumeTasks: the account's tasks, by id and by
    /// `instance-id` filter, in id order; a page and the next one's token.
    pub fn describe_root_tasks(
        &self,
        account_id: &str,
        ids: &[String],
        instance_ids: &[String],
        paging: &Paging,
    ) -> Result<(Vec<ReplaceRootTask>, Option<String>), CoreError> {
        let mut tasks: Vec<ReplaceRootTask> = self
            .root_tasks
            .list()?
            .into_iter()
            .filter(|t| t.account_id == account_id)
            .filter(|t| ids.is_empty() || ids.contains(&t.task_id))
            .filter(|t| instance_ids.is_empty() || instance_ids.contains(&t.instance_id))
            .filter(|t| paging.token.as_ref().is_none_or(|after| &t.task_id > after))
            .collect();
        tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        let mut next = None;
        if let Some(max) = paging.max {
            if tasks.len() > max {
                tasks.truncate(max);
                next = tasks.last().map(|t| t.task_id.clone());
            }
        }
        Ok((tasks, next))
    }

    fn set_task(&self, id: &str, change: impl FnOnce(&mut ReplaceRootTask)) {
        if let Ok(Some(mut t)) = self.root_tasks.get(&id.to_string()) {
            change(&mut t);
            if let Err(e) = self.root_tasks.put(&t) {
                tracing::error!(task = %id, error = %e, "task not recorded");
            }
        }
    }

    /// Waits (up to `secs`) until `check` holds of volume `id`.
    async fn wait_volume(
        &self,
        id: &str,
        secs: u64,
        what: &str,
        check: impl Fn(&VolumeRecord) -> bool,
    ) -> Result<(), String> {
        for _ in 0..secs * 4 {
            match self.volumes.get(id) {
                Ok(Some(v)) if check(&v) => return Ok(()),
                Ok(Some(v)) if v.state == VolumeState::Error => {
                    return Err(format!("{id} failed: {}", v.reason))
                }
                Ok(None) => return Err(format!("{id} is gone")),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        Err(format!("{id} did not become {what}"))
    }

    /// Carries out root task `id` to its end.
    async fn carry_out_root_task(&self, id: &str) {
        let Ok(Some(task)) = self.root_tasks.get(&id.to_string()) else {
            return;
        };
        self.set_task(id, |t| t.state = "in-progress".into());
        let outcome = self.swap_root(&task).await;
        let now = time::unix_ms();
        match outcome {
            Ok(()) => {
                tracing::info!(task = %id, instance_id = %task.instance_id, "root volume replaced");
                self.set_task(id, |t| {
                    t.state = "succeeded".into();
                    t.complete_ms = Some(now);
                });
            }
            Err(why) => {
                tracing::warn!(task = %id, instance_id = %task.instance_id, %why, "root volume not replaced");
                self.set_task(id, |t| {
                    t.state = "failed".into();
                    t.reason = why;
                    t.complete_ms = Some(now);
                });
            }
        }
    }

    async fn swap_root(&self, task: &ReplaceRootTask) -> Result<(), String> {
        let account = &task.account_id;
        let ids = std::slice::from_ref(&task.instance_id);
        let r = self
            .instances
            .get(&task.instance_id)
            .map_err(|e| e.to_string())?
            .ok_or("the instance is gone")?;
        let old = self
            .volumes
            .get(&task.old_volume_id)
            .map_err(|e| e.to_string())?
            .ok_or("the old root volume is gone")?;
        let old_attachment = old.attachment.clone().ok_or("the old root is detached")?;
        let snapshot = self
            .snapshots
            .get(&task.snapshot_id)
            .map_err(|e| e.to_string())?
            .ok_or("the snapshot is gone")?;
        // 1. The new root, made from the snapshot.
        let new = VolumeRecord {
            volume_id: common::ids::resource_id("vol"),
            account_id: account.clone(),
            zone: old.zone.clone(),
            size_gib: old.size_gib.max(snapshot.volume_size_gib),
            snapshot_id: Some(snapshot.snapshot_id.clone()),
            volume_type: old.volume_type.clone(),
            state: VolumeState::Creating,
            created_ms: time::unix_ms(),
            attachment: None,
            reason: String::new(),
            client_token: None,
            auto_enable_io: false,
        };
        self.volumes.insert(&new).map_err(|e| e.to_string())?;
        let new_id = new.volume_id.clone();
        self.set_task(&task.task_id, |t| t.new_volume_id = Some(new_id.clone()));
        self.follow_volume(&new_id).await;
        self.wait_volume(&new_id, 600, "available", |v| {
            v.state == VolumeState::Available
        })
        .await?;
        // 2. The instance stopped.
        let was_running = r.state != InstanceState::Stopped;
        if was_running {
            self.stop_or_start(account, ids, true, false)
                .await
                .map_err(|e| format!("the instance did not stop: {e}"))?;
            self.wait_instance(&task.instance_id, InstanceState::Stopped)
                .await?;
        }
        // 3. The old root detached, the new one attached in its place.
        let swapped = async {
            self.volumes
                .put(&VolumeRecord {
                    attachment: Some(Attachment {
                        state: "detaching".into(),
                        ..old_attachment.clone()
                    }),
                    ..old.clone()
                })
                .map_err(|e| e.to_string())?;
            self.carry_out_attachment(&old.volume_id).await;
            self.wait_volume(&old.volume_id, 120, "detached", |v| v.attachment.is_none())
                .await?;
            let attach = |volume: &VolumeRecord| VolumeRecord {
                state: VolumeState::InUse,
                attachment: Some(Attachment {
                    state: "attaching".into(),
                    attach_ms: time::unix_ms(),
                    ..old_attachment.clone()
                }),
                ..volume.clone()
            };
            // A refusal may be the node still settling the stop: asked a
            // few times.
            let mut attached = Err(String::from("not tried"));
            for _ in 0..5 {
                let made = self
                    .volumes
                    .get(&new_id)
                    .map_err(|e| e.to_string())?
                    .ok_or("the new root is gone")?;
                self.volumes
                    .put(&attach(&made))
                    .map_err(|e| e.to_string())?;
                self.carry_out_attachment(&new_id).await;
                attached = self
                    .wait_volume(&new_id, 120, "attached", |v| {
                        v.attachment.is_none()
                            || v.attachment.as_ref().is_some_and(|a| a.state == "attached")
                    })
                    .await
                    .and_then(|()| match self.volumes.get(&new_id) {
                        Ok(Some(v)) if v.attachment.is_some() => Ok(()),
                        Ok(Some(v)) => Err(format!("{new_id} {}", v.reason)),
                        _ => Err(format!("{new_id} is gone")),
                    });
                if attached.is_ok() {
                    break;
                }
                tracing::info!(task = %task.task_id, why = ?attached, "the new root is not attached yet");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            if let Err(why) = attached {
                // The old root goes back.
                if let Ok(Some(back)) = self.volumes.get(&old.volume_id) {
                    let _ = self.volumes.put(&attach(&back));
                    self.carry_out_attachment(&old.volume_id).await;
                }
                return Err(why);
            }
            Ok::<_, String>(())
        }
        .await;
        if swapped.is_ok() && task.delete_replaced {
            if let Ok(Some(v)) = self.volumes.get(&old.volume_id) {
                let _ = self.volumes.put(&VolumeRecord {
                    state: VolumeState::Deleting,
                    ..v
                });
                self.carry_out_volume(&old.volume_id).await;
            }
        }
        // 4. Running again, as it was.
        if was_running {
            if let Err(e) = self.stop_or_start(account, ids, false, false).await {
                return Err(format!("the instance did not start again: {e}"));
            }
        }
        swapped
    }
}
