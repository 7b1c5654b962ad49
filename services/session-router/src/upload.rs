//! The HTTP File Upload service (XEP-0363 version 0.4.0) at its own domain
//! (`upload.domain`, by default `upload.` + the served domain): disco#info
//! with the XEP-0128 `max-file-size` (section 3), slot requests (section 4)
//! and their errors (section 5). A granted slot is a row in the
//! [`UploadStore`] (its PUT token's hash, the size and type the PUT must
//! match): any connection-manager's HTTP listener checks a PUT against it
//! (`starling_connection_manager::upload`), so the slot needs no secret
//! shared between processes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use starling_api::upload::{
    normalize_content_type, sanitize_file_name, slot_path, to_hex, token_hash,
};
use starling_api::{Origin, UploadQuota, UploadSlotGrant, UploadSlotRecord};
use starling_jid::{BareJid, Jid};
use starling_xmpp::xep::http_upload::{file_too_large, retry, Slot, SlotRequest};
use starling_xmpp::xep::Payload;
use starling_xmpp::{
    ns, stanza, Element, IqType, StanzaError, StanzaErrorCondition, StanzaErrorType,
};

use crate::handlers::disco::{
    empty_items_result, info_result, queried_node, unknown_node, Identity,
};
use crate::router::{Routing, SessionRouter};

/// The upload service's settings (`upload.*`), given to the router when the
/// service is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSettings {
    /// The service's domain (`upload.domain`), normalised.
    pub domain: String,
    /// The largest file a slot is granted for (`upload.max_file_bytes`).
    pub max_file_bytes: u64,
    /// The bytes one account may have in live slots (`upload.quota_bytes`); 0: none.
    pub quota_bytes: u64,
    /// How long an uploaded file is kept (`upload.expire_after_secs`).
    pub expire_after: Duration,
    /// How long a slot's PUT URL is valid (`upload.slot_validity_secs`).
    pub slot_validity: Duration,
    /// The base of the PUT and GET URLs, without a trailing `/` (`upload.public_url`).
    pub public_url: String,
}

/// Why a slot request was not granted (the `outcome` label of
/// `starling_upload_slots_total`, with `granted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotOutcome {
    Granted,
    TooLarge,
    Quota,
    NotAllowed,
    BadRequest,
    Failed,
}

impl SlotOutcome {
    pub(crate) const ALL: [SlotOutcome; 6] = [
        SlotOutcome::Granted,
        SlotOutcome::TooLarge,
        SlotOutcome::Quota,
        SlotOutcome::NotAllowed,
        SlotOutcome::BadRequest,
        SlotOutcome::Failed,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            SlotOutcome::Granted => "granted",
            SlotOutcome::TooLarge => "too_large",
            SlotOutcome::Quota => "quota",
            SlotOutcome::NotAllowed => "not_allowed",
            SlotOutcome::BadRequest => "bad_request",
            SlotOutcome::Failed => "failed",
        }
    }
}

/// The identity of the service (XEP-0363 section 3, example 4).
const SERVICE_IDENTITY: Identity<'static> = Identity {
    category: "store",
    kind: "file",
    name: Some("HTTP File Upload"),
};

/// The name of the item in the server's disco#items (section 3, example 2).
pub(crate) const SERVICE_NAME: &str = "HTTP File Upload";

fn millis(instant: SystemTime) -> i64 {
    instant.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
    })
}

fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// An error reply with an application-specific child (RFC 6120 section 8.3.2).
fn error_with(
    request: &Element,
    error: &StanzaError,
    application: Option<Element>,
) -> Option<Element> {
    let mut reply = stanza::error_reply(request, error)?;
    if let (Some(application), Some(error_element)) =
        (application, reply.get_child_mut("error", ns::CLIENT))
    {
        error_element.append_child(application);
    }
    Some(reply)
}

