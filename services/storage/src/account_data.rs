//! Documents kept on an account's behalf: [`AccountDataStore`] for
//! [`Storage`] (queries in `backend/queries/account_data.rs`; private XML
//! storage, XEP-0049, and the vCard, XEP-0054).

use std::time::Instant;

use async_trait::async_trait;
use starling_api::{AccountDataStore, ApiResult};
use starling_jid::BareJid;

use crate::backend;
use crate::records::{check_storable_text, AccountAddress};
use crate::{into_api_error, no_account, now_millis, DatabasePool, Storage, StorageError};

#[async_trait]
impl AccountDataStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.account_data", skip_all, fields(db.system = self.db_system()))]
    async fn account_data(&self, user: &BareJid, key: &str) -> ApiResult<Option<String>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(None);
        };
        on_database!(self, account_data(&account, key))
            .map_err(|error| into_api_error("account_data", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.put_account_data", skip_all, fields(db.system = self.db_system()))]
    async fn put_account_data(
        &self,
        user: &BareJid,
        key: &str,
        xml: Option<&str>,
    ) -> ApiResult<()> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => match xml.map_or(Ok(()), |xml| check_storable_text("document", xml)) {
                Err(error) => Err(error),
                Ok(()) => on_database!(
                    self,
                    put_account_data(
                        &account,
                        key,
                        xml,
                        self.max_account_data_bytes,
                        now_millis()
                    )
                ),
            },
        };
        result.map_err(|error| into_api_error("put_account_data", user, error))
    }
}
