//! Bucket listings: ListObjects (v1), ListObjectsV2 and ListObjectVersions.
//!
//! Buckets here are never versioned, so each object is exactly one version,
//! `null`, the latest; there are no delete markers. All three listings roll
//! keys up into common prefixes the same way ([`roll_up`]).

use base64::Engine;
use common::time;
use http::{Response, StatusCode};

use super::{
    acl::Permission,
    ops::{bucket_with, storage, xml_response},
    xml, Body, Call, S3Error, S3,
};
use crate::objects::Object;

/// What every listing takes: prefix, delimiter, max-keys, encoding-type.
struct Params<'a> {
    prefix: &'a str,
    delimiter: &'a str,
    max_keys: usize,
    url_encode: bool,
}

impl<'a> Params<'a> {
    fn of(call: &'a Call) -> Result<Self, S3Error> {
        let t = &call.target;
        let max_keys = bounded_param(call, "max-keys", 1000)?;
        let url_encode = url_encoding(call)?;
        Ok(Self {
            prefix: t.param("prefix").unwrap_or(""),
            delimiter: t.param("delimiter").unwrap_or(""),
            max_keys,
            url_encode,
        })
    }

    /// `s` as the response shows it (URL-encoded when asked).
    fn enc(&self, s: &str) -> String {
        if self.url_encode {
            common::sigv4::uri_encode(s.as_bytes(), true)
        } else {
            s.to_string()
        }
    }

    /// The elements every listing starts with after the bucket name.
    fn write_common(&self, w: &mut xml::Writer) {
        w.elem("MaxKeys", &self.max_keys.to_string());
        if !self.delimiter.is_empty() {
            w.elem("Delimiter", &self.enc(self.delimiter));
        }
        if self.url_encode {
            w.elem("EncodingType", "url");
        }
    }
}

/// Query parameter `name`, a count of at most `max` (`max` when absent).
pub(super) fn bounded_param(call: &Call, name: &str, max: usize) -> Result<usize, S3Error> {
    match call.target.param(name) {
        None => Ok(max),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| (n as usize).min(max))
            .ok_or_else(|| {
                S3Error::invalid_argument(
                    format!("Provided {name} not an integer or within integer range"),
                    name,
                    v,
                )
            }),
    }
}

/// Whether the caller asked for URL-encoded keys (`encoding-type=url`).
pub(super) fn url_encoding(call: &Call) -> Result<bool, S3Error> {
    match call.target.param("encoding-type") {
        None => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("url") => Ok(true),
        Some(e) => Err(S3Error::invalid_argument(
            "Invalid Encoding Method specified in Request",
            "encoding-type",
            e,
        )),
    }
}

/// One page of a listing: objects and common prefixes in key order.
struct Page<'a> {
    objects: Vec<&'a Object>,
    prefixes: Vec<String>,
    truncated: bool,
    /// The last key or common prefix on the page (the next marker).
    last: String,
}

/// Rolls `objects` (keys after `after`, all starting with the prefix, in
/// key order) up into at most `max_keys` objects and common prefixes. A
/// common prefix that is `after` itself (the marker a previous page ended
/// on) was listed already, and so is skipped with every key under it.
fn roll_up<'a>(objects: &'a [Object], p: &Params, after: &str) -> Page<'a> {
    let mut page = Page {
        objects: Vec::new(),
        prefixes: Vec::new(),
        truncated: false,
        last: String::new(),
    };
    for object in objects {
        let rest = &object.key[p.prefix.len()..];
        let common_prefix = (!p.delimiter.is_empty())
            .then(|| {
                rest.find(p.delimiter)
                    .map(|i| object.key[..p.prefix.len() + i + p.delimiter.len()].to_string())
            })
            .flatten();
        if let Some(cp) = &common_prefix {
            if page.prefixes.last() == Some(cp) || cp == after {
                continue;
            }
        }
        if page.objects.len() + page.prefixes.len() == p.max_keys {
            page.truncated = true;
            break;
        }
        match common_prefix {
            Some(cp) => {
                page.last = cp.clone();
                page.prefixes.push(cp);
            }
            None => {
                page.last = object.key.clone();
                page.objects.push(object);
            }
        }
    }
    page
}

