//! SASL mechanisms without I/O: SCRAM-SHA-1, SCRAM-SHA-256 (RFC 5802, RFC 7677)
//! and their `-PLUS` channel binding variants (RFC 5802 section 6, with
//! `tls-exporter` RFC 9266 and `tls-server-end-point` RFC 5929), the XEP-0474
//! downgrade protection hash, PLAIN (RFC 4616) and the HT mechanisms of FAST
//! (XEP-0484), server side, plus credential derivation.
//!
//! The crate only computes: the connection-manager reads `<auth/>` and
//! `<response/>` from the stream, looks credentials up asynchronously, and
//! drives the state machines here:
//!
//! 1. [`ScramClientFirst::parse`] reads the client-first-message;
//! 2. the caller normalises [`ScramClientFirst::username`] as a JID localpart,
//!    looks the account up, and calls [`ScramClientFirst::respond`] with the
//!    stored keys or `None` (unknown account: the exchange goes on with a fake
//!    salt and fails at the proof, RFC 5802 section 9);
//! 3. [`ScramServerFirst::verify_client_final`] checks the channel binding,
//!    the nonce and the proof (in constant time) and returns the
//!    server-final-message carried in `<success/>`.
//!
//! Every error maps to a SASL failure condition of RFC 6120 section 6.5.

#![forbid(unsafe_code)]

mod channel_binding;
mod credentials;
mod error;
mod ht;
mod plain;
mod saslname;
mod scram;

pub use channel_binding::{
    downgrade_protection_hash, tls_server_end_point, ChannelBindingType, ChannelBindings,
    TLS_EXPORTER_LABEL, TLS_EXPORTER_LENGTH,
};
pub use credentials::{
    derive_scram_credentials, new_credentials, prepare_password, validate_password, ScramHash,
    ScramKeys, DEFAULT_ITERATIONS, SALT_BYTES,
};
pub use error::{SaslError, SaslFailureCondition};
pub use ht::{HtInitial, HT_SHA_256_ENDP, HT_SHA_256_EXPR, HT_SHA_256_NONE};
pub use plain::{verify_plain_password, PlainCredentials};
pub use saslname::decode_saslname;
pub use scram::{ScramClientFirst, ScramServerFirst, ServerSecret, SERVER_NONCE_BYTES};

use base64::Engine;

/// The mechanisms this server implements, strongest first (the order in which
/// they are offered in `<mechanisms/>`, RFC 6120 section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-256 with channel binding (RFC 7677 section 3, RFC 5802 section 6).
    ScramSha256Plus,
    /// SCRAM-SHA-1 with channel binding (RFC 5802 section 6).
    ScramSha1Plus,
    ScramSha256,
    ScramSha1,
    Plain,
    /// HT-SHA-256-EXPR, HT-SHA-256-ENDP, HT-SHA-256-NONE (FAST tokens,
    /// XEP-0484): offered in SASL2's `<fast/>` only, never in the mechanism
    /// lists (not in [`Mechanism::ALL`]).
    HtSha256Expr,
    HtSha256Endp,
    HtSha256None,
}

impl Mechanism {
    /// Every mechanism of the SASL mechanism lists, in the order of
    /// preference. The `-PLUS` ones only go where the stream has channel
    /// binding data ([`Mechanism::requires_channel_binding`]).
    pub const ALL: &'static [Mechanism] = &[
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The FAST token mechanisms, strongest first (XEP-0484 `<fast/>`).
    pub const FAST: &'static [Mechanism] = &[
        Mechanism::HtSha256Expr,
        Mechanism::HtSha256Endp,
        Mechanism::HtSha256None,
    ];

    /// The IANA-registered mechanism name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
            Mechanism::HtSha256Expr => HT_SHA_256_EXPR,
            Mechanism::HtSha256Endp => HT_SHA_256_ENDP,
            Mechanism::HtSha256None => HT_SHA_256_NONE,
        }
    }

    /// The mechanism of this exact name among [`Mechanism::ALL`] (SASL names
    /// are upper case, RFC 4422 section 3.1).
    pub fn from_name(name: &str) -> Option<Self> {
        Mechanism::ALL
            .iter()
            .copied()
            .find(|mechanism| mechanism.as_str() == name)
    }

    /// The FAST mechanism of this exact name among [`Mechanism::FAST`].
    pub fn fast_from_name(name: &str) -> Option<Self> {
        Mechanism::FAST
            .iter()
            .copied()
            .find(|mechanism| mechanism.as_str() == name)
    }

    /// The SCRAM hash of a SCRAM mechanism, `None` for the others.
    pub fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => Some(ScramHash::Sha256),
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Some(ScramHash::Sha1),
            Mechanism::Plain
            | Mechanism::HtSha256Expr
            | Mechanism::HtSha256Endp
            | Mechanism::HtSha256None => None,
        }
    }

    /// Whether this is a FAST token mechanism.
    pub fn is_fast(self) -> bool {
        Mechanism::FAST.contains(&self)
    }

    /// A `-PLUS` SCRAM mechanism: it is offered only with channel binding
    /// data, and it binds to one of the stream's types (RFC 5802 section 6).
    pub fn requires_channel_binding(self) -> bool {
        matches!(self, Mechanism::ScramSha256Plus | Mechanism::ScramSha1Plus)
    }

    /// The channel binding type an HT mechanism binds to (draft-schmaus-kitten-sasl-ht
    /// section 3); `None` for NONE and every other mechanism.
    pub fn ht_channel_binding(self) -> Option<ChannelBindingType> {
        match self {
            Mechanism::HtSha256Expr => Some(ChannelBindingType::TlsExporter),
            Mechanism::HtSha256Endp => Some(ChannelBindingType::TlsServerEndPoint),
            _ => None,
        }
    }

    /// Whether the mechanism can be used on a stream with `bindings`: the
    /// `-PLUS` SCRAM mechanisms need one type, a channel-bound HT mechanism
    /// its own.
    pub fn available_with(self, bindings: &ChannelBindings) -> bool {
        if self.requires_channel_binding() {
            return !bindings.is_empty();
        }
        self.ht_channel_binding()
            .is_none_or(|binding| bindings.get(binding).is_some())
    }

    /// PLAIN sends the password itself: it may only be offered and accepted
    /// inside TLS (RFC 4616 section 6, RFC 6120 section 13.8.3).
    pub fn requires_encryption(self) -> bool {
        matches!(self, Mechanism::Plain)
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decode the base64 character data of `<auth/>`, `<response/>` (RFC 6120
/// section 6.4.2): a single `=` is a zero-length response; anything that is
/// not canonical base64 is `incorrect-encoding` (section 6.5.5).
pub fn decode_xmpp_payload(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| SaslError::IncorrectEncoding("sasl payload is not valid base64"))
}

/// Decode the base64 character data of a SASL2 `<initial-response/>` or
/// `<response/>` (XEP-0388 section "SASL Data Encoding"): an empty element is
/// an empty string (no `=` special case); anything that is not canonical
/// base64 is `incorrect-encoding`.
pub fn decode_sasl2_payload(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| SaslError::IncorrectEncoding("sasl2 payload is not valid base64"))
}

