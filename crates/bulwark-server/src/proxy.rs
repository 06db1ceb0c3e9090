//! PROXY protocol (v1 text and v2 binary) on a listener that sits behind a load balancer.
//!
//! A load balancer such as HAProxy or an AWS NLB can prepend a PROXY header that carries the
//! real client address; the broker then applies per-IP limits, bans and audit records to that
//! address instead of the balancer's.
//!
//! The trust rule: the header is believed only when the TCP peer itself is one of the
//! configured [`TrustedProxies`]. A listener with PROXY protocol enabled serves its trusted
//! proxies and nobody else: a connection from any other address is refused before a single
//! byte is read ([`ProxyError::Untrusted`]), because accepting its header would let anyone
//! pick the address they are judged by, and serving it without a header would make the
//! listener's behaviour depend on what the client chooses to send.
//!
//! [`read_header`] consumes exactly the header and nothing after it, so the MQTT bytes that
//! follow stay in the socket for the connection driver. The framing (how many bytes belong to
//! the header, every limit) is done here; the `ppp` crate parses the complete header bytes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bulwark_acl::Cidr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header the specification allows, CRLF included.
pub(crate) const V1_MAX_LEN: usize = 107;

/// Largest v2 address-and-TLV block accepted. The specification allows 65 535 bytes; the
/// biggest address block (UNIX, 216 bytes) plus the TLVs load balancers send (AWS NLB's VPC
/// endpoint id, HAProxy's SSL details) stay well under this.
pub(crate) const V2_MAX_PAYLOAD: usize = 512;

/// Default for how long a trusted proxy may take to deliver its whole header.
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The v2 signature: the first 12 bytes of every binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Length of the v2 fixed part: signature, version/command, family/protocol, length.
const V2_FIXED_LEN: usize = 16;

/// The source addresses whose PROXY headers are believed: the load balancers in front of the
/// broker.
///
/// Built from entries such as `10.0.0.0/8`, `fd00::/8`, or a bare address (`192.168.1.7`,
/// `::1`) that stands for that single host. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, as a
/// dual-stack socket reports IPv4 clients) matches the IPv4 networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Cidr>,
}

impl TrustedProxies {
    /// Parses every entry; the first bad one gives an error that names it and says what is
    /// wrong. Surrounding whitespace is ignored. An address with bits set beyond its prefix
    /// (`10.0.0.1/8`) is refused as a likely typo.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let networks = entries
            .iter()
            .map(|entry| {
                Cidr::parse(entry).map_err(|why| format!("invalid trusted proxy entry: {why}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { networks })
    }

    /// Whether `ip` lies in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    /// The networks, as configured.
    pub fn networks(&self) -> &[Cidr] {
        &self.networks
    }

    /// Whether no network is listed (then every peer is untrusted).
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// What a valid PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyOutcome {
    /// The proxy relays a TCP client at this address (v1 `TCP4`/`TCP6`, v2 `PROXY` command
    /// over TCP on IPv4 or IPv6).
    Client(SocketAddr),
    /// The connection is the proxy's own (v2 `LOCAL`, as health checks send, v1 `UNKNOWN`, or
    /// v2 `PROXY` with an unspecified family): keep the socket's peer address.
    Local,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// The peer is not a trusted proxy; nothing was read from it.
    Untrusted(SocketAddr),
    /// The first bytes are not a v1 (`PROXY `) or v2 signature.
    NotProxy,
    /// The header is recognised but invalid; the text says what was wrong.
    Malformed(String),
    /// The header is longer than the limit (107 bytes for v1, [`V2_MAX_PAYLOAD`] of addresses
    /// and TLVs for v2).
    TooLong {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The header relays something other than TCP over IPv4 or IPv6 (a UNIX socket, UDP).
    UnsupportedFamily(&'static str),
    /// The connection closed before the header was complete.
    Truncated {
        /// How many header bytes had arrived.
        received: usize,
    },
    /// The header did not arrive in full within the allowed time.
    Timeout(Duration),
    /// Reading from the socket failed.
    Io(std::io::Error),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Untrusted(peer) => write!(
                f,
                "PROXY protocol: {peer} is not a trusted proxy; this listener serves only its \
                 trusted proxies"
            ),
            Self::NotProxy => f.write_str(
                "PROXY protocol: the connection did not start with a PROXY v1 or v2 header",
            ),
            Self::Malformed(why) => write!(f, "PROXY protocol: malformed header: {why}"),
            Self::TooLong { limit } => {
                write!(
                    f,
                    "PROXY protocol: header longer than the {limit}-byte limit"
                )
            }
            Self::UnsupportedFamily(what) => write!(
                f,
                "PROXY protocol: unsupported relayed connection ({what}); only TCP over IPv4 \
                 or IPv6 is served"
            ),
            Self::Truncated { received } => write!(
                f,
                "PROXY protocol: the connection closed after {received} byte(s), before the \
                 header was complete"
            ),
            Self::Timeout(limit) => write!(
                f,
                "PROXY protocol: the header did not arrive within {} ms",
                limit.as_millis()
            ),
            Self::Io(err) => write!(f, "PROXY protocol: read failed: {err}"),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(err) => Some(err),
            _ => None,
        }
    }
}

/// Refuses untrusted peers, then reads the header of a trusted one and returns the address
/// the connection should be judged by: the relayed client's, or `peer` itself for a
/// [`ProxyOutcome::Local`] header.
///
/// An untrusted peer gets [`ProxyError::Untrusted`] without anything being read.
pub(crate) async fn accept<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    trusted: &TrustedProxies,
    timeout: Duration,
) -> Result<SocketAddr, ProxyError> {
    if !trusted.contains(peer.ip()) {
        return Err(ProxyError::Untrusted(peer));
    }
    match read_header(stream, timeout).await? {
        ProxyOutcome::Client(client) => Ok(client),
        ProxyOutcome::Local => Ok(peer),
    }
}

/// Reads one PROXY header (v1 or v2), exactly its bytes and none after it, within `timeout`.
///
/// Reads are sized so that they can only cover bytes a valid header still has to contain;
/// a malformed header may leave the stream at any point, and the connection is then to be
/// closed.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxyOutcome, ProxyError> {
    match tokio::time::timeout(timeout, read_header_untimed(stream)).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => Err(ProxyError::Timeout(timeout)),
    }
}

