//! Conversions between the wire messages and the Rust types of `starling_api`.
//!
//! JIDs travel as strings (RFC 7622) and are parsed again on receipt; stanzas
//! travel as XML re-serialised from their parsed form (DESIGN: raw client
//! bytes never travel) and are parsed again under the stanza parser's limits.
//! A field that does not parse is a `String` error naming the field: the
//! server adapters turn it into `INVALID_ARGUMENT`, the clients into `Internal`.

use starling_api::{
    ApiError, RosterItem, ScramCredentials, SessionAddr, StoredCredentials, Subscription,
    SubscriptionEntry,
};
use starling_jid::{BareJid, FullJid};
use starling_xmpp::{parse_element, Element, Limits};

use crate::common::v1 as common_proto;
use crate::storage::v1 as storage_proto;

/// The largest stanza accepted from a peer service: the gRPC message limit
/// (4 MiB); the connection-manager has enforced the client-facing limit already,
/// and depth and attributes have the room `Limits::for_server_copies` gives
/// for what the server wraps around a stanza.
const MAX_WIRE_STANZA_BYTES: usize = 4 * 1024 * 1024;

pub(crate) fn wire_stanza_limits() -> Limits {
    Limits {
        max_stanza_bytes: MAX_WIRE_STANZA_BYTES,
        ..Limits::default().for_server_copies()
    }
}

/// A failed conversion received by a server: the peer sent a bad request.
pub(crate) fn invalid_request(message: String) -> ApiError {
    ApiError::Invalid(message)
}

/// A failed conversion received by a client: the service answered nonsense.
pub(crate) fn malformed_response(message: String) -> ApiError {
    ApiError::Internal(format!("malformed response: {message}"))
}

pub(crate) fn parse_bare_jid(field: &str, value: &str) -> Result<BareJid, String> {
    value
        .parse::<BareJid>()
        .map_err(|error| format!("{field}: invalid bare jid {value:?}: {error}"))
}

pub(crate) fn parse_full_jid(field: &str, value: &str) -> Result<FullJid, String> {
    value
        .parse::<FullJid>()
        .map_err(|error| format!("{field}: invalid full jid {value:?}: {error}"))
}

/// Serialise a stanza for the wire, declaring its namespace.
pub(crate) fn stanza_to_wire(stanza: &Element) -> String {
    stanza.to_xml()
}

pub(crate) fn stanza_from_wire(field: &str, xml: &str) -> Result<Element, String> {
    parse_element(xml.as_bytes(), &wire_stanza_limits())
        .map_err(|error| format!("{field}: not a stanza: {}", error.0))
}

pub(crate) fn addr_to_proto(addr: &SessionAddr) -> common_proto::SessionAddr {
    common_proto::SessionAddr {
        node: addr.node.clone(),
        conn: addr.conn,
    }
}

pub(crate) fn addr_from_proto(
    field: &str,
    addr: Option<common_proto::SessionAddr>,
) -> Result<SessionAddr, String> {
    let addr = addr.ok_or_else(|| format!("{field}: missing"))?;
    if addr.node.is_empty() {
        return Err(format!("{field}: empty node"));
    }
    Ok(SessionAddr {
        node: addr.node,
        conn: addr.conn,
    })
}

fn scram_to_proto(credentials: &ScramCredentials) -> storage_proto::ScramCredentials {
    storage_proto::ScramCredentials {
        salt: credentials.salt.clone(),
        iterations: credentials.iterations,
        stored_key: credentials.stored_key.clone(),
        server_key: credentials.server_key.clone(),
    }
}

fn scram_from_proto(
    field: &str,
    credentials: Option<storage_proto::ScramCredentials>,
) -> Result<ScramCredentials, String> {
    let credentials = credentials.ok_or_else(|| format!("{field}: missing"))?;
    Ok(ScramCredentials {
        salt: credentials.salt,
        iterations: credentials.iterations,
        stored_key: credentials.stored_key,
        server_key: credentials.server_key,
    })
}

pub(crate) fn credentials_to_proto(
    credentials: &StoredCredentials,
) -> storage_proto::StoredCredentials {
    storage_proto::StoredCredentials {
        sha1: Some(scram_to_proto(&credentials.sha1)),
        sha256: Some(scram_to_proto(&credentials.sha256)),
    }
}

pub(crate) fn credentials_from_proto(
    credentials: Option<storage_proto::StoredCredentials>,
) -> Result<StoredCredentials, String> {
    let credentials = credentials.ok_or_else(|| "credentials: missing".to_string())?;
    Ok(StoredCredentials {
        sha1: scram_from_proto("credentials.sha1", credentials.sha1)?,
        sha256: scram_from_proto("credentials.sha256", credentials.sha256)?,
    })
}

fn subscription_to_proto(subscription: Subscription) -> storage_proto::Subscription {
    match subscription {
        Subscription::None => storage_proto::Subscription::None,
        Subscription::To => storage_proto::Subscription::To,
        Subscription::From => storage_proto::Subscription::From,
        Subscription::Both => storage_proto::Subscription::Both,
    }
}

