//! The incremental XML stream parser (RFC 6120 section 11) on quick-xml.
//!
//! Bytes may arrive split anywhere, even inside a UTF-8 character. Hard limits
//! are enforced while reading, not after: no DOCTYPE, entity declarations or
//! processing instructions (RFC 6120 section 11.1, restricted XML), a maximum
//! stanza size, a maximum depth; invalid UTF-8 is `not-well-formed`.

use crate::element::Element;
use crate::error::{StreamError, StreamErrorCondition};

/// Hard limits enforced while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest top-level element (stanza or nonza), in bytes of input.
    pub max_stanza_bytes: usize,
    /// The deepest nesting below the stream element.
    pub max_depth: usize,
    /// The most attributes one element may carry.
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_stanza_bytes: 256 * 1024, max_depth: 64, max_attributes: 64 }
    }
}

/// The attributes of the opening `<stream:stream>` tag (RFC 6120 section 4.7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The default namespace declared on the stream (`jabber:client`, `jabber:server`, ...).
    pub default_namespace: Option<String>,
}

/// What the parser produced from the bytes fed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// `<stream:stream ...>` was read.
    Open(StreamHeader),
    /// A complete top-level element (stanza or nonza).
    Element(Element),
    /// `</stream:stream>` was read.
    Close,
}

/// Why parsing stopped; every case maps to the stream error RFC 6120 names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub StreamError);

impl ParseError {
    pub fn condition(&self) -> StreamErrorCondition {
        self.0.condition
    }
}

/// An incremental parser for one XML stream.
pub struct StreamParser {
    limits: Limits,
}

impl StreamParser {
    pub fn new(limits: Limits) -> Self {
        StreamParser { limits }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Append bytes read from the transport.
    pub fn feed(&mut self, _bytes: &[u8]) -> Result<(), ParseError> {
        todo!("parser implementation")
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        todo!("parser implementation")
    }

    /// Forget all state and expect a new stream header (after STARTTLS or SASL success,
    /// RFC 6120 sections 5.4.3.3 and 6.4.6).
    pub fn reset(&mut self) {
        todo!("parser implementation")
    }
}

/// Parse one complete standalone element (a WebSocket frame, RFC 7395 section 3.3.3,
/// or a stored stanza) under the same limits.
pub fn parse_element(_bytes: &[u8], _limits: &Limits) -> Result<Element, ParseError> {
    todo!("parser implementation")
}
