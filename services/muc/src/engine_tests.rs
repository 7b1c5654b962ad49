//! The room engine against literal XML (XEP-0045 examples, abridged).

use super::*;
use starling_xmpp::Limits;

const ROOM: &str = "coven@chat.shakespeare.lit";

fn settings() -> Settings {
    Settings::for_domain("chat.shakespeare.lit")
}

fn xml(text: &str) -> Element {
    parse_element(text.as_bytes(), &Limits::default()).expect("valid xml")
}

fn jid(text: &str) -> FullJid {
    text.parse().expect("valid full jid")
}

struct Harness {
    room: Option<Room>,
    now: SystemTime,
}

impl Harness {
    fn new() -> Self {
        Harness {
            room: None,
            now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn send(&mut self, from: &str, stanza: &str) -> Effects {
        self.send_known(from, stanza, &Known::default())
    }

    fn send_known(&mut self, from: &str, stanza: &str, known: &Known) -> Effects {
        let mut element = xml(stanza);
        element.set_attr("from", from.to_string());
        // A record round trip, as every replica does between stanzas (the
        // history and the last stanza-id are kept beside the record).
        let json = self.room.as_ref().map(|room| {
            (
                serde_json::to_string(room).unwrap(),
                room.history.clone(),
                room.last_stanza_id,
            )
        });
        self.room = json.map(|(json, history, last_stanza_id)| {
            let mut room: Room = serde_json::from_str(&json).unwrap();
            room.history_bytes = history.iter().map(|entry| entry.xml.len()).sum();
            room.history = history;
            room.last_stanza_id = last_stanza_id;
            room
        });
        handle(
            &mut self.room,
            ROOM,
            &element,
            &jid(from),
            self.now,
            &settings(),
            known,
        )
    }

    /// Submit room configuration fields as the owner crone1.
    fn configure(&mut self, fields: &[(&str, &str)]) {
        let fields: String = fields
            .iter()
            .map(|(var, value)| format!("<field var='{var}'><value>{value}</value></field>"))
            .collect();
        let effects = self.send(
            "crone1@shakespeare.lit/desktop",
            &format!("<iq xmlns='jabber:client' type='set' id='cfg' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>{fields}</x></query></iq>"),
        );
        assert_eq!(stanza::stanza_type(&effects.outbound[0].stanza), "result");
    }

    /// A persistent room (it archives), crone1 its owner in it as firstwitch.
    fn with_persistent_room() -> Self {
        let mut harness = Harness::with_instant_room();
        harness.configure(&[("muc#roomconfig_persistentroom", "1")]);
        harness
    }

    /// Say `body` in the room; the reflected message.
    fn say(&mut self, from: &str, body: &str) -> Element {
        let effects = self.send(
            from,
            &format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>{body}</body></message>"),
        );
        effects.outbound[0].stanza.clone()
    }

    fn join(&mut self, from: &str, nick: &str) -> Effects {
        self.send(
            from,
            &format!(
                "<presence xmlns='jabber:client' to='{ROOM}/{nick}'><x xmlns='{MUC}'/></presence>"
            ),
        )
    }

    /// A room created by crone1 and unlocked as an instant room (section 10.1.2).
    fn with_instant_room() -> Self {
        let mut harness = Harness::new();
        harness.join("crone1@shakespeare.lit/desktop", "firstwitch");
        let effects = harness.send(
            "crone1@shakespeare.lit/desktop",
            &format!("<iq xmlns='jabber:client' type='set' id='create1' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query></iq>"),
        );
        assert_eq!(stanza::stanza_type(&effects.outbound[0].stanza), "result");
        harness
    }
}

fn to(effects: &Effects, recipient: &str) -> Vec<Element> {
    effects
        .outbound
        .iter()
        .filter(|outbound| outbound.recipients.iter().any(|r| r == recipient))
        .map(|outbound| outbound.stanza.clone())
        .collect()
}

fn status_codes(presence: &Element) -> Vec<String> {
    presence
        .get_child("x", MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn error_condition(stanza_element: &Element) -> Option<String> {
    stanza_element
        .get_child("error", ns::CLIENT)
        .and_then(|error| {
            error
                .children()
                .find(|c| c.namespace() == ns::STANZAS_ERROR)
                .map(|c| c.name().to_string())
        })
}

#[test]
fn creating_a_room_gives_201_and_locks_it_until_configured() {
    let mut harness = Harness::new();
    let effects = harness.join("crone1@shakespeare.lit/desktop", "firstwitch");
    let own = to(&effects, "crone1@shakespeare.lit/desktop");
    assert_eq!(
        own[0].attr("from"),
        Some("coven@chat.shakespeare.lit/firstwitch")
    );
    assert_eq!(status_codes(&own[0]), vec!["110", "201"]);
    let item = own[0]
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("affiliation"), Some("owner"));
    assert_eq!(item.attr("role"), Some("moderator"));
    assert!(own[0].get_child("occupant-id", OCCUPANT_ID).is_some());
    // Section 10.1.1: others cannot enter a locked room.
    let refused = harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    assert_eq!(
        error_condition(&refused.outbound[0].stanza).as_deref(),
        Some("item-not-found")
    );
}

#[test]
fn joining_sends_occupants_then_self_presence_with_110_then_subject() {
    let mut harness = Harness::with_instant_room();
    let effects = harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let own = to(&effects, "hag66@shakespeare.lit/pda");
    assert_eq!(own.len(), 3);
    assert_eq!(
        own[0].attr("from"),
        Some("coven@chat.shakespeare.lit/firstwitch")
    );
    assert_eq!(
        own[1].attr("from"),
        Some("coven@chat.shakespeare.lit/thirdwitch")
    );
    assert_eq!(status_codes(&own[1]), vec!["110"]);
    assert_eq!(own[2].name(), "message");
    assert!(own[2].get_child("subject", ns::CLIENT).is_some());
    // The moderator sees the newcomer's real JID (semi-anonymous room).
    let to_owner = to(&effects, "crone1@shakespeare.lit/desktop");
    let item = to_owner[0]
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("jid"), Some("hag66@shakespeare.lit/pda"));
    // The newcomer, a participant, does not see the owner's.
    let item = own[0]
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("jid"), None);
}

#[test]
fn a_taken_nick_is_a_conflict_and_bad_nicks_are_refused() {
    let mut harness = Harness::with_instant_room();
    let effects = harness.join("hag66@shakespeare.lit/pda", "firstwitch");
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("conflict")
    );
    assert_eq!(
        effects.outbound[0].stanza.attr("from"),
        Some("coven@chat.shakespeare.lit/firstwitch")
    );
    for bad in ["evil\u{202E}nick", "tab&#9;nick", " padded", "a\u{200B}b"] {
        let effects = harness.join("hag66@shakespeare.lit/pda", bad);
        assert_eq!(
            error_condition(&effects.outbound[0].stanza).as_deref(),
            Some("jid-malformed"),
            "{bad:?}"
        );
    }
    assert!(valid_nick("thirdwitch", 64).is_some());
    assert!(valid_nick(&"x".repeat(65), 64).is_none());
}

