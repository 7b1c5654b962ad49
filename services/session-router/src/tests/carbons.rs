//! Message Carbons (XEP-0280): the enable/disable IQs, which messages are
//! copied, to which resources, wrapped how, and at what bus cost.

use super::*;

const ROMEO: &str = "romeo@example.com/orchard";
const ENABLE: &str = "<iq id='on' type='set'><enable xmlns='urn:xmpp:carbons:2'/></iq>";

/// Enable carbons for a bound session, as its client would, and forget the result.
async fn enable(harness: &mut Harness, jid: &str, node: &str, conn: u64) {
    harness.send(jid, node, conn, ENABLE).await;
    harness.seen_on_test();
    harness.seen_on_other();
    assert!(carbons_of(harness, jid).await, "{jid} enabled carbons");
}

async fn carbons_of(harness: &Harness, jid: &str) -> bool {
    harness
        .registry
        .session(&full(jid))
        .await
        .expect("registry")
        .expect("session")
        .carbons
}

/// The copy of `inner` for `account` in `direction` ("sent", "received").
fn carbon(direction: &str, account: &str, message_type: &str, inner: &str) -> String {
    format!(
        "<message from='{account}' type='{message_type}'><{direction} xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></{direction}></message>"
    )
}

/// A stanza published once to several connections of one node, each with its `to`.
fn to_resources(recipients: &[(u64, &str)], stanza: &str) -> Seen {
    Seen::Stanza(
        recipients
            .iter()
            .map(|(conn, to)| Recipient {
                conn: *conn,
                to: Some(to.to_string()),
            })
            .collect(),
        stanza.to_string(),
    )
}

fn carbons_counted(harness: &Harness, direction: &str, outcome: &str) -> f64 {
    harness.metric(&format!(
        "starling_router_carbons_total{{direction=\"{direction}\",outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test]
async fn enable_and_disable_switch_the_session_and_answer_a_result() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    assert!(!carbons_of(&harness, ROMEO).await);

    harness.send(ROMEO, CM_TEST, 10, ENABLE).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            "<iq type='result' id='on' to='romeo@example.com/orchard'/>"
        )]
    );
    assert!(carbons_of(&harness, ROMEO).await);
    // Section 9.1: enabling twice is not an error.
    harness
        .send(ROMEO, CM_TEST, 10, "<iq id='again' type='set' to='romeo@example.com'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(10, "<iq type='result' id='again' to='romeo@example.com/orchard' from='romeo@example.com'/>")]
    );
    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<iq id='off' type='set' to='example.com'><disable xmlns='urn:xmpp:carbons:2'/></iq>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            "<iq type='result' id='off' to='romeo@example.com/orchard' from='example.com'/>"
        )]
    );
    assert!(!carbons_of(&harness, ROMEO).await);
}

