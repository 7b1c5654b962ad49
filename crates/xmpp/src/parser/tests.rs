//! Tests of the stream parser: every rejection path with literal XML, namespaces,
//! the element model, limits, framing, reset, split invariance and round trips.

use super::*;
use crate::element::Node;
use crate::error::StreamErrorCondition as Condition;
use proptest::prelude::*;

const STREAM_NS_DECL: &str = "xmlns:stream='http://etherx.jabber.org/streams'";
const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

/// What a parser yields for a sequence of chunks: the events, then the error that
/// ended them, if any. The driver is the one a connection manager runs: feed,
/// then drain `next_event` until it needs more.
fn run<'a>(mut parser: StreamParser, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(error) = parser.feed(chunk) {
            return Outcome {
                events,
                error: Some(error),
            };
        }
        loop {
            match parser.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(error) => {
                    return Outcome {
                        events,
                        error: Some(error),
                    }
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    events: Vec<StreamEvent>,
    error: Option<ParseError>,
}

impl Outcome {
    fn condition(&self) -> Option<Condition> {
        self.error.as_ref().map(ParseError::condition)
    }

    fn elements(&self) -> Vec<&Element> {
        self.events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::Element(element) => Some(element),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Stream,
    Framed,
}

fn parser(mode: Mode, limits: Limits) -> StreamParser {
    match mode {
        Mode::Stream => StreamParser::new(limits),
        Mode::Framed => StreamParser::new_framed(limits),
    }
}

/// Parse `input` in one chunk, byte by byte and split in two at every offset;
/// assert every way gives the same outcome, and return it.
fn parse_all_ways(mode: Mode, limits: Limits, input: &[u8]) -> Outcome {
    let one_shot = run(parser(mode, limits), [input]);
    let byte_by_byte = run(parser(mode, limits), input.chunks(1));
    assert_eq!(
        byte_by_byte,
        one_shot,
        "byte by byte differs for {:?}",
        String::from_utf8_lossy(input)
    );
    for split in 0..=input.len() {
        let (head, tail) = input.split_at(split);
        let two_chunks = run(parser(mode, limits), [head, tail]);
        assert_eq!(
            two_chunks,
            one_shot,
            "split at {split} differs for {:?}",
            String::from_utf8_lossy(input)
        );
    }
    one_shot
}

fn stream(input: &str) -> Outcome {
    parse_all_ways(Mode::Stream, Limits::default(), input.as_bytes())
}

fn stream_bytes(input: &[u8]) -> Outcome {
    parse_all_ways(Mode::Stream, Limits::default(), input)
}

fn framed(input: &str) -> Outcome {
    parse_all_ways(Mode::Framed, Limits::default(), input.as_bytes())
}

/// The outcome of `HEADER` followed by `body`.
fn in_stream(body: &str) -> Outcome {
    stream(&format!("{HEADER}{body}"))
}

fn only_element(outcome: &Outcome) -> Element {
    assert_eq!(outcome.error, None);
    let elements = outcome.elements();
    assert_eq!(elements.len(), 1, "{outcome:?}");
    elements[0].clone()
}

/// The one stanza in `HEADER` + `body`.
fn stanza(body: &str) -> Element {
    only_element(&in_stream(body))
}

fn assert_stream_error(body: &str, condition: Condition) {
    let outcome = in_stream(body);
    assert_eq!(
        outcome.condition(),
        Some(condition),
        "{body:?} gave {outcome:?}"
    );
}

fn attrs(element: &Element) -> Vec<(&str, &str)> {
    element.attrs().collect()
}

fn client_header() -> StreamHeader {
    StreamHeader {
        to: Some("example.com".into()),
        version: Some("1.0".into()),
        lang: Some("en".into()),
        default_namespace: Some(ns::CLIENT.into()),
        ..StreamHeader::default()
    }
}

// The stream header (RFC 6120 sections 4.7 and 4.8).

#[test]
fn opens_client_stream_with_declaration() {
    let outcome = in_stream("");
    assert_eq!(outcome.events, vec![StreamEvent::Open(client_header())]);
    assert_eq!(outcome.error, None);
}

#[test]
fn opens_stream_without_declaration_and_reads_every_header_attribute() {
    let outcome = stream(&format!(
        "<stream:stream xmlns='jabber:server' {STREAM_NS_DECL} to='b.example' from='a.example' \
         id='s1' version='1.0' xml:lang='de'>"
    ));
    let header = StreamHeader {
        to: Some("b.example".into()),
        from: Some("a.example".into()),
        id: Some("s1".into()),
        version: Some("1.0".into()),
        lang: Some("de".into()),
        default_namespace: Some(ns::SERVER.into()),
    };
    assert_eq!(outcome.events, vec![StreamEvent::Open(header)]);
}

#[test]
fn stream_prefix_may_be_any_prefix_bound_to_the_stream_namespace() {
    let outcome = stream(
        "<s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' version='1.0'>\
         <s:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></s:features></s:stream>",
    );
    assert_eq!(outcome.error, None);
    let features = outcome.elements()[0].clone();
    assert!(features.is("features", ns::STREAM));
    assert!(features.has_child("starttls", ns::TLS));
    assert_eq!(outcome.events.last(), Some(&StreamEvent::Close));
}

#[test]
fn unbound_stream_prefix_is_bad_namespace_prefix() {
    let outcome = stream(&format!(
        "<foobar:stream xmlns='jabber:client' {STREAM_NS_DECL}>"
    ));
    assert_eq!(outcome.condition(), Some(Condition::BadNamespacePrefix));
}

#[test]
fn unprefixed_stream_element_is_bad_namespace_prefix() {
    let outcome = stream("<stream xmlns='http://etherx.jabber.org/streams'>");
    assert_eq!(outcome.condition(), Some(Condition::BadNamespacePrefix));
}

#[test]
fn wrong_stream_namespace_is_invalid_namespace() {
    let outcome =
        stream("<stream:stream xmlns='jabber:client' xmlns:stream='http://wrong.example/'>");
    assert_eq!(outcome.condition(), Some(Condition::InvalidNamespace));
    let outcome = stream("<stream xmlns='jabber:client'>");
    assert_eq!(outcome.condition(), Some(Condition::InvalidNamespace));
}

#[test]
fn wrong_stream_element_name_is_invalid_namespace() {
    let outcome = stream(&format!("<stream:flow {STREAM_NS_DECL}>"));
    assert_eq!(outcome.condition(), Some(Condition::InvalidNamespace));
}

#[test]
fn stream_without_default_namespace_leaves_stanzas_unqualified() {
    let outcome = stream(&format!("<stream:stream {STREAM_NS_DECL}><message/>"));
    assert_eq!(
        outcome.events[0],
        StreamEvent::Open(StreamHeader::default())
    );
    assert_eq!(outcome.elements()[0].namespace(), "");
}

#[test]
fn self_closing_stream_header_opens_and_closes() {
    let outcome = stream(&format!(
        "<stream:stream xmlns='jabber:client' {STREAM_NS_DECL}/>  "
    ));
    assert_eq!(outcome.error, None);
    assert!(matches!(
        outcome.events.as_slice(),
        [StreamEvent::Open(_), StreamEvent::Close]
    ));
}

#[test]
fn closing_tag_ends_the_stream() {
    let outcome = in_stream("<presence/></stream:stream>\n");
    assert_eq!(outcome.error, None);
    assert!(matches!(
        outcome.events.as_slice(),
        [
            StreamEvent::Open(_),
            StreamEvent::Element(_),
            StreamEvent::Close
        ]
    ));
}

#[test]
fn anything_but_whitespace_after_the_stream_is_not_well_formed() {
    for tail in ["<message/>", "text", "</stream:stream>"] {
        let outcome = in_stream(&format!("</stream:stream> {tail}"));
        assert_eq!(
            outcome.condition(),
            Some(Condition::NotWellFormed),
            "{tail}"
        );
        assert_eq!(outcome.events.last(), Some(&StreamEvent::Close));
    }
}

#[test]
fn mismatched_stream_close_is_not_well_formed() {
    for close in ["</stream:flow>", "</stream>", "</s:stream>", "</message>"] {
        assert_stream_error(close, Condition::NotWellFormed);
    }
}

// The XML declaration and encodings (RFC 6120 sections 11.5 and 11.6).

#[test]
fn declaration_naming_utf8_is_accepted() {
    for declaration in [
        "<?xml version='1.0'?>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
        "<?xml version='1.0' encoding='utf-8' standalone='yes'?>",
        "<?xml version = '1.0' ?>",
        "<?xml version='1.1'?>",
    ] {
        let outcome = stream(&format!(
            "{declaration}<stream:stream xmlns='jabber:client' {STREAM_NS_DECL}>"
        ));
        assert_eq!(outcome.error, None, "{declaration}");
        assert_eq!(outcome.events.len(), 1);
    }
}

#[test]
fn declaration_naming_another_encoding_is_unsupported_encoding() {
    for encoding in ["ISO-8859-1", "UTF-16", "utf8"] {
        let outcome = stream(&format!("<?xml version='1.0' encoding='{encoding}'?>"));
        assert_eq!(
            outcome.condition(),
            Some(Condition::UnsupportedEncoding),
            "{encoding}"
        );
    }
}

#[test]
fn utf16_byte_order_mark_is_unsupported_encoding() {
    assert_eq!(
        stream_bytes(b"\xFE\xFF\x00<").condition(),
        Some(Condition::UnsupportedEncoding)
    );
    assert_eq!(
        stream_bytes(b"\xFF\xFE<\x00").condition(),
        Some(Condition::UnsupportedEncoding)
    );
}

#[test]
fn utf8_byte_order_mark_is_accepted_before_the_declaration() {
    let outcome = stream_bytes(format!("\u{FEFF}{HEADER}").as_bytes());
    assert_eq!(outcome.events, vec![StreamEvent::Open(client_header())]);
    assert_eq!(
        stream_bytes(b"\xEF\xBB<").condition(),
        Some(Condition::NotWellFormed)
    );
}

#[test]
fn declaration_anywhere_but_the_very_start_is_restricted_xml() {
    assert_eq!(
        stream(" <?xml version='1.0'?>").condition(),
        Some(Condition::RestrictedXml)
    );
    assert_eq!(
        stream("<?xml version='1.0'?><?xml version='1.0'?>").condition(),
        Some(Condition::RestrictedXml)
    );
    assert_stream_error("<?xml version='1.0'?>", Condition::RestrictedXml);
}

#[test]
fn malformed_declaration_is_not_well_formed() {
    for declaration in [
        "<?xml?>",
        "<?xml encoding='UTF-8'?>",
        "<?xml version='2.0'?>",
        "<?xml version='1.0' standalone='maybe'?>",
        "<?xml version='1.0' bogus='1'?>",
        "<?xml version='1.0'encoding='UTF-8'?>",
        "<?xml version=1.0?>",
        "<?xml standalone='yes' version='1.0'?>",
    ] {
        assert_eq!(
            stream(declaration).condition(),
            Some(Condition::NotWellFormed),
            "{declaration}"
        );
    }
}

#[test]
fn processing_instruction_at_the_start_is_restricted_xml() {
    assert_eq!(
        stream("<?xml-stylesheet href='a.xsl'?>").condition(),
        Some(Condition::RestrictedXml)
    );
    assert_eq!(
        stream("<?php echo 1; ?>").condition(),
        Some(Condition::RestrictedXml)
    );
}

// Namespaces (RFC 6120 sections 4.8 and 11.2).

#[test]
fn stanza_inherits_the_stream_default_namespace() {
    let message = stanza("<message to='juliet@example.com'><body>hi</body></message>");
    assert!(message.is("message", ns::CLIENT));
    assert!(message.has_child("body", ns::CLIENT));

    let outcome = stream(&format!(
        "<stream:stream xmlns='jabber:server' {STREAM_NS_DECL}><presence/>"
    ));
    assert!(outcome.elements()[0].is("presence", ns::SERVER));
}

#[test]
fn namespace_declared_on_a_child_is_inherited_by_its_descendants() {
    let iq = stanza(
        "<iq type='get' id='1'><x xmlns='urn:foo'><y/><z xmlns='urn:bar'><w/></z></x><v/></iq>",
    );
    let x = iq.get_child("x", "urn:foo").expect("x");
    assert!(x.has_child("y", "urn:foo"));
    assert!(x
        .get_child("z", "urn:bar")
        .expect("z")
        .has_child("w", "urn:bar"));
    assert!(iq.has_child("v", ns::CLIENT));
    assert_eq!(attrs(x), vec![]);
}

#[test]
fn prefixed_elements_resolve_and_their_declarations_are_not_kept() {
    let message = stanza("<message><p:x xmlns:p='urn:p'><p:y/><z/></p:x></message>");
    let x = message.get_child("x", "urn:p").expect("x");
    assert_eq!(x.name(), "x");
    assert!(x.has_child("y", "urn:p"));
    assert!(x.has_child("z", ns::CLIENT));
    assert_eq!(attrs(x), vec![]);
}

#[test]
fn inner_declarations_shadow_outer_ones_only_inside_their_element() {
    let message = stanza(
        "<message xmlns:p='urn:one'><p:a xmlns:p='urn:two' xmlns='urn:default'><p:b/><c/></p:a><p:d/><e/></message>",
    );
    let a = message.get_child("a", "urn:two").expect("a");
    assert!(a.has_child("b", "urn:two"));
    assert!(a.has_child("c", "urn:default"));
    assert!(message.has_child("d", "urn:one"));
    assert!(message.has_child("e", ns::CLIENT));
}

#[test]
fn empty_default_namespace_declaration_unqualifies_elements() {
    let message = stanza("<message><x xmlns=''><y/></x></message>");
    let x = message.get_child("x", "").expect("x");
    assert!(x.has_child("y", ""));
}

#[test]
fn stream_prefix_is_usable_in_top_level_elements() {
    let error = stanza(
        "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    );
    assert!(error.is("error", ns::STREAM));
    assert!(error.has_child("not-well-formed", ns::STREAMS_ERROR));
}

#[test]
fn unbound_prefixes_are_bad_namespace_prefix() {
    assert_stream_error("<foo:message/>", Condition::BadNamespacePrefix);
    assert_stream_error("<message><foo:x/></message>", Condition::BadNamespacePrefix);
    assert_stream_error("<message foo:a='1'/>", Condition::BadNamespacePrefix);
    // A prefix is in scope only inside the element that declares it.
    assert_stream_error(
        "<message><x xmlns:p='urn:p'/><p:y/></message>",
        Condition::BadNamespacePrefix,
    );
    assert_stream_error("<xml:message/>", Condition::BadNamespacePrefix);
    assert_stream_error("<xmlns:message/>", Condition::BadNamespacePrefix);
}

#[test]
fn misused_reserved_prefixes_are_not_well_formed() {
    for body in [
        "<message xmlns:p=''/>",
        "<message xmlns:xmlns='urn:x'/>",
        "<message xmlns:xml='urn:other'/>",
        "<message xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
        "<message xmlns='http://www.w3.org/XML/1998/namespace'/>",
        "<message xmlns:p='http://www.w3.org/2000/xmlns/'/>",
    ] {
        assert_stream_error(body, Condition::NotWellFormed);
    }
    // Declaring `xml` to its own namespace is allowed, and not kept.
    assert_eq!(
        attrs(&stanza(
            "<message xmlns:xml='http://www.w3.org/XML/1998/namespace'/>"
        )),
        vec![]
    );
}

// Attributes and the element model.

#[test]
fn attributes_are_stored_as_the_element_model_describes() {
    let message = stanza(
        "<message to='a@example.com' xml:lang='en' xmlns:foo='urn:foo' foo:bar='1' xmlns:unused='urn:u' \
         xmlns='jabber:client'/>",
    );
    assert_eq!(
        attrs(&message),
        vec![
            ("to", "a@example.com"),
            ("xml:lang", "en"),
            ("xmlns:foo", "urn:foo"),
            ("foo:bar", "1")
        ]
    );
}

#[test]
fn inherited_prefix_declaration_is_copied_to_the_element_using_it() {
    let message = stanza("<message xmlns:foo='urn:foo'><x foo:a='1' b='2'/></message>");
    assert_eq!(attrs(&message), vec![]);
    let x = message.get_child("x", ns::CLIENT).expect("x");
    assert_eq!(
        attrs(x),
        vec![("xmlns:foo", "urn:foo"), ("foo:a", "1"), ("b", "2")]
    );

    let outcome = stream(&format!(
        "<stream:stream xmlns='jabber:client' {STREAM_NS_DECL}><message stream:a='1'/>"
    ));
    assert_eq!(
        attrs(outcome.elements()[0]),
        vec![("xmlns:stream", ns::STREAM), ("stream:a", "1")]
    );
}

#[test]
fn declaration_after_its_use_in_the_same_tag_is_kept_once() {
    let message = stanza("<message foo:a='1' xmlns:foo='urn:foo'/>");
    assert_eq!(
        attrs(&message),
        vec![("xmlns:foo", "urn:foo"), ("foo:a", "1")]
    );
}

#[test]
fn duplicate_attributes_are_not_well_formed() {
    for body in [
        "<message a='1' a='2'/>",
        "<message a='1' a='1'/>",
        "<message xmlns='a' xmlns='b'/>",
        "<message xmlns:p='urn:x' xmlns:q='urn:x' p:a='1' q:a='2'/>",
        "<message xml:lang='en' xml:lang='de'/>",
    ] {
        assert_stream_error(body, Condition::NotWellFormed);
    }
    // The same local name in different namespaces is two attributes.
    let message = stanza("<message xmlns:p='urn:p' a='1' p:a='2'/>");
    assert_eq!(message.attr("a"), Some("1"));
    assert_eq!(message.attr("p:a"), Some("2"));
}

#[test]
fn attribute_values_are_unescaped_and_normalised() {
    let message = stanza(
        "<message a='&lt;&amp;&quot;&apos;&gt;' b='x&#10;y&#9;z&#13;' c='l1\nl2\r\nl3\tl4\rl5' d=\"it's\" e='a>b'/>",
    );
    assert_eq!(message.attr("a"), Some("<&\"'>"));
    assert_eq!(message.attr("b"), Some("x\ny\tz\r"));
    assert_eq!(message.attr("c"), Some("l1 l2 l3 l4 l5"));
    assert_eq!(message.attr("d"), Some("it's"));
    assert_eq!(message.attr("e"), Some("a>b"));
}

#[test]
fn whitespace_around_equals_and_before_the_tag_end_is_allowed() {
    let message = stanza("<message\n to = 'a' \t type=\"chat\"\n></message\n>");
    assert_eq!(attrs(&message), vec![("to", "a"), ("type", "chat")]);
}

// Character data.

#[test]
fn text_references_are_resolved() {
    let body =
        stanza("<body>a &lt; b &amp;&amp; c &gt; d &#x263A;&#65;&#x1F600;&quot;&apos;</body>");
    assert_eq!(body.text(), "a < b && c > d \u{263A}A\u{1F600}\"'");
    assert_eq!(body.nodes().len(), 1, "adjacent text is one node");
}

#[test]
fn cdata_sections_are_text() {
    let body = stanza("<body>a<![CDATA[<b>&amp;]]]]>c<![CDATA[]]></body>");
    assert_eq!(body.text(), "a<b>&amp;]]c");
}

#[test]
fn line_endings_are_normalised() {
    let body = stanza("<body>a\r\nb\rc\n<![CDATA[d\r\ne]]></body>");
    assert_eq!(body.text(), "a\nb\nc\nd\ne");
}

#[test]
fn multibyte_characters_survive_every_split() {
    let message = stanza(
        "<message to='r\u{E9}mi@example.com'><body>\u{65E5}\u{672C}\u{1F600}</body></message>",
    );
    assert_eq!(message.attr("to"), Some("r\u{E9}mi@example.com"));
    assert_eq!(
        message
            .get_child("body", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("\u{65E5}\u{672C}\u{1F600}")
    );
    let element = stanza("<\u{E9}l\u{E9}ment \u{E9}='1'/>");
    assert_eq!(element.name(), "\u{E9}l\u{E9}ment");
}

#[test]
fn whitespace_keepalives_between_stanzas_are_ignored() {
    let outcome = in_stream(" \n\t\r\n<presence/> \n <message/>\n \n");
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.elements().len(), 2);
}

#[test]
fn text_between_stanzas_is_bad_format() {
    assert_stream_error("<presence/>hello", Condition::BadFormat);
    assert_stream_error("&amp;", Condition::BadFormat);
    assert_stream_error("<![CDATA[x]]>", Condition::BadFormat);
    let outcome = in_stream("<presence/>x");
    assert_eq!(
        outcome.elements().len(),
        1,
        "the stanza before the text is still returned"
    );
}

#[test]
fn text_outside_the_stream_is_not_well_formed() {
    assert_eq!(stream("hello").condition(), Some(Condition::NotWellFormed));
    assert_eq!(
        stream("</stream:stream>").condition(),
        Some(Condition::NotWellFormed)
    );
    assert_eq!(
        stream("<![CDATA[x]]>").condition(),
        Some(Condition::NotWellFormed)
    );
}

// Restricted XML (RFC 6120 section 11.1).

#[test]
fn dtd_and_declarations_are_restricted_xml() {
    assert_eq!(
        stream("<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]>").condition(),
        Some(Condition::RestrictedXml)
    );
    assert_eq!(
        stream("<!DOCTYPE stream>").condition(),
        Some(Condition::RestrictedXml)
    );
    assert_stream_error("<!ENTITY x 'y'>", Condition::RestrictedXml);
    assert_stream_error(
        "<message><!ENTITY x 'y'></message>",
        Condition::RestrictedXml,
    );
    assert_stream_error(
        "<message><!ATTLIST a b CDATA #IMPLIED></message>",
        Condition::RestrictedXml,
    );
}

#[test]
fn comments_are_restricted_xml() {
    assert_eq!(
        stream("<!-- hi --><stream:stream>").condition(),
        Some(Condition::RestrictedXml)
    );
    assert_stream_error("<!-- keepalive -->", Condition::RestrictedXml);
    assert_stream_error("<message><!-- hi --></message>", Condition::RestrictedXml);
}

#[test]
fn processing_instructions_are_restricted_xml() {
    assert_stream_error("<?foo bar?>", Condition::RestrictedXml);
    assert_stream_error("<message><?foo bar?></message>", Condition::RestrictedXml);
}

#[test]
fn undeclared_entities_are_restricted_xml() {
    assert_stream_error("<body>&nbsp;</body>", Condition::RestrictedXml);
    assert_stream_error("<message to='&xxe;'/>", Condition::RestrictedXml);
}

// Well-formedness (RFC 6120 section 11.3).

#[test]
fn character_references_to_forbidden_characters_are_not_well_formed() {
    for reference in [
        "&#0;",
        "&#1;",
        "&#x1F;",
        "&#xD800;",
        "&#xDFFF;",
        "&#xFFFE;",
        "&#xFFFF;",
        "&#x110000;",
        "&#99999999999;",
    ] {
        assert_stream_error(
            &format!("<body>{reference}</body>"),
            Condition::NotWellFormed,
        );
        assert_stream_error(
            &format!("<message a='{reference}'/>"),
            Condition::NotWellFormed,
        );
    }
}

#[test]
fn malformed_references_are_not_well_formed() {
    for reference in [
        "&", "& b;", "&#;", "&#x;", "&#X41;", "&#12a;", "&a b;", "&1a;", "&amp",
    ] {
        assert_stream_error(
            &format!("<body>{reference}</body>"),
            Condition::NotWellFormed,
        );
        assert_stream_error(
            &format!("<message a='{reference}'/>"),
            Condition::NotWellFormed,
        );
    }
}

#[test]
fn raw_control_characters_are_not_well_formed() {
    for control in [
        "\u{0}", "\u{1}", "\u{8}", "\u{B}", "\u{C}", "\u{1B}", "\u{1F}",
    ] {
        assert_stream_error(
            &format!("<body>a{control}b</body>"),
            Condition::NotWellFormed,
        );
        assert_stream_error(
            &format!("<message a='{control}'/>"),
            Condition::NotWellFormed,
        );
        assert_stream_error(control, Condition::NotWellFormed);
    }
    assert_stream_error("<body>\u{FFFE}\u{FFFF}</body>", Condition::NotWellFormed);
}

#[test]
fn invalid_utf8_is_not_well_formed() {
    for bytes in [
        &b"\xFF"[..],
        b"\x80",
        b"\xC0\x80",
        b"\xC1\xBF",
        b"\xE0\x80\x80",
        b"\xED\xA0\x80",
        b"\xF0\x80\x80\x80",
        b"\xF4\x90\x80\x80",
        b"\xF5\x80\x80\x80",
        b"\xE2\x82a",
        b"\xC3<",
    ] {
        let mut input = format!("{HEADER}<body>").into_bytes();
        input.extend_from_slice(bytes);
        input.extend_from_slice(b"</body>");
        let outcome = stream_bytes(&input);
        assert_eq!(
            outcome.condition(),
            Some(Condition::NotWellFormed),
            "{bytes:?}"
        );
        assert_eq!(outcome.events.len(), 1);
    }
}

#[test]
fn incomplete_utf8_at_the_end_of_the_input_waits() {
    let mut input = format!("{HEADER}<body>").into_bytes();
    input.extend_from_slice("\u{1F600}".as_bytes().split_at(2).0);
    let outcome = stream_bytes(&input);
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.events.len(), 1);
}

#[test]
fn malformed_tags_are_not_well_formed() {
    for body in [
        "<message></presence>",
        "<a><b></a></b>",
        "<a b=c/>",
        "<a b='1'c='2'/>",
        "<a b/>",
        "<a b=/>",
        "<a b='1/><c/>",
        "<a/ >",
        "< a/>",
        "<1a/>",
        "<-a/>",
        "<a:b:c xmlns:a='urn:a'/>",
        "<:a/>",
        "<a: xmlns:a='urn:a'/>",
        "<a b:='1'/>",
        "<a b='<'/>",
        "<a>]]></a>",
        "<a>]]]></a>",
        "<a></a b>",
        "<a>< b/></a>",
        "<a><!x></a>",
        "<a><![CDAT[x]]></a>",
        "<a =''/>",
        "<a\u{D7}b/>",
        "<a b\u{D7}='1'/>",
    ] {
        assert_stream_error(body, Condition::NotWellFormed);
    }
}

// Limits.

#[test]
fn depth_beyond_the_limit_is_a_policy_violation() {
    let limits = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    let deep_enough = format!("{HEADER}<a><b><c/></b></a>");
    let outcome = parse_all_ways(Mode::Stream, limits, deep_enough.as_bytes());
    assert_eq!(outcome.error, None);
    let too_deep = format!("{HEADER}<a><b><c><d/></c></b></a>");
    let outcome = parse_all_ways(Mode::Stream, limits, too_deep.as_bytes());
    assert_eq!(outcome.condition(), Some(Condition::PolicyViolation));

    let outcome = parse_all_ways(
        Mode::Framed,
        limits,
        b"<a xmlns='urn:a'><b><c><d/></c></b></a>",
    );
    assert_eq!(outcome.condition(), Some(Condition::PolicyViolation));
}

#[test]
fn default_depth_limit_allows_64_levels() {
    let open: String = (0..64).map(|_| "<a>").collect();
    let close: String = (0..64).map(|_| "</a>").collect();
    assert_eq!(in_stream(&format!("{open}{close}")).error, None);
    assert_stream_error(&format!("{open}<a/>{close}"), Condition::PolicyViolation);
}

#[test]
fn stanza_larger_than_the_limit_is_a_policy_violation() {
    // The stream header is held to the limit too: HEADER is shorter than 256 bytes.
    let limits = Limits {
        max_stanza_bytes: 256,
        ..Limits::default()
    };
    let exact = "<message><body>".to_string() + &"x".repeat(256 - 32) + "</body></message>";
    assert_eq!(exact.len(), 256);
    let outcome = parse_all_ways(Mode::Stream, limits, format!("{HEADER}{exact}").as_bytes());
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.elements().len(), 1);

    let over = exact.replace("<body>", "<body>x");
    let outcome = parse_all_ways(Mode::Stream, limits, format!("{HEADER}{over}").as_bytes());
    assert_eq!(outcome.condition(), Some(Condition::PolicyViolation));
    assert_eq!(
        outcome.error.and_then(|error| error.0.text).as_deref(),
        Some("stanza too large")
    );
}

#[test]
fn oversized_stanza_fails_while_it_arrives_not_after() {
    let limits = Limits {
        max_stanza_bytes: 4096,
        ..Limits::default()
    };
    let mut parser = StreamParser::new(limits);
    parser.feed(HEADER.as_bytes()).expect("header");
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Open(_)))
    ));
    parser.feed(b"<message><body>").expect("start");
    let chunk = [b'x'; 1000];
    let mut fed = 15;
    let error = loop {
        match parser.feed(&chunk) {
            Ok(()) => {
                assert_eq!(parser.next_event(), Ok(None));
                fed += chunk.len();
                assert!(
                    fed <= limits.max_stanza_bytes,
                    "still accepting after {fed} bytes"
                );
                assert!(parser.buffered_len() <= limits.max_stanza_bytes);
            }
            Err(error) => break error,
        }
    };
    assert_eq!(error.condition(), Condition::PolicyViolation);
    assert!(parser.buffered_len() <= limits.max_stanza_bytes);
    // The parser stays failed.
    assert_eq!(parser.feed(b"</body></message>"), Err(error.clone()));
    assert_eq!(parser.next_event(), Err(error));
}

