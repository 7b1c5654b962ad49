//! The HTTP side of HTTP File Upload (XEP-0363 version 0.4.0), served by
//! every connection-manager's HTTP and HTTPS listeners at
//! `/upload/ID/NAME`: the PUT of a slot the session-router granted
//! (section 5), the GET (and HEAD) of its file, the CORS preflight of web
//! clients, and the sweep that removes expired files.
//!
//! A slot is a row of the [`UploadStore`] (through gRPC in the cluster), so
//! a PUT is checked on whichever node it reaches: the bearer token against
//! the hash kept, the slot's validity, its single use, the `Content-Length`
//! and `Content-Type` against what was asked. Files live in one directory
//! that every node shares or in an S3-compatible bucket (`upload.storage`,
//! [`store`]), named by slot id only: a client's file name never reaches
//! the store.

pub mod outcome;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use starling_api::upload::{content_type_matches, is_slot_id, token_matches};
use starling_api::{StorageApi, UploadSlotRecord};

pub use outcome::{PutOutcome, UploadMetrics};
use store::{FileStore, FileStoreSettings};

/// What the HTTP side needs of `upload.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadHttpSettings {
    /// Where the files are (`upload.storage`, `upload.s3_*`).
    pub store: FileStoreSettings,
    /// How long an uploaded file is served and kept (`upload.expire_after_secs`).
    pub expire_after: Duration,
    /// How long after its grant a slot's PUT may start (`upload.slot_validity_secs`).
    pub slot_validity: Duration,
}

/// The upload routes and the sweep of one connection-manager.
pub struct UploadHttp {
    settings: UploadHttpSettings,
    files: FileStore,
    storage: Arc<dyn StorageApi>,
    metrics: UploadMetrics,
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// CORS (XEP-0363 section 6 leaves it to HTTP; web clients such as
/// Converse.js PUT and GET from another origin): anyone may, the URLs being
/// the secret and the token a header, never a cookie.
fn with_cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, Content-Type"),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    with_cors(
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response(),
    )
}

impl UploadHttp {
    /// The HTTP side over `storage`, its files in `settings.store` (a
    /// directory is created with its `files/` and `tmp/` when missing).
    pub fn new(
        settings: UploadHttpSettings,
        storage: Arc<dyn StorageApi>,
        metrics: UploadMetrics,
    ) -> Result<Arc<Self>, String> {
        let files = FileStore::open(&settings.store)?;
        Ok(Arc::new(UploadHttp {
            settings,
            files,
            storage,
            metrics,
        }))
    }

    /// `/upload/{id}/{name}`: PUT, GET (HEAD with it) and OPTIONS.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/upload/{id}/{name}",
                get(serve_file).put(receive_file).options(preflight),
            )
            .with_state(Arc::clone(self))
    }

    fn put_refused(&self, outcome: PutOutcome, text: &'static str) -> Response {
        self.metrics
            .puts
            .with_label_values(&[outcome.label()])
            .inc();
        plain(outcome.status(), text)
    }

    /// The slot of a URL, when its id has the form and its name is the slot's.
    async fn slot_of(&self, id: &str, name: &str) -> Result<Option<UploadSlotRecord>, ()> {
        if !is_slot_id(id) {
            return Ok(None);
        }
        match self.storage.upload_slot(id).await {
            Ok(Some(slot)) if slot.file_name == name => Ok(Some(slot)),
            Ok(_) => Ok(None),
            Err(error) => {
                tracing::warn!(slot = id, %error, "upload slot lookup failed");
                Err(())
            }
        }
    }

    /// Remove expired files (and temporary files of PUTs long gone) now and
    /// then every so often, until the task is aborted. Every node may run
    /// it: removing a file twice is no error.
    pub fn spawn_sweep(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let upload = Arc::clone(self);
        let every = sweep_interval(self.settings.expire_after);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match upload.files.sweep(upload.settings.expire_after).await {
                    Ok(swept) => {
                        upload.metrics.expired_files.inc_by(swept.expired);
                        upload
                            .metrics
                            .stored_bytes
                            .set(i64::try_from(swept.stored_bytes).unwrap_or(i64::MAX));
                        upload
                            .metrics
                            .stored_files
                            .set(i64::try_from(swept.stored_files).unwrap_or(i64::MAX));
                        if swept.expired > 0 {
                            tracing::info!(expired = swept.expired, "expired uploads removed");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "upload sweep failed"),
                }
            }
        })
    }
}

