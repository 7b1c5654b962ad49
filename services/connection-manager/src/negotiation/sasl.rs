//! SASL authentication with SCRAM-SHA-256, SCRAM-SHA-1, their `-PLUS`
//! channel binding variants (on a TLS session that ends here, RFC 5802
//! section 6), PLAIN (inside TLS only) and the FAST token mechanisms: the
//! exchange, its nonzas, the XEP-0474 downgrade protection hash of what the
//! stream advertised, the limit on attempts per
//! stream and the per-address throttle on failures, in either profile: RFC
//! 6120 section 6 (`<auth/>`, success then a stream restart) or XEP-0388
//! SASL2 (`<authenticate/>`, no restart; `super::sasl2` completes its
//! success with what the client asked inline).

use starling_jid::BareJid;
use starling_sasl::{
    decode_sasl2_payload, decode_xmpp_payload, downgrade_protection_hash, encode_xmpp_payload,
    verify_plain_password, ChannelBindingType, HtInitial, Mechanism, PlainCredentials, SaslError,
    SaslFailureCondition, ScramClientFirst, ScramHash, ScramKeys, ScramServerFirst,
};
use starling_xmpp::{ns, Element, StreamErrorCondition};

use super::fast;
use super::stream::{stream_error, NegotiatingStream, StreamEnd};
use crate::metrics::Limit;
use crate::shared::Shared;
use crate::transport::Transport;

/// A SASL exchange in progress.
enum SaslExchange {
    Idle,
    /// `<auth/>` came without an initial response; the empty challenge was sent.
    AwaitingInitialResponse(Mechanism),
    /// The server-first-message was sent; the client-final-message is next.
    ScramFinal {
        exchange: Box<ScramServerFirst>,
        user: Option<BareJid>,
    },
}

/// The SASL profile an exchange runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// RFC 6120 section 6, `urn:ietf:params:xml:ns:xmpp-sasl`.
    Rfc6120,
    /// XEP-0388, `urn:xmpp:sasl:2`.
    Sasl2,
}

impl Profile {
    fn namespace(self) -> &'static str {
        match self {
            Profile::Rfc6120 => ns::SASL,
            Profile::Sasl2 => ns::SASL2,
        }
    }

    fn decode(self, text: &str) -> Result<Vec<u8>, SaslError> {
        match self {
            Profile::Rfc6120 => decode_xmpp_payload(text),
            Profile::Sasl2 => decode_sasl2_payload(text),
        }
    }
}

/// The SASL state of one stream negotiation.
pub(crate) struct Sasl {
    exchange: SaslExchange,
    /// The profile of the current or last exchange.
    profile: Profile,
    /// A SASL2 exchange succeeded: its additional data (the SCRAM
    /// server-final-message), until `super::sasl2` sends the `<success/>`.
    sasl2_success: Option<Vec<u8>>,
    /// The SASL2 `<user-agent id/>` of the current exchange (FAST tokens are bound to it).
    agent_id: Option<String>,
    /// The FAST token the exchange authenticated with.
    fast_used: Option<fast::UsedToken>,
    /// The mechanisms and channel binding types the last `<stream:features>`
    /// advertised (the gs2 'y' flag and XEP-0474 are judged by them).
    advertised_mechanisms: Vec<Mechanism>,
    advertised_bindings: Vec<ChannelBindingType>,
    auth_attempts: u32,
    /// The mechanism of the current or last `<auth/>` (for metrics).
    mechanism: Option<Mechanism>,
    /// Set by SASL success.
    user: Option<BareJid>,
}

impl Sasl {
    pub fn new() -> Self {
        Sasl {
            exchange: SaslExchange::Idle,
            profile: Profile::Rfc6120,
            sasl2_success: None,
            agent_id: None,
            fast_used: None,
            advertised_mechanisms: Vec::new(),
            advertised_bindings: Vec::new(),
            auth_attempts: 0,
            mechanism: None,
            user: None,
        }
    }

    /// The account that authenticated on this stream.
    pub fn user(&self) -> Option<&BareJid> {
        self.user.as_ref()
    }

    /// What the features just sent advertised for SASL.
    pub fn advertised(&mut self, mechanisms: &[Mechanism], bindings: &[ChannelBindingType]) {
        self.advertised_mechanisms = mechanisms.to_vec();
        self.advertised_bindings = bindings.to_vec();
    }

