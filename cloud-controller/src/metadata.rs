//! The instance metadata service's answers, as EC2's IMDS gives them:
//! IMDSv1 (plain GETs) and IMDSv2 (a session token from `PUT
//! /latest/api/token`, sent back in `X-aws-ec2-metadata-token`), with a
//! "tokens required" mode that refuses tokenless reads.
//!
//! This module decides what an instance gets for a request; which instance
//! is asking is settled before (by its private address, on its node).
//! Tokens are stateless: the expiry and an HMAC over the instance id and
//! expiry, so they are bound to one instance and survive restarts.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::instances::InstanceRecord;

/// IMDS versions, as `GET /` lists them.
pub const VERSIONS: [&str; 27] = [
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
];

/// Longest token lifetime EC2 allows, seconds.
pub const MAX_TTL: i64 = 21600;

/// What the service knows of the instance asking.
#[derive(Debug)]
pub struct InstanceView<'a> {
    pub record: &'a InstanceRecord,
    /// `bucket/key` of its image.
    pub image_location: String,
    pub architecture: String,
    /// (key name, OpenSSH public key line).
    pub public_key: Option<(String, String)>,
    /// (id, name) of its security groups.
    pub security_groups: Vec<(String, String)>,
    pub public_ip: Option<String>,
    pub region: String,
}

/// An HTTP answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.into().into_bytes(),
        }
    }

    fn not_found() -> Self {
        Self::text(404, "Not Found")
    }
}

/// Issues and checks session tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    key: Vec<u8>,
}

