//! The incremental XML stream parser (RFC 6120 section 11) on quick-xml.
//!
//! Bytes may arrive split anywhere, even inside a UTF-8 character. Hard limits
//! are enforced while reading, not after: no DOCTYPE, entity declarations,
//! comments or processing instructions (RFC 6120 section 11.1, restricted XML),
//! a maximum stanza size, a maximum depth, a maximum number of attributes;
//! invalid UTF-8 is `not-well-formed` (RFC 6120 sections 11.3 and 11.6).
//!
//! # How it stays linear
//!
//! Parsing runs in two stages, and each byte goes through each stage once:
//!
//! 1. [`feed`](StreamParser::feed) appends the bytes and runs a byte-at-a-time
//!    scanner over the new bytes only. The scanner is a resumable state machine
//!    (its state is a small enum plus the stack of open element names), so a
//!    split anywhere, even inside a UTF-8 sequence, a tag, an attribute value, an
//!    entity reference or `</stream:stream>`, only pauses it. It checks UTF-8 and
//!    the XML character range, the lexical shape of every tag, that end tags
//!    match their start tags, the restricted-XML rules and the limits, and it
//!    records where each top-level element (stanza or nonza) ends.
//! 2. [`next_event`](StreamParser::next_event) hands each complete top-level
//!    element (a byte range of the buffer) to quick-xml once, and builds the
//!    [`Element`] with namespaces resolved against the stream header.
//!
//! The buffer holds the queued complete elements and the one incomplete element,
//! which the scanner caps at [`Limits::max_stanza_bytes`]; consumed bytes and
//! whitespace keepalives are dropped (amortised, so dropping is linear too).
//!
//! # Errors, and when they surface
//!
//! Every error is a stream error with the RFC 6120 section 4.9.3 condition.
//! Errors come out in byte order: an error the scanner finds in the middle of
//! the input is reported only after the complete elements before it have been
//! returned. `feed` returns it at once if nothing is queued ahead of it, else
//! `next_event` returns it after the queued events. So the sequence of events,
//! and the error that ends it, does not depend on how the bytes were split.
//! After an error the parser stays failed (every call returns the same error)
//! until [`reset`](StreamParser::reset).
//!
//! Which condition for what:
//!
//! | input | condition |
//! |---|---|
//! | DOCTYPE, `<!ENTITY`, any `<!` declaration, comments, processing instructions, an XML declaration anywhere but the very start, a reference to an entity other than the five predefined ones | `restricted-xml` (sections 11.1 and 4.9.3.18) |
//! | invalid UTF-8, characters outside the XML `Char` range (raw or as `&#..;`), mismatched end tags, malformed tags, names, attributes or references, duplicate attributes, `]]>` in text, anything outside the root element | `not-well-formed` (sections 11.3 and 4.9.3.13) |
//! | non-whitespace text or CDATA between top-level elements of a stream | `bad-format` (section 4.9.3.1: it is well-formed XML, but there is no stanza to hold it) |
//! | an unbound prefix, or a stream element without a prefix | `bad-namespace-prefix` (sections 4.9.3.2 and 11.2) |
//! | a stream element that is not `stream` in `http://etherx.jabber.org/streams` | `invalid-namespace` (sections 4.8.1 and 4.9.3.10) |
//! | an XML declaration naming an encoding other than UTF-8, a UTF-16 byte order mark | `unsupported-encoding` (sections 11.6 and 4.9.3.22) |
//! | too large, too deep, too many attributes | `policy-violation` (section 4.9.3.14) |

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::element::Element;
use crate::error::{StreamError, StreamErrorCondition};
use crate::ns;

/// Hard limits enforced while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest top-level element (stanza or nonza), in bytes of input.
    /// The stream header is held to it too.
    pub max_stanza_bytes: usize,
    /// The deepest nesting below the stream element (a stanza is at depth 1).
    pub max_depth: usize,
    /// The most attributes one element may carry (namespace declarations count).
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            max_attributes: 64,
        }
    }
}

impl Limits {
    /// How many times `max_stanza_bytes` a stanza the server serialised itself
    /// may be when it is parsed again (from the bus, the offline store, a
    /// resumption journal). The edge refuses a stanza whose re-serialised form
    /// (with the `from` it stamps) is over `max_stanza_bytes`, so what comes
    /// back is one accepted stanza plus what the server wrapped around it: a
    /// delay stamp, a carbons or MAM wrapper, whose client-chosen parts (a
    /// query id) come from another accepted stanza. Three times covers both
    /// with room to spare.
    pub const SERVER_COPY_FACTOR: usize = 3;
    /// Wrappers (carbons, XEP-0297 forwarding, MAM results) add at most this
    /// many levels above a stanza, and stamping adds at most this many attributes.
    const SERVER_ADDED_LEVELS: usize = 8;

    /// The limits for stanzas the server itself serialised, for a stream whose
    /// limits are `self`: see [`Limits::SERVER_COPY_FACTOR`]. A stanza the edge
    /// accepted always parses again under these, wrapped or stamped.
    pub fn for_server_copies(&self) -> Limits {
        Limits {
            max_stanza_bytes: self
                .max_stanza_bytes
                .saturating_mul(Self::SERVER_COPY_FACTOR),
            max_depth: self.max_depth.saturating_add(Self::SERVER_ADDED_LEVELS),
            max_attributes: self
                .max_attributes
                .saturating_add(Self::SERVER_ADDED_LEVELS),
        }
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

    fn new(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        ParseError(StreamError::with_text(condition, text))
    }
}

fn not_well_formed(text: impl Into<String>) -> ParseError {
    ParseError::new(StreamErrorCondition::NotWellFormed, text)
}

fn restricted_xml(text: impl Into<String>) -> ParseError {
    ParseError::new(StreamErrorCondition::RestrictedXml, text)
}

fn policy_violation(text: impl Into<String>) -> ParseError {
    ParseError::new(StreamErrorCondition::PolicyViolation, text)
}

fn bad_namespace_prefix(text: impl Into<String>) -> ParseError {
    ParseError::new(StreamErrorCondition::BadNamespacePrefix, text)
}

/// Whether the input is one XML stream or a sequence of standalone documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// RFC 6120 section 4: one `<stream:stream>` root; its children are the events.
    Stream,
    /// RFC 7395 section 3.3: no root; every top-level element is a document of its own.
    Framed,
}

