//! The S3 operations: buckets, objects and listings.

use std::{collections::BTreeMap, io::SeekFrom};

use base64::Engine;
use common::time;
use futures_util::TryStreamExt;
use http::{header::HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{
    acl::{self, Permission},
    checksum::Algorithm,
    chunked::ChunkedDecoder,
    empty, full, listing, route, xml, Body, Call, Principal, S3Error, S3,
};
use crate::objects::{Bucket, Object, ObjectError, Written};

/// Headers kept with an object and returned on GET/HEAD.
const KEPT_HEADERS: [&str; 6] = [
    "content-type",
    "content-disposition",
    "content-encoding",
    "cache-control",
    "content-language",
    "expires",
];
/// Largest request body parsed as XML.
pub(super) const MAX_XML_BODY: usize = 2 * 1024 * 1024;

pub(super) fn storage(e: ObjectError) -> S3Error {
    tracing::error!(error = %e, "storage failed");
    S3Error::internal()
}

pub(super) fn xml_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    r
}

pub(super) fn set(r: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

pub(super) fn caller_of(call: &Call) -> Result<&crate::identity::Caller, S3Error> {
    match &call.principal {
        Principal::Account(c) => Ok(c),
        Principal::Anonymous => Err(S3Error::access_denied()),
    }
}

/// The bucket the request names; `NoSuchBucket` when there is none.
pub(super) fn bucket_of(s3: &S3, call: &Call) -> Result<Bucket, S3Error> {
    let name = call.target.bucket.as_deref().unwrap_or_default();
    s3.objects.bucket(name).map_err(storage)?.ok_or_else(|| {
        S3Error::no_such_bucket()
            .with_resource(name)
            .with("BucketName", name)
    })
}

/// A bucket's owner, for ACLs.
pub(super) fn owner_of(bucket: &Bucket) -> acl::Owner<'_> {
    acl::Owner {
        id: &bucket.owner_id,
        name: &bucket.owner_name,
    }
}

/// True when the caller holds `wanted` on `bucket`.
pub(super) fn bucket_allows(bucket: &Bucket, call: &Call, wanted: Permission) -> bool {
    acl::allows(
        &acl::grants(&bucket.acl, owner_of(bucket), None),
        &call.principal,
        wanted,
    )
}

/// True when the caller holds `wanted` on `object` of `bucket`.
pub(super) fn object_allows(
    bucket: &Bucket,
    object: &Object,
    call: &Call,
    wanted: Permission,
) -> bool {
    let owner = acl::Owner {
        id: &object.owner_id,
        name: &object.owner_name,
    };
    acl::allows(
        &acl::grants(&object.acl, owner, Some(owner_of(bucket))),
        &call.principal,
        wanted,
    )
}

/// The bucket, if the caller holds `wanted` on it.
pub(super) fn bucket_with(s3: &S3, call: &Call, wanted: Permission) -> Result<Bucket, S3Error> {
    let bucket = bucket_of(s3, call)?;
    if bucket_allows(&bucket, call, wanted) {
        Ok(bucket)
    } else {
        Err(S3Error::access_denied().with_resource(bucket.name))
    }
}

/// The bucket, if the caller owns it.
pub(super) fn owned_bucket(s3: &S3, call: &Call) -> Result<Bucket, S3Error> {
    let bucket = bucket_of(s3, call)?;
    match call.principal.account_id() {
        Some(id) if id == bucket.owner_id => Ok(bucket),
        _ => Err(S3Error::access_denied().with_resource(bucket.name)),
    }
}

/// The bucket, if the caller may write objects into it.
pub(super) fn writable_bucket(s3: &S3, call: &Call) -> Result<Bucket, S3Error> {
    bucket_with(s3, call, Permission::Write)
}

