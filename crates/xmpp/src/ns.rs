//! Namespace names used across the server.

pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const CLIENT: &str = "jabber:client";
pub const SERVER: &str = "jabber:server";
/// The content namespace of an external component's stream (XEP-0114).
pub const COMPONENT_ACCEPT: &str = "jabber:component:accept";
pub const STREAMS_ERROR: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZAS_ERROR: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
pub const ROSTER: &str = "jabber:iq:roster";
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0363 HTTP File Upload.
pub const HTTP_UPLOAD: &str = "urn:xmpp:http:upload:0";
pub const VERSION: &str = "jabber:iq:version";
pub const PRIVATE: &str = "jabber:iq:private";
pub const VCARD: &str = "vcard-temp";
/// XEP-0153 vCard-Based Avatars: the `<x/>` of a presence carrying the photo hash.
pub const VCARD_UPDATE: &str = "vcard-temp:x:update";
/// XEP-0084 User Avatar: the data and metadata PEP nodes (and payload namespaces).
pub const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
pub const AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";
/// XEP-0398 User Avatar to vCard-Based Avatars Conversion.
pub const PEP_VCARD_CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";
pub const LAST: &str = "jabber:iq:last";
pub const REGISTER: &str = "jabber:iq:register";
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const DELAY: &str = "urn:xmpp:delay";
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0388 Extensible SASL Profile (SASL2).
pub const SASL2: &str = "urn:xmpp:sasl:2";
/// XEP-0386 Bind 2.
pub const BIND2: &str = "urn:xmpp:bind:0";
/// XEP-0484 Fast Authentication Streamlining Tokens.
pub const FAST: &str = "urn:xmpp:fast:0";
/// XEP-0440 SASL Channel-Binding Type Capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0352 Client State Indication.
pub const CSI: &str = "urn:xmpp:csi:0";
pub const CARBONS: &str = "urn:xmpp:carbons:2";
pub const FORWARD: &str = "urn:xmpp:forward:0";
pub const HINTS: &str = "urn:xmpp:hints";
pub const CHAT_STATES: &str = "http://jabber.org/protocol/chatstates";
pub const RECEIPTS: &str = "urn:xmpp:receipts";
pub const CHAT_MARKERS: &str = "urn:xmpp:chat-markers:0";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const DIRECT_MUC_INVITATION: &str = "jabber:x:conference";
pub const BLOCKING: &str = "urn:xmpp:blocking";
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
pub const REPORTING: &str = "urn:xmpp:reporting:1";
/// XEP-0115 Entity Capabilities.
pub const CAPS: &str = "http://jabber.org/protocol/caps";
/// XEP-0060 Publish-Subscribe, and its owner, event and error namespaces.
pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const PUBSUB_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
/// The FORM_TYPE of a subscription approval request (XEP-0060 section 8.6).
pub const PUBSUB_SUBSCRIBE_AUTHORIZATION: &str =
    "http://jabber.org/protocol/pubsub#subscribe_authorization";
/// XEP-0357 Push Notifications.
pub const PUSH: &str = "urn:xmpp:push:0";
/// The FORM_TYPE of a XEP-0357 notification's summary (section 5, "urn:xmpp:push:summary").
pub const PUSH_SUMMARY: &str = "urn:xmpp:push:summary";
pub const PUBSUB_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// XEP-0004 Data Forms.
pub const DATA_FORMS: &str = "jabber:x:data";
/// XEP-0313 Message Archive Management (and XEP-0441 preferences in the same namespace).
pub const MAM: &str = "urn:xmpp:mam:2";
/// XEP-0313 section 4.1.1: the `before-id`/`after-id`/`ids` fields, `<flip-page/>` and metadata.
pub const MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359 Unique and Stable Stanza IDs.
pub const SID: &str = "urn:xmpp:sid:0";
/// XEP-0059 Result Set Management.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0122 Data Forms Validation.
pub const DATA_FORMS_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";
