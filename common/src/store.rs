//! The durable store every stateful tier uses: typed tables over a
//! [`Backend`] of ordered byte trees. [`SledBackend`] keeps them on disk;
//! [`MemoryBackend`] keeps them in memory (tests, simulations); another
//! (a distributed one) plugs in the same way, and the conformance tests at
//! the end of this file run against each.
//!
//! A [`Record`] names its table, its key and its schema version. Values are
//! kept as a JSON envelope `{"schema": N, "record": ...}`; a record written by
//! an older schema is migrated by [`Record::migrate`] when read, and one
//! written by a newer schema is refused rather than misread.
//!
//! Every write is flushed to disk before it returns: a caller that
//! acknowledges after a successful write never loses that write to a crash.

use std::{
    collections::{BTreeMap, HashMap},
    marker::PhantomData,
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot encode a {table} record: {source}")]
    Encode {
        table: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot decode {table} record {key}: {reason}")]
    Decode {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("{table} record {key} has schema {found}, newer than this build's {supported}")]
    TooNew {
        table: &'static str,
        key: String,
        found: u32,
        supported: u32,
    },
}

/// A key that orders and round-trips as bytes.
pub trait StoreKey: Sized {
    /// The key's bytes; their order is the table's order.
    fn to_bytes(&self) -> Vec<u8>;
    /// The key back from its bytes.
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

impl StoreKey for String {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl StoreKey for u64 {
    fn to_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// Two strings, ordered by the first then the second (`a\0b`).
impl StoreKey for (String, String) {
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.0.as_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(self.1.as_bytes());
        v
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let pos = bytes.iter().position(|b| *b == 0)?;
        Some((
            String::from_utf8(bytes[..pos].to_vec()).ok()?,
            String::from_utf8(bytes[pos + 1..].to_vec()).ok()?,
        ))
    }
}

/// A type stored in a table.
pub trait Record: Serialize + DeserializeOwned {
    /// The table's name; unique within a store.
    const TABLE: &'static str;
    /// Schema version this build writes. Bump it with a migration.
    const SCHEMA: u32;
    /// The key type.
    type Key: StoreKey;
    /// This record's key.
    fn key(&self) -> Self::Key;
    /// Turns a record of schema `from` (older than [`Record::SCHEMA`]) into
    /// the next schema's form. The default knows no older schema.
    fn migrate(from: u32, value: Value) -> Result<Value, String> {
        let _ = value;
        Err(format!("no migration from schema {from}"))
    }
}

/// The migration of a record whose schemas only ever added fields:
/// `added[i]` is the field (and its value for old records) that schema
/// `i + 2` added, so a record of schema `from` gets `added[from - 1]`.
pub fn add_field(from: u32, mut value: Value, added: &[(&str, Value)]) -> Result<Value, String> {
    let step = (from as usize)
        .checked_sub(1)
        .and_then(|i| added.get(i))
        .ok_or_else(|| format!("no migration from schema {from}"))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| format!("a schema {from} record is not an object"))?;
    object.insert(step.0.to_string(), step.1.clone());
    Ok(value)
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    schema: u32,
    record: T,
}

/// Key and value bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One ordered tree of byte keys and values. Every write is durable when
/// it returns.
pub trait Tree: Send + Sync + std::fmt::Debug {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes `value` under `key`; returns the old value.
    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes `new` (or removes, with None) only if the value is `old`
    /// (None: absent); false when it was not.
    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError>;
    /// Removes `key`; returns its value.
    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes (Some) or removes (None) every key of `batch`, all or none,
    /// durable once on return: many records for the price of one write.
    fn apply_batch(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a store's trees live.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The tree `name` (made empty if new).
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Trees in a sled database on disk.
#[derive(Clone)]
pub struct SledBackend {
    db: sled::Db,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledBackend").finish_non_exhaustive()
    }
}

struct SledTree {
    tree: sled::Tree,
    db: sled::Db,
}

impl std::fmt::Debug for SledTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledTree").finish_non_exhaustive()
    }
}

impl SledTree {
    fn durable(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

impl Tree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        let old = self.tree.insert(key, value)?;
        self.durable()?;
        Ok(old.map(|v| v.to_vec()))
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let swapped = self.tree.compare_and_swap(key, old, new)?.is_ok();
        if swapped {
            self.durable()?;
        }
        Ok(swapped)
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let old = self.tree.remove(key)?;
        self.durable()?;
        Ok(old.map(|v| v.to_vec()))
    }

    fn apply_batch(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b)?;
        self.durable()
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.tree.len()
    }
}

