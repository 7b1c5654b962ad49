//! SASL2 (XEP-0388, `urn:xmpp:sasl:2`) around the SASL exchange of
//! [`super::sasl`]: what `<authenticate/>` asks for besides authentication
//! (its `<user-agent/>`, a Bind 2 request, a stream resumption), and the
//! `<success/>` that completes it without a stream restart:
//!
//! 1. a `<resume/>` (XEP-0198 section 5, inline in SASL2) is tried first; if
//!    it succeeds the bind is ignored, and `<resumed/>` is in the success;
//! 2. otherwise a `<bind xmlns='urn:xmpp:bind:0'/>` (XEP-0386) binds a
//!    resource `tag/random`, enables what the client asked inline (stream
//!    management, carbons, a client state) and answers `<bound/>`, with the
//!    resumption's `<failed/>` if there was one;
//! 3. without a bind the stream is authenticated and the client binds the
//!    RFC 6120 way; the features of an authenticated stream follow.

use std::sync::Arc;

use starling_api::BindError;
use starling_jid::{normalize_resourcepart, BareJid, FullJid, Jid};
use starling_sasl::{ChannelBindings, SaslFailureCondition};
use starling_xmpp::{ns, Element};

use super::bind::{bind_session, BoundStream};
use super::fast::{self, FastRequest};
use super::features::{FeatureSet, Sasl2Offer, Stage};
use super::resume;
use super::sasl::{sasl_failure, Profile};
use super::stream::{NegotiatingStream, StreamEnd};
use crate::csi::ClientState;
use crate::shared::Shared;
use crate::transport::Transport;

/// The longest `<tag/>` kept in a resource (XEP-0386 section "Resource
/// identifier generation": a short text; the rest of the resource is ours).
const MAX_TAG_CHARS: usize = 64;
/// The longest `<user-agent/>` id, software or device name kept (XEP-0388:
/// an id is a UUID; names are short).
const MAX_USER_AGENT_CHARS: usize = 128;

/// What SASL2 offers on this node: Bind 2 with the session features it can
/// enable inline, and resumption inline when resumption is offered.
pub(crate) fn offer(shared: &Shared, bindings: &ChannelBindings) -> Option<Sasl2Offer> {
    if !shared.sasl2_enabled {
        return None;
    }
    let mut bind_inline = Vec::new();
    if shared.carbons_enabled && shared.resumption.is_some() {
        bind_inline.push(ns::CARBONS);
    }
    if shared.csi_enabled {
        bind_inline.push(ns::CSI);
    }
    if shared.sm.enabled {
        bind_inline.push(ns::SM);
    }
    Some(Sasl2Offer {
        bind_inline,
        sm_resume: shared.resumption_offered(),
        fast: (shared.fast_token_ttl_secs > 0).then(|| fast::feature(bindings)),
    })
}

/// The client's `<user-agent/>` (XEP-0388 section "Initiation").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UserAgent {
    pub id: Option<String>,
    pub software: Option<String>,
    pub device: Option<String>,
}

/// What an `<authenticate/>` asks for besides the SASL exchange.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sasl2Request {
    pub user_agent: UserAgent,
    /// `<bind xmlns='urn:xmpp:bind:0'/>` (XEP-0386).
    pub bind: Option<Element>,
    /// `<resume xmlns='urn:xmpp:sm:3'/>` (XEP-0198 section 5).
    pub resume: Option<Element>,
    /// FAST token requests (XEP-0484).
    pub fast: FastRequest,
}

fn bounded(text: String) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(MAX_USER_AGENT_CHARS).collect())
}

