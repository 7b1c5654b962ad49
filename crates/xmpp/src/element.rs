//! The XML element tree that every stanza is parsed into and serialised from.
//!
//! Names are stored without prefixes: each element carries its resolved
//! namespace, and the serialiser writes a default-namespace declaration only
//! where an element's namespace differs from its parent's. Re-serialising from
//! this form (never forwarding the bytes a client sent) is what closes the
//! parser-differential "stanza smuggling" class of bugs.

use crate::ns;

/// A child of an element: another element or character data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An XML element with its resolved namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    name: String,
    namespace: String,
    /// Attributes in document order. Names are unprefixed, except `xml:lang`
    /// (and other `xml:` attributes) and attributes in other namespaces, which keep
    /// their prefix and whose `xmlns:prefix` declaration is kept as an attribute too.
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Element {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            namespace: namespace.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: add or replace an attribute.
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: append a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append character data.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.append_text(text);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Change the namespace of this element and of every descendant that shared it
    /// (used to move a stanza between `jabber:client` and `jabber:server`).
    pub fn set_namespace_deep(&mut self, namespace: &str) {
        let old = std::mem::replace(&mut self.namespace, namespace.to_string());
        for child in self.children.iter_mut() {
            if let Node::Element(element) = child {
                if element.namespace == old {
                    element.set_namespace_deep(namespace);
                }
            }
        }
    }

    pub fn is(&self, name: &str, namespace: &str) -> bool {
        self.name == name && self.namespace == namespace
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(attr_name, _)| attr_name == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self
            .attrs
            .iter_mut()
            .find(|(attr_name, _)| *attr_name == name)
        {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let index = self
            .attrs
            .iter()
            .position(|(attr_name, _)| attr_name == name)?;
        Some(self.attrs.remove(index).1)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    pub fn nodes_mut(&mut self) -> &mut Vec<Node> {
        &mut self.children
    }

    /// Child elements, in order.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|node| match node {
            Node::Element(element) => Some(element),
            Node::Text(_) => None,
        })
    }

    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|node| match node {
            Node::Element(element) => Some(element),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this name and namespace.
    pub fn get_child(&self, name: &str, namespace: &str) -> Option<&Element> {
        self.children().find(|child| child.is(name, namespace))
    }

    pub fn get_child_mut(&mut self, name: &str, namespace: &str) -> Option<&mut Element> {
        self.children_mut().find(|child| child.is(name, namespace))
    }

    pub fn has_child(&self, name: &str, namespace: &str) -> bool {
        self.get_child(name, namespace).is_some()
    }

    /// Remove every child element with this name and namespace.
    pub fn remove_children(&mut self, name: &str, namespace: &str) {
        self.children
            .retain(|node| !matches!(node, Node::Element(element) if element.is(name, namespace)));
    }

    pub fn append_child(&mut self, child: Element) -> &mut Element {
        self.children.push(Node::Element(child));
        match self.children.last_mut() {
            Some(Node::Element(element)) => element,
            _ => unreachable!("just pushed an element"),
        }
    }

    pub fn append_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(&text);
        } else {
            self.children.push(Node::Text(text));
        }
    }

    /// The concatenated character data directly inside this element.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(text) = node {
                out.push_str(text);
            }
        }
        out
    }

    /// Serialise as it should appear inside a parent whose namespace is `parent_namespace`.
    ///
    /// `jabber:client` and `jabber:server` are treated as the same stanza
    /// namespace, so a stanza written on either kind of stream needs no declaration.
    pub fn write_to(&self, out: &mut String, parent_namespace: &str) {
        self.write_into(out, parent_namespace);
    }

    /// The length in bytes of [`Element::to_stanza_xml`], counted without
    /// building the string: the size a stanza has wherever it travels as text
    /// (the bus, the offline store, a resumption journal), which is what the
    /// edge holds to `limits.max_stanza_bytes` (escaping can make it up to six
    /// times the size the client sent, `'` in an attribute becoming `&apos;`).
    pub fn stanza_xml_len(&self) -> usize {
        let mut counter = ByteCounter(0);
        self.write_into(&mut counter, ns::CLIENT);
        counter.0
    }

    fn write_into(&self, out: &mut impl XmlSink, parent_namespace: &str) {
        out.push('<');
        out.push_str(&self.name);
        if !same_namespace(&self.namespace, parent_namespace) {
            out.push_str(" xmlns='");
            escape_attr_into(&self.namespace, out);
            out.push('\'');
        }
        for (name, value) in &self.attrs {
            if name == "xmlns" {
                continue;
            }
            out.push(' ');
            out.push_str(name);
            out.push_str("='");
            escape_attr_into(value, out);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for node in &self.children {
            match node {
                Node::Element(child) => child.write_into(out, &self.namespace),
                Node::Text(text) => escape_text_into(text, out),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// Serialise as a top-level stanza of a client or server stream.
    pub fn to_stanza_xml(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_to(&mut out, ns::CLIENT);
        out
    }

    /// Serialise as a standalone document fragment, declaring its namespace.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_to(&mut out, "");
        out
    }
}

fn same_namespace(namespace: &str, parent: &str) -> bool {
    let stanza_ns = |value: &str| value == ns::CLIENT || value == ns::SERVER;
    namespace == parent || (stanza_ns(namespace) && stanza_ns(parent))
}

/// Where the serialiser writes: a string, or a counter of the bytes it would hold.
trait XmlSink {
    fn push(&mut self, c: char);
    fn push_str(&mut self, text: &str);
}

impl XmlSink for String {
    fn push(&mut self, c: char) {
        String::push(self, c);
    }
    fn push_str(&mut self, text: &str) {
        String::push_str(self, text);
    }
}

struct ByteCounter(usize);

impl XmlSink for ByteCounter {
    fn push(&mut self, c: char) {
        self.0 += c.len_utf8();
    }
    fn push_str(&mut self, text: &str) {
        self.0 += text.len();
    }
}

fn escape_text_into(text: &str, out: &mut impl XmlSink) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // A raw CR would be normalised to LF by the next parser (XML 1.0 section 2.11).
            '\r' => out.push_str("&#13;"),
            _ => out.push(c),
        }
    }
}

