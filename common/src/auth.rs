//! Authentication of internal gRPC calls by a shared cluster secret.
//!
//! Every call carries the caller's component name, a Unix timestamp and
//! `HMAC-SHA256(secret, "gumtree-v1\n<component>\n<timestamp>")`. The server
//! recomputes it and compares in constant time; a timestamp more than
//! [`MAX_SKEW_SECS`] away from the server's clock is refused, so a captured
//! header is only good for a short while. A caller without the secret is
//! refused with `UNAUTHENTICATED`.

use std::{path::Path, sync::Arc};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tonic::{metadata::MetadataValue, service::Interceptor, Request, Status};

/// Metadata key naming the calling component.
pub const HEADER_COMPONENT: &str = "x-gumtree-component";
/// Metadata key with the Unix timestamp the signature covers.
pub const HEADER_TIMESTAMP: &str = "x-gumtree-timestamp";
/// Metadata key with the hex HMAC.
pub const HEADER_SIGNATURE: &str = "x-gumtree-signature";
/// Largest accepted clock difference between caller and server.
pub const MAX_SKEW_SECS: i64 = 300;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a secret could not be loaded or a call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read cluster secret {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster secret {path} is shorter than {MIN_SECRET_LEN} bytes")]
    TooShort { path: String },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("bad timestamp")]
    BadTimestamp,
    #[error("timestamp is {0} s away from this server's clock")]
    Skewed(i64),
    #[error("signature does not match")]
    BadSignature,
}

/// The cluster secret shared by every component of one cloud.
#[derive(Clone)]
pub struct ClusterSecret(Arc<Vec<u8>>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// Reads the secret from a file; surrounding whitespace is ignored.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let secret = text.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(AuthError::TooShort {
                path: path.display().to_string(),
            });
        }
        Ok(Self(Arc::new(secret.as_bytes().to_vec())))
    }

    /// A secret from bytes (tests and tools).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Arc::new(bytes.to_vec()))
    }

    /// A key for another purpose, derived from the secret: HMAC-SHA256(secret, label).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A new random secret, hex-encoded, for a new cloud.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    fn mac(&self, component: &str, timestamp: i64) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("gumtree-v1\n{component}\n{timestamp}").as_bytes());
        mac
    }

    /// Hex signature of `component` at `timestamp`.
    pub fn sign(&self, component: &str, timestamp: i64) -> String {
        hex::encode(self.mac(component, timestamp).finalize().into_bytes())
    }

    /// Checks a signature in constant time, and the timestamp against `now`.
    pub fn verify(
        &self,
        component: &str,
        timestamp: i64,
        signature_hex: &str,
        now: i64,
    ) -> Result<(), AuthError> {
        let skew = (now - timestamp).abs();
        if skew > MAX_SKEW_SECS {
            return Err(AuthError::Skewed(skew));
        }
        let signature = hex::decode(signature_hex).map_err(|_| AuthError::BadSignature)?;
        self.mac(component, timestamp)
            .verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)
    }
}

/// Client side: signs every outgoing call as `component`.
#[derive(Clone, Debug)]
pub struct SignCalls {
    secret: ClusterSecret,
    component: String,
}

impl SignCalls {
    /// Signs calls as `component` with `secret`.
    pub fn new(secret: ClusterSecret, component: impl Into<String>) -> Self {
        Self {
            secret,
            component: component.into(),
        }
    }
}

impl Interceptor for SignCalls {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let now = crate::time::unix_secs();
        let signature = self.secret.sign(&self.component, now);
        let meta = request.metadata_mut();
        let component = MetadataValue::try_from(self.component.as_str())
            .map_err(|_| Status::invalid_argument("component name is not ASCII"))?;
        meta.insert(HEADER_COMPONENT, component);
        meta.insert(HEADER_TIMESTAMP, MetadataValue::from(now));
        let signature = MetadataValue::try_from(signature.as_str())
            .map_err(|_| Status::internal("signature is not ASCII"))?;
        meta.insert(HEADER_SIGNATURE, signature);
        Ok(request)
    }
}

/// The authenticated caller, put into the request's extensions by [`VerifyCalls`].
#[derive(Clone, Debug)]
pub struct Caller {
    /// Component name the caller signed as.
    pub component: String,
}

/// Server side: refuses every call not signed with the cluster secret.
#[derive(Clone, Debug)]
pub struct VerifyCalls {
    secret: ClusterSecret,
}

impl VerifyCalls {
    /// Verifies calls against `secret`.
    pub fn new(secret: ClusterSecret) -> Self {
        Self { secret }
    }

    fn check(&self, request: &Request<()>) -> Result<String, AuthError> {
        let meta = request.metadata();
        let text = |key: &'static str| {
            meta.get(key)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::Missing(key))
        };
        let component = text(HEADER_COMPONENT)?;
        let timestamp: i64 = text(HEADER_TIMESTAMP)?
            .parse()
            .map_err(|_| AuthError::BadTimestamp)?;
        let signature = text(HEADER_SIGNATURE)?;
        self.secret
            .verify(component, timestamp, signature, crate::time::unix_secs())?;
        Ok(component.to_string())
    }
}

impl Interceptor for VerifyCalls {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.check(&request) {
            Ok(component) => {
                request.extensions_mut().insert(Caller { component });
                Ok(request)
            }
            Err(err) => {
                let peer = request
                    .remote_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::warn!(%peer, error = %err, "refused internal call");
                Err(Status::unauthenticated(format!(
                    "cluster secret check failed: {err}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_and_rejects_tampering() {
        let secret = ClusterSecret::from_bytes(b"0123456789abcdef0123");
        let sig = secret.sign("cc-1", 1_000);
        assert!(secret.verify("cc-1", 1_000, &sig, 1_010).is_ok());
        assert!(matches!(
            secret.verify("cc-2", 1_000, &sig, 1_010),
            Err(AuthError::BadSignature)
        ));
        assert!(matches!(
            secret.verify("cc-1", 1_001, &sig, 1_010),
            Err(AuthError::BadSignature)
        ));
        let other = ClusterSecret::from_bytes(b"another-secret-of-length");
        assert!(matches!(
            other.verify("cc-1", 1_000, &sig, 1_010),
            Err(AuthError::BadSignature)
        ));
        assert!(matches!(
            secret.verify("cc-1", 1_000, "zz", 1_010),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn stale_timestamps_are_refused() {
        let secret = ClusterSecret::from_bytes(b"0123456789abcdef0123");
        let sig = secret.sign("nc", 1_000);
        assert!(matches!(
            secret.verify("nc", 1_000, &sig, 1_000 + MAX_SKEW_SECS + 1),
            Err(AuthError::Skewed(_))
        ));
    }

    #[test]
    fn interceptors_agree_and_unsigned_calls_fail() {
        let secret = ClusterSecret::from_bytes(b"0123456789abcdef0123");
        let mut sign = SignCalls::new(secret.clone(), "walrus");
        let mut verify = VerifyCalls::new(secret);
        let signed = sign.call(Request::new(())).expect("sign");
        let accepted = verify.call(signed).expect("verify");
        let caller = accepted.extensions().get::<Caller>().expect("caller");
        assert_eq!(caller.component, "walrus");
        let refused = verify.call(Request::new(())).expect_err("unsigned");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn short_secret_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "short\n").expect("write");
        assert!(matches!(
            ClusterSecret::from_file(&path),
            Err(AuthError::TooShort { .. })
        ));
        std::fs::write(&path, format!("{}\n", ClusterSecret::generate())).expect("write");
        assert!(ClusterSecret::from_file(&path).is_ok());
    }
}
