//! `--app http-proxy=HOST:PORT`: an HTTP/1.1 reverse proxy. Requests are read from the client
//! with the same framing rules as `--app http`, forwarded over a bounded pool of keep-alive
//! connections to the backend ([`pool`]), with `Forwarded` and `X-Forwarded-For` added; bodies
//! stream both ways a piece at a time (never a whole body in memory); an Upgrade (WebSocket) is
//! spliced; a backend that refuses or breaks gives 502, one that does not answer within the
//! timeout 504.
//!
//! Both sides' HTTP/1.1 is this module's own, on httparse, in the task that serves the client:
//! the request head is written straight from the parsed fields and the response head parsed
//! and rewritten in one pass ([`message`]). (hyper's client drives each connection from a task
//! of its own, fed through a channel, with a oneshot for the response and a channel for its
//! body: wakeups and allocations per request that a proxy in front of a busy backend pays on
//! every request.)
//!
//! The client side is served in turns: between requests a connection holds no task and no
//! buffer, as an idle echo connection, so a million keep-alive clients cost what the engine
//! holds for them, while the backend sees `pool` connections per engine thread. (hyper's server
//! side would hold its connection task and buffers for the whole life of every client
//! connection, idle or not.)

mod message;
mod pool;

use std::{
    borrow::Cow,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, BytesMut};
use http::{StatusCode, Uri};
#[cfg(fuzzing)]
pub use message::{Client, Framing};
#[cfg(not(fuzzing))]
use message::{Client, Framing};
#[cfg(fuzzing)]
pub use message::{BodyIn, Response, parse_response};
pub use pool::{Pool, PoolStats, Pools};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    AppStream, Served, WhenQuiet,
    http::{Body, Chunked, MAX_HEADER, framing, list_items},
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

/// The most a body read takes at once.
const BODY_READ: usize = 32 * 1024;
/// Response-body pieces up to this size join the pending write to the client (the head, or the
/// pieces before) instead of going on their own.
const SMALL_WRITE: usize = 4096;

/// A request head read from the client, ready to forward.
struct Head {
    len: usize,
    /// The head for the backend, written in full ([`parse_head`]).
    forward: Vec<u8>,
    body: Body,
    /// The client asked to close after this exchange (or speaks HTTP/1.0 without keep-alive).
    close: bool,
    http10: bool,
    head_request: bool,
    /// An idempotent method (RFC 9110 9.2.2), which may be sent again.
    idempotent: bool,
    /// The client sent `Expect: 100-continue` and waits for a go-ahead before its body.
    expect_continue: bool,
    /// The client asks to switch protocols (RFC 9110 7.8); the backend is asked to.
    upgrade: bool,
}

enum Parsed {
    Complete(Box<Head>),
    Partial,
    /// Refused with this status, and the connection closed.
    Refuse(StatusCode),
}

/// Where a request came from and in at, for the fields that say so to the backend.
type Hop = Option<(SocketAddr, SocketAddr)>;