    /// The XEP-0474 (version 0.5.0) `h` value for a SCRAM exchange with
    /// `hash`: over the mechanisms and channel binding types this stream
    /// advertised (the SASL1 and SASL2 lists are the same here).
    fn downgrade_protection(&self, hash: ScramHash) -> String {
        let mechanisms: Vec<&str> = self
            .advertised_mechanisms
            .iter()
            .map(|mechanism| mechanism.as_str())
            .collect();
        let bindings: Vec<&str> = self
            .advertised_bindings
            .iter()
            .map(|binding| binding.as_str())
            .collect();
        downgrade_protection_hash(
            hash,
            &mechanisms,
            (!bindings.is_empty()).then_some(&bindings[..]),
        )
    }

    /// A SASL2 exchange succeeded: its additional data, once (the caller
    /// sends the `<success/>`).
    /// With the FAST token used, if one was.
    pub fn take_sasl2_success(&mut self) -> Option<(Vec<u8>, Option<fast::UsedToken>)> {
        let additional_data = self.sasl2_success.take()?;
        Some((additional_data, self.fast_used.take()))
    }

    /// What completing a SASL2 success could not do (Bind 2 refused the
    /// resource): the stream is not authenticated after all (XEP-0388
    /// section "Failure": the stream state remains unchanged).
    pub fn revoke(&mut self) {
        self.user = None;
    }

