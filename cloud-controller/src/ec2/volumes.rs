//! CreateVolume, DeleteVolume, DescribeVolumes, DescribeVolumeStatus,
//! DescribeVolumeAttribute and ModifyVolumeAttribute: EBS volumes, parsed
//! into the core's requests and rendered as EC2 renders them.

use common::time;

use super::{
    tags::{specified, write_tag_set},
    xml::Writer,
    Call, Ec2, Ec2Error,
};
use crate::{
    core::{
        describe::{Paging, VolumeQuery},
        volumes::NewVolume,
    },
    tags::Tag,
    volumes::{VolumeRecord, VolumeState},
};

/// The fields of a volume every answer shows.
fn write_volume(w: &mut Writer, v: &VolumeRecord, tags: &[Tag]) {
    w.elem("volumeId", &v.volume_id)
        .elem("size", &v.size_gib.to_string())
        .elem("snapshotId", v.snapshot_id.as_deref().unwrap_or(""))
        .elem("availabilityZone", &v.zone)
        .elem("status", v.state.name())
        .elem("createTime", &time::iso8601_ms(v.created_ms))
        .elem("volumeType", &v.volume_type)
        .bool("encrypted", false)
        .bool("multiAttachEnabled", false);
    write_tag_set(w, tags);
}

/// The query of a Describe call; `MaxResults` is at least 5, and more than
/// `most` is taken as `most` (as EC2 does).
fn describe_query(call: &Call, most: i64) -> Result<VolumeQuery, Ec2Error> {
    let p = &call.params;
    Ok(VolumeQuery {
        account_id: call.caller.account_id.clone(),
        ids: p.list("VolumeId"),
        filters: p.filters()?,
        paging: Paging {
            max: p
                .int("MaxResults", 5..=i64::MAX)?
                .map(|m| m.min(most) as usize),
            token: p.get("NextToken").map(str::to_string),
        },
    })
}

/// CreateVolume.
pub async fn create_volume(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let owned = |name: &str| p.get(name).filter(|v| !v.is_empty()).map(str::to_string);
    let request = NewVolume {
        account_id: call.caller.account_id.clone(),
        zone: p.required("AvailabilityZone")?.to_string(),
        size_gib: p.int("Size", 0..=i64::MAX)?.map(|s| s as u64),
        snapshot_id: owned("SnapshotId"),
        volume_type: owned("VolumeType"),
        tags: specified(p, "volume")?,
        client_token: owned("ClientToken"),
    };
    if p.flag("Encrypted")? {
        return Err(Ec2Error::invalid_value(
            "Encrypted",
            "true",
            "This cloud does not encrypt volumes.",
        ));
    }
    let made = ec2.cloud.create_volume(request, p.flag("DryRun")?).await?;
    let mut w = call.writer();
    write_volume(&mut w, &made.volume, &made.tags);
    Ok(w.finish())
}

/// DeleteVolume.
pub async fn delete_volume(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    ec2.cloud
        .delete_volume(
            &call.caller.account_id,
            p.required("VolumeId")?,
            p.flag("DryRun")?,
        )
        .await?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// DescribeVolumes.
pub fn describe_volumes(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let query = describe_query(call, 500)?;
    call.dry_run_check()?;
    let page = ec2.cloud.describe_volumes(query)?;
    let mut w = call.writer();
    w.open("volumeSet");
    for v in &page.items {
        w.open("item");
        write_volume(&mut w, &v.item, &v.tags);
        w.open("attachmentSet");
        if let Some(a) = &v.item.attachment {
            w.open("item")
                .elem("volumeId", &v.item.volume_id)
                .elem("instanceId", &a.instance_id)
                .elem("device", &a.device)
                .elem("status", &a.state)
                .elem("attachTime", &time::iso8601_ms(a.attach_ms))
                .bool("deleteOnTermination", a.delete_on_termination)
                .close("item");
        }
        w.close("attachmentSet").close("item");
    }
    w.close("volumeSet")
        .opt("nextToken", page.next_token.as_deref());
    Ok(w.finish())
}

/// DescribeVolumeStatus: every volume's I/O is enabled once it exists.
pub fn describe_volume_status(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let query = describe_query(call, 1000)?;
    call.dry_run_check()?;
    let page = ec2.cloud.describe_volumes(query)?;
    let mut w = call.writer();
    w.open("volumeStatusSet");
    for v in &page.items {
        let v = &v.item;
        let (status, io) = match v.state {
            VolumeState::Available | VolumeState::InUse => ("ok", "passed"),
            VolumeState::Error => ("impaired", "failed"),
            VolumeState::Creating | VolumeState::Deleting => {
                ("insufficient-data", "insufficient-data")
            }
        };
        w.open("item")
            .elem("volumeId", &v.volume_id)
            .elem("availabilityZone", &v.zone)
            .open("volumeStatus")
            .elem("status", status)
            .open("details")
            .open("item")
            .elem("name", "io-enabled")
            .elem("status", io)
            .close("item")
            .open("item")
            .elem("name", "io-performance")
            .elem("status", "not-applicable")
            .close("item")
            .close("details")
            .close("volumeStatus")
            .open("eventsSet")
            .close("eventsSet")
            .open("actionsSet")
            .close("actionsSet")
            .close("item");
    }
    w.close("volumeStatusSet")
        .opt("nextToken", page.next_token.as_deref());
    Ok(w.finish())
}

/// DescribeVolumeAttribute: `autoEnableIO` or `productCodes`.
pub fn describe_volume_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let attribute = p.required("Attribute")?;
    let v = ec2
        .cloud
        .own_volume(&call.caller.account_id, p.required("VolumeId")?)?;
    call.dry_run_check()?;
    let mut w = call.writer();
    w.elem("volumeId", &v.volume_id);
    match attribute {
        "autoEnableIO" => {
            w.open("autoEnableIO")
                .bool("value", v.auto_enable_io)
                .close("autoEnableIO");
        }
        "productCodes" => {
            w.open("productCodes").close("productCodes");
        }
        other => {
            return Err(Ec2Error::invalid_value(
                "Attribute",
                other,
                "Expected autoEnableIO or productCodes.",
            ))
        }
    }
    Ok(w.finish())
}

