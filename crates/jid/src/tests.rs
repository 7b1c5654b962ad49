//! Literal examples: RFC 7622 section 3.5 and the rules of section 3.

use super::*;

fn parse(input: &str) -> Result<Jid, JidError> {
    input.parse()
}

/// Parse, then check the parts and that `Display` gives `normalized`.
fn assert_jid(input: &str, node: Option<&str>, domain: &str, resource: Option<&str>) {
    let jid = parse(input).unwrap_or_else(|error| panic!("{input:?} rejected: {error}"));
    assert_eq!(jid.node(), node, "localpart of {input:?}");
    assert_eq!(jid.domain(), domain, "domainpart of {input:?}");
    assert_eq!(jid.resource(), resource, "resourcepart of {input:?}");
    let mut normalized = String::new();
    if let Some(node) = node {
        normalized.push_str(node);
        normalized.push('@');
    }
    normalized.push_str(domain);
    if let Some(resource) = resource {
        normalized.push('/');
        normalized.push_str(resource);
    }
    assert_eq!(jid.to_string(), normalized);
    assert_eq!(parse(&normalized), Ok(jid));
}

// RFC 7622 section 3.5, Table 1: a sample of legal JIDs.

#[test]
fn rfc7622_table1_bare_and_full_jids() {
    assert_jid("juliet@example.com", Some("juliet"), "example.com", None);
    assert_jid(
        "juliet@example.com/foo",
        Some("juliet"),
        "example.com",
        Some("foo"),
    );
}

#[test]
fn rfc7622_table1_space_and_at_sign_in_resourcepart() {
    assert_jid(
        "juliet@example.com/foo bar",
        Some("juliet"),
        "example.com",
        Some("foo bar"),
    );
    assert_jid(
        "juliet@example.com/foo@bar",
        Some("juliet"),
        "example.com",
        Some("foo@bar"),
    );
}

#[test]
fn rfc7622_table1_escaped_space_in_localpart() {
    assert_jid(
        "foo\\20bar@example.com",
        Some("foo\\20bar"),
        "example.com",
        None,
    );
}

#[test]
fn rfc7622_table1_sharp_s_is_not_folded_to_ss() {
    assert_jid(
        "fussball@example.com",
        Some("fussball"),
        "example.com",
        None,
    );
    assert_jid("fußball@example.com", Some("fußball"), "example.com", None);
    assert_ne!(parse("fussball@example.com"), parse("fußball@example.com"));
}

#[test]
fn rfc7622_table1_greek_localparts() {
    assert_jid("π@example.com", Some("π"), "example.com", None);
    assert_jid("Σ@example.com/foo", Some("σ"), "example.com", Some("foo"));
    assert_jid("σ@example.com/foo", Some("σ"), "example.com", Some("foo"));
    // RFC 8265 maps case with Unicode toLowerCase, not case folding (which
    // RFC 7613, cited by RFC 7622, used): FINAL SIGMA is already lowercase
    // and stays distinct from SIGMA.
    assert_jid("ς@example.com/foo", Some("ς"), "example.com", Some("foo"));
}

#[test]
fn rfc7622_table1_symbol_in_resourcepart() {
    assert_jid("king@example.com/♚", Some("king"), "example.com", Some("♚"));
}

#[test]
fn rfc7622_table1_domain_only_jids() {
    assert_jid("example.com", None, "example.com", None);
    assert_jid("example.com/foobar", None, "example.com", Some("foobar"));
    assert_jid(
        "a.example.com/b@example.net",
        None,
        "a.example.com",
        Some("b@example.net"),
    );
}

// RFC 7622 section 3.5, Table 2: a sample of strings that violate the rules.
// (Its "leading space in resourcepart" entry is legal, RFC errata 4560.)

#[test]
fn rfc7622_table2_quotation_marks_in_localpart() {
    assert_eq!(parse("\"juliet\"@example.com"), Err(JidError::InvalidLocal));
}

#[test]
fn rfc7622_table2_space_in_localpart() {
    assert_eq!(parse("foo bar@example.com"), Err(JidError::InvalidLocal));
}

#[test]
fn rfc7622_table2_leading_space_in_resourcepart_is_legal() {
    assert_jid(
        "juliet@example.com/ foo",
        Some("juliet"),
        "example.com",
        Some(" foo"),
    );
}

