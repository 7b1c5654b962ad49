//! SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677), server side, without
//! channel binding: the gs2 flags `n` and `y` are accepted, `p` is refused
//! because no `-PLUS` mechanism is offered (RFC 5802 section 6).
//!
//! An unknown account runs the same exchange with a salt derived from the
//! username and a server secret, and fails at the proof: the client cannot
//! tell it from a wrong password (RFC 5802 section 9, user enumeration).

use base64::Engine;
use rand::RngCore;
use subtle::{Choice, ConstantTimeEq};

use crate::credentials::{ScramHash, ScramKeys, DEFAULT_ITERATIONS, SALT_BYTES};
use crate::error::SaslError;
use crate::saslname::decode_saslname;

/// Random bytes in the server's part of the nonce (base64-encoded on the
/// wire); RFC 5802 section 5.1 asks for a fresh, unpredictable value, and we
/// keep at least 18 bytes of entropy.
pub const SERVER_NONCE_BYTES: usize = 24;

fn base64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn base64_decode(data: &str, what: &'static str) -> Result<Vec<u8>, SaslError> {
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| SaslError::IncorrectEncoding(what))
}

/// The secret that fake salts of unknown accounts are derived from. It must be
/// the same on every node and across restarts, or an unknown account would
/// show a salt that changes where a real one does not.
#[derive(Clone)]
pub struct ServerSecret([u8; 32]);

impl ServerSecret {
    /// Derive the secret from long-lived secret material shared by the
    /// cluster's nodes (the connection-manager uses its TLS private key).
    pub fn derive_from(material: &[u8]) -> Self {
        let derived = ScramHash::Sha256.hmac(b"starling scram fake-salt secret", material);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&derived);
        ServerSecret(secret)
    }

    /// A random secret (tests, or a single node with no persistent secret).
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        ServerSecret(secret)
    }

    /// A value only holders of the secret can compute: HMAC-SHA-256 of
    /// `input` under a key derived for `purpose` (FAST tokens, XEP-0484).
    pub fn derive(&self, purpose: &[u8], input: &[u8]) -> Vec<u8> {
        let key = ScramHash::Sha256.hmac(&self.0, purpose);
        ScramHash::Sha256.hmac(&key, input)
    }

    /// The salt an unknown account shows: deterministic per (hash, username).
    fn fake_salt(&self, hash: ScramHash, username: &str) -> Vec<u8> {
        let mut input = Vec::with_capacity(username.len() + 16);
        input.extend_from_slice(hash.mechanism_name().as_bytes());
        input.push(0);
        input.extend_from_slice(username.as_bytes());
        let mut salt = ScramHash::Sha256.hmac(&self.0, &input);
        salt.truncate(SALT_BYTES);
        salt
    }
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(..)")
    }
}

/// A parsed client-first-message (RFC 5802 section 7).
#[derive(Debug, Clone)]
pub struct ScramClientFirst {
    hash: ScramHash,
    /// `gs2-header`, verbatim: the client echoes it base64-encoded in `c=`.
    gs2_header: String,
    authzid: Option<String>,
    /// The decoded saslname, not yet normalised.
    username: String,
    client_nonce: String,
    client_first_bare: String,
}

fn is_nonce_char(c: char) -> bool {
    // printable = %x21-2B / %x2D-7E (RFC 5802 section 7): no ','.
    matches!(c, '\x21'..='\x2b' | '\x2d'..='\x7e')
}

/// `attr-val = ALPHA "=" value`: an optional extension attribute.
fn is_extension(attribute: &str) -> bool {
    let bytes = attribute.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'='
}

