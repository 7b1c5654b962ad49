//! STARTTLS (RFC 6120 section 5): `<proceed/>`, then the TLS handshake on the
//! same TCP connection, and a fresh stream; or `<failure/>` and the end of
//! the stream when TLS cannot be negotiated now.

use super::stream::{NegotiatingStream, StreamEnd};
use crate::transport::Transport;

/// `<proceed/>`, RFC 6120 section 5.4.2.3.
pub(crate) const STARTTLS_PROCEED: &str = "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
/// `<failure/>` of STARTTLS, RFC 6120 section 5.4.2.2: the stream is closed after it.
pub(crate) const STARTTLS_FAILURE: &str = "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// Answer `<starttls/>` (section 5.4.2). Bytes the client sent after it are
/// discarded with the parser (no plaintext injection).
pub(crate) async fn start_tls<T: Transport>(
    stream: &mut NegotiatingStream<T>,
    authenticated: bool,
) -> Result<(), StreamEnd> {
    if !stream.can_start_tls() || authenticated {
        // Section 5.4.2.2: TLS cannot be negotiated now (it is active, the
        // transport has none, or SASL is done): failure, then close.
        return Err(StreamEnd::FailureThenClose(STARTTLS_FAILURE));
    }
    stream.send_nonza(STARTTLS_PROCEED).await?;
    stream.restart();
    let Some(transport) = stream.transport.take() else {
        return Err(StreamEnd::ConnectionLost);
    };
    match transport.start_tls(&stream.shared.starttls).await {
        Ok(tls) => {
            stream.transport = Some(tls);
            Ok(())
        }
        Err(error) => {
            tracing::debug!(conn = stream.conn, peer = %stream.peer, %error, "starttls handshake failed");
            Err(StreamEnd::ConnectionLost)
        }
    }
}