/// A complete unit found by the scanner, waiting for `next_event`. Offsets are
/// absolute (counted from the start of the stream), not buffer indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Header { start: usize, end: usize },
    Element { start: usize, end: usize },
    Close,
}

impl Item {
    fn start(self) -> Option<usize> {
        match self {
            Item::Header { start, .. } | Item::Element { start, .. } => Some(start),
            Item::Close => None,
        }
    }
}

/// Where the scanner is inside an entity or character reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReferenceLex {
    /// Just after `&`.
    Start,
    /// After `&#`.
    Hash,
    Decimal,
    /// After `&#x`.
    HexStart,
    Hex,
    Name,
}

/// The lexical state of the scanner between two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// At the very start: `matched` bytes of a UTF-8 byte order mark seen.
    ByteOrderMark {
        matched: u8,
    },
    /// Character data; `brackets` counts trailing `]` to catch `]]>`.
    Content {
        brackets: u8,
    },
    ContentReference(ReferenceLex),
    /// Just after `<`.
    Open,
    StartName,
    /// Inside a start tag, after the name or an attribute value.
    TagSpace {
        spaced: bool,
    },
    AttributeName,
    AttributeEquals {
        seen: bool,
    },
    AttributeValue {
        quote: u8,
    },
    AttributeReference {
        quote: u8,
        reference: ReferenceLex,
    },
    /// After `/` in a start tag: `>` must follow.
    EmptySlash,
    /// In an end tag name, `matched` bytes of the expected name compared.
    EndName {
        matched: usize,
    },
    /// After an end tag name: whitespace, then `>`.
    EndSpace,
    /// After `<!`: `matched` bytes of `[CDATA[` seen.
    Bang {
        matched: u8,
    },
    CData {
        brackets: u8,
    },
    /// Inside the XML declaration (only at the very start of the input).
    Declaration {
        question: bool,
    },
}

/// Incremental UTF-8 validation that also enforces the XML `Char` production
/// (RFC 6120 section 11.6, XML 1.0 section 2.2). A sequence cut off by the end
/// of the input is not an error; it waits for the next byte.
#[derive(Debug, Clone, Copy, Default)]
struct Utf8Validator {
    needed: u8,
    code_point: u32,
    lower: u8,
    upper: u8,
}

impl Utf8Validator {
    fn push(&mut self, byte: u8) -> Result<(), ParseError> {
        if self.needed == 0 {
            let (needed, initial, lower, upper) = match byte {
                0x00..=0x7F => {
                    return if byte >= 0x20 || matches!(byte, b'\t' | b'\n' | b'\r') {
                        Ok(())
                    } else {
                        Err(not_well_formed("control character not allowed in XML"))
                    };
                }
                0xC2..=0xDF => (1, byte & 0x1F, 0x80, 0xBF),
                0xE0 => (2, byte & 0x0F, 0xA0, 0xBF),
                0xED => (2, byte & 0x0F, 0x80, 0x9F),
                0xE1..=0xEF => (2, byte & 0x0F, 0x80, 0xBF),
                0xF0 => (3, byte & 0x07, 0x90, 0xBF),
                0xF1..=0xF3 => (3, byte & 0x07, 0x80, 0xBF),
                0xF4 => (3, byte & 0x07, 0x80, 0x8F),
                _ => return Err(not_well_formed("invalid UTF-8")),
            };
            *self = Utf8Validator {
                needed,
                code_point: u32::from(initial),
                lower,
                upper,
            };
            return Ok(());
        }
        if byte < self.lower || byte > self.upper {
            return Err(not_well_formed("invalid UTF-8"));
        }
        self.code_point = (self.code_point << 6) | u32::from(byte & 0x3F);
        self.needed -= 1;
        self.lower = 0x80;
        self.upper = 0xBF;
        if self.needed == 0 && matches!(self.code_point, 0xFFFE | 0xFFFF) {
            return Err(not_well_formed("character not allowed in XML"));
        }
        Ok(())
    }
}

/// The resumable byte scanner (stage 1, see the module documentation).
#[derive(Debug, Clone)]
struct Scanner {
    framing: Framing,
    /// Absolute offset of the next byte to scan.
    position: usize,
    /// Where the document starts: 0, or 3 after a byte order mark.
    document_start: usize,
    lex: Lex,
    utf8: Utf8Validator,
    /// The raw names of the open elements, concatenated, and where each starts.
    open_names: Vec<u8>,
    name_starts: Vec<usize>,
    /// Stream framing: the `<stream:stream>` start tag was read / its end tag was read.
    root_open: bool,
    root_closed: bool,
    /// Where the top-level markup being read started (the `<`), if any.
    top_start: Option<usize>,
    attributes: usize,
    declaration: Vec<u8>,
}

impl Scanner {
    fn new(framing: Framing) -> Self {
        Scanner {
            framing,
            position: 0,
            document_start: 0,
            lex: Lex::ByteOrderMark { matched: 0 },
            utf8: Utf8Validator::default(),
            open_names: Vec::new(),
            name_starts: Vec::new(),
            root_open: false,
            root_closed: false,
            top_start: None,
            attributes: 0,
            declaration: Vec::new(),
        }
    }

    /// Open elements below the stream root (the root itself is not counted).
    fn depth(&self) -> usize {
        let root_on_stack = self.framing == Framing::Stream && self.root_open && !self.root_closed;
        self.name_starts
            .len()
            .saturating_sub(usize::from(root_on_stack))
    }

    /// Whether character data here would be inside the stream root but outside any stanza.
    fn in_stream_root(&self) -> bool {
        self.framing == Framing::Stream && self.root_open && !self.root_closed
    }

    /// The earliest absolute offset the scanner still needs in the buffer.
    fn keep_from(&self) -> usize {
        self.top_start.unwrap_or(self.position)
    }

    /// Whether the scanner stands between top-level elements (nothing half read).
    fn at_boundary(&self) -> bool {
        self.top_start.is_none()
            && matches!(
                self.lex,
                Lex::Content { .. } | Lex::ByteOrderMark { matched: 0 }
            )
    }

    fn pop_name(&mut self) {
        if let Some(start) = self.name_starts.pop() {
            self.open_names.truncate(start);
        }
    }

