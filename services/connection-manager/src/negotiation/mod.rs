//! Stream negotiation (RFC 6120 sections 4 to 7) on any transport: the
//! stream header ([`header`]), STARTTLS ([`starttls`], section 5), SASL
//! ([`sasl`], section 6, or SASL2 with Bind 2 and inline resumption,
//! [`sasl2`]), pre-authentication in-band registration
//! (XEP-0077, `crate::register`) and resource binding ([`bind`], section 7),
//! with the features of each stage assembled in [`features`], all under one
//! absolute deadline from accept until the resource is bound. This module is
//! the loop that reads the stream and hands each element to its step.

pub(crate) mod bind;
pub(crate) mod fast;
pub(crate) mod features;
pub(crate) mod header;
pub(crate) mod resume;
pub(crate) mod sasl;
pub(crate) mod sasl2;
pub(crate) mod starttls;
pub(crate) mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use starling_api::ConnId;
use starling_xmpp::{
    ns, stanza, Element, StanzaKind, StreamError, StreamErrorCondition, StreamEvent, StreamHeader,
};
use tokio::time::Instant;

use crate::metrics::Limit;
use crate::register;
use crate::shared::Shared;
use crate::transport::Transport;
use bind::{bind_resource, BoundStream};
use features::{FeatureSet, Stage};
use sasl::{Profile, Sasl};
use sasl2::{Completed, Sasl2Request};
use stream::{stream_error, NegotiatingStream, StreamEnd};

struct Negotiation<T> {
    stream: NegotiatingStream<T>,
    sasl: Sasl,
    /// What the SASL2 `<authenticate/>` in progress asked for besides authentication.
    sasl2_request: Option<Sasl2Request>,
}

/// What the negotiation loop stopped for.
enum Negotiated {
    /// An authenticated client asked to bind a resource.
    BindRequest(Element),
    /// An authenticated client asked to resume a stream (XEP-0198 section 5).
    Resume(Element),
    /// A SASL2 exchange succeeded (XEP-0388): its additional data and what
    /// the `<authenticate/>` asked for inline.
    /// With the FAST token used, if one was.
    Sasl2Success(Box<(Vec<u8>, Sasl2Request, Option<fast::UsedToken>)>),
}

/// Negotiate a stream on an established transport (TCP, TLS, WebSocket or
/// BOSH) until a resource is bound, by `deadline`. `None` when the stream
/// ended (everything owed to the client has been written).
pub(crate) async fn negotiate<T: Transport>(
    shared: Arc<Shared>,
    conn: ConnId,
    transport: T,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<BoundStream<T>> {
    let mut negotiation = Negotiation {
        stream: NegotiatingStream::new(Arc::clone(&shared), conn, peer, transport),
        sasl: Sasl::new(),
        sasl2_request: None,
    };

    loop {
        let outcome = tokio::select! {
            outcome = negotiation.run() => outcome,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(conn, peer = %peer, "pre-authentication deadline passed");
                shared.metrics.limit_hit(Limit::PreAuthTimeout);
                Err(stream_error(StreamErrorCondition::ConnectionTimeout, "authentication and binding took too long"))
            }
            _ = shared.shutdown.cancelled() => Err(StreamEnd::Error(StreamError::new(StreamErrorCondition::SystemShutdown))),
        };
        match outcome {
            Ok(Negotiated::BindRequest(iq)) => {
                // Not under the deadline's select: a bind that the router
                // completed must not be dropped half-way.
                let Negotiation { stream, sasl, .. } = &mut negotiation;
                match bind_resource(stream, sasl.user(), iq).await {
                    Ok(Some(bound)) => return Some(bound),
                    Ok(None) => continue,
                    Err(end) => {
                        negotiation.stream.finish(end).await;
                        return None;
                    }
                }
            }
            Ok(Negotiated::Resume(element)) => {
                let Negotiation { stream, sasl, .. } = &mut negotiation;
                let resumed =
                    resume::resume_stream(stream, sasl.user(), element, |resumed, _| resumed).await;
                let sent = match resumed {
                    Ok(Ok(bound)) => return Some(bound),
                    Ok(Err(failed)) => stream.send_nonza(&failed.to_xml()).await,
                    Err(end) => Err(end),
                };
                if let Err(end) = sent {
                    negotiation.stream.finish(end).await;
                    return None;
                }
            }
            Ok(Negotiated::Sasl2Success(success)) => {
                let (additional_data, request, used_token) = *success;
                let Negotiation { stream, sasl, .. } = &mut negotiation;
                let Some(user) = sasl.user().cloned() else {
                    continue;
                };
                match sasl2::complete(stream, &user, request, additional_data, used_token).await {
                    Ok(Completed::Session(bound)) => return Some(*bound),
                    Ok(Completed::Authenticated) => continue,
                    Ok(Completed::Failed) => sasl.revoke(),
                    Err(end) => {
                        negotiation.stream.finish(end).await;
                        return None;
                    }
                }
            }
            Err(end) => {
                negotiation.stream.finish(end).await;
                return None;
            }
        }
    }
}

