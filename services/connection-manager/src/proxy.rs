//! Client addresses behind a load balancer (issue 15). Behind a Kubernetes
//! Service or any TCP balancer, every connection comes from the balancer's
//! few addresses, and the per-address limits (connections, failed logins)
//! would count them instead of the clients. Two ways to learn the client's
//! address, each believed only from [`TrustedProxies`]:
//!
//! - the PROXY protocol (HAProxy's `proxy-protocol.txt`, version 1 text and
//!   version 2 binary) in front of the stream listeners (`proxy.protocol`):
//!   a connection from a trusted address must start with the header; one
//!   from any other address is a client of its own and is never asked for one;
//! - `X-Forwarded-For` on the HTTP listeners (`proxy.forwarded_for`): read
//!   from the right, each trusted hop skipped, the first address that is not
//!   a trusted proxy is the client's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use ipnet::IpNet;
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The largest PROXY header read: version 1 is at most 107 bytes; a version 2
/// header is 16 bytes and its addresses and TLVs (a balancer's TLVs take
/// a few hundred bytes at most). A longer one is refused.
pub const MAX_HEADER_BYTES: usize = 2048;

/// While a header is incomplete, the next look at the socket is this much later.
const PARTIAL_HEADER_RETRY: Duration = Duration::from_millis(5);

/// The load balancers and reverse proxies whose word on the client's address
/// is believed (`proxy.trusted`), and what they speak.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    /// Connections from a trusted address to the stream listeners start with
    /// a PROXY protocol header.
    pub protocol: bool,
    /// HTTP requests from a trusted address carry the client in `X-Forwarded-For`.
    pub forwarded_for: bool,
}

/// Why an entry of `proxy.trusted` is not a network.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is neither an address nor a network (ADDRESS/PREFIX)")]
pub struct BadNetwork(String);

impl TrustedProxies {
    /// Nothing is trusted: every peer is the client.
    pub fn none() -> Self {
        Self::default()
    }

    /// `entries` are addresses (`192.0.2.7`, `2001:db8::1`) or networks (`10.0.0.0/8`).
    pub fn new(
        entries: &[String],
        protocol: bool,
        forwarded_for: bool,
    ) -> Result<Self, BadNetwork> {
        let networks = entries
            .iter()
            .map(|entry| parse_network(entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies {
            networks,
            protocol,
            forwarded_for,
        })
    }

    /// `address` is one of the trusted proxies (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks
            .iter()
            .any(|network| network.contains(&address))
    }

    /// A connection from `peer` to a stream listener starts with a PROXY header.
    pub fn expects_header(&self, peer: IpAddr) -> bool {
        self.protocol && self.trusts(peer)
    }

    /// The client of an HTTP request that came from `peer`: `peer` itself
    /// unless it is a trusted proxy and `forwarded_for` is on; then the
    /// right-most `X-Forwarded-For` entry that is not a trusted proxy (the
    /// entries left of it were written by the client or proxies we do not
    /// know, and are not believed). An entry that is not an address ends the
    /// walk at the proxy that forwarded it. The port is not forwarded: 0.
    pub fn http_client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.forwarded_for || !self.trusts(peer.ip()) {
            return peer;
        }
        let mut client = peer;
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        for entry in entries.iter().rev() {
            let Some(address) = parse_forwarded_address(entry) else {
                break;
            };
            client = SocketAddr::new(canonical(address), 0);
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

fn parse_network(entry: &str) -> Result<IpNet, BadNetwork> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map(|network| network.trunc())
        .map_err(|_| BadNetwork(entry.to_string()))
}

/// An `X-Forwarded-For` entry: an address, or an address with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`), as some balancers write it.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|address| address.ip()))
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Why a connection that had to start with a PROXY header did not.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection closed before the header was whole")]
    Closed,
    #[error("not a PROXY protocol header: {0}")]
    Invalid(String),
    #[error("the header is longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ProxyHeaderError {
    /// The `outcome` label of `starling_proxy_headers_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyHeaderError::Closed | ProxyHeaderError::Io(_) => "closed",
            ProxyHeaderError::Invalid(_) | ProxyHeaderError::TooLong => "invalid",
        }
    }
}

/// What a PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedPeer {
    /// The client's address and port, as the balancer saw them.
    Client(SocketAddr),
    /// The balancer's own connection (a health check: v2 `LOCAL`, v1
    /// `UNKNOWN`) or an address family without an IP (a UNIX socket): the
    /// peer is the balancer itself.
    Local,
}

