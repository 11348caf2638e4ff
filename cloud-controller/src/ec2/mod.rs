//! The EC2 Query API: GET or POST form requests at `/`,
//! `/services/compute` and `/services/Eucalyptus`, signed with SigV4 (header
//! or query) or SigV2 (`SignatureVersion=2`), answered in the XML of the
//! request's `Version`, errors in EC2's `<Response><Errors>` envelope.
//!
//! The wire layer ends here: actions get a [`Call`] (who, which version,
//! which parameters) and return a body written with [`xml::Writer`].

pub mod addresses;
pub mod error;
pub mod euare;
pub mod images;
pub mod instances;
pub mod keypairs;
pub mod params;
pub mod regions;
pub mod security_groups;
pub mod snapshots;
pub mod tags;
pub mod volumes;
pub mod xml;

use std::sync::Arc;

use bytes::Bytes;
use common::{sigv2, sigv4, time};
use http::{header::HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub use error::Ec2Error;
pub use params::Params;

use crate::{accounts::AccessKey, core::Cloud};

/// Largest request body accepted (user data is at most 16 KiB base64).
const MAX_BODY: usize = 1024 * 1024;
/// Paths the API answers at.
const PATHS: [&str; 4] = [
    "/",
    "/services/compute",
    "/services/Eucalyptus",
    "/services/Euare",
];
/// The API version used when a request names none.
pub const DEFAULT_VERSION: &str = "2016-11-15";

pub use crate::core::Settings;

/// The EC2 service: a wire layer over the cloud's core.
#[derive(Debug)]
pub struct Ec2 {
    pub cloud: Cloud,
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: String,
    pub account_name: String,
    pub user_name: String,
    /// True for the cloud's system account.
    pub admin: bool,
}

/// A request after authentication, as actions see it.
#[derive(Debug)]
pub struct Call {
    pub action: String,
    pub version: String,
    pub caller: Caller,
    pub params: Params,
    pub request_id: String,
}

impl Call {
    /// `DryRunOperation` when the request asked for a dry run.
    pub fn dry_run_check(&self) -> Result<(), Ec2Error> {
        if self.params.flag("DryRun")? {
            Err(Ec2Error::dry_run())
        } else {
            Ok(())
        }
    }

    /// A response document for this call's action and version.
    pub fn writer(&self) -> xml::Writer {
        xml::Writer::new(&self.action, &self.version, &self.request_id)
    }
}

pub fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

type Body = Full<Bytes>;

/// Serves EC2 on `listener` (over TLS with `tls`) until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ec2: Arc<Ec2>,
) {
    common::http::serve(listener, tls, move |req| {
        let ec2 = ec2.clone();
        async move { ec2.handle(req).await }
    })
    .await
}

