//! SCRAM key derivation (RFC 5802 section 3) with passwords prepared by the
//! PRECIS OpaqueString profile (RFC 8265 section 4.2, as RFC 7677 section 4
//! and RFC 6120 section 6.3.8 expect of SCRAM in XMPP).

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use precis_core::profile::Profile;
use precis_profiles::OpaqueString;
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::error::SaslError;

/// The PBKDF2 iteration count of new credentials, for both hashes.
///
/// 4096 is the count of the RFC 5802 and RFC 7677 examples and the minimum
/// RFC 7677 section 4 asks for. The server pays it on every PLAIN login (and
/// the client on every SCRAM login that has not cached its SaltedPassword), so
/// a higher count costs per-login CPU on the edge; stored credentials carry
/// their own count, so raising this constant later only affects new passwords.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The length of a random salt of new credentials, in bytes.
pub const SALT_BYTES: usize = 16;

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-1, RFC 5802.
    Sha1,
    /// SCRAM-SHA-256, RFC 7677.
    Sha256,
}

impl ScramHash {
    /// The SASL mechanism name.
    pub fn mechanism_name(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// The output length of the hash (and of every SCRAM key), in bytes.
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    /// H(str), RFC 5802 section 2.2.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// HMAC(key, str), RFC 5802 section 2.2.
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut mac =
                    Hmac::<Sha1>::new_from_slice(key).expect("hmac accepts keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("hmac accepts keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// Hi(str, salt, i) = PBKDF2 with HMAC, RFC 5802 section 2.2.
    pub(crate) fn salted_password(
        self,
        prepared_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha1 => {
                pbkdf2::pbkdf2_hmac::<Sha1>(prepared_password, salt, iterations, &mut out)
            }
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(prepared_password, salt, iterations, &mut out)
            }
        }
        out
    }

    /// StoredKey and ServerKey from a SaltedPassword, RFC 5802 section 3.
    pub(crate) fn keys_from_salted_password(self, salted_password: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let client_key = self.hmac(salted_password, b"Client Key");
        let stored_key = self.hash(&client_key);
        let server_key = self.hmac(salted_password, b"Server Key");
        (stored_key, server_key)
    }
}

/// What the server stores for one hash: never the password (RFC 5802 section 3).
/// Same four fields as `starling_api::ScramCredentials`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeys")
            .field("salt_len", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Prepare a password with the PRECIS OpaqueString profile (RFC 8265 section 4.2).
pub fn prepare_password(password: &str) -> Result<String, SaslError> {
    OpaqueString::new()
        .enforce(password)
        .map(Cow::into_owned)
        .map_err(|_| SaslError::MalformedRequest("password is not valid under PRECIS OpaqueString"))
}

/// Check a new password before storing it (in-band registration, the CLI):
/// it must be valid under OpaqueString, which also rules out the empty password.
pub fn validate_password(password: &str) -> Result<(), SaslError> {
    prepare_password(password).map(|_| ())
}

/// The bytes PBKDF2 runs on. A password that OpaqueString rejects is used as
/// it is, so derivation stays total and the SCRAM and PLAIN paths agree on it;
/// new passwords are checked with [`validate_password`] before they are stored.
pub(crate) fn password_bytes(password: &str) -> Cow<'_, [u8]> {
    match OpaqueString::new().enforce(password) {
        Ok(Cow::Borrowed(prepared)) => Cow::Borrowed(prepared.as_bytes()),
        Ok(Cow::Owned(prepared)) => Cow::Owned(prepared.into_bytes()),
        Err(_) => Cow::Borrowed(password.as_bytes()),
    }
}