/// Read the PROXY header at the start of `tcp` and nothing after it: the
/// TLS handshake or the XML stream that follows stays unread. The caller
/// bounds the time it may take. The bytes are looked at with `peek` and only
/// the header's own are consumed; a header that arrives in pieces is looked
/// at again shortly after.
pub async fn read_header(tcp: &mut TcpStream) -> Result<ProxiedPeer, ProxyHeaderError> {
    let mut buffer = vec![0u8; MAX_HEADER_BYTES];
    loop {
        let seen = tcp.peek(&mut buffer).await?;
        if seen == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        match parse_header(&buffer[..seen])? {
            Some((length, peer)) => {
                tcp.read_exact(&mut buffer[..length]).await?;
                return Ok(peer);
            }
            None if seen == buffer.len() => return Err(ProxyHeaderError::TooLong),
            None => tokio::time::sleep(PARTIAL_HEADER_RETRY).await,
        }
    }
}

/// A whole header at the start of `input`: its length and what it says;
/// `None` while it is incomplete.
pub fn parse_header(input: &[u8]) -> Result<Option<(usize, ProxiedPeer)>, ProxyHeaderError> {
    let parsed = HeaderResult::parse(input);
    if parsed.is_incomplete() {
        if let HeaderResult::V2(Err(v2::ParseError::Partial(_, length))) = &parsed {
            if 16 + length > MAX_HEADER_BYTES {
                return Err(ProxyHeaderError::TooLong);
            }
        }
        return Ok(None);
    }
    match parsed {
        HeaderResult::V1(Ok(header)) => {
            let peer = match header.addresses {
                v1::Addresses::Tcp4(ip) => ProxiedPeer::Client(SocketAddr::new(
                    IpAddr::V4(ip.source_address),
                    ip.source_port,
                )),
                v1::Addresses::Tcp6(ip) => ProxiedPeer::Client(SocketAddr::new(
                    IpAddr::V6(ip.source_address),
                    ip.source_port,
                )),
                v1::Addresses::Unknown => ProxiedPeer::Local,
            };
            Ok(Some((header.header.len(), peer)))
        }
        HeaderResult::V2(Ok(header)) => {
            let peer = match (header.command, header.addresses) {
                (v2::Command::Local, _) => ProxiedPeer::Local,
                (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => ProxiedPeer::Client(
                    SocketAddr::new(IpAddr::V4(ip.source_address), ip.source_port),
                ),
                (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => ProxiedPeer::Client(
                    SocketAddr::new(IpAddr::V6(ip.source_address), ip.source_port),
                ),
                (v2::Command::Proxy, _) => ProxiedPeer::Local,
            };
            Ok(Some((header.len(), peer)))
        }
        HeaderResult::V1(Err(error)) => Err(ProxyHeaderError::Invalid(error.to_string())),
        HeaderResult::V2(Err(error)) => Err(ProxyHeaderError::Invalid(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        TrustedProxies::new(&entries, true, true).unwrap()
    }

    fn v2_header(command: u8, source: [u8; 4], port: u16, tlv_bytes: usize) -> Vec<u8> {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.push(0x20 | command);
        header.push(0x11); // TCP over IPv4
        header.extend_from_slice(&((12 + tlv_bytes) as u16).to_be_bytes());
        header.extend_from_slice(&source);
        header.extend_from_slice(&[10, 0, 0, 1]);
        header.extend_from_slice(&port.to_be_bytes());
        header.extend_from_slice(&5222u16.to_be_bytes());
        if tlv_bytes > 0 {
            // One NOOP TLV (type 0x04) filling the rest.
            header.push(0x04);
            header.extend_from_slice(&((tlv_bytes - 3) as u16).to_be_bytes());
            header.extend(std::iter::repeat_n(0u8, tlv_bytes - 3));
        }
        header
    }

    #[test]
    fn networks_and_addresses_are_trusted_mapped_addresses_too() {
        let trusted = proxies(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
        assert!(trusted.trusts("10.1.2.3".parse().unwrap()));
        assert!(trusted.trusts("192.0.2.7".parse().unwrap()));
        assert!(!trusted.trusts("192.0.2.8".parse().unwrap()));
        assert!(trusted.trusts("2001:db8::5".parse().unwrap()));
        assert!(trusted.trusts("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!TrustedProxies::none().trusts("127.0.0.1".parse().unwrap()));
        let bad = TrustedProxies::new(&["10.0.0.0/33".to_string()], true, false);
        assert!(bad.is_err());
        assert!(TrustedProxies::new(&["example.org".to_string()], true, false).is_err());
    }

    #[test]
    fn version_1_headers_give_the_client_and_leave_the_stream() {
        let input = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 5222\r\n<?xml version='1.0'?>";
        let (length, peer) = parse_header(input).unwrap().unwrap();
        assert_eq!(&input[length..], b"<?xml version='1.0'?>");
        assert_eq!(
            peer,
            ProxiedPeer::Client("198.51.100.7:40000".parse().unwrap())
        );

        let input = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 5223\r\n\x16\x03\x01";
        let (length, peer) = parse_header(input).unwrap().unwrap();
        assert_eq!(&input[length..], b"\x16\x03\x01");
        assert_eq!(
            peer,
            ProxiedPeer::Client("[2001:db8::7]:40000".parse().unwrap())
        );

        let (length, peer) = parse_header(b"PROXY UNKNOWN\r\nx").unwrap().unwrap();
        assert_eq!((length, peer), (15, ProxiedPeer::Local));
    }

    #[test]
    fn version_2_headers_with_tlvs_and_local_commands() {
        let mut input = v2_header(1, [203, 0, 113, 9], 51000, 40);
        let header_length = input.len();
        input.extend_from_slice(b"<stream>");
        let (length, peer) = parse_header(&input).unwrap().unwrap();
        assert_eq!(length, header_length);
        assert_eq!(
            peer,
            ProxiedPeer::Client("203.0.113.9:51000".parse().unwrap())
        );

        let local = v2_header(0, [0, 0, 0, 0], 0, 0);
        assert_eq!(parse_header(&local).unwrap().unwrap().1, ProxiedPeer::Local);
    }

    #[test]
    fn partial_headers_wait_and_bad_ones_are_refused() {
        assert!(parse_header(b"PROXY TCP4 198.51").unwrap().is_none());
        assert!(parse_header(b"\r\n\r\n\0\r").unwrap().is_none());
        let whole = v2_header(1, [203, 0, 113, 9], 51000, 0);
        assert!(parse_header(&whole[..20]).unwrap().is_none());

        for bad in [
            &b"<?xml version='1.0'?><stream:stream>"[..],
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            &b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n"[..],
            &b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 5222 extra words here\r\n"[..],
        ] {
            assert!(
                matches!(parse_header(bad), Err(ProxyHeaderError::Invalid(_))),
                "{bad:?}"
            );
        }
        let mut long_v1 = b"PROXY TCP4 ".to_vec();
        long_v1.extend(std::iter::repeat_n(b'1', 200));
        assert!(parse_header(&long_v1).is_err());
        let huge = v2_header(1, [203, 0, 113, 9], 51000, 4000);
        assert!(matches!(
            parse_header(&huge[..40]),
            Err(ProxyHeaderError::TooLong)
        ));
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_past_trusted_hops_only() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let balancer: SocketAddr = "10.0.0.2:33000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.1:33000".parse().unwrap();
        let client = |peer, values: &[&str]| trusted.http_client(peer, &forwarded(values)).ip();

        assert_eq!(
            client(balancer, &["203.0.113.5"]),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        // A client that writes its own header: only what our proxy appended counts.
        assert_eq!(
            client(balancer, &["1.2.3.4, 203.0.113.5"]),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        // Two trusted hops, the header split over two lines, ports written.
        assert_eq!(
            client(balancer, &["1.2.3.4, 203.0.113.5:4711", "10.0.0.9"]),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client(balancer, &["[2001:db8::5]:4711"]),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the proxy that forwarded it.
        assert_eq!(client(balancer, &["203.0.113.5, junk"]), balancer.ip());
        assert_eq!(client(balancer, &[]), balancer.ip());
        // Every hop trusted: the left-most.
        assert_eq!(
            client(balancer, &["10.0.0.7, 10.0.0.8"]),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
        // A stranger's header is not believed, nor anyone's when forwarded_for is off.
        assert_eq!(client(stranger, &["203.0.113.5"]), stranger.ip());
        let off = TrustedProxies::new(&["10.0.0.0/8".to_string()], true, false).unwrap();
        assert_eq!(
            off.http_client(balancer, &forwarded(&["203.0.113.5"])),
            balancer
        );
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_read_and_the_stream_after_it_is_left() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(b"PROXY TCP4 198.51.100.7 ").await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            client
                .write_all(b"10.0.0.1 40000 5222\r\n<stream/>")
                .await
                .unwrap();
            client
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let peer = read_header(&mut server).await.unwrap();
        assert_eq!(
            peer,
            ProxiedPeer::Client("198.51.100.7:40000".parse().unwrap())
        );
        let mut rest = [0u8; 9];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"<stream/>");
        drop(writer.await.unwrap());
    }
}
