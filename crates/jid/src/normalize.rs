//! The string profiles of RFC 7622 section 3, one per part of an address.
//!
//! Each `normalize_*` function is the RFC's "enforcement" step for its slot:
//! it returns the canonical form of the part, or says why the part is not
//! allowed. Two parts address the same entity exactly when their normalised
//! forms are equal (RFC 7622 section 3.1, comparison by enforcement).
//!
//! Every function has an ASCII fast path that gives exactly the result of the
//! full Unicode path (the unit tests below check that on random ASCII), since
//! the server parses addresses on every stanza and nearly all of them are
//! plain ASCII.

use std::net::{Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, Hyphens, Uts46};
use precis_core::profile::Profile;
use precis_core::{IdentifierClass, StringClass};
use precis_profiles::{OpaqueString, UsernameCaseMapped};

use crate::JidError;

/// RFC 7622 section 3.1: each part is 1 to 1023 octets long. The limit applies
/// to the normalised part, which is what gets compared, stored and sent.
pub const MAX_PART_BYTES: usize = 1023;

/// Parts longer than this are rejected before any Unicode processing, to bound
/// the work an attacker can ask for. Three times the limit, because width
/// mapping shrinks a fullwidth character (three bytes) to one ASCII byte, so a
/// fullwidth part of up to 3069 bytes can still normalise to 1023.
pub const MAX_INPUT_PART_BYTES: usize = 3 * 1024;

/// RFC 8264 section 7: applying a profile's rules once is not always
/// idempotent, so the rules are reapplied until the string is stable, and the
/// string is rejected when it has not stabilised after this many extra rounds.
const PRECIS_EXTRA_ROUNDS: usize = 3;

/// RFC 7622 section 3.3.1: code points allowed by UsernameCaseMapped that the
/// localpart must still not contain, because they delimit addresses in XMPP or
/// in the URIs and XML that carry them.
fn is_forbidden_in_localpart(c: char) -> bool {
    matches!(c, '"' | '&' | '\'' | '/' | ':' | '<' | '>' | '@')
}

/// Normalise a localpart: RFC 7622 section 3.3.
///
/// The localpart is enforced with the PRECIS UsernameCaseMapped profile
/// (RFC 8265 section 3.3: width mapping, lowercase, NFC, the bidi rule, and
/// only code points of the IdentifierClass), then must not contain the eight
/// characters `" & ' / : < > @` (RFC 7622 section 3.3.1), neither before
/// nor after enforcement, and must be 1 to 1023 bytes long (section 3.1).
pub fn normalize_localpart(local: &str) -> Result<String, JidError> {
    if local.is_empty() {
        return Err(JidError::EmptyLocal);
    }
    if local.len() > MAX_INPUT_PART_BYTES {
        return Err(JidError::LocalTooLong);
    }
    if let Some(result) = ascii_localpart(local) {
        return result;
    }
    precis_localpart(local)
}

/// The ASCII fast path of [`normalize_localpart`], or `None` when the input is
/// not ASCII. On ASCII, UsernameCaseMapped reduces to: the IdentifierClass
/// allows exactly the printable characters U+0021..U+007E (RFC 8264 section
/// 9.11, "ASCII7"), width mapping and NFC change nothing, case mapping is
/// ASCII lowercasing, and there is no right-to-left character for the bidi
/// rule to look at.
fn ascii_localpart(local: &str) -> Option<Result<String, JidError>> {
    if !local.is_ascii() {
        return None;
    }
    let allowed =
        |byte: u8| matches!(byte, 0x21..=0x7e) && !is_forbidden_in_localpart(byte as char);
    if !local.bytes().all(allowed) {
        return Some(Err(JidError::InvalidLocal));
    }
    if local.len() > MAX_PART_BYTES {
        return Some(Err(JidError::LocalTooLong));
    }
    Some(Ok(local.to_ascii_lowercase()))
}

