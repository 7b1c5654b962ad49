//! FAST (XEP-0484, `urn:xmpp:fast:0`): token re-authentication in SASL2 with
//! HT-SHA-256-EXPR (bound to the TLS session by `tls-exporter`, TLS 1.3),
//! HT-SHA-256-ENDP (bound to our certificate by `tls-server-end-point`) and
//! HT-SHA-256-NONE. Each is offered where the stream has its channel binding
//! data; HT-SHA-256-UNIQ never (`tls-unique` is undefined in TLS 1.3 and
//! unsafe in TLS 1.2 without the extended master secret, RFC 9266 section
//! 3). No 0-RTT: a token is only ever used after TLS (or the WebSocket) is
//! up, in an ordinary `<authenticate/>`.
//!
//! A token is bound to the account, the client's `<user-agent id/>` and its
//! mechanism. It is never stored: it is derived from the server secret (the
//! one every node of the cluster shares, `Shared::scram_secret`), the
//! account, the user agent and the instant it was issued; the storage keeps
//! that instant, the expiry and the SHA-256 of the token. Verifying derives
//! it again, checks it against the stored hash, then checks the client's
//! HMAC. A token stolen from the database alone is useless.
//!
//! Rotation: every FAST login is answered with a new token; the client keeps
//! the one it used until it uses the new one, which removes the older ones.
//! `<fast invalidate='true'/>` removes the client's tokens after the login
//! (a logout); `starling user fast-revoke` removes them from outside.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling_api::FastTokenRecord;
use starling_jid::BareJid;
use starling_sasl::{ChannelBindings, HtInitial, Mechanism, SaslError, ScramHash, ServerSecret};
use starling_xmpp::xep::delay::rfc3339_utc;
use starling_xmpp::{ns, Element};

use crate::shared::Shared;

/// What an `<authenticate/>` asks of FAST besides authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FastRequest {
    /// `<request-token mechanism/>`: the mechanism of the token wanted.
    pub request_token: Option<String>,
    /// `<fast invalidate='true'/>`: remove this client's tokens after the login.
    pub invalidate: bool,
}

impl FastRequest {
    pub fn parse(authenticate: &Element) -> Self {
        FastRequest {
            request_token: authenticate
                .get_child("request-token", ns::FAST)
                .and_then(|request| request.attr("mechanism"))
                .map(str::to_string),
            invalidate: authenticate
                .get_child("fast", ns::FAST)
                .and_then(|fast| fast.attr("invalidate"))
                .is_some_and(|value| matches!(value, "true" | "1")),
        }
    }
}

/// The FAST token a login used: when it was issued, and its mechanism
/// (its replacement is issued for the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UsedToken {
    pub issued_at_millis: i64,
    pub mechanism: Mechanism,
}

/// Milliseconds since the Unix epoch.
fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// The token of `mechanism` issued to `user`'s client `agent_id` at
/// `issued_at_millis` (XEP-0484: a token is bound to its mechanism).
fn derive_token(
    secret: &ServerSecret,
    user: &BareJid,
    agent_id: &str,
    issued_at_millis: i64,
    mechanism: Mechanism,
) -> String {
    let mechanism = mechanism.as_str();
    let input = format!("{user}\0{agent_id}\0{issued_at_millis}\0{mechanism}");
    starling_sasl::encode_base64(&secret.derive(b"starling fast token", input.as_bytes()))
}

fn token_hash(token: &str) -> Vec<u8> {
    ScramHash::Sha256.hash(token.as_bytes())
}

/// The FAST mechanisms a stream with `bindings` offers, strongest first.
pub(crate) fn mechanisms(bindings: &ChannelBindings) -> impl Iterator<Item = Mechanism> + '_ {
    Mechanism::FAST
        .iter()
        .copied()
        .filter(|mechanism| mechanism.available_with(bindings))
}

/// `<fast xmlns='urn:xmpp:fast:0'>` in the SASL2 `<inline/>` (XEP-0484
/// section "Discovering support"), with the mechanisms of a stream with `bindings`.
pub(crate) fn feature(bindings: &ChannelBindings) -> Element {
    let mut fast = Element::new("fast", ns::FAST);
    for mechanism in mechanisms(bindings) {
        fast.append_child(Element::new("mechanism", ns::FAST).with_text(mechanism.as_str()));
    }
    fast
}

/// Authenticate with a token of `mechanism`, over a stream whose data for
/// the mechanism's channel binding is `channel_binding` (empty for NONE):
/// the account, the server's final message and the token used.
pub(crate) async fn authenticate(
    shared: &Shared,
    user: Option<BareJid>,
    agent_id: Option<&str>,
    initial: &HtInitial,
    mechanism: Mechanism,
    channel_binding: &[u8],
) -> Result<(BareJid, Vec<u8>, UsedToken), SaslError> {
    // XEP-0484: tokens are bound to the user agent; without its id there is none.
    let (Some(user), Some(agent_id)) = (user, agent_id) else {
        return Err(SaslError::NotAuthorized("no account or no user agent id"));
    };
    let tokens = shared
        .storage
        .fast_tokens(&user, agent_id)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "fast token lookup failed");
            SaslError::TemporaryAuthFailure("tokens unavailable")
        })?;
    for record in tokens
        .iter()
        .filter(|record| record.mechanism == mechanism.as_str())
    {
        let token = derive_token(
            &shared.scram_secret,
            &user,
            agent_id,
            record.issued_at_millis,
            mechanism,
        );
        if token_hash(&token) != record.token_hash {
            // Issued under another server secret (a replaced TLS key).
            continue;
        }
        // With EXPR or ENDP the proof covers this stream's channel binding
        // data too: a token proof relayed from another TLS session fails.
        let Some(responder) = initial.verify(token.as_bytes(), channel_binding) else {
            continue;
        };
        if record.expires_at_millis <= now_millis() {
            return Err(SaslError::CredentialsExpired("fast token expired"));
        }
        let used = UsedToken {
            issued_at_millis: record.issued_at_millis,
            mechanism,
        };
        return Ok((user, responder, used));
    }
    Err(SaslError::NotAuthorized("no such fast token"))
}

