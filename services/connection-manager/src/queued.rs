//! One stanza on its way to a client: shared by every recipient of one bus
//! envelope, readdressed to each recipient only when it is written.

use std::sync::Arc;

use starling_xmpp::Element;

/// One stanza waiting to be written.
#[derive(Debug, Clone)]
pub(crate) struct QueuedStanza {
    pub stanza: Arc<Element>,
    /// Rewrite `to` for this recipient (one envelope shared by several recipients).
    pub to: Option<String>,
}

impl QueuedStanza {
    pub fn new(stanza: Element) -> Self {
        QueuedStanza {
            stanza: Arc::new(stanza),
            to: None,
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