/// [`read_header`] without its time limit: the first byte picks the version.
async fn read_header_untimed<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxyOutcome, ProxyError> {
    let mut first = [0_u8; 1];
    fill(stream, &mut first, 0).await?;
    match first {
        [b'P'] => read_v1(stream).await,
        [b'\r'] => read_v2(stream).await,
        _ => Err(ProxyError::NotProxy),
    }
}

/// Fills `buf` from the stream; `before` header bytes were read earlier (for the error when
/// the peer closes).
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    before: usize,
) -> Result<(), ProxyError> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = buf.get_mut(filled..).unwrap_or_default();
        match stream.read(rest).await {
            Ok(0) => {
                return Err(ProxyError::Truncated {
                    received: before.saturating_add(filled),
                });
            }
            Ok(n) => filled = filled.saturating_add(n),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ProxyError::Io(err)),
        }
    }
    Ok(())
}

/// Reads the rest of a v1 header whose `P` has been read.
async fn read_v1<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyOutcome, ProxyError> {
    let mut line = [0_u8; V1_MAX_LEN];
    line[0] = b'P';
    let mut len = 1;

    // "ROXY " then the protocol's first four letters.
    read_more(stream, &mut line, &mut len, 5).await?;
    if line.get(..len) != Some(b"PROXY ".as_slice()) {
        return Err(ProxyError::NotProxy);
    }
    read_more(stream, &mut line, &mut len, 4).await?;
    // The shortest rest a valid header can have for each protocol, so it is read at once.
    let shortest_rest = match line.get(6..10) {
        Some(b"TCP4") => " 0.0.0.0 0.0.0.0 0 0\r\n".len(),
        Some(b"TCP6") => " :: :: 0 0\r\n".len(),
        Some(b"UNKN") => "OWN\r\n".len(),
        _ => {
            return Err(ProxyError::Malformed(format!(
                "v1 protocol {:?} is none of TCP4, TCP6, UNKNOWN",
                String::from_utf8_lossy(line.get(6..len).unwrap_or_default())
            )));
        }
    };
    read_more(stream, &mut line, &mut len, shortest_rest).await?;

    // Then in steps that cannot pass the CRLF: two bytes, or one after a CR.
    loop {
        let read = line.get(..len).unwrap_or_default();
        if read.contains(&b'\n') {
            break;
        }
        let step = if read.last() == Some(&b'\r') { 1 } else { 2 };
        read_more(stream, &mut line, &mut len, step).await?;
    }

    let read = line.get(..len).unwrap_or_default();
    let Some(body) = read.strip_suffix(b"\r\n") else {
        return Err(ProxyError::Malformed(
            "v1 header line does not end with CRLF".into(),
        ));
    };
    if let Some(bad) = body.iter().find(|&&b| !(b' '..=b'~').contains(&b)) {
        return Err(ProxyError::Malformed(format!(
            "v1 header contains the byte {bad:#04x} (only printable ASCII before the CRLF)"
        )));
    }
    let header = ppp::v1::Header::try_from(read).map_err(|err| {
        ProxyError::Malformed(format!(
            "v1 header {:?}: {}",
            String::from_utf8_lossy(body),
            v1_error(&err)
        ))
    })?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            ProxyOutcome::Client(SocketAddr::from((a.source_address, a.source_port)))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            ProxyOutcome::Client(SocketAddr::from((a.source_address, a.source_port)))
        }
        ppp::v1::Addresses::Unknown => ProxyOutcome::Local,
    })
}