/// The object the request names, if the caller holds `wanted` on it. A
/// missing object is `NoSuchKey` to those who may list the bucket and
/// `AccessDenied` to others, as S3 answers.
pub(super) fn object_with(
    s3: &S3,
    call: &Call,
    wanted: Permission,
) -> Result<(Bucket, Object), S3Error> {
    let bucket = bucket_of(s3, call)?;
    let key = call.target.key.clone().unwrap_or_default();
    let Some(object) = s3.objects.object(&bucket.name, &key).map_err(storage)? else {
        return Err(if bucket_allows(&bucket, call, Permission::Read) {
            S3Error::no_such_key()
                .with_resource(call.target.resource())
                .with("Key", &key)
        } else {
            S3Error::access_denied().with_resource(call.target.resource())
        });
    };
    if object_allows(&bucket, &object, call, wanted) {
        Ok((bucket, object))
    } else {
        Err(S3Error::access_denied().with_resource(call.target.resource()))
    }
}

pub(super) async fn read_small_body(body: Incoming, limit: usize) -> Result<Vec<u8>, S3Error> {
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| S3Error::incomplete_body())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(S3Error::invalid_request("The request body is too large"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

pub(super) fn list_buckets(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let caller = caller_of(call)?;
    let mut w = xml::Writer::new("ListAllMyBucketsResult");
    w.open("Owner")
        .elem("ID", &caller.account_id)
        .elem("DisplayName", &caller.account_name)
        .close("Owner")
        .open("Buckets");
    for b in s3.objects.buckets().map_err(storage)? {
        if b.owner_id == caller.account_id {
            w.open("Bucket")
                .elem("Name", &b.name)
                .elem("CreationDate", &time::iso8601_ms(b.created_ms))
                .close("Bucket");
        }
    }
    w.close("Buckets");
    Ok(xml_response(
        StatusCode::OK,
        w.finish("ListAllMyBucketsResult"),
    ))
}

pub(super) fn canned_acl(call: &Call) -> Result<String, S3Error> {
    match call.header("x-amz-acl") {
        None => Ok("private".into()),
        Some(acl) if acl::CANNED.contains(&acl) => Ok(acl.to_string()),
        Some(acl) => Err(S3Error::invalid_argument(
            "Invalid canned ACL",
            "x-amz-acl",
            acl,
        )),
    }
}

pub(super) async fn create_bucket(
    s3: &S3,
    call: &Call,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let caller = caller_of(call)?.clone();
    let name = call.target.bucket.clone().unwrap_or_default();
    if !route::valid_bucket_name(&name) {
        return Err(S3Error::invalid_bucket_name()
            .with_resource(&name)
            .with("BucketName", &name));
    }
    let acl = canned_acl(call)?;
    let body = read_small_body(body, 64 * 1024).await?;
    let location = if body.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        let root = xml::parse(&body)?;
        if root.name != "CreateBucketConfiguration" {
            return Err(S3Error::malformed_xml());
        }
        let location = root.child_text("LocationConstraint").unwrap_or("").trim();
        // This cloud is one region: a bucket is made there or nowhere.
        if !location.is_empty() && location != s3.settings.region {
            return Err(S3Error::new(
                "InvalidLocationConstraint",
                StatusCode::BAD_REQUEST,
                "The specified location-constraint is not valid",
            )
            .with("LocationConstraint", location));
        }
        location.to_string()
    };
    let bucket = Bucket {
        name: name.clone(),
        owner_id: caller.account_id.clone(),
        owner_name: caller.account_name.clone(),
        created_ms: time::unix_ms(),
        location,
        acl,
    };
    if !s3.objects.create_bucket(&bucket).map_err(storage)? {
        let existing = s3.objects.bucket(&name).map_err(storage)?;
        return Err(match existing {
            Some(b) if b.owner_id == caller.account_id => S3Error::bucket_already_owned_by_you(),
            _ => S3Error::bucket_already_exists(),
        }
        .with_resource(&name)
        .with("BucketName", &name));
    }
    tracing::info!(bucket = %name, account = %caller.account_name, "bucket created");
    let mut r = Response::new(empty());
    set(&mut r, "location", &format!("/{name}"));
    Ok(r)
}

pub(super) async fn delete_bucket(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = owned_bucket(s3, call)?;
    if !s3.objects.bucket_is_empty(&bucket.name).map_err(storage)? {
        return Err(S3Error::bucket_not_empty()
            .with_resource(&bucket.name)
            .with("BucketName", &bucket.name));
    }
    s3.objects
        .delete_bucket(&bucket.name)
        .await
        .map_err(storage)?;
    tracing::info!(bucket = %bucket.name, "bucket deleted");
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

fn region_of(s3: &S3, bucket: &Bucket) -> String {
    if bucket.location.is_empty() {
        s3.settings.region.clone()
    } else {
        bucket.location.clone()
    }
}

pub(super) fn head_bucket(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = bucket_with(s3, call, Permission::Read)?;
    let mut r = Response::new(empty());
    set(&mut r, "x-amz-bucket-region", &region_of(s3, &bucket));
    Ok(r)
}

pub(super) fn get_bucket_location(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = owned_bucket(s3, call)?;
    let _ = s3;
    Ok(xml_response(
        StatusCode::OK,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"{}\">{}</LocationConstraint>",
            xml::S3_NS,
            super::error::escape(&bucket.location)
        ),
    ))
}

pub(super) fn get_bucket_versioning(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    owned_bucket(s3, call)?;
    Ok(xml_response(
        StatusCode::OK,
        xml::Writer::new("VersioningConfiguration").finish("VersioningConfiguration"),
    ))
}

/// What the body's `x-amz-content-sha256` says about it.
enum Payload {
    Raw { sha256: Option<String> },
    Chunked(Box<ChunkedDecoder>),
}

fn payload_mode(call: &Call) -> Result<Payload, S3Error> {
    let Some(declared) = call.header("x-amz-content-sha256") else {
        return Ok(Payload::Raw { sha256: None });
    };
    match declared {
        "UNSIGNED-PAYLOAD" => Ok(Payload::Raw { sha256: None }),
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" | "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => {
            let v4 = call.v4.clone().ok_or_else(|| {
                S3Error::invalid_request("a signed streaming payload needs a SigV4-signed request")
            })?;
            Ok(Payload::Chunked(Box::new(ChunkedDecoder::signed(v4))))
        }
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Ok(Payload::Chunked(Box::new(ChunkedDecoder::unsigned()))),
        hex if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(Payload::Raw {
            sha256: Some(hex.to_ascii_lowercase()),
        }),
        other => Err(S3Error::invalid_argument(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, or a valid sha256 value.",
            "x-amz-content-sha256",
            other,
        )),
    }
}

/// Checksums the request declares: in headers now, or promised in the trailer.
fn declared_checksums(
    call: &Call,
) -> Result<(BTreeMap<Algorithm, String>, Vec<Algorithm>), S3Error> {
    let mut in_headers = BTreeMap::new();
    for a in Algorithm::ALL {
        if let Some(v) = call.header(a.header()) {
            if !a.valid_value(v) {
                return Err(S3Error::invalid_request(format!(
                    "Value for {} header is invalid.",
                    a.header()
                )));
            }
            in_headers.insert(a, v.to_string());
        }
    }
    let mut in_trailer = Vec::new();
    if let Some(trailer) = call.header("x-amz-trailer") {
        for name in trailer.split(',').map(|s| s.trim().to_ascii_lowercase()) {
            let a = Algorithm::from_header(&name).ok_or_else(|| {
                S3Error::invalid_request(format!(
                    "The value specified in the x-amz-trailer header is not supported: {name}"
                ))
            })?;
            in_trailer.push(a);
        }
    }
    if in_headers.len() + in_trailer.len() > 1 {
        return Err(S3Error::invalid_request(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        ));
    }
    Ok((in_headers, in_trailer))
}

fn content_md5(call: &Call) -> Result<Option<String>, S3Error> {
    match call.header("content-md5") {
        None => Ok(None),
        Some(b64) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .filter(|r| r.len() == 16)
                .ok_or_else(S3Error::invalid_digest)?;
            Ok(Some(hex::encode(raw)))
        }
    }
}

