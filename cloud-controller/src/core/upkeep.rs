//! The background reconciliations: guests no record claims, and services
//! that went silent.

use crate::instances::InstanceState;
use std::time::Duration;

use common::time;

use super::{Cloud, UnknownGuest, UnknownGuestPolicy};

impl Cloud {
    /// Finds guests the nodes report that the cloud has no record of (or
    /// only a terminated one), forever: the administrator sees them in
    /// `describe-instances`, and with [`UnknownGuestPolicy::Stop`] a running
    /// one is powered off once it has been unknown for `grace`. Run it in
    /// its own task.
    pub async fn watch_unknown_guests(
        self,
        policy: UnknownGuestPolicy,
        grace: Duration,
        every: Duration,
    ) {
        let grace_ms = grace.as_millis() as i64;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Ok(records) = self.instances.list() else {
                continue;
            };
            let live: std::collections::HashSet<String> = records
                .into_iter()
                .filter(|r| r.state != InstanceState::Terminated)
                .map(|r| r.instance_id)
                .collect();
            let now = time::unix_ms();
            let mut seen = super::UnknownGuests::new();
            for view in self.registry.nodes() {
                let Some(node) = view.node else { continue };
                if node.state != proto::ServiceState::Enabled as i32 {
                    continue;
                }
                for s in node.instances.iter().chain(&node.unknown_guests) {
                    if live.contains(&s.instance_id) {
                        continue;
                    }
                    let key = (
                        view.cluster_name.clone(),
                        node.name.clone(),
                        s.instance_id.clone(),
                    );
                    let running = s.state == proto::InstanceState::Running as i32
                        || s.state == proto::InstanceState::Pending as i32;
                    seen.insert(
                        key.clone(),
                        UnknownGuest {
                            cluster: key.0,
                            node: key.1,
                            instance_id: key.2,
                            running,
                            first_seen_ms: now,
                            detail: String::new(),
                        },
                    );
                }
            }
            let mut to_stop = Vec::new();
            {
                let mut known = self
                    .unknown_guests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                for (key, guest) in seen.iter_mut() {
                    if let Some(before) = known.get(key) {
                        guest.first_seen_ms = before.first_seen_ms;
                        guest.detail = before.detail.clone();
                    } else {
                        tracing::warn!(node = %guest.node, instance_id = %guest.instance_id, "a guest the cloud has no record of");
                    }
                    let due = now - guest.first_seen_ms >= grace_ms;
                    guest.detail = match (policy, guest.running, due) {
                        (UnknownGuestPolicy::Report, _, _) => {
                            "not in the cloud's records (policy: report)".into()
                        }
                        (UnknownGuestPolicy::Stop, true, true) => {
                            to_stop.push(guest.clone());
                            "not in the cloud's records: stopping it (policy: stop)".into()
                        }
                        (UnknownGuestPolicy::Stop, true, false) => {
                            "not in the cloud's records: stopped if it stays so (policy: stop)"
                                .into()
                        }
                        (UnknownGuestPolicy::Stop, false, _) => {
                            "not in the cloud's records: stopped (policy: stop)".into()
                        }
                    };
                }
                *known = seen;
            }
            for guest in to_stop {
                let stopped = self
                    .clusters
                    .stop_guest(&guest.cluster, &guest.node, &guest.instance_id)
                    .await;
                match stopped {
                    Ok(_) => {
                        tracing::warn!(node = %guest.node, instance_id = %guest.instance_id, "stopped a guest the cloud has no record of")
                    }
                    Err(e) => {
                        tracing::warn!(node = %guest.node, instance_id = %guest.instance_id, error = %e, "cannot stop a guest the cloud has no record of")
                    }
                }
            }
        }
    }

    /// Marks silent services NOTREADY, forever; run it in its own task.
    pub async fn watch_liveness(self, timeout: Duration) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            self.registry
                .expire(time::unix_ms(), timeout.as_millis() as i64);
        }
    }
}
