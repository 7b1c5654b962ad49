//! Server dialback (XEP-0220) with keys generated as XEP-0185 recommends:
//! `HMAC-SHA256(SHA256(secret), receiving + ' ' + originating + ' ' + stream id)`
//! in lower-case hex. The secret (`s2s.dialback_secret`) is shared by every
//! node of the cluster, so any node answers `<db:verify/>` for a key another
//! node sent.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use starling_xmpp::escape_attr;
use subtle::ConstantTimeEq;

/// The dialback namespace (XEP-0220 section 2), bound to the `db` prefix on
/// every s2s stream header we write.
pub(crate) const NS_DIALBACK: &str = "jabber:server:dialback";
/// The stream feature that announces dialback with error support (XEP-0220 section 2.1).
pub(crate) const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// The dialback key (XEP-0185 section 3).
pub(crate) fn dialback_key(
    secret: &str,
    receiving: &str,
    originating: &str,
    stream_id: &str,
) -> String {
    let hashed_secret = Sha256::digest(secret.as_bytes());
    let hex_secret: String = hashed_secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(hex_secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(receiving.as_bytes());
    mac.update(b" ");
    mac.update(originating.as_bytes());
    mac.update(b" ");
    mac.update(stream_id.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `key` is the one we generated for that stream (constant time).
pub(crate) fn key_matches(
    key: &str,
    secret: &str,
    receiving: &str,
    originating: &str,
    stream_id: &str,
) -> bool {
    let expected = dialback_key(secret, receiving, originating, stream_id);
    bool::from(key.trim().as_bytes().ct_eq(expected.as_bytes()))
}

/// `<db:result/>` or `<db:verify/>` (XEP-0220 section 2.1 and 2.4); `kind`
/// is `result` or `verify`, `body` the key of a request.
pub(crate) fn element(
    kind: &str,
    from: &str,
    to: &str,
    id: Option<&str>,
    result: Option<&str>,
    body: Option<&str>,
) -> String {
    let mut xml = format!(
        "<db:{kind} from='{}' to='{}'",
        escape_attr(from),
        escape_attr(to)
    );
    if let Some(id) = id {
        xml.push_str(&format!(" id='{}'", escape_attr(id)));
    }
    if let Some(result) = result {
        xml.push_str(&format!(" type='{}'", escape_attr(result)));
    }
    match body {
        Some(body) => xml.push_str(&format!(">{}</db:{kind}>", escape_attr(body))),
        None => xml.push_str("/>"),
    }
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_matches_the_xep_0185_example() {
        // XEP-0185 section 3's example: receiving xmpp.example.com,
        // originating example.org, stream id D60000229F.
        assert_eq!(
            dialback_key(
                "s3cr3tf0rd14lb4ck",
                "xmpp.example.com",
                "example.org",
                "D60000229F"
            ),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = dialback_key("secret", "a.example", "b.example", "id1");
        assert_ne!(dialback_key("other", "a.example", "b.example", "id1"), base);
        assert_ne!(
            dialback_key("secret", "b.example", "a.example", "id1"),
            base
        );
        assert_ne!(
            dialback_key("secret", "a.example", "b.example", "id2"),
            base
        );
        assert!(key_matches(
            &base,
            "secret",
            "a.example",
            "b.example",
            "id1"
        ));
        assert!(!key_matches(
            &base.to_uppercase(),
            "secret",
            "a.example",
            "b.example",
            "id1"
        ));
        assert!(!key_matches("", "secret", "a.example", "b.example", "id1"));
    }

    #[test]
    fn elements_are_written_with_the_db_prefix() {
        assert_eq!(
            element("result", "a.example", "b.example", None, None, Some("k1")),
            "<db:result from='a.example' to='b.example'>k1</db:result>"
        );
        assert_eq!(
            element(
                "verify",
                "b.example",
                "a.example",
                Some("s1"),
                Some("valid"),
                None
            ),
            "<db:verify from='b.example' to='a.example' id='s1' type='valid'/>"
        );
    }
}
