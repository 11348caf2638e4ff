//! Tags: key/value pairs an account puts on its resources. Like EC2, tags
//! are the tagging account's own: tags on a shared image are seen only by
//! the account that set them.

use common::store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};

/// Most tags on one resource.
pub const MAX_TAGS: usize = 50;

/// One tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub account_id: String,
    pub resource_id: String,
    /// EC2's resource type: `image`, `instance`, ...
    pub resource_type: String,
    pub key: String,
    pub value: String,
}

impl Record for Tag {
    const TABLE: &'static str = "tags";
    const SCHEMA: u32 = 1;
    type Key = (String, String);
    fn key(&self) -> Self::Key {
        (
            self.account_id.clone(),
            format!("{}\0{}", self.resource_id, self.key),
        )
    }
}

/// The tag store.
#[derive(Debug)]
pub struct Tags {
    table: Table<Tag>,
}

fn prefix(account_id: &str, resource_id: &str) -> Vec<u8> {
    let mut p = account_id.as_bytes().to_vec();
    p.push(0);
    p.extend_from_slice(resource_id.as_bytes());
    p.push(0);
    p
}

impl Tags {
    /// The tags in `store`.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
        })
    }

    /// `account_id`'s tags on `resource_id`, by key.
    pub fn of(&self, account_id: &str, resource_id: &str) -> Result<Vec<Tag>, StoreError> {
        self.table.scan_prefix(&prefix(account_id, resource_id))
    }

    /// Every tag of `account_id`.
    pub fn all(&self, account_id: &str) -> Result<Vec<Tag>, StoreError> {
        let mut p = account_id.as_bytes().to_vec();
        p.push(0);
        self.table.scan_prefix(&p)
    }

    /// Sets tags (replacing values of existing keys).
    pub fn set(&self, tags: &[Tag]) -> Result<(), StoreError> {
        for t in tags {
            self.table.put(t)?;
        }
        Ok(())
    }

    /// Removes `key` from `resource_id` (only if its value is `value`, when given).
    pub fn remove(
        &self,
        account_id: &str,
        resource_id: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        let k = (account_id.to_string(), format!("{resource_id}\0{key}"));
        if let Some(t) = self.table.get(&k)? {
            if value.is_none_or(|v| v == t.value) {
                self.table.delete(&k)?;
            }
        }
        Ok(())
    }

    /// Removes every tag on `resource_id`, of every account.
    pub fn forget(&self, resource_id: &str) -> Result<(), StoreError> {
        for t in self.table.list()? {
            if t.resource_id == resource_id {
                self.table.delete(&t.key())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(account: &str, resource: &str, key: &str, value: &str) -> Tag {
        Tag {
            account_id: account.into(),
            resource_id: resource.into(),
            resource_type: "instance".into(),
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn tags_belong_to_their_account_and_resource() {
        let store = Store::temporary().expect("store");
        let tags = Tags::open(&store).expect("open");
        tags.set(&[
            tag("111", "i-1", "Name", "web"),
            tag("111", "i-1", "env", "lab"),
            tag("111", "i-10", "Name", "db"),
            tag("222", "i-1", "Name", "theirs"),
        ])
        .expect("set");
        let mine: Vec<String> = tags
            .of("111", "i-1")
            .expect("of")
            .into_iter()
            .map(|t| t.value)
            .collect();
        assert_eq!(mine, ["web", "lab"]);
        assert_eq!(tags.all("111").expect("all").len(), 3);
        tags.set(&[tag("111", "i-1", "Name", "web-2")])
            .expect("replace");
        tags.remove("111", "i-1", "env", Some("other"))
            .expect("value differs");
        assert_eq!(tags.of("111", "i-1").expect("of").len(), 2);
        tags.remove("111", "i-1", "env", None).expect("remove");
        assert_eq!(tags.of("111", "i-1").expect("of")[0].value, "web-2");
        tags.forget("i-1").expect("forget");
        assert!(tags.of("111", "i-1").expect("of").is_empty());
        assert!(tags.of("222", "i-1").expect("of").is_empty());
        assert_eq!(tags.all("111").expect("all").len(), 1);
    }
}
