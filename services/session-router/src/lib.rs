//! The session-router service: resource binding, stanza routing per RFC 6121 section 8, offline storage, server-side IQ handlers
