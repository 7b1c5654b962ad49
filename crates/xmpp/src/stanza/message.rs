//! Message stanzas, RFC 6121 section 5.2: the `type` attribute, read once.
//! A message never fails for its type: section 5.2.2 says that a missing or
//! unknown type is `normal`. Reading one costs an attribute lookup, so the
//! message hot path keeps its zero-waste parsing.

use crate::element::Element;
use crate::stanza::{stanza_type, InvalidStanza, StanzaKind};

/// The `type` of a message (RFC 6121 section 5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Chat,
    Error,
    Groupchat,
    Headline,
    Normal,
}

impl MessageType {
    /// The type named by a `type` attribute value; absent or unknown is `normal`.
    pub fn from_attr(value: &str) -> Self {
        match value {
            "chat" => MessageType::Chat,
            "error" => MessageType::Error,
            "groupchat" => MessageType::Groupchat,
            "headline" => MessageType::Headline,
            _ => MessageType::Normal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Chat => "chat",
            MessageType::Error => "error",
            MessageType::Groupchat => "groupchat",
            MessageType::Headline => "headline",
            MessageType::Normal => "normal",
        }
    }
}

/// A message stanza with its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    element: Element,
    message_type: MessageType,
}

impl Message {
    pub fn try_from_element(element: Element) -> Result<Self, Box<InvalidStanza>> {
        if StanzaKind::of(&element) != Some(StanzaKind::Message) {
            return Err(InvalidStanza::bad_request(element, "not a message stanza"));
        }
        let message_type = MessageType::from_attr(stanza_type(&element));
        Ok(Message {
            element,
            message_type,
        })
    }

    pub fn message_type(&self) -> MessageType {
        self.message_type
    }

    /// The first `<body/>` in the stanza's namespace (section 5.2.3).
    pub fn body(&self) -> Option<String> {
        self.element
            .get_child("body", self.element.namespace())
            .map(Element::text)
    }

    pub fn has_body(&self) -> bool {
        self.element.has_child("body", self.element.namespace())
    }

    pub fn element(&self) -> &Element {
        &self.element
    }

    pub fn into_element(self) -> Element {
        self.element
    }
}

impl TryFrom<Element> for Message {
    type Error = Box<InvalidStanza>;

    fn try_from(element: Element) -> Result<Self, Box<InvalidStanza>> {
        Message::try_from_element(element)
    }
}

impl From<Message> for Element {
    fn from(message: Message) -> Element {
        message.element
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{parse_element, Limits};

    fn message(xml: &str) -> Message {
        Message::try_from(parse_element(xml.as_bytes(), &Limits::default()).unwrap()).unwrap()
    }

    #[test]
    fn a_chat_message_round_trips_with_its_body() {
        let xml = "<message xmlns='jabber:client' to='b@example.com' type='chat' id='m1'><body>hi &amp; bye</body><thread>t</thread></message>";
        let message = message(xml);
        assert_eq!(message.message_type(), MessageType::Chat);
        assert_eq!(message.body().as_deref(), Some("hi & bye"));
        assert_eq!(message.into_element().to_xml(), xml);
    }

    #[test]
    fn missing_or_unknown_type_is_normal() {
        assert_eq!(
            message("<message xmlns='jabber:client'/>").message_type(),
            MessageType::Normal
        );
        assert_eq!(
            message("<message xmlns='jabber:client' type='shout'/>").message_type(),
            MessageType::Normal
        );
        assert!(!message("<message xmlns='jabber:client'/>").has_body());
    }

    #[test]
    fn every_type_is_read() {
        for value in ["chat", "error", "groupchat", "headline", "normal"] {
            let message = message(&format!("<message xmlns='jabber:client' type='{value}'/>"));
            assert_eq!(message.message_type().as_str(), value);
        }
    }

    #[test]
    fn an_iq_is_not_a_message() {
        let iq = parse_element(
            b"<iq xmlns='jabber:client' type='get' id='1'/>",
            &Limits::default(),
        )
        .unwrap();
        assert!(Message::try_from(iq).is_err());
    }
}
