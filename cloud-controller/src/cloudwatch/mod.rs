//! The CloudWatch API at `/services/CloudWatch` on the EC2 endpoint, with
//! EC2's accounts and signatures (SigV4 scoped to `monitoring`; SigV2 for
//! the Query protocol), in each of the three protocols clients pick:
//!
//! - smithy-rpc-v2-cbor (boto3 and AWS CLIs with botocore ≥ 1.37):
//!   `POST …/service/GraniteServiceVersion20100801/operation/<Op>`,
//!   `smithy-protocol: rpc-v2-cbor`, CBOR bodies.
//! - awsJson1_0: `POST` with `X-Amz-Target: GraniteServiceVersion20100801.<Op>`.
//! - Query (older CLIs, euca2ools, boto 2): `Action=<Op>` form or query
//!   string, XML answers.
//!
//! Requests become a protocol-free [`doc::Doc`]; [`ops`] parses it, calls
//! the core and answers with another.

pub mod doc;
pub mod error;
pub mod fuzzing;
pub mod ops;

use bytes::Bytes;
use http::{header::HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::ec2::{Ec2, Params, Service, Signed};
use doc::Doc;
pub use error::CwError;

/// The JSON and CBOR protocols' name for CloudWatch.
pub const TARGET_PREFIX: &str = "GraniteServiceVersion20100801";
/// Where CloudWatch answers.
pub const PATH: &str = "/services/CloudWatch";

/// Whether `path` is CloudWatch's.
pub fn is_cloudwatch(path: &str) -> bool {
    path == PATH || path.starts_with("/services/CloudWatch/")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Query,
    Json,
    Cbor,
}

/// Parameters of the Query protocol that are not the operation's.
const NOT_INPUT: [&str; 8] = [
    "Action",
    "Version",
    "AWSAccessKeyId",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "Timestamp",
    "Expires",
];

/// Answers one CloudWatch request.
pub async fn handle(ec2: &Ec2, req: Request<Incoming>, id: &str) -> Response<Full<Bytes>> {
    let span = tracing::info_span!("cloudwatch", request_id = %id);
    let _enter = span.enter();
    let path = req.uri().path().to_string();
    let cbor_op = path
        .split_once(&format!("/service/{TARGET_PREFIX}/operation/"))
        .map(|(_, op)| op.trim_end_matches('/').to_string());
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(&format!("{TARGET_PREFIX}.")))
        .map(str::to_string);
    let protocol = match (&cbor_op, &target) {
        (Some(_), _) => Protocol::Cbor,
        (None, Some(_)) => Protocol::Json,
        _ => Protocol::Query,
    };
    let mut op = String::new();
    let result = run(ec2, req, protocol, cbor_op.or(target), &mut op).await;
    let (status, body, content_type, query_error) = match result {
        Ok(out) => {
            let body = match protocol {
                Protocol::Query => doc::to_xml(&op, out.as_ref(), id).into_bytes(),
                Protocol::Json => doc::to_json(&out.unwrap_or(Doc::Struct(vec![]))),
                Protocol::Cbor => doc::to_cbor(&out.unwrap_or(Doc::Struct(vec![]))),
            };
            (StatusCode::OK, body, None, None)
        }
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(code = %e.code, "{}", e.message);
            } else {
                tracing::info!(code = %e.code, status = e.status.as_u16(), "{}", e.message);
            }
            let body = match protocol {
                Protocol::Query => e.to_xml(id).into_bytes(),
                Protocol::Json => doc::to_json(&e.to_doc()),
                Protocol::Cbor => doc::to_cbor(&e.to_doc()),
            };
            (
                e.status,
                body,
                None::<&str>,
                Some(format!("{};{}", e.code, e.fault())),
            )
        }
    };
    let content_type = content_type.unwrap_or(match protocol {
        Protocol::Query => "text/xml",
        Protocol::Json => "application/x-amz-json-1.0",
        Protocol::Cbor => "application/cbor",
    });
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("server", HeaderValue::from_static("Gumtree"));
    if protocol == Protocol::Cbor {
        h.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-amzn-requestid", v);
    }
    if let Some(q) = query_error.filter(|_| protocol != Protocol::Query) {
        if let Ok(v) = HeaderValue::from_str(&q) {
            h.insert("x-amzn-query-error", v);
        }
    }
    r
}

/// Most bytes a compressed body may grow to.
const MAX_INFLATED: u64 = 4 * 1024 * 1024;

fn gunzip(body: &[u8]) -> Result<Vec<u8>, CwError> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| CwError::format_body(format!("The gzip body does not inflate: {e}")))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(CwError::format_body(format!(
            "The request body inflates to more than {MAX_INFLATED} bytes."
        )));
    }
    Ok(out)
}

async fn run(
    ec2: &Ec2,
    req: Request<Incoming>,
    protocol: Protocol,
    named_op: Option<String>,
    op_name: &mut String,
) -> Result<Option<Doc>, CwError> {
    if let Some(op) = &named_op {
        *op_name = op.clone();
    }
    let (parts, body) = req.into_parts();
    if parts.method != http::Method::POST && protocol != Protocol::Query {
        return Err(CwError::invalid_value(
            "CloudWatch's JSON and CBOR protocols take POST requests.",
        ));
    }
    let body = crate::ec2::read_body(body)
        .await
        .map_err(CwError::from_auth)?;
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let headers = common::http::header_pairs(&parts.headers);
    // Clients compress large PutMetricData bodies (and sign them as sent).
    let gzipped = headers
        .iter()
        .any(|(n, v)| n == "content-encoding" && v.split(',').any(|e| e.trim() == "gzip"));
    // The body as sent is what the signature covers; only a gzipped one
    // is copied, inflated.
    let inflated: std::borrow::Cow<[u8]> = if gzipped {
        std::borrow::Cow::Owned(gunzip(&body)?)
    } else {
        std::borrow::Cow::Borrowed(&body)
    };
    let mut pairs = common::sigv4::parse_query(&raw_query);
    if protocol == Protocol::Query
        && headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with("application/x-www-form-urlencoded"))
    {
        let text = std::str::from_utf8(&inflated)
            .map_err(|_| CwError::invalid_value("The body is not UTF-8."))?;
        pairs.extend(common::sigv4::parse_query(text));
    }
    let params = Params::new(pairs.clone());
    let host = headers
        .iter()
        .find(|(n, _)| n == "host")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let key = ec2
        .authenticate(
            &Signed {
                method: parts.method.as_str(),
                path: &path,
                raw_query: &raw_query,
                headers: &headers,
                body: &body,
                host: &host,
                params: &params,
            },
            Service::CloudWatch,
        )
        .map_err(CwError::from_auth)?;
    let caller = ec2.caller(key);
    let (op, input) = match protocol {
        Protocol::Query => {
            let op = params
                .get("Action")
                .filter(|a| !a.is_empty())
                .ok_or_else(|| CwError::missing("Action"))?
                .to_string();
            let input: Vec<(String, String)> = pairs
                .into_iter()
                .filter(|(k, _)| !NOT_INPUT.contains(&k.as_str()) && !k.starts_with("X-Amz-"))
                .collect();
            (op, doc::from_query(&input))
        }
        Protocol::Json => (
            named_op.unwrap_or_default(),
            doc::from_json(&inflated).map_err(CwError::format_body)?,
        ),
        Protocol::Cbor => (
            named_op.unwrap_or_default(),
            doc::from_cbor(&inflated).map_err(CwError::format_body)?,
        ),
    };
    *op_name = op.clone();
    tracing::info!(action = %op, account = %caller.account_name, "request");
    ops::run(ec2, &caller, &op, &input).await
}
