//! Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort,
//! ListParts and ListMultipartUploads.
//!
//! Each part is streamed, verified and stored like an object's data; the
//! upload's record names what the finished object will carry. Complete
//! checks the client's list against the stored parts and joins them in the
//! kernel (copy_file_range), so memory stays flat whatever the size.

use std::{collections::BTreeMap, sync::Mutex};

use base64::Engine;
use common::time;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use md5::{Digest, Md5};

use super::{
    acl::Permission,
    checksum::Algorithm,
    copy, empty,
    listing::{bounded_param, url_encoding},
    ops::{
        bucket_with, caller_of, canned_acl, object_metadata, read_small_body, receive, set,
        set_checksums, storage, writable_bucket, xml_response, Received, MAX_XML_BODY,
    },
    xml, Body, Call, S3Error, S3,
};
use crate::objects::{Bucket, MultipartUpload, Object, Part};

/// Smallest part but the last, as S3 enforces.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Highest part number.
pub const MAX_PART_NUMBER: u32 = 10_000;

/// Uploads being completed right now: a second Complete of the same upload
/// waits its turn and then finds it gone.
static COMPLETING: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn new_upload_id() -> String {
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn no_such_upload(call: &Call) -> S3Error {
    S3Error::no_such_upload()
        .with_resource(call.target.resource())
        .with(
            "UploadId",
            call.target.param("uploadId").unwrap_or_default(),
        )
}

/// The upload the request names, if the caller may add to it.
fn upload_of(s3: &S3, call: &Call) -> Result<(Bucket, MultipartUpload), S3Error> {
    let bucket = writable_bucket(s3, call)?;
    let id = call.target.param("uploadId").unwrap_or_default();
    let key = call.target.key.as_deref().unwrap_or_default();
    match s3.objects.upload(&bucket.name, id).map_err(storage)? {
        Some(u) if u.key == key => Ok((bucket, u)),
        _ => Err(no_such_upload(call)),
    }
}

fn owner_xml(w: &mut xml::Writer, tag: &str, id: &str, name: &str) {
    w.open(tag)
        .elem("ID", id)
        .elem("DisplayName", name)
        .close(tag);
}

/// CreateMultipartUpload.
pub fn create_upload(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = writable_bucket(s3, call)?;
    let caller = caller_of(call)?;
    let key = call.target.key.clone().unwrap_or_default();
    let acl = canned_acl(call)?;
    let checksum_algorithm = match call.header("x-amz-checksum-algorithm") {
        None => None,
        Some(a) => Some(
            Algorithm::from_name(a)
                .ok_or_else(|| {
                    S3Error::invalid_argument(
                        "Checksum algorithm provided is unsupported.",
                        "x-amz-checksum-algorithm",
                        a,
                    )
                })?
                .name()
                .to_string(),
        ),
    };
    let (headers, user_metadata) = object_metadata(call)?;
    let upload = MultipartUpload {
        bucket: bucket.name.clone(),
        upload_id: new_upload_id(),
        key: key.clone(),
        initiated_ms: time::unix_ms(),
        owner_id: caller.account_id.clone(),
        owner_name: caller.account_name.clone(),
        headers,
        user_metadata,
        acl,
        checksum_algorithm,
    };
    s3.objects.create_upload(&upload).map_err(storage)?;
    tracing::info!(bucket = %bucket.name, key = %key, upload_id = %upload.upload_id, "multipart upload started");
    let mut w = xml::Writer::new("InitiateMultipartUploadResult");
    w.elem("Bucket", &bucket.name)
        .elem("Key", &key)
        .elem("UploadId", &upload.upload_id);
    let mut r = xml_response(StatusCode::OK, w.finish("InitiateMultipartUploadResult"));
    if let Some(a) = &upload.checksum_algorithm {
        set(&mut r, "x-amz-checksum-algorithm", a);
    }
    Ok(r)
}

fn part_number(call: &Call) -> Result<u32, S3Error> {
    let raw = call.target.param("partNumber").unwrap_or_default();
    raw.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            S3Error::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive",
                "partNumber",
                raw,
            )
        })
}

