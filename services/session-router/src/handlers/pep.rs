//! The PEP service of each account (XEP-0163 version 1.2) on the XEP-0060
//! (version 1.24) use cases PEP clients use: publish with auto-create and
//! publish-options (sections 7.1, 7.1.5, XEP-0223), retract (7.2), items
//! (6.5), create (8.1), configure (8.2), default configuration (8.3),
//! delete (8.4), the whitelist's member affiliations (8.9), explicit
//! subscribe and unsubscribe (6.1, 6.2) with the owner's approval of those
//! to an `authorize` node (6.1.4, 8.6) and the owner's subscriptions list
//! (8.8). Beside the explicit ones, subscriptions are implicit (presence
//! plus `+notify`, XEP-0163 section 4.3).
//!
//! Who may do what: only the owner publishes, retracts, configures and
//! deletes (anyone else: `forbidden`, XEP-0060 section 7.1.3.1); reading
//! follows the node's access model (`../pep/mod.rs`).

use async_trait::async_trait;
use starling_api::{
    roster_groups, AccessModel, ApiError, FeatureSpec, MaxItems, PepConfigPatch, PepItem, PepNode,
    PepNodeConfig, PepPublish, PepPublishOutcome, PepSubscriptionState, SendLastPublished,
};
use starling_jid::{BareJid, Jid};
use starling_xmpp::{ns, stanza, Element, IqType, StanzaError, StanzaErrorCondition};

use crate::features::{Addressee, IqHandler, IqRequest};
use crate::pep::subscriptions::subscription_element;
use crate::pep::{self, delete_event, items_event, new_id, retract_event, Denied};
use crate::router::{Routing, SessionRouter};

/// XEP-0163 over XEP-0060. Its disco features are the account's (answered
/// on the bare JID, `disco.rs`), not the server's: the server itself hosts
/// no pubsub service.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "pep",
    specification: "XEP-0163, XEP-0060, XEP-0223, XEP-0115",
    disco_features: &[],
    iq_namespaces: &[ns::PUBSUB, ns::PUBSUB_OWNER],
    stream_features: &[],
};

/// The features of an account's PEP service (XEP-0060 section 10 and
/// XEP-0163 section 9), advertised on its bare JID.
pub(crate) const ACCOUNT_PEP_FEATURES: &[&str] = &[
    ns::PUBSUB,
    "http://jabber.org/protocol/pubsub#access-authorize",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    // XEP-0060 (1.24) section 16.4.3: `max` is a value of pubsub#max_items.
    "http://jabber.org/protocol/pubsub#config-node-max",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#manage-subscriptions",
    "http://jabber.org/protocol/pubsub#member-affiliation",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#subscribe",
    "http://jabber.org/protocol/pubsub#subscription-notifications",
];

/// Answers `<pubsub/>` and `<pubsub xmlns='...#owner'/>` on an account's bare JID.
pub(crate) struct Pep;

/// The longest node name or item id accepted (storage's bound).
const MAX_NAME_BYTES: usize = 1024;

/// The most roster groups a `roster` node names (`pubsub#roster_groups_allowed`).
const MAX_ROSTER_GROUPS: usize = 100;

/// A pubsub error: the condition, and the pubsub#errors element (with a
/// `feature` for `unsupported`) XEP-0060 names for the case.
#[derive(Debug)]
struct PubsubError {
    condition: StanzaErrorCondition,
    application: Option<&'static str>,
    feature: Option<&'static str>,
    text: Option<String>,
}

impl PubsubError {
    fn new(condition: StanzaErrorCondition) -> Self {
        PubsubError {
            condition,
            application: None,
            feature: None,
            text: None,
        }
    }

    fn with(condition: StanzaErrorCondition, application: &'static str) -> Self {
        PubsubError {
            application: Some(application),
            ..PubsubError::new(condition)
        }
    }

    fn unsupported(feature: &'static str) -> Self {
        PubsubError {
            feature: Some(feature),
            ..PubsubError::with(StanzaErrorCondition::FeatureNotImplemented, "unsupported")
        }
    }

    fn text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    fn denied(denied: Denied) -> Self {
        match denied {
            // XEP-0060 section 6.5.9.5 (and 6.1.3.2 for a subscribe).
            Denied::PresenceSubscriptionRequired => PubsubError::with(
                StanzaErrorCondition::NotAuthorized,
                "presence-subscription-required",
            ),
            // XEP-0060 section 6.5.9.6 (6.1.3.3).
            Denied::NotInRosterGroup => {
                PubsubError::with(StanzaErrorCondition::NotAuthorized, "not-in-roster-group")
            }
            // XEP-0060 section 6.5.9.7 (6.1.3.4).
            Denied::NotOnWhitelist => {
                PubsubError::with(StanzaErrorCondition::NotAllowed, "closed-node")
            }
            // XEP-0060 section 6.5.9.3: "not subscribed (which includes
            // having a pending subscription)".
            Denied::NotSubscribed => {
                PubsubError::with(StanzaErrorCondition::NotAuthorized, "not-subscribed")
            }
        }
    }

    fn from_api(error: &ApiError) -> Self {
        let stanza_error = error.to_stanza_error();
        PubsubError {
            text: stanza_error.text.clone(),
            ..PubsubError::new(stanza_error.condition)
        }
    }

    /// The error reply, without the request's payload (a refused 64 KiB
    /// item is not sent back).
    fn reply(&self, iq: &Element) -> Option<Element> {
        let mut shallow = Element::new(iq.name(), iq.namespace());
        for (name, value) in iq.attrs() {
            shallow.set_attr(name, value);
        }
        let mut error = StanzaError::new(self.condition);
        if let Some(text) = &self.text {
            error = error.with_text(text.clone());
        }
        let mut reply = stanza::error_reply(&shallow, &error)?;
        if let Some(application) = self.application {
            let mut condition = Element::new(application, ns::PUBSUB_ERRORS);
            if let Some(feature) = self.feature {
                condition.set_attr("feature", feature);
            }
            if let Some(error_element) = reply.children_mut().find(|child| child.name() == "error")
            {
                error_element.append_child(condition);
            }
        }
        Some(reply)
    }
}

