//! The XMPP protocol model, with no I/O: the XML element tree, the incremental
//! stream parser with hard limits (RFC 6120 section 11), the stanza helpers and
//! every stream and stanza error condition (RFC 6120 sections 4.9 and 8.3).
//!
//! The parser takes bytes and returns a value or "need more"; sockets live in
//! the connection-manager only, which is also what makes the parser fuzzable.

pub mod element;
pub mod error;
pub mod ns;
pub mod parser;
pub mod stanza;
pub mod xep;

pub use element::{escape_attr, escape_text, Element, Node};
pub use error::{
    StanzaError, StanzaErrorCondition, StanzaErrorType, StreamError, StreamErrorCondition,
};
pub use parser::{
    parse_element, parse_start_tag, Limits, ParseError, StreamEvent, StreamHeader, StreamParser,
};
pub use stanza::{
    InvalidStanza, Iq, IqType, Message, MessageType, Presence, PresenceType, Priority, Show,
    StanzaKind,
};