/// One request head from `buf`, and the head the backend gets for it, written straight from
/// httparse's fields (no map of them is built): the method, the target in origin form, the
/// end-to-end fields (names in lower case), this hop's Host, framing, Upgrade and `Forwarded`
/// fields. A plain function: httparse's field array lives on the stack for the parse only.
fn parse_head(buf: &[u8], backend: SocketAddr, hop: Hop) -> Parsed {
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
    if method == "CONNECT" {
        // A reverse proxy does not open tunnels to where clients ask.
        return Parsed::Refuse(StatusCode::METHOD_NOT_ALLOWED);
    }
    // RFC 9112 3.2.2: a request in absolute form names its host in the target, which replaces
    // any Host field; the backend gets the origin form. A target of plain URI characters in
    // origin form goes on as it came; anything else is read (and checked) as a URI.
    let parsed_uri;
    let (path, authority): (Cow<'_, str>, Option<&str>) = if target.starts_with('/') && target.bytes().all(message::is_plain_uri_byte) {
        (Cow::Borrowed(target), None)
    } else {
        let Ok(uri) = target.parse::<Uri>() else { return Parsed::Refuse(StatusCode::BAD_REQUEST) };
        parsed_uri = uri;
        // RFC 9112 3.2.1: an empty path goes as "/" (before any query); "*" as it is.
        let path = match parsed_uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => Cow::Borrowed("/"),
            Some(p) if p.starts_with('/') || p == "*" => Cow::Borrowed(p),
            Some(p) => Cow::Owned(format!("/{p}")),
        };
        (path, parsed_uri.authority().map(|a| a.as_str()))
    };
    let mut host = None;
    let mut hosts = 0;
    let (mut expect, mut upgrade_asked, mut protocol, mut had_length) = (None, false, None, false);
    let mut named: Vec<&[u8]> = Vec::new();
    // httparse has refused control characters in values already (it allows HTAB and obs-text).
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(f.value);
        } else if f.name.eq_ignore_ascii_case("connection") {
            for token in list_items(f.value) {
                upgrade_asked |= token.eq_ignore_ascii_case(b"upgrade");
                named.push(token);
            }
        } else if f.name.eq_ignore_ascii_case("expect") && expect.is_none() {
            expect = Some(f.value);
        } else if f.name.eq_ignore_ascii_case("upgrade") && protocol.is_none() {
            protocol = Some(f.value);
        } else if f.name.eq_ignore_ascii_case("content-length") {
            had_length = true;
        }
    }
    let expect_continue = version == 1 && expect.is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let fallback;
    let host: &[u8] = match (authority, hosts) {
        (Some(authority), _) => authority.as_bytes(),
        // RFC 9112 3.2: an HTTP/1.1 request without exactly one Host is refused.
        (None, 1) => host.unwrap_or_default(),
        (None, 0) if version == 0 => {
            // HTTP/1.0 may leave it out; the backend, spoken to in HTTP/1.1, needs one.
            fallback = backend.to_string();
            fallback.as_bytes()
        }
        _ => return Parsed::Refuse(StatusCode::BAD_REQUEST),
    };
    // An HTTP/1.0 client cannot switch protocols (RFC 9110 7.8: Upgrade is HTTP/1.1's).
    let upgrade = match protocol {
        Some(p) if version == 1 && upgrade_asked => Some(p),
        _ => None,
    };
    let mut out = Vec::with_capacity(len + 160);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    // HTTP/1.1 to the backend whatever the client spoke: the pool's connections stay alive.
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut forwarded = message::ListField::default();
    let mut forwarded_for = message::ListField::default();
    for f in req.headers.iter() {
        let name = f.name;
        // The framing is this hop's to write (below), whatever Connection names: a body the
        // backend framed differently from the proxy is a smuggled request.
        if name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("content-length")
            || message::is_hop_by_hop(name)
            || message::is_named(&named, name)
            // The proxy answers Expect itself (as nginx does): the backend gets the body at once.
            || (expect_continue && name.eq_ignore_ascii_case("expect"))
        {
            continue;
        }
        // RFC 7239 4: Forwarded (and its de facto forerunner) gather into one list, with this
        // hop at its end.
        if name.eq_ignore_ascii_case("forwarded") {
            forwarded.push(f.value);
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for.push(f.value);
            continue;
        }
        message::field(&mut out, name, f.value);
    }
    match body {
        // A body of unknown length goes on re-chunked.
        Body::Chunked => out.extend_from_slice(message::CHUNKED_FIELD),
        Body::Length(n) if n > 0 || had_length => message::length_field(&mut out, n),
        Body::Length(_) => {}
    }
    if let Some(protocol) = upgrade {
        message::switch_fields(&mut out, protocol);
    }
    if let Some((client, server)) = hop {
        message::write_forwarded(&mut out, &forwarded, &forwarded_for, client, server, host);
    } else {
        forwarded.write(&mut out, b"forwarded");
        forwarded_for.write(&mut out, b"x-forwarded-for");
    }
    out.extend_from_slice(b"\r\n");
    let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE");
    Parsed::Complete(Box::new(Head {
        len,
        forward: out,
        body,
        close,
        http10: version == 0,
        head_request: method == "HEAD",
        idempotent,
        expect_continue,
        upgrade: upgrade.is_some(),
    }))
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

