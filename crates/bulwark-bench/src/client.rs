//! One MQTT client connection: TCP or TLS, the CONNECT/CONNACK and SUBSCRIBE/SUBACK
//! handshakes, and the non-blocking read and write steps the scenario loops are built from.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bulwark_proto::{
    ClientId, Connect, Decoder, DecoderLimits, Disconnect, Encode, Encoder, MqttString, Packet,
    ProtocolVersion, QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions, TopicFilter,
};
use bytes::{Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{BenchError, ConnectOptions};

/// How long the CONNACK, SUBACK and the broker's close after DISCONNECT may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to the broker.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where to connect and how.
#[derive(Clone)]
pub(crate) struct Target {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Local address to connect from; `None`: the system's choice.
    source: Option<IpAddr>,
    /// Close with a reset (`SO_LINGER` 0) rather than a FIN, so that connections the loader
    /// closes first leave no TIME_WAIT behind on its side.
    reset_on_close: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("source", &self.source)
            .finish()
    }
}

impl Target {
    /// A target; with `ca`, TLS verified against the certificate authorities in that PEM file,
    /// the host name being the server name. With `resume`, the connections made through this
    /// target (and its clones) share one session cache and resume earlier sessions; without,
    /// every connection does a full handshake.
    pub(crate) fn new(
        host: &str,
        port: u16,
        ca: Option<&Path>,
        resume: bool,
    ) -> Result<Self, BenchError> {
        let tls = match ca {
            Some(ca) => {
                let name = ServerName::try_from(host.to_owned()).map_err(|err| {
                    BenchError::Tls(format!("{host:?} is not a valid TLS server name: {err}"))
                })?;
                Some((tls_connector(ca, resume)?, name))
            }
            None => None,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            source: None,
            reset_on_close: false,
        })
    }

    /// The clients' target: the broker of `options`, TLS as configured there, connected to
    /// from its source address.
    pub(crate) fn for_clients(options: &ConnectOptions) -> Result<Self, BenchError> {
        Ok(Self::new(
            &options.host,
            options.port,
            options.tls_ca.as_deref(),
            options.tls_resume,
        )?
        .connecting_from(options.source))
    }

    /// The same target, connected to from `source` (`None`: the system's choice).
    pub(crate) fn connecting_from(mut self, source: Option<IpAddr>) -> Self {
        self.source = source;
        self
    }

    /// The same target, its connections closed with a reset (what an attacker does: no
    /// TIME_WAIT, so thousands of connections a second never run out of local ports).
    pub(crate) fn resetting(mut self) -> Self {
        self.reset_on_close = true;
        self
    }

    /// Whether connections use TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a TCP connection, from the source address if one is set.
    pub(crate) async fn open_tcp(&self) -> Result<TcpStream, BenchError> {
        let context = || format!("connect to {}:{}", self.host, self.port);
        let tcp = match self.source {
            None => TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|err| BenchError::io(context(), err))?,
            Some(source) => {
                let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
                    .await
                    .map_err(|err| BenchError::io(context(), err))?
                    .find(|addr| addr.is_ipv4() == source.is_ipv4())
                    .ok_or_else(|| {
                        BenchError::Setup(format!(
                            "{} has no address of the family of the source address {source}",
                            self.host
                        ))
                    })?;
                let socket = if source.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(|err| BenchError::io("create a socket", err))?;
                socket
                    .bind(SocketAddr::new(source, 0))
                    .map_err(|err| BenchError::io(format!("bind to {source}"), err))?;
                socket
                    .connect(addr)
                    .await
                    .map_err(|err| BenchError::io(format!("{} from {source}", context()), err))?
            }
        };
        if self.reset_on_close {
            tcp.set_zero_linger()
                .map_err(|err| BenchError::io("set SO_LINGER", err))?;
        }
        Ok(tcp)
    }

    /// Opens a connection (and completes the TLS handshake).
    pub(crate) async fn open(&self) -> Result<Stream, BenchError> {
        let tcp = self.open_tcp().await?;
        // The load generator batches its own writes; Nagle would only add delay.
        tcp.set_nodelay(true)
            .map_err(|err| BenchError::io("set TCP_NODELAY", err))?;
        match &self.tls {
            None => Ok(Stream::Tcp(tcp)),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|err| BenchError::Tls(format!("TLS handshake: {err}")))?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }
}

