//! Property tests of the public API: parsing never panics, normalisation is
//! idempotent, and `Display` then `FromStr` gives back an equal value.

use proptest::prelude::*;
use starling_jid::{
    normalize_domainpart, normalize_localpart, normalize_resourcepart, BareJid, FullJid, Jid,
};

/// Strings shaped like JIDs, with separators, mixed case, fullwidth forms,
/// combining marks, non-ASCII spaces, right-to-left letters, A-labels and
/// symbols, so that a good share of them parse.
fn jid_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => "[a-zA-Z0-9]{1,6}",
        1 => Just("xn--mnchen-3ya".to_string()),
        2 => "[ÄäßΣσςπéÅＡ-Ｚａ-ｚ０-９．＠／。]{1,3}",
        1 => "[\u{300}-\u{36f}\u{3000}\u{2163}\u{265a}\u{5d0}-\u{5ea}\u{627}-\u{64a}\u{200d}]{1,2}",
        1 => "[ .@/\\-_\\[\\]:\"&'<>]{1,2}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 1..8).prop_map(|pieces| pieces.concat())
}

/// `[local@]domain[/resource]` built from [`jid_like`] pieces.
fn jid_shaped() -> impl Strategy<Value = String> {
    (
        prop::option::of(jid_like()),
        jid_like(),
        prop::option::of(jid_like()),
    )
        .prop_map(|(node, domain, resource)| {
            let mut jid = String::new();
            if let Some(node) = node {
                jid.push_str(&node);
                jid.push('@');
            }
            jid.push_str(&domain);
            if let Some(resource) = resource {
                jid.push('/');
                jid.push_str(&resource);
            }
            jid
        })
}

fn any_input() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => jid_shaped(),
        1 => jid_like(),
        1 => any::<String>(),
        1 => "(\\PC{1,8}@)?[\\PC.]{1,12}(/\\PC{1,8})?",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn parse_never_panics(input in any_input()) {
        let _ = input.parse::<Jid>();
        let _ = input.parse::<BareJid>();
        let _ = input.parse::<FullJid>();
    }

    #[test]
    fn display_then_parse_round_trips(input in any_input()) {
        if let Ok(jid) = input.parse::<Jid>() {
            let displayed = jid.to_string();
            prop_assert_eq!(displayed.parse::<Jid>(), Ok(jid.clone()));
            match jid {
                Jid::Bare(bare) => prop_assert_eq!(displayed.parse::<BareJid>(), Ok(bare)),
                Jid::Full(full) => prop_assert_eq!(displayed.parse::<FullJid>(), Ok(full)),
            }
        }
    }

    #[test]
    fn from_parts_then_parse_round_trips(
        node in prop::option::of(jid_like()),
        domain in jid_like(),
        resource in jid_like(),
    ) {
        if let Ok(bare) = BareJid::from_parts(node.as_deref(), &domain) {
            prop_assert_eq!(bare.to_string().parse::<BareJid>(), Ok(bare.clone()));
            if let Ok(full) = bare.with_resource(&resource) {
                prop_assert_eq!(full.to_string().parse::<FullJid>(), Ok(full.clone()));
            }
        }
    }

    #[test]
    fn localpart_normalisation_is_idempotent(input in any_input()) {
        if let Ok(normalized) = normalize_localpart(&input) {
            prop_assert_eq!(normalize_localpart(&normalized), Ok(normalized.clone()));
        }
    }

    #[test]
    fn domainpart_normalisation_is_idempotent(input in any_input()) {
        if let Ok(normalized) = normalize_domainpart(&input) {
            prop_assert_eq!(normalize_domainpart(&normalized), Ok(normalized.clone()));
        }
    }

    #[test]
    fn resourcepart_normalisation_is_idempotent(input in any_input()) {
        if let Ok(normalized) = normalize_resourcepart(&input) {
            prop_assert_eq!(normalize_resourcepart(&normalized), Ok(normalized.clone()));
        }
    }

    #[test]
    fn normalised_parts_stay_within_the_limit(input in any_input()) {
        for normalized in [
            normalize_localpart(&input),
            normalize_domainpart(&input),
            normalize_resourcepart(&input),
        ].into_iter().flatten() {
            prop_assert!(!normalized.is_empty() && normalized.len() <= 1023);
        }
    }
}
