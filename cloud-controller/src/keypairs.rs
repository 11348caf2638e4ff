//! Key pairs: the SSH public keys an account registers for its instances,
//! made here (RSA or ed25519, the private key handed out once) or imported.
//!
//! Fingerprints are the ones EC2 shows:
//! - made here, RSA: SHA-1 of the private key as DER PKCS#8, colon-separated hex;
//! - imported, RSA: MD5 of the public key as DER SubjectPublicKeyInfo (what
//!   `openssl pkey -pubin -outform DER | openssl md5 -c` prints);
//! - ed25519 either way: base64 SHA-256 of the OpenSSH public key blob
//!   (`ssh-keygen -l` without its `SHA256:` prefix, with base64 padding).

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::store::{Record, Store, StoreError, Table};
use md5::Md5;
use rsa::{
    pkcs1::EncodeRsaPrivateKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
    traits::PublicKeyParts,
    BigUint, RsaPrivateKey, RsaPublicKey,
};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A key pair of an account, keyed by (account id, name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    pub account_id: String,
    pub name: String,
    /// `key-` and 17 hex digits.
    pub key_pair_id: String,
    /// `rsa` or `ed25519`.
    pub key_type: String,
    pub fingerprint: String,
    /// One line of OpenSSH `authorized_keys` format, without a comment.
    pub public_key: String,
    pub created_ms: i64,
}

impl Record for KeyPair {
    const TABLE: &'static str = "key_pairs";
    const SCHEMA: u32 = 1;
    type Key = (String, String);
    fn key(&self) -> Self::Key {
        (self.account_id.clone(), self.name.clone())
    }
}

/// The key pair store.
#[derive(Debug)]
pub struct KeyPairs {
    table: Table<KeyPair>,
}

impl KeyPairs {
    /// The key pairs in `store`.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table()?,
        })
    }

    /// Stores `pair` unless the account has one of that name (then false).
    pub fn insert(&self, pair: &KeyPair) -> Result<bool, StoreError> {
        self.table.insert_new(pair)
    }

    /// `account_id`'s key pair `name`.
    pub fn get(&self, account_id: &str, name: &str) -> Result<Option<KeyPair>, StoreError> {
        self.table.get(&(account_id.to_string(), name.to_string()))
    }

    /// Every key pair of `account_id`, by name.
    pub fn of(&self, account_id: &str) -> Result<Vec<KeyPair>, StoreError> {
        let mut p = account_id.as_bytes().to_vec();
        p.push(0);
        self.table.scan_prefix(&p)
    }

    /// Deletes `account_id`'s key pair `name`, if there is one.
    pub fn delete(&self, account_id: &str, name: &str) -> Result<(), StoreError> {
        self.table
            .delete(&(account_id.to_string(), name.to_string()))
            .map(|_| ())
    }
}

/// Why key material was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("Key is not in valid OpenSSH public key format")]
    Format,
    #[error("The RSA key must be 1024 to 16384 bits long")]
    Size,
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// A key made here: what the caller gets once, and what is kept.
#[derive(Debug)]
pub struct Generated {
    /// The private key, PEM (PKCS#1 for RSA, OpenSSH for ed25519).
    pub private_pem: String,
    pub public_key: String,
    pub fingerprint: String,
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// An SSH `mpint` of a non-negative big-endian number.
fn put_mpint(out: &mut Vec<u8>, be: &[u8]) {
    let trimmed: &[u8] = {
        let start = be.iter().position(|b| *b != 0).unwrap_or(be.len());
        &be[start..]
    };
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v = vec![0u8];
        v.extend_from_slice(trimmed);
        put_string(out, &v);
    } else {
        put_string(out, trimmed);
    }
}

fn rsa_blob(key: &RsaPublicKey) -> Vec<u8> {
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-rsa");
    put_mpint(&mut blob, &key.e().to_bytes_be());
    put_mpint(&mut blob, &key.n().to_bytes_be());
    blob
}

fn ed25519_blob(public: &[u8]) -> Vec<u8> {
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-ed25519");
    put_string(&mut blob, public);
    blob
}

