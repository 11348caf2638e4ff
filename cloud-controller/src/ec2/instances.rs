//! RunInstances, DescribeInstances, TerminateInstances, StopInstances,
//! StartInstances, RebootInstances, GetConsoleOutput, DescribeInstanceTypes.
//!
//! RunInstances records the instances `pending`, has a cluster place them
//! (all or nothing, MaxCount down to MinCount) and answers; the cluster
//! starts them in the background and their states arrive with its reports.

use crate::instances::InstanceState;
use std::collections::HashMap;

use base64::Engine;

use common::time;

use super::{
    tags::{specified, write_tag_set},
    xml::Writer,
    Call, Ec2, Ec2Error,
};
use crate::{
    core::{
        describe::{InstanceQuery, Names, Paging},
        launch::LaunchRequest,
        lifecycle::{InstanceChange, StateChange},
    },
    images::Image,
    instances::InstanceRecord,
    tags::Tag,
};

fn store_error(e: impl std::fmt::Display) -> Ec2Error {
    tracing::error!(error = %e, "instance store failed");
    Ec2Error::internal()
}

impl Ec2 {
    fn own_instances(&self, call: &Call, ids: &[String]) -> Result<Vec<InstanceRecord>, Ec2Error> {
        Ok(self.cloud.own_instances(&call.caller.account_id, ids)?)
    }
}

/// RunInstances: the request as a [`LaunchRequest`], the reservation as
/// EC2 shows it.
pub async fn run_instances(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let image_id = p.required("ImageId")?.to_string();
    let min = p.int("MinCount", 1..=1000)?.unwrap_or(1) as usize;
    let max = p.int("MaxCount", 1..=1000)?.unwrap_or(min as i64) as usize;
    let owned = |name: &str| p.get(name).map(str::to_string);
    let request = LaunchRequest {
        account_id: call.caller.account_id.clone(),
        image_id,
        instance_type: owned("InstanceType"),
        min,
        max,
        kernel_id: owned("KernelId"),
        ramdisk_id: owned("RamdiskId"),
        user_data: owned("UserData"),
        key_name: owned("KeyName"),
        group_names: p.list("SecurityGroup"),
        group_ids: p.list("SecurityGroupId"),
        zone: owned("Placement.AvailabilityZone"),
        client_token: owned("ClientToken"),
        tags: specified(p, "instance")?,
        disable_api_termination: p.flag("DisableApiTermination")?,
        block_devices: p.block_devices()?,
        monitoring: p.flag("Monitoring.Enabled")?,
        dry_run: p.flag("DryRun")?,
    };
    let launched = ec2.cloud.launch(request).await?;
    let names = Names {
        groups: launched.groups,
        public_ips: launched.public_ips,
    };
    Ok(reservation_response(
        call,
        &launched.records,
        &launched.tags,
        &ec2.cloud.settings.region,
        &names,
    ))
}

pub use crate::metadata::private_dns;

/// `<groupSet>` of an instance or reservation.
fn write_groups(w: &mut Writer, ids: &[String], names: &HashMap<String, String>) {
    w.open("groupSet");
    for id in ids {
        w.open("item")
            .elem("groupId", id)
            .opt("groupName", names.get(id).map(String::as_str))
            .close("item");
    }
    w.close("groupSet");
}

