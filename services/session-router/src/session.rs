//! Resource binding (RFC 6120 section 7) and the end of a session.
//!
//! Conflict policy: the newest login wins (RFC 6120 section 7.7.2.2, the
//! server's choice "terminate the existing session"). The registry replaces
//! the old record in one atomic operation; the replaced stream is then closed
//! with a `<conflict/>` stream error and the presence service announces that
//! the old session left.

use rand::Rng;
use starling_api::{ApiError, BindError, SessionAddr, SessionRecord};
use starling_bus::Delivery;
use starling_jid::{BareJid, FullJid};
use starling_xmpp::StreamErrorCondition;

use crate::router::SessionRouter;

/// The text of the `<conflict/>` stream error a replaced session receives.
pub(crate) const REPLACED_TEXT: &str = "replaced by a new session";

/// Length of a server-generated resource: 16 base32 characters, 80 random bits.
const GENERATED_RESOURCE_LENGTH: usize = 16;

/// The RFC 4648 base32 alphabet in lower case (valid under OpaqueString).
const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A random resourcepart for a client that asked the server to choose one
/// (RFC 6120 section 7.6.2.1).
pub(crate) fn generate_resource() -> String {
    let mut random = rand::thread_rng();
    (0..GENERATED_RESOURCE_LENGTH)
        .map(|_| char::from(BASE32_ALPHABET[random.gen_range(0..BASE32_ALPHABET.len())]))
        .collect()
}

impl SessionRouter {
    pub(crate) async fn bind_resource(
        &self,
        user: &BareJid,
        requested: Option<&str>,
        addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        if self.is_component_bind(user, requested) {
            return self.bind_component(user, addr).await;
        }
        if user.node().is_none() || user.domain() != self.config.domain {
            tracing::warn!(user = %user, "bind refused for an account outside the served domain");
            return Err(BindError::NotAllowed);
        }
        let existing = self.registry.sessions(user).await?;
        let jid = match requested {
            Some(resource) => user.with_resource(resource).map_err(|error| {
                tracing::debug!(user = %user, %error, "requested resource is not valid");
                BindError::BadRequest
            })?,
            None => self.fresh_resource(user, &existing)?,
        };

        // RFC 6120 section 7.6.2.1: too many resources => resource-constraint.
        // The registry counts and binds in one atomic step; rebinding a full
        // JID already bound replaces it and does not count.
        let limit = self.config.max_resources_per_user;
        let outcome = match self
            .registry
            .bind_limited(SessionRecord::new(jid.clone(), addr.clone()), limit)
            .await
        {
            Ok(outcome) => outcome,
            Err(ApiError::LimitReached(reason)) => {
                tracing::info!(user = %user, limit, %reason, "bind refused, too many resources");
                return Err(BindError::ResourceConstraint);
            }
            Err(error) => return Err(error.into()),
        };
        if let Some(replaced) = outcome.replaced {
            if &replaced.addr != addr {
                self.close_replaced_session(&replaced).await;
            }
        }
        tracing::debug!(jid = %jid, node = %addr.node, conn = addr.conn, "resource bound");
        Ok(jid)
    }

    /// A generated resource no current session of the account uses.
    fn fresh_resource(
        &self,
        user: &BareJid,
        existing: &[SessionRecord],
    ) -> Result<FullJid, BindError> {
        loop {
            let resource = generate_resource();
            if existing
                .iter()
                .any(|session| session.jid.resource() == resource)
            {
                continue;
            }
            return user.with_resource(&resource).map_err(|error| {
                tracing::error!(user = %user, %error, "generated resource rejected");
                BindError::BadRequest
            });
        }
    }

    /// The newest login won: close the old stream with `<conflict/>` and
    /// announce the old session's departure (RFC 6120 section 7.7.2.2).
    async fn close_replaced_session(&self, replaced: &SessionRecord) {
        self.close_replaced_connection(replaced).await;
        self.announce_session_end(&replaced.jid, replaced.available)
            .await;
    }

    /// Close the stream of a replaced record with `<conflict/>`.
    pub(crate) async fn close_replaced_connection(&self, replaced: &SessionRecord) {
        let close = Delivery::Close {
            conn: replaced.addr.conn,
            condition: StreamErrorCondition::Conflict,
            text: Some(REPLACED_TEXT.to_string()),
        };
        match self.bus.publish(&replaced.addr.node, close).await {
            Ok(0) => {
                tracing::debug!(jid = %replaced.jid, node = %replaced.addr.node, "replaced session's node has no subscriber")
            }
            Ok(_) => {
                tracing::info!(jid = %replaced.jid, node = %replaced.addr.node, conn = replaced.addr.conn, "session replaced by a new login")
            }
            Err(error) => {
                tracing::warn!(jid = %replaced.jid, node = %replaced.addr.node, %error, "cannot close replaced session")
            }
        }
    }

    pub(crate) async fn unbind_resource(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
    ) -> starling_api::ApiResult<()> {
        if jid.node().is_none() && self.is_component_domain(jid.domain()) {
            return self.unbind_component(jid, addr).await;
        }
        // A remote domain's outbound s2s stream ended: its owner's claim
        // goes, without presence (a remote domain is not an account).
        if jid.node().is_none()
            && jid
                .resource()
                .starts_with(starling_api::S2S_RESOURCE_PREFIX)
        {
            if self.registry.unbind(jid, addr).await?.is_some() {
                tracing::debug!(domain = %jid.bare(), node = %addr.node, "s2s domain released");
            }
            return Ok(());
        }
        // Only if the record is still this session's: a replaced session's
        // late unbind must not remove its successor.
        let Some(removed) = self.registry.unbind(jid, addr).await? else {
            tracing::debug!(jid = %jid, node = %addr.node, conn = addr.conn, "unbind of a session no longer registered");
            return Ok(());
        };
        self.announce_session_end(&removed.jid, removed.available)
            .await;
        Ok(())
    }

    /// RFC 6121 section 4.5.2: the server broadcasts unavailable presence for
    /// a session that ended without sending it.
    async fn announce_session_end(&self, jid: &FullJid, was_available: bool) {
        if let Err(error) = self.presence.session_ended(jid, was_available).await {
            tracing::warn!(jid = %jid, %error, "presence service failed to announce a session end");
        }
    }
}
