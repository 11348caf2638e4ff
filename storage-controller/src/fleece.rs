//! Point-in-time snapshots of volumes in use: copy before write.
//!
//! A snapshot reads its volume chunk by chunk, for as long as that takes,
//! while a guest may go on writing. From the moment CreateSnapshot is
//! answered until the snapshot ends, the first change to each chunk of
//! the volume (a write, a trim, zeros) is held back until the chunk's data
//! of that moment is saved, and the snapshot reads saved chunks instead
//! of the volume: it holds the volume as it was when it was asked for.
//!
//! What is saved is durable before the change goes on (a backend volume
//! `<snapshot>-saved` holds the data, the `saved_chunks` table which
//! chunks it holds), so a snapshot taken again after a crash still reads
//! the volume of its moment.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, VolumeBackend};

/// Bytes per chunk (the snapshots' chunk).
pub const CHUNK: u64 = 1 << 20;

/// A snapshot whose volume's changes are watched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleeceRecord {
    pub snapshot_id: String,
    pub volume_id: String,
    pub size: u64,
}

impl Record for FleeceRecord {
    const TABLE: &'static str = "fleeces";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.snapshot_id.clone()
    }
}

/// A chunk saved for a snapshot before its volume changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedChunk {
    pub snapshot_id: String,
    pub chunk: u64,
    /// It read as zeros (a hole): nothing was stored.
    pub hole: bool,
}

impl Record for SavedChunk {
    const TABLE: &'static str = "saved_chunks";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        saved_key(&self.snapshot_id, self.chunk)
    }
}

fn saved_key(snapshot_id: &str, chunk: u64) -> String {
    format!("{snapshot_id}/{chunk:012}")
}

/// Why a chunk could not be saved or read.
#[derive(Debug, thiserror::Error)]
pub enum FleeceError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("snapshot {0}: a chunk could not be saved before its volume changed: {1}")]
    Broken(String, String),
}

#[derive(Debug)]
struct Active {
    snapshot_id: String,
    size: u64,
    /// Chunk -> saved as a hole.
    saved: HashMap<u64, bool>,
    /// Why a save failed: the snapshot cannot be of its moment.
    broken: Option<String>,
}

/// The snapshots being taken, by volume.
#[derive(Debug, Clone)]
pub struct Fleeces {
    backend: Arc<dyn VolumeBackend>,
    fleeces: Table<FleeceRecord>,
    saved: Table<SavedChunk>,
    active: Arc<Mutex<HashMap<String, Vec<Active>>>>,
}

/// The backend volume holding the chunks saved for `snapshot_id`.
fn saved_volume(snapshot_id: &str) -> String {
    format!("{snapshot_id}-saved")
}

impl Fleeces {
    /// The watched snapshots recorded in `store` (after a restart, too).
    pub fn open(store: &Store, backend: Arc<dyn VolumeBackend>) -> Result<Self, FleeceError> {
        let f = Self {
            backend,
            fleeces: store.table()?,
            saved: store.table()?,
            active: Arc::default(),
        };
        {
            let mut active = f.active.lock().unwrap_or_else(|p| p.into_inner());
            for r in f.fleeces.list()? {
                let saved = f
                    .saved
                    .scan_prefix(format!("{}/", r.snapshot_id).as_bytes())?
                    .into_iter()
                    .map(|c| (c.chunk, c.hole))
                    .collect();
                active.entry(r.volume_id.clone()).or_default().push(Active {
                    snapshot_id: r.snapshot_id,
                    size: r.size,
                    saved,
                    broken: None,
                });
            }
        }
        Ok(f)
    }

