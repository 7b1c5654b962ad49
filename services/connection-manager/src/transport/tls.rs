//! TLS for client streams: STARTTLS (RFC 6120 section 5, with the RFC 7590
//! recommendations: TLS 1.2 and 1.3 only) and direct TLS with the ALPN
//! protocol `xmpp-client` (XEP-0368).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsSettings;
use crate::error::CmError;

/// The ALPN protocol id of XMPP client streams over direct TLS (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// The TLS configurations of both listeners, and the key material that the
/// SCRAM fake-salt secret is derived from.
pub(crate) struct TlsMaterial {
    pub starttls: Arc<ServerConfig>,
    pub direct_tls: Arc<ServerConfig>,
    /// HTTPS (WebSocket over TLS, BOSH over TLS): ALPN `http/1.1`.
    pub https: Arc<ServerConfig>,
    /// The private key in PEM: shared by every node that serves the domain,
    /// and stable across restarts.
    pub key_pem: Vec<u8>,
    /// The `tls-server-end-point` channel binding data of the certificate
    /// every configuration presents (RFC 5929 section 4.1); `None` when its
    /// signature algorithm leaves it undefined (Ed25519, RSASSA-PSS).
    pub server_end_point: Option<Vec<u8>>,
    /// The certificate chain and key, for the client side of outbound
    /// server-to-server streams (SASL EXTERNAL, XEP-0178).
    pub certificates: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

fn read_file(path: &Path) -> Result<Vec<u8>, CmError> {
    std::fs::read(path).map_err(|source| CmError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), CmError> {
    let file_error = |source| CmError::File {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if private {
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(file_error)?;
        file.write_all(contents).map_err(file_error)
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        std::fs::write(path, contents).map_err(file_error)
    }
}

/// The PEM certificate chain and key to serve: the configured files, or a
/// self-signed certificate for `domain` generated once under `data_dir/tls/`.
fn certificate_pems(settings: &TlsSettings, domain: &str) -> Result<(Vec<u8>, Vec<u8>), CmError> {
    match (&settings.cert_path, &settings.key_path) {
        (Some(cert_path), Some(key_path)) => Ok((read_file(cert_path)?, read_file(key_path)?)),
        (Some(_), None) | (None, Some(_)) => Err(CmError::Config(
            "tls cert_path and key_path must be set together".to_string(),
        )),
        (None, None) => {
            let directory: PathBuf = settings.data_dir.join("tls");
            let cert_path = directory.join("cert.pem");
            let key_path = directory.join("key.pem");
            if cert_path.exists() && key_path.exists() {
                return Ok((read_file(&cert_path)?, read_file(&key_path)?));
            }
            std::fs::create_dir_all(&directory).map_err(|source| CmError::File {
                path: directory.clone(),
                source,
            })?;
            let generated =
                rcgen::generate_simple_self_signed(vec![domain.to_string()]).map_err(|error| {
                    CmError::Tls(format!(
                        "cannot generate a self-signed certificate: {error}"
                    ))
                })?;
            let cert_pem = generated.cert.pem().into_bytes();
            let key_pem = generated.key_pair.serialize_pem().into_bytes();
            write_file(&key_path, &key_pem, true)?;
            write_file(&cert_path, &cert_pem, false)?;
            tracing::info!(domain, path = %cert_path.display(), "generated a self-signed certificate");
            Ok((cert_pem, key_pem))
        }
    }
}

fn parse_pems(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CmError> {
    let certificates = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CmError::Tls(format!("cannot read the certificate chain: {error}")))?;
    if certificates.is_empty() {
        return Err(CmError::Tls(
            "the certificate file holds no certificate".to_string(),
        ));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|error| CmError::Tls(format!("cannot read the private key: {error}")))?
        .ok_or_else(|| CmError::Tls("the key file holds no private key".to_string()))?;
    Ok((certificates, key))
}

fn server_config(
    certificates: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, CmError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // RFC 7590 section 3.1: no SSL, no TLS 1.0/1.1.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| CmError::Tls(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| CmError::Tls(format!("certificate and key do not fit: {error}")))?;
    if let Some(protocol) = alpn {
        config.alpn_protocols = vec![protocol.to_vec()];
    }
    Ok(Arc::new(config))
}

/// Load (or generate) the certificate and build both TLS configurations.
pub(crate) fn load(settings: &TlsSettings, domain: &str) -> Result<TlsMaterial, CmError> {
    let (cert_pem, key_pem) = certificate_pems(settings, domain)?;
    let (certificates, key) = parse_pems(&cert_pem, &key_pem)?;
    // The end-entity certificate comes first (RFC 8446 section 4.4.2), and
    // it is the one every configuration below presents.
    let server_end_point = starling_sasl::tls_server_end_point(&certificates[0]);
    if server_end_point.is_none() {
        tracing::warn!(
            "the certificate's signature algorithm defines no tls-server-end-point hash; that channel binding is not offered"
        );
    }
    let starttls = server_config(certificates.clone(), key.clone_key(), None)?;
    let direct_tls = server_config(
        certificates.clone(),
        key.clone_key(),
        Some(ALPN_XMPP_CLIENT),
    )?;
    let https = server_config(certificates.clone(), key.clone_key(), Some(b"http/1.1"))?;
    Ok(TlsMaterial {
        certificates,
        key,
        starttls,
        direct_tls,
        https,
        key_pem,
        server_end_point,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_directory(name: &str) -> PathBuf {
        let directory =
            std::env::temp_dir().join(format!("starling-cm-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        directory
    }

    #[test]
    fn generates_once_then_reuses() {
        let data_dir = temporary_directory("reuse");
        let settings = TlsSettings {
            cert_path: None,
            key_path: None,
            data_dir: data_dir.clone(),
        };
        let first = load(&settings, "example.com").unwrap();
        assert!(data_dir.join("tls/cert.pem").exists());
        let second = load(&settings, "example.com").unwrap();
        assert_eq!(first.key_pem, second.key_pem);
        // rcgen signs with ECDSA P-256 and SHA-256: the end-point hash is
        // the SHA-256 of the certificate (RFC 5929 section 4.1).
        let cert_pem = std::fs::read(data_dir.join("tls/cert.pem")).unwrap();
        let certificate = rustls_pemfile::certs(&mut &cert_pem[..])
            .next()
            .unwrap()
            .unwrap();
        use sha2::Digest;
        assert_eq!(
            first.server_end_point,
            Some(sha2::Sha256::digest(&certificate).to_vec())
        );
        assert_eq!(
            first.direct_tls.alpn_protocols,
            vec![b"xmpp-client".to_vec()]
        );
        assert!(first.starttls.alpn_protocols.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data_dir.join("tls/key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
        let _ = std::fs::remove_dir_all(&data_dir);
    }

    #[test]
    fn half_configured_files_are_rejected() {
        let settings = TlsSettings {
            cert_path: Some(PathBuf::from("/nonexistent/cert.pem")),
            key_path: None,
            data_dir: PathBuf::from("/nonexistent"),
        };
        assert!(matches!(
            load(&settings, "example.com"),
            Err(CmError::Config(_))
        ));
    }

    #[test]
    fn garbage_pem_is_a_tls_error() {
        let data_dir = temporary_directory("garbage");
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::write(data_dir.join("cert.pem"), "not a pem").unwrap();
        std::fs::write(data_dir.join("key.pem"), "not a pem").unwrap();
        let settings = TlsSettings {
            cert_path: Some(data_dir.join("cert.pem")),
            key_path: Some(data_dir.join("key.pem")),
            data_dir: data_dir.clone(),
        };
        assert!(matches!(
            load(&settings, "example.com"),
            Err(CmError::Tls(_))
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
    }
}