#[tokio::test]
async fn carbons_of_another_account_or_by_get_are_refused() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 0)
        .await;

    // Sections 4.1 and 5.1: not-allowed for another account's carbons.
    harness
        .send(ROMEO, CM_TEST, 10, "<iq id='x1' type='set' to='juliet@example.com'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(10, "<iq id='x1' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><disable xmlns='urn:xmpp:carbons:2'/><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<iq id='x2' type='get'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(10, "<iq id='x2' to='romeo@example.com/orchard' type='error'><enable xmlns='urn:xmpp:carbons:2'/><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
    assert!(!carbons_of(&harness, ROMEO).await);
    assert!(!carbons_of(&harness, "juliet@example.com/balcony").await);
}

#[tokio::test]
async fn switched_off_carbons_are_neither_answered_nor_advertised_nor_copied() {
    let mut harness = Harness::with_options(HarnessOptions {
        carbons: false,
        ..Default::default()
    })
    .await;
    assert!(!harness
        .router
        .features
        .disco_features()
        .contains(&"urn:xmpp:carbons:2"));
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("romeo@example.com/garden", CM_TEST, 11, 0)
        .await;
    harness.send(ROMEO, CM_TEST, 10, ENABLE).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(10, "<iq id='on' to='romeo@example.com/orchard' type='error'><enable xmlns='urn:xmpp:carbons:2'/><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
    // Even a record that says enabled (re-registered by an edge) gets no copy.
    harness
        .registry
        .set_carbons(&full("romeo@example.com/garden"), &addr(CM_TEST, 11), true)
        .await
        .unwrap();
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat'><body>hi</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;
    assert_eq!(harness.seen_on_other(), vec![to_conn(1, message)]);
    assert_eq!(harness.seen_on_test(), Vec::new());
}

#[tokio::test]
async fn a_sent_message_is_copied_to_the_senders_other_enabled_resources_in_one_publish_per_node() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("romeo@example.com/garden", CM_TEST, 11, 0)
        .await;
    harness
        .online("romeo@example.com/kitchen", CM_TEST, 12, 0)
        .await;
    harness
        .online("romeo@example.com/pocket", CM_OTHER, 13, 0)
        .await;
    harness
        .online("romeo@example.com/tower", CM_OTHER, 14, 0)
        .await;
    harness
        .online("nurse@example.com/hall", CM_OTHER, 1, 0)
        .await;
    // The sender enabled carbons too: it still gets no copy of its own message.
    enable(&mut harness, ROMEO, CM_TEST, 10).await;
    enable(&mut harness, "romeo@example.com/garden", CM_TEST, 11).await;
    enable(&mut harness, "romeo@example.com/kitchen", CM_TEST, 12).await;
    enable(&mut harness, "romeo@example.com/pocket", CM_OTHER, 13).await;
    // The tower never enabled carbons.

    let message = "<message from='romeo@example.com/orchard' to='nurse@example.com/hall' type='chat' id='s1'><body>Commend me to thy lady</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;

    let copy = carbon(
        "sent",
        "romeo@example.com",
        "chat",
        "<message xmlns='jabber:client' from='romeo@example.com/orchard' to='nurse@example.com/hall' type='chat' id='s1'><body>Commend me to thy lady</body></message>",
    );
    // Two resources on cm-test, one envelope; the original then the copy on cm-other.
    assert_eq!(
        harness.seen_on_test(),
        vec![to_resources(
            &[
                (11, "romeo@example.com/garden"),
                (12, "romeo@example.com/kitchen")
            ],
            &copy
        )]
    );
    assert_eq!(
        harness.seen_on_other(),
        vec![
            to_conn(1, message),
            to_resources(&[(13, "romeo@example.com/pocket")], &copy)
        ]
    );
    assert_eq!(carbons_counted(&harness, "sent", "delivered"), 3.0);
}

#[tokio::test]
async fn a_message_to_a_full_jid_is_copied_to_the_recipients_other_enabled_resources() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    harness
        .online("juliet@example.com/chamber", CM_TEST, 2, 0)
        .await;
    harness
        .online("juliet@example.com/tablet", CM_OTHER, 3, 0)
        .await;
    enable(&mut harness, "juliet@example.com/balcony", CM_OTHER, 1).await;
    enable(&mut harness, "juliet@example.com/chamber", CM_TEST, 2).await;

    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat' id='r1'><body>What light</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;

    // Section 6: the addressed resource gets the message, never a copy; the
    // other enabled one a copy; the tablet (not enabled) nothing.
    assert_eq!(harness.seen_on_other(), vec![to_conn(1, message)]);
    assert_eq!(
        harness.seen_on_test(),
        vec![to_resources(
            &[(2, "juliet@example.com/chamber")],
            &carbon(
                "received",
                "juliet@example.com",
                "chat",
                "<message xmlns='jabber:client' from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat' id='r1'><body>What light</body></message>"
            )
        )]
    );
    assert_eq!(carbons_counted(&harness, "received", "delivered"), 1.0);
}

#[tokio::test]
async fn a_bare_jid_message_is_copied_to_the_enabled_resources_it_did_not_reach() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 5)
        .await;
    harness
        .online("juliet@example.com/chamber", CM_TEST, 2, 1)
        .await;
    harness
        .online("juliet@example.com/hidden", CM_TEST, 3, -1)
        .await;
    harness
        .bind("juliet@example.com/connecting", CM_TEST, 4)
        .await;
    for (jid, node, conn) in [
        ("juliet@example.com/balcony", CM_OTHER, 1),
        ("juliet@example.com/chamber", CM_TEST, 2),
        ("juliet@example.com/hidden", CM_TEST, 3),
        ("juliet@example.com/connecting", CM_TEST, 4),
    ] {
        enable(&mut harness, jid, node, conn).await;
    }

    // Normal with a body: eligible; the highest priority resource gets it.
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' id='b1'><body>Good night</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;
    assert_eq!(harness.seen_on_other(), vec![to_conn(1, message)]);
    let Seen::Stanza(mut recipients, copy) = harness.seen_on_test().pop().expect("copies") else {
        panic!("a stanza");
    };
    recipients.sort_by_key(|recipient| recipient.conn);
    assert_eq!(
        recipients
            .iter()
            .map(|recipient| recipient.conn)
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(copy
        .starts_with("<message from='juliet@example.com'><received xmlns='urn:xmpp:carbons:2'>"));
}

#[tokio::test]
async fn a_message_stored_offline_is_copied_to_available_enabled_resources_only() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("juliet@example.com/hidden", CM_TEST, 3, -1)
        .await;
    harness
        .bind("juliet@example.com/connecting", CM_TEST, 4)
        .await;
    enable(&mut harness, "juliet@example.com/hidden", CM_TEST, 3).await;
    enable(&mut harness, "juliet@example.com/connecting", CM_TEST, 4).await;

    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='o1'><body>later</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;
    // Stored for the next available session (the connecting one gets it
    // with its initial presence); the available one at -1 sees a copy now.
    assert_eq!(harness.offline_of("juliet@example.com").await.len(), 1);
    let seen = harness.seen_on_test();
    assert_eq!(seen.len(), 1);
    let Seen::Stanza(recipients, _) = &seen[0] else {
        panic!("a stanza");
    };
    assert_eq!(
        recipients
            .iter()
            .map(|recipient| recipient.conn)
            .collect::<Vec<_>>(),
        vec![3]
    );
}

