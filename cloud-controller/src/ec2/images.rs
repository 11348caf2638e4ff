//! RegisterImage, DescribeImages, DeregisterImage, DescribeImageAttribute
//! and ModifyImageAttribute.
//!
//! An image is an object in Walrus: `ImageLocation` is `bucket/key`, and the
//! object's metadata `image-type` (`machine`, `kernel` or `ramdisk`; set with
//! `aws s3 cp --metadata image-type=kernel`) says what it is. Registration
//! records the object's SHA-256, which every node checks what it downloads
//! against.

use common::time;

use super::tags::{by_resource, tag_filter_values, write_tag_set};
use super::{params::Filter, xml::Writer, Call, Ec2, Ec2Error};
use crate::core::images::{ImageChange, Launcher, RegisterRequest};
use crate::images::Image;
use crate::tags::Tag;

fn not_found(ids: &[&str]) -> Ec2Error {
    Ec2Error::new(
        "InvalidAMIID.NotFound",
        format!("The image id '[{}]' does not exist", ids.join(", ")),
    )
}

fn store_error(e: impl std::fmt::Display) -> Ec2Error {
    tracing::error!(error = %e, "image store failed");
    Ec2Error::internal()
}

impl Ec2 {
    /// The image `id` if the caller may see it.
    fn visible_image(&self, call: &Call, id: &str) -> Result<Image, Ec2Error> {
        Ok(self.cloud.visible_image(&call.caller.account_id, id)?)
    }

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
        location: p.required("ImageLocation")?.to_string(),
        name: p.required("Name")?.to_string(),
        description: owned("Description"),
        architecture: owned("Architecture"),
        virtualization_type: owned("VirtualizationType"),
        kernel_id: owned("KernelId"),
        ramdisk_id: owned("RamdiskId"),
        root_device_name: owned("RootDeviceName"),
    };
    let image = ec2.cloud.register_image(request, p.flag("DryRun")?).await?;
    let mut w = call.writer();
    w.elem("imageId", &image.image_id);
    Ok(w.finish())
}

fn filter_value(image: &Image, tags: &[Tag], name: &str) -> Result<Vec<String>, Ec2Error> {
    if let Some(values) = tag_filter_values(name, tags) {
        return Ok(values);
    }
    let v = |s: &str| vec![s.to_string()];
    Ok(match name {
        "image-id" => v(&image.image_id),
        "image-type" => v(image.kind.wire()),
        "name" => v(&image.name),
        "description" => v(&image.description),
        "state" => v("available"),
        "owner-id" => v(&image.owner_id),
        "architecture" => v(&image.architecture),
        "is-public" => v(if image.public { "true" } else { "false" }),
        "kernel-id" => image.kernel_id.iter().cloned().collect(),
        "ramdisk-id" => image.ramdisk_id.iter().cloned().collect(),
        "virtualization-type" => v(&image.virtualization_type),
        "root-device-type" => v("instance-store"),
        "manifest-location" => v(&format!("{}/{}", image.bucket, image.key)),
        "hypervisor" => v("kvm"),
        other => {
            return Err(Ec2Error::invalid_value(
                "Filter",
                other,
                "The filter is invalid for DescribeImages.",
            ))
        }
    })
}

fn passes(image: &Image, tags: &[Tag], filters: &[Filter]) -> Result<bool, Ec2Error> {
    for f in filters {
        let have = filter_value(image, tags, &f.name)?;
        if !f.admits(&have) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn write_image(w: &mut Writer, i: &Image, tags: &[Tag]) {
    w.open("item")
        .elem("imageId", &i.image_id)
        .elem("imageLocation", &format!("{}/{}", i.bucket, i.key))
        .elem("imageState", "available")
        .elem("imageOwnerId", &i.owner_id)
        .elem("creationDate", &time::iso8601_ms(i.created_ms))
        .bool("isPublic", i.public)
        .elem("architecture", &i.architecture)
        .elem("imageType", i.kind.wire())
        .opt("kernelId", i.kernel_id.as_deref())
        .opt("ramdiskId", i.ramdisk_id.as_deref())
        .elem("name", &i.name)
        .opt("description", Some(&i.description))
        .elem("rootDeviceType", "instance-store")
        .opt("rootDeviceName", i.root_device_name.as_deref())
        .open("blockDeviceMapping")
        .close("blockDeviceMapping")
        .elem("virtualizationType", &i.virtualization_type)
        .elem("hypervisor", "kvm");
    write_tag_set(w, tags);
    w.close("item");
}

/// DescribeImages.
pub fn describe_images(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let me = &call.caller.account_id;
    let ids = p.list("ImageId");
    let owners = p.list("Owner");
    let executable_by = p.list("ExecutableBy");
    let filters = p.filters()?;
    let max = p.int("MaxResults", 5..=1000)?;
    if max.is_some() && !ids.is_empty() {
        return Err(Ec2Error::new(
            "InvalidParameterCombination",
            "The parameter ImageIds cannot be used with the parameter MaxResults",
        ));
    }
    call.dry_run_check()?;
    let mut images: Vec<Image> = if ids.is_empty() {
        ec2.cloud
            .images
            .list()
            .map_err(store_error)?
            .into_iter()
            .filter(|i| i.launchable_by(me))
            .collect()
    } else {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for id in &ids {
            match ec2.visible_image(call, id) {
                Ok(i) => found.push(i),
                Err(e) if e.code == "InvalidAMIID.NotFound" => missing.push(id.as_str()),
                Err(e) => return Err(e),
            }
        }
        if !missing.is_empty() {
            return Err(not_found(&missing));
        }
        found
    };
    images.retain(|i| {
        owners.is_empty()
            || owners
                .iter()
                .any(|o| (o == "self" && i.owner_id == *me) || *o == i.owner_id)
    });
    images.retain(|i| {
        executable_by.is_empty()
            || executable_by.iter().any(|e| match e.as_str() {
                "all" => i.public,
                "self" => i.launchable_by(me),
                account => {
                    i.public || i.launch_permissions.contains(account) || i.owner_id == account
                }
            })
    });
    let tags = by_resource(ec2, me)?;
    let none = Vec::new();
    let mut kept = Vec::new();
    for i in images {
        if passes(&i, tags.get(&i.image_id).unwrap_or(&none), &filters)? {
            kept.push(i);
        }
    }
    kept.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    kept.dedup_by(|a, b| a.image_id == b.image_id);
    if let Some(token) = p.get("NextToken") {
        kept.retain(|i| i.image_id.as_str() > token);
    }
    let mut next = None;
    if let Some(max) = max {
        if kept.len() > max as usize {
            kept.truncate(max as usize);
            next = kept.last().map(|i| i.image_id.clone());
        }
    }
    let mut w = call.writer();
    w.open("imagesSet");
    for i in &kept {
        write_image(&mut w, i, tags.get(&i.image_id).unwrap_or(&none));
    }
    w.close("imagesSet").opt("nextToken", next.as_deref());
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
        "blockDeviceMapping" => {
            w.open("blockDeviceMapping").close("blockDeviceMapping");
        }
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
