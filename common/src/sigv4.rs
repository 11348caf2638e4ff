//! AWS Signature Version 4: verifying requests signed by header or by query
//! (presigned URLs), for the EC2 and S3 endpoints.
//!
//! Verification has two steps because the secret may live elsewhere (Walrus
//! asks the CLC): [`parse`] reads what the request claims (who signed it,
//! which scope, which headers) without any secret, and
//! [`PendingV4::verify`] checks the signature once the secret is known.
//! The endpoint then checks the scope names it ([`Scope::check`]): its
//! service, in the cloud's region (or one AWS also takes there), or what
//! boto 2 derives from the host it was given (against `127.0.0.1` it signs
//! region `0`, service `127`).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The hex SHA-256 of an empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Largest accepted clock difference for header-signed requests, in seconds.
pub const MAX_SKEW_SECS: i64 = 15 * 60;
/// Longest lifetime of a presigned URL, in seconds (7 days).
pub const MAX_EXPIRES_SECS: i64 = 7 * 24 * 3600;

/// Why a request's signature could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("the authorization header is malformed: {0}")]
    Malformed(String),
    #[error("the request is missing {0}")]
    Missing(&'static str),
    #[error("the request signature we calculated does not match the signature you provided")]
    Mismatch {
        /// What we signed, to help clients debug (S3 returns it).
        string_to_sign: String,
        canonical_request: String,
    },
    #[error("the difference between the request time and the current time is too large")]
    Skewed,
    #[error("request has expired")]
    Expired,
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
}

/// A scope that does not name the endpoint it was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrongScope {
    /// Another region than the cloud's.
    Region { given: String, expected: String },
    /// Another service than the endpoint's.
    Service { given: String, expected: String },
}

/// The host name of a `Host` header (no port, no IPv6 brackets).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `AKID/20130524/us-east-1/s3/aws4_request`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

impl Scope {
    /// Parses a credential string.
    pub fn parse(credential: &str) -> Result<Self, SigError> {
        let parts: Vec<&str> = credential.split('/').collect();
        match parts.as_slice() {
            [key, date, region, service, "aws4_request"]
                if !key.is_empty()
                    && date.len() == 8
                    && date.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(Self {
                    access_key: key.to_string(),
                    date: date.to_string(),
                    region: region.to_string(),
                    service: service.to_string(),
                })
            }
            _ => Err(SigError::Malformed(format!(
                "credential {credential:?} is not <key>/<yyyymmdd>/<region>/<service>/aws4_request"
            ))),
        }
    }

    /// Whether the scope names this endpoint: one of `services`, in
    /// `region` or one of `also`; or exactly what boto 2 derives from the
    /// `Host` it was given (`<service>.<region>...`: `127.0.0.1` gives
    /// service `127`, region `0`), since it cannot be told otherwise.
    pub fn check(
        &self,
        host: &str,
        region: &str,
        also: &[&str],
        services: &[&str],
    ) -> Result<(), WrongScope> {
        let name = host_name(host);
        let mut parts = name.split('.');
        let boto2 = match (parts.next(), parts.next()) {
            (Some(service), Some(region)) => (service, region),
            (Some(service), None) => (service, "us-east-1"),
            _ => ("", ""),
        };
        if (self.service.as_str(), self.region.as_str()) == boto2 {
            return Ok(());
        }
        if !services.contains(&self.service.as_str()) {
            return Err(WrongScope::Service {
                given: self.service.clone(),
                expected: services.first().copied().unwrap_or_default().to_string(),
            });
        }
        if self.region != region && !also.contains(&self.region.as_str()) {
            return Err(WrongScope::Region {
                given: self.region.clone(),
                expected: region.to_string(),
            });
        }
        Ok(())
    }

    /// `20130524/us-east-1/s3/aws4_request`.
    pub fn scope_string(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// How the path enters the canonical request: S3 encodes it once, every
/// other service twice (the path as sent, encoded again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathStyle {
    S3,
    Other,
}

