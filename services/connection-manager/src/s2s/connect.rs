//! Opening a server-to-server stream to a remote domain (RFC 6120 as the
//! initiating entity): where to connect (a static address from `s2s.hosts`,
//! else DNS SRV `_xmpps-server._tcp` for direct TLS (XEP-0368) and
//! `_xmpp-server._tcp`, else the domain's A/AAAA records on 5269, RFC 6120
//! section 3.2), the stream header, STARTTLS (section 5, required unless
//! `s2s.require_tls` is off), the certificate check (section 13.7.2, system
//! roots plus `tls.ca_file`), and the authentication: SASL EXTERNAL
//! (XEP-0178) when the peer offers it and accepted our certificate, else
//! dialback (XEP-0220).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use starling_xmpp::{escape_attr, ns, Element, Limits, StreamEvent, StreamHeader};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::dialback::{self, NS_DIALBACK};
use super::tls::{S2sTls, ALPN_XMPP_SERVER};
use crate::config::S2sSettings;
use crate::error::CmError;
use crate::framing::{Framing, Inbound};
use crate::transport::tcp::receive_bytes;
use crate::transport::Received;

/// A byte stream of either kind, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a stream to a remote domain could not be opened; each maps to the
/// error its queued stanzas bounce with (RFC 6120 section 10.4.3).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The domain does not resolve, or no address accepted a connection.
    #[error("remote server not found: {0}")]
    NotFound(String),
    /// The resolution, connection or negotiation took too long.
    #[error("remote server timed out")]
    Timeout,
    /// The peer broke the protocol, refused us, or offered no encryption
    /// while it is required.
    #[error("remote server refused the stream: {0}")]
    Refused(String),
}

/// One place to connect to.
pub(crate) type Target = crate::config::S2sHost;

/// What the outbound side of s2s needs that does not change.
pub(crate) struct Connector {
    pub local_domain: String,
    pub settings: S2sSettings,
    pub parser_limits: Limits,
    /// Accepts any certificate during the handshake (the signature is still
    /// checked); [`Connector::certificate_valid`] tells afterwards whether
    /// it was valid, so that dialback can go on over TLS with a peer whose
    /// certificate is not (XEP-0220 section 1.2).
    tls: Arc<ClientConfig>,
    direct_tls: Arc<ClientConfig>,
    certificates: Arc<S2sTls>,
    resolver: Option<hickory_resolver::TokioResolver>,
}

/// An opened, authenticated stream to a remote domain.
pub(crate) struct OpenStream {
    pub io: Box<dyn Io>,
    pub parser: Inbound,
    /// How the stream was authenticated: `external` or `dialback`.
    pub method: &'static str,
    /// Encrypted (always, unless `s2s.require_tls` is off and the peer
    /// offers no STARTTLS).
    pub tls: bool,
}