/// A request body streamed to disk and verified against everything its
/// request declared (length, SHA-256, Content-MD5, checksums).
pub(super) struct Received {
    pub written: Written,
    /// How the body came: `plain`, `aws-chunked` or `aws-chunked+trailer`.
    pub framing: &'static str,
    /// Verified checksums by algorithm name, base64.
    pub checksums: BTreeMap<String, String>,
}

/// Largest object (or part) one request may upload: 5 GiB.
pub const MAX_PUT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Streams the body of `call` into a temporary file and checks it. On any
/// failure nothing is left behind.
pub(super) async fn receive(s3: &S3, call: &Call, body: Incoming) -> Result<Received, S3Error> {
    let mut payload = payload_mode(call)?;
    let (header_sums, trailer_sums) = declared_checksums(call)?;
    let md5 = content_md5(call)?;
    let decoded_length: Option<u64> = match call.header("x-amz-decoded-content-length") {
        None => None,
        Some(v) => Some(v.parse().map_err(|_| {
            S3Error::invalid_argument(
                "bad x-amz-decoded-content-length",
                "x-amz-decoded-content-length",
                v,
            )
        })?),
    };
    if matches!(payload, Payload::Chunked(_)) && decoded_length.is_none() {
        return Err(S3Error::missing_content_length());
    }
    // One PUT (or part) holds at most 5 GiB, as in S3: refused before a
    // byte is stored.
    let proposed = decoded_length.or_else(|| call.header("content-length")?.parse().ok());
    if let Some(size) = proposed.filter(|size| *size > MAX_PUT_BYTES) {
        return Err(S3Error::new(
            "EntityTooLarge",
            StatusCode::BAD_REQUEST,
            "Your proposed upload exceeds the maximum allowed size",
        )
        .with("ProposedSize", size.to_string())
        .with("MaxSizeAllowed", MAX_PUT_BYTES.to_string()));
    }
    let algorithms: Vec<Algorithm> = header_sums
        .keys()
        .copied()
        .chain(trailer_sums.iter().copied())
        .collect();
    let wants_sha256 = matches!(payload, Payload::Raw { sha256: Some(_) });
    let framing = match (&payload, trailer_sums.is_empty()) {
        (Payload::Raw { .. }, _) => "plain",
        (Payload::Chunked(_), true) => "aws-chunked",
        (Payload::Chunked(_), false) => "aws-chunked+trailer",
    };
    let mut upload = s3
        .objects
        .begin(wants_sha256, &algorithms)
        .await
        .map_err(storage)?;

    // Stream the body to the temporary file; any failure discards it.
    let streamed: Result<Vec<(String, String)>, S3Error> = async {
        let mut body = body;
        let mut decoded = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| S3Error::incomplete_body())?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match &mut payload {
                Payload::Raw { .. } => upload.write(&data).await,
                Payload::Chunked(decoder) => {
                    decoded.clear();
                    decoder.push(&data, &mut decoded).map_err(|e| match e {
                        super::chunked::ChunkError::BadSignature => {
                            S3Error::signature_does_not_match()
                        }
                        other => S3Error::invalid_request(other.to_string()),
                    })?;
                    upload.write(&decoded).await
                }
            }
            .map_err(|e| storage(e.into()))?;
        }
        match payload {
            Payload::Raw { .. } => Ok(Vec::new()),
            Payload::Chunked(decoder) => decoder.finish().map_err(|_| S3Error::incomplete_body()),
        }
    }
    .await;
    let written = upload.finish().await.map_err(|e| storage(e.into()));
    let (trailers, written) = match (streamed, written) {
        (Ok(t), Ok(w)) => (t, w),
        (Err(e), Ok(w)) => {
            w.discard().await;
            return Err(e);
        }
        (_, Err(e)) => return Err(e),
    };

    // Verify everything the client declared before anything becomes visible.
    let check = || -> Result<BTreeMap<String, String>, S3Error> {
        if let Some(expected) = decoded_length {
            if expected != written.size {
                return Err(S3Error::incomplete_body());
            }
        }
        if let (Some(expected), Some(actual)) = (
            call.header("x-amz-content-sha256").filter(|_| wants_sha256),
            &written.sha256_hex,
        ) {
            if !expected.eq_ignore_ascii_case(actual) {
                return Err(S3Error::sha256_mismatch()
                    .with("ClientComputedContentSHA256", expected)
                    .with("S3ComputedContentSHA256", actual.clone()));
            }
        }
        if let Some(expected) = &md5 {
            if expected != &written.md5_hex {
                return Err(S3Error::bad_digest()
                    .with(
                        "ExpectedDigest",
                        call.header("content-md5").unwrap_or_default(),
                    )
                    .with(
                        "CalculatedDigest",
                        base64::engine::general_purpose::STANDARD
                            .encode(hex::decode(&written.md5_hex).unwrap_or_default()),
                    ));
            }
        }
        let mut stored = BTreeMap::new();
        for (algorithm, actual) in &written.checksums {
            let expected = header_sums.get(algorithm).cloned().or_else(|| {
                trailers
                    .iter()
                    .find(|(n, _)| n == algorithm.header())
                    .map(|(_, v)| v.clone())
            });
            match expected {
                Some(e) if &e == actual => {
                    stored.insert(algorithm.name().to_string(), actual.clone());
                }
                Some(_) => return Err(S3Error::checksum_mismatch(algorithm.name())),
                None => {
                    return Err(S3Error::invalid_request(format!(
                        "The trailer {} was declared but not sent",
                        algorithm.header()
                    )))
                }
            }
        }
        Ok(stored)
    };
    match check() {
        Ok(checksums) => Ok(Received {
            written,
            framing,
            checksums,
        }),
        Err(e) => {
            written.discard().await;
            Err(e)
        }
    }
}