impl Backend for SledBackend {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
        Ok(Arc::new(SledTree {
            tree: self.db.open_tree(name)?,
            db: self.db.clone(),
        }))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Trees in memory: nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    trees: Mutex<HashMap<String, Arc<MemoryTree>>>,
}

#[derive(Debug, Default)]
struct MemoryTree {
    entries: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryTree {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Tree for MemoryTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.write().insert(key.to_vec(), value))
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let mut entries = self.write();
        if entries.get(key).map(Vec::as_slice) != old {
            return Ok(false);
        }
        match new {
            Some(v) => entries.insert(key.to_vec(), v),
            None => entries.remove(key),
        };
        Ok(true)
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.write().remove(key))
    }

    fn apply_batch(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let mut entries = self.write();
        for (k, v) in batch {
            match v {
                Some(v) => entries.insert(k, v),
                None => entries.remove(&k),
            };
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .read()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn len(&self) -> usize {
        self.read().len()
    }
}

impl Backend for MemoryBackend {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        let tree: Arc<MemoryTree> = trees.entry(name.to_string()).or_default().clone();
        Ok(tree)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One tier's database.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens (or creates) the database in directory `path`, on sled.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        Ok(Self::on(Arc::new(SledBackend { db })))
    }

    /// A throw-away database, for tests.
    pub fn temporary() -> Result<Self, StoreError> {
        Ok(Self::in_memory())
    }

    /// A database in memory.
    pub fn in_memory() -> Self {
        Self::on(Arc::new(MemoryBackend::default()))
    }

    /// A database on `backend`.
    pub fn on(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// The table of `R`.
    pub fn table<R: Record>(&self) -> Result<Table<R>, StoreError> {
        Ok(Table {
            tree: self.backend.tree(R::TABLE)?,
            _record: PhantomData,
        })
    }

    /// Flushes everything written so far.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush()
    }
}

/// The records of one type.
pub struct Table<R> {
    tree: Arc<dyn Tree>,
    _record: PhantomData<fn() -> R>,
}

impl<R> Clone for Table<R> {
    fn clone(&self) -> Self {
        Self {
            tree: self.tree.clone(),
            _record: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for Table<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").finish_non_exhaustive()
    }
}

impl<R: Record> Table<R> {
    fn encode(record: &R) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&Envelope {
            schema: R::SCHEMA,
            record,
        })
        .map_err(|source| StoreError::Encode {
            table: R::TABLE,
            source,
        })
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<R, StoreError> {
        let key_text = || String::from_utf8_lossy(key).into_owned();
        let fail = |reason: String| StoreError::Decode {
            table: R::TABLE,
            key: key_text(),
            reason,
        };
        let envelope: Envelope<Value> =
            serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
        let mut schema = envelope.schema;
        if schema > R::SCHEMA {
            return Err(StoreError::TooNew {
                table: R::TABLE,
                key: key_text(),
                found: schema,
                supported: R::SCHEMA,
            });
        }
        let mut value = envelope.record;
        while schema < R::SCHEMA {
            value = R::migrate(schema, value).map_err(fail)?;
            schema += 1;
        }
        serde_json::from_value(value).map_err(|e| fail(e.to_string()))
    }

    /// The record under `key`.
    pub fn get(&self, key: &R::Key) -> Result<Option<R>, StoreError> {
        let k = key.to_bytes();
        self.tree.get(&k)?.map(|v| Self::decode(&k, &v)).transpose()
    }

