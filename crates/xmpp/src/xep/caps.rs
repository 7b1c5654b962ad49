//! XEP-0115: Entity Capabilities, version 1.6.0: the `<c/>` element of a
//! presence (section 4), and the verification string of a disco#info answer
//! (section 5.1 with the checks of section 5.4) that its `ver` must equal.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::element::Element;
use crate::ns;
use crate::xep::{Payload, PayloadError};

/// The only hash function this server verifies (section 5: SHA-1 is the
/// one every implementation supports).
pub const SHA_1: &str = "sha-1";

/// The longest `ver` or `node` kept (a SHA-1 `ver` is 28 characters; a
/// node is a URI): longer ones are not capabilities worth a disco query.
pub const MAX_CAPS_ATTRIBUTE_BYTES: usize = 1024;

/// The capabilities a presence announces (section 4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caps {
    pub hash: String,
    pub node: String,
    pub ver: String,
}

impl Caps {
    /// The capabilities of a presence stanza, if it carries a well-formed `<c/>`.
    pub fn of_presence(presence: &Element) -> Option<Caps> {
        presence
            .children()
            .find(|child| Caps::is(child))
            .and_then(|child| Caps::from_element(child).ok())
    }

    /// The disco node that names this record (section 6.2: `node#ver`).
    pub fn disco_node(&self) -> String {
        format!("{}#{}", self.node, self.ver)
    }
}

impl Payload for Caps {
    const NAME: &'static str = "c";
    const NAMESPACE: &'static str = ns::CAPS;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        crate::xep::expect::<Caps>(element)?;
        let attribute = |name: &str| -> Result<String, PayloadError> {
            match element.attr(name) {
                Some(value) if !value.is_empty() && value.len() <= MAX_CAPS_ATTRIBUTE_BYTES => {
                    Ok(value.to_string())
                }
                Some(_) => Err(PayloadError("a caps attribute is empty or too long")),
                // Section 4: hash, node and ver are required (a legacy
                // `<c/>` without `hash` is not verifiable).
                None => Err(PayloadError("<c/> needs hash, node and ver")),
            }
        };
        Ok(Caps {
            hash: attribute("hash")?,
            node: attribute("node")?,
            ver: attribute("ver")?,
        })
    }

    fn to_element(&self) -> Element {
        Element::new("c", ns::CAPS)
            .with_attr("hash", self.hash.clone())
            .with_attr("node", self.node.clone())
            .with_attr("ver", self.ver.clone())
    }
}

/// A data form as the verification string reads it: its FORM_TYPE, and
/// its other fields (var, sorted values) sorted by var.
type HashedForm = (String, Vec<(String, Vec<String>)>);

/// The verification string of a disco#info `<query/>` (section 5.1),
/// refused when the answer breaks a rule of section 5.4 (duplicate
/// identities or features, two forms of one FORM_TYPE, a form field with
/// no `var`).
pub fn verification_string(query: &Element) -> Result<String, PayloadError> {
    let mut identities: Vec<[String; 4]> = Vec::new();
    let mut features: Vec<String> = Vec::new();
    let mut forms: Vec<HashedForm> = Vec::new();
    for child in query.children() {
        if child.is("identity", ns::DISCO_INFO) {
            identities.push([
                child.attr("category").unwrap_or("").to_string(),
                child.attr("type").unwrap_or("").to_string(),
                child.attr("xml:lang").unwrap_or("").to_string(),
                child.attr("name").unwrap_or("").to_string(),
            ]);
        } else if child.is("feature", ns::DISCO_INFO) {
            features.push(child.attr("var").unwrap_or("").to_string());
        } else if child.is("x", ns::DATA_FORMS) {
            if let Some(form) = read_form(child)? {
                forms.push(form);
            }
        }
    }
    identities.sort();
    features.sort();
    forms.sort_by(|left, right| left.0.cmp(&right.0));
    // Section 5.4, 3.3 to 3.5: duplicates make the answer invalid.
    if identities.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(PayloadError("the disco#info answer repeats an identity"));
    }
    if features.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(PayloadError("the disco#info answer repeats a feature"));
    }
    if forms.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return Err(PayloadError("the disco#info answer repeats a FORM_TYPE"));
    }
    let mut text = String::new();
    for identity in &identities {
        text.push_str(&identity.join("/"));
        text.push('<');
    }
    for feature in &features {
        text.push_str(feature);
        text.push('<');
    }
    for (form_type, fields) in &forms {
        text.push_str(form_type);
        text.push('<');
        for (var, values) in fields {
            text.push_str(var);
            text.push('<');
            for value in values {
                text.push_str(value);
                text.push('<');
            }
        }
    }
    Ok(text)
}