#[test]
fn groupchat_is_reflected_to_every_occupant_with_ids_and_kept_in_history() {
    let mut harness = Harness::with_instant_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat' id='m1'><body>Harpier cries</body><stanza-id xmlns='{STANZA_ID}' id='forged' by='{ROOM}'/></message>"),
    );
    assert_eq!(effects.outbound.len(), 1);
    let reflected = &effects.outbound[0];
    assert_eq!(reflected.recipients.len(), 2);
    assert_eq!(
        reflected.stanza.attr("from"),
        Some("coven@chat.shakespeare.lit/thirdwitch")
    );
    assert_eq!(reflected.stanza.attr("id"), Some("m1"));
    let ids: Vec<_> = reflected
        .stanza
        .children()
        .filter(|c| c.is("stanza-id", STANZA_ID))
        .collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0].attr("id"), Some("forged"));
    assert_eq!(ids[0].attr("by"), Some(ROOM));
    assert!(reflected
        .stanza
        .get_child("occupant-id", OCCUPANT_ID)
        .is_some());
    assert_eq!(harness.room.as_ref().unwrap().history.len(), 1);
    // A non-occupant is refused (section 7.4).
    let effects = harness.send(
        "wiccarocks@shakespeare.lit/laptop",
        &format!(
            "<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>hi</body></message>"
        ),
    );
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn history_on_join_honours_maxstanzas_seconds_and_since() {
    let mut harness = Harness::with_instant_room();
    for number in 0..5 {
        harness.now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + number * 60);
        harness.send(
            "crone1@shakespeare.lit/desktop",
            &format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>m{number}</body></message>"),
        );
    }
    let bodies = |effects: &Effects| -> Vec<String> {
        to(effects, "hag66@shakespeare.lit/pda")
            .iter()
            .filter(|s| s.name() == "message" && s.get_child("delay", ns::DELAY).is_some())
            .map(|s| s.get_child("body", ns::CLIENT).unwrap().text())
            .collect()
    };
    let join_with = |harness: &mut Harness, history: &str| {
        let effects = harness.send(
            "hag66@shakespeare.lit/pda",
            &format!("<presence xmlns='jabber:client' to='{ROOM}/thirdwitch'><x xmlns='{MUC}'>{history}</x></presence>"),
        );
        harness.send(
            "hag66@shakespeare.lit/pda",
            &format!("<presence xmlns='jabber:client' type='unavailable' to='{ROOM}/thirdwitch'/>"),
        );
        effects
    };
    assert_eq!(
        bodies(&join_with(&mut harness, "")),
        vec!["m0", "m1", "m2", "m3", "m4"]
    );
    assert_eq!(
        bodies(&join_with(&mut harness, "<history maxstanzas='2'/>")),
        vec!["m3", "m4"]
    );
    assert!(bodies(&join_with(&mut harness, "<history maxstanzas='0'/>")).is_empty());
    assert_eq!(
        bodies(&join_with(&mut harness, "<history seconds='90'/>")),
        vec!["m3", "m4"]
    );
    assert_eq!(
        bodies(&join_with(
            &mut harness,
            "<history since='2023-11-14T22:15:20Z'/>"
        )),
        vec!["m2", "m3", "m4"]
    );
    let effects = join_with(&mut harness, "");
    let delayed = to(&effects, "hag66@shakespeare.lit/pda")
        .into_iter()
        .find(|s| s.get_child("delay", ns::DELAY).is_some())
        .unwrap();
    assert_eq!(
        delayed.get_child("delay", ns::DELAY).unwrap().attr("from"),
        Some(ROOM)
    );
}

