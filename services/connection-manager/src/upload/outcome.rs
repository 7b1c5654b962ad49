//! What became of each PUT and GET of an upload (the metrics' `outcome`
//! labels), shared by the HTTP side (`super`) and the file stores
//! (`super::store`).

use axum::http::StatusCode;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why a PUT was answered as it was (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Completed,
    NotFound,
    BadToken,
    Expired,
    Used,
    LengthRequired,
    TooLarge,
    SizeMismatch,
    ContentType,
    Incomplete,
    Failed,
}

impl PutOutcome {
    pub(super) const ALL: [PutOutcome; 11] = [
        PutOutcome::Completed,
        PutOutcome::NotFound,
        PutOutcome::BadToken,
        PutOutcome::Expired,
        PutOutcome::Used,
        PutOutcome::LengthRequired,
        PutOutcome::TooLarge,
        PutOutcome::SizeMismatch,
        PutOutcome::ContentType,
        PutOutcome::Incomplete,
        PutOutcome::Failed,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            PutOutcome::Completed => "completed",
            PutOutcome::NotFound => "not_found",
            PutOutcome::BadToken => "bad_token",
            PutOutcome::Expired => "expired",
            PutOutcome::Used => "used",
            PutOutcome::LengthRequired => "length_required",
            PutOutcome::TooLarge => "too_large",
            PutOutcome::SizeMismatch => "size_mismatch",
            PutOutcome::ContentType => "content_type",
            PutOutcome::Incomplete => "incomplete",
            PutOutcome::Failed => "failed",
        }
    }

    pub(super) fn status(self) -> StatusCode {
        match self {
            // Section 5: "A HTTP status Code of 201 means that the server is
            // now ready to serve the file via the provided GET URL."
            PutOutcome::Completed => StatusCode::CREATED,
            PutOutcome::NotFound => StatusCode::NOT_FOUND,
            PutOutcome::BadToken | PutOutcome::Expired => StatusCode::FORBIDDEN,
            PutOutcome::Used => StatusCode::CONFLICT,
            PutOutcome::LengthRequired => StatusCode::LENGTH_REQUIRED,
            PutOutcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            PutOutcome::SizeMismatch | PutOutcome::Incomplete => StatusCode::BAD_REQUEST,
            PutOutcome::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PutOutcome::Failed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The metrics of the HTTP side; cheap to clone.
#[derive(Clone)]
pub struct UploadMetrics {
    pub(super) puts: IntCounterVec,
    pub(super) gets: IntCounterVec,
    pub(super) bytes_received: IntCounter,
    pub(super) stored_bytes: IntGauge,
    pub(super) stored_files: IntGauge,
    pub(super) expired_files: IntCounter,
}

impl UploadMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let puts = IntCounterVec::new(
            Opts::new(
                "starling_upload_puts_total",
                "XEP-0363 HTTP PUTs, by outcome: completed, not_found, bad_token, expired, used, length_required, too_large, size_mismatch, content_type, incomplete (the body ended early), failed",
            ),
            &["outcome"],
        )?;
        let gets = IntCounterVec::new(
            Opts::new(
                "starling_upload_gets_total",
                "XEP-0363 HTTP GETs and HEADs of uploaded files, by outcome: served, not_found, failed",
            ),
            &["outcome"],
        )?;
        let bytes_received = IntCounter::new(
            "starling_upload_received_bytes_total",
            "Bytes of uploaded files written to the upload store (directory or bucket) by this node",
        )?;
        let stored_bytes = IntGauge::new(
            "starling_upload_stored_bytes",
            "Bytes of the files in the upload store (directory or bucket), as of this node's last sweep",
        )?;
        let stored_files = IntGauge::new(
            "starling_upload_stored_files",
            "Files in the upload store (directory or bucket), as of this node's last sweep",
        )?;
        let expired_files = IntCounter::new(
            "starling_upload_expired_files_total",
            "Uploaded files this node removed because upload.expire_after_secs passed",
        )?;
        registry.register(Box::new(puts.clone()))?;
        registry.register(Box::new(gets.clone()))?;
        registry.register(Box::new(bytes_received.clone()))?;
        registry.register(Box::new(stored_bytes.clone()))?;
        registry.register(Box::new(stored_files.clone()))?;
        registry.register(Box::new(expired_files.clone()))?;
        for outcome in PutOutcome::ALL {
            puts.with_label_values(&[outcome.label()]);
        }
        for outcome in ["served", "not_found", "failed"] {
            gets.with_label_values(&[outcome]);
        }
        Ok(UploadMetrics {
            puts,
            gets,
            bytes_received,
            stored_bytes,
            stored_files,
            expired_files,
        })
    }
}