/// A data form's FORM_TYPE and its other fields with sorted values, sorted
/// by var; `None` for a form the hash ignores (no FORM_TYPE, or one not of
/// type `hidden`, section 5.4 3.6).
fn read_form(form: &Element) -> Result<Option<HashedForm>, PayloadError> {
    let mut form_type = None;
    let mut fields = Vec::new();
    for field in form
        .children()
        .filter(|child| child.is("field", ns::DATA_FORMS))
    {
        let Some(var) = field.attr("var") else {
            return Err(PayloadError("a form field has no var"));
        };
        let mut values: Vec<String> = field
            .children()
            .filter(|child| child.is("value", ns::DATA_FORMS))
            .map(Element::text)
            .collect();
        if var == "FORM_TYPE" {
            if field.attr("type") != Some("hidden") {
                return Ok(None);
            }
            if form_type.is_some() || values.len() != 1 {
                return Err(PayloadError(
                    "a form has a FORM_TYPE of other than one value",
                ));
            }
            form_type = values.pop();
            continue;
        }
        values.sort();
        fields.push((var.to_string(), values));
    }
    fields.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(form_type.map(|form_type| (form_type, fields)))
}

/// The `ver` of a disco#info `<query/>` under SHA-1 (section 5.1 steps 8 and 9).
pub fn sha1_ver(query: &Element) -> Result<String, PayloadError> {
    let text = verification_string(query)?;
    let digest = Sha1::digest(text.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// The features of a disco#info `<query/>`, in document order.
pub fn features(query: &Element) -> Vec<String> {
    query
        .children()
        .filter(|child| child.is("feature", ns::DISCO_INFO))
        .filter_map(|child| child.attr("var"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{element, round_trip};

    #[test]
    fn simple_example_of_section_5_2() {
        let query = element(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/></query>",
        );
        assert_eq!(
            verification_string(&query).unwrap(),
            "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<"
        );
        assert_eq!(sha1_ver(&query).unwrap(), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn complex_example_of_section_5_3() {
        let query = element(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field></x></query>",
        );
        assert_eq!(sha1_ver(&query).unwrap(), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }

    #[test]
    fn duplicates_are_refused() {
        let repeated_feature = element(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' type='pc'/>\
             <feature var='urn:a'/><feature var='urn:a'/></query>",
        );
        assert!(sha1_ver(&repeated_feature).is_err());
        let repeated_identity = element(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' type='pc'/><identity category='client' type='pc'/></query>",
        );
        assert!(sha1_ver(&repeated_identity).is_err());
    }

    #[test]
    fn caps_element_round_trips_and_needs_its_attributes() {
        round_trip::<Caps>(
            "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://psi-im.org' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/>",
        );
        let legacy = element("<c xmlns='http://jabber.org/protocol/caps' node='n' ver='1.0'/>");
        assert!(Caps::from_element(&legacy).is_err());
        let presence = element(
            "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/></presence>",
        );
        assert_eq!(
            Caps::of_presence(&presence).map(|caps| caps.disco_node()),
            Some("n#v=".to_string())
        );
    }
}