#[test]
fn oversized_stream_header_is_a_policy_violation() {
    let limits = Limits {
        max_stanza_bytes: 100,
        ..Limits::default()
    };
    let header = format!("<stream:stream {STREAM_NS_DECL} to='{}'>", "a".repeat(100));
    let outcome = parse_all_ways(Mode::Stream, limits, header.as_bytes());
    assert_eq!(outcome.condition(), Some(Condition::PolicyViolation));
}

#[test]
fn too_many_attributes_is_a_policy_violation() {
    let limits = Limits {
        max_attributes: 2,
        ..Limits::default()
    };
    let header = format!("<stream:stream xmlns='jabber:client' {STREAM_NS_DECL}>");
    let fine = format!("{header}<message a='1' b='2'><x c='3' d='4'/></message>");
    assert_eq!(
        parse_all_ways(Mode::Stream, limits, fine.as_bytes()).error,
        None
    );
    let over = format!("{header}<message a='1' b='2'><x c='3' d='4' e='5'/></message>");
    let outcome = parse_all_ways(Mode::Stream, limits, over.as_bytes());
    assert_eq!(outcome.condition(), Some(Condition::PolicyViolation));
    let header_over = format!("<stream:stream xmlns='jabber:client' {STREAM_NS_DECL} to='x'>");
    let outcome = parse_all_ways(Mode::Stream, limits, header_over.as_bytes());
    assert_eq!(outcome.condition(), Some(Condition::PolicyViolation));
}