type Answer = Result<Element, PubsubError>;

/// Who a request is about: the owner of the PEP service addressed, the
/// requesting account, and the requester's full JID (the publisher).
struct Parties {
    owner: BareJid,
    requester: BareJid,
    requester_full: String,
}

impl Parties {
    fn is_owner(&self) -> bool {
        self.owner == self.requester
    }
}

fn parties(request: &IqRequest<'_>) -> Result<Parties, PubsubError> {
    match request.addressee {
        Addressee::OwnAccount { jid, .. } => Ok(Parties {
            owner: jid.to_bare(),
            requester: jid.to_bare(),
            requester_full: jid.to_string(),
        }),
        Addressee::OtherAccount => {
            let owner = request
                .other_account()
                .ok_or_else(|| PubsubError::new(StanzaErrorCondition::BadRequest))?;
            let requester = pep::requester_of(&request.iq)
                .ok_or_else(|| PubsubError::new(StanzaErrorCondition::BadRequest))?;
            Ok(Parties {
                owner,
                requester,
                requester_full: request.iq.attr("from").unwrap_or("").to_string(),
            })
        }
        // The server hosts no pubsub service of its own (only the PEP
        // service of each account): RFC 6120 section 8.3.3.19.
        Addressee::Server => Err(PubsubError::new(StanzaErrorCondition::ServiceUnavailable)),
    }
}

/// The single child of `pubsub` that names the operation, with the
/// publish-options or configure sibling some operations allow.
fn operation(payload: &Element) -> Result<(&Element, Option<&Element>), PubsubError> {
    let mut children = payload.children();
    let Some(first) = children.next() else {
        return Err(
            PubsubError::new(StanzaErrorCondition::BadRequest).text("an empty pubsub request")
        );
    };
    let second = children.next();
    if children.next().is_some() {
        return Err(
            PubsubError::new(StanzaErrorCondition::BadRequest).text("too many pubsub children")
        );
    }
    Ok((first, second))
}

/// A `node` attribute, required (XEP-0060 `nodeid-required`).
fn node_attribute(element: &Element) -> Result<&str, PubsubError> {
    match element.attr("node") {
        Some(node) if !node.is_empty() && node.len() <= MAX_NAME_BYTES => Ok(node),
        Some(node) if node.len() > MAX_NAME_BYTES => {
            Err(PubsubError::new(StanzaErrorCondition::NotAcceptable)
                .text(format!("a node name has at most {MAX_NAME_BYTES} bytes")))
        }
        _ => Err(PubsubError::with(
            StanzaErrorCondition::BadRequest,
            "nodeid-required",
        )),
    }
}

/// The `jid` of a subscribe or unsubscribe: required (`bad-request` +
/// `jid-required`), and the requester's own bare or full JID (section
/// 6.1.3.1: `bad-request` + `invalid-jid`).
fn subscription_jid(element: &Element, parties: &Parties) -> Result<Jid, PubsubError> {
    let Some(jid) = element.attr("jid") else {
        return Err(PubsubError::with(
            StanzaErrorCondition::BadRequest,
            "jid-required",
        ));
    };
    match jid.parse::<Jid>() {
        Ok(jid) if *jid.bare() == parties.requester => Ok(jid),
        _ => Err(PubsubError::with(
            StanzaErrorCondition::BadRequest,
            "invalid-jid",
        )),
    }
}

/// The roster groups of the owner's roster, offered by the configuration form.
async fn owner_roster_groups(
    router: &SessionRouter,
    owner: &BareJid,
) -> Result<Vec<String>, PubsubError> {
    let (_, items) = router
        .storage
        .roster(owner)
        .await
        .map_err(|error| PubsubError::from_api(&error))?;
    Ok(roster_groups(
        items.into_iter().flat_map(|item| item.groups),
    ))
}

/// The `jid` of an owner's list entry (an affiliation, a subscription);
/// `bad-request` with `text` when it is missing or not a `J`.
fn entry_jid<J: std::str::FromStr>(entry: &Element, text: &'static str) -> Result<J, PubsubError> {
    entry
        .attr("jid")
        .and_then(|jid| jid.parse::<J>().ok())
        .ok_or_else(|| PubsubError::new(StanzaErrorCondition::BadRequest).text(text))
}

/// A storage error of an owner's list change: a bound reached is `policy-violation`.
fn limit_is_policy_violation(error: ApiError) -> PubsubError {
    match error {
        ApiError::LimitReached(text) => {
            PubsubError::new(StanzaErrorCondition::PolicyViolation).text(text)
        }
        other => PubsubError::from_api(&other),
    }
}

fn not_owner() -> PubsubError {
    // XEP-0060 section 7.1.3.1 (and 7.2.3.1, 8.2.3.2, 8.4.3.1).
    PubsubError::new(StanzaErrorCondition::Forbidden)
        .text("only the owner of a personal eventing service may change it")
}

fn no_node() -> PubsubError {
    PubsubError::new(StanzaErrorCondition::ItemNotFound)
}

