//! Snapshots, kept in Walrus so they outlive this SC's host and any zone's
//! SC can make volumes from them.
//!
//! A volume is read in 1 MiB chunks. Each chunk that is not all zeros is
//! stored once, under its SHA-256 (`chunks/<sha256>` in the system bucket
//! [`BUCKET`]), so a second snapshot of a volume uploads only the chunks
//! that changed. A snapshot is its manifest, `snapshots/<id>.json`: the
//! volume's size and each chunk's digest (none for zeros). The manifest is
//! written last: a snapshot interrupted by a crash is taken again from the
//! start when the SC comes back, and is never `completed` with chunks
//! missing.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use common::{
    pki::Role,
    rpc::Trust,
    store::{Record, Store, Table},
};
use proto::{walrus_internal_client::WalrusInternalClient, ObjectChunk, ObjectRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::volumes::{VolumeError, Volumes};

/// Bytes per chunk.
pub const CHUNK: u64 = 1 << 20;
/// The system bucket snapshots live in.
pub const BUCKET: &str = "gumtree_snapshots";

pub use common::snapshot::SnapshotState;

/// A snapshot this SC took (or is taking).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub snapshot_id: String,
    pub volume_id: String,
    pub volume_size_gib: u64,
    pub state: SnapshotState,
    /// Percent done.
    pub progress: u8,
    pub reason: String,
    /// Walrus's internal address, to resume with.
    pub walrus: String,
    pub stored_bytes: u64,
    pub created_ms: i64,
}

impl Record for SnapshotRecord {
    const TABLE: &'static str = "snapshots";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.snapshot_id.clone()
    }
}

/// How many snapshots this SC made name a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRefs {
    pub sha256: String,
    pub refs: u64,
}

impl Record for ChunkRefs {
    const TABLE: &'static str = "snapshot_chunks";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.sha256.clone()
    }
}

/// A snapshot as stored in Walrus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub snapshot_id: String,
    pub volume_id: String,
    pub size: u64,
    pub chunk_size: u64,
    /// Each chunk's SHA-256 (hex), or None when it is all zeros.
    pub chunks: Vec<Option<String>>,
}

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("invalid snapshot id {0}")]
    InvalidId(String),
    #[error("walrus: {0}")]
    Walrus(String),
    #[error("no object {0} in walrus")]
    Missing(String),
    #[error("snapshot {0}: {1}")]
    Bad(String, String),
    #[error(transparent)]
    Store(#[from] common::store::StoreError),
}

fn walrus_error(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Walrus(e.to_string())
}

type Client = WalrusInternalClient<common::rpc::Client>;

/// The snapshots of this SC.
#[derive(Debug, Clone)]
pub struct Snapshots {
    table: Table<SnapshotRecord>,
    chunks: Table<ChunkRefs>,
    volumes: Volumes,
    trust: Trust,
    /// Jobs running in this process (snapshots and restores), by id.
    running: Arc<Mutex<BTreeSet<String>>>,
    progress: Arc<Mutex<HashMap<String, u8>>>,
}

fn manifest_key(id: &str) -> String {
    format!("snapshots/{id}.json")
}

fn chunk_key(sha: &str) -> String {
    format!("chunks/{sha}")
}

impl Snapshots {
    /// The snapshots recorded in `store`; resumes those a crash cut off.
    pub fn open(store: &Store, volumes: Volumes, trust: Trust) -> Result<Self, SnapshotError> {
        let s = Self {
            table: store.table()?,
            chunks: store.table()?,
            volumes,
            trust,
            running: Arc::default(),
            progress: Arc::default(),
        };
        // Watched for a snapshot that is not being taken (its record was
        // never written, or it ended before the watch did): let go.
        for snap in s.volumes.fleeces().snapshots() {
            let pending = s
                .table
                .get(&snap)?
                .is_some_and(|r| r.state == SnapshotState::Pending);
            if !pending {
                s.volumes.fleeces().end(&snap).map_err(VolumeError::from)?;
            }
        }
        for r in s.table.list()? {
            if r.state == SnapshotState::Pending {
                tracing::info!(snapshot = %r.snapshot_id, "taking a snapshot a restart interrupted again");
                s.spawn_take(r.snapshot_id.clone());
            }
        }
        for v in s.volumes.list()? {
            if let (crate::volumes::VolumeState::Creating, Some(snap)) = (v.state, &v.snapshot_id) {
                tracing::info!(volume = %v.volume_id, snapshot = %snap, "restoring a volume a restart interrupted again");
                s.spawn_restore(v.volume_id.clone(), snap.clone(), v.walrus.clone());
            }
        }
        Ok(s)
    }

    fn client(&self, walrus: &str) -> Result<Client, SnapshotError> {
        let channel = self
            .trust
            .channel(walrus, Role::Walrus)
            .map_err(walrus_error)?;
        Ok(WalrusInternalClient::new(channel))
    }

