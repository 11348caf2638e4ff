//! The S3 REST API on hyper.
//!
//! Each request is routed to a [`route::Target`], authenticated (SigV4 by
//! header or presigned query; anonymous otherwise), then handled by an
//! operation in [`ops`]. Every failure is an [`S3Error`] rendered as S3 does.

pub mod acl;
pub mod checksum;
pub mod chunked;
pub mod copy;
pub mod error;
pub mod listing;
pub mod multipart;
pub mod ops;
pub mod route;
pub mod router;
pub mod xml;

use std::{io, sync::Arc};

use bytes::Bytes;
use common::{
    sigv2,
    sigv4::{self, PathStyle, SigError, VerifiedV4},
};
use http::{header::HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use error::S3Error;

use crate::{
    identity::{Caller, Identity},
    objects::ObjectStore,
};

/// A response body: whole or streamed from a file.
pub type Body = BoxBody<Bytes, io::Error>;

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Settings of the S3 front end.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Virtual-host buckets are `<bucket>.<domain>`.
    pub domain: String,
    /// Region reported by GetBucketLocation and HeadBucket.
    pub region: String,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous,
    Account(Caller),
}

impl Principal {
    /// The account id, if signed.
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::Account(c) => Some(&c.account_id),
        }
    }
}

/// The S3 service.
#[derive(Debug)]
pub struct S3 {
    pub objects: ObjectStore,
    pub identity: std::sync::Arc<Identity>,
    pub settings: Settings,
}

/// A request after authentication, as the operations see it.
#[derive(Debug)]
pub struct Call {
    pub target: route::Target,
    pub principal: Principal,
    /// Present for SigV4 requests (aws-chunked bodies need it).
    pub v4: Option<VerifiedV4>,
    /// Lowercase header names.
    pub headers: Vec<(String, String)>,
}

impl Call {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn request_id() -> String {
    let bytes: [u8; 8] = rand::random();
    hex::encode_upper(bytes)
}

/// Serves S3 on `listener` (over TLS with `tls`) until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, s3: Arc<S3>) {
    common::http::serve(listener, tls, move |req| {
        let s3 = s3.clone();
        async move { s3.handle(req).await }
    })
    .await
}