/// The parts of an HTTP request that SigV4 covers.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path exactly as sent (still percent-encoded).
    pub raw_path: &'a str,
    /// The query string exactly as sent, without `?`.
    pub raw_query: &'a str,
    /// Header names in lowercase, values as sent; repeated names allowed.
    pub headers: &'a [(String, String)],
    pub path_style: PathStyle,
}

impl Request<'_> {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a signed request claims, before the secret is known.
#[derive(Debug, Clone)]
pub struct PendingV4 {
    pub scope: Scope,
    /// `20130524T000000Z`.
    pub amz_date: String,
    pub signature: String,
    pub signed_headers: Vec<String>,
    /// The canonical request with the payload hash as the request gives it.
    canonical_request: String,
    /// Presigned: the URL's expiry, in seconds after `amz_date`.
    expires: Option<i64>,
}

/// A verified request: who signed it, and what chunk signatures chain from.
#[derive(Debug, Clone)]
pub struct VerifiedV4 {
    pub scope: Scope,
    pub amz_date: String,
    /// The request's signature: the seed of aws-chunked chunk signatures.
    pub seed_signature: String,
    /// The derived signing key.
    pub signing_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The SigV4 signing key for a secret and scope.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Hex HMAC of `string_to_sign` under `key`.
pub fn sign(key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac(key, string_to_sign.as_bytes()))
}

