//! DescribeRegions and DescribeAvailabilityZones: one region (this cloud),
//! one zone per cluster controller.

use common::time;
use proto::ServiceState;

use super::{Call, Ec2, Ec2Error};
use crate::{instances::InstanceType, registry::CLUSTER};

/// DescribeRegions.
pub fn describe_regions(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let names = call.params.list("RegionName");
    let region = &ec2.cloud.settings.region;
    if let Some(bad) = names.iter().find(|n| *n != region) {
        return Err(Ec2Error::invalid_value(
            "RegionName",
            bad,
            &format!("This cloud is region {region}."),
        ));
    }
    for f in call.params.filters()? {
        let have = match f.name.as_str() {
            "region-name" => region.clone(),
            "endpoint" => ec2.cloud.settings.endpoint.clone(),
            "opt-in-status" => "opt-in-not-required".into(),
            other => {
                return Err(Ec2Error::invalid_value(
                    "Filter",
                    other,
                    "The filter is invalid for DescribeRegions.",
                ))
            }
        };
        if !f.admits(&[&have]) {
            let mut w = call.writer();
            w.open("regionInfo").close("regionInfo");
            return Ok(w.finish());
        }
    }
    call.dry_run_check()?;
    let mut w = call.writer();
    w.open("regionInfo")
        .open("item")
        .elem("regionName", region)
        .elem("regionEndpoint", &ec2.cloud.settings.endpoint)
        .elem("optInStatus", "opt-in-not-required")
        .close("item")
        .close("regionInfo");
    Ok(w.finish())
}

/// How many instances of `t` fit in the given cores, memory and disk.
pub fn fits(cores: u64, memory_mib: u64, disk_gib: u64, t: &InstanceType) -> u64 {
    (cores / u64::from(t.cores).max(1))
        .min(memory_mib / t.memory_mib.max(1))
        .min(disk_gib / t.disk_gib.max(1))
}

fn verbose_line(w: &mut super::xml::Writer, name: &str, state: &str) {
    w.open("item")
        .elem("zoneName", name)
        .elem("zoneState", state)
        .close("item");
}

/// DescribeAccountAttributes: the platform (EC2, no default VPC) and the
/// account's instance limit (its quota, or what the cloud could hold of the
/// smallest instance type).
pub fn describe_account_attributes(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    const KNOWN: [&str; 6] = [
        "supported-platforms",
        "default-vpc",
        "max-instances",
        "max-elastic-ips",
        "vpc-max-elastic-ips",
        "vpc-max-security-groups-per-interface",
    ];
    let mut names = call.params.list("AttributeName");
    if let Some(bad) = names.iter().find(|n| !KNOWN.contains(&n.as_str())) {
        return Err(Ec2Error::invalid_value(
            "AttributeName",
            bad,
            "Unknown account attribute.",
        ));
    }
    call.dry_run_check()?;
    if names.is_empty() {
        names = KNOWN.iter().map(|s| s.to_string()).collect();
    }
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "account attributes unreadable");
        Ec2Error::internal()
    };
    let account = ec2
        .cloud
        .accounts
        .find(&call.caller.account_id)
        .map_err(|e| internal(&e))?;
    let max_instances = match account.quota.instances {
        Some(q) => u64::from(q),
        None => {
            let smallest = ec2
                .cloud
                .instances
                .instance_types()
                .map_err(|e| internal(&e))?
                .into_iter()
                .min_by_key(|t| (t.cores, t.memory_mib, t.disk_gib));
            smallest.map_or(0, |t| {
                ec2.cloud
                    .registry
                    .nodes()
                    .iter()
                    .filter_map(|n| n.node.as_ref())
                    .filter(|n| n.state == ServiceState::Enabled as i32 && !n.disabled)
                    .map(|n| {
                        let r = n.resources.unwrap_or_default();
                        fits(
                            r.cores_total.into(),
                            r.memory_mib_total,
                            r.disk_gib_total,
                            &t,
                        )
                    })
                    .sum()
            })
        }
    };
    let mut w = call.writer();
    w.open("accountAttributeSet");
    for name in &names {
        let values: Vec<String> = match name.as_str() {
            "supported-platforms" => vec!["EC2".into()],
            "default-vpc" => vec!["none".into()],
            "max-instances" => vec![max_instances.to_string()],
            "max-elastic-ips" | "vpc-max-elastic-ips" => {
                vec![ec2.cloud.addresses.pool_size().to_string()]
            }
            _ => vec!["5".into()],
        };
        w.open("item")
            .elem("attributeName", name)
            .open("attributeValueSet");
        for v in values {
            w.open("item").elem("attributeValue", &v).close("item");
        }
        w.close("attributeValueSet").close("item");
    }
    w.close("accountAttributeSet");
    Ok(w.finish())
}

