//! Built-in applications for `synx run --app`: echo, discard, http and proxy.
//!
//! Each is written against `AsyncRead + AsyncWrite`, so it runs unchanged on a synx
//! [`crate::api::Stream`], and is tested here on in-memory streams. Echo, discard and http also
//! come in turns ([`serve_turn`], for `Engine::serve_turns`): the same bytes, but a turn
//! returns the stream when the peer goes quiet at a clean boundary, instead of waiting.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::pin,
    str::FromStr,
    task::Poll,
};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Which application serves a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Echo every byte; on the peer's FIN, send what is left, then close.
    Echo,
    /// Read and drop everything; close after the peer's FIN.
    Discard,
    /// A small fixed HTTP/1.1 response, keep-alive; `Connection: close` makes the server close
    /// first.
    Http,
    /// Splice each connection to a kernel-TCP backend, with half-close and resets propagated.
    Proxy(SocketAddr),
}

impl fmt::Display for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            App::Echo => f.write_str("echo"),
            App::Discard => f.write_str("discard"),
            App::Http => f.write_str("http"),
            App::Proxy(a) => write!(f, "proxy={a}"),
        }
    }
}

impl FromStr for App {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(App::Echo),
            "discard" => Ok(App::Discard),
            "http" => Ok(App::Http),
            _ => match s.strip_prefix("proxy=") {
                Some(addr) => addr.parse().map(App::Proxy).map_err(|e| {
                    format!("bad proxy backend {addr:?}: {e} (write proxy=HOST:PORT, e.g. proxy=198.18.0.5:80)")
                }),
                None => Err(format!(
                    "unknown app {s:?}: choose echo, discard, http or proxy=HOST:PORT"
                )),
            },
        }
    }
}

/// Streams that can be torn down with a reset (RST) instead of a FIN.
pub trait Abort {
    fn abort(&mut self);
}

impl Abort for tokio::net::TcpStream {
    fn abort(&mut self) {
        // SO_LINGER 0 turns the close that follows into a RST.
        let _ = socket2::SockRef::from(&*self).set_linger(Some(std::time::Duration::ZERO));
    }
}

impl Abort for tokio::io::DuplexStream {
    fn abort(&mut self) {}
}

/// Serve one connection with `app` until it is done.
pub async fn serve<S>(app: App, stream: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Abort,
{
    // Each app's future on the heap at its own size: a spawned task is as large as its
    // future, and inline this match would cost every connection the largest app's state
    // (measured: 6.6 KB per idle echo connection, the proxy's and http's buffers included).
    match app {
        App::Echo => Box::pin(echo(stream)).await,
        App::Discard => Box::pin(discard(stream)).await,
        App::Http => Box::pin(http(stream)).await,
        App::Proxy(backend) => {
            Box::pin(async move {
                let backend = tokio::net::TcpStream::connect(backend).await?;
                backend.set_nodelay(true)?;
                proxy(stream, backend).await
            })
            .await
        }
    }
}

/// Serve one turn of a connection with `app`: what the peer has sent so far, and whatever it
/// sends while the turn is busy. `Some(stream)` when the peer has gone quiet at a clean
/// boundary (nothing half-read, everything written), `None` when the connection is done (drop
/// the stream to close it). The proxy holds a backend connection, so its turn runs to the end.
pub async fn serve_turn<S>(app: App, mut stream: S) -> std::io::Result<Option<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Abort,
{
    // A turn's future lives only while the turn runs (the engine boxes it once): no box per app
    // (`serve` boxes the proxy's, whose copy buffers would make every other app's turn as large).
    let served = match app {
        App::Echo => echo_serve(&mut stream, WhenQuiet::Return).await?,
        App::Discard => discard_serve(&mut stream, WhenQuiet::Return).await?,
        App::Http => http_serve(&mut stream, WhenQuiet::Return).await?,
        App::Proxy(_) => {
            serve(app, stream).await?;
            return Ok(None);
        }
    };
    Ok(match served {
        Served::Quiet => Some(stream),
        Served::Done => None,
    })
}

pub async fn echo_turn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<Option<S>> {
    Ok(echo_serve(&mut s, WhenQuiet::Return).await?.then_back(s))
}

pub async fn discard_turn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<Option<S>> {
    Ok(discard_serve(&mut s, WhenQuiet::Return).await?.then_back(s))
}

pub async fn http_turn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<Option<S>> {
    Ok(http_serve(&mut s, WhenQuiet::Return).await?.then_back(s))
}

/// What an app does when the peer has sent nothing more and a read would wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenQuiet {
    /// Wait for it (an app that owns its task).
    Wait,
    /// Return [`Served::Quiet`] (a turn).
    Return,
}