/// What a v1 parse error means, in words fit for a log line (the parser's own messages for
/// the line ending contain a raw CRLF).
fn v1_error(err: &ppp::v1::BinaryParseError) -> &'static str {
    use ppp::v1::{BinaryParseError, ParseError};
    match err {
        BinaryParseError::InvalidUtf8(_) => "not valid UTF-8",
        BinaryParseError::Parse(err) => match err {
            ParseError::InvalidPrefix | ParseError::MissingPrefix | ParseError::Partial => {
                "does not start with a complete \"PROXY \""
            }
            ParseError::MissingNewLine | ParseError::InvalidSuffix => {
                "unexpected text before the CRLF (a v1 header has exactly six fields)"
            }
            ParseError::MissingProtocol | ParseError::InvalidProtocol => {
                "the protocol is none of TCP4, TCP6, UNKNOWN"
            }
            ParseError::HeaderTooLong => "longer than 107 bytes",
            ParseError::MissingSourceAddress => "missing the source address",
            ParseError::MissingDestinationAddress => "missing the destination address",
            ParseError::MissingSourcePort => "missing the source port",
            ParseError::MissingDestinationPort => "missing the destination port",
            ParseError::InvalidSourceAddress(_) => {
                "the source address is not an address of the protocol's family"
            }
            ParseError::InvalidDestinationAddress(_) => {
                "the destination address is not an address of the protocol's family"
            }
            ParseError::InvalidSourcePort(_) => {
                "the source port is not a number from 0 to 65535 without leading zeros"
            }
            ParseError::InvalidDestinationPort(_) => {
                "the destination port is not a number from 0 to 65535 without leading zeros"
            }
        },
    }
}

/// Reads `count` more bytes of a v1 line into `line[*len..]`; a line that would pass the
/// 107-byte limit is refused.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    line: &mut [u8; V1_MAX_LEN],
    len: &mut usize,
    count: usize,
) -> Result<(), ProxyError> {
    let end = len.saturating_add(count);
    let Some(dst) = line.get_mut(*len..end) else {
        return Err(ProxyError::TooLong { limit: V1_MAX_LEN });
    };
    fill(stream, dst, *len).await?;
    *len = end;
    Ok(())
}