/// A XEP-0004 form of `form_type` read into the configuration fields PEP
/// clients use; fields this service does not keep are ignored.
fn read_config_form(
    x: &Element,
    form_type: &str,
    max_items_limit: u32,
) -> Result<PepConfigPatch, PubsubError> {
    let invalid = |text: String| {
        PubsubError::with(StanzaErrorCondition::BadRequest, "invalid-options").text(text)
    };
    if !x.is("x", ns::DATA_FORMS) {
        return Err(invalid("a jabber:x:data form is expected".into()));
    }
    let mut patch = PepConfigPatch::default();
    for field in x
        .children()
        .filter(|child| child.is("field", ns::DATA_FORMS))
    {
        let var = field.attr("var").unwrap_or("");
        let values: Vec<String> = field
            .children()
            .filter(|child| child.is("value", ns::DATA_FORMS))
            .map(|child| child.text().trim().to_string())
            .collect();
        let value = values.first().map_or("", String::as_str);
        let boolean = |value: &str| match value {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            other => Err(invalid(format!("{var}: {other:?} is not a boolean"))),
        };
        // XEP-0060 section 8.2.5.3: an unsupported option value is
        // `not-acceptable`.
        let unacceptable =
            |text: String| PubsubError::new(StanzaErrorCondition::NotAcceptable).text(text);
        match var {
            "FORM_TYPE" => {
                if value != form_type {
                    return Err(invalid(format!("the FORM_TYPE must be {form_type}")));
                }
            }
            "pubsub#access_model" => {
                patch.access_model = Some(AccessModel::from_name(value).ok_or_else(|| {
                    unacceptable(format!(
                        "access model {value:?} is not supported \
                         (presence, open, roster, authorize, whitelist)"
                    ))
                })?);
            }
            "pubsub#max_items" => {
                let max_items = if value == "max" {
                    MaxItems::Max
                } else {
                    let count = value.parse::<u32>().map_err(|_| {
                        invalid(format!("pubsub#max_items: {value:?} is not a count"))
                    })?;
                    if count > max_items_limit {
                        return Err(unacceptable(format!(
                            "a node keeps at most {max_items_limit} items (pep.max_items_per_node)"
                        )));
                    }
                    MaxItems::Count(count)
                };
                patch.max_items = Some(max_items);
            }
            "pubsub#persist_items" => patch.persist_items = Some(boolean(value)?),
            "pubsub#notify_retract" => patch.notify_retract = Some(boolean(value)?),
            // XEP-0060 section 16.4.3: a list-multi of roster group names.
            "pubsub#roster_groups_allowed" => {
                if values.len() > MAX_ROSTER_GROUPS {
                    return Err(unacceptable(format!(
                        "at most {MAX_ROSTER_GROUPS} roster groups"
                    )));
                }
                if let Some(bad) = values.iter().find(|group| {
                    group.is_empty() || group.contains('\n') || group.len() > MAX_NAME_BYTES
                }) {
                    return Err(unacceptable(format!(
                        "{bad:?} is not a roster group name (1 to {MAX_NAME_BYTES} bytes, one line)"
                    )));
                }
                patch.roster_groups_allowed = Some(roster_groups(values.iter().cloned()));
            }
            "pubsub#send_last_published_item" => {
                patch.send_last_published_item =
                    Some(SendLastPublished::from_name(value).ok_or_else(|| {
                        unacceptable(format!(
                            "send_last_published_item {value:?} is not supported"
                        ))
                    })?);
            }
            _ => tracing::debug!(field = var, "pubsub option not kept, ignored"),
        }
    }
    Ok(patch)
}

fn field(var: &str, kind: &str, values: &[&str], options: &[&str]) -> Element {
    let mut field = Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind);
    for value in values {
        field.append_child(Element::new("value", ns::DATA_FORMS).with_text(*value));
    }
    for option in options {
        field.append_child(
            Element::new("option", ns::DATA_FORMS)
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(*option)),
        );
    }
    field
}

fn boolean_value(value: bool) -> &'static str {
    if value {
        "1"
    } else {
        "0"
    }
}

/// The node configuration form (XEP-0060 section 8.2.1) of `config`; the
/// roster groups offered are `owner_groups` (the owner's roster's) and
/// those the node names.
fn config_form(config: &PepNodeConfig, owner_groups: &[String]) -> Element {
    let max_items = config.max_items.to_string();
    let allowed: Vec<&str> = config
        .roster_groups_allowed
        .iter()
        .map(String::as_str)
        .collect();
    let offered = roster_groups(
        owner_groups
            .iter()
            .chain(&config.roster_groups_allowed)
            .cloned(),
    );
    let offered: Vec<&str> = offered.iter().map(String::as_str).collect();
    Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", "hidden", &[ns::PUBSUB_NODE_CONFIG], &[]))
        .with_child(field(
            "pubsub#access_model",
            "list-single",
            &[config.access_model.as_str()],
            &["authorize", "open", "presence", "roster", "whitelist"],
        ))
        .with_child(field(
            "pubsub#roster_groups_allowed",
            "list-multi",
            &allowed,
            &offered,
        ))
        .with_child(field("pubsub#max_items", "text-single", &[&max_items], &[]))
        .with_child(field(
            "pubsub#persist_items",
            "boolean",
            &[boolean_value(config.persist_items)],
            &[],
        ))
        .with_child(field(
            "pubsub#send_last_published_item",
            "list-single",
            &[config.send_last_published_item.as_str()],
            &["never", "on_sub", "on_sub_and_presence"],
        ))
        .with_child(field(
            "pubsub#notify_retract",
            "boolean",
            &[boolean_value(config.notify_retract)],
            &[],
        ))
}

/// The node `node_name` of `owner`; `item-not-found` when there is none.
async fn existing_node(
    router: &SessionRouter,
    owner: &BareJid,
    node_name: &str,
) -> Result<PepNode, PubsubError> {
    router
        .storage
        .pep_node(owner, node_name)
        .await
        .map_err(|error| PubsubError::from_api(&error))?
        .ok_or_else(no_node)
}

fn result_with(iq: &Element, payload: Element) -> Element {
    stanza::iq_result(iq).with_child(payload)
}

