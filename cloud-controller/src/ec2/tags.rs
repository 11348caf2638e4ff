//! CreateTags, DeleteTags, DescribeTags, and the tag parts of other calls:
//! `tagSet` in descriptions, `tag:KEY` / `tag-key` / `tag-value` filters and
//! `TagSpecification` at creation.

use super::{xml::Writer, Call, Ec2, Ec2Error, Params};
use crate::tags::{Tag, MAX_TAGS};

fn store_error(e: impl std::fmt::Display) -> Ec2Error {
    tracing::error!(error = %e, "tag store failed");
    Ec2Error::internal()
}

/// `{prefix}.N.Key` / `{prefix}.N.Value` pairs, checked as EC2 checks them.
pub fn parse_tags(
    p: &Params,
    prefix: &str,
    need_key: bool,
) -> Result<Vec<(String, Option<String>)>, Ec2Error> {
    let mut out = Vec::new();
    for n in 1..=1000 {
        let key = p.get(&format!("{prefix}.{n}.Key"));
        let value = p.get(&format!("{prefix}.{n}.Value"));
        let Some(key) = key else {
            if value.is_some() {
                return Err(Ec2Error::missing(&format!("{prefix}.{n}.Key")));
            }
            if p.get(&format!("{prefix}.{}.Key", n + 1)).is_some() {
                continue;
            }
            break;
        };
        if key.is_empty() || key.chars().count() > 128 {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                format!("Tag key '{key}' must be 1 to 128 characters."),
            ));
        }
        if need_key && key.to_ascii_lowercase().starts_with("aws:") {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                "Tag keys starting with 'aws:' are reserved for internal use",
            ));
        }
        if value.is_some_and(|v| v.chars().count() > 256) {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                format!("The value of tag '{key}' is longer than 256 characters."),
            ));
        }
        out.push((key.to_string(), value.map(str::to_string)));
    }
    Ok(out)
}

/// The resource type of an id the caller may tag, or the error EC2 gives.
fn resource_type(ec2: &Ec2, call: &Call, id: &str) -> Result<&'static str, Ec2Error> {
    let prefix = id.split('-').next().unwrap_or("");
    match prefix {
        "ami" | "aki" | "ari" | "emi" | "eki" | "eri" => {
            ec2.visible_image_for_tags(call, id)?;
            Ok("image")
        }
        "i" => {
            ec2.own_instances_for_tags(call, id)?;
            Ok("instance")
        }
        "eipalloc" => {
            let mine = ec2
                .cloud
                .addresses
                .of(&call.caller.account_id)
                .map_err(store_error)?;
            if !mine.iter().any(|a| a.allocation_id == id) {
                return Err(Ec2Error::new(
                    "InvalidAllocationID.NotFound",
                    format!("The allocation ID '{id}' does not exist"),
                ));
            }
            Ok("elastic-ip")
        }
        "sg" => {
            ec2.own_group(call, Some(id), None)?;
            Ok("security-group")
        }
        "key" => {
            let mine = ec2
                .cloud
                .keypairs
                .of(&call.caller.account_id)
                .map_err(store_error)?;
            if !mine.iter().any(|k| k.key_pair_id == id) {
                return Err(Ec2Error::new(
                    "InvalidKeyPair.NotFound",
                    format!("The key pair ID '{id}' does not exist"),
                ));
            }
            Ok("key-pair")
        }
        _ => Err(Ec2Error::new(
            "InvalidID",
            format!("The ID '{id}' is not valid"),
        )),
    }
}