/// Reads the rest of a v2 header whose first byte (`\r`) has been read.
async fn read_v2<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyOutcome, ProxyError> {
    let mut fixed = [0_u8; V2_FIXED_LEN];
    fixed[0] = b'\r';
    let (signature, rest) = fixed.split_at_mut(V2_SIGNATURE.len());
    fill(stream, signature.get_mut(1..).unwrap_or_default(), 1).await?;
    if signature != V2_SIGNATURE.as_slice() {
        return Err(ProxyError::NotProxy);
    }
    fill(stream, rest, V2_SIGNATURE.len()).await?;
    let [.., ver_cmd, fam_proto, len_hi, len_lo] = fixed;

    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(ProxyError::Malformed(format!(
            "v2 version {version} (the binary format is version 2)"
        )));
    }
    let local = match ver_cmd & 0x0F {
        0x0 => true,
        0x1 => false,
        other => {
            return Err(ProxyError::Malformed(format!(
                "v2 command {other:#x} is neither LOCAL (0) nor PROXY (1)"
            )));
        }
    };
    let length = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if length > V2_MAX_PAYLOAD {
        return Err(ProxyError::TooLong {
            limit: V2_MAX_PAYLOAD,
        });
    }

    if local {
        // LOCAL: the proxy speaks for itself; the specification says the address block,
        // family included, is to be ignored.
        let mut discard = [0_u8; V2_MAX_PAYLOAD];
        fill(
            stream,
            discard.get_mut(..length).unwrap_or_default(),
            V2_FIXED_LEN,
        )
        .await?;
        return Ok(ProxyOutcome::Local);
    }

    // The only family/protocol pairs the specification defines; others must be refused.
    let needed = match fam_proto {
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        0x12 | 0x22 => return Err(ProxyError::UnsupportedFamily("UDP")),
        0x31 | 0x32 => return Err(ProxyError::UnsupportedFamily("UNIX socket")),
        other => {
            return Err(ProxyError::Malformed(format!(
                "v2 address family and protocol byte {other:#04x} is not defined"
            )));
        }
    };
    if length < needed {
        return Err(ProxyError::Malformed(format!(
            "v2 length {length} cannot hold the {needed} bytes of addresses"
        )));
    }

    let mut header = Vec::with_capacity(V2_FIXED_LEN.saturating_add(length));
    header.extend_from_slice(&fixed);
    header.resize(V2_FIXED_LEN.saturating_add(length), 0);
    fill(
        stream,
        header.get_mut(V2_FIXED_LEN..).unwrap_or_default(),
        V2_FIXED_LEN,
    )
    .await?;

    let parsed = ppp::v2::Header::try_from(header.as_slice())
        .map_err(|err| ProxyError::Malformed(format!("v2: {err}")))?;
    for tlv in parsed.tlvs() {
        tlv.map_err(|err| ProxyError::Malformed(format!("v2 TLVs: {err}")))?;
    }
    match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => Ok(ProxyOutcome::Client(SocketAddr::from((
            a.source_address,
            a.source_port,
        )))),
        ppp::v2::Addresses::IPv6(a) => Ok(ProxyOutcome::Client(SocketAddr::from((
            a.source_address,
            a.source_port,
        )))),
        // Like v1 UNKNOWN: the proxy does not know the client; keep the socket's address.
        ppp::v2::Addresses::Unspecified => Ok(ProxyOutcome::Local),
        ppp::v2::Addresses::Unix(_) => Err(ProxyError::UnsupportedFamily("UNIX socket")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code"
    )]

    use super::*;
    use std::time::Instant;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    const LIMIT: Duration = Duration::from_secs(5);
    /// The start of an MQTT CONNECT, which must still be in the socket after the header.
    const MQTT: &[u8] = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c";

    /// A connected pair of TCP sockets on 127.0.0.1: (client side, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client = client.unwrap();
        client.set_nodelay(true).unwrap();
        (client, accepted.unwrap().0)
    }

    /// Sends `header` followed by [`MQTT`] and reads the header. On success, checks that the
    /// next bytes in the socket are exactly [`MQTT`] (nothing over-read, nothing left over).
    async fn read_over_tcp(header: &[u8]) -> Result<ProxyOutcome, ProxyError> {
        let (mut client, mut server) = pair().await;
        client.write_all(header).await.unwrap();
        client.write_all(MQTT).await.unwrap();
        client.shutdown().await.unwrap();
        let outcome = read_header(&mut server, LIMIT).await;
        if outcome.is_ok() {
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, MQTT, "bytes after the header");
        }
        outcome
    }

    /// A v2 header with the length field set to the payload's length.
    fn v2(ver_cmd: u8, fam_proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam_proto);
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn v4_payload() -> Vec<u8> {
        let mut p = vec![203, 0, 113, 9, 10, 0, 0, 1];
        p.extend_from_slice(&51_000_u16.to_be_bytes());
        p.extend_from_slice(&1883_u16.to_be_bytes());
        p
    }

    fn v6_payload() -> Vec<u8> {
        let src: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut p = src.octets().to_vec();
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&40_000_u16.to_be_bytes());
        p.extend_from_slice(&8883_u16.to_be_bytes());
        p
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn v1_tcp4_and_the_mqtt_bytes_after_it() {
        let outcome = read_over_tcp(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 1883\r\n").await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("203.0.113.9:51000"))
        );
    }

    #[tokio::test]
    async fn v1_tcp4_shortest_and_longest_forms() {
        let outcome = read_over_tcp(b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n").await;
        assert_eq!(outcome.unwrap(), ProxyOutcome::Client(sa("0.0.0.0:0")));
        let longest = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        let outcome = read_over_tcp(longest).await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("255.255.255.255:65535"))
        );
    }

    #[tokio::test]
    async fn v1_tcp6() {
        let outcome = read_over_tcp(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8883\r\n").await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("[2001:db8::7]:40000"))
        );
        let outcome = read_over_tcp(b"PROXY TCP6 :: :: 0 0\r\n").await;
        assert_eq!(outcome.unwrap(), ProxyOutcome::Client(sa("[::]:0")));
    }

    #[tokio::test]
    async fn v1_unknown_is_local() {
        assert_eq!(
            read_over_tcp(b"PROXY UNKNOWN\r\n").await.unwrap(),
            ProxyOutcome::Local
        );
        // The specification's worst case: 107 bytes, whatever follows UNKNOWN is ignored.
        let worst = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(worst.len(), V1_MAX_LEN);
        assert_eq!(read_over_tcp(worst).await.unwrap(), ProxyOutcome::Local);
    }

    #[tokio::test]
    async fn v2_proxy_inet_and_inet6() {
        let outcome = read_over_tcp(&v2(0x21, 0x11, &v4_payload())).await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("203.0.113.9:51000"))
        );
        let outcome = read_over_tcp(&v2(0x21, 0x21, &v6_payload())).await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("[2001:db8::7]:40000"))
        );
    }

    #[tokio::test]
    async fn v2_local_is_local_and_its_block_is_consumed() {
        assert_eq!(
            read_over_tcp(&v2(0x20, 0x00, &[])).await.unwrap(),
            ProxyOutcome::Local
        );
        // LOCAL ignores the family and addresses but still consumes them.
        assert_eq!(
            read_over_tcp(&v2(0x20, 0x11, &v4_payload())).await.unwrap(),
            ProxyOutcome::Local
        );
    }

    #[tokio::test]
    async fn v2_proxy_unspecified_is_local() {
        assert_eq!(
            read_over_tcp(&v2(0x21, 0x00, &[])).await.unwrap(),
            ProxyOutcome::Local
        );
    }

    #[tokio::test]
    async fn v2_tlvs_after_the_addresses_are_consumed() {
        let mut payload = v4_payload();
        // An AWS-style custom TLV (0xEA) carrying a VPC endpoint id, then a NOOP with padding.
        let vpce = b"\x01vpce-0123456789abcdef0";
        payload.push(0xEA);
        payload.extend_from_slice(&u16::try_from(vpce.len()).unwrap().to_be_bytes());
        payload.extend_from_slice(vpce);
        payload.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]);
        let outcome = read_over_tcp(&v2(0x21, 0x11, &payload)).await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("203.0.113.9:51000"))
        );
    }

    #[tokio::test]
    async fn v2_payload_at_the_cap_is_accepted() {
        let mut payload = v4_payload();
        let pad = V2_MAX_PAYLOAD - payload.len() - 3;
        payload.extend_from_slice(&[0x04]);
        payload.extend_from_slice(&u16::try_from(pad).unwrap().to_be_bytes());
        payload.resize(V2_MAX_PAYLOAD, 0);
        let outcome = read_over_tcp(&v2(0x21, 0x11, &payload)).await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("203.0.113.9:51000"))
        );
    }

    fn assert_malformed(outcome: Result<ProxyOutcome, ProxyError>, needle: &str) {
        match outcome {
            Err(ProxyError::Malformed(why)) => assert!(
                why.contains(needle),
                "expected {needle:?} in the message, got {why:?}"
            ),
            other => panic!("expected Malformed({needle:?}), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn v1_over_107_bytes_is_too_long() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(120, b'a');
        long.extend_from_slice(b"\r\n");
        let outcome = read_over_tcp(&long).await;
        assert!(
            matches!(outcome, Err(ProxyError::TooLong { limit: 107 })),
            "{outcome:?}"
        );
        // 106 bytes and no CR yet: the CRLF cannot fit any more.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(106, b'a');
        long.extend_from_slice(b"\r\n");
        let outcome = read_over_tcp(&long).await;
        assert!(
            matches!(outcome, Err(ProxyError::TooLong { limit: 107 })),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn v1_without_crlf_is_refused() {
        assert_malformed(
            read_over_tcp(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 1883\n").await,
            "CRLF",
        );
        assert_malformed(
            read_over_tcp(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 1883\rX\n").await,
            "CRLF",
        );
        // Closed before the end of the line.
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 1883")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        let outcome = read_header(&mut server, LIMIT).await;
        assert!(
            matches!(outcome, Err(ProxyError::Truncated { received }) if received >= 40),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn v1_bad_addresses_and_ports_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"PROXY TCP4 203.0.113.999 10.0.0.1 51000 1883\r\n",
                "source",
            ),
            (
                b"PROXY TCP4 203.0.113.9 10.0.0.x 51000 1883\r\n",
                "destination",
            ),
            (
                b"PROXY TCP4 2001:db8::7 2001:db8::1 51000 1883\r\n",
                "source",
            ),
            (b"PROXY TCP6 203.0.113.9 10.0.0.1 51000 1883\r\n", "source"),
            (b"PROXY TCP4 203.0.113.9 10.0.0.1 65536 1883\r\n", "port"),
            (b"PROXY TCP4 203.0.113.9 10.0.0.1 -1 1883\r\n", "port"),
            (b"PROXY TCP4 203.0.113.9 10.0.0.1 051000 1883\r\n", "port"),
            (b"PROXY TCP4 203.0.113.9 10.0.0.1 51000\r\n", "port"),
            (
                b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 1883 extra\r\n",
                "six fields",
            ),
            (
                b"PROXY TCP4  203.0.113.9 10.0.0.1 51000 1883\r\n",
                "source address",
            ),
            (
                b"PROXY tcp4 203.0.113.9 10.0.0.1 51000 1883\r\n",
                "protocol",
            ),
            (
                b"PROXY TCP5 203.0.113.9 10.0.0.1 51000 1883\r\n",
                "protocol",
            ),
            (b"PROXY TCP4 203.0.113.9\t10.0.0.1 51000 1883\r\n", "0x09"),
            (
                b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 \xc3\xa91883\r\n",
                "0xc3",
            ),
        ];
        for (header, needle) in cases {
            let outcome = read_over_tcp(header).await;
            match outcome {
                Err(ProxyError::Malformed(why)) => assert!(
                    why.contains(needle),
                    "{:?}: expected {needle:?} in {why:?}",
                    String::from_utf8_lossy(header)
                ),
                other => panic!("{:?}: got {other:?}", String::from_utf8_lossy(header)),
            }
        }
    }

    #[tokio::test]
    async fn v2_bad_signature_is_not_proxy() {
        let mut header = v2(0x21, 0x11, &v4_payload());
        header[10] = b'X';
        let outcome = read_over_tcp(&header).await;
        assert!(matches!(outcome, Err(ProxyError::NotProxy)), "{outcome:?}");
    }

    #[tokio::test]
    async fn v2_version_1_is_refused() {
        assert_malformed(
            read_over_tcp(&v2(0x11, 0x11, &v4_payload())).await,
            "version 1",
        );
    }

    #[tokio::test]
    async fn v2_bad_command_family_and_length_are_refused() {
        assert_malformed(
            read_over_tcp(&v2(0x22, 0x11, &v4_payload())).await,
            "command",
        );
        assert_malformed(read_over_tcp(&v2(0x21, 0x41, &v4_payload())).await, "0x41");
        assert_malformed(read_over_tcp(&v2(0x21, 0x10, &v4_payload())).await, "0x10");
        assert_malformed(read_over_tcp(&v2(0x21, 0x11, &[1, 2, 3])).await, "length 3");
        assert_malformed(read_over_tcp(&v2(0x21, 0x21, &v4_payload())).await, "36");
    }

    #[tokio::test]
    async fn v2_broken_tlvs_are_refused() {
        let mut payload = v4_payload();
        payload.extend_from_slice(&[0x04, 0x00, 0x09, 0, 0]);
        assert_malformed(read_over_tcp(&v2(0x21, 0x11, &payload)).await, "TLV");
        let mut payload = v4_payload();
        payload.extend_from_slice(&[0x04, 0x00]);
        assert_malformed(read_over_tcp(&v2(0x21, 0x11, &payload)).await, "TLV");
    }

    #[tokio::test]
    async fn v2_length_over_the_cap_is_refused_before_reading_it() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11]);
        header.extend_from_slice(&513_u16.to_be_bytes());
        // Only the fixed part is sent: the refusal must not wait for the announced bytes.
        let (mut client, mut server) = pair().await;
        client.write_all(&header).await.unwrap();
        let outcome = read_header(&mut server, LIMIT).await;
        assert!(
            matches!(outcome, Err(ProxyError::TooLong { limit: 512 })),
            "{outcome:?}"
        );
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        let outcome = read_over_tcp(&header).await;
        assert!(
            matches!(outcome, Err(ProxyError::TooLong { limit: 512 })),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn v2_unix_and_udp_are_unsupported() {
        let unix = vec![0_u8; 216];
        for fam_proto in [0x31, 0x32] {
            let outcome = read_over_tcp(&v2(0x21, fam_proto, &unix)).await;
            assert!(
                matches!(outcome, Err(ProxyError::UnsupportedFamily("UNIX socket"))),
                "{outcome:?}"
            );
        }
        let outcome = read_over_tcp(&v2(0x21, 0x12, &v4_payload())).await;
        assert!(
            matches!(outcome, Err(ProxyError::UnsupportedFamily("UDP"))),
            "{outcome:?}"
        );
        let outcome = read_over_tcp(&v2(0x21, 0x22, &v6_payload())).await;
        assert!(
            matches!(outcome, Err(ProxyError::UnsupportedFamily("UDP"))),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn plain_mqtt_is_not_a_header() {
        let (mut client, mut server) = pair().await;
        client.write_all(MQTT).await.unwrap();
        let outcome = read_header(&mut server, LIMIT).await;
        assert!(matches!(outcome, Err(ProxyError::NotProxy)), "{outcome:?}");
        for start in [&b"PUT / HTTP/1.1\r\n"[..], b"\r\n\r\nGET"] {
            let outcome = read_over_tcp(start).await;
            assert!(matches!(outcome, Err(ProxyError::NotProxy)), "{outcome:?}");
        }
    }

    #[tokio::test]
    async fn closing_at_once_is_truncated_at_zero() {
        let (client, mut server) = pair().await;
        drop(client);
        let outcome = read_header(&mut server, LIMIT).await;
        assert!(
            matches!(outcome, Err(ProxyError::Truncated { received: 0 })),
            "{outcome:?}"
        );
    }

    /// Writes `bytes` one at a time with pauses, then [`MQTT`], and reads the header.
    async fn trickle(bytes: Vec<u8>) -> (Result<ProxyOutcome, ProxyError>, Vec<u8>) {
        let (mut client, mut server) = pair().await;
        let writer = tokio::spawn(async move {
            for b in bytes {
                client.write_all(&[b]).await.unwrap();
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            client.write_all(MQTT).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let outcome = read_header(&mut server, LIMIT).await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        writer.await.unwrap();
        (outcome, rest)
    }

    #[tokio::test]
    async fn a_header_one_byte_at_a_time() {
        let (outcome, rest) =
            trickle(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8883\r\n".to_vec()).await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("[2001:db8::7]:40000"))
        );
        assert_eq!(rest, MQTT);
        let (outcome, rest) = trickle(v2(0x21, 0x11, &v4_payload())).await;
        assert_eq!(
            outcome.unwrap(),
            ProxyOutcome::Client(sa("203.0.113.9:51000"))
        );
        assert_eq!(rest, MQTT);
    }

    #[tokio::test]
    async fn a_stalled_header_times_out() {
        for partial in [&b"PROXY TCP4 203.0.113.9 10.0"[..], &V2_SIGNATURE[..7]] {
            let (mut client, mut server) = pair().await;
            client.write_all(partial).await.unwrap();
            let limit = Duration::from_millis(200);
            let started = Instant::now();
            let outcome = read_header(&mut server, limit).await;
            assert!(
                matches!(outcome, Err(ProxyError::Timeout(l)) if l == limit),
                "{outcome:?}"
            );
            let took = started.elapsed();
            assert!(took >= limit && took < LIMIT, "took {took:?}");
            drop(client);
        }
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        TrustedProxies::parse(&entries).unwrap()
    }

    #[tokio::test]
    async fn an_untrusted_peer_is_refused_without_reading() {
        let (mut client, mut server) = pair().await;
        let peer = server.peer_addr().unwrap();
        let mut sent = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 1883\r\n".to_vec();
        sent.extend_from_slice(MQTT);
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        let outcome = accept(&mut server, peer, &trusted(&["10.0.0.0/8", "::1"]), LIMIT).await;
        assert!(
            matches!(outcome, Err(ProxyError::Untrusted(p)) if p == peer),
            "{outcome:?}"
        );
        let mut untouched = Vec::new();
        server.read_to_end(&mut untouched).await.unwrap();
        assert_eq!(untouched, sent);
    }

    #[tokio::test]
    async fn a_trusted_peer_gets_the_relayed_address_or_its_own() {
        let proxies = trusted(&["127.0.0.0/8"]);
        let (mut client, mut server) = pair().await;
        let peer = server.peer_addr().unwrap();
        client
            .write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 1883\r\n")
            .await
            .unwrap();
        client.write_all(MQTT).await.unwrap();
        let addr = accept(&mut server, peer, &proxies, LIMIT).await.unwrap();
        assert_eq!(addr, sa("203.0.113.9:51000"));
        let mut rest = vec![0; MQTT.len()];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, MQTT);

        let (mut client, mut server) = pair().await;
        let peer = server.peer_addr().unwrap();
        client.write_all(&v2(0x20, 0x00, &[])).await.unwrap();
        assert_eq!(
            accept(&mut server, peer, &proxies, LIMIT).await.unwrap(),
            peer
        );

        // A trusted peer that sends no header is refused too.
        let (mut client, mut server) = pair().await;
        let peer = server.peer_addr().unwrap();
        client.write_all(MQTT).await.unwrap();
        let outcome = accept(&mut server, peer, &proxies, LIMIT).await;
        assert!(matches!(outcome, Err(ProxyError::NotProxy)), "{outcome:?}");
    }

    /// Arbitrary bytes behind header-like prefixes always give an answer, never a panic or a
    /// hang (the writer closes, so every read ends).
    #[tokio::test]
    async fn arbitrary_input_never_panics() {
        let prefixes: [&[u8]; 5] = [
            b"",
            b"PROXY ",
            b"PROXY TCP4 ",
            b"PROXY UNKNOWN",
            &V2_SIGNATURE[..],
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for round in 0..3000 {
            let mut input = prefixes[round % prefixes.len()].to_vec();
            let extra = usize::try_from(next() % 140).unwrap();
            for _ in 0..extra {
                let r = next();
                // Mostly bytes that header grammar uses, so parsing gets deep.
                let byte = match r % 4 {
                    0 => b"0123456789.: \r\n"[usize::try_from((r >> 8) % 15).unwrap()],
                    1 => [0x20, 0x21, 0x11, 0x00, 0x0C][usize::try_from((r >> 8) % 5).unwrap()],
                    _ => (r >> 16) as u8,
                };
                input.push(byte);
            }
            let (mut writer, mut reader) = tokio::io::duplex(1024);
            writer.write_all(&input).await.unwrap();
            drop(writer);
            let outcome = read_header(&mut reader, LIMIT).await;
            assert!(!matches!(outcome, Err(ProxyError::Timeout(_))), "{input:?}");
            match outcome {
                Ok(_) => accepted += 1,
                Err(err) => assert!(!err.to_string().is_empty()),
            }
        }
        assert!(accepted < 3000);
    }

    #[test]
    fn trusted_proxies_parse_good_entries() {
        let proxies = trusted(&[
            "10.0.0.0/8",
            "192.168.1.7",
            "::1",
            "fd00::/8",
            " 0.0.0.0/0 ",
        ]);
        let shown: Vec<String> = proxies.networks.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.0/8",
                "192.168.1.7/32",
                "::1/128",
                "fd00::/8",
                "0.0.0.0/0"
            ]
        );
        assert!(!proxies.is_empty());
        assert!(TrustedProxies::parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn trusted_proxies_refuse_bad_entries_by_name() {
        let cases = [
            ("10.0.0.0/33", "over 32"),
            ("::/129", "over 128"),
            ("x", "not an IPv4 or IPv6 address"),
            ("1.2.3.4/-1", "not a number"),
            ("1.2.3.4/+8", "not a number"),
            ("1.2.3.4/", "not a number"),
            ("1.2.3.4/8/8", "not a number"),
            ("1.2.3.4/0008", "not a number"),
            ("10.0.0.1/8", "10.0.0.0/8"),
            ("fd00::1/8", "fd00::/8"),
            ("", "not an IPv4 or IPv6 address"),
            ("10.0.0.0 /8", "not an IPv4 or IPv6 address"),
        ];
        for (entry, needle) in cases {
            let entries = vec!["127.0.0.1".to_owned(), entry.to_owned()];
            let err = TrustedProxies::parse(&entries).unwrap_err();
            assert!(err.contains(&format!("{entry:?}")), "{entry}: {err}");
            assert!(
                err.contains(needle),
                "{entry}: expected {needle:?} in {err}"
            );
        }
    }

    #[test]
    fn trusted_proxies_contains_edges() {
        let proxies = trusted(&["10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for inside in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.7",
            "fd00::",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::1",
            "::ffff:10.1.2.3",
            "::ffff:192.168.1.7",
        ] {
            assert!(proxies.contains(ip(inside)), "{inside} should be trusted");
        }
        for outside in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.1.6",
            "192.168.1.8",
            "fc00::1",
            "fe00::",
            "::2",
            "::ffff:11.0.0.0",
            // IPv4-compatible (not mapped) addresses are plain IPv6.
            "::10.0.0.1",
            "127.0.0.1",
        ] {
            assert!(
                !proxies.contains(ip(outside)),
                "{outside} should not be trusted"
            );
        }
        assert!(!trusted(&[]).contains(ip("10.0.0.1")));
        let everyone_v4 = trusted(&["0.0.0.0/0"]);
        assert!(everyone_v4.contains(ip("255.255.255.255")));
        assert!(everyone_v4.contains(ip("::ffff:1.2.3.4")));
        assert!(!everyone_v4.contains(ip("2001:db8::1")));
        // A mapped network entry matches a plain IPv4 peer as well.
        let mapped = trusted(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(mapped.contains(ip("::ffff:10.9.9.9")));
        assert!(!mapped.contains(ip("11.0.0.1")));
    }

    #[test]
    fn errors_display_what_happened() {
        let peer = sa("198.51.100.4:5000");
        assert!(
            ProxyError::Untrusted(peer)
                .to_string()
                .contains("198.51.100.4:5000")
        );
        assert!(
            ProxyError::TooLong { limit: 512 }
                .to_string()
                .contains("512")
        );
        assert!(
            ProxyError::UnsupportedFamily("UDP")
                .to_string()
                .contains("UDP")
        );
        assert!(
            ProxyError::Timeout(Duration::from_millis(250))
                .to_string()
                .contains("250 ms")
        );
        assert!(
            ProxyError::Truncated { received: 3 }
                .to_string()
                .contains('3')
        );
        assert!(DEFAULT_HEADER_TIMEOUT > Duration::ZERO);
    }
}
