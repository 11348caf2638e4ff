//! The `aws-chunked` content encoding, decoded incrementally.
//!
//! ```text
//! <hex size>[;chunk-signature=<sig>]\r\n<data>\r\n   (repeated)
//! 0[;chunk-signature=<sig>]\r\n
//! [<trailer name>:<value>\r\n ...][x-amz-trailer-signature:<sig>\r\n]
//! \r\n
//! ```
//!
//! Signed chunks (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`) are checked
//! one by one against the chain that starts at the request's signature; a
//! trailer is checked against its own signature. Nothing of a chunk is
//! handed out before its signature is verified, so a forged body never
//! reaches storage.

use common::sigv4::{self, VerifiedV4};
use sha2::{Digest, Sha256};

/// Longest chunk header or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Largest chunk accepted (S3 clients send 64 KiB to a few MiB).
const MAX_CHUNK: u64 = 64 * 1024 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed aws-chunked body: {0}")]
    Malformed(String),
    #[error("chunk signature does not match")]
    BadSignature,
    #[error("the body ended before its last chunk")]
    Truncated,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Reading a chunk header line.
    Header,
    /// Reading chunk data; this many bytes left.
    Data(u64),
    /// Expecting the `\r\n` after chunk data.
    DataEnd,
    /// Reading trailer lines until an empty one.
    Trailer,
    Done,
}

/// Signing context for signed chunks.
#[derive(Debug)]
struct Signing {
    verified: VerifiedV4,
    previous: String,
}

/// Decodes an aws-chunked body pushed to it piece by piece.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
    signing: Option<Signing>,
    /// The signature the current chunk claims.
    claimed: Option<String>,
    /// Data of the current chunk, held until its signature is checked.
    pending: Vec<u8>,
    trailers: Vec<(String, String)>,
    trailer_signature: Option<String>,
    decoded: u64,
}

impl ChunkedDecoder {
    /// A decoder for unsigned chunks (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`).
    pub fn unsigned() -> Self {
        Self {
            state: State::Header,
            line: Vec::new(),
            signing: None,
            claimed: None,
            pending: Vec::new(),
            trailers: Vec::new(),
            trailer_signature: None,
            decoded: 0,
        }
    }

    /// A decoder that checks every chunk's signature.
    pub fn signed(verified: VerifiedV4) -> Self {
        let previous = verified.seed_signature.clone();
        Self {
            signing: Some(Signing { verified, previous }),
            ..Self::unsigned()
        }
    }

    /// Bytes of decoded data so far.
    pub fn decoded_len(&self) -> u64 {
        self.decoded
    }

