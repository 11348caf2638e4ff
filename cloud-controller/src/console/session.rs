//! Console sign-in and sessions: who a browser is, kept in the CLC's store
//! so a restart signs nobody out; and the growing delay after failed
//! sign-ins.

use std::{collections::HashMap, sync::Mutex};

use common::{
    store::{Record, Store, StoreError, Table},
    time,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::accounts::{AccountError, Accounts, Identity};

/// The session cookie's name.
pub const COOKIE: &str = "gumtree_session";

/// A signed-in browser. Keyed by the SHA-256 of its cookie, so the store
/// never holds a usable token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleSession {
    pub id: String,
    pub account_id: String,
    pub account_name: String,
    pub user_name: String,
    /// Signed in with this access key (it must stay active), or with a
    /// password whose hash digests to `password_stamp` (a new password
    /// ends the session).
    pub access_key_id: Option<String>,
    pub password_stamp: Option<String>,
    /// Sent back in `X-CSRF-Token` with every change.
    pub csrf: String,
    pub created_ms: i64,
    pub last_ms: i64,
}

impl Record for ConsoleSession {
    const TABLE: &'static str = "console_sessions";
    const SCHEMA: u32 = 1;
    type Key = String;
    fn key(&self) -> String {
        self.id.clone()
    }
}

/// How a browser asks to sign in.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Credentials {
    Password {
        account: String,
        user: String,
        password: String,
    },
    AccessKey {
        access_key_id: String,
        secret_access_key: String,
    },
}

/// Why a sign-in or a session check failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the account, user or password is not right")]
    BadCredentials,
    #[error("too many failed sign-ins: try again in {0} s")]
    Throttled(u64),
    #[error("not signed in, or the session ended")]
    NoSession,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Account(#[from] AccountError),
}

/// Failed sign-ins of one name or address.
#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    last_ms: i64,
}

/// Failures before the delay starts.
const FREE_FAILURES: u32 = 3;
/// Longest delay, seconds.
const MAX_DELAY_SECS: u64 = 60;
/// Failed names and addresses remembered before old ones are dropped.
const MAX_REMEMBERED: usize = 10_000;
/// How long a failure is remembered once that many are.
const FORGET_AFTER_MS: i64 = 15 * 60 * 1000;

/// Seconds to wait after `count` failures in a row: none for the first
/// few, then 1, 2, 4 … up to a minute.
pub fn delay_after(count: u32) -> u64 {
    if count < FREE_FAILURES {
        0
    } else {
        (1u64 << (count - FREE_FAILURES).min(6)).min(MAX_DELAY_SECS)
    }
}

/// The sessions and the sign-in throttle.
#[derive(Debug)]
pub struct Sessions {
    table: Table<ConsoleSession>,
    accounts: Accounts,
    idle_ms: i64,
    /// By `user:<account>/<user>`, `key:<id>` and `addr:<ip>`.
    failures: Mutex<HashMap<String, Failures>>,
}

/// Longest a session lives, idle or not.
const MAX_AGE_MS: i64 = 12 * 3600 * 1000;