    /// An element in the namespace of `profile`, before authentication succeeded.
    pub async fn handle<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        profile: Profile,
        element: &Element,
    ) -> Result<(), StreamEnd> {
        match (profile, element.name()) {
            (Profile::Rfc6120, "auth") => {
                // Section 6.4.2: no character data is no initial response.
                let text = element.text();
                let initial = (!text.trim().is_empty()).then_some(text);
                self.start_auth(stream, profile, element.attr("mechanism"), initial)
                    .await
            }
            (Profile::Sasl2, "authenticate") => {
                // XEP-0388 section "Initiation": an absent <initial-response/>
                // is no initial response, an empty one is an empty string.
                let initial = element
                    .get_child("initial-response", ns::SASL2)
                    .map(Element::text);
                self.agent_id = element
                    .get_child("user-agent", ns::SASL2)
                    .and_then(|agent| agent.attr("id"))
                    .map(str::to_string);
                self.start_auth(stream, profile, element.attr("mechanism"), initial)
                    .await
            }
            (_, "response") => self.continue_auth(stream, profile, element).await,
            (_, "abort") => {
                // Section 6.4.4; an abort counts as a failed attempt (it is one).
                self.exchange = SaslExchange::Idle;
                self.profile = profile;
                self.count_auth_failure(&stream.shared, SaslError::Aborted.condition().as_str());
                stream
                    .send_nonza(&sasl_failure(profile, SaslError::Aborted.condition()))
                    .await
            }
            _ => Err(stream_error(
                StreamErrorCondition::UnsupportedStanzaType,
                "unknown sasl element",
            )),
        }
    }

    /// Answer a failed step with `<failure/>` (section 6.4.5), remembering
    /// password failures against the client's address.
    async fn fail_auth<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        error: SaslError,
    ) -> Result<(), StreamEnd> {
        self.exchange = SaslExchange::Idle;
        tracing::debug!(conn = stream.conn, peer = %stream.peer, %error, "sasl failure");
        self.count_auth_failure(&stream.shared, error.condition().as_str());
        if error.is_channel_binding_alarm() {
            // A man in the middle, or a client that cannot tell: the client
            // only sees <not-authorized/>; the operator sees this.
            tracing::warn!(conn = stream.conn, peer = %stream.peer, %error, "channel binding failed");
            let reason = match error {
                SaslError::ChannelBindingDowngrade => "downgrade",
                _ => "mismatch",
            };
            stream.shared.metrics.channel_binding_failure(reason);
        }
        if error.condition() == SaslFailureCondition::NotAuthorized {
            stream
                .shared
                .ip_limits
                .record_auth_failure(stream.peer.ip(), std::time::Instant::now());
        }
        stream
            .send_nonza(&sasl_failure(self.profile, error.condition()))
            .await
    }

    /// `starling_logins_total{result="failure"}` and `starling_sasl_failures_total`.
    fn count_auth_failure(&self, shared: &Shared, reason: &'static str) {
        let mechanism = self.mechanism.map_or("none", Mechanism::as_str);
        shared.metrics.login(mechanism, false);
        shared.metrics.sasl_failure(mechanism, reason);
    }

    async fn start_auth<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        profile: Profile,
        mechanism_name: Option<&str>,
        initial_response: Option<String>,
    ) -> Result<(), StreamEnd> {
        self.exchange = SaslExchange::Idle;
        self.profile = profile;
        self.mechanism = None;
        self.fast_used = None;
        self.auth_attempts += 1;
        if self.auth_attempts > stream.shared.limits.max_auth_attempts {
            stream.shared.metrics.limit_hit(Limit::AuthAttempts);
            // Section 6.4.5: past a reasonable number of retries, a stream
            // error, which SHOULD be <policy-violation/>.
            return Err(stream_error(
                StreamErrorCondition::PolicyViolation,
                "too many authentication attempts",
            ));
        }
        let mechanism = match mechanism_name {
            // XEP-0484: offered in SASL2's <fast/> only.
            Some(name) if profile == Profile::Sasl2 && stream.shared.fast_token_ttl_secs > 0 => {
                Mechanism::fast_from_name(name).or_else(|| Mechanism::from_name(name))
            }
            name => name.and_then(Mechanism::from_name),
        };
        let Some(mechanism) = mechanism else {
            return self
                .fail_auth(stream, SaslError::InvalidMechanism("mechanism not offered"))
                .await;
        };
        self.mechanism = Some(mechanism);
        if !mechanism.available_with(&stream.channel_bindings()) {
            // A -PLUS or channel-bound HT mechanism on a stream without its
            // channel binding data: not offered here. Where STARTTLS would
            // give it, TLS first (RFC 6120 section 6.5.3); elsewhere the
            // mechanism is simply not available (section 6.5.7).
            let error = if stream.can_start_tls() {
                SaslError::EncryptionRequired("channel binding needs tls")
            } else {
                SaslError::InvalidMechanism("no channel binding on this stream")
            };
            return self.fail_auth(stream, error).await;
        }
        if !stream.is_tls() && (stream.tls_required() || mechanism.requires_encryption()) {
            // Sections 5.3.1 and 6.5.3: TLS first (mandatory here, or needed
            // by a mechanism that sends the password).
            return self
                .fail_auth(stream, SaslError::EncryptionRequired("negotiate tls first"))
                .await;
        }
        if stream
            .shared
            .ip_limits
            .auth_throttled(stream.peer.ip(), std::time::Instant::now())
        {
            // The password is not even looked at; the account is not locked.
            stream.shared.metrics.limit_hit(Limit::FailedAuthPerIp);
            return self
                .fail_auth(
                    stream,
                    SaslError::TemporaryAuthFailure("too many failures from this address"),
                )
                .await;
        }
        let Some(text) = initial_response else {
            // Section 6.4.2: no initial response, so an empty challenge asks for it.
            self.exchange = SaslExchange::AwaitingInitialResponse(mechanism);
            return stream.send_nonza(&sasl_challenge(profile, None)).await;
        };
        match profile.decode(&text) {
            Ok(payload) => self.initial_response(stream, mechanism, &payload).await,
            Err(error) => self.fail_auth(stream, error).await,
        }
    }

    async fn continue_auth<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        profile: Profile,
        response: &Element,
    ) -> Result<(), StreamEnd> {
        if profile != self.profile {
            // A response in the other profile's namespace answers no
            // challenge of this exchange.
            self.profile = profile;
            return self
                .fail_auth(
                    stream,
                    SaslError::MalformedRequest("response in another sasl profile"),
                )
                .await;
        }
        let payload = match profile.decode(&response.text()) {
            Ok(payload) => payload,
            Err(error) => return self.fail_auth(stream, error).await,
        };
        match std::mem::replace(&mut self.exchange, SaslExchange::Idle) {
            SaslExchange::Idle => {
                self.fail_auth(
                    stream,
                    SaslError::MalformedRequest("no exchange in progress"),
                )
                .await
            }
            SaslExchange::AwaitingInitialResponse(mechanism) => {
                self.initial_response(stream, mechanism, &payload).await
            }
            SaslExchange::ScramFinal { exchange, user } => {
                match (exchange.verify_client_final(&payload), user) {
                    (Ok(server_final), Some(user)) => {
                        self.authenticated(stream, user, server_final.as_bytes())
                            .await
                    }
                    (Ok(_), None) => {
                        self.fail_auth(stream, SaslError::NotAuthorized("no such account"))
                            .await
                    }
                    (Err(error), _) => self.fail_auth(stream, error).await,
                }
            }
        }
    }

    async fn initial_response<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        mechanism: Mechanism,
        payload: &[u8],
    ) -> Result<(), StreamEnd> {
        match mechanism.scram_hash() {
            Some(hash) => self.scram_first(stream, mechanism, hash, payload).await,
            None if mechanism.is_fast() => self.fast_token(stream, mechanism, payload).await,
            None => self.plain(stream, payload).await,
        }
    }

    async fn scram_first<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        mechanism: Mechanism,
        hash: ScramHash,
        payload: &[u8],
    ) -> Result<(), StreamEnd> {
        // The -PLUS mechanisms were advertised exactly when the stream has
        // channel binding data: the gs2 flag is judged against it.
        let bindings = stream.channel_bindings();
        let plus = mechanism.requires_channel_binding();
        let client_first = match ScramClientFirst::parse(hash, plus, &bindings, payload) {
            Ok(client_first) => {
                client_first.with_downgrade_protection(self.downgrade_protection(hash))
            }
            Err(error) => return self.fail_auth(stream, error).await,
        };
        // An invalid username is treated as an unknown account: same exchange, same failure.
        let user = account(&stream.shared, client_first.username());
        if let Err(error) = check_authzid(client_first.authzid(), user.as_ref()) {
            return self.fail_auth(stream, error).await;
        }
        let keys = match stored_credentials(&stream.shared, user.as_ref()).await {
            Ok(credentials) => credentials.map(|credentials| match hash {
                ScramHash::Sha1 => ScramKeys::from(&credentials.sha1),
                ScramHash::Sha256 => ScramKeys::from(&credentials.sha256),
            }),
            Err(error) => return self.fail_auth(stream, error).await,
        };
        let user = user.filter(|_| keys.is_some());
        let (exchange, server_first) = client_first.respond(keys, &stream.shared.scram_secret);
        self.exchange = SaslExchange::ScramFinal {
            exchange: Box::new(exchange),
            user,
        };
        stream
            .send_nonza(&sasl_challenge(self.profile, Some(server_first.as_bytes())))
            .await
    }

    /// A FAST token (XEP-0484) with an HT mechanism: HT-SHA-256-NONE, or
    /// -EXPR/-ENDP bound to this stream's channel binding data.
    async fn fast_token<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        mechanism: Mechanism,
        payload: &[u8],
    ) -> Result<(), StreamEnd> {
        let initial = match HtInitial::parse(payload) {
            Ok(initial) => initial,
            Err(error) => return self.fail_auth(stream, error).await,
        };
        let user = account(&stream.shared, &initial.username);
        let agent_id = self.agent_id.clone();
        let bindings = stream.channel_bindings();
        // Checked available in start_auth: the data exists for a bound mechanism.
        let channel_binding = mechanism
            .ht_channel_binding()
            .and_then(|binding| bindings.get(binding))
            .unwrap_or_default();
        let authenticated = fast::authenticate(
            &stream.shared,
            user,
            agent_id.as_deref(),
            &initial,
            mechanism,
            channel_binding,
        )
        .await;
        match authenticated {
            Ok((user, responder, used)) => {
                self.fast_used = Some(used);
                self.authenticated(stream, user, &responder).await
            }
            Err(error) => self.fail_auth(stream, error).await,
        }
    }

    async fn plain<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        payload: &[u8],
    ) -> Result<(), StreamEnd> {
        let plain = match PlainCredentials::parse(payload) {
            Ok(plain) => plain,
            Err(error) => return self.fail_auth(stream, error).await,
        };
        let user = account(&stream.shared, &plain.authcid);
        if let Err(error) = check_authzid(plain.authzid.as_deref(), user.as_ref()) {
            return self.fail_auth(stream, error).await;
        }
        let keys = match stored_credentials(&stream.shared, user.as_ref()).await {
            Ok(credentials) => credentials.map(|credentials| ScramKeys::from(&credentials.sha256)),
            Err(error) => return self.fail_auth(stream, error).await,
        };
        // PBKDF2 is CPU work: off the async threads. An unknown account runs
        // the same derivation (RFC 5802 section 9's concern applies to PLAIN too).
        let password = plain.password;
        let valid = tokio::task::spawn_blocking(move || {
            verify_plain_password(ScramHash::Sha256, &password, keys.as_ref())
        })
        .await
        .unwrap_or(false);
        match (valid, user) {
            (true, Some(user)) => self.authenticated(stream, user, b"").await,
            _ => {
                self.fail_auth(
                    stream,
                    SaslError::NotAuthorized("wrong password or no such account"),
                )
                .await
            }
        }
    }

    /// `<success/>` and the stream restart of section 6.4.6; in SASL2 the
    /// success waits for `super::sasl2`, and there is no restart (XEP-0388
    /// section "Success").
    async fn authenticated<T: Transport>(
        &mut self,
        stream: &mut NegotiatingStream<T>,
        user: BareJid,
        additional_data: &[u8],
    ) -> Result<(), StreamEnd> {
        tracing::info!(conn = stream.conn, peer = %stream.peer, user = %user, "authenticated");
        self.exchange = SaslExchange::Idle;
        stream
            .shared
            .metrics
            .login(self.mechanism.map_or("none", Mechanism::as_str), true);
        self.user = Some(user);
        match self.profile {
            Profile::Rfc6120 => {
                stream.send_nonza(&sasl_success(additional_data)).await?;
                stream.restart();
            }
            Profile::Sasl2 => self.sasl2_success = Some(additional_data.to_vec()),
        }
        Ok(())
    }
}