#[test]
fn nick_change_sends_303_then_the_new_presence() {
    let mut harness = Harness::with_instant_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<presence xmlns='jabber:client' to='{ROOM}/oldhag'/>"),
    );
    let own = to(&effects, "hag66@shakespeare.lit/pda");
    assert_eq!(own[0].attr("type"), Some("unavailable"));
    assert_eq!(
        own[0].attr("from"),
        Some("coven@chat.shakespeare.lit/thirdwitch")
    );
    assert_eq!(status_codes(&own[0]), vec!["303", "110"]);
    let item = own[0]
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("nick"), Some("oldhag"));
    assert_eq!(
        own[1].attr("from"),
        Some("coven@chat.shakespeare.lit/oldhag")
    );
    assert_eq!(own[1].attr("type"), None);
    // To a taken nick: conflict, nothing changes.
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<presence xmlns='jabber:client' to='{ROOM}/firstwitch'/>"),
    );
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("conflict")
    );
    assert!(harness
        .room
        .as_ref()
        .unwrap()
        .occupant_by_nick("oldhag")
        .is_some());
}

#[test]
fn leaving_broadcasts_unavailable_and_the_last_one_out_ends_a_temporary_room() {
    let mut harness = Harness::with_instant_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let effects = harness.send("hag66@shakespeare.lit/pda", &format!("<presence xmlns='jabber:client' type='unavailable' to='{ROOM}/thirdwitch'><status>gone</status></presence>"));
    let others = to(&effects, "crone1@shakespeare.lit/desktop");
    assert_eq!(others[0].attr("type"), Some("unavailable"));
    let item = others[0]
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("role"), Some("none"));
    assert_eq!(
        status_codes(&to(&effects, "hag66@shakespeare.lit/pda")[0]),
        vec!["110"]
    );
    harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<presence xmlns='jabber:client' type='unavailable' to='{ROOM}/firstwitch'/>"),
    );
    assert!(harness.room.is_none());
}

#[test]
fn a_moderator_kicks_and_an_admin_bans() {
    let mut harness = Harness::with_instant_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    harness.join("wiccarocks@shakespeare.lit/laptop", "secondwitch");
    // A participant may not kick (section 8.2).
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<iq xmlns='jabber:client' type='set' id='kick0' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item nick='secondwitch' role='none'/></query></iq>"),
    );
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("not-allowed")
    );
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='kick1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item nick='thirdwitch' role='none'><reason>Avaunt</reason></item></query></iq>"),
    );
    assert_eq!(stanza::stanza_type(&effects.outbound[0].stanza), "result");
    let kicked = to(&effects, "hag66@shakespeare.lit/pda");
    assert_eq!(status_codes(&kicked[0]), vec!["307", "110"]);
    assert!(harness
        .room
        .as_ref()
        .unwrap()
        .occupant_by_nick("thirdwitch")
        .is_none());
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='ban1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item affiliation='outcast' jid='wiccarocks@shakespeare.lit'/></query></iq>"),
    );
    assert_eq!(
        status_codes(&to(&effects, "wiccarocks@shakespeare.lit/laptop")[0]),
        vec!["301", "110"]
    );
    let effects = harness.join("wiccarocks@shakespeare.lit/laptop", "secondwitch");
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("forbidden")
    );
}

