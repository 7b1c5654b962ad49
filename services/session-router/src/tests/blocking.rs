//! Blocking Command (XEP-0191): the IQs, the pushes, the errors, the
//! enforcement in both directions for every stanza kind, and the presence
//! sent when a list changes.

use starling_api::{RosterItem, Subscription};

use super::*;

const ROMEO: &str = "romeo@example.com/orchard";
const JULIET: &str = "juliet@example.com/balcony";
const BLOCKED: &str =
    "<error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><blocked xmlns='urn:xmpp:blocking:errors'/></error>";
const UNAVAILABLE: &str =
    "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>";

fn stanzas(seen: Vec<Seen>) -> Vec<String> {
    seen.into_iter()
        .map(|seen| match seen {
            Seen::Stanza(_, xml) => xml,
            Seen::Close(..) => panic!("nothing is closed"),
        })
        .collect()
}

/// Juliet (on cm-test, conn 1) blocks `items` and forgets what she got.
async fn juliet_blocks(harness: &mut Harness, items: &str) {
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &format!("<iq id='b' type='set'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>"),
        )
        .await;
    let seen = stanzas(harness.seen_on_test());
    assert!(
        seen.iter()
            .any(|xml| xml.starts_with("<iq type='result' id='b' to='juliet@example.com/balcony'")),
        "{seen:?}"
    );
    harness.seen_on_other();
}