#[test]
fn rfc7622_table2_empty_localpart_and_resourcepart() {
    assert_eq!(parse("@example.com/"), Err(JidError::EmptyLocal));
}

#[test]
fn rfc7622_table2_roman_numeral_in_localpart() {
    // U+2163 ROMAN NUMERAL FOUR has a compatibility decomposition: disallowed.
    assert_eq!(
        parse("henry\u{2163}@example.com"),
        Err(JidError::InvalidLocal)
    );
}

#[test]
fn rfc7622_table2_symbol_in_localpart() {
    assert_eq!(parse("♚@example.com"), Err(JidError::InvalidLocal));
}

#[test]
fn rfc7622_table2_missing_domainpart() {
    assert_eq!(parse("juliet@"), Err(JidError::EmptyDomain));
    assert_eq!(parse("/foobar"), Err(JidError::EmptyDomain));
}

// Case mapping and width mapping.

#[test]
fn case_is_folded_in_localpart_and_domainpart_but_not_resourcepart() {
    let jid: FullJid = "User@Example.COM/Res".parse().unwrap();
    assert_eq!(jid.to_string(), "user@example.com/Res");
    assert_ne!(
        "user@example.com/Res".parse::<FullJid>(),
        "user@example.com/res".parse::<FullJid>()
    );
}

#[test]
fn non_ascii_case_is_folded() {
    assert_jid(
        "ÄÇÉ@MÜNCHEN.de/Ärger",
        Some("äçé"),
        "münchen.de",
        Some("Ärger"),
    );
}

#[test]
fn fullwidth_localpart_is_width_mapped() {
    assert_jid(
        "ＪＵＬＩＥＴ@example.com",
        Some("juliet"),
        "example.com",
        None,
    );
}

#[test]
fn fullwidth_domainpart_is_width_mapped_including_the_dots() {
    assert_jid(
        "juliet@ｅｘａｍｐｌｅ．ｃｏｍ",
        Some("juliet"),
        "example.com",
        None,
    );
    assert_jid("juliet@example。com", Some("juliet"), "example.com", None);
}

#[test]
fn fullwidth_resourcepart_is_preserved() {
    assert_jid(
        "juliet@example.com/ｆｏｏ",
        Some("juliet"),
        "example.com",
        Some("ｆｏｏ"),
    );
}

#[test]
fn fullwidth_at_sign_in_localpart_is_forbidden_after_mapping() {
    assert_eq!(parse("a\u{ff20}b@example.com"), Err(JidError::InvalidLocal));
    assert_eq!(
        BareJid::from_parts(Some("a\u{ff0f}b"), "example.com"),
        Err(JidError::InvalidLocal)
    );
}

#[test]
fn non_ascii_spaces_in_resourcepart_become_ascii_spaces() {
    assert_jid(
        "juliet@example.com/a\u{3000}b",
        Some("juliet"),
        "example.com",
        Some("a b"),
    );
}

#[test]
fn parts_are_nfc_normalised() {
    assert_jid(
        "e\u{301}@example.com/e\u{301}",
        Some("é"),
        "example.com",
        Some("é"),
    );
}

// RFC 7622 section 3.3.1: forbidden characters in the localpart.

#[test]
fn localpart_forbidden_characters() {
    for forbidden in ['"', '&', '\'', '/', ':', '<', '>', '@'] {
        let local = format!("a{forbidden}b");
        assert_eq!(
            BareJid::from_parts(Some(&local), "example.com"),
            Err(JidError::InvalidLocal),
            "{local:?}"
        );
    }
    assert_jid(
        "a+b=c!#$%*@example.com",
        Some("a+b=c!#$%*"),
        "example.com",
        None,
    );
}

#[test]
fn control_characters_are_rejected() {
    assert_eq!(parse("a\u{1}b@example.com"), Err(JidError::InvalidLocal));
    assert_eq!(
        parse("juliet@example.com/a\u{0}b"),
        Err(JidError::InvalidResource)
    );
    assert_eq!(
        parse("juliet@example.com/a\tb"),
        Err(JidError::InvalidResource)
    );
    assert_eq!(
        parse("juliet@exa\u{7f}mple.com"),
        Err(JidError::InvalidDomain)
    );
}