/// [`parse_head`] for the fuzz targets, with a hop to add to `Forwarded`; the fields as the
/// backend reads them from the head it gets.
#[cfg(fuzzing)]
pub fn summarize_head(buf: &[u8]) -> HeadSummary {
    let backend = SocketAddr::from(([127, 0, 0, 1], 8080));
    let hop = Some((SocketAddr::from(([198, 18, 0, 2], 40000)), SocketAddr::from(([198, 18, 0, 1], 80))));
    match parse_head(buf, backend, hop) {
        Parsed::Partial => HeadSummary::Partial,
        Parsed::Refuse(status) => HeadSummary::Refuse(status.as_u16()),
        Parsed::Complete(head) => {
            let mut fields = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut fields);
            let parsed = req.parse(&head.forward);
            assert_eq!(parsed, Ok(httparse::Status::Complete(head.forward.len())), "the forwarded head {:?}", String::from_utf8_lossy(&head.forward));
            HeadSummary::Complete {
                len: head.len,
                method: req.method.unwrap_or_default().to_string(),
                uri: req.path.unwrap_or_default().to_string(),
                headers: req.headers.iter().map(|f| (f.name.to_string(), f.value.to_vec())).collect(),
                body: head.body,
                close: head.close,
                http10: head.http10,
                expect_continue: head.expect_continue,
                upgrade: head.upgrade,
            }
        }
    }
}

