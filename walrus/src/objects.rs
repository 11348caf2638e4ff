//! Buckets and objects: metadata in sled, data in files.
//!
//! An upload streams into `tmp/<id>`; only when it is complete and verified
//! is the file fsynced, renamed to `data/<id>` and its metadata written
//! (flushed). A failed, aborted or interrupted upload leaves nothing
//! visible, and [`ObjectStore::open`] removes what such uploads left in `tmp/`
//! and any data file no metadata names.

use std::{
    collections::{BTreeMap, HashSet},
    io,
    path::{Path, PathBuf},
};

use common::store::{Record, Store, StoreError, Table};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::{fs, io::AsyncWriteExt};

use crate::s3::checksum::{Algorithm, Checksummer};

/// A bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub name: String,
    pub owner_id: String,
    pub owner_name: String,
    pub created_ms: i64,
    /// The LocationConstraint it was created with ("" for the default).
    pub location: String,
    /// Canned ACL.
    pub acl: String,
}

impl Record for Bucket {
    const TABLE: &'static str = "buckets";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// An object's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Hex MD5 (single PUT) or `md5-of-md5s-N` (multipart), unquoted.
    pub etag: String,
    pub last_modified_ms: i64,
    pub owner_id: String,
    pub owner_name: String,
    /// Content-Type, Content-Disposition, Content-Encoding, Cache-Control,
    /// Content-Language and Expires, by lowercase header name.
    pub headers: BTreeMap<String, String>,
    /// `x-amz-meta-*` with the prefix removed, lowercase names.
    pub user_metadata: BTreeMap<String, String>,
    /// Checksums by algorithm name (CRC32, ...), base64.
    pub checksums: BTreeMap<String, String>,
    pub acl: String,
    /// Name of the data file under `data/`.
    pub data: String,
    /// Hex SHA-256 of the data, once somebody asked for it (image fetches).
    #[serde(default)]
    pub sha256: Option<String>,
}

impl Record for Object {
    const TABLE: &'static str = "objects";
    const SCHEMA: u32 = 1;
    type Key = (String, String);
    fn key(&self) -> Self::Key {
        (self.bucket.clone(), self.key.clone())
    }
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultipartUpload {
    pub bucket: String,
    pub upload_id: String,
    pub key: String,
    pub initiated_ms: i64,
    pub owner_id: String,
    pub owner_name: String,
    /// What the finished object will carry, as for [`Object`].
    pub headers: BTreeMap<String, String>,
    pub user_metadata: BTreeMap<String, String>,
    pub acl: String,
    /// `x-amz-checksum-algorithm` given at creation (CRC32, ...), if any.
    pub checksum_algorithm: Option<String>,
}

impl Record for MultipartUpload {
    const TABLE: &'static str = "uploads";
    const SCHEMA: u32 = 1;
    type Key = (String, String);
    fn key(&self) -> Self::Key {
        (self.bucket.clone(), self.upload_id.clone())
    }
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub upload_id: String,
    pub part_number: u32,
    pub size: u64,
    /// Hex MD5 of the part, unquoted.
    pub etag: String,
    pub last_modified_ms: i64,
    /// Checksums by algorithm name, base64.
    pub checksums: BTreeMap<String, String>,
    /// Name of the data file under `data/`.
    pub data: String,
}

impl Record for Part {
    const TABLE: &'static str = "parts";
    const SCHEMA: u32 = 1;
    type Key = (String, String);
    fn key(&self) -> Self::Key {
        (self.upload_id.clone(), part_key(self.part_number))
    }
}

/// Part numbers as keys that sort numerically.
fn part_key(n: u32) -> String {
    format!("{n:05}")
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object data: {0}")]
    Io(#[from] io::Error),
}

/// The object store.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    root: PathBuf,
    buckets: Table<Bucket>,
    objects: Table<Object>,
    uploads: Table<MultipartUpload>,
    parts: Table<Part>,
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// An upload in progress: data goes to a temporary file while it is hashed.
#[derive(Debug)]
pub struct Upload {
    path: PathBuf,
    id: String,
    file: fs::File,
    size: u64,
    md5: Md5,
    sha256: Option<Sha256>,
    checksums: Vec<Checksummer>,
}

/// What an upload wrote, once complete.
#[derive(Debug)]
pub struct Written {
    id: String,
    path: PathBuf,
    pub size: u64,
    pub md5_hex: String,
    pub sha256_hex: Option<String>,
    /// Computed checksums by algorithm.
    pub checksums: BTreeMap<Algorithm, String>,
}

impl Upload {
    /// Appends data.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.md5.update(data);
        if let Some(s) = &mut self.sha256 {
            s.update(data);
        }
        for c in &mut self.checksums {
            c.update(data);
        }
        self.size += data.len() as u64;
        self.file.write_all(data).await
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes the data to disk; the file is still invisible.
    pub async fn finish(mut self) -> io::Result<Written> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(Written {
            id: self.id,
            path: self.path,
            size: self.size,
            md5_hex: hex::encode(self.md5.finalize()),
            sha256_hex: self.sha256.map(|s| hex::encode(s.finalize())),
            checksums: self
                .checksums
                .into_iter()
                .map(|c| (c.algorithm(), c.finish()))
                .collect(),
        })
    }
}

impl Written {
    /// Throws the data away (the upload failed verification).
    pub async fn discard(self) {
        let _ = fs::remove_file(&self.path).await;
    }
}

impl ObjectStore {
    /// Opens the store under `root` and clears what interrupted uploads left.
    pub async fn open(root: &Path, store: &Store) -> Result<Self, ObjectError> {
        let this = Self {
            root: root.to_path_buf(),
            buckets: store.table()?,
            objects: store.table()?,
            uploads: store.table()?,
            parts: store.table()?,
        };
        let tmp = this.root.join("tmp");
        let _ = fs::remove_dir_all(&tmp).await;
        fs::create_dir_all(&tmp).await?;
        fs::create_dir_all(this.root.join("data")).await?;
        let removed = this.collect_garbage().await?;
        if removed > 0 {
            tracing::info!(removed, "removed data files no object refers to");
        }
        Ok(this)
    }

