//! CreateSecurityGroup, DeleteSecurityGroup, DescribeSecurityGroups,
//! Authorize/RevokeSecurityGroupIngress and Egress, and the groups of
//! RunInstances.

use std::collections::HashMap;

use super::{
    params::Params,
    tags::{specified, write_tag_set},
    xml::Writer,
    Call, Ec2, Ec2Error,
};
use crate::{
    core::{
        describe::Tagged,
        security_groups::{GroupName, NewGroup},
    },
    security_groups::{GroupRef, Rule, SecurityGroup},
};

fn store_error(e: impl std::fmt::Display) -> Ec2Error {
    tracing::error!(error = %e, "security group store failed");
    Ec2Error::internal()
}

fn not_found(what: &str) -> Ec2Error {
    Ec2Error::new(
        "InvalidGroup.NotFound",
        format!("The security group '{what}' does not exist"),
    )
}

impl Ec2 {
    /// The caller's groups (its `default` made if missing).
    pub(super) fn own_groups(&self, call: &Call) -> Result<Vec<SecurityGroup>, Ec2Error> {
        self.cloud
            .security_groups
            .of(&call.caller.account_id)
            .map_err(store_error)
    }

    /// The caller's group with this id or name.
    pub(super) fn own_group(
        &self,
        call: &Call,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<SecurityGroup, Ec2Error> {
        if id.is_none() && name.is_none() {
            return Err(Ec2Error::missing("GroupId"));
        }
        Ok(self.cloud.own_group(&call.caller.account_id, id, name)?)
    }
}

fn protocol(raw: &str) -> Result<String, Ec2Error> {
    Ok(match raw.to_ascii_lowercase().as_str() {
        "tcp" | "6" => "tcp",
        "udp" | "17" => "udp",
        "icmp" | "1" => "icmp",
        "-1" | "all" => "-1",
        _ => {
            return Err(Ec2Error::invalid_value(
                "IpProtocol",
                raw,
                "Use tcp, udp, icmp or -1.",
            ))
        }
    }
    .into())
}

/// `c` as a CIDR block, its host bits cleared as EC2 stores it
/// (`10.0.0.1/8` is `10.0.0.0/8`); InvalidParameterValue when malformed.
fn cidr(c: &str) -> Result<String, Ec2Error> {
    let parsed = c.split_once('/').and_then(|(addr, len)| {
        let addr = addr.parse::<std::net::Ipv4Addr>().ok()?;
        let len = len.parse::<u8>().ok().filter(|l| *l <= 32)?;
        Some((addr, len))
    });
    let (addr, len) = parsed
        .ok_or_else(|| Ec2Error::invalid_value("CidrIp", c, "The CIDR block is malformed."))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ok(format!(
        "{}/{len}",
        std::net::Ipv4Addr::from(u32::from(addr) & mask)
    ))
}

/// Ports of a permission, checked as EC2 checks them.
fn ports(proto: &str, from: Option<i64>, to: Option<i64>) -> Result<(i32, i32), Ec2Error> {
    match proto {
        "-1" => Ok((-1, -1)),
        "icmp" => {
            let (f, t) = (from.unwrap_or(-1), to.unwrap_or(-1));
            if !(-1..=255).contains(&f) || !(-1..=255).contains(&t) {
                return Err(Ec2Error::invalid_value(
                    "IcmpTypeCode",
                    &format!("{f}/{t}"),
                    "ICMP type and code are -1 to 255.",
                ));
            }
            Ok((f as i32, t as i32))
        }
        _ => {
            let (Some(f), Some(t)) = (from, to) else {
                return Err(Ec2Error::missing("FromPort"));
            };
            if !(0..=65535).contains(&f) || !(0..=65535).contains(&t) || f > t {
                return Err(Ec2Error::new(
                    "InvalidParameterValue",
                    format!("Invalid value '{f}-{t}' for portRange. Ports are 0 to 65535, from no greater than to."),
                ));
            }
            Ok((f as i32, t as i32))
        }
    }
}

fn int(p: &Params, name: &str) -> Result<Option<i64>, Ec2Error> {
    match p.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Ec2Error::invalid_value(name, v, "Expected an integer.")),
    }
}

/// The source group a permission names, resolved to an id.
fn source_group(
    ec2: &Ec2,
    call: &Call,
    id: Option<&str>,
    name: Option<&str>,
    owner: Option<&str>,
) -> Result<GroupRef, Ec2Error> {
    let owner = owner
        .filter(|o| !o.is_empty())
        .unwrap_or(&call.caller.account_id);
    // Groups are never shared between accounts: another account's group is
    // not found, whoever owns it (a reference would reveal it and block its
    // owner from deleting it).
    if owner != call.caller.account_id {
        return Err(not_found(id.or(name).unwrap_or_default()));
    }
    let groups = ec2.own_groups(call)?;
    let found = match (id, name) {
        (Some(id), _) => groups.into_iter().find(|g| g.group_id == id),
        (None, Some(name)) => groups.into_iter().find(|g| g.name == name),
        (None, None) => return Err(Ec2Error::missing("GroupId")),
    };
    found
        .map(|g| GroupRef {
            account_id: g.account_id,
            group_id: g.group_id,
        })
        .ok_or_else(|| not_found(id.or(name).unwrap_or_default()))
}