/// Serve a connection's requests until it goes quiet between requests (`when_quiet` Return: a
/// turn ends, holding nothing), or is done.
pub(super) async fn serve<S: AppStream>(pool: &Pool, s: &mut S, when_quiet: WhenQuiet) -> io::Result<Served> {
    let mut buf = BytesMut::new(); // allocated by the first read, not while idle
    loop {
        let head = loop {
            match parse_head(&buf, pool.backend(), s.addresses()) {
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

/// How the backend side of an exchange ended.
enum Outcome {
    /// The response went to the client: what the client's connection does next, and whether
    /// the backend connection can carry another request.
    Done { next: Next, reusable: bool },
    /// The backend closed or failed before a byte of a response: nothing reached the client.
    Unanswered,
    /// No response head within the timeout: nothing reached the client.
    TimedOut,
    /// The backend's answer cannot be forwarded: nothing reached the client.
    Invalid,
    /// The backend switched protocols; its 101 went to the client.
    Upgrade,
}

/// Forward one request and its body, and the response back.
async fn exchange<S: AppStream>(pool: &Pool, s: &mut S, buf: &mut BytesMut, head: Head) -> io::Result<Next> {
    let Head { forward, body, close, http10, head_request, idempotent, expect_continue, upgrade, .. } = head;
    let client = Client { head_request, http10, close, upgrade };
    let mut lease = match pool.checkout().await {
        Ok(lease) => lease,
        Err(e) => {
            let status = match e {
                pool::CheckoutError::TimedOut => StatusCode::GATEWAY_TIMEOUT,
                pool::CheckoutError::Connect(e) => {
                    tracing::debug!("http-proxy: connecting to {}: {e}", pool.backend());
                    StatusCode::BAD_GATEWAY
                }
            };
            s.write_all(&message::own_response(status)).await?;
            return Ok(Next::Close);
        }
    };
    let outcome = if body == Body::Length(0) {
        // A request sent again when a reused connection dropped it unanswered (the backend's
        // keep-alive timeout racing ours): only one of RFC 9110 9.2.2's idempotent methods, and
        // only without a body (one read from the client cannot be read again), as nginx's
        // proxy_next_upstream does.
        let mut retried = false;
        loop {
            let outcome = match lease.conn.tcp.write_all(&forward).await {
                Ok(()) => respond(pool, &mut lease.conn.tcp, &mut lease.conn.buf, s, client).await?,
                Err(_) => Outcome::Unanswered,
            };
            if matches!(outcome, Outcome::Unanswered) && lease.reused && !retried && idempotent {
                retried = true;
                lease = match pool.reconnect(lease).await {
                    Ok(lease) => lease,
                    Err(_) => {
                        s.write_all(&message::own_response(StatusCode::BAD_GATEWAY)).await?;
                        return Ok(Next::Close);
                    }
                };
                continue;
            }
            break outcome;
        }
    } else {
        if expect_continue {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        match exchange_with_body(pool, s, buf, &mut lease, &forward, body, client).await? {
            Ok(outcome) => outcome,
            Err(refused) => {
                // The client broke its body off: the backend connection carries the pieces of
                // a request that will not end, and goes.
                if let Some(status) = refused {
                    s.write_all(&message::own_response(status)).await?;
                    return Ok(Next::Close);
                }
                return Ok(Next::Abort);
            }
        }
    };
    let status = match outcome {
        Outcome::Done { next, reusable } => {
            if reusable {
                pool.release(lease);
            }
            return Ok(next);
        }
        Outcome::Upgrade => return splice_upgraded(s, buf, lease.into_conn()).await,
        Outcome::Unanswered | Outcome::Invalid => {
            tracing::debug!("http-proxy: no usable response from {}", pool.backend());
            StatusCode::BAD_GATEWAY
        }
        Outcome::TimedOut => StatusCode::GATEWAY_TIMEOUT,
    };
    s.write_all(&message::own_response(status)).await?;
    Ok(Next::Close)
}

/// The body's half of [`exchange`]: the client's body goes up while the response comes down (a
/// backend may answer before it has read the whole body, and one that streams, an echo, would
/// stall if either waited). Err when the client broke its body off: the status to answer with,
/// if the response had not begun (else the client is reset).
async fn exchange_with_body<S: AppStream>(
    pool: &Pool,
    s: &mut S,
    buf: &mut BytesMut,
    lease: &mut pool::Lease,
    request_head: &[u8],
    body: Body,
    client: Client,
) -> io::Result<Result<Outcome, Option<StatusCode>>> {
    let pool::Conn { tcp, buf: backend_buf } = &mut lease.conn;
    let (mut backend_r, mut backend_w) = tcp.split();
    if backend_w.write_all(request_head).await.is_err() {
        return Ok(Ok(Outcome::Unanswered));
    }
    let began = std::sync::atomic::AtomicBool::new(false);
    let (mut read, mut write) = tokio::io::split(&mut *s);
    let pumping = pump(&mut read, buf, body, &mut backend_w, pool.options.timeout);
    let mut write = Began { w: &mut write, began: &began };
    let responding = respond(pool, &mut backend_r, backend_buf, &mut write, client);
    tokio::pin!(pumping, responding);
    let mut pumped = None;
    let outcome = loop {
        tokio::select! {
            p = &mut pumping, if pumped.is_none() => {
                if let Pumped::Broken(status) = p {
                    let began = began.load(std::sync::atomic::Ordering::Relaxed);
                    return Ok(Err(if began { None } else { status }));
                }
                pumped = Some(p);
            }
            outcome = &mut responding => break outcome?,
        }
    };
    Ok(Ok(match outcome {
        // The backend switched protocols: what it read of the body is its business, the rest of
        // the client's bytes are the new protocol's (the pump stops at the body's end).
        Outcome::Upgrade if pumped.is_none() => match (&mut pumping).await {
            Pumped::Broken(_) => Outcome::Done { next: Next::Abort, reusable: false },
            _ => Outcome::Upgrade,
        },
        Outcome::Done { next, .. } if pumped != Some(Pumped::Complete) => {
            // The body was not read to its end: the next request's first byte is unknown, so
            // the client's connection ends here, and the backend's, which has part of it.
            let next = if matches!(next, Next::KeepAlive) { Next::Close } else { next };
            Outcome::Done { next, reusable: false }
        }
        outcome => outcome,
    }))
}

/// A client writer that notes whether anything was written to it.
struct Began<'a, W> {
    w: &'a mut W,
    began: &'a std::sync::atomic::AtomicBool,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Began<'_, W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.began.store(true, std::sync::atomic::Ordering::Relaxed);
        Pin::new(&mut *self.w).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.w).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.w).poll_shutdown(cx)
    }
}

/// Read the backend's response (after any interim ones) and write it to the client. Err only
/// for the client's side; what went wrong on the backend's is in the [`Outcome`].
async fn respond<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    pool: &Pool,
    backend: &mut R,
    inbuf: &mut BytesMut,
    w: &mut W,
    client: Client,
) -> io::Result<Outcome> {
    let timeout = pool.options.timeout;
    let mut heard = false;
    let answer = loop {
        match message::parse_response(inbuf, client) {
            message::Response::Complete(answer) => break answer,
            message::Response::Interim(len) => {
                heard = true;
                inbuf.advance(len);
                continue;
            }
            message::Response::Invalid => return Ok(Outcome::Invalid),
            message::Response::Partial if inbuf.len() > MAX_HEADER => return Ok(Outcome::Invalid),
            message::Response::Partial => {}
        }
        if inbuf.capacity() - inbuf.len() < 1024 {
            inbuf.reserve(4096);
        }
        match tokio::time::timeout(timeout, backend.read_buf(inbuf)).await {
            Err(_) => return Ok(Outcome::TimedOut),
            Ok(Ok(n)) if n > 0 => {}
            // RFC 9112 9.3.1: a connection that closes before any response leaves the request
            // unanswered (a reused one may be retried); one that closes within a head is broken.
            Ok(_) if inbuf.is_empty() && !heard => return Ok(Outcome::Unanswered),
            Ok(_) => return Ok(Outcome::Invalid),
        }
    };
    inbuf.advance(answer.len);
    if answer.status == StatusCode::SWITCHING_PROTOCOLS {
        w.write_all(&answer.head).await?;
        return Ok(Outcome::Upgrade);
    }
    let mut out = ToClient { pending: answer.head, framing: answer.to };
    let whole = match answer.from {
        message::BodyIn::None => true,
        message::BodyIn::Length(mut left) => loop {
            let n = left.min(inbuf.len() as u64) as usize;
            if n > 0 {
                out.piece(w, &inbuf[..n]).await?;
                inbuf.advance(n);
                left -= n as u64;
            }
            if left == 0 {
                break true;
            }
            if read_more(backend, inbuf, timeout, &mut out, w).await? != Read::More {
                break false;
            }
        },
        message::BodyIn::Chunked => {
            let mut chunked = Chunked::START;
            loop {
                let Ok(n) = chunked.decode(inbuf, |d| out.append(d)) else { break false };
                inbuf.advance(n);
                out.flush_if_full(w).await?;
                if chunked == Chunked::Done {
                    break true;
                }
                if read_more(backend, inbuf, timeout, &mut out, w).await? != Read::More {
                    break false;
                }
            }
        }
        message::BodyIn::UntilClose => loop {
            if !inbuf.is_empty() {
                out.piece(w, inbuf).await?;
                inbuf.clear();
            }
            match read_more(backend, inbuf, timeout, &mut out, w).await? {
                Read::More => {}
                // RFC 9112 6.3 item 8: the close ends this body.
                Read::Closed => break true,
                Read::Failed => break false,
            }
        },
    };
    out.finish(w, whole).await?;
    if !whole {
        return Ok(Outcome::Done { next: Next::Abort, reusable: false });
    }
    let next = if answer.close { Next::Close } else { Next::KeepAlive };
    // Bytes after the response are no answer to anything of ours: the connection goes.
    Ok(Outcome::Done { next, reusable: answer.reusable && inbuf.is_empty() })
}

