//! Bookmarks conversion (XEP-0411): private XML storage and the PEP node
//! `storage:bookmarks` kept in step, the PEP copy the owner's alone.

use super::*;

const PHONE: &str = "juliet@example.com/phone";
const LAPTOP: &str = "juliet@example.com/laptop";

fn storage_xml(room: &str) -> String {
    format!("<storage xmlns='storage:bookmarks'><conference jid='{room}' autojoin='true'><nick>juliet</nick></conference></storage>")
}

async fn pep_storage(harness: &Harness) -> Vec<(String, String)> {
    harness
        .storage
        .pep_items(&bare("juliet@example.com"), "storage:bookmarks", &[], None)
        .await
        .unwrap()
        .into_iter()
        .map(|item| (item.id, item.payload_xml))
        .collect()
}

fn conversions(harness: &Harness, direction: &str, outcome: &str) -> f64 {
    harness.metric(&format!(
        "starling_router_conversions_total{{conversion=\"bookmarks\",direction=\"{direction}\",outcome=\"{outcome}\"}}"
    ))
}

/// Juliet's phone (no interest) and laptop (storage:bookmarks+notify) online.
async fn juliet_online(harness: &mut Harness) {
    harness.online(PHONE, CM_TEST, 1, 0).await;
    harness
        .online_with_caps(
            LAPTOP,
            CM_OTHER,
            2,
            "bookmarks=",
            &["storage:bookmarks+notify"],
        )
        .await;
}

#[tokio::test]
async fn private_bookmarks_reach_pep_on_an_owner_only_node_and_back() {
    let mut harness = Harness::new().await;
    juliet_online(&mut harness).await;
    let orchard = storage_xml("orchard@conference.example.com");
    harness
        .send(
            PHONE,
            CM_TEST,
            1,
            &format!(
                "<iq id='p1' type='set'><query xmlns='jabber:iq:private'>{orchard}</query></iq>"
            ),
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            &format!("<iq type='result' id='p1' to='{PHONE}'/>")
        )]
    );
    assert_eq!(
        pep_storage(&harness).await,
        vec![("current".to_string(), orchard.clone())]
    );
    let node = harness
        .storage
        .pep_node(&bare("juliet@example.com"), "storage:bookmarks")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        node.config.access_model,
        starling_api::AccessModel::Whitelist
    );
    // Section 3: the subscribers (her interested laptop) are told.
    let on_other = harness.seen_on_other();
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    let Seen::Stanza(recipients, xml) = &on_other[0] else {
        panic!("a stanza")
    };
    assert_eq!(recipients[0].to.as_deref(), Some(LAPTOP));
    assert!(
        xml.contains(&format!(
            "<items node='storage:bookmarks'><item id='current'>{orchard}</item></items>"
        )),
        "{xml}"
    );
    assert_eq!(conversions(&harness, "private_to_pep", "converted"), 1.0);

    // A PEP publish (of a client using XEP-0048 over PEP) reaches private XML.
    let garden = storage_xml("garden@conference.example.com");
    harness
        .send(LAPTOP, CM_OTHER, 2, &format!("<iq id='b1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='storage:bookmarks'><item id='current'>{garden}</item></publish></pubsub></iq>"))
        .await;
    harness.seen_on_other();
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='p2' type='get'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, &format!("<iq type='result' id='p2' to='{PHONE}'><query xmlns='jabber:iq:private'>{garden}</query></iq>"))]
    );
    assert_eq!(conversions(&harness, "pep_to_private", "converted"), 1.0);

    // Section 5: a node made readable by others is not written.
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='c1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='storage:bookmarks'><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>open</value></field></x></configure></pubsub></iq>")
        .await;
    harness
        .send(
            PHONE,
            CM_TEST,
            1,
            &format!(
                "<iq id='p3' type='set'><query xmlns='jabber:iq:private'>{orchard}</query></iq>"
            ),
        )
        .await;
    assert_eq!(
        pep_storage(&harness).await,
        vec![("current".to_string(), garden)]
    );
    assert_eq!(conversions(&harness, "private_to_pep", "not_private"), 1.0);
}

