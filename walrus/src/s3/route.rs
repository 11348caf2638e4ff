//! Which bucket and key a request names: path-style (`/bucket/key`),
//! virtual-host style (`bucket.<domain>`), under `/`, `/services/objectstorage`
//! or `/services/Walrus`.

use common::sigv4::{parse_query, percent_decode};

use super::error::S3Error;

/// Path prefixes Eucalyptus clients use.
pub const PREFIXES: [&str; 2] = ["/services/objectstorage", "/services/Walrus"];

/// The target of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// True when the bucket came in the Host name.
    pub virtual_host: bool,
}

impl Target {
    /// True when the query has parameter `name` (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }

    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `/bucket/key` for error resources.
    pub fn resource(&self) -> String {
        match (&self.bucket, &self.key) {
            (Some(b), Some(k)) => format!("/{b}/{k}"),
            (Some(b), None) => format!("/{b}"),
            _ => "/".into(),
        }
    }
}

/// Longest key S3 accepts, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Works out the target from the Host header, the raw path and the raw query.
pub fn route(
    host: Option<&str>,
    raw_path: &str,
    raw_query: &str,
    domain: &str,
) -> Result<Target, S3Error> {
    let query = parse_query(raw_query);
    let mut path = raw_path;
    for prefix in PREFIXES {
        if let Some(rest) = path.strip_prefix(prefix) {
            if rest.is_empty() || rest.starts_with('/') {
                path = if rest.is_empty() { "/" } else { rest };
                break;
            }
        }
    }
    let path = path.strip_prefix('/').unwrap_or(path);
    let decode = |s: &str| -> Result<String, S3Error> {
        String::from_utf8(percent_decode(s, false))
            .map_err(|_| S3Error::invalid_argument("The key is not valid UTF-8", "key", s))
    };
    let host_name = host.map(|h| {
        h.rsplit_once(':').map_or(h, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                h
            }
        })
    });
    let virtual_bucket = host_name.and_then(|h| {
        let h = h.to_ascii_lowercase();
        let bucket = h.strip_suffix(domain)?.strip_suffix('.')?;
        (!bucket.is_empty()).then(|| bucket.to_string())
    });
    let virtual_host = virtual_bucket.is_some();
    let (bucket, key) = match virtual_bucket {
        Some(bucket) => (
            Some(bucket),
            (!path.is_empty()).then(|| decode(path)).transpose()?,
        ),
        None => match path.split_once('/') {
            None if path.is_empty() => (None, None),
            None => (Some(decode(path)?), None),
            Some((b, "")) => (Some(decode(b)?), None),
            Some((b, k)) => (Some(decode(b)?), Some(decode(k)?)),
        },
    };
    if let Some(k) = &key {
        if k.len() > MAX_KEY_LEN {
            return Err(S3Error::key_too_long());
        }
    }
    Ok(Target {
        bucket,
        key,
        query,
        virtual_host,
    })
}

/// S3's bucket naming rules: 3-63 characters of lowercase letters, digits,
/// dots and hyphens, starting and ending with a letter or digit, no `..`,
/// not an IP address.
pub fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && !name.contains(".-")
        && !name.contains("-.")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, path: &str, query: &str) -> (Option<String>, Option<String>) {
        let r = route(Some(host), path, query, "localhost").expect("route");
        (r.bucket, r.key)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn path_style_virtual_host_and_eucalyptus_prefixes() {
        assert_eq!(t("127.0.0.1:8779", "/", ""), (None, None));
        assert_eq!(t("127.0.0.1:8779", "/b", ""), (s("b"), None));
        assert_eq!(t("127.0.0.1:8779", "/b/", ""), (s("b"), None));
        assert_eq!(
            t("127.0.0.1:8779", "/b/dir/a%20b%2Bc", ""),
            (s("b"), s("dir/a b+c"))
        );
        assert_eq!(
            t("127.0.0.1", "/services/objectstorage/b/k", ""),
            (s("b"), s("k"))
        );
        assert_eq!(t("127.0.0.1", "/services/Walrus/b", ""), (s("b"), None));
        assert_eq!(t("127.0.0.1", "/services/objectstorage", ""), (None, None));
        assert_eq!(
            t("127.0.0.1", "/services/objectstoragex/k", ""),
            (s("services"), s("objectstoragex/k"))
        );
        assert_eq!(t("mybucket.localhost:8779", "/", ""), (s("mybucket"), None));
        assert_eq!(
            t("my.bucket.localhost", "/a/b", ""),
            (s("my.bucket"), s("a/b"))
        );
        let long = format!("/b/{}", "k".repeat(1025));
        assert_eq!(
            route(Some("h"), &long, "", "localhost").map_err(|e| e.code),
            Err("KeyTooLongError")
        );
        let r = route(
            Some("h"),
            "/b",
            "list-type=2&prefix=a%2Fb&delimiter=%2F",
            "localhost",
        )
        .expect("route");
        assert_eq!(r.param("prefix"), Some("a/b"));
        assert!(r.has("list-type"));
    }

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket.1", "a1b", &"a".repeat(63)] {
            assert!(valid_bucket_name(ok), "{ok}");
        }
        for bad in [
            "ab",
            "ABC",
            "-abc",
            "abc-",
            "a..b",
            "a_b",
            "192.168.1.1",
            "a.-b",
            &"a".repeat(64),
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }
}