fn sha256_fingerprint(blob: &[u8]) -> String {
    B64.encode(Sha256::digest(blob))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(70) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A new RSA key of `bits`.
pub fn generate_rsa(bits: usize) -> Result<Generated, KeyError> {
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let private_pem = key
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?
        .to_string();
    let blob = rsa_blob(&key.to_public_key());
    Ok(Generated {
        private_pem,
        public_key: format!("ssh-rsa {}", B64.encode(&blob)),
        fingerprint: colon_hex(&Sha1::digest(pkcs8.as_bytes())),
    })
}

/// A new ed25519 key; the private key in OpenSSH's format.
pub fn generate_ed25519() -> Result<Generated, KeyError> {
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let doc =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Generate(e.to_string()))?;
    let pair =
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| KeyError::Generate(e.to_string()))?;
    let public = pair.public_key().as_ref().to_vec();
    // ring writes RFC 8410 documents: the 32-byte seed follows a 16-byte header.
    let seed = doc
        .as_ref()
        .get(16..48)
        .ok_or_else(|| KeyError::Generate("short PKCS#8 document".into()))?
        .to_vec();
    Ed25519KeyPair::from_seed_and_public_key(&seed, &public)
        .map_err(|_| KeyError::Generate("the seed does not match the public key".into()))?;
    let blob = ed25519_blob(&public);
    let check: u32 = rand::random();
    let mut private = Vec::new();
    private.extend_from_slice(&check.to_be_bytes());
    private.extend_from_slice(&check.to_be_bytes());
    put_string(&mut private, b"ssh-ed25519");
    put_string(&mut private, &public);
    let mut secret = seed.clone();
    secret.extend_from_slice(&public);
    put_string(&mut private, &secret);
    put_string(&mut private, b"");
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut doc = b"openssh-key-v1\0".to_vec();
    put_string(&mut doc, b"none");
    put_string(&mut doc, b"none");
    put_string(&mut doc, b"");
    doc.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut doc, &blob);
    put_string(&mut doc, &private);
    Ok(Generated {
        private_pem: pem("OPENSSH PRIVATE KEY", &doc),
        public_key: format!("ssh-ed25519 {}", B64.encode(&blob)),
        fingerprint: sha256_fingerprint(&blob),
    })
}

/// A public key given to ImportKeyPair (after the API's base64): OpenSSH's
/// one-line format or RFC 4716's; `(key type, public key line, fingerprint)`.
pub fn import(material: &[u8]) -> Result<(String, String, String), KeyError> {
    let text = std::str::from_utf8(material).map_err(|_| KeyError::Format)?;
    let text = text.trim();
    let blob = if text.starts_with("---- BEGIN SSH2 PUBLIC KEY ----") {
        let mut b64 = String::new();
        let mut continued = false;
        for line in text.lines().skip(1) {
            let line = line.trim();
            if line.starts_with("---- END SSH2 PUBLIC KEY ----") {
                break;
            }
            if continued || line.contains(':') {
                continued = line.ends_with('\\');
                continue;
            }
            b64.push_str(line);
        }
        B64.decode(b64).map_err(|_| KeyError::Format)?
    } else {
        let mut parts = text.split_whitespace();
        let kind = parts.next().ok_or(KeyError::Format)?;
        let data = parts.next().ok_or(KeyError::Format)?;
        if !matches!(kind, "ssh-rsa" | "ssh-ed25519") {
            return Err(KeyError::Format);
        }
        let blob = B64.decode(data).map_err(|_| KeyError::Format)?;
        if read_string(&blob, 0).map(|(s, _)| s) != Some(kind.as_bytes()) {
            return Err(KeyError::Format);
        }
        blob
    };
    let (kind, at) = read_string(&blob, 0).ok_or(KeyError::Format)?;
    match kind {
        b"ssh-rsa" => {
            let (e, at) = read_string(&blob, at).ok_or(KeyError::Format)?;
            let (n, at) = read_string(&blob, at).ok_or(KeyError::Format)?;
            if at != blob.len() {
                return Err(KeyError::Format);
            }
            let key = RsaPublicKey::new_with_max_size(
                BigUint::from_bytes_be(n),
                BigUint::from_bytes_be(e),
                16384,
            )
            .map_err(|_| KeyError::Format)?;
            if !(1024..=16384).contains(&key.size().saturating_mul(8)) {
                return Err(KeyError::Size);
            }
            let der = key.to_public_key_der().map_err(|_| KeyError::Format)?;
            Ok((
                "rsa".into(),
                format!("ssh-rsa {}", B64.encode(rsa_blob(&key))),
                colon_hex(&Md5::digest(der.as_bytes())),
            ))
        }
        b"ssh-ed25519" => {
            let (public, at) = read_string(&blob, at).ok_or(KeyError::Format)?;
            if public.len() != 32 || at != blob.len() {
                return Err(KeyError::Format);
            }
            Ok((
                "ed25519".into(),
                format!("ssh-ed25519 {}", B64.encode(&blob)),
                sha256_fingerprint(&blob),
            ))
        }
        _ => Err(KeyError::Format),
    }
}