/// Compares two hex signatures in constant time.
pub fn signatures_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Percent-encodes per RFC 3986 as AWS does: unreserved characters stay,
/// everything else becomes `%XX` (uppercase); `/` stays when `keep_slash`.
pub fn uri_encode(input: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`); a bad
/// escape is kept as it is.
pub fn percent_decode(input: &str, plus_is_space: bool) -> Vec<u8> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Splits a raw query string into decoded `(name, value)` pairs, in order.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                String::from_utf8_lossy(&percent_decode(k, true)).into_owned(),
                String::from_utf8_lossy(&percent_decode(v, true)).into_owned(),
            )
        })
        .collect()
}

/// The canonical query string: pairs encoded, sorted by name then value.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            (
                uri_encode(k.as_bytes(), false),
                uri_encode(v.as_bytes(), false),
            )
        })
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_uri(raw_path: &str, style: PathStyle) -> String {
    let path = if raw_path.is_empty() { "/" } else { raw_path };
    match style {
        // Decode what was sent and encode it the one canonical way.
        PathStyle::S3 => uri_encode(&percent_decode(path, false), true),
        PathStyle::Other => uri_encode(path.as_bytes(), true),
    }
}

/// Trims a header value and folds inner runs of spaces into one.
fn canonical_header_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn canonical_request(
    req: &Request<'_>,
    query: &[(String, String)],
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, SigError> {
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| canonical_header_value(v))
            .collect();
        if values.is_empty() {
            return Err(SigError::Malformed(format!(
                "signed header {name} is not in the request"
            )));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.raw_path, req.path_style),
        canonical_query(query),
        headers,
        signed_headers.join(";"),
        payload_hash
    ))
}

/// `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
fn parse_authorization(value: &str) -> Result<(Scope, Vec<String>, String), SigError> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(|| {
        SigError::Algorithm(value.split_whitespace().next().unwrap_or("").to_string())
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let scope = Scope::parse(credential.ok_or(SigError::Missing("Credential"))?)?;
    let signed = signed.ok_or(SigError::Missing("SignedHeaders"))?;
    let signature = signature.ok_or(SigError::Missing("Signature"))?;
    Ok((scope, split_signed_headers(signed)?, signature.to_string()))
}

fn split_signed_headers(signed: &str) -> Result<Vec<String>, SigError> {
    let headers: Vec<String> = signed
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if headers.iter().any(|h| h.is_empty()) {
        return Err(SigError::Malformed("empty name in SignedHeaders".into()));
    }
    if !headers.iter().any(|h| h == "host") {
        return Err(SigError::Malformed(
            "SignedHeaders must include host".into(),
        ));
    }
    Ok(headers)
}

/// True when the request carries SigV4 (by header or query).
pub fn is_v4(req: &Request<'_>) -> bool {
    req.header("authorization")
        .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256"))
        || parse_query(req.raw_query)
            .iter()
            .any(|(k, v)| k == "X-Amz-Algorithm" && v == "AWS4-HMAC-SHA256")
}

/// Reads a SigV4 request's claims. `payload_hash` is the hex SHA-256 of the
/// body, or what `x-amz-content-sha256` says (S3: `UNSIGNED-PAYLOAD`,
/// `STREAMING-...`); for presigned S3 URLs without that header, pass
/// `UNSIGNED-PAYLOAD`.
pub fn parse(req: &Request<'_>, payload_hash: &str) -> Result<PendingV4, SigError> {
    let query = parse_query(req.raw_query);
    if let Some(auth) = req.header("authorization") {
        let (scope, signed_headers, signature) = parse_authorization(auth)?;
        let amz_date = req
            .header("x-amz-date")
            .map(str::to_string)
            .or_else(|| {
                req.header("date")
                    .and_then(crate::time::parse_http_date)
                    .map(crate::time::amz_date)
            })
            .ok_or(SigError::Missing("an X-Amz-Date or Date header"))?;
        let canonical_request = canonical_request(req, &query, &signed_headers, payload_hash)?;
        return Ok(PendingV4 {
            scope,
            amz_date,
            signature,
            signed_headers,
            canonical_request,
            expires: None,
        });
    }
    let get = |name: &'static str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or(SigError::Missing(name))
    };
    let algorithm = get("X-Amz-Algorithm")?;
    if algorithm != "AWS4-HMAC-SHA256" {
        return Err(SigError::Algorithm(algorithm));
    }
    let scope = Scope::parse(&get("X-Amz-Credential")?)?;
    let amz_date = get("X-Amz-Date")?;
    let expires: i64 = get("X-Amz-Expires")?
        .parse()
        .map_err(|_| SigError::Malformed("X-Amz-Expires is not a number".into()))?;
    if !(1..=MAX_EXPIRES_SECS).contains(&expires) {
        return Err(SigError::Malformed(format!(
            "X-Amz-Expires must be between 1 and {MAX_EXPIRES_SECS} seconds"
        )));
    }
    let signed_headers = split_signed_headers(&get("X-Amz-SignedHeaders")?)?;
    let signature = get("X-Amz-Signature")?;
    let rest: Vec<(String, String)> = query
        .into_iter()
        .filter(|(k, _)| k != "X-Amz-Signature")
        .collect();
    let canonical_request = canonical_request(req, &rest, &signed_headers, payload_hash)?;
    Ok(PendingV4 {
        scope,
        amz_date,
        signature,
        signed_headers,
        canonical_request,
        expires: Some(expires),
    })
}

impl PendingV4 {
    /// The string to sign for this request.
    pub fn string_to_sign(&self) -> String {
        format!(
            "AWS4-HMAC-SHA256\n{}\n{}\n{}",
            self.amz_date,
            self.scope.scope_string(),
            sha256_hex(self.canonical_request.as_bytes())
        )
    }

    /// Checks the signature with `secret`, and the time against `now` (Unix seconds).
    pub fn verify(&self, secret: &str, now: i64) -> Result<VerifiedV4, SigError> {
        let signed_at = crate::time::parse_amz_date(&self.amz_date)
            .ok_or_else(|| SigError::Malformed(format!("bad date {:?}", self.amz_date)))?;
        if !self.amz_date.starts_with(&self.scope.date) {
            return Err(SigError::Malformed(
                "the credential date does not match the request date".into(),
            ));
        }
        let key = signing_key(
            secret,
            &self.scope.date,
            &self.scope.region,
            &self.scope.service,
        );
        let sts = self.string_to_sign();
        let expected = sign(&key, &sts);
        if !signatures_match(&expected, &self.signature.to_ascii_lowercase()) {
            return Err(SigError::Mismatch {
                string_to_sign: sts,
                canonical_request: self.canonical_request.clone(),
            });
        }
        match self.expires {
            Some(expires) => {
                if now > signed_at + expires {
                    return Err(SigError::Expired);
                }
                if signed_at - now > MAX_SKEW_SECS {
                    return Err(SigError::Skewed);
                }
            }
            None => {
                if (now - signed_at).abs() > MAX_SKEW_SECS {
                    return Err(SigError::Skewed);
                }
            }
        }
        Ok(VerifiedV4 {
            scope: self.scope.clone(),
            amz_date: self.amz_date.clone(),
            seed_signature: expected,
            signing_key: key,
        })
    }
}

impl VerifiedV4 {
    /// The expected signature of an aws-chunked chunk whose data hashes to
    /// `chunk_sha256`, following `previous` (the seed for the first chunk).
    pub fn chunk_signature(&self, previous: &str, chunk_sha256: &str) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{previous}\n{EMPTY_SHA256}\n{chunk_sha256}",
            self.amz_date,
            self.scope.scope_string()
        );
        sign(&self.signing_key, &sts)
    }

    /// The expected signature of the trailing headers (`name:value\n` each).
    pub fn trailer_signature(&self, previous: &str, trailer: &str) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{previous}\n{}",
            self.amz_date,
            self.scope.scope_string(),
            sha256_hex(trailer.as_bytes())
        );
        sign(&self.signing_key, &sts)
    }
}