/// The headers and user metadata a new object keeps from its request.
/// Most bytes of user metadata (names and values) an object may carry.
const MAX_USER_METADATA: usize = 2 * 1024;

/// Headers kept with an object, and its user metadata, by lowercase name.
pub(super) type Metadata = (BTreeMap<String, String>, BTreeMap<String, String>);

/// The kept headers and user metadata of a request; refused
/// (`MetadataTooLarge`) when the user metadata is over 2 KB, as in S3.
pub(super) fn object_metadata(call: &Call) -> Result<Metadata, S3Error> {
    let mut headers = BTreeMap::new();
    for name in KEPT_HEADERS {
        if let Some(v) = call.header(name) {
            let v = if name == "content-encoding" {
                // aws-chunked is how the body travelled, not what it is.
                v.split(',')
                    .map(str::trim)
                    .filter(|e| !e.eq_ignore_ascii_case("aws-chunked"))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                v.to_string()
            };
            if !v.is_empty() {
                headers.insert(name.to_string(), v);
            }
        }
    }
    let user_metadata: BTreeMap<String, String> = call
        .headers
        .iter()
        .filter_map(|(n, v)| {
            n.strip_prefix("x-amz-meta-")
                .map(|m| (m.to_string(), v.clone()))
        })
        .collect();
    let size: usize = user_metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_USER_METADATA {
        return Err(S3Error::new(
            "MetadataTooLarge",
            StatusCode::BAD_REQUEST,
            "Your metadata headers exceed the maximum allowed metadata size.",
        )
        .with("Size", size.to_string())
        .with("MaxSizeAllowed", MAX_USER_METADATA.to_string()));
    }
    Ok((headers, user_metadata))
}

