//! AllocateAddress, AssociateAddress, DisassociateAddress, ReleaseAddress,
//! DescribeAddresses: elastic IPs from the cloud's public pool.

use super::{tags::write_tag_set, Call, Ec2, Ec2Error};
use crate::core::addresses::AddressRef;

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
    let filters = p.filters()?;
    call.dry_run_check()?;
    let listed = ec2.cloud.describe_addresses(
        &call.caller.account_id,
        &p.list("PublicIp"),
        &p.list("AllocationId"),
        &filters,
    )?;
    let mut w = call.writer();
    w.open("addressesSet");
    for l in &listed {
        let a = &l.item.address;
        w.open("item")
            .elem("publicIp", &a.public_ip)
            .elem("allocationId", &a.allocation_id)
            .elem("domain", "standard")
            .opt("instanceId", a.instance_id.as_deref())
            .opt("associationId", a.association_id.as_deref())
            .opt("privateIpAddress", l.item.private_ip.as_deref());
        write_tag_set(&mut w, &l.tags);
        w.close("item");
    }
    w.close("addressesSet");
    Ok(w.finish())
}