// Splitting (RFC 7622 section 3.1).

#[test]
fn resourcepart_starts_at_the_first_slash_and_may_contain_at_and_slash() {
    assert_jid("a@b/c@d/e", Some("a"), "b", Some("c@d/e"));
    assert_jid("server/resource@foo", None, "server", Some("resource@foo"));
    assert_jid(
        "server/resource@foo/bar",
        None,
        "server",
        Some("resource@foo/bar"),
    );
    assert_jid(
        "juliet@example.com//",
        Some("juliet"),
        "example.com",
        Some("/"),
    );
}

#[test]
fn localpart_ends_at_the_first_at_sign() {
    assert_eq!(parse("user@@host"), Err(JidError::InvalidDomain));
    assert_eq!(parse("user@@host/resource"), Err(JidError::InvalidDomain));
    assert_eq!(parse("a@b@c"), Err(JidError::InvalidDomain));
}

#[test]
fn empty_parts_are_rejected() {
    assert_eq!(parse(""), Err(JidError::EmptyDomain));
    assert_eq!(parse("@"), Err(JidError::EmptyLocal));
    assert_eq!(parse("/"), Err(JidError::EmptyDomain));
    assert_eq!(parse("@/"), Err(JidError::EmptyLocal));
    assert_eq!(parse("@server"), Err(JidError::EmptyLocal));
    assert_eq!(parse("@server/resource"), Err(JidError::EmptyLocal));
    assert_eq!(parse("node@/server"), Err(JidError::EmptyDomain));
    assert_eq!(parse("user@host/"), Err(JidError::EmptyResource));
    assert_eq!(
        BareJid::from_parts(Some(""), "host"),
        Err(JidError::EmptyLocal)
    );
    assert_eq!(BareJid::domain_jid(""), Err(JidError::EmptyDomain));
    let bare = BareJid::domain_jid("host").unwrap();
    assert_eq!(bare.with_resource(""), Err(JidError::EmptyResource));
}

#[test]
fn typed_parsing_checks_for_the_resource() {
    assert_eq!("a@b".parse::<FullJid>(), Err(JidError::ResourceMissing));
    assert_eq!(
        "a@b/c".parse::<BareJid>(),
        Err(JidError::ResourceUnexpected)
    );
    let full: FullJid = "a@b/c".parse().unwrap();
    let jid: Jid = full.clone().into();
    assert_eq!(jid, full);
    assert_eq!(jid.to_bare(), "a@b".parse::<BareJid>().unwrap());
    assert_eq!(format!("{jid:?}"), "Jid(a@b/c)");
}

// Domainpart (RFC 7622 section 3.2).

#[test]
fn one_trailing_dot_is_stripped() {
    assert_jid(
        "juliet@example.com./foo",
        Some("juliet"),
        "example.com",
        Some("foo"),
    );
    assert_jid("example.com.", None, "example.com", None);
    assert_jid("example.com\u{3002}", None, "example.com", None);
    assert_eq!(parse("example.com.."), Err(JidError::InvalidDomain));
    assert_eq!(parse("."), Err(JidError::EmptyDomain));
    assert_eq!(parse("juliet@./foo"), Err(JidError::EmptyDomain));
    assert_eq!("example.com.".parse::<Jid>(), "example.com".parse::<Jid>());
}

#[test]
fn empty_and_malformed_labels_are_rejected() {
    for domain in [
        "a..b",
        ".example.com",
        "exa mple.com",
        "-example.com",
        "example-.com",
        "ex_ample.com",
        "example.com:5222",
        "exa\u{3000}mple.com",
        "\u{200d}.com",
        "xn--ls8h-.com",
    ] {
        assert_eq!(
            normalize_domainpart(domain),
            Err(JidError::InvalidDomain),
            "{domain:?}"
        );
    }
}

#[test]
fn a_labels_become_u_labels() {
    assert_jid(
        "juliet@xn--mnchen-3ya.de",
        Some("juliet"),
        "münchen.de",
        None,
    );
    assert_eq!(
        parse("juliet@XN--MNCHEN-3YA.DE"),
        parse("juliet@München.DE")
    );
    assert_eq!(parse("juliet@xn--mnchen.de"), Err(JidError::InvalidDomain));
}