/// What a read of a response body brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    More,
    /// The backend closed its side.
    Closed,
    /// A read error, or silence past the timeout.
    Failed,
}

/// Read more of a response body; what is pending goes to the client before any wait (it is
/// part of a response that may stream).
async fn read_more<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    backend: &mut R,
    inbuf: &mut BytesMut,
    timeout: Duration,
    out: &mut ToClient,
    w: &mut W,
) -> io::Result<Read> {
    if inbuf.capacity() - inbuf.len() < BODY_READ / 2 {
        inbuf.reserve(BODY_READ);
    }
    let read = match ready_now(backend.read_buf(inbuf)).await {
        Some(read) => Ok(read),
        None => {
            out.flush(w).await?;
            tokio::time::timeout(timeout, backend.read_buf(inbuf)).await
        }
    };
    Ok(match read {
        Ok(Ok(n)) if n > 0 => Read::More,
        Ok(Ok(_)) => Read::Closed,
        Ok(Err(e)) => {
            tracing::debug!("http-proxy: response body from the backend: {e}");
            Read::Failed
        }
        Err(_) => Read::Failed,
    })
}

/// `fut`'s output if it is ready at its first poll.
async fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| Poll::Ready(match fut.as_mut().poll(cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }))
    .await
}

/// The response on its way to the client, in this hop's framing: small pieces gather behind the
/// head (or one another) for one write, large ones go as they are.
struct ToClient {
    pending: Vec<u8>,
    framing: Framing,
}