/// The account an authentication identity names, if it is a valid localpart.
fn account(shared: &Shared, username: &str) -> Option<BareJid> {
    BareJid::from_parts(Some(username), &shared.domain).ok()
}

/// Section 6.3.8: the authorization identity may only be the account's own bare JID.
fn check_authzid(authzid: Option<&str>, user: Option<&BareJid>) -> Result<(), SaslError> {
    let Some(authzid) = authzid else {
        return Ok(());
    };
    let requested = authzid.parse::<BareJid>().ok();
    if requested.is_some() && requested.as_ref() == user {
        Ok(())
    } else {
        Err(SaslError::InvalidAuthzid(
            "authzid is not the authenticated account",
        ))
    }
}

/// Look up an account's stored credentials. `Err` when storage fails: the
/// client gets `<temporary-auth-failure/>`, which says nothing about the account.
async fn stored_credentials(
    shared: &Shared,
    user: Option<&BareJid>,
) -> Result<Option<starling_api::StoredCredentials>, SaslError> {
    let Some(user) = user else { return Ok(None) };
    shared.storage.credentials(user).await.map_err(|error| {
        tracing::warn!(%error, "credential lookup failed");
        SaslError::TemporaryAuthFailure("credentials unavailable")
    })
}

/// A SASL `<failure/>` with its condition, RFC 6120 section 6.4.5; in SASL2
/// the condition keeps its RFC 6120 namespace (XEP-0388 section "Failure").
pub(crate) fn sasl_failure(profile: Profile, condition: SaslFailureCondition) -> String {
    match profile {
        Profile::Rfc6120 => format!(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{}/></failure>",
            condition.as_str()
        ),
        Profile::Sasl2 => format!(
            "<failure xmlns='urn:xmpp:sasl:2'><{} xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>",
            condition.as_str()
        ),
    }
}

