//! The client's stream header (RFC 6120 sections 4.7 and 4.8): what a
//! negotiation accepts before it answers with its own.

use starling_jid::normalize_domainpart;
use starling_xmpp::{ns, StreamError, StreamErrorCondition, StreamHeader};

fn parse_version(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    if major.is_empty()
        || minor.is_empty()
        || !major
            .bytes()
            .chain(minor.bytes())
            .all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// An `xml:lang` value we can echo: a plausible BCP 47 tag (RFC 6120 section 4.7.4).
pub(crate) fn acceptable_lang(lang: &str) -> bool {
    !lang.is_empty()
        && lang.len() <= 35
        && lang
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
}

/// Check a client's initial stream header (RFC 6120 sections 4.7 and 4.8).
pub(crate) fn check_stream_header(header: &StreamHeader, domain: &str) -> Result<(), StreamError> {
    // Section 4.8.2: the content namespace of a client stream is jabber:client.
    if header.default_namespace.as_deref() != Some(ns::CLIENT) {
        return Err(StreamError::with_text(
            StreamErrorCondition::InvalidNamespace,
            "the default namespace must be jabber:client",
        ));
    }
    // Section 4.7.2: the initiating entity MUST include 'to', naming a domain we serve.
    let served = header
        .to
        .as_deref()
        .and_then(|to| normalize_domainpart(to).ok())
        .is_some_and(|to| to == domain);
    if !served {
        return Err(StreamError::new(StreamErrorCondition::HostUnknown));
    }
    // Section 4.7.5: no version (a pre-1.0 entity) or one below 1.0 cannot be served;
    // a higher one is answered with 1.0, and the client decides.
    match header.version.as_deref().and_then(parse_version) {
        Some((major, _)) if major >= 1 => Ok(()),
        _ => Err(StreamError::with_text(
            StreamErrorCondition::UnsupportedVersion,
            "version 1.0 is required",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(to: Option<&str>, version: Option<&str>, namespace: Option<&str>) -> StreamHeader {
        StreamHeader {
            to: to.map(str::to_string),
            version: version.map(str::to_string),
            default_namespace: namespace.map(str::to_string),
            ..StreamHeader::default()
        }
    }

    fn condition(header: &StreamHeader) -> Option<StreamErrorCondition> {
        check_stream_header(header, "example.com")
            .err()
            .map(|error| error.condition)
    }

    #[test]
    fn stream_header_checks() {
        use StreamErrorCondition::*;
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.0"), Some(ns::CLIENT))),
            None
        );
        assert_eq!(
            condition(&header(Some("EXAMPLE.com"), Some("1.0"), Some(ns::CLIENT))),
            None
        );
        // A higher version is answered with 1.0 (section 4.7.5).
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.1"), Some(ns::CLIENT))),
            None
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("2.0"), Some(ns::CLIENT))),
            None
        );
        assert_eq!(
            condition(&header(Some("example.net"), Some("1.0"), Some(ns::CLIENT))),
            Some(HostUnknown)
        );
        assert_eq!(
            condition(&header(None, Some("1.0"), Some(ns::CLIENT))),
            Some(HostUnknown)
        );
        assert_eq!(
            condition(&header(Some("example.com"), None, Some(ns::CLIENT))),
            Some(UnsupportedVersion)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("0.9"), Some(ns::CLIENT))),
            Some(UnsupportedVersion)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("1"), Some(ns::CLIENT))),
            Some(UnsupportedVersion)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.x"), Some(ns::CLIENT))),
            Some(UnsupportedVersion)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.0"), Some(ns::SERVER))),
            Some(InvalidNamespace)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.0"), None)),
            Some(InvalidNamespace)
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.0"), Some((1, 0)));
        assert_eq!(parse_version("01.010"), Some((1, 10)));
        assert_eq!(parse_version("1."), None);
        assert_eq!(parse_version("+1.0"), None);
    }

    #[test]
    fn languages() {
        assert!(acceptable_lang("en"));
        assert!(acceptable_lang("zh-Hant-TW"));
        assert!(!acceptable_lang(""));
        assert!(!acceptable_lang("en'><x"));
    }
}