impl Sasl2Request {
    /// Read an `<authenticate/>`. A child nobody offered is ignored (XEP-0388
    /// section "Initiation": extensions the server does not know are not
    /// negotiated; the success says what was).
    pub fn parse(authenticate: &Element) -> Self {
        let user_agent = authenticate
            .get_child("user-agent", ns::SASL2)
            .map(|agent| UserAgent {
                id: agent.attr("id").map(str::to_string).and_then(bounded),
                software: agent
                    .get_child("software", ns::SASL2)
                    .map(Element::text)
                    .and_then(bounded),
                device: agent
                    .get_child("device", ns::SASL2)
                    .map(Element::text)
                    .and_then(bounded),
            })
            .unwrap_or_default();
        Sasl2Request {
            user_agent,
            bind: authenticate.get_child("bind", ns::BIND2).cloned(),
            resume: authenticate.get_child("resume", ns::SM).cloned(),
            fast: FastRequest::parse(authenticate),
        }
    }
}

/// How a SASL2 success was completed.
pub(crate) enum Completed<T> {
    /// Bound (Bind 2) or resumed: the session takes the stream.
    Session(Box<BoundStream<T>>),
    /// Authenticated; the client binds next (RFC 6120 section 7).
    Authenticated,
    /// Bind 2 could not bind: the client got a `<failure/>`, and the stream
    /// is not authenticated.
    Failed,
}

/// `<success xmlns='urn:xmpp:sasl:2'>` with the additional data (XEP-0388
/// section "Success") and the authorization identifier.
fn success(additional_data: &[u8], authorization_identifier: &Jid) -> Element {
    let mut success = Element::new("success", ns::SASL2);
    if !additional_data.is_empty() {
        success.append_child(
            Element::new("additional-data", ns::SASL2)
                .with_text(starling_sasl::encode_base64(additional_data)),
        );
    }
    success.with_child(
        Element::new("authorization-identifier", ns::SASL2)
            .with_text(authorization_identifier.to_string()),
    )
}

/// Complete the SASL2 success of `user` with what `request` asked inline.
pub(crate) async fn complete<T: Transport>(
    stream: &mut NegotiatingStream<T>,
    user: &BareJid,
    request: Sasl2Request,
    additional_data: Vec<u8>,
    used_token: Option<fast::UsedToken>,
) -> Result<Completed<T>, StreamEnd> {
    tracing::info!(
        conn = stream.conn,
        user = %user,
        user_agent = ?request.user_agent.software,
        device = ?request.user_agent.device,
        bind = request.bind.is_some(),
        resume = request.resume.is_some(),
        "sasl2 authenticated"
    );
    // XEP-0484: a token issued (asked for, or rotated) rides in the success.
    let token = fast::after_success(
        &stream.shared,
        user,
        request.user_agent.id.as_deref(),
        &request.fast,
        used_token,
        &stream.channel_bindings(),
    )
    .await;
    let success = |identifier: Jid| {
        let mut success = success(&additional_data, &identifier);
        if let Some(token) = &token {
            success.append_child(token.clone());
        }
        success
    };
    let mut resume_failed = None;
    if let Some(resume) = request.resume.filter(|_| stream.shared.sm.enabled) {
        // XEP-0386 section "Performing the bind": the resumption first; if it
        // succeeds, the bind request is ignored.
        let answer =
            |resumed: Element, jid: &FullJid| success(Jid::from(jid.clone())).with_child(resumed);
        match resume::resume_stream(stream, Some(user), resume, answer).await? {
            Ok(bound) => {
                stream.shared.metrics.sasl2_event("resumed");
                return Ok(Completed::Session(Box::new(bound)));
            }
            Err(failed) => resume_failed = Some(failed),
        }
    }
    let Some(bind) = request.bind else {
        let mut answer = success(Jid::from(user.clone()));
        if let Some(failed) = resume_failed {
            answer.append_child(failed);
        }
        stream.send_nonza(&answer.to_xml()).await?;
        // XEP-0388 section "Success": the features of the authenticated
        // stream follow at once; there is no restart.
        let features = FeatureSet::for_stage(
            Stage {
                tls_active: stream.is_tls(),
                starttls_possible: false,
                tls_required: stream.tls_required(),
                authenticated: true,
            },
            &stream.shared.stream_features,
        );
        stream.send_features(&features.to_xml()).await?;
        stream.shared.metrics.sasl2_event("authenticated");
        return Ok(Completed::Authenticated);
    };
    bind2(stream, user, &bind, success, resume_failed).await
}

