//! The web console: pages for users and administrators, served over HTTPS
//! at `console_listen` from files built into the binary.
//!
//! It is one more wire layer over the same operations, never a copy of
//! them: a page's EC2 call goes through [`Ec2::call_as`] (the EC2 Query
//! API's own dispatcher), its CloudWatch call through the CloudWatch
//! operations, its S3 call to Walrus presigned with the user's own key,
//! and the administrators' pages through the admin service's methods.
//! Only who the caller is comes from the session instead of a signature.

pub mod admin;
pub mod assets;
pub mod s3;
pub mod serial;
pub mod session;

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use common::{http::PeerAddr, sigv4};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;

use crate::{
    cloudwatch,
    ec2::{Caller, Ec2, Params},
};
use session::{ConsoleSession, Credentials, SessionError, Sessions, COOKIE};

/// What the console's handlers answer with.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// The console's parts.
#[derive(Debug)]
pub struct Console {
    pub ec2: Arc<Ec2>,
    pub sessions: Sessions,
    pub assets: assets::Assets,
    pub walrus: s3::WalrusClient,
}

/// An error a console API call answers with: JSON
/// `{"error": {"code", "message"}}` and an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameterValue", message)
    }

    fn response(&self) -> Response<Body> {
        json_response(
            self.status,
            &json!({"error": {"code": self.code, "message": self.message}}),
        )
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::BadCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "AuthFailure", e.to_string())
            }
            SessionError::Throttled(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "Throttling", e.to_string())
            }
            SessionError::NoSession => {
                Self::new(StatusCode::UNAUTHORIZED, "NotSignedIn", e.to_string())
            }
            SessionError::Store(_) | SessionError::Account(_) => {
                tracing::error!(error = %e, "console session store failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The session store is not available.",
                )
            }
        }
    }
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Largest JSON or form body a console call takes.
const MAX_CALL_BODY: usize = 1024 * 1024;

async fn read_small(body: Incoming) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_CALL_BODY);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("The body is over {MAX_CALL_BODY} bytes, or ended early."),
        )
    })
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("Bad JSON: {e}")))
}

/// Serves the console on `listener` over TLS until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    console: Arc<Console>,
) {
    common::http::serve(listener, Some(tls), move |req| {
        let console = console.clone();
        async move { console.handle(req).await }
    })
    .await
}

/// Headers every answer carries.
fn harden(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "strict-transport-security",
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert("server", HeaderValue::from_static("Gumtree"));
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// False for a request another site's page made: its `Origin` (browsers
/// send one with every POST and WebSocket) names another host.
fn same_origin(origin: Option<&str>, host: &str) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    origin
        .split_once("://")
        .is_some_and(|(scheme, rest)| scheme == "https" && rest.trim_end_matches('/') == host)
}

