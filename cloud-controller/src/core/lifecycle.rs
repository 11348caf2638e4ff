//! An instance's life after launch: terminate, stop, start, reboot, its
//! console, and the task that carries out what a tier below could not do
//! when it was asked (every such request is recorded first, durably).

use std::time::Duration;

use common::time;

use super::{cluster::Power, Cloud, ClusterError, CoreError, IdKind};
use crate::instances::{InstanceRecord, InstanceState};

/// The reason a user's terminate or stop shows.
const USER_SHUTDOWN: &str = "Client.UserInitiatedShutdown: User initiated shutdown";

/// An instance's state before and after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub instance_id: String,
    pub previous: InstanceState,
    pub current: InstanceState,
}

/// What ModifyInstanceAttribute changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceChange {
    /// Termination protection on or off.
    Protection(bool),
    /// The instance type, by name.
    Type(String),
}

impl Cloud {
    /// Instances `ids` of account `account_id`; every one must be well
    /// formed and the account's.
    pub fn own_instances(
        &self,
        account_id: &str,
        ids: &[String],
    ) -> Result<Vec<InstanceRecord>, CoreError> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            if !IdKind::Instance.well_formed(id) {
                return Err(CoreError::Malformed {
                    kind: IdKind::Instance,
                    id: id.clone(),
                });
            }
            match self.instances.get(id)? {
                Some(r) if r.account_id == account_id => out.push(r),
                _ => missing.push(id.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(CoreError::NotFound {
                kind: IdKind::Instance,
                ids: missing,
            });
        }
        Ok(out)
    }

    /// MonitorInstances / UnmonitorInstances: the account's instances
    /// `ids` get 1-minute metrics (on) or 5-minute ones.
    pub fn set_monitoring(
        &self,
        account_id: &str,
        ids: &[String],
        on: bool,
    ) -> Result<Vec<InstanceRecord>, CoreError> {
        let records = self.own_instances(account_id, ids)?;
        for r in &records {
            self.instances.set_monitoring(&r.instance_id, on)?;
        }
        Ok(records)
    }

    /// ModifyInstanceAttribute: termination protection (in any state), or
    /// the type of a stopped instance (its cores and memory change at its
    /// next start; its node must have room for them).
    pub async fn modify_instance(
        &self,
        account_id: &str,
        id: &str,
        change: InstanceChange,
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let Some(r) = self.own_instances(account_id, &[id.to_string()])?.pop() else {
            return Err(CoreError::NotFound {
                kind: IdKind::Instance,
                ids: vec![id.to_string()],
            });
        };
        match change {
            InstanceChange::Protection(on) => {
                if dry_run {
                    return Err(CoreError::DryRun);
                }
                self.instances.set_termination_protection(id, on)?;
            }
            InstanceChange::Type(wanted) => {
                let itype = self.instances.instance_type(&wanted)?.ok_or_else(|| {
                    CoreError::InvalidValue {
                        param: "InstanceType",
                        value: wanted.clone(),
                        why: "No such instance type.".into(),
                    }
                })?;
                if r.state != InstanceState::Stopped {
                    return Err(CoreError::NotStopped(id.to_string()));
                }
                if dry_run {
                    return Err(CoreError::DryRun);
                }
                if itype.name == r.instance_type {
                    return Ok(());
                }
                self.clusters
                    .resize(&r.cluster, id, &itype)
                    .await
                    .map_err(|e| match e {
                        ClusterError::Capacity(_) => CoreError::Capacity(format!(
                            "There is not enough capacity on the instance's node for {}.",
                            itype.name
                        )),
                        e => CoreError::Unavailable(e.to_string()),
                    })?;
                self.instances.set_type(id, &itype.name)?;
                tracing::info!(instance_id = %id, from = %r.instance_type, to = %itype.name, "instance resized");
            }
        }
        Ok(())
    }

