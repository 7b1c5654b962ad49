//! Subscriptions, RFC 6121 section 3, both ends on this server.

use starling_api::{PresenceApi, RosterItem, RosterStore, Subscription};
use starling_jid::BareJid;

use crate::harness::{xml, Harness};

#[tokio::test]
async fn the_full_handshake_both_ways_ends_in_both() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let bob = harness.online("bob@example.com/desk", "cm2").await;

    // Section 3.1.2: alice asks; her item shows ask='subscribe'; the request
    // reaches bob stamped with alice's bare JID; bob's roster shows nothing yet.
    harness.presence(&alice, "<presence to='bob@example.com/desk' type='subscribe' id='s1'><status>hi</status></presence>").await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='1'><item jid='bob@example.com' subscription='none' ask='subscribe'/></query></iq>"]
    );
    assert_eq!(
        harness.received("cm2"),
        ["bob@example.com/desk <presence to='bob@example.com' type='subscribe' id='s1' from='alice@example.com'><status>hi</status></presence>"]
    );

    // Section 3.1.5/3.1.6: bob approves: both rosters are pushed, alice gets the
    // approval and then bob's current presence.
    harness
        .presence(&bob, "<presence to='alice@example.com' type='subscribed'/>")
        .await;
    assert_eq!(
        harness.received("cm2"),
        ["bob@example.com/desk <iq type='set' id='push' to='bob@example.com/desk'><query xmlns='jabber:iq:roster' ver='2'><item jid='alice@example.com' subscription='from'/></query></iq>"]
    );
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='2'><item jid='bob@example.com' subscription='to'/></query></iq>",
            "alice@example.com/phone <presence to='alice@example.com' type='subscribed' from='bob@example.com'/>",
            "alice@example.com/phone <presence from='bob@example.com/desk' to='alice@example.com'/>",
        ]
    );

    // And the other way: bob asks, alice approves.
    harness
        .presence(&bob, "<presence to='alice@example.com' type='subscribe'/>")
        .await;
    assert_eq!(
        harness.received("cm2"),
        ["bob@example.com/desk <iq type='set' id='push' to='bob@example.com/desk'><query xmlns='jabber:iq:roster' ver='3'><item jid='alice@example.com' subscription='from' ask='subscribe'/></query></iq>"]
    );
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <presence to='alice@example.com' type='subscribe' from='bob@example.com'/>"]
    );
    harness
        .presence(&alice, "<presence to='bob@example.com' type='subscribed'/>")
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='4'><item jid='bob@example.com' subscription='both'/></query></iq>"]
    );
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <iq type='set' id='push' to='bob@example.com/desk'><query xmlns='jabber:iq:roster' ver='4'><item jid='alice@example.com' subscription='both'/></query></iq>",
            "bob@example.com/desk <presence to='bob@example.com' type='subscribed' from='alice@example.com'/>",
            "bob@example.com/desk <presence from='alice@example.com/phone' to='bob@example.com'/>",
        ]
    );
    assert_eq!(
        harness.roster_of("alice@example.com").await,
        ["<item xmlns='jabber:iq:roster' jid='bob@example.com' subscription='both'/>"]
    );
    assert_eq!(
        harness.roster_of("bob@example.com").await,
        ["<item xmlns='jabber:iq:roster' jid='alice@example.com' subscription='both'/>"]
    );
    assert!(
        harness.routed().is_empty(),
        "local subscriptions never go through the router"
    );
}

