//! What an operator sees of the server-to-server streams (RFC 6120): one
//! row per remote domain and open stream, as the admin API lists them.
//! Each connection-manager knows its own; in a cluster each writes its rows
//! to Redis for the admin API to read ([`S2sStreamInfo::encode`]).

/// One remote domain on one open server-to-server stream of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sStreamInfo {
    /// The connection-manager holding the stream.
    pub node: String,
    /// The remote domain.
    pub domain: String,
    /// `in` (the remote server's stream to us) or `out` (ours to it).
    pub direction: String,
    /// `external` (SASL EXTERNAL, XEP-0178) or `dialback` (XEP-0220).
    pub authentication: String,
    pub tls: bool,
    /// Stanzas received from the domain on this stream.
    pub stanzas_in: u64,
    /// Stanzas written to the domain on this stream.
    pub stanzas_out: u64,
    /// Stanzas waiting to be written (outbound streams).
    pub queued: u64,
    /// Unix time in milliseconds the stream was authenticated.
    pub since_unix_ms: u64,
}

impl S2sStreamInfo {
    /// One line of tab-separated fields (no field holds a tab or a line
    /// break: a domain cannot, and the others are names and numbers).
    pub fn encode(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.node,
            self.domain,
            self.direction,
            self.authentication,
            u8::from(self.tls),
            self.stanzas_in,
            self.stanzas_out,
            self.queued,
            self.since_unix_ms
        )
    }

    /// The row [`Self::encode`] wrote; `None` for anything else.
    pub fn decode(line: &str) -> Option<Self> {
        let mut fields = line.split('\t');
        let mut next = || fields.next();
        let info = S2sStreamInfo {
            node: next()?.to_string(),
            domain: next()?.to_string(),
            direction: next()?.to_string(),
            authentication: next()?.to_string(),
            tls: next()? == "1",
            stanzas_in: next()?.parse().ok()?,
            stanzas_out: next()?.parse().ok()?,
            queued: next()?.parse().ok()?,
            since_unix_ms: next()?.parse().ok()?,
        };
        next().is_none().then_some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_round_trips_and_garbage_does_not_decode() {
        let info = S2sStreamInfo {
            node: "cm-1".into(),
            domain: "example.net".into(),
            direction: "out".into(),
            authentication: "external".into(),
            tls: true,
            stanzas_in: 0,
            stanzas_out: 12,
            queued: 3,
            since_unix_ms: 1_700_000_000_000,
        };
        assert_eq!(
            info.encode(),
            "cm-1\texample.net\tout\texternal\t1\t0\t12\t3\t1700000000000"
        );
        assert_eq!(S2sStreamInfo::decode(&info.encode()), Some(info.clone()));
        assert_eq!(S2sStreamInfo::decode("cm-1\texample.net"), None);
        assert_eq!(
            S2sStreamInfo::decode(&format!("{}\textra", info.encode())),
            None
        );
        assert_eq!(
            S2sStreamInfo::decode("cm-1\texample.net\tout\texternal\t1\tx\t12\t3\t1"),
            None
        );
    }
}