    /// Watches `volume_id` for snapshot `snapshot_id` from now on.
    pub fn begin(&self, snapshot_id: &str, volume_id: &str) -> Result<(), FleeceError> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let list = active.entry(volume_id.to_string()).or_default();
        if list.iter().any(|a| a.snapshot_id == snapshot_id) {
            return Ok(());
        }
        let size = self
            .backend
            .size(volume_id)?
            .ok_or_else(|| BackendError::Missing(volume_id.to_string()))?;
        self.backend.create(&saved_volume(snapshot_id), size)?;
        self.fleeces.put(&FleeceRecord {
            snapshot_id: snapshot_id.to_string(),
            volume_id: volume_id.to_string(),
            size,
        })?;
        list.push(Active {
            snapshot_id: snapshot_id.to_string(),
            size,
            saved: HashMap::new(),
            broken: None,
        });
        Ok(())
    }

    /// Whether a snapshot of `volume_id` is being taken.
    pub fn watched(&self, volume_id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(volume_id)
            .is_some_and(|l| !l.is_empty())
    }

    /// Saves, for each snapshot of `volume_id` being taken, the chunks
    /// `len` bytes from `offset` cover that it has not saved yet (blocking
    /// I/O: call it off the async runtime). A snapshot whose save fails is
    /// marked broken; the change goes on.
    pub fn before_change(&self, volume_id: &str, offset: u64, len: u64) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = active.get_mut(volume_id) else {
            return;
        };
        for a in list.iter_mut().filter(|a| a.broken.is_none()) {
            let first = offset / CHUNK;
            let last = offset.saturating_add(len.max(1)).div_ceil(CHUNK);
            for n in first..last.min(a.size.div_ceil(CHUNK)) {
                if a.saved.contains_key(&n) {
                    continue;
                }
                match self.save(volume_id, &a.snapshot_id, a.size, n) {
                    Ok(hole) => {
                        a.saved.insert(n, hole);
                    }
                    Err(e) => {
                        tracing::error!(snapshot = %a.snapshot_id, volume = %volume_id, error = %e, "a chunk was not saved before its volume changed; the snapshot fails");
                        a.broken = Some(e.to_string());
                        break;
                    }
                }
            }
        }
    }

    fn save(
        &self,
        volume_id: &str,
        snapshot_id: &str,
        size: u64,
        n: u64,
    ) -> Result<bool, FleeceError> {
        let len = CHUNK.min(size - n * CHUNK);
        let hole = !self.backend.may_hold_data(volume_id, n * CHUNK, len)?;
        if !hole {
            let data = self.backend.read_at(volume_id, n * CHUNK, len)?;
            self.backend
                .write_at(&saved_volume(snapshot_id), n * CHUNK, &data)?;
        }
        self.saved.put(&SavedChunk {
            snapshot_id: snapshot_id.to_string(),
            chunk: n,
            hole,
        })?;
        Ok(hole)
    }

    /// Chunk `n` (`len` bytes) of `volume_id` as it was when snapshot
    /// `snapshot_id` began; None when it read as zeros then (blocking I/O).
    /// A volume not watched for it is read as it is.
    pub fn read_chunk(
        &self,
        snapshot_id: &str,
        volume_id: &str,
        n: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, FleeceError> {
        // Held while the volume is read: a change waits for it.
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let a = active
            .get(volume_id)
            .and_then(|l| l.iter().find(|a| a.snapshot_id == snapshot_id));
        if let Some(why) = a.and_then(|a| a.broken.as_ref()) {
            return Err(FleeceError::Broken(snapshot_id.to_string(), why.clone()));
        }
        let (from, hole) = match a.and_then(|a| a.saved.get(&n)) {
            Some(true) => return Ok(None),
            Some(false) => (saved_volume(snapshot_id), false),
            None => (
                volume_id.to_string(),
                !self.backend.may_hold_data(volume_id, n * CHUNK, len)?,
            ),
        };
        if hole {
            return Ok(None);
        }
        Ok(Some(self.backend.read_at(&from, n * CHUNK, len)?))
    }

    /// Stops watching for snapshot `snapshot_id` and drops what it saved.
    pub fn end(&self, snapshot_id: &str) -> Result<(), FleeceError> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        for list in active.values_mut() {
            list.retain(|a| a.snapshot_id != snapshot_id);
        }
        active.retain(|_, l| !l.is_empty());
        for c in self
            .saved
            .scan_prefix(format!("{snapshot_id}/").as_bytes())?
        {
            self.saved.delete(&c.key())?;
        }
        self.fleeces.delete(&snapshot_id.to_string())?;
        self.backend.delete(&saved_volume(snapshot_id))?;
        Ok(())
    }

    /// The snapshots watched now.
    pub fn snapshots(&self) -> Vec<String> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .map(|a| a.snapshot_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FileBackend;

    #[test]
    fn a_snapshot_reads_its_volume_as_it_was_and_a_restart_keeps_that() {
        let dir = tempfile::tempdir().expect("dir");
        let backend: Arc<dyn VolumeBackend> =
            Arc::new(FileBackend::open(&dir.path().join("volumes")).expect("backend"));
        let store = Store::open(&dir.path().join("db")).expect("store");
        let vol = "vol-0123456789abcdef0";
        backend.create(vol, 4 * CHUNK).expect("create");
        backend
            .write_at(vol, 0, &vec![b'a'; CHUNK as usize])
            .expect("a");
        backend
            .write_at(vol, CHUNK, &vec![b'b'; CHUNK as usize])
            .expect("b");
        let f = Fleeces::open(&store, backend.clone()).expect("open");
        assert!(!f.watched(vol));
        f.begin("snap-0123456789abcdef0", vol).expect("begin");
        assert!(f.watched(vol));
        // Changes after the moment: chunk 0 overwritten, the hole at chunk
        // 2 filled, chunk 1 left alone.
        for (offset, byte) in [(0, b'x'), (2 * CHUNK + 100, b'y')] {
            f.before_change(vol, offset, 4096);
            backend
                .write_at(vol, offset, &[byte; 4096])
                .expect("change");
        }
        let read = |f: &Fleeces, n: u64| {
            f.read_chunk("snap-0123456789abcdef0", vol, n, CHUNK)
                .expect("read")
                .map(|d| (d[0], d.iter().all(|b| *b == d[0])))
        };
        let expect = [Some((b'a', true)), Some((b'b', true)), None, None];
        for (n, e) in expect.iter().enumerate() {
            assert_eq!(read(&f, n as u64), *e, "chunk {n}");
        }
        // After a restart (the saved chunks are durable), the same; a
        // second change of a saved chunk changes nothing.
        drop(f);
        let f = Fleeces::open(&store, backend.clone()).expect("open again");
        f.before_change(vol, 0, 10);
        backend.write_at(vol, 0, b"zzzzzzzzzz").expect("change");
        for (n, e) in expect.iter().enumerate() {
            assert_eq!(read(&f, n as u64), *e, "chunk {n} after a restart");
        }
        f.end("snap-0123456789abcdef0").expect("end");
        assert!(!f.watched(vol));
        assert_eq!(
            backend.size("snap-0123456789abcdef0-saved").expect("size"),
            None
        );
        // Not watched: read as it is now.
        assert_eq!(read(&f, 0), Some((b'z', false)));
    }
}