fn write_owner(w: &mut xml::Writer, o: &Object) {
    w.open("Owner")
        .elem("ID", &o.owner_id)
        .elem("DisplayName", &o.owner_name)
        .close("Owner");
}

fn write_prefixes(w: &mut xml::Writer, p: &Params, page: &Page) {
    for cp in &page.prefixes {
        w.open("CommonPrefixes")
            .elem("Prefix", &p.enc(cp))
            .close("CommonPrefixes");
    }
}

/// ListObjects (v1) and ListObjectsV2.
pub fn list_objects(s3: &S3, call: &Call, v2: bool) -> Result<Response<Body>, S3Error> {
    let bucket = bucket_with(s3, call, Permission::Read)?;
    let t = &call.target;
    let p = Params::of(call)?;
    let token = t.param("continuation-token");
    let start_after = if v2 {
        match token {
            Some(tok) => base64::engine::general_purpose::STANDARD
                .decode(tok)
                .ok()
                .and_then(|r| String::from_utf8(r).ok())
                .ok_or_else(|| {
                    S3Error::invalid_argument(
                        "The continuation token provided is incorrect",
                        "continuation-token",
                        tok,
                    )
                })?,
            None => t.param("start-after").unwrap_or("").to_string(),
        }
    } else {
        t.param("marker").unwrap_or("").to_string()
    };
    let (objects, _) = s3
        .objects
        .list(&bucket.name, p.prefix, &start_after, usize::MAX)
        .map_err(storage)?;
    let page = roll_up(&objects, &p, &start_after);

    let root = "ListBucketResult";
    let mut w = xml::Writer::new(root);
    w.elem("Name", &bucket.name)
        .elem("Prefix", &p.enc(p.prefix));
    if v2 {
        if let Some(tok) = token {
            w.elem("ContinuationToken", tok);
        }
        if let Some(sa) = t.param("start-after") {
            w.elem("StartAfter", &p.enc(sa));
        }
        w.elem(
            "KeyCount",
            &(page.objects.len() + page.prefixes.len()).to_string(),
        );
    } else {
        w.elem("Marker", &p.enc(t.param("marker").unwrap_or("")));
    }
    p.write_common(&mut w);
    w.elem("IsTruncated", if page.truncated { "true" } else { "false" });
    if page.truncated {
        if v2 {
            w.elem(
                "NextContinuationToken",
                &base64::engine::general_purpose::STANDARD.encode(page.last.as_bytes()),
            );
        } else {
            w.elem("NextMarker", &p.enc(&page.last));
        }
    }
    let owner = !v2 || t.param("fetch-owner") == Some("true");
    for o in &page.objects {
        w.open("Contents")
            .elem("Key", &p.enc(&o.key))
            .elem("LastModified", &time::iso8601_ms(o.last_modified_ms))
            .elem("ETag", &format!("\"{}\"", o.etag))
            .elem("Size", &o.size.to_string());
        if owner {
            write_owner(&mut w, o);
        }
        w.elem("StorageClass", "STANDARD").close("Contents");
    }
    write_prefixes(&mut w, &p, &page);
    Ok(xml_response(StatusCode::OK, w.finish(root)))
}

/// The only version id an object has here.
pub const NULL_VERSION: &str = "null";