    /// Starts snapshot `id` of `volume_id`, or answers how far it is.
    pub fn create(
        &self,
        id: &str,
        volume_id: &str,
        walrus: &str,
    ) -> Result<SnapshotRecord, SnapshotError> {
        if !common::ids::well_formed(id, &["snap"]) {
            return Err(SnapshotError::InvalidId(id.to_string()));
        }
        if let Some(mut r) = self.table.get(&id.to_string())? {
            if let Some(p) = self
                .progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
            {
                r.progress = r.progress.max(*p);
            }
            return Ok(r);
        }
        let v = self
            .volumes
            .get(volume_id)?
            .ok_or_else(|| VolumeError::NotFound(volume_id.to_string()))?;
        let r = SnapshotRecord {
            snapshot_id: id.to_string(),
            volume_id: volume_id.to_string(),
            volume_size_gib: v.size_gib,
            state: SnapshotState::Pending,
            progress: 0,
            reason: String::new(),
            walrus: walrus.to_string(),
            stored_bytes: 0,
            created_ms: common::time::unix_ms(),
        };
        // The snapshot holds the volume of this moment: its changes from
        // now on keep what they replace until it is taken.
        self.volumes
            .fleeces()
            .begin(id, volume_id)
            .map_err(VolumeError::from)?;
        self.table.put(&r)?;
        self.spawn_take(id.to_string());
        Ok(r)
    }