/// Adds `x-amz-checksum-*` headers for `checksums` (by algorithm name).
pub(super) fn set_checksums(r: &mut Response<Body>, checksums: &BTreeMap<String, String>) {
    for (name, value) in checksums {
        if let Some(a) = Algorithm::from_name(name) {
            set(r, a.header(), value);
        }
    }
}

pub(super) async fn put_object(
    s3: &S3,
    call: &Call,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let bucket = writable_bucket(s3, call)?;
    let caller = caller_of(call)?;
    let key = call.target.key.clone().unwrap_or_default();
    let acl = canned_acl(call)?;
    let (headers, user_metadata) = object_metadata(call)?;
    let Received {
        written,
        framing,
        checksums,
    } = receive(s3, call, body).await?;
    let etag = written.md5_hex.clone();
    let size = written.size;
    let object = Object {
        bucket: bucket.name.clone(),
        key: key.clone(),
        size,
        etag: etag.clone(),
        last_modified_ms: time::unix_ms(),
        owner_id: caller.account_id.clone(),
        owner_name: caller.account_name.clone(),
        headers,
        user_metadata,
        checksums,
        acl,
        data: String::new(),
        sha256: written.sha256_hex.clone(),
    };
    let object = s3.objects.commit(object, written).await.map_err(storage)?;
    tracing::info!(bucket = %bucket.name, key = %key, size, body = framing, checksums = ?object.checksums.keys(), "object stored");
    let mut r = Response::new(empty());
    set(&mut r, "etag", &format!("\"{etag}\""));
    set_checksums(&mut r, &object.checksums);
    Ok(r)
}