fn write_instance(
    w: &mut Writer,
    r: &InstanceRecord,
    volumes: &[crate::volumes::VolumeRecord],
    image: Option<&Image>,
    tags: &[Tag],
    region: &str,
    groups: &Names,
) {
    w.open("item")
        .elem("instanceId", &r.instance_id)
        .elem("imageId", &r.image_id)
        .open("instanceState")
        .elem("code", &r.state_code().to_string())
        .elem("name", r.state.name())
        .close("instanceState")
        .elem("privateDnsName", &private_dns(&r.private_ip, region))
        // No DNS is served: like Eucalyptus without DNS, the name is the address.
        .elem(
            "dnsName",
            groups
                .public_ips
                .get(&r.instance_id)
                .map_or("", String::as_str),
        )
        .elem("reason", &r.state_reason)
        .opt("keyName", r.key_name.as_deref())
        .elem("amiLaunchIndex", &r.launch_index.to_string())
        .open("productCodes")
        .close("productCodes")
        .elem("instanceType", &r.instance_type)
        .elem("launchTime", &time::iso8601_ms(r.launch_ms))
        .open("placement")
        .elem("availabilityZone", &r.zone)
        .elem("groupName", "")
        .elem("tenancy", "default")
        .close("placement")
        .opt("kernelId", r.kernel_id.as_deref())
        .opt("ramdiskId", r.ramdisk_id.as_deref())
        .open("monitoring")
        .elem("state", if r.monitoring { "enabled" } else { "disabled" })
        .close("monitoring")
        .opt("privateIpAddress", Some(&r.private_ip))
        .opt(
            "ipAddress",
            groups.public_ips.get(&r.instance_id).map(String::as_str),
        )
        .elem(
            "architecture",
            image.map_or("x86_64", |i| i.architecture.as_str()),
        )
        .elem(
            "rootDeviceType",
            if r.root_device.is_some() {
                "ebs"
            } else {
                "instance-store"
            },
        )
        .opt("rootDeviceName", r.root_device.as_deref())
        .open("blockDeviceMapping");
    for v in volumes {
        if let Some(a) = &v.attachment {
            w.open("item")
                .elem("deviceName", &a.device)
                .open("ebs")
                .elem("volumeId", &v.volume_id)
                .elem("status", &a.state)
                .elem("attachTime", &time::iso8601_ms(a.attach_ms))
                .bool("deleteOnTermination", a.delete_on_termination)
                .close("ebs")
                .close("item");
        }
    }
    w.close("blockDeviceMapping")
        .elem(
            "virtualizationType",
            image.map_or("paravirtual", |i| i.virtualization_type.as_str()),
        )
        .opt("clientToken", r.client_token.as_deref())
        .elem("hypervisor", "kvm");
    if !r.state_reason.is_empty() {
        let code = r.state_reason.split(':').next().unwrap_or("");
        w.open("stateReason")
            .elem("code", code)
            .elem("message", &r.state_reason)
            .close("stateReason");
    }
    write_groups(w, &r.security_groups, &groups.groups);
    write_tag_set(w, tags);
    w.close("item");
}

fn reservation_response(
    call: &Call,
    records: &[InstanceRecord],
    tags: &[Tag],
    region: &str,
    groups: &Names,
) -> String {
    let mut w = call.writer();
    w.elem("reservationId", &records[0].reservation_id)
        .elem("ownerId", &call.caller.account_id);
    write_groups(&mut w, &records[0].security_groups, &groups.groups);
    w.open("instancesSet");
    for r in records {
        let mine: Vec<Tag> = tags
            .iter()
            .filter(|t| t.resource_id == r.instance_id)
            .cloned()
            .collect();
        write_instance(&mut w, r, &[], None, &mine, region, groups);
    }
    w.close("instancesSet");
    w.finish()
}

/// DescribeInstances: the query as an [`InstanceQuery`], the listing as
/// reservations.
pub fn describe_instances(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let ids = p.list("InstanceId");
    let filters = p.filters()?;
    let max = p.int("MaxResults", 5..=1000)?.map(|m| m as usize);
    call.dry_run_check()?;
    // Eucalyptus' `--instance-ids verbose`: the cloud's administrators see
    // every account's instances (anyone else, just their own).
    let every_account = ids.iter().any(|i| i == "verbose") && call.caller.admin;
    let listing = ec2.cloud.describe_instances(InstanceQuery {
        account_id: call.caller.account_id.clone(),
        every_account,
        ids: ids.into_iter().filter(|i| i != "verbose").collect(),
        filters,
        paging: Paging {
            max,
            token: p.get("NextToken").map(str::to_string),
        },
    })?;
    let kept = &listing.page.items;
    let mut w = call.writer();
    w.open("reservationSet");
    let mut i = 0;
    while i < kept.len() {
        let first = &kept[i].item;
        let rid = first.reservation_id.clone();
        w.open("item")
            .elem("reservationId", &rid)
            .elem("ownerId", &first.account_id);
        write_groups(&mut w, &first.security_groups, &listing.names.groups);
        w.open("instancesSet");
        while i < kept.len() && kept[i].item.reservation_id == rid {
            let r = &kept[i].item;
            write_instance(
                &mut w,
                r,
                listing
                    .volumes
                    .get(&r.instance_id)
                    .map_or(&[][..], Vec::as_slice),
                listing.images.get(&r.image_id),
                &kept[i].tags,
                &ec2.cloud.settings.region,
                &listing.names,
            );
            i += 1;
        }
        w.close("instancesSet").close("item");
    }
    w.close("reservationSet")
        .opt("nextToken", listing.page.next_token.as_deref());
    Ok(w.finish())
}