    fn spawn_take(&self, id: String) {
        if !self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone())
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.take(&id).await;
            // Taken or failed, the volume's changes need not wait for it.
            if let Err(e) = this.volumes.fleeces().end(&id) {
                tracing::warn!(snapshot = %id, error = %e, "what the snapshot saved was not dropped");
            }
            this.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            let Ok(Some(mut r)) = this.table.get(&id) else {
                return;
            };
            match outcome {
                Ok(stored) => {
                    r.state = SnapshotState::Completed;
                    r.progress = 100;
                    r.stored_bytes = stored;
                    tracing::info!(snapshot = %id, volume = %r.volume_id, stored_bytes = stored, "snapshot completed");
                }
                Err(e) => {
                    r.state = SnapshotState::Error;
                    r.reason = e.to_string();
                    tracing::warn!(snapshot = %id, error = %e, "snapshot failed");
                }
            }
            if let Err(e) = this.table.put(&r) {
                tracing::error!(snapshot = %id, error = %e, "snapshot record not updated");
            }
        });
    }

    /// Reads the volume, stores its new chunks and the manifest; returns
    /// the bytes stored.
    async fn take(&self, id: &str) -> Result<u64, SnapshotError> {
        let r = self
            .table
            .get(&id.to_string())?
            .ok_or_else(|| SnapshotError::Bad(id.into(), "no record".into()))?;
        let mut client = self.client(&r.walrus)?;
        client
            .ensure_system_bucket(ObjectRef {
                bucket: BUCKET.into(),
                key: String::new(),
            })
            .await
            .map_err(walrus_error)?;
        let backend = self.volumes.backend().clone();
        let fleeces = self.volumes.fleeces().clone();
        let size = backend
            .size(&r.volume_id)
            .map_err(VolumeError::from)?
            .ok_or_else(|| VolumeError::NotFound(r.volume_id.clone()))?;
        let count = size.div_ceil(CHUNK);
        let mut chunks = Vec::with_capacity(count as usize);
        let mut stored = 0;
        let mut sent_here = BTreeSet::new();
        for n in 0..count {
            let len = CHUNK.min(size - n * CHUNK);
            let (f, vol, snap) = (fleeces.clone(), r.volume_id.clone(), id.to_string());
            let data = tokio::task::spawn_blocking(move || f.read_chunk(&snap, &vol, n, len))
                .await
                .map_err(|e| SnapshotError::Bad(id.into(), e.to_string()))?
                .map_err(VolumeError::from)?;
            let Some(data) = data else {
                chunks.push(None);
                continue;
            };
            if data.iter().all(|b| *b == 0) {
                chunks.push(None);
            } else {
                let sha = hex(&Sha256::digest(&data));
                let known = self.chunks.get(&sha)?.is_some_and(|c| c.refs > 0);
                if !known && !sent_here.contains(&sha) {
                    put(&mut client, &chunk_key(&sha), data, &sha).await?;
                    stored += len;
                    sent_here.insert(sha.clone());
                }
                chunks.push(Some(sha));
            }
            let pct = ((n + 1) * 99 / count.max(1)) as u8;
            self.progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string(), pct);
        }
        let manifest = Manifest {
            snapshot_id: id.to_string(),
            volume_id: r.volume_id.clone(),
            size,
            chunk_size: CHUNK,
            chunks,
        };
        let body = serde_json::to_vec(&manifest)
            .map_err(|e| SnapshotError::Bad(id.into(), e.to_string()))?;
        let sha = hex(&Sha256::digest(&body));
        put(&mut client, &manifest_key(id), body, &sha).await?;
        let distinct: BTreeSet<&String> = manifest.chunks.iter().flatten().collect();
        for sha in distinct {
            let refs = self.chunks.get(sha)?.map_or(0, |c| c.refs);
            self.chunks.put(&ChunkRefs {
                sha256: sha.clone(),
                refs: refs + 1,
            })?;
        }
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(stored)
    }

    /// Deletes snapshot `id`: its manifest, and the chunks no other
    /// snapshot this SC knows of names.
    pub async fn delete(&self, id: &str, walrus: &str) -> Result<(), SnapshotError> {
        let mut client = self.client(walrus)?;
        if let Some(manifest) = fetch_manifest(&mut client, id).await? {
            let distinct: BTreeSet<String> = manifest.chunks.into_iter().flatten().collect();
            for sha in distinct {
                let Some(c) = self.chunks.get(&sha)? else {
                    // Named by snapshots of another SC: kept.
                    continue;
                };
                if c.refs > 1 {
                    self.chunks.put(&ChunkRefs {
                        refs: c.refs - 1,
                        ..c
                    })?;
                } else {
                    client
                        .delete_system_object(ObjectRef {
                            bucket: BUCKET.into(),
                            key: chunk_key(&sha),
                        })
                        .await
                        .map_err(walrus_error)?;
                    self.chunks.delete(&sha)?;
                }
            }
            client
                .delete_system_object(ObjectRef {
                    bucket: BUCKET.into(),
                    key: manifest_key(id),
                })
                .await
                .map_err(walrus_error)?;
        }
        self.table.delete(&id.to_string())?;
        Ok(())
    }

    /// Makes volume `volume_id` of `size_gib` from snapshot `snapshot_id`
    /// (in the background; it stays `creating` until filled).
    pub fn create_volume(
        &self,
        volume_id: &str,
        size_gib: u64,
        snapshot_id: &str,
        walrus: &str,
    ) -> Result<crate::volumes::VolumeRecord, SnapshotError> {
        let r = self
            .volumes
            .create_from(volume_id, size_gib, snapshot_id, walrus)?;
        if r.state == crate::volumes::VolumeState::Creating {
            self.spawn_restore(
                volume_id.to_string(),
                snapshot_id.to_string(),
                walrus.to_string(),
            );
        }
        Ok(r)
    }

    fn spawn_restore(&self, volume_id: String, snapshot_id: String, walrus: String) {
        if !self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(volume_id.clone())
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.restore(&volume_id, &snapshot_id, &walrus).await;
            this.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&volume_id);
            let done = match outcome {
                Ok(()) => this.volumes.filled(&volume_id, None),
                Err(e) => {
                    tracing::warn!(volume = %volume_id, snapshot = %snapshot_id, error = %e, "volume not restored");
                    this.volumes.filled(&volume_id, Some(e.to_string()))
                }
            };
            if let Err(e) = done {
                tracing::error!(volume = %volume_id, error = %e, "volume record not updated");
            }
        });
    }

    async fn restore(
        &self,
        volume_id: &str,
        snapshot_id: &str,
        walrus: &str,
    ) -> Result<(), SnapshotError> {
        let mut client = self.client(walrus)?;
        let manifest = fetch_manifest(&mut client, snapshot_id)
            .await?
            .ok_or_else(|| {
                SnapshotError::Bad(snapshot_id.into(), "no manifest in Walrus".into())
            })?;
        let backend = self.volumes.backend().clone();
        for (n, chunk) in manifest.chunks.iter().enumerate() {
            let Some(sha) = chunk else { continue };
            let data = get(&mut client, &chunk_key(sha)).await?;
            if hex(&Sha256::digest(&data)) != *sha {
                return Err(SnapshotError::Bad(
                    snapshot_id.into(),
                    format!("chunk {n} does not match its digest"),
                ));
            }
            let b = backend.clone();
            let vol = volume_id.to_string();
            let at = n as u64 * manifest.chunk_size;
            tokio::task::spawn_blocking(move || b.write_at(&vol, at, &data))
                .await
                .map_err(|e| SnapshotError::Bad(snapshot_id.into(), e.to_string()))?
                .map_err(VolumeError::from)?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn put(
    client: &mut Client,
    key: &str,
    data: Vec<u8>,
    sha: &str,
) -> Result<(), SnapshotError> {
    let chunk = ObjectChunk {
        object: Some(ObjectRef {
            bucket: BUCKET.into(),
            key: key.to_string(),
        }),
        data,
        sha256: sha.to_string(),
    };
    client
        .put_object(tokio_stream::iter(vec![chunk]))
        .await
        .map_err(walrus_error)?;
    Ok(())
}

async fn get(client: &mut Client, key: &str) -> Result<Vec<u8>, SnapshotError> {
    let mut stream = client
        .get_object(ObjectRef {
            bucket: BUCKET.into(),
            key: key.to_string(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => SnapshotError::Missing(key.to_string()),
            _ => walrus_error(s),
        })?
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = stream.message().await.map_err(walrus_error)? {
        out.extend_from_slice(&c.data);
    }
    Ok(out)
}

async fn fetch_manifest(client: &mut Client, id: &str) -> Result<Option<Manifest>, SnapshotError> {
    match get(client, &manifest_key(id)).await {
        Ok(body) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| SnapshotError::Bad(id.into(), format!("bad manifest: {e}"))),
        Err(SnapshotError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
