//! SASL mechanisms without I/O: SCRAM-SHA-1, SCRAM-SHA-256 (RFC 5802, RFC 7677) and PLAIN (RFC 4616), server side, plus credential derivation
