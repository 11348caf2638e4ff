//! AWS Signature Version 2, which euca2ools, boto 2 and s3cmd's presigned
//! URLs still use: the S3 form (`Authorization: AWS key:sig`, or the query
//! parameters `AWSAccessKeyId`, `Expires`, `Signature`) and the EC2 Query
//! form (`SignatureVersion=2`).
//!
//! Like [`crate::sigv4`], these functions only build what is signed; the
//! caller looks the secret up and compares with [`signature_matches`].

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::sigv4::{percent_decode, uri_encode};

/// Query parameters that are part of an S3 V2 canonical resource.
const S3_SUBRESOURCES: [&str; 37] = [
    "accelerate",
    "acl",
    "analytics",
    "cors",
    "delete",
    "inventory",
    "lifecycle",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "partNumber",
    "policy",
    "replication",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "select",
    "select-type",
    "storageClass",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
    "retention",
    "legal-hold",
    "encryption",
];

/// The MAC algorithms V2 signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mac2 {
    HmacSha1,
    HmacSha256,
}

impl Mac2 {
    /// From an EC2 `SignatureMethod` value.
    pub fn from_method(method: &str) -> Option<Self> {
        match method {
            "HmacSHA1" => Some(Self::HmacSha1),
            "HmacSHA256" => Some(Self::HmacSha256),
            _ => None,
        }
    }
}