impl Tokens {
    /// Tokens keyed by `secret` (the cluster secret, so every CLC restart
    /// keeps honouring tokens it issued).
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"gumtree imds token key")
            .expect("HMAC takes any key length");
        mac.update(secret);
        Self {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self, instance_id: &str, expiry: i64) -> Vec<u8> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(instance_id.as_bytes());
        mac.update(&expiry.to_be_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for `instance_id`, valid `ttl` seconds from `now`.
    pub fn issue(&self, instance_id: &str, ttl: i64, now: i64) -> String {
        let expiry = now + ttl;
        let mut raw = expiry.to_be_bytes().to_vec();
        raw.extend(self.mac(instance_id, expiry));
        B64.encode(raw)
    }

    /// Whether `token` was issued to `instance_id` and is not expired.
    pub fn valid(&self, token: &str, instance_id: &str, now: i64) -> bool {
        let Ok(raw) = B64.decode(token.trim()) else {
            return false;
        };
        if raw.len() != 40 {
            return false;
        }
        let mut e = [0u8; 8];
        e.copy_from_slice(&raw[..8]);
        let expiry = i64::from_be_bytes(e);
        let expected = self.mac(instance_id, expiry);
        now < expiry && constant_time_eq(&raw[8..], &expected)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// EC2's private DNS name of an address: `ip-10-0-0-2.<region>.compute.internal`
/// (empty for no address).
pub fn private_dns(ip: &str, region: &str) -> String {
    if ip.is_empty() {
        return String::new();
    }
    format!("ip-{}.{region}.compute.internal", ip.replace('.', "-"))
}

enum Node {
    Dir(Vec<String>),
    Leaf(String),
}

fn dir(entries: &[&str]) -> Node {
    Node::Dir(entries.iter().map(|s| s.to_string()).collect())
}

/// The `meta-data/` tree at `path` (no leading slash).
fn meta_data(v: &InstanceView<'_>, path: &str) -> Option<Node> {
    let r = v.record;
    let hostname = if r.private_ip.is_empty() {
        r.instance_id.clone()
    } else {
        private_dns(&r.private_ip, &v.region)
    };
    let groups: Vec<String> = v.security_groups.iter().map(|g| g.1.clone()).collect();
    let group_ids: Vec<String> = v.security_groups.iter().map(|g| g.0.clone()).collect();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let leaf = |s: &str| Some(Node::Leaf(s.to_string()));
    match parts.as_slice() {
        [] => {
            let mut e = vec![
                "ami-id",
                "ami-launch-index",
                "ami-manifest-path",
                "block-device-mapping/",
                "hostname",
                "instance-action",
                "instance-id",
                "instance-type",
            ];
            if r.kernel_id.is_some() {
                e.push("kernel-id");
            }
            e.extend([
                "local-hostname",
                "local-ipv4",
                "mac",
                "network/",
                "placement/",
            ]);
            if v.public_ip.is_some() {
                e.extend(["public-hostname", "public-ipv4"]);
            }
            if v.public_key.is_some() {
                e.push("public-keys/");
            }
            if r.ramdisk_id.is_some() {
                e.push("ramdisk-id");
            }
            e.extend(["reservation-id", "security-groups"]);
            Some(dir(&e))
        }
        ["ami-id"] => leaf(&r.image_id),
        ["ami-launch-index"] => leaf(&r.launch_index.to_string()),
        ["ami-manifest-path"] => leaf(&v.image_location),
        ["block-device-mapping"] => Some(dir(&["ami", "root"])),
        ["block-device-mapping", "ami" | "root"] => leaf("/dev/vda"),
        ["hostname" | "local-hostname"] => leaf(&hostname),
        ["instance-action"] => leaf("none"),
        ["instance-id"] => leaf(&r.instance_id),
        ["instance-type"] => leaf(&r.instance_type),
        ["kernel-id"] => r.kernel_id.as_deref().and_then(leaf),
        ["ramdisk-id"] => r.ramdisk_id.as_deref().and_then(leaf),
        ["local-ipv4"] => leaf(&r.private_ip),
        ["mac"] => leaf(&r.mac),
        ["network"] => Some(dir(&["interfaces/"])),
        ["network", "interfaces"] => Some(dir(&["macs/"])),
        ["network", "interfaces", "macs"] => Some(Node::Dir(vec![format!("{}/", r.mac)])),
        ["network", "interfaces", "macs", mac, rest @ ..] if *mac == r.mac => match rest {
            [] => {
                let mut e = vec![
                    "device-number",
                    "local-hostname",
                    "local-ipv4s",
                    "mac",
                    "owner-id",
                ];
                if v.public_ip.is_some() {
                    e.extend(["public-hostname", "public-ipv4s"]);
                }
                e.extend(["security-group-ids", "security-groups"]);
                Some(dir(&e))
            }
            ["device-number"] => leaf("0"),
            ["local-hostname"] => leaf(&hostname),
            ["local-ipv4s"] => leaf(&r.private_ip),
            ["mac"] => leaf(&r.mac),
            ["owner-id"] => leaf(&r.account_id),
            ["public-hostname" | "public-ipv4s"] => v.public_ip.as_deref().and_then(leaf),
            ["security-group-ids"] => leaf(&group_ids.join("\n")),
            ["security-groups"] => leaf(&groups.join("\n")),
            _ => None,
        },
        ["placement"] => Some(dir(&["availability-zone", "region"])),
        ["placement", "availability-zone"] => leaf(&r.zone),
        ["placement", "region"] => leaf(&v.region),
        ["public-hostname" | "public-ipv4"] => v.public_ip.as_deref().and_then(leaf),
        ["public-keys"] => v
            .public_key
            .as_ref()
            .map(|(name, _)| Node::Dir(vec![format!("0={name}")])),
        ["public-keys", "0"] => v.public_key.as_ref().map(|_| dir(&["openssh-key"])),
        ["public-keys", "0", "openssh-key"] => v
            .public_key
            .as_ref()
            .map(|(name, line)| Node::Leaf(format!("{line} {name}\n"))),
        ["reservation-id"] => leaf(&r.reservation_id),
        ["security-groups"] => leaf(&groups.join("\n")),
        _ => None,
    }
}

fn identity_document(v: &InstanceView<'_>) -> String {
    let r = v.record;
    let doc = serde_json::json!({
        "accountId": r.account_id,
        "architecture": v.architecture,
        "availabilityZone": r.zone,
        "billingProducts": null,
        "devpayProductCodes": null,
        "marketplaceProductCodes": null,
        "imageId": r.image_id,
        "instanceId": r.instance_id,
        "instanceType": r.instance_type,
        "kernelId": r.kernel_id,
        "pendingTime": common::time::iso8601_ms(r.launch_ms).replace(".000Z", "Z"),
        "privateIp": r.private_ip,
        "ramdiskId": r.ramdisk_id,
        "region": v.region,
        "version": "2017-09-30",
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Answers one request from the instance `v`.
pub fn answer(
    v: &InstanceView<'_>,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    tokens: &Tokens,
    tokens_required: bool,
    now: i64,
) -> Reply {
    let id = &v.record.instance_id;
    let path = path.split('?').next().unwrap_or("/");
    if method == "PUT" {
        if path.trim_end_matches('/') != "/latest/api/token" {
            return Reply::text(405, "Method Not Allowed");
        }
        // As EC2 does: a request that came through a proxy gets no token.
        if header(headers, "x-forwarded-for").is_some() {
            return Reply::text(403, "Forbidden");
        }
        let ttl = header(headers, "x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|t| t.trim().parse::<i64>().ok());
        return match ttl {
            Some(ttl) if (1..=MAX_TTL).contains(&ttl) => {
                Reply::text(200, tokens.issue(id, ttl, now))
            }
            _ => Reply::text(400, "Bad Request"),
        };
    }
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "Method Not Allowed");
    }
    match header(headers, "x-aws-ec2-metadata-token") {
        Some(token) if !tokens.valid(token, id, now) => return Reply::text(401, "Unauthorized"),
        None if tokens_required => return Reply::text(401, "Unauthorized"),
        _ => {}
    }
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let version = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("");
    if version.is_empty() {
        let mut all: Vec<&str> = VERSIONS.to_vec();
        all.push("latest");
        return Reply::text(200, all.join("\n"));
    }
    if version != "latest" && !VERSIONS.contains(&version) {
        return Reply::not_found();
    }
    let (section, sub) = rest.split_once('/').unwrap_or((rest, ""));
    match section {
        "" => Reply::text(200, "dynamic\nmeta-data\nuser-data"),
        "user-data" if sub.is_empty() => match v.record.user_data.as_deref().map(|u| {
            base64::engine::general_purpose::STANDARD
                .decode(u)
                .unwrap_or_default()
        }) {
            Some(data) => Reply {
                status: 200,
                content_type: "application/octet-stream",
                body: data,
            },
            None => Reply::not_found(),
        },
        "meta-data" => match meta_data(v, sub) {
            Some(Node::Leaf(s)) => Reply::text(200, s),
            Some(Node::Dir(entries)) => Reply::text(200, entries.join("\n")),
            None => Reply::not_found(),
        },
        "dynamic" => match sub.trim_end_matches('/') {
            "" => Reply::text(200, "instance-identity/"),
            "instance-identity" => Reply::text(200, "document"),
            "instance-identity/document" => Reply {
                status: 200,
                content_type: "application/json",
                body: identity_document(v).into_bytes(),
            },
            _ => Reply::not_found(),
        },
        _ => Reply::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instances::InstanceState;

    fn record() -> InstanceRecord {
        InstanceRecord {
            instance_id: "i-0123456789abcdef0".into(),
            reservation_id: "r-0123456789abcdef0".into(),
            account_id: "123456789012".into(),
            image_id: "ami-11111111111111111".into(),
            kernel_id: Some("aki-22222222222222222".into()),
            ramdisk_id: None,
            instance_type: "m1.small".into(),
            zone: "zone-1".into(),
            cluster: "cluster-1".into(),
            node: "nc-1".into(),
            state: InstanceState::Running,
            state_reason: String::new(),
            launch_ms: 1_700_000_000_000,
            changed_ms: 0,
            key_name: Some("lab".into()),
            user_data: Some(
                base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\necho hi\n"),
            ),
            client_token: None,
            launch_index: 0,
            private_ip: "172.31.0.2".into(),
            mac: "d0:0d:01:02:03:04".into(),
            security_groups: vec!["sg-1".into()],
            desired: None,
            disable_api_termination: false,
            root_device: None,
            monitoring: false,
        }
    }

    fn view(r: &InstanceRecord) -> InstanceView<'_> {
        InstanceView {
            record: r,
            image_location: "images/disk.img".into(),
            architecture: "x86_64".into(),
            public_key: Some(("lab".into(), "ssh-ed25519 AAAA".into())),
            security_groups: vec![("sg-1".into(), "default".into())],
            public_ip: Some("192.0.2.10".into()),
            region: "gumtree".into(),
        }
    }

    fn get(v: &InstanceView<'_>, path: &str) -> Reply {
        answer(v, "GET", path, &[], &Tokens::new(b"secret"), false, 1000)
    }

    fn body(r: &Reply) -> &str {
        std::str::from_utf8(&r.body).expect("utf-8")
    }

    #[test]
    fn imdsv1_serves_the_documented_tree() {
        let r = record();
        let v = view(&r);
        assert!(body(&get(&v, "/")).ends_with("2022-09-24\nlatest"));
        assert_eq!(body(&get(&v, "/latest/")), "dynamic\nmeta-data\nuser-data");
        let listing = get(&v, "/latest/meta-data/");
        for key in [
            "ami-id",
            "instance-id",
            "local-ipv4",
            "public-keys/",
            "placement/",
            "security-groups",
        ] {
            assert!(
                body(&listing).lines().any(|l| l == key),
                "{key} in {}",
                body(&listing)
            );
        }
        for (path, want) in [
            ("/latest/meta-data/ami-id", "ami-11111111111111111"),
            ("/latest/meta-data/instance-id", "i-0123456789abcdef0"),
            ("/latest/meta-data/instance-type", "m1.small"),
            ("/latest/meta-data/local-ipv4", "172.31.0.2"),
            ("/latest/meta-data/public-ipv4", "192.0.2.10"),
            (
                "/latest/meta-data/hostname",
                "ip-172-31-0-2.gumtree.compute.internal",
            ),
            (
                "/latest/meta-data/local-hostname",
                "ip-172-31-0-2.gumtree.compute.internal",
            ),
            ("/latest/meta-data/mac", "d0:0d:01:02:03:04"),
            ("/latest/meta-data/placement/availability-zone", "zone-1"),
            ("/latest/meta-data/security-groups", "default"),
            ("/latest/meta-data/public-keys/", "0=lab"),
            (
                "/latest/meta-data/public-keys/0/openssh-key",
                "ssh-ed25519 AAAA lab\n",
            ),
            ("/latest/meta-data/block-device-mapping/root", "/dev/vda"),
            ("/2009-04-04/meta-data/kernel-id", "aki-22222222222222222"),
            (
                "/latest/meta-data/network/interfaces/macs/d0:0d:01:02:03:04/local-ipv4s",
                "172.31.0.2",
            ),
            ("/latest/user-data", "#!/bin/sh\necho hi\n"),
        ] {
            let reply = get(&v, path);
            assert_eq!((reply.status, body(&reply)), (200, want), "{path}");
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&get(&v, "/latest/dynamic/instance-identity/document").body)
                .expect("json");
        assert_eq!(doc["instanceId"], "i-0123456789abcdef0");
        assert_eq!(doc["privateIp"], "172.31.0.2");
        assert_eq!(doc["region"], "gumtree");
        for missing in [
            "/latest/meta-data/ramdisk-id",
            "/latest/meta-data/nope",
            "/1999-01-01/meta-data/",
            "/latest/nope",
        ] {
            assert_eq!(get(&v, missing).status, 404, "{missing}");
        }
        let mut bare = record();
        bare.user_data = None;
        assert_eq!(get(&view(&bare), "/latest/user-data").status, 404);
    }

    #[test]
    fn imdsv2_tokens_are_bound_to_their_instance_and_expire() {
        let r = record();
        let v = view(&r);
        let tokens = Tokens::new(b"secret");
        let ttl = |t: &str| {
            vec![(
                "X-aws-ec2-metadata-token-ttl-seconds".to_string(),
                t.to_string(),
            )]
        };
        let put = answer(
            &v,
            "PUT",
            "/latest/api/token",
            &ttl("60"),
            &tokens,
            true,
            1000,
        );
        assert_eq!(put.status, 200);
        let token = body(&put).to_string();
        let with = vec![("X-aws-ec2-metadata-token".to_string(), token.clone())];
        let ok = answer(
            &v,
            "GET",
            "/latest/meta-data/instance-id",
            &with,
            &tokens,
            true,
            1059,
        );
        assert_eq!((ok.status, body(&ok)), (200, "i-0123456789abcdef0"));
        // Expired, for another instance, forged, or missing where required: 401.
        assert_eq!(
            answer(&v, "GET", "/latest/meta-data/", &with, &tokens, true, 1060).status,
            401
        );
        let mut other = record();
        other.instance_id = "i-0fffffffffffffff0".into();
        assert_eq!(
            answer(
                &view(&other),
                "GET",
                "/latest/meta-data/",
                &with,
                &tokens,
                false,
                1000
            )
            .status,
            401
        );
        assert_eq!(
            answer(
                &v,
                "GET",
                "/latest/meta-data/",
                &with,
                &Tokens::new(b"other"),
                false,
                1000
            )
            .status,
            401
        );
        assert_eq!(
            answer(&v, "GET", "/latest/meta-data/", &[], &tokens, true, 1000).status,
            401
        );
        assert_eq!(
            answer(&v, "GET", "/latest/meta-data/", &[], &tokens, false, 1000).status,
            200
        );
        for bad in ["0", "21601", "x"] {
            assert_eq!(
                answer(
                    &v,
                    "PUT",
                    "/latest/api/token",
                    &ttl(bad),
                    &tokens,
                    true,
                    1000
                )
                .status,
                400,
                "{bad}"
            );
        }
        let mut proxied = ttl("60");
        proxied.push(("X-Forwarded-For".into(), "10.0.0.9".into()));
        assert_eq!(
            answer(
                &v,
                "PUT",
                "/latest/api/token",
                &proxied,
                &tokens,
                true,
                1000
            )
            .status,
            403
        );
        assert_eq!(
            answer(&v, "POST", "/latest/meta-data/", &[], &tokens, false, 1000).status,
            405
        );
    }
}