    /// Scan one byte. Complete units are pushed on `queue`.
    fn step(
        &mut self,
        byte: u8,
        limits: &Limits,
        queue: &mut VecDeque<Item>,
    ) -> Result<(), ParseError> {
        if self.lex == (Lex::ByteOrderMark { matched: 0 }) && matches!(byte, 0xFE | 0xFF) {
            // RFC 6120 section 11.6: UTF-8 only; FE FF / FF FE open a UTF-16 stream.
            return Err(ParseError::new(
                StreamErrorCondition::UnsupportedEncoding,
                "only UTF-8 is supported",
            ));
        }
        self.utf8.push(byte)?;
        if let Some(start) = self.top_start {
            // RFC 6120 section 13.12 (denial of service): cap what one element may buffer.
            if self.position + 1 - start > limits.max_stanza_bytes {
                return Err(policy_violation("stanza too large"));
            }
        }
        let position = self.position;
        let lex = self.lex;
        self.lex = match lex {
            Lex::ByteOrderMark { matched } => match (matched, byte) {
                (0, 0xEF) => Lex::ByteOrderMark { matched: 1 },
                (1, 0xBB) => Lex::ByteOrderMark { matched: 2 },
                (2, 0xBF) => {
                    self.document_start = position + 1;
                    Lex::Content { brackets: 0 }
                }
                (0, _) => {
                    self.lex = Lex::Content { brackets: 0 };
                    return self.content(byte, 0, position);
                }
                _ => return Err(not_well_formed("invalid byte order mark")),
            },
            Lex::Content { brackets } => return self.content(byte, brackets, position),
            Lex::ContentReference(reference) => match reference_step(reference, byte)? {
                Some(reference) => Lex::ContentReference(reference),
                None => Lex::Content { brackets: 0 },
            },
            Lex::Open => self.open(byte, limits, position)?,
            Lex::StartName => match byte {
                _ if is_name_byte(byte) => {
                    self.open_names.push(byte);
                    Lex::StartName
                }
                _ if is_whitespace(byte) => Lex::TagSpace { spaced: true },
                b'>' => self.finish_start_tag(false, position, queue),
                b'/' => Lex::EmptySlash,
                _ => return Err(not_well_formed("invalid character in an element name")),
            },
            Lex::TagSpace { spaced } => match byte {
                _ if is_whitespace(byte) => Lex::TagSpace { spaced: true },
                b'>' => self.finish_start_tag(false, position, queue),
                b'/' => Lex::EmptySlash,
                _ if is_name_start_byte(byte) => {
                    if !spaced {
                        return Err(not_well_formed(
                            "attributes must be separated by whitespace",
                        ));
                    }
                    self.attributes += 1;
                    if self.attributes > limits.max_attributes {
                        return Err(policy_violation("too many attributes"));
                    }
                    Lex::AttributeName
                }
                _ => return Err(not_well_formed("malformed start tag")),
            },
            Lex::AttributeName => match byte {
                _ if is_name_byte(byte) => Lex::AttributeName,
                _ if is_whitespace(byte) => Lex::AttributeEquals { seen: false },
                b'=' => Lex::AttributeEquals { seen: true },
                _ => return Err(not_well_formed("invalid character in an attribute name")),
            },
            Lex::AttributeEquals { seen } => match byte {
                _ if is_whitespace(byte) => Lex::AttributeEquals { seen },
                b'=' if !seen => Lex::AttributeEquals { seen: true },
                b'\'' | b'"' if seen => Lex::AttributeValue { quote: byte },
                _ => return Err(not_well_formed("attribute value must be quoted after '='")),
            },
            Lex::AttributeValue { quote } => match byte {
                _ if byte == quote => Lex::TagSpace { spaced: false },
                b'<' => return Err(not_well_formed("'<' in an attribute value")),
                b'&' => Lex::AttributeReference {
                    quote,
                    reference: ReferenceLex::Start,
                },
                _ => Lex::AttributeValue { quote },
            },
            Lex::AttributeReference { quote, reference } => {
                match reference_step(reference, byte)? {
                    Some(reference) => Lex::AttributeReference { quote, reference },
                    None => Lex::AttributeValue { quote },
                }
            }
            Lex::EmptySlash => match byte {
                b'>' => self.finish_start_tag(true, position, queue),
                _ => {
                    return Err(not_well_formed(
                        "'/' must be followed by '>' in a start tag",
                    ))
                }
            },
            Lex::EndName { matched } => {
                let expected = self
                    .name_starts
                    .last()
                    .map_or(&[][..], |&start| &self.open_names[start..]);
                if matched < expected.len() && byte == expected[matched] {
                    Lex::EndName {
                        matched: matched + 1,
                    }
                } else if matched == expected.len() && is_whitespace(byte) {
                    Lex::EndSpace
                } else if matched == expected.len() && byte == b'>' {
                    self.finish_end_tag(queue)
                } else {
                    return Err(not_well_formed("end tag does not match the start tag"));
                }
            }
            Lex::EndSpace => match byte {
                _ if is_whitespace(byte) => Lex::EndSpace,
                b'>' => self.finish_end_tag(queue),
                _ => return Err(not_well_formed("malformed end tag")),
            },
            Lex::Bang { matched: 0 } => match byte {
                // RFC 6120 section 11.1: no comments, no DTD, no declarations.
                b'-' => return Err(restricted_xml("comments are not allowed")),
                b'A'..=b'Z' => {
                    return Err(restricted_xml(
                        "DTDs and markup declarations are not allowed",
                    ))
                }
                b'[' if self.depth() == 0 && self.in_stream_root() => {
                    return Err(ParseError::new(
                        StreamErrorCondition::BadFormat,
                        "character data between top-level elements",
                    ));
                }
                b'[' if self.depth() == 0 => {
                    return Err(not_well_formed("CDATA section outside the root element"));
                }
                b'[' => Lex::Bang { matched: 1 },
                _ => return Err(not_well_formed("malformed markup after '<!'")),
            },
            Lex::Bang { matched } => {
                const CDATA: &[u8] = b"[CDATA[";
                if byte != CDATA[usize::from(matched)] {
                    return Err(not_well_formed("malformed CDATA section"));
                }
                if usize::from(matched) + 1 == CDATA.len() {
                    Lex::CData { brackets: 0 }
                } else {
                    Lex::Bang {
                        matched: matched + 1,
                    }
                }
            }
            Lex::CData { brackets } => match byte {
                b']' => Lex::CData {
                    brackets: (brackets + 1).min(2),
                },
                b'>' if brackets == 2 => Lex::Content { brackets: 0 },
                _ => Lex::CData { brackets: 0 },
            },
            Lex::Declaration { question } => {
                self.declaration.push(byte);
                match byte {
                    b'?' => Lex::Declaration { question: true },
                    b'>' if question => {
                        let content = std::mem::take(&mut self.declaration);
                        check_xml_declaration(&content[..content.len() - 2])?;
                        self.top_start = None;
                        Lex::Content { brackets: 0 }
                    }
                    _ => Lex::Declaration { question: false },
                }
            }
        };
        Ok(())
    }

