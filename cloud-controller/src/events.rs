//! The cloud's events: what it decided and did by itself or for an
//! administrator (rebalancing, migrations, evacuations), with the figures
//! behind each, kept durably; the newest [`KEEP`] stay.

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

/// How many events stay.
pub const KEEP: usize = 1000;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub unix_ms: i64,
    /// Orders events of the same millisecond.
    pub seq: u64,
    /// `rebalance`, `migration`, `evacuation`, `alarm` (an alarm's EC2 action).
    pub kind: String,
    pub cluster: String,
    pub node: String,
    pub instance_id: String,
    /// What happened, with its figures.
    pub message: String,
}

impl Record for Event {
    const TABLE: &'static str = "events";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        format!("{:016x}{:016x}", self.unix_ms.max(0), self.seq)
    }
}

/// The event log.
#[derive(Debug)]
pub struct Events {
    table: Table<Event>,
    seq: std::sync::atomic::AtomicU64,
}

impl Events {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
            seq: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Records `event` (its `seq` is set here) and drops the oldest beyond
    /// [`KEEP`].
    pub fn record(&self, mut event: Event) -> Result<(), StoreError> {
        event.seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(kind = %event.kind, node = %event.node, instance_id = %event.instance_id, message = %event.message, "event");
        self.table.put(&event)?;
        if self.table.len() > KEEP {
            let all = self.table.list()?;
            for old in &all[..all.len().saturating_sub(KEEP)] {
                self.table.delete(&old.key())?;
            }
        }
        Ok(())
    }

    /// The newest `limit` events, newest first.
    pub fn newest(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut all = self.table.list()?;
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_kept_newest_first_and_bounded() {
        let store = Store::temporary().expect("store");
        let events = Events::open(&store).expect("events");
        for i in 0..(KEEP + 5) {
            events
                .record(Event {
                    unix_ms: 1_000 + (i as i64 / 2),
                    seq: 0,
                    kind: "rebalance".into(),
                    cluster: "c".into(),
                    node: "n".into(),
                    instance_id: format!("i-{i}"),
                    message: String::new(),
                })
                .expect("record");
        }
        let newest = events.newest(3).expect("newest");
        let ids: Vec<&str> = newest.iter().map(|e| e.instance_id.as_str()).collect();
        let last = KEEP + 4;
        assert_eq!(
            ids,
            vec![
                format!("i-{last}"),
                format!("i-{}", last - 1),
                format!("i-{}", last - 2)
            ]
        );
        assert_eq!(events.newest(usize::MAX).expect("all").len(), KEEP);
    }
}
