//! Message Archive Management (XEP-0313) in the router: archiving both
//! directions after delivery or offline storage, the XEP-0359 stanza id on
//! what is delivered, queries answered to the querying resource before
//! their `<fin/>`, and the preferences deciding (XEP-0441).

use starling_api::{ArchiveId, ArchiveQuery, PageStart};

use super::*;

const ROMEO: &str = "romeo@example.com/orchard";
const JULIET: &str = "juliet@example.com/balcony";

async fn harness() -> Harness {
    Harness::with_options(HarnessOptions {
        mam: true,
        ..HarnessOptions::default()
    })
    .await
}

fn stanza_xml(seen: &Seen) -> &str {
    match seen {
        Seen::Stanza(_, xml) => xml,
        other => panic!("not a stanza: {other:?}"),
    }
}

/// The `id` of the `<stanza-id by='{by}'/>` in `xml`.
fn stanza_id_by(xml: &str, by: &str) -> Option<String> {
    let marker = "<stanza-id xmlns='urn:xmpp:sid:0' id='";
    let start = xml.find(marker)? + marker.len();
    let rest = &xml[start..];
    let end = rest.find('\'')?;
    rest[end..]
        .starts_with(&format!("' by='{by}'/>"))
        .then(|| rest[..end].to_string())
}

async fn archive_of(harness: &Harness, user: &str) -> Vec<(ArchiveId, String)> {
    harness.router.flush_archive().await;
    let page = harness
        .storage
        .query_archive(
            &bare(user),
            &ArchiveQuery {
                max: 100,
                page: PageStart::First,
                ..ArchiveQuery::default()
            },
        )
        .await
        .expect("query the archive");
    page.messages
        .into_iter()
        .map(|message| (message.id, message.stanza_xml))
        .collect()
}

#[tokio::test]
async fn a_delivered_message_is_stamped_and_archived_on_both_sides() {
    let mut harness = harness().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness
        .send(
            ROMEO,
            CM_OTHER,
            9,
            "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='m1'>\
             <body>Wherefore art thou?</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='juliet@example.com'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>",
        )
        .await;
    let seen = harness.seen_on_test();
    assert_eq!(seen.len(), 1);
    let delivered = stanza_xml(&seen[0]);
    let id = stanza_id_by(delivered, "juliet@example.com").expect("a stanza id by juliet");
    assert_ne!(id, "forged");
    assert!(!delivered.contains("forged"), "{delivered}");
    assert!(delivered.contains("<origin-id xmlns='urn:xmpp:sid:0' id='o1'/>"));

    for owner in ["juliet@example.com", "romeo@example.com"] {
        let archive = archive_of(&harness, owner).await;
        assert_eq!(archive.len(), 1, "{owner}");
        assert_eq!(archive[0].0.to_text(), id);
        assert_eq!(archive[0].1, delivered);
    }
}

#[tokio::test]
async fn what_is_not_a_conversation_or_bounces_is_not_archived() {
    let mut harness = harness().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    for message in [
        "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<message from='romeo@example.com/orchard' to='juliet@example.com' type='headline'><body>news</body></message>",
        "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>secret</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        // No such account: bounced, in nobody's archive.
        "<message from='romeo@example.com/orchard' to='ghost@example.com' type='chat'><body>anyone?</body></message>",
    ] {
        harness.send(ROMEO, CM_OTHER, 9, message).await;
    }
    for seen in harness.seen_on_test() {
        assert!(!stanza_xml(&seen).contains("stanza-id"), "{seen:?}");
    }
    assert!(archive_of(&harness, "juliet@example.com").await.is_empty());
    assert!(archive_of(&harness, "romeo@example.com").await.is_empty());
}