    fn content(&mut self, byte: u8, brackets: u8, position: usize) -> Result<(), ParseError> {
        let top_level = self.depth() == 0;
        self.lex = match byte {
            b'<' => {
                if top_level {
                    self.top_start = Some(position);
                }
                Lex::Open
            }
            _ if top_level => {
                if is_whitespace(byte) {
                    // RFC 6120 section 11.7: whitespace between
                    // top-level elements (keepalives) is allowed and ignored.
                    return Ok(());
                }
                if self.in_stream_root() {
                    return Err(ParseError::new(
                        StreamErrorCondition::BadFormat,
                        "character data between top-level elements",
                    ));
                }
                return Err(not_well_formed("character data outside the root element"));
            }
            b'&' => Lex::ContentReference(ReferenceLex::Start),
            b']' => Lex::Content {
                brackets: (brackets + 1).min(2),
            },
            b'>' if brackets == 2 => return Err(not_well_formed("']]>' in character data")),
            _ => Lex::Content { brackets: 0 },
        };
        Ok(())
    }

    fn open(&mut self, byte: u8, limits: &Limits, position: usize) -> Result<Lex, ParseError> {
        match byte {
            b'/' => {
                if self.name_starts.is_empty() {
                    return Err(not_well_formed("end tag without a start tag"));
                }
                Ok(Lex::EndName { matched: 0 })
            }
            b'!' => Ok(Lex::Bang { matched: 0 }),
            b'?' => {
                // RFC 6120 section 11.5: the XML declaration may open the stream;
                // section 11.1: no other processing instruction, anywhere.
                if self.top_start == Some(self.document_start)
                    && position == self.document_start + 1
                {
                    Ok(Lex::Declaration { question: false })
                } else {
                    Err(restricted_xml("processing instructions are not allowed"))
                }
            }
            _ if is_name_start_byte(byte) => {
                let header = self.framing == Framing::Stream && !self.root_open;
                if self.framing == Framing::Stream && self.root_closed {
                    return Err(not_well_formed("data after the end of the stream"));
                }
                if !header && self.depth() + 1 > limits.max_depth {
                    return Err(policy_violation("elements nested too deeply"));
                }
                self.name_starts.push(self.open_names.len());
                self.open_names.push(byte);
                self.attributes = 0;
                Ok(Lex::StartName)
            }
            _ => Err(not_well_formed("invalid character after '<'")),
        }
    }

    fn finish_start_tag(
        &mut self,
        empty: bool,
        position: usize,
        queue: &mut VecDeque<Item>,
    ) -> Lex {
        let end = position + 1;
        if self.framing == Framing::Stream && !self.root_open {
            self.root_open = true;
            queue.push_back(Item::Header {
                start: self.top_start.take().unwrap_or(0),
                end,
            });
            if empty {
                self.pop_name();
                self.root_closed = true;
                queue.push_back(Item::Close);
            }
        } else if empty {
            self.pop_name();
            if self.depth() == 0 {
                queue.push_back(Item::Element {
                    start: self.top_start.take().unwrap_or(0),
                    end,
                });
            }
        }
        Lex::Content { brackets: 0 }
    }

    fn finish_end_tag(&mut self, queue: &mut VecDeque<Item>) -> Lex {
        let end = self.position + 1;
        self.pop_name();
        if self.framing == Framing::Stream && self.name_starts.is_empty() {
            // RFC 6120 section 4.4: `</stream:stream>` closes the stream.
            self.root_closed = true;
            self.top_start = None;
            queue.push_back(Item::Close);
        } else if self.depth() == 0 {
            queue.push_back(Item::Element {
                start: self.top_start.take().unwrap_or(0),
                end,
            });
        }
        Lex::Content { brackets: 0 }
    }
}

/// One byte of an entity or character reference; `None` when `;` ends it.
/// Only the shape is checked here; what it refers to is checked when the element is built.
fn reference_step(state: ReferenceLex, byte: u8) -> Result<Option<ReferenceLex>, ParseError> {
    let next = match (state, byte) {
        (ReferenceLex::Start, b'#') => ReferenceLex::Hash,
        (ReferenceLex::Start, _) if is_name_start_byte(byte) => ReferenceLex::Name,
        (ReferenceLex::Hash, b'x') => ReferenceLex::HexStart,
        (ReferenceLex::Hash | ReferenceLex::Decimal, b'0'..=b'9') => ReferenceLex::Decimal,
        (ReferenceLex::HexStart | ReferenceLex::Hex, _) if byte.is_ascii_hexdigit() => {
            ReferenceLex::Hex
        }
        (ReferenceLex::Name, _) if is_name_byte(byte) => ReferenceLex::Name,
        (ReferenceLex::Decimal | ReferenceLex::Hex | ReferenceLex::Name, b';') => return Ok(None),
        _ => return Err(not_well_formed("malformed entity or character reference")),
    };
    Ok(Some(next))
}

/// XML whitespace (`S`, XML 1.0 section 2.3).
fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// A byte that may start a name (non-ASCII bytes are checked exactly when the element is built).
fn is_name_start_byte(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || byte == b':' || byte >= 0x80
}

fn is_name_byte(byte: u8) -> bool {
    is_name_start_byte(byte) || byte.is_ascii_digit() || byte == b'-' || byte == b'.'
}

