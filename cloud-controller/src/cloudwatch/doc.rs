//! One document shape for CloudWatch's three wire protocols: requests from
//! Query parameters, JSON (awsJson1_0) or CBOR (smithy-rpc-v2-cbor) all
//! become a [`Doc`]; an answer is a [`Doc`] written back as Query XML,
//! JSON or CBOR. The operations never see which protocol was spoken.

use std::collections::BTreeMap;

/// A request or an answer, protocol-free.
#[derive(Clone, Debug, PartialEq)]
pub enum Doc {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A time (Unix seconds): ISO 8601 in XML, a number in JSON, tag 1 in CBOR.
    Time(f64),
    List(Vec<Doc>),
    /// A structure (members in order).
    Struct(Vec<(String, Doc)>),
    /// A map (`entry`/`key`/`value` in Query XML).
    Map(Vec<(String, Doc)>),
}

impl Doc {
    /// Member `name` of a structure or map.
    pub fn get(&self, name: &str) -> Option<&Doc> {
        match self {
            Doc::Struct(m) | Doc::Map(m) => m.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
        .filter(|d| **d != Doc::Null)
    }

    /// The items of a list (none when absent).
    pub fn items(&self) -> &[Doc] {
        match self {
            Doc::List(l) => l,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Doc::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A number, also as Query parameters carry it (text).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Doc::Int(i) => Some(*i as f64),
            Doc::Float(f) => Some(*f),
            Doc::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Doc::Bool(b) => Some(*b),
            Doc::Str(s) => match s.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A time in Unix seconds: tag 1 (CBOR), a number (JSON), ISO 8601 or a
    /// number as text (Query).
    pub fn as_time(&self) -> Option<f64> {
        match self {
            Doc::Time(t) => Some(*t),
            Doc::Int(i) => Some(*i as f64),
            Doc::Float(f) => Some(*f),
            Doc::Str(s) => common::time::parse_iso8601(s)
                .map(|t| t as f64)
                .or_else(|| s.parse().ok()),
            _ => None,
        }
    }

    /// A structure of the members that are set.
    pub fn of(members: Vec<(&str, Doc)>) -> Doc {
        Doc::Struct(
            members
                .into_iter()
                .filter(|(_, v)| *v != Doc::Null)
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    pub fn str(s: impl Into<String>) -> Doc {
        Doc::Str(s.into())
    }

    pub fn opt_str(s: Option<impl Into<String>>) -> Doc {
        s.map(|s| Doc::Str(s.into())).unwrap_or(Doc::Null)
    }

    pub fn strs<S: AsRef<str>>(l: &[S]) -> Doc {
        Doc::List(l.iter().map(|s| Doc::str(s.as_ref())).collect())
    }

    pub fn time_ms(ms: i64) -> Doc {
        Doc::Time(ms as f64 / 1000.0)
    }
}

// ---- in ----

/// Query parameters (`MetricData.member.1.Dimensions.member.2.Name=...`)
/// as a document: `member.N` makes lists, `entry.N.key`/`value` maps.
pub fn from_query(pairs: &[(String, String)]) -> Doc {
    #[derive(Default)]
    struct Node {
        leaf: Option<String>,
        kids: BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for (k, v) in pairs {
        let mut at = &mut root;
        for part in k.split('.') {
            at = at.kids.entry(part.to_string()).or_default();
        }
        at.leaf = Some(v.clone());
    }
    fn numbered(n: Node) -> Vec<Node> {
        let mut v: Vec<(u64, Node)> = n
            .kids
            .into_iter()
            .filter_map(|(k, n)| Some((k.parse().ok()?, n)))
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, n)| n).collect()
    }
    fn build(n: Node) -> Doc {
        if n.kids.is_empty() {
            return n.leaf.map(Doc::Str).unwrap_or(Doc::Null);
        }
        if n.kids.len() == 1 && n.kids.contains_key("member") {
            let mut kids = n.kids;
            let members = kids.remove("member").unwrap_or_default();
            return Doc::List(numbered(members).into_iter().map(build).collect());
        }
        if n.kids.len() == 1 && n.kids.contains_key("entry") {
            let mut kids = n.kids;
            let entries = kids.remove("entry").unwrap_or_default();
            return Doc::Map(
                numbered(entries)
                    .into_iter()
                    .filter_map(|mut e| {
                        let k = e.kids.remove("key")?.leaf?;
                        Some((k, e.kids.remove("value").map(build).unwrap_or(Doc::Null)))
                    })
                    .collect(),
            );
        }
        Doc::Struct(n.kids.into_iter().map(|(k, v)| (k, build(v))).collect())
    }
    build(root)
}

/// A JSON request body (empty: no members).
pub fn from_json(body: &[u8]) -> Result<Doc, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Doc::Struct(vec![]));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("The request body is not JSON: {e}"))?;
    fn conv(v: serde_json::Value) -> Doc {
        match v {
            serde_json::Value::Null => Doc::Null,
            serde_json::Value::Bool(b) => Doc::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Doc::Int(i),
                None => Doc::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Doc::Str(s),
            serde_json::Value::Array(a) => Doc::List(a.into_iter().map(conv).collect()),
            serde_json::Value::Object(o) => {
                Doc::Struct(o.into_iter().map(|(k, v)| (k, conv(v))).collect())
            }
        }
    }
    Ok(conv(v))
}

/// A CBOR request body (empty: no members).
pub fn from_cbor(body: &[u8]) -> Result<Doc, String> {
    if body.is_empty() {
        return Ok(Doc::Struct(vec![]));
    }
    let v: ciborium::Value =
        ciborium::from_reader(body).map_err(|e| format!("The request body is not CBOR: {e}"))?;
    fn conv(v: ciborium::Value) -> Result<Doc, String> {
        use ciborium::Value as V;
        Ok(match v {
            V::Null => Doc::Null,
            V::Bool(b) => Doc::Bool(b),
            V::Integer(i) => Doc::Int(i64::try_from(i).map_err(|_| "An integer out of range")?),
            V::Float(f) => Doc::Float(f),
            V::Text(s) => Doc::Str(s),
            V::Bytes(_) => return Err("Unexpected bytes".into()),
            V::Tag(1, inner) => match *inner {
                V::Integer(i) => {
                    Doc::Time(i64::try_from(i).map_err(|_| "A time out of range")? as f64)
                }
                V::Float(f) => Doc::Time(f),
                _ => return Err("A time that is not a number".into()),
            },
            V::Tag(_, inner) => conv(*inner)?,
            V::Array(a) => Doc::List(a.into_iter().map(conv).collect::<Result<_, _>>()?),
            V::Map(m) => Doc::Struct(
                m.into_iter()
                    .map(|(k, v)| match k {
                        V::Text(k) => Ok((k, conv(v)?)),
                        _ => Err("A map key that is not text".to_string()),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err("An unexpected CBOR item".into()),
        })
    }
    conv(v)
}

// ---- out ----

fn number(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn xml_into(out: &mut String, name: &str, d: &Doc) {
    use common::xml::escape;
    match d {
        Doc::Null => {}
        Doc::Bool(b) => out.push_str(&format!("<{name}>{b}</{name}>")),
        Doc::Int(i) => out.push_str(&format!("<{name}>{i}</{name}>")),
        Doc::Float(f) => out.push_str(&format!("<{name}>{}</{name}>", number(*f))),
        Doc::Str(s) => out.push_str(&format!("<{name}>{}</{name}>", escape(s))),
        Doc::Time(t) => {
            // Whole seconds as CloudWatch writes datapoints' times (boto 2
            // parses no fraction there); milliseconds when there are some.
            let ms = (t * 1000.0).round() as i64;
            let text = common::time::iso8601_ms(ms);
            let text = if ms % 1000 == 0 {
                text.replace(".000Z", "Z")
            } else {
                text
            };
            out.push_str(&format!("<{name}>{text}</{name}>"))
        }
        Doc::List(l) => {
            out.push_str(&format!("<{name}>"));
            for item in l {
                xml_into(out, "member", item);
            }
            out.push_str(&format!("</{name}>"));
        }
        Doc::Struct(m) => {
            out.push_str(&format!("<{name}>"));
            for (k, v) in m {
                xml_into(out, k, v);
            }
            out.push_str(&format!("</{name}>"));
        }
        Doc::Map(m) => {
            out.push_str(&format!("<{name}>"));
            for (k, v) in m {
                out.push_str(&format!("<entry><key>{}</key>", escape(k)));
                xml_into(out, "value", v);
                out.push_str("</entry>");
            }
            out.push_str(&format!("</{name}>"));
        }
    }
}

/// CloudWatch's XML namespace.
pub const XMLNS: &str = "http://monitoring.amazonaws.com/doc/2010-08-01/";

/// The Query protocol's answer to `op`: `<OpResponse><OpResult>...`, no
/// result element for an operation without output (`out` is `None`).
pub fn to_xml(op: &str, out: Option<&Doc>, request_id: &str) -> String {
    let mut s =
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{op}Response xmlns=\"{XMLNS}\">");
    if let Some(d) = out {
        xml_into(&mut s, &format!("{op}Result"), d);
    }
    s.push_str(&format!(
        "<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{op}Response>"
    ));
    s
}

/// The JSON protocol's answer (times as Unix seconds).
pub fn to_json(d: &Doc) -> Vec<u8> {
    fn conv(d: &Doc) -> serde_json::Value {
        use serde_json::Value as V;
        match d {
            Doc::Null => V::Null,
            Doc::Bool(b) => V::Bool(*b),
            Doc::Int(i) => V::from(*i),
            Doc::Float(f) | Doc::Time(f) => V::from(*f),
            Doc::Str(s) => V::from(s.as_str()),
            Doc::List(l) => V::Array(l.iter().map(conv).collect()),
            Doc::Struct(m) | Doc::Map(m) => {
                V::Object(m.iter().map(|(k, v)| (k.clone(), conv(v))).collect())
            }
        }
    }
    serde_json::to_vec(&conv(d)).unwrap_or_default()
}

/// The CBOR protocol's answer (times as tag 1).
pub fn to_cbor(d: &Doc) -> Vec<u8> {
    fn conv(d: &Doc) -> ciborium::Value {
        use ciborium::Value as V;
        match d {
            Doc::Null => V::Null,
            Doc::Bool(b) => V::Bool(*b),
            Doc::Int(i) => V::Integer((*i).into()),
            Doc::Float(f) => V::Float(*f),
            Doc::Time(t) => V::Tag(1, Box::new(V::Float(*t))),
            Doc::Str(s) => V::Text(s.clone()),
            Doc::List(l) => V::Array(l.iter().map(conv).collect()),
            Doc::Struct(m) | Doc::Map(m) => V::Map(
                m.iter()
                    .map(|(k, v)| (V::Text(k.clone()), conv(v)))
                    .collect(),
            ),
        }
    }
    let mut out = Vec::new();
    let _ = ciborium::into_writer(&conv(d), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_become_lists_and_structures() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let d = from_query(&[
            p("Namespace", "App"),
            p("MetricData.member.2.MetricName", "b"),
            p("MetricData.member.1.MetricName", "a"),
            p("MetricData.member.1.Dimensions.member.1.Name", "Host"),
            p("MetricData.member.1.Values.member.1", "1.5"),
            p("MetricData.member.10.MetricName", "c"),
            p("Tags.entry.1.key", "k"),
            p("Tags.entry.1.value", "v"),
        ]);
        let data = d.get("MetricData").expect("data").items();
        let names: Vec<&str> = data
            .iter()
            .filter_map(|m| m.get("MetricName")?.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            data[0].get("Values").expect("values").items()[0].as_f64(),
            Some(1.5)
        );
        assert_eq!(
            d.get("Tags"),
            Some(&Doc::Map(vec![("k".into(), Doc::str("v"))]))
        );
    }

    #[test]
    fn cbor_and_json_round_trip_with_times() {
        let d = Doc::of(vec![
            ("Label", Doc::str("CPU")),
            (
                "Datapoints",
                Doc::List(vec![Doc::of(vec![
                    ("Timestamp", Doc::Time(1.7e9)),
                    ("Sum", Doc::Float(3.5)),
                ])]),
            ),
            ("Absent", Doc::Null),
        ]);
        let back = from_cbor(&to_cbor(&d)).expect("cbor");
        assert_eq!(back, d);
        let json: serde_json::Value = serde_json::from_slice(&to_json(&d)).expect("json");
        assert_eq!(json["Datapoints"][0]["Timestamp"], 1.7e9);
        let xml = to_xml("GetMetricStatistics", Some(&d), "r-1");
        assert!(xml.contains("<GetMetricStatisticsResult><Label>CPU</Label><Datapoints><member><Timestamp>2023-11-14T22:13:20Z</Timestamp><Sum>3.5</Sum></member></Datapoints></GetMetricStatisticsResult>"), "{xml}");
        assert!(to_xml("DeleteAlarms", None, "r-2").contains("<DeleteAlarmsResponse xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\"><ResponseMetadata>"));
    }
}
