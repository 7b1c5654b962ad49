//! XEP-0313: Message Archive Management, version 1.1: the archive query
//! (section 4: `<query queryid>` with a XEP-0004 form of the fields of
//! section 4.1, a XEP-0059 `<set/>` and `<flip-page/>`), the form a client
//! discovers (section 4.1.5), the result wrapper (section 4.2) and the
//! `<fin/>` that ends a query (section 4.3); with the preferences of
//! XEP-0441 (version 0.2.0, `<prefs/>` in the same namespace).
//!
//! Addresses and dates are kept as the text the client sent: reading them
//! (and answering `bad-request` for one that does not read) is the server's step.

use crate::element::Element;
use crate::ns;
use crate::xep::forward::Forwarded;
use crate::xep::rsm::{PageRequest, PageResult};
use crate::xep::{expect, Payload, PayloadError};

/// An archive query (XEP-0313 section 4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Echoed in every result (section 4.2).
    pub queryid: Option<String>,
    /// The fields of section 4.1: `with`, `start`, `end`, and the extended
    /// `before-id`, `after-id` and `ids`.
    pub with: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub before_id: Option<String>,
    pub after_id: Option<String>,
    pub ids: Vec<String>,
    /// Fields this module does not know: the server answers
    /// `feature-not-implemented` (section 4.1.5).
    pub unknown_fields: Vec<String>,
    pub page: Option<PageRequest>,
    /// Send the page's results newest first (section 4.3.3).
    pub flip_page: bool,
}

/// The fields a query form may carry (section 4.1), in the order the
/// discovery form lists them.
pub const QUERY_FIELDS: &[(&str, &str)] = &[
    ("with", "jid-single"),
    ("start", "text-single"),
    ("end", "text-single"),
    ("before-id", "text-single"),
    ("after-id", "text-single"),
    ("ids", "list-multi"),
];

fn field_values(field: &Element) -> Vec<String> {
    field
        .children()
        .filter(|child| child.is("value", ns::DATA_FORMS))
        .map(Element::text)
        .collect()
}

fn single_value(field: &Element, repeated: &'static str) -> Result<Option<String>, PayloadError> {
    let mut values = field_values(field);
    if values.len() > 1 {
        return Err(PayloadError(repeated));
    }
    Ok(values.pop())
}

impl Query {
    fn read_form(&mut self, form: &Element) -> Result<(), PayloadError> {
        if !matches!(form.attr("type"), Some("submit") | None) {
            return Err(PayloadError("the query form must be of type 'submit'"));
        }
        for field in form
            .children()
            .filter(|child| child.is("field", ns::DATA_FORMS))
        {
            let Some(var) = field.attr("var") else {
                return Err(PayloadError("a form field needs a var"));
            };
            match var {
                "FORM_TYPE" => {
                    if single_value(field, "one FORM_TYPE value only")?.as_deref() != Some(ns::MAM)
                    {
                        return Err(PayloadError("the FORM_TYPE must be urn:xmpp:mam:2"));
                    }
                }
                "with" => self.with = single_value(field, "one 'with' value only")?,
                "start" => self.start = single_value(field, "one 'start' value only")?,
                "end" => self.end = single_value(field, "one 'end' value only")?,
                "before-id" => self.before_id = single_value(field, "one 'before-id' value only")?,
                "after-id" => self.after_id = single_value(field, "one 'after-id' value only")?,
                "ids" => self.ids = field_values(field),
                other => self.unknown_fields.push(other.to_string()),
            }
        }
        Ok(())
    }
}

