//! Where volume data lives: the [`VolumeBackend`] trait, sparse files under
//! the SC's state directory ([`FileBackend`], the default), and a sparse
//! in-memory one for tests ([`MemoryBackend`]). One conformance suite
//! ([`conformance`]) runs against both, and any backend that follows (Ceph
//! RBD, LVM) must pass it.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("volume {0} does not exist")]
    Missing(String),
    #[error("volume {id} exists with {have} bytes, not {want}")]
    SizeConflict { id: String, have: u64, want: u64 },
    #[error("{id}: {offset}+{len} is beyond its {size} bytes")]
    OutOfRange {
        id: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("volume {0}: {1}")]
    Io(String, io::Error),
}

/// The data of volumes, by volume id.
pub trait VolumeBackend: Send + Sync + std::fmt::Debug {
    /// Makes volume `id` of `size` bytes, reading as zeros. Making it
    /// again at the same size does nothing (a retried create); at another
    /// size it is refused.
    fn create(&self, id: &str, size: u64) -> Result<(), BackendError>;
    /// Removes volume `id` and its data; one that is not there is fine.
    fn delete(&self, id: &str) -> Result<(), BackendError>;
    /// The size of volume `id`, or None.
    fn size(&self, id: &str) -> Result<Option<u64>, BackendError>;
    /// `len` bytes of volume `id` from `offset`.
    fn read_at(&self, id: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;
    /// Writes `data` into volume `id` at `offset`, durably.
    fn write_at(&self, id: &str, offset: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Every volume id, sorted.
    fn list(&self) -> Result<Vec<String>, BackendError>;
    /// A file QEMU can open for volume `id`, when the backend keeps
    /// volumes as files.
    fn local_path(&self, id: &str) -> Option<PathBuf>;
    /// False when `len` bytes of volume `id` from `offset` surely read as
    /// zeros (never written: a hole), so snapshots need not read them.
    fn may_hold_data(&self, _id: &str, _offset: u64, _len: u64) -> Result<bool, BackendError> {
        Ok(true)
    }
}

fn check_range(id: &str, offset: u64, len: u64, size: u64) -> Result<(), BackendError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackendError::OutOfRange {
            id: id.to_string(),
            offset,
            len,
            size,
        }),
    }
}

/// Volumes as sparse raw files `<dir>/<id>.img`.
#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    /// Volumes under `dir` (made if missing).
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    fn open_file(&self, id: &str, write: bool) -> Result<File, BackendError> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(self.path(id))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => BackendError::Missing(id.to_string()),
                _ => BackendError::Io(id.to_string(), e),
            })
    }
}

impl VolumeBackend for FileBackend {
    fn create(&self, id: &str, size: u64) -> Result<(), BackendError> {
        let io = |e| BackendError::Io(id.to_string(), e);
        if let Some(have) = self.size(id)? {
            return match have == size {
                true => Ok(()),
                false => Err(BackendError::SizeConflict {
                    id: id.to_string(),
                    have,
                    want: size,
                }),
            };
        }
        // Made aside and renamed in place: a crash leaves no half volume.
        let part = self.dir.join(format!("{id}.img.part"));
        let f = File::create(&part).map_err(io)?;
        f.set_len(size).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&part, self.path(id)).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }

    fn delete(&self, id: &str) -> Result<(), BackendError> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(BackendError::Io(id.to_string(), e))
            }
            _ => Ok(()),
        }
    }

    fn size(&self, id: &str) -> Result<Option<u64>, BackendError> {
        match std::fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::Io(id.to_string(), e)),
        }
    }

    fn read_at(&self, id: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let f = self.open_file(id, false)?;
        let size = f
            .metadata()
            .map_err(|e| BackendError::Io(id.to_string(), e))?
            .len();
        check_range(id, offset, len, size)?;
        let mut buf = vec![0; len as usize];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| BackendError::Io(id.to_string(), e))?;
        Ok(buf)
    }

    fn write_at(&self, id: &str, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let f = self.open_file(id, true)?;
        let io = |e| BackendError::Io(id.to_string(), e);
        let size = f.metadata().map_err(io)?.len();
        check_range(id, offset, data.len() as u64, size)?;
        f.write_all_at(data, offset).map_err(io)?;
        f.sync_data().map_err(io)
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let io = |e| BackendError::Io(String::new(), e);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".img")) {
                out.push(id.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    fn local_path(&self, id: &str) -> Option<PathBuf> {
        Some(self.path(id))
    }

    fn may_hold_data(&self, id: &str, offset: u64, len: u64) -> Result<bool, BackendError> {
        use std::os::fd::AsRawFd;
        let f = self.open_file(id, false)?;
        // The next byte of data at or after `offset`, as the file system
        // knows it (ENXIO: none before the end).
        match nix::unistd::lseek(f.as_raw_fd(), offset as i64, nix::unistd::Whence::SeekData) {
            Ok(next) => Ok((next as u64) < offset + len),
            Err(nix::errno::Errno::ENXIO) => Ok(false),
            // A file system that cannot tell: read it.
            Err(_) => Ok(true),
        }
    }
}

/// Bytes per chunk of [`MemoryBackend`].
const CHUNK: u64 = 64 * 1024;

/// A volume in memory: its size, and the chunks written, by number.
type MemoryVolume = (u64, BTreeMap<u64, Vec<u8>>);

/// Volumes in memory, sparse: only chunks written hold memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    volumes: Mutex<HashMap<String, MemoryVolume>>,
}

