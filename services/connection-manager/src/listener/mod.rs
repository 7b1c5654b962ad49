//! Where streams come in: the c2s TCP listeners ([`tcp`]: STARTTLS and
//! direct TLS), and the HTTP endpoints for web clients ([`websocket`], RFC
//! 7395, and [`bosh`], XEP-0206). Each accepts its connections, applies the
//! per-address limit, and runs negotiation then the session over its
//! transport.

pub(crate) mod bosh;
pub(crate) mod tcp;
pub(crate) mod websocket;