#[test]
fn ip_literals_are_accepted_as_written() {
    assert_jid("juliet@[::1]/foo", Some("juliet"), "[::1]", Some("foo"));
    assert_jid(
        "juliet@[2001:DB8::1]",
        Some("juliet"),
        "[2001:DB8::1]",
        None,
    );
    assert_jid(
        "juliet@192.0.2.1/foo",
        Some("juliet"),
        "192.0.2.1",
        Some("foo"),
    );
    for domain in [
        "[::1",
        "::1",
        "[127.0.0.1]",
        "[v1.fe]",
        "[::1%25eth0]",
        "[]",
    ] {
        assert_eq!(
            normalize_domainpart(domain),
            Err(JidError::InvalidDomain),
            "{domain:?}"
        );
    }
}

// RFC 7622 section 3.1: each part at most 1023 bytes, after normalisation.

#[test]
fn localpart_length_limit() {
    let max = "a".repeat(MAX_PART_BYTES);
    assert_eq!(normalize_localpart(&max).as_deref(), Ok(max.as_str()));
    assert_eq!(
        normalize_localpart(&"a".repeat(1024)),
        Err(JidError::LocalTooLong)
    );
    assert_eq!(
        normalize_localpart(&"é".repeat(512)),
        Err(JidError::LocalTooLong)
    );
    // 3069 bytes of fullwidth letters normalise to 1023 ASCII bytes.
    assert_eq!(normalize_localpart(&"Ａ".repeat(1023)), Ok(max));
    assert_eq!(
        normalize_localpart(&"Ａ".repeat(1024)),
        Err(JidError::LocalTooLong)
    );
    // Over the input bound: rejected before any Unicode processing.
    assert_eq!(
        normalize_localpart(&"a".repeat(MAX_INPUT_PART_BYTES + 1)),
        Err(JidError::LocalTooLong)
    );
}

#[test]
fn domainpart_length_limit() {
    let max = "a".repeat(MAX_PART_BYTES);
    assert_eq!(normalize_domainpart(&max).as_deref(), Ok(max.as_str()));
    assert_eq!(
        normalize_domainpart(&format!("{max}.")).as_deref(),
        Ok(max.as_str())
    );
    assert_eq!(
        normalize_domainpart(&"a".repeat(1024)),
        Err(JidError::DomainTooLong)
    );
    assert_eq!(
        normalize_domainpart(&"ä".repeat(512)),
        Err(JidError::DomainTooLong)
    );
    assert_eq!(
        normalize_domainpart(&"a".repeat(MAX_INPUT_PART_BYTES + 1)),
        Err(JidError::DomainTooLong)
    );
}

#[test]
fn resourcepart_length_limit() {
    let max = format!("{}a", "é".repeat(511));
    assert_eq!(max.len(), MAX_PART_BYTES);
    assert_eq!(normalize_resourcepart(&max).as_deref(), Ok(max.as_str()));
    assert_eq!(
        normalize_resourcepart(&"r".repeat(1024)),
        Err(JidError::ResourceTooLong)
    );
    assert_eq!(
        normalize_resourcepart(&"é".repeat(512)),
        Err(JidError::ResourceTooLong)
    );
    assert_eq!(
        normalize_resourcepart(&"r".repeat(MAX_INPUT_PART_BYTES + 1)),
        Err(JidError::ResourceTooLong)
    );
}

#[test]
fn a_jid_with_every_part_at_the_limit_round_trips() {
    let input = format!(
        "{}@{}/{}",
        "l".repeat(MAX_PART_BYTES),
        "d".repeat(MAX_PART_BYTES),
        "r".repeat(MAX_PART_BYTES)
    );
    let jid = parse(&input).unwrap();
    assert_eq!(jid.to_string(), input);
}

#[test]
fn domain_helpers() {
    let bare = BareJid::from_parts(Some("Juliet"), "Example.com").unwrap();
    assert_eq!(bare.node(), Some("juliet"));
    assert_eq!(
        bare.domain_bare(),
        BareJid::domain_jid("EXAMPLE.COM.").unwrap()
    );
    let full = bare.with_resource("balcony").unwrap();
    assert_eq!(full.to_string(), "juliet@example.com/balcony");
    assert_eq!(full.to_bare(), bare);
}
