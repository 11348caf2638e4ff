//! The cluster's certificate authority: who is who between the tiers.
//!
//! `gumtree-admin pki init` makes a CA; `gumtree-admin pki issue` gives each
//! component a certificate, signed by that CA, naming its [`Role`] and name:
//! a URI `gumtree://<role>/<name>` (who it is, read by servers to authorise
//! calls) and a DNS name `<role>.gumtree.internal` (what clients check, so a
//! node that dials its cluster controller talks to a cluster controller).
//!
//! Files in one directory (default `/var/lib/gumtree/pki`): `ca.pem` holds
//! every CA certificate trusted (more than one while the CA rotates),
//! `ca.key` the key new certificates are signed with, `<role>-<name>.pem`
//! and `.key` each component's certificate and key.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde::Deserialize;

/// What a component is; every internal call is authorised by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The cloud controller.
    Clc,
    /// A cluster controller.
    Cc,
    /// A node controller.
    Nc,
    /// A storage controller.
    Sc,
    /// Walrus.
    Walrus,
    /// The administrator's tools (`gumtree-admin`).
    Admin,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 6] = [
        Role::Clc,
        Role::Cc,
        Role::Nc,
        Role::Sc,
        Role::Walrus,
        Role::Admin,
    ];

    /// The role's name in certificates and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clc => "clc",
            Role::Cc => "cc",
            Role::Nc => "nc",
            Role::Sc => "sc",
            Role::Walrus => "walrus",
            Role::Admin => "admin",
        }
    }

    /// The DNS name a server of this role presents and its clients check.
    pub fn server_name(self) -> String {
        format!("{}.gumtree.internal", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                PkiError::Invalid(format!(
                    "unknown role {s:?}: one of clc, cc, nc, sc, walrus, admin"
                ))
            })
    }
}

/// A component as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What it is.
    pub role: Role,
    /// Its name (a node's, a cluster's, ...).
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

const URI_PREFIX: &str = "gumtree://";

impl Identity {
    /// The identity a certificate names, from its `gumtree://role/name` URI.
    pub fn of_certificate(der: &[u8]) -> Result<Self, PkiError> {
        let der = rustls_pki_types::CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| PkiError::Invalid(format!("unreadable certificate: {e:?}")))?;
        let found = cert.valid_uri_names().find_map(|uri| {
            let rest = uri.strip_prefix(URI_PREFIX)?;
            let (role, name) = rest.split_once('/')?;
            Some((role.to_string(), name.to_string()))
        });
        let Some((role, name)) = found else {
            return Err(PkiError::Invalid(
                "the certificate names no gumtree:// identity".into(),
            ));
        };
        check_name(&name)?;
        Ok(Self {
            role: role.parse()?,
            name,
        })
    }

    fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role, self.name)
    }
}

/// Why the CA or a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Names are what the tiers call each other: letters, digits, `.`, `-`, `_`.
fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "{name:?} is not a component name (1-64 of letters, digits, '.', '-', '_')"
        )))
    }
}

/// Where a component's TLS files are: `internal_tls = { dir = "..." }` in
/// every daemon's config. `ca`, `cert` and `key` default to `<dir>/ca.pem`,
/// `<dir>/<role>-<name>.pem` and `<dir>/<role>-<name>.key`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// The directory. Default `/var/lib/gumtree/pki`.
    pub dir: PathBuf,
    /// The trusted CA certificates (PEM, one or more).
    pub ca: Option<PathBuf>,
    /// This component's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// This component's private key (PEM).
    pub key: Option<PathBuf>,
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self::in_dir("/var/lib/gumtree/pki")
    }
}

impl TlsFiles {
    /// The default file names in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ca: None,
            cert: None,
            key: None,
        }
    }

    /// The CA bundle.
    pub fn ca(&self) -> PathBuf {
        self.ca.clone().unwrap_or_else(|| self.dir.join("ca.pem"))
    }

    /// The certificate of component `who`.
    pub fn cert(&self, who: &Identity) -> PathBuf {
        self.cert
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("{}-{}.pem", who.role, who.name)))
    }

    /// The key of component `who`.
    pub fn key(&self, who: &Identity) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("{}-{}.key", who.role, who.name)))
    }
}

