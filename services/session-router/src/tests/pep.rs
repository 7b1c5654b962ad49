//! PEP (XEP-0163 over XEP-0060) through the router: publish with the
//! notifications only interested, subscribed sessions get; the errors
//! XEP-0060 names; and the XEP-0115 query the router sends for an unknown
//! `ver`, whose answer is verified before storage learns it.

use starling_api::{CapsRecord, RosterItem, Subscription};
use starling_bus::Recipient;

use super::*;

const JULIET: &str = "juliet@example.com/balcony";
const ROMEO: &str = "romeo@example.com/orchard";
const NURSE: &str = "nurse@example.com/chamber";
const MOOD: &str = "http://jabber.org/protocol/mood";
/// The XEP-0115 section 5.2 example: its features and `ver`.
const EXODUS_VER: &str = "QgayPKawpkPSDYmwT/WM94uAlu0=";
const EXODUS_QUERY: &str = "<identity category='client' name='Exodus 0.9.1' type='pc'/><feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/>";

fn caps_presence(ver: &str) -> String {
    format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://code.google.com/p/exodus' ver='{ver}'/></presence>")
}

fn stanzas(seen: Vec<Seen>) -> Vec<(Vec<Recipient>, String)> {
    seen.into_iter()
        .map(|seen| match seen {
            Seen::Stanza(recipients, xml) => (recipients, xml),
            Seen::Close(..) => panic!("nothing is closed"),
        })
        .collect()
}

/// Juliet gives romeo a subscription (`from`); romeo and the nurse are
/// online on cm-other with capabilities asking for mood notifications.
async fn juliet_and_her_contacts(harness: &mut Harness) {
    let juliet = bare("juliet@example.com");
    let romeo = bare("romeo@example.com");
    let mut romeo_item = RosterItem::new(romeo.clone());
    romeo_item.subscription = Subscription::From;
    harness
        .storage
        .put_roster_item(&juliet, &romeo_item)
        .await
        .unwrap();
    let mut juliet_item = RosterItem::new(juliet.clone());
    juliet_item.subscription = Subscription::To;
    harness
        .storage
        .put_roster_item(&romeo, &juliet_item)
        .await
        .unwrap();
    harness
        .storage
        .put_caps(&CapsRecord {
            hash: "sha-1".into(),
            ver: "mood=".into(),
            features: vec![format!("{MOOD}+notify")],
        })
        .await
        .unwrap();
    harness.online(JULIET, CM_TEST, 1, 0).await;
    for (jid, conn) in [(ROMEO, 2), (NURSE, 3)] {
        let bound = harness.online(jid, CM_OTHER, conn, 0).await;
        harness
            .registry
            .set_presence(
                &bound,
                &addr(CM_OTHER, conn),
                true,
                0,
                Some(caps_presence("mood=")),
            )
            .await
            .unwrap();
    }
    // A second resource of romeo without the interest.
    harness
        .online("romeo@example.com/hall", CM_OTHER, 4, 0)
        .await;
}

#[tokio::test]
async fn publish_notifies_the_interested_subscribed_resources_only() {
    let mut harness = Harness::new().await;
    juliet_and_her_contacts(&mut harness).await;
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='p1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{MOOD}'><item id='current'><mood xmlns='{MOOD}'><happy/></mood></item></publish></pubsub></iq>"))
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, &format!("<iq type='result' id='p1' to='juliet@example.com/balcony'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{MOOD}'><item id='current'/></publish></pubsub></iq>"))]
    );
    // One envelope for cm-other, to romeo's interested resource only: not
    // his other resource, not the nurse (no subscription).
    let on_other = stanzas(harness.seen_on_other());
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    let (recipients, xml) = &on_other[0];
    assert_eq!(
        recipients,
        &vec![Recipient {
            conn: 2,
            to: Some(ROMEO.to_string())
        }]
    );
    assert!(
        xml.starts_with("<message from='juliet@example.com' type='headline' id='"),
        "{xml}"
    );
    assert!(xml.ends_with(&format!("<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='{MOOD}'><item id='current'><mood xmlns='{MOOD}'><happy/></mood></item></items></event></message>")), "{xml}");
    assert_eq!(
        harness.metric("starling_router_pep_notifications_total{outcome=\"delivered\"}"),
        1.0
    );

    // The items, to romeo (subscribed) and to the nurse (not).
    harness
        .send(ROMEO, CM_OTHER, 2, &format!("<iq id='i1' to='juliet@example.com' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='{MOOD}'/></pubsub></iq>"))
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(2, &format!("<iq type='result' id='i1' to='romeo@example.com/orchard' from='juliet@example.com'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='{MOOD}'><item id='current'><mood xmlns='{MOOD}'><happy/></mood></item></items></pubsub></iq>"))]
    );
    harness
        .send(NURSE, CM_OTHER, 3, &format!("<iq id='i2' to='juliet@example.com' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='{MOOD}'/></pubsub></iq>"))
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(3, "<iq id='i2' to='nurse@example.com/chamber' from='juliet@example.com' type='error'><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><presence-subscription-required xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );

    // Retract, notified to the same resource.
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='r1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><retract node='{MOOD}' notify='true'><item id='current'/></retract></pubsub></iq>"))
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            "<iq type='result' id='r1' to='juliet@example.com/balcony'/>"
        )]
    );
    let on_other = stanzas(harness.seen_on_other());
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    assert!(on_other[0].1.ends_with(&format!("<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='{MOOD}'><retract id='current'/></items></event></message>")));
}