fn subscription_from_proto(value: i32) -> Result<Subscription, String> {
    match storage_proto::Subscription::try_from(value) {
        Ok(storage_proto::Subscription::None) => Ok(Subscription::None),
        Ok(storage_proto::Subscription::To) => Ok(Subscription::To),
        Ok(storage_proto::Subscription::From) => Ok(Subscription::From),
        Ok(storage_proto::Subscription::Both) => Ok(Subscription::Both),
        Err(_) => Err(format!("roster item subscription: unknown value {value}")),
    }
}

pub(crate) fn roster_item_to_proto(item: &RosterItem) -> storage_proto::RosterItem {
    storage_proto::RosterItem {
        jid: item.jid.to_string(),
        name: item.name.clone(),
        subscription: subscription_to_proto(item.subscription) as i32,
        pending_out: item.pending_out,
        pending_in: item.pending_in,
        pending_in_stanza: item.pending_in_stanza.clone(),
        groups: item.groups.clone(),
        in_roster: item.in_roster,
    }
}

pub(crate) fn subscription_entry_to_proto(
    entry: &SubscriptionEntry,
) -> storage_proto::SubscriptionEntry {
    storage_proto::SubscriptionEntry {
        jid: entry.jid.to_string(),
        subscription: subscription_to_proto(entry.subscription) as i32,
        pending_in: entry.pending_in,
    }
}

pub(crate) fn subscription_entry_from_proto(
    entry: storage_proto::SubscriptionEntry,
) -> Result<SubscriptionEntry, String> {
    Ok(SubscriptionEntry {
        jid: parse_bare_jid("subscription entry jid", &entry.jid)?,
        subscription: subscription_from_proto(entry.subscription)?,
        pending_in: entry.pending_in,
    })
}

pub(crate) fn roster_item_from_proto(
    item: storage_proto::RosterItem,
) -> Result<RosterItem, String> {
    Ok(RosterItem {
        jid: parse_bare_jid("roster item jid", &item.jid)?,
        name: item.name,
        subscription: subscription_from_proto(item.subscription)?,
        pending_out: item.pending_out,
        pending_in: item.pending_in,
        pending_in_stanza: item.pending_in_stanza,
        groups: item.groups,
        in_roster: item.in_roster,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_stanza_round_trips_as_literal_xml() {
        let xml = "<message xmlns='jabber:client' from='a@example.org/phone' to='b@example.org' type='chat' id='m1'><body>hi &amp; bye</body></message>";
        let stanza = stanza_from_wire("stanza", xml).expect("a message parses");
        assert_eq!(stanza_to_wire(&stanza), xml);
    }

    #[test]
    fn presence_and_iq_stanzas_round_trip_as_literal_xml() {
        for xml in [
            "<presence xmlns='jabber:client' from='a@example.org/phone'><show>away</show><priority>5</priority></presence>",
            "<iq xmlns='jabber:client' type='get' id='r1' from='a@example.org/phone'><query xmlns='jabber:iq:roster' ver=''/></iq>",
            "<presence xmlns='jabber:client' type='unavailable'/>",
        ] {
            let stanza = stanza_from_wire("stanza", xml).expect("stanza parses");
            assert_eq!(stanza_to_wire(&stanza), xml);
        }
    }

    #[test]
    fn rejects_malformed_stanza_xml() {
        for xml in [
            "",
            "<message xmlns='jabber:client'>",
            "<message xmlns='jabber:client'/><message xmlns='jabber:client'/>",
            "just text",
            "<message xmlns='jabber:client'><body>x</wrong></message>",
        ] {
            let error = stanza_from_wire("stanza", xml).expect_err("malformed stanza");
            assert!(error.starts_with("stanza: not a stanza"), "{error}");
        }
    }

    #[test]
    fn rejects_bad_jids_and_missing_addr() {
        assert!(parse_bare_jid("user", "").is_err());
        assert!(parse_bare_jid("user", "a@b/c").is_err());
        assert!(parse_full_jid("jid", "a@example.org").is_err());
        assert!(addr_from_proto("addr", None).is_err());
        assert!(addr_from_proto(
            "addr",
            Some(common_proto::SessionAddr {
                node: String::new(),
                conn: 1
            })
        )
        .is_err());
    }

    #[test]
    fn roster_item_round_trips_and_rejects_unknown_subscription() {
        let mut item = RosterItem::new("juliet@example.org".parse().expect("jid"));
        item.name = Some("Juliet".into());
        item.subscription = Subscription::Both;
        item.pending_in = true;
        item.pending_in_stanza = Some("<presence xmlns='jabber:client' type='subscribe'/>".into());
        item.groups = vec!["Friends".into()];
        let wire = roster_item_to_proto(&item);
        assert_eq!(roster_item_from_proto(wire.clone()), Ok(item));
        let mut bad = wire;
        bad.subscription = 42;
        assert!(roster_item_from_proto(bad).is_err());
    }
}
