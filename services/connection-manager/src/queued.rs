//! One stanza on its way to a client: shared by every recipient of one bus
//! envelope, readdressed to each recipient only when it is written.

use std::sync::Arc;

use starling_xmpp::Element;

/// What an item of the outbound queue is to stream management (XEP-0198).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    /// A stanza: counted by `h` once stream management is on.
    Stanza,
    /// A nonza (`<a/>`, `<r/>`, `<failed/>`): never counted.
    Nonza,
    /// `<enabled/>` or `<resumed/>`: a nonza after which stanzas are counted.
    CountingStarts,
}

/// One stanza waiting to be written.
#[derive(Debug, Clone)]
pub(crate) struct QueuedStanza {
    pub stanza: Arc<Element>,
    /// Rewrite `to` for this recipient (one envelope shared by several recipients).
    pub to: Option<String>,
    pub marker: Marker,
}

impl QueuedStanza {
    pub fn new(stanza: Element) -> Self {
        QueuedStanza {
            stanza: Arc::new(stanza),
            to: None,
            marker: Marker::Stanza,
        }
    }

    /// A nonza; `counting_starts` for `<enabled/>` and `<resumed/>`.
    pub fn nonza(element: Element, counting_starts: bool) -> Self {
        QueuedStanza {
            stanza: Arc::new(element),
            to: None,
            marker: if counting_starts {
                Marker::CountingStarts
            } else {
                Marker::Nonza
            },
        }
    }

    /// The stanza's size as it is written (its recipient's `to` aside).
    pub fn wire_len(&self) -> usize {
        self.stanza.stanza_xml_len()
    }

    pub fn is_stanza(&self) -> bool {
        self.marker == Marker::Stanza
    }

    /// The stanza as its recipient gets it, serialised with its namespace
    /// declared (for the resumption journal: it is parsed again on its own).
    pub fn to_xml(&self) -> String {
        match &self.to {
            Some(to) if self.stanza.attr("to") != Some(to.as_str()) => {
                let mut stanza = (*self.stanza).clone();
                stanza.set_attr("to", to.clone());
                stanza.to_xml()
            }
            _ => self.stanza.to_xml(),
        }
    }

    /// The stanza as it is addressed to this recipient.
    pub fn into_element(self) -> Element {
        let mut stanza = Arc::unwrap_or_clone(self.stanza);
        if let Some(to) = self.to {
            stanza.set_attr("to", to);
        }
        stanza
    }

    /// Serialise where `parent_namespace` is the default namespace in force.
    pub fn write_to(&self, out: &mut String, parent_namespace: &str) {
        match &self.to {
            Some(to) if self.stanza.attr("to") != Some(to.as_str()) => {
                let mut stanza = (*self.stanza).clone();
                stanza.set_attr("to", to.clone());
                stanza.write_to(out, parent_namespace);
            }
            _ => self.stanza.write_to(out, parent_namespace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::ns;

    #[test]
    fn rewritten_recipient() {
        let mut stanza = QueuedStanza::new(
            Element::new("message", ns::CLIENT)
                .with_attr("to", "juliet@example.com/balcony")
                .with_child(Element::new("body", ns::CLIENT).with_text("hi")),
        );
        stanza.to = Some("romeo@example.net/orchard".into());
        let mut out = String::new();
        stanza.write_to(&mut out, ns::CLIENT);
        assert_eq!(
            out,
            "<message to='romeo@example.net/orchard'><body>hi</body></message>"
        );
        assert_eq!(
            stanza.into_element().attr("to"),
            Some("romeo@example.net/orchard")
        );
    }
}