#[tokio::test]
async fn private_no_copy_groupchat_and_headline_are_not_copied() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("romeo@example.com/garden", CM_TEST, 11, 0)
        .await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    harness
        .online("juliet@example.com/chamber", CM_OTHER, 2, 0)
        .await;
    enable(&mut harness, "romeo@example.com/garden", CM_TEST, 11).await;
    enable(&mut harness, "juliet@example.com/chamber", CM_OTHER, 2).await;

    for message in [
        "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat'><body>secret</body><no-copy xmlns='urn:xmpp:hints'/></message>",
        "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='groupchat'><body>room</body></message>",
        "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='headline'><body>news</body></message>",
        "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony'><subject>no body</subject></message>",
    ] {
        harness.send(ROMEO, CM_TEST, 10, message).await;
        assert_eq!(harness.seen_on_other(), vec![to_conn(1, message)], "{message}");
        assert_eq!(harness.seen_on_test(), Vec::new(), "{message}");
    }
}

#[tokio::test]
async fn a_message_carrying_a_carbon_is_delivered_but_never_copied() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("romeo@example.com/garden", CM_TEST, 11, 0)
        .await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    harness
        .online("juliet@example.com/chamber", CM_OTHER, 2, 0)
        .await;
    enable(&mut harness, "romeo@example.com/garden", CM_TEST, 11).await;
    enable(&mut harness, "juliet@example.com/chamber", CM_OTHER, 2).await;

    // Section 11: it comes from Romeo's full JID, so Juliet's client must
    // ignore it as a carbon; the server does not wrap it again.
    let forged = "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='nurse@example.com/hall' to='juliet@example.com/balcony' type='chat'><body>forged</body></message></forwarded></received></message>";
    harness.send(ROMEO, CM_TEST, 10, forged).await;
    assert_eq!(harness.seen_on_other(), vec![to_conn(1, forged)]);
    assert_eq!(harness.seen_on_test(), Vec::new());
}

#[tokio::test]
async fn a_message_to_ones_own_account_is_copied_once_to_the_resources_it_did_not_reach() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("romeo@example.com/garden", CM_TEST, 11, 0)
        .await;
    harness
        .online("romeo@example.com/kitchen", CM_TEST, 12, 0)
        .await;
    enable(&mut harness, ROMEO, CM_TEST, 10).await;
    enable(&mut harness, "romeo@example.com/garden", CM_TEST, 11).await;
    enable(&mut harness, "romeo@example.com/kitchen", CM_TEST, 12).await;

    let message = "<message from='romeo@example.com/orchard' to='romeo@example.com/garden' type='chat'><body>note to self</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;
    // The garden gets it, the kitchen one received copy; no sent copy, and
    // nothing for the sender.
    assert_eq!(
        harness.seen_on_test(),
        vec![
            to_conn(11, message),
            to_resources(
                &[(12, "romeo@example.com/kitchen")],
                &carbon(
                    "received",
                    "romeo@example.com",
                    "chat",
                    "<message xmlns='jabber:client' from='romeo@example.com/orchard' to='romeo@example.com/garden' type='chat'><body>note to self</body></message>"
                )
            )
        ]
    );
}

#[tokio::test]
async fn a_bounced_message_gets_no_sent_copy() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_TEST, 10, 0).await;
    harness
        .online("romeo@example.com/garden", CM_TEST, 11, 0)
        .await;
    enable(&mut harness, "romeo@example.com/garden", CM_TEST, 11).await;

    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='tybalt@example.com' type='chat'><body>?</body></message>")
        .await;
    let seen = harness.seen_on_test();
    assert_eq!(seen.len(), 1, "only the error: {seen:?}");
    assert!(
        matches!(&seen[0], Seen::Stanza(recipients, xml) if recipients[0].conn == 10 && xml.contains("service-unavailable"))
    );
}

#[tokio::test]
async fn a_copy_that_cannot_be_delivered_is_dropped_not_rerouted() {
    let mut harness = Harness::new().await;
    harness
        .online("romeo@example.com/garden", CM_TEST, 11, 0)
        .await;
    enable(&mut harness, "romeo@example.com/garden", CM_TEST, 11).await;

    let copy = xml(&format!(
        "<message from='romeo@example.com' to='romeo@example.com/gone' type='chat'>{}</message>",
        "<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>x</body></message></forwarded></sent>"
    ));
    harness
        .router
        .undeliverable(copy, &addr(CM_OTHER, 99))
        .await
        .expect("handled");
    harness.assert_nothing_delivered();
    assert!(harness.offline_of("romeo@example.com").await.is_empty());
    assert_eq!(carbons_counted(&harness, "sent", "unreached"), 1.0);
}