#[test]
fn voice_in_a_moderated_room() {
    let mut harness = Harness::with_instant_room();
    harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='c' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field><field var='muc#roomconfig_moderatedroom'><value>1</value></field></x></query></iq>"),
    );
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let groupchat = format!(
        "<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>hi</body></message>"
    );
    let effects = harness.send("hag66@shakespeare.lit/pda", &groupchat);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("forbidden")
    );
    harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='v' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item nick='thirdwitch' role='participant'/></query></iq>"),
    );
    let effects = harness.send("hag66@shakespeare.lit/pda", &groupchat);
    assert_eq!(effects.outbound[0].recipients.len(), 2);
}

#[test]
fn members_only_and_password_rooms_refuse_with_the_named_errors() {
    let mut harness = Harness::with_instant_room();
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='c' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>1</value></field><field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field><field var='muc#roomconfig_roomsecret'><value>cauldronburn</value></field></x></query></iq>"),
    );
    assert_eq!(stanza::stanza_type(&effects.outbound[0].stanza), "result");
    let effects = harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("registration-required")
    );
    harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='m' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item affiliation='member' jid='hag66@shakespeare.lit'/></query></iq>"),
    );
    let effects = harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("not-authorized")
    );
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<presence xmlns='jabber:client' to='{ROOM}/thirdwitch'><x xmlns='{MUC}'><password>cauldronburn</password></x></presence>"),
    );
    assert_eq!(
        status_codes(
            to(&effects, "hag66@shakespeare.lit/pda")
                .iter()
                .find(|s| s.name() == "presence"
                    && s.attr("from") == Some("coven@chat.shakespeare.lit/thirdwitch"))
                .unwrap()
        ),
        vec!["110"]
    );
    // A wrong form value is refused whole.
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='bad' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_maxusers'><value>100000</value></field></x></query></iq>"),
    );
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn the_room_is_bounded_in_occupants() {
    let mut harness = Harness::with_instant_room();
    harness.room.as_mut().unwrap().config.max_users = 2;
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let effects = harness.join("wiccarocks@shakespeare.lit/laptop", "secondwitch");
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("service-unavailable")
    );
}

#[test]
fn private_messages_subject_and_self_ping() {
    let mut harness = Harness::with_instant_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<message xmlns='jabber:client' to='{ROOM}/firstwitch' type='chat'><body>psst</body></message>"),
    );
    assert_eq!(
        effects.outbound[0].recipients,
        vec!["crone1@shakespeare.lit/desktop".to_string()]
    );
    assert_eq!(
        effects.outbound[0].stanza.attr("from"),
        Some("coven@chat.shakespeare.lit/thirdwitch")
    );
    assert!(effects.outbound[0]
        .stanza
        .get_child("x", MUC_USER)
        .is_some());
    // A participant may not change the subject by default (section 8.1).
    let subject = format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><subject>Fire Burn</subject></message>");
    let effects = harness.send("hag66@shakespeare.lit/pda", &subject);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("forbidden")
    );
    let effects = harness.send("crone1@shakespeare.lit/desktop", &subject);
    assert_eq!(effects.outbound[0].recipients.len(), 2);
    assert_eq!(harness.room.as_ref().unwrap().subject.text, "Fire Burn");
    // XEP-0410: a joined client's ping is answered, a stranger's is not-acceptable.
    let ping = format!("<iq xmlns='jabber:client' type='get' id='p' to='{ROOM}/thirdwitch'><ping xmlns='urn:xmpp:ping'/></iq>");
    let effects = harness.send("hag66@shakespeare.lit/pda", &ping);
    assert_eq!(stanza::stanza_type(&effects.outbound[0].stanza), "result");
    let effects = harness.send("hag66@shakespeare.lit/other", &ping);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn invitations_are_mediated_and_disco_describes_the_room() {
    let mut harness = Harness::with_instant_room();
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<message xmlns='jabber:client' to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='hecate@shakespeare.lit'><reason>Hey Hecate</reason></invite></x></message>"),
    );
    let invitation = &effects.outbound[0];
    assert_eq!(
        invitation.recipients,
        vec!["hecate@shakespeare.lit".to_string()]
    );
    let invite = invitation
        .stanza
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("invite", MUC_USER)
        .unwrap();
    assert_eq!(invite.attr("from"), Some("crone1@shakespeare.lit/desktop"));
    let effects = harness.send(
        "hecate@shakespeare.lit/broom",
        &format!("<iq xmlns='jabber:client' type='get' id='d' to='{ROOM}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    );
    let features: Vec<String> = effects.outbound[0]
        .stanza
        .get_child("query", ns::DISCO_INFO)
        .unwrap()
        .children()
        .filter_map(|c| c.attr("var").map(str::to_string))
        .collect();
    for expected in [
        MUC,
        "muc_temporary",
        "muc_public",
        "muc_open",
        "muc_unsecured",
        "muc_semianonymous",
        OCCUPANT_ID,
    ] {
        assert!(
            features.iter().any(|f| f == expected),
            "{expected} missing: {features:?}"
        );
    }
}

#[test]
fn the_owner_destroys_the_room() {
    let mut harness = Harness::with_instant_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='x' to='{ROOM}'><query xmlns='{MUC_OWNER}'><destroy><reason>bye</reason></destroy></query></iq>"),
    );
    assert!(harness.room.is_none());
    let notice = &to(&effects, "hag66@shakespeare.lit/pda")[0];
    assert!(notice
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("destroy", MUC_USER)
        .is_some());
}

