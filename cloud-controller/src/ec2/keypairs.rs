//! CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::time;

use super::{
    tags::{apply, by_resource, specified, tag_filter_values, write_tag_set},
    Call, Ec2, Ec2Error,
};
use crate::keypairs::{generate_ed25519, generate_rsa, import, KeyError, KeyPair};

fn store_error(e: impl std::fmt::Display) -> Ec2Error {
    tracing::error!(error = %e, "key pair store failed");
    Ec2Error::internal()
}

fn valid_name(name: &str) -> Result<(), Ec2Error> {
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Ec2Error::invalid_value(
            "KeyName",
            name,
            "Key names are 1 to 255 ASCII characters.",
        ));
    }
    Ok(())
}

fn duplicate(name: &str) -> Ec2Error {
    Ec2Error::new(
        "InvalidKeyPair.Duplicate",
        format!("The keypair '{name}' already exists."),
    )
}

/// `InvalidKeyPair.NotFound` for `name`.
pub fn not_found(name: &str) -> Ec2Error {
    Ec2Error::new(
        "InvalidKeyPair.NotFound",
        format!("The key pair '{name}' does not exist"),
    )
}

fn new_id() -> String {
    common::ids::resource_id("key")
}

/// Stores a new pair and its tags; the duplicate error when the name is taken.
fn store(ec2: &Ec2, call: &Call, pair: &KeyPair) -> Result<Vec<crate::tags::Tag>, Ec2Error> {
    let tags = specified(&call.params, "key-pair")?;
    if !ec2.cloud.keypairs.insert(pair).map_err(store_error)? {
        return Err(duplicate(&pair.name));
    }
    apply(ec2, call, &[(pair.key_pair_id.clone(), "key-pair")], &tags)?;
    ec2.cloud
        .tags
        .of(&call.caller.account_id, &pair.key_pair_id)
        .map_err(store_error)
}

/// CreateKeyPair.
pub fn create_key_pair(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let name = p.required("KeyName")?;
    valid_name(name)?;
    let key_type = p.get("KeyType").unwrap_or("rsa");
    if !matches!(key_type, "rsa" | "ed25519") {
        return Err(Ec2Error::invalid_value(
            "KeyType",
            key_type,
            "Use rsa or ed25519.",
        ));
    }
    match p.get("KeyFormat").unwrap_or("pem") {
        "pem" => {}
        other => {
            return Err(Ec2Error::invalid_value(
                "KeyFormat",
                other,
                "Only pem is supported here.",
            ))
        }
    }
    specified(p, "key-pair")?;
    let me = &call.caller.account_id;
    if ec2
        .cloud
        .keypairs
        .get(me, name)
        .map_err(store_error)?
        .is_some()
    {
        return Err(duplicate(name));
    }
    call.dry_run_check()?;
    let generated = if key_type == "rsa" {
        generate_rsa(2048)
    } else {
        generate_ed25519()
    }
    .map_err(store_error)?;
    let pair = KeyPair {
        account_id: me.clone(),
        name: name.to_string(),
        key_pair_id: new_id(),
        key_type: key_type.to_string(),
        fingerprint: generated.fingerprint,
        public_key: generated.public_key,
        created_ms: time::unix_ms(),
    };
    let tags = store(ec2, call, &pair)?;
    tracing::info!(key_name = %pair.name, key_pair_id = %pair.key_pair_id, key_type, "key pair created");
    let mut w = call.writer();
    w.elem("keyName", &pair.name)
        .elem("keyFingerprint", &pair.fingerprint)
        .elem("keyMaterial", generated.private_pem.trim_end())
        .elem("keyPairId", &pair.key_pair_id);
    write_tag_set(&mut w, &tags);
    Ok(w.finish())
}

