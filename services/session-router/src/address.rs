//! Where a stanza is addressed, as the router sees it: no `to` (RFC 6120
//! section 10.3), a remote domain (section 10.4) or the local domain and its
//! accounts (section 10.5; RFC 6121 section 8.5).

use starling_jid::{BareJid, FullJid, Jid};

/// The destination class of a stanza's `to` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// No `to` address: the server handles the stanza on behalf of the
    /// sender's account (RFC 6120 section 10.3).
    Absent,
    /// `<domainpart>` of the served domain: the server itself (RFC 6120 section 10.5.1).
    Domain,
    /// `<domainpart/resourcepart>` of the served domain (RFC 6120 section 10.5.2).
    DomainResource,
    /// `<localpart@domainpart>` of a local account (RFC 6121 section 8.5.2).
    LocalBare(BareJid),
    /// `<localpart@domainpart/resourcepart>` of a local account (RFC 6121 section 8.5.3).
    LocalFull(FullJid),
    /// Any address of another domain (RFC 6120 section 10.4).
    Remote(Jid),
}

/// Classify a parsed `to` address against the served domain.
pub(crate) fn classify(to: Option<Jid>, served_domain: &str) -> Destination {
    let Some(to) = to else {
        return Destination::Absent;
    };
    if to.domain() != served_domain {
        return Destination::Remote(to);
    }
    match (to.node().is_some(), to) {
        (false, Jid::Bare(_)) => Destination::Domain,
        (false, Jid::Full(_)) => Destination::DomainResource,
        (true, Jid::Bare(bare)) => Destination::LocalBare(bare),
        (true, Jid::Full(full)) => Destination::LocalFull(full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(to: Option<&str>) -> Destination {
        classify(to.map(|to| to.parse().expect("valid jid")), "example.com")
    }

    #[test]
    fn classifies_every_address_form() {
        assert_eq!(class(None), Destination::Absent);
        assert_eq!(class(Some("example.com")), Destination::Domain);
        assert_eq!(
            class(Some("example.com/admin")),
            Destination::DomainResource
        );
        assert_eq!(
            class(Some("juliet@example.com")),
            Destination::LocalBare("juliet@example.com".parse().unwrap())
        );
        assert_eq!(
            class(Some("juliet@example.com/balcony")),
            Destination::LocalFull("juliet@example.com/balcony".parse().unwrap())
        );
        assert_eq!(
            class(Some("romeo@example.net")),
            Destination::Remote("romeo@example.net".parse().unwrap())
        );
        assert_eq!(
            class(Some("conference.example.com")),
            Destination::Remote("conference.example.com".parse().unwrap())
        );
    }
}