impl Ec2 {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let id = request_id();
        if crate::cloudwatch::is_cloudwatch(req.uri().path()) {
            return crate::cloudwatch::handle(self, req, &id).await;
        }
        let span = tracing::info_span!("ec2", request_id = %id);
        let _enter = span.enter();
        let iam = req.uri().path().trim_end_matches('/') == "/services/Euare";
        let (status, body) =
            match self
                .dispatch(req, &id)
                .await
                .map_err(|e| if iam { e.for_iam() } else { e })
            {
                Ok(body) => (StatusCode::OK, body),
                Err(e) => {
                    if e.status.is_server_error() {
                        tracing::error!(code = %e.code, "{}", e.message);
                    } else {
                        tracing::info!(code = %e.code, status = e.status.as_u16(), "{}", e.message);
                    }
                    (e.status, e.to_xml(&id))
                }
            };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/xml;charset=UTF-8"),
        );
        r.headers_mut()
            .insert("server", HeaderValue::from_static("Gumtree"));
        if let Ok(v) = HeaderValue::from_str(&id) {
            r.headers_mut().insert("x-amzn-requestid", v);
        }
        r
    }

    async fn dispatch(&self, req: Request<Incoming>, id: &str) -> Result<String, Ec2Error> {
        if common::http::headers_too_large(&req) {
            return Err(Ec2Error::new(
                "RequestHeaderSectionTooLarge",
                "Your request header section exceeds the maximum allowed size.",
            )
            .status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let trimmed = path.trim_end_matches('/');
        if !PATHS.contains(&if trimmed.is_empty() { "/" } else { trimmed }) {
            return Err(
                Ec2Error::new("InvalidAction", format!("No EC2 service at {path}"))
                    .status(StatusCode::NOT_FOUND),
            );
        }
        if parts.method != Method::GET && parts.method != Method::POST {
            return Err(Ec2Error::new(
                "InvalidHttpRequest",
                "The EC2 Query API takes GET and POST requests",
            ));
        }
        let body = read_body(body).await?;
        let raw_query = parts.uri.query().unwrap_or("").to_string();
        let headers = common::http::header_pairs(&parts.headers);
        let form = parts.method == Method::POST
            && headers.iter().any(|(n, v)| {
                n == "content-type" && v.starts_with("application/x-www-form-urlencoded")
            });
        let mut pairs = sigv4::parse_query(&raw_query);
        if form {
            let text = std::str::from_utf8(&body)
                .map_err(|_| Ec2Error::new("MalformedQueryString", "The body is not UTF-8"))?;
            pairs.extend(sigv4::parse_query(text));
        }
        let params = Params::new(pairs);
        let host = headers
            .iter()
            .find(|(n, _)| n == "host")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let iam = trimmed == "/services/Euare";
        let key = self.authenticate(
            &Signed {
                method: parts.method.as_str(),
                path: &path,
                raw_query: &raw_query,
                headers: &headers,
                body: &body,
                host: &host,
                params: &params,
            },
            if iam { Service::Iam } else { Service::Ec2 },
        )?;
        self.call_as(self.caller(key), params, id).await
    }

    /// Runs the Query action `params` name for `caller`, who is known
    /// already (authenticated by a signature, or by a console session).
    pub async fn call_as(
        &self,
        caller: Caller,
        params: Params,
        request_id: &str,
    ) -> Result<String, Ec2Error> {
        let action = params.required("Action")?.to_string();
        let version = params.get("Version").unwrap_or(DEFAULT_VERSION).to_string();
        if version.len() != 10 || !version.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(Ec2Error::invalid_value(
                "Version",
                &version,
                "Expected a date.",
            ));
        }
        let call = Call {
            action: action.clone(),
            version,
            caller,
            params,
            request_id: request_id.to_string(),
        };
        tracing::info!(action = %action, account = %call.caller.account_name, "request");
        self.run(&call).await
    }

    async fn run(&self, call: &Call) -> Result<String, Ec2Error> {
        if euare::ACTIONS.contains(&call.action.as_str()) {
            return euare::run(self, call).await.map_err(Ec2Error::for_iam);
        }
        match call.action.as_str() {
            "RegisterImage" => images::register_image(self, call).await,
            "CreateImage" => images::create_image(self, call).await,
            "DescribeImages" => images::describe_images(self, call),
            "DeregisterImage" => images::deregister_image(self, call),
            "DescribeImageAttribute" => images::describe_image_attribute(self, call),
            "ModifyImageAttribute" => images::modify_image_attribute(self, call),
            "RunInstances" => instances::run_instances(self, call).await,
            "DescribeInstances" => instances::describe_instances(self, call),
            "TerminateInstances" => instances::terminate_instances(self, call).await,
            "StopInstances" => instances::stop_or_start(self, call, true).await,
            "StartInstances" => instances::stop_or_start(self, call, false).await,
            "RebootInstances" => instances::reboot_instances(self, call).await,
            "GetConsoleOutput" => instances::get_console_output(self, call).await,
            "DescribeInstanceTypes" => instances::describe_instance_types(self, call),
            "DescribeInstanceStatus" => instances::describe_instance_status(self, call),
            "DescribeInstanceAttribute" => instances::describe_instance_attribute(self, call),
            "GetPasswordData" => instances::get_password_data(self, call),
            "MonitorInstances" => instances::monitor_instances(self, call, true),
            "UnmonitorInstances" => instances::monitor_instances(self, call, false),
            "ModifyInstanceAttribute" => instances::modify_instance_attribute(self, call).await,
            "CreateKeyPair" => keypairs::create_key_pair(self, call),
            "ImportKeyPair" => keypairs::import_key_pair(self, call),
            "DescribeKeyPairs" => keypairs::describe_key_pairs(self, call),
            "DeleteKeyPair" => keypairs::delete_key_pair(self, call),
            "CreateSecurityGroup" => security_groups::create_security_group(self, call),
            "DeleteSecurityGroup" => security_groups::delete_security_group(self, call),
            "DescribeSecurityGroups" => security_groups::describe_security_groups(self, call),
            "AuthorizeSecurityGroupIngress" => {
                security_groups::change_rules(self, call, false, true)
            }
            "RevokeSecurityGroupIngress" => security_groups::change_rules(self, call, false, false),
            "AuthorizeSecurityGroupEgress" => security_groups::change_rules(self, call, true, true),
            "RevokeSecurityGroupEgress" => security_groups::change_rules(self, call, true, false),
            "AllocateAddress" => addresses::allocate_address(self, call),
            "AssociateAddress" => addresses::associate_address(self, call),
            "DisassociateAddress" => addresses::disassociate_address(self, call),
            "ReleaseAddress" => addresses::release_address(self, call),
            "DescribeAddresses" => addresses::describe_addresses(self, call),
            "CreateVolume" => volumes::create_volume(self, call).await,
            "DeleteVolume" => volumes::delete_volume(self, call).await,
            "AttachVolume" => volumes::attach_volume(self, call).await,
            "DetachVolume" => volumes::detach_volume(self, call).await,
            "DescribeVolumes" => volumes::describe_volumes(self, call),
            "CreateReplaceRootVolumeTask" => {
                volumes::create_replace_root_volume_task(self, call).await
            }
            "DescribeReplaceRootVolumeTasks" => {
                volumes::describe_replace_root_volume_tasks(self, call)
            }
            "DescribeVolumeStatus" => volumes::describe_volume_status(self, call),
            "DescribeVolumeAttribute" => volumes::describe_volume_attribute(self, call),
            "ModifyVolumeAttribute" => volumes::modify_volume_attribute(self, call),
            "CreateSnapshot" => snapshots::create_snapshot(self, call).await,
            "DeleteSnapshot" => snapshots::delete_snapshot(self, call).await,
            "DescribeSnapshots" => snapshots::describe_snapshots(self, call),
            "DescribeSnapshotAttribute" => snapshots::describe_snapshot_attribute(self, call),
            "ModifySnapshotAttribute" => snapshots::modify_snapshot_attribute(self, call),
            "ResetSnapshotAttribute" => snapshots::reset_snapshot_attribute(self, call),
            "CreateTags" => tags::create_tags(self, call),
            "DeleteTags" => tags::delete_tags(self, call),
            "DescribeTags" => tags::describe_tags(self, call),
            "DescribeAccountAttributes" => regions::describe_account_attributes(self, call),
            "DescribeRegions" => regions::describe_regions(self, call),
            "DescribeAvailabilityZones" => regions::describe_availability_zones(self, call),
            other => Err(Ec2Error::new(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            )),
        }
    }

    /// The access key that signed the request to `service`.
    pub(crate) fn authenticate(
        &self,
        signed: &Signed<'_>,
        service: Service,
    ) -> Result<AccessKey, Ec2Error> {
        let Signed {
            method,
            path,
            raw_query,
            headers,
            body,
            host,
            params,
        } = *signed;
        let req = sigv4::Request {
            method,
            raw_path: path,
            raw_query,
            headers,
            path_style: sigv4::PathStyle::Other,
        };
        if sigv4::is_v4(&req) {
            let pending = sigv4::parse(&req, &sigv4::sha256_hex(body)).map_err(|e| {
                Ec2Error::new("IncompleteSignature", e.to_string()).status(StatusCode::BAD_REQUEST)
            })?;
            // Euare answers as IAM, which AWS signs in us-east-1.
            let (also, services): (&[&str], &[&str]) = match service {
                Service::Iam => (&["us-east-1"], &["iam"]),
                Service::Ec2 => (&[], &["ec2"]),
                Service::CloudWatch => (&[], &["monitoring"]),
            };
            if let Err(wrong) =
                pending
                    .scope
                    .check(host, &self.cloud.settings.region, also, services)
            {
                let message = match wrong {
                    sigv4::WrongScope::Region { given, .. } => {
                        format!("Credential should be scoped to a valid region, not '{given}'. ")
                    }
                    sigv4::WrongScope::Service { expected, .. } => {
                        format!("Credential should be scoped to correct service: '{expected}'. ")
                    }
                };
                return Err(
                    Ec2Error::new("SignatureDoesNotMatch", message).status(StatusCode::FORBIDDEN)
                );
            }
            let key = self.key(&pending.scope.access_key)?;
            return match pending.verify(&key.secret_access_key, time::unix_secs()) {
                Ok(_) => Ok(key),
                Err(sigv4::SigError::Skewed) | Err(sigv4::SigError::Expired) => {
                    Err(Ec2Error::new("RequestExpired", "Request has expired."))
                }
                Err(sigv4::SigError::Mismatch { .. }) => Err(Ec2Error::auth_failure()),
                Err(e) => Err(Ec2Error::new("IncompleteSignature", e.to_string())),
            };
        }
        match params.get("SignatureVersion") {
            Some("2") => {}
            Some(v) => {
                return Err(Ec2Error::invalid_value(
                    "SignatureVersion",
                    v,
                    "Only versions 2 and 4 are supported.",
                ))
            }
            None => {
                return Err(Ec2Error::new(
                    "MissingAuthenticationToken",
                    "Request is missing Authentication Token",
                )
                .status(StatusCode::UNAUTHORIZED))
            }
        }
        let key_id = params.required("AWSAccessKeyId")?;
        let signature = params.required("Signature")?;
        let mac = sigv2::Mac2::from_method(params.get("SignatureMethod").unwrap_or("HmacSHA256"))
            .ok_or_else(|| {
            Ec2Error::invalid_value(
                "SignatureMethod",
                params.get("SignatureMethod").unwrap_or_default(),
                "Use HmacSHA256 or HmacSHA1.",
            )
        })?;
        let now = time::unix_secs();
        if let Some(expires) = params.get("Expires") {
            let at = time::parse_iso8601(expires)
                .ok_or_else(|| Ec2Error::invalid_value("Expires", expires, "Expected ISO 8601."))?;
            if now > at {
                return Err(Ec2Error::new("RequestExpired", "Request has expired."));
            }
            // No signature lives longer than a presigned SigV4 request may
            // (7 days): a captured request is not good for years.
            if at - now > sigv4::MAX_EXPIRES_SECS {
                return Err(Ec2Error::invalid_value(
                    "Expires",
                    expires,
                    "Expires must be at most 7 days ahead.",
                ));
            }
        } else {
            let ts = params.required("Timestamp")?;
            let at = time::parse_iso8601(ts)
                .ok_or_else(|| Ec2Error::invalid_value("Timestamp", ts, "Expected ISO 8601."))?;
            if (now - at).abs() > sigv4::MAX_SKEW_SECS {
                return Err(Ec2Error::new("RequestExpired", "Request has expired."));
            }
        }
        let key = self.key(key_id)?;
        let sts = sigv2::query_string_to_sign(method, host, path, &params.pairs());
        let computed = sigv2::sign(mac, &key.secret_access_key, &sts);
        if sigv2::signature_matches(&computed, signature) {
            Ok(key)
        } else {
            Err(Ec2Error::auth_failure())
        }
    }

    /// The caller the access key `key` stands for.
    pub(crate) fn caller(&self, key: AccessKey) -> Caller {
        Caller {
            admin: key.account_name == self.cloud.settings.admin_account,
            account_id: key.account_id,
            account_name: key.account_name,
            user_name: key.user_name,
        }
    }

    fn key(&self, access_key_id: &str) -> Result<AccessKey, Ec2Error> {
        self.cloud
            .accounts
            .key(access_key_id)
            .map_err(|e| {
                tracing::error!(error = %e, "access key lookup failed");
                Ec2Error::internal()
            })?
            .ok_or_else(Ec2Error::auth_failure)
    }
}

/// The service a request is signed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Ec2,
    /// Euare, signed as IAM.
    Iam,
    /// CloudWatch, signed as `monitoring`.
    CloudWatch,
}

/// What a request's signature covers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub raw_query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub host: &'a str,
    /// The Query parameters (for SigV2).
    pub params: &'a Params,
}

pub(crate) async fn read_body(body: Incoming) -> Result<Vec<u8>, Ec2Error> {
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|_| Ec2Error::new("InvalidHttpRequest", "The request body ended early"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(Ec2Error::new(
                    "RequestEntityTooLarge",
                    "The request body is too large",
                )
                .status(StatusCode::PAYLOAD_TOO_LARGE));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(&id[14..15], "4");
    }
}