/// UploadPart, or UploadPartCopy when `copy`.
pub async fn upload_part(
    s3: &S3,
    call: &Call,
    body: Incoming,
    copy: bool,
) -> Result<Response<Body>, S3Error> {
    let number = part_number(call)?;
    let (_, upload) = upload_of(s3, call)?;
    let (written, checksums) = if copy {
        let source = copy::source_object(s3, call).await?;
        let (start, len) = match call.header("x-amz-copy-source-range") {
            None => (0, source.size),
            Some(range) => copy_range(range, source.size)?,
        };
        let mut up = s3.objects.begin(false, &[]).await.map_err(storage)?;
        if let Err(e) = s3.objects.copy_into(&source, start, len, &mut up).await {
            if let Ok(w) = up.finish().await {
                w.discard().await;
            }
            return Err(storage(e));
        }
        (
            up.finish().await.map_err(|e| storage(e.into()))?,
            BTreeMap::new(),
        )
    } else {
        let Received {
            written, checksums, ..
        } = receive(s3, call, body).await?;
        (written, checksums)
    };
    let part = Part {
        upload_id: upload.upload_id.clone(),
        part_number: number,
        size: written.size,
        etag: written.md5_hex.clone(),
        last_modified_ms: time::unix_ms(),
        checksums,
        data: String::new(),
    };
    // The upload may have been completed or aborted while the part streamed.
    if s3
        .objects
        .upload(&upload.bucket, &upload.upload_id)
        .map_err(storage)?
        .is_none()
    {
        written.discard().await;
        return Err(no_such_upload(call));
    }
    let part = s3
        .objects
        .commit_part(part, written)
        .await
        .map_err(storage)?;
    if s3
        .objects
        .upload(&upload.bucket, &upload.upload_id)
        .map_err(storage)?
        .is_none()
    {
        // Lost the race with Abort or Complete: leave no orphan behind.
        s3.objects
            .abort_upload(&upload.bucket, &upload.upload_id)
            .await
            .map_err(storage)?;
        return Err(no_such_upload(call));
    }
    let etag = format!("\"{}\"", part.etag);
    if copy {
        let mut w = xml::Writer::new("CopyPartResult");
        w.elem("LastModified", &time::iso8601_ms(part.last_modified_ms))
            .elem("ETag", &etag);
        return Ok(xml_response(StatusCode::OK, w.finish("CopyPartResult")));
    }
    let mut r = Response::new(empty());
    set(&mut r, "etag", &etag);
    set_checksums(&mut r, &part.checksums);
    Ok(r)
}

/// `x-amz-copy-source-range: bytes=first-last`, both inside the source.
fn copy_range(range: &str, size: u64) -> Result<(u64, u64), S3Error> {
    let bad = || {
        S3Error::invalid_argument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
            "x-amz-copy-source-range",
            range,
        )
    };
    let (a, b) = range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(bad());
    }
    if b >= size {
        return Err(S3Error::invalid_range().with("ActualObjectSize", size.to_string()));
    }
    Ok((a, b - a + 1))
}

/// The parts a CompleteMultipartUpload body lists: (number, ETag).
pub(crate) fn requested_parts(body: &[u8]) -> Result<Vec<(u32, String)>, S3Error> {
    let root = xml::parse(body)?;
    if root.name != "CompleteMultipartUpload" {
        return Err(S3Error::malformed_xml());
    }
    let parts: Vec<(u32, String)> = root
        .children_named("Part")
        .map(|p| {
            let number = p
                .child_text("PartNumber")
                .and_then(|n| n.trim().parse::<u32>().ok())
                .ok_or_else(S3Error::malformed_xml)?;
            let etag = p
                .child_text("ETag")
                .map(|e| e.trim().trim_matches('"').to_string())
                .ok_or_else(S3Error::malformed_xml)?;
            Ok((number, etag))
        })
        .collect::<Result<_, S3Error>>()?;
    if parts.is_empty() {
        return Err(S3Error::malformed_xml());
    }
    if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(S3Error::invalid_part_order());
    }
    Ok(parts)
}