impl S3 {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let id = request_id();
        let method = req.method().clone();
        let span = tracing::info_span!("s3", request_id = %id, %method, path = %req.uri().path());
        let _enter = span.enter();
        let mut response = match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(code = e.code, status = e.status.as_u16(), "{}", e.message);
                let body = if method == http::Method::HEAD || e.status == StatusCode::NOT_MODIFIED {
                    empty()
                } else {
                    full(e.to_xml(&id))
                };
                let mut r = Response::new(body);
                *r.status_mut() = e.status;
                if e.status != StatusCode::NOT_MODIFIED {
                    r.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/xml"));
                }
                r
            }
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-amz-request-id", v);
        }
        response
            .headers_mut()
            .insert("server", HeaderValue::from_static("Gumtree"));
        response
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Response<Body>, S3Error> {
        if common::http::headers_too_large(&req) {
            return Err(S3Error::new(
                "RequestHeaderSectionTooLarge",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Your request header section exceeds the maximum allowed size.",
            ));
        }
        let (parts, body) = req.into_parts();
        let headers = common::http::header_pairs(&parts.headers);
        let host = parts
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()));
        let raw_path = parts.uri.path();
        let raw_query = parts.uri.query().unwrap_or("");
        let target = route::route(host, raw_path, raw_query, &self.settings.domain)?;
        let (principal, v4) = self
            .authenticate(
                parts.method.as_str(),
                raw_path,
                raw_query,
                &headers,
                &target,
            )
            .await
            .map_err(|e| e.with_resource(target.resource()))?;
        let call = Call {
            target,
            principal,
            v4,
            headers,
        };
        router::run(self, &parts.method, call, body).await
    }

    async fn authenticate(
        &self,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &[(String, String)],
        target: &route::Target,
    ) -> Result<(Principal, Option<VerifiedV4>), S3Error> {
        let req = sigv4::Request {
            method,
            raw_path,
            raw_query,
            headers,
            path_style: PathStyle::S3,
        };
        let authorization = req.header("authorization");
        if let Some(auth) = authorization.and_then(|a| a.strip_prefix("AWS ")) {
            let (key, signature) = auth
                .split_once(':')
                .ok_or_else(|| S3Error::malformed_auth("Authorization header is invalid"))?;
            let date = req
                .header("x-amz-date")
                .or_else(|| req.header("date"))
                .and_then(common::time::parse_http_date)
                .ok_or_else(|| {
                    S3Error::new(
                        "AccessDenied",
                        StatusCode::FORBIDDEN,
                        "AWS authentication requires a valid Date or x-amz-date header",
                    )
                })?;
            if (common::time::unix_secs() - date).abs() > sigv4::MAX_SKEW_SECS {
                return Err(S3Error::request_time_too_skewed());
            }
            let caller = self
                .verify_v2(
                    method, raw_path, raw_query, headers, target, None, key, signature,
                )
                .await?;
            return Ok((Principal::Account(caller), None));
        }
        if authorization.is_none() && target.has("AWSAccessKeyId") && target.has("Signature") {
            let expires = target.param("Expires").unwrap_or_default().to_string();
            let at: i64 = expires.parse().map_err(|_| {
                S3Error::new(
                    "AuthorizationQueryParametersError",
                    StatusCode::BAD_REQUEST,
                    "Expires must be a number of seconds since the epoch",
                )
            })?;
            if common::time::unix_secs() > at {
                return Err(S3Error::expired());
            }
            let key = target.param("AWSAccessKeyId").unwrap_or_default();
            let signature = target.param("Signature").unwrap_or_default();
            let caller = self
                .verify_v2(
                    method,
                    raw_path,
                    raw_query,
                    headers,
                    target,
                    Some(&expires),
                    key,
                    signature,
                )
                .await?;
            return Ok((Principal::Account(caller), None));
        }
        if !sigv4::is_v4(&req) {
            if authorization.is_some() {
                return Err(S3Error::malformed_auth("Unsupported Authorization Type"));
            }
            return Ok((Principal::Anonymous, None));
        }
        let presigned = authorization.is_none();
        let payload = match req.header("x-amz-content-sha256") {
            Some(p) => p.to_string(),
            None if presigned => "UNSIGNED-PAYLOAD".to_string(),
            None => {
                return Err(S3Error::invalid_request(
                    "Missing required header for this request: x-amz-content-sha256",
                ))
            }
        };
        let pending = sigv4::parse(&req, &payload).map_err(|e| sig_error(e, presigned))?;
        let host = req.header("host").unwrap_or_default();
        if let Err(wrong) =
            pending
                .scope
                .check(host, &self.settings.region, &["us-east-1"], &["s3"])
        {
            return Err(scope_error(&wrong, presigned));
        }
        let caller = self
            .identity
            .lookup(&pending.scope.access_key)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "identity lookup failed");
                S3Error::service_unavailable()
            })?
            .ok_or_else(|| {
                S3Error::invalid_access_key_id()
                    .with("AWSAccessKeyId", pending.scope.access_key.clone())
            })?;
        let verified = pending
            .verify(&caller.secret_access_key, common::time::unix_secs())
            .map_err(|e| {
                sig_error(e, presigned).with("AWSAccessKeyId", caller.access_key_id.clone())
            })?;
        Ok((Principal::Account(caller), Some(verified)))
    }
}

