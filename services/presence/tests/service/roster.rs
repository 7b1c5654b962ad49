//! Rosters, RFC 6121 section 2.

use crate::harness::Harness;

#[tokio::test]
async fn roster_get_returns_the_roster_with_its_version_and_empty_when_current() {
    let mut harness = Harness::new().await;
    let phone = harness.bind("alice@example.com/phone", "cm1").await;
    harness
        .roster_iq(
            &phone,
            "<iq type='get' id='g1'><query xmlns='jabber:iq:roster' ver=''/></iq>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <iq type='result' id='g1' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='0'/></iq>"]
    );
    harness
        .roster_iq(
            &phone,
            "<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@example.com' name='Bob'><group>Friends</group></item></query></iq>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='1'><item jid='bob@example.com' name='Bob' subscription='none'><group>Friends</group></item></query></iq>",
            "alice@example.com/phone <iq type='result' id='s1' to='alice@example.com/phone'/>",
        ]
    );
    // Section 2.6.3: the client's version is current: an empty result.
    let current = harness.version("alice@example.com", 1);
    harness
        .roster_iq(
            &phone,
            &format!(
                "<iq type='get' id='g2'><query xmlns='jabber:iq:roster' ver='{current}'/></iq>"
            ),
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <iq type='result' id='g2' to='alice@example.com/phone'/>"]
    );
    // An outdated version: the whole roster with the current version.
    let outdated = harness.version("alice@example.com", 0);
    harness
        .roster_iq(
            &phone,
            &format!(
                "<iq type='get' id='g3'><query xmlns='jabber:iq:roster' ver='{outdated}'/></iq>"
            ),
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <iq type='result' id='g3' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='1'><item jid='bob@example.com' name='Bob' subscription='none'><group>Friends</group></item></query></iq>"]
    );
    // A client without versioning gets no ver attribute.
    harness
        .roster_iq(
            &phone,
            "<iq type='get' id='g4' to='alice@example.com'><query xmlns='jabber:iq:roster'/></iq>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <iq type='result' id='g4' to='alice@example.com/phone' from='alice@example.com'><query xmlns='jabber:iq:roster'><item jid='bob@example.com' name='Bob' subscription='none'><group>Friends</group></item></query></iq>"]
    );
}

#[tokio::test]
async fn roster_set_pushes_to_every_interested_resource_on_every_node_then_answers() {
    let mut harness = Harness::new().await;
    let phone = harness.bind("alice@example.com/phone", "cm1").await;
    let laptop = harness.bind("alice@example.com/laptop", "cm2").await;
    let _tablet = harness.bind("alice@example.com/tablet", "cm2").await;
    for session in [&phone, &laptop] {
        harness
            .roster_iq(
                session,
                "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>",
            )
            .await;
    }
    harness.drain_all();
    harness
        .roster_iq(
            &laptop,
            "<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='Nurse@Example.com' name='Nurse' subscription='both' ask='subscribe'><group>Servants</group><group>servants</group></item></query></iq>",
        )
        .await;
    // The tablet never asked for the roster: not interested, no push.
    assert_eq!(
        harness.received_all(),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='1'><item jid='nurse@example.com' name='Nurse' subscription='none'><group>Servants</group><group>servants</group></item></query></iq>",
            "alice@example.com/laptop <iq type='set' id='push' to='alice@example.com/laptop'><query xmlns='jabber:iq:roster' ver='1'><item jid='nurse@example.com' name='Nurse' subscription='none'><group>Servants</group><group>servants</group></item></query></iq>",
            "alice@example.com/laptop <iq type='result' id='s1' to='alice@example.com/laptop'/>",
        ]
    );
    // An update keeps the subscription state and replaces name and groups.
    harness
        .roster_iq(
            &phone,
            "<iq type='set' id='s2'><query xmlns='jabber:iq:roster'><item jid='nurse@example.com'/></query></iq>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='2'><item jid='nurse@example.com' subscription='none'/></query></iq>",
            "alice@example.com/phone <iq type='result' id='s2' to='alice@example.com/phone'/>",
        ]
    );
}

