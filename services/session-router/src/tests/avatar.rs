//! Avatars through the router (XEP-0398): a vCard photo published to the
//! XEP-0084 nodes with its notification, a PEP avatar written to the vCard,
//! and the photo hash stamped on available presence (XEP-0153).

use starling_api::{RosterItem, Subscription};
use starling_xmpp::xep::avatar::sha1_hex;

use super::*;

const JULIET: &str = "juliet@example.com/balcony";
const ROMEO: &str = "romeo@example.com/orchard";
/// A PNG signature and a GIF header as the images (their bytes only matter
/// for the hash).
const IMAGE_B64: &str = "iVBORw0KGgo=";
const OTHER_B64: &str = "R0lGODlh";

/// The SHA-1 of the image `base64` encodes.
fn image_id(base64: &str) -> String {
    let bytes: &[u8] = match base64 {
        IMAGE_B64 => b"\x89PNG\r\n\x1a\n",
        OTHER_B64 => b"GIF89a",
        _ => unreachable!("a test image"),
    };
    sha1_hex(bytes)
}

/// Romeo has a subscription to juliet and is online on cm-other with
/// capabilities asking for avatar metadata notifications.
async fn romeo_follows_juliets_avatar(harness: &mut Harness) {
    let juliet = bare("juliet@example.com");
    let romeo = bare("romeo@example.com");
    let mut romeo_item = RosterItem::new(romeo.clone());
    romeo_item.subscription = Subscription::From;
    harness
        .storage
        .put_roster_item(&juliet, &romeo_item)
        .await
        .unwrap();
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness
        .online_with_caps(
            ROMEO,
            CM_OTHER,
            2,
            "avatar=",
            &["urn:xmpp:avatar:metadata+notify"],
        )
        .await;
}

fn set_vcard(photo: &str) -> String {
    format!("<iq id='v1' type='set'><vCard xmlns='vcard-temp'><FN>Juliet</FN>{photo}</vCard></iq>")
}

fn vcard_photo_of(base64: &str) -> String {
    format!("<PHOTO><TYPE>image/png</TYPE><BINVAL>{base64}</BINVAL></PHOTO>")
}

async fn items(harness: &Harness, node: &str) -> Vec<(String, String)> {
    harness
        .storage
        .pep_items(&bare("juliet@example.com"), node, &[], None)
        .await
        .unwrap()
        .into_iter()
        .map(|item| (item.id, item.payload_xml))
        .collect()
}

async fn stored_vcard(harness: &Harness) -> Option<String> {
    harness
        .storage
        .account_data(&bare("juliet@example.com"), "vcard")
        .await
        .unwrap()
}

fn outbound_presences(harness: &Harness) -> Vec<String> {
    harness
        .presence
        .take_calls()
        .into_iter()
        .filter_map(|call| match call {
            PresenceCall::Outbound { stanza, .. } => Some(stanza),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_vcard_photo_is_published_as_a_user_avatar_and_notified() {
    let mut harness = Harness::new().await;
    romeo_follows_juliets_avatar(&mut harness).await;
    let id = image_id(IMAGE_B64);
    harness
        .send(JULIET, CM_TEST, 1, &set_vcard(&vcard_photo_of(IMAGE_B64)))
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            "<iq type='result' id='v1' to='juliet@example.com/balcony'/>"
        )]
    );
    // XEP-0398 section 3.2: the data, id the SHA-1, then the metadata.
    assert_eq!(
        items(&harness, "urn:xmpp:avatar:data").await,
        vec![(
            id.clone(),
            format!("<data xmlns='urn:xmpp:avatar:data'>{IMAGE_B64}</data>")
        )]
    );
    assert_eq!(
        items(&harness, "urn:xmpp:avatar:metadata").await,
        vec![(
            id.clone(),
            format!("<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='8' id='{id}' type='image/png'/></metadata>")
        )]
    );
    // Romeo (subscribed, metadata+notify) is told.
    let on_other = harness.seen_on_other();
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    let Seen::Stanza(recipients, xml) = &on_other[0] else {
        panic!("a stanza")
    };
    assert_eq!(recipients[0].to.as_deref(), Some(ROMEO));
    assert!(
        xml.ends_with(&format!("<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='urn:xmpp:avatar:metadata'><item id='{id}'><metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='8' id='{id}' type='image/png'/></metadata></item></items></event></message>")),
        "{xml}"
    );
    assert_eq!(
        harness.metric(
            "starling_router_conversions_total{conversion=\"avatar\",direction=\"vcard_to_pep\",outcome=\"converted\"}"
        ),
        1.0
    );
    // The same photo again (another field changed): not published again.
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            &set_vcard(&format!(
                "<NICKNAME>J</NICKNAME>{}",
                vcard_photo_of(IMAGE_B64)
            )),
        )
        .await;
    harness.seen_on_test();
    assert!(harness.seen_on_other().is_empty());
    assert_eq!(
        harness.metric(
            "starling_router_conversions_total{conversion=\"avatar\",direction=\"vcard_to_pep\",outcome=\"unchanged\"}"
        ),
        1.0
    );
    // A vCard without a photo leaves the avatar alone; a broken one is counted.
    harness.send(JULIET, CM_TEST, 1, &set_vcard("")).await;
    harness
        .send(JULIET, CM_TEST, 1, &set_vcard(&vcard_photo_of("!!!")))
        .await;
    assert_eq!(items(&harness, "urn:xmpp:avatar:metadata").await.len(), 1);
    assert_eq!(
        harness.metric(
            "starling_router_conversions_total{conversion=\"avatar\",direction=\"vcard_to_pep\",outcome=\"invalid\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_published_avatar_becomes_the_vcard_photo() {
    let mut harness = Harness::new().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<iq id='v0' type='set'><vCard xmlns='vcard-temp'><FN>Juliet</FN></vCard></iq>",
        )
        .await;
    let id = image_id(IMAGE_B64);
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='d1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:data'><item id='{id}'><data xmlns='urn:xmpp:avatar:data'>{IMAGE_B64}</data></item></publish></pubsub></iq>"))
        .await;
    // Section 3.1: the info without a url is the one converted.
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='m1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:metadata'><item id='{id}'><metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='8' id='elsewhere' type='image/gif' url='https://example.org/a.gif'/><info bytes='8' id='{id}' type='image/png'/></metadata></item></publish></pubsub></iq>"))
        .await;
    assert_eq!(
        stored_vcard(&harness).await.as_deref(),
        Some(format!("<vCard xmlns='vcard-temp'><FN>Juliet</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{IMAGE_B64}</BINVAL></PHOTO></vCard>").as_str())
    );
    assert_eq!(
        harness.metric(
            "starling_router_conversions_total{conversion=\"avatar\",direction=\"pep_to_vcard\",outcome=\"converted\"}"
        ),
        1.0
    );
    // The conversion did not publish again (no loop).
    assert_eq!(items(&harness, "urn:xmpp:avatar:metadata").await.len(), 1);
    // A metadata whose id is not the data's hash is not converted.
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='d2' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:data'><item id='forged'><data xmlns='urn:xmpp:avatar:data'>{OTHER_B64}</data></item></publish></pubsub></iq>"))
        .await;
    harness
        .send(JULIET, CM_TEST, 1, "<iq id='m2' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:metadata'><item id='forged'><metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='6' id='forged' type='image/gif'/></metadata></item></publish></pubsub></iq>")
        .await;
    assert!(stored_vcard(&harness).await.unwrap().contains(IMAGE_B64));
    assert_eq!(
        harness.metric(
            "starling_router_conversions_total{conversion=\"avatar\",direction=\"pep_to_vcard\",outcome=\"invalid\"}"
        ),
        1.0
    );
    // XEP-0084 section 4.2.1: an empty metadata disables the avatar.
    harness
        .send(JULIET, CM_TEST, 1, "<iq id='m3' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:metadata'><item id='none'><metadata xmlns='urn:xmpp:avatar:metadata'/></item></publish></pubsub></iq>")
        .await;
    assert_eq!(
        stored_vcard(&harness).await.as_deref(),
        Some("<vCard xmlns='vcard-temp'><FN>Juliet</FN></vCard>")
    );
    let answers = harness.seen_on_test();
    assert!(
        answers
            .iter()
            .all(|seen| matches!(seen, Seen::Stanza(_, xml) if xml.contains("type='result'"))),
        "{answers:?}"
    );
}