    async fn collect_garbage(&self) -> Result<usize, ObjectError> {
        let mut live: HashSet<String> = self.objects.list()?.into_iter().map(|o| o.data).collect();
        live.extend(self.parts.list()?.into_iter().map(|p| p.data));
        let mut removed = 0;
        let mut dir = fs::read_dir(self.root.join("data")).await?;
        while let Some(entry) = dir.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                fs::remove_file(entry.path()).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.root.join("data").join(id)
    }

    /// The bucket named `name`.
    pub fn bucket(&self, name: &str) -> Result<Option<Bucket>, ObjectError> {
        Ok(self.buckets.get(&name.to_string())?)
    }

    /// Every bucket, by name.
    pub fn buckets(&self) -> Result<Vec<Bucket>, ObjectError> {
        Ok(self.buckets.list()?)
    }

    /// Creates a bucket; false if the name is taken.
    pub fn create_bucket(&self, bucket: &Bucket) -> Result<bool, ObjectError> {
        Ok(self.buckets.insert_new(bucket)?)
    }

    /// Replaces a bucket's record (its ACL).
    pub fn update_bucket(&self, bucket: &Bucket) -> Result<(), ObjectError> {
        self.buckets.put(bucket)?;
        Ok(())
    }

    /// True when the bucket holds no object.
    pub fn bucket_is_empty(&self, name: &str) -> Result<bool, ObjectError> {
        Ok(self
            .objects
            .scan_prefix(&prefix_key(name, ""))
            .map(|v| v.is_empty())?)
    }

    /// Deletes a bucket record and aborts its multipart uploads.
    pub async fn delete_bucket(&self, name: &str) -> Result<(), ObjectError> {
        self.buckets.delete(&name.to_string())?;
        for upload in self.uploads(name)? {
            self.abort_upload(name, &upload.upload_id).await?;
        }
        Ok(())
    }

    /// Starts an upload, hashing with SHA-256 when `sha256` and with `checksums`.
    pub async fn begin(
        &self,
        sha256: bool,
        checksums: &[Algorithm],
    ) -> Result<Upload, ObjectError> {
        let id = random_id();
        let path = self.root.join("tmp").join(&id);
        let file = fs::File::create(&path).await?;
        Ok(Upload {
            path,
            id,
            file,
            size: 0,
            md5: Md5::new(),
            sha256: sha256.then(Sha256::new),
            checksums: checksums.iter().map(|a| Checksummer::new(*a)).collect(),
        })
    }

