//! IQ routing and the server's own handlers (RFC 6120 section 10, RFC 6121
//! section 8.5, XEP-0030, XEP-0092, XEP-0199).

use starling_api::{ApiError, FeatureSpec};

use super::*;

const JULIET: &str = "juliet@example.com/balcony";

const SERVICE_UNAVAILABLE: &str =
    "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>";
/// RFC 6120 section 8.2.3 rules, as the typed `Iq` words them.
const ONE_CHILD: &str = "an iq get or set needs exactly one child";
const NO_ID: &str = "an iq needs an id";
const BAD_TYPE: &str = "an iq type is get, set, result or error";

fn bad_request(text: &str) -> String {
    format!("<error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>{text}</text></error>")
}

const FORBIDDEN: &str =
    "<error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>";

/// Send an IQ as juliet's session (cm-test, conn 1) and return what came back to it.
async fn ask(harness: &mut Harness, iq: &str) -> Vec<Seen> {
    harness.send(JULIET, CM_TEST, 1, iq).await;
    harness.seen_on_test()
}

#[tokio::test]
async fn roster_requests_go_to_the_presence_service() {
    let mut harness = Harness::new().await;
    let without_to = "<iq from='juliet@example.com/balcony' id='r1' type='get'><query xmlns='jabber:iq:roster'/></iq>";
    let to_own_bare = "<iq from='juliet@example.com/balcony' to='juliet@example.com' id='r2' type='set'><query xmlns='jabber:iq:roster'><item jid='nurse@example.com'/></query></iq>";
    assert_eq!(ask(&mut harness, without_to).await, Vec::new());
    assert_eq!(ask(&mut harness, to_own_bare).await, Vec::new());
    assert_eq!(
        harness.presence.take_calls(),
        vec![
            PresenceCall::Roster {
                from: JULIET.into(),
                addr: addr(CM_TEST, 1),
                stanza: without_to.into()
            },
            PresenceCall::Roster {
                from: JULIET.into(),
                addr: addr(CM_TEST, 1),
                stanza: to_own_bare.into()
            },
        ]
    );
}

