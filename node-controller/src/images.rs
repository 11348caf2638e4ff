//! The node's image cache: kernels, ramdisks and disk images fetched from
//! Walrus, verified against the digest the cloud controller recorded, and
//! kept by digest (`<dir>/<sha256>`) under a size bound, least recently used
//! first out.
//!
//! A fetch streams into `<dir>/tmp-*` while hashing and becomes visible
//! only when its size and SHA-256 match: a corrupt or truncated download
//! never enters the cache. Two instances asking for the same image at once
//! share one download. Images in use (the backing files of instance
//! overlays) are pinned and never evicted.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// An image to fetch: where it lives and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub bucket: String,
    pub key: String,
    /// Hex SHA-256 the bytes must have.
    pub sha256: String,
    pub size: u64,
}

impl TryFrom<proto::ImageRef> for ImageRef {
    type Error = ImageError;
    fn try_from(r: proto::ImageRef) -> Result<Self, ImageError> {
        let sha256 = r.sha256.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::BadRef(format!(
                "image {}/{} has no valid sha256",
                r.bucket, r.key
            )));
        }
        if r.bucket.is_empty() || r.key.is_empty() {
            return Err(ImageError::BadRef(
                "an image needs a bucket and a key".into(),
            ));
        }
        Ok(Self {
            bucket: r.bucket,
            key: r.key,
            sha256,
            size: r.size,
        })
    }
}

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    BadRef(String),
    #[error("fetching {what}: {reason}")]
    Fetch { what: String, reason: String },
    #[error("{what} arrived with sha256 {actual} and {size} bytes, not {expected} and {expected_size}: refused")]
    Corrupt {
        what: String,
        expected: String,
        actual: String,
        size: u64,
        expected_size: u64,
    },
    #[error("{what} ({size} bytes) is larger than the whole image cache ({max} bytes)")]
    TooLarge { what: String, size: u64, max: u64 },
    #[error("image cache: {0}")]
    Io(#[from] std::io::Error),
}

/// Where image bytes come from.
#[tonic::async_trait]
pub trait ImageSource: Send + Sync {
    /// Writes the object's bytes to `out`.
    async fn fetch(&self, image: &ImageRef, out: &mut tokio::fs::File) -> Result<(), String>;
}

#[derive(Debug)]
struct Entry {
    size: u64,
    last_used: u64,
    pins: u32,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
}

/// What [`ImageCache::get`] found or fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub path: PathBuf,
    /// True when it was already in the cache.
    pub hit: bool,
}