/// The stored parts `wanted` names, checked as S3 checks them.
fn chosen_parts(wanted: &[(u32, String)], stored: &[Part]) -> Result<Vec<Part>, S3Error> {
    let mut chosen = Vec::with_capacity(wanted.len());
    for (i, (number, etag)) in wanted.iter().enumerate() {
        let part = stored
            .iter()
            .find(|p| p.part_number == *number && p.etag == *etag)
            .ok_or_else(|| {
                S3Error::invalid_part()
                    .with("PartNumber", number.to_string())
                    .with("ETag", etag.clone())
            })?;
        if i + 1 < wanted.len() && part.size < MIN_PART_SIZE {
            return Err(S3Error::entity_too_small()
                .with("ProposedSize", part.size.to_string())
                .with("MinSizeAllowed", MIN_PART_SIZE.to_string())
                .with("PartNumber", number.to_string())
                .with("ETag", etag.clone()));
        }
        chosen.push(part.clone());
    }
    Ok(chosen)
}

/// The ETag S3 gives a multipart object: MD5 of the parts' MD5s, `-N`.
pub fn multipart_etag(parts: &[Part]) -> String {
    let mut md5 = Md5::new();
    for p in parts {
        md5.update(hex::decode(&p.etag).unwrap_or_default());
    }
    format!("{}-{}", hex::encode(md5.finalize()), parts.len())
}

struct Completing(String);

impl Completing {
    fn claim(id: &str) -> Option<Self> {
        let mut set = COMPLETING.lock().unwrap_or_else(|p| p.into_inner());
        if set.iter().any(|x| x == id) {
            return None;
        }
        set.push(id.to_string());
        Some(Self(id.to_string()))
    }
}

impl Drop for Completing {
    fn drop(&mut self) {
        let mut set = COMPLETING.lock().unwrap_or_else(|p| p.into_inner());
        set.retain(|x| *x != self.0);
    }
}

/// CompleteMultipartUpload.
pub async fn complete_upload(
    s3: &S3,
    call: &Call,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let (bucket, upload) = upload_of(s3, call)?;
    let body = read_small_body(body, MAX_XML_BODY).await?;
    let wanted = requested_parts(&body)?;
    let _claim = Completing::claim(&upload.upload_id).ok_or_else(|| no_such_upload(call))?;
    // Still there now that we hold it?
    if s3
        .objects
        .upload(&bucket.name, &upload.upload_id)
        .map_err(storage)?
        .is_none()
    {
        return Err(no_such_upload(call));
    }
    let stored = s3.objects.parts(&upload.upload_id).map_err(storage)?;
    let parts = chosen_parts(&wanted, &stored)?;
    let etag = multipart_etag(&parts);
    let object = Object {
        bucket: bucket.name.clone(),
        key: upload.key.clone(),
        size: 0,
        etag: etag.clone(),
        last_modified_ms: time::unix_ms(),
        owner_id: upload.owner_id.clone(),
        owner_name: upload.owner_name.clone(),
        headers: upload.headers.clone(),
        user_metadata: upload.user_metadata.clone(),
        checksums: BTreeMap::new(),
        acl: upload.acl.clone(),
        data: String::new(),
        sha256: None,
    };
    let object = s3
        .objects
        .complete_upload(&upload, &parts, object)
        .await
        .map_err(storage)?;
    tracing::info!(bucket = %bucket.name, key = %object.key, size = object.size, parts = parts.len(), "multipart upload completed");
    let mut w = xml::Writer::new("CompleteMultipartUploadResult");
    w.elem(
        "Location",
        &format!(
            "/{}/{}",
            bucket.name,
            common::sigv4::uri_encode(object.key.as_bytes(), false)
        ),
    )
    .elem("Bucket", &bucket.name)
    .elem("Key", &object.key)
    .elem("ETag", &format!("\"{etag}\""));
    Ok(xml_response(
        StatusCode::OK,
        w.finish("CompleteMultipartUploadResult"),
    ))
}