/// Base64 HMAC of `string_to_sign` with `secret`.
pub fn sign(mac: Mac2, secret: &str, string_to_sign: &str) -> String {
    let raw = match mac {
        Mac2::HmacSha1 => {
            let mut m = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
            m.update(string_to_sign.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        Mac2::HmacSha256 => {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
            m.update(string_to_sign.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
    };
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Compares a computed base64 signature with the one sent, in constant time.
pub fn signature_matches(computed: &str, sent: &str) -> bool {
    crate::sigv4::signatures_match(computed, sent)
}

/// What an S3 V2 request carries, as [`s3_strings_to_sign`] needs it.
#[derive(Debug, Clone)]
pub struct S3Request<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    /// Lowercase names.
    pub headers: &'a [(String, String)],
    /// The bucket when it came in the Host name (virtual-host style).
    pub virtual_bucket: Option<&'a str>,
    /// For presigned URLs: the `Expires` value, which takes the Date's place.
    pub expires: Option<&'a str>,
}

impl S3Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn fold(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The strings an S3 V2 signature may be over. Clients disagree on one
/// point, so both readings are given: when `x-amz-date` is present, boto
/// and botocore sign an empty Date line plus the `x-amz-date` header, while
/// AWS's own examples put its value on the Date line.
pub fn s3_strings_to_sign(req: &S3Request<'_>) -> Vec<String> {
    let mut amz: Vec<(String, String)> = Vec::new();
    for (name, value) in req.headers {
        if name.starts_with("x-amz-") {
            match amz.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(&fold(value));
                }
                None => amz.push((name.clone(), fold(value))),
            }
        }
    }
    amz.sort();
    let resource = s3_canonical_resource(req);
    let md5 = req.header("content-md5").unwrap_or("").trim();
    let content_type = req.header("content-type").unwrap_or("").trim();
    let render = |date: &str, amz: &[(String, String)]| {
        let mut s = format!("{}\n{md5}\n{content_type}\n{date}\n", req.method);
        for (n, v) in amz {
            s.push_str(&format!("{n}:{v}\n"));
        }
        s.push_str(&resource);
        s
    };
    if let Some(expires) = req.expires {
        return vec![render(expires, &amz)];
    }
    match req.header("x-amz-date") {
        Some(amz_date) => {
            let without: Vec<(String, String)> = amz
                .iter()
                .filter(|(n, _)| n != "x-amz-date")
                .cloned()
                .collect();
            vec![render("", &amz), render(amz_date.trim(), &without)]
        }
        None => vec![render(req.header("date").unwrap_or("").trim(), &amz)],
    }
}

/// `/bucket/key?subresources`, as V2 signs it.
pub fn s3_canonical_resource(req: &S3Request<'_>) -> String {
    let mut out = String::new();
    if let Some(b) = req.virtual_bucket {
        out.push('/');
        out.push_str(b);
    }
    out.push_str(req.raw_path);
    let mut sub: Vec<(String, Option<String>)> = req
        .raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            S3_SUBRESOURCES.contains(&k).then(|| {
                (
                    k.to_string(),
                    v.map(|v| String::from_utf8_lossy(&percent_decode(v, true)).into_owned()),
                )
            })
        })
        .collect();
    sub.sort();
    if !sub.is_empty() {
        out.push('?');
        let parts: Vec<String> = sub
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

/// The EC2 Query V2 string to sign: method, lowercase host (with a
/// non-default port), path, and every parameter but `Signature`, encoded
/// and sorted by name.
pub fn query_string_to_sign(
    method: &str,
    host: &str,
    path: &str,
    params: &[(String, String)],
) -> String {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "Signature")
        .map(|(k, v)| {
            (
                uri_encode(k.as_bytes(), false),
                uri_encode(v.as_bytes(), false),
            )
        })
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path = if path.is_empty() { "/" } else { path };
    format!(
        "{method}\n{}\n{path}\n{}",
        host.to_ascii_lowercase(),
        query.join("&")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn s3_sig(
        method: &str,
        path: &str,
        query: &str,
        hdrs: &[(&str, &str)],
        bucket: Option<&str>,
    ) -> Vec<String> {
        let h = headers(hdrs);
        s3_strings_to_sign(&S3Request {
            method,
            raw_path: path,
            raw_query: query,
            headers: &h,
            virtual_bucket: bucket,
            expires: None,
        })
        .iter()
        .map(|s| sign(Mac2::HmacSha1, SECRET, s))
        .collect()
    }

    // The examples of Amazon S3's "Signing and authenticating REST requests".
    #[test]
    fn s3_documented_examples() {
        assert_eq!(
            s3_sig(
                "GET",
                "/photos/puppy.jpg",
                "",
                &[("date", "Tue, 27 Mar 2007 19:36:42 +0000")],
                Some("johnsmith")
            ),
            ["bWq2s1WEIj+Ydj0vQ697zp+IXMU="]
        );
        assert_eq!(
            s3_sig(
                "PUT",
                "/photos/puppy.jpg",
                "",
                &[
                    ("content-type", "image/jpeg"),
                    ("content-length", "94328"),
                    ("date", "Tue, 27 Mar 2007 21:15:45 +0000")
                ],
                Some("johnsmith")
            ),
            ["MyyxeRY7whkBe+bq8fHCL/2kKUg="]
        );
        assert_eq!(
            s3_sig(
                "GET",
                "/",
                "prefix=photos&max-keys=50&marker=puppy",
                &[
                    ("user-agent", "Mozilla/5.0"),
                    ("date", "Tue, 27 Mar 2007 19:42:41 +0000")
                ],
                Some("johnsmith")
            ),
            ["htDYFYduRNen8P9ZfE/s9SuKy0U="]
        );
        assert_eq!(
            s3_sig(
                "GET",
                "/",
                "acl",
                &[("date", "Tue, 27 Mar 2007 19:44:46 +0000")],
                Some("johnsmith")
            ),
            ["c2WLPFtWHVgbEmeEG93a4cG37dM="]
        );
        // x-amz-date on the Date line, as the guide's DELETE example signs it.
        let delete = s3_sig(
            "DELETE",
            "/johnsmith/photos/puppy.jpg",
            "",
            &[
                ("user-agent", "dotnet"),
                ("date", "Tue, 27 Mar 2007 21:20:27 +0000"),
                ("x-amz-date", "Tue, 27 Mar 2007 21:20:26 +0000"),
            ],
            None,
        );
        assert!(delete.contains(&"lx3byBScXR6KzyMaifNkardMwNk=".to_string()));
        // Several x-amz- headers, folded and sorted; Content-MD5 signed.
        assert_eq!(
            s3_sig(
                "PUT",
                "/db-backup.dat.gz",
                "",
                &[
                    ("date", "Tue, 27 Mar 2007 21:06:08 +0000"),
                    ("x-amz-acl", "public-read"),
                    ("content-type", "application/x-download"),
                    ("content-md5", "4gJE4saaMU4BqNR0kLY+lw=="),
                    ("x-amz-meta-reviewedby", "joe@johnsmith.net"),
                    ("x-amz-meta-reviewedby", "jane@johnsmith.net"),
                    ("x-amz-meta-filechecksum", "0x02661779"),
                    ("x-amz-meta-checksumalgorithm", "crc32"),
                    ("content-disposition", "attachment; filename=database.dat"),
                    ("content-encoding", "gzip"),
                    ("content-length", "5913339"),
                ],
                Some("static.johnsmith.net")
            ),
            ["ilyl83RwaSoYIEdixDQcA4OnAnc="]
        );
    }

    #[test]
    fn presigned_urls_sign_expires_in_place_of_the_date() {
        // The guide's query-string example.
        let h = headers(&[]);
        let s = s3_strings_to_sign(&S3Request {
            method: "GET",
            raw_path: "/photos/puppy.jpg",
            raw_query: "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1175139620",
            headers: &h,
            virtual_bucket: Some("johnsmith"),
            expires: Some("1175139620"),
        });
        assert_eq!(s, ["GET\n\n\n1175139620\n/johnsmith/photos/puppy.jpg"]);
        assert_eq!(
            sign(Mac2::HmacSha1, SECRET, &s[0]),
            "NpgCjnDzrM+WFzoENXmpNDUsSn8="
        );
    }

    #[test]
    fn ec2_query_strings() {
        let params: Vec<(String, String)> = [
            ("Action", "DescribeImages"),
            ("AWSAccessKeyId", "AKIAIOSFODNN7EXAMPLE"),
            ("SignatureVersion", "2"),
            ("SignatureMethod", "HmacSHA256"),
            ("Timestamp", "2011-10-03T15:19:30"),
            ("Version", "2011-10-01"),
            ("Signature", "ignored"),
            ("ImageId.1", "ami-1 2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            query_string_to_sign("GET", "EC2.Amazonaws.com", "/", &params),
            "GET\nec2.amazonaws.com\n/\nAWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Action=DescribeImages&ImageId.1=ami-1%202&SignatureMethod=HmacSHA256&SignatureVersion=2&Timestamp=2011-10-03T15%3A19%3A30&Version=2011-10-01"
        );
        assert_eq!(Mac2::from_method("HmacSHA1"), Some(Mac2::HmacSha1));
        assert_eq!(Mac2::from_method("MD5"), None);
    }
}