impl WhenQuiet {
    /// Run `read` to the end (Wait), or only if it is ready at once (Return: None when it would
    /// wait). `read` must be cancel-safe: a read that is pending has taken nothing.
    async fn read<F: Future>(self, read: F) -> Option<F::Output> {
        match self {
            WhenQuiet::Wait => Some(read.await),
            WhenQuiet::Return => {
                let mut read = pin!(read);
                std::future::poll_fn(|cx| {
                    Poll::Ready(match read.as_mut().poll(cx) {
                        Poll::Ready(v) => Some(v),
                        Poll::Pending => None,
                    })
                })
                .await
            }
        }
    }
}

/// How an app's serving loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// The connection is done: the stream may be dropped.
    Done,
    /// The peer went quiet at a clean boundary ([`WhenQuiet::Return`] only).
    Quiet,
}

impl Served {
    fn then_back<S>(self, s: S) -> Option<S> {
        match self {
            Served::Quiet => Some(s),
            Served::Done => None,
        }
    }
}

/// A read buffer that costs an idle connection nothing on the heap: reads land in a small
/// inline array; the large buffer exists only while reads fill the small one (a bulk flow),
/// and goes again with the first read that would have fit it, so a connection that has gone
/// quiet after traffic holds no 32 KB either.
struct LazyBuf {
    small: [u8; 256],
    big: Vec<u8>,
}

impl LazyBuf {
    const BIG: usize = 32 * 1024;

    fn new() -> Self {
        Self { small: [0; 256], big: Vec::new() }
    }

    /// Read once; returns the bytes read (empty at EOF).
    async fn read<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> std::io::Result<&[u8]> {
        if self.big.is_empty() {
            let n = s.read(&mut self.small).await?;
            if n == self.small.len() {
                // A full small read: more is likely coming; read it in large pieces.
                self.big = vec![0u8; Self::BIG];
            }
            return Ok(&self.small[..n]);
        }
        let n = s.read(&mut self.big).await?;
        if n <= self.small.len() {
            // The flow has slowed to small reads: back to the inline array, large one freed.
            self.small[..n].copy_from_slice(&self.big[..n]);
            self.big = Vec::new();
            return Ok(&self.small[..n]);
        }
        Ok(&self.big[..n])
    }
}

pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    echo_serve(&mut s, WhenQuiet::Wait).await.map(drop)
}

async fn echo_serve<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, when_quiet: WhenQuiet) -> std::io::Result<Served> {
    let mut buf = LazyBuf::new();
    loop {
        let Some(data) = when_quiet.read(buf.read(s)).await else { return Ok(Served::Quiet) };
        let data = data?;
        if data.is_empty() {
            // The peer's FIN: everything read has been written; close our side too.
            s.shutdown().await?;
            return Ok(Served::Done);
        }
        s.write_all(data).await?;
    }
}

pub async fn discard<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    discard_serve(&mut s, WhenQuiet::Wait).await.map(drop)
}

