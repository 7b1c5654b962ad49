//! HT-SHA-256-NONE, -EXPR and -ENDP (draft-schmaus-kitten-sasl-ht-09
//! section 3, used by XEP-0484 FAST), server side: the client proves it
//! holds a token with `authcid NUL HMAC-SHA-256(token, "Initiator" ||
//! cb-data)`, the server answers `HMAC-SHA-256(token, "Responder" ||
//! cb-data)` as additional data. `cb-data` is the stream's `tls-exporter`
//! data (`EXPR`, RFC 9266), its `tls-server-end-point` data (`ENDP`, RFC
//! 5929), or nothing (`NONE`). `UNIQ` (`tls-unique`) is never offered: it is
//! undefined in TLS 1.3 and unsafe in TLS 1.2 without the extended master
//! secret (RFC 9266 section 3).

use subtle::ConstantTimeEq;

use crate::credentials::ScramHash;
use crate::error::SaslError;

/// The mechanism's name (XEP-0484 `<mechanism/>` of `<fast/>`).
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";
/// HT with `tls-exporter` channel binding (draft section 3, "EXPR").
pub const HT_SHA_256_EXPR: &str = "HT-SHA-256-EXPR";
/// HT with `tls-server-end-point` channel binding (draft section 3, "ENDP").
pub const HT_SHA_256_ENDP: &str = "HT-SHA-256-ENDP";

/// A parsed initial client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtInitial {
    /// The authentication identity as sent; the caller normalises it.
    pub username: String,
    initiator: Vec<u8>,
}

impl HtInitial {
    /// Parse `authcid NUL initiator-hashed-token` (draft section 3.1).
    pub fn parse(message: &[u8]) -> Result<Self, SaslError> {
        let separator = message
            .iter()
            .position(|byte| *byte == 0)
            .ok_or(SaslError::MalformedRequest("ht message has no NUL"))?;
        let username = std::str::from_utf8(&message[..separator])
            .map_err(|_| SaslError::MalformedRequest("ht authcid is not utf-8"))?;
        if username.is_empty() {
            return Err(SaslError::MalformedRequest("ht authcid is empty"));
        }
        let initiator = message[separator + 1..].to_vec();
        if initiator.len() != ScramHash::Sha256.output_len() {
            return Err(SaslError::MalformedRequest("ht initiator is not 32 bytes"));
        }
        Ok(HtInitial {
            username: username.to_string(),
            initiator,
        })
    }

    /// Whether the client holds `token` and, with channel binding, speaks
    /// over the TLS session whose data is `channel_binding` (empty for
    /// `NONE`); in constant time. The server's final message when it does.
    pub fn verify(&self, token: &[u8], channel_binding: &[u8]) -> Option<Vec<u8>> {
        let labelled = |label: &[u8]| {
            let mut input = Vec::with_capacity(label.len() + channel_binding.len());
            input.extend_from_slice(label);
            input.extend_from_slice(channel_binding);
            input
        };
        let expected = ScramHash::Sha256.hmac(token, &labelled(b"Initiator"));
        bool::from(expected.ct_eq(&self.initiator))
            .then(|| ScramHash::Sha256.hmac(token, &labelled(b"Responder")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial(username: &str, token: &[u8]) -> Vec<u8> {
        initial_bound(username, token, b"")
    }

    fn initial_bound(username: &str, token: &[u8], channel_binding: &[u8]) -> Vec<u8> {
        let mut message = username.as_bytes().to_vec();
        message.push(0);
        message
            .extend(ScramHash::Sha256.hmac(token, &[&b"Initiator"[..], channel_binding].concat()));
        message
    }

    #[test]
    fn the_token_holder_is_answered_with_the_responder_hmac() {
        let parsed = HtInitial::parse(&initial("juliet", b"s3cr3t-token")).unwrap();
        assert_eq!(parsed.username, "juliet");
        assert_eq!(
            parsed.verify(b"s3cr3t-token", b""),
            Some(ScramHash::Sha256.hmac(b"s3cr3t-token", b"Responder"))
        );
        assert_eq!(parsed.verify(b"another-token", b""), None);
    }

    #[test]
    fn a_channel_bound_token_proves_the_tls_session_too() {
        let exporter = [0x5au8; 32];
        let parsed =
            HtInitial::parse(&initial_bound("juliet", b"s3cr3t-token", &exporter)).unwrap();
        let mut responder_input = b"Responder".to_vec();
        responder_input.extend_from_slice(&exporter);
        assert_eq!(
            parsed.verify(b"s3cr3t-token", &exporter),
            Some(ScramHash::Sha256.hmac(b"s3cr3t-token", &responder_input))
        );
        // Another session's data (a man in the middle relaying the token
        // proof), or the unbound proof on a bound mechanism: refused.
        assert_eq!(parsed.verify(b"s3cr3t-token", &[0x5b; 32]), None);
        assert_eq!(parsed.verify(b"s3cr3t-token", b""), None);
        let unbound = HtInitial::parse(&initial("juliet", b"s3cr3t-token")).unwrap();
        assert_eq!(unbound.verify(b"s3cr3t-token", &exporter), None);
    }

    #[test]
    fn malformed_messages() {
        for message in [
            &b""[..],
            b"juliet",
            b"\x00aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            b"juliet\x00short",
            b"jul\xffiet\x00aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(
                HtInitial::parse(message).unwrap_err().condition(),
                crate::SaslFailureCondition::MalformedRequest,
                "{message:?}"
            );
        }
    }
}
