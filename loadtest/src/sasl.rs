//! Client side of SASL PLAIN (RFC 4616) and SCRAM-SHA-1 / SCRAM-SHA-256
//! (RFC 5802, RFC 7677), without channel binding (gs2 header `n,,`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// The mechanisms the generator speaks, in its default order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mechanism {
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            "SCRAM-SHA-1" => Some(Mechanism::ScramSha1),
            "PLAIN" => Some(Mechanism::Plain),
            _ => None,
        }
    }
}

/// The initial response of PLAIN: `\0authcid\0password`.
pub fn plain_initial_response(username: &str, password: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(username.len() + password.len() + 2);
    message.push(0);
    message.extend_from_slice(username.as_bytes());
    message.push(0);
    message.extend_from_slice(password.as_bytes());
    message
}

/// Why a SCRAM exchange failed on the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    MalformedServerFirst,
    NonceMismatch,
    IterationCount,
    MalformedServerFinal,
    ServerError(String),
    BadServerSignature,
}

impl std::fmt::Display for ScramError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScramError::MalformedServerFirst => write!(formatter, "malformed server-first-message"),
            ScramError::NonceMismatch => {
                write!(formatter, "server nonce does not extend the client nonce")
            }
            ScramError::IterationCount => write!(formatter, "unacceptable iteration count"),
            ScramError::MalformedServerFinal => write!(formatter, "malformed server-final-message"),
            ScramError::ServerError(error) => write!(formatter, "server error {error}"),
            ScramError::BadServerSignature => write!(formatter, "server signature does not verify"),
        }
    }
}

/// SaltedPassword, cached per account so reconnects do not pay PBKDF2 again
/// (as real clients do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaltedPasswordCache {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub salted_password: Vec<u8>,
}

/// One SCRAM exchange, client side.
#[derive(Debug)]
pub struct ScramClient {
    mechanism: Mechanism,
    password: String,
    client_first_bare: String,
    client_nonce: String,
    expected_server_signature: Vec<u8>,
}

/// `saslname` escaping of RFC 5802 section 5.1.
fn saslname(username: &str) -> String {
    username.replace('=', "=3D").replace(',', "=2C")
}

impl ScramClient {
    pub fn new(mechanism: Mechanism, username: &str, password: &str, client_nonce: &str) -> Self {
        assert!(mechanism != Mechanism::Plain, "PLAIN is not SCRAM");
        ScramClient {
            mechanism,
            password: password.to_string(),
            client_first_bare: format!("n={},r={}", saslname(username), client_nonce),
            client_nonce: client_nonce.to_string(),
            expected_server_signature: Vec::new(),
        }
    }

    /// A fresh random printable nonce.
    pub fn random_nonce() -> String {
        use rand::Rng;
        let bytes: [u8; 18] = rand::thread_rng().gen();
        BASE64.encode(bytes)
    }

