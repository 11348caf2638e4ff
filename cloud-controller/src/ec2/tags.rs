//! CreateTags, DeleteTags, DescribeTags, and the tag parts of other calls:
//! `tagSet` in descriptions, `tag:KEY` / `tag-key` / `tag-value` filters and
//! `TagSpecification` at creation.

use super::{xml::Writer, Call, Ec2, Ec2Error, Params};
use crate::tags::Tag;

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
    ec2.cloud.create_tags(
        &call.caller.account_id,
        &ids,
        &tags,
        call.params.flag("DryRun")?,
    )?;
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
    ec2.cloud.delete_tags(
        &call.caller.account_id,
        &ids,
        &tags,
        call.params.flag("DryRun")?,
    )?;
    let mut w = call.writer();
    w.bool("return", true);
    Ok(w.finish())
}

/// DescribeTags.
pub fn describe_tags(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let filters = call.params.filters()?;
    call.dry_run_check()?;
    let tags = ec2.cloud.describe_tags(&call.caller.account_id, &filters)?;
    let mut w = call.writer();
    w.open("tagSet");
    for t in tags {
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
            "instance"
                | "volume"
                | "snapshot"
                | "network-interface"
                | "image"
                | "key-pair"
                | "security-group"
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