/// ModifyVolumeAttribute: `AutoEnableIO.Value`.
pub fn modify_volume_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let id = p.required("VolumeId")?;
    let on = match p.get("AutoEnableIO.Value") {
        Some(_) => p.flag("AutoEnableIO.Value")?,
        None => return Err(Ec2Error::missing("AutoEnableIO")),
    };
    ec2.cloud
        .set_auto_enable_io(&call.caller.account_id, id, on, p.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// The answer of AttachVolume and DetachVolume.
fn attachment_response(call: &Call, v: &VolumeRecord) -> String {
    let mut w = call.writer();
    if let Some(a) = &v.attachment {
        w.elem("volumeId", &v.volume_id)
            .elem("instanceId", &a.instance_id)
            .elem("device", &a.device)
            .elem("status", &a.state)
            .elem("attachTime", &time::iso8601_ms(a.attach_ms))
            .bool("deleteOnTermination", a.delete_on_termination);
    }
    w.finish()
}

/// AttachVolume.
pub async fn attach_volume(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let v = ec2
        .cloud
        .attach_volume(
            &call.caller.account_id,
            p.required("VolumeId")?,
            p.required("InstanceId")?,
            p.required("Device")?,
            p.flag("DryRun")?,
        )
        .await?;
    Ok(attachment_response(call, &v))
}

/// DetachVolume.
pub async fn detach_volume(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let v = ec2
        .cloud
        .detach_volume(
            &call.caller.account_id,
            p.required("VolumeId")?,
            p.get("InstanceId").filter(|i| !i.is_empty()),
            p.flag("Force")?,
            p.flag("DryRun")?,
        )
        .await?;
    Ok(attachment_response(call, &v))
}

fn write_root_task(w: &mut Writer, name: &str, t: &crate::volumes::ReplaceRootTask) {
    w.open(name)
        .elem("replaceRootVolumeTaskId", &t.task_id)
        .elem("instanceId", &t.instance_id)
        .elem("taskState", &t.state)
        .elem("startTime", &time::iso8601_ms(t.start_ms))
        .opt(
            "completeTime",
            t.complete_ms.map(time::iso8601_ms).as_deref(),
        )
        .open("tagSet")
        .close("tagSet")
        .opt("imageId", t.image_id.as_deref())
        .opt(
            "snapshotId",
            t.snapshot_asked.then_some(t.snapshot_id.as_str()),
        )
        .bool("deleteReplacedRootVolume", t.delete_replaced)
        .close(name);
}

/// CreateReplaceRootVolumeTask.
pub async fn create_replace_root_volume_task(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let request = crate::core::replace_root::ReplaceRootRequest {
        account_id: call.caller.account_id.clone(),
        instance_id: p.required("InstanceId")?.to_string(),
        snapshot_id: p
            .get("SnapshotId")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        image_id: p
            .get("ImageId")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        delete_replaced: p.flag("DeleteReplacedRootVolume")?,
    };
    let task = ec2
        .cloud
        .replace_root_volume(request, p.flag("DryRun")?)
        .await?;
    let mut w = call.writer();
    write_root_task(&mut w, "replaceRootVolumeTask", &task);
    Ok(w.finish())
}

/// DescribeReplaceRootVolumeTasks (filter `instance-id`).
pub fn describe_replace_root_volume_tasks(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let mut instance_ids = Vec::new();
    for f in p.filters()? {
        if f.name != "instance-id" {
            return Err(Ec2Error::invalid_value(
                "Filter",
                &f.name,
                "The filter is invalid for DescribeReplaceRootVolumeTasks.",
            ));
        }
        instance_ids.extend(f.values);
    }
    let paging = Paging {
        max: p.int("MaxResults", 1..=50)?.map(|m| m as usize),
        token: p.get("NextToken").map(str::to_string),
    };
    call.dry_run_check()?;
    let (tasks, next) = ec2.cloud.describe_root_tasks(
        &call.caller.account_id,
        &p.list("ReplaceRootVolumeTaskId"),
        &instance_ids,
        &paging,
    )?;
    let mut w = call.writer();
    w.open("replaceRootVolumeTaskSet");
    for t in &tasks {
        write_root_task(&mut w, "item", t);
    }
    w.close("replaceRootVolumeTaskSet")
        .opt("nextToken", next.as_deref());
    Ok(w.finish())
}