    /// Decodes `input`, appending verified data to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
        while !input.is_empty() {
            match self.state {
                State::Header | State::Trailer => {
                    let Some(line) = self.take_line(&mut input)? else {
                        return Ok(());
                    };
                    if self.state == State::Header {
                        self.header(&line, out)?;
                    } else {
                        self.trailer_line(&line)?;
                    }
                }
                State::Data(left) => {
                    let n = (left as usize).min(input.len());
                    let (data, rest) = input.split_at(n);
                    if self.signing.is_some() {
                        self.pending.extend_from_slice(data);
                    } else {
                        out.extend_from_slice(data);
                    }
                    self.decoded += n as u64;
                    input = rest;
                    self.state = if left == n as u64 {
                        State::DataEnd
                    } else {
                        State::Data(left - n as u64)
                    };
                    if self.state == State::DataEnd {
                        self.end_of_chunk(out)?;
                    }
                }
                State::DataEnd => {
                    let Some(line) = self.take_line(&mut input)? else {
                        return Ok(());
                    };
                    if !line.is_empty() {
                        return Err(ChunkError::Malformed(
                            "chunk data longer than its size".into(),
                        ));
                    }
                    self.state = State::Header;
                }
                State::Done => {
                    return Err(ChunkError::Malformed(
                        "data after the end of the body".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ends the body; returns the trailing headers (lowercase names).
    pub fn finish(self) -> Result<Vec<(String, String)>, ChunkError> {
        if self.state != State::Done {
            return Err(ChunkError::Truncated);
        }
        Ok(self.trailers)
    }

    /// Takes one `\r\n`-terminated line, or buffers a partial one.
    fn take_line(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, ChunkError> {
        match input.iter().position(|b| *b == b'\n') {
            Some(pos) => {
                self.line.extend_from_slice(&input[..pos]);
                *input = &input[pos + 1..];
                let mut line = std::mem::take(&mut self.line);
                if line.pop() != Some(b'\r') {
                    return Err(ChunkError::Malformed("line not ended by CRLF".into()));
                }
                if line.len() > MAX_LINE {
                    return Err(ChunkError::Malformed("line too long".into()));
                }
                Ok(Some(line))
            }
            None => {
                self.line.extend_from_slice(input);
                *input = &[];
                if self.line.len() > MAX_LINE {
                    return Err(ChunkError::Malformed("line too long".into()));
                }
                Ok(None)
            }
        }
    }

    fn header(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| ChunkError::Malformed("chunk header is not text".into()))?;
        let (size, ext) = line.split_once(';').unwrap_or((line, ""));
        let size = u64::from_str_radix(size.trim(), 16)
            .map_err(|_| ChunkError::Malformed(format!("bad chunk size {size:?}")))?;
        if size > MAX_CHUNK {
            return Err(ChunkError::Malformed(format!(
                "chunk of {size} bytes is too large"
            )));
        }
        self.claimed = ext
            .trim()
            .strip_prefix("chunk-signature=")
            .map(str::to_string);
        if self.signing.is_some() && self.claimed.is_none() {
            return Err(ChunkError::Malformed(
                "chunk without chunk-signature".into(),
            ));
        }
        if size == 0 {
            self.end_of_chunk(out)?;
            self.state = State::Trailer;
        } else {
            self.state = State::Data(size);
        }
        Ok(())
    }

    /// Verifies the chunk just read and releases its data.
    fn end_of_chunk(&mut self, out: &mut Vec<u8>) -> Result<(), ChunkError> {
        if let Some(signing) = &mut self.signing {
            let claimed = self.claimed.take().unwrap_or_default();
            let expected = signing
                .verified
                .chunk_signature(&signing.previous, &sigv4::sha256_hex(&self.pending));
            if !sigv4::signatures_match(&expected, &claimed.to_ascii_lowercase()) {
                return Err(ChunkError::BadSignature);
            }
            signing.previous = expected;
            out.append(&mut self.pending);
        }
        Ok(())
    }

    fn trailer_line(&mut self, line: &[u8]) -> Result<(), ChunkError> {
        if line.is_empty() {
            self.verify_trailer()?;
            self.state = State::Done;
            return Ok(());
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| ChunkError::Malformed("trailer is not text".into()))?;
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ChunkError::Malformed(format!("bad trailer line {line:?}")))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        if name == "x-amz-trailer-signature" {
            self.trailer_signature = Some(value);
        } else {
            if self.trailers.len() >= 16 {
                return Err(ChunkError::Malformed("too many trailers".into()));
            }
            self.trailers.push((name, value));
        }
        Ok(())
    }

    fn verify_trailer(&self) -> Result<(), ChunkError> {
        let Some(signing) = &self.signing else {
            return Ok(());
        };
        match &self.trailer_signature {
            // Signed bodies without a trailer end right after the last chunk.
            None if self.trailers.is_empty() => Ok(()),
            None => Err(ChunkError::Malformed(
                "trailer without x-amz-trailer-signature".into(),
            )),
            Some(claimed) => {
                let text: String = self
                    .trailers
                    .iter()
                    .map(|(n, v)| format!("{n}:{v}\n"))
                    .collect();
                let expected = signing.verified.trailer_signature(&signing.previous, &text);
                if sigv4::signatures_match(&expected, &claimed.to_ascii_lowercase()) {
                    Ok(())
                } else {
                    Err(ChunkError::BadSignature)
                }
            }
        }
    }
}

/// Hex SHA-256 helper for tests and callers that hash decoded data.
pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::sigv4::{parse, PathStyle, Request};

    fn decode_all(
        decoder: &mut ChunkedDecoder,
        body: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, ChunkError> {
        let mut out = Vec::new();
        for part in body.chunks(piece.max(1)) {
            decoder.push(part, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn unsigned_body_with_trailer_in_any_pieces() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n";
        for piece in [1, 2, 3, 7, 1000] {
            let mut d = ChunkedDecoder::unsigned();
            let out = decode_all(&mut d, body, piece).expect("decode");
            assert_eq!(out, b"hello world");
            assert_eq!(d.decoded_len(), 11);
            assert_eq!(
                d.finish().expect("finish"),
                vec![("x-amz-checksum-crc32".to_string(), "DUoRhQ==".to_string())]
            );
        }
    }

    #[test]
    fn truncated_and_malformed_bodies_fail() {
        let mut d = ChunkedDecoder::unsigned();
        decode_all(&mut d, b"5\r\nhel", 100).expect("partial");
        assert_eq!(d.finish(), Err(ChunkError::Truncated));
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX\r\n",
            b"5\nhello",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
        ] {
            let mut d = ChunkedDecoder::unsigned();
            assert!(
                matches!(decode_all(&mut d, bad, 100), Err(ChunkError::Malformed(_))),
                "{bad:?}"
            );
        }
        let mut d = ChunkedDecoder::unsigned();
        decode_all(&mut d, b"0\r\n\r\n", 100).expect("empty body");
        assert!(
            decode_all(&mut d, b"x", 1).is_err(),
            "nothing may follow the end"
        );
    }

    /// AWS's streaming example: 65536 + 1024 bytes of 'a' in two signed chunks.
    #[test]
    fn signed_chunks_verify_and_forgeries_fail() {
        let h: Vec<(String, String)> = [
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let req = Request {
            method: "PUT",
            raw_path: "/examplebucket/chunkObject.txt",
            raw_query: "",
            headers: &h,
            path_style: PathStyle::S3,
        };
        let verified = parse(&req, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
            .expect("parse")
            .verify("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", 1_369_353_600)
            .expect("verify");
        let mut body = Vec::new();
        body.extend_from_slice(b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n");
        body.extend_from_slice(&[b'a'; 65536]);
        body.extend_from_slice(b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n");
        body.extend_from_slice(&[b'a'; 1024]);
        body.extend_from_slice(b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n");
        assert_eq!(body.len(), 66824, "the example's content-length");
        let mut d = ChunkedDecoder::signed(verified.clone());
        let out = decode_all(&mut d, &body, 4096).expect("decode");
        assert_eq!(out.len(), 66560);
        assert!(d.finish().expect("finish").is_empty());

        // One flipped data byte: the chunk is refused and none of it is released.
        let mut forged = body.clone();
        forged[100] = b'b';
        let mut d = ChunkedDecoder::signed(verified);
        let mut out = Vec::new();
        assert_eq!(d.push(&forged, &mut out), Err(ChunkError::BadSignature));
        assert!(out.is_empty());
    }
}
