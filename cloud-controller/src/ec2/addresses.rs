//! AllocateAddress, AssociateAddress, DisassociateAddress, ReleaseAddress,
//! DescribeAddresses: elastic IPs from the cloud's public pool.

use super::{
    tags::{by_resource, tag_filter_values, write_tag_set},
    Call, Ec2, Ec2Error,
};
use crate::core::addresses::AddressRef;

fn store_error(e: impl std::fmt::Display) -> Ec2Error {
    tracing::error!(error = %e, "address store failed");
    Ec2Error::internal()
}

/// The address a call names by `PublicIp` or `AllocationId`.
fn named(call: &Call) -> Result<AddressRef<'_>, Ec2Error> {
    let p = &call.params;
    match (p.get("PublicIp"), p.get("AllocationId")) {
        (Some(ip), _) => Ok(AddressRef::PublicIp(ip)),
        (None, Some(id)) => Ok(AddressRef::Allocation(id)),
        (None, None) => Err(Ec2Error::missing("PublicIp")),
    }
}

/// AllocateAddress.
pub fn allocate_address(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let domain = call.params.get("Domain").unwrap_or("standard");
    if !matches!(domain, "standard" | "vpc") {
        return Err(Ec2Error::invalid_value(
            "Domain",
            domain,
            "Use standard or vpc.",
        ));
    }
    let a = ec2
        .cloud
        .allocate_address(&call.caller.account_id, call.params.flag("DryRun")?)?;
    let mut w = call.writer();
    w.elem("publicIp", &a.public_ip)
        .elem("domain", "standard")
        .elem("allocationId", &a.allocation_id);
    Ok(w.finish())
}

/// AssociateAddress: moves the address to the instance (from wherever it was).
pub fn associate_address(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let which = named(call)?;
    let id = call.params.required("InstanceId")?;
    let association = ec2.cloud.associate_address(
        &call.caller.account_id,
        which,
        id,
        call.params.flag("DryRun")?,
    )?;
    let mut w = call.writer();
    w.bool("return", true).elem("associationId", &association);
    Ok(w.finish())
}

/// DisassociateAddress.
pub fn disassociate_address(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let which = match call.params.get("AssociationId") {
        Some(id) => AddressRef::Association(id),
        None => named(call)?,
    };
    ec2.cloud
        .disassociate_address(&call.caller.account_id, which, call.params.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// ReleaseAddress (an associated address is disassociated first, as in EC2-Classic).
pub fn release_address(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let which = named(call)?;
    ec2.cloud
        .release_address(&call.caller.account_id, which, call.params.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// DescribeAddresses.
pub fn describe_addresses(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let ips = p.list("PublicIp");
    let ids = p.list("AllocationId");
    let filters = p.filters()?;
    call.dry_run_check()?;
    let me = &call.caller.account_id;
    let mine = ec2.cloud.addresses.of(me).map_err(store_error)?;
    for ip in &ips {
        if !mine.iter().any(|a| &a.public_ip == ip) {
            return Err(Ec2Error::new(
                "InvalidAddress.NotFound",
                format!("Address '{ip}' not found."),
            ));
        }
    }
    for id in &ids {
        if !mine.iter().any(|a| &a.allocation_id == id) {
            return Err(Ec2Error::new(
                "InvalidAllocationID.NotFound",
                format!("The allocation ID '{id}' does not exist"),
            ));
        }
    }
    let tags = by_resource(ec2, me)?;
    let none = Vec::new();
    let mut w = call.writer();
    w.open("addressesSet");
    for a in &mine {
        if (!ips.is_empty() && !ips.contains(&a.public_ip))
            || (!ids.is_empty() && !ids.contains(&a.allocation_id))
        {
            continue;
        }
        let private_ip = a
            .instance_id
            .as_ref()
            .and_then(|i| ec2.cloud.instances.get(i).ok().flatten())
            .map(|r| r.private_ip)
            .filter(|ip| !ip.is_empty());
        let mine_tags = tags.get(&a.allocation_id).unwrap_or(&none);
        let mut keep = true;
        for f in &filters {
            let have: Vec<String> = match tag_filter_values(&f.name, mine_tags) {
                Some(v) => v,
                None => match f.name.as_str() {
                    "public-ip" => vec![a.public_ip.clone()],
                    "allocation-id" => vec![a.allocation_id.clone()],
                    "instance-id" => a.instance_id.iter().cloned().collect(),
                    "association-id" => a.association_id.iter().cloned().collect(),
                    "private-ip-address" => private_ip.iter().cloned().collect(),
                    "domain" => vec!["standard".into()],
                    other => {
                        return Err(Ec2Error::invalid_value(
                            "Filter",
                            other,
                            "The filter is invalid for DescribeAddresses.",
                        ))
                    }
                },
            };
            keep &= f.admits(&have);
        }
        if !keep {
            continue;
        }
        w.open("item")
            .elem("publicIp", &a.public_ip)
            .elem("allocationId", &a.allocation_id)
            .elem("domain", "standard")
            .opt("instanceId", a.instance_id.as_deref())
            .opt("associationId", a.association_id.as_deref())
            .opt("privateIpAddress", private_ip.as_deref());
        write_tag_set(&mut w, mine_tags);
        w.close("item");
    }
    w.close("addressesSet");
    Ok(w.finish())
}