/// ListObjectVersions (`GET /bucket?versions`): each object is one version,
/// `null`, the latest. Paged by key-marker and version-id-marker.
pub fn list_versions(s3: &S3, call: &Call) -> Result<Response<Body>, S3Error> {
    let bucket = bucket_with(s3, call, Permission::Read)?;
    let t = &call.target;
    let p = Params::of(call)?;
    let key_marker = t.param("key-marker").unwrap_or("");
    let version_marker = t.param("version-id-marker");
    match version_marker {
        Some(v) if key_marker.is_empty() && !v.is_empty() => {
            return Err(S3Error::invalid_argument(
                "A version-id marker cannot be specified without a key marker.",
                "version-id-marker",
                v,
            ))
        }
        Some(v) if !v.is_empty() && v != NULL_VERSION => {
            return Err(S3Error::invalid_argument(
                "Invalid version id specified",
                "version-id-marker",
                v,
            ))
        }
        _ => {}
    }
    // With or without the version marker, the key marker's own (only)
    // version was listed already: the page starts after it.
    let (objects, _) = s3
        .objects
        .list(&bucket.name, p.prefix, key_marker, usize::MAX)
        .map_err(storage)?;
    let page = roll_up(&objects, &p, key_marker);

    let root = "ListVersionsResult";
    let mut w = xml::Writer::new(root);
    w.elem("Name", &bucket.name)
        .elem("Prefix", &p.enc(p.prefix))
        .elem("KeyMarker", &p.enc(key_marker))
        .elem("VersionIdMarker", version_marker.unwrap_or(""));
    p.write_common(&mut w);
    w.elem("IsTruncated", if page.truncated { "true" } else { "false" });
    if page.truncated {
        w.elem("NextKeyMarker", &p.enc(&page.last));
        if page.prefixes.last() != Some(&page.last) {
            w.elem("NextVersionIdMarker", NULL_VERSION);
        }
    }
    for o in &page.objects {
        w.open("Version")
            .elem("Key", &p.enc(&o.key))
            .elem("VersionId", NULL_VERSION)
            .elem("IsLatest", "true")
            .elem("LastModified", &time::iso8601_ms(o.last_modified_ms))
            .elem("ETag", &format!("\"{}\"", o.etag))
            .elem("Size", &o.size.to_string());
        write_owner(&mut w, o);
        w.elem("StorageClass", "STANDARD").close("Version");
    }
    write_prefixes(&mut w, &p, &page);
    Ok(xml_response(StatusCode::OK, w.finish(root)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(keys: &[&str]) -> Vec<Object> {
        keys.iter()
            .map(|k| Object {
                bucket: "b".into(),
                key: k.to_string(),
                size: 0,
                etag: String::new(),
                last_modified_ms: 0,
                owner_id: String::new(),
                owner_name: String::new(),
                headers: Default::default(),
                user_metadata: Default::default(),
                checksums: Default::default(),
                acl: String::new(),
                data: String::new(),
                sha256: None,
            })
            .collect()
    }

    fn params(delimiter: &'static str, max_keys: usize) -> Params<'static> {
        Params {
            prefix: "",
            delimiter,
            max_keys,
            url_encode: false,
        }
    }

    /// Every page of a listing, each as (keys, prefixes), following markers.
    fn pages(keys: &[&str], delimiter: &'static str, max_keys: usize) -> Vec<String> {
        let all = objects(keys);
        let p = params(delimiter, max_keys);
        let mut after = String::new();
        let mut out = Vec::new();
        loop {
            let rest: Vec<Object> = all
                .iter()
                .filter(|o| o.key.as_str() > after.as_str())
                .cloned()
                .collect();
            let page = roll_up(&rest, &p, &after);
            out.extend(page.objects.iter().map(|o| o.key.clone()));
            out.extend(page.prefixes.iter().map(|cp| format!("{cp}*")));
            if !page.truncated {
                return out;
            }
            after = page.last;
        }
    }

    #[test]
    fn pages_roll_keys_up_and_never_repeat_a_common_prefix() {
        let keys = ["a", "dir/b", "dir/c", "dir/sub/d", "e", "z"];
        let whole = pages(&keys, "/", 1000);
        assert_eq!(whole, ["a", "e", "z", "dir/*"]);
        // One entry a page: the prefix a page ended on is not listed again.
        assert_eq!(pages(&keys, "/", 1), ["a", "dir/*", "e", "z"]);
        assert_eq!(pages(&keys, "", 2), keys);
    }
}