/// A SASL `<challenge/>`, RFC 6120 section 6.4.3 (XEP-0388 section
/// "Challenges and Responses"); `None` is the empty challenge asking for the
/// initial response the client did not send.
fn sasl_challenge(profile: Profile, data: Option<&[u8]>) -> String {
    let namespace = profile.namespace();
    match data {
        Some(data) => format!(
            "<challenge xmlns='{namespace}'>{}</challenge>",
            match profile {
                Profile::Rfc6120 => encode_xmpp_payload(data),
                Profile::Sasl2 => starling_sasl::encode_base64(data),
            }
        ),
        None => format!("<challenge xmlns='{namespace}'/>"),
    }
}

/// SASL `<success/>` with additional data, RFC 6120 section 6.4.6.
fn sasl_success(data: &[u8]) -> String {
    if data.is_empty() {
        return "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_string();
    }
    format!(
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</success>",
        encode_xmpp_payload(data)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_nonzas() {
        assert_eq!(
            sasl_failure(Profile::Rfc6120, SaslFailureCondition::NotAuthorized),
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
        );
        assert_eq!(
            sasl_failure(Profile::Sasl2, SaslFailureCondition::Aborted),
            "<failure xmlns='urn:xmpp:sasl:2'><aborted xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>"
        );
        assert_eq!(
            sasl_challenge(Profile::Rfc6120, None),
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
        );
        assert_eq!(
            sasl_challenge(Profile::Sasl2, None),
            "<challenge xmlns='urn:xmpp:sasl:2'/>"
        );
        assert_eq!(
            sasl_challenge(Profile::Sasl2, Some(b"")),
            "<challenge xmlns='urn:xmpp:sasl:2'></challenge>"
        );
        assert_eq!(
            sasl_challenge(Profile::Rfc6120, Some(b"r=abc,s=c2FsdA==,i=4096")),
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>cj1hYmMscz1jMkZzZEE9PSxpPTQwOTY=</challenge>"
        );
        assert_eq!(
            sasl_success(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>dj1ybUY5cHFWOFM3c3VBb1pXamE0ZEpSa0ZzS1E9</success>"
        );
        assert_eq!(
            sasl_success(b""),
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
        );
    }
}