#[test]
fn a_join_from_a_present_full_jid_gets_the_whole_entry_again() {
    let mut harness = Harness::with_instant_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let effects = harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let own = to(&effects, "hag66@shakespeare.lit/pda");
    assert_eq!(
        own[0].attr("from"),
        Some("coven@chat.shakespeare.lit/firstwitch")
    );
    assert_eq!(status_codes(&own[1]), vec!["110"]);
    assert!(own
        .last()
        .unwrap()
        .get_child("subject", ns::CLIENT)
        .is_some());
    assert_eq!(harness.room.as_ref().unwrap().occupants.len(), 2);
}

#[test]
fn the_ban_list_keeps_each_reason() {
    // Section 9.1 (a ban with its reason) and 9.5 (the list returns it).
    let mut harness = Harness::with_instant_room();
    harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='ban1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item affiliation='outcast' jid='earlofcambridge@shakespeare.lit'><reason>Treason</reason></item><item affiliation='outcast' jid='lordscroop@shakespeare.lit'/></query></iq>"),
    );
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='get' id='banlist' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item affiliation='outcast'/></query></iq>"),
    );
    let list = stanza::iq_payload(&effects.outbound[0].stanza).expect("the list");
    let reasons: Vec<(String, Option<String>)> = list
        .children()
        .map(|item| {
            (
                item.attr("jid").unwrap_or_default().to_string(),
                item.get_child("reason", MUC_ADMIN)
                    .map(|reason| reason.text()),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "earlofcambridge@shakespeare.lit".to_string(),
                Some("Treason".to_string())
            ),
            ("lordscroop@shakespeare.lit".to_string(), None),
        ]
    );
    // A new affiliation drops the old reason.
    harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='m' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item affiliation='member' jid='earlofcambridge@shakespeare.lit'/></query></iq>"),
    );
    let room = harness.room.as_ref().unwrap();
    assert_eq!(
        room.affiliation_reason("earlofcambridge@shakespeare.lit"),
        None
    );
}

fn stanza_id(message: &Element) -> String {
    message
        .get_child("stanza-id", STANZA_ID)
        .and_then(|id| id.attr("id"))
        .expect("a stanza-id")
        .to_string()
}

#[test]
fn a_persistent_room_archives_its_messages_under_their_stanza_ids() {
    let mut harness = Harness::with_persistent_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat' id='m1'><body>Thrice</body><x xmlns='{MUC_USER}'><item jid='forged@evil.example'/></x></message>"),
    );
    let reflected = &effects.outbound[0].stanza;
    assert_eq!(effects.archive.len(), 1);
    let entry = &effects.archive[0];
    // XEP-0359 and XEP-0313: the stanza-id is the archive id.
    assert_eq!(entry.id.to_text(), stanza_id(reflected));
    assert_eq!(entry.owner.to_string(), ROOM);
    assert_eq!(entry.with.to_string(), format!("{ROOM}/thirdwitch"));
    // The archived copy: the room's own <x/> with the real JID, never the client's.
    let archived = xml(&entry
        .stanza_xml
        .replace("<message ", "<message xmlns='jabber:client' "));
    let items: Vec<_> = archived
        .children()
        .filter(|child| child.is("x", MUC_USER))
        .collect();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].get_child("item", MUC_USER).unwrap().attr("jid"),
        Some("hag66@shakespeare.lit/pda")
    );
    assert!(archived.attr("to").is_none());
    // Ids grow within the room even when the clock does not.
    let second = harness.say("hag66@shakespeare.lit/pda", "and once");
    assert!(stanza_id(&second).parse::<i64>().unwrap() > entry.id.0);
    // A chat state is not archived, nor a <no-store/> message.
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"),
    );
    assert!(effects.archive.is_empty());
    // The archive is what the views show: without the real JID for those who may not see it.
    let view = archived_view(&entry.stanza_xml, false, &Limits::default()).unwrap();
    assert!(view.get_child("x", MUC_USER).is_none());
    let view = archived_view(&entry.stanza_xml, true, &Limits::default()).unwrap();
    assert!(view.get_child("x", MUC_USER).is_some());
}

