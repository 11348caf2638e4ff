//! Accounts and their access keys: one identity for EC2 and S3.

use common::{
    ids,
    store::{Record, Store, StoreError, Table},
    time,
};
use serde::{Deserialize, Serialize};

/// An account, keyed by its unique name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub account_id: String,
    pub created_ms: i64,
    /// Limits on what the account may run at once.
    pub quota: Quota,
}

/// Per-account limits, enforced on RunInstances; None is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Instances not yet terminated.
    pub instances: Option<u32>,
    /// Virtual cores of those instances.
    pub cores: Option<u32>,
    /// Memory of those instances, MiB.
    pub memory_mib: Option<u64>,
    /// EBS volumes held (in any state).
    #[serde(default)]
    pub volumes: Option<u32>,
    /// GiB of those volumes.
    #[serde(default)]
    pub volume_gib: Option<u64>,
}

impl Record for Account {
    const TABLE: &'static str = "accounts";
    /// 2: `quota` added.
    const SCHEMA: u32 = 2;
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
    fn migrate(from: u32, value: serde_json::Value) -> Result<serde_json::Value, String> {
        common::store::add_field(from, value, &[("quota", serde_json::json!({}))])
    }
}

/// An access key of a user of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account_id: String,
    pub account_name: String,
    pub user_name: String,
    pub created_ms: i64,
}

impl Record for AccessKey {
    const TABLE: &'static str = "access_keys";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.access_key_id.clone()
    }
}

/// A user's console password: an Argon2id hash (PHC string), never the
/// password. Keyed `<account id>/<user name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginProfile {
    pub account_id: String,
    pub account_name: String,
    pub user_name: String,
    pub password_hash: String,
    pub created_ms: i64,
}

impl Record for LoginProfile {
    const TABLE: &'static str = "login_profiles";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        format!("{}/{}", self.account_id, self.user_name)
    }
}

/// Who a password or an access key proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account_id: String,
    pub account_name: String,
    pub user_name: String,
}