/// What FAST adds to a SASL2 success: the tokens of a login that invalidates
/// them are removed; older tokens than the one just used are removed and a
/// new one of its mechanism is issued (rotation); one asked for with
/// `<request-token/>` is issued if its mechanism is offered on this stream
/// (with `bindings`). `Some(<token/>)` when one was issued.
pub(crate) async fn after_success(
    shared: &Shared,
    user: &BareJid,
    agent_id: Option<&str>,
    request: &FastRequest,
    used_token: Option<UsedToken>,
    bindings: &ChannelBindings,
) -> Option<Element> {
    let ttl_secs = shared.fast_token_ttl_secs;
    let agent_id = agent_id?;
    if ttl_secs == 0 {
        return None;
    }
    let storage = &shared.storage;
    let mechanism;
    if let Some(UsedToken {
        issued_at_millis: issued_at,
        mechanism: used_mechanism,
    }) = used_token
    {
        let older = if request.invalidate {
            None
        } else {
            Some(issued_at)
        };
        if let Err(error) = storage
            .remove_fast_tokens(user, Some(agent_id), older)
            .await
        {
            tracing::warn!(user = %user, %error, "fast tokens not rotated");
        }
        if request.invalidate {
            shared.metrics.sasl2_event("fast_invalidated");
            return None;
        }
        mechanism = used_mechanism;
    } else {
        // Nothing asked, or a mechanism not offered on this stream (ignored: no token).
        let requested = request
            .request_token
            .as_deref()
            .and_then(Mechanism::fast_from_name)
            .filter(|requested| requested.available_with(bindings))?;
        mechanism = requested;
    }
    // Never the same instant as the token in use (a rotation within 1 ms).
    let issued_at = now_millis().max(used_token.map_or(0, |used| used.issued_at_millis + 1));
    let expires =
        UNIX_EPOCH + Duration::from_millis(issued_at as u64) + Duration::from_secs(ttl_secs);
    let token = derive_token(&shared.scram_secret, user, agent_id, issued_at, mechanism);
    let record = FastTokenRecord {
        agent_id: agent_id.to_string(),
        mechanism: mechanism.as_str().to_string(),
        issued_at_millis: issued_at,
        expires_at_millis: issued_at.saturating_add((ttl_secs as i64).saturating_mul(1000)),
        token_hash: token_hash(&token),
    };
    if let Err(error) = storage.put_fast_token(user, &record).await {
        tracing::warn!(user = %user, %error, "fast token not stored, none issued");
        return None;
    }
    shared.metrics.sasl2_event("fast_token_issued");
    Some(
        Element::new("token", ns::FAST)
            .with_attr("expiry", rfc3339_utc(expires))
            .with_attr("token", token),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_account_agent_and_instant() {
        let secret = ServerSecret::derive_from(b"key material");
        let juliet: BareJid = "juliet@example.com".parse().unwrap();
        let romeo: BareJid = "romeo@example.com".parse().unwrap();
        let none = Mechanism::HtSha256None;
        let token = derive_token(&secret, &juliet, "agent-1", 1_000, none);
        assert_eq!(
            token,
            derive_token(
                &ServerSecret::derive_from(b"key material"),
                &juliet,
                "agent-1",
                1_000,
                none
            )
        );
        for other in [
            derive_token(&secret, &romeo, "agent-1", 1_000, none),
            derive_token(&secret, &juliet, "agent-2", 1_000, none),
            derive_token(&secret, &juliet, "agent-1", 1_001, none),
            derive_token(&secret, &juliet, "agent-1", 1_000, Mechanism::HtSha256Expr),
            derive_token(
                &ServerSecret::derive_from(b"other key"),
                &juliet,
                "agent-1",
                1_000,
                none,
            ),
        ] {
            assert_ne!(token, other);
        }
        assert_eq!(token_hash(&token).len(), 32);
    }

    #[test]
    fn channel_bound_mechanisms_only_where_the_stream_has_the_data() {
        assert_eq!(
            feature(&ChannelBindings::none()).to_xml(),
            "<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast>"
        );
        assert_eq!(
            feature(&ChannelBindings::new(None, Some(vec![1; 32]))).to_xml(),
            "<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-ENDP</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>"
        );
        assert_eq!(
            feature(&ChannelBindings::new(Some(vec![2; 32]), Some(vec![1; 32]))).to_xml(),
            "<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-EXPR</mechanism><mechanism>HT-SHA-256-ENDP</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>"
        );
    }
}
