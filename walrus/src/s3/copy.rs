//! CopyObject, and the copy source that UploadPartCopy shares with it.

use common::{sigv4::percent_decode, time};
use http::{Response, StatusCode};

use super::{
    acl::Permission,
    ops::{
        bucket_of, caller_of, canned_acl, etag_matches, object_allows, object_metadata,
        set_checksums, storage, writable_bucket, xml_response,
    },
    route, xml, Body, Call, S3Error, S3,
};
use crate::objects::Object;

/// `x-amz-copy-source`: `[/]bucket/key[?versionId=...]`, URL-encoded.
pub fn parse_source(header: &str) -> Result<(String, String), S3Error> {
    let bad = || {
        S3Error::invalid_argument(
            "Invalid copy source object key",
            "x-amz-copy-source",
            header,
        )
    };
    let path = header.split_once('?').map_or(header, |(p, _)| p);
    let decoded = String::from_utf8(percent_decode(path, false)).map_err(|_| bad())?;
    let decoded = decoded.strip_prefix('/').unwrap_or(&decoded);
    let (bucket, key) = decoded.split_once('/').ok_or_else(bad)?;
    if bucket.is_empty() || key.is_empty() {
        return Err(bad());
    }
    if key.len() > route::MAX_KEY_LEN {
        return Err(S3Error::key_too_long());
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// The object `x-amz-copy-source` names, if the caller may read it and the
/// `x-amz-copy-source-if-*` conditions hold.
pub async fn source_object(s3: &S3, call: &Call) -> Result<Object, S3Error> {
    let header = call.header("x-amz-copy-source").unwrap_or_default();
    let (bucket_name, key) = parse_source(header)?;
    let source_call = Call {
        target: route::Target {
            bucket: Some(bucket_name.clone()),
            key: Some(key.clone()),
            query: Vec::new(),
            virtual_host: false,
        },
        principal: call.principal.clone(),
        v4: None,
        headers: Vec::new(),
    };
    let bucket = bucket_of(s3, &source_call)?;
    let object = s3
        .objects
        .object(&bucket.name, &key)
        .map_err(storage)?
        .ok_or_else(|| {
            S3Error::no_such_key()
                .with_resource(format!("/{bucket_name}/{key}"))
                .with("Key", &key)
        })?;
    if !object_allows(&bucket, &object, &source_call, Permission::Read) {
        return Err(S3Error::access_denied().with_resource(format!("/{bucket_name}/{key}")));
    }
    check_source_conditions(call, &object)?;
    Ok(object)
}

/// `x-amz-copy-source-if-match` and friends: any failure is 412.
fn check_source_conditions(call: &Call, object: &Object) -> Result<(), S3Error> {
    let modified = object.last_modified_ms / 1000;
    let failed = |condition: &str| {
        Err(S3Error::precondition_failed()
            .with("Condition", format!("x-amz-copy-source-{condition}")))
    };
    if let Some(list) = call.header("x-amz-copy-source-if-match") {
        if !etag_matches(list, &object.etag) {
            return failed("If-Match");
        }
    }
    if let Some(list) = call.header("x-amz-copy-source-if-none-match") {
        if etag_matches(list, &object.etag) {
            return failed("If-None-Match");
        }
    }
    if let Some(since) = call
        .header("x-amz-copy-source-if-unmodified-since")
        .and_then(time::parse_http_date)
    {
        if modified > since && call.header("x-amz-copy-source-if-match").is_none() {
            return failed("If-Unmodified-Since");
        }
    }
    if let Some(since) = call
        .header("x-amz-copy-source-if-modified-since")
        .and_then(time::parse_http_date)
    {
        if modified <= since && call.header("x-amz-copy-source-if-none-match").is_none() {
            return failed("If-Modified-Since");
        }
    }
    Ok(())
}

/// CopyObject: within a bucket or across buckets, metadata directive COPY
/// (the default) or REPLACE.
pub async fn copy_object(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = writable_bucket(s3, call)?;
    let caller = caller_of(call)?.clone();
    let key = call.target.key.clone().unwrap_or_default();
    let source = source_object(s3, call).await?;
    let replace = match call.header("x-amz-metadata-directive") {
        None => false,
        Some(d) if d.eq_ignore_ascii_case("COPY") => false,
        Some(d) if d.eq_ignore_ascii_case("REPLACE") => true,
        Some(d) => {
            return Err(S3Error::invalid_argument(
                "Unknown metadata directive.",
                "x-amz-metadata-directive",
                d,
            ))
        }
    };
    if source.bucket == bucket.name && source.key == key && !replace {
        return Err(S3Error::invalid_request(
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let acl = canned_acl(call)?;
    let (headers, user_metadata) = if replace {
        object_metadata(call)?
    } else {
        (source.headers.clone(), source.user_metadata.clone())
    };
    let mut upload = s3.objects.begin(false, &[]).await.map_err(storage)?;
    if let Err(e) = s3
        .objects
        .copy_into(&source, 0, source.size, &mut upload)
        .await
    {
        if let Ok(w) = upload.finish().await {
            w.discard().await;
        }
        return Err(storage(e));
    }
    let written = upload.finish().await.map_err(|e| storage(e.into()))?;
    // A multipart source keeps its ETag form; a copy is one new object, so
    // its ETag is the MD5 of its bytes, as S3 gives for single-part copies.
    let etag = written.md5_hex.clone();
    let object = Object {
        bucket: bucket.name.clone(),
        key: key.clone(),
        size: written.size,
        etag: etag.clone(),
        last_modified_ms: time::unix_ms(),
        owner_id: caller.account_id.clone(),
        owner_name: caller.account_name.clone(),
        headers,
        user_metadata,
        checksums: source.checksums.clone(),
        acl,
        data: String::new(),
        sha256: source.sha256.clone(),
    };
    let object = s3.objects.commit(object, written).await.map_err(storage)?;
    tracing::info!(
        from = %format!("{}/{}", source.bucket, source.key),
        bucket = %bucket.name, key = %key, size = object.size, "object copied"
    );
    let mut w = xml::Writer::new("CopyObjectResult");
    w.elem("LastModified", &time::iso8601_ms(object.last_modified_ms))
        .elem("ETag", &format!("\"{etag}\""));
    for (name, value) in &object.checksums {
        w.elem(&format!("Checksum{name}"), value);
    }
    let mut r = xml_response(StatusCode::OK, w.finish("CopyObjectResult"));
    set_checksums(&mut r, &object.checksums);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_parse_as_s3_writes_them() {
        assert_eq!(
            parse_source("b/k").map_err(|e| e.code),
            Ok(("b".into(), "k".into()))
        );
        assert_eq!(
            parse_source("/b/dir/a%20b%2Bc?versionId=null").map_err(|e| e.code),
            Ok(("b".into(), "dir/a b+c".into()))
        );
        assert_eq!(
            parse_source("b").map_err(|e| e.code),
            Err("InvalidArgument")
        );
        assert_eq!(
            parse_source("/b/").map_err(|e| e.code),
            Err("InvalidArgument")
        );
    }
}