/// Check the XML declaration (the bytes between `<?` and `?>`): RFC 6120
/// section 11.5 allows it at the start of the stream, section 11.6 requires UTF-8.
fn check_xml_declaration(content: &[u8]) -> Result<(), ParseError> {
    let target_end = content
        .iter()
        .position(|&byte| is_whitespace(byte))
        .unwrap_or(content.len());
    if &content[..target_end] != b"xml" {
        return Err(restricted_xml("processing instructions are not allowed"));
    }
    let malformed = || not_well_formed("malformed XML declaration");
    let mut rest = &content[target_end..];
    let mut pseudo_attributes: Vec<(&[u8], &[u8])> = Vec::new();
    loop {
        let trimmed = trim_start(rest);
        if trimmed.is_empty() {
            break;
        }
        if trimmed.len() == rest.len() {
            return Err(malformed());
        }
        let name_end = trimmed
            .iter()
            .position(|&byte| byte == b'=' || is_whitespace(byte))
            .ok_or_else(malformed)?;
        let name = &trimmed[..name_end];
        let after_name = trim_start(&trimmed[name_end..]);
        let after_equals = trim_start(after_name.strip_prefix(b"=").ok_or_else(malformed)?);
        let (&quote, value_and_rest) = after_equals.split_first().ok_or_else(malformed)?;
        if quote != b'\'' && quote != b'"' {
            return Err(malformed());
        }
        let value_end = value_and_rest
            .iter()
            .position(|&byte| byte == quote)
            .ok_or_else(malformed)?;
        pseudo_attributes.push((name, &value_and_rest[..value_end]));
        rest = &value_and_rest[value_end + 1..];
    }
    let mut pseudo_attributes = pseudo_attributes.into_iter().peekable();
    match pseudo_attributes.next() {
        Some((b"version", version)) if is_xml_version(version) => {}
        _ => return Err(malformed()),
    }
    if let Some(&(b"encoding", encoding)) = pseudo_attributes.peek() {
        pseudo_attributes.next();
        if !encoding.eq_ignore_ascii_case(b"UTF-8") {
            return Err(ParseError::new(
                StreamErrorCondition::UnsupportedEncoding,
                "only UTF-8 is supported",
            ));
        }
    }
    if let Some(&(b"standalone", standalone)) = pseudo_attributes.peek() {
        pseudo_attributes.next();
        if standalone != b"yes" && standalone != b"no" {
            return Err(malformed());
        }
    }
    if pseudo_attributes.next().is_some() {
        return Err(malformed());
    }
    Ok(())
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&byte| !is_whitespace(byte))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// `1.` followed by digits (XML 1.0 section 2.8, `VersionNum`).
fn is_xml_version(version: &[u8]) -> bool {
    version
        .strip_prefix(b"1.")
        .is_some_and(|minor| !minor.is_empty() && minor.iter().all(u8::is_ascii_digit))
}

/// The buffer capacity a parser keeps while it holds no bytes.
const KEPT_BUFFER_CAPACITY: usize = 1024;

/// An incremental parser for one XML stream (RFC 6120 section 4) or, with
/// [`StreamParser::new_framed`], for a sequence of WebSocket frames (RFC 7395).
#[derive(Debug, Clone)]
pub struct StreamParser {
    limits: Limits,
    scanner: Scanner,
    /// Bytes from absolute offset `origin` on.
    buffer: Vec<u8>,
    origin: usize,
    queue: VecDeque<Item>,
    /// An error the scanner found, held until the events before it are returned.
    scan_error: Option<ParseError>,
    /// The error already returned; the parser stays failed until `reset`.
    failed: Option<ParseError>,
    /// Namespace bindings in force for top-level elements: `xml`, and those of
    /// the stream header (RFC 6120 section 4.8).
    bindings: Bindings,
    /// Bytes the scanner has examined, to check that parsing stays linear.
    scanned_bytes: u64,
}

impl StreamParser {
    /// A parser for a TCP stream: an optional XML declaration, `<stream:stream>`,
    /// stanzas and nonzas, `</stream:stream>`.
    pub fn new(limits: Limits) -> Self {
        Self::with_framing(limits, Framing::Stream)
    }

    /// A parser for the WebSocket binding (RFC 7395 section 3.3): there is no
    /// stream root, every top-level element (`<open/>`, stanzas, `<close/>`) is a
    /// complete document that declares its own namespaces, and each is returned
    /// as [`StreamEvent::Element`]; the connection manager interprets `<open/>`
    /// and `<close/>`. Whitespace between them is ignored, other text is
    /// `not-well-formed`. An XML declaration is accepted only at the very start of
    /// the input; to accept one per WebSocket message, use [`parse_element`] on
    /// each message instead.
    pub fn new_framed(limits: Limits) -> Self {
        Self::with_framing(limits, Framing::Framed)
    }

    fn with_framing(limits: Limits, framing: Framing) -> Self {
        StreamParser {
            limits,
            scanner: Scanner::new(framing),
            buffer: Vec::new(),
            origin: 0,
            queue: VecDeque::new(),
            scan_error: None,
            failed: None,
            bindings: initial_bindings(),
            scanned_bytes: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many bytes the parser holds: queued complete elements plus the
    /// element being read (at most `max_stanza_bytes` of it).
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Append bytes read from the transport.
    ///
    /// The new bytes are scanned at once, so a limit is enforced as soon as it is
    /// crossed. An error found here is returned at once when no complete event
    /// is waiting ahead of it; otherwise [`next_event`](Self::next_event) returns
    /// it after those events.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ParseError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.scan_error.is_none() {
            self.compact();
            self.buffer.extend_from_slice(bytes);
            self.scan();
            self.compact();
        }
        if self.queue.is_empty() {
            if let Some(error) = self.scan_error.take() {
                self.failed = Some(error.clone());
                return Err(error);
            }
        }
        Ok(())
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = match self.queue.pop_front() {
            Some(item) => self.build(item).map(Some),
            None => match self.scan_error.take() {
                Some(error) => Err(error),
                None => Ok(None),
            },
        };
        match &result {
            Err(error) => self.failed = Some(error.clone()),
            Ok(_) => self.compact(),
        }
        result
    }

    /// Forget all state and expect a new stream header (after STARTTLS or SASL success,
    /// RFC 6120 sections 5.4.3.3 and 6.4.6).
    pub fn reset(&mut self) {
        *self = Self::with_framing(self.limits, self.scanner.framing);
    }