/// A request to presign: the signature goes in the query (SigV4's
/// `X-Amz-Signature`), the body is `UNSIGNED-PAYLOAD` and only `host` is
/// signed, so any HTTP client can send it as it is.
#[derive(Debug, Clone, Copy)]
pub struct Presign<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The path as sent, already percent-encoded.
    pub encoded_path: &'a str,
    /// Query parameters besides the signature's, decoded.
    pub query: &'a [(String, String)],
    pub access_key: &'a str,
    pub secret: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// Unix seconds the signature is made at.
    pub now: i64,
    pub expires_secs: i64,
}

/// The query string (encoded, without `?`) that makes `p` a presigned request.
pub fn presign(p: &Presign<'_>) -> String {
    let amz_date = crate::time::amz_date(p.now);
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", p.region, p.service);
    let mut pairs = p.query.to_vec();
    pairs.extend([
        (
            "X-Amz-Algorithm".to_string(),
            "AWS4-HMAC-SHA256".to_string(),
        ),
        (
            "X-Amz-Credential".into(),
            format!("{}/{scope}", p.access_key),
        ),
        ("X-Amz-Date".into(), amz_date.clone()),
        ("X-Amz-Expires".into(), p.expires_secs.to_string()),
        ("X-Amz-SignedHeaders".into(), "host".into()),
    ]);
    let query = canonical_query(&pairs);
    let canonical = format!(
        "{}\n{}\n{query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
        p.method, p.encoded_path, p.host
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let key = signing_key(p.secret, date, p.region, p.service);
    format!("{query}&X-Amz-Signature={}", sign(&key, &to_sign))
}

#[cfg(test)]
mod tests {

    //! Examples from AWS's "Signature Calculations for the Authorization
    //! Header" and "Query String Authentication" pages for S3.
    use super::*;

    #[test]
    fn a_scope_must_name_the_endpoint() {
        let scope = |region: &str, service: &str| Scope {
            access_key: "AKID".into(),
            date: "20240101".into(),
            region: region.into(),
            service: service.into(),
        };
        let ok = |s: Scope, host: &str| s.check(host, "gumtree", &["us-east-1"], &["s3"]);
        assert!(ok(scope("gumtree", "s3"), "127.0.0.1:8773").is_ok());
        assert!(ok(scope("us-east-1", "s3"), "127.0.0.1:8773").is_ok());
        // boto 2's guess from an address.
        assert!(ok(scope("0", "127"), "127.0.0.1:8773").is_ok());
        assert_eq!(
            ok(scope("eu-west-1", "s3"), "127.0.0.1:8773"),
            Err(WrongScope::Region {
                given: "eu-west-1".into(),
                expected: "gumtree".into()
            })
        );
        assert_eq!(
            ok(scope("gumtree", "ec2"), "127.0.0.1:8773"),
            Err(WrongScope::Service {
                given: "ec2".into(),
                expected: "s3".into()
            })
        );
        assert!(
            ok(scope("1", "127"), "127.0.0.1").is_err(),
            "not what boto 2 signs"
        );
        assert!(ok(scope("us-east-1", "localhost"), "localhost:80").is_ok());
        assert_eq!(host_name("[::1]:8773"), "::1");
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    /// 2013-05-24T00:00:00Z, when the examples were signed.
    const WHEN: i64 = 1_369_353_600;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(req: Request<'_>, payload: &str, expected: &str) -> VerifiedV4 {
        let pending = parse(&req, payload).expect("parse");
        assert_eq!(pending.scope.access_key, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(
            sign(
                &signing_key(SECRET, "20130524", "us-east-1", "s3"),
                &pending.string_to_sign()
            ),
            expected
        );
        pending.verify(SECRET, WHEN).expect("verify")
    }

    #[test]
    fn get_object_example() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
        ]);
        let req = Request {
            method: "GET",
            raw_path: "/test.txt",
            raw_query: "",
            headers: &h,
            path_style: PathStyle::S3,
        };
        check(
            req.clone(),
            EMPTY_SHA256,
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        );

        // A wrong secret, a tampered header and a stale clock all fail.
        let pending = parse(&req, EMPTY_SHA256).expect("parse");
        assert!(matches!(
            pending.verify("wrong", WHEN),
            Err(SigError::Mismatch { .. })
        ));
        assert_eq!(
            pending.verify(SECRET, WHEN + MAX_SKEW_SECS + 1).err(),
            Some(SigError::Skewed)
        );
        let mut tampered = h.clone();
        tampered[1].1 = "bytes=0-10".into();
        let req = Request {
            headers: &tampered,
            ..req
        };
        assert!(matches!(
            parse(&req, EMPTY_SHA256)
                .expect("parse")
                .verify(SECRET, WHEN),
            Err(SigError::Mismatch { .. })
        ));
    }

    #[test]
    fn put_object_example_with_date_header_and_encoded_path() {
        let payload = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", payload),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
        ]);
        let req = Request {
            method: "PUT",
            raw_path: "/test%24file.text",
            raw_query: "",
            headers: &h,
            path_style: PathStyle::S3,
        };
        check(
            req,
            payload,
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        );
    }

    #[test]
    fn bucket_lifecycle_and_list_objects_examples() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature=x"),
        ]);
        let req = Request {
            method: "GET",
            raw_path: "/",
            raw_query: "lifecycle",
            headers: &h,
            path_style: PathStyle::S3,
        };
        let p = parse(&req, EMPTY_SHA256).expect("parse");
        assert_eq!(
            sign(
                &signing_key(SECRET, "20130524", "us-east-1", "s3"),
                &p.string_to_sign()
            ),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
        let req = Request {
            raw_query: "max-keys=2&prefix=J",
            ..req
        };
        let p = parse(&req, EMPTY_SHA256).expect("parse");
        assert_eq!(
            sign(
                &signing_key(SECRET, "20130524", "us-east-1", "s3"),
                &p.string_to_sign()
            ),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn presigned_url_example() {
        let h = headers(&[("host", "examplebucket.s3.amazonaws.com")]);
        let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let req = Request {
            method: "GET",
            raw_path: "/test.txt",
            raw_query: query,
            headers: &h,
            path_style: PathStyle::S3,
        };
        assert!(is_v4(&req));
        check(
            req.clone(),
            "UNSIGNED-PAYLOAD",
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
        );
        let p = parse(&req, "UNSIGNED-PAYLOAD").expect("parse");
        assert_eq!(
            p.verify(SECRET, WHEN + 86_401).err(),
            Some(SigError::Expired)
        );
    }

    #[test]
    fn presign_makes_the_example_url_and_what_the_verifier_takes() {
        let base = Presign {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            encoded_path: "/test.txt",
            query: &[],
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret: SECRET,
            region: "us-east-1",
            service: "s3",
            now: WHEN,
            expires_secs: 86400,
        };
        assert!(presign(&base).ends_with(
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        ));
        let path = format!("/b/{}", uri_encode("a dir/ü+&=.txt".as_bytes(), true));
        let extra = [("list-type".to_string(), "2".to_string())];
        let query = presign(&Presign {
            method: "PUT",
            encoded_path: &path,
            query: &extra,
            ..base
        });
        let h = headers(&[("host", "examplebucket.s3.amazonaws.com")]);
        let req = Request {
            method: "PUT",
            raw_path: &path,
            raw_query: &query,
            headers: &h,
            path_style: PathStyle::S3,
        };
        let p = parse(&req, "UNSIGNED-PAYLOAD").expect("parse");
        assert!(p.verify(SECRET, WHEN + 10).is_ok());
    }

    #[test]
    fn chunk_signatures_follow_the_streaming_example() {
        let h = headers(&[
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
        ]);
        let req = Request {
            method: "PUT",
            raw_path: "/examplebucket/chunkObject.txt",
            raw_query: "",
            headers: &h,
            path_style: PathStyle::S3,
        };
        let v = check(
            req,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        );
        let c1 = v.chunk_signature(&v.seed_signature, &sha256_hex(&[b'a'; 65536]));
        assert_eq!(
            c1,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let c2 = v.chunk_signature(&c1, &sha256_hex(&[b'a'; 1024]));
        assert_eq!(
            c2,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        let last = v.chunk_signature(&c2, EMPTY_SHA256);
        assert_eq!(
            last,
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let h = headers(&[("host", "h"), ("x-amz-date", "20130524T000000Z"), ("authorization", "AWS4-HMAC-SHA256 Credential=AK/2013/us/s3/aws4_request,SignedHeaders=host,Signature=00")]);
        let req = Request {
            method: "GET",
            raw_path: "/",
            raw_query: "",
            headers: &h,
            path_style: PathStyle::S3,
        };
        assert!(matches!(
            parse(&req, EMPTY_SHA256),
            Err(SigError::Malformed(_))
        ));
        let h = headers(&[("host", "h"), ("authorization", "AWS4-HMAC-SHA256 Credential=AK/20130524/us/s3/aws4_request,SignedHeaders=host,Signature=00")]);
        let req = Request { headers: &h, ..req };
        assert_eq!(
            parse(&req, EMPTY_SHA256).err(),
            Some(SigError::Missing("an X-Amz-Date or Date header"))
        );
        let h = headers(&[("host", "h"), ("x-amz-date", "20130524T000000Z"), ("authorization", "AWS4-HMAC-SHA256 Credential=AK/20130524/us/s3/aws4_request,SignedHeaders=x-amz-date,Signature=00")]);
        let req = Request { headers: &h, ..req };
        assert!(matches!(
            parse(&req, EMPTY_SHA256),
            Err(SigError::Malformed(_))
        ));
    }

    #[test]
    fn encoding_rules() {
        assert_eq!(uri_encode(b"a b/c~d*e", true), "a%20b/c~d%2Ae");
        assert_eq!(uri_encode(b"a/b", false), "a%2Fb");
        assert_eq!(percent_decode("a%2Fb+c%zz%", true), b"a/b c%zz%".to_vec());
        assert_eq!(
            canonical_query(&parse_query("b=2&a=1&a=0&c")),
            "a=0&a=1&b=2&c="
        );
    }
}
