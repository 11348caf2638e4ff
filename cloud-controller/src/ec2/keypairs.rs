//! CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::time;

use super::{
    tags::{specified, write_tag_set},
    Call, Ec2, Ec2Error,
};
use crate::core::{
    describe::Tagged,
    keypairs::{KeyPairRef, KeySource, NewKeyPair},
    CoreError, IdKind,
};

/// `InvalidKeyPair.NotFound` for `name`.
pub fn not_found(name: &str) -> Ec2Error {
    CoreError::NotFound {
        kind: IdKind::KeyPair,
        ids: vec![name.to_string()],
    }
    .into()
}

/// CreateKeyPair.
pub fn create_key_pair(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let name = p.required("KeyName")?;
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
    let added = ec2.cloud.add_key_pair(
        NewKeyPair {
            account_id: call.caller.account_id.clone(),
            name: name.to_string(),
            source: KeySource::Generate(p.get("KeyType").unwrap_or("rsa").to_string()),
            tags: specified(p, "key-pair")?,
        },
        p.flag("DryRun")?,
    )?;
    let mut w = call.writer();
    w.elem("keyName", &added.pair.name)
        .elem("keyFingerprint", &added.pair.fingerprint)
        .elem(
            "keyMaterial",
            added.private_pem.as_deref().unwrap_or_default().trim_end(),
        )
        .elem("keyPairId", &added.pair.key_pair_id);
    write_tag_set(&mut w, &added.tags);
    Ok(w.finish())
}

/// ImportKeyPair.
pub fn import_key_pair(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let name = p.required("KeyName")?;
    let material = p.required("PublicKeyMaterial")?;
    let raw = B64.decode(material.trim()).map_err(|_| {
        Ec2Error::invalid_value("PublicKeyMaterial", "(omitted)", "Invalid BASE64.")
    })?;
    let added = ec2.cloud.add_key_pair(
        NewKeyPair {
            account_id: call.caller.account_id.clone(),
            name: name.to_string(),
            source: KeySource::Import(raw),
            tags: specified(p, "key-pair")?,
        },
        p.flag("DryRun")?,
    )?;
    let mut w = call.writer();
    w.elem("keyFingerprint", &added.pair.fingerprint)
        .elem("keyName", &added.pair.name)
        .elem("keyPairId", &added.pair.key_pair_id);
    write_tag_set(&mut w, &added.tags);
    Ok(w.finish())
}

/// DescribeKeyPairs.
pub fn describe_key_pairs(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let p = &call.params;
    let filters = p.filters()?;
    let include_public = p.flag("IncludePublicKey")?;
    call.dry_run_check()?;
    let pairs = ec2.cloud.describe_key_pairs(
        &call.caller.account_id,
        &p.list("KeyName"),
        &p.list("KeyPairId"),
        &filters,
    )?;
    let mut w = call.writer();
    w.open("keySet");
    for Tagged { item: k, tags } in &pairs {
        w.open("item")
            .elem("keyPairId", &k.key_pair_id)
            .elem("keyFingerprint", &k.fingerprint)
            .elem("keyName", &k.name)
            .elem("keyType", &k.key_type);
        write_tag_set(&mut w, tags);
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
    let which = match (p.get("KeyName"), p.get("KeyPairId")) {
        (Some(name), _) => KeyPairRef::Name(name),
        (None, Some(id)) => KeyPairRef::Id(id),
        (None, None) => return Err(Ec2Error::missing("KeyName")),
    };
    let pair = ec2
        .cloud
        .delete_key_pair(&call.caller.account_id, which, p.flag("DryRun")?)?;
    let mut w = call.writer();
    w.bool("return", true)
        .opt("keyPairId", pair.as_ref().map(|k| k.key_pair_id.as_str()));
    Ok(w.finish())
}
