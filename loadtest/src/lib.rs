//! starling-load: a load generator for any XMPP server, and the measurements
//! that compare Starling with other servers (see `loadtest/README.md`).
//!
//! The client side is deliberately lean: a byte scanner instead of a full XML
//! parser, pre-serialised stanza templates, one task per session with small
//! buffers and batched writes, so one process can hold tens of thousands of
//! sessions and push tens of thousands of messages per second.

pub mod assign;
pub mod cli;
pub mod conn;
pub mod procstat;
pub mod report;
pub mod run;
pub mod sasl;
pub mod sm;
pub mod stats;
pub mod xml;
