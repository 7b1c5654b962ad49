//! User Avatar (XEP-0084 version 1.1.4), vCard-Based Avatars (XEP-0153
//! version 1.1) and the conversion between them (XEP-0398 version 0.2.1):
//! the image of a vCard `PHOTO`, the payloads of the `urn:xmpp:avatar:data`
//! and `urn:xmpp:avatar:metadata` PEP nodes, and the photo hash a server
//! stamps on an available presence. No I/O: the router reads and stores.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::element::Element;
use crate::ns;
use crate::xep::PayloadError;

/// An avatar image: its content type and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvatarImage {
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

/// The hex SHA-1 of `bytes`: the XEP-0084 item id (section 4.2, "the SHA-1
/// hash of the image data") and the XEP-0153 photo hash (section 4.1).
pub fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Decode base64 that may be wrapped over lines (XEP-0153 section 4.1:
/// BINVAL is base64 "with line breaks" allowed).
fn decode_base64(text: &str) -> Result<Vec<u8>, PayloadError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| PayloadError("the avatar data is not base64"))
}

impl AvatarImage {
    /// The image's id and hash (see [`sha1_hex`]).
    pub fn id(&self) -> String {
        sha1_hex(&self.bytes)
    }

    fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// The `urn:xmpp:avatar:data` payload (XEP-0084 section 4.1).
    pub fn data_payload(&self) -> Element {
        Element::new("data", ns::AVATAR_DATA).with_text(self.base64())
    }

    /// The `urn:xmpp:avatar:metadata` payload with one `<info/>` (XEP-0084
    /// section 4.2: `bytes`, `id` and `type` required; `height` and `width`
    /// recommended, given when the image is a PNG or a GIF).
    pub fn metadata_payload(&self) -> Element {
        let mut info = Element::new("info", ns::AVATAR_METADATA)
            .with_attr("bytes", self.bytes.len().to_string())
            .with_attr("id", self.id())
            .with_attr("type", self.mime_type.clone());
        if let Some((width, height)) = dimensions(&self.bytes) {
            info.set_attr("height", height.to_string());
            info.set_attr("width", width.to_string());
        }
        Element::new("metadata", ns::AVATAR_METADATA).with_child(info)
    }

    /// The image of an `urn:xmpp:avatar:data` payload, of `mime_type` (from
    /// the metadata).
    pub fn from_data_payload(data: &Element, mime_type: &str) -> Result<Self, PayloadError> {
        if !data.is("data", ns::AVATAR_DATA) {
            return Err(PayloadError("not an avatar data payload"));
        }
        Ok(AvatarImage {
            mime_type: mime_type.to_string(),
            bytes: decode_base64(&data.text())?,
        })
    }
}

/// The width and height of a PNG (its IHDR chunk) or a GIF (its logical
/// screen descriptor); `None` for other formats.
fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) && bytes.len() >= 24 && &bytes[12..16] == b"IHDR" {
        let width = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
        let height = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
        return Some((width, height));
    }
    if (bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")) && bytes.len() >= 10 {
        let width = u16::from_le_bytes([bytes[6], bytes[7]]);
        let height = u16::from_le_bytes([bytes[8], bytes[9]]);
        return Some((u32::from(width), u32::from(height)));
    }
    None
}

