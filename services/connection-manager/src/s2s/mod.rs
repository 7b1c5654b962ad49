//! Server-to-server streams (RFC 6120, `jabber:server`): federation with
//! other XMPP servers.
//!
//! - [`connect`]: opening a stream to a remote domain (resolution, STARTTLS
//!   or direct TLS, SASL EXTERNAL or dialback), and asking a remote domain
//!   to verify a dialback key.
//! - [`outbound`]: one outbound stream per remote domain owned by this node
//!   (the router claimed the domain for it in the registry, see
//!   `starling_api::S2S_RESOURCE_PREFIX`), with the bounded queue of what
//!   waits for it to open, bounced with the RFC 6120 section 10.4.3 error
//!   when it does not.
//! - [`inbound`]: the s2s listeners (STARTTLS, and direct TLS per
//!   XEP-0368): streams other servers open to us, authenticated by SASL
//!   EXTERNAL (XEP-0178) when the peer's certificate is valid for its
//!   domain, else by dialback, each stanza's `from` checked against the
//!   authenticated domains and its domain's rate, then routed like any
//!   other stanza; closed when idle.
//! - [`dialback`]: XEP-0220 keys (XEP-0185) and elements.
//! - [`state`]: what the node's s2s side shares (`Shared::s2s`), with the
//!   table of open streams by remote domain (admin API, per-domain metrics
//!   and rate limits).
//! - [`tls`]: the roots, the certificate check, both sides' TLS settings.
//!
//! The settings are `crate::config::S2sSettings`, the metrics
//! `crate::metrics::S2sMetrics`.

pub(crate) mod connect;
pub(crate) mod dialback;
pub(crate) mod inbound;
pub(crate) mod outbound;
pub(crate) mod state;
pub(crate) mod tls;
