//! Multi-user chat (XEP-0045): what the router hands to the MUC service
//! and how the room's stanzas reach occupants on two nodes.

use super::*;

const JULIET: &str = "juliet@example.com/balcony";
const ROMEO: &str = "romeo@example.com/orchard";
const ROOM: &str = "capulet@conference.example.com";

fn muc_harness() -> HarnessOptions {
    HarnessOptions {
        muc: true,
        ..HarnessOptions::default()
    }
}

/// A join as the presence service routes it (directed presence, from the server).
async fn join(harness: &Harness, jid: &str, nick: &str) {
    harness
        .send_from_server(&format!("<presence from='{jid}' to='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"))
        .await;
}

fn stanzas(seen: &[Seen]) -> Vec<(Vec<Recipient>, String)> {
    seen.iter()
        .filter_map(|seen| match seen {
            Seen::Stanza(recipients, xml) => Some((recipients.clone(), xml.clone())),
            Seen::Close(..) => None,
        })
        .collect()
}

#[tokio::test]
async fn a_room_message_is_one_publish_per_node_with_each_occupants_address() {
    let mut harness = Harness::with_options(muc_harness()).await;
    harness.online(JULIET, CM_TEST, 10, 0).await;
    harness.online(ROMEO, CM_OTHER, 20, 0).await;
    join(&harness, JULIET, "jul").await;
    harness
        .send(JULIET, CM_TEST, 10, &format!("<iq from='{JULIET}' to='{ROOM}' type='set' id='c1'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"))
        .await;
    join(&harness, ROMEO, "rom").await;
    harness.seen_on_test();
    harness.seen_on_other();
    harness
        .send(JULIET, CM_TEST, 10, &format!("<message from='{JULIET}' to='{ROOM}' type='groupchat' id='g1'><body>hi</body></message>"))
        .await;
    let on_test = stanzas(&harness.seen_on_test());
    let on_other = stanzas(&harness.seen_on_other());
    assert_eq!(on_test.len(), 1);
    assert_eq!(on_other.len(), 1);
    assert_eq!(
        on_test[0].0,
        vec![Recipient {
            conn: 10,
            to: Some(JULIET.into())
        }]
    );
    assert_eq!(
        on_other[0].0,
        vec![Recipient {
            conn: 20,
            to: Some(ROMEO.into())
        }]
    );
    assert!(on_other[0]
        .1
        .contains("from='capulet@conference.example.com/jul'"));
    // The server lists the service (XEP-0045 section 6.1).
    harness
        .send(ROMEO, CM_OTHER, 20, "<iq from='romeo@example.com/orchard' to='example.com' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    let items = stanzas(&harness.seen_on_other());
    assert!(
        items[0].1.contains("jid='conference.example.com'"),
        "{items:?}"
    );
}

#[tokio::test]
async fn the_room_hears_a_session_end_and_without_muc_the_domain_is_remote() {
    let mut harness = Harness::with_options(muc_harness()).await;
    harness.online(JULIET, CM_TEST, 10, 0).await;
    join(&harness, JULIET, "jul").await;
    harness.seen_on_test();
    // The presence service's unavailable to the directed-presence target (RFC 6121 section 4.6.3).
    harness
        .send_from_server(&format!(
            "<presence from='{JULIET}' to='{ROOM}/jul' type='unavailable'/>"
        ))
        .await;
    let own = stanzas(&harness.seen_on_test());
    assert!(
        own[0].1.contains("type='unavailable'") && own[0].1.contains("code='110'"),
        "{own:?}"
    );

    let mut plain = Harness::new().await;
    plain.online(JULIET, CM_TEST, 10, 0).await;
    plain
        .send(JULIET, CM_TEST, 10, &format!("<message from='{JULIET}' to='{ROOM}' type='groupchat' id='g1'><body>hi</body></message>"))
        .await;
    let bounced = stanzas(&plain.seen_on_test());
    assert!(
        bounced[0].1.contains("remote-server-not-found"),
        "{bounced:?}"
    );
}