    /// Whether the parser stands between top-level elements with nothing queued
    /// and nothing half read.
    fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.scan_error.is_none()
            && self.failed.is_none()
            && self.scanner.at_boundary()
    }

    fn scan(&mut self) {
        let StreamParser {
            limits,
            scanner,
            buffer,
            origin,
            queue,
            scan_error,
            scanned_bytes,
            ..
        } = self;
        let start = scanner.position - *origin;
        for &byte in &buffer[start..] {
            *scanned_bytes += 1;
            if let Err(error) = scanner.step(byte, limits, queue) {
                *scan_error = Some(error);
                // Keep nothing past the error: memory stays bounded whatever follows.
                let end = scanner.position - *origin;
                buffer.truncate(end);
                return;
            }
            scanner.position += 1;
        }
    }

    /// Drop the bytes no queued item and no half-read element needs, when they
    /// are at least as many as the bytes kept (so the copying is amortised linear).
    fn compact(&mut self) {
        let keep_from = self
            .queue
            .iter()
            .find_map(|item| item.start())
            .unwrap_or(usize::MAX)
            .min(self.scanner.keep_from())
            .min(self.origin + self.buffer.len());
        let drop = keep_from - self.origin;
        if drop > 0 && drop >= self.buffer.len() - drop {
            self.buffer.drain(..drop);
            self.origin = keep_from;
        }
        if self.buffer.is_empty() && self.buffer.capacity() > KEPT_BUFFER_CAPACITY {
            // Between stanzas nothing is held: an idle stream keeps no buffer
            // from the largest stanza it ever read.
            self.buffer = Vec::new();
        }
    }

    fn build(&mut self, item: Item) -> Result<StreamEvent, ParseError> {
        match item {
            Item::Header { start, end } => {
                let (header, bindings) = build_header(self.buffered(start, end)?, &self.limits)?;
                self.bindings = bindings;
                Ok(StreamEvent::Open(header))
            }
            Item::Element { start, end } => {
                build_element(self.buffered(start, end)?, &self.bindings, &self.limits)
                    .map(StreamEvent::Element)
            }
            Item::Close => Ok(StreamEvent::Close),
        }
    }

    /// The buffered bytes at absolute offsets `start..end`. They are always
    /// there (compaction keeps them); an error rather than a panic if not.
    fn buffered(&self, start: usize, end: usize) -> Result<&[u8], ParseError> {
        start
            .checked_sub(self.origin)
            .zip(end.checked_sub(self.origin))
            .and_then(|(start, end)| self.buffer.get(start..end))
            .ok_or_else(|| {
                ParseError::new(
                    StreamErrorCondition::InternalServerError,
                    "parser buffer lost",
                )
            })
    }
}

/// Parse one complete standalone element (a WebSocket frame, RFC 7395 section 3.3.3,
/// or a stored stanza) under the same limits.
///
/// The input must hold exactly one element, with optional whitespace around it
/// and an optional XML declaration at the very start; it must declare its own
/// namespaces (an element without `xmlns` has the empty namespace). Anything
/// else (no element, a truncated one, a second root, trailing text) is
/// `not-well-formed`.
pub fn parse_element(bytes: &[u8], limits: &Limits) -> Result<Element, ParseError> {
    let mut parser = StreamParser::new_framed(*limits);
    parser.feed(bytes)?;
    let element = match parser.next_event()? {
        Some(StreamEvent::Element(element)) => element,
        Some(_) | None => return Err(not_well_formed("no complete element")),
    };
    if parser.next_event()?.is_some() {
        return Err(not_well_formed("more than one root element"));
    }
    if !parser.is_idle() {
        return Err(not_well_formed("incomplete markup after the root element"));
    }
    Ok(element)
}

/// Namespace prefix to namespace name; the empty prefix is the default namespace.
type Bindings = HashMap<String, String>;

/// The bindings in force before any declaration: only `xml` (Namespaces in XML 1.0 section 3).
fn initial_bindings() -> Bindings {
    HashMap::from([("xml".to_string(), ns::XML.to_string())])
}

fn xml_reader(bytes: &[u8]) -> Reader<&[u8]> {
    let mut reader = Reader::from_reader(bytes);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.check_comments = true;
    config.expand_empty_elements = false;
    config.allow_dangling_amp = false;
    config.allow_unmatched_ends = false;
    config.trim_text(false);
    reader
}

/// The start tag of a serialised element, without its children or text: an
/// element's name, namespace and attributes, read under `limits`' attribute
/// limit however large the element is. For a stanza that cannot be taken whole
/// (it breaks the size limit), this is what is needed to answer its sender.
pub fn parse_start_tag(bytes: &[u8], limits: &Limits) -> Result<Element, ParseError> {
    let mut reader = xml_reader(bytes);
    loop {
        match reader.read_event().map_err(quick_xml_error)? {
            Event::Start(start) | Event::Empty(start) => {
                let base = initial_bindings();
                let mut tree = TreeBuilder::new(&base, limits);
                return tree.open(&start);
            }
            Event::Decl(_) | Event::Comment(_) | Event::Text(_) => continue,
            _ => return Err(not_well_formed("no start tag")),
        }
    }
}

fn quick_xml_error(error: quick_xml::Error) -> ParseError {
    not_well_formed(format!("malformed XML: {error}"))
}

/// Build the stream header and the namespace bindings it declares.
///
/// RFC 6120 section 4.8.1: the stream element is `stream` qualified by
/// `http://etherx.jabber.org/streams` (else `invalid-namespace`), with any prefix
/// bound to it; an unbound prefix, or no prefix at all, is `bad-namespace-prefix`
/// (section 4.9.3.2). Section 4.8.2: the default namespace it declares is the
/// one stanzas inherit.
fn build_header(bytes: &[u8], limits: &Limits) -> Result<(StreamHeader, Bindings), ParseError> {
    let mut reader = xml_reader(bytes);
    let start = match reader.read_event().map_err(quick_xml_error)? {
        Event::Start(start) | Event::Empty(start) => start,
        _ => return Err(not_well_formed("expected the stream header")),
    };
    let base = initial_bindings();
    let mut tree = TreeBuilder::new(&base, limits);
    let element = tree.open(&start)?;
    let (prefix, _) = split_qname(utf8(start.name().into_inner())?)?;
    if element.name() != "stream" || element.namespace() != ns::STREAM {
        return Err(ParseError::new(
            StreamErrorCondition::InvalidNamespace,
            "the stream element must be 'stream' in 'http://etherx.jabber.org/streams'",
        ));
    }
    if prefix.is_none() {
        return Err(bad_namespace_prefix(
            "the stream element must have a namespace prefix",
        ));
    }
    let default_namespace = tree
        .scope
        .iter()
        .rev()
        .find(|(prefix, _)| prefix.is_empty())
        .map(|(_, namespace)| namespace.clone())
        .filter(|namespace| !namespace.is_empty());
    let header = StreamHeader {
        to: element.attr("to").map(str::to_string),
        from: element.attr("from").map(str::to_string),
        id: element.attr("id").map(str::to_string),
        version: element.attr("version").map(str::to_string),
        lang: element.attr("xml:lang").map(str::to_string),
        default_namespace,
    };
    // A start tag cannot declare a prefix twice, so the order does not matter.
    let declared = std::mem::take(&mut tree.scope);
    let mut bindings = base.clone();
    bindings.extend(declared);
    Ok((header, bindings))
}