impl S3 {
    /// Checks a Signature Version 2 signature (header or query) by `key`.
    #[allow(clippy::too_many_arguments)]
    async fn verify_v2(
        &self,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &[(String, String)],
        target: &route::Target,
        expires: Option<&str>,
        key: &str,
        signature: &str,
    ) -> Result<Caller, S3Error> {
        let caller = self.caller(key).await?;
        // The path as signed: as sent, or (for clients that sign the S3 path
        // only) without the Eucalyptus service prefix.
        let mut paths = vec![raw_path.to_string()];
        for prefix in route::PREFIXES {
            if let Some(rest) = raw_path.strip_prefix(prefix) {
                if rest.starts_with('/') {
                    paths.push(rest.to_string());
                }
            }
        }
        // A bucket's resource is `/bucket/` (botocore signs it so), even
        // when the path is sent without the slash.
        if target.key.is_none() && !target.virtual_host {
            for p in paths.clone() {
                if !p.ends_with('/') {
                    paths.push(format!("{p}/"));
                }
            }
        }
        let bucket = target.bucket.as_deref().filter(|_| target.virtual_host);
        // A presigned URL carries the x-amz- headers it signed as parameters
        // (boto 2 does this with metadata).
        let mut headers = headers.to_vec();
        if expires.is_some() {
            for (k, v) in &target.query {
                let k = k.to_ascii_lowercase();
                if k.starts_with("x-amz-") && !headers.iter().any(|(n, _)| *n == k) {
                    headers.push((k, v.clone()));
                }
            }
        }
        let headers = &headers[..];
        let mut tried = Vec::new();
        for path in &paths {
            let req = sigv2::S3Request {
                method,
                raw_path: path,
                raw_query,
                headers,
                virtual_bucket: bucket,
                expires,
            };
            for sts in sigv2::s3_strings_to_sign(&req) {
                let computed = sigv2::sign(sigv2::Mac2::HmacSha1, &caller.secret_access_key, &sts);
                if sigv2::signature_matches(&computed, signature) {
                    return Ok(caller);
                }
                tried.push(sts);
            }
        }
        Err(S3Error::signature_does_not_match()
            .with("AWSAccessKeyId", key)
            .with("StringToSign", tried.into_iter().next().unwrap_or_default()))
    }

    /// The owner of access key `key`.
    async fn caller(&self, key: &str) -> Result<Caller, S3Error> {
        self.identity
            .lookup(key)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "identity lookup failed");
                S3Error::service_unavailable()
            })?
            .ok_or_else(|| S3Error::invalid_access_key_id().with("AWSAccessKeyId", key))
    }
}

/// A credential scoped to another region or service, as S3 answers it.
fn scope_error(wrong: &sigv4::WrongScope, presigned: bool) -> S3Error {
    let (code, prefix) = if presigned {
        (
            "AuthorizationQueryParametersError",
            "Error parsing the X-Amz-Credential parameter;",
        )
    } else {
        (
            "AuthorizationHeaderMalformed",
            "The authorization header is malformed;",
        )
    };
    match wrong {
        sigv4::WrongScope::Region { given, expected } => S3Error::new(
            code,
            StatusCode::BAD_REQUEST,
            format!("{prefix} the region '{given}' is wrong; expecting '{expected}'"),
        )
        .with("Region", expected.clone()),
        sigv4::WrongScope::Service { given, expected } => S3Error::new(
            code,
            StatusCode::BAD_REQUEST,
            format!(
                "{prefix} incorrect service \"{given}\". This endpoint belongs to \"{expected}\"."
            ),
        ),
    }
}

fn sig_error(e: SigError, presigned: bool) -> S3Error {
    match e {
        SigError::Mismatch {
            string_to_sign,
            canonical_request,
        } => S3Error::signature_does_not_match()
            .with("StringToSign", string_to_sign)
            .with("CanonicalRequest", canonical_request),
        SigError::Skewed => S3Error::request_time_too_skewed(),
        SigError::Expired => S3Error::expired(),
        other if presigned => S3Error::new(
            "AuthorizationQueryParametersError",
            StatusCode::BAD_REQUEST,
            other.to_string(),
        ),
        other => S3Error::malformed_auth(other.to_string()),
    }
}
