//! The presence service against the real registry, bus and storage, with
//! literal XML in and out (RFC 6121 sections 2, 3 and 4; XEP-0160).

mod harness;
mod presence;
mod roster;
mod subscriptions;
