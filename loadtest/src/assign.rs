//! Which server each user connects to, and who each chat sender writes to.
//!
//! Users are spread over the `--server` addresses round-robin (user *i* on
//! server *i mod k*). Chat partners form a permutation of the senders (each
//! sender has exactly one receiver and each receiver exactly one sender, which
//! is what the order check relies on). With one server the pairing is the
//! historic one, sender *p* to sender *p + m/2*; with several, the senders are
//! grouped by server first, so that the same half-turn shift lands every
//! message on a different server than its sender's whenever that is possible
//! (no server holds more than half of the senders).

/// The server (index into `--server`) of user `index`: round-robin.
pub fn server_index(index: usize, servers: usize) -> usize {
    index % servers.max(1)
}

/// The chat pairing of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partners {
    /// Per user: the user it sends to, `usize::MAX` for users that do not send.
    pub partner: Vec<usize>,
    /// Senders whose receiver is on another server.
    pub cross_server: usize,
    /// Senders in all.
    pub senders: usize,
}

impl Partners {
    /// Does every message cross servers?
    pub fn all_cross(&self) -> bool {
        self.cross_server == self.senders
    }
}

/// Pair the senders (`is_sender[i]`) with receivers among the senders, over
/// `servers` servers assigned by [`server_index`].
pub fn chat_partners(is_sender: &[bool], servers: usize) -> Partners {
    let servers = servers.max(1);
    let mut order: Vec<usize> = (0..is_sender.len())
        .filter(|&index| is_sender[index])
        .collect();
    if servers > 1 {
        // Stable: within a server the users keep their order.
        order.sort_by_key(|&index| server_index(index, servers));
    }
    let senders = order.len();
    let mut partner = vec![usize::MAX; is_sender.len()];
    let mut cross_server = 0;
    for (position, &index) in order.iter().enumerate() {
        let to = order[(position + senders / 2) % senders];
        partner[index] = to;
        if server_index(index, servers) != server_index(to, servers) {
            cross_server += 1;
        }
    }
    Partners {
        partner,
        cross_server,
        senders,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sender has one receiver, every receiver one sender, nobody writes to itself.
    fn assert_permutation(is_sender: &[bool], partners: &Partners) {
        let mut received = vec![0; is_sender.len()];
        for (index, &to) in partners.partner.iter().enumerate() {
            if is_sender[index] {
                assert!(is_sender[to], "user {index} writes to non-sender {to}");
                received[to] += 1;
            } else {
                assert_eq!(to, usize::MAX);
            }
        }
        for (index, &count) in received.iter().enumerate() {
            assert_eq!(count, usize::from(is_sender[index]), "user {index}");
        }
    }

    #[test]
    fn round_robin_servers() {
        let assigned: Vec<usize> = (0..7).map(|index| server_index(index, 3)).collect();
        assert_eq!(assigned, vec![0, 1, 2, 0, 1, 2, 0]);
        assert!((0..10).all(|index| server_index(index, 1) == 0));
        // No server given is treated as one.
        assert_eq!(server_index(5, 0), 0);
    }

    #[test]
    fn one_server_keeps_the_half_turn_pairing() {
        let is_sender = vec![true; 200];
        let partners = chat_partners(&is_sender, 1);
        for index in 0..200 {
            assert_eq!(partners.partner[index], (index + 100) % 200);
        }
        assert_permutation(&is_sender, &partners);
        assert_eq!(partners.cross_server, 0);
    }

    #[test]
    fn several_servers_every_message_crosses() {
        for (users, servers) in [(200, 2), (2000, 2), (200, 3), (10, 4), (7, 3), (2, 2)] {
            let is_sender = vec![true; users];
            let partners = chat_partners(&is_sender, servers);
            assert_permutation(&is_sender, &partners);
            assert!(partners.all_cross(), "{users} users on {servers} servers");
            for index in 0..users {
                assert_ne!(
                    server_index(index, servers),
                    server_index(partners.partner[index], servers),
                    "{users} users on {servers} servers: user {index}"
                );
            }
        }
        // 200 users on 2 servers: the pairs are mutual neighbours (0<->1, 2<->3, ...).
        let partners = chat_partners(&[true; 200], 2);
        assert_eq!(&partners.partner[..4], &[1, 0, 3, 2]);
    }

    #[test]
    fn impossible_split_is_reported() {
        // 3 users on 2 servers: two on server 0 cannot both write to server 1's one user.
        let partners = chat_partners(&[true; 3], 2);
        assert_permutation(&[true; 3], &partners);
        assert!(!partners.all_cross());
    }

    #[test]
    fn only_senders_are_paired() {
        // mixed: every third user chats.
        let is_sender: Vec<bool> = (0..30).map(|index| index % 3 == 0).collect();
        let partners = chat_partners(&is_sender, 2);
        assert_permutation(&is_sender, &partners);
        assert!(partners.all_cross());
    }
}
