//! The additional checksums S3 clients send: `x-amz-checksum-*`.

use base64::Engine;
use crc::{Crc, Table, CRC_32_ISCSI, CRC_32_ISO_HDLC, CRC_64_NVME};
use sha1::Sha1;
use sha2::{Digest, Sha256};

static CRC32: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISO_HDLC);
static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);
static CRC64NVME: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_NVME);

/// A checksum algorithm S3 knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 5] = [
        Self::Crc32,
        Self::Crc32c,
        Self::Crc64Nvme,
        Self::Sha1,
        Self::Sha256,
    ];

    /// `CRC32`, as in `x-amz-checksum-algorithm` and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    /// `x-amz-checksum-crc32`.
    pub fn header(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// The algorithm named `name` (`CRC32` or `crc32`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// The algorithm whose header is `header` (lowercase).
    pub fn from_header(header: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.header() == header)
    }

    /// Length of the raw digest in bytes.
    fn len(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64Nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// True when `value` is base64 of a digest of the right length.
    pub fn valid_value(self, value: &str) -> bool {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .is_ok_and(|raw| raw.len() == self.len())
    }
}

enum State {
    Crc32(crc::Digest<'static, u32, Table<16>>),
    Crc32c(crc::Digest<'static, u32, Table<16>>),
    Crc64(crc::Digest<'static, u64, Table<16>>),
    Sha1(Sha1),
    Sha256(Sha256),
}

/// A running checksum.
pub struct Checksummer {
    algorithm: Algorithm,
    state: State,
}

impl std::fmt::Debug for Checksummer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checksummer({})", self.algorithm.name())
    }
}

impl Checksummer {
    /// A fresh checksum of `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        let state = match algorithm {
            Algorithm::Crc32 => State::Crc32(CRC32.digest()),
            Algorithm::Crc32c => State::Crc32c(CRC32C.digest()),
            Algorithm::Crc64Nvme => State::Crc64(CRC64NVME.digest()),
            Algorithm::Sha1 => State::Sha1(Sha1::new()),
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
        };
        Self { algorithm, state }
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Adds data.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Crc32(d) | State::Crc32c(d) => d.update(data),
            State::Crc64(d) => d.update(data),
            State::Sha1(d) => d.update(data),
            State::Sha256(d) => d.update(data),
        }
    }

    /// The base64 value, as S3 sends it.
    pub fn finish(self) -> String {
        let raw: Vec<u8> = match self.state {
            State::Crc32(d) | State::Crc32c(d) => d.finalize().to_be_bytes().to_vec(),
            State::Crc64(d) => d.finalize().to_be_bytes().to_vec(),
            State::Sha1(d) => d.finalize().to_vec(),
            State::Sha256(d) => d.finalize().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(algorithm: Algorithm, data: &[u8]) -> String {
        let mut c = Checksummer::new(algorithm);
        // In two pieces: updates must compose.
        let (a, b) = data.split_at(data.len() / 2);
        c.update(a);
        c.update(b);
        c.finish()
    }

    #[test]
    fn known_values() {
        // The CRC catalogue's check values over "123456789".
        let check = b"123456789";
        let b64 = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(
            of(Algorithm::Crc32, check),
            b64(&0xCBF4_3926u32.to_be_bytes())
        );
        assert_eq!(
            of(Algorithm::Crc32c, check),
            b64(&0xE306_9283u32.to_be_bytes())
        );
        assert_eq!(
            of(Algorithm::Crc64Nvme, check),
            b64(&0xAE8B_1486_0A79_9888u64.to_be_bytes())
        );
        assert_eq!(
            of(Algorithm::Sha256, b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(of(Algorithm::Sha1, b""), "2jmj7l5rSw0yVb/vlWAYkK/YBwk=");
        assert!(Algorithm::Crc32.valid_value(&of(Algorithm::Crc32, b"x")));
        assert!(!Algorithm::Crc32.valid_value("not base64!"));
        assert_eq!(
            Algorithm::from_name("crc64nvme"),
            Some(Algorithm::Crc64Nvme)
        );
        assert_eq!(
            Algorithm::from_header("x-amz-checksum-sha1"),
            Some(Algorithm::Sha1)
        );
    }
}
