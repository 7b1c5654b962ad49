//! The session-router service: resource binding (RFC 6120 section 7), where
//! every stanza goes (RFC 6120 section 10, RFC 6121 section 8), offline
//! storage (XEP-0160 with XEP-0203 delay stamps) and the server's own IQ
//! handlers (XEP-0030 service discovery, XEP-0092 software version, XEP-0199
//! ping), each a feature registered once in `features.rs` (docs/architecture.md
//! "Adding a feature").
//!
//! # Conflict policy (RFC 6120 section 7.7.2.2)
//!
//! The newest login wins. Binding a full JID that is already bound replaces
//! the old session atomically in the registry; the old session's
//! connection-manager is then told to close that stream with a `<conflict/>`
//! stream error ("replaced by a new session"), and the presence service is
//! told the old session ended so its contacts see it leave. A late `unbind`
//! from the replaced session finds another address in the registry and
//! changes nothing.
//!
//! # Order (RFC 6120 section 10.1)
//!
//! The router never spawns a task per stanza: `route` finishes its work,
//! publishing included, before it returns, so the stanzas one session sends
//! leave the router in the order the connection-manager handed them over,
//! and reach each destination node in that order through its one channel.
//!
//! # Delivery
//!
//! [`starling_bus::deliver_to_sessions`] is the one way a stanza reaches
//! connection-managers: one bus envelope per destination node (DESIGN.md
//! "Fan-out cost"). The presence service uses it too.

mod account_cache;
mod address;
mod archive;
mod avatar;
mod blocking;
mod bookmarks;
mod bookmarks2;
mod carbons;
mod component;
mod features;
mod handlers;
mod iq;
mod message;
mod metrics;
mod muc;
mod offline;
mod pep;
mod push;
mod remote;
mod resumption;
mod router;
mod session;
mod upload;

pub use metrics::RouterMetrics;
pub use pep::PepSettings;
pub use push::PushSettings;
pub use remote::S2sPolicy;
pub use resumption::spawn_resumption_expiry;
pub use router::{RouterConfig, RouterHandle, SessionRouter};
pub use upload::UploadSettings;

#[cfg(test)]
mod tests;