#[tokio::test]
async fn get_block_push_and_unblock() {
    let mut harness = Harness::new().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness
        .online("juliet@example.com/chamber", CM_OTHER, 2, 0)
        .await;
    harness
        .online("juliet@example.com/garden", CM_OTHER, 3, 0)
        .await;

    // Section 3.2: the empty list; the two asking resources become interested.
    for (jid, node, conn) in [
        (JULIET, CM_TEST, 1),
        ("juliet@example.com/chamber", CM_OTHER, 2),
    ] {
        harness
            .send(
                jid,
                node,
                conn,
                "<iq id='l' type='get'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            )
            .await;
    }
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, "<iq type='result' id='l' to='juliet@example.com/balcony'><blocklist xmlns='urn:xmpp:blocking'/></iq>")]
    );
    harness.seen_on_other();

    // Section 3.3: block; the pushes go to the interested resources only.
    harness
        .send(JULIET, CM_TEST, 1, "<iq id='b' type='set'><block xmlns='urn:xmpp:blocking'><item jid='Romeo@Example.com'><report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'><text>go away</text></report></item></block></iq>")
        .await;
    let on_test = stanzas(harness.seen_on_test());
    assert_eq!(on_test.len(), 2, "{on_test:?}");
    assert!(
        on_test[0].contains("type='set'")
            && on_test[0].ends_with(
                "<block xmlns='urn:xmpp:blocking'><item jid='romeo@example.com'/></block></iq>"
            ),
        "{on_test:?}"
    );
    assert_eq!(
        on_test[1],
        "<iq type='result' id='b' to='juliet@example.com/balcony'/>"
    );
    let on_other = harness.seen_on_other();
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    match &on_other[0] {
        Seen::Stanza(recipients, xml) => {
            assert_eq!(
                recipients.iter().map(|r| r.conn).collect::<Vec<_>>(),
                vec![2]
            );
            assert!(xml.contains("<item jid='romeo@example.com'/>"), "{xml}");
        }
        other => panic!("{other:?}"),
    }
    // The report was kept with the item.
    let stored = harness
        .storage
        .blocklist(&bare("juliet@example.com"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]
            .report
            .as_ref()
            .map(|report| (report.reason.as_str(), report.text.as_deref())),
        Some(("urn:xmpp:reporting:spam", Some("go away")))
    );
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq id='l2' type='get'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, "<iq type='result' id='l2' to='juliet@example.com/balcony'><blocklist xmlns='urn:xmpp:blocking'><item jid='romeo@example.com'/></blocklist></iq>")]
    );

    // Section 3.5: unblock everything, pushed as an empty unblock.
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq id='u' type='set'><unblock xmlns='urn:xmpp:blocking'/></iq>",
        )
        .await;
    let on_test = stanzas(harness.seen_on_test());
    assert!(
        on_test[0].ends_with("<unblock xmlns='urn:xmpp:blocking'/></iq>"),
        "{on_test:?}"
    );
    assert_eq!(
        on_test[1],
        "<iq type='result' id='u' to='juliet@example.com/balcony'/>"
    );
    assert_eq!(stanzas(harness.seen_on_other()).len(), 1);
    assert!(harness
        .storage
        .blocklist(&bare("juliet@example.com"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn inbound_messages_and_iqs_are_refused_presence_is_left_to_presence() {
    let mut harness = Harness::new().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    juliet_blocks(&mut harness, "<item jid='romeo@example.com'/>").await;

    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<message id='m' to='juliet@example.com' type='chat'><body>hi</body></message>",
        )
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<iq id='q' to='juliet@example.com/balcony' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    // An error or a result is never answered: dropped.
    harness
        .send(ROMEO, CM_TEST, 10, &format!("<message id='e' to='juliet@example.com/balcony' type='error'>{UNAVAILABLE}</message>"))
        .await;
    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<iq type='result' id='r' to='juliet@example.com/balcony'/>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![
            to_conn(10, &format!("<message id='m' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><body>hi</body>{UNAVAILABLE}</message>")),
            to_conn(10, &format!("<iq id='q' to='romeo@example.com/orchard' from='juliet@example.com/balcony' type='error'><ping xmlns='urn:xmpp:ping'/>{UNAVAILABLE}</iq>")),
        ]
    );
    assert_eq!(
        harness.metric("starling_router_routed_total{decision=\"dropped\",kind=\"iq\"}"),
        1.0
    );
    // Presence goes to the presence service, which applies the lists.
    harness
        .send(ROMEO, CM_TEST, 10, "<presence to='juliet@example.com'/>")
        .await;
    assert_eq!(harness.presence.take_calls().len(), 1);
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn outbound_stanzas_of_every_kind_get_not_acceptable_with_blocked() {
    let mut harness = Harness::new().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness.online(ROMEO, CM_OTHER, 10, 0).await;
    juliet_blocks(&mut harness, "<item jid='romeo@example.com'/>").await;

    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<message id='m' to='romeo@example.com' type='chat'><body>hear me?</body></message>",
        )
        .await;
    harness
        .send(JULIET, CM_TEST, 1, "<iq id='q' to='romeo@example.com/orchard' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<presence id='p' to='romeo@example.com/orchard'/>",
        )
        .await;
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<presence id='s' to='romeo@example.com' type='subscribe'/>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![
            to_conn(1, &format!("<message id='m' to='juliet@example.com/balcony' from='romeo@example.com' type='error'><body>hear me?</body>{BLOCKED}</message>")),
            to_conn(1, &format!("<iq id='q' to='juliet@example.com/balcony' from='romeo@example.com/orchard' type='error'><ping xmlns='urn:xmpp:ping'/>{BLOCKED}</iq>")),
            to_conn(1, &format!("<presence id='p' to='juliet@example.com/balcony' from='romeo@example.com/orchard' type='error'>{BLOCKED}</presence>")),
            to_conn(1, &format!("<presence id='s' to='juliet@example.com/balcony' from='romeo@example.com' type='error'>{BLOCKED}</presence>")),
        ]
    );
    // Nothing reached romeo, nor the presence service.
    assert_eq!(harness.seen_on_other(), Vec::new());
    assert!(harness.presence.take_calls().is_empty());
    // Her own account and her server are never blocked for her.
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq id='own' to='example.com' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            "<iq type='result' id='own' to='juliet@example.com/balcony' from='example.com'/>"
        )]
    );
}

#[tokio::test]
async fn a_domain_item_blocks_every_address_of_it_and_its_subdomains() {
    let mut harness = Harness::new().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    juliet_blocks(&mut harness, "<item jid='montague.net'/>").await;
    for (index, from) in [
        "romeo@montague.net/x",
        "montague.net",
        "bot@chat.montague.net",
    ]
    .iter()
    .enumerate()
    {
        harness
            .send_from_server(&format!("<message id='d{index}' from='{from}' to='juliet@example.com/balcony' type='chat'><body>x</body></message>"))
            .await;
    }
    harness
        .send_from_server("<message id='ok' from='romeo@capulet.net/x' to='juliet@example.com/balcony' type='chat'><body>x</body></message>")
        .await;
    let seen = harness.seen_on_test();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(matches!(&seen[0], Seen::Stanza(_, xml) if xml.contains("id='ok'")));
}

