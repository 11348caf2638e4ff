//! Key pairs: made here (the private key is shown once, never kept) or
//! imported, and deleted.

use common::time;

use super::{Cloud, CoreError, IdKind};
use crate::{
    keypairs::{generate_ed25519, generate_rsa, import, KeyPair},
    tags::Tag,
};

/// Where a new pair's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Made here: `rsa` (2048 bits) or `ed25519`.
    Generate(String),
    /// The public key the user sent (OpenSSH, PEM or DER).
    Import(Vec<u8>),
}

/// A pair to add.
#[derive(Debug, Clone)]
pub struct NewKeyPair {
    pub account_id: String,
    pub name: String,
    pub source: KeySource,
    pub tags: Vec<(String, Option<String>)>,
}

/// A pair added: the private key only when it was made here.
#[derive(Debug, Clone)]
pub struct AddedKeyPair {
    pub pair: KeyPair,
    pub private_pem: Option<String>,
    pub tags: Vec<Tag>,
}

/// How a call names one of its pairs.
#[derive(Debug, Clone, Copy)]
pub enum KeyPairRef<'a> {
    Name(&'a str),
    Id(&'a str),
}

impl Cloud {
    /// Adds a key pair to the account (refused when the name is taken).
    pub fn add_key_pair(&self, req: NewKeyPair, dry_run: bool) -> Result<AddedKeyPair, CoreError> {
        let name = &req.name;
        super::error::printable_name("KeyName", name, "Key names are 1 to 255 ASCII characters.")?;
        let imported = match &req.source {
            KeySource::Generate(kind) if !matches!(kind.as_str(), "rsa" | "ed25519") => {
                return Err(CoreError::InvalidValue {
                    param: "KeyType",
                    value: kind.clone(),
                    why: "Use rsa or ed25519.".into(),
                })
            }
            KeySource::Generate(_) => None,
            KeySource::Import(raw) => {
                Some(import(raw).map_err(|e| CoreError::KeyFormat(e.to_string()))?)
            }
        };
        if self.keypairs.get(&req.account_id, name)?.is_some() {
            return Err(CoreError::KeyPairExists(name.clone()));
        }
        if dry_run {
            return Err(CoreError::DryRun);
        }
        let (key_type, public_key, fingerprint, private_pem) = match (&req.source, imported) {
            (_, Some((key_type, public_key, fingerprint))) => {
                (key_type, public_key, fingerprint, None)
            }
            (KeySource::Generate(kind), None) => {
                let made = if kind == "rsa" {
                    generate_rsa(2048)
                } else {
                    generate_ed25519()
                }
                .map_err(|e| CoreError::Store(e.to_string()))?;
                (
                    kind.clone(),
                    made.public_key,
                    made.fingerprint,
                    Some(made.private_pem),
                )
            }
            (KeySource::Import(_), None) => {
                return Err(CoreError::KeyFormat("no key".into()));
            }
        };
        let pair = KeyPair {
            account_id: req.account_id.clone(),
            name: name.clone(),
            key_pair_id: common::ids::resource_id("key"),
            key_type,
            fingerprint,
            public_key,
            created_ms: time::unix_ms(),
        };
        if !self.keypairs.insert(&pair)? {
            return Err(CoreError::KeyPairExists(name.clone()));
        }
        let tags = self.tag_new(
            &req.account_id,
            &[(&pair.key_pair_id, "key-pair")],
            &req.tags,
        )?;
        tracing::info!(key_name = %pair.name, key_pair_id = %pair.key_pair_id, key_type = %pair.key_type, made_here = private_pem.is_some(), "key pair added");
        Ok(AddedKeyPair {
            pair,
            private_pem,
            tags,
        })
    }

    /// Deletes the account's pair; like EC2, a name that does not exist is
    /// no error (an id that does not exist is). Returns what was deleted.
    pub fn delete_key_pair(
        &self,
        account_id: &str,
        which: KeyPairRef<'_>,
        dry_run: bool,
    ) -> Result<Option<KeyPair>, CoreError> {
        let pair = match which {
            KeyPairRef::Name(name) => self.keypairs.get(account_id, name)?,
            KeyPairRef::Id(id) => Some(
                self.keypairs
                    .of(account_id)?
                    .into_iter()
                    .find(|k| k.key_pair_id == id)
                    .ok_or_else(|| CoreError::NotFound {
                        kind: IdKind::KeyPairId,
                        ids: vec![id.to_string()],
                    })?,
            ),
        };
        if dry_run {
            return Err(CoreError::DryRun);
        }
        if let Some(k) = &pair {
            self.keypairs.delete(account_id, &k.name)?;
            self.tags.forget(&k.key_pair_id)?;
            tracing::info!(key_name = %k.name, "key pair deleted");
        }
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::fake::{system_account, test_cloud, FakeCluster};

    #[test]
    fn pairs_are_made_once_per_name_and_deleted_by_name_or_id() {
        let (cloud, _dir) = test_cloud(Arc::new(FakeCluster::new(1, 1)));
        let me = system_account(&cloud);
        let new = |name: &str, source: KeySource| NewKeyPair {
            account_id: me.clone(),
            name: name.into(),
            source,
            tags: Vec::new(),
        };
        let made = cloud
            .add_key_pair(new("k1", KeySource::Generate("ed25519".into())), false)
            .expect("made");
        assert!(made
            .private_pem
            .as_deref()
            .is_some_and(|p| p.contains("PRIVATE KEY")));
        assert!(matches!(
            cloud.add_key_pair(new("k1", KeySource::Generate("rsa".into())), false),
            Err(CoreError::KeyPairExists(_))
        ));
        assert!(matches!(
            cloud.add_key_pair(new("k2", KeySource::Generate("dsa".into())), false),
            Err(CoreError::InvalidValue {
                param: "KeyType",
                ..
            })
        ));
        assert!(matches!(
            cloud.add_key_pair(new("k2", KeySource::Import(b"not a key".to_vec())), false),
            Err(CoreError::KeyFormat(_))
        ));
        let imported = cloud
            .add_key_pair(
                new(
                    "k2",
                    KeySource::Import(made.pair.public_key.clone().into_bytes()),
                ),
                false,
            )
            .expect("imported");
        assert_eq!(imported.private_pem, None);
        assert!(!imported.pair.fingerprint.is_empty());
        assert!(cloud
            .delete_key_pair(&me, KeyPairRef::Name("nope"), false)
            .expect("a missing name is fine")
            .is_none());
        assert!(matches!(
            cloud.delete_key_pair(&me, KeyPairRef::Id("key-0123456789abcdef0"), false),
            Err(CoreError::NotFound { .. })
        ));
        let gone = cloud
            .delete_key_pair(&me, KeyPairRef::Id(&made.pair.key_pair_id), false)
            .expect("by id");
        assert_eq!(gone.map(|k| k.name), Some("k1".to_string()));
        assert_eq!(cloud.keypairs.of(&me).expect("list").len(), 1);
    }
}
