//! The HTTP/1.1 client side on pingora's pooled transport: resolve, connect (TLS with SNI),
//! write one request, read the answer head, return the connection to the pool. An answer
//! produced in this process (the built-in mock provider) has the same shape, [`Conn`], so the
//! relays read both alike.
//!
//! pingora's own HTTP client flushes the request head separately from the body, costing the
//! upstream an extra wakeup per request; here head and body go out in one write, and pingora's
//! `v1::client::HttpSession` parses the response (chunked, content-length, keep-alive).

pub mod memory;
pub mod net;

use crate::config::{Timeouts, UpstreamUrl};
use bytes::{Bytes, BytesMut};
pub use memory::Memory;
use net::Resolver;
use pingora::connectors::TransportConnector;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout_at;

/// How a provider proves who it is; the provider decides, the client only writes it.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// `authorization: Bearer <key>` (OpenAI, Dify).
    Bearer(&'a str),
    /// A key in a header of its own, plus headers every call carries (e.g. a protocol
    /// version); their values come from validated config.
    Header {
        name: &'static str,
        value: &'a str,
        extra: &'a [(&'static str, &'a str)],
    },
}

/// One upstream request, already encoded.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: &'a str,
    pub accept: &'a str,
    pub body: &'a Bytes,
    pub request_id: &'a str,
    pub auth: Auth<'a>,
}

/// The request head. Every value comes from validated config or was checked to be printable
/// ASCII (request ids), so nothing here can split a header.
pub fn head(url: &UpstreamUrl, r: &Request<'_>) -> Vec<u8> {
    let mut h = String::with_capacity(256 + r.path.len());
    let _ = write!(
        h,
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        r.method,
        r.path,
        url.host_header()
    );
    match r.auth {
        Auth::None => {}
        Auth::Bearer(key) => {
            let _ = write!(h, "authorization: Bearer {key}\r\n");
        }
        Auth::Header { name, value, extra } => {
            let _ = write!(h, "{name}: {value}\r\n");
            for (k, v) in extra {
                let _ = write!(h, "{k}: {v}\r\n");
            }
        }
    }
    let _ = write!(
        h,
        "content-type: {}\r\ncontent-length: {}\r\naccept: {}\r\nuser-agent: ai-gateway/{}\r\n",
        r.content_type,
        r.body.len(),
        r.accept,
        env!("CARGO_PKG_VERSION"),
    );
    if !r.request_id.is_empty() {
        let _ = write!(h, "x-request-id: {}\r\n", r.request_id);
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Why an exchange produced no response head.
pub enum OpenError {
    /// DNS or TCP/TLS connect failed.
    Connect(String),
    /// No connection within the connect timeout (or the total deadline passed).
    ConnectTimeout,
    /// Connected, but no response head before the first-token deadline.
    Timeout,
    /// The connection failed after the request was sent.
    Io(String),
}

pub enum ReadError {
    Timeout,
    Io(String),
    TooLarge,
}

/// An upstream answer whose head has arrived: over the network, or made in this process.
// The network variant is the common one: boxing it to shrink the enum would cost an allocation
// per request.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    Http {
        session: HttpSession,
        peer: HttpPeer,
    },
    Memory(Memory),
}

impl Conn {
    pub fn status(&self) -> Option<u16> {
        match self {
            Conn::Http { session, .. } => session.resp_header().map(|h| h.status.as_u16()),
            Conn::Memory(m) => Some(m.status),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Conn::Http { session, .. } => session
                .resp_header()
                .and_then(|h| h.headers.get(name))
                .and_then(|v| v.to_str().ok()),
            Conn::Memory(m) => m.header(name),
        }
    }

    /// The next piece of the body; `None` at its end.
    pub async fn read_body_bytes(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Conn::Http { session, .. } => {
                session.read_body_bytes().await.map_err(|e| e.to_string())
            }
            Conn::Memory(m) => Ok(m.next().await),
        }
    }

    /// Closes the exchange without reading the rest (the connection is not reused).
    pub async fn shutdown(&mut self) {
        match self {
            Conn::Http { session, .. } => session.shutdown().await,
            Conn::Memory(m) => m.close(),
        }
    }
}

/// The shared client: pooled connections and the DNS cache. Owns no configuration: every call
/// names its upstream.
pub struct Upstream {
    transport: TransportConnector,
    resolver: Resolver,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new() -> Self {
        Upstream {
            transport: TransportConnector::new(None),
            resolver: Resolver::default(),
        }
    }

