//! Resource binding (RFC 6120 section 7): the last negotiation step. The
//! router binds the resource; the connection's outbound queue is registered
//! first, and the bound stream goes on to the session.

use std::net::SocketAddr;
use std::sync::Arc;

use starling_api::{BindError, ConnId, SessionAddr};
use starling_jid::{normalize_resourcepart, BareJid, FullJid};
use starling_xmpp::{
    ns, stanza, Element, StanzaError, StanzaErrorCondition, StanzaErrorType, StreamErrorCondition,
};

use super::stream::{stream_error, NegotiatingStream, StreamEnd};
use crate::framing::Inbound;
use crate::outbound::ConnectionHandle;
use crate::queued::QueuedStanza;
use crate::shared::Shared;
use crate::transport::Transport;

/// Everything the session needs from a negotiated, bound stream.
pub(crate) struct BoundStream<T> {
    pub conn: ConnId,
    pub peer: SocketAddr,
    pub transport: T,
    pub parser: Inbound,
    pub jid: FullJid,
    pub addr: SessionAddr,
    pub handle: Arc<ConnectionHandle>,
    /// The stream's `xml:lang` when the client declared one (RFC 6120 section 4.7.4).
    pub client_lang: Option<String>,
}

impl<T: Transport> BoundStream<T> {
    /// The bound stream of `stream` for `jid` at `addr`; `None` when its
    /// connection is gone (the caller then undoes what it registered).
    pub(crate) fn take(
        stream: &mut NegotiatingStream<T>,
        jid: FullJid,
        addr: SessionAddr,
        handle: Arc<ConnectionHandle>,
    ) -> Option<Self> {
        let (transport, parser) = stream.take_bound()?;
        Some(BoundStream {
            conn: stream.conn,
            peer: stream.peer,
            transport,
            parser,
            jid,
            addr,
            handle,
            client_lang: stream.client_lang.clone(),
        })
    }
}

/// Bind `requested` (or a resource the router picks) for `user` on this
/// stream's connection, whose queue is registered first so that nothing
/// routed to the session right after the bind is lost.
pub(crate) async fn bind_session(
    shared: &Shared,
    conn: ConnId,
    user: &BareJid,
    requested: Option<&str>,
) -> Result<(FullJid, SessionAddr, Arc<ConnectionHandle>), BindError> {
    let addr = SessionAddr {
        node: shared.node_id.clone(),
        conn,
    };
    let handle = ConnectionHandle::with_bytes(
        conn,
        shared.limits.outbound_queue_stanzas,
        shared.outbound_bytes.clone(),
    );
    shared.add_connection(conn, Arc::clone(&handle));
    match shared.router.bind(user, requested, &addr).await {
        Ok(jid) => {
            tracing::info!(conn, jid = %jid, "resource bound");
            handle.set_bound(jid.clone(), addr.clone());
            Ok((jid, addr, handle))
        }
        Err(error) => {
            shared.remove_connection(conn);
            tracing::info!(conn, user = %user, %error, "resource binding refused");
            Err(error)
        }
    }
}

/// Resource binding (section 7.6) for the authenticated `user`. `Ok(None)`:
/// the client got an error reply and may try again.
pub(crate) async fn bind_resource<T: Transport>(
    stream: &mut NegotiatingStream<T>,
    user: Option<&BareJid>,
    iq: Element,
) -> Result<Option<BoundStream<T>>, StreamEnd> {
    let Some(user) = user.cloned() else {
        return Err(stream_error(
            StreamErrorCondition::NotAuthorized,
            "authenticate first",
        ));
    };
    let bad_request = StanzaError::new(StanzaErrorCondition::BadRequest);
    if stanza::stanza_type(&iq) != "set" || iq.attr("id").is_none() {
        stream.reply_error(&iq, bad_request).await?;
        return Ok(None);
    }
    let requested = match iq
        .get_child("bind", ns::BIND)
        .and_then(|bind| bind.get_child("resource", ns::BIND))
        .map(Element::text)
        .filter(|resource| !resource.is_empty())
    {
        None => None,
        // Section 7.7.2.1: the resourcepart is normalised by OpaqueString (RFC 7622 section 3.4).
        Some(resource) => match normalize_resourcepart(&resource) {
            Ok(resource) => Some(resource),
            Err(_) => {
                stream
                    .reply_error(&iq, bad_request.with_text("invalid resourcepart"))
                    .await?;
                return Ok(None);
            }
        },
    };
    let shared = Arc::clone(&stream.shared);
    let conn = stream.conn;
    match bind_session(&shared, conn, &user, requested.as_deref()).await {
        Ok((jid, addr, handle)) => {
            let mut result = stanza::iq_result(&iq);
            result.append_child(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("jid", ns::BIND).with_text(jid.to_string())),
            );
            // Ahead of anything routed to the session in the meantime.
            handle.push_front(QueuedStanza::new(result));
            match BoundStream::take(stream, jid, addr, handle) {
                Some(bound) => Ok(Some(bound)),
                None => {
                    shared.remove_connection(conn);
                    Err(StreamEnd::ConnectionLost)
                }
            }
        }
        Err(error) => {
            let stanza_error = match error {
                BindError::BadRequest => StanzaError::new(StanzaErrorCondition::BadRequest),
                // Section 7.6.2.1: too many resources, type wait.
                BindError::ResourceConstraint => {
                    StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                        .with_type(StanzaErrorType::Wait)
                }
                // Section 7.6.2.2.
                BindError::NotAllowed => StanzaError::new(StanzaErrorCondition::NotAllowed),
                BindError::Api(error) => error.to_stanza_error(),
            };
            stream.reply_error(&iq, stanza_error).await?;
            Ok(None)
        }
    }
}