fn state_change(w: &mut Writer, id: &str, previous: InstanceState, current: InstanceState) {
    w.open("item")
        .elem("instanceId", id)
        .open("currentState")
        .elem("code", &current.code().to_string())
        .elem("name", current.name())
        .close("currentState")
        .open("previousState")
        .elem("code", &previous.code().to_string())
        .elem("name", previous.name())
        .close("previousState")
        .close("item");
}

/// The `InstanceId.N` of a call (one at least).
fn instance_ids(call: &Call) -> Result<Vec<String>, Ec2Error> {
    let ids = call.params.list("InstanceId");
    if ids.is_empty() {
        return Err(Ec2Error::missing("InstanceId"));
    }
    Ok(ids)
}

fn state_changes(call: &Call, changes: &[StateChange]) -> String {
    let mut w = call.writer();
    w.open("instancesSet");
    for c in changes {
        state_change(&mut w, &c.instance_id, c.previous, c.current);
    }
    w.close("instancesSet");
    w.finish()
}

/// TerminateInstances.
pub async fn terminate_instances(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let ids = instance_ids(call)?;
    let dry_run = call.params.flag("DryRun")?;
    let changes = ec2
        .cloud
        .terminate(&call.caller.account_id, &ids, dry_run)
        .await?;
    Ok(state_changes(call, &changes))
}

/// StopInstances and StartInstances.
pub async fn stop_or_start(ec2: &Ec2, call: &Call, stop: bool) -> Result<String, Ec2Error> {
    let ids = instance_ids(call)?;
    let dry_run = call.params.flag("DryRun")?;
    let changes = ec2
        .cloud
        .stop_or_start(&call.caller.account_id, &ids, stop, dry_run)
        .await?;
    Ok(state_changes(call, &changes))
}

/// RebootInstances.
pub async fn reboot_instances(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let ids = instance_ids(call)?;
    let dry_run = call.params.flag("DryRun")?;
    ec2.cloud
        .reboot(&call.caller.account_id, &ids, dry_run)
        .await?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// GetConsoleOutput: the guest's serial log, base64.
pub async fn get_console_output(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    // boto 2 (as old EC2 versions did) sends the id as a list: InstanceId.1.
    let id = match call.params.get("InstanceId") {
        Some(id) => id.to_string(),
        None => call
            .params
            .list("InstanceId")
            .into_iter()
            .next()
            .ok_or_else(|| Ec2Error::missing("InstanceId"))?,
    };
    let dry_run = call.params.flag("DryRun")?;
    let output = ec2
        .cloud
        .console_output(&call.caller.account_id, &id, dry_run)
        .await?;
    let mut w = call.writer();
    w.elem("instanceId", &id)
        .elem("timestamp", &time::iso8601_ms(time::unix_ms()))
        .elem(
            "output",
            &base64::engine::general_purpose::STANDARD.encode(output),
        );
    Ok(w.finish())
}

/// DescribeInstanceTypes, from the admin-editable table.
pub fn describe_instance_types(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let wanted = call.params.list("InstanceType");
    call.dry_run_check()?;
    let types = ec2.cloud.instances.instance_types().map_err(store_error)?;
    for t in &wanted {
        if !types.iter().any(|x| &x.name == t) {
            return Err(Ec2Error::invalid_value(
                "InstanceType",
                t,
                "No such instance type.",
            ));
        }
    }
    let mut w = call.writer();
    w.open("instanceTypeSet");
    for t in types
        .iter()
        .filter(|t| wanted.is_empty() || wanted.contains(&t.name))
    {
        w.open("item")
            .elem("instanceType", &t.name)
            .bool("currentGeneration", true)
            .bool("bareMetal", false)
            .elem("hypervisor", "kvm")
            .open("processorInfo")
            .open("supportedArchitectures")
            .elem("item", "x86_64")
            .close("supportedArchitectures")
            .close("processorInfo")
            .open("vCpuInfo")
            .elem("defaultVCpus", &t.cores.to_string())
            .elem("defaultCores", &t.cores.to_string())
            .elem("defaultThreadsPerCore", "1")
            .close("vCpuInfo")
            .open("memoryInfo")
            .elem("sizeInMiB", &t.memory_mib.to_string())
            .close("memoryInfo")
            .bool("instanceStorageSupported", true)
            .open("instanceStorageInfo")
            .elem("totalSizeInGB", &t.disk_gib.to_string())
            .close("instanceStorageInfo")
            .open("supportedRootDeviceTypes")
            .elem("item", "instance-store")
            .close("supportedRootDeviceTypes")
            .close("item");
    }
    w.close("instanceTypeSet");
    Ok(w.finish())
}

/// ModifyInstanceAttribute: the instance type of a stopped instance (CPU
/// and memory change on its next start).
pub async fn modify_instance_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let id = p.required("InstanceId")?.to_string();
    let protect = match (
        p.get("DisableApiTermination.Value"),
        p.get("Attribute"),
        p.get("Value"),
    ) {
        (Some(v), _, _) | (None, Some("disableApiTermination"), Some(v)) => Some(v),
        _ => None,
    };
    let change = if let Some(v) = protect {
        InstanceChange::Protection(match v.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                // The instance is looked up first, as EC2 does.
                ec2.own_instances(call, std::slice::from_ref(&id))?;
                return Err(Ec2Error::invalid_value(
                    "DisableApiTermination",
                    v,
                    "Expected a boolean.",
                ));
            }
        })
    } else {
        match (
            p.get("InstanceType.Value"),
            p.get("Attribute"),
            p.get("Value"),
        ) {
            (Some(v), _, _) => InstanceChange::Type(v.to_string()),
            (None, Some("instanceType"), Some(v)) => InstanceChange::Type(v.to_string()),
            (None, Some(other), _) if other != "instanceType" => {
                ec2.own_instances(call, std::slice::from_ref(&id))?;
                return Err(Ec2Error::new(
                    "UnsupportedOperation",
                    format!("Changing the {other} attribute is not supported"),
                ));
            }
            _ => {
                ec2.own_instances(call, std::slice::from_ref(&id))?;
                return Err(Ec2Error::missing("InstanceType"));
            }
        }
    };
    ec2.cloud
        .modify_instance(&call.caller.account_id, &id, change, p.flag("DryRun")?)
        .await?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// DescribeInstanceAttribute.
