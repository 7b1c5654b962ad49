//! Literal XML for the tests, read by the server's own parser
//! (`starling_xmpp::parse_element`), so each test sees the element tree a
//! connection-manager would hand over. A standalone element without `xmlns`
//! has the empty namespace; a stanza read from a client stream is in
//! `jabber:client`, so the tree is moved there.

use starling_xmpp::{ns, parse_element, Element, Limits};

/// Parse one stanza written as literal XML, as read from a client stream.
pub fn xml(text: &str) -> Element {
    let mut element = match parse_element(text.as_bytes(), &Limits::default()) {
        Ok(element) => element,
        Err(error) => panic!("test literal is not well-formed ({error}): {text}"),
    };
    if element.namespace().is_empty() {
        element.set_namespace_deep(ns::CLIENT);
    }
    element
}

#[test]
fn reads_what_the_serialiser_writes() {
    let literal = "<message to='juliet@example.com' type='chat'><body>a &lt; b &amp; c</body><ping xmlns='urn:xmpp:ping'/></message>";
    let element = xml(literal);
    assert_eq!(element.namespace(), ns::CLIENT);
    assert_eq!(element.to_stanza_xml(), literal);
}
