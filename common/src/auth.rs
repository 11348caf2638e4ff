//! Authentication and authorisation of internal gRPC calls.
//!
//! Every internal connection is mutual TLS ([`crate::mtls`]): the server
//! knows the caller's role and name from its certificate. On top of that,
//! as a second factor, every call carries the caller's name, a Unix
//! timestamp, a random nonce and
//! `HMAC-SHA256(secret, "gumtree-v2\n<name>\n<timestamp>\n<nonce>\n<method path>\n<body hash>")`
//! where the body hash is the hex SHA-256 of the request's encoded body
//! (`STREAMING` for the client-streaming methods in [`STREAMING_METHODS`],
//! whose bodies are never complete before the call starts). The server
//! ([`Guard`]) recomputes it and compares in constant time, refuses a
//! timestamp more than [`MAX_SKEW_SECS`] away, refuses a nonce it has seen
//! (replay), refuses a name other than the certificate's, and then checks
//! [`allowed`]: which roles may call which method. Handlers that must also
//! check the caller's name (a node reports only as itself) find the
//! [`Caller`] in the request's extensions.

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::{body::Body, Status};

use crate::{
    mtls::Peer,
    pki::{Identity, Role},
};

/// Metadata key naming the calling component.
pub const HEADER_COMPONENT: &str = "x-gumtree-component";
/// Metadata key with the Unix timestamp the signature covers.
pub const HEADER_TIMESTAMP: &str = "x-gumtree-timestamp";
/// Metadata key with the call's random nonce (hex).
pub const HEADER_NONCE: &str = "x-gumtree-nonce";
/// Metadata key with the hex HMAC.
pub const HEADER_SIGNATURE: &str = "x-gumtree-signature";
/// The client-streaming methods: their bodies are not signed (TLS carries them).
pub const STREAMING_METHODS: [&str; 6] = [
    "/gumtree.v1.CloudService/ReportCluster",
    "/gumtree.v1.CloudService/ReportService",
    "/gumtree.v1.ClusterService/ReportNode",
    "/gumtree.v1.WalrusInternal/PutObject",
    "/gumtree.v1.ClusterService/OpenConsole",
    "/gumtree.v1.NodeService/OpenConsole",
];
/// The body hash signed for a streaming method.
pub const STREAMING: &str = "STREAMING";
/// Largest unary request body accepted (tonic decodes at most 4 MiB).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
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
    #[error("this request was seen before (replayed)")]
    Replayed,
    #[error("signed as {signed:?} over a connection authenticated as {peer}")]
    NameMismatch { signed: String, peer: Identity },
    #[error("no client certificate: internal calls need mutual TLS")]
    NoCertificate,
    #[error("the request body is unreadable or larger than {MAX_BODY} bytes")]
    Body,
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

    fn mac(&self, call: &Signed<'_>) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(
            format!(
                "gumtree-v2\n{}\n{}\n{}\n{}\n{}",
                call.component, call.timestamp, call.nonce, call.method, call.body_hash
            )
            .as_bytes(),
        );
        mac
    }

    /// Hex signature of `call`.
    pub fn sign(&self, call: &Signed<'_>) -> String {
        hex::encode(self.mac(call).finalize().into_bytes())
    }

    /// Checks a signature in constant time, and the timestamp against `now`.
    pub fn verify(
        &self,
        call: &Signed<'_>,
        signature_hex: &str,
        now: i64,
    ) -> Result<(), AuthError> {
        let skew = (now - call.timestamp).abs();
        if skew > MAX_SKEW_SECS {
            return Err(AuthError::Skewed(skew));
        }
        let signature = hex::decode(signature_hex).map_err(|_| AuthError::BadSignature)?;
        self.mac(call)
            .verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)
    }
}

/// What one call's signature covers.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    /// The caller's name.
    pub component: &'a str,
    /// Unix seconds.
    pub timestamp: i64,
    /// Random, hex; never accepted twice.
    pub nonce: &'a str,
    /// The gRPC path, `/package.Service/Method`.
    pub method: &'a str,
    /// Hex SHA-256 of the encoded request body, or [`STREAMING`].
    pub body_hash: &'a str,
}