#[tokio::test]
async fn a_request_to_an_offline_contact_is_kept_and_redelivered_at_each_login_until_answered() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    harness
        .presence(&alice, "<presence to='bob@example.com' type='subscribe'/>")
        .await;
    harness.drain_all();

    // Bob connects: nothing before his initial presence.
    let desk = harness.bind("bob@example.com/desk", "cm2").await;
    harness
        .roster_iq(
            &desk,
            "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
        )
        .await;
    harness.drain_all();
    harness.presence(&desk, "<presence/>").await;
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <presence from='bob@example.com/desk' to='bob@example.com'/>",
            "bob@example.com/desk <presence to='bob@example.com' type='subscribe' from='alice@example.com'/>",
        ]
    );
    // A second login is reminded too, since bob has not answered.
    let laptop = harness.bind("bob@example.com/laptop", "cm2").await;
    harness.presence(&laptop, "<presence/>").await;
    let received = harness.received("cm2");
    assert!(received.contains(
        &"bob@example.com/laptop <presence to='bob@example.com' type='subscribe' from='alice@example.com'/>".to_string()
    ));
    // Section 3.2: bob refuses; alice's pending state is cleared, bob's placeholder goes.
    harness
        .presence(
            &desk,
            "<presence to='alice@example.com' type='unsubscribed'/>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='2'><item jid='bob@example.com' subscription='none'/></query></iq>",
            "alice@example.com/phone <presence to='alice@example.com' type='unsubscribed' from='bob@example.com'/>",
        ]
    );
    assert!(
        harness.received("cm2").is_empty(),
        "a placeholder is never pushed"
    );
    assert!(harness.roster_of("bob@example.com").await.is_empty());
    let tablet = harness.bind("bob@example.com/tablet", "cm2").await;
    harness.presence(&tablet, "<presence/>").await;
    assert!(harness
        .received("cm2")
        .iter()
        .all(|line| !line.contains("type='subscribe'")));
}

#[tokio::test]
async fn unsubscribe_and_cancel_withdraw_presence() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let bob = harness.online("bob@example.com/desk", "cm2").await;
    harness.befriend(&alice, &bob).await;

    // Section 3.3: alice unsubscribes from bob's presence; bob's server sends
    // alice unavailable presence from bob's resources.
    harness
        .presence(
            &alice,
            "<presence to='bob@example.com' type='unsubscribe'/>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='5'><item jid='bob@example.com' subscription='from'/></query></iq>",
            "alice@example.com/phone <presence from='bob@example.com/desk' type='unavailable' to='alice@example.com'/>",
        ]
    );
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <iq type='set' id='push' to='bob@example.com/desk'><query xmlns='jabber:iq:roster' ver='5'><item jid='alice@example.com' subscription='to'/></query></iq>",
            "bob@example.com/desk <presence to='bob@example.com' type='unsubscribe' from='alice@example.com'/>",
        ]
    );

    // Section 3.2: alice cancels bob's subscription to her presence.
    harness
        .presence(
            &alice,
            "<presence to='bob@example.com' type='unsubscribed'/>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='6'><item jid='bob@example.com' subscription='none'/></query></iq>"]
    );
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <iq type='set' id='push' to='bob@example.com/desk'><query xmlns='jabber:iq:roster' ver='6'><item jid='alice@example.com' subscription='none'/></query></iq>",
            "bob@example.com/desk <presence to='bob@example.com' type='unsubscribed' from='alice@example.com'/>",
            "bob@example.com/desk <presence from='alice@example.com/phone' type='unavailable' to='bob@example.com'/>",
        ]
    );

    // Nothing is left to cancel: the stanzas still go out but change nothing.
    harness
        .presence(
            &alice,
            "<presence to='bob@example.com' type='unsubscribe'/>",
        )
        .await;
    assert!(harness.received("cm1").is_empty());
    assert!(harness.received("cm2").is_empty());
}

#[tokio::test]
async fn roster_remove_cancels_both_subscriptions() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let bob = harness.online("bob@example.com/desk", "cm2").await;
    harness.befriend(&alice, &bob).await;

    // Section 2.5.2: push the removal, answer, then unsubscribe and unsubscribed.
    harness
        .roster_iq(&alice, "<iq type='set' id='rm'><query xmlns='jabber:iq:roster'><item jid='bob@example.com' subscription='remove'/></query></iq>")
        .await;
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='5'><item jid='bob@example.com' subscription='remove'/></query></iq>",
            "alice@example.com/phone <iq type='result' id='rm' to='alice@example.com/phone'/>",
            "alice@example.com/phone <presence from='bob@example.com/desk' type='unavailable' to='alice@example.com'/>",
        ]
    );
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <iq type='set' id='push' to='bob@example.com/desk'><query xmlns='jabber:iq:roster' ver='5'><item jid='alice@example.com' subscription='to'/></query></iq>",
            "bob@example.com/desk <presence from='alice@example.com' to='bob@example.com' type='unsubscribe'/>",
            "bob@example.com/desk <iq type='set' id='push' to='bob@example.com/desk'><query xmlns='jabber:iq:roster' ver='6'><item jid='alice@example.com' subscription='none'/></query></iq>",
            "bob@example.com/desk <presence from='alice@example.com' to='bob@example.com' type='unsubscribed'/>",
            "bob@example.com/desk <presence from='alice@example.com/phone' type='unavailable' to='bob@example.com'/>",
        ]
    );
    assert!(harness.roster_of("alice@example.com").await.is_empty());
    assert_eq!(
        harness.roster_of("bob@example.com").await,
        ["<item xmlns='jabber:iq:roster' jid='alice@example.com' subscription='none'/>"]
    );
}