/// A byte range `start..=end` of an object of `size` bytes.
pub(super) fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, S3Error> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // Several ranges: S3 sends the whole object.
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = match b.parse() {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        if n == 0 || size == 0 {
            return Err(S3Error::invalid_range().with("ActualObjectSize", size.to_string()));
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = match a.parse() {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        let end: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(n) if n >= start => n.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(S3Error::invalid_range()
                .with("ActualObjectSize", size.to_string())
                .with("RangeRequested", header));
        }
        (start, end)
    };
    Ok(Some(range))
}

pub(super) fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|t| t == "*" || t == etag)
}

/// RFC 7232 / S3 conditional request rules.
fn check_conditions(call: &Call, object: &Object) -> Result<(), S3Error> {
    let modified = object.last_modified_ms / 1000;
    let if_match = call.header("if-match");
    let if_none_match = call.header("if-none-match");
    if let Some(list) = if_match {
        if !etag_matches(list, &object.etag) {
            return Err(S3Error::precondition_failed().with("Condition", "If-Match"));
        }
    } else if let Some(since) = call
        .header("if-unmodified-since")
        .and_then(time::parse_http_date)
    {
        if modified > since {
            return Err(S3Error::precondition_failed().with("Condition", "If-Unmodified-Since"));
        }
    }
    let not_modified = || {
        let mut e = S3Error::new("NotModified", StatusCode::NOT_MODIFIED, "Not Modified");
        e.extra.clear();
        e
    };
    if let Some(list) = if_none_match {
        if etag_matches(list, &object.etag) {
            return Err(not_modified());
        }
    } else if let Some(since) = call
        .header("if-modified-since")
        .and_then(time::parse_http_date)
    {
        if modified <= since {
            return Err(not_modified());
        }
    }
    Ok(())
}

