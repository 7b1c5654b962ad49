//! The stream-level XML the server writes around every stream: the response
//! stream header (RFC 6120 section 4.7), its stream id and `</stream:stream>`.
//! The features and the nonzas of each negotiation step are in the step's
//! module (`negotiation::*`).

use starling_xmpp::escape_attr;

/// `</stream:stream>`, RFC 6120 section 4.4.
pub(crate) const STREAM_CLOSE: &str = "</stream:stream>";

/// A random stream id (RFC 6120 section 4.7.3: unique and unpredictable).
pub(crate) fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The response stream header (RFC 6120 section 4.7): our stream id, our
/// domain in `from`, the client's address in `to` when it gave a valid one,
/// version 1.0, and the stream's language.
pub(crate) fn stream_header(id: &str, domain: &str, to: Option<&str>, lang: &str) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='");
    out.push_str(&escape_attr(id));
    out.push_str("' from='");
    out.push_str(&escape_attr(domain));
    out.push('\'');
    if let Some(to) = to {
        out.push_str(" to='");
        out.push_str(&escape_attr(to));
        out.push('\'');
    }
    out.push_str(" version='1.0' xml:lang='");
    out.push_str(&escape_attr(lang));
    out.push_str("'>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_header() {
        assert_eq!(
            stream_header("s1", "example.com", Some("juliet@example.com"), "en"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='example.com' to='juliet@example.com' version='1.0' xml:lang='en'>"
        );
        assert_eq!(
            stream_header("s'1", "example.com", None, "d<e"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s&apos;1' from='example.com' version='1.0' xml:lang='d&lt;e'>"
        );
    }
}