#[test]
fn a_temporary_room_or_one_without_archiving_keeps_no_archive() {
    let mut harness = Harness::with_instant_room();
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!(
            "<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>hi</body></message>"
        ),
    );
    assert!(effects.archive.is_empty());
    let query = format!("<iq xmlns='jabber:client' type='set' id='q' to='{ROOM}'><query xmlns='urn:xmpp:mam:2'/></iq>");
    let effects = harness.send("crone1@shakespeare.lit/desktop", &query);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("service-unavailable")
    );
    harness.configure(&[
        ("muc#roomconfig_persistentroom", "1"),
        ("muc#roomconfig_enablearchiving", "0"),
    ]);
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!(
            "<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>hi</body></message>"
        ),
    );
    assert!(effects.archive.is_empty());
    let info = room_info(harness.room.as_ref().unwrap(), true);
    assert!(!info.children().any(|f| f.attr("var") == Some(ns::MAM)));
}

#[test]
fn archive_queries_follow_the_right_to_enter_and_the_whois_setting() {
    let mut harness = Harness::with_persistent_room();
    let query = format!("<iq xmlns='jabber:client' type='set' id='q' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' queryid='f1'/></iq>");
    // An open room: anyone who may enter, even without being in it.
    let effects = harness.send("wiccarocks@shakespeare.lit/laptop", &query);
    assert!(effects.outbound.is_empty());
    let request = effects.archive_query.expect("the query runs");
    assert!(
        !request.show_jids,
        "semi-anonymous: not for a non-moderator"
    );
    let effects = harness.send("crone1@shakespeare.lit/desktop", &query);
    assert!(
        effects.archive_query.unwrap().show_jids,
        "the owner sees real JIDs"
    );
    // The room's disco names its archive (XEP-0313 section 7).
    let info = room_info(harness.room.as_ref().unwrap(), true);
    assert!(info.children().any(|f| f.attr("var") == Some(ns::MAM)));
    // An outcast may not read it (section 9.1: forbidden).
    harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='b' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item jid='wiccarocks@shakespeare.lit' affiliation='outcast'/></query></iq>"),
    );
    let effects = harness.send("wiccarocks@shakespeare.lit/laptop", &query);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("forbidden")
    );
    assert!(effects.archive_query.is_none());
    // Members-only: members read it, others do not.
    harness.configure(&[
        ("muc#roomconfig_membersonly", "1"),
        ("muc#roomconfig_whois", "anyone"),
    ]);
    let effects = harness.send("hecate@shakespeare.lit/broom", &query);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("forbidden")
    );
    harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='m' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item jid='hecate@shakespeare.lit' affiliation='member'/></query></iq>"),
    );
    let effects = harness.send("hecate@shakespeare.lit/broom", &query);
    assert!(
        effects.archive_query.unwrap().show_jids,
        "non-anonymous: everyone sees"
    );
    // The query form (section 4.1.5).
    let effects = harness.send(
        "hecate@shakespeare.lit/broom",
        &format!("<iq xmlns='jabber:client' type='get' id='f' to='{ROOM}'><query xmlns='urn:xmpp:mam:2'/></iq>"),
    );
    assert_eq!(stanza::stanza_type(&effects.outbound[0].stanza), "result");
}

