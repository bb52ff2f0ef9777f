//! The http proxy against real hyper backends on loopback, with the client on a loopback TCP
//! socket (so the proxy sees addresses to forward).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use http_body_util::{BodyExt as _, Full};
use std::future::Future;
use bytes::Bytes;
use hyper::{
    Request, Response,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A backend: hyper serving `handle`, counting the connections it accepts.
async fn backend<F, Fut, B>(handle: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(req).await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(s), service).with_upgrades().await;
            });
        }
    });
    (addr, accepted)
}

/// Answers with what it saw: method, path, the forwarding headers, and the body's length.
async fn describe(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let h = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let line = format!(
        "{} {} host={} forwarded={} xff={} te={} cl={} conn={}",
        req.method(),
        req.uri(),
        h("host"),
        h("forwarded"),
        h("x-forwarded-for"),
        h("transfer-encoding"),
        h("content-length"),
        h("connection"),
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    Response::new(Full::new(Bytes::from(format!("{line} body={}", body.len()))))
}

/// A proxy on loopback in front of `backend`, serving each connection with `serve` (in turns,
/// as the engine does: each turn that hands back is followed by the next).
async fn front(options: HttpProxyOptions) -> SocketAddr {
    let pools = Arc::new(Pools::new(options));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let pool = pools.here();
            tokio::spawn(async move {
                loop {
                    match serve(&pool, &mut s, WhenQuiet::Return).await {
                        Ok(Served::Quiet) => {
                            // Wait for input as the engine would, then the next turn.
                            if s.readable().await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

/// Write `request` and read what comes back until the proxy closes.
async fn exchange_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Read from `c` into `got` until it ends with `end`, within 10 s.
async fn read_until(c: &mut TcpStream, got: &mut Vec<u8>, end: &[u8]) {
    let mut b = [0u8; 256];
    while !got.ends_with(end) {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await.expect("nothing within 10 s").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(got));
        got.extend_from_slice(&b[..n]);
    }
}

/// A message head, a byte at a time (nothing after it is taken); None if the peer closes first.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut b).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.push(b[0]),
        }
    }
    Some(head)
}

fn options(backend: SocketAddr) -> HttpProxyOptions {
    HttpProxyOptions { backend, pool: 2, timeout: Duration::from_secs(5) }
}

#[tokio::test]
async fn requests_are_forwarded_with_forwarded_headers_over_one_pooled_connection() {
    let (backend, accepted) = backend(describe).await;
    let proxy = front(options(backend)).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let me = c.local_addr().unwrap();
    let mut text = String::new();
    for i in 0..5 {
        c.write_all(format!("GET /r{i}?q=1 HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains(&format!("GET /r{i}?q=1 host=example")), "{text}");
    }
    let want = format!("forwarded=for=\"{me}\";by=\"{proxy}\";host=example;proto=http xff=127.0.0.1 te= cl= conn= body=0");
    assert!(text.contains(&want), "{text}\nwanted {want}");
    assert!(!text.contains("connection: close"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "five requests over one backend connection");
}

#[tokio::test]
async fn bodies_of_both_framings_reach_the_backend_and_pipelined_requests_follow() {
    let (backend, _) = backend(describe).await;
    let proxy = front(options(backend)).await;
    let got = exchange_raw(
        proxy,
        b"POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nT: 1\r\n\r\n\
          GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{got}");
    assert!(got.contains("POST /len host=x") && got.contains("cl=5") && got.contains("body=5"), "{got}");
    // A chunked body of unknown length goes on chunked, its 7 bytes decoded and re-framed.
    assert!(got.contains("POST /chunks host=x") && got.contains("te=chunked cl= conn= body=7"), "{got}");
    assert!(got.contains("GET /last") && got.ends_with("body=0"), "{got}");
    assert!(got.contains("connection: close"), "the last answer says the connection ends: {got}");
}

/// A backend that answers every request head it reads with `response`, raw, then does what
/// `after` says.
async fn raw_backend(response: &'static [u8], after: After) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Requests without bodies, one after the other.
                for served in 0.. {
                    if read_head(&mut s).await.is_none() {
                        return;
                    }
                    if after == After::CloseOnSecond && served == 1 {
                        // As a backend whose keep-alive timeout ends as the request arrives.
                        return;
                    }
                    if after == After::Silence {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let _ = s.write_all(response).await;
                    if after == After::Reset {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Stay,
    /// Answer a connection's first request, close it unanswered at the second.
    CloseOnSecond,
    Reset,
    Silence,
}

/// The body of a chunked message, decoded.
fn dechunk(body: &str) -> String {
    let mut out = Vec::new();
    let mut c = Chunked::START;
    let n = c.decode(body.as_bytes(), |d| out.extend_from_slice(d)).unwrap();
    assert_eq!((n, c), (body.len(), Chunked::Done), "{body:?}");
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_response_of_unknown_length_is_chunked_for_http11_and_close_delimited_for_http10() {
    let raw = raw_backend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n", After::Stay).await;
    let proxy = front(options(raw)).await;
    let got = exchange_raw(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked") && head.contains("x-up: 1"), "{got}");
    assert_eq!(dechunk(body), "one,two");
    let got = exchange_raw(proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    assert!(!head.contains("transfer-encoding") && head.contains("connection: close"), "{got}");
    assert_eq!(body, "one,two", "an HTTP/1.0 client reads the body to the close");
    // An HTTP/1.0 client that asks for keep-alive is told it holds, when the length is known.
    let (described, _) = backend(describe).await;
    let proxy = front(options(described)).await;
    let got = exchange_raw(proxy, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n").await;
    assert_eq!(got.matches("connection: keep-alive").count(), 1, "{got}");
    assert!(got.contains("GET /a ") && got.contains("GET /b ") && got.ends_with("body=0"), "{got}");
}

#[tokio::test]
async fn a_backend_that_is_down_gives_502_and_one_that_is_silent_504() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let proxy = front(options(closed)).await;
    let got = exchange_raw(proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n") && got.contains("connection: close"), "{got}");
    let silent = raw_backend(b"", After::Silence).await;
    let proxy = front(HttpProxyOptions { timeout: Duration::from_millis(300), ..options(silent) }).await;
    let got = exchange_raw(proxy, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").await;
    assert!(got.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{got}");
}

#[tokio::test]
async fn a_response_cut_short_by_the_backend_resets_the_client() {
    let backend = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..", After::Reset).await;
    let proxy = front(options(backend)).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("only ten.."), "{text}");
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset, "a truncated body must not end like a whole one");
}

#[tokio::test]
async fn a_turn_ends_quiet_between_requests_and_the_pool_stays_within_its_bound() {
    let (backend, accepted) = backend(|req| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        describe(req).await
    })
    .await;
    let pools = Arc::new(Pools::new(options(backend)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    // One turn on one connection: a request, its answer, then quiet: the turn hands back.
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        c.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut b = vec![0u8; 4096];
        let n = c.read(&mut b).await.unwrap();
        (c, String::from_utf8_lossy(&b[..n]).into_owned())
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let pool = pools.here();
    assert_eq!(serve(&pool, &mut s, WhenQuiet::Return).await.unwrap(), Served::Quiet, "no request yet: quiet at once");
    s.readable().await.unwrap();
    assert_eq!(serve(&pool, &mut s, WhenQuiet::Return).await.unwrap(), Served::Quiet);
    let (_c, text) = client.await.unwrap();
    assert!(text.contains("GET /one"), "{text}");
    // Eight clients at once through a pool of two: every request answered, two connections.
    let proxy = front(options(backend)).await;
    let clients: Vec<_> = (0..8)
        .map(|i| tokio::spawn(exchange_raw(proxy, format!("GET /c{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").leak().as_bytes())))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let got = c.await.unwrap();
        assert!(got.contains(&format!("GET /c{i} ")), "{got}");
    }
    assert!(accepted.load(Ordering::SeqCst) <= 1 + 2, "{} backend connections", accepted.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_large_body_streams_both_ways_through_an_echoing_backend() {
    // The backend streams the request body back as it reads it: the proxy must carry both
    // directions at once, or both sides would wait on full buffers.
    let (backend, _) = backend(|req: Request<Incoming>| async move { Response::new(req.into_body()) }).await;
    let proxy = front(options(backend)).await;
    const LEN: usize = 8 << 20;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n").as_bytes()).await.unwrap();
        let piece: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for _ in 0..LEN / piece.len() {
            w.write_all(&piece).await.unwrap();
        }
    };
    let recv = async {
        let head = String::from_utf8(read_head(&mut r).await.unwrap()).unwrap();
        // hyper's echo declares the request's length for its response.
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains(&format!("content-length: {LEN}")), "{head}");
        let mut body = vec![0u8; LEN];
        r.read_exact(&mut body).await.unwrap();
        body
    };
    let ((), body) = tokio::join!(send, recv);
    assert_eq!(body.len(), LEN);
    assert!(body.iter().enumerate().all(|(i, b)| *b == ((i % (64 * 1024)) % 251) as u8), "the echoed body differs");
}

#[tokio::test]
async fn an_upgrade_is_spliced_to_the_backend() {
    let (backend, _) = backend(|mut req: Request<Incoming>| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut b = [0u8; 64];
            loop {
                let n = io.read(&mut b).await.unwrap();
                if n == 0 {
                    return;
                }
                io.write_all(&b[..n]).await.unwrap();
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("echo"));
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        r
    })
    .await;
    let proxy = front(options(backend)).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    // The first bytes of the new protocol ride with the request.
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly").await.unwrap();
    let mut got = Vec::new();
    read_until(&mut c, &mut got, b"early").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
    assert!(text.contains("connection: upgrade\r\nupgrade: echo\r\n\r\n"), "{text}");
    c.write_all(b" and later").await.unwrap();
    let mut back = [0u8; 10];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b" and later");
}

#[tokio::test]
async fn malformed_or_unforwardable_requests_are_refused() {
    let (backend, accepted) = backend(describe).await;
    let proxy = front(options(backend)).await;
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        (b"CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n", "405"),
    ] {
        let got = exchange_raw(proxy, request).await;
        assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "{}: {got}", String::from_utf8_lossy(request));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing refused reached the backend");
    // Absolute form: the target's authority becomes the Host, the backend gets the path.
    let got = exchange_raw(proxy, b"GET http://example.org/p?x HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n").await;
    assert!(got.contains("GET /p?x host=example.org"), "{got}");
}

#[tokio::test]
async fn a_client_that_stops_within_a_head_or_a_body_is_not_waited_for() {
    let (backend, _) = backend(describe).await;
    let proxy = front(HttpProxyOptions { timeout: Duration::from_millis(300), ..options(backend) }).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
    // Within a body: the backend hears of the broken request, the client's connection ends.
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(end.is_err() || !text.contains("200 OK"), "a request missing its body was answered as whole: {text}");
}

#[tokio::test]
async fn an_idempotent_request_a_reused_connection_drops_unanswered_goes_again_and_others_get_502() {
    let backend = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", After::CloseOnSecond).await;
    let proxy = front(options(backend)).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        // Each GET after the first finds the pooled connection, which the backend then drops:
        // the proxy sends it again on a fresh one and the client sees nothing of it.
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        read_until(&mut c, &mut got, b"ok").await;
        got.clear();
    }
    // A request with a body cannot be read from the client again: 502.
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
}

#[tokio::test]
async fn interim_responses_are_skipped_and_an_unframeable_answer_gives_502() {
    let hints = raw_backend(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Stay,
    )
    .await;
    let got = exchange_raw(front(options(hints)).await, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nok") && got.matches("HTTP/1.1").count() == 1, "{got}");
    let smuggle = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\nok", After::Stay).await;
    let got = exchange_raw(front(options(smuggle)).await, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n") && !got.contains("ok"), "{got}");
}

#[tokio::test]
async fn a_response_reaches_the_client_as_it_comes_not_when_it_ends() {
    // The backend sends the head and part of the body, then waits until the client has seen
    // that part: a proxy that held the response back would wait forever. Chunked, and to the
    // close (the client gets chunks either way).
    for (first, rest) in [
        (&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"[..], &b"5\r\nlater\r\n0\r\n\r\n"[..]),
        (b"HTTP/1.1 200 OK\r\n\r\nfirst", b"later"),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let (seen, wait_seen) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s).await.unwrap();
            s.write_all(first).await.unwrap();
            wait_seen.await.unwrap();
            s.write_all(rest).await.unwrap();
        });
        let proxy = front(options(backend)).await;
        let mut c = TcpStream::connect(proxy).await.unwrap();
        c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        // A proxy that held the first piece back would time out here.
        read_until(&mut c, &mut got, b"first\r\n").await;
        seen.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&got);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("transfer-encoding: chunked"), "{text}");
        assert_eq!(dechunk(body), "firstlater");
    }
}

/// The head the backend gets for `request`, from a client at 198.18.0.2:41000 to 198.18.0.1:80.
fn forwarded_head(request: &str) -> String {
    let hop = Some(("198.18.0.2:41000".parse().unwrap(), "198.18.0.1:80".parse().unwrap()));
    match parse_head(request.as_bytes(), "127.0.0.1:8080".parse().unwrap(), hop) {
        Parsed::Complete(head) => {
            assert_eq!(head.len, request.find("\r\n\r\n").unwrap() + 4);
            String::from_utf8(head.forward).unwrap()
        }
        Parsed::Partial => panic!("{request:?}: partial"),
        Parsed::Refuse(status) => panic!("{request:?}: {status}"),
    }
}

#[test]
fn hop_by_hop_fields_and_those_connection_names_go_and_this_hops_framing_is_written() {
    let head = forwarded_head(
        "POST /p?q=1 HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, X-Secret, Content-Length, Host\r\nKeep-Alive: timeout=5\r\n\
         X-Secret: 1\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nContent-Length: 3\r\nX-Kept: yes\r\nX-Kept: again\r\n\r\n",
    );
    // The framing survives a Connection that names it (a body the backend framed otherwise
    // would be a smuggled request), and so does the Host.
    assert_eq!(
        head,
        "POST /p?q=1 HTTP/1.1\r\nhost: example\r\nx-kept: yes\r\nx-kept: again\r\ncontent-length: 3\r\n\
         forwarded: for=\"198.18.0.2:41000\";by=\"198.18.0.1:80\";host=example;proto=http\r\nx-forwarded-for: 198.18.0.2\r\n\r\n"
    );
    // A chunked body goes on chunked; an Expect the proxy answers itself does not go on.
    let head = forwarded_head("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(head.contains("\r\ntransfer-encoding: chunked\r\n") && !head.to_ascii_lowercase().contains("expect"), "{head}");
    // An upgrade is asked for in this hop's own fields.
    let head = forwarded_head("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(head.contains("\r\nconnection: upgrade\r\nupgrade: websocket\r\n"), "{head}");
    assert_eq!(head.matches("upgrade").count(), 2, "{head}");
}

#[test]
fn forwarded_elements_follow_rfc_7239_and_join_what_the_client_sent() {
    let head = forwarded_head("GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n");
    assert!(head.contains("\r\nforwarded: for=\"198.18.0.2:41000\";by=\"198.18.0.1:80\";host=\"example.com:8080\";proto=http\r\n"), "{head}");
    // A second hop appends to what the first wrote, in one field each.
    let head = forwarded_head(
        "GET / HTTP/1.1\r\nForwarded: for=192.0.2.43\r\nX-Forwarded-For: 192.0.2.43\r\nHost: example\r\nforwarded: for=192.0.2.44\r\n\r\n",
    );
    assert!(head.contains("\r\nforwarded: for=192.0.2.43, for=192.0.2.44, for=\"198.18.0.2:41000\";by=\"198.18.0.1:80\";host=example;proto=http\r\n"), "{head}");
    assert!(head.contains("\r\nx-forwarded-for: 192.0.2.43, 198.18.0.2\r\n"), "{head}");
    assert_eq!((head.matches("\nforwarded: ").count(), head.matches("\nx-forwarded-for: ").count()), (1, 1), "{head}");
    // IPv6 nodes are quoted in brackets; a Host that could break out of the quotes is left out.
    let hop = Some(("[fd00:5eed::2]:5".parse().unwrap(), "[fd00:5eed::1]:80".parse().unwrap()));
    let Parsed::Complete(head) = parse_head(b"GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n", "127.0.0.1:8080".parse().unwrap(), hop) else { panic!() };
    let head = String::from_utf8(head.forward).unwrap();
    assert!(head.contains("\r\nforwarded: for=\"[fd00:5eed::2]:5\";by=\"[fd00:5eed::1]:80\";proto=http\r\nx-forwarded-for: fd00:5eed::2\r\n"), "{head}");
}

#[test]
fn targets_go_on_in_origin_form_with_the_host_they_name() {
    // Absolute form: the authority becomes the Host, the path the target.
    let head = forwarded_head("GET http://example.org/p?x HTTP/1.1\r\nHost: other\r\n\r\n");
    assert!(head.starts_with("GET /p?x HTTP/1.1\r\nhost: example.org\r\n") && !head.contains("other"), "{head}");
    let head = forwarded_head("GET http://example.org HTTP/1.1\r\nHost: other\r\n\r\n");
    assert!(head.starts_with("GET / HTTP/1.1\r\nhost: example.org\r\n"), "{head}");
    // An empty path goes as "/", before the query (RFC 9112 3.2.1).
    assert!(forwarded_head("GET HPN://h:? HTTP/1.1\r\nHost: h\r\n\r\n").starts_with("GET /? HTTP/1.1\r\nhost: h:\r\n"));
    // A fragment is not sent; the asterisk form is OPTIONS's.
    assert!(forwarded_head("GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n").starts_with("GET /a HTTP/1.1\r\n"));
    assert!(forwarded_head("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").starts_with("OPTIONS * HTTP/1.1\r\n"));
    // HTTP/1.0 without a Host: the backend's address; HTTP/1.1 without exactly one: refused.
    assert!(forwarded_head("GET / HTTP/1.0\r\n\r\n").starts_with("GET / HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n"));
    let backend = "127.0.0.1:8080".parse().unwrap();
    for request in ["GET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"] {
        assert!(matches!(parse_head(request.as_bytes(), backend, None), Parsed::Refuse(StatusCode::BAD_REQUEST)), "{request:?}");
    }
}

#[tokio::test]
async fn an_idle_connection_the_backend_closes_leaves_the_pool_without_waiting_for_a_request() {
    // A backend that answers one request, then closes the connection 100 ms later (its
    // keep-alive timeout), while the proxy holds it idle.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_head(&mut s).await.unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    let pools = Arc::new(Pools::new(options(backend)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let serving = pools.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let pool = serving.here();
        let _ = serve(&pool, &mut s, WhenQuiet::Wait).await;
    });
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    read_until(&mut c, &mut got, b"ok").await;
    assert_eq!(pools.stats().idle, 1, "the connection went back to the pool");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pools.stats().idle > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the closed connection stayed in the pool");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client's next request goes on a fresh connection.
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    got.clear();
    read_until(&mut c, &mut got, b"ok").await;
    assert_eq!(pools.stats().opened, 2);
}