#[tokio::test]
async fn private_bookmarks_are_copied_to_pep_before_the_first_read() {
    let mut harness = Harness::new().await;
    let orchard = storage_xml("orchard@conference.example.com");
    // Stored by an earlier version, before the conversion existed.
    harness
        .storage
        .put_account_data(
            &bare("juliet@example.com"),
            "private storage:bookmarks",
            Some(&format!(
                "<query xmlns='jabber:iq:private'>{orchard}</query>"
            )),
        )
        .await
        .unwrap();
    harness.online(PHONE, CM_TEST, 1, 0).await;
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='i1' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='storage:bookmarks'/></pubsub></iq>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, &format!("<iq type='result' id='i1' to='{PHONE}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='storage:bookmarks'><item id='current'>{orchard}</item></items></pubsub></iq>"))]
    );
    // Another account still may not read them (whitelist).
    harness
        .online("romeo@example.com/orchard", CM_OTHER, 3, 0)
        .await;
    harness
        .send("romeo@example.com/orchard", CM_OTHER, 3, "<iq id='i2' to='juliet@example.com' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='storage:bookmarks'/></pubsub></iq>")
        .await;
    let answer = harness.seen_on_other();
    assert!(
        matches!(answer.as_slice(), [Seen::Stanza(_, xml)] if xml.contains("closed-node")),
        "{answer:?}"
    );
}

const BOOKMARKS2: &str = "urn:xmpp:bookmarks:1";

async fn room_items(harness: &Harness) -> Vec<(String, String)> {
    let mut items: Vec<(String, String)> = harness
        .storage
        .pep_items(&bare("juliet@example.com"), BOOKMARKS2, &[], None)
        .await
        .unwrap()
        .into_iter()
        .map(|item| (item.id, item.payload_xml))
        .collect();
    items.sort();
    items
}

async fn private_storage(harness: &Harness) -> Option<String> {
    harness
        .storage
        .account_data(&bare("juliet@example.com"), "private storage:bookmarks")
        .await
        .unwrap()
}