/// Which roles may call which method: the one table every tier enforces.
/// Anything not listed is refused.
pub fn allowed(method: &str, role: Role) -> bool {
    use Role::*;
    let Some((service, name)) = method
        .strip_prefix("/gumtree.v1.")
        .and_then(|m| m.split_once('/'))
    else {
        return false;
    };
    let roles: &[Role] = match (service, name) {
        ("CloudService", "ReportCluster") => &[Cc],
        ("CloudService", "ReportService") => &[Sc, Walrus],
        ("AdminService", _) => &[Admin],
        // Walrus checks S3 signatures and asks whether a node may read an image.
        ("IdentityService", _) => &[Walrus],
        // A node relays its own guests' metadata requests.
        ("MetadataService", "Get") => &[Nc],
        ("ClusterService", "ReportNode") => &[Nc],
        ("ClusterService", _) => &[Clc],
        ("NodeService", _) => &[Cc],
        // Nodes fetch images (and Walrus asks the CLC which ones), the CLC
        // reads manifests, the SC stores and reads snapshots.
        ("WalrusInternal", "GetObject" | "HeadObject") => &[Clc, Nc, Sc],
        ("WalrusInternal", "PutObject" | "EnsureSystemBucket" | "DeleteSystemObject") => &[Sc],
        ("WalrusInternal", "ListBuckets" | "DeleteBuckets") => &[Clc],
        ("StorageService", _) => &[Clc, Cc],
        _ => &[],
    };
    roles.contains(&role)
}

/// The authenticated caller of an internal call, in the request's extensions.
#[derive(Clone, Debug)]
pub struct Caller(pub Identity);

/// The caller of `request`, as [`Guard`] authenticated it.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Identity, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| &c.0)
        .ok_or_else(|| Status::unauthenticated("the caller was not authenticated"))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Client side: signs every outgoing call with the cluster secret (wraps a channel).
#[derive(Clone, Debug)]
pub struct SignCalls<S> {
    inner: S,
    secret: ClusterSecret,
    component: Arc<str>,
}

impl<S> SignCalls<S> {
    /// Signs calls through `inner` as `component` with `secret`.
    pub fn new(inner: S, secret: ClusterSecret, component: &str) -> Self {
        Self {
            inner,
            secret,
            component: component.into(),
        }
    }
}

fn nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn insert_headers(
    headers: &mut http::HeaderMap,
    secret: &ClusterSecret,
    component: &str,
    method: &str,
    body_hash: &str,
) -> Result<(), Status> {
    let (timestamp, nonce) = (crate::time::unix_secs(), nonce());
    let signature = secret.sign(&Signed {
        component,
        timestamp,
        nonce: &nonce,
        method,
        body_hash,
    });
    let value = |s: &str| {
        http::HeaderValue::from_str(s)
            .map_err(|_| Status::invalid_argument("component name is not a header value"))
    };
    headers.insert(HEADER_COMPONENT, value(component)?);
    headers.insert(HEADER_TIMESTAMP, value(&timestamp.to_string())?);
    headers.insert(HEADER_NONCE, value(&nonce)?);
    headers.insert(HEADER_SIGNATURE, value(&signature)?);
    Ok(())
}

impl<S> tower::Service<http::Request<Body>> for SignCalls<S>
where
    S: tower::Service<http::Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is ready only after poll_ready: call the one that is.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (secret, component) = (self.secret.clone(), self.component.clone());
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let method = parts.uri.path().to_string();
            let body = if STREAMING_METHODS.contains(&method.as_str()) {
                insert_headers(&mut parts.headers, &secret, &component, &method, STREAMING)?;
                body
            } else {
                let bytes = body.collect().await?.to_bytes();
                let hash = hex::encode(Sha256::digest(&bytes));
                insert_headers(&mut parts.headers, &secret, &component, &method, &hash)?;
                Body::new(http_body_util::Full::new(bytes))
            };
            inner
                .call(http::Request::from_parts(parts, body))
                .await
                .map_err(Into::into)
        })
    }
}