#[tokio::test]
async fn available_presence_carries_the_photo_hash() {
    let harness = Harness::new().await;
    harness.online(JULIET, CM_TEST, 1, 0).await;
    // No vCard: the presence is left as it is.
    harness.send(JULIET, CM_TEST, 1, "<presence/>").await;
    assert_eq!(
        outbound_presences(&harness),
        vec!["<presence from='juliet@example.com/balcony'/>"]
    );

    harness
        .send(JULIET, CM_TEST, 1, &set_vcard(&vcard_photo_of(IMAGE_B64)))
        .await;
    let hash = image_id(IMAGE_B64);
    harness
        .send(JULIET, CM_TEST, 1, "<presence><show>away</show></presence>")
        .await;
    // Directed presence too (XEP-0398 section 4, "MUST also be injected").
    harness
        .send(JULIET, CM_TEST, 1, "<presence to='room@conference.example.com/j' from='juliet@example.com/balcony'><x xmlns='vcard-temp:x:update'><photo>stale</photo></x></presence>")
        .await;
    // An empty photo (no avatar advertised) is the client's word; an
    // unavailable presence is not stamped.
    harness
        .send(
            JULIET,
            CM_TEST,
            1,
            "<presence><x xmlns='vcard-temp:x:update'><photo/></x></presence>",
        )
        .await;
    harness
        .send(JULIET, CM_TEST, 1, "<presence type='unavailable'/>")
        .await;
    assert_eq!(
        outbound_presences(&harness),
        vec![
            format!("<presence from='juliet@example.com/balcony'><show>away</show><x xmlns='vcard-temp:x:update'><photo>{hash}</photo></x></presence>"),
            format!("<presence to='room@conference.example.com/j' from='juliet@example.com/balcony'><x xmlns='vcard-temp:x:update'><photo>{hash}</photo></x></presence>"),
            "<presence from='juliet@example.com/balcony'><x xmlns='vcard-temp:x:update'><photo/></x></presence>".to_string(),
            "<presence type='unavailable' from='juliet@example.com/balcony'/>".to_string(),
        ]
    );
    // A new avatar through PEP: the next presence has its hash (the cached
    // hash was invalidated by the conversion).
    let other = image_id(OTHER_B64);
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='d1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:data'><item id='{other}'><data xmlns='urn:xmpp:avatar:data'>{OTHER_B64}</data></item></publish></pubsub></iq>"))
        .await;
    harness
        .send(JULIET, CM_TEST, 1, &format!("<iq id='m1' type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:metadata'><item id='{other}'><metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='6' id='{other}' type='image/gif'/></metadata></item></publish></pubsub></iq>"))
        .await;
    harness.send(JULIET, CM_TEST, 1, "<presence/>").await;
    assert_eq!(
        outbound_presences(&harness),
        vec![format!(
            "<presence from='juliet@example.com/balcony'><x xmlns='vcard-temp:x:update'><photo>{other}</photo></x></presence>"
        )]
    );
}