    /// Terminates the account's instances `ids`: each shows
    /// `shutting-down` (durably) and is terminated below in the background.
    pub async fn terminate(
        &self,
        account_id: &str,
        ids: &[String],
        dry_run: bool,
    ) -> Result<Vec<StateChange>, CoreError> {
        let records = self.own_instances(account_id, ids)?;
        if let Some(r) = records
            .iter()
            .find(|r| r.disable_api_termination && r.state != InstanceState::Terminated)
        {
            return Err(CoreError::OperationNotPermitted(format!(
                "The instance '{}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again.",
                r.instance_id
            )));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let mut changes = Vec::new();
        for r in &records {
            let current = if r.state == InstanceState::Terminated {
                InstanceState::Terminated
            } else {
                self.instances.set_state(
                    &r.instance_id,
                    InstanceState::ShuttingDown,
                    USER_SHUTDOWN,
                    None,
                )?;
                self.addresses.instance_gone(&r.instance_id)?;
                self.firewall_changed.notify_one();
                let cloud = self.clone();
                let (cluster, id) = (r.cluster.clone(), r.instance_id.clone());
                tokio::spawn(async move { cloud.carry_out_terminate(&cluster, id).await });
                InstanceState::ShuttingDown
            };
            changes.push(StateChange {
                instance_id: r.instance_id.clone(),
                previous: r.state,
                current,
            });
        }
        Ok(changes)
    }

    /// Asks the cluster to terminate `id` and records it terminated once
    /// done. A failure (the node or cluster is down) leaves it
    /// `shutting-down`: the intent is durable and [`Cloud::finish_requests`]
    /// tries again.
    async fn carry_out_terminate(&self, cluster: &str, id: String) -> bool {
        match self.clusters.terminate(cluster, &id).await {
            Ok(()) => {
                let _ =
                    self.instances
                        .set_state(&id, InstanceState::Terminated, USER_SHUTDOWN, None);
                true
            }
            Err(e) => {
                tracing::warn!(instance_id = %id, error = %e, "terminate failed; it stays shutting-down and is tried again");
                false
            }
        }
    }

    /// Stops (or starts) the account's instances `ids`. The intent is
    /// recorded first; a node that cannot be reached now gets it when it
    /// can. A refusal below undoes the intent and fails the call.
    pub async fn stop_or_start(
        &self,
        account_id: &str,
        ids: &[String],
        stop: bool,
        dry_run: bool,
    ) -> Result<Vec<StateChange>, CoreError> {
        use InstanceState::*;
        let records = self.own_instances(account_id, ids)?;
        for r in &records {
            let ok = if stop {
                matches!(r.state, Running | Pending | Stopping | Stopped)
            } else {
                matches!(r.state, Stopped | Running | Pending)
            };
            if !ok {
                return Err(CoreError::IncorrectState {
                    id: r.instance_id.clone(),
                    wanted: if stop { "stopped" } else { "started" },
                });
            }
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let mut changes = Vec::new();
        for r in &records {
            let noop = if stop {
                matches!(r.state, Stopping | Stopped)
            } else {
                matches!(r.state, Running | Pending)
            };
            if noop {
                changes.push(StateChange {
                    instance_id: r.instance_id.clone(),
                    previous: r.state,
                    current: r.state,
                });
                continue;
            }
            let (next, desired) = if stop {
                (Stopping, Stopped)
            } else {
                (Pending, Running)
            };
            self.instances.request(
                &r.instance_id,
                next,
                if stop { USER_SHUTDOWN } else { "" },
                desired,
            )?;
            if let Err(e) = self.send_power(r, stop).await {
                if !e.retry() {
                    self.instances
                        .set_state(&r.instance_id, r.state, &r.state_reason, None)?;
                    self.instances.forget_request(&r.instance_id)?;
                    return Err(CoreError::Unavailable(e.to_string()));
                }
                tracing::warn!(instance_id = %r.instance_id, error = %e, "the node cannot be reached: the request is kept and carried out when it can");
            }
            changes.push(StateChange {
                instance_id: r.instance_id.clone(),
                previous: r.state,
                current: next,
            });
            if !stop {
                // A node that restarted while it was stopped knows its
                // rules from the next push.
                self.firewall_changed.notify_one();
            }
        }
        Ok(changes)
    }

    async fn send_power(&self, r: &InstanceRecord, stop: bool) -> Result<(), ClusterError> {
        let what = if stop { Power::Stop } else { Power::Start };
        self.clusters.power(&r.cluster, &r.instance_id, what).await
    }

    /// Reboots the account's running instances `ids`.
    pub async fn reboot(
        &self,
        account_id: &str,
        ids: &[String],
        dry_run: bool,
    ) -> Result<(), CoreError> {
        let records = self.own_instances(account_id, ids)?;
        if let Some(r) = records.iter().find(|r| r.state != InstanceState::Running) {
            return Err(CoreError::IncorrectState {
                id: r.instance_id.clone(),
                wanted: "rebooted",
            });
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        for r in &records {
            self.clusters
                .power(&r.cluster, &r.instance_id, Power::Reboot)
                .await
                .map_err(|e| CoreError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    /// Opens the serial console of the account's running instance `id`:
    /// bytes sent on `typed` go to the guest, what it writes comes back.
    pub async fn open_console(
        &self,
        account_id: &str,
        id: &str,
        typed: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, CoreError> {
        let r = self.own_instances(account_id, &[id.to_string()])?.remove(0);
        if r.state != InstanceState::Running || r.node.is_empty() {
            return Err(CoreError::IncorrectState {
                id: r.instance_id,
                wanted: "reached on its serial console",
            });
        }
        self.clusters
            .open_console(&r.cluster, id, typed)
            .await
            .map_err(|e| CoreError::Unavailable(e.to_string()))
    }

    /// The account's instance `id`'s serial console so far (nothing once
    /// it is gone, or before it has a node).
    pub async fn console_output(
        &self,
        account_id: &str,
        id: &str,
        dry_run: bool,
    ) -> Result<Vec<u8>, CoreError> {
        let r = self.own_instances(account_id, &[id.to_string()])?.remove(0);
        if dry_run {
            return Err(CoreError::DryRun);
        }
        if r.state == InstanceState::Terminated || r.node.is_empty() {
            return Ok(Vec::new());
        }
        match self.clusters.console_output(&r.cluster, id).await {
            Ok(o) => Ok(o),
            Err(ClusterError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(CoreError::Unavailable(e.to_string())),
        }
    }

    /// Carries out, forever, every termination that has not been confirmed
    /// (an instance `shutting-down` for more than `every`), and every stop
    /// or start its node has not shown yet: its node may have been down, or
    /// a tier restarted, when it was asked for. Addresses of instances that
    /// ended without a TerminateInstances go back to the pool. Run it in
    /// its own task.
    pub async fn finish_requests(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Ok(records) = self.instances.list() else {
                continue;
            };
            let held = self.addresses.by_instance().unwrap_or_default();
            for r in records
                .iter()
                .filter(|r| r.state == InstanceState::Terminated)
            {
                if held.contains_key(&r.instance_id)
                    && self.addresses.instance_gone(&r.instance_id).is_ok()
                {
                    tracing::info!(instance_id = %r.instance_id, "a terminated instance's address released");
                    self.firewall_changed.notify_one();
                }
            }
            let now = time::unix_ms();
            for r in records {
                let due = now - r.changed_ms > every.as_millis() as i64;
                if r.state == InstanceState::ShuttingDown && due {
                    if self
                        .carry_out_terminate(&r.cluster, r.instance_id.clone())
                        .await
                    {
                        tracing::info!(instance_id = %r.instance_id, "a termination asked for earlier is done");
                    }
                    continue;
                }
                // A stop or start its node has not shown yet: ask again.
                let Some(desired) = r.desired else {
                    continue;
                };
                if !due || r.state == desired || r.state == InstanceState::Terminated {
                    continue;
                }
                match self.send_power(&r, desired == InstanceState::Stopped).await {
                    Ok(()) => {
                        tracing::info!(instance_id = %r.instance_id, %desired, "a stop or start asked for earlier was sent again")
                    }
                    Err(e) if e.retry() => {
                        tracing::debug!(instance_id = %r.instance_id, error = %e, "the node still cannot be reached")
                    }
                    Err(e) => {
                        tracing::warn!(instance_id = %r.instance_id, error = %e, "a stop or start asked for earlier cannot be done: dropped");
                        let _ = self.instances.forget_request(&r.instance_id);
                    }
                }
            }
        }
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
    async fn terminate_stop_and_start_follow_the_rules_and_reach_the_cluster() {
        let fake = Arc::new(FakeCluster::new(1, 8));
        let (cloud, _dir) = test_cloud(fake.clone());
        let me = system_account(&cloud);
        let launched = launch(
            &cloud,
            &me,
            2,
            LaunchRequest {
                disable_api_termination: true,
                ..Default::default()
            },
        )
        .await;
        let ids: Vec<String> = launched
            .records
            .iter()
            .map(|r| r.instance_id.clone())
            .collect();
        // Another account sees none of them.
        cloud.accounts.create("alice").expect("alice");
        let alice = cloud.accounts.find("alice").expect("alice").account_id;
        assert!(matches!(
            cloud.terminate(&alice, &ids, false).await,
            Err(CoreError::NotFound {
                kind: IdKind::Instance,
                ..
            })
        ));
        assert!(matches!(
            cloud.terminate(&me, &["i-nothex!".into()], false).await,
            Err(CoreError::Malformed { .. })
        ));
        // Protected: refused, nothing changes.
        assert!(matches!(
            cloud.terminate(&me, &ids, false).await,
            Err(CoreError::OperationNotPermitted(_))
        ));
        // Pending cannot be started again, but can be stopped.
        let stopped = cloud
            .stop_or_start(&me, &ids[..1], true, false)
            .await
            .expect("stop");
        assert_eq!(stopped[0].current, InstanceState::Stopping);
        let r = cloud.instances.get(&ids[0]).expect("get").expect("there");
        assert_eq!(
            r.desired,
            Some(InstanceState::Stopped),
            "the intent is recorded"
        );
        assert!(matches!(
            cloud.reboot(&me, &ids[..1], false).await,
            Err(CoreError::IncorrectState { .. })
        ));
        for id in &ids {
            cloud
                .instances
                .set_termination_protection(id, false)
                .expect("unprotect");
        }
        assert_eq!(
            cloud.terminate(&me, &ids, true).await,
            Err(CoreError::DryRun)
        );
        let changes = cloud.terminate(&me, &ids, false).await.expect("terminate");
        assert!(changes
            .iter()
            .all(|c| c.current == InstanceState::ShuttingDown));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let mut terminated = fake.state().terminated;
        terminated.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(terminated, want, "the cluster was told");
        for id in &ids {
            let r = cloud.instances.get(id).expect("get").expect("there");
            assert_eq!(r.state, InstanceState::Terminated);
        }
    }

    #[tokio::test]
    async fn a_terminate_the_cluster_cannot_take_stays_shutting_down() {
        let fake = Arc::new(FakeCluster::new(1, 8));
        let (cloud, _dir) = test_cloud(fake.clone());
        let me = system_account(&cloud);
        let launched = launch(&cloud, &me, 1, LaunchRequest::default()).await;
        let id = launched.records[0].instance_id.clone();
        fake.set_down(true);
        cloud
            .terminate(&me, std::slice::from_ref(&id), false)
            .await
            .expect("terminate is accepted");
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let r = cloud.instances.get(&id).expect("get").expect("there");
        assert_eq!(r.state, InstanceState::ShuttingDown, "kept, to be retried");
        fake.set_down(false);
        assert!(cloud.carry_out_terminate("cluster-1", id.clone()).await);
        let r = cloud.instances.get(&id).expect("get").expect("there");
        assert_eq!(r.state, InstanceState::Terminated);
    }

    #[tokio::test]
    async fn a_type_changes_only_while_stopped_and_protection_guards_terminate() {
        let (cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 8)));
        let me = system_account(&cloud);
        let id = launch(&cloud, &me, 1, LaunchRequest::default())
            .await
            .records[0]
            .instance_id
            .clone();
        let resize = |t: &str| InstanceChange::Type(t.to_string());
        assert_eq!(
            cloud
                .modify_instance(&me, &id, resize("m1.large"), false)
                .await,
            Err(CoreError::NotStopped(id.clone()))
        );
        assert!(matches!(
            cloud
                .modify_instance(&me, &id, resize("m9.huge"), false)
                .await,
            Err(CoreError::InvalidValue {
                param: "InstanceType",
                ..
            })
        ));
        cloud
            .instances
            .set_state(&id, InstanceState::Stopped, "", None)
            .expect("stopped");
        cloud
            .modify_instance(&me, &id, resize("m1.large"), false)
            .await
            .expect("resized");
        let r = cloud.instances.get(&id).expect("get").expect("there");
        assert_eq!(r.instance_type, "m1.large");
        // Another account cannot touch it.
        assert!(matches!(
            cloud
                .modify_instance("000000000222", &id, InstanceChange::Protection(true), false)
                .await,
            Err(CoreError::NotFound { .. })
        ));
        cloud
            .modify_instance(&me, &id, InstanceChange::Protection(true), false)
            .await
            .expect("protected");
        assert!(matches!(
            cloud.terminate(&me, std::slice::from_ref(&id), false).await,
            Err(CoreError::OperationNotPermitted(_))
        ));
    }
}
