//! The console's pages, scripts and styles, built into the binary: ours
//! (`console/*.html|js|css`) and the npm packages' files that
//! `scripts/console-assets` copies into `console/vendor/` (pinned by
//! `console/package-lock.json`). Each is gzipped once at start-up and
//! served under a name holding its digest, so browsers cache it for good.

use std::collections::HashMap;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// One file as served.
#[derive(Debug, Clone)]
pub struct Asset {
    pub content_type: &'static str,
    pub plain: Bytes,
    pub gzipped: Bytes,
    /// Quoted, for `ETag`.
    pub etag: String,
}

macro_rules! files {
    ($($name:literal => $ty:literal),* $(,)?) => {
        &[$(($name, $ty, include_bytes!(concat!("../../console/", $name)) as &[u8])),*]
    };
}

/// Every file but the page itself, with its type.
const FILES: &[(&str, &str, &[u8])] = files! {
    "app.js" => "text/javascript; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "vendor/xterm.js" => "text/javascript; charset=utf-8",
    "vendor/xterm.css" => "text/css; charset=utf-8",
    "vendor/uPlot.iife.min.js" => "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css" => "text/css; charset=utf-8",
};

const PAGE: &str = include_str!("../../console/index.html");

/// The built-in files, by the path they are served at.
#[derive(Debug)]
pub struct Assets {
    by_path: HashMap<String, Asset>,
    /// `index.html` with each `{{name}}` replaced by its served path.
    pub page: Asset,
}

fn asset(content_type: &'static str, data: &[u8]) -> Asset {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let gzipped = gz
        .write_all(data)
        .and_then(|_| gz.finish())
        .unwrap_or_default();
    let digest = hex::encode(&Sha256::digest(data)[..8]);
    Asset {
        content_type,
        plain: Bytes::copy_from_slice(data),
        gzipped: Bytes::from(gzipped),
        etag: format!("\"{digest}\""),
    }
}

impl Assets {
    pub fn load() -> Self {
        let mut by_path = HashMap::new();
        let mut page = PAGE.to_string();
        for (name, ty, data) in FILES {
            let a = asset(ty, data);
            let path = format!("/assets/{}/{name}", a.etag.trim_matches('"'));
            page = page.replace(&format!("{{{{{name}}}}}"), &path);
            by_path.insert(path, a);
        }
        Self {
            by_path,
            page: asset("text/html; charset=utf-8", page.as_bytes()),
        }
    }

    /// The file served at `path`.
    pub fn get(&self, path: &str) -> Option<&Asset> {
        self.by_path.get(path)
    }

    /// Every served path but the page's.
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.by_path.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_file_by_its_digest() {
        let a = Assets::load();
        let page = String::from_utf8(a.page.plain.to_vec()).expect("utf-8");
        assert!(!page.contains("{{"), "a name was left unreplaced");
        for path in a.paths() {
            assert!(page.contains(path.as_str()), "{path} is not on the page");
            let asset = a.get(path).expect("asset");
            assert!(asset.gzipped.len() < asset.plain.len(), "{path}");
        }
        assert_eq!(a.paths().count(), FILES.len());
    }
}