impl SessionRouter {
    /// Whether `to` is the upload service's domain (the router answers it).
    pub(crate) fn is_upload_service(&self, to: &Jid) -> bool {
        self.config
            .upload
            .as_ref()
            .is_some_and(|upload| to.domain() == upload.domain)
    }

    /// An IQ to the upload service's domain.
    pub(crate) async fn upload_iq(
        &self,
        routing: &Routing<'_>,
        to: &Jid,
        iq: Element,
        iq_type: IqType,
    ) -> Option<Element> {
        let upload = self.config.upload.as_ref()?;
        if !iq_type.is_request() {
            return None;
        }
        // The service is its domain; nothing lives at its users or resources.
        if to.node().is_some() || matches!(to, Jid::Full(_)) {
            return routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable);
        }
        let Some(payload) = stanza::iq_payload(&iq) else {
            return routing.bounce(&iq, StanzaErrorCondition::BadRequest);
        };
        let namespace = payload.namespace().to_string();
        let name = payload.name().to_string();
        match (iq_type, namespace.as_str(), name.as_str()) {
            (IqType::Get, ns::DISCO_INFO | ns::DISCO_ITEMS, "query") => {
                if queried_node(&iq).is_some() {
                    return unknown_node(&iq);
                }
                if namespace == ns::DISCO_ITEMS {
                    return Some(empty_items_result(&iq));
                }
                Some(service_info(&iq, upload.max_file_bytes))
            }
            (IqType::Get, ns::HTTP_UPLOAD, "request") => {
                let outcome_and_reply = self.request_slot(routing, upload, &iq).await;
                let (outcome, reply) = outcome_and_reply;
                self.metrics.count_upload_slot(outcome);
                reply
            }
            _ => routing.bounce(&iq, StanzaErrorCondition::ServiceUnavailable),
        }
    }

    /// A slot request (XEP-0363 section 4): checked, counted against the
    /// account's quota in storage, and answered with the PUT and GET URLs.
    async fn request_slot(
        &self,
        routing: &Routing<'_>,
        upload: &UploadSettings,
        iq: &Element,
    ) -> (SlotOutcome, Option<Element>) {
        // Section 5: a service may refuse whom it does not serve; this one
        // serves the accounts of its server only (no s2s, no components).
        let account: BareJid = match routing.origin {
            Origin::Session { jid, .. } => jid.to_bare(),
            Origin::Server => {
                let error = StanzaError::new(StanzaErrorCondition::NotAllowed)
                    .with_text("Only accounts of this server may upload files");
                return (
                    SlotOutcome::NotAllowed,
                    routing.bounced(stanza::error_reply(iq, &error)),
                );
            }
        };
        let request = match stanza::iq_payload(iq).map(SlotRequest::from_element) {
            Some(Ok(request)) => request,
            Some(Err(invalid)) => {
                return (
                    SlotOutcome::BadRequest,
                    routing.bounced(stanza::error_reply(iq, &invalid.to_stanza_error())),
                )
            }
            None => {
                return (
                    SlotOutcome::BadRequest,
                    routing.bounce(iq, StanzaErrorCondition::BadRequest),
                )
            }
        };
        // Section 5, example 6: too large is `not-acceptable` (modify) with
        // `<file-too-large><max-file-size/>`.
        if request.size > upload.max_file_bytes {
            let error = StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_type(StanzaErrorType::Modify)
                .with_text(format!(
                    "File too large. The maximum file size is {} bytes",
                    upload.max_file_bytes
                ));
            return (
                SlotOutcome::TooLarge,
                routing.bounced(error_with(
                    iq,
                    &error,
                    Some(file_too_large(upload.max_file_bytes)),
                )),
            );
        }
        let content_type = match request.content_type.as_deref() {
            None => None,
            Some(requested) => match normalize_content_type(requested) {
                Some(content_type) => Some(content_type),
                None => {
                    let error = StanzaError::new(StanzaErrorCondition::BadRequest)
                        .with_text("The content-type is not a media type");
                    return (
                        SlotOutcome::BadRequest,
                        routing.bounced(stanza::error_reply(iq, &error)),
                    );
                }
            },
        };
        let mut random = [0u8; 48];
        rand::thread_rng().fill_bytes(&mut random);
        let id = to_hex(&random[..16]);
        let token = to_hex(&random[16..]);
        let file_name = sanitize_file_name(&request.filename);
        let now = (self.clock)();
        let slot = UploadSlotRecord {
            id: id.clone(),
            file_name: file_name.clone(),
            size: request.size,
            content_type,
            token_hash: token_hash(&token),
            created_at_millis: millis(now),
            uploaded_at_millis: None,
        };
        let quota = UploadQuota {
            bytes: upload.quota_bytes,
            now_millis: millis(now),
            stored_for_millis: duration_millis(upload.expire_after),
            pending_for_millis: duration_millis(upload.slot_validity),
        };
        match self
            .storage
            .create_upload_slot(&account, &slot, quota)
            .await
        {
            Ok(UploadSlotGrant::Granted) => {}
            Ok(UploadSlotGrant::QuotaExceeded {
                used_bytes,
                retry_at_millis,
            }) => {
                tracing::debug!(user = %account, used_bytes, size = request.size, "upload slot refused: quota");
                // Section 5, example 7: a temporary error with the time
                // the oldest counted file or slot stops counting.
                let error = StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                    .with_type(StanzaErrorType::Wait)
                    .with_text(format!(
                        "Quota reached: {used_bytes} of {} bytes in use",
                        upload.quota_bytes
                    ));
                let retry_element =
                    retry_at_millis
                        .and_then(|at| u64::try_from(at).ok())
                        .map(|at| {
                            let instant =
                                UNIX_EPOCH + Duration::from_millis(at) + Duration::from_secs(1);
                            retry(&starling_xmpp::xep::delay::rfc3339_utc(instant))
                        });
                return (
                    SlotOutcome::Quota,
                    routing.bounced(error_with(iq, &error, retry_element)),
                );
            }
            Err(error) => return (SlotOutcome::Failed, routing.failure_reply(iq, &error)),
        }
        let url = format!("{}{}", upload.public_url, slot_path(&id, &file_name));
        let slot = Slot {
            put_url: url.clone(),
            put_headers: vec![("Authorization".to_string(), format!("Bearer {token}"))],
            get_url: url,
        };
        (
            SlotOutcome::Granted,
            Some(stanza::iq_result(iq).with_child(slot.to_element())),
        )
    }
}

