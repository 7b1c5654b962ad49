//! HTTP File Upload (XEP-0363 version 0.4.0): the slots the session-router
//! grants and every connection-manager's HTTP listener honours, their store
//! (`UploadStore`), and the pure rules both sides share: slot ids, PUT
//! tokens (only their SHA-256 is stored), file names made safe for a URL,
//! and the URL of a slot.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use starling_jid::BareJid;

use crate::ApiResult;

/// Hex digits of a slot id: 128 random bits, the unguessable part of the
/// GET URL (XEP-0363 section 8: "long randomized parts in their URLs").
pub const SLOT_ID_LEN: usize = 32;

/// Hex digits of a PUT token: 256 random bits, sent as `Authorization: Bearer`.
pub const PUT_TOKEN_LEN: usize = 64;

/// The longest file name kept in a slot's URL, in bytes (the extension is kept).
pub const MAX_FILE_NAME_BYTES: usize = 128;

/// The longest `content-type` a slot request may carry.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;

/// A slot as stored: what a PUT must match, and when the file arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSlotRecord {
    /// [`SLOT_ID_LEN`] lowercase hex digits.
    pub id: String,
    /// The file name of the URL, already made safe by [`sanitize_file_name`].
    pub file_name: String,
    /// The size the PUT's `Content-Length` must equal (XEP-0363 section 5).
    pub size: u64,
    /// The slot request's `content-type`, normalised; `None`: any is accepted
    /// and the file is served as `application/octet-stream`.
    pub content_type: Option<String>,
    /// SHA-256 of the PUT token.
    pub token_hash: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub created_at_millis: i64,
    /// When the PUT completed; `None` while the slot waits for its file.
    pub uploaded_at_millis: Option<i64>,
}

/// A per-account quota on the bytes of live slots, at `now_millis`: files
/// uploaded less than `stored_for_millis` ago (they are kept that long) and
/// slots granted less than `pending_for_millis` ago that wait for their PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadQuota {
    /// 0: no quota.
    pub bytes: u64,
    pub now_millis: i64,
    pub stored_for_millis: i64,
    pub pending_for_millis: i64,
}

/// What a slot request got from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadSlotGrant {
    Granted,
    /// The account's live slots and this one would pass the quota; nothing
    /// was stored. `retry_at_millis`: when the oldest counted slot stops
    /// counting (XEP-0363 section 4 `<retry stamp/>`).
    QuotaExceeded {
        used_bytes: u64,
        retry_at_millis: Option<i64>,
    },
}

/// Upload slots (XEP-0363), per account, for quotas and for the HTTP PUT
/// and GET of any connection-manager.
#[async_trait]
pub trait UploadStore: Send + Sync + 'static {
    /// Store `slot` for `user` unless the account's counted bytes and
    /// `slot.size` would pass `quota` (checked in the transaction that
    /// stores it, so concurrent requests cannot pass it). `NotFound`
    /// without the account.
    async fn create_upload_slot(
        &self,
        user: &BareJid,
        slot: &UploadSlotRecord,
        quota: UploadQuota,
    ) -> ApiResult<UploadSlotGrant>;
    /// The slot of `id`, if it is stored.
    async fn upload_slot(&self, id: &str) -> ApiResult<Option<UploadSlotRecord>>;
    /// Mark the slot's file uploaded, once: `false` when it already was, or
    /// the slot is gone.
    async fn complete_upload_slot(&self, id: &str, uploaded_at_millis: i64) -> ApiResult<bool>;
}