#[tokio::test]
async fn subscribed_without_a_pending_request_is_ignored() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let _carol = harness.online("carol@example.com/pc", "cm2").await;
    // Pre-approval (section 3.4) is not offered: nothing happens.
    harness
        .presence(
            &alice,
            "<presence to='carol@example.com' type='subscribed'/>",
        )
        .await;
    assert!(harness.received_all().is_empty());
    assert!(harness.roster_of("alice@example.com").await.is_empty());
    assert!(harness.roster_of("carol@example.com").await.is_empty());
}

#[tokio::test]
async fn an_existing_subscription_is_confirmed_automatically() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let bob = harness.online("bob@example.com/desk", "cm2").await;
    harness.befriend(&alice, &bob).await;
    // Alice's roster lost the item (another client removed it locally, say):
    // bob's server answers her new request for him (section 3.1.3).
    let alice_bare: BareJid = "alice@example.com".parse().unwrap();
    let bob_bare: BareJid = "bob@example.com".parse().unwrap();
    harness
        .storage
        .remove_roster_item(&alice_bare, &bob_bare)
        .await
        .unwrap();
    harness
        .presence(&alice, "<presence to='bob@example.com' type='subscribe'/>")
        .await;
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='6'><item jid='bob@example.com' subscription='none' ask='subscribe'/></query></iq>",
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='7'><item jid='bob@example.com' subscription='to'/></query></iq>",
            "alice@example.com/phone <presence from='bob@example.com' to='alice@example.com' type='subscribed'/>",
        ]
    );
    assert!(harness.received("cm2").is_empty(), "bob is not asked again");
}

#[tokio::test]
async fn a_request_to_a_user_that_does_not_exist_is_refused() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    harness
        .presence(
            &alice,
            "<presence to='nobody@example.com' type='subscribe'/>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='1'><item jid='nobody@example.com' subscription='none' ask='subscribe'/></query></iq>",
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='2'><item jid='nobody@example.com' subscription='none'/></query></iq>",
            "alice@example.com/phone <presence from='nobody@example.com' to='alice@example.com' type='unsubscribed'/>",
        ]
    );
}

#[tokio::test]
async fn subscription_stanzas_with_bad_addresses_bounce_and_self_subscription_is_implicit() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    harness
        .presence(
            &alice,
            "<presence to='@example.com' type='subscribe' id='b1'/>",
        )
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <presence id='b1' to='alice@example.com/phone' from='@example.com' type='error'><error type='modify'><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"]
    );
    harness
        .presence(&alice, "<presence type='subscribe' id='b2'/>")
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <presence id='b2' to='alice@example.com/phone' type='error'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>a subscription stanza needs a to address</text></error></presence>"]
    );
    harness
        .presence(
            &alice,
            "<presence to='alice@example.com' type='subscribe'/>",
        )
        .await;
    assert!(harness.received_all().is_empty());
    assert!(harness.roster_of("alice@example.com").await.is_empty());
}

