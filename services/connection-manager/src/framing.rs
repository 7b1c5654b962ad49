//! The two framings of a client stream. Over TCP (RFC 6120 section 4) the
//! stream is one XML document cut into chunks anywhere; over WebSocket (RFC
//! 7395 section 3) every message is one complete element, `<open/>` and
//! `<close/>` stand for the stream tags, and each element declares its own
//! namespaces. Negotiation and the session speak in events and units; this
//! module turns them into the bytes of either framing.

use std::collections::VecDeque;

use starling_xmpp::{
    escape_attr, ns, parse_element, Element, Limits, ParseError, StreamError, StreamErrorCondition,
    StreamEvent, StreamHeader, StreamParser,
};

use crate::outbound::QueuedStanza;
use crate::xml::{self, FeatureSet, STREAM_CLOSE};

/// Which framing a stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// RFC 6120 section 4: `<stream:stream>`, its children, `</stream:stream>`.
    Stream,
    /// RFC 7395 section 3.3: one complete element per WebSocket text message.
    /// BOSH (XEP-0206) uses it too: each unit is one child of a `<body/>`,
    /// declaring its own namespaces.
    WebSocket,
}

/// `<close/>`, RFC 7395 section 3.6.
pub(crate) const FRAMED_CLOSE: &str = "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";

/// The capacity of an [`Outgoing`] buffer kept between writes.
const KEPT_CAPACITY: usize = 1024;

/// What the server writes next, as a list of units: for TCP they are written
/// back to back in one call, over WebSocket each unit is one text message.
#[derive(Debug)]
pub(crate) struct Outgoing {
    framing: Framing,
    text: String,
    /// Where each unit ends in `text`.
    ends: Vec<usize>,
}

impl Outgoing {
    pub fn new(framing: Framing) -> Self {
        Outgoing {
            framing,
            text: String::new(),
            ends: Vec::new(),
        }
    }

    /// Empty, ready for the next write. A buffer that grew past
    /// [`KEPT_CAPACITY`] is given back, so that a session waiting for its next
    /// stanza holds (almost) nothing.
    pub fn clear(&mut self) {
        if self.text.capacity() > KEPT_CAPACITY {
            self.text = String::new();
            self.ends = Vec::new();
        } else {
            self.text.clear();
            self.ends.clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes held so far.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Everything, for a byte stream.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Every unit, for a message-based transport.
    pub fn units(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let unit = &self.text[start..end];
            start = end;
            unit
        })
    }

    fn end_unit(&mut self) {
        self.ends.push(self.text.len());
    }

    /// The response stream header (RFC 6120 section 4.7) or `<open/>` (RFC
    /// 7395 section 3.4).
    pub fn header(&mut self, id: &str, domain: &str, to: Option<&str>, lang: &str) {
        match self.framing {
            Framing::Stream => self
                .text
                .push_str(&xml::stream_header(id, domain, to, lang)),
            Framing::WebSocket => {
                self.text
                    .push_str("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='");
                self.text.push_str(&escape_attr(id));
                self.text.push_str("' from='");
                self.text.push_str(&escape_attr(domain));
                self.text.push('\'');
                if let Some(to) = to {
                    self.text.push_str(" to='");
                    self.text.push_str(&escape_attr(to));
                    self.text.push('\'');
                }
                self.text.push_str(" version='1.0' xml:lang='");
                self.text.push_str(&escape_attr(lang));
                self.text.push_str("'/>");
            }
        }
        self.end_unit();
    }

    /// `<stream:features>`; over WebSocket with the `stream` prefix declared
    /// (RFC 7395 section 3.3.3).
    pub fn features(&mut self, features: &FeatureSet) {
        let xml = features.to_xml();
        self.push_stream_prefixed(&xml);
    }

    /// A nonza that declares its own namespace (SASL, STARTTLS).
    pub fn nonza(&mut self, xml: &str) {
        self.text.push_str(xml);
        self.end_unit();
    }

    /// A stanza; over WebSocket it declares `jabber:client` itself.
    pub fn stanza(&mut self, stanza: &Element) {
        let parent_namespace = self.content_namespace();
        stanza.write_to(&mut self.text, parent_namespace);
        self.end_unit();
    }

    pub fn queued_stanza(&mut self, stanza: &QueuedStanza) {
        let parent_namespace = self.content_namespace();
        stanza.write_to(&mut self.text, parent_namespace);
        self.end_unit();
    }

    /// `<stream:error>` (RFC 6120 section 4.9; RFC 7395 section 3.6.1).
    pub fn stream_error(&mut self, error: &StreamError) {
        let xml = error.to_xml();
        self.push_stream_prefixed(&xml);
    }