/// Build one complete top-level element from its bytes, with `bindings` in force.
fn build_element(
    bytes: &[u8],
    bindings: &Bindings,
    limits: &Limits,
) -> Result<Element, ParseError> {
    let mut reader = xml_reader(bytes);
    let mut tree = TreeBuilder::new(bindings, limits);
    loop {
        match reader.read_event().map_err(quick_xml_error)? {
            Event::Start(start) => {
                let element = tree.open(&start)?;
                tree.stack.push(element);
            }
            Event::Empty(start) => {
                let element = tree.open(&start)?;
                tree.close(element)?;
            }
            Event::End(_) => {
                let element = tree
                    .stack
                    .pop()
                    .ok_or_else(|| not_well_formed("end tag without a start tag"))?;
                tree.close(element)?;
            }
            Event::Text(text) => tree.text(&normalize_newlines(utf8(&text)?))?,
            Event::CData(data) => tree.text(&normalize_newlines(utf8(&data)?))?,
            Event::GeneralRef(reference) => {
                let character = resolve_reference(utf8(&reference)?)?;
                tree.text(character.encode_utf8(&mut [0; 4]))?;
            }
            Event::Comment(_) => return Err(restricted_xml("comments are not allowed")),
            Event::PI(_) | Event::Decl(_) => {
                return Err(restricted_xml("processing instructions are not allowed"))
            }
            Event::DocType(_) => return Err(restricted_xml("DTDs are not allowed")),
            Event::Eof => break,
        }
    }
    if !tree.stack.is_empty() {
        return Err(not_well_formed("unclosed element"));
    }
    tree.root.ok_or_else(|| not_well_formed("no element"))
}

/// Builds elements from quick-xml events, resolving namespaces (Namespaces in XML
/// 1.0; RFC 6120 section 11.2).
struct TreeBuilder<'a> {
    base: &'a Bindings,
    limits: &'a Limits,
    /// Bindings declared by the open elements, innermost last; `marks` says
    /// where each open element's declarations start.
    scope: Vec<(String, String)>,
    marks: Vec<usize>,
    /// For each prefix declared by an open element, its entries in `scope`,
    /// innermost last, so that a lookup costs the same however many bindings
    /// are in scope.
    in_scope: HashMap<String, Vec<usize>>,
    stack: Vec<Element>,
    root: Option<Element>,
}

impl<'a> TreeBuilder<'a> {
    fn new(base: &'a Bindings, limits: &'a Limits) -> Self {
        TreeBuilder {
            base,
            limits,
            scope: Vec::new(),
            marks: Vec::new(),
            in_scope: HashMap::new(),
            stack: Vec::new(),
            root: None,
        }
    }

    fn lookup(&self, prefix: &str) -> Option<&str> {
        match self.in_scope.get(prefix).and_then(|entries| entries.last()) {
            Some(&entry) => Some(self.scope[entry].1.as_str()),
            None => self.base.get(prefix).map(String::as_str),
        }
    }

    fn declare(&mut self, prefix: &str, namespace: &str) {
        self.in_scope
            .entry(prefix.to_string())
            .or_default()
            .push(self.scope.len());
        self.scope.push((prefix.to_string(), namespace.to_string()));
    }

