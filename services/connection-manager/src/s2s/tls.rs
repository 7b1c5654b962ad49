//! TLS of server-to-server streams (RFC 6120 section 5 and 13.7.2): the
//! trusted roots (the system's plus `tls.ca_file`), the check that a
//! certificate is valid for a domain, and the two sides' configurations.
//!
//! Both sides accept any certificate during the handshake (the handshake's
//! signatures are still checked) and tell afterwards whether it is valid
//! for the peer's domain: a peer whose certificate is not goes on with
//! dialback over TLS (XEP-0220 section 1.2), one whose certificate is may
//! authenticate with SASL EXTERNAL (XEP-0178).
//!
//! - as the initiating server, our certificate is offered as the client
//!   certificate (XEP-0178 section 3, "Server1 presents certificate");
//! - as the receiving server, a client certificate is asked for but not
//!   required, on the STARTTLS and the direct TLS listener (XEP-0368, ALPN
//!   `xmpp-server`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::error::CmError;

/// The ALPN protocol id of XMPP server streams over direct TLS (XEP-0368).
pub(crate) const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// The trusted roots: the system's and `tls.ca_file`'s.
pub(crate) fn roots(ca_file: Option<&std::path::Path>) -> Result<RootCertStore, CmError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for certificate in native.certs {
        let _ = roots.add(certificate);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| CmError::File {
            path: path.to_path_buf(),
            source,
        })?;
        let mut added = 0;
        for certificate in rustls_pemfile::certs(&mut &pem[..]) {
            let certificate =
                certificate.map_err(|error| CmError::Tls(format!("tls.ca_file: {error}")))?;
            roots
                .add(certificate)
                .map_err(|error| CmError::Tls(format!("tls.ca_file: {error}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(CmError::Tls(format!(
                "tls.ca_file {} holds no certificate",
                path.display()
            )));
        }
    }
    Ok(roots)
}

/// What both sides of s2s TLS need: the provider, the strict verifier that
/// tells whether a chain is valid for a domain, our certificate and key.
pub(crate) struct S2sTls {
    provider: Arc<CryptoProvider>,
    strict: Arc<WebPkiServerVerifier>,
    certificates: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl S2sTls {
    pub(crate) fn new(
        ca_file: Option<&std::path::Path>,
        certificates: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CmError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots(ca_file)?);
        let strict = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|error| CmError::Tls(format!("s2s certificate verifier: {error}")))?;
        Ok(S2sTls {
            provider,
            strict,
            certificates,
            key,
        })
    }

    /// Whether `chain` (end entity first, as presented) is valid for
    /// `domain`: RFC 6120 section 13.7.2, a chain to a trusted root, within
    /// its validity, with the domain in its subjectAltName (a wildcard
    /// matching one label, XEP-0178 section 3).
    pub(crate) fn certificate_valid(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
        domain: &str,
    ) -> bool {
        let Some((end_entity, intermediates)) = chain.and_then(|chain| chain.split_first()) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return false;
        };
        self.strict
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .is_ok()
    }

    /// The initiating side's configuration, with ALPN `xmpp-server` for
    /// direct TLS or none for STARTTLS.
    pub(crate) fn client_config(&self, alpn: Option<&[u8]>) -> Result<Arc<ClientConfig>, CmError> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            // RFC 7590 section 3.1: no SSL, no TLS 1.0/1.1.
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|error| CmError::Tls(error.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DeferredServerVerifier(self.strict.clone())))
            // Our certificate, for SASL EXTERNAL (XEP-0178 section 3).
            .with_client_auth_cert(self.certificates.clone(), self.key.clone_key())
            .map_err(|error| CmError::Tls(format!("s2s client certificate: {error}")))?;
        if let Some(alpn) = alpn {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        Ok(Arc::new(config))
    }

    /// The receiving side's configuration: our certificate, a client
    /// certificate asked for but optional; ALPN `xmpp-server` on the direct
    /// TLS listener (XEP-0368 section 3), none after STARTTLS.
    pub(crate) fn server_config(&self, alpn: Option<&[u8]>) -> Result<Arc<ServerConfig>, CmError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|error| CmError::Tls(error.to_string()))?
            .with_client_cert_verifier(Arc::new(OptionalClientCertificate(self.provider.clone())))
            .with_single_cert(self.certificates.clone(), self.key.clone_key())
            .map_err(|error| CmError::Tls(format!("certificate and key do not fit: {error}")))?;
        if let Some(alpn) = alpn {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        Ok(Arc::new(config))
    }
}

/// The initiating side's verifier: checks the signatures, leaves the chain
/// to [`S2sTls::certificate_valid`].
#[derive(Debug)]
struct DeferredServerVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for DeferredServerVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The receiving side's verifier: asks for a client certificate, takes a
/// peer without one, checks the handshake's signatures and leaves the chain
/// to [`S2sTls::certificate_valid`] (a peer whose certificate is not valid
/// still gets dialback, XEP-0220 section 1.2).
#[derive(Debug)]
struct OptionalClientCertificate(Arc<CryptoProvider>);

impl ClientCertVerifier for OptionalClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `domain` and its key.
    fn own(domain: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let generated = rcgen::generate_simple_self_signed(vec![domain.to_string()]).unwrap();
        let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der()).unwrap();
        (vec![generated.cert.der().clone()], key)
    }

    fn tls_for(domain: &str) -> (S2sTls, Vec<CertificateDer<'static>>) {
        let (chain, key) = own(domain);
        (S2sTls::new(None, chain.clone(), key).unwrap(), chain)
    }

    #[test]
    fn a_self_signed_certificate_is_not_valid_and_no_certificate_neither() {
        let (tls, chain) = tls_for("a.example");
        assert!(!tls.certificate_valid(Some(&chain), "a.example"));
        assert!(!tls.certificate_valid(None, "a.example"));
        assert!(!tls.certificate_valid(Some(&[]), "a.example"));
    }

    #[test]
    fn a_certificate_of_a_trusted_ca_is_valid_for_its_domain_only() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let directory =
            std::env::temp_dir().join(format!("starling-s2s-tls-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let ca_file = directory.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let peer_key = rcgen::KeyPair::generate().unwrap();
        let peer = rcgen::CertificateParams::new(vec!["peer.example".to_string()])
            .unwrap()
            .signed_by(&peer_key, &ca, &ca_key)
            .unwrap();
        let (chain, key) = own("us.example");
        let tls = S2sTls::new(Some(&ca_file), chain, key).unwrap();
        let chain = vec![peer.der().clone()];
        assert!(tls.certificate_valid(Some(&chain), "peer.example"));
        assert!(!tls.certificate_valid(Some(&chain), "other.example"));
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn the_server_side_asks_for_an_optional_client_certificate() {
        let (tls, _) = tls_for("a.example");
        let config = tls.server_config(Some(ALPN_XMPP_SERVER)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"xmpp-server".to_vec()]);
        let verifier =
            OptionalClientCertificate(Arc::new(rustls::crypto::ring::default_provider()));
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
    }
}