/// Sets `tags` on `resources` of the caller, within the per-resource limit.
pub fn apply(
    ec2: &Ec2,
    call: &Call,
    resources: &[(String, &'static str)],
    tags: &[(String, Option<String>)],
) -> Result<(), Ec2Error> {
    let me = &call.caller.account_id;
    let mut all = Vec::new();
    for (id, kind) in resources {
        let existing = ec2.cloud.tags.of(me, id).map_err(store_error)?;
        let new_keys = tags
            .iter()
            .filter(|(k, _)| !existing.iter().any(|t| &t.key == k))
            .count();
        if existing.len() + new_keys > MAX_TAGS {
            return Err(Ec2Error::new(
                "TagLimitExceeded",
                format!(
                    "The maximum number of tags ({MAX_TAGS}) for resource '{id}' has been reached."
                ),
            ));
        }
        for (k, v) in tags {
            all.push(Tag {
                account_id: me.clone(),
                resource_id: id.clone(),
                resource_type: kind.to_string(),
                key: k.clone(),
                value: v.clone().unwrap_or_default(),
            });
        }
    }
    ec2.cloud.tags.set(&all).map_err(store_error)
}

/// CreateTags.
pub fn create_tags(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let ids = call.params.list("ResourceId");
    if ids.is_empty() {
        return Err(Ec2Error::missing("ResourceId"));
    }
    let tags = parse_tags(&call.params, "Tag", true)?;
    if tags.is_empty() {
        return Err(Ec2Error::missing("Tag"));
    }
    let mut resources = Vec::new();
    for id in ids {
        let kind = resource_type(ec2, call, &id)?;
        resources.push((id, kind));
    }
    call.dry_run_check()?;
    apply(ec2, call, &resources, &tags)?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// DeleteTags (all of the caller's tags on a resource when no Tag is given).
pub fn delete_tags(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let ids = call.params.list("ResourceId");
    if ids.is_empty() {
        return Err(Ec2Error::missing("ResourceId"));
    }
    let tags = parse_tags(&call.params, "Tag", false)?;
    for id in &ids {
        resource_type(ec2, call, id)?;
    }
    call.dry_run_check()?;
    let me = &call.caller.account_id;
    for id in &ids {
        if tags.is_empty() {
            for t in ec2.cloud.tags.of(me, id).map_err(store_error)? {
                ec2.cloud
                    .tags
                    .remove(me, id, &t.key, None)
                    .map_err(store_error)?;
            }
        }
        for (k, v) in &tags {
            ec2.cloud
                .tags
                .remove(me, id, k, v.as_deref())
                .map_err(store_error)?;
        }
    }
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// DescribeTags.
pub fn describe_tags(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let filters = call.params.filters()?;
    call.dry_run_check()?;
    let mut out = Vec::new();
    for t in ec2
        .cloud
        .tags
        .all(&call.caller.account_id)
        .map_err(store_error)?
    {
        // Terminated instances leave the records after a while; their tags go with them.
        if t.resource_type == "instance"
            && ec2
                .cloud
                .instances
                .get(&t.resource_id)
                .map_err(store_error)?
                .is_none()
        {
            ec2.cloud.tags.forget(&t.resource_id).map_err(store_error)?;
            continue;
        }
        let mut keep = true;
        for f in &filters {
            let have = match f.name.as_str() {
                "key" => &t.key,
                "value" => &t.value,
                "resource-id" => &t.resource_id,
                "resource-type" => &t.resource_type,
                other => {
                    return Err(Ec2Error::invalid_value(
                        "Filter",
                        other,
                        "The filter is invalid for DescribeTags.",
                    ))
                }
            };
            keep &= f.admits(&[have]);
        }
        if keep {
            out.push(t);
        }
    }
    out.sort_by(|a, b| (&a.resource_id, &a.key).cmp(&(&b.resource_id, &b.key)));
    let mut w = call.writer();
    w.open("tagSet");
    for t in out {
        w.open("item")
            .elem("resourceId", &t.resource_id)
            .elem("resourceType", &t.resource_type)
            .elem("key", &t.key)
            .elem("value", &t.value)
            .close("item");
    }
    w.close("tagSet");
    Ok(w.finish())
}

/// The caller's tags, by resource id.
pub fn by_resource(
    ec2: &Ec2,
    account_id: &str,
) -> Result<std::collections::HashMap<String, Vec<Tag>>, Ec2Error> {
    let mut out: std::collections::HashMap<String, Vec<Tag>> = std::collections::HashMap::new();
    for t in ec2.cloud.tags.all(account_id).map_err(store_error)? {
        out.entry(t.resource_id.clone()).or_default().push(t);
    }
    Ok(out)
}

/// `<tagSet>` of a resource, when it has tags.
pub fn write_tag_set(w: &mut Writer, tags: &[Tag]) {
    if tags.is_empty() {
        return;
    }
    w.open("tagSet");
    for t in tags {
        w.open("item")
            .elem("key", &t.key)
            .elem("value", &t.value)
            .close("item");
    }
    w.close("tagSet");
}

/// What a `tag:KEY`, `tag-key` or `tag-value` filter sees of `tags`;
/// None for other filter names.
pub fn tag_filter_values(name: &str, tags: &[Tag]) -> Option<Vec<String>> {
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(
            tags.iter()
                .filter(|t| t.key == key)
                .map(|t| t.value.clone())
                .collect(),
        );
    }
    match name {
        "tag-key" => Some(tags.iter().map(|t| t.key.clone()).collect()),
        "tag-value" => Some(tags.iter().map(|t| t.value.clone()).collect()),
        _ => None,
    }
}

/// `TagSpecification.N` for `resource_type`: the tags to put on what a call creates.
pub fn specified(
    p: &Params,
    resource_type: &str,
) -> Result<Vec<(String, Option<String>)>, Ec2Error> {
    let mut out = Vec::new();
    for n in 1..=100 {
        let Some(kind) = p.get(&format!("TagSpecification.{n}.ResourceType")) else {
            break;
        };
        let tags = parse_tags(p, &format!("TagSpecification.{n}.Tag"), true)?;
        if kind == resource_type {
            out.extend(tags);
        } else if !matches!(
            kind,
            "instance" | "volume" | "network-interface" | "image" | "key-pair" | "security-group"
        ) {
            return Err(Ec2Error::invalid_value(
                "ResourceType",
                kind,
                "The resource type cannot be tagged here.",
            ));
        }
    }
    Ok(out)
}