#[tokio::test]
async fn roster_requests_are_refused_per_section_2() {
    let mut harness = Harness::new().await;
    let phone = harness.bind("alice@example.com/phone", "cm1").await;
    let cases = [
        (
            "<iq type='get' id='e1' to='bob@example.com'><query xmlns='jabber:iq:roster'/></iq>",
            "alice@example.com/phone <iq id='e1' to='alice@example.com/phone' from='bob@example.com' type='error'><query xmlns='jabber:iq:roster'/><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        ),
        (
            "<iq type='set' id='e2'><query xmlns='jabber:iq:roster'><item jid='a@example.com'/><item jid='b@example.com'/></query></iq>",
            "alice@example.com/phone <iq id='e2' to='alice@example.com/phone' type='error'><query xmlns='jabber:iq:roster'><item jid='a@example.com'/><item jid='b@example.com'/></query><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>a roster set carries exactly one item</text></error></iq>",
        ),
        (
            "<iq type='set' id='e3'><query xmlns='jabber:iq:roster'><item jid='a@example.com'><group>x</group><group>x</group></item></query></iq>",
            "alice@example.com/phone <iq id='e3' to='alice@example.com/phone' type='error'><query xmlns='jabber:iq:roster'><item jid='a@example.com'><group>x</group><group>x</group></item></query><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>the item lists a group twice</text></error></iq>",
        ),
        (
            "<iq type='set' id='e4'><query xmlns='jabber:iq:roster'><item jid='a@example.com'><group/></item></query></iq>",
            "alice@example.com/phone <iq id='e4' to='alice@example.com/phone' type='error'><query xmlns='jabber:iq:roster'><item jid='a@example.com'><group/></item></query><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>a group name is empty</text></error></iq>",
        ),
        (
            "<iq type='set' id='e5'><query xmlns='jabber:iq:roster'><item jid='a@example.com/phone'/></query></iq>",
            "alice@example.com/phone <iq id='e5' to='alice@example.com/phone' type='error'><query xmlns='jabber:iq:roster'><item jid='a@example.com/phone'/></query><error type='modify'><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>a roster item is a bare JID</text></error></iq>",
        ),
        (
            "<iq type='set' id='e6'><query xmlns='jabber:iq:roster'><item jid='stranger@example.com' subscription='remove'/></query></iq>",
            "alice@example.com/phone <iq id='e6' to='alice@example.com/phone' type='error'><query xmlns='jabber:iq:roster'><item jid='stranger@example.com' subscription='remove'/></query><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        ),
        (
            "<iq type='get' id='e7'><query xmlns='jabber:iq:roster'/><query xmlns='jabber:iq:roster'/></iq>",
            "alice@example.com/phone <iq id='e7' to='alice@example.com/phone' type='error'><query xmlns='jabber:iq:roster'/><query xmlns='jabber:iq:roster'/><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>a roster iq carries one query</text></error></iq>",
        ),
    ];
    for (request, answer) in cases {
        harness.roster_iq(&phone, request).await;
        assert_eq!(harness.received("cm1"), [answer], "for {request}");
    }
    assert!(harness.roster_of("alice@example.com").await.is_empty());
    // Answers to roster pushes need no reply.
    harness
        .roster_iq(&phone, "<iq type='result' id='push-1'/>")
        .await;
    assert!(harness.received("cm1").is_empty());
}

#[tokio::test]
async fn a_pending_request_placeholder_is_never_shown() {
    let mut harness = Harness::new().await;
    let bob = harness.bind("bob@example.com/desk", "cm2").await;
    let alice = harness.bind("alice@example.com/phone", "cm1").await;
    harness
        .presence(&alice, "<presence to='bob@example.com' type='subscribe'/>")
        .await;
    assert_eq!(
        harness.roster_of("bob@example.com").await,
        ["<item xmlns='jabber:iq:roster' jid='alice@example.com' subscription='none'/> +pending-in (placeholder)"]
    );
    harness.drain_all();
    harness
        .roster_iq(
            &bob,
            "<iq type='get' id='g1'><query xmlns='jabber:iq:roster'/></iq>",
        )
        .await;
    assert_eq!(
        harness.received("cm2"),
        ["bob@example.com/desk <iq type='result' id='g1' to='bob@example.com/desk'><query xmlns='jabber:iq:roster'/></iq>"]
    );
    // Removing it is removing an item that is not in the roster (section 2.5.3).
    harness
        .roster_iq(&bob, "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='alice@example.com' subscription='remove'/></query></iq>")
        .await;
    assert!(harness.received("cm2")[0].contains("<item-not-found"));
    // Adding the requester keeps the pending request.
    harness
        .roster_iq(&bob, "<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='alice@example.com' name='Alice'/></query></iq>")
        .await;
    assert_eq!(
        harness.roster_of("bob@example.com").await,
        ["<item xmlns='jabber:iq:roster' jid='alice@example.com' name='Alice' subscription='none'/> +pending-in"]
    );
}
