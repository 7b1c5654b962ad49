//! Account management, shared by `starling user ...` (against the configured
//! storage) and the admin API's AddUser, SetPassword, RemoveUser and
//! ListUsers: the same checks and the same errors for both. Passwords are
//! never stored, only salted SCRAM keys (DESIGN.md "Durable storage").

use starling_api::{ApiError, StorageApi, StoredCredentials};
use starling_jid::BareJid;

/// Why an account operation failed; the messages are what the operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("{0:?} is not a valid bare JID")]
    InvalidJid(String),
    #[error("{0:?} has no localpart: expected USER@DOMAIN")]
    NoLocalpart(String),
    #[error("{0:?} is not a valid domain")]
    InvalidDomain(String),
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("{0} already exists")]
    AlreadyExists(BareJid),
    #[error("{0} does not exist")]
    NotFound(BareJid),
    #[error("{action}: {source}")]
    Storage {
        action: &'static str,
        source: ApiError,
    },
}

impl From<UserError> for ApiError {
    fn from(error: UserError) -> Self {
        match error {
            UserError::InvalidJid(_)
            | UserError::NoLocalpart(_)
            | UserError::InvalidDomain(_)
            | UserError::EmptyPassword => ApiError::Invalid(error.to_string()),
            UserError::AlreadyExists(_) => ApiError::AlreadyExists(error.to_string()),
            UserError::NotFound(_) => ApiError::NotFound(error.to_string()),
            UserError::Storage { source, .. } => source,
        }
    }
}

/// An account address: a bare JID with a localpart.
pub fn parse_account(jid: &str) -> Result<BareJid, UserError> {
    let account: BareJid = jid
        .trim()
        .parse()
        .map_err(|_| UserError::InvalidJid(jid.to_string()))?;
    if account.node().is_none() {
        return Err(UserError::NoLocalpart(jid.to_string()));
    }
    Ok(account)
}

/// Salted SCRAM keys for both hashes; the password itself is never stored.
pub fn credentials_for(password: &str) -> Result<StoredCredentials, UserError> {
    if password.is_empty() {
        return Err(UserError::EmptyPassword);
    }
    Ok(StoredCredentials::for_password(password))
}

/// Create an account.
pub async fn add(
    storage: &dyn StorageApi,
    jid: &str,
    password: &str,
) -> Result<BareJid, UserError> {
    let account = parse_account(jid)?;
    let credentials = credentials_for(password)?;
    match storage.create_account(&account, &credentials).await {
        Ok(()) => Ok(account),
        Err(ApiError::AlreadyExists(_)) => Err(UserError::AlreadyExists(account)),
        Err(source) => Err(UserError::Storage {
            action: "cannot create the account",
            source,
        }),
    }
}

/// Set an account's password.
pub async fn passwd(
    storage: &dyn StorageApi,
    jid: &str,
    password: &str,
) -> Result<BareJid, UserError> {
    let account = parse_account(jid)?;
    let credentials = credentials_for(password)?;
    match storage.set_credentials(&account, &credentials).await {
        Ok(()) => Ok(account),
        Err(ApiError::NotFound(_)) => Err(UserError::NotFound(account)),
        Err(source) => Err(UserError::Storage {
            action: "cannot change the password",
            source,
        }),
    }
}

/// Remove an account and everything stored for it.
pub async fn remove(storage: &dyn StorageApi, jid: &str) -> Result<BareJid, UserError> {
    let account = parse_account(jid)?;
    match storage.remove_account(&account).await {
        Ok(()) => Ok(account),
        Err(ApiError::NotFound(_)) => Err(UserError::NotFound(account)),
        Err(source) => Err(UserError::Storage {
            action: "cannot remove the account",
            source,
        }),
    }
}

/// Revoke an account's FAST tokens (XEP-0484): of one client (its SASL2
/// user agent id) or of all; how many were removed. The client's next
/// token login fails with `<not-authorized/>`, on every node.
pub async fn revoke_fast_tokens(
    storage: &dyn StorageApi,
    jid: &str,
    agent_id: Option<&str>,
) -> Result<(BareJid, u64), UserError> {
    let account = parse_account(jid)?;
    match storage.remove_fast_tokens(&account, agent_id, None).await {
        Ok(removed) => Ok((account, removed)),
        Err(source) => Err(UserError::Storage {
            action: "cannot revoke the fast tokens",
            source,
        }),
    }
}

/// The accounts of a domain, sorted.
pub async fn list(storage: &dyn StorageApi, domain: &str) -> Result<Vec<BareJid>, UserError> {
    let domain = BareJid::domain_jid(domain.trim())
        .map_err(|_| UserError::InvalidDomain(domain.to_string()))?;
    storage
        .list_accounts(domain.domain())
        .await
        .map_err(|source| UserError::Storage {
            action: "cannot list accounts",
            source,
        })
}
