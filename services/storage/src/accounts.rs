//! Accounts and SCRAM credentials: [`AccountStore`] for [`Storage`]
//! (queries in `backend/queries/accounts.rs`).

use std::time::Instant;

use async_trait::async_trait;
use starling_api::{AccountStore, ApiError, ApiResult, StoredCredentials};
use starling_jid::BareJid;

use crate::backend;
use crate::records::AccountAddress;
use crate::{into_api_error, no_account, now_millis, DatabasePool, Storage, StorageError};

#[async_trait]
impl AccountStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.create_account", skip_all, fields(db.system = self.db_system()))]
    async fn create_account(
        &self,
        user: &BareJid,
        credentials: &StoredCredentials,
    ) -> ApiResult<()> {
        let result = match AccountAddress::of(user) {
            None => Err(StorageError::Invalid(format!(
                "{user} has no localpart and cannot be an account"
            ))),
            Some(account) => {
                on_database!(self, create_account(&account, credentials, now_millis()))
            }
        };
        result.map_err(|error| into_api_error("create_account", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.set_credentials", skip_all, fields(db.system = self.db_system()))]
    async fn set_credentials(
        &self,
        user: &BareJid,
        credentials: &StoredCredentials,
    ) -> ApiResult<()> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => on_database!(self, set_credentials(&account, credentials)),
        };
        result.map_err(|error| into_api_error("set_credentials", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.remove_account", skip_all, fields(db.system = self.db_system()))]
    async fn remove_account(&self, user: &BareJid) -> ApiResult<()> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => on_database!(self, remove_account(&account)),
        };
        result.map_err(|error| into_api_error("remove_account", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.list_accounts", skip_all, fields(db.system = self.db_system()))]
    async fn list_accounts(&self, domain: &str) -> ApiResult<Vec<BareJid>> {
        let domain_jid = BareJid::domain_jid(domain).map_err(|error| {
            ApiError::Invalid(format!("{domain:?} is not a valid domain: {error}"))
        })?;
        let localparts = on_database!(self, account_localparts(domain_jid.domain()))
            .map_err(|error| into_api_error("list_accounts", &domain_jid, error))?;
        let mut accounts = Vec::with_capacity(localparts.len());
        for localpart in localparts {
            match BareJid::from_parts(Some(&localpart), domain_jid.domain()) {
                Ok(account) => accounts.push(account),
                Err(error) => {
                    tracing::warn!(domain = %domain_jid, localpart = %localpart, %error, "skipping stored account with an invalid localpart");
                }
            }
        }
        accounts.sort();
        Ok(accounts)
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.credentials", skip_all, fields(db.system = self.db_system()))]
    async fn credentials(&self, user: &BareJid) -> ApiResult<Option<StoredCredentials>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(None);
        };
        on_database!(self, credentials(&account))
            .map_err(|error| into_api_error("credentials", user, error))
    }
}