pub(super) async fn get_object(
    s3: &S3,
    call: &Call,
    with_body: bool,
) -> Result<Response<Body>, S3Error> {
    let (_, object) = object_with(s3, call, Permission::Read)?;
    check_conditions(call, &object)?;
    let range = match call.header("range") {
        Some(h) => parse_range(h, object.size)?,
        None => None,
    };
    let (start, len) = match range {
        Some((a, b)) => (a, b - a + 1),
        None => (0, object.size),
    };
    let body = if with_body {
        let mut file = s3.objects.open_data(&object).await.map_err(storage)?;
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| storage(e.into()))?;
        let stream = ReaderStream::with_capacity(file.take(len), 256 * 1024).map_ok(Frame::data);
        StreamBody::new(stream).boxed()
    } else {
        empty()
    };
    let mut r = Response::new(body);
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        set(
            &mut r,
            "content-range",
            &format!("bytes {start}-{}/{}", start + len - 1, object.size),
        );
    }
    set(&mut r, "content-length", &len.to_string());
    set(&mut r, "etag", &format!("\"{}\"", object.etag));
    set(
        &mut r,
        "last-modified",
        &time::http_date(object.last_modified_ms / 1000),
    );
    set(&mut r, "accept-ranges", "bytes");
    if !object.headers.contains_key("content-type") {
        set(&mut r, "content-type", "binary/octet-stream");
    }
    for (name, value) in &object.headers {
        if let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) {
            if let Ok(v) = HeaderValue::from_str(value) {
                r.headers_mut().insert(n, v);
            }
        }
    }
    for (name, value) in &object.user_metadata {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes()),
            HeaderValue::from_str(value),
        ) {
            r.headers_mut().insert(n, v);
        }
    }
    if range.is_none()
        && call
            .header("x-amz-checksum-mode")
            .is_some_and(|m| m.eq_ignore_ascii_case("ENABLED"))
    {
        for (name, value) in &object.checksums {
            if let Some(a) = Algorithm::from_name(name) {
                set(&mut r, a.header(), value);
            }
        }
    }
    // response-* overrides, for signed requests (presigned URLs included).
    if matches!(call.principal, Principal::Account(_)) {
        for (param, header) in [
            ("response-content-type", "content-type"),
            ("response-content-language", "content-language"),
            ("response-expires", "expires"),
            ("response-cache-control", "cache-control"),
            ("response-content-disposition", "content-disposition"),
            ("response-content-encoding", "content-encoding"),
        ] {
            if let Some(v) = call.target.param(param) {
                set(&mut r, header, v);
            }
        }
    }
    Ok(r)
}