    /// `</stream:stream>` or `<close/>`.
    pub fn close(&mut self) {
        self.text.push_str(match self.framing {
            Framing::Stream => STREAM_CLOSE,
            Framing::WebSocket => FRAMED_CLOSE,
        });
        self.end_unit();
    }

    /// The default namespace in force where stanzas are written.
    fn content_namespace(&self) -> &'static str {
        match self.framing {
            Framing::Stream => ns::CLIENT,
            Framing::WebSocket => "",
        }
    }

    /// An element in the `stream` prefix; over WebSocket there is no stream
    /// element to declare the prefix, so the element declares it.
    fn push_stream_prefixed(&mut self, xml: &str) {
        match (self.framing, xml.split_once('>')) {
            (Framing::WebSocket, Some((start_tag, rest))) => {
                let (start_tag, empty) = match start_tag.strip_suffix('/') {
                    Some(start_tag) => (start_tag, "/"),
                    None => (start_tag, ""),
                };
                self.text.push_str(start_tag);
                self.text.push_str(" xmlns:stream='");
                self.text.push_str(ns::STREAM);
                self.text.push('\'');
                self.text.push_str(empty);
                self.text.push('>');
                self.text.push_str(rest);
            }
            _ => self.text.push_str(xml),
        }
        self.end_unit();
    }
}

/// Turns what the client sends into stream events, for either framing.
// One per connection, built once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Inbound {
    /// An incremental parser over the byte stream.
    Stream(StreamParser),
    /// One complete element per message (RFC 7395 section 3.3.3).
    Framed {
        limits: Limits,
        events: VecDeque<StreamEvent>,
        failed: Option<ParseError>,
    },
}

impl Inbound {
    pub fn new(framing: Framing, limits: Limits) -> Self {
        match framing {
            Framing::Stream => Inbound::Stream(StreamParser::new(limits)),
            Framing::WebSocket => Inbound::Framed {
                limits,
                events: VecDeque::new(),
                failed: None,
            },
        }
    }

    /// Bytes read from a byte stream, or one whole WebSocket message.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ParseError> {
        match self {
            Inbound::Stream(parser) => parser.feed(bytes),
            Inbound::Framed {
                limits,
                events,
                failed,
            } => {
                if let Some(error) = failed {
                    return Err(error.clone());
                }
                match framed_event(bytes, limits) {
                    Ok(Some(event)) => {
                        events.push_back(event);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(error) => {
                        *failed = Some(error.clone());
                        Err(error)
                    }
                }
            }
        }
    }

    /// An event decoded elsewhere: a child of a BOSH `<body/>`, or the
    /// stream start and end a BOSH request stands for (XEP-0206).
    pub fn push_event(&mut self, event: StreamEvent) {
        match self {
            Inbound::Framed { events, .. } => events.push_back(event),
            Inbound::Stream(_) => debug_assert!(false, "a byte stream takes bytes, not events"),
        }
    }

    /// The next complete event, `Ok(None)` when more input is needed.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        match self {
            Inbound::Stream(parser) => parser.next_event(),
            Inbound::Framed { events, failed, .. } => match events.pop_front() {
                Some(event) => Ok(Some(event)),
                None => match failed {
                    Some(error) => Err(error.clone()),
                    None => Ok(None),
                },
            },
        }
    }

    /// Expect a new stream header (after SASL success, RFC 6120 section 6.4.6).
    pub fn reset(&mut self) {
        match self {
            Inbound::Stream(parser) => parser.reset(),
            Inbound::Framed { events, failed, .. } => {
                events.clear();
                *failed = None;
            }
        }
    }
}

