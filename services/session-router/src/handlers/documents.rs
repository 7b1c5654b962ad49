//! The XML documents the server keeps on an account's behalf
//! ([`starling_api::AccountDataStore`]): private XML storage (`private.rs`,
//! XEP-0049) and the vCard (`vcard.rs`, XEP-0054) read and write their
//! payloads here, serialised as they were sent.

use starling_api::ApiResult;
use starling_jid::BareJid;
use starling_xmpp::{parse_element, Element, Limits};

use crate::router::SessionRouter;

/// The document stored under `key` for `user`, parsed back; `None` when
/// there is none. A stored document that no longer parses (written by
/// hand, or by an older version) counts as absent, and is logged.
pub(crate) async fn load(
    router: &SessionRouter,
    user: &BareJid,
    key: &str,
) -> ApiResult<Option<Element>> {
    let Some(xml) = router.storage.account_data(user, key).await? else {
        return Ok(None);
    };
    // What the server stored itself, bounded on write by
    // `storage.max_account_data_bytes`: parsed under its own size, so that
    // the escaping of re-serialisation never makes it unreadable.
    let limits = Limits {
        max_stanza_bytes: xml.len().max(1),
        ..Limits::default()
    };
    match parse_element(xml.as_bytes(), &limits) {
        Ok(element) => Ok(Some(element)),
        Err(error) => {
            tracing::warn!(user = %user, key, %error, "a stored document does not parse, treated as absent");
            Ok(None)
        }
    }
}

/// Store `document` under `key` for `user`.
pub(crate) async fn store(
    router: &SessionRouter,
    user: &BareJid,
    key: &str,
    document: &Element,
) -> ApiResult<()> {
    router
        .storage
        .put_account_data(user, key, Some(&document.to_xml()))
        .await
}
