//! SASL failures and their RFC 6120 section 6.5 conditions.

/// The SASL failure conditions of RFC 6120 section 6.5, carried in
/// `<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslFailureCondition {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailureCondition {
    /// Every condition, in the order of RFC 6120 section 6.5.
    pub const ALL: &'static [SaslFailureCondition] = &[
        SaslFailureCondition::Aborted,
        SaslFailureCondition::AccountDisabled,
        SaslFailureCondition::CredentialsExpired,
        SaslFailureCondition::EncryptionRequired,
        SaslFailureCondition::IncorrectEncoding,
        SaslFailureCondition::InvalidAuthzid,
        SaslFailureCondition::InvalidMechanism,
        SaslFailureCondition::MalformedRequest,
        SaslFailureCondition::MechanismTooWeak,
        SaslFailureCondition::NotAuthorized,
        SaslFailureCondition::TemporaryAuthFailure,
    ];

    /// The element name of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslFailureCondition::Aborted => "aborted",
            SaslFailureCondition::AccountDisabled => "account-disabled",
            SaslFailureCondition::CredentialsExpired => "credentials-expired",
            SaslFailureCondition::EncryptionRequired => "encryption-required",
            SaslFailureCondition::IncorrectEncoding => "incorrect-encoding",
            SaslFailureCondition::InvalidAuthzid => "invalid-authzid",
            SaslFailureCondition::InvalidMechanism => "invalid-mechanism",
            SaslFailureCondition::MalformedRequest => "malformed-request",
            SaslFailureCondition::MechanismTooWeak => "mechanism-too-weak",
            SaslFailureCondition::NotAuthorized => "not-authorized",
            SaslFailureCondition::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        SaslFailureCondition::ALL
            .iter()
            .copied()
            .find(|condition| condition.as_str() == name)
    }
}

impl std::fmt::Display for SaslFailureCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a SASL exchange failed. The `&'static str` is a detail for the logs;
/// the peer only ever sees [`SaslError::condition`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The message breaks the mechanism's syntax (RFC 6120 section 6.5.8).
    #[error("malformed request: {0}")]
    MalformedRequest(&'static str),
    /// Base64 that does not decode (RFC 6120 section 6.5.5).
    #[error("incorrect encoding: {0}")]
    IncorrectEncoding(&'static str),
    /// The authorization identity is not the authenticated user's (RFC 6120 section 6.5.6).
    #[error("invalid authzid: {0}")]
    InvalidAuthzid(&'static str),
    /// Wrong password, unknown account, wrong proof or nonce: one answer for
    /// all of them, so that accounts cannot be enumerated (RFC 6120 section 6.5.10).
    #[error("not authorized: {0}")]
    NotAuthorized(&'static str),
    /// The mechanism is not offered (RFC 6120 section 6.5.7).
    #[error("invalid mechanism: {0}")]
    InvalidMechanism(&'static str),
    /// The mechanism needs an encrypted stream (RFC 6120 section 6.5.3).
    #[error("encryption required: {0}")]
    EncryptionRequired(&'static str),
    /// A temporary error on the server's side, or a throttled client (RFC 6120 section 6.5.11).
    #[error("temporary auth failure: {0}")]
    TemporaryAuthFailure(&'static str),
    /// The credentials (a FAST token, XEP-0484) have expired (RFC 6120 section 6.5.2).
    #[error("credentials expired: {0}")]
    CredentialsExpired(&'static str),
    /// The client sent `<abort/>` (RFC 6120 section 6.5.1).
    #[error("aborted by the client")]
    Aborted,
    /// The client's channel binding data is not this TLS session's: the
    /// client's TLS session ends somewhere else, a man in the middle (RFC
    /// 5056 section 2.1). `not-authorized` on the wire.
    #[error("channel binding data does not match this tls session")]
    ChannelBindingMismatch,
    /// The gs2 flag 'y' (the client can bind but thinks the server cannot)
    /// where `-PLUS` was offered: the mechanism list was cut on the way
    /// (RFC 5802 section 6). `not-authorized` on the wire.
    #[error("gs2 flag 'y' although -PLUS was offered: a downgrade")]
    ChannelBindingDowngrade,
}

impl SaslError {
    /// The RFC 6120 section 6.5 condition the client receives.
    pub fn condition(&self) -> SaslFailureCondition {
        match self {
            SaslError::MalformedRequest(_) => SaslFailureCondition::MalformedRequest,
            SaslError::IncorrectEncoding(_) => SaslFailureCondition::IncorrectEncoding,
            SaslError::InvalidAuthzid(_) => SaslFailureCondition::InvalidAuthzid,
            SaslError::NotAuthorized(_) => SaslFailureCondition::NotAuthorized,
            SaslError::InvalidMechanism(_) => SaslFailureCondition::InvalidMechanism,
            SaslError::EncryptionRequired(_) => SaslFailureCondition::EncryptionRequired,
            SaslError::TemporaryAuthFailure(_) => SaslFailureCondition::TemporaryAuthFailure,
            SaslError::CredentialsExpired(_) => SaslFailureCondition::CredentialsExpired,
            SaslError::Aborted => SaslFailureCondition::Aborted,
            SaslError::ChannelBindingMismatch | SaslError::ChannelBindingDowngrade => {
                SaslFailureCondition::NotAuthorized
            }
        }
    }

    /// A failure that tells of a man in the middle (channel binding data of
    /// another TLS session, or a stripped `-PLUS`): worth an operator's look.
    pub fn is_channel_binding_alarm(&self) -> bool {
        matches!(
            self,
            SaslError::ChannelBindingMismatch | SaslError::ChannelBindingDowngrade
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_round_trips_by_name() {
        for condition in SaslFailureCondition::ALL {
            assert_eq!(
                SaslFailureCondition::from_name(condition.as_str()),
                Some(*condition)
            );
        }
        assert_eq!(SaslFailureCondition::ALL.len(), 11);
        assert_eq!(SaslError::Aborted.condition().as_str(), "aborted");
        assert_eq!(
            SaslError::NotAuthorized("x").condition().as_str(),
            "not-authorized"
        );
        // Channel binding failures look like any other not-authorized to the client.
        assert_eq!(
            SaslError::ChannelBindingMismatch.condition(),
            SaslFailureCondition::NotAuthorized
        );
        assert_eq!(
            SaslError::ChannelBindingDowngrade.condition(),
            SaslFailureCondition::NotAuthorized
        );
        assert!(SaslError::ChannelBindingDowngrade.is_channel_binding_alarm());
        assert!(!SaslError::NotAuthorized("x").is_channel_binding_alarm());
    }
}
