//! Channel binding (RFC 5056) for the `-PLUS` SCRAM mechanisms (RFC 5802
//! section 6) and the channel-bound HT mechanisms (draft-schmaus-kitten-sasl-ht
//! section 3): the binding types, the data a TLS session gives for them, the
//! `tls-server-end-point` hash of a certificate (RFC 5929 section 4), and the
//! XEP-0474 downgrade protection hash over what was advertised.
//!
//! No I/O: the connection-manager exports the keying material from its TLS
//! session and hands the bytes over in [`ChannelBindings`].

use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use crate::credentials::ScramHash;

/// The TLS exporter label of `tls-exporter` (RFC 9266 section 2).
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
/// The length of `tls-exporter` data in bytes (RFC 9266 section 2).
pub const TLS_EXPORTER_LENGTH: usize = 32;

/// A channel binding type this server can offer (IANA "Channel-Binding
/// Types"). `tls-unique` (RFC 5929 section 3) is not one: it is undefined for
/// TLS 1.3 (RFC 9266 section 3) and, in TLS 1.2, unsafe without the extended
/// master secret (the triple handshake attack); rustls does not expose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelBindingType {
    /// RFC 9266: the TLS 1.3 exporter, label `EXPORTER-Channel-Binding`,
    /// no context, 32 bytes. Binds to this TLS session.
    TlsExporter,
    /// RFC 5929 section 4: a hash of the server's certificate. Binds to the
    /// certificate only (weaker: a MITM holding the key is not detected).
    TlsServerEndPoint,
}

impl ChannelBindingType {
    /// Every type, strongest first (the order of the XEP-0440 list).
    pub const ALL: &'static [ChannelBindingType] = &[
        ChannelBindingType::TlsExporter,
        ChannelBindingType::TlsServerEndPoint,
    ];

    /// The channel-binding unique prefix (the `cb-name` of the gs2 header).
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    /// The type of this exact name (`None` for `tls-unique` and unknown names).
    pub fn from_name(name: &str) -> Option<Self> {
        ChannelBindingType::ALL
            .iter()
            .copied()
            .find(|binding| binding.as_str() == name)
    }
}

impl std::fmt::Display for ChannelBindingType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The channel binding data of one stream: what its TLS session (terminated
/// by this server) gives for each type. Empty on a stream without TLS here.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChannelBindings {
    tls_exporter: Option<Vec<u8>>,
    tls_server_end_point: Option<Vec<u8>>,
}

impl std::fmt::Debug for ChannelBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The data is not secret, but it is noise in a log.
        f.debug_list().entries(self.types()).finish()
    }
}

impl ChannelBindings {
    /// No channel binding (a stream without TLS terminated here).
    pub fn none() -> Self {
        ChannelBindings::default()
    }

    /// The data of a TLS session: the exporter value (TLS 1.3 only, RFC 9266
    /// section 2), and the end-point hash of the certificate the server
    /// presented (when its signature algorithm defines one, RFC 5929 section 4.1).
    pub fn new(tls_exporter: Option<Vec<u8>>, tls_server_end_point: Option<Vec<u8>>) -> Self {
        ChannelBindings {
            tls_exporter,
            tls_server_end_point,
        }
    }

    /// The data for `binding`, when this stream has it.
    pub fn get(&self, binding: ChannelBindingType) -> Option<&[u8]> {
        match binding {
            ChannelBindingType::TlsExporter => self.tls_exporter.as_deref(),
            ChannelBindingType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        }
    }

    /// The types this stream offers, strongest first.
    pub fn types(&self) -> Vec<ChannelBindingType> {
        ChannelBindingType::ALL
            .iter()
            .copied()
            .filter(|binding| self.get(*binding).is_some())
            .collect()
    }

    /// No type is available: the `-PLUS` mechanisms are not offered.
    pub fn is_empty(&self) -> bool {
        self.tls_exporter.is_none() && self.tls_server_end_point.is_none()
    }
}

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        // Long form: 1 to 4 length bytes (a certificate is far below 4 GiB).
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte))
    };
    if rest.len() < length {
        return None;
    }
    let (contents, after) = rest.split_at(length);
    Some((tag, contents, after))
}

const DER_SEQUENCE: u8 = 0x30;
const DER_OID: u8 = 0x06;