/// DescribeAvailabilityZones.
pub fn describe_availability_zones(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let region = &ec2.cloud.settings.region;
    let mut zones: Vec<(String, bool)> = ec2
        .cloud
        .registry
        .services(time::unix_ms())
        .into_iter()
        .filter(|s| s.service_type == CLUSTER)
        .map(|s| (s.partition, s.state == ServiceState::Enabled as i32))
        .collect();
    zones.sort();
    zones.dedup_by(|a, b| {
        if a.0 == b.0 {
            b.1 |= a.1;
            true
        } else {
            false
        }
    });
    let mut names = call.params.list("ZoneName");
    // Eucalyptus: `verbose` adds, for the cloud's admin, free/max per instance type.
    let verbose = names.iter().any(|n| n == "verbose") && call.caller.admin;
    names.retain(|n| n != "verbose");
    let types = if verbose {
        let mut t = ec2.cloud.instances.instance_types().map_err(|e| {
            tracing::error!(error = %e, "instance types unreadable");
            Ec2Error::internal()
        })?;
        t.sort_by_key(|t| (t.cores, t.memory_mib, t.disk_gib, t.name.clone()));
        t
    } else {
        Vec::new()
    };
    let nodes = ec2.cloud.registry.nodes();
    for n in &names {
        if !zones.iter().any(|(z, _)| z == n) {
            return Err(Ec2Error::invalid_value(
                "ZoneName",
                n,
                &format!("The zone '{n}' does not exist in region {region}."),
            ));
        }
    }
    let filters = call.params.filters()?;
    call.dry_run_check()?;
    let mut w = call.writer();
    w.open("availabilityZoneInfo");
    'zones: for (zone, up) in &zones {
        if !names.is_empty() && !names.contains(zone) {
            continue;
        }
        let state = if *up { "available" } else { "unavailable" };
        for f in &filters {
            let have = match f.name.as_str() {
                "zone-name" => zone.as_str(),
                "state" => state,
                "region-name" => region.as_str(),
                "zone-type" => "availability-zone",
                other => {
                    return Err(Ec2Error::invalid_value(
                        "Filter",
                        other,
                        "The filter is invalid for DescribeAvailabilityZones.",
                    ))
                }
            };
            if !f.admits(&[have]) {
                continue 'zones;
            }
        }
        w.open("item")
            .elem("zoneName", zone)
            .elem("zoneState", state)
            .elem("regionName", region)
            .elem("zoneType", "availability-zone")
            .elem("groupName", region)
            .elem("networkBorderGroup", region)
            .elem("optInStatus", "opt-in-not-required")
            .open("messageSet")
            .close("messageSet")
            .close("item");
        if verbose {
            verbose_line(&mut w, "|- vm types", "free / max   cpu   ram  disk");
            for t in &types {
                let (mut free, mut max) = (0u64, 0u64);
                for n in nodes.iter().filter(|n| &n.zone == zone) {
                    let Some(node) = &n.node else { continue };
                    // A node out of placement takes no launch.
                    if node.state != ServiceState::Enabled as i32 || node.disabled {
                        continue;
                    }
                    let r = node.resources.unwrap_or_default();
                    free += fits(r.cores_free.into(), r.memory_mib_free, r.disk_gib_free, t);
                    max += fits(
                        r.cores_total.into(),
                        r.memory_mib_total,
                        r.disk_gib_total,
                        t,
                    );
                }
                verbose_line(
                    &mut w,
                    &format!("|- {}", t.name),
                    &format!(
                        "{free:04} / {max:04} {:>4} {:>5} {:>5}",
                        t.cores, t.memory_mib, t.disk_gib
                    ),
                );
            }
        }
    }
    w.close("availabilityZoneInfo");
    Ok(w.finish())
}