/// Nonces seen within the accepted clock skew, bucketed by their timestamp.
#[derive(Debug, Default)]
struct SeenNonces {
    buckets: VecDeque<(i64, HashSet<u128>)>,
}

const BUCKET_SECS: i64 = 10;

impl SeenNonces {
    /// Records `nonce` signed at `timestamp`; false if it was seen before.
    fn first_time(&mut self, nonce: u128, timestamp: i64, now: i64) -> bool {
        let oldest = now - MAX_SKEW_SECS - BUCKET_SECS;
        while self
            .buckets
            .front()
            .is_some_and(|(start, _)| *start < oldest)
        {
            self.buckets.pop_front();
        }
        let start = timestamp - timestamp.rem_euclid(BUCKET_SECS);
        let at = self.buckets.partition_point(|(s, _)| *s < start);
        if self.buckets.get(at).is_none_or(|(s, _)| *s != start) {
            self.buckets.insert(at, (start, HashSet::new()));
        }
        self.buckets
            .get_mut(at)
            .is_some_and(|(_, seen)| seen.insert(nonce))
    }
}

/// Server side: the layer that authenticates and authorises every call.
#[derive(Clone, Debug)]
pub struct GuardLayer {
    secret: ClusterSecret,
    seen: Arc<Mutex<SeenNonces>>,
}

impl GuardLayer {
    /// Checks calls against `secret` and [`allowed`].
    pub fn new(secret: ClusterSecret) -> Self {
        Self {
            secret,
            seen: Arc::default(),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`GuardLayer`].
#[derive(Clone, Debug)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

impl GuardLayer {
    fn check(&self, parts: &http::request::Parts, body_hash: &str) -> Result<Identity, AuthError> {
        let peer = parts
            .extensions
            .get::<Peer>()
            .ok_or(AuthError::NoCertificate)?;
        let text = |key: &'static str| {
            parts
                .headers
                .get(key)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::Missing(key))
        };
        let component = text(HEADER_COMPONENT)?;
        let timestamp: i64 = text(HEADER_TIMESTAMP)?
            .parse()
            .map_err(|_| AuthError::BadTimestamp)?;
        let nonce = text(HEADER_NONCE)?;
        let call = Signed {
            component,
            timestamp,
            nonce,
            method: parts.uri.path(),
            body_hash,
        };
        let now = crate::time::unix_secs();
        self.secret.verify(&call, text(HEADER_SIGNATURE)?, now)?;
        if component != peer.identity.name {
            return Err(AuthError::NameMismatch {
                signed: component.to_string(),
                peer: peer.identity.clone(),
            });
        }
        let nonce = u128::from_str_radix(nonce, 16).map_err(|_| AuthError::BadSignature)?;
        let first = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_time(nonce, timestamp, now);
        if !first {
            return Err(AuthError::Replayed);
        }
        Ok(peer.identity.clone())
    }
}

impl<S> tower::Service<http::Request<Body>> for Guard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let method = parts.uri.path().to_string();
            let streaming = STREAMING_METHODS.contains(&method.as_str());
            let (body, hash) = if streaming {
                (body, STREAMING.to_string())
            } else {
                match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                    Ok(collected) => {
                        let bytes = collected.to_bytes();
                        let hash = hex::encode(Sha256::digest(&bytes));
                        (Body::new(http_body_util::Full::new(bytes)), hash)
                    }
                    Err(_) => return Ok(refuse(&parts, &method, AuthError::Body)),
                }
            };
            let identity = match layer.check(&parts, &hash) {
                Ok(identity) => identity,
                Err(e) => return Ok(refuse(&parts, &method, e)),
            };
            if !allowed(&method, identity.role) {
                tracing::warn!(caller = %identity, %method, "refused internal call: not allowed for this role");
                return Ok(Status::permission_denied(format!(
                    "{} may not call {method}",
                    identity.role
                ))
                .into_http());
            }
            parts.extensions.insert(Caller(identity));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

