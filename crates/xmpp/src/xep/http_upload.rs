//! XEP-0363: HTTP File Upload, version 0.4.0: the slot request (section 4),
//! the slot (section 4) and the application errors of section 5
//! (`<file-too-large/>`, `<retry/>`).

use crate::element::Element;
use crate::ns;
use crate::xep::{expect, Payload, PayloadError};

/// `<request filename size content-type?/>`, an IQ get to the upload service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    /// The name as the client sent it (made safe by the service).
    pub filename: String,
    pub size: u64,
    pub content_type: Option<String>,
}

impl Payload for SlotRequest {
    const NAME: &'static str = "request";
    const NAMESPACE: &'static str = ns::HTTP_UPLOAD;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        // Section 4: "This element MUST include the attributes filename and size".
        let filename = element
            .attr("filename")
            .ok_or(PayloadError("a slot request needs a filename"))?;
        if filename.is_empty() {
            return Err(PayloadError("a slot request needs a filename"));
        }
        let size = element
            .attr("size")
            .ok_or(PayloadError("a slot request needs a size"))?;
        // Digits only: no sign, no spaces, no exponent.
        if size.is_empty() || !size.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(PayloadError("the size is not a number of bytes"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| PayloadError("the size is not a number of bytes"))?;
        if size == 0 {
            return Err(PayloadError("the size of an empty file"));
        }
        Ok(SlotRequest {
            filename: filename.to_string(),
            size,
            content_type: element
                .attr("content-type")
                .filter(|value| !value.is_empty())
                .map(str::to_string),
        })
    }

    fn to_element(&self) -> Element {
        let mut element = Element::new(Self::NAME, Self::NAMESPACE)
            .with_attr("filename", self.filename.clone())
            .with_attr("size", self.size.to_string());
        if let Some(content_type) = &self.content_type {
            element.set_attr("content-type", content_type.clone());
        }
        element
    }
}

/// `<slot><put url><header name/>…</put><get url/></slot>`, the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub put_url: String,
    /// HTTP header fields the PUT must carry (section 4: `Authorization`,
    /// `Cookie` or `Expires`).
    pub put_headers: Vec<(String, String)>,
    pub get_url: String,
}

impl Payload for Slot {
    const NAME: &'static str = "slot";
    const NAMESPACE: &'static str = ns::HTTP_UPLOAD;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let put = element
            .get_child("put", ns::HTTP_UPLOAD)
            .ok_or(PayloadError("a slot needs a put url"))?;
        let get = element
            .get_child("get", ns::HTTP_UPLOAD)
            .ok_or(PayloadError("a slot needs a get url"))?;
        let put_url = put
            .attr("url")
            .ok_or(PayloadError("a slot needs a put url"))?;
        let get_url = get
            .attr("url")
            .ok_or(PayloadError("a slot needs a get url"))?;
        let mut put_headers = Vec::new();
        for header in put
            .children()
            .filter(|child| child.is("header", ns::HTTP_UPLOAD))
        {
            let name = header
                .attr("name")
                .ok_or(PayloadError("a header needs a name"))?;
            put_headers.push((name.to_string(), header.text()));
        }
        Ok(Slot {
            put_url: put_url.to_string(),
            put_headers,
            get_url: get_url.to_string(),
        })
    }

    fn to_element(&self) -> Element {
        let mut put = Element::new("put", ns::HTTP_UPLOAD).with_attr("url", self.put_url.clone());
        for (name, value) in &self.put_headers {
            put.append_child(
                Element::new("header", ns::HTTP_UPLOAD)
                    .with_attr("name", name.clone())
                    .with_text(value.clone()),
            );
        }
        Element::new(Self::NAME, Self::NAMESPACE)
            .with_child(put)
            .with_child(Element::new("get", ns::HTTP_UPLOAD).with_attr("url", self.get_url.clone()))
    }
}

/// `<file-too-large><max-file-size/></file-too-large>`, in the `<error/>`
/// of a request for a file over the limit (section 5).
pub fn file_too_large(max_file_size: u64) -> Element {
    Element::new("file-too-large", ns::HTTP_UPLOAD).with_child(
        Element::new("max-file-size", ns::HTTP_UPLOAD).with_text(max_file_size.to_string()),
    )
}

/// `<retry stamp/>`, in the `<error/>` of a temporary refusal (section 5):
/// `stamp` a XEP-0082 date-time in UTC.
pub fn retry(stamp: &str) -> Element {
    Element::new("retry", ns::HTTP_UPLOAD).with_attr("stamp", stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{rejected, round_trip};

    #[test]
    fn the_section_4_request_round_trips() {
        let request = round_trip::<SlotRequest>(
            "<request xmlns='urn:xmpp:http:upload:0' filename='my-juliet.jpg' size='23456' content-type='image/jpeg'/>",
        );
        assert_eq!(request.size, 23456);
        assert_eq!(request.content_type.as_deref(), Some("image/jpeg"));
        let request = round_trip::<SlotRequest>(
            "<request xmlns='urn:xmpp:http:upload:0' filename='a.bin' size='1'/>",
        );
        assert_eq!(request.content_type, None);
    }

    #[test]
    fn requests_without_name_or_size_are_rejected() {
        for (xml, reason) in [
            ("<request xmlns='urn:xmpp:http:upload:0' size='1'/>", "a slot request needs a filename"),
            ("<request xmlns='urn:xmpp:http:upload:0' filename='' size='1'/>", "a slot request needs a filename"),
            ("<request xmlns='urn:xmpp:http:upload:0' filename='a'/>", "a slot request needs a size"),
            ("<request xmlns='urn:xmpp:http:upload:0' filename='a' size='-1'/>", "the size is not a number of bytes"),
            ("<request xmlns='urn:xmpp:http:upload:0' filename='a' size=' 1'/>", "the size is not a number of bytes"),
            ("<request xmlns='urn:xmpp:http:upload:0' filename='a' size='99999999999999999999999'/>", "the size is not a number of bytes"),
            ("<request xmlns='urn:xmpp:http:upload:0' filename='a' size='0'/>", "the size of an empty file"),
            ("<request xmlns='urn:xmpp:http:upload' filename='a' size='1'/>", "unexpected payload element"),
        ] {
            assert_eq!(rejected::<SlotRequest>(xml), reason, "{xml}");
        }
    }

    #[test]
    fn the_section_4_slot_round_trips() {
        let slot = round_trip::<Slot>(
            "<slot xmlns='urn:xmpp:http:upload:0'><put url='https://upload.montague.tld/4a771ac1/my-juliet.jpg'><header name='Authorization'>Basic Base64String==</header></put><get url='https://download.montague.tld/4a771ac1/my-juliet.jpg'/></slot>",
        );
        assert_eq!(
            slot.put_headers,
            vec![(
                "Authorization".to_string(),
                "Basic Base64String==".to_string()
            )]
        );
        assert_eq!(
            rejected::<Slot>("<slot xmlns='urn:xmpp:http:upload:0'><put url='x'/></slot>"),
            "a slot needs a get url"
        );
    }

    #[test]
    fn the_section_5_errors() {
        assert_eq!(
            file_too_large(20000).to_xml(),
            "<file-too-large xmlns='urn:xmpp:http:upload:0'><max-file-size>20000</max-file-size></file-too-large>"
        );
        assert_eq!(
            retry("2017-12-03T23:42:05Z").to_xml(),
            "<retry xmlns='urn:xmpp:http:upload:0' stamp='2017-12-03T23:42:05Z'/>"
        );
    }
}