/// Shortest and longest passwords taken (IAM's default policy and limit).
pub const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=128;

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid account name {0:?}: use 3 to 63 lowercase letters, digits and hyphens, not starting or ending with a hyphen")]
    InvalidName(String),
    #[error("invalid user name {0:?}: use 1 to 64 letters, digits and +=,.@_-")]
    InvalidUserName(String),
    #[error("account {0} already exists")]
    Exists(String),
    #[error("no account {0}")]
    NoSuchAccount(String),
    #[error("account {0} is the system account and cannot be deleted")]
    Protected(String),
    /// It still holds resources (what, in words).
    #[error("{0}")]
    InUse(String),
    /// What it holds cannot be checked now.
    #[error("{0}")]
    Unavailable(String),
    #[error("the password must be 8 to 128 characters")]
    PasswordPolicy,
    #[error("user {0} has a login profile already")]
    LoginExists(String),
    #[error("user {0} has no login profile")]
    NoLoginProfile(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The account store.
#[derive(Clone, Debug)]
pub struct Accounts {
    accounts: Table<Account>,
    keys: Table<AccessKey>,
    logins: Table<LoginProfile>,
    admin_account: String,
}

/// Name of each account's first user.
pub const ADMIN_USER: &str = "admin";

fn valid_account_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

impl Accounts {
    /// Opens the tables; `admin_account` is the system account.
    pub fn open(store: &Store, admin_account: &str) -> Result<Self, AccountError> {
        if !valid_account_name(admin_account) {
            return Err(AccountError::InvalidName(admin_account.into()));
        }
        Ok(Self {
            accounts: store.table()?,
            keys: store.table()?,
            logins: store.table()?,
            admin_account: admin_account.into(),
        })
    }

    /// Creates the system account and its admin's access key if missing.
    /// Safe to run on every start, also after a crash half-way through.
    pub fn bootstrap(&self) -> Result<AccessKey, AccountError> {
        let account = match self.create(&self.admin_account) {
            Ok(a) => a,
            Err(AccountError::Exists(_)) => self.find(&self.admin_account)?,
            Err(e) => return Err(e),
        };
        if let Some(key) = self
            .keys_of(&account.name)?
            .into_iter()
            .find(|k| k.user_name == ADMIN_USER)
        {
            return Ok(key);
        }
        tracing::info!(account = %account.name, account_id = %account.account_id, "created the system account");
        self.create_key(&account.name, ADMIN_USER)
    }

    /// Creates an account; its id is new and unique.
    pub fn create(&self, name: &str) -> Result<Account, AccountError> {
        if !valid_account_name(name) {
            return Err(AccountError::InvalidName(name.into()));
        }
        let existing = self.accounts.list()?;
        let account_id = loop {
            let id = ids::account_id();
            if !existing.iter().any(|a| a.account_id == id) {
                break id;
            }
        };
        let account = Account {
            name: name.into(),
            account_id,
            created_ms: time::unix_ms(),
            quota: Quota::default(),
        };
        if self.accounts.insert_new(&account)? {
            Ok(account)
        } else {
            Err(AccountError::Exists(name.into()))
        }
    }

    /// The account named `name_or_id` (a name or a 12-digit id).
    pub fn find(&self, name_or_id: &str) -> Result<Account, AccountError> {
        if let Some(a) = self.accounts.get(&name_or_id.to_string())? {
            return Ok(a);
        }
        self.accounts
            .list()?
            .into_iter()
            .find(|a| a.account_id == name_or_id)
            .ok_or_else(|| AccountError::NoSuchAccount(name_or_id.into()))
    }

    /// Sets an account's quota (replacing the old one whole).
    pub fn set_quota(&self, name_or_id: &str, quota: Quota) -> Result<Account, AccountError> {
        let mut account = self.find(name_or_id)?;
        account.quota = quota;
        self.accounts.put(&account)?;
        Ok(account)
    }

    /// Every account, by name.
    pub fn list(&self) -> Result<Vec<Account>, AccountError> {
        Ok(self.accounts.list()?)
    }

    /// Deletes an account and its access keys.
    pub fn delete(&self, name_or_id: &str) -> Result<Account, AccountError> {
        let account = self.find(name_or_id)?;
        self.deletable(&account)?;
        // Keys first: a crash half-way leaves an account without keys, never
        // keys that authenticate as an account that is gone.
        for key in self.keys_of(&account.name)? {
            self.keys.delete(&key.access_key_id)?;
        }
        for login in self.logins.list()? {
            if login.account_id == account.account_id {
                self.logins.delete(&login.key())?;
            }
        }
        self.accounts.delete(&account.name)?;
        Ok(account)
    }

    /// Refuses the system account, which is never deleted.
    pub fn deletable(&self, account: &Account) -> Result<(), AccountError> {
        if account.name == self.admin_account {
            return Err(AccountError::Protected(account.name.clone()));
        }
        Ok(())
    }

    /// Deletes every access key of the account (it can no longer sign in).
    pub fn revoke_keys(&self, account: &str) -> Result<usize, AccountError> {
        let keys = self.keys_of(account)?;
        for key in &keys {
            self.keys.delete(&key.access_key_id)?;
        }
        Ok(keys.len())
    }

    /// A new access key for `user_name` of the account.
    pub fn create_key(&self, account: &str, user_name: &str) -> Result<AccessKey, AccountError> {
        if !valid_user_name(user_name) {
            return Err(AccountError::InvalidUserName(user_name.into()));
        }
        let account = self.find(account)?;
        loop {
            let key = AccessKey {
                access_key_id: ids::access_key_id(),
                secret_access_key: ids::secret_access_key(),
                account_id: account.account_id.clone(),
                account_name: account.name.clone(),
                user_name: user_name.into(),
                created_ms: time::unix_ms(),
            };
            if self.keys.insert_new(&key)? {
                return Ok(key);
            }
        }
    }

    /// Deletes an access key.
    pub fn delete_key(&self, access_key_id: &str) -> Result<(), AccountError> {
        self.keys.delete(&access_key_id.to_string())?;
        Ok(())
    }

    /// The access keys of an account.
    pub fn keys_of(&self, account: &str) -> Result<Vec<AccessKey>, AccountError> {
        let account = self.find(account)?;
        Ok(self
            .keys
            .list()?
            .into_iter()
            .filter(|k| k.account_id == account.account_id)
            .collect())
    }

    /// Sets the console password of `user_name` of the account: `create`
    /// makes a new login profile (refused when there is one), otherwise an
    /// existing one is changed (refused when there is none).
    pub fn set_password(
        &self,
        account: &str,
        user_name: &str,
        password: &str,
        create: Option<bool>,
    ) -> Result<LoginProfile, AccountError> {
        if !valid_user_name(user_name) {
            return Err(AccountError::InvalidUserName(user_name.into()));
        }
        if !PASSWORD_LEN.contains(&password.chars().count()) {
            return Err(AccountError::PasswordPolicy);
        }
        let account = self.find(account)?;
        let key = format!("{}/{user_name}", account.account_id);
        let existing = self.logins.get(&key)?;
        match (create, &existing) {
            (Some(true), Some(_)) => return Err(AccountError::LoginExists(user_name.into())),
            (Some(false), None) => return Err(AccountError::NoLoginProfile(user_name.into())),
            _ => {}
        }
        let profile = LoginProfile {
            account_id: account.account_id,
            account_name: account.name,
            user_name: user_name.into(),
            password_hash: hash_password(password)?,
            created_ms: existing.map_or_else(time::unix_ms, |e| e.created_ms),
        };
        self.logins.put(&profile)?;
        Ok(profile)
    }

    /// The login profile of `user_name` of the account.
    pub fn login_profile(
        &self,
        account: &str,
        user_name: &str,
    ) -> Result<LoginProfile, AccountError> {
        let account = self.find(account)?;
        self.logins
            .get(&format!("{}/{user_name}", account.account_id))?
            .ok_or_else(|| AccountError::NoLoginProfile(user_name.into()))
    }

    /// Removes the console password of `user_name` of the account.
    pub fn delete_login_profile(&self, account: &str, user_name: &str) -> Result<(), AccountError> {
        let profile = self.login_profile(account, user_name)?;
        self.logins.delete(&profile.key())?;
        Ok(())
    }

    /// Who `password` signs in as, when it is `user_name`'s of the account
    /// (by name or id); None for any wrong part, alike.
    pub fn check_password(
        &self,
        account: &str,
        user_name: &str,
        password: &str,
    ) -> Result<Option<Identity>, AccountError> {
        let profile = match self.login_profile(account, user_name) {
            Ok(p) => Some(p),
            Err(AccountError::NoSuchAccount(_)) | Err(AccountError::NoLoginProfile(_)) => None,
            Err(e) => return Err(e),
        };
        // A missing user costs a hash too, so timing does not tell who exists.
        let hash = profile
            .as_ref()
            .map_or(DUMMY_HASH, |p| p.password_hash.as_str());
        let matches = verify_password(hash, password);
        Ok(profile.filter(|_| matches).map(|p| Identity {
            account_id: p.account_id,
            account_name: p.account_name,
            user_name: p.user_name,
        }))
    }

    /// The key with this id, for request authentication.
    pub fn key(&self, access_key_id: &str) -> Result<Option<AccessKey>, AccountError> {
        Ok(self.keys.get(&access_key_id.to_string())?)
    }
}

/// An Argon2id hash of a password nobody has, checked when the user is
/// missing. (Argon2id, m=19456 KiB, t=2, p=1: the crate's defaults.)
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpg";

fn hash_password(password: &str) -> Result<String, AccountError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Unavailable(format!("cannot hash the password: {e}")))
}

fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Accounts {
        Accounts::open(&Store::temporary().expect("store"), "eucalyptus").expect("accounts")
    }

    #[test]
    fn bootstrap_is_idempotent() {
        let a = accounts();
        let first = a.bootstrap().expect("bootstrap");
        let again = a.bootstrap().expect("bootstrap again");
        assert_eq!(first, again);
        assert_eq!(a.list().expect("list").len(), 1);
        assert_eq!(first.user_name, ADMIN_USER);
        assert_eq!(a.key(&first.access_key_id).expect("key"), Some(first));
    }

    #[test]
    fn names_are_unique_and_validated() {
        let a = accounts();
        let acct = a.create("lab-1").expect("create");
        assert!(matches!(a.create("lab-1"), Err(AccountError::Exists(_))));
        for bad in ["", "ab", "Lab", "-lab", "lab-", "lab_1", &"x".repeat(64)] {
            assert!(
                matches!(a.create(bad), Err(AccountError::InvalidName(_))),
                "{bad}"
            );
        }
        assert_eq!(a.find(&acct.account_id).expect("by id"), acct);
    }

    #[test]
    fn quotas_are_kept_and_old_records_migrate() {
        let store = Store::temporary().expect("store");
        let a = Accounts::open(&store, "eucalyptus").expect("accounts");
        a.create("lab").expect("create");
        let q = Quota {
            instances: Some(2),
            cores: None,
            memory_mib: Some(512),
            volumes: Some(3),
            volume_gib: None,
        };
        assert_eq!(a.set_quota("lab", q.clone()).expect("set").quota, q);
        assert_eq!(a.find("lab").expect("find").quota, q);
        let old = serde_json::json!({"name": "old", "account_id": "123456789012", "created_ms": 1});
        let migrated = Account::migrate(1, old).expect("migrate");
        let account: Account = serde_json::from_value(migrated).expect("parse");
        assert_eq!(account.quota, Quota::default());
    }

    #[test]
    fn passwords_are_argon2id_hashes_checked_per_user() {
        let a = accounts();
        a.create("lab").expect("create");
        assert!(matches!(
            a.set_password("lab", "alice", "short", None),
            Err(AccountError::PasswordPolicy)
        ));
        assert!(matches!(
            a.set_password("lab", "alice", "long enough", Some(false)),
            Err(AccountError::NoLoginProfile(_))
        ));
        let p = a
            .set_password("lab", "alice", "long enough", Some(true))
            .expect("create");
        assert!(
            p.password_hash.starts_with("$argon2id$"),
            "{}",
            p.password_hash
        );
        assert!(!p.password_hash.contains("long enough"));
        assert!(matches!(
            a.set_password("lab", "alice", "another one", Some(true)),
            Err(AccountError::LoginExists(_))
        ));
        let who = a
            .check_password("lab", "alice", "long enough")
            .expect("check")
            .expect("signed in");
        assert_eq!(
            (who.account_name.as_str(), who.user_name.as_str()),
            ("lab", "alice")
        );
        let by_id = a.find("lab").expect("find").account_id;
        assert!(a
            .check_password(&by_id, "alice", "long enough")
            .expect("check")
            .is_some());
        for (acct, user, pw) in [
            ("lab", "alice", "long enougH"),
            ("lab", "bob", "long enough"),
            ("nobody", "alice", "long enough"),
        ] {
            assert_eq!(
                a.check_password(acct, user, pw).expect("check"),
                None,
                "{acct} {user} {pw}"
            );
        }
        a.set_password("lab", "alice", "changed it", Some(false))
            .expect("update");
        assert_eq!(
            a.check_password("lab", "alice", "long enough")
                .expect("check"),
            None
        );
        assert!(a
            .check_password("lab", "alice", "changed it")
            .expect("check")
            .is_some());
        a.delete("lab").expect("delete");
        a.create("lab").expect("again");
        assert!(matches!(
            a.login_profile("lab", "alice"),
            Err(AccountError::NoLoginProfile(_))
        ));
    }

    #[test]
    fn the_dummy_hash_is_a_valid_argon2id_hash() {
        assert!(!verify_password(DUMMY_HASH, "anything"));
        assert!(argon2::password_hash::PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn delete_removes_keys_and_protects_the_system_account() {
        let a = accounts();
        a.bootstrap().expect("bootstrap");
        assert!(matches!(
            a.delete("eucalyptus"),
            Err(AccountError::Protected(_))
        ));
        a.create("lab").expect("create");
        let key = a.create_key("lab", "alice").expect("key");
        assert!(matches!(
            a.create_key("lab", "bad name"),
            Err(AccountError::InvalidUserName(_))
        ));
        a.delete("lab").expect("delete");
        assert_eq!(a.key(&key.access_key_id).expect("lookup"), None);
        assert!(matches!(a.find("lab"), Err(AccountError::NoSuchAccount(_))));
        assert!(matches!(
            a.delete("lab"),
            Err(AccountError::NoSuchAccount(_))
        ));
    }
}