/// The hash RFC 5929 section 4.1 picks for a certificate signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The end-point hash of a signature algorithm OID (DER contents): "if the
/// certificate's signatureAlgorithm uses a single hash function, and that hash
/// function is either MD5 or SHA-1, then use SHA-256; if [it] uses a single
/// hash function and that hash function neither MD5 nor SHA-1, then use the
/// hash function associated with the certificate's signatureAlgorithm; if
/// [it] uses no hash functions or uses multiple hash functions, then this
/// channel binding type's channel bindings are undefined" (RFC 5929 section
/// 4.1). Ed25519 (no hash) and RSASSA-PSS (the hash is in its parameters) are
/// undefined here: `tls-server-end-point` is then not offered.
fn end_point_hash(oid: &[u8]) -> Option<EndPointHash> {
    const RSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
    if let Some(suffix) = oid.strip_prefix(RSA_PREFIX) {
        return match suffix {
            // md5WithRSAEncryption (.4), sha1WithRSAEncryption (.5)
            [0x04] | [0x05] => Some(EndPointHash::Sha256),
            [0x0b] => Some(EndPointHash::Sha256),
            [0x0c] => Some(EndPointHash::Sha384),
            [0x0d] => Some(EndPointHash::Sha512),
            [0x0e] => Some(EndPointHash::Sha224),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 || oid == DSA_SHA1 {
        return Some(EndPointHash::Sha256);
    }
    match oid.strip_prefix(ECDSA_SHA2_PREFIX)? {
        [0x01] => Some(EndPointHash::Sha224),
        [0x02] => Some(EndPointHash::Sha256),
        [0x03] => Some(EndPointHash::Sha384),
        [0x04] => Some(EndPointHash::Sha512),
        _ => None,
    }
}

/// The `tls-server-end-point` channel binding data of a DER certificate (RFC
/// 5929 section 4.1): the hash of the whole certificate, with the hash its
/// signature algorithm names (SHA-256 for MD5 and SHA-1). `None` when the
/// certificate does not parse or its algorithm leaves the binding undefined.
pub fn tls_server_end_point(certificate_der: &[u8]) -> Option<Vec<u8>> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (tag, certificate, _) = der_element(certificate_der)?;
    if tag != DER_SEQUENCE {
        return None;
    }
    let (tag, _tbs, rest) = der_element(certificate)?;
    if tag != DER_SEQUENCE {
        return None;
    }
    // AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL }
    let (tag, algorithm, _) = der_element(rest)?;
    if tag != DER_SEQUENCE {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    if tag != DER_OID {
        return None;
    }
    Some(match end_point_hash(oid)? {
        EndPointHash::Sha224 => Sha224::digest(certificate_der).to_vec(),
        EndPointHash::Sha256 => Sha256::digest(certificate_der).to_vec(),
        EndPointHash::Sha384 => Sha384::digest(certificate_der).to_vec(),
        EndPointHash::Sha512 => Sha512::digest(certificate_der).to_vec(),
    })
}

/// The XEP-0474 (SASL SCRAM Downgrade Protection, version 0.5.0, section
/// "Server Sends Downgrade Protection Hash") value of the server-first
/// attribute `h`: the advertised SASL mechanisms sorted by octet and joined
/// with %x1E, then, when channel-binding types were advertised with
/// XEP-0440, %x1F and the sorted types joined with %x1E; hashed with the
/// SCRAM mechanism's hash and base64-encoded.
pub fn downgrade_protection_hash(
    hash: ScramHash,
    mechanisms: &[&str],
    channel_binding_types: Option<&[&str]>,
) -> String {
    // "i;octet" collation (RFC 4790 section 9.3): byte order, what str's Ord is.
    let mut mechanisms = mechanisms.to_vec();
    mechanisms.sort_unstable();
    let mut input = mechanisms.join("\u{1e}");
    if let Some(types) = channel_binding_types {
        let mut types = types.to_vec();
        types.sort_unstable();
        input.push('\u{1f}');
        input.push_str(&types.join("\u{1e}"));
    }
    let digest = match hash {
        ScramHash::Sha1 => Sha1::digest(input.as_bytes()).to_vec(),
        ScramHash::Sha256 => Sha256::digest(input.as_bytes()).to_vec(),
    };
    crate::encode_base64(&digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_type_names() {
        assert_eq!(
            ChannelBindingType::from_name("tls-exporter"),
            Some(ChannelBindingType::TlsExporter)
        );
        assert_eq!(
            ChannelBindingType::from_name("tls-server-end-point"),
            Some(ChannelBindingType::TlsServerEndPoint)
        );
        assert_eq!(ChannelBindingType::from_name("tls-unique"), None);
        assert_eq!(ChannelBindingType::from_name("TLS-EXPORTER"), None);
        let both = ChannelBindings::new(Some(vec![1; 32]), Some(vec![2; 32]));
        assert_eq!(
            both.types(),
            vec![
                ChannelBindingType::TlsExporter,
                ChannelBindingType::TlsServerEndPoint
            ]
        );
        let end_point_only = ChannelBindings::new(None, Some(vec![2; 32]));
        assert_eq!(
            end_point_only.types(),
            vec![ChannelBindingType::TlsServerEndPoint]
        );
        assert_eq!(end_point_only.get(ChannelBindingType::TlsExporter), None);
        assert!(ChannelBindings::none().is_empty());
        assert!(!end_point_only.is_empty());
    }

    /// XEP-0474 section "Full Example": SHA-1 of
    /// 'SCRAM-SHA-1\x1eSCRAM-SHA-1-PLUS\x1ftls-exporter\x1etls-server-end-point'.
    #[test]
    fn xep0474_example_hash() {
        assert_eq!(
            downgrade_protection_hash(
                ScramHash::Sha1,
                &["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1"],
                Some(&["tls-server-end-point", "tls-exporter"]),
            ),
            "G6k/rBLDqgOhRRaCuuatSDFkJ08="
        );
        // Without XEP-0440 there is no %x1F at all.
        assert_eq!(
            downgrade_protection_hash(ScramHash::Sha256, &["SCRAM-SHA-256", "PLAIN"], None),
            crate::encode_base64(&Sha256::digest(b"PLAIN\x1eSCRAM-SHA-256"))
        );
    }

    /// A certificate skeleton: SEQUENCE { SEQUENCE {}, SEQUENCE { OID, NULL }, BIT STRING }.
    fn certificate_with(oid: &[u8]) -> Vec<u8> {
        let mut algorithm = vec![DER_OID, oid.len() as u8];
        algorithm.extend_from_slice(oid);
        algorithm.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![DER_SEQUENCE, 0x00, DER_SEQUENCE, algorithm.len() as u8];
        body.extend_from_slice(&algorithm);
        body.extend_from_slice(&[0x03, 0x02, 0x00, 0xff]);
        let mut certificate = vec![DER_SEQUENCE, body.len() as u8];
        certificate.extend_from_slice(&body);
        certificate
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let rsa = |last: u8| {
            let mut oid = vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
            oid.push(last);
            certificate_with(&oid)
        };
        // MD5 and SHA-1 are replaced by SHA-256 (RFC 5929 section 4.1).
        for certificate in [rsa(0x04), rsa(0x05), rsa(0x0b)] {
            assert_eq!(
                tls_server_end_point(&certificate),
                Some(Sha256::digest(&certificate).to_vec())
            );
        }
        let sha384 = rsa(0x0c);
        assert_eq!(
            tls_server_end_point(&sha384),
            Some(Sha384::digest(&sha384).to_vec())
        );
        let sha512 = rsa(0x0d);
        assert_eq!(
            tls_server_end_point(&sha512),
            Some(Sha512::digest(&sha512).to_vec())
        );
        let ecdsa_sha384 = certificate_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        assert_eq!(
            tls_server_end_point(&ecdsa_sha384),
            Some(Sha384::digest(&ecdsa_sha384).to_vec())
        );
        let ecdsa_sha256 = certificate_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
        assert_eq!(
            tls_server_end_point(&ecdsa_sha256),
            Some(Sha256::digest(&ecdsa_sha256).to_vec())
        );
        // Ed25519 uses no hash, RSASSA-PSS names its hash in its parameters: undefined here.
        assert_eq!(
            tls_server_end_point(&certificate_with(&[0x2b, 0x65, 0x70])),
            None
        );
        assert_eq!(tls_server_end_point(&rsa(0x0a)), None);
        // Not a certificate.
        assert_eq!(tls_server_end_point(b""), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x10, 0x30]), None);
        let mut truncated = ecdsa_sha256.clone();
        truncated.truncate(8);
        assert_eq!(tls_server_end_point(&truncated), None);
    }
}
