//! RegisterImage, DescribeImages, DeregisterImage, DescribeImageAttribute
//! and ModifyImageAttribute.
//!
//! An image is an object in Walrus: `ImageLocation` is `bucket/key`, and the
//! object's metadata `image-type` (`machine`, `kernel` or `ramdisk`; set with
//! `aws s3 cp --metadata image-type=kernel`) says what it is. Registration
//! records the object's SHA-256, which every node checks what it downloads
//! against.

use std::collections::BTreeSet;

use common::time;
use proto::ObjectRef;
use tonic::Code;

use super::tags::{by_resource, tag_filter_values, write_tag_set};
use super::{params::Filter, xml::Writer, Call, Ec2, Ec2Error};
use crate::images::{Image, ImageError, ImageKind};
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

    /// Checks that the caller may see image `id` (to tag it).
    pub(super) fn visible_image_for_tags(&self, call: &Call, id: &str) -> Result<(), Ec2Error> {
        self.visible_image(call, id).map(|_| ())
    }

    /// The image `id` if the caller owns it.
    fn owned_image(&self, call: &Call, id: &str, what: &str) -> Result<Image, Ec2Error> {
        Ok(self.cloud.owned_image(&call.caller.account_id, id, what)?)
    }
}

/// RegisterImage.
pub async fn register_image(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let location = p.required("ImageLocation")?;
    let name = p.required("Name")?;
    if !(3..=128).contains(&name.chars().count())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c))
    {
        return Err(Ec2Error::invalid_value(
            "Name",
            name,
            "AMI names must be 3 to 128 characters of letters, numbers, ( ) [ ] space . / - ' @ _",
        ));
    }
    let architecture = p.get("Architecture").unwrap_or("x86_64");
    if !matches!(architecture, "x86_64" | "i386" | "arm64") {
        return Err(Ec2Error::invalid_value(
            "Architecture",
            architecture,
            "Use x86_64, i386 or arm64.",
        ));
    }
    let virtualization_type = p.get("VirtualizationType").unwrap_or("paravirtual");
    if !matches!(virtualization_type, "paravirtual" | "hvm") {
        return Err(Ec2Error::invalid_value(
            "VirtualizationType",
            virtualization_type,
            "Use paravirtual or hvm.",
        ));
    }
    let trimmed = location.trim_start_matches("s3://").trim_start_matches('/');
    let (bucket, key) = trimmed
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| {
            Ec2Error::invalid_value("ImageLocation", location, "Expected bucket/key.")
        })?;
    let linked = |param: &str, kind: ImageKind, code: &str| -> Result<Option<String>, Ec2Error> {
        let Some(id) = p.get(param).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        match ec2.visible_image(call, id) {
            Ok(i) if i.kind == kind => Ok(Some(i.image_id)),
            _ => Err(Ec2Error::new(
                code,
                format!("The {} ID '{id}' does not exist", kind.wire()),
            )),
        }
    };
    let kernel_id = linked("KernelId", ImageKind::Kernel, "InvalidAKIID.NotFound")?;
    let ramdisk_id = linked("RamdiskId", ImageKind::Ramdisk, "InvalidARIID.NotFound")?;

    // What Walrus holds there: it must exist, be readable by the caller,
    // and say what kind of image it is.
    let mut walrus = ec2.cloud.walrus().map_err(|e| Ec2Error::unavailable(&e))?;
    let info = walrus
        .head_object(ObjectRef {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
        .await
        .map_err(|s| match s.code() {
            Code::NotFound => Ec2Error::new(
                "InvalidManifest",
                format!("There is no object {bucket}/{key} in Walrus"),
            ),
            _ => Ec2Error::unavailable(&format!("Walrus: {}", s.message())),
        })?
        .into_inner();
    let readable = info.owner_id == call.caller.account_id
        || matches!(
            info.acl.as_str(),
            "public-read" | "public-read-write" | "authenticated-read"
        )
        || (info.acl == "aws-exec-read" && call.caller.admin);
    if !readable {
        return Err(Ec2Error::unauthorized(format!(
            "You are not authorized to read {bucket}/{key}"
        )));
    }
    let kind = match info.metadata.get("image-type") {
        None => ImageKind::Machine,
        Some(t) => ImageKind::from_wire(t).ok_or_else(|| {
            Ec2Error::invalid_value(
                "ImageLocation",
                location,
                &format!(
                    "The object's image-type metadata ({t}) must be machine, kernel or ramdisk."
                ),
            )
        })?,
    };
    if kind != ImageKind::Machine && (kernel_id.is_some() || ramdisk_id.is_some()) {
        return Err(Ec2Error::new(
            "InvalidParameterCombination",
            "A kernel or ramdisk image cannot name a kernel or ramdisk",
        ));
    }
    call.dry_run_check()?;
    let image = Image {
        image_id: common::ids::resource_id(kind.prefix()),
        kind,
        name: name.to_string(),
        description: p.get("Description").unwrap_or("").to_string(),
        owner_id: call.caller.account_id.clone(),
        bucket: bucket.to_string(),
        key: key.to_string(),
        sha256: info.sha256,
        size: info.size,
        architecture: architecture.to_string(),
        kernel_id,
        ramdisk_id,
        root_device_name: p.get("RootDeviceName").map(str::to_string),
        virtualization_type: virtualization_type.to_string(),
        public: false,
        launch_permissions: BTreeSet::new(),
        created_ms: time::unix_ms(),
    };
    ec2.cloud.images.register(&image).map_err(|e| match e {
        ImageError::DuplicateName { .. } => {
            Ec2Error::new("InvalidAMIName.Duplicate", e.to_string())
        }
        ImageError::Store(e) => store_error(e),
    })?;
    tracing::info!(image_id = %image.image_id, kind = image.kind.wire(), location = %trimmed, size = image.size, "image registered");
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
    let mut image = ec2.owned_image(call, id, "modify")?;
    let mut add: Vec<(Option<String>, Option<String>)> = Vec::new();
    let mut remove: Vec<(Option<String>, Option<String>)> = Vec::new();
    for (op, list) in [("Add", &mut add), ("Remove", &mut remove)] {
        for n in 1..=1000 {
            let user = p.get(&format!("LaunchPermission.{op}.{n}.UserId"));
            let group = p.get(&format!("LaunchPermission.{op}.{n}.Group"));
            if user.is_none() && group.is_none() {
                break;
            }
            list.push((user.map(str::to_string), group.map(str::to_string)));
        }
    }
    if let Some(op) = p.get("OperationType") {
        let target = match op {
            "add" => &mut add,
            "remove" => &mut remove,
            other => {
                return Err(Ec2Error::invalid_value(
                    "OperationType",
                    other,
                    "Use add or remove.",
                ))
            }
        };
        target.extend(p.list("UserId").into_iter().map(|u| (Some(u), None)));
        target.extend(p.list("UserGroup").into_iter().map(|g| (None, Some(g))));
    }
    let description = p.get("Description.Value").or_else(|| {
        (p.get("Attribute") == Some("description"))
            .then(|| p.get("Value"))
            .flatten()
    });
    if add.is_empty() && remove.is_empty() && description.is_none() {
        return Err(Ec2Error::missing("LaunchPermission or Description"));
    }
    for (user, group) in add.iter().chain(remove.iter()) {
        if let Some(g) = group {
            if g != "all" {
                return Err(Ec2Error::invalid_value(
                    "Group",
                    g,
                    "The only group is all.",
                ));
            }
        }
        if let Some(u) = user {
            if u.len() != 12 || !u.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Ec2Error::new(
                    "InvalidAMIAttributeItemValue",
                    format!("Invalid attribute item value \"{u}\" for userId item type."),
                ));
            }
        }
    }
    call.dry_run_check()?;
    for (user, group) in add {
        if group.is_some() {
            image.public = true;
        }
        if let Some(u) = user {
            image.launch_permissions.insert(u);
        }
    }
    for (user, group) in remove {
        if group.is_some() {
            image.public = false;
        }
        if let Some(u) = user {
            image.launch_permissions.remove(&u);
        }
    }
    if let Some(d) = description {
        image.description = d.to_string();
    }
    ec2.cloud.images.update(&image).map_err(store_error)?;
    tracing::info!(image_id = %image.image_id, public = image.public, shared = image.launch_permissions.len(), "image attributes changed");
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}