    /// Makes a verified upload visible as `object` (whose `data` is set here),
    /// replacing any object under its key. Durable when it returns.
    pub async fn commit(
        &self,
        mut object: Object,
        written: Written,
    ) -> Result<Object, ObjectError> {
        object.data = self.publish(written).await?;
        let old = self.objects.put(&object)?;
        if let Some(old) = old {
            let _ = fs::remove_file(self.data_path(&old.data)).await;
        }
        Ok(object)
    }

    /// The object under `key`.
    pub fn object(&self, bucket: &str, key: &str) -> Result<Option<Object>, ObjectError> {
        Ok(self.objects.get(&(bucket.to_string(), key.to_string()))?)
    }

    /// Replaces an object's record `current` by `new` (its ACL, say), if
    /// nobody changed it meanwhile; false if somebody did.
    pub fn update_object(&self, current: &Object, new: &Object) -> Result<bool, ObjectError> {
        Ok(self.objects.replace(current, new)?)
    }

    /// Opens an object's data for reading.
    pub async fn open_data(&self, object: &Object) -> Result<fs::File, ObjectError> {
        Ok(fs::File::open(self.data_path(&object.data)).await?)
    }

    /// Deletes an object; true if there was one.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<bool, ObjectError> {
        match self
            .objects
            .delete(&(bucket.to_string(), key.to_string()))?
        {
            Some(old) => {
                let _ = fs::remove_file(self.data_path(&old.data)).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Objects of `bucket` whose keys start with `prefix` and sort after
    /// `after`, in key order, at most `limit` of them (plus whether more exist).
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<Object>, bool), ObjectError> {
        let mut out = Vec::new();
        for object in self.objects.scan_prefix(&prefix_key(bucket, prefix))? {
            if object.key.as_str() <= after {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(object);
        }
        Ok((out, false))
    }

    /// Makes a verified upload visible under its data file name and fsyncs
    /// the directory; returns that name.
    async fn publish(&self, written: Written) -> Result<String, ObjectError> {
        fs::rename(&written.path, self.data_path(&written.id)).await?;
        fs::File::open(self.root.join("data"))
            .await?
            .sync_all()
            .await?;
        Ok(written.id)
    }

    /// Copies `len` bytes of `object` from `start` into `upload` (hashing them).
    pub async fn copy_into(
        &self,
        object: &Object,
        start: u64,
        len: u64,
        upload: &mut Upload,
    ) -> Result<(), ObjectError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = self.open_data(object).await?;
        file.seek(io::SeekFrom::Start(start)).await?;
        let mut file = file.take(len);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            upload.write(&buf[..n]).await?;
        }
        if upload.size() < len {
            return Err(ObjectError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "object data is shorter than its record",
            )));
        }
        Ok(())
    }

    /// Records a new multipart upload.
    pub fn create_upload(&self, upload: &MultipartUpload) -> Result<(), ObjectError> {
        self.uploads.put(upload)?;
        Ok(())
    }

    /// The multipart upload `upload_id` of `bucket`.
    pub fn upload(
        &self,
        bucket: &str,
        upload_id: &str,
    ) -> Result<Option<MultipartUpload>, ObjectError> {
        Ok(self
            .uploads
            .get(&(bucket.to_string(), upload_id.to_string()))?)
    }

    /// Every multipart upload of `bucket` in progress, in no particular order.
    pub fn uploads(&self, bucket: &str) -> Result<Vec<MultipartUpload>, ObjectError> {
        Ok(self.uploads.scan_prefix(&prefix_key(bucket, ""))?)
    }

    /// Makes a verified part visible, replacing any part with its number.
    pub async fn commit_part(&self, mut part: Part, written: Written) -> Result<Part, ObjectError> {
        part.data = self.publish(written).await?;
        if let Some(old) = self.parts.put(&part)? {
            let _ = fs::remove_file(self.data_path(&old.data)).await;
        }
        Ok(part)
    }

    /// The parts of `upload_id`, by part number.
    pub fn parts(&self, upload_id: &str) -> Result<Vec<Part>, ObjectError> {
        Ok(self.parts.scan_prefix(&prefix_key(upload_id, ""))?)
    }

    /// Forgets an upload and deletes its parts.
    pub async fn abort_upload(&self, bucket: &str, upload_id: &str) -> Result<(), ObjectError> {
        // The upload first: once it is gone no part can be added to it.
        self.uploads
            .delete(&(bucket.to_string(), upload_id.to_string()))?;
        for part in self.parts(upload_id)? {
            self.parts.delete(&part.key())?;
            let _ = fs::remove_file(self.data_path(&part.data)).await;
        }
        Ok(())
    }

    /// Joins `parts` (already checked against the request) into the object
    /// `object`, makes it visible and forgets the upload. Durable when it returns.
    pub async fn complete_upload(
        &self,
        upload: &MultipartUpload,
        parts: &[Part],
        mut object: Object,
    ) -> Result<Object, ObjectError> {
        let id = random_id();
        let tmp = self.root.join("tmp").join(&id);
        let sources: Vec<PathBuf> = parts.iter().map(|p| self.data_path(&p.data)).collect();
        let joined = tmp.clone();
        // std::io::copy between files uses copy_file_range: no bytes pass
        // through this process.
        let size = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let mut out = std::fs::File::create(&joined)?;
            let mut size = 0;
            for source in sources {
                size += io::copy(&mut std::fs::File::open(source)?, &mut out)?;
            }
            out.sync_all()?;
            Ok(size)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
        let size = match size {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&tmp).await;
                return Err(e.into());
            }
        };
        object.size = size;
        let written = Written {
            id,
            path: tmp,
            size,
            md5_hex: String::new(),
            sha256_hex: None,
            checksums: BTreeMap::new(),
        };
        let object = self.commit(object, written).await?;
        self.abort_upload(&upload.bucket, &upload.upload_id).await?;
        Ok(object)
    }
}

