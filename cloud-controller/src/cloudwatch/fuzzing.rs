//! An entry point for fuzzing CloudWatch's request parsers: the same bytes
//! as a CBOR body, a JSON body and a Query string. Whatever decodes must
//! encode again in every protocol, and what the CBOR encoder writes must
//! decode to the same document. Panics only on a real bug. The cargo-fuzz
//! target `cloudwatch` in `fuzz/` calls it; the unit test below runs it on
//! a few thousand generated and mutated inputs on every `cargo test`.

use super::doc;

/// Parses `data` every way a CloudWatch request body can come.
pub fn requests(data: &[u8]) {
    if let Ok(d) = doc::from_cbor(data) {
        let once = doc::to_cbor(&d);
        let again = doc::from_cbor(&once).expect("what the encoder writes decodes");
        assert_eq!(doc::to_cbor(&again), once, "CBOR does not round-trip");
        let _ = doc::to_json(&d);
        let _ = doc::to_xml("Op", Some(&d), "r");
    }
    if let Ok(d) = doc::from_json(data) {
        let _ = doc::to_cbor(&d);
        let _ = doc::to_xml("Op", Some(&d), "r");
    }
    let text = String::from_utf8_lossy(data);
    let d = doc::from_query(&common::sigv4::parse_query(&text));
    let _ = doc::to_xml("Op", Some(&d), "r");
    let _ = doc::to_cbor(&d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use doc::Doc;

    #[test]
    fn generated_and_mutated_requests_do_not_break_the_parsers() {
        let sample = Doc::of(vec![
            ("Namespace", Doc::str("Lab")),
            (
                "MetricData",
                Doc::List(vec![Doc::of(vec![
                    ("MetricName", Doc::str("x")),
                    ("Timestamp", Doc::Time(1.7e9)),
                    ("Values", Doc::List(vec![Doc::Float(1.5), Doc::Int(-3)])),
                ])]),
            ),
        ]);
        let seeds: Vec<Vec<u8>> = vec![
            doc::to_cbor(&sample),
            doc::to_json(&sample),
            b"Action=PutMetricData&MetricData.member.1.Values.member.2=3&Tags.entry.1.key=k&x.member.9999999999999999999=1".to_vec(),
            vec![0xc1, 0xfb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
            vec![0x9f, 0x9f, 0x9f, 0xff, 0xff, 0xff],
        ];
        // xorshift: the same inputs on every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let mut data = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 6) {
                let r = next();
                match r % 4 {
                    0 if !data.is_empty() => {
                        let i = (r >> 8) as usize % data.len();
                        data[i] = (r >> 16) as u8;
                    }
                    1 => {
                        let i = (r >> 8) as usize % (data.len() + 1);
                        data.insert(i, (r >> 16) as u8);
                    }
                    2 if !data.is_empty() => {
                        let i = (r >> 8) as usize % data.len();
                        data.truncate(i);
                    }
                    _ => data.extend_from_slice(&r.to_le_bytes()[..(r >> 60) as usize % 8]),
                }
            }
            requests(&data);
        }
    }
}
