//! `--app http`: a small fixed response to every request, keep-alive, in turns (`GET /bytes/N`:
//! a body of N bytes instead, for benches on emulated paths); and the request framing rules
//! (RFC 9112) the http proxy shares.

use std::io::Write as _;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{Served, WhenQuiet};

/// The body of every HTTP response but `GET /bytes/N`'s.
pub const HTTP_BODY: &[u8] = b"hello from synx\n";
/// The largest body `GET /bytes/N` sends.
pub const HTTP_MAX_SIZED_BODY: usize = 1 << 30;
/// What `/bytes/N` bodies are made of, written a slice at a time (no buffer per response).
static SIZED_BODY_FILL: [u8; 16 * 1024] = [b'.'; 16 * 1024];
/// The longest request head the http app reads before answering 431.
pub const MAX_HEADER: usize = 16 * 1024;
/// Request bodies are read and dropped as they arrive, so their size costs no memory; a
/// declared length beyond this is refused with 413 (nginx refuses above 1 MiB by default).
pub const MAX_BODY: u64 = 64 << 20;

/// How a request's body is framed (RFC 9112 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Content-Length bytes (0: no body).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

/// What [`parse_request`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Complete { head_len: usize, body: Body, close: bool },
    Partial,
    Bad,
    TooLarge,
}

/// The items of a list-valued field (RFC 9110 5.6.1: comma-separated, optional whitespace
/// around each), as bytes: Connection options, transfer codings, repeated lengths.
pub(super) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
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
/// stack for the parse only, never in the connection's future while it waits for bytes. Public
/// for the bench's kernel peer, which parses with this same function.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => match framing(req.version.unwrap_or(1), req.headers) {
            None => Parsed::Bad,
            Some((Body::Length(n), _)) if n > MAX_BODY => Parsed::TooLarge,
            Some((body, close)) => Parsed::Complete { head_len, body, close },
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad,
    }
}

