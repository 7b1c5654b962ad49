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
