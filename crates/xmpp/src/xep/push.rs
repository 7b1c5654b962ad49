//! XEP-0357: Push Notifications, version 0.4.1: the `<enable/>` and
//! `<disable/>` payloads a client sends to its account (sections 5 and 6),
//! and the XEP-0060 publish of a `<notification/>` the server sends to an
//! app server (section 7), with the `urn:xmpp:push:summary` form (section
//! 11.3) and the publish options the client gave when enabling.
//!
//! The publish options are kept opaque: the app server defines them (a
//! secret, a token); the server only checks that the form is the one the
//! XEP names and sends it back with every notification.

use crate::element::Element;
use crate::ns;
use crate::xep::{expect, Payload, PayloadError};

/// `<enable xmlns='urn:xmpp:push:0' jid='...' node='...'>` with an optional
/// publish-options form (section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enable {
    /// The app server's address, as sent (the server reads it as a JID).
    pub jid: String,
    /// The node provisioned by the app server.
    pub node: String,
    /// `<x xmlns='jabber:x:data'>` of FORM_TYPE
    /// `http://jabber.org/protocol/pubsub#publish-options`, as sent.
    pub publish_options: Option<Element>,
}

impl Payload for Enable {
    const NAME: &'static str = "enable";
    const NAMESPACE: &'static str = ns::PUSH;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        // Section 5: the enable "MUST contain a 'jid' attribute".
        let jid = required_attr(element, "jid", "an enable needs a jid attribute (XEP-0357)")?;
        // Section 5 says the node SHOULD be there, the schema (section 13)
        // that it is required: a publish names its node (XEP-0060 section 7.1).
        let node = required_attr(
            element,
            "node",
            "an enable needs a node attribute (XEP-0357)",
        )?;
        let mut forms = element
            .children()
            .filter(|child| child.is("x", ns::DATA_FORMS));
        let publish_options = forms.next().cloned();
        if forms.next().is_some() {
            return Err(PayloadError("one publish-options form only (XEP-0357)"));
        }
        if let Some(form) = &publish_options {
            if form_type(form).as_deref() != Some(ns::PUBSUB_PUBLISH_OPTIONS) {
                return Err(PayloadError(
                    "the enable form's FORM_TYPE must be http://jabber.org/protocol/pubsub#publish-options (XEP-0357)",
                ));
            }
        }
        Ok(Enable {
            jid,
            node,
            publish_options,
        })
    }

    fn to_element(&self) -> Element {
        let mut enable = Element::new(Self::NAME, Self::NAMESPACE)
            .with_attr("jid", self.jid.clone())
            .with_attr("node", self.node.clone());
        if let Some(form) = &self.publish_options {
            enable.append_child(form.clone());
        }
        enable
    }
}

/// `<disable xmlns='urn:xmpp:push:0' jid='...' [node='...']/>` (section 6):
/// without a node, every registration of the service is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disable {
    pub jid: String,
    pub node: Option<String>,
}

impl Payload for Disable {
    const NAME: &'static str = "disable";
    const NAMESPACE: &'static str = ns::PUSH;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        // Section 6: the disable "MUST include a 'jid' attribute".
        let jid = required_attr(element, "jid", "a disable needs a jid attribute (XEP-0357)")?;
        let node = element
            .attr("node")
            .filter(|node| !node.is_empty())
            .map(str::to_string);
        Ok(Disable { jid, node })
    }

    fn to_element(&self) -> Element {
        let mut disable =
            Element::new(Self::NAME, Self::NAMESPACE).with_attr("jid", self.jid.clone());
        if let Some(node) = &self.node {
            disable.set_attr("node", node.clone());
        }
        disable
    }
}

/// What a notification summarises (the `urn:xmpp:push:summary` form,
/// section 11.3): the body only when the operator allows it (section 12:
/// bodies go through third parties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub message_count: u32,
    pub last_message_sender: Option<String>,
    pub last_message_body: Option<String>,
}

impl Summary {
    /// `<x xmlns='jabber:x:data' type='submit'>` with the summary's fields.
    pub fn to_form(&self) -> Element {
        let mut form = Element::new("x", ns::DATA_FORMS).with_attr("type", "submit");
        form.append_child(field("FORM_TYPE", ns::PUSH_SUMMARY));
        form.append_child(field("message-count", &self.message_count.to_string()));
        if let Some(sender) = &self.last_message_sender {
            form.append_child(field("last-message-sender", sender));
        }
        if let Some(body) = &self.last_message_body {
            form.append_child(field("last-message-body", body));
        }
        form
    }
}

