//! Which S3 operation a request names: the method, whether it names a
//! bucket and a key, and its sub-resources. The operations live in `ops`
//! (buckets, objects), `copy`, `multipart` and `listing`, which share
//! helpers from `ops` but never call back here.

use http::{Method, Response};
use hyper::body::Incoming;

use super::{
    copy, listing, multipart,
    ops::{
        create_bucket, delete_bucket, delete_object, delete_objects, get_bucket_acl,
        get_bucket_location, get_bucket_versioning, get_object, get_object_acl, head_bucket,
        list_buckets, put_bucket_acl, put_object, put_object_acl,
    },
    route::Target,
    Body, Call, S3Error, S3,
};

/// Runs the operation the request names.
pub async fn run(
    s3: &S3,
    method: &Method,
    call: Call,
    body: Incoming,
) -> Result<Response<Body>, S3Error> {
    let t = &call.target;
    // Buckets are not versioned: each object's one version is `null`.
    if let Some(v) = t.param("versionId") {
        if v != listing::NULL_VERSION {
            return Err(S3Error::invalid_argument(
                "Invalid version id specified",
                "versionId",
                v,
            ));
        }
    }
    let sub = subresources(t);
    let plain = sub.is_empty();
    let copy = call.header("x-amz-copy-source").is_some();
    match (method.clone(), t.bucket.is_some(), t.key.is_some()) {
        (Method::GET, false, _) => list_buckets(s3, &call),
        (_, false, _) => Err(S3Error::method_not_allowed()),
        (Method::PUT, true, false) if t.has("acl") => put_bucket_acl(s3, &call, body).await,
        (Method::GET, true, false) if t.has("acl") => get_bucket_acl(s3, &call),
        (Method::GET, true, false) if t.has("uploads") => multipart::list_uploads(s3, &call),
        (Method::PUT, true, false) if plain => create_bucket(s3, &call, body).await,
        (Method::DELETE, true, false) if plain => delete_bucket(s3, &call).await,
        (Method::HEAD, true, false) => head_bucket(s3, &call),
        (Method::GET, true, false) if t.has("location") => get_bucket_location(s3, &call),
        (Method::GET, true, false) if t.has("versioning") => get_bucket_versioning(s3, &call),
        (Method::GET, true, false) if t.has("versions") => listing::list_versions(s3, &call),
        (Method::GET, true, false) if t.param("list-type") == Some("2") => {
            listing::list_objects(s3, &call, true)
        }
        (Method::GET, true, false) if plain => listing::list_objects(s3, &call, false),
        (Method::POST, true, false) if t.has("delete") => delete_objects(s3, &call, body).await,
        (Method::POST, true, true) if t.has("uploads") => multipart::create_upload(s3, &call),
        (Method::POST, true, true) if t.has("uploadId") => {
            multipart::complete_upload(s3, &call, body).await
        }
        (Method::PUT, true, true) if t.has("uploadId") && t.has("partNumber") => {
            multipart::upload_part(s3, &call, body, copy).await
        }
        (Method::GET, true, true) if t.has("uploadId") => multipart::list_parts(s3, &call),
        (Method::DELETE, true, true) if t.has("uploadId") => {
            multipart::abort_upload(s3, &call).await
        }
        (Method::PUT, true, true) if t.has("acl") => put_object_acl(s3, &call, body).await,
        (Method::GET, true, true) if t.has("acl") => get_object_acl(s3, &call),
        (Method::PUT, true, true) if plain && copy => copy::copy_object(s3, &call).await,
        (Method::PUT, true, true) if plain => put_object(s3, &call, body).await,
        (Method::GET, true, true) if plain => get_object(s3, &call, true).await,
        (Method::HEAD, true, true) if plain => get_object(s3, &call, false).await,
        (Method::DELETE, true, true) if plain => delete_object(s3, &call).await,
        _ => Err(S3Error::not_implemented(&format!(
            "{method} with {}",
            sub.first().map_or("these parameters", |s| s.as_str())
        ))),
    }
}

/// Query parameters that select a sub-resource rather than tune a listing.
fn subresources(t: &Target) -> Vec<String> {
    const TUNING: [&str; 18] = [
        "versionId",
        "key-marker",
        "version-id-marker",
        "prefix",
        "delimiter",
        "marker",
        "max-keys",
        "encoding-type",
        "list-type",
        "continuation-token",
        "start-after",
        "fetch-owner",
        "response-content-type",
        "response-content-language",
        "response-expires",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
    ];
    t.query
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| {
            !TUNING.contains(&k.as_str())
                && !k.to_ascii_lowercase().starts_with("x-amz-")
                && !matches!(
                    k.as_str(),
                    "x-id" | "AWSAccessKeyId" | "Signature" | "Expires"
                )
        })
        .collect()
}