impl ToClient {
    /// A piece of body, framed (synchronously, into the pending write).
    fn append(&mut self, data: &[u8]) {
        if self.framing == Framing::Chunked {
            message::chunk(&mut self.pending, data);
        } else {
            self.pending.extend_from_slice(data);
        }
    }

    async fn piece<W: AsyncWrite + Unpin>(&mut self, w: &mut W, data: &[u8]) -> io::Result<()> {
        if data.len() <= SMALL_WRITE || self.framing == Framing::Chunked {
            self.append(data);
            return self.flush_if_full(w).await;
        }
        self.flush(w).await?;
        w.write_all(data).await
    }

    async fn flush_if_full<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        if self.pending.len() >= SMALL_WRITE { self.flush(w).await } else { Ok(()) }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        if !self.pending.is_empty() {
            w.write_all(&self.pending).await?;
            self.pending.clear();
        }
        Ok(())
    }

    /// What is pending, and the chunked body's end if the body is whole (a cut-short body gets
    /// no end: the client is reset after it).
    async fn finish<W: AsyncWrite + Unpin>(mut self, w: &mut W, whole: bool) -> io::Result<()> {
        if whole && self.framing == Framing::Chunked {
            // Trailers are dropped: this hop's chunked encoding ends without them.
            self.pending.extend_from_slice(message::LAST_CHUNK);
        }
        self.flush(w).await
    }
}

/// How the client's request body went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    /// Read to its end and handed on.
    Complete,
    /// The backend stopped taking it (it closed, or failed, before the end).
    Abandoned,
    /// The client broke off (the status to answer with, if any: 400 for a malformed body, 408
    /// for a client gone silent within it).
    Broken(Option<StatusCode>),
}

/// Read the request body from the client (first what is already in `buf`) and write it to the
/// backend, re-chunked if it came chunked; whatever follows the body (a pipelined request)
/// stays in `buf`. A client silent for `timeout` within its body breaks it (nginx's
/// client_body_timeout).
async fn pump<R: AsyncRead + Unpin, B: AsyncWrite + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    body: Body,
    backend: &mut B,
    timeout: Duration,
) -> Pumped {
    let mut left = match body {
        Body::Length(n) => n,
        Body::Chunked => u64::MAX,
    };
    let mut chunked = Chunked::START;
    let mut framed = Vec::new();
    loop {
        if !buf.is_empty() {
            let sent = match body {
                Body::Length(_) => {
                    let n = left.min(buf.len() as u64) as usize;
                    left -= n as u64;
                    let sent = backend.write_all(&buf[..n]).await;
                    buf.advance(n);
                    sent
                }
                Body::Chunked => {
                    framed.clear();
                    let decoded = chunked.decode(buf, |d| message::chunk(&mut framed, d));
                    let Ok(n) = decoded else { return Pumped::Broken(Some(StatusCode::BAD_REQUEST)) };
                    buf.advance(n);
                    if chunked == Chunked::Done {
                        framed.extend_from_slice(message::LAST_CHUNK);
                    }
                    backend.write_all(&framed).await
                }
            };
            if sent.is_err() {
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
        match tokio::time::timeout(timeout, r.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Pumped::Broken(None),
            Err(_) => return Pumped::Broken(Some(StatusCode::REQUEST_TIMEOUT)),
        }
    }
}

/// After a 101: splice the client with the backend connection until both close.
async fn splice_upgraded<S: AppStream>(s: &mut S, buf: &mut BytesMut, mut backend: pool::Conn) -> io::Result<Next> {
    // What the backend sent after its 101, and what the client sent after its request, belong
    // to the new protocol.
    if !backend.buf.is_empty() {
        s.write_all(&backend.buf).await?;
        backend.buf.clear();
    }
    if !buf.is_empty() {
        if backend.tcp.write_all(buf).await.is_err() {
            return Ok(Next::Abort);
        }
        buf.clear();
    }
    match tokio::io::copy_bidirectional(s, &mut backend.tcp).await {
        Ok(_) => Ok(Next::Close),
        Err(_) => Ok(Next::Abort),
    }
}

#[cfg(test)]
mod tests;