fn refuse(parts: &http::request::Parts, method: &str, e: AuthError) -> http::Response<Body> {
    let peer = parts.extensions.get::<Peer>();
    let who = peer.map(|p| p.identity.to_string()).unwrap_or_default();
    let addr = peer
        .and_then(|p| p.addr)
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::warn!(caller = %who, peer = %addr, %method, error = %e, "refused internal call");
    Status::unauthenticated(format!("internal call refused: {e}")).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(component: &'a str, timestamp: i64, nonce: &'a str) -> Signed<'a> {
        Signed {
            component,
            timestamp,
            nonce,
            method: "/gumtree.v1.AdminService/DescribeAccounts",
            body_hash: "e3b0",
        }
    }

    #[test]
    fn signature_covers_name_time_nonce_method_and_body() {
        let secret = ClusterSecret::from_bytes(b"0123456789abcdef0123");
        let signed = call("cc-1", 1_000, "ab");
        let sig = secret.sign(&signed);
        assert!(secret.verify(&signed, &sig, 1_010).is_ok());
        let tampered = [
            call("cc-2", 1_000, "ab"),
            call("cc-1", 1_001, "ab"),
            call("cc-1", 1_000, "ac"),
            Signed {
                method: "/gumtree.v1.AdminService/DescribeAccessKeys",
                ..signed
            },
            Signed {
                body_hash: "e3b1",
                ..signed
            },
        ];
        for t in tampered {
            assert!(
                matches!(secret.verify(&t, &sig, 1_010), Err(AuthError::BadSignature)),
                "{t:?}"
            );
        }
        let other = ClusterSecret::from_bytes(b"another-secret-of-length");
        assert!(matches!(
            other.verify(&signed, &sig, 1_010),
            Err(AuthError::BadSignature)
        ));
        assert!(matches!(
            secret.verify(&signed, "zz", 1_010),
            Err(AuthError::BadSignature)
        ));
        assert!(matches!(
            secret.verify(&signed, &sig, 1_000 + MAX_SKEW_SECS + 1),
            Err(AuthError::Skewed(_))
        ));
    }

    #[test]
    fn a_nonce_is_accepted_once_within_the_window() {
        let mut seen = SeenNonces::default();
        assert!(seen.first_time(7, 1_000, 1_000));
        assert!(!seen.first_time(7, 1_000, 1_200));
        assert!(seen.first_time(8, 1_000, 1_200));
        assert!(seen.first_time(7, 1_015, 1_200), "another bucket");
        // Buckets older than the window are dropped; their timestamps would
        // be refused as skewed anyway.
        assert!(seen.first_time(9, 2_000, 2_000));
        assert_eq!(seen.buckets.len(), 1);
    }

    #[test]
    fn each_method_has_its_roles() {
        use Role::*;
        let admin = "/gumtree.v1.AdminService/DescribeAccessKeys";
        assert!(allowed(admin, Admin));
        for role in [Clc, Cc, Nc, Sc, Walrus] {
            assert!(!allowed(admin, role), "{role}");
        }
        assert!(allowed("/gumtree.v1.ClusterService/ReportNode", Nc));
        assert!(!allowed("/gumtree.v1.ClusterService/RunInstances", Nc));
        assert!(allowed("/gumtree.v1.NodeService/RunInstance", Cc));
        assert!(!allowed("/gumtree.v1.NodeService/RunInstance", Clc));
        assert!(allowed("/gumtree.v1.WalrusInternal/GetObject", Nc));
        assert!(!allowed("/gumtree.v1.WalrusInternal/ListBuckets", Nc));
        assert!(!allowed("/gumtree.v1.IdentityService/LookupAccessKey", Cc));
        assert!(!allowed("/gumtree.v1.Nope/X", Admin));
        assert!(!allowed("/other.v1.AdminService/X", Admin));
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
