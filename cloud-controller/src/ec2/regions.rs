//! DescribeRegions and DescribeAvailabilityZones: one region (this cloud),
//! one zone per cluster controller.

use common::time;
use proto::ServiceState;

use super::{params::matches, Call, Ec2, Ec2Error};
use crate::registry::CLUSTER;

/// DescribeRegions.
pub fn describe_regions(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let names = call.params.list("RegionName");
    let region = &ec2.settings.region;
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
            "endpoint" => ec2.settings.endpoint.clone(),
            "opt-in-status" => "opt-in-not-required".into(),
            other => {
                return Err(Ec2Error::invalid_value(
                    "Filter",
                    other,
                    "The filter is invalid for DescribeRegions.",
                ))
            }
        };
        if !f.values.iter().any(|v| matches(v, &have)) {
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
        .elem("regionEndpoint", &ec2.settings.endpoint)
        .elem("optInStatus", "opt-in-not-required")
        .close("item")
        .close("regionInfo");
    Ok(w.finish())
}

/// DescribeAvailabilityZones.
pub fn describe_availability_zones(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let region = &ec2.settings.region;
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
    let names = call.params.list("ZoneName");
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
            if !f.values.iter().any(|v| matches(v, have)) {
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
    }
    w.close("availabilityZoneInfo");
    Ok(w.finish())
}
