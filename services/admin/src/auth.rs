//! Authentication of every admin call: gRPC metadata
//! `authorization: Bearer <token>` (the RFC 6750 section 2.1 form), compared
//! with the configured token in constant time. A missing, malformed or wrong
//! token is `UNAUTHENTICATED`, with the same message for each.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The shortest token the server accepts (`admin.token`).
pub const MIN_TOKEN_BYTES: usize = 16;

/// The interceptor in front of every admin method.
#[derive(Clone)]
pub struct BearerAuth {
    /// SHA-256 of the token: comparing digests of equal length leaks neither
    /// the token's bytes nor its length through timing.
    expected_digest: Arc<[u8; 32]>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(..)")
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl BearerAuth {
    pub fn new(token: &str) -> Self {
        BearerAuth {
            expected_digest: Arc::new(digest(token.as_bytes())),
        }
    }

    /// Whether `authorization` carries the right bearer token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|value| value.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let presented = presented.trim_ascii();
        !presented.is_empty() && bool::from(digest(presented).ct_eq(&*self.expected_digest))
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        if self.accepts(authorization) {
            Ok(request)
        } else {
            let peer = request.remote_addr();
            tracing::warn!(peer = ?peer, "admin call refused: missing or wrong token");
            Err(Status::unauthenticated(
                "an admin token is required: authorization: Bearer <admin.token>",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn no_token_wrong_token_and_right_token() {
        let mut auth = BearerAuth::new("correct-horse-battery-staple");
        let refused = |result: Result<Request<()>, Status>| {
            assert_eq!(result.unwrap_err().code(), tonic::Code::Unauthenticated);
        };
        refused(auth.call(request(None)));
        refused(auth.call(request(Some("Bearer wrong-horse-battery-staple"))));
        refused(auth.call(request(Some("Bearer correct-horse-battery-stapl"))));
        refused(auth.call(request(Some(
            "Bearer correct-horse-battery-staple-and-more",
        ))));
        refused(auth.call(request(Some("Bearer "))));
        refused(auth.call(request(Some("correct-horse-battery-staple"))));
        refused(auth.call(request(Some("Basic correct-horse-battery-staple"))));
        assert!(auth
            .call(request(Some("Bearer correct-horse-battery-staple")))
            .is_ok());
    }
}