fn prefix_key(bucket: &str, prefix: &str) -> Vec<u8> {
    let mut k = bucket.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(prefix.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str) -> Object {
        Object {
            bucket: "b".into(),
            key: key.into(),
            size: 0,
            etag: String::new(),
            last_modified_ms: 0,
            owner_id: "1".into(),
            owner_name: "a".into(),
            headers: BTreeMap::new(),
            user_metadata: BTreeMap::new(),
            checksums: BTreeMap::new(),
            acl: "private".into(),
            data: String::new(),
            sha256: None,
        }
    }

    async fn put(store: &ObjectStore, key: &str, data: &[u8]) -> Object {
        let mut up = store.begin(true, &[Algorithm::Crc32]).await.expect("begin");
        up.write(data).await.expect("write");
        let written = up.finish().await.expect("finish");
        let mut o = object(key);
        o.size = written.size;
        o.etag = written.md5_hex.clone();
        store.commit(o, written).await.expect("commit")
    }

    #[tokio::test]
    async fn objects_replace_list_and_delete_without_leaking_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Store::temporary().expect("db");
        let store = ObjectStore::open(dir.path(), &db).await.expect("open");
        let a1 = put(&store, "a", b"one").await;
        assert_eq!(a1.etag, "f97c5d29941bfb1b2fdab0874906ab82");
        let a2 = put(&store, "a", b"two").await;
        put(&store, "b/c", b"three").await;
        assert!(
            !dir.path().join("data").join(&a1.data).exists(),
            "replaced data is removed"
        );
        let mut buf = String::new();
        tokio::io::AsyncReadExt::read_to_string(
            &mut store.open_data(&a2).await.expect("open"),
            &mut buf,
        )
        .await
        .expect("read");
        assert_eq!(buf, "two");
        let (list, more) = store.list("b", "", "", 1).expect("list");
        assert_eq!((list.len(), more), (1, true));
        let (list, more) = store.list("b", "b/", "", 10).expect("list");
        assert_eq!((list[0].key.as_str(), more), ("b/c", false));
        let (list, _) = store.list("b", "", "a", 10).expect("list");
        assert_eq!(list.len(), 1);
        assert!(store.delete_object("b", "a").await.expect("delete"));
        assert!(!store.delete_object("b", "a").await.expect("delete"));
        assert_eq!(
            std::fs::read_dir(dir.path().join("data"))
                .expect("dir")
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn interrupted_uploads_leave_nothing_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Store::temporary().expect("db");
        {
            let store = ObjectStore::open(dir.path(), &db).await.expect("open");
            let mut up = store.begin(false, &[]).await.expect("begin");
            up.write(b"partial").await.expect("write");
            // An orphan data file, as a crash between rename and metadata leaves.
            std::fs::write(dir.path().join("data").join("orphan"), b"x").expect("orphan");
            drop(up);
        }
        let _store = ObjectStore::open(dir.path(), &db).await.expect("reopen");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("data"))
                .expect("data")
                .count(),
            0
        );
    }
}