pub(super) async fn delete_object(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = writable_bucket(s3, call)?;
    let key = call.target.key.clone().unwrap_or_default();
    if s3
        .objects
        .delete_object(&bucket.name, &key)
        .await
        .map_err(storage)?
    {
        tracing::info!(bucket = %bucket.name, key = %key, "object deleted");
    }
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

pub(super) async fn delete_objects(
    s3: &S3,
    call: &Call,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let bucket = writable_bucket(s3, call)?;
    let body = read_small_body(body, MAX_XML_BODY).await?;
    if let Some(expected) = content_md5(call)? {
        if expected != hex::encode(<md5::Md5 as md5::Digest>::digest(&body)) {
            return Err(S3Error::bad_digest());
        }
    }
    let root = xml::parse(&body)?;
    if root.name != "Delete" {
        return Err(S3Error::malformed_xml());
    }
    let quiet = root
        .child_text("Quiet")
        .is_some_and(|q| q.trim().eq_ignore_ascii_case("true"));
    let keys: Vec<(String, Option<String>)> = root
        .children_named("Object")
        .map(|o| {
            o.child_text("Key")
                .map(|k| (k.to_string(), o.child_text("VersionId").map(str::to_string)))
                .ok_or_else(S3Error::malformed_xml)
        })
        .collect::<Result<_, _>>()?;
    if keys.is_empty() || keys.len() > 1000 {
        return Err(S3Error::malformed_xml());
    }
    let mut w = xml::Writer::new("DeleteResult");
    for (key, version) in keys {
        if version
            .as_deref()
            .is_some_and(|v| v != listing::NULL_VERSION)
        {
            w.open("Error")
                .elem("Key", &key)
                .elem("VersionId", version.as_deref().unwrap_or_default())
                .elem("Code", "NoSuchVersion")
                .elem("Message", "The specified version does not exist.")
                .close("Error");
            continue;
        }
        if key.len() > route::MAX_KEY_LEN {
            w.open("Error")
                .elem("Key", &key)
                .elem("Code", "KeyTooLongError")
                .elem("Message", "Your key is too long")
                .close("Error");
            continue;
        }
        match s3.objects.delete_object(&bucket.name, &key).await {
            Ok(_) if quiet => {}
            Ok(_) => {
                w.open("Deleted").elem("Key", &key);
                if let Some(v) = &version {
                    w.elem("VersionId", v);
                }
                w.close("Deleted");
            }
            Err(e) => {
                tracing::error!(error = %e, "delete failed");
                w.open("Error")
                    .elem("Key", &key)
                    .elem("Code", "InternalError")
                    .elem(
                        "Message",
                        "We encountered an internal error. Please try again.",
                    )
                    .close("Error");
            }
        }
    }
    Ok(xml_response(StatusCode::OK, w.finish("DeleteResult")))
}

/// The canned ACL a PutAcl request asks for: `x-amz-acl`, or a policy body.
async fn requested_acl(
    call: &Call,
    body: Incoming,
    owner: acl::Owner<'_>,
    bucket_owner: Option<acl::Owner<'_>>,
) -> Result<String, S3Error> {
    let body = read_small_body(body, 64 * 1024).await?;
    match call.header("x-amz-acl") {
        Some(_) if !body.iter().all(u8::is_ascii_whitespace) => Err(S3Error::new(
            "UnexpectedContent",
            StatusCode::BAD_REQUEST,
            "This request does not support content",
        )),
        Some(_) => canned_acl(call),
        None if body.iter().all(u8::is_ascii_whitespace) => Err(S3Error::new(
            "MissingSecurityHeader",
            StatusCode::BAD_REQUEST,
            "Your request was missing a required header",
        )
        .with("MissingHeaderName", "x-amz-acl")),
        None => acl::canned_from_policy(&body, owner, bucket_owner),
    }
}

pub(super) async fn put_bucket_acl(
    s3: &S3,
    call: &Call,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let mut bucket = bucket_with(s3, call, Permission::WriteAcp)?;
    bucket.acl = requested_acl(call, body, owner_of(&bucket), None).await?;
    s3.objects.update_bucket(&bucket).map_err(storage)?;
    tracing::info!(bucket = %bucket.name, acl = %bucket.acl, "bucket ACL set");
    Ok(Response::new(empty()))
}

pub(super) fn get_bucket_acl(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = bucket_with(s3, call, Permission::ReadAcp)?;
    let owner = owner_of(&bucket);
    Ok(xml_response(
        StatusCode::OK,
        acl::policy_xml(owner, &acl::grants(&bucket.acl, owner, None)),
    ))
}

pub(super) async fn put_object_acl(
    s3: &S3,
    call: &Call,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let (bucket, object) = object_with(s3, call, Permission::WriteAcp)?;
    let owner = acl::Owner {
        id: &object.owner_id,
        name: &object.owner_name,
    };
    let canned = requested_acl(call, body, owner, Some(owner_of(&bucket))).await?;
    let updated = Object {
        acl: canned,
        ..object.clone()
    };
    if !s3
        .objects
        .update_object(&object, &updated)
        .map_err(storage)?
    {
        return Err(S3Error::new(
            "OperationAborted",
            StatusCode::CONFLICT,
            "A conflicting conditional operation is currently in progress against this resource. Please try again.",
        ));
    }
    Ok(Response::new(empty()))
}

pub(super) fn get_object_acl(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let (bucket, object) = object_with(s3, call, Permission::ReadAcp)?;
    let owner = acl::Owner {
        id: &object.owner_id,
        name: &object.owner_name,
    };
    Ok(xml_response(
        StatusCode::OK,
        acl::policy_xml(
            owner,
            &acl::grants(&object.acl, owner, Some(owner_of(&bucket))),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_http_rules() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-200", 100), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=9-3", 100), Ok(None));
        assert_eq!(
            parse_range("bytes=100-", 100).map_err(|e| e.code),
            Err("InvalidRange")
        );
        assert_eq!(
            parse_range("bytes=-5", 0).map_err(|e| e.code),
            Err("InvalidRange")
        );
    }

    #[test]
    fn etag_lists() {
        assert!(etag_matches("\"abc\"", "abc"));
        assert!(etag_matches("\"x\", \"abc\"", "abc"));
        assert!(etag_matches("*", "abc"));
        assert!(etag_matches("W/\"abc\"", "abc"));
        assert!(!etag_matches("\"abd\"", "abc"));
    }
}