/// The full Unicode path of [`normalize_localpart`].
fn precis_localpart(local: &str) -> Result<String, JidError> {
    if local.chars().any(is_forbidden_in_localpart) {
        return Err(JidError::InvalidLocal);
    }
    let normalized =
        enforce_until_stable(&UsernameCaseMapped::new(), local).ok_or(JidError::InvalidLocal)?;
    // Width mapping turns U+FF20 FULLWIDTH COMMERCIAL AT into '@', and so on:
    // the section 3.3.1 rule is about the enforced string as well.
    if normalized.chars().any(is_forbidden_in_localpart) {
        return Err(JidError::InvalidLocal);
    }
    if normalized.len() > MAX_PART_BYTES {
        return Err(JidError::LocalTooLong);
    }
    Ok(normalized)
}

/// Normalise a domainpart: RFC 7622 section 3.2.
///
/// - One final label separator (`.`, or U+3002, U+FF0E, U+FF61, which
///   IDNA maps to it) is stripped first (section 3.2).
/// - An IP literal is accepted as written: `[` IPv6 address `]` or a dotted
///   IPv4 address (section 3.2, the `IP-literal` and `IPv4address` rules of
///   RFC 3986; the `IPvFuture` form is not accepted).
/// - Anything else is a domain name, processed with UTS #46 ToUnicode
///   (non-transitional, STD3 ASCII rules, no leading or trailing hyphen in a
///   label, CheckBidi, CheckJoiners): A-labels become U-labels, letters are
///   lowercased, fullwidth forms are mapped, and the result is NFC (sections
///   3.2.1 and 3.2.2, which delegate to IDNA2008). Labels must not be empty.
/// - The result must be 1 to 1023 bytes long (section 3.1). The DNS limits of
///   63 bytes per label and 253 per name are not applied: RFC 7622 does not
///   apply them, and a domainpart need not be resolvable (components).
pub fn normalize_domainpart(domain: &str) -> Result<String, JidError> {
    if domain.len() > MAX_INPUT_PART_BYTES {
        return Err(JidError::DomainTooLong);
    }
    let domain = strip_final_label_separator(domain);
    if domain.is_empty() {
        return Err(JidError::EmptyDomain);
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let address = literal.strip_suffix(']').ok_or(JidError::InvalidDomain)?;
        address
            .parse::<Ipv6Addr>()
            .map_err(|_| JidError::InvalidDomain)?;
        return Ok(domain.to_owned());
    }
    if domain.parse::<Ipv4Addr>().is_ok() {
        return Ok(domain.to_owned());
    }
    let normalized = match ascii_domainpart(domain) {
        Some(result) => result?,
        None => idna_domainpart(domain)?,
    };
    if normalized.len() > MAX_PART_BYTES {
        return Err(JidError::DomainTooLong);
    }
    Ok(normalized)
}

/// RFC 7622 section 3.2: a final label separator is stripped. The separators
/// are those of IDNA (RFC 3490 section 3.1): FULL STOP, IDEOGRAPHIC FULL
/// STOP, FULLWIDTH FULL STOP and HALFWIDTH IDEOGRAPHIC FULL STOP.
fn strip_final_label_separator(domain: &str) -> &str {
    domain
        .strip_suffix(['.', '\u{3002}', '\u{ff0e}', '\u{ff61}'])
        .unwrap_or(domain)
}

/// The ASCII fast path of the domain-name branch of [`normalize_domainpart`],
/// or `None` when the input needs UTS #46 (non-ASCII, or an A-label that must
/// be decoded). On ASCII, ToUnicode with the STD3 rules reduces to: only
/// letters, digits and hyphens in non-empty labels, no hyphen at either end
/// of a label, and letters lowercased.
fn ascii_domainpart(domain: &str) -> Option<Result<String, JidError>> {
    if !domain.is_ascii() {
        return None;
    }
    for label in domain.split('.') {
        let bytes = label.as_bytes();
        if bytes.len() >= 4 && bytes[..4].eq_ignore_ascii_case(b"xn--") {
            return None;
        }
        let valid = !bytes.is_empty()
            && bytes
                .iter()
                .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
        if !valid {
            return Some(Err(JidError::InvalidDomain));
        }
    }
    Some(Ok(domain.to_ascii_lowercase()))
}

