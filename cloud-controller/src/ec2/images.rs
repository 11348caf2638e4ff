//! RegisterImage, DescribeImages, DeregisterImage, DescribeImageAttribute
//! and ModifyImageAttribute.
//!
//! An image is an object in Walrus: `ImageLocation` is `bucket/key`, and the
//! object's metadata `image-type` (`machine`, `kernel` or `ramdisk`; set with
//! `aws s3 cp --metadata image-type=kernel`) says what it is. Registration
//! records the object's SHA-256, which every node checks what it downloads
//! against.

use common::time;

use super::tags::write_tag_set;
use super::{xml::Writer, Call, Ec2, Ec2Error};
use crate::core::{
    create_image::CreateImageRequest,
    describe::{ImageQuery, Paging},
    images::{ImageChange, Launcher, RegisterRequest},
};
use crate::images::Image;
use crate::tags::Tag;

impl Ec2 {
    /// The image `id` if the caller owns it.
    fn owned_image(&self, call: &Call, id: &str, what: &str) -> Result<Image, Ec2Error> {
        Ok(self.cloud.owned_image(&call.caller.account_id, id, what)?)
    }
}

/// RegisterImage.
pub async fn register_image(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let owned = |name: &str| p.get(name).map(str::to_string);
    let request = RegisterRequest {
        account_id: call.caller.account_id.clone(),
        admin: call.caller.admin,
        location: owned("ImageLocation").filter(|l| !l.is_empty()),
        name: p.required("Name")?.to_string(),
        description: owned("Description"),
        architecture: owned("Architecture"),
        virtualization_type: owned("VirtualizationType"),
        kernel_id: owned("KernelId"),
        ramdisk_id: owned("RamdiskId"),
        root_device_name: owned("RootDeviceName"),
        block_devices: p.block_devices()?,
    };
    let image = ec2.cloud.register_image(request, p.flag("DryRun")?).await?;
    let mut w = call.writer();
    w.elem("imageId", &image.image_id);
    Ok(w.finish())
}

/// A `blockDeviceMapping` of an image, as EC2 writes it.
pub(super) fn write_block_devices(w: &mut Writer, devices: &[crate::images::BlockDevice]) {
    w.open("blockDeviceMapping");
    for d in devices {
        w.open("item").elem("deviceName", &d.device_name);
        if let Some(v) = &d.virtual_name {
            w.elem("virtualName", v);
        }
        if let Some(e) = &d.ebs {
            w.open("ebs")
                .opt("snapshotId", e.snapshot_id.as_deref())
                .opt(
                    "volumeSize",
                    e.volume_size.map(|s| s.to_string()).as_deref(),
                )
                .bool("deleteOnTermination", e.delete_on_termination)
                .elem("volumeType", e.volume_type.as_deref().unwrap_or("gp2"))
                .bool("encrypted", false)
                .close("ebs");
        }
        if d.no_device {
            w.elem("noDevice", "");
        }
        w.close("item");
    }
    w.close("blockDeviceMapping");
}

/// CreateImage.
pub async fn create_image(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let request = CreateImageRequest {
        account_id: call.caller.account_id.clone(),
        instance_id: p.required("InstanceId")?.to_string(),
        name: p.required("Name")?.to_string(),
        description: p.get("Description").map(str::to_string),
        no_reboot: p.flag("NoReboot")?,
    };
    let image = ec2.cloud.create_image(request, p.flag("DryRun")?).await?;
    let mut w = call.writer();
    w.elem("imageId", &image.image_id);
    Ok(w.finish())
}

fn write_image(w: &mut Writer, i: &Image, tags: &[Tag]) {
    // An EBS-backed image has no object: EC2 shows `owner/name`.
    let location = if i.key.is_empty() {
        format!("{}/{}", i.owner_id, i.name)
    } else {
        format!("{}/{}", i.bucket, i.key)
    };
    w.open("item")
        .elem("imageId", &i.image_id)
        .elem("imageLocation", &location)
        .elem("imageState", i.state.name())
        .elem("imageOwnerId", &i.owner_id)
        .elem("creationDate", &time::iso8601_ms(i.created_ms))
        .bool("isPublic", i.public)
        .elem("architecture", &i.architecture)
        .elem("imageType", i.kind.wire())
        .opt("kernelId", i.kernel_id.as_deref())
        .opt("ramdiskId", i.ramdisk_id.as_deref())
        .elem("name", &i.name)
        .opt("description", Some(&i.description))
        .elem("rootDeviceType", i.root_device_type())
        .opt("rootDeviceName", i.root_device_name.as_deref());
    write_block_devices(w, &i.block_devices);
    w.elem("virtualizationType", &i.virtualization_type)
        .elem("hypervisor", "kvm");
    if !i.state_reason.is_empty() {
        w.open("stateReason")
            .elem("code", "Client.CreateImageFailed")
            .elem("message", &i.state_reason)
            .close("stateReason");
    }
    write_tag_set(w, tags);
    w.close("item");
}