impl Pep {
    /// XEP-0060 section 7.1 with XEP-0163 section 3 (auto-create) and
    /// section 7.1.5 (publish-options as preconditions).
    async fn publish(
        &self,
        router: &SessionRouter,
        iq: &Element,
        parties: &Parties,
        publish: &Element,
        options: Option<&Element>,
    ) -> Answer {
        if !parties.is_owner() {
            return Err(not_owner());
        }
        let node = node_attribute(publish)?;
        let settings = router.config.pep;
        let patch = match options {
            None => PepConfigPatch::default(),
            Some(options) if options.is("publish-options", ns::PUBSUB) => {
                match options.children().next() {
                    Some(form) => read_config_form(
                        form,
                        ns::PUBSUB_PUBLISH_OPTIONS,
                        settings.max_items_per_node,
                    )?,
                    None => PepConfigPatch::default(),
                }
            }
            Some(_) => {
                return Err(PubsubError::new(StanzaErrorCondition::BadRequest)
                    .text("a publish takes only <publish-options/> beside it"))
            }
        };
        let mut items = publish.children().filter(|child| child.name() == "item");
        let item = match (items.next(), items.next()) {
            (Some(item), None) => item,
            // Section 7.1.3.6: a persistent node takes one item per publish.
            (None, _) => {
                return Err(PubsubError::with(
                    StanzaErrorCondition::BadRequest,
                    "item-required",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(
                    PubsubError::with(StanzaErrorCondition::BadRequest, "invalid-payload")
                        .text("one item per publish"),
                )
            }
        };
        let mut payloads = item.children();
        let payload = match (payloads.next(), payloads.next()) {
            (Some(payload), None) => payload,
            (None, _) => {
                return Err(PubsubError::with(
                    StanzaErrorCondition::BadRequest,
                    "payload-required",
                ))
            }
            // Section 7.1.3.5: one payload element.
            (Some(_), Some(_)) => {
                return Err(PubsubError::with(
                    StanzaErrorCondition::BadRequest,
                    "invalid-payload",
                ))
            }
        };
        let payload_xml = payload.to_xml();
        if payload_xml.len() > settings.max_item_bytes {
            // Section 7.1.3.4.
            return Err(
                PubsubError::with(StanzaErrorCondition::NotAcceptable, "payload-too-big").text(
                    format!(
                        "an item payload has at most {} bytes (pep.max_item_bytes)",
                        settings.max_item_bytes
                    ),
                ),
            );
        }
        let item_id = match item.attr("id") {
            Some(id) if id.len() > MAX_NAME_BYTES => {
                return Err(PubsubError::new(StanzaErrorCondition::NotAcceptable)
                    .text(format!("an item id has at most {MAX_NAME_BYTES} bytes")))
            }
            Some(id) if !id.is_empty() => id.to_string(),
            // Section 7.1.2: the service generates an id.
            _ => new_id(),
        };
        let pep_item = PepItem {
            id: item_id.clone(),
            publisher: parties.requester_full.clone(),
            payload_xml,
        };
        let outcome = router
            .storage
            .publish_pep_item(
                &parties.owner,
                &PepPublish {
                    node: node.to_string(),
                    item: Some(pep_item.clone()),
                    options: patch,
                },
                settings.limits(),
            )
            .await
            .map_err(|error| PubsubError::from_api(&error))?;
        let stored = match outcome {
            PepPublishOutcome::Published { node, .. } => node,
            // XEP-0060 section 7.1.5.
            PepPublishOutcome::PreconditionNotMet => {
                return Err(PubsubError::with(
                    StanzaErrorCondition::Conflict,
                    "precondition-not-met",
                ))
            }
            PepPublishOutcome::NodeLimitReached => {
                return Err(PubsubError::with(
                    StanzaErrorCondition::PolicyViolation,
                    "max-nodes-exceeded",
                )
                .text(format!(
                    "an account owns at most {} nodes (pep.max_nodes_per_account)",
                    settings.max_nodes_per_account
                )))
            }
        };
        if let Some(event) = items_event(&stored.name, &pep_item) {
            router.notify_pep(&parties.owner, &stored, event).await;
        }
        // XEP-0398 section 3.1: the vCard follows the avatar.
        if stored.name == ns::AVATAR_METADATA {
            router
                .avatar_metadata_published(&parties.owner, payload)
                .await;
        }
        // XEP-0411: the private XML bookmarks follow the PEP ones.
        if stored.name == crate::bookmarks::NODE {
            router
                .pep_bookmarks_published(&parties.owner, &parties.requester_full, payload)
                .await;
        }
        // XEP-0402 section 5: the XEP-0048 bookmarks follow the per-room items.
        if stored.name == crate::bookmarks2::NODE {
            router
                .bookmarks2_changed(&parties.owner, &parties.requester_full)
                .await;
        }
        Ok(result_with(
            iq,
            Element::new("pubsub", ns::PUBSUB).with_child(
                Element::new("publish", ns::PUBSUB)
                    .with_attr("node", stored.name.clone())
                    .with_child(Element::new("item", ns::PUBSUB).with_attr("id", item_id)),
            ),
        ))
    }

    /// XEP-0060 section 7.2: delete an item, notifying when asked
    /// (`notify`) or configured (`pubsub#notify_retract`).
    async fn retract(
        &self,
        router: &SessionRouter,
        iq: &Element,
        parties: &Parties,
        retract: &Element,
    ) -> Answer {
        if !parties.is_owner() {
            return Err(not_owner());
        }
        let node_name = node_attribute(retract)?;
        let Some(item_id) = retract
            .children()
            .find(|child| child.name() == "item")
            .and_then(|item| item.attr("id"))
            .filter(|id| !id.is_empty())
        else {
            // Section 7.2.3.3.
            return Err(PubsubError::with(
                StanzaErrorCondition::BadRequest,
                "item-required",
            ));
        };
        let storage = &router.storage;
        let node = existing_node(router, &parties.owner, node_name).await?;
        let removed = storage
            .retract_pep_item(&parties.owner, node_name, item_id)
            .await
            .map_err(|error| PubsubError::from_api(&error))?;
        if !removed {
            // Section 7.2.3.5.
            return Err(no_node());
        }
        let notify = match retract.attr("notify") {
            Some("1" | "true") => true,
            Some(_) => false,
            None => node.config.notify_retract,
        };
        if notify {
            router
                .notify_pep(&parties.owner, &node, retract_event(node_name, item_id))
                .await;
        }
        if node_name == crate::bookmarks2::NODE {
            router
                .bookmarks2_changed(&parties.owner, &parties.requester_full)
                .await;
        }
        Ok(stanza::iq_result(iq))
    }

    /// XEP-0060 section 6.5: all items, the newest `max_items`, or by id.
    async fn items(
        &self,
        router: &SessionRouter,
        iq: &Element,
        parties: &Parties,
        items: &Element,
    ) -> Answer {
        let node_name = node_attribute(items)?;
        let storage = &router.storage;
        // XEP-0411 section 4: bookmarks kept only in private XML reach PEP
        // before the owner's first read.
        if node_name == crate::bookmarks::NODE && parties.is_owner() {
            router
                .bookmarks_before_pep_read(&parties.owner, &parties.requester_full)
                .await;
        }
        // XEP-0402 section 5: so do the XEP-0048 ones before the first
        // read of the per-room node.
        if node_name == crate::bookmarks2::NODE && parties.is_owner() {
            router
                .bookmarks2_before_read(&parties.owner, &parties.requester_full)
                .await;
        }
        let node = existing_node(router, &parties.owner, node_name).await?;
        router
            .pep_access(&parties.owner, &node, &parties.requester)
            .await
            .map_err(|error| PubsubError::from_api(&error))?
            .map_err(PubsubError::denied)?;
        let max = match items.attr("max_items") {
            None => None,
            Some(value) => Some(value.parse::<u32>().map_err(|_| {
                PubsubError::new(StanzaErrorCondition::BadRequest)
                    .text("max_items is a positive count")
            })?),
        };
        let ids: Vec<String> = items
            .children()
            .filter(|child| child.name() == "item")
            .filter_map(|item| item.attr("id"))
            .take(router.config.pep.max_items_per_node as usize)
            .map(str::to_string)
            .collect();
        let mut found = storage
            .pep_items(&parties.owner, node_name, &ids, max)
            .await
            .map_err(|error| PubsubError::from_api(&error))?;
        // Newest first from storage; returned in the order published.
        found.reverse();
        let mut result = Element::new("items", ns::PUBSUB).with_attr("node", node_name);
        for item in &found {
            if let Some(element) = pep::item_element(ns::PUBSUB, item) {
                result.append_child(element);
            }
        }
        Ok(result_with(
            iq,
            Element::new("pubsub", ns::PUBSUB).with_child(result),
        ))
    }

    /// XEP-0060 section 8.1: create a node, with a configuration (8.1.3).
    async fn create(
        &self,
        router: &SessionRouter,
        iq: &Element,
        parties: &Parties,
        create: &Element,
        configure: Option<&Element>,
    ) -> Answer {
        if !parties.is_owner() {
            return Err(not_owner());
        }
        let Some(node_name) = create.attr("node") else {
            // Instant nodes (section 8.1.2) make no sense for PEP.
            return Err(PubsubError::with(
                StanzaErrorCondition::NotAcceptable,
                "nodeid-required",
            ));
        };
        node_attribute(create)?;
        let settings = router.config.pep;
        let patch = match configure.and_then(|configure| configure.children().next()) {
            Some(form) => {
                read_config_form(form, ns::PUBSUB_NODE_CONFIG, settings.max_items_per_node)?
            }
            None => PepConfigPatch::default(),
        };
        let node = PepNode {
            name: node_name.to_string(),
            config: patch.apply(PepNodeConfig::default()),
        };
        let created = router
            .storage
            .create_pep_node(&parties.owner, &node, settings.limits())
            .await
            .map_err(|error| match error {
                ApiError::LimitReached(text) => {
                    PubsubError::with(StanzaErrorCondition::PolicyViolation, "max-nodes-exceeded")
                        .text(text)
                }
                other => PubsubError::from_api(&other),
            })?;
        if !created {
            // Section 8.1.3.7 (the NodeID exists).
            return Err(PubsubError::new(StanzaErrorCondition::Conflict));
        }
        Ok(stanza::iq_result(iq))
    }

    /// XEP-0060 sections 8.2 (configure get and set), 8.3 (default) and 8.4 (delete).
    async fn owner_request(
        &self,
        router: &SessionRouter,
        iq: &Element,
        iq_type: IqType,
        parties: &Parties,
        request: &Element,
    ) -> Answer {
        if !parties.is_owner() {
            return Err(not_owner());
        }
        let settings = router.config.pep;
        let storage = &router.storage;
        let owner = &parties.owner;
        let api = |error: ApiError| PubsubError::from_api(&error);
        match (iq_type, request.name()) {
            (IqType::Get, "default") => Ok(result_with(
                iq,
                Element::new("pubsub", ns::PUBSUB_OWNER).with_child(
                    Element::new("default", ns::PUBSUB_OWNER).with_child(config_form(
                        &PepNodeConfig::default(),
                        &owner_roster_groups(router, owner).await?,
                    )),
                ),
            )),
            (IqType::Get, "configure") => {
                let node_name = node_attribute(request)?;
                let node = existing_node(router, owner, node_name).await?;
                let groups = owner_roster_groups(router, owner).await?;
                Ok(result_with(
                    iq,
                    Element::new("pubsub", ns::PUBSUB_OWNER).with_child(
                        Element::new("configure", ns::PUBSUB_OWNER)
                            .with_attr("node", node_name)
                            .with_child(config_form(&node.config, &groups)),
                    ),
                ))
            }
            (IqType::Set, "configure") => {
                let node_name = node_attribute(request)?;
                let node = existing_node(router, owner, node_name).await?;
                let Some(form) = request.children().next() else {
                    return Err(PubsubError::new(StanzaErrorCondition::BadRequest)
                        .text("a configure set carries a form"));
                };
                // XEP-0004 section 3.2: a cancelled form changes nothing.
                if form.attr("type") == Some("cancel") {
                    return Ok(stanza::iq_result(iq));
                }
                let patch =
                    read_config_form(form, ns::PUBSUB_NODE_CONFIG, settings.max_items_per_node)?;
                let configured = PepNode {
                    name: node.name.clone(),
                    config: patch.apply(node.config),
                };
                storage
                    .configure_pep_node(owner, &configured, settings.limits())
                    .await
                    .map_err(api)?;
                Ok(stanza::iq_result(iq))
            }
            (IqType::Set, "delete") => {
                let node_name = node_attribute(request)?;
                let node = existing_node(router, owner, node_name).await?;
                // The subscribers are computed before the node (and its
                // whitelist) goes, then told (section 8.4.2).
                let recipients = router.pep_recipients(owner, &node).await;
                if !storage
                    .delete_pep_node(owner, node_name)
                    .await
                    .map_err(api)?
                {
                    return Err(no_node());
                }
                match recipients {
                    Ok(recipients) => {
                        router
                            .send_pep_event(owner, delete_event(node_name), &recipients)
                            .await
                    }
                    Err(error) => {
                        router.metrics.pep_notifications_failed();
                        tracing::warn!(owner = %owner, %error, "pep delete notification recipients failed");
                    }
                }
                Ok(stanza::iq_result(iq))
            }
            (IqType::Get, "affiliations") => {
                let node_name = node_attribute(request)?;
                existing_node(router, owner, node_name).await?;
                let members = storage.pep_whitelist(owner, node_name).await.map_err(api)?;
                let mut affiliations =
                    Element::new("affiliations", ns::PUBSUB_OWNER).with_attr("node", node_name);
                affiliations.append_child(
                    Element::new("affiliation", ns::PUBSUB_OWNER)
                        .with_attr("jid", owner.to_string())
                        .with_attr("affiliation", "owner"),
                );
                for member in members {
                    affiliations.append_child(
                        Element::new("affiliation", ns::PUBSUB_OWNER)
                            .with_attr("jid", member.to_string())
                            .with_attr("affiliation", "member"),
                    );
                }
                Ok(result_with(
                    iq,
                    Element::new("pubsub", ns::PUBSUB_OWNER).with_child(affiliations),
                ))
            }
            (IqType::Set, "affiliations") => {
                let node_name = node_attribute(request)?;
                let mut add = Vec::new();
                let mut remove = Vec::new();
                for affiliation in request
                    .children()
                    .filter(|child| child.name() == "affiliation")
                {
                    let jid: BareJid = entry_jid(affiliation, "an affiliation names a bare jid")?;
                    if &jid == owner {
                        // Section 8.9.2.4: the owner stays the owner.
                        return Err(PubsubError::new(StanzaErrorCondition::NotAcceptable)
                            .text("the owner's affiliation cannot change"));
                    }
                    match affiliation.attr("affiliation") {
                        Some("member") => add.push(jid),
                        Some("none") => remove.push(jid),
                        _ => {
                            return Err(PubsubError::new(StanzaErrorCondition::NotAcceptable)
                                .text("the affiliations of a personal node are member and none"))
                        }
                    }
                }
                storage
                    .update_pep_whitelist(
                        owner,
                        node_name,
                        &add,
                        &remove,
                        settings.max_whitelist_per_node,
                    )
                    .await
                    .map_err(limit_is_policy_violation)?;
                Ok(stanza::iq_result(iq))
            }
            (_, "purge") => Err(PubsubError::unsupported("purge-nodes")),
            // Section 8.8.1: the approved subscriptions ("SHOULD NOT return
            // entities whose subscription state is pending").
            (IqType::Get, "subscriptions") => {
                let node_name = node_attribute(request)?;
                existing_node(router, owner, node_name).await?;
                let mut list =
                    Element::new("subscriptions", ns::PUBSUB_OWNER).with_attr("node", node_name);
                for subscription in storage
                    .pep_subscriptions(owner, node_name)
                    .await
                    .map_err(api)?
                    .into_iter()
                    .filter(|subscription| subscription.state == PepSubscriptionState::Subscribed)
                {
                    list.append_child(
                        Element::new("subscription", ns::PUBSUB_OWNER)
                            .with_attr("jid", subscription.jid.to_string())
                            .with_attr("subscription", subscription.state.as_str()),
                    );
                }
                Ok(result_with(
                    iq,
                    Element::new("pubsub", ns::PUBSUB_OWNER).with_child(list),
                ))
            }
            (IqType::Set, "subscriptions") => {
                self.modify_subscriptions(router, iq, owner, request).await
            }
            _ => Err(PubsubError::new(StanzaErrorCondition::BadRequest)
                .text("not a pubsub#owner request this service answers")),
        }
    }

    /// XEP-0060 section 6.1: subscribe `jid` (the requester's bare or full
    /// JID) to a node. An `authorize` node's subscription is `pending` and
    /// the owner asked (6.1.4, 8.6); any other is `subscribed` when the
    /// access model allows the requester (6.1.3), and gets the last item
    /// (6.1.7). A pending subscription is `not-authorized` +
    /// `pending-subscription` (6.1.3.7); an approved one is answered with
    /// its state (6.1.6, no multiple subscriptions).
    async fn subscribe(
        &self,
        router: &SessionRouter,
        iq: &Element,
        parties: &Parties,
        subscribe: &Element,
    ) -> Answer {
        let node_name = node_attribute(subscribe)?;
        let jid = subscription_jid(subscribe, parties)?;
        let owner = &parties.owner;
        let node = existing_node(router, owner, node_name).await?;
        let api = |error: ApiError| PubsubError::from_api(&error);
        let current = router
            .storage
            .pep_subscriptions(owner, node_name)
            .await
            .map_err(api)?
            .into_iter()
            .find(|subscription| subscription.jid == jid)
            .map(|subscription| subscription.state);
        let reply = |state: PepSubscriptionState| {
            result_with(
                iq,
                Element::new("pubsub", ns::PUBSUB).with_child(subscription_element(
                    ns::PUBSUB,
                    node_name,
                    &jid,
                    Some(state),
                )),
            )
        };
        match current {
            Some(PepSubscriptionState::Pending) => {
                return Err(PubsubError::with(
                    StanzaErrorCondition::NotAuthorized,
                    "pending-subscription",
                ))
            }
            Some(state) => return Ok(reply(state)),
            None => {}
        }
        let state = if parties.is_owner() {
            PepSubscriptionState::Subscribed
        } else if node.config.access_model == AccessModel::Authorize {
            PepSubscriptionState::Pending
        } else {
            router
                .pep_access(owner, &node, &parties.requester)
                .await
                .map_err(api)?
                .map_err(PubsubError::denied)?;
            PepSubscriptionState::Subscribed
        };
        router
            .storage
            .set_pep_subscription(
                owner,
                node_name,
                &jid,
                Some(state),
                router.config.pep.max_subscriptions_per_node,
            )
            .await
            .map_err(|error| match error {
                // Section 6.1.3.9.
                ApiError::LimitReached(text) => PubsubError::with(
                    StanzaErrorCondition::PolicyViolation,
                    "too-many-subscriptions",
                )
                .text(text),
                other => PubsubError::from_api(&other),
            })?;
        match state {
            PepSubscriptionState::Pending => {
                router
                    .request_pep_subscription_approval(owner, node_name, &jid)
                    .await
            }
            PepSubscriptionState::Subscribed => {
                router
                    .pep_subscription_changed(owner, &node, &jid, None, Some(state), false)
                    .await
            }
        }
        Ok(reply(state))
    }

    /// XEP-0060 section 6.2: remove the requester's subscription (pending
    /// or approved); none is `unexpected-request` + `not-subscribed` (6.2.3.2).
    async fn unsubscribe(
        &self,
        router: &SessionRouter,
        iq: &Element,
        parties: &Parties,
        unsubscribe: &Element,
    ) -> Answer {
        let node_name = node_attribute(unsubscribe)?;
        let jid = subscription_jid(unsubscribe, parties).map_err(|error| {
            match error.application {
                // Section 6.2.3.3: another entity's subscription.
                Some("invalid-jid") => PubsubError::new(StanzaErrorCondition::Forbidden),
                _ => error,
            }
        })?;
        existing_node(router, &parties.owner, node_name).await?;
        let previous = router
            .storage
            .set_pep_subscription(
                &parties.owner,
                node_name,
                &jid,
                None,
                router.config.pep.max_subscriptions_per_node,
            )
            .await
            .map_err(|error| PubsubError::from_api(&error))?;
        if previous.is_none() {
            return Err(PubsubError::with(
                StanzaErrorCondition::UnexpectedRequest,
                "not-subscribed",
            ));
        }
        Ok(stanza::iq_result(iq))
    }

    /// XEP-0060 section 8.8.2: the owner sets subscriptions (`subscribed`,
    /// or `none` to remove one); a pending subscription approved, or one
    /// removed, is notified to the subscriber (8.8.4). Every entry is
    /// checked before any is applied (8.8.3: an invalid one is `not-acceptable`).
    async fn modify_subscriptions(
        &self,
        router: &SessionRouter,
        iq: &Element,
        owner: &BareJid,
        request: &Element,
    ) -> Answer {
        let node_name = node_attribute(request)?;
        let node = existing_node(router, owner, node_name).await?;
        let mut changes = Vec::new();
        for entry in request
            .children()
            .filter(|child| child.name() == "subscription")
        {
            let jid: Jid = entry_jid(entry, "a subscription names a jid")?;
            let state = match entry.attr("subscription") {
                Some("subscribed") => Some(PepSubscriptionState::Subscribed),
                Some("none") => None,
                _ => {
                    return Err(PubsubError::new(StanzaErrorCondition::NotAcceptable)
                        .text("a subscription is set to subscribed or none"))
                }
            };
            changes.push((jid, state));
        }
        for (jid, state) in changes {
            let previous = router
                .storage
                .set_pep_subscription(
                    owner,
                    node_name,
                    &jid,
                    state,
                    router.config.pep.max_subscriptions_per_node,
                )
                .await
                .map_err(limit_is_policy_violation)?;
            router
                .pep_subscription_changed(owner, &node, &jid, previous, state, true)
                .await;
        }
        Ok(stanza::iq_result(iq))
    }

    async fn answer(&self, router: &SessionRouter, request: &IqRequest<'_>) -> Answer {
        let parties = parties(request)?;
        let iq = &request.iq;
        let Some(payload) = stanza::iq_payload(iq) else {
            return Err(PubsubError::new(StanzaErrorCondition::BadRequest));
        };
        let (first, second) = operation(payload)?;
        if payload.is("pubsub", ns::PUBSUB_OWNER) {
            if second.is_some() {
                return Err(PubsubError::new(StanzaErrorCondition::BadRequest)
                    .text("one pubsub#owner request at a time"));
            }
            return self
                .owner_request(router, iq, request.iq_type, &parties, first)
                .await;
        }
        if !payload.is("pubsub", ns::PUBSUB) || !first.is(first.name(), ns::PUBSUB) {
            return Err(PubsubError::new(StanzaErrorCondition::BadRequest));
        }
        match (request.iq_type, first.name()) {
            (IqType::Set, "publish") => self.publish(router, iq, &parties, first, second).await,
            (IqType::Set, "create") => self.create(router, iq, &parties, first, second).await,
            (_, _) if second.is_some() => Err(PubsubError::new(StanzaErrorCondition::BadRequest)
                .text("one pubsub request at a time")),
            (IqType::Set, "retract") => self.retract(router, iq, &parties, first).await,
            (IqType::Get, "items") => self.items(router, iq, &parties, first).await,
            (IqType::Set, "subscribe") => self.subscribe(router, iq, &parties, first).await,
            (IqType::Set, "unsubscribe") => self.unsubscribe(router, iq, &parties, first).await,
            (_, "options") => Err(PubsubError::unsupported("subscription-options")),
            (IqType::Get, "subscriptions") => {
                Err(PubsubError::unsupported("retrieve-subscriptions"))
            }
            (IqType::Get, "affiliations") => Err(PubsubError::unsupported("retrieve-affiliations")),
            _ => Err(PubsubError::new(StanzaErrorCondition::BadRequest)
                .text("not a pubsub request this service answers")),
        }
    }
}

fn answered(routing: &Routing<'_>, iq: &Element, answer: Answer) -> Option<Element> {
    match answer {
        Ok(reply) => Some(reply),
        Err(error) => routing.bounced(error.reply(iq)),
    }
}

#[async_trait]
impl IqHandler for Pep {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        let answer = self.answer(router, &request).await;
        answered(request.routing, &request.iq, answer)
    }
}

/// The disco#items of an account (XEP-0163 section 7 / XEP-0060 section
/// 5.2): the nodes `requester` may see, each as `<item jid='owner' node='...'/>`.
pub(crate) async fn account_items(
    router: &SessionRouter,
    owner: &BareJid,
    requester: &BareJid,
) -> Result<Vec<Element>, ApiError> {
    let mut items = Vec::new();
    for node in router.storage.pep_nodes(owner).await? {
        if router.pep_access(owner, &node, requester).await?.is_ok() {
            items.push(
                Element::new("item", ns::DISCO_ITEMS)
                    .with_attr("jid", owner.to_string())
                    .with_attr("node", node.name.clone()),
            );
        }
    }
    Ok(items)
}

/// Whether `node` of `owner` exists and `requester` may see it (a
/// disco#info query about the node, XEP-0060 section 5.3).
pub(crate) async fn visible_node(
    router: &SessionRouter,
    owner: &BareJid,
    node: &str,
    requester: &BareJid,
) -> Result<bool, ApiError> {
    let Some(node) = router.storage.pep_node(owner, node).await? else {
        return Ok(false);
    };
    Ok(router.pep_access(owner, &node, requester).await?.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::{parse_element, Limits};

    fn element(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Limits::default()).expect("test XML parses")
    }

    #[test]
    fn publish_options_read_the_fields_pep_clients_use() {
        let form = element(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#persist_items'><value>true</value></field>\
             <field var='pubsub#access_model'><value>whitelist</value></field>\
             <field var='pubsub#max_items'><value>max</value></field>\
             <field var='pubsub#send_last_published_item'><value>never</value></field>\
             <field var='pubsub#roster_groups_allowed'><value>Friends</value><value>Family</value><value>Friends</value></field>\
             <field var='pubsub#title'><value>ignored</value></field></x>",
        );
        let patch = read_config_form(&form, ns::PUBSUB_PUBLISH_OPTIONS, 256).unwrap();
        assert_eq!(
            patch,
            PepConfigPatch {
                access_model: Some(AccessModel::Whitelist),
                max_items: Some(MaxItems::Max),
                persist_items: Some(true),
                send_last_published_item: Some(SendLastPublished::Never),
                notify_retract: None,
                roster_groups_allowed: Some(vec!["Family".into(), "Friends".into()]),
            }
        );
    }

    #[test]
    fn option_errors_name_the_conditions_of_xep_0060() {
        let wrong_type = element(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x>",
        );
        let error = read_config_form(&wrong_type, ns::PUBSUB_PUBLISH_OPTIONS, 256).unwrap_err();
        assert_eq!(error.application, Some("invalid-options"));
        let unknown = element(
            "<x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>payment</value></field></x>",
        );
        let error = read_config_form(&unknown, ns::PUBSUB_NODE_CONFIG, 256).unwrap_err();
        assert_eq!(error.condition, StanzaErrorCondition::NotAcceptable);
        let empty_group = element(
            "<x xmlns='jabber:x:data' type='submit'><field var='pubsub#roster_groups_allowed'><value>Friends</value><value></value></field></x>",
        );
        let error = read_config_form(&empty_group, ns::PUBSUB_NODE_CONFIG, 256).unwrap_err();
        assert_eq!(error.condition, StanzaErrorCondition::NotAcceptable);
        let too_many = element(
            "<x xmlns='jabber:x:data' type='submit'><field var='pubsub#max_items'><value>1000</value></field></x>",
        );
        let error = read_config_form(&too_many, ns::PUBSUB_NODE_CONFIG, 256).unwrap_err();
        assert_eq!(error.condition, StanzaErrorCondition::NotAcceptable);
    }

    #[test]
    fn error_replies_carry_the_pubsub_condition_without_the_payload() {
        let iq = element(
            "<iq xmlns='jabber:client' type='set' id='p1' from='juliet@capulet.lit/balcony'>\
             <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item><big/></item></publish></pubsub></iq>",
        );
        let reply = PubsubError::with(StanzaErrorCondition::NotAcceptable, "payload-too-big")
            .reply(&iq)
            .unwrap();
        assert_eq!(
            reply.to_stanza_xml(),
            "<iq id='p1' to='juliet@capulet.lit/balcony' type='error'><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><payload-too-big xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>"
        );
        let reply = PubsubError::unsupported("subscribe").reply(&iq).unwrap();
        assert!(reply.to_stanza_xml().contains(
            "<unsupported xmlns='http://jabber.org/protocol/pubsub#errors' feature='subscribe'/>"
        ));
    }

    #[test]
    fn the_configuration_form_lists_the_current_values() {
        let form = config_form(&PepNodeConfig::default(), &["Friends".to_string()]);
        let xml = form.to_xml();
        assert!(xml.contains(
            "<field var='pubsub#access_model' type='list-single'><value>presence</value>"
        ));
        assert!(xml
            .contains("<field var='pubsub#max_items' type='text-single'><value>1</value></field>"));
        assert!(xml.contains("<field var='pubsub#roster_groups_allowed' type='list-multi'><option><value>Friends</value></option></field>"), "{xml}");
        let read_back = read_config_form(&form, ns::PUBSUB_NODE_CONFIG, 256).unwrap();
        assert_eq!(
            read_back.apply(PepNodeConfig::default()),
            PepNodeConfig::default()
        );
    }
}
