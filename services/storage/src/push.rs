//! Push registrations (XEP-0357): [`PushStore`] for [`Storage`] (queries in
//! `backend/queries/push.rs`), and the move of the account documents `push`
//! of the previous layout into their table, done when the service starts.

use std::time::Instant;

use async_trait::async_trait;
use starling_api::{ApiResult, PushRegistration, PushStore};
use starling_jid::BareJid;
use starling_xmpp::{parse_element, Limits};

use crate::backend;
use crate::records::AccountAddress;
use crate::{into_api_error, no_account, DatabasePool, Storage, StorageError};

/// The `push` documents moved per query.
const MOVE_BATCH: i64 = 500;

#[async_trait]
impl PushStore for Storage {
    #[tracing::instrument(target = "starling_trace", name = "storage.push_registrations", skip_all, fields(db.system = self.db_system()))]
    async fn push_registrations(&self, user: &BareJid) -> ApiResult<Vec<PushRegistration>> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(Vec::new());
        };
        on_database!(self, push_registrations(&account))
            .map_err(|error| into_api_error("push_registrations", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.put_push_registration", skip_all, fields(db.system = self.db_system()))]
    async fn put_push_registration(
        &self,
        user: &BareJid,
        registration: &PushRegistration,
        max_per_account: u32,
    ) -> ApiResult<()> {
        let result = match AccountAddress::of(user) {
            None => Err(no_account(user)),
            Some(account) => on_database!(
                self,
                put_push_registration(&account, registration, max_per_account)
            ),
        };
        result.map_err(|error| into_api_error("put_push_registration", user, error))
    }

    #[tracing::instrument(target = "starling_trace", name = "storage.remove_push_registrations", skip_all, fields(db.system = self.db_system()))]
    async fn remove_push_registrations(
        &self,
        user: &BareJid,
        service_jid: &str,
        node: Option<&str>,
    ) -> ApiResult<u64> {
        let Some(account) = AccountAddress::of(user) else {
            return Ok(0);
        };
        on_database!(self, remove_push_registrations(&account, service_jid, node))
            .map_err(|error| into_api_error("remove_push_registrations", user, error))
    }
}

/// The registrations of a `push` document of the previous layout:
/// `<push xmlns='urn:xmpp:push:0'>` with one `<enable jid node>` (and its
/// publish-options form) per registration, as the router wrote it. What
/// does not read is left out (and logged).
pub(crate) fn registrations_of_document(xml: &str) -> Vec<PushRegistration> {
    let limits = Limits {
        max_stanza_bytes: xml.len().max(1),
        ..Limits::default()
    };
    let document = match parse_element(xml.as_bytes(), &limits) {
        Ok(document) => document,
        Err(error) => {
            tracing::warn!(%error, "a push document does not parse, its registrations are dropped");
            return Vec::new();
        }
    };
    document
        .children()
        .filter(|child| child.name() == "enable")
        .filter_map(|enable| {
            Some(PushRegistration {
                service_jid: enable.attr("jid")?.to_string(),
                node: enable.attr("node")?.to_string(),
                publish_options_xml: enable.children().next().map(|form| form.to_xml()),
            })
        })
        .collect()
}

impl Storage {
    /// Move every account document `push` (the layout before the
    /// `push_registrations` table) into the table; returns how many
    /// documents moved. Safe to run on several replicas at once and again.
    pub async fn move_push_documents(&self) -> Result<u64, StorageError> {
        let mut moved = 0;
        loop {
            let documents = on_database!(self, legacy_push_documents(MOVE_BATCH))?;
            if documents.is_empty() {
                return Ok(moved);
            }
            for (domain, localpart, xml) in &documents {
                let account = AccountAddress { domain, localpart };
                let registrations = registrations_of_document(xml);
                on_database!(self, move_push_document(&account, &registrations))?;
                moved += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_of_the_previous_layout_reads_as_registrations() {
        let xml = "<push xmlns='urn:xmpp:push:0'><enable jid='push.example.com' node='n1'/>\
                   <enable jid='push.example.com' node='n2'><x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s</value></field></x></enable>\
                   <enable node='no-jid'/></push>";
        assert_eq!(
            registrations_of_document(xml),
            vec![
                PushRegistration {
                    service_jid: "push.example.com".into(),
                    node: "n1".into(),
                    publish_options_xml: None,
                },
                PushRegistration {
                    service_jid: "push.example.com".into(),
                    node: "n2".into(),
                    publish_options_xml: Some(
                        "<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s</value></field></x>".into()
                    ),
                },
            ]
        );
        assert!(registrations_of_document("<push").is_empty());
    }
}