pub fn describe_instance_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let id = call.params.required("InstanceId")?.to_string();
    let attribute = call.params.required("Attribute")?.to_string();
    let r = ec2
        .own_instances(call, std::slice::from_ref(&id))?
        .remove(0);
    call.dry_run_check()?;
    let mut w = call.writer();
    w.elem("instanceId", &id);
    let value = |w: &mut Writer, name: &str, v: Option<&str>| {
        w.open(name).opt("value", v).close(name);
    };
    match attribute.as_str() {
        "instanceType" => value(&mut w, "instanceType", Some(&r.instance_type)),
        "kernel" => value(&mut w, "kernel", r.kernel_id.as_deref()),
        "ramdisk" => value(&mut w, "ramdisk", r.ramdisk_id.as_deref()),
        "userData" => value(&mut w, "userData", r.user_data.as_deref()),
        "disableApiTermination" => value(
            &mut w,
            "disableApiTermination",
            Some(if r.disable_api_termination {
                "true"
            } else {
                "false"
            }),
        ),
        "instanceInitiatedShutdownBehavior" => {
            value(&mut w, "instanceInitiatedShutdownBehavior", Some("stop"))
        }
        "rootDeviceName" => value(
            &mut w,
            "rootDeviceName",
            Some(r.root_device.as_deref().unwrap_or("/dev/vda")),
        ),
        "blockDeviceMapping" => {
            w.open("blockDeviceMapping").close("blockDeviceMapping");
        }
        other => {
            return Err(Ec2Error::invalid_value(
                "Attribute",
                other,
                "Use instanceType, kernel, ramdisk, userData, disableApiTermination, instanceInitiatedShutdownBehavior, rootDeviceName or blockDeviceMapping.",
            ))
        }
    }
    Ok(w.finish())
}

/// GetPasswordData: Linux images have no Windows password, so it is empty
/// (as EC2 answers for them), for the caller's own instances.
pub fn get_password_data(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let id = call.params.required("InstanceId")?.to_string();
    let r = ec2
        .own_instances(call, std::slice::from_ref(&id))?
        .remove(0);
    call.dry_run_check()?;
    let mut w = call.writer();
    w.elem("instanceId", &r.instance_id)
        .elem("timestamp", &time::iso8601_ms(r.launch_ms))
        .elem("passwordData", "");
    Ok(w.finish())
}

