//! Canned ACLs: what each grants, who may do what, and the
//! `AccessControlPolicy` documents of GetBucketAcl / GetObjectAcl /
//! PutBucketAcl / PutObjectAcl.
//!
//! Buckets and objects keep one canned ACL each. A PutAcl body is accepted
//! when its grants are exactly those of a canned ACL (which is what s3cmd
//! and the SDKs send when they toggle public access); other grant lists are
//! refused as not implemented rather than stored and ignored.

use super::{error::escape, xml, Principal, S3Error};

/// Canned ACLs S3 knows.
pub const CANNED: [&str; 7] = [
    "private",
    "public-read",
    "public-read-write",
    "aws-exec-read",
    "authenticated-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// The account that stands for "EC2" in `aws-exec-read`: the cloud's
/// system account, which the image tiers act as.
pub const SYSTEM_ACCOUNT: &str = "eucalyptus";

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

/// An S3 permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Write,
    ReadAcp,
    WriteAcp,
    FullControl,
}

impl Permission {
    fn wire(self) -> &'static str {
        match self {
            Self::Read => "READ",
            Self::Write => "WRITE",
            Self::ReadAcp => "READ_ACP",
            Self::WriteAcp => "WRITE_ACP",
            Self::FullControl => "FULL_CONTROL",
        }
    }

    fn from_wire(s: &str) -> Option<Self> {
        [
            Self::Read,
            Self::Write,
            Self::ReadAcp,
            Self::WriteAcp,
            Self::FullControl,
        ]
        .into_iter()
        .find(|p| p.wire() == s)
    }

    /// True when holding `self` gives `wanted`.
    fn covers(self, wanted: Permission) -> bool {
        self == Self::FullControl || self == wanted
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grantee {
    /// An account, by id, with its display name.
    Account {
        id: String,
        name: String,
    },
    /// The system account, by name.
    System,
    AllUsers,
    AuthenticatedUsers,
}

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub grantee: Grantee,
    pub permission: Permission,
}

/// An owner: account id and display name.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub id: &'a str,
    pub name: &'a str,
}

/// The grants of canned ACL `acl` on a resource owned by `owner`, inside a
/// bucket owned by `bucket_owner` (objects only).
pub fn grants(acl: &str, owner: Owner<'_>, bucket_owner: Option<Owner<'_>>) -> Vec<Grant> {
    let account = |o: Owner<'_>, permission| Grant {
        grantee: Grantee::Account {
            id: o.id.to_string(),
            name: o.name.to_string(),
        },
        permission,
    };
    let mut out = vec![account(owner, Permission::FullControl)];
    let group = |grantee, permission| Grant {
        grantee,
        permission,
    };
    match acl {
        "public-read" => out.push(group(Grantee::AllUsers, Permission::Read)),
        "public-read-write" => {
            out.push(group(Grantee::AllUsers, Permission::Read));
            out.push(group(Grantee::AllUsers, Permission::Write));
        }
        "authenticated-read" => out.push(group(Grantee::AuthenticatedUsers, Permission::Read)),
        "aws-exec-read" => out.push(group(Grantee::System, Permission::Read)),
        "bucket-owner-read" | "bucket-owner-full-control" => {
            if let Some(b) = bucket_owner.filter(|b| b.id != owner.id) {
                out.push(account(
                    b,
                    if acl == "bucket-owner-read" {
                        Permission::Read
                    } else {
                        Permission::FullControl
                    },
                ));
            }
        }
        _ => {}
    }
    out
}

/// True when `principal` holds `wanted` under `grants`.
pub fn allows(grants: &[Grant], principal: &Principal, wanted: Permission) -> bool {
    grants.iter().any(|g| {
        g.permission.covers(wanted)
            && match (&g.grantee, principal) {
                (Grantee::AllUsers, _) => true,
                (Grantee::AuthenticatedUsers, Principal::Account(_)) => true,
                (Grantee::Account { id, .. }, Principal::Account(c)) => *id == c.account_id,
                (Grantee::System, Principal::Account(c)) => c.account_name == SYSTEM_ACCOUNT,
                _ => false,
            }
    })
}

/// The `AccessControlPolicy` document for `grants`.
pub fn policy_xml(owner: Owner<'_>, grants: &[Grant]) -> String {
    let mut w = xml::Writer::new("AccessControlPolicy");
    w.open("Owner")
        .elem("ID", owner.id)
        .elem("DisplayName", owner.name)
        .close("Owner")
        .open("AccessControlList");
    let mut body = String::new();
    for g in grants {
        let grantee = match &g.grantee {
            Grantee::Account { id, name } => format!(
                "<Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\"><ID>{}</ID><DisplayName>{}</DisplayName></Grantee>",
                escape(id),
                escape(name)
            ),
            Grantee::System => format!(
                "<Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\"><ID>{SYSTEM_ACCOUNT}</ID><DisplayName>{SYSTEM_ACCOUNT}</DisplayName></Grantee>"
            ),
            Grantee::AllUsers | Grantee::AuthenticatedUsers => format!(
                "<Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\"><URI>{}</URI></Grantee>",
                if g.grantee == Grantee::AllUsers {
                    ALL_USERS
                } else {
                    AUTHENTICATED_USERS
                }
            ),
        };
        body.push_str(&format!(
            "<Grant>{grantee}<Permission>{}</Permission></Grant>",
            g.permission.wire()
        ));
    }
    w.raw(&body).close("AccessControlList");
    w.finish("AccessControlPolicy")
}