impl ScramClientFirst {
    /// Parse the client-first-message: `gs2-header client-first-message-bare`.
    pub fn parse(hash: ScramHash, message: &[u8]) -> Result<Self, SaslError> {
        let message = std::str::from_utf8(message)
            .map_err(|_| SaslError::MalformedRequest("client-first is not utf-8"))?;
        // gs2-cbind-flag (RFC 5802 section 7).
        let after_flag = match message.as_bytes().first() {
            Some(b'n') | Some(b'y') => &message[1..],
            Some(b'p') => {
                // RFC 5802 section 6: a client that asks for channel binding
                // on a non-PLUS mechanism fails; we offer no -PLUS mechanism.
                return Err(SaslError::MalformedRequest(
                    "channel binding requested but not offered",
                ));
            }
            _ => {
                return Err(SaslError::MalformedRequest(
                    "missing gs2 channel binding flag",
                ))
            }
        };
        let after_flag = after_flag
            .strip_prefix(',')
            .ok_or(SaslError::MalformedRequest("gs2 flag not followed by ','"))?;
        let (authzid_field, bare) = after_flag
            .split_once(',')
            .ok_or(SaslError::MalformedRequest("incomplete gs2 header"))?;
        let authzid = if authzid_field.is_empty() {
            None
        } else {
            let encoded = authzid_field
                .strip_prefix("a=")
                .ok_or(SaslError::MalformedRequest(
                    "gs2 authzid does not start with 'a='",
                ))?;
            Some(decode_saslname(encoded)?)
        };
        let gs2_header = message[..message.len() - bare.len()].to_string();

        let mut attributes = bare.split(',');
        let first = attributes.next().unwrap_or("");
        if first.starts_with("m=") {
            // reserved-mext: "the server MUST fail the authentication" (RFC 5802 section 5.1).
            return Err(SaslError::MalformedRequest(
                "mandatory extension not supported",
            ));
        }
        let encoded_username = first
            .strip_prefix("n=")
            .ok_or(SaslError::MalformedRequest("client-first has no username"))?;
        let username = decode_saslname(encoded_username)?;
        let client_nonce = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest("client-first has no nonce"))?;
        if client_nonce.is_empty() || !client_nonce.chars().all(is_nonce_char) {
            return Err(SaslError::MalformedRequest(
                "client nonce has invalid characters",
            ));
        }
        if !attributes.all(is_extension) {
            return Err(SaslError::MalformedRequest(
                "client-first has an invalid extension",
            ));
        }
        Ok(ScramClientFirst {
            hash,
            gs2_header,
            authzid,
            username,
            client_nonce: client_nonce.to_string(),
            client_first_bare: bare.to_string(),
        })
    }

    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// The authentication identity as sent (saslname-decoded); the caller
    /// normalises it as a JID localpart.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The authorization identity, when the client sent one. The caller
    /// accepts only the authenticated user's own bare JID (RFC 6120 section 6.3.8).
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// The server-first-message, with the account's keys or `None` for an
    /// account that does not exist (then a fake salt from `secret`, and the
    /// exchange fails at the proof).
    pub fn respond(
        self,
        credentials: Option<ScramKeys>,
        secret: &ServerSecret,
    ) -> (ScramServerFirst, String) {
        let mut random = [0u8; SERVER_NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut random);
        self.respond_with_server_nonce(credentials, secret, &base64_encode(&random))
    }

    fn respond_with_server_nonce(
        self,
        credentials: Option<ScramKeys>,
        secret: &ServerSecret,
        server_nonce: &str,
    ) -> (ScramServerFirst, String) {
        let account_exists = credentials.is_some();
        let keys = credentials.unwrap_or_else(|| {
            // Random keys: no proof can match them, and the proof check runs
            // the same computation as for a real account.
            let mut stored_key = vec![0u8; self.hash.output_len()];
            let mut server_key = vec![0u8; self.hash.output_len()];
            rand::rngs::OsRng.fill_bytes(&mut stored_key);
            rand::rngs::OsRng.fill_bytes(&mut server_key);
            ScramKeys {
                salt: secret.fake_salt(self.hash, &self.username),
                iterations: DEFAULT_ITERATIONS,
                stored_key,
                server_key,
            }
        });
        let nonce = format!("{}{}", self.client_nonce, server_nonce);
        let server_first = format!(
            "r={},s={},i={}",
            nonce,
            base64_encode(&keys.salt),
            keys.iterations
        );
        let state = ScramServerFirst {
            hash: self.hash,
            gs2_header: self.gs2_header,
            authzid: self.authzid,
            username: self.username,
            client_first_bare: self.client_first_bare,
            server_first: server_first.clone(),
            nonce,
            keys,
            account_exists,
        };
        (state, server_first)
    }
}