#[tokio::test]
async fn remote_contacts_go_through_the_router_both_ways() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;

    harness
        .presence(&alice, "<presence to='romeo@remote.net' type='subscribe'/>")
        .await;
    assert_eq!(
        harness.routed(),
        ["<presence to='romeo@remote.net' type='subscribe' from='alice@example.com'/>"]
    );
    harness.drain_all();

    // The remote server approves (inbound processing, section 3.1.6).
    harness
        .service
        .inbound_presence(xml(
            "<presence from='romeo@remote.net/garden' to='alice@example.com' type='subscribed'/>",
        ), None)
        .await
        .unwrap();
    assert_eq!(
        harness.received("cm1"),
        [
            "alice@example.com/phone <iq type='set' id='push' to='alice@example.com/phone'><query xmlns='jabber:iq:roster' ver='2'><item jid='romeo@remote.net' subscription='to'/></query></iq>",
            "alice@example.com/phone <presence from='romeo@remote.net' to='alice@example.com' type='subscribed'/>",
        ]
    );

    // Romeo asks in turn; alice approves: the approval and her presence are routed.
    harness
        .service
        .inbound_presence(
            xml(
                "<presence from='romeo@remote.net' to='alice@example.com/phone' type='subscribe'/>",
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <presence from='romeo@remote.net' to='alice@example.com' type='subscribe'/>"]
    );
    harness
        .presence(
            &alice,
            "<presence to='romeo@remote.net' type='subscribed'/>",
        )
        .await;
    assert_eq!(
        harness.routed(),
        [
            "<presence to='romeo@remote.net' type='subscribed' from='alice@example.com'/>",
            "<presence from='alice@example.com/phone' to='romeo@remote.net'/>",
        ]
    );
    harness.drain_all();

    // Section 4.3.2: a probe from a subscriber is answered with current presence;
    // one from anyone else with `unsubscribed`.
    harness
        .service
        .inbound_presence(
            xml("<presence from='romeo@remote.net' to='alice@example.com' type='probe'/>"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        harness.routed(),
        ["<presence from='alice@example.com/phone' to='romeo@remote.net'/>"]
    );
    harness
        .service
        .inbound_presence(
            xml("<presence from='mallory@remote.net' to='alice@example.com' type='probe'/>"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        harness.routed(),
        ["<presence from='alice@example.com' to='mallory@remote.net' type='unsubscribed'/>"]
    );
    assert!(harness.received_all().is_empty());
}

#[tokio::test]
async fn a_probe_for_an_offline_subscriber_target_is_answered_unavailable() {
    let harness = Harness::new().await;
    let alice: BareJid = "alice@example.com".parse().unwrap();
    let mut item = RosterItem::new("romeo@remote.net".parse().unwrap());
    item.subscription = Subscription::From;
    harness
        .storage
        .put_roster_item(&alice, &item)
        .await
        .unwrap();
    harness
        .service
        .inbound_presence(
            xml("<presence from='romeo@remote.net/garden' to='alice@example.com' type='probe'/>"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        harness.routed(),
        ["<presence from='alice@example.com' to='romeo@remote.net/garden' type='unavailable'/>"]
    );
}

#[tokio::test]
async fn concurrent_changes_to_one_item_do_not_lose_updates() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let harness = std::sync::Arc::new(harness);
    let contacts: Vec<String> = (0..12)
        .map(|index| format!("contact{index}@remote.net"))
        .collect();
    let mut tasks = Vec::new();
    for contact in contacts.clone() {
        let (subscriber, renamer) = (
            std::sync::Arc::clone(&harness),
            std::sync::Arc::clone(&harness),
        );
        let (alice_subscribing, alice_renaming) = (alice.clone(), alice.clone());
        let subscribe = format!("<presence to='{contact}' type='subscribe'/>");
        let rename = format!(
            "<iq type='set' id='n'><query xmlns='jabber:iq:roster'><item jid='{contact}' name='Friend'/></query></iq>"
        );
        tasks.push(tokio::spawn(async move {
            subscriber.presence(&alice_subscribing, &subscribe).await
        }));
        tasks.push(tokio::spawn(async move {
            renamer.roster_iq(&alice_renaming, &rename).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let roster = harness.roster_of("alice@example.com").await;
    assert_eq!(roster.len(), contacts.len());
    for line in roster {
        assert!(
            line.contains("name='Friend'") && line.contains("ask='subscribe'"),
            "lost update: {line}"
        );
    }
}