/// The content type of an image by its first bytes, for a `PHOTO` without
/// `TYPE`.
fn sniff_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(b"\xff\xd8\xff") {
        "image/jpeg"
    } else if bytes.starts_with(b"GIF8") {
        "image/gif"
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

/// The image of a vCard's `PHOTO` (XEP-0054 and XEP-0153 section 4.1:
/// `<PHOTO><TYPE/><BINVAL/></PHOTO>`): `None` when the vCard has no photo,
/// an empty one or only an external `EXTVAL` (nothing the server holds).
pub fn vcard_photo(vcard: &Element) -> Result<Option<AvatarImage>, PayloadError> {
    let Some(photo) = vcard.get_child("PHOTO", ns::VCARD) else {
        return Ok(None);
    };
    let Some(binval) = photo.get_child("BINVAL", ns::VCARD) else {
        return Ok(None);
    };
    let bytes = decode_base64(&binval.text())?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let mime_type = photo
        .get_child("TYPE", ns::VCARD)
        .map(|kind| kind.text().trim().to_string())
        .filter(|kind| !kind.is_empty())
        .unwrap_or_else(|| sniff_type(&bytes).to_string());
    Ok(Some(AvatarImage { mime_type, bytes }))
}

/// `vcard` with its `PHOTO` replaced by `image` (removed when `None`), the
/// other fields kept as they were.
pub fn with_vcard_photo(vcard: &Element, image: Option<&AvatarImage>) -> Element {
    let mut updated = vcard.clone();
    updated.remove_children("PHOTO", ns::VCARD);
    if let Some(image) = image {
        updated.append_child(
            Element::new("PHOTO", ns::VCARD)
                .with_child(Element::new("TYPE", ns::VCARD).with_text(image.mime_type.clone()))
                .with_child(Element::new("BINVAL", ns::VCARD).with_text(image.base64())),
        );
    }
    updated
}

/// The avatar a metadata payload announces (XEP-0084 section 4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AvatarMetadata {
    /// An empty `<metadata/>`: the user disabled the avatar (section 4.2.1).
    Disabled,
    /// The `<info/>` whose data is in the data node: its id and type
    /// (XEP-0398 section 3.1: the info element that has no `url`).
    Stored { id: String, mime_type: String },
    /// Only images at external URLs: nothing the server can convert.
    External,
}

impl AvatarMetadata {
    pub fn from_payload(metadata: &Element) -> Result<Self, PayloadError> {
        if !metadata.is("metadata", ns::AVATAR_METADATA) {
            return Err(PayloadError("not an avatar metadata payload"));
        }
        let infos: Vec<&Element> = metadata
            .children()
            .filter(|child| child.is("info", ns::AVATAR_METADATA))
            .collect();
        if infos.is_empty() {
            return Ok(AvatarMetadata::Disabled);
        }
        let Some(stored) = infos.iter().find(|info| info.attr("url").is_none()) else {
            return Ok(AvatarMetadata::External);
        };
        match (stored.attr("id"), stored.attr("type")) {
            (Some(id), Some(mime_type)) if !id.is_empty() => Ok(AvatarMetadata::Stored {
                id: id.to_string(),
                mime_type: mime_type.to_string(),
            }),
            _ => Err(PayloadError(
                "an avatar info element needs an id and a type",
            )),
        }
    }
}