#[tokio::test]
async fn an_offline_message_carries_its_archive_id() {
    let harness = harness().await;
    harness
        .send(
            ROMEO,
            CM_OTHER,
            9,
            "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>later</body></message>",
        )
        .await;
    let stored = harness.offline_of("juliet@example.com").await;
    assert_eq!(stored.len(), 1);
    let id = stanza_id_by(&stored[0], "juliet@example.com").expect("stamped before storing");
    let archive = archive_of(&harness, "juliet@example.com").await;
    assert_eq!(archive.len(), 1);
    assert_eq!(archive[0].0.to_text(), id);
}

#[tokio::test]
async fn a_query_sends_results_then_fin_to_the_asking_resource() {
    let mut harness = harness().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    for body in ["one", "two", "three"] {
        harness
            .send(
                ROMEO,
                CM_OTHER,
                9,
                &format!("<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>{body}</body></message>"),
            )
            .await;
    }
    harness.seen_on_test();
    let archive = archive_of(&harness, "juliet@example.com").await;
    assert_eq!(archive.len(), 3);
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq from='juliet@example.com/balcony' id='q1' type='set'><query xmlns='urn:xmpp:mam:2' queryid='f27'>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>2</max><before/></set></query></iq>",
        )
        .await;
    let seen = harness.seen_on_test();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (index, (id, _)) in archive[1..].iter().enumerate() {
        let result = stanza_xml(&seen[index]);
        assert!(
            result.starts_with(&format!(
                "<message from='juliet@example.com' to='juliet@example.com/balcony' id='mam-{0}'><result xmlns='urn:xmpp:mam:2' queryid='f27' id='{0}'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2002-09-10T23:08:25.",
                id.0
            )),
            "{result}"
        );
    }
    assert!(stanza_xml(&seen[0]).contains("<body>two</body>"));
    assert!(stanza_xml(&seen[1]).contains("<body>three</body>"));
    assert_eq!(
        stanza_xml(&seen[2]),
        format!(
            "<iq type='result' id='q1' to='juliet@example.com/balcony'><fin xmlns='urn:xmpp:mam:2' complete='false'><set xmlns='http://jabber.org/protocol/rsm'><first>{}</first><last>{}</last></set></fin></iq>",
            archive[1].0 .0, archive[2].0 .0
        )
    );
}

#[tokio::test]
async fn another_accounts_archive_is_forbidden() {
    let mut harness = harness().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq from='juliet@example.com/balcony' to='romeo@example.com' id='q2' type='set'><query xmlns='urn:xmpp:mam:2'/></iq>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            "<iq id='q2' to='juliet@example.com/balcony' from='romeo@example.com' type='error'><query xmlns='urn:xmpp:mam:2'/><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )]
    );
}

#[tokio::test]
async fn prefs_never_keeps_the_message_out_and_unstamped() {
    let mut harness = harness().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq from='juliet@example.com/balcony' id='p1' type='set'><prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never><jid>romeo@example.com</jid></never></prefs></iq>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            "<iq type='result' id='p1' to='juliet@example.com/balcony'><prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never><jid>romeo@example.com</jid></never></prefs></iq>"
        )]
    );
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>unkept</body></message>";
    harness.send(ROMEO, CM_OTHER, 9, message).await;
    assert_eq!(harness.seen_on_test(), vec![to_conn(1, message)]);
    assert!(archive_of(&harness, "juliet@example.com").await.is_empty());
    assert_eq!(archive_of(&harness, "romeo@example.com").await.len(), 1);
}

#[tokio::test]
async fn switched_off_nothing_is_stamped_archived_or_answered() {
    let mut harness = Harness::new().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>plain</body></message>";
    harness.send(ROMEO, CM_OTHER, 9, message).await;
    assert_eq!(harness.seen_on_test(), vec![to_conn(1, message)]);
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq from='juliet@example.com/balcony' id='q3' type='set'><query xmlns='urn:xmpp:mam:2'/></iq>",
        )
        .await;
    let seen = harness.seen_on_test();
    assert!(
        stanza_xml(&seen[0]).contains("<service-unavailable"),
        "{seen:?}"
    );
    assert!(archive_of(&harness, "juliet@example.com").await.is_empty());
}
