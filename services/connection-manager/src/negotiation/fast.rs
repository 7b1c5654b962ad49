//! FAST (XEP-0484, `urn:xmpp:fast:0`): token re-authentication in SASL2 with
//! HT-SHA-256-NONE. No 0-RTT: a token is only ever used after TLS (or the
//! WebSocket) is up, in an ordinary `<authenticate/>`.
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
use starling_sasl::{HtInitial, SaslError, ScramHash, ServerSecret, HT_SHA_256_NONE};
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

/// Milliseconds since the Unix epoch.
fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// The token issued to `user`'s client `agent_id` at `issued_at_millis`.
fn derive_token(
    secret: &ServerSecret,
    user: &BareJid,
    agent_id: &str,
    issued_at_millis: i64,
) -> String {
    let input = format!("{user}\0{agent_id}\0{issued_at_millis}\0{HT_SHA_256_NONE}");
    starling_sasl::encode_base64(&secret.derive(b"starling fast token", input.as_bytes()))
}

fn token_hash(token: &str) -> Vec<u8> {
    ScramHash::Sha256.hash(token.as_bytes())
}

/// `<fast xmlns='urn:xmpp:fast:0'>` in the SASL2 `<inline/>` (XEP-0484
/// section "Discovering support").
pub(crate) fn feature() -> Element {
    Element::new("fast", ns::FAST)
        .with_child(Element::new("mechanism", ns::FAST).with_text(HT_SHA_256_NONE))
}

/// Authenticate with HT-SHA-256-NONE: the account, the server's final
/// message and the issue instant of the token used.
pub(crate) async fn authenticate(
    shared: &Shared,
    user: Option<BareJid>,
    agent_id: Option<&str>,
    initial: &HtInitial,
) -> Result<(BareJid, Vec<u8>, i64), SaslError> {
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
        .filter(|record| record.mechanism == HT_SHA_256_NONE)
    {
        let token = derive_token(
            &shared.scram_secret,
            &user,
            agent_id,
            record.issued_at_millis,
        );
        if token_hash(&token) != record.token_hash {
            // Issued under another server secret (a replaced TLS key).
            continue;
        }
        let Some(responder) = initial.verify(token.as_bytes()) else {
            continue;
        };
        if record.expires_at_millis <= now_millis() {
            return Err(SaslError::CredentialsExpired("fast token expired"));
        }
        return Ok((user, responder, record.issued_at_millis));
    }
    Err(SaslError::NotAuthorized("no such fast token"))
}

/// What FAST adds to a SASL2 success: the tokens of a login that invalidates
/// them are removed; older tokens than the one just used are removed and a
/// new one is issued (rotation); one asked for with `<request-token/>` is
/// issued. `Some(<token/>)` when one was issued.
pub(crate) async fn after_success(
    shared: &Shared,
    user: &BareJid,
    agent_id: Option<&str>,
    request: &FastRequest,
    used_token: Option<i64>,
) -> Option<Element> {
    let ttl_secs = shared.fast_token_ttl_secs;
    let agent_id = agent_id?;
    if ttl_secs == 0 {
        return None;
    }
    let storage = &shared.storage;
    if let Some(issued_at) = used_token {
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
    } else if request.request_token.as_deref() != Some(HT_SHA_256_NONE) {
        // Nothing asked, or a mechanism not offered (ignored: no token).
        return None;
    }
    // Never the same instant as the token in use (a rotation within 1 ms).
    let issued_at = now_millis().max(used_token.map_or(0, |used| used + 1));
    let expires =
        UNIX_EPOCH + Duration::from_millis(issued_at as u64) + Duration::from_secs(ttl_secs);
    let token = derive_token(&shared.scram_secret, user, agent_id, issued_at);
    let record = FastTokenRecord {
        agent_id: agent_id.to_string(),
        mechanism: HT_SHA_256_NONE.to_string(),
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
        let token = derive_token(&secret, &juliet, "agent-1", 1_000);
        assert_eq!(
            token,
            derive_token(
                &ServerSecret::derive_from(b"key material"),
                &juliet,
                "agent-1",
                1_000
            )
        );
        for other in [
            derive_token(&secret, &romeo, "agent-1", 1_000),
            derive_token(&secret, &juliet, "agent-2", 1_000),
            derive_token(&secret, &juliet, "agent-1", 1_001),
            derive_token(
                &ServerSecret::derive_from(b"other key"),
                &juliet,
                "agent-1",
                1_000,
            ),
        ] {
            assert_ne!(token, other);
        }
        assert_eq!(token_hash(&token).len(), 32);
        assert_eq!(
            feature().to_xml(),
            "<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast>"
        );
    }
}