fn read_string(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = u32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?) as usize;
    let start = at + 4;
    let end = start.checked_add(len)?;
    Some((buf.get(start..end)?, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys made with ssh-keygen; fingerprints from `ssh-keygen -l` and from
    /// `ssh-keygen -e -m pkcs8 | openssl pkey -pubin -outform DER | openssl md5 -c`.
    const ED25519_PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAXNPGeur03AWzsJHL/yFFJERWOIIQZxR2KWQdJxIth5";
    const ED25519_SHA256: &str = "YjOiW1wnwAHN6J4MDRSArdc9kIzQczK6zENYXxu2Dk0=";
    const RSA_PUB: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCjP9Nj5L3kcc6ZRLAKWFmFF3YksbvoKVaKjUHSGslJVNP2nZdV8faDJUlXNbXR9NupHXr7iGLzmPPMR5YibmfrZjsVi4xtGPgyJ/owvNxAuD+rB6+7S5KQbO1LKYtFczPdZRQV3oge6hlZwOC+RyqKj4YCDGoy6k2+gXpMPkVzdQ==";
    const RSA_MD5: &str = "9b:c9:db:16:be:ec:63:ae:01:6e:87:45:25:2c:fb:0e";

    #[test]
    fn imported_keys_are_parsed_and_fingerprinted() {
        let (kind, line, fp) =
            import(format!("{ED25519_PUB} me@host\n").as_bytes()).expect("ed25519");
        assert_eq!(
            (kind.as_str(), line.as_str(), fp.as_str()),
            ("ed25519", ED25519_PUB, ED25519_SHA256)
        );
        let (kind, line, fp) = import(RSA_PUB.as_bytes()).expect("rsa");
        assert_eq!(
            (kind.as_str(), line.as_str(), fp.as_str()),
            ("rsa", RSA_PUB, RSA_MD5)
        );
        for bad in [
            "",
            "ssh-rsa",
            "ssh-dss AAAAB3NzaC1kc3M=",
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAXNPGeur03AWzsJHL/yFFJERWOIIQZxR2KWQdJxIth5",
            "ssh-ed25519 !!!",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAAQ==",
        ] {
            assert_eq!(import(bad.as_bytes()), Err(KeyError::Format), "{bad}");
        }
    }

    #[test]
    fn generated_keys_round_trip_through_import() {
        let g = generate_ed25519().expect("ed25519");
        assert!(g
            .private_pem
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        let (_, line, fp) = import(g.public_key.as_bytes()).expect("import");
        assert_eq!(line, g.public_key);
        assert_eq!(fp, g.fingerprint);
        let r = generate_rsa(2048).expect("rsa");
        assert!(r
            .private_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert_eq!(r.fingerprint.len(), 20 * 3 - 1);
        let (kind, line, md5) = import(r.public_key.as_bytes()).expect("import rsa");
        assert_eq!(kind, "rsa");
        assert_eq!(line, r.public_key);
        assert_eq!(md5.len(), 16 * 3 - 1);
        // RFC 4716 form of the same key.
        let b64 = r.public_key.split(' ').nth(1).expect("b64");
        let rfc = format!(
            "---- BEGIN SSH2 PUBLIC KEY ----\nComment: \"2048-bit RSA, \\\nconverted\"\n{}\n{}\n---- END SSH2 PUBLIC KEY ----\n",
            &b64[..60],
            &b64[60..]
        );
        assert_eq!(import(rfc.as_bytes()).expect("rfc4716").2, md5);
    }
}
