//! XEP-0077 in-band registration: account creation before authentication
//! (section 3.1), and after it, password change (section 3.3) and
//! cancellation (section 3.2).

use starling_api::{ApiError, FeatureSpec, StreamFeature, StreamStage};
use starling_jid::BareJid;
use starling_sasl::validate_password;
use starling_xmpp::{ns, stanza, Element, StanzaError, StanzaErrorCondition};

use crate::shared::Shared;

/// XEP-0077 version 2.4, answered here at the edge (before authentication
/// in `negotiation.rs`, after it in `session.rs`); the router only advertises it.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "registration",
    specification: "XEP-0077",
    disco_features: &[ns::REGISTER],
    iq_namespaces: &[ns::REGISTER],
    stream_features: &[StreamFeature {
        name: "register",
        namespace: ns::REGISTER_FEATURE,
        stage: StreamStage::BeforeAuthenticationInsideTls,
    }],
};

const INSTRUCTIONS: &str = "Choose a username and password to register with this server.";

fn error(request: &Element, condition: StanzaErrorCondition, text: Option<&str>) -> Element {
    let mut stanza_error = StanzaError::new(condition);
    if let Some(text) = text {
        stanza_error = stanza_error.with_text(text);
    }
    // Requests here are get or set, which may always be answered with an error.
    stanza::error_reply(request, &stanza_error).unwrap_or_else(|| stanza::iq_result(request))
}

fn result_with_query(request: &Element, query: Element) -> Element {
    let mut result = stanza::iq_result(request);
    result.append_child(query);
    result
}

/// The text of a non-empty field of the query.
fn field(query: &Element, name: &str) -> Option<String> {
    query
        .get_child(name, ns::REGISTER)
        .map(Element::text)
        .filter(|text| !text.is_empty())
}

/// Derive fresh SCRAM credentials (PBKDF2, CPU work) off the async threads.
async fn derive_credentials(password: String) -> Result<starling_api::StoredCredentials, ApiError> {
    tokio::task::spawn_blocking(move || starling_api::StoredCredentials::for_password(&password))
        .await
        .map_err(|_| ApiError::Internal("credential derivation failed".to_string()))
}

/// A register IQ on a stream that is not authenticated (TLS only, when enabled).
pub(crate) async fn handle_unauthenticated(shared: &Shared, iq: &Element) -> Element {
    let Some(query) = stanza::iq_payload(iq) else {
        return error(iq, StanzaErrorCondition::BadRequest, None);
    };
    match stanza::stanza_type(iq) {
        "get" => {
            // Section 3.1: the fields to fill in.
            let form = Element::new("query", ns::REGISTER)
                .with_child(Element::new("instructions", ns::REGISTER).with_text(INSTRUCTIONS))
                .with_child(Element::new("username", ns::REGISTER))
                .with_child(Element::new("password", ns::REGISTER));
            result_with_query(iq, form)
        }
        "set" => {
            if query.has_child("remove", ns::REGISTER) {
                // Section 3.2: cancellation needs an authenticated stream.
                return error(iq, StanzaErrorCondition::NotAuthorized, None);
            }
            let (Some(username), Some(password)) =
                (field(query, "username"), field(query, "password"))
            else {
                return error(
                    iq,
                    StanzaErrorCondition::NotAcceptable,
                    Some("username and password are required"),
                );
            };
            let Ok(user) = BareJid::from_parts(Some(&username), &shared.domain) else {
                return error(
                    iq,
                    StanzaErrorCondition::NotAcceptable,
                    Some("the username is not a valid localpart"),
                );
            };
            if validate_password(&password).is_err() {
                return error(
                    iq,
                    StanzaErrorCondition::NotAcceptable,
                    Some("the password is not acceptable"),
                );
            }
            let created = match derive_credentials(password).await {
                Ok(credentials) => shared.storage.create_account(&user, &credentials).await,
                Err(failure) => Err(failure),
            };
            match created {
                Ok(()) => {
                    tracing::info!(user = %user, "account registered in band");
                    stanza::iq_result(iq)
                }
                // Section 3.1: the username is taken.
                Err(ApiError::AlreadyExists(_)) => error(iq, StanzaErrorCondition::Conflict, None),
                Err(failure) => {
                    tracing::warn!(user = %user, error = %failure, "in-band registration failed");
                    stanza::error_reply(iq, &failure.to_stanza_error())
                        .unwrap_or_else(|| stanza::iq_result(iq))
                }
            }
        }
        _ => error(iq, StanzaErrorCondition::BadRequest, None),
    }
}