#[tokio::test]
async fn publish_errors_name_the_conditions_of_xep_0060() {
    let mut harness = Harness::new().await;
    juliet_and_her_contacts(&mut harness).await;
    harness.seen_on_other();
    let publish = |to: &str, node: &str, options: &str| {
        format!("<iq id='e' {to} type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item id='1'><mood xmlns='{MOOD}'/></item></publish>{options}</pubsub></iq>")
    };
    // Another account's node: forbidden.
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &publish("to='romeo@example.com'", MOOD, ""),
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, "<iq id='e' to='juliet@example.com/balcony' from='romeo@example.com' type='error'><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>only the owner of a personal eventing service may change it</text></error></iq>")]
    );
    // A node created with whitelist access, then published to with presence
    // as a precondition: conflict + precondition-not-met.
    let options = |access: &str| {
        format!("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='pubsub#access_model'><value>{access}</value></field></x></publish-options>")
    };
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &publish("", "urn:xmpp:bookmarks:1", &options("whitelist")),
        )
        .await;
    let seen = stanzas(harness.seen_on_test());
    assert!(
        seen[0].1.starts_with("<iq type='result' id='e'"),
        "{seen:?}"
    );
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &publish("", "urn:xmpp:bookmarks:1", &options("presence")),
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, "<iq id='e' to='juliet@example.com/balcony' type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
    // Romeo is subscribed but not on the whitelist.
    harness
        .send(ROMEO, CM_OTHER, 2, "<iq id='w' to='juliet@example.com' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:bookmarks:1'/></pubsub></iq>")
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(2, "<iq id='w' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><closed-node xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
    // Too big a payload (pep.max_item_bytes, 65536 by default).
    let big = "x".repeat(70_000);
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='b' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{MOOD}'><item><mood xmlns='{MOOD}'><text>{big}</text></mood></item></publish></pubsub></iq>"))
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, "<iq id='b' to='juliet@example.com/balcony' type='error'><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>an item payload has at most 65536 bytes (pep.max_item_bytes)</text><payload-too-big xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
    // No item; an unknown node; a subscribe to an unknown node.
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='n' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{MOOD}'/></pubsub></iq>"))
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, "<iq id='n' to='juliet@example.com/balcony' type='error'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><item-required xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
    harness
        .send(ROMEO, CM_OTHER, 2, "<iq id='u' to='juliet@example.com' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:none'/></pubsub></iq>")
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(2, "<iq id='u' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
    harness
        .send(ROMEO, CM_OTHER, 2, "<iq id='s' to='juliet@example.com' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='urn:none' jid='romeo@example.com'/></pubsub></iq>")
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(2, "<iq id='s' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
    // Nothing was notified for any of these.
    assert_eq!(
        harness.metric("starling_router_pep_notifications_total{outcome=\"delivered\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_used_caps_record_is_reported_seen_at_most_once_a_day() {
    let mut harness = Harness::new().await;
    juliet_and_her_contacts(&mut harness).await;
    let publish = format!("<iq id='p1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{MOOD}'><item id='current'><mood xmlns='{MOOD}'><happy/></mood></item></publish></pubsub></iq>");
    // The notification reads romeo's record (and reports it seen).
    harness.send(JULIET, CM_TEST, 1, &publish).await;
    assert_eq!(stanzas(harness.seen_on_other()).len(), 1);
    // Pruned from storage meanwhile: this router still knows it, and does
    // not write it again within the day.
    let sqlite = harness.sqlite.clone().unwrap();
    assert_eq!(sqlite.purge_caps_seen_before(i64::MAX).await.unwrap(), 1);
    harness.send(JULIET, CM_TEST, 1, &publish).await;
    assert_eq!(stanzas(harness.seen_on_other()).len(), 1);
    assert_eq!(
        harness
            .storage
            .caps_features("sha-1", "mood=")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn an_unknown_ver_is_asked_for_and_learnt_only_when_it_verifies() {
    let mut harness = Harness::new().await;
    harness.online(ROMEO, CM_OTHER, 2, 0).await;
    harness.online(NURSE, CM_OTHER, 3, 0).await;
    harness.seen_on_other();
    harness
        .send(ROMEO, CM_OTHER, 2, &caps_presence(EXODUS_VER))
        .await;
    let seen = stanzas(harness.seen_on_other());
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (recipients, query) = &seen[0];
    assert_eq!(recipients, &vec![Recipient::conn(2)]);
    let id_start = query.find("id='").unwrap() + 4;
    let id = &query[id_start..id_start + query[id_start..].find('\'').unwrap()];
    assert!(id.starts_with("caps-") && id.ends_with(EXODUS_VER), "{id}");
    assert_eq!(
        query.replace(id, "ID"),
        format!("<iq type='get' from='example.com' to='romeo@example.com/orchard' id='ID'><query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#{EXODUS_VER}'/></iq>")
    );

    // An answer that does not hash to the ver (a feature added) is ignored.
    harness
        .send(ROMEO, CM_OTHER, 2, &format!("<iq id='{id}' to='example.com' type='result'><query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#{EXODUS_VER}'>{EXODUS_QUERY}<feature var='{MOOD}+notify'/></query></iq>"))
        .await;
    assert_eq!(
        harness
            .storage
            .caps_features("sha-1", EXODUS_VER)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        harness.metric("starling_router_caps_queries_total{outcome=\"refused\"}"),
        1.0
    );
    // The true answer (from another client even: a ver names its feature
    // set, whoever answers) is kept for every router.
    harness
        .send(NURSE, CM_OTHER, 3, &format!("<iq id='{id}' to='example.com' type='result'><query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#{EXODUS_VER}'>{EXODUS_QUERY}</query></iq>"))
        .await;
    assert_eq!(
        harness
            .storage
            .caps_features("sha-1", EXODUS_VER)
            .await
            .unwrap(),
        Some(vec![
            "http://jabber.org/protocol/caps".to_string(),
            "http://jabber.org/protocol/disco#info".to_string(),
            "http://jabber.org/protocol/disco#items".to_string(),
            "http://jabber.org/protocol/muc".to_string(),
        ])
    );
    assert_eq!(
        harness.metric("starling_router_caps_queries_total{outcome=\"verified\"}"),
        1.0
    );
    // Known now: the nurse's presence with the same ver is not asked about.
    harness
        .send(NURSE, CM_OTHER, 3, &caps_presence(EXODUS_VER))
        .await;
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn a_blocked_contact_gets_no_notification() {
    let mut harness = Harness::new().await;
    juliet_and_her_contacts(&mut harness).await;
    harness
        .send(JULIET, CM_TEST, 1, "<iq id='b' type='set'><block xmlns='urn:xmpp:blocking'><item jid='romeo@example.com'/></block></iq>")
        .await;
    harness.seen_on_test();
    harness.seen_on_other();
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='p' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{MOOD}'><item id='1'><mood xmlns='{MOOD}'/></item></publish></pubsub></iq>"))
        .await;
    let seen = stanzas(harness.seen_on_test());
    assert!(
        seen[0].1.starts_with("<iq type='result' id='p'"),
        "{seen:?}"
    );
    assert_eq!(harness.seen_on_other(), Vec::new());
}

fn access_options(access: &str, groups: &[&str]) -> String {
    let groups: String = groups
        .iter()
        .map(|group| format!("<value>{group}</value>"))
        .collect();
    format!("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='pubsub#access_model'><value>{access}</value></field><field var='pubsub#roster_groups_allowed'>{groups}</field></x></publish-options>")
}

fn mood_publish(id: &str, options: &str) -> String {
    format!("<iq id='p-{id}' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{MOOD}'><item id='{id}'><mood xmlns='{MOOD}'><happy/></mood></item></publish>{options}</pubsub></iq>")
}

const ITEMS_BY_ROMEO: &str = "<iq id='i' to='juliet@example.com' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='http://jabber.org/protocol/mood'/></pubsub></iq>";

#[tokio::test]
async fn a_roster_node_admits_subscribed_contacts_in_its_groups_only() {
    let mut harness = Harness::new().await;
    juliet_and_her_contacts(&mut harness).await;
    harness.seen_on_other();
    // Romeo has a subscription but no group: not told, may not read.
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &mood_publish("1", &access_options("roster", &["Friends"])),
        )
        .await;
    harness.seen_on_test();
    assert_eq!(harness.seen_on_other(), Vec::new());
    harness.send(ROMEO, CM_OTHER, 2, ITEMS_BY_ROMEO).await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(2, "<iq id='i' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><not-in-roster-group xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
    // In the group Friends: told, and may read.
    let juliet = bare("juliet@example.com");
    let mut romeo_item = harness
        .storage
        .roster_item(&juliet, &bare("romeo@example.com"))
        .await
        .unwrap()
        .unwrap();
    romeo_item.groups = vec!["Friends".into()];
    harness
        .storage
        .put_roster_item(&juliet, &romeo_item)
        .await
        .unwrap();
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &mood_publish("2", &access_options("roster", &["Friends"])),
        )
        .await;
    let on_other = stanzas(harness.seen_on_other());
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    assert_eq!(
        on_other[0].0,
        vec![Recipient {
            conn: 2,
            to: Some(ROMEO.to_string())
        }]
    );
    assert!(on_other[0].1.contains("<item id='2'>"), "{on_other:?}");
    harness.send(ROMEO, CM_OTHER, 2, ITEMS_BY_ROMEO).await;
    let items = stanzas(harness.seen_on_other());
    assert!(
        items[0].1.starts_with("<iq type='result' id='i'"),
        "{items:?}"
    );
    // Other groups as a precondition: the node's groups differ.
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &mood_publish("3", &access_options("roster", &["Family"])),
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![
            to_conn(1, "<iq type='result' id='p-2' to='juliet@example.com/balcony'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='http://jabber.org/protocol/mood'><item id='2'/></publish></pubsub></iq>"),
            to_conn(1, "<iq id='p-3' to='juliet@example.com/balcony' type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>"),
        ]
    );
    // The nurse (no roster item) may not subscribe either.
    harness
        .send(NURSE, CM_OTHER, 3, &format!("<iq id='s' to='juliet@example.com' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='{MOOD}' jid='nurse@example.com'/></pubsub></iq>"))
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(3, "<iq id='s' to='nurse@example.com/chamber' from='juliet@example.com' type='error'><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><not-in-roster-group xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
}

fn approval(allow: bool) -> String {
    format!("<message to='juliet@example.com' id='approve1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_authorization</value></field><field var='pubsub#node'><value>{MOOD}</value></field><field var='pubsub#subscriber_jid'><value>nurse@example.com</value></field><field var='pubsub#allow'><value>{allow}</value></field></x></message>")
}

#[tokio::test]
async fn an_authorize_node_notifies_only_the_subscribers_its_owner_approved() {
    let mut harness = Harness::new().await;
    juliet_and_her_contacts(&mut harness).await;
    harness.seen_on_other();
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &mood_publish("1", &access_options("authorize", &[])),
        )
        .await;
    harness.seen_on_test();
    // Romeo's presence subscription and +notify are not enough.
    assert_eq!(harness.seen_on_other(), Vec::new());
    harness.send(ROMEO, CM_OTHER, 2, ITEMS_BY_ROMEO).await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(2, "<iq id='i' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><not-subscribed xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
    // The nurse (no roster item at all) asks: pending, and juliet is asked.
    let subscribe = format!("<iq id='s' to='juliet@example.com' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='{MOOD}' jid='nurse@example.com'/></pubsub></iq>");
    harness.send(NURSE, CM_OTHER, 3, &subscribe).await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(3, &format!("<iq type='result' id='s' to='nurse@example.com/chamber' from='juliet@example.com'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscription node='{MOOD}' jid='nurse@example.com' subscription='pending'/></pubsub></iq>"))]
    );
    let asked = stanzas(harness.seen_on_test());
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].0, vec![Recipient::conn(1)]);
    assert!(
        asked[0]
            .1
            .starts_with("<message from='juliet@example.com' to='juliet@example.com' id='"),
        "{asked:?}"
    );
    assert!(asked[0].1.contains(&format!("<field var='pubsub#node' type='text-single' label='Node ID'><value>{MOOD}</value></field><field var='pubsub#subscriber_jid' type='jid-single' label='Subscriber Address'><value>nurse@example.com</value></field>")), "{asked:?}");
    // Asking again while pending; asking for someone else.
    harness.send(NURSE, CM_OTHER, 3, &subscribe).await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(3, "<iq id='s' to='nurse@example.com/chamber' from='juliet@example.com' type='error'><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><pending-subscription xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
    harness
        .send(ROMEO, CM_OTHER, 2, &subscribe.replace("id='s'", "id='x'"))
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(2, "<iq id='x' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><invalid-jid xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>")]
    );
    // Pending is not subscribed: a publish tells the nurse nothing.
    harness
        .send(JULIET, CM_TEST, 1, &mood_publish("2", ""))
        .await;
    harness.seen_on_test();
    assert_eq!(harness.seen_on_other(), Vec::new());

    // Juliet approves (a message to her own bare JID, which is not
    // delivered to her resources): the nurse is told, and gets the last item.
    harness.send(JULIET, CM_TEST, 1, &approval(true)).await;
    assert_eq!(harness.seen_on_test(), Vec::new());
    let told = stanzas(harness.seen_on_other());
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(told[0].1.ends_with(&format!("<pubsub xmlns='http://jabber.org/protocol/pubsub'><subscription node='{MOOD}' jid='nurse@example.com' subscription='subscribed'/></pubsub></message>")), "{told:?}");
    assert_eq!(
        told[1].0,
        vec![Recipient {
            conn: 3,
            to: Some(NURSE.to_string())
        }]
    );
    assert!(told[1].1.contains("<item id='2'>"), "{told:?}");
    // The nurse may read; a publish reaches her (no +notify needed for an
    // explicit subscription), not romeo.
    harness
        .send(
            NURSE,
            CM_OTHER,
            3,
            &ITEMS_BY_ROMEO.replace("id='i'", "id='n'"),
        )
        .await;
    let items = stanzas(harness.seen_on_other());
    assert!(
        items[0].1.starts_with("<iq type='result' id='n'"),
        "{items:?}"
    );
    harness
        .send(JULIET, CM_TEST, 1, &mood_publish("3", ""))
        .await;
    harness.seen_on_test();
    let on_other = stanzas(harness.seen_on_other());
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    assert_eq!(
        on_other[0].0,
        vec![Recipient {
            conn: 3,
            to: Some(NURSE.to_string())
        }]
    );
    // The owner lists and removes the subscription: the nurse is told.
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='l' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><subscriptions node='{MOOD}'/></pubsub></iq>"))
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, &format!("<iq type='result' id='l' to='juliet@example.com/balcony'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><subscriptions node='{MOOD}'><subscription jid='nurse@example.com' subscription='subscribed'/></subscriptions></pubsub></iq>"))]
    );
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='m' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><subscriptions node='{MOOD}'><subscription jid='nurse@example.com' subscription='none'/></subscriptions></pubsub></iq>"))
        .await;
    harness.seen_on_test();
    let told = stanzas(harness.seen_on_other());
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].1.contains("subscription='none'"), "{told:?}");
    harness
        .send(JULIET, CM_TEST, 1, &mood_publish("4", ""))
        .await;
    assert_eq!(harness.seen_on_other(), Vec::new());
    // An approval for no pending subscription: item-not-found to the owner.
    harness.seen_on_test();
    harness.send(JULIET, CM_TEST, 1, &approval(false)).await;
    let bounced = stanzas(harness.seen_on_test());
    assert!(bounced[0].1.contains("<item-not-found "), "{bounced:?}");
}