impl Connector {
    pub(crate) fn new(
        local_domain: String,
        settings: S2sSettings,
        parser_limits: Limits,
        certificates: Arc<S2sTls>,
    ) -> Result<Self, CmError> {
        let tls = certificates.client_config(None)?;
        let direct_tls = certificates.client_config(Some(ALPN_XMPP_SERVER))?;
        let resolver = match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(builder) => Some(builder.build()),
            Err(error) => {
                tracing::warn!(%error, "no system DNS configuration: s2s reaches only s2s.hosts");
                None
            }
        };
        Ok(Connector {
            local_domain,
            settings,
            parser_limits,
            tls,
            direct_tls,
            certificates,
            resolver,
        })
    }

    /// Whether the certificate the peer presented is valid for `domain`.
    fn certificate_valid(&self, connection: &rustls::ClientConnection, domain: &str) -> bool {
        self.certificates
            .certificate_valid(connection.peer_certificates(), domain)
    }

    /// Where to connect for `domain`, in order.
    pub(crate) async fn targets(&self, domain: &str) -> Result<Vec<Target>, OpenError> {
        if let Some(target) = self.settings.hosts.get(domain) {
            return Ok(vec![target.clone()]);
        }
        let Some(resolver) = &self.resolver else {
            return Err(OpenError::NotFound("no DNS resolver".into()));
        };
        let mut targets = Vec::new();
        // XEP-0368 section 3: direct TLS and STARTTLS records together,
        // ordered by priority then weight.
        let mut records = Vec::new();
        for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
            if let Ok(lookup) = resolver.srv_lookup(format!("{service}.{domain}.")).await {
                for srv in lookup.iter() {
                    let host = srv.target().to_utf8();
                    // RFC 6120 section 3.2.1: a target of "." means no service.
                    if host == "." {
                        continue;
                    }
                    records.push((
                        srv.priority(),
                        u16::MAX - srv.weight(),
                        Target {
                            host: host.trim_end_matches('.').to_string(),
                            port: srv.port(),
                            direct_tls,
                        },
                    ));
                }
            }
        }
        records.sort_by_key(|(priority, weight, _)| (*priority, *weight));
        targets.extend(records.into_iter().map(|(_, _, target)| target));
        if targets.is_empty() {
            // Section 3.2.2: the domain itself, on the default port.
            targets.push(Target {
                host: domain.to_string(),
                port: 5269,
                direct_tls: false,
            });
        }
        Ok(targets)
    }

    async fn addresses(&self, target: &Target) -> Vec<SocketAddr> {
        if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
            return vec![SocketAddr::new(ip, target.port)];
        }
        let Some(resolver) = &self.resolver else {
            return Vec::new();
        };
        match resolver.lookup_ip(format!("{}.", target.host)).await {
            Ok(lookup) => lookup
                .iter()
                .map(|ip| SocketAddr::new(ip, target.port))
                .collect(),
            Err(error) => {
                tracing::debug!(host = %target.host, %error, "s2s target does not resolve");
                Vec::new()
            }
        }
    }

    /// Connect, negotiate and authenticate a stream to `domain` within the
    /// connect timeout.
    pub(crate) async fn open(&self, domain: &str, secret: &str) -> Result<OpenStream, OpenError> {
        let deadline = Instant::now() + self.settings.connect_timeout;
        match tokio::time::timeout_at(deadline, self.open_inner(domain, secret, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(OpenError::Timeout),
        }
    }

    async fn open_inner(
        &self,
        domain: &str,
        secret: &str,
        deadline: Instant,
    ) -> Result<OpenStream, OpenError> {
        let mut last_error = OpenError::NotFound(format!("{domain} does not resolve"));
        for target in self.targets(domain).await? {
            for address in self.addresses(&target).await {
                let tcp = match TcpStream::connect(address).await {
                    Ok(tcp) => tcp,
                    Err(error) => {
                        tracing::debug!(domain, %address, %error, "s2s connect failed");
                        last_error = OpenError::NotFound(format!("{address}: {error}"));
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                match self.negotiate(domain, secret, tcp, target.direct_tls).await {
                    Ok(stream) => return Ok(stream),
                    Err(error) => {
                        tracing::info!(domain, %address, %error, "s2s negotiation failed");
                        last_error = error;
                    }
                }
                if Instant::now() >= deadline {
                    return Err(OpenError::Timeout);
                }
            }
        }
        Err(last_error)
    }

    /// The negotiation as the initiating server, on a connected socket.
    async fn negotiate(
        &self,
        domain: &str,
        secret: &str,
        tcp: TcpStream,
        direct_tls: bool,
    ) -> Result<OpenStream, OpenError> {
        let tls_name = ServerName::try_from(domain.to_string())
            .map_err(|_| OpenError::NotFound(format!("{domain} is not a DNS name")))?;
        let mut parser = Inbound::new(Framing::Stream, self.parser_limits);
        let mut tls = true;
        let (mut io, certificate_valid, features): (Box<dyn Io>, bool, Element) = if direct_tls {
            let tls = TlsConnector::from(self.direct_tls.clone())
                .connect(tls_name.clone(), tcp)
                .await
                .map_err(|error| OpenError::Refused(format!("TLS: {error}")))?;
            let valid = self.certificate_valid(tls.get_ref().1, domain);
            let mut io: Box<dyn Io> = Box::new(tls);
            let features = self.restart(&mut io, &mut parser, domain).await?;
            (io, valid, features)
        } else {
            let mut tcp = tcp;
            let features = self.restart(&mut tcp, &mut parser, domain).await?;
            if features.get_child("starttls", ns::TLS).is_some() {
                let (tls, valid) = self
                    .start_tls(tcp, &mut parser, tls_name.clone(), domain)
                    .await?;
                let mut io: Box<dyn Io> = Box::new(tls);
                parser = Inbound::new(Framing::Stream, self.parser_limits);
                let features = self.restart(&mut io, &mut parser, domain).await?;
                (io, valid, features)
            } else if self.settings.require_tls {
                // RFC 6120 section 5.3.1: we require TLS; the peer offers none.
                return Err(OpenError::Refused("the peer offers no STARTTLS".into()));
            } else {
                tls = false;
                (Box::new(tcp), false, features)
            }
        };
        tracing::debug!(domain, certificate_valid, "s2s stream negotiated");
        let method = choose_authentication(&features, certificate_valid)
            .ok_or_else(|| OpenError::Refused("no authentication method in common".into()))?;
        match method {
            Authentication::External => {
                // XEP-0178 section 3 step 6: the authorization identity is
                // our domain, or "=" (none: derived from the certificate).
                send(
                    &mut io,
                    &format!("<auth xmlns='{}' mechanism='EXTERNAL'>=</auth>", ns::SASL),
                )
                .await?;
                let answer = next_element(&mut io, &mut parser).await?;
                if !answer.is("success", ns::SASL) {
                    return Err(OpenError::Refused("SASL EXTERNAL refused".into()));
                }
                parser = Inbound::new(Framing::Stream, self.parser_limits);
                self.restart(&mut io, &mut parser, domain).await?;
                Ok(OpenStream {
                    io,
                    parser,
                    method: "external",
                    tls: true,
                })
            }
            Authentication::Dialback { stream_id } => {
                // XEP-0220 section 2.1.1: our key for this stream.
                let key = dialback::dialback_key(secret, domain, &self.local_domain, &stream_id);
                send(
                    &mut io,
                    &dialback::element(
                        "result",
                        &self.local_domain,
                        domain,
                        None,
                        None,
                        Some(&key),
                    ),
                )
                .await?;
                loop {
                    let answer = next_element(&mut io, &mut parser).await?;
                    if !answer.is("result", NS_DIALBACK) {
                        continue;
                    }
                    return match answer.attr("type") {
                        Some("valid") => Ok(OpenStream {
                            io,
                            parser,
                            method: "dialback",
                            tls,
                        }),
                        other => Err(OpenError::Refused(format!(
                            "dialback answered {}",
                            other.unwrap_or("nothing")
                        ))),
                    };
                }
            }
        }
    }

    /// STARTTLS on a plain stream (RFC 6120 section 5.4.2): the request,
    /// `<proceed/>`, the handshake; whether the certificate is valid.
    async fn start_tls(
        &self,
        mut tcp: TcpStream,
        parser: &mut Inbound,
        tls_name: ServerName<'static>,
        domain: &str,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, bool), OpenError> {
        send(&mut tcp, &format!("<starttls xmlns='{}'/>", ns::TLS)).await?;
        if !next_element(&mut tcp, parser).await?.is("proceed", ns::TLS) {
            return Err(OpenError::Refused("STARTTLS failed".into()));
        }
        let tls = TlsConnector::from(self.tls.clone())
            .connect(tls_name, tcp)
            .await
            .map_err(|error| OpenError::Refused(format!("TLS: {error}")))?;
        let valid = self.certificate_valid(tls.get_ref().1, domain);
        Ok((tls, valid))
    }

    /// Send our stream header and read the peer's header and features; the
    /// features element carries the stream id in its `id` attribute here.
    async fn restart<S: Io + ?Sized>(
        &self,
        io: &mut S,
        parser: &mut Inbound,
        domain: &str,
    ) -> Result<Element, OpenError> {
        send(io, &initiating_header(&self.local_domain, domain)).await?;
        let header = next_header(io, parser).await?;
        let mut features = next_element(io, parser).await?;
        if !features.is("features", ns::STREAM) {
            return Err(OpenError::Refused("no stream features".into()));
        }
        features.set_attr("id", header.id.unwrap_or_default());
        Ok(features)
    }

    /// Ask `domain`'s authoritative server whether it sent `key` on the
    /// stream `stream_id` it opened to us (XEP-0220 section 2.1.2, the
    /// receiving server's side): a fresh stream, `<db:verify/>`, the answer.
    pub(crate) async fn verify_key(
        &self,
        domain: &str,
        stream_id: &str,
        key: &str,
    ) -> Result<bool, OpenError> {
        let deadline = Instant::now() + self.settings.connect_timeout;
        tokio::time::timeout_at(deadline, async {
            let mut last_error = OpenError::NotFound(format!("{domain} does not resolve"));
            for target in self.targets(domain).await? {
                for address in self.addresses(&target).await {
                    match self
                        .verify_at(domain, stream_id, key, address, target.direct_tls)
                        .await
                    {
                        Ok(valid) => return Ok(valid),
                        Err(error) => last_error = error,
                    }
                }
            }
            Err(last_error)
        })
        .await
        .unwrap_or(Err(OpenError::Timeout))
    }

    async fn verify_at(
        &self,
        domain: &str,
        stream_id: &str,
        key: &str,
        address: SocketAddr,
        direct_tls: bool,
    ) -> Result<bool, OpenError> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|error| OpenError::NotFound(error.to_string()))?;
        let tls_name = ServerName::try_from(domain.to_string())
            .map_err(|_| OpenError::NotFound(format!("{domain} is not a DNS name")))?;
        let mut parser = Inbound::new(Framing::Stream, self.parser_limits);
        let mut io: Box<dyn Io> = if direct_tls {
            let mut io: Box<dyn Io> = Box::new(
                TlsConnector::from(self.direct_tls.clone())
                    .connect(tls_name.clone(), tcp)
                    .await
                    .map_err(|error| OpenError::Refused(format!("TLS: {error}")))?,
            );
            self.restart(&mut io, &mut parser, domain).await?;
            io
        } else {
            let mut tcp = tcp;
            let features = self.restart(&mut tcp, &mut parser, domain).await?;
            if features.get_child("starttls", ns::TLS).is_some() {
                let (tls, _) = self.start_tls(tcp, &mut parser, tls_name, domain).await?;
                let mut io: Box<dyn Io> = Box::new(tls);
                parser = Inbound::new(Framing::Stream, self.parser_limits);
                self.restart(&mut io, &mut parser, domain).await?;
                io
            } else {
                Box::new(tcp)
            }
        };
        send(
            &mut io,
            &dialback::element(
                "verify",
                &self.local_domain,
                domain,
                Some(stream_id),
                None,
                Some(key),
            ),
        )
        .await?;
        loop {
            let answer = next_element(&mut io, &mut parser).await?;
            if answer.is("verify", NS_DIALBACK) && answer.attr("id") == Some(stream_id) {
                let _ = send(&mut io, crate::xml::STREAM_CLOSE).await;
                return Ok(answer.attr("type") == Some("valid"));
            }
        }
    }
}