#[tokio::test]
async fn roster_push_answers_are_consumed_not_forwarded() {
    let mut harness = Harness::new().await;
    let with_payload = "<iq from='juliet@example.com/balcony' id='push1' type='result'><query xmlns='jabber:iq:roster'/></iq>";
    let error = "<iq from='juliet@example.com/balcony' to='juliet@example.com' id='push2' type='error'><query xmlns='jabber:iq:roster'/><error type='cancel'><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
    assert_eq!(ask(&mut harness, with_payload).await, Vec::new());
    assert_eq!(ask(&mut harness, error).await, Vec::new());
    assert_eq!(harness.presence.take_calls(), Vec::new());
    // The same to another account's bare JID or to the server.
    assert_eq!(ask(&mut harness, "<iq from='juliet@example.com/balcony' to='romeo@example.com' id='push3' type='result'><query xmlns='jabber:iq:roster'/></iq>").await, Vec::new());
    assert_eq!(ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='push4' type='result'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await, Vec::new());
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn a_failed_roster_request_is_answered_with_its_error() {
    let mut harness = Harness::new().await;
    harness
        .presence
        .fail_roster_with(ApiError::LimitReached("roster full".into()));
    let reply = ask(&mut harness, "<iq from='juliet@example.com/balcony' id='r3' type='set'><query xmlns='jabber:iq:roster'><item jid='nurse@example.com'/></query></iq>").await;
    assert_eq!(
        reply,
        vec![to_conn(1, "<iq id='r3' to='juliet@example.com/balcony' type='error'><query xmlns='jabber:iq:roster'><item jid='nurse@example.com'/></query><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>roster full</text></error></iq>")]
    );
}

/// The disco#info of an account's bare JID: the account, and its PEP
/// service (XEP-0163 section 6) with the pubsub features it implements.
const ACCOUNT_INFO: &str = concat!(
    "<identity category='account' type='registered'/><identity category='pubsub' type='pep'/>",
    "<feature var='http://jabber.org/protocol/disco#info'/><feature var='http://jabber.org/protocol/disco#items'/>",
    "<feature var='http://jabber.org/protocol/pubsub'/>",
    "<feature var='http://jabber.org/protocol/pubsub#access-authorize'/>",
    "<feature var='http://jabber.org/protocol/pubsub#access-open'/>",
    "<feature var='http://jabber.org/protocol/pubsub#access-presence'/>",
    "<feature var='http://jabber.org/protocol/pubsub#access-roster'/>",
    "<feature var='http://jabber.org/protocol/pubsub#access-whitelist'/>",
    "<feature var='http://jabber.org/protocol/pubsub#auto-create'/>",
    "<feature var='http://jabber.org/protocol/pubsub#auto-subscribe'/>",
    "<feature var='http://jabber.org/protocol/pubsub#config-node'/>",
    "<feature var='http://jabber.org/protocol/pubsub#config-node-max'/>",
    "<feature var='http://jabber.org/protocol/pubsub#create-and-configure'/>",
    "<feature var='http://jabber.org/protocol/pubsub#create-nodes'/>",
    "<feature var='http://jabber.org/protocol/pubsub#delete-items'/>",
    "<feature var='http://jabber.org/protocol/pubsub#delete-nodes'/>",
    "<feature var='http://jabber.org/protocol/pubsub#filtered-notifications'/>",
    "<feature var='http://jabber.org/protocol/pubsub#item-ids'/>",
    "<feature var='http://jabber.org/protocol/pubsub#last-published'/>",
    "<feature var='http://jabber.org/protocol/pubsub#manage-subscriptions'/>",
    "<feature var='http://jabber.org/protocol/pubsub#member-affiliation'/>",
    "<feature var='http://jabber.org/protocol/pubsub#modify-affiliations'/>",
    "<feature var='http://jabber.org/protocol/pubsub#persistent-items'/>",
    "<feature var='http://jabber.org/protocol/pubsub#publish'/>",
    "<feature var='http://jabber.org/protocol/pubsub#publish-options'/>",
    "<feature var='http://jabber.org/protocol/pubsub#retract-items'/>",
    "<feature var='http://jabber.org/protocol/pubsub#retrieve-default'/>",
    "<feature var='http://jabber.org/protocol/pubsub#retrieve-items'/>",
    "<feature var='http://jabber.org/protocol/pubsub#subscribe'/>",
    "<feature var='http://jabber.org/protocol/pubsub#subscription-notifications'/>",
    "<feature var='urn:xmpp:bookmarks-conversion:0'/>",
    "<feature var='urn:xmpp:bookmarks:1#compat'/>",
    "<feature var='urn:xmpp:bookmarks:1#compat-pep'/>",
    "<feature var='urn:xmpp:pep-vcard-conversion:0'/>",
    "<feature var='urn:xmpp:push:0'/>",
);

#[tokio::test]
async fn the_account_answers_disco_on_its_own_behalf() {
    let mut harness = Harness::new().await;
    let info = ask(&mut harness, "<iq from='juliet@example.com/balcony' id='a1' type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert_eq!(
        info,
        vec![to_conn(1, &format!("<iq type='result' id='a1' to='juliet@example.com/balcony'><query xmlns='http://jabber.org/protocol/disco#info'>{ACCOUNT_INFO}</query></iq>"))]
    );
    let items = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='juliet@example.com' id='a2' type='get'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert_eq!(
        items,
        vec![to_conn(1, "<iq type='result' id='a2' to='juliet@example.com/balcony' from='juliet@example.com'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")]
    );
    let ping = ask(&mut harness, "<iq from='juliet@example.com/balcony' id='a3' type='get'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        ping,
        vec![to_conn(
            1,
            "<iq type='result' id='a3' to='juliet@example.com/balcony'/>"
        )]
    );
}

#[tokio::test]
async fn unknown_account_requests_are_service_unavailable_and_results_consumed() {
    let mut harness = Harness::new().await;
    let reply = ask(&mut harness, "<iq from='juliet@example.com/balcony' id='a4' type='get'><query xmlns='jabber:iq:search'/></iq>").await;
    assert_eq!(
        reply,
        vec![to_conn(1, &format!("<iq id='a4' to='juliet@example.com/balcony' type='error'><query xmlns='jabber:iq:search'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
    assert_eq!(
        ask(
            &mut harness,
            "<iq from='juliet@example.com/balcony' id='a5' type='result'/>"
        )
        .await,
        Vec::new()
    );
    assert_eq!(
        ask(&mut harness, &format!("<iq from='juliet@example.com/balcony' id='a6' type='error'>{SERVICE_UNAVAILABLE}</iq>")).await,
        Vec::new()
    );
}

#[tokio::test]
async fn the_server_answers_disco_info_with_what_it_implements() {
    let mut harness = Harness::new().await;
    let reply = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='s1' type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert_eq!(
        reply,
        vec![to_conn(1, "<iq type='result' id='s1' to='juliet@example.com/balcony' from='example.com'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im' name='Starling'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='http://jabber.org/protocol/disco#items'/><feature var='jabber:iq:last'/><feature var='jabber:iq:private'/><feature var='jabber:iq:roster'/><feature var='jabber:iq:version'/><feature var='msgoffline'/><feature var='urn:xmpp:blocking'/><feature var='urn:xmpp:carbons:2'/><feature var='urn:xmpp:ping'/><feature var='urn:xmpp:reporting:1'/><feature var='vcard-temp'/></query></iq>")]
    );
}

/// In-band registration as the connection-manager declares it: the router
/// advertises it and never answers its IQs (they are answered at the edge).
const EDGE_REGISTRATION: FeatureSpec = FeatureSpec {
    name: "registration",
    specification: "XEP-0077",
    disco_features: &["jabber:iq:register"],
    iq_namespaces: &["jabber:iq:register"],
    stream_features: &[],
};

#[tokio::test]
async fn in_band_registration_is_advertised_when_enabled() {
    let mut harness = Harness::new().await;
    let router = SessionRouter::new(
        harness.router.config().clone(),
        harness.registry.clone(),
        harness.bus.clone(),
        harness.storage.clone(),
        harness.presence.clone(),
    )
    .with_advertised_features(&[&EDGE_REGISTRATION]);
    assert_eq!(
        router.features.disco_features(),
        vec![
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "jabber:iq:last",
            "jabber:iq:private",
            "jabber:iq:register",
            "jabber:iq:roster",
            "jabber:iq:version",
            "msgoffline",
            "urn:xmpp:blocking",
            "urn:xmpp:carbons:2",
            "urn:xmpp:ping",
            "urn:xmpp:reporting:1",
            "vcard-temp",
        ]
    );
    // Off: the harness's router was given no registration.
    assert!(!harness
        .router
        .features
        .disco_features()
        .contains(&"jabber:iq:register"));
    // Advertised or not, a register IQ that reaches the router is not its to answer.
    let register = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='reg1' type='get'><query xmlns='jabber:iq:register'/></iq>").await;
    assert_eq!(
        register,
        vec![to_conn(1, &format!("<iq id='reg1' to='juliet@example.com/balcony' from='example.com' type='error'><query xmlns='jabber:iq:register'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
}

#[tokio::test]
async fn disco_info_lists_the_features_of_every_registered_handler() {
    let harness = Harness::new().await;
    let advertised = harness.router.features.disco_features();
    let handlers = crate::handlers::iq_handlers(harness.router.config());
    let mut expected: Vec<&str> = handlers
        .iter()
        .map(|handler| handler.feature())
        .chain(crate::handlers::WITHOUT_IQ_HANDLER.iter().copied())
        .flat_map(|feature| feature.disco_features.iter().copied())
        .collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(advertised, expected);
    // Every namespace a handler declares is dispatched to that handler alone.
    for handler in &handlers {
        for namespace in handler.feature().iq_namespaces {
            let registered = harness.router.features.handler(namespace);
            assert_eq!(
                registered.map(|registered| registered.feature().name),
                Some(handler.feature().name),
                "namespace {namespace}"
            );
        }
    }
}

#[tokio::test]
async fn disco_of_an_unknown_node_is_item_not_found() {
    let mut harness = Harness::new().await;
    let reply = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='s2' type='get'><query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/></iq>").await;
    assert_eq!(
        reply,
        vec![to_conn(1, "<iq id='s2' to='juliet@example.com/balcony' from='example.com' type='error'><query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
}

#[tokio::test]
async fn the_server_answers_disco_items_ping_and_version() {
    let mut harness = Harness::new().await;
    let items = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='s3' type='get'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert_eq!(
        items,
        vec![to_conn(1, "<iq type='result' id='s3' to='juliet@example.com/balcony' from='example.com'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='irc.example.com'/></query></iq>")]
    );
    let ping = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='c2s1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        ping,
        vec![to_conn(
            1,
            "<iq type='result' id='c2s1' to='juliet@example.com/balcony' from='example.com'/>"
        )]
    );
    let version = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='v1' type='get'><query xmlns='jabber:iq:version'/></iq>").await;
    assert_eq!(
        version,
        vec![to_conn(1, "<iq type='result' id='v1' to='juliet@example.com/balcony' from='example.com'><query xmlns='jabber:iq:version'><name>Starling</name><version>0.1.0</version></query></iq>")]
    );
}

#[tokio::test]
async fn roster_requests_to_the_server_are_refused() {
    let mut harness = Harness::new().await;
    let get = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='s4' type='get'><query xmlns='jabber:iq:roster'/></iq>").await;
    assert_eq!(
        get,
        vec![to_conn(1, &format!("<iq id='s4' to='juliet@example.com/balcony' from='example.com' type='error'><query xmlns='jabber:iq:roster'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
    let set = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='s5' type='set'><query xmlns='jabber:iq:roster'><item jid='nurse@example.com'/></query></iq>").await;
    assert_eq!(
        set,
        vec![to_conn(1, &format!("<iq id='s5' to='juliet@example.com/balcony' from='example.com' type='error'><query xmlns='jabber:iq:roster'><item jid='nurse@example.com'/></query>{FORBIDDEN}</iq>"))]
    );
    assert_eq!(harness.presence.take_calls(), Vec::new());
}

#[tokio::test]
async fn unknown_server_requests_are_service_unavailable_and_replies_consumed() {
    let mut harness = Harness::new().await;
    let unknown = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='s6' type='set'><command xmlns='http://jabber.org/protocol/commands'/></iq>").await;
    assert_eq!(
        unknown,
        vec![to_conn(1, &format!("<iq id='s6' to='juliet@example.com/balcony' from='example.com' type='error'><command xmlns='http://jabber.org/protocol/commands'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
    let ping_set = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='s7' type='set'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        ping_set,
        vec![to_conn(1, &format!("<iq id='s7' to='juliet@example.com/balcony' from='example.com' type='error'><ping xmlns='urn:xmpp:ping'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
    let to_resource = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com/admin' id='s8' type='get'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        to_resource,
        vec![to_conn(1, &format!("<iq id='s8' to='juliet@example.com/balcony' from='example.com/admin' type='error'><ping xmlns='urn:xmpp:ping'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
    assert_eq!(
        ask(
            &mut harness,
            "<iq from='juliet@example.com/balcony' to='example.com' id='s9' type='result'/>"
        )
        .await,
        Vec::new()
    );
    assert_eq!(
        ask(&mut harness, &format!("<iq from='juliet@example.com/balcony' to='example.com' id='s10' type='error'><ping xmlns='urn:xmpp:ping'/>{SERVICE_UNAVAILABLE}</iq>")).await,
        Vec::new()
    );
}

#[tokio::test]
async fn another_accounts_bare_jid_answers_disco_only() {
    let mut harness = Harness::new().await;
    harness
        .online("romeo@example.com/orchard", CM_OTHER, 7, 0)
        .await;
    let info = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='romeo@example.com' id='o1' type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert_eq!(
        info,
        vec![to_conn(1, &format!("<iq type='result' id='o1' to='juliet@example.com/balcony' from='romeo@example.com'><query xmlns='http://jabber.org/protocol/disco#info'>{ACCOUNT_INFO}</query></iq>"))]
    );
    // Never delivered to the account's resources (RFC 6121 section 8.5.2.1.3).
    let version = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='romeo@example.com' id='o2' type='get'><query xmlns='jabber:iq:version'/></iq>").await;
    assert_eq!(
        version,
        vec![to_conn(1, &format!("<iq id='o2' to='juliet@example.com/balcony' from='romeo@example.com' type='error'><query xmlns='jabber:iq:version'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
    let roster_set = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='romeo@example.com' id='o3' type='set'><query xmlns='jabber:iq:roster'/></iq>").await;
    assert_eq!(
        roster_set,
        vec![to_conn(1, &format!("<iq id='o3' to='juliet@example.com/balcony' from='romeo@example.com' type='error'><query xmlns='jabber:iq:roster'/>{FORBIDDEN}</iq>"))]
    );
    assert_eq!(harness.seen_on_other(), Vec::new());
    assert_eq!(harness.presence.take_calls(), Vec::new());
}

#[tokio::test]
async fn disco_of_an_unknown_account_is_service_unavailable() {
    let mut harness = Harness::new().await;
    let reply = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='ghost@example.com' id='g1' type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert_eq!(
        reply,
        vec![to_conn(1, &format!("<iq id='g1' to='juliet@example.com/balcony' from='ghost@example.com' type='error'><query xmlns='http://jabber.org/protocol/disco#info'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
}

#[tokio::test]
async fn iq_to_a_full_jid_is_delivered_to_that_session_only() {
    let mut harness = Harness::new().await;
    harness
        .online("romeo@example.com/orchard", CM_OTHER, 7, -5)
        .await;
    let request = "<iq from='juliet@example.com/balcony' to='romeo@example.com/orchard' id='p1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>";
    assert_eq!(ask(&mut harness, request).await, Vec::new());
    assert_eq!(harness.seen_on_other(), vec![to_conn(7, request)]);

    // And the answer travels back the same way.
    let answer = "<iq from='romeo@example.com/orchard' to='juliet@example.com/balcony' id='p1' type='result'/>";
    harness.bind(JULIET, CM_TEST, 1).await;
    harness
        .send("romeo@example.com/orchard", CM_OTHER, 7, answer)
        .await;
    assert_eq!(harness.seen_on_test(), vec![to_conn(1, answer)]);
}

#[tokio::test]
async fn iq_to_a_missing_full_jid_is_service_unavailable() {
    let mut harness = Harness::new().await;
    harness
        .online("romeo@example.com/orchard", CM_OTHER, 7, 0)
        .await;
    let reply = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='romeo@example.com/gone' id='p2' type='get'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        reply,
        vec![to_conn(1, &format!("<iq id='p2' to='juliet@example.com/balcony' from='romeo@example.com/gone' type='error'><ping xmlns='urn:xmpp:ping'/>{SERVICE_UNAVAILABLE}</iq>"))]
    );
    // A result to a missing session is dropped, never bounced.
    assert_eq!(ask(&mut harness, "<iq from='juliet@example.com/balcony' to='romeo@example.com/gone' id='p3' type='result'/>").await, Vec::new());
    assert_eq!(harness.seen_on_other(), Vec::new());
}

#[tokio::test]
async fn iq_requests_need_one_child_an_id_and_a_type() {
    let mut harness = Harness::new().await;
    let empty = ask(
        &mut harness,
        "<iq from='juliet@example.com/balcony' to='example.com' id='b1' type='get'/>",
    )
    .await;
    assert_eq!(
        empty,
        vec![to_conn(1, &format!("<iq id='b1' to='juliet@example.com/balcony' from='example.com' type='error'>{}</iq>", bad_request(ONE_CHILD)))]
    );
    let two = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='b2' type='get'><ping xmlns='urn:xmpp:ping'/><query xmlns='jabber:iq:version'/></iq>").await;
    assert_eq!(
        two,
        vec![to_conn(1, &format!("<iq id='b2' to='juliet@example.com/balcony' from='example.com' type='error'><ping xmlns='urn:xmpp:ping'/><query xmlns='jabber:iq:version'/>{}</iq>", bad_request(ONE_CHILD)))]
    );
    let no_id = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' type='get'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        no_id,
        vec![to_conn(1, &format!("<iq to='juliet@example.com/balcony' from='example.com' type='error'><ping xmlns='urn:xmpp:ping'/>{}</iq>", bad_request(NO_ID)))]
    );
    let bad_type = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='b3' type='fetch'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        bad_type,
        vec![to_conn(1, &format!("<iq id='b3' to='juliet@example.com/balcony' from='example.com' type='error'><ping xmlns='urn:xmpp:ping'/>{}</iq>", bad_request(BAD_TYPE)))]
    );
    let to_full = ask(
        &mut harness,
        "<iq from='juliet@example.com/balcony' to='romeo@example.com/orchard' id='b4' type='set'/>",
    )
    .await;
    assert_eq!(
        to_full,
        vec![to_conn(1, &format!("<iq id='b4' to='juliet@example.com/balcony' from='romeo@example.com/orchard' type='error'>{}</iq>", bad_request(ONE_CHILD)))]
    );
}

#[tokio::test]
async fn iq_to_a_remote_domain_is_remote_server_not_found() {
    let mut harness = Harness::new().await;
    let reply = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.net' id='x1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        reply,
        vec![to_conn(1, "<iq id='x1' to='juliet@example.com/balcony' from='example.net' type='error'><ping xmlns='urn:xmpp:ping'/><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
    assert_eq!(
        ask(
            &mut harness,
            "<iq from='juliet@example.com/balcony' to='example.net' id='x2' type='result'/>"
        )
        .await,
        Vec::new()
    );
}

#[tokio::test]
async fn iq_to_a_malformed_jid_is_jid_malformed() {
    let mut harness = Harness::new().await;
    let reply = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='a@b@c' id='x3' type='get'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(
        reply,
        vec![to_conn(1, "<iq id='x3' to='juliet@example.com/balcony' from='a@b@c' type='error'><ping xmlns='urn:xmpp:ping'/><error type='modify'><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
}

#[tokio::test]
async fn server_iq_errors_go_back_through_the_routing_rules() {
    let mut harness = Harness::new().await;
    harness.bind("romeo@example.com/orchard", CM_OTHER, 7).await;
    // From the server side (trusted `from`): the reply is routed to the sender's session.
    harness
        .send_from_server("<iq from='romeo@example.com/orchard' to='example.com' id='t1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(
            7,
            "<iq type='result' id='t1' to='romeo@example.com/orchard' from='example.com'/>"
        )]
    );
}

/// XEP-0012 section 3: an account's last logout, to a contact with a
/// presence subscription only; nothing recorded is `item-not-found`; an
/// available account is active now.
#[tokio::test]
async fn last_activity_needs_a_subscription_and_tells_the_last_logout() {
    use starling_api::{last_activity, RosterItem, Subscription};

    let mut harness = Harness::new().await;
    let query = "<iq from='juliet@example.com/balcony' to='romeo@example.com' id='l1' type='get'><query xmlns='jabber:iq:last'/></iq>";
    let error = |condition: &str, kind: &str| {
        vec![to_conn(1, &format!("<iq id='l1' to='juliet@example.com/balcony' from='romeo@example.com' type='error'><query xmlns='jabber:iq:last'/><error type='{kind}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"))]
    };
    assert_eq!(ask(&mut harness, query).await, error("forbidden", "auth"));

    let mut item = RosterItem::new(bare("juliet@example.com"));
    item.subscription = Subscription::From;
    harness
        .storage
        .put_roster_item(&bare("romeo@example.com"), &item)
        .await
        .unwrap();
    assert_eq!(
        ask(&mut harness, query).await,
        error("item-not-found", "cancel")
    );

    let logged_out = fixed_clock() - std::time::Duration::from_secs(903);
    harness
        .storage
        .put_account_data(
            &bare("romeo@example.com"),
            last_activity::KEY,
            Some(&last_activity::document(logged_out, "Heading Home").to_xml()),
        )
        .await
        .unwrap();
    assert_eq!(
        ask(&mut harness, query).await,
        vec![to_conn(1, "<iq type='result' id='l1' to='juliet@example.com/balcony' from='romeo@example.com'><query xmlns='jabber:iq:last' seconds='903'>Heading Home</query></iq>")]
    );

    harness
        .online("romeo@example.com/orchard", CM_OTHER, 7, 0)
        .await;
    assert_eq!(
        ask(&mut harness, query).await,
        vec![to_conn(1, "<iq type='result' id='l1' to='juliet@example.com/balcony' from='romeo@example.com'><query xmlns='jabber:iq:last' seconds='0'/></iq>")]
    );
}
