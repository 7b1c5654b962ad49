//! SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677), server side, with
//! their `-PLUS` variants (channel binding, RFC 5802 section 6): `p=<type>`
//! only with a `-PLUS` mechanism and a type the stream offers, `y` refused
//! where `-PLUS` was offered (a downgrade), `n` and `y` refused with a
//! `-PLUS` mechanism; the client's `c=` must carry our TLS session's data.
//! The server-first-message can carry the XEP-0474 downgrade protection `h`.
//!
//! An unknown account runs the same exchange with a salt derived from the
//! username and a server secret, and fails at the proof: the client cannot
//! tell it from a wrong password (RFC 5802 section 9, user enumeration).

use base64::Engine;
use rand::RngCore;
use subtle::{Choice, ConstantTimeEq};

use crate::channel_binding::{ChannelBindingType, ChannelBindings};
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
    /// The channel binding type of a `-PLUS` exchange (`p=` in the gs2 header).
    channel_binding: Option<ChannelBindingType>,
    /// `gs2-header` verbatim, then the channel binding data of `p=`: what
    /// the client must send base64-encoded in `c=` (RFC 5802 section 7).
    channel_binding_input: Vec<u8>,
    /// Where the gs2 header ends in `channel_binding_input`.
    gs2_header_length: usize,
    /// The XEP-0474 `h` attribute of the server-first-message.
    downgrade_protection: Option<String>,
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

/// `cb-name = 1*(ALPHA / DIGIT / "." / "-")` (RFC 5802 section 7).
fn is_channel_binding_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-')
}

/// Judge the gs2-cbind-flag against the mechanism and what the stream
/// offers (RFC 5802 sections 6 and 7); the channel binding type of `p=`.
fn gs2_channel_binding(
    flag: &str,
    plus: bool,
    bindings: &ChannelBindings,
) -> Result<Option<ChannelBindingType>, SaslError> {
    match flag {
        "n" | "y" if plus => {
            // A -PLUS mechanism is channel binding: "p" or nothing.
            Err(SaslError::MalformedRequest(
                "a -PLUS mechanism without channel binding",
            ))
        }
        "n" => Ok(None),
        "y" if !bindings.is_empty() => {
            // "y": the client can bind but thinks we cannot. We advertised
            // -PLUS on this stream, so somebody removed it on the way:
            // "the server MUST fail authentication" (RFC 5802 section 6).
            Err(SaslError::ChannelBindingDowngrade)
        }
        "y" => Ok(None),
        _ => {
            let Some(name) = flag.strip_prefix("p=") else {
                return Err(SaslError::MalformedRequest(
                    "missing gs2 channel binding flag",
                ));
            };
            if !is_channel_binding_name(name) {
                return Err(SaslError::MalformedRequest(
                    "invalid channel binding type name",
                ));
            }
            if !plus {
                // RFC 5802 section 6: "p" only goes with a -PLUS mechanism.
                return Err(SaslError::MalformedRequest(
                    "channel binding requested with a mechanism without -PLUS",
                ));
            }
            ChannelBindingType::from_name(name)
                .filter(|binding| bindings.get(*binding).is_some())
                .map(Some)
                .ok_or(SaslError::MalformedRequest(
                    "channel binding type not offered on this stream",
                ))
        }
    }
}