/// A request's body framing and whether the client asks to close after it (HTTP/1.0 unless
/// it says keep-alive, HTTP/1.1 if it says close), from its headers. None for framing that
/// cannot be trusted: a server and a proxy that read it differently would let a request be
/// smuggled past the proxy.
pub(super) fn framing(version: u8, headers: &[httparse::Header<'_>]) -> Option<(Body, bool)> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let (mut close, mut keep_alive) = (false, false);
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 6.3 item 5: an invalid length, or several that differ, is an
            // unrecoverable framing error.
            match (content_length(h.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return None,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 6.3 item 4: chunked must be the final coding, or the length is
            // unknown; other codings are not ours to undo.
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") || chunked {
                return None;
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            // RFC 9112 9.3: the close option ends the connection after this exchange, wherever
            // it stands; an HTTP/1.0 client keeps it only if it says keep-alive. Options are
            // tokens (RFC 9110 7.6.1), compared whole.
            for option in list_items(h.value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let close = close || (version == 0 && !keep_alive);
    match (chunked, length) {
        // RFC 9112 6.3 item 3: both framings at once is a smuggling attempt; refuse.
        (true, Some(_)) => None,
        // RFC 9112 6.1: chunked in an HTTP/1.0 request is not to be trusted either.
        (true, None) if version == 0 => None,
        (true, None) => Some((Body::Chunked, close)),
        (false, n) => Some((Body::Length(n.unwrap_or(0)), close)),
    }
}

/// Where a chunked body (RFC 9112 7.1) is while it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Reading a chunk-size line (hex digits, optional extensions, CRLF).
    Size { size: u64, digits: u8, in_ext: bool },
    /// In chunk data, then its CRLF.
    Data { left: u64 },
    DataEnd { cr: bool },
    /// After the last chunk: trailer lines until an empty one.
    Trailer { line_len: u64 },
    Done,
}

impl Chunked {
    pub(super) const START: Chunked = Chunked::Size { size: 0, digits: 0, in_ext: false };

    /// Consume from `buf`, handing each piece of chunk data to `data`; returns the bytes taken,
    /// or Err for a malformed body. Stops at the end of the body (state Done) with the rest of
    /// `buf` untouched.
    pub(super) fn decode(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ()> {
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
                    data(&buf[i..i + take]);
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

/// A chunked body fed to [`Chunked::decode`] in `pieces`, as reads would deliver it: the data
/// decoded, the bytes taken (None for a malformed body) and whether the body ended. For the
/// fuzz targets.
#[cfg(fuzzing)]
pub fn dechunk(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>, bool) {
    let mut state = Chunked::START;
    let (mut data, mut taken) = (Vec::new(), 0);
    for piece in pieces {
        match state.decode(piece, |d| data.extend_from_slice(d)) {
            Ok(n) => taken += n,
            Err(()) => return (data, None, false),
        }
    }
    (data, Some(taken), state == Chunked::Done)
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
            Skip::Chunked(c) => c.decode(buf, |_| {})?,
        };
        buf.drain(..n);
        Ok(())
    }
}

/// The body length a request head asks for with `GET /bytes/N` (at most
/// [`HTTP_MAX_SIZED_BODY`]).
fn sized_body(head: &[u8]) -> Option<usize> {
    let rest = head.strip_prefix(b"GET /bytes/")?;
    let digits = &rest[..rest.iter().position(|b| !b.is_ascii_digit())?];
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(n.min(HTTP_MAX_SIZED_BODY))
}

pub async fn http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    serve(&mut s, WhenQuiet::Wait).await.map(drop)
}

async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, status: &str) -> std::io::Result<Served> {
    let response = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(response.as_bytes()).await?;
    s.shutdown().await?;
    Ok(Served::Done)
}

pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, when_quiet: WhenQuiet) -> std::io::Result<Served> {
    let mut buf = HeadBuf::default(); // taken by the first read, not held while idle
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
        let sized = sized_body(&buf[..head_len]);
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
        if when_quiet == WhenQuiet::Wait {
            // Nothing buffered: back to the spares (the next read takes one again, for as long
            // as it waits). A turn's buffer goes back when the turn ends, at the first read
            // that would wait.
            buf.give_back_if_empty();
        }
        // The head, and the fixed body after it, built on the stack: one write, no allocation.
        let mut response = [0u8; 256];
        let mut w = &mut response[..];
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            sized.unwrap_or(HTTP_BODY.len()),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        if sized.is_none() {
            w.write_all(HTTP_BODY)?;
        }
        let unused = w.len();
        let len = response.len() - unused;
        s.write_all(&response[..len]).await?;
        if let Some(mut left) = sized {
            while left > 0 {
                let n = left.min(SIZED_BODY_FILL.len());
                s.write_all(&SIZED_BODY_FILL[..n]).await?;
                left -= n;
            }
        }
        if close {
            // The server closes first: our FIN goes out now (FIN_WAIT_1 ... TIME_WAIT).
            s.shutdown().await?;
            return Ok(Served::Done);
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut HeadBuf) -> std::io::Result<usize> {
    // Straight into the buffer's spare room: no chunk array held in the future while idle.
    buf.make_room();
    s.read_buf(&mut buf.0).await
}

/// The request buffer of [`serve`]: taken from this thread's spares by a read and given back
/// once it is empty between requests and when the serving ends, so a connection served in
/// turns holds none while idle and a request costs no allocation. A fresh 4 KB per request was
/// a large-bin malloc, on which glibc consolidates its fast bins: with it, the allocator took
/// about a sixth of the engine thread's time at 64 keep-alive connections, half that without
/// (perf, s29).
#[derive(Default)]
struct HeadBuf(Vec<u8>);

thread_local! {
    /// Empty request buffers of [`HEAD_BUF`] bytes, at most [`HEAD_SPARES`] on a thread.
    static SPARE_HEADS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A request buffer's size, and how much room a read wants in it.
const HEAD_BUF: usize = 4096;
const READ_ROOM: usize = 1024;
/// Spare request buffers a thread keeps (memory per thread, not per connection).
const HEAD_SPARES: usize = 16;

impl HeadBuf {
    /// At least [`READ_ROOM`] bytes free: a spare buffer if none is held yet, else grown.
    fn make_room(&mut self) {
        if self.0.capacity() == 0
            && let Some(spare) = super::take_spare(&SPARE_HEADS)
        {
            self.0 = spare;
        }
        if self.0.capacity() - self.0.len() < READ_ROOM {
            self.0.reserve(HEAD_BUF);
        }
    }

    /// Give the buffer back to the thread's spares if it holds nothing (a grown one is freed).
    fn give_back_if_empty(&mut self) {
        if !self.0.is_empty() || self.0.capacity() == 0 {
            return;
        }
        let buf = std::mem::take(&mut self.0);
        if buf.capacity() == HEAD_BUF {
            super::give_back_spare(&SPARE_HEADS, buf, HEAD_SPARES);
        }
    }
}

impl std::ops::Deref for HeadBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for HeadBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for HeadBuf {
    fn drop(&mut self) {
        self.0.clear();
        self.give_back_if_empty();
    }
}


#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::apps::http_turn;

    #[test]
    fn connection_options_are_whole_tokens_and_close_wins() {
        let close = |head: &str| match parse_request(head.as_bytes()) {
            Parsed::Complete { close, .. } => close,
            other => panic!("{head:?}: {other:?}"),
        };
        assert!(close("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n"));
        assert!(!close("GET / HTTP/1.1\r\nConnection: X-Close-Later\r\n\r\n"), "an option that only contains the word");
        assert!(!close("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(close("GET / HTTP/1.0\r\nConnection: keep-alive-ish\r\n\r\n"));
        assert!(close("GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"), "close, wherever it stands");
        let chunked = parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n");
        assert!(matches!(chunked, Parsed::Complete { body: Body::Chunked, .. }), "{chunked:?}");
    }

    #[tokio::test]
    async fn http_bytes_n_answers_with_a_body_of_n_bytes() {
        for n in [0usize, 1, 16 * 1024, 100_000] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let task = tokio::spawn(http(server));
            client.write_all(format!("GET /bytes/{n} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            task.await.unwrap().unwrap();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
            assert!(got.starts_with(head.as_bytes()), "{:?}", String::from_utf8_lossy(&got[..got.len().min(200)]));
            assert_eq!(got.len(), head.len() + n);
        }
        // Only GET /bytes/ followed by digits is sized.
        assert_eq!(sized_body(b"GET /bytes/12 HTTP/1.1\r\n\r\n"), Some(12));
        assert_eq!(sized_body(b"POST /bytes/12 HTTP/1.1\r\n\r\n"), None);
        assert_eq!(sized_body(b"GET /bytes/x HTTP/1.1\r\n\r\n"), None);
        assert_eq!(sized_body(b"GET /bytes/99999999999 HTTP/1.1\r\n\r\n"), Some(HTTP_MAX_SIZED_BODY));
    }

    #[tokio::test]
    async fn a_keep_alive_request_reads_into_the_threads_spare_buffer_and_gives_it_back() {
        let spares = || SPARE_HEADS.with(|s| s.borrow().iter().map(Vec::as_ptr).collect::<Vec<_>>());
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut got = [0u8; 256];
        let mut kept = None;
        for _ in 0..3 {
            // One turn per request, as the engine serves a keep-alive connection: it ends
            // once the connection goes quiet.
            client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            assert!(matches!(serve(&mut server, WhenQuiet::Return).await.unwrap(), Served::Quiet));
            let n = client.read(&mut got).await.unwrap();
            assert!(got[..n].ends_with(b"\r\n\r\nhello from synx\n"), "{:?}", String::from_utf8_lossy(&got[..n]));
            // The turn's buffer is back among the thread's spares: the same one every time.
            let now = spares();
            assert_eq!(now.len(), 1);
            assert_eq!(*kept.get_or_insert(now.clone()), now);
        }
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
}