/// XEP-0398 section 4: stamp the photo hash on an available presence, on
/// the user's behalf. A presence whose `vcard-temp:x:update` element holds
/// an empty `<photo/>` (the client says "no avatar", XEP-0153 section 4.2)
/// is left alone; a missing element, one without `<photo/>` and one with
/// another hash get `<photo>hash</photo>`. Returns whether it changed.
pub fn stamp_photo_hash(presence: &mut Element, hash: &str) -> bool {
    if let Some(update) = presence.get_child("x", ns::VCARD_UPDATE) {
        match update.get_child("photo", ns::VCARD_UPDATE) {
            Some(photo) if photo.text().trim().is_empty() => return false,
            Some(photo) if photo.text().trim() == hash => return false,
            _ => {}
        }
    }
    presence.remove_children("x", ns::VCARD_UPDATE);
    presence.append_child(
        Element::new("x", ns::VCARD_UPDATE)
            .with_child(Element::new("photo", ns::VCARD_UPDATE).with_text(hash)),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::element;

    /// A 1x1 PNG.
    const PNG: &[u8] =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

    fn png() -> AvatarImage {
        AvatarImage {
            mime_type: "image/png".into(),
            bytes: PNG.to_vec(),
        }
    }

    #[test]
    fn the_id_is_the_hex_sha1_of_the_image() {
        // FIPS 180 "abc".
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn a_vcard_photo_reads_with_line_breaks_and_without_type() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(PNG);
        let (first, rest) = encoded.split_at(10);
        let vcard = element(&format!(
            "<vCard xmlns='vcard-temp'><FN>Juliet</FN><PHOTO><BINVAL>{first}\n  {rest}</BINVAL></PHOTO></vCard>"
        ));
        assert_eq!(vcard_photo(&vcard).unwrap(), Some(png()));
        let external = element(
            "<vCard xmlns='vcard-temp'><PHOTO><EXTVAL>http://x/y.png</EXTVAL></PHOTO></vCard>",
        );
        assert_eq!(vcard_photo(&external).unwrap(), None);
        let none = element("<vCard xmlns='vcard-temp'><FN>Juliet</FN></vCard>");
        assert_eq!(vcard_photo(&none).unwrap(), None);
        let broken = element("<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>!!!</BINVAL></PHOTO></vCard>");
        assert_eq!(
            vcard_photo(&broken).unwrap_err().0,
            "the avatar data is not base64"
        );
    }

    #[test]
    fn payloads_of_the_avatar_nodes() {
        let image = png();
        let id = image.id();
        assert_eq!(
            image.metadata_payload().to_xml(),
            format!("<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='{}' id='{id}' type='image/png' height='1' width='1'/></metadata>", PNG.len())
        );
        let data = image.data_payload();
        assert_eq!(
            AvatarImage::from_data_payload(&data, "image/png").unwrap(),
            image
        );
        assert_eq!(
            AvatarMetadata::from_payload(&image.metadata_payload()).unwrap(),
            AvatarMetadata::Stored {
                id,
                mime_type: "image/png".into()
            }
        );
    }

    #[test]
    fn metadata_picks_the_info_without_url() {
        let metadata = element(
            "<metadata xmlns='urn:xmpp:avatar:metadata'>\
             <info bytes='1' id='remote' type='image/gif' url='http://avatars.example/x.gif'/>\
             <info bytes='1' id='abc' type='image/png'/></metadata>",
        );
        assert_eq!(
            AvatarMetadata::from_payload(&metadata).unwrap(),
            AvatarMetadata::Stored {
                id: "abc".into(),
                mime_type: "image/png".into()
            }
        );
        let disabled = element("<metadata xmlns='urn:xmpp:avatar:metadata'/>");
        assert_eq!(
            AvatarMetadata::from_payload(&disabled).unwrap(),
            AvatarMetadata::Disabled
        );
        let external = element("<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='1' id='r' type='image/gif' url='http://a/b'/></metadata>");
        assert_eq!(
            AvatarMetadata::from_payload(&external).unwrap(),
            AvatarMetadata::External
        );
        let no_type = element(
            "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='1' id='r'/></metadata>",
        );
        assert!(AvatarMetadata::from_payload(&no_type).is_err());
    }

    #[test]
    fn the_photo_replaces_the_old_one_and_keeps_the_rest() {
        let vcard = element("<vCard xmlns='vcard-temp'><FN>Juliet</FN><PHOTO><EXTVAL>http://x</EXTVAL></PHOTO></vCard>");
        let updated = with_vcard_photo(&vcard, Some(&png()));
        assert_eq!(vcard_photo(&updated).unwrap(), Some(png()));
        assert!(updated.has_child("FN", ns::VCARD));
        assert_eq!(
            updated.children().filter(|c| c.name() == "PHOTO").count(),
            1
        );
        let removed = with_vcard_photo(&updated, None);
        assert_eq!(
            removed.to_xml(),
            "<vCard xmlns='vcard-temp'><FN>Juliet</FN></vCard>"
        );
    }

    #[test]
    fn the_hash_is_stamped_unless_the_client_says_no_avatar() {
        let mut bare = element("<presence xmlns='jabber:client'><show>away</show></presence>");
        assert!(stamp_photo_hash(&mut bare, "abc"));
        assert_eq!(
            bare.to_stanza_xml(),
            "<presence><show>away</show><x xmlns='vcard-temp:x:update'><photo>abc</photo></x></presence>"
        );
        // The same hash: unchanged.
        assert!(!stamp_photo_hash(&mut bare, "abc"));
        // An empty x (not ready) and another hash are overwritten.
        for given in [
            "<x xmlns='vcard-temp:x:update'/>",
            "<x xmlns='vcard-temp:x:update'><photo>old</photo></x>",
        ] {
            let mut presence = element(&format!(
                "<presence xmlns='jabber:client'>{given}</presence>"
            ));
            assert!(stamp_photo_hash(&mut presence, "abc"));
            assert_eq!(
                presence.to_stanza_xml(),
                "<presence><x xmlns='vcard-temp:x:update'><photo>abc</photo></x></presence>"
            );
        }
        let mut none = element(
            "<presence xmlns='jabber:client'><x xmlns='vcard-temp:x:update'><photo/></x></presence>",
        );
        assert!(!stamp_photo_hash(&mut none, "abc"));
        assert_eq!(
            none.to_stanza_xml(),
            "<presence><x xmlns='vcard-temp:x:update'><photo/></x></presence>"
        );
    }
}