/// The UTS #46 path of [`normalize_domainpart`].
///
/// UTS #46 ToUnicode is more permissive than IDNA2008, which RFC 7622 section
/// 3.2.1 requires: it lets symbols and emoji through (`♚.example`). Every
/// label of the result is therefore also checked against the PRECIS
/// IdentifierClass, which is derived from Unicode properties by the same
/// rules as the IDNA2008 code point table (RFC 8264 section 9, RFC 5892
/// section 2): letters, digits and combining marks are allowed; symbols,
/// punctuation other than ASCII, spaces and compatibility characters are not;
/// the joiners only in the contexts of RFC 5892 appendix A.
fn idna_domainpart(domain: &str) -> Result<String, JidError> {
    let normalized = idna_to_unicode(domain).ok_or(JidError::InvalidDomain)?;
    let identifier_class = IdentifierClass::default();
    let label_is_valid = |label: &str| !label.is_empty() && identifier_class.allows(label).is_ok();
    if !normalized.split('.').all(label_is_valid) {
        return Err(JidError::InvalidDomain);
    }
    // ToUnicode is meant to be idempotent on its own output; check it, so that
    // a normalised domainpart always parses back to itself.
    if idna_to_unicode(&normalized).as_deref() != Some(normalized.as_str()) {
        return Err(JidError::InvalidDomain);
    }
    Ok(normalized)
}

fn idna_to_unicode(domain: &str) -> Option<String> {
    let (unicode, result) = Uts46::new().to_unicode(
        domain.as_bytes(),
        AsciiDenyList::STD3,
        Hyphens::CheckFirstLast,
    );
    result.ok()?;
    Some(unicode.into_owned())
}

/// Normalise a resourcepart: RFC 7622 section 3.4.
///
/// The resourcepart is enforced with the PRECIS OpaqueString profile (RFC 8265
/// section 4.2: non-ASCII spaces become U+0020, NFC, only code points of the
/// FreeformClass; case and width are preserved) and must be 1 to 1023 bytes
/// long (section 3.1). It may contain `@` and `/`.
pub fn normalize_resourcepart(resource: &str) -> Result<String, JidError> {
    if resource.is_empty() {
        return Err(JidError::EmptyResource);
    }
    if resource.len() > MAX_INPUT_PART_BYTES {
        return Err(JidError::ResourceTooLong);
    }
    if let Some(result) = ascii_resourcepart(resource) {
        return result;
    }
    precis_resourcepart(resource)
}

/// The ASCII fast path of [`normalize_resourcepart`], or `None` when the input
/// is not ASCII. On ASCII, OpaqueString reduces to: the FreeformClass allows
/// U+0020..U+007E (printable ASCII and the space), and the mappings and NFC
/// change nothing.
fn ascii_resourcepart(resource: &str) -> Option<Result<String, JidError>> {
    if !resource.is_ascii() {
        return None;
    }
    if !resource.bytes().all(|byte| matches!(byte, 0x20..=0x7e)) {
        return Some(Err(JidError::InvalidResource));
    }
    if resource.len() > MAX_PART_BYTES {
        return Some(Err(JidError::ResourceTooLong));
    }
    Some(Ok(resource.to_owned()))
}

/// The full Unicode path of [`normalize_resourcepart`].
fn precis_resourcepart(resource: &str) -> Result<String, JidError> {
    let normalized =
        enforce_until_stable(&OpaqueString::new(), resource).ok_or(JidError::InvalidResource)?;
    if normalized.len() > MAX_PART_BYTES {
        return Err(JidError::ResourceTooLong);
    }
    Ok(normalized)
}