/// disco#info of the service: its identity, the feature, and the XEP-0128
/// form with `max-file-size` in bytes (section 3, example 4).
fn service_info(request: &Element, max_file_bytes: u64) -> Element {
    let mut reply = info_result(
        request,
        &SERVICE_IDENTITY,
        &[ns::DISCO_INFO, ns::HTTP_UPLOAD],
    );
    let form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "result")
        .with_child(
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(ns::HTTP_UPLOAD)),
        )
        .with_child(
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", "max-file-size")
                .with_child(
                    Element::new("value", ns::DATA_FORMS).with_text(max_file_bytes.to_string()),
                ),
        );
    if let Some(query) = reply.get_child_mut("query", ns::DISCO_INFO) {
        query.append_child(form);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disco_info_carries_the_max_file_size_form() {
        let request = Element::new("iq", ns::CLIENT)
            .with_attr("id", "step_02")
            .with_attr("type", "get")
            .with_attr("from", "romeo@montague.tld/garden")
            .with_attr("to", "upload.montague.tld")
            .with_child(Element::new("query", ns::DISCO_INFO));
        assert_eq!(
            service_info(&request, 5_242_880).to_stanza_xml(),
            "<iq type='result' id='step_02' to='romeo@montague.tld/garden' from='upload.montague.tld'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='store' type='file' name='HTTP File Upload'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='urn:xmpp:http:upload:0'/><x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:http:upload:0</value></field><field var='max-file-size'><value>5242880</value></field></x></query></iq>"
        );
    }
}
