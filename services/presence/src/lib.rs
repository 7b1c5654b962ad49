//! The presence service: rosters, the subscription state machine and presence broadcast (RFC 6121 sections 2-4)
