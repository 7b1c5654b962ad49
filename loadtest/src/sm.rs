//! The client side of XEP-0198 stream management (`urn:xmpp:sm:3`): the
//! generator enables it after bind (section 3), answers the server's `<r/>`
//! with `<a h/>` (section 4) and, with `--sm-request-every N`, asks for acks
//! itself. Both counters are modulo 2^32 (section 4: "h" wraps to zero).
//!
//! It costs the hot path one branch and one add per received stanza; the
//! `<a/>` it writes is built without allocating.

/// The namespace of XEP-0198 version 3.
pub const NS_SM: &str = "urn:xmpp:sm:3";

/// What the generator asks of the server (`--sm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmMode {
    /// No stream management.
    Off,
    /// `<enable/>`: acks only (section 3).
    Ack,
    /// `<enable resume='true'/>`: acks, and the server keeps the stream resumable (section 5).
    Resume,
}

impl SmMode {
    /// The `<enable/>` nonza, `None` when off.
    pub fn enable_element(self) -> Option<&'static [u8]> {
        match self {
            SmMode::Off => None,
            SmMode::Ack => Some(b"<enable xmlns='urn:xmpp:sm:3'/>"),
            SmMode::Resume => Some(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"),
        }
    }
}

/// A stream management protocol failure (reported as error kind `sm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmError(pub String);

/// The counters of one managed stream.
#[derive(Debug, Clone, Default)]
pub struct SmStream {
    /// Stanzas received from the server since `<enabled/>`: our `h`.
    pub received: u32,
    /// Stanzas we sent since `<enable/>` was written.
    pub sent: u32,
    /// The server's last `h` for our stanzas.
    pub acked: u32,
    /// `sent` when we last wrote `<r/>` (with `--sm-request-every`).
    requested_at: u32,
}

/// How many stanzas `h` acknowledges on top of `previous`, modulo 2^32 (section 4).
pub fn acked_since(previous: u32, h: u32) -> u32 {
    h.wrapping_sub(previous)
}

/// Is this top-level element a stanza that `h` counts (section 4: message,
/// presence, iq; nonzas such as `<r/>`, `<a/>` are not counted)?
#[inline]
pub fn is_stanza(name: &[u8]) -> bool {
    matches!(name, b"message" | b"presence" | b"iq")
}

/// Append a decimal `u32` without allocating.
fn push_u32(out: &mut Vec<u8>, value: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// What a stream management nonza from the server asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmEvent {
    /// `<r/>` answered with `<a h/>`.
    Answered,
    /// `<a h/>` checked.
    Acked,
    /// Not a stream management element.
    Other,
}

impl SmStream {
    /// Count one stanza received from the server.
    #[inline]
    pub fn stanza_received(&mut self) {
        self.received = self.received.wrapping_add(1);
    }

    /// Count `count` stanzas written to the server.
    #[inline]
    pub fn stanzas_sent(&mut self, count: u64) {
        self.sent = self.sent.wrapping_add(count as u32);
    }

    /// Append `<a h/>` with what was received so far.
    pub fn answer(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<a xmlns='urn:xmpp:sm:3' h='");
        push_u32(out, self.received);
        out.extend_from_slice(b"'/>");
    }

    /// With `every` > 0: append `<r/>` once `every` stanzas were sent since the last one.
    pub fn maybe_request(&mut self, every: u32, out: &mut Vec<u8>) -> bool {
        if every == 0 || self.sent.wrapping_sub(self.requested_at) < every {
            return false;
        }
        self.requested_at = self.sent;
        out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
        true
    }