impl<T: Transport> Negotiation<T> {
    /// Process events, reading as needed, until a bind request or the end.
    async fn run(&mut self) -> Result<Negotiated, StreamEnd> {
        loop {
            while let Some(event) = self.stream.next_event()? {
                if let Some(negotiated) = self.handle_event(event).await? {
                    return Ok(negotiated);
                }
            }
            self.stream.read_more().await?;
        }
    }

    async fn handle_event(&mut self, event: StreamEvent) -> Result<Option<Negotiated>, StreamEnd> {
        match event {
            StreamEvent::Open(header) => {
                self.open_stream(header).await?;
                Ok(None)
            }
            StreamEvent::Close => Err(StreamEnd::ClientClosed),
            StreamEvent::Element(element) => self.handle_element(element).await,
        }
    }

    /// Answer a stream header with ours and the features of this stage.
    async fn open_stream(&mut self, header: StreamHeader) -> Result<(), StreamEnd> {
        self.stream.open(&header)?;
        let bindings = self.stream.channel_bindings();
        let features = FeatureSet::for_stage(
            Stage {
                tls_active: self.stream.is_tls(),
                starttls_possible: self.stream.can_start_tls(),
                tls_required: self.stream.tls_required(),
                authenticated: self.sasl.user().is_some(),
            },
            &self.stream.shared.stream_features,
        )
        .with_channel_binding(bindings.types())
        .with_sasl2(sasl2::offer(&self.stream.shared, &bindings));
        // What the client saw: the 'y' flag and XEP-0474's hash are judged by it.
        self.sasl
            .advertised(&features.mechanisms, &features.channel_binding_types);
        self.stream.send_header(&features.to_xml()).await
    }

    async fn handle_element(&mut self, element: Element) -> Result<Option<Negotiated>, StreamEnd> {
        let authenticated = self.sasl.user().is_some();
        if element.is("starttls", ns::TLS) {
            starttls::start_tls(&mut self.stream, authenticated).await?;
            return Ok(None);
        }
        let profile = match element.namespace() {
            ns::SASL => Some(Profile::Rfc6120),
            ns::SASL2 if self.stream.shared.sasl2_enabled => Some(Profile::Sasl2),
            _ => None,
        };
        if let Some(profile) = profile {
            if authenticated {
                // Section 6.4.6: SASL happens once per stream negotiation;
                // XEP-0388 section "Multiple Authentication": an
                // <authenticate/> after <success/> is a stream error.
                return Err(stream_error(
                    StreamErrorCondition::UnsupportedStanzaType,
                    "already authenticated",
                ));
            }
            if element.is("authenticate", ns::SASL2) {
                self.sasl2_request = Some(Sasl2Request::parse(&element));
            }
            self.sasl
                .handle(&mut self.stream, profile, &element)
                .await?;
            if let Some((additional_data, used_token)) = self.sasl.take_sasl2_success() {
                let request = self.sasl2_request.take().unwrap_or_default();
                return Ok(Some(Negotiated::Sasl2Success(Box::new((
                    additional_data,
                    request,
                    used_token,
                )))));
            }
            return Ok(None);
        }
        if element.namespace() == ns::SM && authenticated && self.stream.shared.sm.enabled {
            match element.name() {
                "resume" => return Ok(Some(Negotiated::Resume(element))),
                // XEP-0198 section 3: enable after binding (the server may enforce it).
                _ => {
                    let failed = crate::sm::failed("unexpected-request", None);
                    self.stream.send_nonza(&failed.to_xml()).await?;
                    return Ok(None);
                }
            }
        }
        let Some(kind) = StanzaKind::of(&element).filter(|_| element.namespace() == ns::CLIENT)
        else {
            return Err(stream_error(
                StreamErrorCondition::UnsupportedStanzaType,
                "unknown top-level element",
            ));
        };
        if kind == StanzaKind::Iq {
            let payload = stanza::iq_payload(&element);
            if authenticated && payload.is_some_and(|payload| payload.is("bind", ns::BIND)) {
                return Ok(Some(Negotiated::BindRequest(element)));
            }
            let register_payload = payload.is_some_and(|payload| payload.is("query", ns::REGISTER));
            if !authenticated
                && register_payload
                && self.stream.shared.registration_enabled
                && self.stream.is_tls()
            {
                let reply = register::handle_unauthenticated(&self.stream.shared, &element).await;
                self.stream.send_stanza(&reply).await?;
                return Ok(None);
            }
        }
        // Section 4.9.3.12: no stanza before authentication and binding.
        Err(stream_error(
            StreamErrorCondition::NotAuthorized,
            "authenticate and bind a resource first",
        ))
    }
}