/// SaltedPassword = Hi(Normalize(password), salt, i), then StoredKey =
/// H(HMAC(SaltedPassword, "Client Key")) and ServerKey = HMAC(SaltedPassword,
/// "Server Key") (RFC 5802 section 3), Normalize being OpaqueString.
pub fn derive_scram_credentials(
    hash: ScramHash,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> ScramKeys {
    let salted_password = hash.salted_password(&password_bytes(password), salt, iterations);
    let (stored_key, server_key) = hash.keys_from_salted_password(&salted_password);
    ScramKeys {
        salt: salt.to_vec(),
        iterations,
        stored_key,
        server_key,
    }
}

/// Fresh credentials for a new password: SHA-1 and SHA-256 keys, each with its
/// own random [`SALT_BYTES`]-byte salt and [`DEFAULT_ITERATIONS`] iterations.
/// (Distinct salts, so that the two SCRAM mechanisms reveal nothing in common.)
pub fn new_credentials(password: &str) -> (ScramKeys, ScramKeys) {
    let mut sha1_salt = [0u8; SALT_BYTES];
    let mut sha256_salt = [0u8; SALT_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut sha1_salt);
    rand::rngs::OsRng.fill_bytes(&mut sha256_salt);
    (
        derive_scram_credentials(ScramHash::Sha1, password, &sha1_salt, DEFAULT_ITERATIONS),
        derive_scram_credentials(
            ScramHash::Sha256,
            password,
            &sha256_salt,
            DEFAULT_ITERATIONS,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(data: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    }

    #[test]
    fn rfc5802_keys_for_pencil() {
        let keys =
            derive_scram_credentials(ScramHash::Sha1, "pencil", &b64("QSXCR+Q6sek8bf92"), 4096);
        // Cross-checked with an independent PBKDF2/HMAC implementation.
        assert_eq!(keys.stored_key, b64("6dlGYMOdZcOPutkcNY8U2g7vK9Y="));
        assert_eq!(keys.server_key, b64("D+CSWLOshSulAsxiupA+qs2/fTE="));
        assert_eq!(keys.iterations, 4096);
    }

    #[test]
    fn rfc7677_keys_for_pencil() {
        let keys = derive_scram_credentials(
            ScramHash::Sha256,
            "pencil",
            &b64("W22ZaJ0SNY7soEsUEjb6gQ=="),
            4096,
        );
        assert_eq!(
            keys.stored_key,
            b64("WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=")
        );
        assert_eq!(
            keys.server_key,
            b64("wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")
        );
    }

    #[test]
    fn opaque_string_prepares_the_password() {
        // U+2000 EN QUAD is mapped to U+0020 SPACE, and NFC is applied
        // (RFC 8265 section 4.2.1).
        assert_eq!(prepare_password("a\u{2000}b").unwrap(), "a b");
        assert_eq!(prepare_password("e\u{301}").unwrap(), "\u{e9}");
        let salt = b"0123456789abcdef";
        assert_eq!(
            derive_scram_credentials(ScramHash::Sha256, "a\u{2000}b", salt, 4096),
            derive_scram_credentials(ScramHash::Sha256, "a b", salt, 4096)
        );
    }

    #[test]
    fn invalid_passwords_are_rejected_up_front() {
        assert!(validate_password("").is_err());
        assert!(validate_password("tab\tinside").is_err());
        assert!(validate_password("correct horse").is_ok());
        // Derivation stays total for such a password.
        let keys = derive_scram_credentials(ScramHash::Sha1, "tab\tinside", b"salt", 16);
        assert_eq!(keys.stored_key.len(), 20);
    }

    #[test]
    fn new_credentials_use_distinct_random_salts() {
        let (sha1, sha256) = new_credentials("pencil");
        assert_eq!(sha1.salt.len(), SALT_BYTES);
        assert_eq!(sha256.salt.len(), SALT_BYTES);
        assert_ne!(sha1.salt, sha256.salt);
        assert_eq!(sha1.iterations, DEFAULT_ITERATIONS);
        assert_eq!(sha256.iterations, DEFAULT_ITERATIONS);
        assert_eq!(
            sha256,
            derive_scram_credentials(
                ScramHash::Sha256,
                "pencil",
                &sha256.salt,
                DEFAULT_ITERATIONS
            )
        );
        let (again, _) = new_credentials("pencil");
        assert_ne!(again.salt, sha1.salt);
    }

    #[test]
    fn debug_output_hides_the_keys() {
        let keys = derive_scram_credentials(ScramHash::Sha1, "pencil", b"salt", 16);
        let shown = format!("{keys:?}");
        assert!(!shown.contains("stored_key"));
    }
}
