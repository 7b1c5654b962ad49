//! The PLAIN mechanism (RFC 4616), server side, verified against stored
//! SCRAM keys: the password itself is never stored.

use subtle::ConstantTimeEq;

use crate::credentials::{password_bytes, ScramHash, ScramKeys, DEFAULT_ITERATIONS};
use crate::error::SaslError;

/// A parsed PLAIN message: `[authzid] NUL authcid NUL passwd` (RFC 4616 section 2).
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    pub authzid: Option<String>,
    pub authcid: String,
    pub password: String,
}

impl std::fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .finish_non_exhaustive()
    }
}

impl PlainCredentials {
    /// Parse the initial response. `authcid` and `passwd` are `1*SAFE`
    /// (non-empty UTF-8 without NUL); an empty authzid means none.
    pub fn parse(message: &[u8]) -> Result<Self, SaslError> {
        let message = std::str::from_utf8(message)
            .map_err(|_| SaslError::MalformedRequest("plain message is not utf-8"))?;
        let mut fields = message.split('\0');
        let (Some(authzid), Some(authcid), Some(password), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(SaslError::MalformedRequest(
                "plain message needs exactly two NUL separators",
            ));
        };
        if authcid.is_empty() {
            return Err(SaslError::MalformedRequest(
                "plain message has an empty authcid",
            ));
        }
        if password.is_empty() {
            return Err(SaslError::MalformedRequest(
                "plain message has an empty password",
            ));
        }
        Ok(PlainCredentials {
            authzid: (!authzid.is_empty()).then(|| authzid.to_string()),
            authcid: authcid.to_string(),
            password: password.to_string(),
        })
    }
}

/// Check a PLAIN password against stored SCRAM keys: derive the StoredKey
/// from the password with the stored salt and iteration count and compare in
/// constant time. `None` (no such account) runs the same derivation against
/// nothing and fails, so both cases cost the same.
pub fn verify_plain_password(hash: ScramHash, password: &str, stored: Option<&ScramKeys>) -> bool {
    let (salt, iterations) = match stored {
        Some(keys) => (keys.salt.as_slice(), keys.iterations),
        None => (&b"starling-no-such-account"[..], DEFAULT_ITERATIONS),
    };
    let salted_password = hash.salted_password(&password_bytes(password), salt, iterations);
    let (stored_key, _) = hash.keys_from_salted_password(&salted_password);
    match stored {
        Some(keys) => bool::from(stored_key.ct_eq(&keys.stored_key)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::derive_scram_credentials;
    use crate::error::SaslFailureCondition;

    #[test]
    fn parses_rfc4616_examples() {
        // RFC 4616 section 4: "\0tim\0tanstaaftanstaaf" and "Ursel\0Kurt\0xipj3plmq".
        let plain = PlainCredentials::parse(b"\0tim\0tanstaaftanstaaf").unwrap();
        assert_eq!(plain.authzid, None);
        assert_eq!(plain.authcid, "tim");
        assert_eq!(plain.password, "tanstaaftanstaaf");
        let plain = PlainCredentials::parse(b"Ursel\0Kurt\0xipj3plmq").unwrap();
        assert_eq!(plain.authzid.as_deref(), Some("Ursel"));
        assert_eq!(plain.authcid, "Kurt");
        assert!(!format!("{plain:?}").contains("xipj3plmq"));
    }

    #[test]
    fn malformed_plain_messages() {
        for message in [
            &b""[..],
            b"tim",
            b"\0tim",
            b"\0\0password",
            b"\0tim\0",
            b"\0tim\0pass\0extra",
            b"\0t\xffim\0pass",
        ] {
            assert_eq!(
                PlainCredentials::parse(message).unwrap_err().condition(),
                SaslFailureCondition::MalformedRequest,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn verifies_against_scram_sha256_keys() {
        let keys = derive_scram_credentials(ScramHash::Sha256, "pencil", b"0123456789abcdef", 4096);
        assert!(verify_plain_password(
            ScramHash::Sha256,
            "pencil",
            Some(&keys)
        ));
        assert!(!verify_plain_password(
            ScramHash::Sha256,
            "pencil ",
            Some(&keys)
        ));
        assert!(!verify_plain_password(
            ScramHash::Sha256,
            "Pencil",
            Some(&keys)
        ));
        assert!(!verify_plain_password(ScramHash::Sha256, "pencil", None));
    }

    #[test]
    fn password_is_prepared_with_opaque_string() {
        let keys = derive_scram_credentials(ScramHash::Sha256, "a b", b"0123456789abcdef", 4096);
        assert!(verify_plain_password(
            ScramHash::Sha256,
            "a\u{2000}b",
            Some(&keys)
        ));
    }
}