/// Apply a PRECIS profile's enforcement until its output no longer changes
/// (RFC 8264 section 7), so the result is a fixed point: enforcing it again
/// returns it unchanged. `None` when the string is not allowed, or when it
/// does not stabilise within [`PRECIS_EXTRA_ROUNDS`].
///
/// The `precis-profiles` crate applies the rules once, so a string such as
/// `>` followed by U+0338 COMBINING LONG SOLIDUS OVERLAY passes it, and only
/// the second round sees the composed U+226F NOT GREATER-THAN, a symbol that
/// the IdentifierClass does not allow.
fn enforce_until_stable<P: Profile>(profile: &P, input: &str) -> Option<String> {
    let mut current = profile.enforce(input).ok()?.into_owned();
    for _ in 0..PRECIS_EXTRA_ROUNDS {
        let next = profile.enforce(current.as_str()).ok()?;
        if next == current.as_str() {
            return Some(current);
        }
        current = next.into_owned();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn precis_reenforcement_catches_composed_symbols() {
        // '>' + U+0338 is rejected by the forbidden-character rule already;
        // '=' + U+0338 composes to U+2260 NOT EQUAL TO, a symbol.
        assert_eq!(
            normalize_localpart("a=\u{338}"),
            Err(JidError::InvalidLocal)
        );
        assert_eq!(
            normalize_localpart("a>\u{338}"),
            Err(JidError::InvalidLocal)
        );
        // One round of the crate's enforcement accepts the first string.
        let once = UsernameCaseMapped::new().enforce("a=\u{338}");
        assert_eq!(once.as_deref(), Ok("a\u{2260}"));
    }

    #[test]
    fn domain_labels_must_be_idna2008_code_points() {
        // UTS #46 alone accepts these.
        assert_eq!(
            idna_to_unicode("\u{265a}.example").as_deref(),
            Some("\u{265a}.example")
        );
        for domain in ["\u{265a}.example", "i\u{2764}.ws", "\u{1f600}.example"] {
            assert_eq!(
                normalize_domainpart(domain),
                Err(JidError::InvalidDomain),
                "{domain:?}"
            );
        }
        for (domain, normalized) in [
            ("B\u{fc}cher.example", "b\u{fc}cher.example"),
            (
                "\u{4f8b}\u{3048}.\u{30c6}\u{30b9}\u{30c8}",
                "\u{4f8b}\u{3048}.\u{30c6}\u{30b9}\u{30c8}",
            ),
            (
                "\u{645}\u{62b}\u{627}\u{644}.example",
                "\u{645}\u{62b}\u{627}\u{644}.example",
            ),
            ("fa\u{df}.de", "fa\u{df}.de"),
        ] {
            assert_eq!(
                normalize_domainpart(domain).as_deref(),
                Ok(normalized),
                "{domain:?}"
            );
        }
    }

    #[test]
    fn ascii_fast_paths_agree_with_the_profiles_on_examples() {
        for local in ["juliet", "Juliet", "foo\\20bar", "a.b-c_d+e", "~!#$%^*()"] {
            assert_eq!(ascii_localpart(local), Some(precis_localpart(local)));
        }
        for resource in ["foo bar", " lead", "Res/With@Signs", "\u{7f}", "\t"] {
            assert_eq!(
                ascii_resourcepart(resource),
                Some(precis_resourcepart(resource))
            );
        }
        for domain in [
            "example.com",
            "EXAMPLE.com",
            "a-b.c",
            "a--b.c",
            "-a.b",
            "a_b.c",
        ] {
            assert_eq!(ascii_domainpart(domain), Some(idna_domainpart(domain)));
        }
        assert_eq!(ascii_domainpart("xn--mnchen-3ya.de"), None);
        assert_eq!(ascii_domainpart("München.de"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn ascii_localpart_fast_path_matches_precis(local in "[\\x00-\\x7f]{1,12}") {
            prop_assert_eq!(ascii_localpart(&local), Some(precis_localpart(&local)));
        }

        #[test]
        fn ascii_resourcepart_fast_path_matches_precis(resource in "[\\x00-\\x7f]{1,12}") {
            prop_assert_eq!(ascii_resourcepart(&resource), Some(precis_resourcepart(&resource)));
        }

        #[test]
        fn ascii_domainpart_fast_path_matches_uts46(
            domain in "[a-zA-Z0-9_.\\-]{1,12}|[\\x00-\\x7f]{1,8}|([a-zA-Z0-9\\-]{0,5}\\.){0,3}[a-zA-Z0-9\\-]{0,5}",
        ) {
            if let Some(fast) = ascii_domainpart(&domain) {
                prop_assert_eq!(fast, idna_domainpart(&domain));
            }
        }
    }
}