async fn discard_serve<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, when_quiet: WhenQuiet) -> std::io::Result<Served> {
    let mut buf = LazyBuf::new();
    loop {
        let Some(data) = when_quiet.read(buf.read(s)).await else { return Ok(Served::Quiet) };
        if data?.is_empty() {
            s.shutdown().await?;
            return Ok(Served::Done);
        }
    }
}

/// The body of every HTTP response.
pub const HTTP_BODY: &[u8] = b"hello from synx\n";
const MAX_HEADER: usize = 16 * 1024;
/// Request bodies are read and dropped as they arrive, so their size costs no memory; a
/// declared length beyond this is refused with 413 (nginx refuses above 1 MiB by default).
pub const MAX_BODY: u64 = 64 << 20;

/// How a request's body is framed (RFC 9112 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Content-Length bytes (0: no body).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Complete { head_len: usize, body: Body, close: bool },
    Partial,
    Bad,
    TooLarge,
}

/// RFC 9110 8.6: Content-Length = 1*DIGIT; anything else (signs, spaces inside, overflow) is
/// not a length.
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// One request head from `buf`. A plain function, so httparse's header array lives on the
/// stack for the parse only, never in the connection's future while it waits for bytes.
fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let mut length: Option<u64> = None;
            let mut chunked = false;
            let mut close = req.version == Some(0);
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    // RFC 9112 6.3 item 5: an invalid length, or several that differ, is an
                    // unrecoverable framing error.
                    match (content_length(h.value), length) {
                        (Some(n), None) => length = Some(n),
                        (Some(n), Some(m)) if n == m => {}
                        _ => return Parsed::Bad,
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    // RFC 9112 6.3 item 4: chunked must be the final coding, or the length is
                    // unknown; other codings are not ours to undo.
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if v.trim() != "chunked" || chunked {
                        return Parsed::Bad;
                    }
                    chunked = true;
                } else if h.name.eq_ignore_ascii_case("connection") {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if v.contains("close") {
                        close = true;
                    } else if v.contains("keep-alive") {
                        close = false;
                    }
                }
            }
            let body = match (chunked, length) {
                // RFC 9112 6.3 item 3: both framings at once is a smuggling attempt; refuse.
                (true, Some(_)) => return Parsed::Bad,
                (true, None) => Body::Chunked,
                (false, Some(n)) if n > MAX_BODY => return Parsed::TooLarge,
                (false, n) => Body::Length(n.unwrap_or(0)),
            };
            Parsed::Complete { head_len, body, close }
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad,
    }
}

/// Where a chunked body (RFC 9112 7.1) is while it is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Reading a chunk-size line (hex digits, optional extensions, CRLF).
    Size { size: u64, digits: u8, in_ext: bool },
    /// Skipping chunk data, then its CRLF.
    Data { left: u64 },
    DataEnd { cr: bool },
    /// After the last chunk: trailer lines until an empty one.
    Trailer { line_len: u64 },
    Done,
}

impl Chunked {
    const START: Chunked = Chunked::Size { size: 0, digits: 0, in_ext: false };