/// The permissions of an Authorize/Revoke call: `IpPermissions.N.*`, or the
/// older flat parameters.
fn permissions(ec2: &Ec2, call: &Call) -> Result<Vec<Rule>, Ec2Error> {
    let p = &call.params;
    let mut out = Vec::new();
    for n in 1..=100 {
        let pre = format!("IpPermissions.{n}");
        let Some(proto) = p.get(&format!("{pre}.IpProtocol")) else {
            break;
        };
        let proto = protocol(proto)?;
        let (from, to) = ports(
            &proto,
            int(p, &format!("{pre}.FromPort"))?,
            int(p, &format!("{pre}.ToPort"))?,
        )?;
        let mut cidrs = Vec::new();
        for m in 1..=100 {
            let Some(c) = p.get(&format!("{pre}.IpRanges.{m}.CidrIp")) else {
                break;
            };
            cidrs.push(cidr(c)?);
        }
        let mut groups = Vec::new();
        for m in 1..=100 {
            let g = format!("{pre}.Groups.{m}");
            let (id, name) = (
                p.get(&format!("{g}.GroupId")),
                p.get(&format!("{g}.GroupName")),
            );
            if id.is_none() && name.is_none() {
                break;
            }
            groups.push(source_group(
                ec2,
                call,
                id,
                name,
                p.get(&format!("{g}.UserId")),
            )?);
        }
        if cidrs.is_empty() && groups.is_empty() {
            return Err(Ec2Error::new(
                "MissingParameter",
                "A permission needs IpRanges or Groups.",
            ));
        }
        out.push(Rule {
            protocol: proto,
            from_port: from,
            to_port: to,
            cidrs,
            groups,
        });
    }
    if !out.is_empty() {
        return Ok(out);
    }
    // The flat form: one protocol and range from a CIDR, or all from a group.
    let source = p.get("SourceSecurityGroupName");
    let cidr_ip = p.get("CidrIp");
    if source.is_none() && cidr_ip.is_none() {
        return Err(Ec2Error::missing("IpPermissions"));
    }
    let proto = protocol(p.get("IpProtocol").unwrap_or("-1"))?;
    let (from, to) = ports(&proto, int(p, "FromPort")?, int(p, "ToPort")?)?;
    let mut rule = Rule {
        protocol: proto,
        from_port: from,
        to_port: to,
        cidrs: Vec::new(),
        groups: Vec::new(),
    };
    if let Some(c) = cidr_ip {
        rule.cidrs.push(cidr(c)?);
    }
    if let Some(name) = source {
        rule.groups.push(source_group(
            ec2,
            call,
            None,
            Some(name),
            p.get("SourceSecurityGroupOwnerId"),
        )?);
    }
    Ok(vec![rule])
}

/// CreateSecurityGroup.
pub fn create_security_group(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let req = NewGroup {
        account_id: call.caller.account_id.clone(),
        name: p.required("GroupName")?.to_string(),
        description: p.required("GroupDescription")?.to_string(),
        tags: specified(p, "security-group")?,
    };
    let (group, tags) = ec2.cloud.create_group(req, p.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true).elem("groupId", &group.group_id);
    write_tag_set(&mut w, &tags);
    Ok(w.finish())
}

/// DeleteSecurityGroup.
pub fn delete_security_group(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let (id, name) = (p.get("GroupId"), p.get("GroupName"));
    if id.is_none() && name.is_none() {
        return Err(Ec2Error::missing("GroupId"));
    }
    let group = ec2.cloud.delete_group(
        &call.caller.account_id,
        GroupName { id, name },
        p.flag("DryRun")?,
    )?;
    let mut w = call.writer();
    w.bool("return", true).elem("groupId", &group.group_id);
    Ok(w.finish())
}

/// Authorize/RevokeSecurityGroupIngress/Egress.
pub fn change_rules(ec2: &Ec2, call: &Call, egress: bool, add: bool) -> Result<String, Ec2Error> {
    let p = &call.params;
    let group = if egress {
        ec2.own_group(call, Some(p.required("GroupId")?), None)?
    } else {
        ec2.own_group(call, p.get("GroupId"), p.get("GroupName"))?
    };
    let rules = permissions(ec2, call)?;
    ec2.cloud
        .change_rules(&group, egress, add, &rules, p.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

fn write_rules(w: &mut Writer, tag: &str, rules: &[Rule], names: &HashMap<String, String>) {
    w.open(tag);
    for r in rules {
        w.open("item").elem("ipProtocol", &r.protocol);
        if r.protocol != "-1" {
            w.elem("fromPort", &r.from_port.to_string())
                .elem("toPort", &r.to_port.to_string());
        }
        w.open("groups");
        for g in &r.groups {
            w.open("item")
                .elem("userId", &g.account_id)
                .elem("groupId", &g.group_id)
                .opt("groupName", names.get(&g.group_id).map(String::as_str))
                .close("item");
        }
        w.close("groups").open("ipRanges");
        for c in &r.cidrs {
            w.open("item").elem("cidrIp", c).close("item");
        }
        w.close("ipRanges")
            .open("ipv6Ranges")
            .close("ipv6Ranges")
            .open("prefixListIds")
            .close("prefixListIds")
            .close("item");
    }
    w.close(tag);
}

/// DescribeSecurityGroups.
pub fn describe_security_groups(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let filters = p.filters()?;
    call.dry_run_check()?;
    let (groups, names_by_id) = ec2.cloud.describe_security_groups(
        &call.caller.account_id,
        &p.list("GroupName"),
        &p.list("GroupId"),
        &filters,
    )?;
    let mut w = call.writer();
    w.open("securityGroupInfo");
    for Tagged { item: g, tags } in &groups {
        w.open("item")
            .elem("ownerId", &g.account_id)
            .elem("groupId", &g.group_id)
            .elem("groupName", &g.name)
            .elem("groupDescription", &g.description);
        write_rules(&mut w, "ipPermissions", &g.ingress, &names_by_id);
        write_rules(&mut w, "ipPermissionsEgress", &g.egress, &names_by_id);
        write_tag_set(&mut w, tags);
        w.close("item");
    }
    w.close("securityGroupInfo");
    Ok(w.finish())
}