/// The exchange after the server-first-message, waiting for the client-final-message.
pub struct ScramServerFirst {
    hash: ScramHash,
    gs2_header: String,
    authzid: Option<String>,
    username: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    keys: ScramKeys,
    account_exists: bool,
}

impl std::fmt::Debug for ScramServerFirst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServerFirst")
            .field("hash", &self.hash)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ScramServerFirst {
    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// Verify the client-final-message: channel binding, nonce, and the proof
    /// in constant time (RFC 5802 section 3). On success, the
    /// server-final-message `v=ServerSignature` for `<success/>`.
    pub fn verify_client_final(self, message: &[u8]) -> Result<String, SaslError> {
        let message = std::str::from_utf8(message)
            .map_err(|_| SaslError::MalformedRequest("client-final is not utf-8"))?;
        let (without_proof, encoded_proof) = message
            .rsplit_once(",p=")
            .ok_or(SaslError::MalformedRequest("client-final has no proof"))?;
        let mut attributes = without_proof.split(',');
        let encoded_binding = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("c="))
            .ok_or(SaslError::MalformedRequest(
                "client-final has no channel binding",
            ))?;
        let nonce = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest("client-final has no nonce"))?;
        if !attributes.all(is_extension) {
            return Err(SaslError::MalformedRequest(
                "client-final has an invalid extension",
            ));
        }
        let channel_binding =
            base64_decode(encoded_binding, "channel binding is not valid base64")?;
        let proof = base64_decode(encoded_proof, "client proof is not valid base64")?;

        // Without channel binding, c= carries the gs2 header alone: "biws"
        // for "n,,", "eSws" for "y,," (RFC 5802 section 7).
        if channel_binding != self.gs2_header.as_bytes() {
            return Err(SaslError::NotAuthorized(
                "channel binding does not match the gs2 header",
            ));
        }
        if nonce != self.nonce {
            return Err(SaslError::NotAuthorized("nonce does not match"));
        }

        // AuthMessage = client-first-message-bare "," server-first-message ","
        // client-final-message-without-proof (RFC 5802 section 3).
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = self
            .hash
            .hmac(&self.keys.stored_key, auth_message.as_bytes());
        let proof_has_length = Choice::from(u8::from(proof.len() == client_signature.len()));
        let client_key: Vec<u8> = client_signature
            .iter()
            .zip(proof.iter().chain(std::iter::repeat(&0u8)))
            .map(|(signature_byte, proof_byte)| signature_byte ^ proof_byte)
            .collect();
        let computed_stored_key = self.hash.hash(&client_key);
        let valid = computed_stored_key.ct_eq(&self.keys.stored_key)
            & proof_has_length
            & Choice::from(u8::from(self.account_exists));
        if !bool::from(valid) {
            return Err(SaslError::NotAuthorized("client proof does not match"));
        }
        let server_signature = self
            .hash
            .hmac(&self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", base64_encode(&server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::derive_scram_credentials;
    use crate::error::SaslFailureCondition;

    fn b64(data: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    }

    fn pencil_keys(hash: ScramHash, salt: &str) -> ScramKeys {
        derive_scram_credentials(hash, "pencil", &b64(salt), 4096)
    }

    /// RFC 5802 section 5.
    #[test]
    fn rfc5802_sha1_exchange() {
        let secret = ServerSecret::random();
        let first =
            ScramClientFirst::parse(ScramHash::Sha1, b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
                .unwrap();
        assert_eq!(first.username(), "user");
        assert_eq!(first.authzid(), None);
        let keys = pencil_keys(ScramHash::Sha1, "QSXCR+Q6sek8bf92");
        let (state, server_first) =
            first.respond_with_server_nonce(Some(keys), &secret, "3rfcNHYJY1ZVvWVs7j");
        assert_eq!(
            server_first,
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let server_final = state
            .verify_client_final(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            )
            .unwrap();
        assert_eq!(server_final, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    }

    /// RFC 7677 section 3.
    #[test]
    fn rfc7677_sha256_exchange() {
        let secret = ServerSecret::random();
        let first = ScramClientFirst::parse(ScramHash::Sha256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        let keys = pencil_keys(ScramHash::Sha256, "W22ZaJ0SNY7soEsUEjb6gQ==");
        let (state, server_first) =
            first.respond_with_server_nonce(Some(keys), &secret, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = state
            .verify_client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn random_server_nonce_extends_the_client_nonce() {
        let first = ScramClientFirst::parse(ScramHash::Sha256, b"n,,n=user,r=abc").unwrap();
        let (_, server_first) = first.respond(None, &ServerSecret::random());
        let nonce = server_first
            .strip_prefix("r=abc")
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        assert_eq!(b64(nonce).len(), SERVER_NONCE_BYTES);
        const { assert!(SERVER_NONCE_BYTES >= 18) };
    }

    fn condition_of_first(message: &[u8]) -> SaslFailureCondition {
        ScramClientFirst::parse(ScramHash::Sha256, message)
            .unwrap_err()
            .condition()
    }

    #[test]
    fn malformed_client_first_messages() {
        use SaslFailureCondition::MalformedRequest;
        for message in [
            &b""[..],
            b"x,,n=user,r=abc",
            b"n",
            b"n,",
            b"nn,,n=user,r=abc",
            b"n,,",
            b"n,,r=abc",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,,n=user,r=a,b",
            b"n,,n=,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,b=x,n=user,r=abc",
            b"n,a=,n=user,r=abc",
            b"n,,n=user,r=ab\x7fc",
            b"n,,n=us\xffer,r=abc",
            b"n,,n=user,r=abc,1=ext",
        ] {
            assert_eq!(
                condition_of_first(message),
                MalformedRequest,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn channel_binding_flag_p_is_refused() {
        assert_eq!(
            condition_of_first(b"p=tls-exporter,,n=user,r=abc"),
            SaslFailureCondition::MalformedRequest
        );
    }

    #[test]
    fn authzid_and_saslname_escapes() {
        let first = ScramClientFirst::parse(
            ScramHash::Sha1,
            b"n,a=juliet@example.com,n=ju=2Cli=3Det,r=abc,x=extension",
        )
        .unwrap();
        assert_eq!(first.authzid(), Some("juliet@example.com"));
        assert_eq!(first.username(), "ju,li=et");
    }

    /// Run a whole exchange as a client would, with password `password`.
    fn client_final_for(
        hash: ScramHash,
        gs2_header: &str,
        client_nonce: &str,
        password: &str,
        server_first: &str,
    ) -> String {
        let mut fields = server_first.split(',');
        let nonce = fields.next().unwrap().strip_prefix("r=").unwrap();
        let salt = b64(fields.next().unwrap().strip_prefix("s=").unwrap());
        let iterations: u32 = fields
            .next()
            .unwrap()
            .strip_prefix("i=")
            .unwrap()
            .parse()
            .unwrap();
        let salted = hash.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.hash(&client_key);
        let without_proof = format!("c={},r={}", base64_encode(gs2_header.as_bytes()), nonce);
        let auth_message = format!("n=user,r={client_nonce},{server_first},{without_proof}");
        let signature = hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        format!("{without_proof},p={}", base64_encode(&proof))
    }

    fn exchange(
        password: &str,
        account: Option<ScramKeys>,
        gs2_header: &str,
    ) -> Result<String, SaslError> {
        let hash = ScramHash::Sha256;
        let client_first = format!("{gs2_header}n=user,r=clientnonce");
        let first = ScramClientFirst::parse(hash, client_first.as_bytes())?;
        let (state, server_first) = first.respond(account, &ServerSecret::random());
        let client_final =
            client_final_for(hash, gs2_header, "clientnonce", password, &server_first);
        state.verify_client_final(client_final.as_bytes())
    }

    #[test]
    fn gs2_flag_y_is_accepted_with_its_binding() {
        let keys = pencil_keys(ScramHash::Sha256, "W22ZaJ0SNY7soEsUEjb6gQ==");
        assert!(exchange("pencil", Some(keys), "y,,")
            .unwrap()
            .starts_with("v="));
    }

    #[test]
    fn wrong_password_is_not_authorized() {
        let keys = pencil_keys(ScramHash::Sha256, "W22ZaJ0SNY7soEsUEjb6gQ==");
        assert_eq!(
            exchange("crayon", Some(keys), "n,,")
                .unwrap_err()
                .condition(),
            SaslFailureCondition::NotAuthorized
        );
    }

    #[test]
    fn unknown_account_fails_at_the_proof_with_a_stable_salt() {
        assert_eq!(
            exchange("pencil", None, "n,,").unwrap_err().condition(),
            SaslFailureCondition::NotAuthorized
        );
        let secret = ServerSecret::derive_from(b"shared key material");
        let salt_of = |secret: &ServerSecret, hash: ScramHash, username: &str| {
            let message = format!("n,,n={username},r=abc");
            let first = ScramClientFirst::parse(hash, message.as_bytes()).unwrap();
            let (_, server_first) = first.respond(None, secret);
            server_first.split(',').nth(1).unwrap().to_string()
        };
        let salt = salt_of(&secret, ScramHash::Sha256, "nobody");
        assert_eq!(
            salt,
            salt_of(
                &ServerSecret::derive_from(b"shared key material"),
                ScramHash::Sha256,
                "nobody"
            )
        );
        assert_ne!(salt, salt_of(&secret, ScramHash::Sha256, "somebody"));
        assert_ne!(salt, salt_of(&secret, ScramHash::Sha1, "nobody"));
        assert_eq!(b64(salt.strip_prefix("s=").unwrap()).len(), SALT_BYTES);
        // The fake iteration count is the one real accounts get.
        let first = ScramClientFirst::parse(ScramHash::Sha256, b"n,,n=nobody,r=abc").unwrap();
        assert!(first.respond(None, &secret).1.ends_with(",i=4096"));
    }

    fn final_condition(client_final: &[u8]) -> SaslFailureCondition {
        let first =
            ScramClientFirst::parse(ScramHash::Sha1, b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
                .unwrap();
        let keys = pencil_keys(ScramHash::Sha1, "QSXCR+Q6sek8bf92");
        let (state, _) = first.respond_with_server_nonce(
            Some(keys),
            &ServerSecret::random(),
            "3rfcNHYJY1ZVvWVs7j",
        );
        state
            .verify_client_final(client_final)
            .unwrap_err()
            .condition()
    }

    #[test]
    fn client_final_rejections() {
        use SaslFailureCondition::*;
        let nonce = "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j";
        let proof = "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=";
        let cases: Vec<(String, SaslFailureCondition)> = vec![
            (format!("c=biws,r={nonce}"), MalformedRequest),
            (format!("r={nonce},c=biws,p={proof}"), MalformedRequest),
            (format!("c=biws,p={proof}"), MalformedRequest),
            (format!("c=biws,r={nonce},1=x,p={proof}"), MalformedRequest),
            (format!("c=b*ws,r={nonce},p={proof}"), IncorrectEncoding),
            (
                format!("c=biws,r={nonce},p=v0X8v3Bz2T0C!!!"),
                IncorrectEncoding,
            ),
            // 'y' in c= where the client sent 'n' in its gs2 header.
            (format!("c=eSws,r={nonce},p={proof}"), NotAuthorized),
            (format!("c=biws,r={nonce}x,p={proof}"), NotAuthorized),
            (
                "c=biws,r=fyko+d2lbbFgONRv9qkxdawL,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=".to_string(),
                NotAuthorized,
            ),
            (
                format!("c=biws,r={nonce},p=AAAAv3Bz2T0CJGbJQyF0X+HI4Ts="),
                NotAuthorized,
            ),
            (format!("c=biws,r={nonce},p=AAAA"), NotAuthorized),
        ];
        for (message, expected) in cases {
            assert_eq!(final_condition(message.as_bytes()), expected, "{message}");
        }
        assert_eq!(final_condition(b"c=biws,r=\xff,p=AAAA"), MalformedRequest);
    }
}
