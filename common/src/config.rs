//! Loading a daemon's TOML configuration.
//!
//! Each daemon defines its own struct with `#[serde(deny_unknown_fields)]`, so
//! a misspelt key is an error at start-up rather than a silently ignored setting.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Reads and parses `path`; unknown fields are rejected by the target type.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads `path` when given, else the type's documented defaults.
pub fn load_or_default<T: DeserializeOwned + Default>(
    path: Option<&Path>,
) -> Result<T, ConfigError> {
    match path {
        Some(path) => load(path),
        None => Ok(T::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default = "default_name")]
        name: String,
    }

    fn default_name() -> String {
        "n".into()
    }

    #[test]
    fn unknown_fields_are_errors_and_defaults_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "").expect("write");
        let s: Sample = load(&path).expect("empty config");
        assert_eq!(s.name, "n");
        std::fs::write(&path, "nmae = \"x\"\n").expect("write");
        let err = load::<Sample>(&path).expect_err("typo must fail");
        assert!(err.to_string().contains("nmae"), "{err}");
    }
}