fn token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Sessions {
    pub fn open(store: &Store, accounts: Accounts, idle_secs: u64) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
            accounts,
            idle_ms: (idle_secs.max(1) * 1000) as i64,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Seconds the session stays alive without use.
    pub fn idle_secs(&self) -> i64 {
        self.idle_ms / 1000
    }

    fn throttle_keys(credentials: &Credentials, addr: &str) -> Vec<String> {
        let who = match credentials {
            Credentials::Password { account, user, .. } => {
                format!("user:{}/{}", account.to_lowercase(), user)
            }
            Credentials::AccessKey { access_key_id, .. } => format!("key:{access_key_id}"),
        };
        vec![who, format!("addr:{addr}")]
    }

    /// Signs in from `addr`: the new session and its cookie token.
    pub fn sign_in(
        &self,
        credentials: &Credentials,
        addr: &str,
    ) -> Result<(ConsoleSession, String), SessionError> {
        let keys = Self::throttle_keys(credentials, addr);
        let now = time::unix_ms();
        {
            let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let wait = keys
                .iter()
                .filter_map(|k| failures.get(k))
                .map(|f| {
                    let until = f.last_ms + (delay_after(f.count) * 1000) as i64;
                    (until - now).max(0)
                })
                .max()
                .unwrap_or(0);
            if wait > 0 {
                return Err(SessionError::Throttled((wait as u64).div_ceil(1000)));
            }
        }
        let found = match credentials {
            Credentials::Password {
                account,
                user,
                password,
            } => self
                .accounts
                .check_password(account, user, password)?
                .map(|who| {
                    let stamp = self.stamp(&who.account_name, &who.user_name);
                    (who, None, stamp)
                }),
            Credentials::AccessKey {
                access_key_id,
                secret_access_key,
            } => self
                .accounts
                .key(access_key_id)?
                .filter(|k| {
                    common::sigv4::signatures_match(&k.secret_access_key, secret_access_key)
                })
                .map(|k| {
                    (
                        Identity {
                            account_id: k.account_id,
                            account_name: k.account_name,
                            user_name: k.user_name,
                        },
                        Some(k.access_key_id),
                        None,
                    )
                }),
        };
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some((who, access_key_id, password_stamp)) = found else {
            // Names and addresses nobody tried for a while are forgotten,
            // so made-up names cannot fill the memory.
            if failures.len() > MAX_REMEMBERED {
                failures.retain(|_, f| now - f.last_ms < FORGET_AFTER_MS);
            }
            for k in keys {
                let f = failures.entry(k).or_default();
                f.count += 1;
                f.last_ms = now;
            }
            return Err(SessionError::BadCredentials);
        };
        for k in &keys {
            failures.remove(k);
        }
        drop(failures);
        let token = token();
        let session = ConsoleSession {
            id: digest(&token),
            account_id: who.account_id,
            account_name: who.account_name,
            user_name: who.user_name,
            access_key_id,
            password_stamp,
            csrf: self::token(),
            created_ms: now,
            last_ms: now,
        };
        self.table.put(&session)?;
        Ok((session, token))
    }

    /// A digest of the user's password hash: it changes with the password.
    /// Looked up by account name, which the store finds without a scan (an
    /// account made again under the name has other profiles, other hashes).
    fn stamp(&self, account_name: &str, user_name: &str) -> Option<String> {
        self.accounts
            .login_profile(account_name, user_name)
            .ok()
            .map(|p| digest(&p.password_hash))
    }

    /// The live session of cookie `token`; its idle clock restarts.
    pub fn check(&self, token: &str) -> Result<ConsoleSession, SessionError> {
        let id = digest(token);
        let mut s = self.table.get(&id)?.ok_or(SessionError::NoSession)?;
        let now = time::unix_ms();
        let still_valid = match (&s.access_key_id, &s.password_stamp) {
            (Some(key), _) => self.accounts.key(key)?.is_some(),
            (None, Some(stamp)) => {
                self.stamp(&s.account_name, &s.user_name).as_deref() == Some(stamp.as_str())
            }
            (None, None) => false,
        };
        if !still_valid || now - s.last_ms > self.idle_ms || now - s.created_ms > MAX_AGE_MS {
            self.table.delete(&id)?;
            return Err(SessionError::NoSession);
        }
        // A write at most every minute of use.
        if now - s.last_ms > 60_000 {
            s.last_ms = now;
            self.table.put(&s)?;
        }
        Ok(s)
    }

    /// Ends the session of cookie `token`.
    pub fn sign_out(&self, token: &str) -> Result<(), SessionError> {
        self.table.delete(&digest(token))?;
        Ok(())
    }

    /// Drops sessions idle too long (run now and then).
    pub fn expire(&self) -> Result<usize, SessionError> {
        let now = time::unix_ms();
        let mut n = 0;
        for s in self.table.list()? {
            if now - s.last_ms > self.idle_ms || now - s.created_ms > MAX_AGE_MS {
                self.table.delete(&s.id)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(idle: u64) -> (Sessions, Accounts) {
        let store = Store::temporary().expect("store");
        let accounts = Accounts::open(&store, "eucalyptus").expect("accounts");
        accounts.create("lab").expect("account");
        accounts
            .set_password("lab", "alice", "correct horse", Some(true))
            .expect("password");
        (
            Sessions::open(&store, accounts.clone(), idle).expect("sessions"),
            accounts,
        )
    }

    fn password(pw: &str) -> Credentials {
        Credentials::Password {
            account: "lab".into(),
            user: "alice".into(),
            password: pw.into(),
        }
    }

    #[test]
    fn a_password_or_a_key_signs_in_and_the_cookie_finds_the_session() {
        let (s, accounts) = sessions(600);
        let (session, token) = s
            .sign_in(&password("correct horse"), "127.0.0.1")
            .expect("sign in");
        assert_eq!(session.user_name, "alice");
        assert_ne!(session.id, token, "the store keeps a digest");
        assert_eq!(s.check(&token).expect("check").csrf, session.csrf);
        // A new password ends it.
        accounts
            .set_password("lab", "alice", "battery staple", Some(false))
            .expect("change");
        assert!(matches!(s.check(&token), Err(SessionError::NoSession)));
        let key = accounts.create_key("lab", "bob").expect("key");
        let (_, token) = s
            .sign_in(
                &Credentials::AccessKey {
                    access_key_id: key.access_key_id.clone(),
                    secret_access_key: key.secret_access_key.clone(),
                },
                "127.0.0.1",
            )
            .expect("key sign in");
        assert_eq!(s.check(&token).expect("check").user_name, "bob");
        accounts.delete_key(&key.access_key_id).expect("revoke");
        assert!(matches!(s.check(&token), Err(SessionError::NoSession)));
        let (_, token) = s
            .sign_in(&password("battery staple"), "127.0.0.1")
            .expect("again");
        s.sign_out(&token).expect("out");
        assert!(matches!(s.check(&token), Err(SessionError::NoSession)));
    }

    #[test]
    fn failures_grow_a_delay_that_a_right_password_does_not_skip() {
        let (s, _) = sessions(600);
        for _ in 0..FREE_FAILURES {
            assert!(matches!(
                s.sign_in(&password("wrong"), "10.0.0.1"),
                Err(SessionError::BadCredentials)
            ));
        }
        // Now even the right password waits.
        assert!(matches!(
            s.sign_in(&password("correct horse"), "10.0.0.2"),
            Err(SessionError::Throttled(1))
        ));
        assert_eq!(
            (0..10).map(delay_after).collect::<Vec<_>>(),
            [0, 0, 0, 1, 2, 4, 8, 16, 32, 60]
        );
    }

    #[test]
    fn idle_sessions_end() {
        let (s, _) = sessions(1);
        let (mut session, token) = s
            .sign_in(&password("correct horse"), "127.0.0.1")
            .expect("sign in");
        session.last_ms -= 5_000;
        s.table.put(&session).expect("age it");
        assert!(matches!(s.check(&token), Err(SessionError::NoSession)));
        assert_eq!(s.expire().expect("expire"), 0, "check removed it already");
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie("a=1; gumtree_session=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("a=1", COOKIE), None);
    }
}
