//! Accounts and access keys over the Query API, in IAM's wire format, as
//! Eucalyptus' Euare service offered them (at `/services/Euare`, or any API
//! path by action name): CreateAccount, ListAccounts, DeleteAccount for the
//! cloud's admin; CreateAccessKey, ListAccessKeys, DeleteAccessKey for an
//! account's own users, and for any account's by the admin with
//! `DelegateAccount`; and the console passwords of an account's users,
//! as IAM's login profiles (Create/Update/Get/DeleteLoginProfile).

use common::time;
use http::StatusCode;

use super::{error::escape, Call, Ec2, Ec2Error};
use crate::accounts::{AccessKey, Account, AccountError, ADMIN_USER};

/// The actions served here.
pub const ACTIONS: [&str; 10] = [
    "CreateAccount",
    "ListAccounts",
    "DeleteAccount",
    "CreateAccessKey",
    "ListAccessKeys",
    "DeleteAccessKey",
    "CreateLoginProfile",
    "UpdateLoginProfile",
    "GetLoginProfile",
    "DeleteLoginProfile",
];

fn account_error(e: AccountError) -> Ec2Error {
    match e {
        AccountError::InvalidName(_) | AccountError::InvalidUserName(_) => {
            Ec2Error::new("ValidationError", e.to_string())
        }
        AccountError::Exists(_) => {
            Ec2Error::new("EntityAlreadyExists", e.to_string()).status(StatusCode::CONFLICT)
        }
        AccountError::NoSuchAccount(_) => {
            Ec2Error::new("NoSuchEntity", e.to_string()).status(StatusCode::NOT_FOUND)
        }
        AccountError::Protected(_) | AccountError::InUse(_) => {
            Ec2Error::new("DeleteConflict", e.to_string()).status(StatusCode::CONFLICT)
        }
        AccountError::PasswordPolicy => Ec2Error::new("PasswordPolicyViolation", e.to_string()),
        AccountError::LoginExists(_) => {
            Ec2Error::new("EntityAlreadyExists", e.to_string()).status(StatusCode::CONFLICT)
        }
        AccountError::NoLoginProfile(_) => {
            Ec2Error::new("NoSuchEntity", e.to_string()).status(StatusCode::NOT_FOUND)
        }
        AccountError::Unavailable(_) => Ec2Error::new("ServiceUnavailable", e.to_string())
            .status(StatusCode::SERVICE_UNAVAILABLE),
        AccountError::Store(e) => {
            tracing::error!(error = %e, "account store failed");
            Ec2Error::internal()
        }
    }
}

fn denied(what: &str) -> Ec2Error {
    Ec2Error::new(
        "AccessDenied",
        format!("Only the cloud's administrators may {what}."),
    )
    .status(StatusCode::FORBIDDEN)
}

/// A document `<{Action}Response><{Action}Result>{result}</...>`.
fn response(call: &Call, result: &str) -> String {
    let a = &call.action;
    let result = if result.is_empty() {
        String::new()
    } else {
        format!("<{a}Result>{result}</{a}Result>")
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{a}Response xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">{result}<ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{a}Response>",
        call.request_id
    )
}

fn el(name: &str, text: &str) -> String {
    format!("<{name}>{}</{name}>", escape(text))
}

fn account_xml(a: &Account) -> String {
    format!(
        "{}{}",
        el("AccountName", &a.name),
        el("AccountId", &a.account_id)
    )
}

/// The account a key call acts on: the caller's own, or for the admin the
/// one `DelegateAccount` names.
fn target_account(ec2: &Ec2, call: &Call) -> Result<Account, Ec2Error> {
    match call.params.get("DelegateAccount") {
        Some(other) if other != call.caller.account_name && other != call.caller.account_id => {
            if !call.caller.admin {
                return Err(denied("act for another account"));
            }
            ec2.cloud.accounts.find(other).map_err(account_error)
        }
        _ => ec2
            .cloud
            .accounts
            .find(&call.caller.account_id)
            .map_err(account_error),
    }
}