// Cost: each byte is scanned once and memory stays bounded.

#[test]
fn large_stanza_fed_one_byte_at_a_time_is_scanned_once() {
    let limits = Limits::default();
    let body = "y\u{E9}".repeat((limits.max_stanza_bytes - 64) / 3);
    let input = format!("{HEADER}<message><body>{body}</body></message>");
    let mut parser = StreamParser::new(limits);
    let mut events = Vec::new();
    for byte in input.as_bytes() {
        parser.feed(std::slice::from_ref(byte)).expect("feed");
        while let Some(event) = parser.next_event().expect("event") {
            events.push(event);
        }
    }
    assert_eq!(parser.scanned_bytes, input.len() as u64);
    assert_eq!(events.len(), 2);
    let StreamEvent::Element(message) = &events[1] else {
        panic!("{:?}", events[1])
    };
    assert_eq!(
        message.get_child("body", ns::CLIENT).map(Element::text),
        Some(body)
    );
    assert_eq!(parser.buffered_len(), 0, "consumed bytes are dropped");
}

#[test]
fn keepalive_flood_keeps_the_buffer_small() {
    let mut parser = StreamParser::new(Limits::default());
    parser.feed(HEADER.as_bytes()).expect("header");
    assert!(parser.next_event().expect("open").is_some());
    let keepalives = [b' '; 1024];
    for _ in 0..1024 {
        parser.feed(&keepalives).expect("keepalive");
        assert_eq!(parser.next_event(), Ok(None));
        assert_eq!(parser.buffered_len(), 0);
    }
}

