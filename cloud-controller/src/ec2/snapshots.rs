//! CreateSnapshot, DeleteSnapshot, DescribeSnapshots and the snapshot
//! attributes (`createVolumePermission`), parsed into the core's requests
//! and rendered as EC2 renders them.

use common::time;

use super::{
    tags::{specified, write_tag_set},
    xml::Writer,
    Call, Ec2, Ec2Error,
};
use crate::{
    core::{
        describe::{Paging, SnapshotQuery},
        snapshots::PermissionChange,
    },
    snapshots::SnapshotRecord,
    tags::Tag,
};

fn write_snapshot(w: &mut Writer, s: &SnapshotRecord, tags: &[Tag]) {
    w.elem("snapshotId", &s.snapshot_id)
        .elem("volumeId", &s.volume_id)
        .elem("status", s.state.name())
        .opt(
            "stateMessage",
            (!s.reason.is_empty()).then_some(s.reason.as_str()),
        )
        .elem("startTime", &time::iso8601_ms(s.start_ms))
        .elem("progress", &s.progress)
        .elem("ownerId", &s.account_id)
        .elem("volumeSize", &s.volume_size_gib.to_string())
        .elem("description", &s.description)
        .bool("encrypted", false)
        .elem("storageTier", "standard");
    write_tag_set(w, tags);
}

/// CreateSnapshot.
pub async fn create_snapshot(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let made = ec2
        .cloud
        .create_snapshot(
            &call.caller.account_id,
            p.required("VolumeId")?,
            p.get("Description").unwrap_or_default(),
            &specified(p, "snapshot")?,
            p.flag("DryRun")?,
        )
        .await?;
    let mut w = call.writer();
    write_snapshot(&mut w, &made.snapshot, &made.tags);
    Ok(w.finish())
}

/// DeleteSnapshot.
pub async fn delete_snapshot(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    ec2.cloud
        .delete_snapshot(
            &call.caller.account_id,
            p.required("SnapshotId")?,
            p.flag("DryRun")?,
        )
        .await?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// DescribeSnapshots.
pub fn describe_snapshots(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let query = SnapshotQuery {
        account_id: call.caller.account_id.clone(),
        ids: p.list("SnapshotId"),
        owners: p.list("Owner"),
        restorable_by: p.list("RestorableBy"),
        filters: p.filters()?,
        paging: Paging {
            max: p
                .int("MaxResults", 5..=i64::MAX)?
                .map(|m| m.min(1000) as usize),
            token: p.get("NextToken").map(str::to_string),
        },
    };
    call.dry_run_check()?;
    let page = ec2.cloud.describe_snapshots(query)?;
    let mut w = call.writer();
    w.open("snapshotSet");
    for s in &page.items {
        w.open("item");
        write_snapshot(&mut w, &s.item, &s.tags);
        w.close("item");
    }
    w.close("snapshotSet")
        .opt("nextToken", page.next_token.as_deref());
    Ok(w.finish())
}

fn attribute(call: &Call) -> Result<&str, Ec2Error> {
    match call.params.required("Attribute")? {
        a @ ("createVolumePermission" | "productCodes") => Ok(a),
        other => Err(Ec2Error::invalid_value(
            "Attribute",
            other,
            "Expected createVolumePermission or productCodes.",
        )),
    }
}

/// DescribeSnapshotAttribute.
pub fn describe_snapshot_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let what = attribute(call)?;
    let s = ec2
        .cloud
        .own_snapshot(&call.caller.account_id, p.required("SnapshotId")?)?;
    call.dry_run_check()?;
    let mut w = call.writer();
    w.elem("snapshotId", &s.snapshot_id);
    if what == "productCodes" {
        w.open("productCodes").close("productCodes");
    } else {
        w.open("createVolumePermission");
        for who in &s.create_volume_permissions {
            w.open("item");
            if who == "all" {
                w.elem("group", "all");
            } else {
                w.elem("userId", who);
            }
            w.close("item");
        }
        w.close("createVolumePermission");
    }
    Ok(w.finish())
}

/// ModifySnapshotAttribute: `CreateVolumePermission.Add/Remove.N.UserId`
/// or `.Group`, or `OperationType` with `UserId.N` / `UserGroup.N`.
pub fn modify_snapshot_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let id = p.required("SnapshotId")?;
    if let Some(a) = p.get("Attribute") {
        if a != "createVolumePermission" {
            return Err(Ec2Error::invalid_value(
                "Attribute",
                a,
                "Only createVolumePermission can be changed.",
            ));
        }
    }
    let mut change = PermissionChange::default();
    for (list, prefix) in [
        (&mut change.add, "CreateVolumePermission.Add"),
        (&mut change.remove, "CreateVolumePermission.Remove"),
    ] {
        for n in 1..=100 {
            let user = p.get(&format!("{prefix}.{n}.UserId"));
            let group = p.get(&format!("{prefix}.{n}.Group"));
            match (user, group) {
                (None, None) => break,
                (Some(u), _) => list.push(u.to_string()),
                (None, Some(g)) => list.push(g.to_string()),
            }
        }
    }
    if let Some(op) = p.get("OperationType") {
        let mut who = p.list("UserId");
        who.extend(p.list("UserGroup"));
        match op {
            "add" => change.add.extend(who),
            "remove" => change.remove.extend(who),
            other => {
                return Err(Ec2Error::invalid_value(
                    "OperationType",
                    other,
                    "Expected add or remove.",
                ))
            }
        }
    }
    if change.add.is_empty() && change.remove.is_empty() {
        return Err(Ec2Error::missing("CreateVolumePermission"));
    }
    ec2.cloud
        .modify_snapshot_permission(&call.caller.account_id, id, change, p.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// ResetSnapshotAttribute.
pub fn reset_snapshot_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let id = p.required("SnapshotId")?;
    if attribute(call)? != "createVolumePermission" {
        return Err(Ec2Error::invalid_value(
            "Attribute",
            "productCodes",
            "Only createVolumePermission can be reset.",
        ));
    }
    ec2.cloud
        .reset_snapshot_permission(&call.caller.account_id, id, p.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}