    /// Connects (or reuses a pooled connection), sends the request and reads the response
    /// head. `deadline` bounds connecting, `head_deadline` the wait for the answer.
    pub async fn open(
        &self,
        url: &UpstreamUrl,
        timeouts: &Timeouts,
        deadline: Instant,
        head_deadline: Instant,
        head: &[u8],
        body: &[u8],
    ) -> Result<Conn, OpenError> {
        let addr = match timeout_at(
            (Instant::now() + timeouts.connect).min(deadline).into(),
            self.resolver.resolve(&url.host, url.port),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(OpenError::Connect(e)),
            Err(_) => return Err(OpenError::ConnectTimeout),
        };
        let peer = net::peer(url, addr, timeouts);
        // A pooled connection the upstream already closed fails on first use; nothing was
        // processed, so the request goes out again on another connection.
        let mut stale_left = 2;
        loop {
            let (stream, reused) =
                match timeout_at(deadline.into(), self.transport.get_stream(&peer)).await {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        return Err(match e.etype() {
                            pingora::ErrorType::ConnectTimedout
                            | pingora::ErrorType::TLSHandshakeTimedout => OpenError::ConnectTimeout,
                            other => {
                                OpenError::Connect(format!("cannot connect: {}", other.as_str()))
                            }
                        })
                    }
                    Err(_) => return Err(OpenError::ConnectTimeout),
                };
            match send_and_read_header(stream, head, body, head_deadline).await {
                Ok(up) => return Ok(Conn::Http { session: up, peer }),
                Err(OpenError::Io(_)) if reused && stale_left > 0 => stale_left -= 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Returns a fully read connection to the pool; anything else is closed.
    pub async fn release(&self, conn: Conn) {
        let Conn::Http { mut session, peer } = conn else {
            return;
        };
        if !session.is_body_done() {
            session.shutdown().await;
            return;
        }
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            self.transport
                .release_stream(stream, peer.reuse_hash(), Some(net::POOL_IDLE));
        }
    }

    /// A small request/response call (Dify file upload, task stop): status and body, or why
    /// not.
    #[allow(clippy::too_many_arguments)]
    pub async fn simple_call(
        &self,
        url: &UpstreamUrl,
        auth: Auth<'_>,
        timeouts: &Timeouts,
        path: &str,
        content_type: &str,
        body: Bytes,
        limit: Duration,
    ) -> Result<(u16, Bytes), String> {
        let request = Request {
            method: "POST",
            path,
            content_type,
            accept: "application/json",
            body: &body,
            request_id: "",
            auth,
        };
        let head = head(url, &request);
        let deadline = Instant::now() + limit;
        let mut conn = self
            .open(url, timeouts, deadline, deadline, &head, &body)
            .await
            .map_err(|e| match e {
                OpenError::Connect(m) | OpenError::Io(m) => m,
                OpenError::ConnectTimeout | OpenError::Timeout => "timed out".to_owned(),
            })?;
        let status = conn.status().unwrap_or(0);
        let answer = read_all(&mut conn, deadline, limit, deadline, 1 << 20)
            .await
            .map_err(|e| match e {
                ReadError::Timeout => "timed out reading the answer".to_owned(),
                ReadError::Io(m) => m,
                ReadError::TooLarge => "answer too large".to_owned(),
            })?;
        self.release(conn).await;
        Ok((status, answer))
    }
}

async fn send_and_read_header(
    mut stream: Stream,
    head: &[u8],
    body: &[u8],
    deadline: Instant,
) -> Result<HttpSession, OpenError> {
    let io = |e: std::io::Error| OpenError::Io(e.to_string());
    let exchange = async {
        // Pooled streams are unbuffered: one buffer makes one segment for typical requests; a
        // large body is not worth copying.
        if body.len() <= 64 * 1024 {
            let mut one = Vec::with_capacity(head.len() + body.len());
            one.extend_from_slice(head);
            one.extend_from_slice(body);
            stream.write_all(&one).await.map_err(io)?;
        } else {
            stream.write_all(head).await.map_err(io)?;
            stream.write_all(body).await.map_err(io)?;
        }
        stream.flush().await.map_err(io)?;
        let mut up = HttpSession::new(stream);
        loop {
            up.read_response()
                .await
                .map_err(|e| OpenError::Io(e.to_string()))?;
            if up.resp_header().is_some_and(|h| h.status.as_u16() >= 200) {
                return Ok(up);
            }
        }
    };
    timeout_at(deadline.into(), exchange)
        .await
        .unwrap_or(Err(OpenError::Timeout))
}

/// Reads the rest of the body: the first piece by `first_deadline`, then at most `idle`
/// between pieces, all by `overall`. The cap protects memory from a misbehaving upstream.
pub async fn read_all(
    up: &mut Conn,
    first_deadline: Instant,
    idle: Duration,
    overall: Instant,
    cap: usize,
) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    let mut deadline = first_deadline.min(overall);
    loop {
        match timeout_at(deadline.into(), up.read_body_bytes()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > cap {
                    return Err(ReadError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
                deadline = (Instant::now() + idle).min(overall);
            }
        }
    }
}