#[test]
fn many_small_stanzas_in_one_chunk_are_all_returned() {
    let stanzas = "<presence/>".repeat(10_000);
    let outcome = run(
        StreamParser::new(Limits::default()),
        [format!("{HEADER}{stanzas}").as_bytes()],
    );
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.elements().len(), 10_000);
}

// Errors come out in byte order and stay.

#[test]
fn error_is_held_until_the_events_before_it_are_returned() {
    let mut parser = StreamParser::new(Limits::default());
    parser
        .feed(format!("{HEADER}<presence/><!-- x -->").as_bytes())
        .expect("events are queued first");
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Open(_)))
    ));
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Element(_)))
    ));
    let error = parser.next_event().expect_err("then the error");
    assert_eq!(error.condition(), Condition::RestrictedXml);
    assert_eq!(parser.next_event(), Err(error.clone()));
    assert_eq!(parser.feed(b"<presence/>"), Err(error));
}

#[test]
fn feed_reports_an_error_at_once_when_nothing_is_queued() {
    let mut parser = StreamParser::new(Limits::default());
    let error = parser.feed(b"<!DOCTYPE x>").expect_err("error at once");
    assert_eq!(error.condition(), Condition::RestrictedXml);
}

// Reset after STARTTLS and SASL (RFC 6120 sections 5.4.3.3 and 6.4.6).