/// How to authenticate an outbound stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Authentication {
    External,
    Dialback { stream_id: String },
}

/// SASL EXTERNAL when offered and the peer's certificate is valid (so ours
/// likely is to it, XEP-0178 section 3); else dialback, offered or not
/// (XEP-0220 section 2.1: older servers announce no feature).
pub(crate) fn choose_authentication(
    features: &Element,
    certificate_valid: bool,
) -> Option<Authentication> {
    let external = features
        .get_child("mechanisms", ns::SASL)
        .is_some_and(|mechanisms| {
            mechanisms
                .children()
                .any(|mechanism| mechanism.text().trim() == "EXTERNAL")
        });
    if external && certificate_valid {
        return Some(Authentication::External);
    }
    Some(Authentication::Dialback {
        stream_id: features.attr("id").unwrap_or_default().to_string(),
    })
}

/// Our stream header as the initiating server (RFC 6120 section 4.7, with
/// the dialback namespace declared, XEP-0220 section 2.1).
pub(crate) fn initiating_header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' xmlns:db='{}' from='{}' to='{}' version='1.0'>",
        ns::SERVER,
        ns::STREAM,
        NS_DIALBACK,
        escape_attr(from),
        escape_attr(to)
    )
}

pub(crate) async fn send<S: Io + ?Sized>(io: &mut S, xml: &str) -> Result<(), OpenError> {
    io.write_all(xml.as_bytes())
        .await
        .map_err(|error| OpenError::NotFound(error.to_string()))?;
    io.flush()
        .await
        .map_err(|error| OpenError::NotFound(error.to_string()))
}