/// The image cache.
#[derive(Debug)]
pub struct ImageCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// One lock per digest being fetched, so concurrent gets share a download.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageCache {
    /// Opens the cache in `dir` (made if missing), keeping at most
    /// `max_bytes` of unpinned images; leftovers of interrupted fetches are
    /// removed, and files whose names are not digests are left alone.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, ImageError> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") {
                std::fs::remove_file(entry.path())?;
                continue;
            }
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                let meta = entry.metadata()?;
                let used = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                found.push((used, name, meta.len()));
            }
        }
        found.sort();
        let mut state = State::default();
        for (_, name, size) in found {
            state.clock += 1;
            state.total += size;
            state.entries.insert(
                name,
                Entry {
                    size,
                    last_used: state.clock,
                    pins: 0,
                },
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
            fetching: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Digests held, least recently used first.
    pub fn digests(&self) -> Vec<String> {
        let state = self.lock();
        let mut v: Vec<(&u64, &String)> = state
            .entries
            .iter()
            .map(|(k, e)| (&e.last_used, k))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// Keeps `sha256` from eviction until as many [`ImageCache::unpin`]s.
    pub fn pin(&self, sha256: &str) {
        if let Some(e) = self.lock().entries.get_mut(sha256) {
            e.pins += 1;
        }
    }

    /// Releases one pin of `sha256`.
    pub fn unpin(&self, sha256: &str) {
        if let Some(e) = self.lock().entries.get_mut(sha256) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// Where the image with digest `sha256` is (or would be) kept.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Marks `sha256` used now, if held.
    fn touch(&self, sha256: &str) -> bool {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        match state.entries.get_mut(sha256) {
            Some(e) => {
                e.last_used = now;
                true
            }
            None => false,
        }
    }

    /// The image, from the cache or fetched from `source` and verified.
    pub async fn get(
        &self,
        source: &dyn ImageSource,
        image: &ImageRef,
    ) -> Result<Cached, ImageError> {
        let what = format!("{}/{}", image.bucket, image.key);
        if image.size > self.max_bytes {
            return Err(ImageError::TooLarge {
                what,
                size: image.size,
                max: self.max_bytes,
            });
        }
        if self.touch(&image.sha256) {
            return Ok(Cached {
                path: self.path_of(&image.sha256),
                hit: true,
            });
        }
        let gate = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            fetching
                .entry(image.sha256.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        let _turn = gate.lock().await;
        // Somebody else may have fetched it while we waited.
        if self.touch(&image.sha256) {
            return Ok(Cached {
                path: self.path_of(&image.sha256),
                hit: true,
            });
        }
        let result = self.fetch(source, image, &what).await;
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&image.sha256);
        result.map(|path| Cached { path, hit: false })
    }

    async fn fetch(
        &self,
        source: &dyn ImageSource,
        image: &ImageRef,
        what: &str,
    ) -> Result<PathBuf, ImageError> {
        let suffix: u64 = rand::random();
        let tmp = self
            .dir
            .join(format!("tmp-{}-{suffix:016x}", &image.sha256[..16]));
        let fetched = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            source
                .fetch(image, &mut file)
                .await
                .map_err(|reason| ImageError::Fetch {
                    what: what.to_string(),
                    reason,
                })?;
            file.flush().await?;
            file.sync_all().await?;
            drop(file);
            let (actual, size) = hash_file(&tmp).await?;
            if actual != image.sha256 || size != image.size {
                return Err(ImageError::Corrupt {
                    what: what.to_string(),
                    expected: image.sha256.clone(),
                    actual,
                    size,
                    expected_size: image.size,
                });
            }
            Ok(size)
        }
        .await;
        let size = match fetched {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                tracing::warn!(image = %what, error = %e, "image fetch refused");
                return Err(e);
            }
        };
        let path = self.path_of(&image.sha256);
        tokio::fs::rename(&tmp, &path).await?;
        tokio::fs::File::open(&self.dir).await?.sync_all().await?;
        {
            let mut state = self.lock();
            state.clock += 1;
            let now = state.clock;
            state.total += size;
            state.entries.insert(
                image.sha256.clone(),
                Entry {
                    size,
                    last_used: now,
                    pins: 0,
                },
            );
        }
        tracing::info!(image = %what, sha256 = %image.sha256, size, "image cached");
        self.evict(&image.sha256).await;
        Ok(path)
    }

    /// Removes least recently used, unpinned images (never `keep`) until the
    /// cache fits its bound.
    async fn evict(&self, keep: &str) {
        let victims: Vec<String> = {
            let mut state = self.lock();
            let mut order: Vec<(u64, String, u64)> = state
                .entries
                .iter()
                .filter(|(k, e)| k.as_str() != keep && e.pins == 0)
                .map(|(k, e)| (e.last_used, k.clone(), e.size))
                .collect();
            order.sort();
            let mut victims = Vec::new();
            for (_, k, size) in order {
                if state.total <= self.max_bytes {
                    break;
                }
                state.entries.remove(&k);
                state.total -= size;
                victims.push(k);
            }
            if state.total > self.max_bytes {
                tracing::warn!(
                    total = state.total,
                    max = self.max_bytes,
                    "image cache over its bound: the rest is in use"
                );
            }
            victims
        };
        for v in victims {
            tracing::info!(sha256 = %v, "image evicted from the cache");
            let _ = tokio::fs::remove_file(self.path_of(&v)).await;
        }
    }
}

async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok((hex::encode(hasher.finalize()), size))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Images from Walrus's internal gRPC service (which serves a node only
/// the images its instances use).
#[derive(Debug, Clone)]
pub struct WalrusSource {
    client: proto::walrus_internal_client::WalrusInternalClient<common::rpc::Client>,
}

impl WalrusSource {
    /// A source at Walrus's internal address `endpoint`.
    pub fn new(
        endpoint: &str,
        trust: &common::rpc::Trust,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = trust.channel(endpoint, common::pki::Role::Walrus)?;
        Ok(Self {
            client: proto::walrus_internal_client::WalrusInternalClient::new(channel)
                .max_decoding_message_size(8 * 1024 * 1024),
        })
    }
}

#[tonic::async_trait]
impl ImageSource for WalrusSource {
    async fn fetch(&self, image: &ImageRef, out: &mut tokio::fs::File) -> Result<(), String> {
        let mut stream = self
            .client
            .clone()
            .get_object(proto::ObjectRef {
                bucket: image.bucket.clone(),
                key: image.key.clone(),
            })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut ended = false;
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            out.write_all(&chunk.data)
                .await
                .map_err(|e| e.to_string())?;
            if !chunk.sha256.is_empty() {
                ended = true;
            }
        }
        if ended {
            Ok(())
        } else {
            Err("the download ended before its last chunk".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Fake {
        objects: HashMap<String, Vec<u8>>,
        calls: AtomicUsize,
        corrupt: bool,
    }

    impl Fake {
        fn new(objects: &[(&str, &[u8])]) -> Self {
            Self {
                objects: objects
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
                calls: AtomicUsize::new(0),
                corrupt: false,
            }
        }
    }

    #[tonic::async_trait]
    impl ImageSource for Fake {
        async fn fetch(&self, image: &ImageRef, out: &mut tokio::fs::File) -> Result<(), String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut data = self
                .objects
                .get(&image.key)
                .cloned()
                .ok_or("no such object")?;
            if self.corrupt {
                data[0] ^= 1;
            }
            out.write_all(&data).await.map_err(|e| e.to_string())
        }
    }

    fn image(key: &str, data: &[u8]) -> ImageRef {
        ImageRef {
            bucket: "images".into(),
            key: key.into(),
            sha256: hex::encode(Sha256::digest(data)),
            size: data.len() as u64,
        }
    }

    #[tokio::test]
    async fn fetches_once_verifies_and_shares_concurrent_gets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::open(dir.path(), 1000).expect("open");
        let source = Fake::new(&[("kernel", b"kernel bytes")]);
        let img = image("kernel", b"kernel bytes");
        let (a, b) = tokio::join!(cache.get(&source, &img), cache.get(&source, &img));
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert_eq!(a.path, b.path);
        assert!(!a.hit || !b.hit, "one of them fetched");
        assert_eq!(
            source.calls.load(Ordering::SeqCst),
            1,
            "one download for both"
        );
        assert_eq!(std::fs::read(&a.path).expect("read"), b"kernel bytes");
        let again = cache.get(&source, &img).await.expect("again");
        assert!(again.hit);
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn corrupt_or_wrong_size_downloads_never_enter_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::open(dir.path(), 1000).expect("open");
        let mut source = Fake::new(&[("disk", b"disk image")]);
        source.corrupt = true;
        let img = image("disk", b"disk image");
        let err = cache.get(&source, &img).await.expect_err("corrupt");
        assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
        let mut short = img.clone();
        short.size += 1;
        source.corrupt = false;
        let err = cache.get(&source, &short).await.expect_err("size");
        assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "nothing left behind"
        );
        assert_eq!(cache.total_bytes(), 0);
        let missing = image("missing", b"x");
        assert!(matches!(
            cache.get(&source, &missing).await,
            Err(ImageError::Fetch { .. })
        ));
        let big = image("disk", &[0u8; 2000]);
        assert!(matches!(
            cache.get(&source, &big).await,
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn least_recently_used_unpinned_images_go_first_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 40]).collect();
        let keys = ["a", "b", "c", "d"];
        let objects: Vec<(&str, &[u8])> = keys
            .iter()
            .zip(&data)
            .map(|(k, d)| (*k, d.as_slice()))
            .collect();
        let source = Fake::new(&objects);
        let imgs: Vec<ImageRef> = keys.iter().zip(&data).map(|(k, d)| image(k, d)).collect();
        let cache = ImageCache::open(dir.path(), 100).expect("open");
        cache.get(&source, &imgs[0]).await.expect("a");
        cache.get(&source, &imgs[1]).await.expect("b");
        cache.pin(&imgs[0].sha256);
        cache.get(&source, &imgs[1]).await.expect("b again");
        // c pushes the cache over 100 bytes: a is pinned, so b goes.
        cache.get(&source, &imgs[2]).await.expect("c");
        assert_eq!(
            cache.digests(),
            vec![imgs[0].sha256.clone(), imgs[2].sha256.clone()]
        );
        assert!(!dir.path().join(&imgs[1].sha256).exists());
        cache.unpin(&imgs[0].sha256);
        cache.get(&source, &imgs[3]).await.expect("d");
        assert_eq!(
            cache.digests(),
            vec![imgs[2].sha256.clone(), imgs[3].sha256.clone()]
        );
        assert_eq!(cache.total_bytes(), 80);
        std::fs::write(dir.path().join("tmp-leftover"), b"x").expect("leftover");
        drop(cache);
        let reopened = ImageCache::open(dir.path(), 100).expect("reopen");
        assert_eq!(reopened.total_bytes(), 80);
        assert!(!dir.path().join("tmp-leftover").exists());
        assert!(reopened.get(&source, &imgs[3]).await.expect("d").hit);
    }
}