impl ScramClientFirst {
    /// Parse the client-first-message: `gs2-header client-first-message-bare`,
    /// for the mechanism `hash`, `-PLUS` when `plus`, on a stream whose
    /// channel binding data is `bindings`. The caller offers the `-PLUS`
    /// mechanisms exactly when `bindings` is not empty: the gs2 flag is
    /// judged by that (RFC 5802 section 6).
    pub fn parse(
        hash: ScramHash,
        plus: bool,
        bindings: &ChannelBindings,
        message: &[u8],
    ) -> Result<Self, SaslError> {
        let message = std::str::from_utf8(message)
            .map_err(|_| SaslError::MalformedRequest("client-first is not utf-8"))?;
        let (flag, after_flag) = message
            .split_once(',')
            .ok_or(SaslError::MalformedRequest("incomplete gs2 header"))?;
        let channel_binding = gs2_channel_binding(flag, plus, bindings)?;
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
        let gs2_header = &message[..message.len() - bare.len()];
        // cbind-input = gs2-header [ cbind-data ] (RFC 5802 section 7), what
        // the client sends base64-encoded in the c= of its final message.
        let mut channel_binding_input = gs2_header.as_bytes().to_vec();
        if let Some(binding) = channel_binding {
            channel_binding_input.extend_from_slice(bindings.get(binding).unwrap_or_default());
        }

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
            channel_binding,
            gs2_header_length: gs2_header.len(),
            channel_binding_input,
            downgrade_protection: None,
            authzid,
            username,
            client_nonce: client_nonce.to_string(),
            client_first_bare: bare.to_string(),
        })
    }

    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// The channel binding type of a `-PLUS` exchange.
    pub fn channel_binding(&self) -> Option<ChannelBindingType> {
        self.channel_binding
    }

    /// Add the XEP-0474 downgrade protection attribute `h` (computed with
    /// [`crate::downgrade_protection_hash`] over what this stream advertised)
    /// to the server-first-message.
    pub fn with_downgrade_protection(mut self, hash: String) -> Self {
        self.downgrade_protection = Some(hash);
        self
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
        let mut server_first = format!(
            "r={},s={},i={}",
            nonce,
            base64_encode(&keys.salt),
            keys.iterations
        );
        if let Some(hash) = &self.downgrade_protection {
            // An optional extension after the iteration count (RFC 5802
            // section 7), covered by both signatures through AuthMessage.
            server_first.push_str(",h=");
            server_first.push_str(hash);
        }
        let state = ScramServerFirst {
            hash: self.hash,
            channel_binding_input: self.channel_binding_input,
            gs2_header_length: self.gs2_header_length,
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
    channel_binding_input: Vec<u8>,
    gs2_header_length: usize,
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

        // c= carries the gs2 header ("biws" for "n,,", "eSws" for "y,,"),
        // and with p= the channel binding data of the client's TLS session
        // after it (RFC 5802 section 7). Other data: the client's TLS
        // session is not the one we terminated, a man in the middle.
        if !bool::from(channel_binding.ct_eq(&self.channel_binding_input)) {
            // The gs2 header part differs (a 'y' echoed as 'n'...): a plain
            // not-authorized; the data part differs: another TLS session.
            let header = &self.channel_binding_input[..self.gs2_header_length];
            let bound = self.channel_binding_input.len() > self.gs2_header_length;
            return Err(if bound && channel_binding.starts_with(header) {
                SaslError::ChannelBindingMismatch
            } else {
                SaslError::NotAuthorized("channel binding does not match the gs2 header")
            });
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

    /// A client-first-message on a stream without channel binding, non-PLUS.
    fn unbound(hash: ScramHash, message: &[u8]) -> Result<ScramClientFirst, SaslError> {
        ScramClientFirst::parse(hash, false, &ChannelBindings::none(), message)
    }

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
        let first = unbound(ScramHash::Sha1, b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
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
        let first = unbound(ScramHash::Sha256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
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
        let first = unbound(ScramHash::Sha256, b"n,,n=user,r=abc").unwrap();
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
        unbound(ScramHash::Sha256, message).unwrap_err().condition()
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
    fn channel_binding_flag_p_is_refused_without_plus() {
        assert_eq!(
            condition_of_first(b"p=tls-exporter,,n=user,r=abc"),
            SaslFailureCondition::MalformedRequest
        );
    }

    #[test]
    fn authzid_and_saslname_escapes() {
        let first = unbound(
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
        client_final_bound(
            hash,
            gs2_header.as_bytes(),
            client_nonce,
            password,
            server_first,
        )
    }

    /// The client-final-message with `c=` carrying `cbind_input`.
    fn client_final_bound(
        hash: ScramHash,
        cbind_input: &[u8],
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
        let without_proof = format!("c={},r={}", base64_encode(cbind_input), nonce);
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
        let first = unbound(hash, client_first.as_bytes())?;
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
            let first = unbound(hash, message.as_bytes()).unwrap();
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
        let first = unbound(ScramHash::Sha256, b"n,,n=nobody,r=abc").unwrap();
        assert!(first.respond(None, &secret).1.ends_with(",i=4096"));
    }

    fn final_condition(client_final: &[u8]) -> SaslFailureCondition {
        let first = unbound(ScramHash::Sha1, b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
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

    /// XEP-0474 section "Full Example": SCRAM-SHA-1-PLUS with tls-exporter
    /// (fake data "THIS IS FAKE CB DATA"), the `h` attribute, an extension in
    /// the client-final-message, password "pencil".
    #[test]
    fn xep0474_example_exchange() {
        let bindings = ChannelBindings::new(Some(b"THIS IS FAKE CB DATA".to_vec()), None);
        let first = ScramClientFirst::parse(
            ScramHash::Sha1,
            true,
            &bindings,
            b"p=tls-exporter,,n=user,r=12C4CD5C-E38E-4A98-8F6D-15C38F51CCC6",
        )
        .unwrap()
        .with_downgrade_protection(crate::downgrade_protection_hash(
            ScramHash::Sha1,
            &["SCRAM-SHA-1", "SCRAM-SHA-1-PLUS"],
            Some(&["tls-exporter", "tls-server-end-point"]),
        ));
        assert_eq!(
            first.channel_binding(),
            Some(ChannelBindingType::TlsExporter)
        );
        let keys = pencil_keys(ScramHash::Sha1, "QSXCR+Q6sek8bf92");
        let (state, server_first) = first.respond_with_server_nonce(
            Some(keys),
            &ServerSecret::random(),
            "a09117a6-ac50-4f2f-93f1-93799c2bddf6",
        );
        assert_eq!(
            server_first,
            "r=12C4CD5C-E38E-4A98-8F6D-15C38F51CCC6a09117a6-ac50-4f2f-93f1-93799c2bddf6,s=QSXCR+Q6sek8bf92,i=4096,h=G6k/rBLDqgOhRRaCuuatSDFkJ08="
        );
        let server_final = state
            .verify_client_final(
                b"c=cD10bHMtZXhwb3J0ZXIsLFRISVMgSVMgRkFLRSBDQiBEQVRB,r=12C4CD5C-E38E-4A98-8F6D-15C38F51CCC6a09117a6-ac50-4f2f-93f1-93799c2bddf6,x=19C6532F-1CF4-4A27-A18D-DC9CEA41BBB3,p=M/SIDjT+dfcxUh89jZEypRvFxB4=",
            )
            .unwrap();
        assert_eq!(server_final, "v=MQrMPvv7yv4x4Cq4W4Ih25EqS2c=");
    }

    #[test]
    fn gs2_flags_against_mechanism_and_stream() {
        use SaslFailureCondition::{MalformedRequest, NotAuthorized};
        let both = ChannelBindings::new(Some(vec![7; 32]), Some(vec![9; 32]));
        let end_point_only = ChannelBindings::new(None, Some(vec![9; 32]));
        let none = ChannelBindings::none();
        let outcome = |plus: bool, bindings: &ChannelBindings, header: &str| {
            let message = format!("{header}n=user,r=abc");
            ScramClientFirst::parse(ScramHash::Sha256, plus, bindings, message.as_bytes())
                .map(|first| first.channel_binding())
                .map_err(|error| error.condition())
        };
        type Outcome = Result<Option<ChannelBindingType>, SaslFailureCondition>;
        let cases: Vec<(bool, &ChannelBindings, &str, Outcome)> = vec![
            (
                true,
                &both,
                "p=tls-exporter,,",
                Ok(Some(ChannelBindingType::TlsExporter)),
            ),
            (
                true,
                &both,
                "p=tls-server-end-point,,",
                Ok(Some(ChannelBindingType::TlsServerEndPoint)),
            ),
            (
                true,
                &end_point_only,
                "p=tls-server-end-point,a=user@example.com,",
                Ok(Some(ChannelBindingType::TlsServerEndPoint)),
            ),
            // A type this stream does not offer (TLS 1.2: no exporter), or none at all.
            (
                true,
                &end_point_only,
                "p=tls-exporter,,",
                Err(MalformedRequest),
            ),
            (true, &both, "p=tls-unique,,", Err(MalformedRequest)),
            (true, &none, "p=tls-exporter,,", Err(MalformedRequest)),
            (true, &both, "p=tls_exporter,,", Err(MalformedRequest)),
            (true, &both, "p=,,", Err(MalformedRequest)),
            // -PLUS without binding.
            (true, &both, "n,,", Err(MalformedRequest)),
            (true, &both, "y,,", Err(MalformedRequest)),
            // p on a mechanism without -PLUS (RFC 5802 section 6).
            (false, &both, "p=tls-exporter,,", Err(MalformedRequest)),
            (false, &none, "p=tls-exporter,,", Err(MalformedRequest)),
            // y where -PLUS was offered: a downgrade.
            (false, &both, "y,,", Err(NotAuthorized)),
            (false, &end_point_only, "y,,", Err(NotAuthorized)),
            (false, &none, "y,,", Ok(None)),
            (false, &both, "n,,", Ok(None)),
            (false, &none, "n,,", Ok(None)),
        ];
        for (plus, bindings, header, expected) in cases {
            assert_eq!(
                outcome(plus, bindings, header),
                expected,
                "plus={plus} {bindings:?} {header}"
            );
        }
    }

    fn plus_exchange(
        bindings: &ChannelBindings,
        header: &str,
        client_data: &[u8],
    ) -> Result<String, SaslError> {
        let hash = ScramHash::Sha256;
        let first = ScramClientFirst::parse(
            hash,
            true,
            bindings,
            format!("{header}n=user,r=clientnonce").as_bytes(),
        )?;
        let keys = pencil_keys(hash, "W22ZaJ0SNY7soEsUEjb6gQ==");
        let (state, server_first) = first.respond(Some(keys), &ServerSecret::random());
        let mut cbind_input = header.as_bytes().to_vec();
        cbind_input.extend_from_slice(client_data);
        let client_final =
            client_final_bound(hash, &cbind_input, "clientnonce", "pencil", &server_first);
        state.verify_client_final(client_final.as_bytes())
    }

    #[test]
    fn channel_binding_data_must_be_this_sessions() {
        let bindings = ChannelBindings::new(Some(vec![7; 32]), Some(vec![9; 32]));
        assert!(plus_exchange(&bindings, "p=tls-exporter,,", &[7; 32])
            .unwrap()
            .starts_with("v="));
        assert!(
            plus_exchange(&bindings, "p=tls-server-end-point,,", &[9; 32])
                .unwrap()
                .starts_with("v=")
        );
        // Another TLS session's data (a man in the middle), the other
        // type's data, or none: not-authorized.
        for (header, data) in [
            ("p=tls-exporter,,", &[8u8; 32][..]),
            ("p=tls-exporter,,", &[9u8; 32][..]),
            ("p=tls-exporter,,", &[7u8; 31][..]),
            ("p=tls-exporter,,", &[][..]),
            ("p=tls-server-end-point,,", &[7u8; 32][..]),
        ] {
            let error = plus_exchange(&bindings, header, data).unwrap_err();
            assert_eq!(
                error.condition(),
                SaslFailureCondition::NotAuthorized,
                "{header} {data:?}"
            );
            assert_eq!(
                error,
                SaslError::ChannelBindingMismatch,
                "{header} {data:?}"
            );
        }
    }

    #[test]
    fn downgrade_protection_attribute_is_signed() {
        let hash = ScramHash::Sha256;
        let first = unbound(hash, b"n,,n=user,r=clientnonce")
            .unwrap()
            .with_downgrade_protection("c29tZWhhc2g=".to_string());
        let keys = pencil_keys(hash, "W22ZaJ0SNY7soEsUEjb6gQ==");
        let (state, server_first) = first.respond(Some(keys), &ServerSecret::random());
        assert!(
            server_first.ends_with(",i=4096,h=c29tZWhhc2g="),
            "{server_first}"
        );
        let client_final = client_final_for(hash, "n,,", "clientnonce", "pencil", &server_first);
        assert!(state.verify_client_final(client_final.as_bytes()).is_ok());
    }
}