#[test]
fn reset_expects_a_new_stream_header() {
    let mut parser = StreamParser::new(Limits::default());
    parser
        .feed(format!("{HEADER}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").as_bytes())
        .expect("feed");
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Open(_)))
    ));
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Element(_)))
    ));
    // Bytes after the reset point (here half a stanza) are forgotten.
    parser.feed(b"<message><bo").expect("partial");
    parser.reset();
    assert_eq!(parser.buffered_len(), 0);
    let outcome = run(parser, [HEADER.as_bytes(), b"<presence/>"]);
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.events.len(), 2);
    assert_eq!(outcome.events[0], StreamEvent::Open(client_header()));
}

#[test]
fn reset_clears_a_failure_and_keeps_the_framing() {
    let mut parser = StreamParser::new_framed(Limits::default());
    assert!(parser.feed(b"junk").is_err());
    parser.reset();
    let outcome = run(
        parser,
        [&b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"[..]],
    );
    assert_eq!(outcome.error, None);
    assert!(outcome.elements()[0].is("open", ns::FRAMING));
}

// WebSocket framing (RFC 7395 section 3.3).

#[test]
fn framed_mode_returns_each_top_level_element() {
    let outcome = framed(
        "<?xml version='1.0'?><open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>\n\
         <message xmlns='jabber:client' to='a@example.com'><body>hi</body></message>\
         <message><body/></message>\
         <close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
    );
    assert_eq!(outcome.error, None);
    let elements = outcome.elements();
    assert_eq!(elements.len(), 4);
    assert!(elements[0].is("open", ns::FRAMING));
    assert_eq!(elements[0].attr("to"), Some("example.com"));
    assert!(elements[1].is("message", ns::CLIENT));
    assert!(elements[1].has_child("body", ns::CLIENT));
    assert!(
        elements[2].is("message", ""),
        "no namespace is inherited between frames"
    );
    assert!(elements[3].is("close", ns::FRAMING));
}

#[test]
fn framed_mode_rejects_what_is_outside_the_elements() {
    assert_eq!(
        framed("<a/>text").condition(),
        Some(Condition::NotWellFormed)
    );
    assert_eq!(framed("</a>").condition(), Some(Condition::NotWellFormed));
    assert_eq!(
        framed("<a/><![CDATA[x]]>").condition(),
        Some(Condition::NotWellFormed)
    );
    assert_eq!(
        framed("<a/><!-- c -->").condition(),
        Some(Condition::RestrictedXml)
    );
    assert_eq!(
        framed("<a/><?xml version='1.0'?>").condition(),
        Some(Condition::RestrictedXml)
    );
    assert_eq!(
        framed("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>").events,
        vec![]
    );
}

// parse_element.

#[test]
fn parse_element_reads_one_standalone_element() {
    let element = parse_element(
        b"<?xml version='1.0'?>\n <iq xmlns='jabber:client' type='get'><ping xmlns='urn:xmpp:ping'/></iq>\n",
        &Limits::default(),
    )
    .expect("element");
    assert!(element.is("iq", ns::CLIENT));
    assert!(element.has_child("ping", ns::PING));
}

#[test]
fn parse_element_rejects_anything_but_one_element() {
    for input in [
        "",
        "  ",
        "<a/>x",
        "<a/><b/>",
        "<a>",
        "<a/><b",
        "<a/>&amp;",
        "x<a/>",
        "<a/></a>",
    ] {
        let error = parse_element(input.as_bytes(), &Limits::default()).expect_err(input);
        assert_eq!(error.condition(), Condition::NotWellFormed, "{input:?}");
    }
    let error = parse_element(b"<a><!-- c --></a>", &Limits::default()).expect_err("comment");
    assert_eq!(error.condition(), Condition::RestrictedXml);
    let limits = Limits {
        max_stanza_bytes: 8,
        ..Limits::default()
    };
    let error = parse_element(b"<a>123456</a>", &limits).expect_err("too large");
    assert_eq!(error.condition(), Condition::PolicyViolation);
}

// Round trips: Element -> XML -> parse -> the same Element.

#[test]
fn serialised_stanza_parses_back_equal() {
    let message = Element::new("message", ns::CLIENT)
        .with_attr("to", "juliet@example.com")
        .with_attr("xml:lang", "en")
        .with_attr("xmlns:foo", "urn:foo")
        .with_attr("foo:bar", "q'\"<&>\t\n")
        .with_child(Element::new("body", ns::CLIENT).with_text("a < b & c ]]> d"))
        .with_child(
            Element::new("x", "urn:x")
                .with_child(Element::new("y", "urn:x"))
                .with_child(Element::new("z", "")),
        );
    assert_eq!(stanza(&message.to_stanza_xml()), message);
    assert_eq!(
        parse_element(message.to_xml().as_bytes(), &Limits::default()),
        Ok(message)
    );
}

fn xml_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9._-]{0,6}",
        "[\u{C0}-\u{D6}\u{3001}-\u{3010}][a-z\u{B7}\u{300}-\u{302}]{0,3}"
    ]
}