async fn next_event<S: Io + ?Sized>(
    io: &mut S,
    parser: &mut Inbound,
) -> Result<StreamEvent, OpenError> {
    loop {
        match parser.next_event() {
            Ok(Some(event)) => return Ok(event),
            Ok(None) => {}
            Err(error) => return Err(OpenError::Refused(error.to_string())),
        }
        match receive_bytes(io, parser).await {
            Received::Fed => {}
            Received::Lost => return Err(OpenError::Refused("connection closed".into())),
            Received::Invalid(error) => return Err(OpenError::Refused(error.to_string())),
        }
    }
}

async fn next_header<S: Io + ?Sized>(
    io: &mut S,
    parser: &mut Inbound,
) -> Result<StreamHeader, OpenError> {
    match next_event(io, parser).await? {
        StreamEvent::Open(header) => Ok(header),
        _ => Err(OpenError::Refused("expected a stream header".into())),
    }
}

/// The next element; a stream error or the end of the stream ends it.
pub(crate) async fn next_element<S: Io + ?Sized>(
    io: &mut S,
    parser: &mut Inbound,
) -> Result<Element, OpenError> {
    match next_event(io, parser).await? {
        StreamEvent::Element(element) if element.is("error", ns::STREAM) => {
            let condition = element
                .children()
                .next()
                .map(|child| child.name().to_string())
                .unwrap_or_default();
            Err(OpenError::Refused(format!("stream error {condition}")))
        }
        StreamEvent::Element(element) => Ok(element),
        StreamEvent::Close => Err(OpenError::Refused("stream closed".into())),
        StreamEvent::Open(_) => Err(OpenError::Refused("unexpected stream header".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(xml: &str) -> Element {
        let mut parser = Inbound::new(Framing::Stream, Limits::default());
        parser
            .feed(format!("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>{xml}").as_bytes())
            .unwrap();
        let _header = parser.next_event().unwrap();
        match parser.next_event().unwrap() {
            Some(StreamEvent::Element(element)) => element.with_attr("id", "s1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn external_needs_the_offer_and_a_valid_certificate() {
        let offered = features("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>");
        assert_eq!(
            choose_authentication(&offered, true),
            Some(Authentication::External)
        );
        assert_eq!(
            choose_authentication(&offered, false),
            Some(Authentication::Dialback {
                stream_id: "s1".into()
            })
        );
        let dialback_only = features(
            "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
        );
        assert_eq!(
            choose_authentication(&dialback_only, true),
            Some(Authentication::Dialback {
                stream_id: "s1".into()
            })
        );
    }

    #[test]
    fn initiating_header_declares_dialback() {
        assert_eq!(
            initiating_header("a.example", "b.example"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.example' to='b.example' version='1.0'>"
        );
    }
}