fn bookmarks2_conversions(harness: &Harness, direction: &str, outcome: &str) -> f64 {
    harness.metric(&format!(
        "starling_router_conversions_total{{conversion=\"bookmarks2\",direction=\"{direction}\",outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test]
async fn bookmarks_2_items_and_the_xep_0048_storage_are_one_set() {
    let mut harness = Harness::new().await;
    harness.online(PHONE, CM_TEST, 1, 0).await;
    harness
        .online_with_caps(
            LAPTOP,
            CM_OTHER,
            2,
            "bookmarks2=",
            &["urn:xmpp:bookmarks:1+notify"],
        )
        .await;
    // XEP-0402 section 3.2: a room published as its own item, with the
    // publish-options of a private node.
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='b1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:bookmarks:1'><item id='orchard@conference.example.com'><conference xmlns='urn:xmpp:bookmarks:1' name='The Orchard' autojoin='true'><nick>juliet</nick></conference></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='pubsub#persist_items'><value>true</value></field><field var='pubsub#max_items'><value>max</value></field><field var='pubsub#send_last_published_item'><value>never</value></field><field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options></pubsub></iq>")
        .await;
    harness.seen_on_test();
    harness.seen_on_other();
    // Section 5.3.1: collated into the XEP-0048 storage, in private XML and
    // in the storage:bookmarks PEP node.
    let legacy = "<storage xmlns='storage:bookmarks'><conference jid='orchard@conference.example.com' name='The Orchard' autojoin='true'><nick>juliet</nick></conference></storage>";
    assert_eq!(
        private_storage(&harness).await,
        Some(format!("<query xmlns='jabber:iq:private'>{legacy}</query>"))
    );
    assert_eq!(
        pep_storage(&harness).await,
        vec![("current".to_string(), legacy.to_string())]
    );
    assert_eq!(
        bookmarks2_conversions(&harness, "to_legacy", "converted"),
        1.0
    );

    // Section 5.3.2: a client of XEP-0048 replaces the storage (the orchard
    // renamed, a garden added, a URL): the rooms become items, each told.
    let replaced = "<storage xmlns='storage:bookmarks'><conference jid='orchard@conference.example.com' name='Orchard' autojoin='true'><nick>juliet</nick></conference><conference jid='garden@conference.example.com' autojoin='0'/><url name='Works' url='http://example.com/'/></storage>";
    harness
        .send(
            PHONE,
            CM_TEST,
            1,
            &format!(
                "<iq id='p1' type='set'><query xmlns='jabber:iq:private'>{replaced}</query></iq>"
            ),
        )
        .await;
    harness.seen_on_test();
    assert_eq!(
        room_items(&harness).await,
        vec![
            ("garden@conference.example.com".to_string(), "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='false'/>".to_string()),
            ("orchard@conference.example.com".to_string(), "<conference xmlns='urn:xmpp:bookmarks:1' name='Orchard' autojoin='true'><nick>juliet</nick></conference>".to_string()),
        ]
    );
    let told = harness.seen_on_other();
    assert_eq!(told.len(), 2, "{told:?}");
    // Unchanged rooms are not told again; a removed one is retracted.
    let fewer = "<storage xmlns='storage:bookmarks'><conference jid='garden@conference.example.com' autojoin='false'/></storage>";
    harness
        .send(
            PHONE,
            CM_TEST,
            1,
            &format!(
                "<iq id='p2' type='set'><query xmlns='jabber:iq:private'>{fewer}</query></iq>"
            ),
        )
        .await;
    harness.seen_on_test();
    let told = harness.seen_on_other();
    assert_eq!(told.len(), 1, "{told:?}");
    let Seen::Stanza(_, xml) = &told[0] else {
        panic!("a stanza")
    };
    assert!(
        xml.contains("<items node='urn:xmpp:bookmarks:1'><retract id='orchard@conference.example.com'/></items>"),
        "{xml}"
    );
    assert_eq!(
        room_items(&harness).await,
        vec![(
            "garden@conference.example.com".to_string(),
            "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='false'/>".to_string()
        )]
    );
    // A XEP-0402 retraction: the legacy storage follows (empty).
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='r1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><retract node='urn:xmpp:bookmarks:1' notify='true'><item id='garden@conference.example.com'/></retract></pubsub></iq>")
        .await;
    assert_eq!(
        private_storage(&harness).await,
        Some(
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>"
                .to_string()
        )
    );
    // The account announces both compatibilities.
    harness.seen_on_test();
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='d1' type='get' to='juliet@example.com'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let Seen::Stanza(_, info) = &harness.seen_on_test()[0] else {
        panic!("a stanza")
    };
    assert!(info.contains("<feature var='urn:xmpp:bookmarks:1#compat'/><feature var='urn:xmpp:bookmarks:1#compat-pep'/>"), "{info}");
    // A node made readable by others: neither conversion writes it, and
    // the features are no longer announced.
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='c1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='urn:xmpp:bookmarks:1'><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>open</value></field></x></configure></pubsub></iq>")
        .await;
    harness
        .send(
            PHONE,
            CM_TEST,
            1,
            &format!(
                "<iq id='p3' type='set'><query xmlns='jabber:iq:private'>{replaced}</query></iq>"
            ),
        )
        .await;
    assert_eq!(room_items(&harness).await, Vec::new());
    assert_eq!(
        bookmarks2_conversions(&harness, "from_legacy", "not_private"),
        1.0
    );
    harness.seen_on_test();
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='d2' type='get' to='juliet@example.com'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let Seen::Stanza(_, info) = &harness.seen_on_test()[0] else {
        panic!("a stanza")
    };
    assert!(!info.contains("urn:xmpp:bookmarks:1#compat"), "{info}");
}

#[tokio::test]
async fn xep_0048_bookmarks_become_items_before_the_first_bookmarks_2_read() {
    let mut harness = Harness::new().await;
    let orchard = storage_xml("orchard@conference.example.com");
    harness
        .storage
        .put_account_data(
            &bare("juliet@example.com"),
            "private storage:bookmarks",
            Some(&format!(
                "<query xmlns='jabber:iq:private'>{orchard}</query>"
            )),
        )
        .await
        .unwrap();
    harness.online(PHONE, CM_TEST, 1, 0).await;
    harness
        .send(PHONE, CM_TEST, 1, "<iq id='i1' type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:bookmarks:1'/></pubsub></iq>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(1, &format!("<iq type='result' id='i1' to='{PHONE}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:bookmarks:1'><item id='orchard@conference.example.com'><conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'><nick>juliet</nick></conference></item></items></pubsub></iq>"))]
    );
    let node = harness
        .storage
        .pep_node(&bare("juliet@example.com"), BOOKMARKS2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        node.config.access_model,
        starling_api::AccessModel::Whitelist
    );
    assert_eq!(node.config.max_items, starling_api::MaxItems::Max);
}