    /// Writes `record` durably, replacing any under its key; returns the old one.
    pub fn put(&self, record: &R) -> Result<Option<R>, StoreError> {
        let k = record.key().to_bytes();
        let old = self.tree.insert(&k, Self::encode(record)?)?;
        old.map(|v| Self::decode(&k, &v)).transpose()
    }

    /// Writes every record of `records` durably, all or none, with one
    /// flush.
    pub fn put_all<'a>(&self, records: impl IntoIterator<Item = &'a R>) -> Result<(), StoreError>
    where
        R: 'a,
    {
        let batch = records
            .into_iter()
            .map(|r| Ok((r.key().to_bytes(), Some(Self::encode(r)?))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.tree.apply_batch(batch)
    }

    /// Writes `record` durably only if its key is free; false if it was taken.
    pub fn insert_new(&self, record: &R) -> Result<bool, StoreError> {
        let k = record.key().to_bytes();
        self.tree
            .compare_and_swap(&k, None, Some(Self::encode(record)?))
    }

    /// Replaces `current` by `new` (same key) durably, only if the stored
    /// record is still exactly `current`; false if it changed meanwhile.
    pub fn replace(&self, current: &R, new: &R) -> Result<bool, StoreError> {
        let k = new.key().to_bytes();
        let current = Self::encode(current)?;
        self.tree
            .compare_and_swap(&k, Some(&current), Some(Self::encode(new)?))
    }

    /// Deletes durably the record under `key`; returns it.
    pub fn delete(&self, key: &R::Key) -> Result<Option<R>, StoreError> {
        let k = key.to_bytes();
        let old = self.tree.remove(&k)?;
        old.map(|v| Self::decode(&k, &v)).transpose()
    }

    /// Every record, in key order.
    pub fn list(&self) -> Result<Vec<R>, StoreError> {
        self.scan_prefix(&[])
    }

    /// Records whose key bytes start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<R>, StoreError> {
        self.tree
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, v)| Self::decode(&k, &v))
            .collect()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_added_by_later_schemas_are_filled_in_order() {
        let added = [("b", Value::from(2)), ("c", Value::Null)];
        let v = add_field(1, serde_json::json!({"a": 1}), &added).expect("1 to 2");
        assert_eq!(v, serde_json::json!({"a": 1, "b": 2}));
        let v = add_field(2, v, &added).expect("2 to 3");
        assert_eq!(v, serde_json::json!({"a": 1, "b": 2, "c": null}));
        assert!(add_field(3, v.clone(), &added).is_err());
        assert!(add_field(0, v, &added).is_err());
        assert!(add_field(1, Value::from(7), &added).is_err());
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Thing {
        name: String,
        size: u64,
    }

    impl Record for Thing {
        const TABLE: &'static str = "things";
        const SCHEMA: u32 = 2;
        type Key = String;
        fn key(&self) -> String {
            self.name.clone()
        }
        /// Schema 1 called the size `bytes`.
        fn migrate(from: u32, mut value: Value) -> Result<Value, String> {
            match from {
                1 => {
                    let obj = value.as_object_mut().ok_or("not an object")?;
                    let bytes = obj.remove("bytes").ok_or("no bytes")?;
                    obj.insert("size".into(), bytes);
                    Ok(value)
                }
                _ => Err(format!("no migration from schema {from}")),
            }
        }
    }

    fn thing(name: &str, size: u64) -> Thing {
        Thing {
            name: name.into(),
            size,
        }
    }

    /// The conformance suite: what every backend must do alike.
    fn conformance(store: Store) {
        let t = store.table::<Thing>().expect("table");
        assert!(t.is_empty());
        assert_eq!(t.put(&thing("b", 2)).expect("put"), None);
        assert_eq!(t.put(&thing("a", 1)).expect("put"), None);
        assert_eq!(t.put(&thing("a", 3)).expect("put"), Some(thing("a", 1)));
        assert_eq!(t.get(&"a".into()).expect("get"), Some(thing("a", 3)));
        assert_eq!(t.get(&"zz".into()).expect("get"), None);
        assert_eq!(t.list().expect("list"), vec![thing("a", 3), thing("b", 2)]);
        assert!(!t.insert_new(&thing("a", 9)).expect("insert_new"));
        assert!(t.insert_new(&thing("c", 9)).expect("insert_new"));
        // replace only over the exact current record
        assert!(!t.replace(&thing("c", 8), &thing("c", 10)).expect("stale"));
        assert!(t.replace(&thing("c", 9), &thing("c", 10)).expect("current"));
        assert_eq!(t.get(&"c".into()).expect("get"), Some(thing("c", 10)));
        assert_eq!(t.delete(&"b".into()).expect("delete"), Some(thing("b", 2)));
        assert_eq!(t.delete(&"b".into()).expect("delete again"), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.scan_prefix(b"c").expect("scan"), vec![thing("c", 10)]);
        assert_eq!(t.scan_prefix(b"x").expect("scan"), vec![]);
        // Many records in one write.
        t.put_all(&[thing("m1", 1), thing("m2", 2)])
            .expect("put_all");
        assert_eq!(t.get(&"m2".into()).expect("get"), Some(thing("m2", 2)));
        t.delete(&"m1".into()).expect("delete");
        t.delete(&"m2".into()).expect("delete");
        // Keys order as bytes: pairs by their first string, then the second.
        for (i, name) in ["ab", "a", "b", "aa"].iter().enumerate() {
            t.put(&thing(name, i as u64)).expect("put");
        }
        let names: Vec<String> = t
            .list()
            .expect("list")
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["a", "aa", "ab", "b", "c"]);
        // Tables are apart: another table of the store sees none of these.
        let other = store.table::<Other>().expect("other table");
        assert!(other.is_empty());
        other.put(&Other { id: 7 }).expect("put");
        assert_eq!(other.get(&7).expect("get"), Some(Other { id: 7 }));
        assert_eq!(t.len(), 5);
        // A second handle on a table sees the same records.
        let again = store.table::<Thing>().expect("table");
        assert_eq!(again.len(), 5);
        store.flush().expect("flush");
        // Records of older schemas migrate; newer ones are refused.
        let tree = store.backend.tree("things").expect("tree");
        tree.insert(
            b"old",
            br#"{"schema":1,"record":{"name":"old","bytes":7}}"#.to_vec(),
        )
        .expect("raw");
        tree.insert(
            b"new",
            br#"{"schema":3,"record":{"name":"new","size":7}}"#.to_vec(),
        )
        .expect("raw");
        assert_eq!(
            t.get(&"old".into()).expect("migrated"),
            Some(thing("old", 7))
        );
        assert!(matches!(
            t.get(&"new".into()),
            Err(StoreError::TooNew { found: 3, .. })
        ));
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Other {
        id: u64,
    }

    impl Record for Other {
        const TABLE: &'static str = "others";
        const SCHEMA: u32 = 1;
        type Key = u64;
        fn key(&self) -> u64 {
            self.id
        }
    }

    #[test]
    fn sled_conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        conformance(Store::open(dir.path()).expect("open"));
    }

    #[test]
    fn memory_conforms() {
        conformance(Store::in_memory());
    }

    #[test]
    fn writes_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let t = store.table::<Thing>().expect("table");
            for i in 0..100 {
                t.put(&thing(&format!("k{i:03}"), i)).expect("put");
            }
        }
        let store = Store::open(dir.path()).expect("reopen");
        let t = store.table::<Thing>().expect("table");
        assert_eq!(t.len(), 100);
        assert_eq!(t.get(&"k042".into()).expect("get"), Some(thing("k042", 42)));
    }

    #[test]
    fn pair_keys_round_trip_in_order() {
        let k = ("cluster".to_string(), "node-1".to_string());
        assert_eq!(<(String, String)>::from_bytes(&k.to_bytes()), Some(k));
        assert_eq!(u64::from_bytes(&7u64.to_bytes()), Some(7));
        assert!(1u64.to_bytes() < 256u64.to_bytes());
    }
}