/// The resource of a Bind 2 request: `tag/random` (XEP-0386 section
/// "Resource identifier generation"), or the random part alone when the tag
/// is missing or cannot be part of a resource.
fn bind2_resource(tag: Option<&str>) -> String {
    let random: String = crate::xml::random_id().chars().take(12).collect();
    tag.map(|tag| tag.trim().chars().take(MAX_TAG_CHARS).collect::<String>())
        .filter(|tag| !tag.is_empty())
        .and_then(|tag| normalize_resourcepart(&format!("{tag}/{random}")).ok())
        .unwrap_or(random)
}

/// Bind 2 (XEP-0386): bind, enable what was asked inline, answer `<success/>`
/// with `<bound/>`.
async fn bind2<T: Transport>(
    stream: &mut NegotiatingStream<T>,
    user: &BareJid,
    bind: &Element,
    success: impl FnOnce(Jid) -> Element,
    resume_failed: Option<Element>,
) -> Result<Completed<T>, StreamEnd> {
    let shared = Arc::clone(&stream.shared);
    let tag = bind.get_child("tag", ns::BIND2).map(Element::text);
    let resource = bind2_resource(tag.as_deref());
    let (jid, addr, handle) = match bind_session(&shared, stream.conn, user, Some(&resource)).await
    {
        Ok(bound) => bound,
        Err(error) => {
            // XEP-0386 names no error: the SASL2 <failure/> with the RFC
            // 6120 section 6.5 condition closest to why; the stream stays
            // unauthenticated (XEP-0388 section "Failure").
            let condition = match error {
                BindError::NotAllowed => SaslFailureCondition::NotAuthorized,
                BindError::BadRequest => SaslFailureCondition::MalformedRequest,
                BindError::ResourceConstraint | BindError::Api(_) => {
                    SaslFailureCondition::TemporaryAuthFailure
                }
            };
            shared.metrics.sasl2_event("bind_failed");
            stream
                .send_nonza(&sasl_failure(Profile::Sasl2, condition))
                .await?;
            return Ok(Completed::Failed);
        }
    };
    let mut bound = Element::new("bound", ns::BIND2);
    let mut sm = None;
    let mut client_state = None;
    let mut carbons = false;
    for feature in bind.children() {
        match (feature.namespace(), feature.name()) {
            (ns::SM, "enable") if shared.sm.enabled && sm.is_none() => {
                let (journal, enabled) =
                    crate::sm_session::negotiate_enable(&shared, &jid, &addr, feature).await;
                bound.append_child(enabled);
                sm = Some((journal, shared.sm.max_unacked_stanzas));
            }
            (ns::CARBONS, "enable") if shared.carbons_enabled => carbons = true,
            (ns::CSI, _) if shared.csi_enabled => client_state = ClientState::of(feature),
            (ns::BIND2, "tag") => {}
            (namespace, name) => {
                // Not offered inline: not enabled, and the <bound/> says
                // nothing of it (XEP-0386 section "Performing the bind").
                tracing::debug!(
                    conn = stream.conn,
                    namespace,
                    name,
                    "bind2 inline request not offered, ignored"
                );
                shared.metrics.sasl2_event("inline_ignored");
            }
        }
    }
    if carbons {
        // XEP-0386: carbons MUST be enabled now; the same switch the
        // router's XEP-0280 handler sets, in the shared registry.
        if let Some(resumption) = shared.resumption.as_ref() {
            match resumption.registry.set_carbons(&jid, &addr, true).await {
                Ok(_) => handle.note_carbons(true),
                Err(error) => {
                    tracing::warn!(jid = %jid, %error, "carbons not enabled inline")
                }
            }
        }
    }
    let mut answer = success(Jid::from(jid.clone()));
    if let Some(failed) = resume_failed {
        answer.append_child(failed);
    }
    answer.append_child(bound);
    let features = FeatureSet::after_bind2(&shared.stream_features, sm.is_some()).to_element();
    handle.start_bound(answer, features, sm);
    if let Some(state) = client_state {
        // XEP-0386: the session begins in that state (XEP-0352).
        handle.set_client_state(state, shared.metrics.csi());
    }
    shared.metrics.sasl2_event("bound");
    match BoundStream::take(stream, jid, addr, handle) {
        Some(bound) => Ok(Completed::Session(Box::new(bound))),
        None => {
            shared.remove_connection(stream.conn);
            Err(StreamEnd::ConnectionLost)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_sasl::SaslError;
    use starling_xmpp::{parse_element, Limits};

    #[test]
    fn authenticate_request_with_user_agent_bind_and_resume() {
        let xml = "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'>\
            <initial-response>biwsbj11c2VyLHI9YWJj</initial-response>\
            <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>AwesomeXMPP</software><device>Kiva's Phone</device></user-agent>\
            <bind xmlns='urn:xmpp:bind:0'><tag>AwesomeXMPP</tag><enable xmlns='urn:xmpp:sm:3'/></bind>\
            <resume xmlns='urn:xmpp:sm:3' previd='abc' h='3'/>\
            <unknown xmlns='urn:example'/></authenticate>";
        let element = parse_element(xml.as_bytes(), &Limits::default()).unwrap();
        let request = Sasl2Request::parse(&element);
        assert_eq!(
            request.user_agent,
            UserAgent {
                id: Some("d4565fa7-4d72-4749-b3d3-740edbf87770".into()),
                software: Some("AwesomeXMPP".into()),
                device: Some("Kiva's Phone".into()),
            }
        );
        assert!(request.bind.unwrap().has_child("enable", ns::SM));
        assert_eq!(request.resume.unwrap().attr("previd"), Some("abc"));

        let bare = parse_element(
            b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'/>",
            &Limits::default(),
        )
        .unwrap();
        let request = Sasl2Request::parse(&bare);
        assert_eq!(request.user_agent, UserAgent::default());
        assert!(request.bind.is_none() && request.resume.is_none());
    }

    #[test]
    fn success_carries_additional_data_and_the_identifier() {
        let jid: Jid = "juliet@example.com".parse().unwrap();
        assert_eq!(
            success(b"v=abc", &jid).to_xml(),
            "<success xmlns='urn:xmpp:sasl:2'><additional-data>dj1hYmM=</additional-data><authorization-identifier>juliet@example.com</authorization-identifier></success>"
        );
        assert_eq!(
            success(b"", &jid).to_xml(),
            "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>juliet@example.com</authorization-identifier></success>"
        );
    }

    #[test]
    fn bind2_resources_are_tag_slash_random() {
        let resource = bind2_resource(Some("AwesomeXMPP"));
        let (tag, random) = resource.split_once('/').unwrap();
        assert_eq!(tag, "AwesomeXMPP");
        assert_eq!(random.len(), 12);
        assert_ne!(resource, bind2_resource(Some("AwesomeXMPP")));
        assert_eq!(bind2_resource(None).len(), 12);
        assert_eq!(bind2_resource(Some("  ")).len(), 12);
        // A tag that cannot be in a resource (a control character) is dropped.
        assert_eq!(bind2_resource(Some("bad\u{7}tag")).len(), 12);
        let long = "x".repeat(500);
        assert_eq!(bind2_resource(Some(&long)).len(), MAX_TAG_CHARS + 13);
    }

    #[test]
    fn sasl2_failure_keeps_the_sasl_condition_namespace() {
        let error = SaslError::NotAuthorized("x");
        assert_eq!(
            sasl_failure(Profile::Sasl2, error.condition()),
            "<failure xmlns='urn:xmpp:sasl:2'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>"
        );
    }
}