impl Payload for Query {
    const NAME: &'static str = "query";
    const NAMESPACE: &'static str = ns::MAM;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let mut query = Query {
            queryid: element.attr("queryid").map(str::to_string),
            ..Query::default()
        };
        let mut forms = 0;
        for child in element.children() {
            if child.is("x", ns::DATA_FORMS) {
                forms += 1;
                if forms > 1 {
                    return Err(PayloadError("a query carries one form"));
                }
                query.read_form(child)?;
            } else if PageRequest::is(child) {
                if query.page.is_some() {
                    return Err(PayloadError("a query carries one <set/>"));
                }
                query.page = Some(PageRequest::from_element(child)?);
            } else if child.is("flip-page", ns::MAM) {
                query.flip_page = true;
            }
        }
        Ok(query)
    }

    fn to_element(&self) -> Element {
        let mut query = Element::new(Self::NAME, Self::NAMESPACE);
        if let Some(queryid) = &self.queryid {
            query.set_attr("queryid", queryid.clone());
        }
        let mut form = Element::new("x", ns::DATA_FORMS).with_attr("type", "submit");
        form.append_child(text_field(
            "FORM_TYPE",
            Some("hidden"),
            &[ns::MAM.to_string()],
        ));
        let singles = [
            ("with", &self.with),
            ("start", &self.start),
            ("end", &self.end),
            ("before-id", &self.before_id),
            ("after-id", &self.after_id),
        ];
        for (var, value) in singles {
            if let Some(value) = value {
                form.append_child(text_field(var, None, std::slice::from_ref(value)));
            }
        }
        if !self.ids.is_empty() {
            form.append_child(text_field("ids", None, &self.ids));
        }
        query.append_child(form);
        if let Some(page) = &self.page {
            query.append_child(page.to_element());
        }
        if self.flip_page {
            query.append_child(Element::new("flip-page", ns::MAM));
        }
        query
    }
}

fn text_field(var: &str, field_type: Option<&str>, values: &[String]) -> Element {
    let mut field = Element::new("field", ns::DATA_FORMS).with_attr("var", var);
    if let Some(field_type) = field_type {
        field.set_attr("type", field_type);
    }
    for value in values {
        field.append_child(Element::new("value", ns::DATA_FORMS).with_text(value.clone()));
    }
    field
}

/// The form a client discovers with an empty `<query/>` get (section
/// 4.1.5): FORM_TYPE and the supported fields, none required; `ids` with
/// an open XEP-0122 validation (its values are never listed).
pub fn query_form() -> Element {
    let mut form = Element::new("x", ns::DATA_FORMS).with_attr("type", "form");
    form.append_child(text_field(
        "FORM_TYPE",
        Some("hidden"),
        &[ns::MAM.to_string()],
    ));
    for (var, field_type) in QUERY_FIELDS {
        let mut field = Element::new("field", ns::DATA_FORMS)
            .with_attr("type", *field_type)
            .with_attr("var", *var);
        if *var == "ids" {
            field.append_child(
                Element::new("validate", ns::DATA_FORMS_VALIDATE)
                    .with_attr("datatype", "xs:string")
                    .with_child(Element::new("open", ns::DATA_FORMS_VALIDATE)),
            );
        }
        form.append_child(field);
    }
    Element::new("query", ns::MAM).with_child(form)
}

/// `<result xmlns='urn:xmpp:mam:2' queryid id><forwarded/></result>` (section 4.2).
pub fn result_element(queryid: Option<&str>, id: &str, forwarded: &Forwarded) -> Element {
    let mut result = Element::new("result", ns::MAM);
    if let Some(queryid) = queryid {
        result.set_attr("queryid", queryid);
    }
    result.set_attr("id", id);
    result.append_child(forwarded.to_element());
    result
}

/// `<fin xmlns='urn:xmpp:mam:2' complete='true|false'><set/></fin>` (section 4.3).
pub fn fin_element(complete: bool, page: &PageResult) -> Element {
    Element::new("fin", ns::MAM)
        .with_attr("complete", if complete { "true" } else { "false" })
        .with_child(page.to_element())
}

/// XEP-0441 section 2.1: which messages the archive keeps by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultRule {
    /// Every message.
    #[default]
    Always,
    /// None.
    Never,
    /// Messages with contacts in the user's roster.
    Roster,
}