/// A client TLS configuration (offering TLS 1.3 and 1.2, the ring provider's safe defaults)
/// that trusts the certificates in the PEM file `ca`. With `resume`, rustls's in-memory session
/// cache (TLS 1.3 tickets, TLS 1.2 session IDs and tickets); without, no resumption at all, so
/// that each handshake is a full one (certificate verification and key exchange included).
fn tls_connector(ca: &Path, resume: bool) -> Result<TlsConnector, BenchError> {
    let pem =
        std::fs::read(ca).map_err(|err| BenchError::io(format!("read {}", ca.display()), err))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|err| BenchError::Tls(format!("parse {}: {err}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|err| BenchError::Tls(format!("{}: {err}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(BenchError::Tls(format!(
            "{} holds no PEM certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| BenchError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What every CONNECT of a run carries.
#[derive(Debug, Clone)]
pub(crate) struct ConnectParams {
    pub(crate) version: ProtocolVersion,
    pub(crate) keep_alive: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// The QoS the scenario needs: a broker whose Maximum QoS is lower is an error.
    pub(crate) qos: QoS,
    /// A persistent session (5.0: expiry 3600 s with Clean Start; 3.1.1: clean session off).
    pub(crate) persistent: bool,
}

impl ConnectParams {
    /// The CONNECT of `options` for a scenario at `qos`, with a clean session.
    pub(crate) fn new(options: &ConnectOptions, qos: QoS) -> Self {
        Self {
            version: options.version,
            keep_alive: options.keep_alive,
            username: options.username.clone(),
            password: options.password.clone(),
            qos,
            persistent: false,
        }
    }
}

/// A connected MQTT client. The fields are public to the crate so that a scenario loop can
/// borrow the read and the write side in different branches of one `select!`.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) rd: ReadHalf<Stream>,
    pub(crate) wr: WriteHalf<Stream>,
    pub(crate) dec: Decoder,
    pub(crate) enc: Encoder,
    /// Encoded packets waiting to be written, all in one buffer: one write per wake-up.
    pub(crate) out: BytesMut,
    /// Written but not yet flushed (TLS buffers records until flushed).
    pub(crate) dirty: bool,
    /// The broker's Receive Maximum (65535 when it sends none, and always in 3.1.1).
    pub(crate) receive_maximum: u16,
    /// Bytes reserved for each read.
    read_chunk: usize,
}

impl Client {
    /// Connects, sends CONNECT and waits for a successful CONNACK. Returns the client and the
    /// time from writing CONNECT to reading CONNACK.
    pub(crate) async fn connect(
        target: &Target,
        params: &ConnectParams,
        client_id: &str,
        read_chunk: usize,
    ) -> Result<(Self, Duration), BenchError> {
        let stream = target.open().await?;
        let (rd, wr) = tokio::io::split(stream);
        let mut client = Self {
            rd,
            wr,
            dec: Decoder::client(params.version, DecoderLimits::PROTOCOL),
            enc: Encoder::new(params.version),
            out: BytesMut::new(),
            dirty: false,
            receive_maximum: u16::MAX,
            read_chunk,
        };
        let mut connect = Connect::new(
            params.version,
            ClientId::new(client_id).map_err(|err| BenchError::Setup(err.to_string()))?,
        );
        connect.clean_start = !params.persistent || params.version.is_v5();
        connect.keep_alive = params.keep_alive;
        if params.version.is_v5() {
            connect.properties.session_expiry_interval =
                Some(if params.persistent { 3_600 } else { 0 });
        }
        if let Some(username) = &params.username {
            connect.username =
                Some(MqttString::new(username).map_err(|err| BenchError::Setup(err.to_string()))?);
        }
        if let Some(password) = &params.password {
            connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        }
        client.encode(&connect)?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        client.flush_until(deadline).await?;
        let sent = Instant::now();
        let connack = match client.next_packet(deadline, "CONNACK").await? {
            Packet::ConnAck(connack) => connack,
            other => {
                return Err(BenchError::Protocol(format!(
                    "expected CONNACK, got {:?}",
                    other.packet_type()
                )));
            }
        };
        let latency = sent.elapsed();
        if connack.reason_code.is_error() {
            return Err(BenchError::Refused(format!(
                "CONNACK {}",
                connack.reason_code
            )));
        }
        let props = &connack.properties;
        if let Some(max) = props.maximum_qos.filter(|&max| max < params.qos) {
            return Err(BenchError::Refused(format!(
                "the broker's Maximum QoS is {}, the run needs {}",
                max.as_u8(),
                params.qos.as_u8()
            )));
        }
        if let Some(max) = props.receive_maximum {
            client.receive_maximum = max.get();
        }
        if let Some(max) = props.maximum_packet_size {
            client.enc.set_max_packet_size(max.get());
        }
        client.dec.set_authenticated();
        Ok((client, latency))
    }

    /// Subscribes to `filter` at `qos` and waits for a SUBACK granting it.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), BenchError> {
        let Some(packet_id) = bulwark_proto::PacketId::new(1) else {
            return Err(BenchError::Setup("packet identifier 1".to_owned()));
        };
        let subscribe = Subscribe {
            packet_id,
            properties: Default::default(),
            subscriptions: vec![Subscription {
                filter: TopicFilter::new(filter)
                    .map_err(|err| BenchError::Setup(err.to_string()))?,
                options: SubscriptionOptions::qos(qos),
            }],
        };
        self.encode(&subscribe)?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        self.flush_until(deadline).await?;
        loop {
            match self.next_packet(deadline, "SUBACK").await? {
                Packet::SubAck(suback) if suback.packet_id == packet_id => {
                    let code = suback.reason_codes.first().copied();
                    return match code {
                        Some(code) if !code.is_error() && code.as_u8() == qos.as_u8() => Ok(()),
                        Some(code) if !code.is_error() => Err(BenchError::Refused(format!(
                            "SUBSCRIBE {filter} at QoS {} was granted {code}",
                            qos.as_u8()
                        ))),
                        Some(code) => {
                            Err(BenchError::Refused(format!("SUBSCRIBE {filter}: {code}")))
                        }
                        None => Err(BenchError::Protocol(
                            "SUBACK without reason code".to_owned(),
                        )),
                    };
                }
                Packet::Disconnect(d) => return Err(BenchError::Disconnected(d.reason_code)),
                // A retained message or a ping answer before the SUBACK: not ours to count.
                _ => {}
            }
        }
    }

    /// Appends `packet` to the output buffer.
    pub(crate) fn encode<P: Encode + ?Sized>(&mut self, packet: &P) -> Result<(), BenchError> {
        self.enc
            .encode(packet, &mut self.out)
            .map(|_| ())
            .map_err(|err| BenchError::Protocol(format!("encode: {err}")))
    }

    /// Writes everything buffered, by `deadline`.
    pub(crate) async fn flush_until(&mut self, deadline: Instant) -> Result<(), BenchError> {
        while !self.out.is_empty() || self.dirty {
            timeout_at(deadline, pump(&mut self.wr, &mut self.out, &mut self.dirty))
                .await
                .map_err(|_| BenchError::Timeout("writing to the broker"))?
                .map_err(|err| BenchError::io("write to the broker", err))?;
        }
        Ok(())
    }

    /// The next packet, reading as needed, by `deadline`.
    pub(crate) async fn next_packet(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Packet, BenchError> {
        loop {
            if let Some(packet) = self.dec.poll_packet()? {
                return Ok(packet);
            }
            let read = timeout_at(
                deadline,
                read_some(&mut self.rd, &mut self.dec, self.read_chunk),
            )
            .await
            .map_err(|_| BenchError::Timeout(what))?
            .map_err(|err| BenchError::io("read from the broker", err))?;
            if read == 0 {
                return Err(BenchError::Closed(what));
            }
        }
    }

    /// The read chunk this client was made with.
    pub(crate) fn read_chunk(&self) -> usize {
        self.read_chunk
    }

    /// Sends DISCONNECT (normal). With `wait_close`, then waits (at most
    /// [`HANDSHAKE_TIMEOUT`]) for the broker to close the connection, as MQTT has it do, before
    /// closing too: the side that closes first keeps the TIME_WAIT state, and a churn loop that
    /// closed first would spend its time searching for free local ports (and run out of them).
    /// Without, closes the write side at once.
    pub(crate) async fn disconnect(mut self, wait_close: bool) -> Result<(), BenchError> {
        self.encode(&Disconnect::new(ReasonCode::Success))?;
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        self.flush_until(deadline).await?;
        if !wait_close {
            let _ = timeout_at(deadline, self.wr.shutdown()).await;
        }
        if wait_close {
            let mut sink = [0u8; 256];
            loop {
                match timeout_at(deadline, self.rd.read(&mut sink)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        return Err(BenchError::Timeout("the broker's close after DISCONNECT"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads once into the decoder's buffer (at least `chunk` bytes of room); 0 means end of
/// stream. Cancel safe: usable as a `select!` branch.
pub(crate) async fn read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    dec: &mut Decoder,
    chunk: usize,
) -> io::Result<usize> {
    let buf = dec.buffer_mut();
    buf.reserve(chunk);
    rd.read_buf(buf).await
}

/// Writes some of `out` (advancing it) and flushes once it is empty. Cancel safe: data written
/// is always taken off `out`, and a flush cut short is retried because `dirty` stays set.
pub(crate) async fn pump<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    dirty: &mut bool,
) -> io::Result<()> {
    if !out.is_empty() {
        let written = wr.write_buf(out).await?;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the broker stopped accepting data",
            ));
        }
        *dirty = true;
    }
    if out.is_empty() && *dirty {
        wr.flush().await?;
        *dirty = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "test code"
    )]

    use std::path::PathBuf;

    use rustls::{HandshakeKind, ProtocolVersion as TlsVersion};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// Test certificates (ECDSA P-256, valid until 2126): `ca.pem` signs `server.pem`, whose
    /// names are `localhost` and 127.0.0.1.
    fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    /// A TLS server on 127.0.0.1 (TLS 1.3 and 1.2, session tickets on) that, for each
    /// connection, completes the handshake, writes one byte and closes. Returns its port.
    async fn tls_server() -> u16 {
        let certs = CertificateDer::pem_slice_iter(&std::fs::read(data("server.pem")).unwrap())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(
            &std::fs::read(data("server.key")).unwrap(),
        )
        .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"x").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        port
    }

    /// Connects, reads to the end (taking in any session tickets) and returns the TLS version
    /// and the kind of handshake.
    async fn handshake(target: &Target) -> (TlsVersion, HandshakeKind) {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, target.open())
            .await
            .unwrap()
            .unwrap();
        let Stream::Tls(mut tls) = stream else {
            panic!("a plain TCP stream to a TLS target");
        };
        let (version, kind) = {
            let conn = tls.get_ref().1;
            (
                conn.protocol_version().unwrap(),
                conn.handshake_kind().unwrap(),
            )
        };
        let mut rest = Vec::new();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"x");
        (version, kind)
    }

    #[tokio::test]
    async fn resumes_by_default_and_never_without_resume() {
        let port = tls_server().await;
        let ca = data("ca.pem");

        let resuming = Target::new("localhost", port, Some(&ca), true).unwrap();
        assert_eq!(
            handshake(&resuming).await,
            (TlsVersion::TLSv1_3, HandshakeKind::Full)
        );
        // A clone shares the session cache, as the workers of one run do.
        let clone = resuming.clone();
        assert_eq!(
            handshake(&clone).await,
            (TlsVersion::TLSv1_3, HandshakeKind::Resumed)
        );

        let full = Target::new("127.0.0.1", port, Some(&ca), false).unwrap();
        for _ in 0..3 {
            assert_eq!(
                handshake(&full).await,
                (TlsVersion::TLSv1_3, HandshakeKind::Full)
            );
        }
    }

    #[test]
    fn tls_setup_errors_are_specific() {
        let missing = data("no-such-file.pem");
        let err = Target::new("localhost", 1, Some(&missing), true).unwrap_err();
        assert!(err.to_string().contains("no-such-file.pem"), "{err}");
        // A key file holds no certificate.
        let err = Target::new("localhost", 1, Some(&data("server.key")), false).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = Target::new("not a name!", 1, Some(&data("ca.pem")), false).unwrap_err();
        assert!(err.to_string().contains("server name"), "{err}");
    }
}