    /// Read a start tag: push its namespace declarations and return the element,
    /// without children. Attributes: no-namespace ones unprefixed, `xml:` ones
    /// as `xml:name`, other namespaced ones as `prefix:name` with the
    /// `xmlns:prefix` declaration they need kept beside them; `xmlns` is not kept.
    fn open(&mut self, start: &BytesStart<'_>) -> Result<Element, ParseError> {
        let (prefix, local) = split_qname(utf8(start.name().into_inner())?)?;
        let mut attributes: Vec<(&str, String)> = Vec::new();
        for attribute in start.attributes() {
            let attribute = attribute
                .map_err(|error| not_well_formed(format!("malformed attribute: {error}")))?;
            let key = utf8(attribute.key.into_inner())?;
            let value = attribute_value(utf8(&attribute.value)?)?;
            attributes.push((key, value));
        }
        if attributes.len() > self.limits.max_attributes {
            return Err(policy_violation("too many attributes"));
        }

        self.marks.push(self.scope.len());
        for (key, value) in &attributes {
            if *key == "xmlns" {
                if value == ns::XML || value == XMLNS_NAMESPACE {
                    return Err(not_well_formed(
                        "reserved namespace declared as the default namespace",
                    ));
                }
                self.declare("", value);
            } else if let Some(declared) = key.strip_prefix("xmlns:") {
                check_ncname(declared)?;
                let reserved = value == ns::XML || value == XMLNS_NAMESPACE;
                if declared == "xmlns"
                    || (declared == "xml") != (value == ns::XML)
                    || (declared != "xml" && reserved)
                {
                    return Err(not_well_formed("reserved namespace prefix or name misused"));
                }
                if value.is_empty() {
                    return Err(not_well_formed(
                        "a namespace prefix cannot be undeclared in XML 1.0",
                    ));
                }
                self.declare(declared, value);
            }
        }

        let namespace = match prefix {
            None => self.lookup("").unwrap_or_default().to_string(),
            Some("xml" | "xmlns") => {
                return Err(bad_namespace_prefix("reserved prefix on an element"))
            }
            Some(prefix) => self
                .lookup(prefix)
                .ok_or_else(|| {
                    bad_namespace_prefix(format!("unbound namespace prefix '{prefix}'"))
                })?
                .to_string(),
        };
        let mut element = Element::new(local, namespace);

        let mut expanded_names: Vec<(&str, &str)> = Vec::with_capacity(attributes.len());
        let mut kept_declarations: Vec<&str> = Vec::new();
        let used_prefixes: Vec<&str> = attributes
            .iter()
            .filter_map(|(key, _)| key.split_once(':').map(|(prefix, _)| prefix))
            .filter(|prefix| *prefix != "xml" && *prefix != "xmlns")
            .collect();
        for (key, value) in &attributes {
            if *key == "xmlns" {
                continue;
            }
            let (attribute_prefix, attribute_local) = split_qname(key)?;
            match attribute_prefix {
                None => expanded_names.push(("", attribute_local)),
                Some("xmlns") => {
                    if used_prefixes.contains(&attribute_local)
                        && !kept_declarations.contains(&attribute_local)
                    {
                        kept_declarations.push(attribute_local);
                        element.set_attr(*key, value.clone());
                    }
                    continue;
                }
                Some("xml") => expanded_names.push((ns::XML, attribute_local)),
                Some(attribute_prefix) => {
                    let namespace = self.lookup(attribute_prefix).ok_or_else(|| {
                        bad_namespace_prefix(format!(
                            "unbound namespace prefix '{attribute_prefix}'"
                        ))
                    })?;
                    expanded_names.push((namespace, attribute_local));
                    if !kept_declarations.contains(&attribute_prefix) {
                        kept_declarations.push(attribute_prefix);
                        element.set_attr(format!("xmlns:{attribute_prefix}"), namespace);
                    }
                }
            }
            element.set_attr(*key, value.clone());
        }
        expanded_names.sort_unstable();
        if expanded_names.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(not_well_formed("duplicate attribute"));
        }
        Ok(element)
    }

    /// An element ended: pop its bindings and attach it to its parent.
    fn close(&mut self, element: Element) -> Result<(), ParseError> {
        if let Some(mark) = self.marks.pop() {
            for (prefix, _) in self.scope.drain(mark..) {
                if let Some(entries) = self.in_scope.get_mut(&prefix) {
                    entries.pop();
                }
            }
        }
        match self.stack.last_mut() {
            Some(parent) => {
                parent.append_child(element);
            }
            None if self.root.is_none() => self.root = Some(element),
            None => return Err(not_well_formed("more than one root element")),
        }
        Ok(())
    }

    fn text(&mut self, text: &str) -> Result<(), ParseError> {
        match self.stack.last_mut() {
            Some(element) => element.append_text(text),
            None if text.bytes().all(is_whitespace) => {}
            None => return Err(not_well_formed("character data outside the root element")),
        }
        Ok(())
    }
}

const XMLNS_NAMESPACE: &str = "http://www.w3.org/2000/xmlns/";

fn utf8(bytes: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(bytes).map_err(|_| not_well_formed("invalid UTF-8"))
}

/// Split `prefix:local`, checking both parts are `NCName`s (Namespaces in XML 1.0 section 4).
fn split_qname(qname: &str) -> Result<(Option<&str>, &str), ParseError> {
    match qname.split_once(':') {
        None => {
            check_ncname(qname)?;
            Ok((None, qname))
        }
        Some((prefix, local)) => {
            check_ncname(prefix)?;
            check_ncname(local)?;
            Ok((Some(prefix), local))
        }
    }
}

fn check_ncname(name: &str) -> Result<(), ParseError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|first| first != ':' && is_name_start_char(first))
        && chars.all(|c| c != ':' && is_name_char(c));
    if valid {
        Ok(())
    } else {
        Err(not_well_formed(format!("invalid XML name '{name}'")))
    }
}

/// `NameStartChar`, XML 1.0 (fifth edition) section 2.3.
fn is_name_start_char(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// `NameChar`, XML 1.0 (fifth edition) section 2.3.
fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// `Char`, XML 1.0 section 2.2.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Resolve the inside of `&...;`: the five predefined entities and character
/// references to legal characters. Any other entity is undeclared, since RFC 6120
/// section 11.1 forbids declaring one: `restricted-xml`.
fn resolve_reference(name: &str) -> Result<char, ParseError> {
    let character = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let Some(number) = name.strip_prefix('#') else {
                check_ncname(name).map_err(|_| not_well_formed("malformed entity reference"))?;
                return Err(restricted_xml(format!("undeclared entity '{name}'")));
            };
            let (digits, radix) = match number.strip_prefix('x') {
                Some(hex) => (hex, 16),
                None => (number, 10),
            };
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return Err(not_well_formed("malformed character reference"));
            }
            let value = digits.chars().try_fold(0u32, |value, digit| {
                let next = value * radix + digit.to_digit(radix).unwrap_or(0);
                (next <= 0x10FFFF).then_some(next)
            });
            value
                .and_then(char::from_u32)
                .filter(|&c| is_xml_char(c))
                .ok_or_else(|| {
                    not_well_formed("character reference to a character not allowed in XML")
                })?
        }
    };
    Ok(character)
}

/// An attribute value as XML 1.0 section 3.3.3 normalises it: references
/// resolved, each literal tab, newline, carriage return or CR LF pair a space.
fn attribute_value(raw: &str) -> Result<String, ParseError> {
    let mut value = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(index) = rest.find(['&', '\t', '\n', '\r']) {
        value.push_str(&rest[..index]);
        let special = rest.as_bytes()[index];
        rest = &rest[index + 1..];
        match special {
            b'&' => {
                let end = rest
                    .find(';')
                    .ok_or_else(|| not_well_formed("unterminated reference"))?;
                value.push(resolve_reference(&rest[..end])?);
                rest = &rest[end + 1..];
            }
            b'\r' => {
                rest = rest.strip_prefix('\n').unwrap_or(rest);
                value.push(' ');
            }
            _ => value.push(' '),
        }
    }
    value.push_str(rest);
    Ok(value)
}

/// XML 1.0 section 2.11: CR LF and lone CR become LF.
fn normalize_newlines(text: &str) -> Cow<'_, str> {
    if text.contains('\r') {
        Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests;