#[test]
fn a_moderator_retracts_a_message_for_everyone_and_in_the_archive() {
    let mut harness = Harness::with_persistent_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let spam = harness.say("hag66@shakespeare.lit/pda", "DM me for free magic potions!");
    let id = stanza_id(&spam);
    let moderate = |id: &str| {
        format!("<iq xmlns='jabber:client' type='set' id='r1' to='{ROOM}'><moderate xmlns='urn:xmpp:message-moderate:1' id='{id}'><retract xmlns='urn:xmpp:message-retract:1'/><reason>Spam</reason></moderate></iq>")
    };
    // Not a moderator: forbidden (XEP-0425 error case).
    let effects = harness.send("hag66@shakespeare.lit/pda", &moderate(&id));
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("forbidden")
    );
    // An id the room does not know: item-not-found.
    let effects = harness.send("crone1@shakespeare.lit/desktop", &moderate("12345"));
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("item-not-found")
    );
    let effects = harness.send("crone1@shakespeare.lit/desktop", &moderate(&id));
    assert_eq!(stanza::stanza_type(&effects.outbound[0].stanza), "result");
    let notice = &effects.outbound[1];
    assert_eq!(notice.recipients.len(), 2);
    assert_eq!(notice.stanza.attr("from"), Some(ROOM));
    let retract = notice
        .stanza
        .get_child("retract", "urn:xmpp:message-retract:1")
        .unwrap();
    assert_eq!(retract.attr("id"), Some(id.as_str()));
    let moderated = retract
        .get_child("moderated", "urn:xmpp:message-moderate:1")
        .unwrap();
    assert_eq!(
        moderated.attr("by"),
        Some("coven@chat.shakespeare.lit/firstwitch")
    );
    // The archived message becomes a tombstone; the history forgets it.
    assert_eq!(effects.tombstones.len(), 1);
    assert_eq!(effects.tombstones[0].0.to_text(), id);
    assert!(!effects.tombstones[0].1.contains("potions"));
    assert!(effects.tombstones[0].1.contains("retracted"));
    assert!(harness
        .room
        .as_ref()
        .unwrap()
        .history
        .iter()
        .all(|entry| !entry.xml.contains("potions")));
    // The notice is archived too.
    assert_eq!(effects.archive.len(), 1);
    // A message only the archive holds (older than the history) is found through the service.
    let known = Known {
        target: Some(starling_api::ArchivedMessage {
            id: starling_api::ArchiveId(42 << 8),
            stanza_xml: format!("<message from='{ROOM}/thirdwitch' type='groupchat'><body>old</body><occupant-id xmlns='{OCCUPANT_ID}' id='x'/></message>"),
        }),
        at_room_limit: false,
    };
    let effects = harness.send_known(
        "crone1@shakespeare.lit/desktop",
        &moderate(&(42i64 << 8).to_string()),
        &known,
    );
    assert_eq!(stanza::stanza_type(&effects.outbound[0].stanza), "result");
    assert_eq!(effects.tombstones.len(), 1);
}

#[test]
fn an_occupant_retracts_only_its_own_messages() {
    let mut harness = Harness::with_persistent_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let mine = harness.say("hag66@shakespeare.lit/pda", "oops");
    let theirs = harness.say("crone1@shakespeare.lit/desktop", "mine");
    let retract = |id: &str| {
        format!("<message xmlns='jabber:client' type='groupchat' to='{ROOM}' id='rt'><retract xmlns='urn:xmpp:message-retract:1' id='{id}'/><body>retracted</body><store xmlns='urn:xmpp:hints'/></message>")
    };
    let effects = harness.send("hag66@shakespeare.lit/pda", &retract(&stanza_id(&theirs)));
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("forbidden")
    );
    assert!(effects.tombstones.is_empty());
    let effects = harness.send("hag66@shakespeare.lit/pda", &retract("999"));
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("item-not-found")
    );
    let effects = harness.send("hag66@shakespeare.lit/pda", &retract(&stanza_id(&mine)));
    // Reflected to everyone (XEP-0424), the original tombstoned.
    assert_eq!(effects.outbound[0].recipients.len(), 2);
    assert!(effects.outbound[0]
        .stanza
        .get_child("retract", "urn:xmpp:message-retract:1")
        .is_some());
    assert_eq!(effects.tombstones.len(), 1);
    assert_eq!(effects.tombstones[0].0.to_text(), stanza_id(&mine));
}

#[test]
fn a_visitor_requests_voice_and_a_moderator_grants_it() {
    let mut harness = Harness::with_instant_room();
    harness.configure(&[("muc#roomconfig_moderatedroom", "1")]);
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let request = format!("<message xmlns='jabber:client' to='{ROOM}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role' type='list-single'><value>participant</value></field></x></message>");
    let effects = harness.send("hag66@shakespeare.lit/pda", &request);
    // Section 8.6: the approval form goes to the moderators.
    assert_eq!(effects.outbound.len(), 1);
    assert_eq!(
        effects.outbound[0].recipients,
        vec!["crone1@shakespeare.lit/desktop".to_string()]
    );
    let form = effects.outbound[0]
        .stanza
        .get_child("x", ns::DATA_FORMS)
        .unwrap();
    assert_eq!(form.attr("type"), Some("form"));
    assert!(form.to_xml().contains("thirdwitch"));
    // A participant does not request voice.
    let effects = harness.send("crone1@shakespeare.lit/desktop", &request);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("not-acceptable")
    );
    let approve = format!("<message xmlns='jabber:client' to='{ROOM}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role'><value>participant</value></field><field var='muc#roomnick'><value>thirdwitch</value></field><field var='muc#request_allow'><value>true</value></field></x></message>");
    let effects = harness.send("crone1@shakespeare.lit/desktop", &approve);
    let own = to(&effects, "hag66@shakespeare.lit/pda");
    let item = own[0]
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("role"), Some("participant"));
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>at last</body></message>"),
    );
    assert_eq!(effects.outbound[0].recipients.len(), 2);
}