/// The `<pubsub/>` of the notification's IQ set (section 7): a publish of
/// one item carrying `<notification/>` with the summary to `node`, then the
/// publish options given when the service was enabled.
pub fn notification_publish(
    node: &str,
    summary: &Summary,
    publish_options: Option<&Element>,
) -> Element {
    let notification = Element::new("notification", ns::PUSH).with_child(summary.to_form());
    let publish = Element::new("publish", ns::PUBSUB)
        .with_attr("node", node)
        .with_child(Element::new("item", ns::PUBSUB).with_child(notification));
    let mut pubsub = Element::new("pubsub", ns::PUBSUB).with_child(publish);
    if let Some(form) = publish_options {
        pubsub.append_child(Element::new("publish-options", ns::PUBSUB).with_child(form.clone()));
    }
    pubsub
}

fn required_attr(
    element: &Element,
    name: &str,
    missing: &'static str,
) -> Result<String, PayloadError> {
    match element.attr(name) {
        Some(value) if !value.trim().is_empty() => Ok(value.to_string()),
        _ => Err(PayloadError(missing)),
    }
}

/// The single value of a form's FORM_TYPE field, if any.
fn form_type(form: &Element) -> Option<String> {
    let field = form.children().find(|child| {
        child.is("field", ns::DATA_FORMS) && child.attr("var") == Some("FORM_TYPE")
    })?;
    let mut values = field
        .children()
        .filter(|child| child.is("value", ns::DATA_FORMS));
    let value = values.next()?.text();
    values.next().is_none().then_some(value)
}

fn field(var: &str, value: &str) -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_element;

    fn parse(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Default::default()).expect("test xml parses")
    }

    const OPTIONS: &str = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>eruio234vzxc2kla-91</value></field></x>";

    #[test]
    fn enable_round_trips_with_its_publish_options() {
        let xml = format!(
            "<enable xmlns='urn:xmpp:push:0' jid='push-5.client.example' node='yxs32uqsflafdk3iuqo'>{OPTIONS}</enable>"
        );
        let enable = Enable::from_element(&parse(&xml)).unwrap();
        assert_eq!(enable.jid, "push-5.client.example");
        assert_eq!(enable.node, "yxs32uqsflafdk3iuqo");
        assert!(enable.publish_options.is_some());
        assert_eq!(enable.to_element().to_xml(), xml);
    }

    #[test]
    fn enable_without_jid_or_node_or_with_another_form_is_refused() {
        for xml in [
            "<enable xmlns='urn:xmpp:push:0' node='n'/>",
            "<enable xmlns='urn:xmpp:push:0' jid='' node='n'/>",
            "<enable xmlns='urn:xmpp:push:0' jid='push.example'/>",
            "<enable xmlns='urn:xmpp:push:0' jid='push.example' node='n'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x></enable>",
            "<enable xmlns='urn:xmpp:push:0' jid='push.example' node='n'><x xmlns='jabber:x:data'/></enable>",
        ] {
            assert!(Enable::from_element(&parse(xml)).is_err(), "{xml}");
        }
    }

    #[test]
    fn disable_with_and_without_node() {
        let xml = "<disable xmlns='urn:xmpp:push:0' jid='push-5.client.example' node='yxs32uqsflafdk3iuqo'/>";
        let disable = Disable::from_element(&parse(xml)).unwrap();
        assert_eq!(disable.node.as_deref(), Some("yxs32uqsflafdk3iuqo"));
        assert_eq!(disable.to_element().to_xml(), xml);
        let all = Disable::from_element(&parse(
            "<disable xmlns='urn:xmpp:push:0' jid='push-5.client.example'/>",
        ))
        .unwrap();
        assert_eq!(all.node, None);
        assert!(Disable::from_element(&parse("<disable xmlns='urn:xmpp:push:0'/>")).is_err());
    }

    #[test]
    fn notification_without_body_names_count_and_sender() {
        let summary = Summary {
            message_count: 1,
            last_message_sender: Some("juliet@capulet.example/balcony".into()),
            last_message_body: None,
        };
        assert_eq!(
            notification_publish("yxs32uqsflafdk3iuqo", &summary, None).to_xml(),
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='yxs32uqsflafdk3iuqo'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field><field var='message-count'><value>1</value></field><field var='last-message-sender'><value>juliet@capulet.example/balcony</value></field></x></notification></item></publish></pubsub>"
        );
    }

    #[test]
    fn notification_with_body_and_publish_options() {
        let summary = Summary {
            message_count: 3,
            last_message_sender: Some("juliet@capulet.example/balcony".into()),
            last_message_body: Some("Wherefore art thou, Romeo?".into()),
        };
        let options = parse(OPTIONS);
        assert_eq!(
            notification_publish("n1", &summary, Some(&options)).to_xml(),
            format!("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n1'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field><field var='message-count'><value>3</value></field><field var='last-message-sender'><value>juliet@capulet.example/balcony</value></field><field var='last-message-body'><value>Wherefore art thou, Romeo?</value></field></x></notification></item></publish><publish-options>{OPTIONS}</publish-options></pubsub>")
        );
    }
}