impl DefaultRule {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultRule::Always => "always",
            DefaultRule::Never => "never",
            DefaultRule::Roster => "roster",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "always" => DefaultRule::Always,
            "never" => DefaultRule::Never,
            "roster" => DefaultRule::Roster,
            _ => return None,
        })
    }
}

/// `<prefs default><always><jid/>...</always><never><jid/>...</never></prefs>`
/// (XEP-0441 section 2). A get carries an empty `<prefs/>` (`default` is
/// then `None`); a set names the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefs {
    pub default: Option<DefaultRule>,
    /// Addresses whose messages are always kept, as sent.
    pub always: Vec<String>,
    /// Addresses whose messages are never kept, as sent.
    pub never: Vec<String>,
}

fn read_jids(list: &Element) -> Result<Vec<String>, PayloadError> {
    list.children()
        .map(|child| {
            if child.is("jid", ns::MAM) {
                Ok(child.text().trim().to_string())
            } else {
                Err(PayloadError(
                    "<always/> and <never/> hold <jid/> elements only",
                ))
            }
        })
        .collect()
}

impl Payload for Prefs {
    const NAME: &'static str = "prefs";
    const NAMESPACE: &'static str = ns::MAM;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let default = match element.attr("default") {
            None => None,
            Some(name) => Some(DefaultRule::from_name(name).ok_or(PayloadError(
                "default must be 'always', 'never' or 'roster' (XEP-0441)",
            ))?),
        };
        let mut prefs = Prefs {
            default,
            ..Prefs::default()
        };
        let (mut always_seen, mut never_seen) = (false, false);
        for child in element.children() {
            if child.is("always", ns::MAM) && !always_seen {
                always_seen = true;
                prefs.always = read_jids(child)?;
            } else if child.is("never", ns::MAM) && !never_seen {
                never_seen = true;
                prefs.never = read_jids(child)?;
            } else {
                return Err(PayloadError(
                    "prefs hold one <always/> and one <never/> (XEP-0441)",
                ));
            }
        }
        Ok(prefs)
    }

    fn to_element(&self) -> Element {
        let mut prefs = Element::new(Self::NAME, Self::NAMESPACE);
        if let Some(default) = self.default {
            prefs.set_attr("default", default.as_str());
        }
        for (name, jids) in [("always", &self.always), ("never", &self.never)] {
            let mut list = Element::new(name, ns::MAM);
            for jid in jids {
                list.append_child(Element::new("jid", ns::MAM).with_text(jid.clone()));
            }
            prefs.append_child(list);
        }
        prefs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{element, rejected, round_trip};

    #[test]
    fn round_trips_a_query_with_every_field() {
        let query = round_trip::<Query>(
            "<query xmlns='urn:xmpp:mam:2' queryid='f27'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
             <field var='with'><value>juliet@capulet.lit</value></field>\
             <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
             <field var='end'><value>2010-07-07T13:23:54Z</value></field>\
             <field var='before-id'><value>9</value></field>\
             <field var='after-id'><value>2</value></field>\
             <field var='ids'><value>3</value><value>4</value></field></x>\
             <set xmlns='http://jabber.org/protocol/rsm'><max>10</max><before/></set>\
             <flip-page/></query>",
        );
        assert_eq!(query.queryid.as_deref(), Some("f27"));
        assert_eq!(query.with.as_deref(), Some("juliet@capulet.lit"));
        assert_eq!(query.ids, ["3", "4"]);
        assert!(query.flip_page);
        assert_eq!(query.page.unwrap().before.as_deref(), Some(""));
    }

    #[test]
    fn an_empty_query_asks_for_everything() {
        let query = Query::from_element(&element("<query xmlns='urn:xmpp:mam:2'/>")).unwrap();
        assert_eq!(query, Query::default());
    }

    #[test]
    fn unknown_fields_are_kept_for_the_server_to_refuse() {
        let query = Query::from_element(&element(
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
             <field var='include-groupchat'><value>true</value></field></x></query>",
        ))
        .unwrap();
        assert_eq!(query.unknown_fields, ["include-groupchat"]);
    }

    #[test]
    fn broken_queries_are_rejected() {
        assert_eq!(
            rejected::<Query>(
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x></query>"
            ),
            "the FORM_TYPE must be urn:xmpp:mam:2"
        );
        assert_eq!(
            rejected::<Query>(
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='with'><value>a@b</value><value>c@d</value></field></x></query>"
            ),
            "one 'with' value only"
        );
        assert_eq!(
            rejected::<Query>(
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='form'/></query>"
            ),
            "the query form must be of type 'submit'"
        );
        assert_eq!(
            rejected::<Query>(
                "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>x</max></set></query>"
            ),
            "<max/> is not a non-negative integer"
        );
    }

    #[test]
    fn the_discovery_form_lists_the_fields() {
        assert_eq!(
            query_form().to_xml(),
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='form'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
             <field type='jid-single' var='with'/><field type='text-single' var='start'/>\
             <field type='text-single' var='end'/><field type='text-single' var='before-id'/>\
             <field type='text-single' var='after-id'/><field type='list-multi' var='ids'>\
             <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:string'><open/></validate>\
             </field></x></query>"
        );
    }

    #[test]
    fn writes_results_and_fin() {
        let forwarded = Forwarded {
            delay: Some(crate::xep::delay::Delay {
                stamp: "2010-07-10T23:08:25Z".into(),
                from: None,
                reason: None,
            }),
            stanza: element(
                "<message xmlns='jabber:client' from='witch@shakespeare.lit' to='macbeth@shakespeare.lit'><body>Hail to thee</body></message>",
            ),
        };
        assert_eq!(
            result_element(Some("f27"), "28482", &forwarded).to_xml(),
            "<result xmlns='urn:xmpp:mam:2' queryid='f27' id='28482'><forwarded xmlns='urn:xmpp:forward:0'>\
             <delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>\
             <message xmlns='jabber:client' from='witch@shakespeare.lit' to='macbeth@shakespeare.lit'><body>Hail to thee</body></message>\
             </forwarded></result>"
        );
        let page = PageResult {
            first: Some("1".into()),
            last: Some("2".into()),
            count: None,
        };
        assert_eq!(
            fin_element(true, &page).to_xml(),
            "<fin xmlns='urn:xmpp:mam:2' complete='true'><set xmlns='http://jabber.org/protocol/rsm'><first>1</first><last>2</last></set></fin>"
        );
    }

    #[test]
    fn round_trips_prefs() {
        let prefs = round_trip::<Prefs>(
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>romeo@montague.lit</jid></always>\
             <never><jid>montague@montague.lit</jid></never></prefs>",
        );
        assert_eq!(prefs.default, Some(DefaultRule::Roster));
        assert_eq!(prefs.never, ["montague@montague.lit"]);
        let empty = Prefs::from_element(&element("<prefs xmlns='urn:xmpp:mam:2'/>")).unwrap();
        assert_eq!(empty, Prefs::default());
    }

    #[test]
    fn broken_prefs_are_rejected() {
        assert_eq!(
            rejected::<Prefs>("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>"),
            "default must be 'always', 'never' or 'roster' (XEP-0441)"
        );
        assert_eq!(
            rejected::<Prefs>("<prefs xmlns='urn:xmpp:mam:2'><always><item/></always></prefs>"),
            "<always/> and <never/> hold <jid/> elements only"
        );
        assert_eq!(
            rejected::<Prefs>("<prefs xmlns='urn:xmpp:mam:2'><always/><always/></prefs>"),
            "prefs hold one <always/> and one <never/> (XEP-0441)"
        );
    }
}