impl Console {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let mut r = match self.route(req).await {
            Ok(r) => r,
            Err(e) => {
                if e.status.is_server_error() {
                    tracing::error!(code = %e.code, "{}", e.message);
                } else {
                    tracing::info!(code = %e.code, status = e.status.as_u16(), "console: {}", e.message);
                }
                e.response()
            }
        };
        harden(&mut r);
        r
    }

    fn asset(&self, req: &Request<Incoming>, a: &assets::Asset, immutable: bool) -> Response<Body> {
        let gzip = header_str(req, "accept-encoding")
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
        let not_modified = header_str(req, "if-none-match") == Some(a.etag.as_str());
        let mut r = Response::new(if not_modified {
            full(Bytes::new())
        } else if gzip {
            full(a.gzipped.clone())
        } else {
            full(a.plain.clone())
        });
        if not_modified {
            *r.status_mut() = StatusCode::NOT_MODIFIED;
        }
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        if gzip && !not_modified {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if let Ok(v) = HeaderValue::from_str(&a.etag) {
            h.insert(header::ETAG, v);
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(if immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            }),
        );
        r
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if method == Method::GET || method == Method::HEAD {
            if path == "/" || path == "/index.html" {
                return Ok(self.asset(&req, &self.assets.page, false));
            }
            if let Some(a) = self.assets.get(&path) {
                return Ok(self.asset(&req, a, true));
            }
        }
        if !path.starts_with("/api/") {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("Nothing at {path}."),
            ));
        }
        if !same_origin(
            header_str(&req, "origin"),
            header_str(&req, "host").unwrap_or_default(),
        ) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "InvalidOrigin",
                "The request came from another site's page.",
            ));
        }
        if path == "/api/signin" && method == Method::POST {
            return self.sign_in(req).await;
        }
        let token = header_str(&req, "cookie")
            .and_then(|c| session::cookie(c, COOKIE))
            .unwrap_or_default()
            .to_string();
        let session = self.sessions.check(&token)?;
        // Every change carries the session's CSRF token; a WebSocket (which
        // cannot send headers) carries it in its query.
        let csrf = header_str(&req, "x-csrf-token")
            .map(str::to_string)
            .or_else(|| {
                sigv4::parse_query(req.uri().query().unwrap_or(""))
                    .into_iter()
                    .find(|(k, _)| k == "csrf")
                    .map(|(_, v)| v)
            });
        let safe = method == Method::GET || method == Method::HEAD;
        let upgrade =
            header_str(&req, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        if (!safe || upgrade) && !csrf.is_some_and(|c| sigv4::signatures_match(&c, &session.csrf)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "InvalidCsrfToken",
                "The request lacks the session's CSRF token.",
            ));
        }
        let caller = self.caller(&session);
        match (method.clone(), path.as_str()) {
            (Method::GET, "/api/session") => Ok(json_response(
                StatusCode::OK,
                &self.session_json(&session, &caller),
            )),
            (Method::POST, "/api/signout") => {
                self.sessions.sign_out(&token)?;
                let mut r = json_response(StatusCode::OK, &json!({"signedOut": true}));
                r.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_static(
                        "gumtree_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
                    ),
                );
                Ok(r)
            }
            (Method::POST, "/api/ec2") => self.ec2_call(caller, req).await,
            (Method::POST, "/api/cloudwatch") => self.cloudwatch_call(caller, req).await,
            (Method::POST, "/api/s3-presign") => {
                let body = read_small(req.into_body()).await?;
                self.presign(&session, &json_body(&body)?)
            }
            (_, p) if p.starts_with("/api/s3/") || p == "/api/s3" => {
                self.s3_call(&session, req).await
            }
            (Method::GET, p) if p.starts_with("/api/serial/") => {
                let id = p.trim_start_matches("/api/serial/").to_string();
                serial::open(self, caller, &id, req).await
            }
            (_, p) if p.starts_with("/api/admin/") => {
                if !caller.admin {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "AccessDenied",
                        "Only the cloud's administrators may do this.",
                    ));
                }
                admin::route(self, method, p, req).await
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("No console call {method} {path}."),
            )),
        }
    }

    fn caller(&self, s: &ConsoleSession) -> Caller {
        Caller {
            admin: s.account_name == self.ec2.cloud.settings.admin_account,
            account_id: s.account_id.clone(),
            account_name: s.account_name.clone(),
            user_name: s.user_name.clone(),
        }
    }

    fn session_json(&self, s: &ConsoleSession, caller: &Caller) -> serde_json::Value {
        json!({
            "account": s.account_name,
            "accountId": s.account_id,
            "user": s.user_name,
            "admin": caller.admin,
            "csrf": s.csrf,
            "idleSeconds": self.sessions.idle_secs(),
            "region": self.ec2.cloud.settings.region,
        })
    }

    async fn sign_in(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let addr = req
            .extensions()
            .get::<PeerAddr>()
            .map(|a| a.0.ip().to_string())
            .unwrap_or_default();
        let body = read_small(req.into_body()).await?;
        let credentials: Credentials = json_body(&body)?;
        let (session, token) = self.sessions.sign_in(&credentials, &addr)?;
        tracing::info!(account = %session.account_name, user = %session.user_name, "console sign-in");
        let caller = self.caller(&session);
        let mut r = json_response(StatusCode::OK, &self.session_json(&session, &caller));
        let cookie = format!(
            "{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
            12 * 3600
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        Ok(r)
    }

    /// An EC2 (or Euare) Query action from a form body, answered in EC2's
    /// own XML, errors included.
    async fn ec2_call(
        &self,
        caller: Caller,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let body = read_small(req.into_body()).await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("The body is not UTF-8."))?;
        let params = Params::new(sigv4::parse_query(text));
        let id = crate::ec2::request_id();
        let (status, xml) = match self.ec2.call_as(caller, params, &id).await {
            Ok(xml) => (StatusCode::OK, xml),
            Err(e) => {
                tracing::info!(code = %e.code, status = e.status.as_u16(), "console EC2 call: {}", e.message);
                (e.status, e.to_xml(&id))
            }
        };
        let mut r = Response::new(full(xml));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml;charset=UTF-8"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(r)
    }

    /// A CloudWatch operation in its JSON protocol (`X-Amz-Target`).
    async fn cloudwatch_call(
        &self,
        caller: Caller,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let op = header_str(&req, "x-amz-target")
            .and_then(|t| t.strip_prefix(&format!("{}.", cloudwatch::TARGET_PREFIX)))
            .unwrap_or_default()
            .to_string();
        let body = read_small(req.into_body()).await?;
        let input = cloudwatch::doc::from_json(&body).map_err(ApiError::bad_request)?;
        let (status, out) = match cloudwatch::ops::run(&self.ec2, &caller, &op, &input).await {
            Ok(out) => (
                StatusCode::OK,
                cloudwatch::doc::to_json(&out.unwrap_or(cloudwatch::doc::Doc::Struct(vec![]))),
            ),
            Err(e) => (e.status, cloudwatch::doc::to_json(&e.to_doc())),
        };
        let mut r = Response::new(full(out));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        Ok(r)
    }

    /// The access key S3 calls are signed with: the session's own, else
    /// the first of the user's.
    fn s3_key(&self, s: &ConsoleSession) -> Result<crate::accounts::AccessKey, ApiError> {
        let unavailable = |e: crate::accounts::AccountError| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            )
        };
        if let Some(id) = &s.access_key_id {
            if let Some(k) = self.ec2.cloud.accounts.key(id).map_err(unavailable)? {
                return Ok(k);
            }
        }
        self.ec2
            .cloud
            .accounts
            .keys_of(&s.account_name)
            .map_err(unavailable)?
            .into_iter()
            .filter(|k| k.account_id == s.account_id && k.user_name == s.user_name)
            .min_by_key(|k| k.created_ms)
            .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "NoAccessKey",
                format!(
                    "User {} has no access key, and Walrus takes only signed requests: create one on the Access keys page first.",
                    s.user_name
                ),
            )
        })
    }

    /// An ENABLED Walrus's S3 endpoint (`https://host:port`, no trailing
    /// slash) and its `host:port`.
    fn walrus_endpoint(&self) -> Result<(String, String), ApiError> {
        self.ec2
            .cloud
            .registry
            .services(common::time::unix_ms())
            .into_iter()
            .find(|s| {
                s.service_type == crate::registry::WALRUS
                    && s.state == proto::ServiceState::Enabled as i32
                    && !s.public_endpoint.is_empty()
            })
            .map(|s| {
                let endpoint = s.public_endpoint.trim_end_matches('/').to_string();
                let host = endpoint
                    .split_once("://")
                    .map_or(endpoint.as_str(), |(_, h)| h)
                    .to_string();
                (endpoint, host)
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    s3::ProxyError::NoWalrus.to_string(),
                )
            })
    }

    /// The query that presigns `method path` for Walrus with `key`.
    fn presigned_query(
        key: &crate::accounts::AccessKey,
        method: &str,
        host: &str,
        encoded_path: &str,
        query: &[(String, String)],
        expires_secs: i64,
    ) -> String {
        sigv4::presign(&sigv4::Presign {
            method,
            host,
            encoded_path,
            query,
            access_key: &key.access_key_id,
            secret: &key.secret_access_key,
            region: "us-east-1",
            service: "s3",
            now: common::time::unix_secs(),
            expires_secs,
        })
    }

    /// Forwards an S3 request to Walrus, signed as the user.
    async fn s3_call(
        &self,
        s: &ConsoleSession,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let key = self.s3_key(s)?;
        let (endpoint, host) = self.walrus_endpoint()?;
        let (parts, body) = req.into_parts();
        let rest = parts.uri.path().strip_prefix("/api/s3").unwrap_or("/");
        let rest = if rest.is_empty() { "/" } else { rest };
        let encoded_path = sigv4::uri_encode(&sigv4::percent_decode(rest, false), true);
        let mut query = sigv4::parse_query(parts.uri.query().unwrap_or(""));
        let download = query.iter().any(|(k, _)| k == "download");
        // The signature is the console's to make: a page's own X-Amz-*
        // parameters are dropped, not signed.
        query.retain(|(k, _)| {
            k != "download" && k != "csrf" && !k.to_ascii_lowercase().starts_with("x-amz-")
        });
        let signed = Self::presigned_query(
            &key,
            parts.method.as_str(),
            &host,
            &encoded_path,
            &query,
            300,
        );
        let uri = format!("{encoded_path}?{signed}");
        let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
        for name in [
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::RANGE,
            header::IF_NONE_MATCH,
            header::HeaderName::from_static("content-md5"),
        ] {
            if let Some(v) = parts.headers.get(&name) {
                builder = builder.header(name, v);
            }
        }
        let out = builder
            .body(body)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let answer = self.walrus.send(&endpoint, out).await.map_err(|e| {
            ApiError::new(StatusCode::BAD_GATEWAY, "ServiceUnavailable", e.to_string())
        })?;
        let (aparts, abody) = answer.into_parts();
        let mut r = Response::new(abody.map_err(|e| e.into()).boxed());
        *r.status_mut() = aparts.status;
        for (name, value) in &aparts.headers {
            if matches!(
                name.as_str(),
                "content-type"
                    | "content-length"
                    | "etag"
                    | "last-modified"
                    | "content-range"
                    | "accept-ranges"
                    | "x-amz-request-id"
            ) {
                r.headers_mut().insert(name.clone(), value.clone());
            }
        }
        if download {
            let name = rest.rsplit('/').next().unwrap_or("download");
            let name = String::from_utf8_lossy(&sigv4::percent_decode(name, false)).into_owned();
            let cookie = format!(
                "attachment; filename=\"{}\"; filename*=UTF-8''{}",
                name.replace(['"', '\\', '\r', '\n'], "_"),
                sigv4::uri_encode(name.as_bytes(), false)
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(r)
    }

    /// A presigned GET link to an object, good for `expires` seconds.
    fn presign(&self, s: &ConsoleSession, ask: &PresignAsk) -> Result<Response<Body>, ApiError> {
        if ask.bucket.is_empty() || ask.key.is_empty() {
            return Err(ApiError::bad_request("Name a bucket and a key."));
        }
        let expires = ask.expires.unwrap_or(3600);
        if !(1..=sigv4::MAX_EXPIRES_SECS).contains(&expires) {
            return Err(ApiError::bad_request(format!(
                "Expires must be 1 to {} seconds.",
                sigv4::MAX_EXPIRES_SECS
            )));
        }
        let key = self.s3_key(s)?;
        let (endpoint, host) = self.walrus_endpoint()?;
        let path = format!(
            "/{}/{}",
            sigv4::uri_encode(ask.bucket.as_bytes(), false),
            sigv4::uri_encode(ask.key.as_bytes(), true)
        );
        let query = Self::presigned_query(&key, "GET", &host, &path, &[], expires);
        Ok(json_response(
            StatusCode::OK,
            &json!({"url": format!("{endpoint}{path}?{query}"), "expires": expires}),
        ))
    }
}

/// What a page asks to presign.
#[derive(Debug, serde::Deserialize)]
struct PresignAsk {
    bucket: String,
    key: String,
    expires: Option<i64>,
}

/// Sets up the console from the CLC's configuration.
pub fn build(
    ec2: Arc<Ec2>,
    store: &common::store::Store,
    idle_secs: u64,
    trusted: &[tokio_rustls::rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<Console> {
    Ok(Console {
        sessions: Sessions::open(store, ec2.cloud.accounts.clone(), idle_secs)?,
        ec2,
        assets: assets::Assets::load(),
        walrus: s3::WalrusClient::new(trusted)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_consoles_own_pages_may_call_it() {
        assert!(
            same_origin(None, "127.0.0.1:8443"),
            "no Origin: not a browser's cross-site call"
        );
        assert!(same_origin(
            Some("https://127.0.0.1:8443"),
            "127.0.0.1:8443"
        ));
        for other in [
            "https://evil.example",
            "https://127.0.0.1:9999",
            "http://127.0.0.1:8443",
            "null",
        ] {
            assert!(!same_origin(Some(other), "127.0.0.1:8443"), "{other}");
        }
    }

    #[test]
    fn api_errors_are_json_with_their_status() {
        let r = ApiError::new(StatusCode::FORBIDDEN, "InvalidCsrfToken", "no token").response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            r.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let e: ApiError = SessionError::Throttled(4).into();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::TOO_MANY_REQUESTS, "Throttling")
        );
    }
}
