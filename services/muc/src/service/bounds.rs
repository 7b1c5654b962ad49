//! `muc.max_rooms_per_user`: how many rooms one user (bare JID) occupies
//! at once across the service. A join past it is refused by the engine
//! (`resource-constraint`, [`crate::engine::Known::at_room_limit`]); the
//! index of who occupies what ([`crate::occupancy`]) is updated after each
//! room change is written.

use std::collections::BTreeSet;

use starling_api::ApiResult;
use starling_jid::FullJid;
use starling_xmpp::{stanza, Element};

use super::MucService;
use crate::state::Room;

/// The users (bare JIDs) who occupy `room`.
fn users(room: Option<&Room>) -> BTreeSet<String> {
    room.map(|room| {
        room.occupants
            .iter()
            .map(|occupant| occupant.bare().to_string())
            .collect()
    })
    .unwrap_or_default()
}

fn is_join(stanza_element: &Element, room: Option<&Room>, sender: &FullJid) -> bool {
    stanza_element.name() == "presence"
        && stanza::stanza_type(stanza_element).is_empty()
        && stanza_element.attr("to").is_some_and(|to| to.contains('/'))
        && !room.is_some_and(|room| {
            let bare = sender.bare().to_string();
            room.occupants
                .iter()
                .any(|occupant| occupant.bare() == bare)
        })
}

impl MucService {
    /// Whether `sender`'s join of `room_jid` would take its user past the bound.
    pub(super) async fn at_room_limit(
        &self,
        room_jid: &str,
        room: Option<&Room>,
        stanza_element: &Element,
        sender: &FullJid,
    ) -> ApiResult<bool> {
        let max = self.max_rooms_per_user as usize;
        if max == 0 || !is_join(stanza_element, room, sender) {
            return Ok(false);
        }
        let user = sender.bare().to_string();
        let others: Vec<String> = self
            .occupancy
            .rooms(&user)
            .await?
            .into_iter()
            .filter(|other| other != room_jid)
            .collect();
        if others.len() < max || !self.occupancy.heal_due(&user).await? {
            return Ok(others.len() >= max);
        }
        // At the bound: drop the entries of rooms the user is no longer in
        // (a replica killed between a room's write and the index's).
        let mut occupied = 0;
        for other in others {
            let present = match self.store.peek(&other).await? {
                Some(record) => serde_json::from_str::<Room>(&record)
                    .is_ok_and(|room| users(Some(&room)).contains(&user)),
                None => false,
            };
            if present {
                occupied += 1;
            } else {
                self.occupancy.leave(&user, &other).await?;
            }
        }
        Ok(occupied >= max)
    }

    /// The users of `room` before a stanza that may change who occupies it,
    /// for [`Self::note_occupancy`]; `None` when the bound is off, or for a
    /// message that is not an error: a groupchat or private message never
    /// adds or removes an occupant (an error from an occupant's address does,
    /// XEP-0045 status 333), so a large room's messages build no set.
    pub(super) fn users_before(
        &self,
        stanza_element: &Element,
        room: Option<&Room>,
    ) -> Option<BTreeSet<String>> {
        let message =
            stanza_element.name() == "message" && stanza::stanza_type(stanza_element) != "error";
        (self.max_rooms_per_user != 0 && !message).then(|| users(room))
    }

    /// Record who entered and who left `room_jid` with one change.
    pub(super) async fn note_occupancy(
        &self,
        room_jid: &str,
        before: &BTreeSet<String>,
        room: Option<&Room>,
    ) {
        let after = users(room);
        for user in after.difference(before) {
            if let Err(error) = self.occupancy.enter(user, room_jid).await {
                tracing::warn!(%user, room = room_jid, %error, "room occupancy not recorded");
            }
        }
        for user in before.difference(&after) {
            if let Err(error) = self.occupancy.leave(user, room_jid).await {
                tracing::warn!(%user, room = room_jid, %error, "room departure not recorded");
            }
        }
    }
}