impl MemoryBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemoryVolume>> {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl VolumeBackend for MemoryBackend {
    fn create(&self, id: &str, size: u64) -> Result<(), BackendError> {
        let mut v = self.lock();
        match v.get(id) {
            Some((have, _)) if *have == size => Ok(()),
            Some((have, _)) => Err(BackendError::SizeConflict {
                id: id.to_string(),
                have: *have,
                want: size,
            }),
            None => {
                v.insert(id.to_string(), (size, BTreeMap::new()));
                Ok(())
            }
        }
    }

    fn delete(&self, id: &str) -> Result<(), BackendError> {
        self.lock().remove(id);
        Ok(())
    }

    fn size(&self, id: &str) -> Result<Option<u64>, BackendError> {
        Ok(self.lock().get(id).map(|(s, _)| *s))
    }

    fn read_at(&self, id: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let v = self.lock();
        let (size, chunks) = v
            .get(id)
            .ok_or_else(|| BackendError::Missing(id.to_string()))?;
        check_range(id, offset, len, *size)?;
        let mut out = vec![0; len as usize];
        let mut at = offset;
        while at < offset + len {
            let (n, within) = (at / CHUNK, at % CHUNK);
            let take = (CHUNK - within).min(offset + len - at);
            if let Some(c) = chunks.get(&n) {
                let dst = (at - offset) as usize;
                out[dst..dst + take as usize]
                    .copy_from_slice(&c[within as usize..(within + take) as usize]);
            }
            at += take;
        }
        Ok(out)
    }

    fn write_at(&self, id: &str, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let mut v = self.lock();
        let (size, chunks) = v
            .get_mut(id)
            .ok_or_else(|| BackendError::Missing(id.to_string()))?;
        let len = data.len() as u64;
        check_range(id, offset, len, *size)?;
        let mut at = offset;
        while at < offset + len {
            let (n, within) = (at / CHUNK, at % CHUNK);
            let take = (CHUNK - within).min(offset + len - at);
            let c = chunks.entry(n).or_insert_with(|| vec![0; CHUNK as usize]);
            let src = (at - offset) as usize;
            c[within as usize..(within + take) as usize]
                .copy_from_slice(&data[src..src + take as usize]);
            at += take;
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    fn local_path(&self, _id: &str) -> Option<PathBuf> {
        None
    }

    fn may_hold_data(&self, id: &str, offset: u64, len: u64) -> Result<bool, BackendError> {
        let v = self.lock();
        let (_, chunks) = v
            .get(id)
            .ok_or_else(|| BackendError::Missing(id.to_string()))?;
        Ok(chunks
            .range(offset / CHUNK..=(offset + len.max(1) - 1) / CHUNK)
            .next()
            .is_some())
    }
}

/// What every backend must do; panics on the first departure.
pub fn conformance(b: &dyn VolumeBackend) {
    const GIB: u64 = 1 << 30;
    let id = "vol-00000000000000001";
    assert_eq!(b.size(id).expect("size"), None);
    assert!(matches!(b.read_at(id, 0, 1), Err(BackendError::Missing(_))));
    b.create(id, GIB).expect("create");
    assert_eq!(b.size(id).expect("size"), Some(GIB));
    b.create(id, GIB).expect("a retried create is fine");
    assert!(matches!(
        b.create(id, 2 * GIB),
        Err(BackendError::SizeConflict { .. })
    ));
    // New volumes read as zeros, anywhere.
    assert_eq!(
        b.read_at(id, GIB - 4096, 4096).expect("read"),
        vec![0; 4096]
    );
    // A write across a chunk boundary reads back, its surroundings untouched.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let at = CHUNK - 100;
    b.write_at(id, at, &data).expect("write");
    assert_eq!(b.read_at(id, at, data.len() as u64).expect("read"), data);
    assert_eq!(b.read_at(id, at - 10, 10).expect("before"), vec![0; 10]);
    let end = at + data.len() as u64;
    assert_eq!(b.read_at(id, end, 10).expect("after"), vec![0; 10]);
    // Nothing goes beyond the end.
    assert!(matches!(
        b.write_at(id, GIB - 1, &[1, 2]),
        Err(BackendError::OutOfRange { .. })
    ));
    assert!(matches!(
        b.read_at(id, u64::MAX, 2),
        Err(BackendError::OutOfRange { .. })
    ));
    // What was never written may be skipped; what was written may not.
    assert!(b.may_hold_data(id, at, 1).expect("data"));
    let other = "vol-00000000000000002";
    b.create(other, 4096).expect("create another");
    assert_eq!(b.read_at(other, 0, 4096).expect("read"), vec![0; 4096]);
    assert_eq!(
        b.list().expect("list"),
        vec![id.to_string(), other.to_string()]
    );
    b.delete(id).expect("delete");
    b.delete(id).expect("deleting again is fine");
    assert_eq!(b.size(id).expect("size"), None);
    assert_eq!(b.list().expect("list"), vec![other.to_string()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_backend_conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = FileBackend::open(dir.path()).expect("open");
        conformance(&b);
        // Sparse: a 1 GiB volume with little written takes little disk.
        b.create("vol-00000000000000003", 1 << 30).expect("create");
        let used = std::os::unix::fs::MetadataExt::blocks(
            &std::fs::metadata(b.local_path("vol-00000000000000003").expect("path")).expect("meta"),
        );
        assert!(used * 512 < 1 << 20, "{used} blocks for an empty volume");
    }

    #[test]
    fn the_memory_backend_conforms() {
        conformance(&MemoryBackend::default());
    }
}