/// How long a running instance whose guest has written nothing to its
/// console yet is `initializing` before its instance check fails.
const INITIALIZING_MS: i64 = 5 * 60 * 1000;

/// DescribeInstanceStatus: running instances (all with IncludeAllInstances).
pub fn describe_instance_status(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let ids = p.list("InstanceId");
    let all = p.flag("IncludeAllInstances")?;
    let filters = p.filters()?;
    call.dry_run_check()?;
    let records = if ids.is_empty() {
        ec2.cloud
            .instances
            .list()
            .map_err(store_error)?
            .into_iter()
            .filter(|r| r.account_id == call.caller.account_id)
            .collect()
    } else {
        ec2.own_instances(call, &ids)?
    };
    // Nodes that report in time, by (cluster, node): only for those do the
    // checks pass; a silent node's instances cannot be vouched for. And
    // what each reported of its guests: the instance's own check.
    let mut reporting = std::collections::HashSet::new();
    let mut booted = std::collections::HashSet::new();
    for v in ec2.cloud.registry.nodes() {
        let Some(n) = v.node else { continue };
        if n.state != proto::ServiceState::Enabled as i32 {
            continue;
        }
        booted.extend(
            n.instances
                .iter()
                .filter(|s| s.guest_output)
                .map(|s| s.instance_id.clone()),
        );
        reporting.insert((v.cluster_name, n.name));
    }
    let now = time::unix_ms();
    let mut w = call.writer();
    w.open("instanceStatusSet");
    for r in records {
        if !all && r.state != InstanceState::Running {
            continue;
        }
        let node_up = reporting.contains(&(r.cluster.clone(), r.node.clone()));
        let running = r.state == InstanceState::Running;
        let (system, instance, check) = match (running, node_up) {
            (true, true) if booted.contains(&r.instance_id) => ("ok", "ok", Some("passed")),
            // Nothing on its console since it started: still booting for
            // a while, then impaired (its operating system never came up).
            (true, true) if now - r.changed_ms <= INITIALIZING_MS => {
                ("ok", "initializing", Some("initializing"))
            }
            (true, true) => ("ok", "impaired", Some("failed")),
            (true, false) => ("impaired", "insufficient-data", Some("insufficient-data")),
            _ => ("not-applicable", "not-applicable", None),
        };
        let mut keep = true;
        for f in &filters {
            let have = match f.name.as_str() {
                "availability-zone" => r.zone.clone(),
                "instance-state-name" => r.state.name().to_string(),
                "instance-state-code" => r.state.code().to_string(),
                "system-status.status" => system.to_string(),
                "instance-status.status" => instance.to_string(),
                other => {
                    return Err(Ec2Error::invalid_value(
                        "Filter",
                        other,
                        "The filter is invalid for DescribeInstanceStatus.",
                    ))
                }
            };
            keep &= f.admits(&[&have]);
        }
        if !keep {
            continue;
        }
        w.open("item")
            .elem("instanceId", &r.instance_id)
            .elem("availabilityZone", &r.zone)
            .open("instanceState")
            .elem("code", &r.state_code().to_string())
            .elem("name", r.state.name())
            .close("instanceState");
        for (name, status) in [("systemStatus", system), ("instanceStatus", instance)] {
            w.open(name).elem("status", status).open("details");
            if let Some(check) = check {
                w.open("item")
                    .elem("name", "reachability")
                    .elem("status", check)
                    .close("item");
            }
            w.close("details").close(name);
        }
        w.close("item");
    }
    w.close("instanceStatusSet");
    Ok(w.finish())
}

/// MonitorInstances and UnmonitorInstances: detailed (1-minute) metrics
/// on or off; EC2 answers `pending` and `disabling`.
pub fn monitor_instances(ec2: &Ec2, call: &Call, on: bool) -> Result<String, Ec2Error> {
    let ids = call.params.list("InstanceId");
    if ids.is_empty() {
        return Err(Ec2Error::missing("InstanceId"));
    }
    call.dry_run_check()?;
    let records = ec2
        .cloud
        .set_monitoring(&call.caller.account_id, &ids, on)?;
    let mut w = call.writer();
    w.open("instancesSet");
    for r in &records {
        w.open("item")
            .elem("instanceId", &r.instance_id)
            .open("monitoring")
            .elem("state", if on { "pending" } else { "disabling" })
            .close("monitoring")
            .close("item");
    }
    w.close("instancesSet");
    Ok(w.finish())
}