/// Whether `id` has the form of a slot id (so that nothing else is looked up or used as a path).
pub fn is_slot_id(id: &str) -> bool {
    id.len() == SLOT_ID_LEN
        && id
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

/// The SHA-256 of a PUT token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether `token` is the one whose hash the slot keeps, compared in
/// constant time.
pub fn token_matches(token: &str, stored_hash: &[u8]) -> bool {
    let hash = token_hash(token);
    hash.len() == stored_hash.len()
        && hash
            .iter()
            .zip(stored_hash)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// A file name a client asked for, made safe to show in a URL and a
/// `Content-Disposition` (XEP-0363 section 4: keep the name and its ending
/// where possible). The name never names a file on disk (files are stored
/// by slot id), yet it is cleaned as if it did: only its last path
/// component is kept; control characters (NUL included), bidirectional
/// overrides and isolates, and other invisible format characters are
/// dropped; leading dots and surrounding spaces go; at most
/// [`MAX_FILE_NAME_BYTES`] bytes, cut before the extension; empty: `file`.
pub fn sanitize_file_name(requested: &str) -> String {
    let last = requested.rsplit(['/', '\\']).next().unwrap_or(requested);
    let cleaned: String = last
        .chars()
        .filter(|character| !is_unsafe_in_file_name(*character))
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let name = if cleaned.is_empty() { "file" } else { cleaned };
    if name.len() <= MAX_FILE_NAME_BYTES {
        return name.to_string();
    }
    // Keep a short extension whole, shorten the stem.
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if name.len() - dot <= 16 && dot > 0 => name.split_at(dot),
        _ => (name, ""),
    };
    let mut budget = MAX_FILE_NAME_BYTES - extension.len();
    while !stem.is_char_boundary(budget) {
        budget -= 1;
    }
    format!("{}{}", stem[..budget].trim_end(), extension)
}

fn is_unsafe_in_file_name(character: char) -> bool {
    character.is_control()
        || matches!(
            character,
            // Bidirectional marks, embeddings, overrides and isolates
            // (an "exe.jpg" that reads "gpj.exe"), zero-width characters,
            // the byte order mark.
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                // Characters that mean something to a shell or a header.
                | '"' | '<' | '>' | '|' | '*' | '?' | ':' | '%'
        )
}

/// A `content-type` a client asked for, as `type/subtype` in lower case
/// (parameters kept as written), or `None` when it is not a media type
/// (RFC 6838 section 4.2 restricted names).
pub fn normalize_content_type(requested: &str) -> Option<String> {
    let requested = requested.trim();
    if requested.is_empty() || requested.len() > MAX_CONTENT_TYPE_BYTES {
        return None;
    }
    let (media_type, parameters) = match requested.split_once(';') {
        Some((media_type, parameters)) => (media_type.trim(), Some(parameters.trim())),
        None => (requested, None),
    };
    let (kind, subtype) = media_type.split_once('/')?;
    let restricted_name = |name: &str| {
        !name.is_empty()
            && name.len() <= 127
            && name.bytes().all(|byte| {
                byte.is_ascii_alphanumeric()
                    || matches!(
                        byte,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    };
    if !restricted_name(kind) || !restricted_name(subtype) {
        return None;
    }
    let mut normalized = format!(
        "{}/{}",
        kind.to_ascii_lowercase(),
        subtype.to_ascii_lowercase()
    );
    if let Some(parameters) = parameters {
        // Printable ASCII only: the value goes into an HTTP header.
        if !parameters.bytes().all(|byte| (0x20..0x7f).contains(&byte)) {
            return None;
        }
        if !parameters.is_empty() {
            normalized.push_str("; ");
            normalized.push_str(parameters);
        }
    }
    Some(normalized)
}

/// Whether a PUT's `Content-Type` is the slot's: the same media type, case
/// and parameter spacing aside (XEP-0363 section 5: the service SHOULD
/// reject a file whose type does not match).
pub fn content_type_matches(slot: &str, sent: &str) -> bool {
    normalize_content_type(sent).is_some_and(|sent| {
        let essence = |value: &str| -> String {
            value
                .split(';')
                .map(|part| part.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(";")
        };
        essence(&sent) == essence(slot)
    })
}

/// The path of a slot's file on the HTTP listener: `/upload/ID/NAME`, the
/// name percent-encoded (every byte but RFC 3986 unreserved characters).
pub fn slot_path(id: &str, file_name: &str) -> String {
    let mut path = String::with_capacity(9 + id.len() + file_name.len() * 3);
    path.push_str(UPLOAD_PATH_PREFIX);
    path.push_str(id);
    path.push('/');
    for byte in file_name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

/// Where the upload routes sit on the HTTP listener.
pub const UPLOAD_PATH_PREFIX: &str = "/upload/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ids_are_32_lowercase_hex_digits() {
        assert!(is_slot_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_slot_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_slot_id("0123456789abcdef0123456789abcde"));
        assert!(!is_slot_id("../../../../etc/passwd/aaaaaaaaaa"));
        assert!(!is_slot_id(""));
    }

    #[test]
    fn tokens_match_their_hash_only() {
        let token = "a".repeat(PUT_TOKEN_LEN);
        let stored = token_hash(&token);
        assert!(token_matches(&token, &stored));
        assert!(!token_matches(&"b".repeat(PUT_TOKEN_LEN), &stored));
        assert!(!token_matches("", &stored));
        assert!(!token_matches(&token, &stored[..31]));
        assert_eq!(to_hex(&[0x00, 0xff, 0x1a]), "00ff1a");
    }

    #[test]
    fn file_names_lose_paths_controls_and_bidi() {
        assert_eq!(sanitize_file_name("my-juliet.jpg"), "my-juliet.jpg");
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(sanitize_file_name(".."), "file");
        assert_eq!(sanitize_file_name("/"), "file");
        assert_eq!(sanitize_file_name(""), "file");
        assert_eq!(sanitize_file_name(".htaccess"), "htaccess");
        assert_eq!(sanitize_file_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_file_name("photo\u{202E}gpj.exe"), "photogpj.exe");
        assert_eq!(sanitize_file_name("x\u{2066}y\u{2069}.png"), "xy.png");
        assert_eq!(
            sanitize_file_name("Grüße aus Köln.jpg"),
            "Grüße aus Köln.jpg"
        );
        assert_eq!(sanitize_file_name("a\"b<c>.txt"), "abc.txt");
        let long = format!("{}.jpeg", "é".repeat(200));
        let short = sanitize_file_name(&long);
        assert!(short.len() <= MAX_FILE_NAME_BYTES, "{}", short.len());
        assert!(short.ends_with(".jpeg"));
        let no_extension = "x".repeat(1000);
        assert_eq!(sanitize_file_name(&no_extension).len(), MAX_FILE_NAME_BYTES);
    }

    #[test]
    fn content_types_are_media_types() {
        assert_eq!(
            normalize_content_type("Image/JPEG").as_deref(),
            Some("image/jpeg")
        );
        assert_eq!(
            normalize_content_type("text/plain;charset=utf-8").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(normalize_content_type("jpeg"), None);
        assert_eq!(normalize_content_type("text/html\r\nX-Evil: 1"), None);
        assert_eq!(normalize_content_type("text/plain; a=\u{e9}"), None);
        assert_eq!(normalize_content_type(""), None);
        assert!(content_type_matches("image/jpeg", "image/JPEG"));
        assert!(content_type_matches(
            "text/plain; charset=utf-8",
            "text/plain;charset=UTF-8"
        ));
        assert!(!content_type_matches("image/jpeg", "text/html"));
        assert!(!content_type_matches("image/jpeg", "garbage"));
    }

    #[test]
    fn slot_paths_encode_the_name() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            slot_path(id, "my juliet.jpg"),
            "/upload/0123456789abcdef0123456789abcdef/my%20juliet.jpg"
        );
        assert_eq!(
            slot_path(id, "Köln.png"),
            "/upload/0123456789abcdef0123456789abcdef/K%C3%B6ln.png"
        );
    }
}
