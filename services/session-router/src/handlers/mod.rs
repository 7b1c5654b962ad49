//! The IQ payloads the server answers itself, one module per specification.
//! Each handler builds the reply to a request it was given; choosing which
//! requests reach it is the router's business (`iq.rs`).

pub(crate) mod disco;
pub(crate) mod ping;
pub(crate) mod version;