/// Plain base64 (SASL2 payloads, XEP-0388: an empty payload is an empty element).
pub fn encode_base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Encode a challenge or success payload for the stream (RFC 6120 section
/// 6.4.3): an empty payload is written as `=`.
pub fn encode_xmpp_payload(data: &[u8]) -> String {
    if data.is_empty() {
        return "=".to_string();
    }
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_round_trip() {
        for mechanism in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(mechanism.as_str()), Some(*mechanism));
        }
        assert_eq!(Mechanism::from_name("scram-sha-1"), None);
        assert_eq!(
            Mechanism::from_name("SCRAM-SHA-1-PLUS"),
            Some(Mechanism::ScramSha1Plus)
        );
        assert_eq!(Mechanism::from_name("SCRAM-SHA-512-PLUS"), None);
        assert_eq!(Mechanism::from_name("HT-SHA-256-EXPR"), None);
        assert_eq!(
            Mechanism::fast_from_name("HT-SHA-256-EXPR"),
            Some(Mechanism::HtSha256Expr)
        );
        assert_eq!(Mechanism::fast_from_name("HT-SHA-256-UNIQ"), None);
        for mechanism in Mechanism::FAST {
            assert_eq!(
                Mechanism::fast_from_name(mechanism.as_str()),
                Some(*mechanism)
            );
        }
        let end_point_only = ChannelBindings::new(None, Some(vec![1; 32]));
        assert!(Mechanism::ScramSha256Plus.available_with(&end_point_only));
        assert!(!Mechanism::ScramSha256Plus.available_with(&ChannelBindings::none()));
        assert!(Mechanism::HtSha256Endp.available_with(&end_point_only));
        assert!(!Mechanism::HtSha256Expr.available_with(&end_point_only));
        assert!(Mechanism::HtSha256None.available_with(&ChannelBindings::none()));
        assert!(Mechanism::ScramSha1.available_with(&ChannelBindings::none()));
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
        assert!(Mechanism::Plain.requires_encryption());
        assert!(!Mechanism::ScramSha1.requires_encryption());
    }

    #[test]
    fn payload_encoding() {
        assert_eq!(decode_xmpp_payload("=").unwrap(), Vec::<u8>::new());
        assert_eq!(decode_xmpp_payload("").unwrap(), Vec::<u8>::new());
        assert_eq!(decode_xmpp_payload(" biws\n").unwrap(), b"n,,".to_vec());
        assert_eq!(
            decode_xmpp_payload("bi*s").unwrap_err().condition(),
            SaslFailureCondition::IncorrectEncoding
        );
        assert_eq!(
            decode_xmpp_payload("biw").unwrap_err().condition(),
            SaslFailureCondition::IncorrectEncoding
        );
        assert_eq!(encode_xmpp_payload(b""), "=");
        assert_eq!(decode_sasl2_payload("").unwrap(), Vec::<u8>::new());
        assert_eq!(decode_sasl2_payload(" biws\n").unwrap(), b"n,,".to_vec());
        assert_eq!(
            decode_sasl2_payload("=").unwrap_err().condition(),
            SaslFailureCondition::IncorrectEncoding
        );
        assert_eq!(encode_xmpp_payload(b"n,,"), "biws");
    }
}