    /// Consume from `buf`; returns the bytes taken, or Err for a malformed body. Stops at the
    /// end of the body (state Done) with the rest of `buf` untouched.
    fn skip(&mut self, buf: &[u8]) -> Result<usize, ()> {
        let mut i = 0;
        while i < buf.len() && *self != Chunked::Done {
            let b = buf[i];
            *self = match *self {
                Chunked::Size { size, digits, in_ext } => match b {
                    b'\n' if digits > 0 => {
                        if size == 0 { Chunked::Trailer { line_len: 0 } } else { Chunked::Data { left: size } }
                    }
                    b'\r' => Chunked::Size { size, digits, in_ext },
                    _ if in_ext => Chunked::Size { size, digits, in_ext },
                    b';' | b' ' | b'\t' if digits > 0 => Chunked::Size { size, digits, in_ext: true },
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(())? as u64;
                        // 15 hex digits are already beyond any body we take.
                        if digits >= 15 {
                            return Err(());
                        }
                        Chunked::Size { size: size * 16 + d, digits: digits + 1, in_ext }
                    }
                },
                Chunked::Data { left } => {
                    let take = (left.min((buf.len() - i) as u64)) as usize;
                    i += take;
                    let left = left - take as u64;
                    *self = if left == 0 { Chunked::DataEnd { cr: false } } else { Chunked::Data { left } };
                    continue;
                }
                Chunked::DataEnd { cr } => match (b, cr) {
                    (b'\r', false) => Chunked::DataEnd { cr: true },
                    (b'\n', _) => Chunked::START,
                    _ => return Err(()),
                },
                Chunked::Trailer { line_len } => match b {
                    b'\n' if line_len == 0 => Chunked::Done,
                    b'\n' => Chunked::Trailer { line_len: 0 },
                    b'\r' => Chunked::Trailer { line_len },
                    _ if line_len as usize >= MAX_HEADER => return Err(()),
                    _ => Chunked::Trailer { line_len: line_len + 1 },
                },
                Chunked::Done => Chunked::Done,
            };
            i += 1;
        }
        Ok(i)
    }
}

/// What is left of a request body being skipped.
enum Skip {
    Length(u64),
    Chunked(Chunked),
}

impl Skip {
    fn done(&self) -> bool {
        matches!(self, Skip::Length(0) | Skip::Chunked(Chunked::Done))
    }

    /// Drop the body's bytes from the front of `buf`.
    fn consume(&mut self, buf: &mut Vec<u8>) -> Result<(), ()> {
        let n = match self {
            Skip::Length(left) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                n as usize
            }
            Skip::Chunked(c) => c.skip(buf)?,
        };
        buf.drain(..n);
        Ok(())
    }
}

pub async fn http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    http_serve(&mut s, WhenQuiet::Wait).await.map(drop)
}

async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, status: &str) -> std::io::Result<Served> {
    let response = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(response.as_bytes()).await?;
    s.shutdown().await?;
    Ok(Served::Done)
}