/// One WebSocket message as a stream event: `<open/>` is the stream header,
/// `<close/>` the stream's end, anything else a stanza or nonza. A message of
/// whitespace only is ignored.
fn framed_event(message: &[u8], limits: &Limits) -> Result<Option<StreamEvent>, ParseError> {
    // The whole message counts, not just the element (RFC 6120 section 13.12).
    if message.len() > limits.max_stanza_bytes {
        return Err(ParseError(StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            format!(
                "a message may hold at most {} bytes",
                limits.max_stanza_bytes
            ),
        )));
    }
    if message.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let element = parse_element(message, limits)?;
    if element.namespace() == ns::FRAMING {
        return match element.name() {
            "open" => Ok(Some(StreamEvent::Open(StreamHeader {
                to: element.attr("to").map(str::to_string),
                from: element.attr("from").map(str::to_string),
                id: element.attr("id").map(str::to_string),
                version: element.attr("version").map(str::to_string),
                lang: element.attr("xml:lang").map(str::to_string),
                // Section 3.3.2: the content namespace is jabber:client.
                default_namespace: Some(ns::CLIENT.to_string()),
            }))),
            "close" => Ok(Some(StreamEvent::Close)),
            _ => Err(ParseError(StreamError::with_text(
                StreamErrorCondition::UnsupportedStanzaType,
                "unknown framing element",
            ))),
        };
    }
    Ok(Some(StreamEvent::Element(element)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(outgoing: &Outgoing) -> Vec<&str> {
        outgoing.units().collect()
    }

    #[test]
    fn websocket_units_declare_their_namespaces() {
        let mut out = Outgoing::new(Framing::WebSocket);
        out.header("s1", "example.com", Some("juliet@example.com"), "en");
        out.features(&FeatureSet::for_stage(
            false,
            false,
            false,
            &crate::features::stream_features(false),
        ));
        out.stanza(
            &Element::new("message", ns::CLIENT)
                .with_attr("to", "juliet@example.com")
                .with_child(Element::new("body", ns::CLIENT).with_text("hi")),
        );
        out.stream_error(&StreamError::new(StreamErrorCondition::PolicyViolation));
        out.close();
        assert_eq!(
            units(&out),
            vec![
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='s1' from='example.com' to='juliet@example.com' version='1.0' xml:lang='en'/>",
                "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>",
                "<message xmlns='jabber:client' to='juliet@example.com'><body>hi</body></message>",
                "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
            ]
        );
        assert_eq!(
            out.len(),
            units(&out).iter().map(|unit| unit.len()).sum::<usize>()
        );
    }

    #[test]
    fn stream_units_are_the_tcp_bytes() {
        let mut out = Outgoing::new(Framing::Stream);
        out.stanza(&Element::new("presence", ns::CLIENT));
        out.stream_error(&StreamError::new(StreamErrorCondition::SystemShutdown));
        out.close();
        assert_eq!(
            out.as_str(),
            "<presence/><stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        );
        assert_eq!(units(&out).len(), 3);
        out.clear();
        assert!(out.is_empty());
    }

    fn framed(messages: &[&str]) -> Vec<Result<StreamEvent, StreamErrorCondition>> {
        let limits = Limits {
            max_stanza_bytes: 1024,
            ..Limits::default()
        };
        let mut inbound = Inbound::new(Framing::WebSocket, limits);
        let mut events = Vec::new();
        for message in messages {
            match inbound.feed(message.as_bytes()) {
                Ok(()) => {
                    while let Some(event) = inbound.next_event().unwrap() {
                        events.push(Ok(event));
                    }
                }
                Err(error) => {
                    events.push(Err(error.condition()));
                    break;
                }
            }
        }
        events
    }

    #[test]
    fn framed_open_stanza_close() {
        let events = framed(&[
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0' xml:lang='de'/>",
            " \n",
            "<?xml version='1.0'?><message xmlns='jabber:client' to='a@example.com'><body>x</body></message>",
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        ]);
        assert_eq!(events.len(), 3);
        let Ok(StreamEvent::Open(header)) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(header.to.as_deref(), Some("example.com"));
        assert_eq!(header.version.as_deref(), Some("1.0"));
        assert_eq!(header.lang.as_deref(), Some("de"));
        assert_eq!(header.default_namespace.as_deref(), Some(ns::CLIENT));
        let Ok(StreamEvent::Element(message)) = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(
            message.to_stanza_xml(),
            "<message to='a@example.com'><body>x</body></message>"
        );
        assert_eq!(events[2], Ok(StreamEvent::Close));
    }

    #[test]
    fn framed_rejections() {
        use StreamErrorCondition::*;
        assert_eq!(framed(&["hello"]), vec![Err(NotWellFormed)]);
        assert_eq!(
            framed(&["<message xmlns='jabber:client'>"]),
            vec![Err(NotWellFormed)]
        );
        assert_eq!(
            framed(&["<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>"]),
            vec![Err(NotWellFormed)]
        );
        let oversize = format!(
            "<message xmlns='jabber:client'><body>{}</body></message>",
            "x".repeat(1024)
        );
        assert_eq!(framed(&[&oversize]), vec![Err(PolicyViolation)]);
        assert_eq!(
            framed(&["<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>"]).len(),
            1
        );
        // Once failed, it stays failed.
        let limits = Limits::default();
        let mut inbound = Inbound::new(Framing::WebSocket, limits);
        assert!(inbound.feed(b"<").is_err());
        assert!(inbound.feed(b"<presence xmlns='jabber:client'/>").is_err());
        assert!(inbound.next_event().is_err());
    }
}