    /// `client-first-message`: gs2 header and the bare part.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answer the server-first-message with the client-final-message.
    /// `cache` is used when salt and iterations match, and refreshed otherwise.
    pub fn client_final(
        &mut self,
        server_first: &[u8],
        cache: &mut Option<SaltedPasswordCache>,
    ) -> Result<String, ScramError> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| ScramError::MalformedServerFirst)?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            if let Some(value) = part.strip_prefix("r=") {
                nonce = Some(value);
            } else if let Some(value) = part.strip_prefix("s=") {
                salt = Some(
                    BASE64
                        .decode(value)
                        .map_err(|_| ScramError::MalformedServerFirst)?,
                );
            } else if let Some(value) = part.strip_prefix("i=") {
                iterations = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| ScramError::IterationCount)?,
                );
            } else if part.starts_with("m=") {
                return Err(ScramError::MalformedServerFirst);
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(ScramError::MalformedServerFirst);
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if iterations == 0 || iterations > 10_000_000 {
            return Err(ScramError::IterationCount);
        }
        let salted_password = match cache {
            Some(cached) if cached.salt == salt && cached.iterations == iterations => {
                cached.salted_password.clone()
            }
            _ => {
                let derived = self.salted_password(&salt, iterations);
                *cache = Some(SaltedPasswordCache {
                    salt,
                    iterations,
                    salted_password: derived.clone(),
                });
                derived
            }
        };
        let client_final_without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, client_final_without_proof
        );
        let client_key = self.hmac(&salted_password, b"Client Key");
        let stored_key = self.hash(&client_key);
        let client_signature = self.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(key, signature)| key ^ signature)
            .collect();
        let server_key = self.hmac(&salted_password, b"Server Key");
        self.expected_server_signature = self.hmac(&server_key, auth_message.as_bytes());
        Ok(format!(
            "{client_final_without_proof},p={}",
            BASE64.encode(proof)
        ))
    }

    /// Check the server-final-message (`v=...` or `e=...`).
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let server_final =
            std::str::from_utf8(server_final).map_err(|_| ScramError::MalformedServerFinal)?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let signature = server_final
            .split(',')
            .find_map(|part| part.strip_prefix("v="))
            .ok_or(ScramError::MalformedServerFinal)?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| ScramError::MalformedServerFinal)?;
        if signature != self.expected_server_signature {
            return Err(ScramError::BadServerSignature);
        }
        Ok(())
    }

    fn salted_password(&self, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self.mechanism {
            Mechanism::ScramSha1 => {
                let mut output = [0u8; 20];
                pbkdf2::pbkdf2::<Hmac<Sha1>>(
                    self.password.as_bytes(),
                    salt,
                    iterations,
                    &mut output,
                )
                .expect("hmac accepts any key length");
                output.to_vec()
            }
            _ => {
                let mut output = [0u8; 32];
                pbkdf2::pbkdf2::<Hmac<Sha256>>(
                    self.password.as_bytes(),
                    salt,
                    iterations,
                    &mut output,
                )
                .expect("hmac accepts any key length");
                output.to_vec()
            }
        }
    }

    fn hmac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self.mechanism {
            Mechanism::ScramSha1 => {
                let mut mac =
                    Hmac::<Sha1>::new_from_slice(key).expect("hmac accepts any key length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            _ => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("hmac accepts any key length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(&self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self.mechanism {
            Mechanism::ScramSha1 => Sha1::digest(data).to_vec(),
            _ => Sha256::digest(data).to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 section 5.
    #[test]
    fn scram_sha1_rfc5802_vector() {
        let mut client = ScramClient::new(
            Mechanism::ScramSha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        assert_eq!(
            client.client_first(),
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
        );
        let mut cache = None;
        let client_final = client
            .client_final(
                b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
                &mut cache,
            )
            .unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        client
            .verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
        assert_eq!(
            client.verify_server_final(b"v=AAAA"),
            Err(ScramError::BadServerSignature)
        );
        assert!(cache.is_some());
    }

    /// RFC 7677 section 3.
    #[test]
    fn scram_sha256_rfc7677_vector() {
        let mut client = ScramClient::new(
            Mechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(client.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let mut cache = None;
        let client_final = client.client_final(server_first, &mut cache).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        // A second exchange with the cached SaltedPassword gives the same proof.
        let mut again = ScramClient::new(
            Mechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(
            again.client_final(server_first, &mut cache).unwrap(),
            client_final
        );
    }

    #[test]
    fn scram_rejects_bad_server_messages() {
        let mut client = ScramClient::new(Mechanism::ScramSha256, "a,b=c", "p", "abc");
        assert_eq!(client.client_first(), "n,,n=a=2Cb=3Dc,r=abc");
        let mut cache = None;
        assert_eq!(
            client.client_final(b"r=xyz123,s=QSXCR+Q6sek8bf92,i=4096", &mut cache),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            client.client_final(b"r=abc,s=QSXCR+Q6sek8bf92,i=4096", &mut cache),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            client.client_final(b"r=abcd,s=QSXCR+Q6sek8bf92", &mut cache),
            Err(ScramError::MalformedServerFirst)
        );
        assert_eq!(
            client.client_final(b"r=abcd,s=QSXCR+Q6sek8bf92,i=0", &mut cache),
            Err(ScramError::IterationCount)
        );
        assert_eq!(
            client.verify_server_final(b"e=invalid-proof"),
            Err(ScramError::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn plain_message() {
        assert_eq!(
            plain_initial_response("user", "pencil"),
            b"\0user\0pencil".to_vec()
        );
        assert_eq!(
            Mechanism::from_name("scram-sha-1"),
            Some(Mechanism::ScramSha1)
        );
    }
}