/// AbortMultipartUpload.
pub async fn abort_upload(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let (bucket, upload) = upload_of(s3, call)?;
    s3.objects
        .abort_upload(&bucket.name, &upload.upload_id)
        .await
        .map_err(storage)?;
    tracing::info!(bucket = %bucket.name, key = %upload.key, upload_id = %upload.upload_id, "multipart upload aborted");
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// ListParts.
pub fn list_parts(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let (bucket, upload) = upload_of(s3, call)?;
    let max = bounded_param(call, "max-parts", 1000)?;
    let marker: u32 = call
        .target
        .param("part-number-marker")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let parts = s3.objects.parts(&upload.upload_id).map_err(storage)?;
    let after: Vec<&Part> = parts.iter().filter(|p| p.part_number > marker).collect();
    let shown = &after[..after.len().min(max)];
    let truncated = after.len() > shown.len();
    let mut w = xml::Writer::new("ListPartsResult");
    w.elem("Bucket", &bucket.name)
        .elem("Key", &upload.key)
        .elem("UploadId", &upload.upload_id);
    owner_xml(&mut w, "Initiator", &upload.owner_id, &upload.owner_name);
    owner_xml(&mut w, "Owner", &upload.owner_id, &upload.owner_name);
    w.elem("StorageClass", "STANDARD")
        .elem("PartNumberMarker", &marker.to_string())
        .elem(
            "NextPartNumberMarker",
            &shown.last().map_or(0, |p| p.part_number).to_string(),
        )
        .elem("MaxParts", &max.to_string())
        .elem("IsTruncated", if truncated { "true" } else { "false" });
    if let Some(a) = &upload.checksum_algorithm {
        w.elem("ChecksumAlgorithm", a);
    }
    for p in shown {
        w.open("Part")
            .elem("PartNumber", &p.part_number.to_string())
            .elem("LastModified", &time::iso8601_ms(p.last_modified_ms))
            .elem("ETag", &format!("\"{}\"", p.etag))
            .elem("Size", &p.size.to_string());
        for (name, value) in &p.checksums {
            w.elem(&format!("Checksum{name}"), value);
        }
        w.close("Part");
    }
    Ok(xml_response(StatusCode::OK, w.finish("ListPartsResult")))
}

/// ListMultipartUploads: by key, then by initiation time.
pub fn list_uploads(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = bucket_with(s3, call, Permission::Read)?;
    let t = &call.target;
    let prefix = t.param("prefix").unwrap_or("");
    let delimiter = t.param("delimiter").unwrap_or("");
    let key_marker = t.param("key-marker").unwrap_or("");
    let id_marker = t.param("upload-id-marker").unwrap_or("");
    let max = bounded_param(call, "max-uploads", 1000)?;
    let url = url_encoding(call)?;
    let enc = |s: &str| {
        if url {
            common::sigv4::uri_encode(s.as_bytes(), true)
        } else {
            s.to_string()
        }
    };
    let mut uploads = s3.objects.uploads(&bucket.name).map_err(storage)?;
    uploads.retain(|u| u.key.starts_with(prefix));
    uploads.sort_by(|a, b| {
        (&a.key, a.initiated_ms, &a.upload_id).cmp(&(&b.key, b.initiated_ms, &b.upload_id))
    });
    // Past the markers: keys after key-marker, or the same key with ids after
    // upload-id-marker (in listing order).
    if !key_marker.is_empty() {
        let after_id = uploads
            .iter()
            .position(|u| u.key == key_marker && u.upload_id == id_marker);
        uploads = uploads
            .into_iter()
            .enumerate()
            .filter(|(i, u)| {
                u.key.as_str() > key_marker
                    || (u.key == key_marker
                        && !id_marker.is_empty()
                        && after_id.is_some_and(|a| *i > a))
            })
            .map(|(_, u)| u)
            .collect();
    }
    let mut shown: Vec<&MultipartUpload> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut truncated = false;
    for u in &uploads {
        let common = (!delimiter.is_empty())
            .then(|| {
                u.key[prefix.len()..]
                    .find(delimiter)
                    .map(|i| u.key[..prefix.len() + i + delimiter.len()].to_string())
            })
            .flatten();
        if let Some(cp) = &common {
            if prefixes.last() == Some(cp) {
                continue;
            }
        }
        if shown.len() + prefixes.len() == max {
            truncated = true;
            break;
        }
        match common {
            Some(cp) => prefixes.push(cp),
            None => shown.push(u),
        }
    }
    let mut w = xml::Writer::new("ListMultipartUploadsResult");
    w.elem("Bucket", &bucket.name)
        .elem("KeyMarker", &enc(key_marker))
        .elem("UploadIdMarker", id_marker);
    if truncated {
        if let Some(last) = shown.last() {
            w.elem("NextKeyMarker", &enc(&last.key))
                .elem("NextUploadIdMarker", &last.upload_id);
        }
    }
    w.elem("Prefix", &enc(prefix));
    if !delimiter.is_empty() {
        w.elem("Delimiter", &enc(delimiter));
    }
    if url {
        w.elem("EncodingType", "url");
    }
    w.elem("MaxUploads", &max.to_string())
        .elem("IsTruncated", if truncated { "true" } else { "false" });
    for u in shown {
        w.open("Upload")
            .elem("Key", &enc(&u.key))
            .elem("UploadId", &u.upload_id);
        owner_xml(&mut w, "Initiator", &u.owner_id, &u.owner_name);
        owner_xml(&mut w, "Owner", &u.owner_id, &u.owner_name);
        w.elem("StorageClass", "STANDARD")
            .elem("Initiated", &time::iso8601_ms(u.initiated_ms));
        if let Some(a) = &u.checksum_algorithm {
            w.elem("ChecksumAlgorithm", a);
        }
        w.close("Upload");
    }
    for p in prefixes {
        w.open("CommonPrefixes")
            .elem("Prefix", &enc(&p))
            .close("CommonPrefixes");
    }
    Ok(xml_response(
        StatusCode::OK,
        w.finish("ListMultipartUploadsResult"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u32, size: u64, etag: &str) -> Part {
        Part {
            upload_id: "u".into(),
            part_number: n,
            size,
            etag: etag.into(),
            last_modified_ms: 0,
            checksums: BTreeMap::new(),
            data: String::new(),
        }
    }

    #[test]
    fn complete_checks_order_etags_and_sizes() {
        let body =
            br#"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"aa"</ETag></Part>
<Part><PartNumber>2</PartNumber><ETag>bb</ETag></Part></CompleteMultipartUpload>"#;
        let wanted = requested_parts(body).expect("parse");
        assert_eq!(wanted, vec![(1, "aa".to_string()), (2, "bb".to_string())]);
        let unordered =
            br#"<CompleteMultipartUpload><Part><PartNumber>2</PartNumber><ETag>a</ETag></Part>
<Part><PartNumber>1</PartNumber><ETag>b</ETag></Part></CompleteMultipartUpload>"#;
        assert_eq!(
            requested_parts(unordered).map_err(|e| e.code),
            Err("InvalidPartOrder")
        );
        assert_eq!(
            requested_parts(b"<CompleteMultipartUpload/>").map_err(|e| e.code),
            Err("MalformedXML")
        );
        let big = MIN_PART_SIZE;
        let stored = vec![part(1, big, "aa"), part(2, 10, "bb"), part(3, 10, "cc")];
        assert_eq!(chosen_parts(&wanted, &stored).map(|p| p.len()), Ok(2));
        assert_eq!(
            chosen_parts(&[(1, "zz".into())], &stored).map_err(|e| e.code),
            Err("InvalidPart")
        );
        assert_eq!(
            chosen_parts(&[(2, "bb".into()), (3, "cc".into())], &stored).map_err(|e| e.code),
            Err("EntityTooSmall")
        );
    }

    #[test]
    fn multipart_etags_are_md5_of_md5s() {
        // Two parts whose MD5s are those of "a" and "b".
        let parts = vec![
            part(1, 1, "0cc175b9c0f1b6a831c399e269772661"),
            part(2, 1, "92eb5ffee6ae2fec3ad71c777531578f"),
        ];
        let mut md5 = Md5::new();
        md5.update(hex::decode("0cc175b9c0f1b6a831c399e269772661").expect("hex"));
        md5.update(hex::decode("92eb5ffee6ae2fec3ad71c777531578f").expect("hex"));
        assert_eq!(
            multipart_etag(&parts),
            format!("{}-2", hex::encode(md5.finalize()))
        );
    }

    #[test]
    fn copy_ranges() {
        assert_eq!(
            copy_range("bytes=0-9", 100).map_err(|e| e.code),
            Ok((0, 10))
        );
        assert_eq!(
            copy_range("bytes=0-100", 100).map_err(|e| e.code),
            Err("InvalidRange")
        );
        assert_eq!(
            copy_range("0-9", 100).map_err(|e| e.code),
            Err("InvalidArgument")
        );
    }
}