/// DescribeImages: the query as an [`ImageQuery`].
pub fn describe_images(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let query = ImageQuery {
        account_id: call.caller.account_id.clone(),
        ids: p.list("ImageId"),
        owners: p.list("Owner"),
        executable_by: p.list("ExecutableBy"),
        filters: p.filters()?,
        paging: Paging {
            max: p.int("MaxResults", 5..=1000)?.map(|m| m as usize),
            token: p.get("NextToken").map(str::to_string),
        },
    };
    call.dry_run_check()?;
    let page = ec2.cloud.describe_images(query)?;
    let mut w = call.writer();
    w.open("imagesSet");
    for i in &page.items {
        write_image(&mut w, &i.item, &i.tags);
    }
    w.close("imagesSet")
        .opt("nextToken", page.next_token.as_deref());
    Ok(w.finish())
}

/// DeregisterImage.
pub fn deregister_image(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let id = call.params.required("ImageId")?;
    ec2.cloud
        .deregister_image(&call.caller.account_id, id, call.params.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// DescribeImageAttribute: launchPermission, description, kernel, ramdisk,
/// productCodes, blockDeviceMapping.
pub fn describe_image_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let id = call.params.required("ImageId")?;
    let attribute = call.params.required("Attribute")?;
    let image = ec2.owned_image(call, id, "describe the attributes of")?;
    call.dry_run_check()?;
    let mut w = call.writer();
    w.elem("imageId", &image.image_id);
    match attribute {
        "launchPermission" => {
            w.open("launchPermission");
            if image.public {
                w.open("item").elem("group", "all").close("item");
            }
            for account in &image.launch_permissions {
                w.open("item").elem("userId", account).close("item");
            }
            w.close("launchPermission");
        }
        "description" => {
            w.open("description")
                .opt("value", Some(&image.description))
                .close("description");
        }
        "kernel" => {
            w.open("kernel")
                .opt("value", image.kernel_id.as_deref())
                .close("kernel");
        }
        "ramdisk" => {
            w.open("ramdisk")
                .opt("value", image.ramdisk_id.as_deref())
                .close("ramdisk");
        }
        "productCodes" => {
            w.open("productCodes").close("productCodes");
        }
        "blockDeviceMapping" => write_block_devices(&mut w, &image.block_devices),
        other => {
            return Err(Ec2Error::invalid_value(
                "Attribute",
                other,
                "Use launchPermission, description, kernel, ramdisk, productCodes or blockDeviceMapping.",
            ))
        }
    }
    Ok(w.finish())
}

/// ModifyImageAttribute: launch permissions (both the old form with
/// `OperationType`, `UserId.N` and `UserGroup.N`, and the newer
/// `LaunchPermission.Add/Remove.N`) and the description.
pub fn modify_image_attribute(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let id = p.required("ImageId")?;
    let mut change = ImageChange::default();
    let who = |user: Option<&str>, group: Option<&str>| {
        user.map(|u| Launcher::Account(u.to_string()))
            .into_iter()
            .chain(group.map(|g| Launcher::Group(g.to_string())))
    };
    for (op, list) in [("Add", &mut change.add), ("Remove", &mut change.remove)] {
        for n in 1..=1000 {
            let user = p.get(&format!("LaunchPermission.{op}.{n}.UserId"));
            let group = p.get(&format!("LaunchPermission.{op}.{n}.Group"));
            if user.is_none() && group.is_none() {
                break;
            }
            list.extend(who(user, group));
        }
    }
    if let Some(op) = p.get("OperationType") {
        let target = match op {
            "add" => &mut change.add,
            "remove" => &mut change.remove,
            other => {
                ec2.owned_image(call, id, "modify")?;
                return Err(Ec2Error::invalid_value(
                    "OperationType",
                    other,
                    "Use add or remove.",
                ));
            }
        };
        target.extend(p.list("UserId").into_iter().map(Launcher::Account));
        target.extend(p.list("UserGroup").into_iter().map(Launcher::Group));
    }
    change.description = p
        .get("Description.Value")
        .or_else(|| {
            (p.get("Attribute") == Some("description"))
                .then(|| p.get("Value"))
                .flatten()
        })
        .map(str::to_string);
    if change.add.is_empty() && change.remove.is_empty() && change.description.is_none() {
        ec2.owned_image(call, id, "modify")?;
        return Err(Ec2Error::missing("LaunchPermission or Description"));
    }
    ec2.cloud
        .modify_image(&call.caller.account_id, id, change, p.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}
