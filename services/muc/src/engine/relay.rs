//! IQs between occupants (XEP-0045 section 7.5 and its business rules:
//! an IQ to `room@service/nick` goes to that occupant's real JID, from the
//! sender's occupant JID, so that neither learns the other's real JID;
//! the answer, addressed to the sender's occupant JID, comes back the same
//! way). A ping to one's own nick is answered by the room (XEP-0410
//! section 3: the self-ping of a joined client); every IQ from someone
//! who is not an occupant is `not-acceptable` (XEP-0410 section 3 names it
//! for pings, and the room relays nothing for strangers).

use starling_xmpp::{ns, stanza, Element, StanzaErrorCondition};

use super::Context;
use crate::state::Room;

impl Context<'_> {
    pub(super) fn occupant_iq(&mut self, room: &Room, iq: &Element, nick: &str) {
        let request = matches!(stanza::stanza_type(iq), "get" | "set");
        let Some(sender) = room.occupant_by_jid(self.sender) else {
            if request {
                return self
                    .effects
                    .error(iq, self.sender, StanzaErrorCondition::NotAcceptable);
            }
            // An answer from someone who left: nobody to give it to.
            self.effects.refused = Some("not-acceptable");
            return;
        };
        let is_ping = stanza::iq_payload(iq).is_some_and(|payload| payload.is("ping", ns::PING));
        if request && is_ping && sender.nick == nick {
            return self.result(iq, None);
        }
        let Some(target) = room.occupant_by_nick(nick) else {
            if request {
                return self
                    .effects
                    .error(iq, self.sender, StanzaErrorCondition::ItemNotFound);
            }
            // The asker left before the answer came: RFC 6120 section
            // 8.3.1, no error answers an error or a result.
            self.effects.refused = Some("item-not-found");
            return;
        };
        let mut forwarded = iq.clone();
        forwarded.set_attr("from", self.occupant_jid(&sender.nick));
        let to = target.jid.clone();
        forwarded.set_attr("to", to.clone());
        self.effects.send_one(forwarded, &to);
    }
}