fn xml_text(min: usize) -> impl Strategy<Value = String> {
    // XML characters except CR, which element.rs writes raw and XML turns into LF.
    proptest::string::string_regex(&format!(
        "[\t\n\u{20}-\u{7E}\u{A0}-\u{D7FF}\u{E000}-\u{FFFD}\u{10000}-\u{10FFFF}&<>'\"\\]]{{{min},12}}"
    ))
    .expect("regex")
}

fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![Just(ns::CLIENT), Just("urn:foo"), Just("urn:bar"), Just("")]
        .prop_map(str::to_string)
}

#[derive(Debug, Clone)]
enum Child {
    Element(Element),
    Text(String),
}

fn element_strategy() -> impl Strategy<Value = Element> {
    let attributes = (
        proptest::collection::btree_map("[a-z]{1,4}", xml_text(0), 0..4),
        proptest::option::of(xml_text(0)),
        proptest::option::of(("[a-z]{1,3}", xml_text(0))),
    );
    let leaf = (xml_name(), namespace(), attributes).prop_map(
        |(name, namespace, (plain, lang, prefixed))| {
            let mut element = Element::new(name, namespace);
            for (key, value) in plain {
                element.set_attr(key, value);
            }
            if let Some(lang) = lang {
                element.set_attr("xml:lang", lang);
            }
            if let Some((local, value)) = prefixed {
                element.set_attr("xmlns:p", "urn:p");
                element.set_attr(format!("p:{local}"), value);
            }
            element
        },
    );
    leaf.prop_recursive(4, 32, 5, |inner| {
        let child = prop_oneof![
            inner.prop_map(Child::Element),
            xml_text(1).prop_map(Child::Text)
        ];
        (inner_leaf_parts(), proptest::collection::vec(child, 0..5)).prop_map(
            |((name, namespace), children)| {
                let mut element = Element::new(name, namespace);
                for child in children {
                    match child {
                        Child::Element(child) => {
                            element.append_child(child);
                        }
                        Child::Text(text) => element.append_text(text),
                    }
                }
                element
            },
        )
    })
}