async fn http_serve<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, when_quiet: WhenQuiet) -> std::io::Result<Served> {
    let mut buf: Vec<u8> = Vec::new(); // allocated by the first read, not while idle
    loop {
        // Parse one request head from what we have; read more until it is complete.
        let (head_len, body, close) = loop {
            match parse_request(&buf) {
                Parsed::Complete { head_len, body, close } => break (head_len, body, close),
                Parsed::Partial => {
                    if buf.len() > MAX_HEADER {
                        return refuse(s, "431 Request Header Fields Too Large").await;
                    }
                    // Between requests (nothing buffered) a turn may end; within a request, the
                    // rest is awaited, so no turn ends with half a request read.
                    let read = match buf.is_empty() {
                        true => when_quiet,
                        false => WhenQuiet::Wait,
                    };
                    let Some(n) = read.read(read_more(s, &mut buf)).await else { return Ok(Served::Quiet) };
                    if n? == 0 {
                        // EOF between requests: close our side too.
                        s.shutdown().await?;
                        return Ok(Served::Done);
                    }
                }
                Parsed::Bad => return refuse(s, "400 Bad Request").await,
                Parsed::TooLarge => return refuse(s, "413 Content Too Large").await,
            }
        };
        buf.drain(..head_len);
        // The body is dropped as it arrives: whatever its length, it occupies at most one read.
        let mut skip = match body {
            Body::Length(n) => Skip::Length(n),
            Body::Chunked => Skip::Chunked(Chunked::START),
        };
        loop {
            if skip.consume(&mut buf).is_err() {
                return refuse(s, "400 Bad Request").await;
            }
            if skip.done() {
                break;
            }
            if read_more(s, &mut buf).await? == 0 {
                return Ok(Served::Done);
            }
        }
        if buf.is_empty() && when_quiet == WhenQuiet::Wait {
            // Between requests a keep-alive connection holds no buffer (the next read allocates).
            // A turn's buffer goes with the turn.
            buf = Vec::new();
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            HTTP_BODY.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let mut response = Vec::with_capacity(head.len() + HTTP_BODY.len());
        response.extend_from_slice(head.as_bytes());
        response.extend_from_slice(HTTP_BODY);
        s.write_all(&response).await?;
        if close {
            // The server closes first: our FIN goes out now (FIN_WAIT_1 ... TIME_WAIT).
            s.shutdown().await?;
            return Ok(Served::Done);
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    // Straight into the buffer's spare room: no chunk array held in the future while idle.
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    s.read_buf(buf).await
}

/// Copy both directions until both are closed. A FIN in one direction becomes a shutdown of the
/// other side's write half; an error (a reset) on either side aborts the other.
pub async fn proxy<A, B>(a: A, b: B) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + Abort,
    B: AsyncRead + AsyncWrite + Unpin + Abort,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let a_to_b = async {
        let r = tokio::io::copy(&mut ar, &mut bw).await;
        if r.is_ok() {
            bw.shutdown().await?;
        }
        r
    };
    let b_to_a = async {
        let r = tokio::io::copy(&mut br, &mut aw).await;
        if r.is_ok() {
            aw.shutdown().await?;
        }
        r
    };
    let (r1, r2) = tokio::join!(a_to_b, b_to_a);
    if r1.is_err() || r2.is_err() {
        let mut a = ar.unsplit(aw);
        let mut b = br.unsplit(bw);
        a.abort();
        b.abort();
        return r1.and(r2).map(|_| ());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_turn_holds_no_large_buffers_either() {
        // Every turn of every connection boxes this future: the proxy's copy buffers stay out.
        let size = std::mem::size_of_val(&serve_turn(App::Echo, tokio::io::duplex(64).0));
        assert!(size <= 1024, "serve_turn: {size} B");
    }

    #[test]
    fn an_idle_connection_task_holds_no_large_buffers() {
        // A spawned task is as large as its future, for every connection, idle or not: the
        // dispatch boxes each app, and no app keeps a read buffer inline while it waits.
        let (a, _b) = tokio::io::duplex(64);
        let serve = serve(App::Echo, a);
        assert!(std::mem::size_of_val(&serve) <= 256, "serve: {} B", std::mem::size_of_val(&serve));
        for (name, size) in [
            ("echo", std::mem::size_of_val(&echo(tokio::io::duplex(64).0))),
            ("discard", std::mem::size_of_val(&discard(tokio::io::duplex(64).0))),
            ("http", std::mem::size_of_val(&http(tokio::io::duplex(64).0))),
        ] {
            assert!(size <= 1024, "{name}: {size} B");
        }
    }

    #[tokio::test]
    async fn the_large_read_buffer_lives_only_while_reads_fill_the_small_one() {
        use tokio::io::AsyncWriteExt as _;
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut buf = LazyBuf::new();
        client.write_all(b"ping").await.unwrap();
        assert_eq!(buf.read(&mut server).await.unwrap(), b"ping");
        assert_eq!(buf.big.capacity(), 0, "a small read allocates nothing");
        let bulk = vec![7u8; 10_000];
        client.write_all(&bulk).await.unwrap();
        assert_eq!(buf.read(&mut server).await.unwrap().len(), 256);
        assert_eq!(buf.big.len(), LazyBuf::BIG, "a full small read switches to the large buffer");
        let mut got = 256;
        while got < bulk.len() {
            got += buf.read(&mut server).await.unwrap().len();
        }
        assert_eq!(got, bulk.len(), "every byte read exactly once");
        client.write_all(b"quiet now").await.unwrap();
        assert_eq!(buf.read(&mut server).await.unwrap(), b"quiet now");
        assert_eq!(buf.big.capacity(), 0, "a small read frees the large buffer");
        drop(client);
        assert!(buf.read(&mut server).await.unwrap().is_empty(), "EOF");
    }

    #[test]
    fn app_names_parse_and_print() {
        for s in ["echo", "discard", "http", "proxy=198.18.0.5:80", "proxy=[fd00::5]:8080"] {
            assert_eq!(s.parse::<App>().unwrap().to_string(), s);
        }
        assert!("proxy=nohost".parse::<App>().unwrap_err().contains("proxy=HOST:PORT"));
        assert!("ftp".parse::<App>().unwrap_err().contains("choose echo"));
    }

    #[tokio::test]
    async fn echo_returns_every_byte_then_closes_after_fin() {
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(echo(server));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let (mut r, mut w) = tokio::io::split(&mut client);
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let recv = r.read_to_end(&mut got);
        let (_, n) = tokio::join!(send, recv);
        assert_eq!(n.unwrap(), data.len());
        assert_eq!(got, data);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn http_keeps_alive_and_closes_on_connection_close() {
        let (mut client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(http(server));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let text = String::from_utf8(got).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
        assert_eq!(text.matches("hello from synx").count(), 3);
        assert!(text.ends_with("Connection: close\r\n\r\nhello from synx\n"), "{text}");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_echo_turn_hands_back_when_quiet_and_the_next_turn_continues() {
        let (mut client, server) = tokio::io::duplex(1024);
        // The first turn runs at accept: nothing sent yet, so it hands the stream straight back.
        let server = echo_turn(server).await.unwrap().expect("a quiet client: handed back");
        client.write_all(b"one").await.unwrap();
        let server = echo_turn(server).await.unwrap().expect("quiet after the echo: handed back");
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one");
        client.write_all(b"two").await.unwrap();
        let server = echo_turn(server).await.unwrap().expect("handed back again");
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"two");
        client.shutdown().await.unwrap();
        let done = echo_turn(server).await.unwrap();
        assert!(done.is_none(), "EOF ends the connection");
        // The echo shut its side down: the peer reads EOF, and nothing else.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn echo_turns_lose_nothing_across_turn_boundaries() {
        // A bulk transfer through a small pipe, served in turns as the engine would: every
        // hand-back is followed by the next turn. Every byte comes back once, in order.
        let (mut client, server) = tokio::io::duplex(1024);
        let turns = tokio::spawn(async move {
            let mut s = server;
            while let Some(back) = echo_turn(s).await.unwrap() {
                s = back;
                tokio::task::yield_now().await;
            }
        });
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 + i / 256) as u8).collect();
        let (mut r, mut w) = tokio::io::split(&mut client);
        let send = async {
            for piece in data.chunks(777) {
                w.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, n) = tokio::join!(send, r.read_to_end(&mut got));
        assert_eq!(n.unwrap(), data.len());
        assert!(got == data, "the echo differs");
        turns.await.unwrap();
    }

    #[tokio::test]
    async fn a_discard_turn_reads_what_is_there_and_ends_at_eof() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(&[9u8; 700]).await.unwrap();
        let server = discard_turn(server).await.unwrap().expect("quiet: handed back");
        client.shutdown().await.unwrap();
        assert!(discard_turn(server).await.unwrap().is_none());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn an_http_request_split_across_writes_is_answered_once_in_one_turn() {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let turn = tokio::spawn(http_turn(server));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!turn.is_finished(), "half a request read: the turn must wait for the rest");
        client.write_all(b"st: x\r\n\r\n").await.unwrap();
        let server = turn.await.unwrap().unwrap().expect("answered, then quiet: handed back");
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let text = String::from_utf8(got).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 1, "{text}");
        assert!(text.ends_with("\r\n\r\nhello from synx\n"), "{text}");
    }

    #[tokio::test]
    async fn http_turns_answer_pipelined_requests_in_order_and_end_on_connection_close() {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let server = http_turn(server).await.unwrap().expect("two answers, then quiet");
        let one = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\nhello from synx\n";
        let mut got = vec![0u8; 2 * one.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), one.repeat(2));
        client.write_all(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
        assert!(http_turn(server).await.unwrap().is_none(), "Connection: close ends the connection");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let text = String::from_utf8(got).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nhello from synx\n"
        );
    }

    /// Send `request` to the http app, close the write side, and return all it answered.
    async fn http_exchange(request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(http(server));
        let (mut read, mut write) = tokio::io::split(&mut client);
        let (_, got) = tokio::join!(
            async {
                let _ = write.write_all(request).await;
                let _ = write.shutdown().await;
            },
            async {
                let mut got = Vec::new();
                let _ = read.read_to_end(&mut got).await;
                got
            }
        );
        task.await.unwrap().unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }

    fn statuses(responses: &str) -> Vec<&str> {
        responses.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect()
    }

    #[tokio::test]
    async fn absurd_or_malformed_body_framing_is_refused_without_panic() {
        let cases: [(&[u8], &str); 9] = [
            // u64::MAX: head_len + body_len used to overflow (a panic in debug builds).
            (b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n", "413"),
            (b"POST / HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\nabc", "413"),
            // Beyond u64: not a length at all.
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", "400"),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", "400"),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "400"),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "400"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", "400"),
        ];
        for (request, status) in cases {
            let got = http_exchange(request).await;
            assert_eq!(statuses(&got), [status], "{}: {got}", String::from_utf8_lossy(request));
            assert!(got.contains("Connection: close"), "{got}");
        }
    }

    #[tokio::test]
    async fn equal_lengths_and_chunked_bodies_are_skipped_and_the_next_request_answered() {
        let got = http_exchange(
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc\
              POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n\
              GET /c HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&got), ["200", "200", "200"], "{got}");
        assert!(got.ends_with("Connection: close\r\n\r\nhello from synx\n"), "{got}");
    }

    #[tokio::test]
    async fn a_large_body_is_consumed_as_it_arrives_not_kept() {
        // 48 MiB of body through a 4 KiB pipe: the app must read it as it comes (the old app
        // kept the whole body before answering; with a 1 TB declaration that was a memory
        // exhaustion). Both framings, then a request after each.
        const LEN: usize = 48 << 20;
        let (mut client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(http(server));
        let (mut read, mut write) = tokio::io::split(&mut client);
        let writer = async {
            write.write_all(format!("POST /big HTTP/1.1\r\nContent-Length: {LEN}\r\n\r\n").as_bytes()).await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..LEN / chunk.len() {
                write.write_all(&chunk).await.unwrap();
            }
            write.write_all(b"POST /chunks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
            for _ in 0..LEN / chunk.len() {
                write.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
                write.write_all(&chunk).await.unwrap();
                write.write_all(b"\r\n").await.unwrap();
            }
            write.write_all(b"0\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            read.read_to_end(&mut got).await.unwrap();
            got
        };
        let (_, got) = tokio::join!(writer, reader);
        let got = String::from_utf8_lossy(&got);
        assert_eq!(statuses(&got), ["200", "200", "200"], "{got}");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn http_rejects_garbage_with_400() {
        let (mut client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(http(server));
        client.write_all(b"\x00\x01 nonsense\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 400"));
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn proxy_carries_both_directions_and_half_close() {
        let (mut client, front) = tokio::io::duplex(1024);
        let (back, mut backend) = tokio::io::duplex(1024);
        let task = tokio::spawn(proxy(front, back));
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap(); // client half-closes
        let mut at_backend = Vec::new();
        backend.read_to_end(&mut at_backend).await.unwrap(); // sees EOF: half-close propagated
        assert_eq!(at_backend, b"request");
        backend.write_all(b"response after half-close").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut at_client = Vec::new();
        client.read_to_end(&mut at_client).await.unwrap();
        assert_eq!(at_client, b"response after half-close");
        task.await.unwrap().unwrap();
    }
}
