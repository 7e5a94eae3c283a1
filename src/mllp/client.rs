//! The sender side of MLLP, for `caregate send` (operators and biomedical engineers testing a
//! route), the benchmark and the tests: one message in flight, wait for its ACK, next.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Codec;
use crate::hl7::ack::Code;
use crate::hl7::{Message, batch};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Target.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("tls handshake with {addr}: {source}")]
    Tls {
        /// Target.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No ACK within the timeout.
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before answering.
    #[error("connection closed before an acknowledgement arrived")]
    Closed,
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The reply frame was larger than allowed.
    #[error("reply frame too large")]
    Oversized,
}

/// Anything a connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One parsed MSA (plus the ERR text that came with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckInfo {
    /// MSA-1, if it is a known code.
    pub code: Option<Code>,
    /// MSA-1 as sent.
    pub code_text: String,
    /// MSA-2.
    pub control_id: String,
    /// MSA-3 and the ERR segments' texts.
    pub text: String,
    /// ERR-3.1 codes (or ERR-1.4.1 in v2.3 layout).
    pub error_codes: Vec<String>,
}

/// A reply frame.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The raw reply, decoded lossily for display.
    pub raw: String,
    /// One entry per MSA segment (batches answer with several).
    pub acks: Vec<AckInfo>,
}

impl Reply {
    /// Parses a reply payload. Never fails: what cannot be read is left out.
    pub fn parse(payload: &[u8]) -> Reply {
        let raw = String::from_utf8_lossy(payload).into_owned();
        let mut acks = Vec::new();
        for m in batch::split(payload).messages {
            let text = String::from_utf8_lossy(m);
            let Ok(msg) = Message::parse(&text) else {
                continue;
            };
            let mut current: Option<AckInfo> = None;
            for seg in msg.segments() {
                match seg.id() {
                    "MSA" => {
                        if let Some(a) = current.take() {
                            acks.push(a);
                        }
                        let code_text = seg.field(1).raw().to_owned();
                        current = Some(AckInfo {
                            code: Code::parse(&code_text),
                            code_text,
                            control_id: seg.field(2).raw().to_owned(),
                            text: seg.field(3).text().into_owned(),
                            error_codes: Vec::new(),
                        });
                    }
                    "ERR" => {
                        if let Some(a) = current.as_mut() {
                            let c3 = seg.field(3).component(1).raw().to_owned();
                            let code = if c3.is_empty() {
                                seg.field(1).component(4).subcomponent(1).to_owned()
                            } else {
                                c3
                            };
                            if !code.is_empty() {
                                a.error_codes.push(code);
                            }
                            let t = seg.field(8).text();
                            if !t.is_empty() && !a.text.contains(t.as_ref()) {
                                if !a.text.is_empty() {
                                    a.text.push_str("; ");
                                }
                                a.text.push_str(&t);
                            }
                        }
                    }
                    _ => {}
                }
            }
            acks.extend(current);
        }
        Reply { raw, acks }
    }
}

/// An MLLP connection.
pub struct Client {
    stream: Box<dyn Io>,
    codec: Codec,
    buf: BytesMut,
    timeout: Duration,
}

impl Client {
    /// Connects over plain TCP.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, Error> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map_err(|e| Error::Connect {
                addr: addr.to_owned(),
                source: e,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Client::over(Box::new(stream), timeout))
    }

    /// Connects over TLS with the given client configuration; `server_name` is checked against
    /// the server certificate.
    pub async fn connect_tls(
        addr: &str,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Client, Error> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map_err(|e| Error::Connect {
                addr: addr.to_owned(),
                source: e,
            })?;
        let _ = tcp.set_nodelay(true);
        let name =
            rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|e| {
                Error::Tls {
                    addr: addr.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                }
            })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map_err(|e| Error::Tls {
                addr: addr.to_owned(),
                source: e,
            })?;
        Ok(Client::over(Box::new(tls), timeout))
    }

    /// Wraps an existing stream.
    pub fn over(stream: Box<dyn Io>, timeout: Duration) -> Client {
        Client {
            stream,
            codec: Codec::new(64 << 20),
            buf: BytesMut::with_capacity(4096),
            timeout,
        }
    }

    /// Sends one framed payload and waits for one reply frame.
    pub async fn send(&mut self, payload: &[u8]) -> Result<Reply, Error> {
        let mut out = BytesMut::with_capacity(payload.len() + 3);
        Codec::encode(payload, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        self.receive().await
    }

    /// Writes raw bytes (no framing): for tests of garbage and partial frames.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Waits for the next reply frame.
    pub async fn receive(&mut self) -> Result<Reply, Error> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            loop {
                match self.codec.decode(&mut self.buf) {
                    Ok(Some(frame)) => return Ok(Reply::parse(&frame)),
                    Ok(None) => {}
                    Err(_) => return Err(Error::Oversized),
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(Error::Closed);
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout(timeout))?
    }

    /// Whether the server has closed the connection (reads until EOF or `wait` passes).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut scratch = [0u8; 1024];
        matches!(
            tokio::time::timeout(wait, async {
                loop {
                    match self.stream.read(&mut scratch).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => continue,
                    }
                }
            })
            .await,
            Ok(true)
        )
    }
}