fn escape_attr_into(text: &str, out: &mut impl XmlSink) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            _ => out.push(c),
        }
    }
}

/// Escape character data for an XML text node.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_text_into(text, &mut out);
    out
}

/// Escape a value for a single- or double-quoted XML attribute.
pub fn escape_attr(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_attr_into(text, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_stanza_without_redundant_namespaces() {
        let message = Element::new("message", ns::CLIENT)
            .with_attr("to", "juliet@example.com")
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text("a < b & c"))
            .with_child(Element::new("ping", ns::PING));
        assert_eq!(
            message.to_stanza_xml(),
            "<message to='juliet@example.com' type='chat'><body>a &lt; b &amp; c</body><ping xmlns='urn:xmpp:ping'/></message>"
        );
    }

    #[test]
    fn carriage_returns_survive_a_round_trip() {
        let element = Element::new("body", ns::CLIENT).with_text("a\r\nb");
        let xml = element.to_xml();
        assert_eq!(xml, "<body xmlns='jabber:client'>a&#13;\nb</body>");
        let parsed = crate::parse_element(xml.as_bytes(), &crate::Limits::default()).unwrap();
        assert_eq!(parsed.text(), "a\r\nb");
    }

    #[test]
    fn escapes_attribute_quotes() {
        let element = Element::new("x", "urn:test").with_attr("a", "it's \"q\" <&>");
        assert_eq!(
            element.to_xml(),
            "<x xmlns='urn:test' a='it&apos;s &quot;q&quot; &lt;&amp;&gt;'/>"
        );
    }

    #[test]
    fn stanza_xml_len_is_the_length_of_the_serialised_stanza() {
        let message = Element::new("message", ns::CLIENT)
            .with_attr("to", "juliet@example.com")
            .with_attr("id", "it's \"é\"\t")
            .with_child(Element::new("body", ns::CLIENT).with_text(">>> a < b & \r c"))
            .with_child(Element::new("x", "urn:other").with_child(Element::new("y", "urn:other")));
        assert_eq!(message.stanza_xml_len(), message.to_stanza_xml().len());
        // The growth the limit must see: 3 bytes on the wire, 12 re-serialised.
        let quotes = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text(">>>"));
        assert_eq!(
            quotes.stanza_xml_len(),
            "<message><body>&gt;&gt;&gt;</body></message>".len()
        );
    }

    #[test]
    fn server_namespace_is_the_same_stanza_namespace() {
        let presence = Element::new("presence", ns::SERVER);
        assert_eq!(presence.to_stanza_xml(), "<presence/>");
    }

    #[test]
    fn set_namespace_deep_moves_inherited_children_only() {
        let mut message = Element::new("message", ns::SERVER)
            .with_child(Element::new("body", ns::SERVER))
            .with_child(Element::new("x", "urn:other"));
        message.set_namespace_deep(ns::CLIENT);
        assert_eq!(
            message.get_child("body", ns::CLIENT).map(Element::name),
            Some("body")
        );
        assert!(message.has_child("x", "urn:other"));
    }
}