/// Serves one Euare action.
pub async fn run(ec2: &Ec2, call: &Call) -> Result<String, Ec2Error> {
    let accounts = &ec2.cloud.accounts;
    let p = &call.params;
    match call.action.as_str() {
        "CreateAccount" => {
            if !call.caller.admin {
                return Err(denied("create accounts"));
            }
            let name = p.required("AccountName")?;
            let a = accounts.create(name).map_err(account_error)?;
            tracing::info!(account = %a.name, account_id = %a.account_id, "account created (Euare)");
            Ok(response(
                call,
                &format!("<Account>{}</Account>", account_xml(&a)),
            ))
        }
        "ListAccounts" => {
            if !call.caller.admin {
                return Err(denied("list accounts"));
            }
            let list = accounts.list().map_err(account_error)?;
            let members: String = list
                .iter()
                .map(|a| format!("<member>{}</member>", account_xml(a)))
                .collect();
            Ok(response(
                call,
                &format!("<Accounts>{members}</Accounts><IsTruncated>false</IsTruncated>"),
            ))
        }
        "DeleteAccount" => {
            if !call.caller.admin {
                return Err(denied("delete accounts"));
            }
            let name = p.required("AccountName")?;
            let a = ec2
                .cloud
                .delete_account(name)
                .await
                .map_err(account_error)?;
            tracing::info!(account = %a.name, "account deleted (Euare)");
            Ok(response(call, ""))
        }
        "CreateAccessKey" => {
            let account = target_account(ec2, call)?;
            let user = p.get("UserName").unwrap_or(ADMIN_USER);
            let k = accounts
                .create_key(&account.name, user)
                .map_err(account_error)?;
            tracing::info!(account = %account.name, user, access_key_id = %k.access_key_id, "access key created (Euare)");
            Ok(response(
                call,
                &format!(
                    "<AccessKey>{}{}{}{}{}</AccessKey>",
                    el("UserName", &k.user_name),
                    el("AccessKeyId", &k.access_key_id),
                    el("Status", "Active"),
                    el("SecretAccessKey", &k.secret_access_key),
                    el("CreateDate", &time::iso8601_ms(k.created_ms)),
                ),
            ))
        }
        "ListAccessKeys" => {
            let account = target_account(ec2, call)?;
            let user = p.get("UserName");
            let keys: Vec<AccessKey> = accounts
                .keys_of(&account.name)
                .map_err(account_error)?
                .into_iter()
                .filter(|k| user.is_none_or(|u| u == k.user_name))
                .collect();
            let members: String = keys
                .iter()
                .map(|k| {
                    format!(
                        "<member>{}{}{}{}</member>",
                        el("UserName", &k.user_name),
                        el("AccessKeyId", &k.access_key_id),
                        el("Status", "Active"),
                        el("CreateDate", &time::iso8601_ms(k.created_ms)),
                    )
                })
                .collect();
            Ok(response(
                call,
                &format!(
                    "<AccessKeyMetadata>{members}</AccessKeyMetadata><IsTruncated>false</IsTruncated>"
                ),
            ))
        }
        "DeleteAccessKey" => {
            let account = target_account(ec2, call)?;
            let id = p.required("AccessKeyId")?;
            let key = accounts
                .keys_of(&account.name)
                .map_err(account_error)?
                .into_iter()
                .find(|k| k.access_key_id == id)
                .ok_or_else(|| {
                    Ec2Error::new(
                        "NoSuchEntity",
                        format!("The Access Key with id {id} cannot be found."),
                    )
                    .status(StatusCode::NOT_FOUND)
                })?;
            accounts
                .delete_key(&key.access_key_id)
                .map_err(account_error)?;
            tracing::info!(account = %account.name, access_key_id = %key.access_key_id, "access key deleted (Euare)");
            Ok(response(call, ""))
        }
        "CreateLoginProfile" | "UpdateLoginProfile" => {
            let account = target_account(ec2, call)?;
            let user = p.get("UserName").unwrap_or(&call.caller.user_name);
            let create = call.action == "CreateLoginProfile";
            let password = if create {
                p.required("Password")?
            } else {
                // UpdateLoginProfile without a password changes nothing here.
                match p.get("Password") {
                    Some(pw) => pw,
                    None => {
                        accounts
                            .login_profile(&account.name, user)
                            .map_err(account_error)?;
                        return Ok(response(call, ""));
                    }
                }
            };
            let profile = accounts
                .set_password(&account.name, user, password, Some(create))
                .map_err(account_error)?;
            tracing::info!(account = %account.name, user, "console password set (Euare)");
            Ok(response(
                call,
                &if create {
                    login_profile_xml(&profile)
                } else {
                    String::new()
                },
            ))
        }
        "GetLoginProfile" => {
            let account = target_account(ec2, call)?;
            let user = p.get("UserName").unwrap_or(&call.caller.user_name);
            let profile = accounts
                .login_profile(&account.name, user)
                .map_err(account_error)?;
            Ok(response(call, &login_profile_xml(&profile)))
        }
        "DeleteLoginProfile" => {
            let account = target_account(ec2, call)?;
            let user = p.get("UserName").unwrap_or(&call.caller.user_name);
            accounts
                .delete_login_profile(&account.name, user)
                .map_err(account_error)?;
            tracing::info!(account = %account.name, user, "console password removed (Euare)");
            Ok(response(call, ""))
        }
        other => Err(Ec2Error::new(
            "InvalidAction",
            format!("The action {other} is not valid for this web service."),
        )),
    }
}

fn login_profile_xml(p: &crate::accounts::LoginProfile) -> String {
    format!(
        "<LoginProfile>{}{}<PasswordResetRequired>false</PasswordResetRequired></LoginProfile>",
        el("UserName", &p.user_name),
        el("CreateDate", &time::iso8601_ms(p.created_ms)),
    )
}