/// Writes `text` to `path` atomically, readable by its owner only when `secret`.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// The CA's certificate parameters, rebuilt from its key: the subject names
/// the key, so a rotated CA never shares a subject with the one before.
fn ca_params(key: &KeyPair) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let id = hex::encode(&sha2_of(&key.public_key_der())[..6]);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Gumtree");
    dn.push(DnType::CommonName, format!("Gumtree cluster CA {id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

fn sha2_of(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// What `init` did.
#[derive(Debug, PartialEq, Eq)]
pub enum CaOutcome {
    /// A new CA.
    Created,
    /// The CA was there already; nothing changed.
    Kept,
    /// A new CA signs from now on; the old one stays trusted until retired.
    Rotated,
}

/// Creates the CA in `dir` unless it exists; with `rotate`, makes a new CA
/// key that signs from now on and adds its certificate to the bundle (the
/// old CA stays trusted until [`retire_old_cas`]).
pub fn init_ca(dir: &Path, rotate: bool) -> Result<CaOutcome, PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let exists = ca_key.exists();
    if exists && !rotate {
        return Ok(CaOutcome::Kept);
    }
    let key = KeyPair::generate()?;
    let cert = ca_params(&key)?.self_signed(&key)?;
    let mut bundle = cert.pem();
    if exists {
        bundle.push_str(&read(&ca_pem)?);
    }
    // The key first: a bundle naming a CA whose key is lost would be worse
    // than a key whose certificate is not trusted yet.
    write_file(&ca_key, &key.serialize_pem(), true)?;
    write_file(&ca_pem, &bundle, false)?;
    Ok(if exists {
        CaOutcome::Rotated
    } else {
        CaOutcome::Created
    })
}

/// Drops every CA but the current one from the bundle; returns how many.
pub fn retire_old_cas(dir: &Path) -> Result<usize, PkiError> {
    let key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let current = ca_params(&key)?.self_signed(&key)?;
    let bundle = read(&dir.join("ca.pem"))?;
    let count = pem_certificates(&bundle)?.len();
    write_file(&dir.join("ca.pem"), &current.pem(), false)?;
    Ok(count.saturating_sub(1))
}

fn pem_certificates(
    text: &str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Invalid(format!("bad PEM: {e}")))
}

/// Issues `who` a certificate from the CA in `dir`, written to
/// `out` (certificate, key); replaces earlier ones atomically, which every
/// running daemon picks up on its next connection.
pub fn issue(dir: &Path, who: &Identity, out: (&Path, &Path)) -> Result<(), PkiError> {
    issue_for_addresses(dir, who, &[], out)
}

/// As [`issue`], with `ips` in the certificate too: for peers that check a
/// certificate against the address they dialled (libvirt's TLS, between
/// nodes for live migration).
pub fn issue_for_addresses(
    dir: &Path,
    who: &Identity,
    ips: &[std::net::IpAddr],
    out: (&Path, &Path),
) -> Result<(), PkiError> {
    check_name(&who.name)?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    let ca_cert = ca_params(&ca_key)?.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![who.role.server_name()])?;
    params.subject_alt_names.push(SanType::URI(
        who.uri()
            .try_into()
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", who.uri())))?,
    ));
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Gumtree");
    dn.push(DnType::OrganizationalUnitName, who.role.as_str());
    dn.push(DnType::CommonName, who.name.as_str());
    params.distinguished_name = dn;
    // keyEncipherment means nothing to an ECDSA key, but libvirt's TLS
    // refuses a certificate whose key usage leaves it out.
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial[..15]));
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    if let Some(parent) = out.0.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    write_file(out.1, &key.serialize_pem(), true)?;
    write_file(out.0, &cert.pem(), false)?;
    Ok(())
}

/// Issues `who` its certificate under the default names in `dir`.
pub fn issue_in(dir: &Path, who: &Identity) -> Result<TlsFiles, PkiError> {
    let files = TlsFiles::in_dir(dir);
    issue(dir, who, (&files.cert(who), &files.key(who)))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_component() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            init_ca(dir.path(), false).expect("init"),
            CaOutcome::Created
        );
        assert_eq!(init_ca(dir.path(), false).expect("again"), CaOutcome::Kept);
        let who = Identity {
            role: Role::Nc,
            name: "node-7".into(),
        };
        let files = issue_in(dir.path(), &who).expect("issue");
        let pem = std::fs::read_to_string(files.cert(&who)).expect("cert");
        let certs = pem_certificates(&pem).expect("pem");
        assert_eq!(Identity::of_certificate(&certs[0]).expect("identity"), who);
        assert!(issue_in(
            dir.path(),
            &Identity {
                role: Role::Nc,
                name: "a/b".into()
            }
        )
        .is_err());
    }

    #[test]
    fn certificates_may_name_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false).expect("init");
        let who = Identity {
            role: Role::Nc,
            name: "node-8".into(),
        };
        let files = TlsFiles::in_dir(dir.path());
        let ip: std::net::IpAddr = "10.77.0.5".parse().expect("ip");
        issue_for_addresses(
            dir.path(),
            &who,
            &[ip],
            (&files.cert(&who), &files.key(&who)),
        )
        .expect("issue");
        let pem = std::fs::read_to_string(files.cert(&who)).expect("cert");
        let certs = pem_certificates(&pem).expect("pem");
        // Still the same component; and an iPAddress name ([7] IMPLICIT,
        // four octets) with the address.
        assert_eq!(Identity::of_certificate(&certs[0]).expect("identity"), who);
        let der: &[u8] = certs[0].as_ref();
        assert!(der.windows(6).any(|w| w == [0x87, 4, 10, 77, 0, 5]));
        issue_in(dir.path(), &who).expect("again, without");
        let pem = std::fs::read_to_string(files.cert(&who)).expect("cert");
        let der = pem_certificates(&pem).expect("pem").remove(0);
        assert!(!der
            .as_ref()
            .windows(6)
            .any(|w| w == [0x87, 4, 10, 77, 0, 5]));
    }

    #[test]
    fn rotation_keeps_the_old_ca_until_retired() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false).expect("init");
        assert_eq!(
            init_ca(dir.path(), true).expect("rotate"),
            CaOutcome::Rotated
        );
        let bundle = std::fs::read_to_string(dir.path().join("ca.pem")).expect("bundle");
        assert_eq!(pem_certificates(&bundle).expect("pem").len(), 2);
        assert_eq!(retire_old_cas(dir.path()).expect("retire"), 1);
        let bundle = std::fs::read_to_string(dir.path().join("ca.pem")).expect("bundle");
        assert_eq!(pem_certificates(&bundle).expect("pem").len(), 1);
    }

    #[test]
    fn roles_parse_and_print() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().expect("role"), role);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
