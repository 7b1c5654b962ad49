//! HT-SHA-256-NONE (draft-schmaus-kitten-sasl-ht-09 section 3, used by
//! XEP-0484 FAST), server side: the client proves it holds a token with
//! `authcid NUL HMAC-SHA-256(token, "Initiator")`, the server answers
//! `HMAC-SHA-256(token, "Responder")` as additional data. `NONE`: no channel
//! binding data follows the labels.

use subtle::ConstantTimeEq;

use crate::credentials::ScramHash;
use crate::error::SaslError;

/// The mechanism's name (XEP-0484 `<mechanism/>` of `<fast/>`).
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";

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

    /// Whether the client holds `token` (in constant time); the server's
    /// final message when it does.
    pub fn verify(&self, token: &[u8]) -> Option<Vec<u8>> {
        let expected = ScramHash::Sha256.hmac(token, b"Initiator");
        bool::from(expected.ct_eq(&self.initiator))
            .then(|| ScramHash::Sha256.hmac(token, b"Responder"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial(username: &str, token: &[u8]) -> Vec<u8> {
        let mut message = username.as_bytes().to_vec();
        message.push(0);
        message.extend(ScramHash::Sha256.hmac(token, b"Initiator"));
        message
    }

    #[test]
    fn the_token_holder_is_answered_with_the_responder_hmac() {
        let parsed = HtInitial::parse(&initial("juliet", b"s3cr3t-token")).unwrap();
        assert_eq!(parsed.username, "juliet");
        assert_eq!(
            parsed.verify(b"s3cr3t-token"),
            Some(ScramHash::Sha256.hmac(b"s3cr3t-token", b"Responder"))
        );
        assert_eq!(parsed.verify(b"another-token"), None);
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