#[test]
fn requests_that_reach_others_are_bounded_per_minute() {
    let mut harness = Harness::with_instant_room();
    let invite = format!("<message xmlns='jabber:client' to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='hecate@shakespeare.lit'/></x></message>");
    let limit = settings().max_requests_per_minute;
    for _ in 0..limit {
        let effects = harness.send("crone1@shakespeare.lit/desktop", &invite);
        assert_eq!(
            effects.outbound[0].recipients,
            vec!["hecate@shakespeare.lit".to_string()]
        );
    }
    let effects = harness.send("crone1@shakespeare.lit/desktop", &invite);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("policy-violation")
    );
    // A new minute, a new allowance.
    harness.now += Duration::from_secs(60);
    let effects = harness.send("crone1@shakespeare.lit/desktop", &invite);
    assert_eq!(
        effects.outbound[0].recipients,
        vec!["hecate@shakespeare.lit".to_string()]
    );
}

#[test]
fn iqs_between_occupants_are_relayed_both_ways() {
    let mut harness = Harness::with_instant_room();
    harness.join("hag66@shakespeare.lit/pda", "thirdwitch");
    let version = format!("<iq xmlns='jabber:client' type='get' id='v1' to='{ROOM}/firstwitch'><query xmlns='jabber:iq:version'/></iq>");
    let effects = harness.send("hag66@shakespeare.lit/pda", &version);
    assert_eq!(
        effects.outbound[0].recipients,
        vec!["crone1@shakespeare.lit/desktop".to_string()]
    );
    assert_eq!(
        effects.outbound[0].stanza.attr("from"),
        Some("coven@chat.shakespeare.lit/thirdwitch")
    );
    assert_eq!(effects.outbound[0].stanza.attr("id"), Some("v1"));
    let answer = format!("<iq xmlns='jabber:client' type='result' id='v1' to='{ROOM}/thirdwitch'><query xmlns='jabber:iq:version'><name>x</name></query></iq>");
    let effects = harness.send("crone1@shakespeare.lit/desktop", &answer);
    assert_eq!(
        effects.outbound[0].recipients,
        vec!["hag66@shakespeare.lit/pda".to_string()]
    );
    assert_eq!(
        effects.outbound[0].stanza.attr("from"),
        Some("coven@chat.shakespeare.lit/firstwitch")
    );
    // A ping to another occupant is relayed too; to one's own nick the room answers.
    let ping = format!("<iq xmlns='jabber:client' type='get' id='p' to='{ROOM}/firstwitch'><ping xmlns='urn:xmpp:ping'/></iq>");
    let effects = harness.send("hag66@shakespeare.lit/pda", &ping);
    assert_eq!(
        effects.outbound[0].recipients,
        vec!["crone1@shakespeare.lit/desktop".to_string()]
    );
    // An unknown nick: item-not-found; a stranger: not-acceptable.
    let effects = harness.send(
        "hag66@shakespeare.lit/pda",
        &format!("<iq xmlns='jabber:client' type='get' id='v2' to='{ROOM}/nobody'><query xmlns='jabber:iq:version'/></iq>"),
    );
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("item-not-found")
    );
    let effects = harness.send("stranger@shakespeare.lit/x", &version);
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn a_user_at_the_room_limit_is_refused_and_no_room_is_made() {
    let mut harness = Harness::new();
    let known = Known {
        target: None,
        at_room_limit: true,
    };
    let effects = harness.send_known(
        "crone1@shakespeare.lit/desktop",
        &format!(
            "<presence xmlns='jabber:client' to='{ROOM}/firstwitch'><x xmlns='{MUC}'/></presence>"
        ),
        &known,
    );
    assert_eq!(
        error_condition(&effects.outbound[0].stanza).as_deref(),
        Some("resource-constraint")
    );
    assert!(harness.room.is_none());
}

#[test]
fn destroying_a_room_removes_its_archive() {
    let mut harness = Harness::with_persistent_room();
    let effects = harness.send(
        "crone1@shakespeare.lit/desktop",
        &format!("<iq xmlns='jabber:client' type='set' id='d' to='{ROOM}'><query xmlns='{MUC_OWNER}'><destroy/></query></iq>"),
    );
    assert!(effects.archive_removed);
}