#[tokio::test]
async fn bad_requests_and_the_limit() {
    let mut harness = Harness::new().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    let bad = |id: &str, condition: &str, error_type: &str, payload: &str| {
        to_conn(1, &format!("<iq id='{id}' to='juliet@example.com/balcony' type='error'>{payload}<error type='{error_type}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"))
    };
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq id='e1' type='set'><block xmlns='urn:xmpp:blocking'/></iq>",
        )
        .await;
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq id='e2' type='set'><block xmlns='urn:xmpp:blocking'><item jid='@x'/></block></iq>",
        )
        .await;
    // The harness allows 5 items.
    let six: String = (0..6)
        .map(|i| format!("<item jid='u{i}@spam.example'/>"))
        .collect();
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &format!("<iq id='e3' type='set'><block xmlns='urn:xmpp:blocking'>{six}</block></iq>"),
        )
        .await;
    let seen = stanzas(harness.seen_on_test());
    let expected_prefixes = [
        bad(
            "e1",
            "bad-request",
            "modify",
            "<block xmlns='urn:xmpp:blocking'/>",
        ),
        bad(
            "e2",
            "jid-malformed",
            "modify",
            "<block xmlns='urn:xmpp:blocking'><item jid='@x'/></block>",
        ),
        // The refused request is not echoed back.
        bad("e3", "policy-violation", "modify", ""),
    ];
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (seen, expected) in seen.iter().zip(expected_prefixes) {
        let Seen::Stanza(_, expected) = expected else {
            unreachable!()
        };
        assert!(seen.starts_with(&expected), "{seen}\nexpected {expected}");
    }
    // Five fit; one more in another request does not, and adds nothing.
    let five: String = (0..5)
        .map(|i| format!("<item jid='u{i}@spam.example'/>"))
        .collect();
    juliet_blocks(&mut harness, &five).await;
    harness
        .send(JULIET, CM_TEST, 1, "<iq id='e4' type='set'><block xmlns='urn:xmpp:blocking'><item jid='one-more@spam.example'/></block></iq>")
        .await;
    let seen = stanzas(harness.seen_on_test());
    assert!(
        seen[0].contains("id='e4'") && seen[0].contains("<policy-violation"),
        "{seen:?}"
    );
    assert_eq!(
        harness
            .storage
            .blocklist(&bare("juliet@example.com"))
            .await
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn blocking_sends_unavailable_and_unblocking_current_presence() {
    let mut harness = Harness::new().await;
    let juliet = bare("juliet@example.com");
    let mut romeo_item = RosterItem::new(bare("romeo@example.com"));
    romeo_item.subscription = Subscription::Both;
    harness
        .storage
        .put_roster_item(&juliet, &romeo_item)
        .await
        .unwrap();
    let mut juliet_item = RosterItem::new(juliet.clone());
    juliet_item.subscription = Subscription::Both;
    harness
        .storage
        .put_roster_item(&bare("romeo@example.com"), &juliet_item)
        .await
        .unwrap();
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness.online(ROMEO, CM_OTHER, 10, 0).await;

    juliet_blocks(&mut harness, "<item jid='romeo@example.com'/>").await;
    // juliet_blocks forgot what cm-other saw; block again to see it.
    harness
        .send(JULIET, CM_TEST, 1, "<iq id='u' type='set'><unblock xmlns='urn:xmpp:blocking'><item jid='romeo@example.com'/></unblock></iq>")
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![Seen::Stanza(
            vec![Recipient {
                conn: 10,
                to: Some(ROMEO.into())
            }],
            "<presence from='juliet@example.com/balcony'/>".into()
        )]
    );
    // Juliet gets romeo's presence back.
    let on_test = harness.seen_on_test();
    assert!(
        on_test.contains(&Seen::Stanza(
            vec![Recipient {
                conn: 1,
                to: Some(JULIET.into())
            }],
            "<presence from='romeo@example.com/orchard'/>".into()
        )),
        "{on_test:?}"
    );

    harness
        .send(JULIET, CM_TEST, 1, "<iq id='b2' type='set'><block xmlns='urn:xmpp:blocking'><item jid='romeo@example.com'/></block></iq>")
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![Seen::Stanza(
            vec![Recipient {
                conn: 10,
                to: Some(ROMEO.into())
            }],
            "<presence from='juliet@example.com/balcony' type='unavailable'/>".into()
        )]
    );
}