/// ImportKeyPair.
pub fn import_key_pair(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let name = p.required("KeyName")?;
    valid_name(name)?;
    let material = p.required("PublicKeyMaterial")?;
    let raw = B64.decode(material.trim()).map_err(|_| {
        Ec2Error::invalid_value("PublicKeyMaterial", "(omitted)", "Invalid BASE64.")
    })?;
    let (key_type, public_key, fingerprint) =
        import(&raw).map_err(|e: KeyError| Ec2Error::new("InvalidKey.Format", e.to_string()))?;
    specified(p, "key-pair")?;
    let me = &call.caller.account_id;
    if ec2
        .cloud
        .keypairs
        .get(me, name)
        .map_err(store_error)?
        .is_some()
    {
        return Err(duplicate(name));
    }
    call.dry_run_check()?;
    let pair = KeyPair {
        account_id: me.clone(),
        name: name.to_string(),
        key_pair_id: new_id(),
        key_type,
        fingerprint,
        public_key,
        created_ms: time::unix_ms(),
    };
    let tags = store(ec2, call, &pair)?;
    tracing::info!(key_name = %pair.name, key_pair_id = %pair.key_pair_id, "key pair imported");
    let mut w = call.writer();
    w.elem("keyFingerprint", &pair.fingerprint)
        .elem("keyName", &pair.name)
        .elem("keyPairId", &pair.key_pair_id);
    write_tag_set(&mut w, &tags);
    Ok(w.finish())
}

/// DescribeKeyPairs.
pub fn describe_key_pairs(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let names = p.list("KeyName");
    let ids = p.list("KeyPairId");
    let filters = p.filters()?;
    let include_public = p.flag("IncludePublicKey")?;
    call.dry_run_check()?;
    let me = &call.caller.account_id;
    let all = ec2.cloud.keypairs.of(me).map_err(store_error)?;
    for n in &names {
        if !all.iter().any(|k| &k.name == n) {
            return Err(not_found(n));
        }
    }
    for id in &ids {
        if !all.iter().any(|k| &k.key_pair_id == id) {
            return Err(Ec2Error::new(
                "InvalidKeyPair.NotFound",
                format!("The key pair ID '{id}' does not exist"),
            ));
        }
    }
    let tags = by_resource(ec2, me)?;
    let none = Vec::new();
    let mut w = call.writer();
    w.open("keySet");
    for k in all {
        if !names.is_empty() && !names.contains(&k.name) {
            continue;
        }
        if !ids.is_empty() && !ids.contains(&k.key_pair_id) {
            continue;
        }
        let mine = tags.get(&k.key_pair_id).unwrap_or(&none);
        let mut keep = true;
        for f in &filters {
            let have = match tag_filter_values(&f.name, mine) {
                Some(v) => v,
                None => vec![match f.name.as_str() {
                    "key-name" => k.name.clone(),
                    "key-pair-id" => k.key_pair_id.clone(),
                    "fingerprint" => k.fingerprint.clone(),
                    "key-type" => k.key_type.clone(),
                    other => {
                        return Err(Ec2Error::invalid_value(
                            "Filter",
                            other,
                            "The filter is invalid for DescribeKeyPairs.",
                        ))
                    }
                }],
            };
            keep &= f.admits(&have);
        }
        if !keep {
            continue;
        }
        w.open("item")
            .elem("keyPairId", &k.key_pair_id)
            .elem("keyFingerprint", &k.fingerprint)
            .elem("keyName", &k.name)
            .elem("keyType", &k.key_type);
        write_tag_set(&mut w, mine);
        if include_public {
            w.elem("publicKey", &k.public_key);
        }
        w.elem("createTime", &time::iso8601_ms(k.created_ms))
            .close("item");
    }
    w.close("keySet");
    Ok(w.finish())
}

/// DeleteKeyPair: by name or id; like EC2, deleting a name that does not
/// exist succeeds.
pub fn delete_key_pair(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let me = &call.caller.account_id;
    let pair = match (p.get("KeyName"), p.get("KeyPairId")) {
        (Some(name), _) => ec2.cloud.keypairs.get(me, name).map_err(store_error)?,
        (None, Some(id)) => Some(
            ec2.cloud
                .keypairs
                .of(me)
                .map_err(store_error)?
                .into_iter()
                .find(|k| k.key_pair_id == id)
                .ok_or_else(|| {
                    Ec2Error::new(
                        "InvalidKeyPair.NotFound",
                        format!("The key pair ID '{id}' does not exist"),
                    )
                })?,
        ),
        (None, None) => return Err(Ec2Error::missing("KeyName")),
    };
    call.dry_run_check()?;
    if let Some(k) = &pair {
        ec2.cloud
            .keypairs
            .delete(me, &k.name)
            .map_err(store_error)?;
        ec2.cloud.tags.forget(&k.key_pair_id).map_err(store_error)?;
        tracing::info!(key_name = %k.name, "key pair deleted");
    }
    let mut w = call.writer();
    w.bool("return", true)
        .opt("keyPairId", pair.as_ref().map(|k| k.key_pair_id.as_str()));
    Ok(w.finish())
}