/// The answer to a register IQ of an authenticated session.
pub(crate) struct AuthenticatedOutcome {
    pub reply: Element,
    /// The account was removed: the stream ends after the reply.
    pub account_removed: bool,
}

/// A register IQ from a bound session: what the account is, a password
/// change, or the removal of the account.
pub(crate) async fn handle_authenticated(
    shared: &Shared,
    user: &BareJid,
    iq: &Element,
) -> AuthenticatedOutcome {
    let reply = |reply: Element| AuthenticatedOutcome {
        reply,
        account_removed: false,
    };
    let Some(query) = stanza::iq_payload(iq) else {
        return reply(error(iq, StanzaErrorCondition::BadRequest, None));
    };
    let localpart = user.node().unwrap_or_default();
    match stanza::stanza_type(iq) {
        "get" => {
            // Section 3.1 (already registered): <registered/> and the username.
            let registered = Element::new("query", ns::REGISTER)
                .with_child(Element::new("registered", ns::REGISTER))
                .with_child(Element::new("username", ns::REGISTER).with_text(localpart))
                .with_child(Element::new("password", ns::REGISTER));
            reply(result_with_query(iq, registered))
        }
        "set" if query.has_child("remove", ns::REGISTER) => {
            match shared.storage.remove_account(user).await {
                Ok(()) => {
                    tracing::info!(user = %user, "account removed in band");
                    AuthenticatedOutcome {
                        reply: stanza::iq_result(iq),
                        account_removed: true,
                    }
                }
                Err(failure) => {
                    tracing::warn!(user = %user, error = %failure, "in-band account removal failed");
                    reply(
                        stanza::error_reply(iq, &failure.to_stanza_error())
                            .unwrap_or_else(|| stanza::iq_result(iq)),
                    )
                }
            }
        }
        "set" => {
            // Section 3.3: a password change names the account and the new password.
            let (Some(username), Some(password)) =
                (field(query, "username"), field(query, "password"))
            else {
                return reply(error(
                    iq,
                    StanzaErrorCondition::NotAcceptable,
                    Some("username and password are required"),
                ));
            };
            let same_account = BareJid::from_parts(Some(&username), &shared.domain)
                .is_ok_and(|named| &named == user);
            if !same_account {
                return reply(error(
                    iq,
                    StanzaErrorCondition::NotAllowed,
                    Some("only your own password can be changed"),
                ));
            }
            if validate_password(&password).is_err() {
                return reply(error(
                    iq,
                    StanzaErrorCondition::NotAcceptable,
                    Some("the password is not acceptable"),
                ));
            }
            let changed = match derive_credentials(password).await {
                Ok(credentials) => shared.storage.set_credentials(user, &credentials).await,
                Err(failure) => Err(failure),
            };
            match changed {
                Ok(()) => {
                    tracing::info!(user = %user, "password changed in band");
                    reply(stanza::iq_result(iq))
                }
                Err(failure) => {
                    tracing::warn!(user = %user, error = %failure, "in-band password change failed");
                    reply(
                        stanza::error_reply(iq, &failure.to_stanza_error())
                            .unwrap_or_else(|| stanza::iq_result(iq)),
                    )
                }
            }
        }
        _ => reply(error(iq, StanzaErrorCondition::BadRequest, None)),
    }
}
