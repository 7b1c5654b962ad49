//! FAST tokens (XEP-0484): [`FastTokenStore`] for [`Storage`] (queries in
//! `backend/queries/fast.rs`).

use std::time::Instant;

use async_trait::async_trait;
use starling_api::{ApiResult, FastTokenRecord, FastTokenStore};
use starling_jid::BareJid;

use crate::backend;
use crate::records::AccountAddress;
use crate::{into_api_error, no_account, DatabasePool, Storage, StorageError};

#[async_trait]
impl FastTokenStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.put_fast_token", skip_all, fields(db.system = self.db_system()))]
    async fn put_fast_token(&self, user: &BareJid, token: &FastTokenRecord) -> ApiResult<()> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => on_database!(self, put_fast_token(&account, token)),
        };
        result.map_err(|error| into_api_error("put_fast_token", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.fast_tokens", skip_all, fields(db.system = self.db_system()))]
    async fn fast_tokens(&self, user: &BareJid, agent_id: &str) -> ApiResult<Vec<FastTokenRecord>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(Vec::new());
        };
        on_database!(self, fast_tokens(&account, agent_id))
            .map_err(|error| into_api_error("fast_tokens", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.remove_fast_tokens", skip_all, fields(db.system = self.db_system()))]
    async fn remove_fast_tokens(
        &self,
        user: &BareJid,
        agent_id: Option<&str>,
        issued_before_millis: Option<i64>,
    ) -> ApiResult<u64> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(0);
        };
        on_database!(
            self,
            remove_fast_tokens(&account, agent_id, issued_before_millis)
        )
        .map_err(|error| into_api_error("remove_fast_tokens", user, error))
    }
}