    /// Handle a top-level element named `name` that is not a stanza: answer
    /// `<r/>` into `out`, check `<a h/>` against what was sent (section 4:
    /// the server cannot have handled more than we sent), fail on `<failed/>`.
    pub fn nonza(
        &mut self,
        name: &[u8],
        element: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<SmEvent, SmError> {
        match name {
            b"r" => {
                self.answer(out);
                Ok(SmEvent::Answered)
            }
            b"a" => {
                let h = crate::xml::attribute(element, "h")
                    .and_then(|value| std::str::from_utf8(value).ok())
                    .and_then(|value| value.trim().parse::<u32>().ok())
                    .ok_or_else(|| {
                        SmError(format!(
                            "<a/> without a valid h: {}",
                            String::from_utf8_lossy(element)
                        ))
                    })?;
                let newly = acked_since(self.acked, h);
                let outstanding = self.sent.wrapping_sub(self.acked);
                if newly > outstanding {
                    return Err(SmError(format!(
                        "server acked h={h}, after h={} with {} sent",
                        self.acked, self.sent
                    )));
                }
                self.acked = h;
                Ok(SmEvent::Acked)
            }
            b"failed" => Err(SmError(String::from_utf8_lossy(element).into_owned())),
            _ => Ok(SmEvent::Other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(stream: &mut SmStream) -> String {
        let mut out = Vec::new();
        assert_eq!(
            stream.nonza(b"r", b"<r xmlns='urn:xmpp:sm:3'/>", &mut out),
            Ok(SmEvent::Answered)
        );
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn counts_stanzas_only() {
        let names: [&[u8]; 7] = [
            b"message",
            b"presence",
            b"iq",
            b"r",
            b"a",
            b"enabled",
            b"stream:error",
        ];
        let mut stream = SmStream::default();
        for name in names {
            if is_stanza(name) {
                stream.stanza_received();
            }
        }
        assert_eq!(answer(&mut stream), "<a xmlns='urn:xmpp:sm:3' h='3'/>");
        assert_eq!(
            answer(&mut SmStream::default()),
            "<a xmlns='urn:xmpp:sm:3' h='0'/>"
        );
    }

    /// Section 4: h wraps to zero after 2^32 - 1.
    #[test]
    fn received_count_wraps_modulo_2_pow_32() {
        let mut stream = SmStream {
            received: u32::MAX - 1,
            ..SmStream::default()
        };
        stream.stanza_received();
        assert_eq!(
            answer(&mut stream),
            "<a xmlns='urn:xmpp:sm:3' h='4294967295'/>"
        );
        stream.stanza_received();
        stream.stanza_received();
        assert_eq!(answer(&mut stream), "<a xmlns='urn:xmpp:sm:3' h='1'/>");
    }

    #[test]
    fn server_acks_are_checked_across_the_wrap() {
        let mut out = Vec::new();
        let mut stream = SmStream {
            sent: u32::MAX - 2,
            acked: u32::MAX - 2,
            ..SmStream::default()
        };
        stream.stanzas_sent(5); // sent wraps to 2
        assert_eq!(stream.sent, 2);
        assert_eq!(
            stream.nonza(b"a", b"<a xmlns='urn:xmpp:sm:3' h='4294967295'/>", &mut out),
            Ok(SmEvent::Acked)
        );
        assert_eq!(
            stream.nonza(b"a", b"<a xmlns='urn:xmpp:sm:3' h='2'/>", &mut out),
            Ok(SmEvent::Acked)
        );
        assert_eq!(stream.acked, 2);
        // More than was sent, an unparsable h, and <failed/> are errors.
        assert!(stream
            .nonza(b"a", b"<a xmlns='urn:xmpp:sm:3' h='3'/>", &mut out)
            .is_err());
        assert!(stream
            .nonza(b"a", b"<a xmlns='urn:xmpp:sm:3' h='x'/>", &mut out)
            .is_err());
        assert!(stream
            .nonza(b"a", b"<a xmlns='urn:xmpp:sm:3'/>", &mut out)
            .is_err());
        assert!(stream
            .nonza(b"failed", b"<failed xmlns='urn:xmpp:sm:3'/>", &mut out)
            .is_err());
        assert!(out.is_empty());
        assert_eq!(
            stream.nonza(b"enabled", b"<enabled/>", &mut out),
            Ok(SmEvent::Other)
        );
    }

    #[test]
    fn requests_every_n_sent() {
        let mut out = Vec::new();
        let mut stream = SmStream::default();
        assert!(!stream.maybe_request(0, &mut out));
        stream.stanzas_sent(4);
        assert!(!stream.maybe_request(5, &mut out));
        stream.stanzas_sent(1);
        assert!(stream.maybe_request(5, &mut out));
        assert!(!stream.maybe_request(5, &mut out));
        assert_eq!(out, b"<r xmlns='urn:xmpp:sm:3'/>");
    }

    #[test]
    fn enable_elements() {
        assert_eq!(SmMode::Off.enable_element(), None);
        assert_eq!(
            SmMode::Resume.enable_element(),
            Some(&b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"[..])
        );
    }
}