/// How often expired uploads are looked for (files here, slots by the
/// storage service): a quarter of their lifetime, between 1 s and 5 min.
pub fn sweep_interval(expire_after: Duration) -> Duration {
    (expire_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// The time a PUT's body may take: the listener's body timeout, and one
/// more second per 64 KiB of the announced `Content-Length` (a slow
/// mobile link uploads 10 MiB in under three minutes).
pub fn put_body_deadline(body_timeout: Duration, content_length: u64) -> Duration {
    body_timeout.saturating_add(Duration::from_secs(content_length / (64 * 1024)))
}

/// `OPTIONS`: the CORS preflight of a browser's PUT (it sends
/// `Authorization` and `Content-Type`).
async fn preflight() -> Response {
    let mut response = with_cors(StatusCode::NO_CONTENT.into_response());
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

/// The bearer token of an `Authorization` header, as the slot gave it.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// PUT: every check of the slot before a byte is read, then the body
/// streamed to the store under a byte cap, staged where no GET sees it,
/// the slot marked used, and the file made visible in one step.
async fn receive_file(
    State(upload): State<Arc<UploadHttp>>,
    UrlPath((id, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let slot = match upload.slot_of(&id, &name).await {
        Ok(Some(slot)) => slot,
        Ok(None) => return upload.put_refused(PutOutcome::NotFound, "no such upload slot\n"),
        Err(()) => return upload.put_refused(PutOutcome::Failed, "storage unavailable\n"),
    };
    if !bearer_token(&headers).is_some_and(|token| token_matches(token, &slot.token_hash)) {
        return upload.put_refused(
            PutOutcome::BadToken,
            "the slot's Authorization header is missing or wrong\n",
        );
    }
    if slot.uploaded_at_millis.is_some() {
        return upload.put_refused(PutOutcome::Used, "this slot was used already\n");
    }
    // Section 6: the PUT URL is valid for a short while (60 s recommended).
    let valid_until = slot
        .created_at_millis
        .saturating_add(duration_millis(upload.settings.slot_validity));
    if now_millis() > valid_until {
        return upload.put_refused(PutOutcome::Expired, "this slot expired; ask for another\n");
    }
    // Section 5: "The upload service MUST reject the file upload if the
    // Content-Length does not match the size of the slot request."
    let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
    else {
        return upload.put_refused(PutOutcome::LengthRequired, "a Content-Length is required\n");
    };
    if length > slot.size {
        return upload.put_refused(PutOutcome::TooLarge, "the body is larger than the slot\n");
    }
    if length != slot.size {
        return upload.put_refused(
            PutOutcome::SizeMismatch,
            "the Content-Length is not the slot's size\n",
        );
    }
    // "The service SHOULD reject the file if the Content-Type has been
    // specified beforehand and does not match."
    if let Some(expected) = &slot.content_type {
        let sent = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if !content_type_matches(expected, sent) {
            return upload.put_refused(
                PutOutcome::ContentType,
                "the Content-Type is not the slot's\n",
            );
        }
    }
    let staged = match upload
        .files
        .receive(&id, body, slot.size, &upload.metrics)
        .await
    {
        Ok(staged) => staged,
        Err(outcome) => {
            let text = match outcome {
                PutOutcome::TooLarge => "the body is larger than the slot\n",
                PutOutcome::Incomplete => "the body ended before the slot's size\n",
                _ => "the file could not be stored\n",
            };
            return upload.put_refused(outcome, text);
        }
    };
    match upload.storage.complete_upload_slot(&id, now_millis()).await {
        Ok(true) => {}
        Ok(false) => {
            staged.discard().await;
            return upload.put_refused(PutOutcome::Used, "this slot was used already\n");
        }
        Err(error) => {
            tracing::warn!(slot = %id, %error, "upload completion failed");
            staged.discard().await;
            return upload.put_refused(PutOutcome::Failed, "storage unavailable\n");
        }
    }
    if let Err(error) = staged.commit().await {
        tracing::error!(slot = %id, %error, "uploaded file could not be moved into place");
        return upload.put_refused(PutOutcome::Failed, "the file could not be stored\n");
    }
    upload
        .metrics
        .puts
        .with_label_values(&[PutOutcome::Completed.label()])
        .inc();
    tracing::debug!(slot = %id, size = slot.size, "upload stored");
    plain(StatusCode::CREATED, "created\n")
}

/// Whether browsers may show a type inline; anything else is an attachment.
fn shown_inline(content_type: &str) -> bool {
    ["image/", "audio/", "video/"]
        .iter()
        .any(|prefix| content_type.starts_with(prefix))
        // An SVG image carries scripts: never inline.
        && !content_type.starts_with("image/svg")
}

/// `Content-Disposition` with the file name: an ASCII fallback and the
/// UTF-8 name (RFC 6266 section 4.3, RFC 8187).
fn content_disposition(content_type: &str, file_name: &str) -> String {
    let kind = if shown_inline(content_type) {
        "inline"
    } else {
        "attachment"
    };
    let fallback: String = file_name
        .chars()
        .map(|character| {
            if character.is_ascii_graphic() && character != '\\' || character == ' ' {
                character
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in file_name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// GET (and HEAD): the file, streamed, with headers that keep a browser
/// from running it: `nosniff`, a sandboxing CSP, and a disposition.
async fn serve_file(
    State(upload): State<Arc<UploadHttp>>,
    method: Method,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Response {
    let not_found = |upload: &UploadHttp| {
        upload.metrics.gets.with_label_values(&["not_found"]).inc();
        plain(StatusCode::NOT_FOUND, "not found\n")
    };
    let slot = match upload.slot_of(&id, &name).await {
        Ok(Some(slot)) => slot,
        Ok(None) => return not_found(&upload),
        Err(()) => {
            upload.metrics.gets.with_label_values(&["failed"]).inc();
            return plain(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n");
        }
    };
    let Some(uploaded_at) = slot.uploaded_at_millis else {
        return not_found(&upload);
    };
    if now_millis() > uploaded_at.saturating_add(duration_millis(upload.settings.expire_after)) {
        return not_found(&upload);
    }
    let opened = match upload.files.open_file(&id, method == Method::HEAD).await {
        Ok(Some(opened)) => opened,
        Ok(None) => return not_found(&upload),
        Err(error) => {
            tracing::warn!(slot = %id, %error, "cannot open an uploaded file");
            upload.metrics.gets.with_label_values(&["failed"]).inc();
            return plain(StatusCode::SERVICE_UNAVAILABLE, "cannot read the file\n");
        }
    };
    let length = opened.length;
    let content_type = slot
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_string());
    upload.metrics.gets.with_label_values(&["served"]).inc();
    let mut response = Response::new(opened.body);
    let headers = response.headers_mut();
    let disposition = content_disposition(&content_type, &slot.file_name);
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_LENGTH, length.to_string()),
        (header::CONTENT_DISPOSITION, disposition),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; sandbox".to_string(),
        ),
        (header::REFERRER_POLICY, "no-referrer".to_string()),
        (header::CACHE_CONTROL, "private, max-age=86400".to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    with_cors(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_name_the_file_safely() {
        assert_eq!(
            content_disposition("image/jpeg", "my juliet.jpg"),
            "inline; filename=\"my juliet.jpg\"; filename*=UTF-8''my%20juliet.jpg"
        );
        assert_eq!(
            content_disposition("text/html", "Köln.html"),
            "attachment; filename=\"K_ln.html\"; filename*=UTF-8''K%C3%B6ln.html"
        );
        assert_eq!(
            content_disposition("image/svg+xml", "a.svg"),
            "attachment; filename=\"a.svg\"; filename*=UTF-8''a.svg"
        );
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
    }
}
