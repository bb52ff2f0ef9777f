//! `--app http-proxy=HOST:PORT`: an HTTP/1.1 reverse proxy. Requests are read from the client
//! with the same framing rules as `--app http`, forwarded over a bounded pool of keep-alive
//! connections to the backend (hyper's client side, [`pool`]), with `Forwarded` and
//! `X-Forwarded-For` added; bodies stream both ways a piece at a time (never a whole body in
//! memory); an Upgrade (WebSocket) is spliced; a backend that refuses or breaks gives 502, one
//! that does not answer within the timeout 504.
//!
//! The client side is served in turns: between requests a connection holds no task and no
//! buffer, as an idle echo connection, so a million keep-alive clients cost what the engine
//! holds for them, while the backend sees `pool` connections per engine thread. (hyper's server
//! side would hold its connection task and buffers for the whole life of every client
//! connection, idle or not.)

mod message;
mod pool;

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use hyper::{
    Method, Request, Response, StatusCode, Uri, Version,
    body::{Body as _, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use message::Framing;
pub use pool::{Pool, PoolStats, Pools};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{
    AppStream, Served, WhenQuiet,
    http::{Body, Chunked, MAX_HEADER, framing},
};
use crate::config::bounds::Bound;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpProxyOptions {
    pub backend: SocketAddr,
    /// Backend connections per engine thread, at most (nginx's `keepalive` is per worker too).
    pub pool: u32,
    /// How long the backend may take to accept a connection, to answer, and between two pieces
    /// of a response body (nginx's proxy_connect_timeout and proxy_read_timeout, 60 s each by
    /// default); past it the client gets 504, or a reset if the response had begun.
    pub timeout: Duration,
}

impl HttpProxyOptions {
    pub const DEFAULT_POOL: u32 = 64;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    pub const POOL: Bound<u32> = Bound { name: "http-proxy pool", range: 1..=4096, says: "1 to 4096" };
    pub const TIMEOUT: Bound<Duration> = Bound {
        name: "http-proxy timeout",
        range: Duration::from_millis(100)..=Duration::from_secs(3600),
        says: "100ms to 1h",
    };

    pub fn new(backend: SocketAddr) -> Self {
        Self { backend, pool: Self::DEFAULT_POOL, timeout: Self::DEFAULT_TIMEOUT }
    }
}

/// Pieces of a request body in flight between the client's reader and the backend connection:
/// with pieces of at most [`BODY_READ`] bytes, at most this many times that per request.
const BODY_QUEUE: usize = 4;
/// The most a request-body read takes from the client at once.
const BODY_READ: usize = 32 * 1024;

/// A request body on its way to the backend: pieces from the client's reader, as they come.
pub struct RequestBody {
    pieces: Option<mpsc::Receiver<io::Result<Bytes>>>,
    /// Bytes still to come, when the client declared a length.
    left: Option<u64>,
}

impl RequestBody {
    fn empty() -> Self {
        Self { pieces: None, left: Some(0) }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let Some(pieces) = &mut self.pieces else { return Poll::Ready(None) };
        match pieces.poll_recv(cx) {
            Poll::Ready(Some(Ok(piece))) => {
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(piece.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.pieces = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_none() || self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A request head read from the client, ready to forward.
struct Head {
    len: usize,
    request: Request<()>,
    body: Body,
    /// The client asked to close after this exchange (or speaks HTTP/1.0 without keep-alive).
    close: bool,
    http10: bool,
    /// The client sent `Expect: 100-continue` and waits for a go-ahead before its body.
    expect_continue: bool,
    /// The client asks to switch protocols (RFC 9110 7.8): `Upgrade` to forward.
    upgrade: Option<HeaderValue>,
}

enum Parsed {
    Complete(Box<Head>),
    Partial,
    /// Refused with this status, and the connection closed.
    Refuse(StatusCode),
}

/// One request head from `buf`, converted for the backend. A plain function: httparse's header
/// array lives on the stack for the parse only.
fn parse_head(buf: &[u8], backend: SocketAddr) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => return Parsed::Refuse(StatusCode::BAD_REQUEST),
    };
    let version = req.version.unwrap_or(1);
    let Some((body, close)) = framing(version, req.headers) else { return Parsed::Refuse(StatusCode::BAD_REQUEST) };
    let (Some(method), Some(target)) = (req.method, req.path) else { return Parsed::Refuse(StatusCode::BAD_REQUEST) };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Refuse(StatusCode::BAD_REQUEST) };
    if method == Method::CONNECT {
        // A reverse proxy does not open tunnels to where clients ask.
        return Parsed::Refuse(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Ok(uri) = target.parse::<Uri>() else { return Parsed::Refuse(StatusCode::BAD_REQUEST) };
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 2);
    for f in req.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value)) else {
            return Parsed::Refuse(StatusCode::BAD_REQUEST);
        };
        headers.append(name, value);
    }
    // RFC 9112 3.2.2: a request in absolute form names its host in the target, which replaces
    // any Host field; the backend gets the origin form.
    let uri = match uri.authority() {
        Some(authority) => {
            let Ok(host) = HeaderValue::from_str(authority.as_str()) else { return Parsed::Refuse(StatusCode::BAD_REQUEST) };
            headers.insert(header::HOST, host);
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            path.parse().unwrap_or_else(|_| Uri::from_static("/"))
        }
        None => uri,
    };
    match headers.get_all(header::HOST).iter().count() {
        // RFC 9112 3.2: an HTTP/1.1 request without exactly one Host is refused.
        0 if version == 1 => return Parsed::Refuse(StatusCode::BAD_REQUEST),
        0 => {
            // HTTP/1.0 may leave it out; the backend, spoken to in HTTP/1.1, needs one.
            headers.insert(header::HOST, HeaderValue::from_str(&backend.to_string()).expect("an address is a valid value"));
        }
        1 => {}
        _ => return Parsed::Refuse(StatusCode::BAD_REQUEST),
    }
    let expect_continue = version == 1
        && headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let upgrade = match (version, message::connection_has(&headers, "upgrade")) {
        (1, true) => headers.get(header::UPGRADE).cloned(),
        _ => None,
    };
    message::strip_hop_by_hop(&mut headers);
    if expect_continue {
        // The proxy answers it itself (as nginx does) and the backend gets the body at once.
        headers.remove(header::EXPECT);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    // HTTP/1.1 to the backend whatever the client spoke: the pool's connections stay alive.
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Complete(Box::new(Head { len, request, body, close, http10: version == 0, expect_continue, upgrade }))
}

/// What [`parse_head`] makes of a client's bytes, in plain types, for the fuzz targets.
#[cfg(fuzzing)]
#[derive(Debug)]
pub enum HeadSummary {
    Partial,
    Refuse(u16),
    Complete {
        len: usize,
        method: String,
        uri: String,
        /// As forwarded to the backend.
        headers: Vec<(String, Vec<u8>)>,
        body: Body,
        close: bool,
        http10: bool,
        expect_continue: bool,
        upgrade: bool,
    },
}

/// [`parse_head`] for the fuzz targets.
#[cfg(fuzzing)]
pub fn summarize_head(buf: &[u8]) -> HeadSummary {
    let backend = SocketAddr::from(([127, 0, 0, 1], 8080));
    match parse_head(buf, backend) {
        Parsed::Partial => HeadSummary::Partial,
        Parsed::Refuse(status) => HeadSummary::Refuse(status.as_u16()),
        Parsed::Complete(head) => HeadSummary::Complete {
            len: head.len,
            method: head.request.method().to_string(),
            uri: head.request.uri().to_string(),
            headers: head.request.headers().iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            body: head.body,
            close: head.close,
            http10: head.http10,
            expect_continue: head.expect_continue,
            upgrade: head.upgrade.is_some(),
        },
    }
}

/// Serve a connection's requests until it goes quiet between requests (`when_quiet` Return: a
/// turn ends, holding nothing), or is done.
pub(super) async fn serve<S: AppStream>(pool: &Pool, s: &mut S, when_quiet: WhenQuiet) -> io::Result<Served> {
    let mut buf = BytesMut::new(); // allocated by the first read, not while idle
    loop {
        let head = loop {
            match parse_head(&buf, pool.backend()) {
                Parsed::Complete(head) => break head,
                Parsed::Partial => {
                    if buf.len() > MAX_HEADER {
                        return refuse(s, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).await;
                    }
                    // Between requests (nothing buffered) a turn may end; within a head, the rest
                    // is awaited, so no turn ends with half a request read.
                    if buf.capacity() - buf.len() < 1024 {
                        buf.reserve(4096);
                    }
                    let n = if buf.is_empty() {
                        let Some(n) = when_quiet.read(s.read_buf(&mut buf)).await else { return Ok(Served::Quiet) };
                        n
                    } else {
                        // RFC 9110 15.5.9: a client that stops within a request head is answered
                        // 408 after the timeout (nginx's client_header_timeout), not waited for.
                        match tokio::time::timeout(pool.options.timeout, s.read_buf(&mut buf)).await {
                            Ok(n) => n,
                            Err(_) => return refuse(s, StatusCode::REQUEST_TIMEOUT).await,
                        }
                    };
                    if n? == 0 {
                        // EOF between requests (or within a head: nothing to answer).
                        s.shutdown().await?;
                        return Ok(Served::Done);
                    }
                }
                Parsed::Refuse(status) => return refuse(s, status).await,
            }
        };
        buf.advance(head.len);
        match exchange(pool, s, &mut buf, *head).await? {
            Next::KeepAlive => {}
            Next::Close => {
                s.shutdown().await?;
                return Ok(Served::Done);
            }
            Next::Abort => {
                s.abort();
                return Ok(Served::Done);
            }
        }
        if buf.is_empty() && when_quiet == WhenQuiet::Wait {
            // Between requests a keep-alive connection holds no buffer (the next read allocates).
            buf = BytesMut::new();
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, status: StatusCode) -> io::Result<Served> {
    s.write_all(&message::own_response(status)).await?;
    s.shutdown().await?;
    Ok(Served::Done)
}

/// What follows an exchange on the client's connection.
enum Next {
    KeepAlive,
    /// Close after what was written (the client asked, or the framing leaves no other way).
    Close,
    /// Reset: the response broke off after it had begun, and the client must not take a
    /// truncated body for a whole one.
    Abort,
}

/// Forward one request and its body, and the response back.
async fn exchange<S: AppStream>(pool: &Pool, s: &mut S, buf: &mut BytesMut, head: Head) -> io::Result<Next> {
    let Head { request, body, close, http10, expect_continue, upgrade, .. } = head;
    let (mut parts, ()) = request.into_parts();
    if let Some((client, server)) = s.addresses() {
        message::add_forwarded(&mut parts.headers, client, server);
    }
    let head_request = parts.method == Method::HEAD;
    if let Some(protocol) = &upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    let client = Client { head_request, http10, close, upgrade: upgrade.is_some() };
    let has_body = body != Body::Length(0);
    if !has_body {
        let request = Request::from_parts(parts, RequestBody::empty());
        return match respond(pool, s, request, client).await? {
            Responded::Upgrade(upgrade, lease) => splice_upgraded(s, buf, upgrade, lease).await,
            Responded::Next(next) => Ok(next),
        };
    }
    if expect_continue {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    let left = match body {
        Body::Length(n) => Some(n),
        Body::Chunked => None,
    };
    let request = Request::from_parts(parts, RequestBody { pieces: Some(rx), left });
    // The client's body goes up while the response comes down: a backend may answer before it
    // has read the whole body, and one that streams (an echo) would stall if either waited.
    let (mut read, mut write) = tokio::io::split(&mut *s);
    let (pumped, responded) =
        tokio::join!(pump(&mut read, buf, body, tx, pool.options.timeout), respond(pool, &mut write, request, client));
    drop((read, write));
    match responded? {
        // The backend switched protocols on a request with a body: what it read of the body is
        // its business; the rest of the connection is the new protocol's.
        Responded::Upgrade(upgrade, lease) => splice_upgraded(s, buf, upgrade, lease).await,
        Responded::Next(Next::KeepAlive) if pumped != Pumped::Complete => {
            // The request's body was not read to its end: the next request's first byte is
            // unknown, so the connection ends here.
            Ok(Next::Close)
        }
        Responded::Next(next) => Ok(next),
    }
}

/// What the response must fit on the client's side: its request's method, its version, whether
/// it asked to close, whether it asked to switch protocols.
#[derive(Debug, Clone, Copy)]
struct Client {
    head_request: bool,
    http10: bool,
    close: bool,
    upgrade: bool,
}

/// How [`respond`] ended: the connection's next step, or a switch of protocols to splice.
enum Responded {
    Next(Next),
    Upgrade(hyper::upgrade::OnUpgrade, pool::Lease),
}

/// Send `request` over a pooled connection and write the response to the client. Failures
/// before the response head become 502 or 504; after it, a reset.
async fn respond<W: AsyncWrite + Unpin>(
    pool: &Pool,
    w: &mut W,
    request: Request<RequestBody>,
    client: Client,
) -> io::Result<Responded> {
    let (lease, mut response) = match send(pool, request).await {
        Ok(sent) => sent,
        Err(status) => {
            w.write_all(&message::own_response(status)).await?;
            return Ok(Responded::Next(Next::Close));
        }
    };
    let status = response.status();
    if status == StatusCode::SWITCHING_PROTOCOLS && client.upgrade {
        let mut headers = response.headers().clone();
        let protocol = headers.get(header::UPGRADE).cloned();
        message::strip_hop_by_hop(&mut headers);
        let mut head = message::response_head(status, &headers, Framing::None, false);
        if let Some(p) = protocol {
            // The switch itself: the two fields this hop keeps (RFC 9110 7.8).
            let extra = format!("connection: upgrade\r\nupgrade: {}\r\n\r\n", String::from_utf8_lossy(p.as_bytes()));
            head.truncate(head.len() - 2);
            head.extend_from_slice(extra.as_bytes());
        }
        w.write_all(&head).await?;
        // The connection leaves the pool with the upgrade; its permit goes with the lease, once
        // the upgrade has been taken.
        return Ok(Responded::Upgrade(hyper::upgrade::on(&mut response), lease));
    }
    let framing = Framing::choose(status, client.head_request, response.headers(), client.http10);
    let close = client.close || framing == Framing::UntilClose;
    let mut headers = std::mem::take(response.headers_mut());
    message::strip_hop_by_hop(&mut headers);
    let mut head = message::response_head(status, &headers, framing, close);
    if client.http10 && !close {
        // RFC 9112 9.3: an HTTP/1.0 client keeps the connection only if the answer says so.
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"connection: keep-alive\r\n\r\n");
    }
    let body = response.into_body();
    match stream_response(pool, w, head, body, framing).await? {
        true => {
            pool.release(lease);
            Ok(Responded::Next(if close { Next::Close } else { Next::KeepAlive }))
        }
        false => Ok(Responded::Next(Next::Abort)),
    }
}

/// A pooled connection and the backend's response head, or the status that tells the client
/// why there is none.
async fn send(pool: &Pool, request: Request<RequestBody>) -> Result<(pool::Lease, Response<Incoming>), StatusCode> {
    let checkout_failed = |e: pool::CheckoutError| match e {
        pool::CheckoutError::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        pool::CheckoutError::Connect(e) => {
            tracing::debug!("http-proxy: connecting to {}: {e}", pool.backend());
            StatusCode::BAD_GATEWAY
        }
    };
    let mut lease = pool.checkout().await.map_err(checkout_failed)?;
    let mut request = request;
    for attempt in 0..2 {
        let sent = tokio::time::timeout(pool.options.timeout, lease.sender.try_send_request(request)).await;
        match sent {
            Err(_) => return Err(StatusCode::GATEWAY_TIMEOUT),
            Ok(Ok(response)) => return Ok((lease, response)),
            Ok(Err(mut e)) => match e.take_message() {
                // Not sent: the pooled connection had closed under it (the backend's keep-alive
                // timeout racing our reuse). Once more on a fresh connection.
                Some(unsent) if attempt == 0 => {
                    request = unsent;
                    lease = pool.reconnect(lease).await.map_err(checkout_failed)?;
                }
                _ => {
                    tracing::debug!("http-proxy: request to {}: {}", pool.backend(), e.error());
                    return Err(StatusCode::BAD_GATEWAY);
                }
            },
        }
    }
    Err(StatusCode::BAD_GATEWAY)
}

/// Write the response head and body to the client with `framing`; whether it all went out (an
/// error reading the backend, or its silence past the timeout, leaves the response cut short).
async fn stream_response<W: AsyncWrite + Unpin>(
    pool: &Pool,
    w: &mut W,
    head: Vec<u8>,
    mut body: Incoming,
    framing: Framing,
) -> io::Result<bool> {
    let mut pending = head;
    let mut sent: u64 = 0;
    if framing != Framing::None {
        loop {
            let frame = match tokio::time::timeout(pool.options.timeout, std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))).await {
                Err(_) => {
                    w.write_all(&pending).await?;
                    return Ok(false);
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!("http-proxy: response body from {}: {e}", pool.backend());
                    w.write_all(&pending).await?;
                    return Ok(false);
                }
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers are dropped: this hop's chunked encoding ends without them.
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if framing == Framing::Chunked {
                pending.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            // Small pieces join the head (or the previous piece) in one write; large ones go as
            // they are, with no copy.
            if data.len() <= 4096 {
                pending.extend_from_slice(&data);
            } else {
                w.write_all(&pending).await?;
                pending.clear();
                w.write_all(&data).await?;
            }
            if framing == Framing::Chunked {
                pending.extend_from_slice(b"\r\n");
            }
            if pending.len() >= 4096 {
                w.write_all(&pending).await?;
                pending.clear();
            }
        }
        if framing == Framing::Chunked {
            pending.extend_from_slice(b"0\r\n\r\n");
        }
    }
    w.write_all(&pending).await?;
    // hyper ends a Content-Length body at its length; fewer bytes would have been an error.
    Ok(!matches!(framing, Framing::Length(n) if n != sent))
}

/// How the client's request body went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    /// Read to its end and handed on.
    Complete,
    /// The backend side stopped taking it (answered, or failed, before the end).
    Abandoned,
    /// The client broke off or sent a malformed body.
    Broken,
}

/// Read the request body from the client (first what is already in `buf`) and hand it on in
/// pieces; whatever follows the body (a pipelined request) stays in `buf`. A client silent for
/// `timeout` within its body breaks it (nginx's client_body_timeout).
async fn pump<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    body: Body,
    tx: mpsc::Sender<io::Result<Bytes>>,
    timeout: Duration,
) -> Pumped {
    let mut left = match body {
        Body::Length(n) => n,
        Body::Chunked => u64::MAX,
    };
    let mut chunked = Chunked::START;
    loop {
        if !buf.is_empty() {
            let piece = match body {
                Body::Length(_) => {
                    let n = left.min(buf.len() as u64) as usize;
                    left -= n as u64;
                    buf.split_to(n).freeze()
                }
                Body::Chunked => {
                    let mut data = BytesMut::new();
                    match chunked.decode(buf, |d| data.extend_from_slice(d)) {
                        Ok(n) => buf.advance(n),
                        Err(()) => {
                            let _ = tx.send(Err(io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body"))).await;
                            return Pumped::Broken;
                        }
                    }
                    data.freeze()
                }
            };
            if !piece.is_empty() && tx.send(Ok(piece)).await.is_err() {
                return Pumped::Abandoned;
            }
        }
        let done = match body {
            Body::Length(_) => left == 0,
            Body::Chunked => chunked == Chunked::Done,
        };
        if done {
            return Pumped::Complete;
        }
        if buf.capacity() - buf.len() < BODY_READ / 2 {
            buf.reserve(BODY_READ);
        }
        let read = tokio::select! {
            // The backend side dropped the body (it failed, or answered without it): stop.
            _ = tx.closed() => return Pumped::Abandoned,
            read = tokio::time::timeout(timeout, r.read_buf(buf)) => {
                read.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "the client went silent within its body")))
            }
        };
        match read {
            Ok(0) => {
                let _ = tx.send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed within the body"))).await;
                return Pumped::Broken;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Pumped::Broken;
            }
        }
    }
}

/// After a 101: splice the client with the upgraded backend connection until both close.
async fn splice_upgraded<S: AppStream>(
    s: &mut S,
    buf: &mut BytesMut,
    upgrade: hyper::upgrade::OnUpgrade,
    lease: pool::Lease,
) -> io::Result<Next> {
    let upgraded = upgrade.await;
    drop(lease);
    let upgraded = match upgraded {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!("http-proxy: upgrade: {e}");
            return Ok(Next::Abort);
        }
    };
    let mut backend = hyper_util::rt::TokioIo::new(upgraded);
    // What the client sent after its upgrade request belongs to the new protocol.
    if !buf.is_empty() {
        backend.write_all(buf).await?;
        buf.clear();
    }
    match tokio::io::copy_bidirectional(s, &mut backend).await {
        Ok(_) => Ok(Next::Close),
        Err(_) => Ok(Next::Abort),
    }
}

#[cfg(test)]
mod tests;
