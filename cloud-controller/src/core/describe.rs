//! The Describe operations: what an account sees of each kind of resource,
//! narrowed by ids and EC2's filters (`*` and `?` wildcards, tag filters)
//! and paged, each resource with its tags. The wire layers only parse the
//! query and render the listing.

use std::collections::HashMap;

use super::{Cloud, CoreError, IdKind};
use crate::{
    addresses::Address,
    images::Image,
    instances::InstanceRecord,
    keypairs::KeyPair,
    metadata::private_dns,
    security_groups::{Rule, SecurityGroup},
    snapshots::SnapshotRecord,
    tags::Tag,
    volumes::VolumeRecord,
};

/// One filter: a name and the values any of which must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    /// Whether any of the filter's values (with `*` and `?` wildcards)
    /// matches any of what a resource has for the filter's name.
    pub fn admits<S: AsRef<str>>(&self, have: &[S]) -> bool {
        self.values
            .iter()
            .any(|want| have.iter().any(|h| matches(want, h.as_ref())))
    }
}

/// True when `value` matches a filter value, with `*` and `?` wildcards
/// (`\` takes the next character as it is).
pub fn matches(pattern: &str, value: &str) -> bool {
    fn go(p: &[char], v: &[char]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some('\\'), _) if p.len() > 1 => v.first() == Some(&p[1]) && go(&p[2..], &v[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    go(&p, &v)
}

/// A resource as a Describe call lists it: with its tags.
#[derive(Debug, Clone)]
pub struct Tagged<T> {
    pub item: T,
    pub tags: Vec<Tag>,
}

/// `MaxResults` and `NextToken` of a paged Describe call.
#[derive(Debug, Clone, Default)]
pub struct Paging {
    pub max: Option<usize>,
    pub token: Option<String>,
}

/// A page of a listing, and the token of the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<Tagged<T>>,
    pub next_token: Option<String>,
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

/// Keeps the `items` every filter admits, each with its tags (taken from
/// `tags` by the id `id_of` gives). `own` says what a filter name sees of
/// an item; a name it does not know (None) is refused as EC2's `call` does.
fn select<T>(
    items: Vec<T>,
    tags: &mut HashMap<String, Vec<Tag>>,
    filters: &[Filter],
    call: &str,
    id_of: impl Fn(&T) -> &str,
    own: impl Fn(&T, &str) -> Option<Vec<String>>,
) -> Result<Vec<Tagged<T>>, CoreError> {
    let mut kept = Vec::new();
    for item in items {
        let its_tags = tags.remove(id_of(&item)).unwrap_or_default();
        let mut keep = true;
        for f in filters {
            let have = match tag_filter_values(&f.name, &its_tags) {
                Some(v) => v,
                None => own(&item, &f.name).ok_or_else(|| CoreError::InvalidValue {
                    param: "Filter",
                    value: f.name.clone(),
                    why: format!("The filter is invalid for {call}."),
                })?,
            };
            if !f.admits(&have) {
                keep = false;
                break;
            }
        }
        if keep {
            kept.push(Tagged {
                item,
                tags: its_tags,
            });
        }
    }
    Ok(kept)
}

/// The resources `ids` name, each looked up by `lookup`; the ids of every
/// one not found go into one `NotFound` of `kind` (other errors at once).
fn named<T>(
    ids: &[String],
    kind: IdKind,
    mut lookup: impl FnMut(&str) -> Result<T, CoreError>,
) -> Result<Vec<T>, CoreError> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for id in ids {
        match lookup(id) {
            Ok(t) => found.push(t),
            Err(CoreError::NotFound { .. }) => missing.push(id.clone()),
            Err(e) => return Err(e),
        }
    }
    if !missing.is_empty() {
        return Err(CoreError::NotFound { kind, ids: missing });
    }
    Ok(found)
}

/// The first `max` of `kept` (in id order, past any token already), with
/// the last one's id as the next page's token when more remain.
fn first_page<T>(
    mut kept: Vec<Tagged<T>>,
    max: Option<usize>,
    id_of: impl Fn(&T) -> &str,
) -> Page<T> {
    let mut next_token = None;
    if let Some(max) = max {
        if kept.len() > max {
            kept.truncate(max);
            next_token = kept.last().map(|t| id_of(&t.item).to_string());
        }
    }
    Page {
        items: kept,
        next_token,
    }
}

fn one(s: &str) -> Option<Vec<String>> {
    Some(vec![s.to_string()])
}

fn all(o: &Option<String>) -> Option<Vec<String>> {
    Some(o.iter().cloned().collect())
}

/// A DescribeInstances query.
#[derive(Debug, Clone, Default)]
pub struct InstanceQuery {
    pub account_id: String,
    /// Every account's instances (the cloud's administrators only).
    pub every_account: bool,
    pub ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub paging: Paging,
}

/// Names shown with instances: their groups' names, their public addresses.
#[derive(Debug, Default)]
pub struct Names {
    /// Group id to name.
    pub groups: HashMap<String, String>,
    /// Instance id to elastic IP.
    pub public_ips: HashMap<String, String>,
}

/// A page of instances, in launch order, with what is shown beside them.
#[derive(Debug)]
pub struct InstanceListing {
    pub page: Page<InstanceRecord>,
    pub names: Names,
    /// The images of the listed instances, by id.
    pub images: HashMap<String, Image>,
    /// The volumes attached to the listed instances, by instance id.
    pub volumes: HashMap<String, Vec<VolumeRecord>>,
}

/// A DescribeImages query.
#[derive(Debug, Clone, Default)]
pub struct ImageQuery {
    pub account_id: String,
    pub ids: Vec<String>,
    /// Owner account ids, or `self`.
    pub owners: Vec<String>,
    /// Account ids, `self` or `all`.
    pub executable_by: Vec<String>,
    pub filters: Vec<Filter>,
    pub paging: Paging,
}

/// An elastic IP as listed: with the private address of its instance.
#[derive(Debug, Clone)]
pub struct ListedAddress {
    pub address: Address,
    pub private_ip: Option<String>,
}

/// What filter `what` (after `ip-permission.`) sees of `rules`.
fn rule_values(rules: &[Rule], what: &str) -> Vec<String> {
    rules
        .iter()
        .flat_map(|r| -> Vec<String> {
            match what {
                "protocol" => vec![r.protocol.clone()],
                "from-port" => vec![r.from_port.to_string()],
                "to-port" => vec![r.to_port.to_string()],
                "cidr" => r.cidrs.clone(),
                "group-id" => r.groups.iter().map(|g| g.group_id.clone()).collect(),
                _ => Vec::new(),
            }
        })
        .collect()
}

impl Cloud {
    /// The tags of `account_id`, by resource id.
    pub fn tags_by_resource(
        &self,
        account_id: &str,
    ) -> Result<HashMap<String, Vec<Tag>>, CoreError> {
        let mut out: HashMap<String, Vec<Tag>> = HashMap::new();
        for t in self.tags.all(account_id)? {
            out.entry(t.resource_id.clone()).or_default().push(t);
        }
        Ok(out)
    }

    /// DescribeInstances: ids name instances that must be the caller's; an
    /// `instance-id` filter without wildcards is looked up, not scanned
    /// for. Tags and group names are as each instance's own account has
    /// them.
    pub fn describe_instances(&self, q: InstanceQuery) -> Result<InstanceListing, CoreError> {
        if q.paging.max.is_some() && !q.ids.is_empty() {
            return Err(CoreError::Combination(
                "The parameter instancesSet cannot be used with the parameter maxResults".into(),
            ));
        }
        let mine = |r: &InstanceRecord| q.every_account || r.account_id == q.account_id;
        let named_by_filter: Option<&Vec<String>> = q
            .filters
            .iter()
            .find(|f| f.name == "instance-id")
            .filter(|f| f.values.iter().all(|v| !v.contains(['*', '?', '\\'])))
            .map(|f| &f.values);
        let records: Vec<InstanceRecord> = match (q.ids.is_empty(), named_by_filter) {
            (false, _) => self.own_instances(&q.account_id, &q.ids)?,
            (true, Some(named)) => {
                let mut found = Vec::new();
                for id in named {
                    // A filter never fails on an id that is not there.
                    if let Some(r) = self.instances.get(id)?.filter(|r| mine(r)) {
                        found.push(r);
                    }
                }
                found.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
                found.dedup_by(|a, b| a.instance_id == b.instance_id);
                found
            }
            (true, None) if q.every_account => self.instances.list()?,
            (true, None) => self.instances.of_account(&q.account_id),
        };
        let mut accounts: Vec<&str> = vec![q.account_id.as_str()];
        if q.every_account {
            accounts.extend(records.iter().map(|r| r.account_id.as_str()));
            accounts.sort_unstable();
            accounts.dedup();
        }
        let mut tags = HashMap::new();
        let mut groups = HashMap::new();
        for account in accounts {
            tags.extend(self.tags_by_resource(account)?);
            groups.extend(
                self.security_groups
                    .of(account)?
                    .into_iter()
                    .map(|g| (g.group_id, g.name)),
            );
        }
        let names = Names {
            groups,
            public_ips: self.addresses.by_instance()?,
        };
        let region = &self.settings.region;
        let mut kept = select(
            records,
            &mut tags,
            &q.filters,
            "DescribeInstances",
            |r| &r.instance_id,
            |r, name| match name {
                "instance-id" => one(&r.instance_id),
                "instance-state-name" => one(r.state.name()),
                "instance-state-code" => one(&r.state.code().to_string()),
                "image-id" => one(&r.image_id),
                "instance-type" => one(&r.instance_type),
                "availability-zone" => one(&r.zone),
                "private-ip-address" => one(&r.private_ip),
                "private-dns-name" => one(&private_dns(&r.private_ip, region)),
                "group-id" | "instance.group-id" => Some(r.security_groups.clone()),
                "ip-address" => all(&names.public_ips.get(&r.instance_id).cloned()),
                "group-name" | "instance.group-name" => Some(
                    r.security_groups
                        .iter()
                        .filter_map(|id| names.groups.get(id).cloned())
                        .collect(),
                ),
                "key-name" => all(&r.key_name),
                "reservation-id" => one(&r.reservation_id),
                "kernel-id" => all(&r.kernel_id),
                "ramdisk-id" => all(&r.ramdisk_id),
                "client-token" => all(&r.client_token),
                "owner-id" => one(&r.account_id),
                _ => None,
            },
        )?;
        kept.sort_by(|a, b| {
            let (a, b) = (&a.item, &b.item);
            (a.launch_ms, &a.reservation_id, a.launch_index).cmp(&(
                b.launch_ms,
                &b.reservation_id,
                b.launch_index,
            ))
        });
        if let Some(t) = &q.paging.token {
            let at = kept
                .iter()
                .position(|r| &r.item.instance_id == t)
                .ok_or_else(|| CoreError::InvalidValue {
                    param: "NextToken",
                    value: t.clone(),
                    why: "The token is invalid.".into(),
                })?;
            kept.drain(..at);
        }
        let mut next_token = None;
        if let Some(max) = q.paging.max {
            if kept.len() > max {
                next_token = Some(kept[max].item.instance_id.clone());
                kept.truncate(max);
            }
        }
        let mut images = HashMap::new();
        for r in &kept {
            if !images.contains_key(&r.item.image_id) {
                if let Some(i) = self.images.get(&r.item.image_id)? {
                    images.insert(i.image_id.clone(), i);
                }
            }
        }
        let mut volumes: HashMap<String, Vec<VolumeRecord>> = HashMap::new();
        let listed: std::collections::HashSet<&str> =
            kept.iter().map(|t| t.item.instance_id.as_str()).collect();
        for v in self.volumes.list()? {
            if let Some(a) = &v.attachment {
                if listed.contains(a.instance_id.as_str()) {
                    volumes.entry(a.instance_id.clone()).or_default().push(v);
                }
            }
        }
        Ok(InstanceListing {
            page: Page {
                items: kept,
                next_token,
            },
            names,
            images,
            volumes,
        })
    }

    /// DescribeImages: the images `q.account_id` may launch (or, by id,
    /// any it can see), narrowed by owners, launch permissions and
    /// filters, in id order.
    pub fn describe_images(&self, q: ImageQuery) -> Result<Page<Image>, CoreError> {
        if q.paging.max.is_some() && !q.ids.is_empty() {
            return Err(CoreError::Combination(
                "The parameter ImageIds cannot be used with the parameter MaxResults".into(),
            ));
        }
        let me = q.account_id.as_str();
        let mut images: Vec<Image> = if q.ids.is_empty() {
            self.images
                .list()?
                .into_iter()
                .filter(|i| i.launchable_by(me))
                .collect()
        } else {
            named(&q.ids, IdKind::Image, |id| self.visible_image(me, id))?
        };
        images.retain(|i| {
            q.owners.is_empty()
                || q.owners
                    .iter()
                    .any(|o| (o == "self" && i.owner_id == me) || *o == i.owner_id)
        });
        images.retain(|i| {
            q.executable_by.is_empty()
                || q.executable_by.iter().any(|e| match e.as_str() {
                    "all" => i.public,
                    "self" => i.launchable_by(me),
                    account => {
                        i.public || i.launch_permissions.contains(account) || i.owner_id == account
                    }
                })
        });
        images.sort_by(|a, b| a.image_id.cmp(&b.image_id));
        images.dedup_by(|a, b| a.image_id == b.image_id);
        if let Some(token) = &q.paging.token {
            images.retain(|i| &i.image_id > token);
        }
        let mut tags = self.tags_by_resource(me)?;
        let kept = select(
            images,
            &mut tags,
            &q.filters,
            "DescribeImages",
            |i| &i.image_id,
            |i, name| match name {
                "image-id" => one(&i.image_id),
                "image-type" => one(i.kind.wire()),
                "name" => one(&i.name),
                "description" => one(&i.description),
                "state" => one("available"),
                "owner-id" => one(&i.owner_id),
                "architecture" => one(&i.architecture),
                "is-public" => one(if i.public { "true" } else { "false" }),
                "kernel-id" => all(&i.kernel_id),
                "ramdisk-id" => all(&i.ramdisk_id),
                "virtualization-type" => one(&i.virtualization_type),
                "root-device-type" => one("instance-store"),
                "manifest-location" => one(&format!("{}/{}", i.bucket, i.key)),
                "hypervisor" => one("kvm"),
                _ => None,
            },
        )?;
        Ok(first_page(kept, q.paging.max, |x| &x.image_id))
    }

    /// DescribeTags: the account's tags, by resource id and key. Tags of
    /// instances whose records are gone are forgotten on the way.
    pub fn describe_tags(
        &self,
        account_id: &str,
        filters: &[Filter],
    ) -> Result<Vec<Tag>, CoreError> {
        let mut out = Vec::new();
        for t in self.tags.all(account_id)? {
            if t.resource_type == "instance" && self.instances.get(&t.resource_id)?.is_none() {
                self.tags.forget(&t.resource_id)?;
                continue;
            }
            let mut keep = true;
            for f in filters {
                let have = match f.name.as_str() {
                    "key" => &t.key,
                    "value" => &t.value,
                    "resource-id" => &t.resource_id,
                    "resource-type" => &t.resource_type,
                    other => {
                        return Err(CoreError::InvalidValue {
                            param: "Filter",
                            value: other.to_string(),
                            why: "The filter is invalid for DescribeTags.".into(),
                        })
                    }
                };
                keep &= f.admits(&[have]);
            }
            if keep {
                out.push(t);
            }
        }
        out.sort_by(|a, b| (&a.resource_id, &a.key).cmp(&(&b.resource_id, &b.key)));
        Ok(out)
    }

    /// DescribeSecurityGroups: the account's groups (by name), and every
    /// group's name by id (for the source groups their rules name).
    #[allow(clippy::type_complexity)]
    pub fn describe_security_groups(
        &self,
        account_id: &str,
        names: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> Result<(Vec<Tagged<SecurityGroup>>, HashMap<String, String>), CoreError> {
        let groups = self.security_groups.of(account_id)?;
        for (wanted, by_name) in names
            .iter()
            .map(|n| (n, true))
            .chain(ids.iter().map(|id| (id, false)))
        {
            let has = |g: &SecurityGroup| match by_name {
                true => &g.name == wanted,
                false => &g.group_id == wanted,
            };
            if !groups.iter().any(has) {
                return Err(CoreError::NotFound {
                    kind: IdKind::Group,
                    ids: vec![wanted.clone()],
                });
            }
        }
        let groups: Vec<SecurityGroup> = groups
            .into_iter()
            .filter(|g| {
                (names.is_empty() || names.contains(&g.name))
                    && (ids.is_empty() || ids.contains(&g.group_id))
            })
            .collect();
        let mut tags = self.tags_by_resource(account_id)?;
        let mut kept = select(
            groups,
            &mut tags,
            filters,
            "DescribeSecurityGroups",
            |g| &g.group_id,
            |g, name| match name {
                "group-name" => one(&g.name),
                "group-id" => one(&g.group_id),
                "description" => one(&g.description),
                "owner-id" => one(&g.account_id),
                other => {
                    if let Some(what) = other.strip_prefix("ip-permission.") {
                        Some(rule_values(&g.ingress, what))
                    } else {
                        other
                            .strip_prefix("egress.ip-permission.")
                            .map(|what| rule_values(&g.egress, what))
                    }
                }
            },
        )?;
        kept.sort_by(|a, b| a.item.name.cmp(&b.item.name));
        let names_by_id = self
            .security_groups
            .all()?
            .into_iter()
            .map(|g| (g.group_id, g.name))
            .collect();
        Ok((kept, names_by_id))
    }

    /// DescribeAddresses: the account's elastic IPs.
    pub fn describe_addresses(
        &self,
        account_id: &str,
        ips: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<Tagged<ListedAddress>>, CoreError> {
        let mine = self.addresses.of(account_id)?;
        for (wanted, kind) in ips
            .iter()
            .map(|ip| (ip, IdKind::Address))
            .chain(ids.iter().map(|id| (id, IdKind::Allocation)))
        {
            let has = |a: &Address| match kind {
                IdKind::Address => &a.public_ip == wanted,
                _ => &a.allocation_id == wanted,
            };
            if !mine.iter().any(has) {
                return Err(CoreError::NotFound {
                    kind,
                    ids: vec![wanted.clone()],
                });
            }
        }
        let mut listed = Vec::new();
        for a in mine {
            if (!ips.is_empty() && !ips.contains(&a.public_ip))
                || (!ids.is_empty() && !ids.contains(&a.allocation_id))
            {
                continue;
            }
            let private_ip = match &a.instance_id {
                Some(i) => self
                    .instances
                    .get(i)?
                    .map(|r| r.private_ip)
                    .filter(|ip| !ip.is_empty()),
                None => None,
            };
            listed.push(ListedAddress {
                address: a,
                private_ip,
            });
        }
        let mut tags = self.tags_by_resource(account_id)?;
        select(
            listed,
            &mut tags,
            filters,
            "DescribeAddresses",
            |l| &l.address.allocation_id,
            |l, name| match name {
                "public-ip" => one(&l.address.public_ip),
                "allocation-id" => one(&l.address.allocation_id),
                "instance-id" => all(&l.address.instance_id),
                "association-id" => all(&l.address.association_id),
                "private-ip-address" => all(&l.private_ip),
                "domain" => one("standard"),
                _ => None,
            },
        )
    }

    /// DescribeKeyPairs: the account's key pairs.
    pub fn describe_key_pairs(
        &self,
        account_id: &str,
        names: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<Tagged<KeyPair>>, CoreError> {
        let all_pairs = self.keypairs.of(account_id)?;
        for (wanted, kind) in names
            .iter()
            .map(|n| (n, IdKind::KeyPair))
            .chain(ids.iter().map(|id| (id, IdKind::KeyPairId)))
        {
            let has = |k: &KeyPair| match kind {
                IdKind::KeyPair => &k.name == wanted,
                _ => &k.key_pair_id == wanted,
            };
            if !all_pairs.iter().any(has) {
                return Err(CoreError::NotFound {
                    kind,
                    ids: vec![wanted.clone()],
                });
            }
        }
        let pairs: Vec<KeyPair> = all_pairs
            .into_iter()
            .filter(|k| {
                (names.is_empty() || names.contains(&k.name))
                    && (ids.is_empty() || ids.contains(&k.key_pair_id))
            })
            .collect();
        let mut tags = self.tags_by_resource(account_id)?;
        select(
            pairs,
            &mut tags,
            filters,
            "DescribeKeyPairs",
            |k| &k.key_pair_id,
            |k, name| match name {
                "key-name" => one(&k.name),
                "key-pair-id" => one(&k.key_pair_id),
                "fingerprint" => one(&k.fingerprint),
                "key-type" => one(&k.key_type),
                _ => None,
            },
        )
    }
}

/// A DescribeVolumes (or DescribeVolumeStatus) query.
#[derive(Debug, Clone, Default)]
pub struct VolumeQuery {
    pub account_id: String,
    pub ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub paging: Paging,
}

impl Cloud {
    /// DescribeVolumes: the account's volumes, in id order.
    pub fn describe_volumes(&self, q: VolumeQuery) -> Result<Page<VolumeRecord>, CoreError> {
        if q.paging.max.is_some() && !q.ids.is_empty() {
            return Err(CoreError::Combination(
                "The parameter volumeSet cannot be used with the parameter maxResults".into(),
            ));
        }
        let mut volumes = if q.ids.is_empty() {
            self.volumes.of(&q.account_id)?
        } else {
            named(&q.ids, IdKind::Volume, |id| {
                self.own_volume(&q.account_id, id)
            })?
        };
        volumes.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        volumes.dedup_by(|a, b| a.volume_id == b.volume_id);
        if let Some(token) = &q.paging.token {
            volumes.retain(|v| &v.volume_id > token);
        }
        let mut tags = self.tags_by_resource(&q.account_id)?;
        let kept = select(
            volumes,
            &mut tags,
            &q.filters,
            "DescribeVolumes",
            |v| &v.volume_id,
            |v, name| {
                let a = v.attachment.as_ref();
                match name {
                    "volume-id" => one(&v.volume_id),
                    "status" => one(v.state.name()),
                    "size" => one(&v.size_gib.to_string()),
                    "snapshot-id" => all(&v.snapshot_id),
                    "availability-zone" => one(&v.zone),
                    "volume-type" => one(&v.volume_type),
                    "encrypted" => one("false"),
                    "multi-attach-enabled" => one("false"),
                    "create-time" => one(&common::time::iso8601_ms(v.created_ms)),
                    "attachment.instance-id" => all(&a.map(|a| a.instance_id.clone())),
                    "attachment.status" => all(&a.map(|a| a.state.clone())),
                    "attachment.device" => all(&a.map(|a| a.device.clone())),
                    "attachment.delete-on-termination" => {
                        all(&a.map(|a| a.delete_on_termination.to_string()))
                    }
                    "attachment.attach-time" => {
                        all(&a.map(|a| common::time::iso8601_ms(a.attach_ms)))
                    }
                    _ => None,
                }
            },
        )?;
        Ok(first_page(kept, q.paging.max, |x| &x.volume_id))
    }
}

/// A DescribeSnapshots query.
#[derive(Debug, Clone, Default)]
pub struct SnapshotQuery {
    pub account_id: String,
    pub ids: Vec<String>,
    /// Owner account ids, or `self`.
    pub owners: Vec<String>,
    /// Accounts (or `self`) that must be able to make volumes from them.
    pub restorable_by: Vec<String>,
    pub filters: Vec<Filter>,
    pub paging: Paging,
}

impl Cloud {
    /// DescribeSnapshots: the snapshots the account owns or may make
    /// volumes from, in id order.
    pub fn describe_snapshots(&self, q: SnapshotQuery) -> Result<Page<SnapshotRecord>, CoreError> {
        if q.paging.max.is_some() && !q.ids.is_empty() {
            return Err(CoreError::Combination(
                "The parameter snapshotSet cannot be used with the parameter maxResults".into(),
            ));
        }
        let me = q.account_id.as_str();
        let mut snapshots: Vec<SnapshotRecord> = if q.ids.is_empty() {
            self.snapshots
                .list()?
                .into_iter()
                .filter(|s| s.restorable_by(me))
                .collect()
        } else {
            named(&q.ids, IdKind::Snapshot, |id| {
                if !IdKind::Snapshot.well_formed(id) {
                    return Err(CoreError::Malformed {
                        kind: IdKind::Snapshot,
                        id: id.to_string(),
                    });
                }
                match self.snapshots.get(id)? {
                    Some(s) if s.restorable_by(me) => Ok(s),
                    _ => Err(CoreError::NotFound {
                        kind: IdKind::Snapshot,
                        ids: vec![id.to_string()],
                    }),
                }
            })?
        };
        snapshots.retain(|s| {
            q.owners.is_empty()
                || q.owners
                    .iter()
                    .any(|o| (o == "self" && s.account_id == me) || *o == s.account_id)
        });
        snapshots.retain(|s| {
            q.restorable_by.is_empty()
                || q.restorable_by.iter().any(|r| match r.as_str() {
                    "self" => s.restorable_by(me),
                    other => s.restorable_by(other),
                })
        });
        snapshots.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        snapshots.dedup_by(|a, b| a.snapshot_id == b.snapshot_id);
        if let Some(token) = &q.paging.token {
            snapshots.retain(|s| &s.snapshot_id > token);
        }
        // Tags as the caller set them.
        let mut tags = self.tags_by_resource(me)?;
        let kept = select(
            snapshots,
            &mut tags,
            &q.filters,
            "DescribeSnapshots",
            |s| &s.snapshot_id,
            |s, name| match name {
                "snapshot-id" => one(&s.snapshot_id),
                "volume-id" => one(&s.volume_id),
                "status" => one(s.state.name()),
                "owner-id" => one(&s.account_id),
                "progress" => one(&s.progress),
                "volume-size" => one(&s.volume_size_gib.to_string()),
                "start-time" => one(&common::time::iso8601_ms(s.start_ms)),
                "description" => one(&s.description),
                "encrypted" => one("false"),
                _ => None,
            },
        )?;
        Ok(first_page(kept, q.paging.max, |x| &x.snapshot_id))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::{
        fake::{launch, system_account, test_cloud, FakeCluster},
        launch::LaunchRequest,
    };

    fn filter(name: &str, values: &[&str]) -> Filter {
        Filter {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn instances_are_filtered_paged_and_kept_to_their_account() {
        let fake = Arc::new(FakeCluster::new(2, 8));
        let (cloud, _dir) = test_cloud(fake);
        let me = system_account(&cloud);
        let tagged = launch(
            &cloud,
            &me,
            2,
            LaunchRequest {
                tags: vec![("Name".into(), Some("web".into()))],
                ..Default::default()
            },
        )
        .await;
        let plain = launch(&cloud, &me, 3, LaunchRequest::default()).await;
        let query = |filters: Vec<Filter>, max: Option<usize>, token: Option<String>| {
            cloud.describe_instances(InstanceQuery {
                account_id: me.clone(),
                filters,
                paging: Paging { max, token },
                ..Default::default()
            })
        };
        let ids = |l: &InstanceListing| -> Vec<String> {
            l.page
                .items
                .iter()
                .map(|t| t.item.instance_id.clone())
                .collect()
        };
        let everything = query(Vec::new(), None, None).expect("all");
        assert_eq!(everything.page.items.len(), 5);
        // Launch order: the first reservation first.
        assert_eq!(ids(&everything)[0], tagged.records[0].instance_id);
        let web = query(vec![filter("tag:Name", &["w*"])], None, None).expect("tag");
        assert_eq!(web.page.items.len(), 2);
        assert!(web.page.items.iter().all(|t| t.tags.len() == 1));
        // An exact id filter, one of them unknown: no error, just the known.
        let wanted = plain.records[1].instance_id.clone();
        let by_filter = query(
            vec![filter("instance-id", &[&wanted, "i-0000000000000000f"])],
            None,
            None,
        )
        .expect("by id");
        assert_eq!(ids(&by_filter), vec![wanted.clone()]);
        // Pages of two cover everything once, in order.
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = query(Vec::new(), Some(2), token).expect("page");
            seen.extend(ids(&page));
            token = page.page.next_token;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(seen, ids(&everything));
        assert!(matches!(
            query(vec![filter("no-such-filter", &["x"])], None, None),
            Err(CoreError::InvalidValue {
                param: "Filter",
                ..
            })
        ));
        assert!(matches!(
            query(Vec::new(), Some(5), Some("i-0000000000000000f".into())),
            Err(CoreError::InvalidValue {
                param: "NextToken",
                ..
            })
        ));
        // Another account sees none of them, by listing, filter or id.
        cloud.accounts.create("alice").expect("alice");
        let alice = cloud.accounts.find("alice").expect("alice").account_id;
        let theirs = cloud
            .describe_instances(InstanceQuery {
                account_id: alice.clone(),
                filters: vec![filter("instance-id", &[&wanted])],
                ..Default::default()
            })
            .expect("alice's");
        assert!(theirs.page.items.is_empty());
        assert!(matches!(
            cloud.describe_instances(InstanceQuery {
                account_id: alice.clone(),
                ids: vec![wanted.clone()],
                ..Default::default()
            }),
            Err(CoreError::NotFound { .. })
        ));
        assert!(cloud
            .describe_tags(&alice, &[])
            .expect("alice's tags")
            .is_empty());
        let mine = cloud
            .describe_tags(&me, &[filter("resource-type", &["instance"])])
            .expect("my tags");
        assert_eq!(mine.len(), 2);
    }

    #[test]
    fn wildcards_match_as_ec2_filters_do() {
        assert!(matches("i-*", "i-0123"));
        assert!(matches("*", ""));
        assert!(matches("web?", "web1"));
        assert!(!matches("web?", "web12"));
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        let f = Filter {
            name: "tag:Name".into(),
            values: vec!["db*".into(), "web".into()],
        };
        assert!(f.admits(&["web"]));
        assert!(f.admits(&["x", "db-1"]));
        assert!(!f.admits::<&str>(&[]));
    }
}