/// The canned ACL whose grants a PutAcl body lists, for a resource owned by
/// `owner` in a bucket owned by `bucket_owner`.
pub fn canned_from_policy(
    body: &[u8],
    owner: Owner<'_>,
    bucket_owner: Option<Owner<'_>>,
) -> Result<String, S3Error> {
    let root = xml::parse(body)?;
    if root.name != "AccessControlPolicy" {
        return Err(S3Error::malformed_acl());
    }
    let list = root
        .child("AccessControlList")
        .ok_or_else(S3Error::malformed_acl)?;
    let mut wanted = Vec::new();
    for g in list.children_named("Grant") {
        let grantee = g.child("Grantee").ok_or_else(S3Error::malformed_acl)?;
        let permission = g
            .child_text("Permission")
            .and_then(|p| Permission::from_wire(p.trim()))
            .ok_or_else(S3Error::malformed_acl)?;
        let grantee = if let Some(uri) = grantee.child_text("URI") {
            match uri.trim() {
                ALL_USERS => Grantee::AllUsers,
                AUTHENTICATED_USERS => Grantee::AuthenticatedUsers,
                _ => return Err(S3Error::not_implemented("Grants to that group")),
            }
        } else if let Some(id) = grantee.child_text("ID") {
            let id = id.trim();
            if id == SYSTEM_ACCOUNT {
                Grantee::System
            } else {
                Grantee::Account {
                    id: id.to_string(),
                    name: String::new(),
                }
            }
        } else {
            return Err(S3Error::not_implemented("Grants by e-mail address"));
        };
        wanted.push((grantee, permission));
    }
    let key = |g: &Grant| -> (Grantee, &'static str) {
        let grantee = match &g.grantee {
            Grantee::Account { id, .. } => Grantee::Account {
                id: id.clone(),
                name: String::new(),
            },
            other => other.clone(),
        };
        (grantee, g.permission.wire())
    };
    let mut wanted: Vec<(Grantee, &'static str)> = wanted
        .into_iter()
        .map(|(g, p)| {
            key(&Grant {
                grantee: g,
                permission: p,
            })
        })
        .collect();
    wanted.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    wanted.dedup();
    for acl in CANNED {
        let mut canned: Vec<(Grantee, &'static str)> =
            grants(acl, owner, bucket_owner).iter().map(key).collect();
        canned.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        if canned == wanted {
            return Ok(acl.to_string());
        }
    }
    Err(S3Error::not_implemented(
        "An access control list that is not one of the canned ACLs",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Caller;

    fn account(id: &str, name: &str) -> Principal {
        Principal::Account(Caller {
            access_key_id: "AK".into(),
            secret_access_key: "s".into(),
            account_id: id.into(),
            account_name: name.into(),
            user_name: "admin".into(),
        })
    }

    const OWNER: Owner<'static> = Owner {
        id: "111",
        name: "alice",
    };

    #[test]
    fn canned_acls_grant_what_s3_documents() {
        let anonymous = Principal::Anonymous;
        let owner = account("111", "alice");
        let other = account("222", "bob");
        let system = account("333", SYSTEM_ACCOUNT);
        let private = grants("private", OWNER, None);
        assert!(allows(&private, &owner, Permission::WriteAcp));
        assert!(!allows(&private, &other, Permission::Read));
        assert!(!allows(&private, &anonymous, Permission::Read));
        let public = grants("public-read", OWNER, None);
        assert!(allows(&public, &anonymous, Permission::Read));
        assert!(!allows(&public, &anonymous, Permission::Write));
        assert!(!allows(&public, &other, Permission::ReadAcp));
        let authenticated = grants("authenticated-read", OWNER, None);
        assert!(allows(&authenticated, &other, Permission::Read));
        assert!(!allows(&authenticated, &anonymous, Permission::Read));
        let exec = grants("aws-exec-read", OWNER, None);
        assert!(allows(&exec, &system, Permission::Read));
        assert!(!allows(&exec, &other, Permission::Read));
        let rw = grants("public-read-write", OWNER, None);
        assert!(allows(&rw, &anonymous, Permission::Write));
        let bor = grants(
            "bucket-owner-read",
            OWNER,
            Some(Owner {
                id: "222",
                name: "bob",
            }),
        );
        assert!(allows(&bor, &other, Permission::Read));
        assert!(!allows(&bor, &other, Permission::WriteAcp));
    }

    #[test]
    fn policies_round_trip_to_their_canned_acl() {
        for acl in CANNED {
            let bucket_owner = Owner {
                id: "222",
                name: "bob",
            };
            let doc = policy_xml(OWNER, &grants(acl, OWNER, Some(bucket_owner)));
            let back = canned_from_policy(doc.as_bytes(), OWNER, Some(bucket_owner))
                .expect("a canned policy");
            // bucket-owner-* on the owner's own bucket collapse to private.
            assert_eq!(
                grants(&back, OWNER, Some(bucket_owner)),
                grants(acl, OWNER, Some(bucket_owner)),
                "{acl}"
            );
        }
        let doc = policy_xml(OWNER, &grants("public-read", OWNER, None));
        assert!(doc.contains("<URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission>"));
        let odd = br#"<AccessControlPolicy><Owner><ID>111</ID></Owner><AccessControlList>
<Grant><Grantee><ID>999</ID></Grantee><Permission>WRITE</Permission></Grant></AccessControlList></AccessControlPolicy>"#;
        assert_eq!(
            canned_from_policy(odd, OWNER, None).map_err(|e| e.code),
            Err("NotImplemented")
        );
        assert_eq!(
            canned_from_policy(b"<Nope/>", OWNER, None).map_err(|e| e.code),
            Err("MalformedACLError")
        );
    }
}