fn inner_leaf_parts() -> impl Strategy<Value = (String, String)> {
    (xml_name(), namespace())
}

/// Every split of `input` into chunks at the given cut points.
fn chunks_at<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(&input[start..cut]);
        start = cut;
    }
    chunks.push(&input[start..]);
    chunks
}

const TRANSCRIPT: &str = "<?xml version='1.0' encoding='UTF-8'?>\
    <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
    to='example.com' version='1.0' xml:lang='en'>\n\
    <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth> \
    <iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>balcony \u{1F3B5}</resource></bind></iq>\
    <message to='r\u{E9}mi@example.com' type=\"chat\" a='x > y'><body>\u{65E5}\u{672C}\u{8A9E} &amp; &#x1F600; &lt;3</body>\
    <x xmlns:p='urn:p' p:attr='v'><p:y/><![CDATA[<raw>]]></x></message>\r\n\
    <presence><show>away</show><status xml:lang='de'>weg</status></presence>\t\
    </stream:stream >";

proptest! {
    #[test]
    fn transcript_split_into_random_chunks_gives_the_same_events(cuts in proptest::collection::vec(any::<usize>(), 0..24)) {
        let input = TRANSCRIPT.as_bytes();
        let expected = run(StreamParser::new(Limits::default()), [input]);
        prop_assert_eq!(expected.error.clone(), None);
        prop_assert_eq!(expected.events.len(), 6);
        let outcome = run(StreamParser::new(Limits::default()), chunks_at(input, &cuts));
        prop_assert_eq!(outcome, expected);
    }

    #[test]
    fn mutated_transcript_split_into_random_chunks_gives_the_same_outcome(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
        small_limits in any::<bool>(),
    ) {
        let mut input = TRANSCRIPT.as_bytes().to_vec();
        for (position, byte, kind) in edits {
            let position = position % (input.len() + 1);
            match kind {
                0 if position < input.len() => input[position] = byte,
                1 => input.insert(position, byte),
                _ if position < input.len() => { input.remove(position); }
                _ => {}
            }
        }
        let limits = if small_limits {
            Limits { max_stanza_bytes: 120, max_depth: 2, max_attributes: 3 }
        } else {
            Limits::default()
        };
        let expected = run(StreamParser::new(limits), [&input[..]]);
        prop_assert_eq!(run(StreamParser::new(limits), chunks_at(&input, &cuts)), expected.clone());
        prop_assert_eq!(run(StreamParser::new(limits), input.chunks(1)), expected);
    }

    #[test]
    fn any_element_round_trips_through_xml(element in element_strategy()) {
        let xml = element.to_xml();
        prop_assert_eq!(parse_element(xml.as_bytes(), &Limits::default()), Ok(element.clone()), "{}", xml);
    }

    #[test]
    fn any_stanza_round_trips_through_a_stream(mut element in element_strategy(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        element.set_namespace_deep(ns::CLIENT);
        let input = format!("{HEADER}{}</stream:stream>", element.to_stanza_xml());
        let outcome = run(StreamParser::new(Limits::default()), chunks_at(input.as_bytes(), &cuts));
        prop_assert_eq!(outcome.error, None);
        prop_assert_eq!(outcome.events.get(1), Some(&StreamEvent::Element(element)));
    }
}

#[test]
fn every_split_point_of_the_transcript_gives_the_same_events() {
    let outcome = stream(TRANSCRIPT);
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.events.len(), 6);
    assert_eq!(outcome.events[0], StreamEvent::Open(client_header()));
    assert_eq!(outcome.events[5], StreamEvent::Close);
    let message = outcome.elements()[2].clone();
    assert_eq!(message.attr("a"), Some("x > y"));
    let x = message.get_child("x", ns::CLIENT).expect("x");
    assert_eq!(attrs(x), vec![("xmlns:p", "urn:p"), ("p:attr", "v")]);
    assert!(x.has_child("y", "urn:p"));
    assert_eq!(x.text(), "<raw>");
    assert!(matches!(x.nodes().last(), Some(Node::Text(_))));
}

// Memory per idle stream (docs/performance.md): between stanzas the parser
// gives back the buffer the largest stanza needed.

#[test]
fn buffer_is_released_between_stanzas() {
    let mut parser = StreamParser::new(Limits::default());
    parser.feed(HEADER.as_bytes()).expect("header");
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Open(_)))
    ));
    let body = "x".repeat(60 * 1024);
    let stanza = format!("<message><body>{body}</body></message>");
    for chunk in stanza.as_bytes().chunks(4096) {
        parser.feed(chunk).expect("feed");
    }
    assert!(
        parser.buffer.capacity() >= stanza.len(),
        "the stanza was buffered"
    );
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Element(_)))
    ));
    assert_eq!(parser.buffered_len(), 0);
    assert!(parser.buffer.capacity() <= KEPT_BUFFER_CAPACITY);
    // Half a stanza is kept, whatever its size.
    parser.feed(b"<message><bo").expect("partial");
    assert_eq!(parser.buffered_len(), 12);
}
