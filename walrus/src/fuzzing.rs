//! Entry points for fuzzing the wire parsers: the aws-chunked decoder, the
//! SigV4/SigV2 auth parsers with the router, and the request XML parsers.
//!
//! The cargo-fuzz targets in `fuzz/` call these; the unit tests below run
//! each on a few thousand generated and mutated inputs on every `cargo
//! test`, so the suite fuzzes them for a short while too. Each entry point
//! panics only on a real bug (a crash, or two decodings that disagree).

use common::sigv4::{self, PathStyle, Scope, VerifiedV4};

use crate::s3::{acl, chunked::ChunkedDecoder, multipart, route, xml};

/// Decodes `data` as an aws-chunked body, unsigned and signed, whole and
/// split at the points the first bytes choose: every split must give the
/// same result as the whole. Returns true when the unsigned decoding
/// succeeded (so callers can tell they reached the decoder's depths).
pub fn chunked(data: &[u8]) -> bool {
    let (cuts, body) = data.split_at(data.len().min(2));
    let decode = |signed: bool, pieces: &[&[u8]]| {
        let mut d = if signed {
            ChunkedDecoder::signed(VerifiedV4 {
                scope: Scope {
                    access_key: "AKIDEXAMPLE".into(),
                    date: "20130524".into(),
                    region: "us-east-1".into(),
                    service: "s3".into(),
                },
                amz_date: "20130524T000000Z".into(),
                seed_signature: "0".repeat(64),
                signing_key: [7; 32],
            })
        } else {
            ChunkedDecoder::unsigned()
        };
        let mut out = Vec::new();
        for p in pieces {
            d.push(p, &mut out)?;
        }
        d.finish().map(|t| (out, t))
    };
    let mut decoded = false;
    for signed in [false, true] {
        let whole = decode(signed, &[body]);
        decoded |= !signed && whole.is_ok();
        let mut at = cuts.iter().map(|c| *c as usize).collect::<Vec<_>>();
        at.iter_mut().for_each(|c| *c = (*c).min(body.len()));
        at.sort_unstable();
        let (a, b) = (
            at.first().copied().unwrap_or(0),
            at.last().copied().unwrap_or(0),
        );
        let split = decode(signed, &[&body[..a], &body[a..b], &body[b..]]);
        assert_eq!(
            whole.is_ok(),
            split.is_ok(),
            "splitting changed the outcome: {whole:?} vs {split:?}"
        );
        if let (Ok(w), Ok(s)) = (&whole, &split) {
            assert_eq!(w, s, "splitting changed the decoded body");
        }
    }
    decoded
}

/// Parses `data` as each request body the S3 API reads.
pub fn xml(data: &[u8]) {
    let _ = xml::parse(data);
    let owner = acl::Owner { id: "1", name: "a" };
    let _ = acl::canned_from_policy(data, owner, Some(owner));
    let _ = multipart::requested_parts(data);
}

/// Reads `data` as an HTTP request's method, path, query and headers
/// (separated by newlines, headers as `name: value`) and runs the router
/// and both signature parsers on it.
pub fn auth(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET");
    let path = lines.next().unwrap_or("/");
    let query = lines.next().unwrap_or("");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let host = headers
        .iter()
        .find(|(n, _)| n == "host")
        .map(|(_, v)| v.as_str());
    let _ = route::route(host, path, query, "localhost");
    for style in [PathStyle::S3, PathStyle::Other] {
        let req = sigv4::Request {
            method,
            raw_path: path,
            raw_query: query,
            headers: &headers,
            path_style: style,
        };
        if sigv4::is_v4(&req) {
            if let Ok(pending) = sigv4::parse(&req, "UNSIGNED-PAYLOAD") {
                let _ = pending.string_to_sign();
                let _ = pending.verify("secret", 1_369_353_600);
            }
        }
    }
    let _ = common::sigv2::s3_strings_to_sign(&common::sigv2::S3Request {
        method,
        raw_path: path,
        raw_query: query,
        headers: &headers,
        virtual_bucket: host,
        expires: None,
    });
    let params = sigv4::parse_query(query);
    let _ = common::sigv2::query_string_to_sign(method, host.unwrap_or(""), path, &params);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Random bytes, or a seed with a few bytes flipped, inserted or cut.
    fn input(rng: &mut Rng, seeds: &[&[u8]]) -> Vec<u8> {
        if rng.below(4) == 0 {
            let len = rng.below(300);
            return (0..len).map(|_| rng.next() as u8).collect();
        }
        let mut v = seeds[rng.below(seeds.len())].to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(v.len() + 1);
            match rng.below(3) {
                0 if at < v.len() => v[at] = rng.next() as u8,
                1 => {
                    const ALPHABET: &[u8] = b"0123456789abcdef\r\n;:=<>/ ";
                    v.insert(at, ALPHABET[rng.below(ALPHABET.len())])
                }
                _ if at < v.len() => {
                    v.remove(at);
                }
                _ => {}
            }
        }
        v
    }

    const ROUNDS: usize = 4000;

    #[test]
    fn chunked_decoder_survives_fuzzing() {
        let seeds: [&[u8]; 3] = [
            b"\x03\x09a\r\n0123456789\r\n0\r\n\r\n",
            b"\x05\x204\r\nabcd\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
            b"\x01\x02\x34\r\nabc\r\n0\r\nx-amz-checksum-crc32:sOO8/Q==\r\nx-amz-trailer-signature:00\r\n\r\n",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let decoded = (0..ROUNDS)
            .filter(|_| chunked(&input(&mut rng, &seeds)))
            .count();
        assert!(decoded > 0, "no input decoded: the seeds are wrong");
        assert!(chunked(seeds[0]) && chunked(seeds[1]), "the seeds decode");
    }

    #[test]
    fn xml_parsers_survive_fuzzing() {
        let seeds: [&[u8]; 3] = [
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a\"</ETag></Part></CompleteMultipartUpload>",
            b"<AccessControlPolicy><Owner><ID>1</ID></Owner><AccessControlList><Grant><Grantee><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant></AccessControlList></AccessControlPolicy>",
            b"<?xml version=\"1.0\"?><Delete><Object><Key>a&amp;b</Key></Object><![CDATA[x]]></Delete>",
        ];
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for _ in 0..ROUNDS {
            xml(&input(&mut rng, &seeds));
        }
    }

    #[test]
    fn auth_parsers_survive_fuzzing() {
        let seeds: [&[u8]; 3] = [
            b"GET\n/b/k%20x\nlist-type=2&prefix=a%2F\nhost: b.localhost:8779\nx-amz-date: 20130524T000000Z\nauthorization: AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
            b"GET\n/b/k\nX-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=00\nhost: 127.0.0.1",
            b"PUT\n/services/Walrus/b/k\nacl&uploadId=x\nauthorization: AWS AK:sig=\ndate: Fri, 24 May 2013 00:00:00 GMT\nx-amz-meta-a: b",
        ];
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..ROUNDS {
            auth(&input(&mut rng, &seeds));
        }
    }
}
