//! Built-in applications for `synx run --app`: echo, discard, http, proxy and http-proxy.
//!
//! Each is written against `AsyncRead + AsyncWrite`, so it runs unchanged on a synx
//! [`crate::api::Stream`] (and on kernel sockets, for `synx serve-kernel`), and is tested here on
//! in-memory streams. All but the proxy also come in turns ([`Service::serve_turn`], for
//! `Engine::serve_turns`): the same bytes, but a turn returns the stream when the peer goes quiet
//! at a clean boundary, instead of waiting.

mod http;
pub mod http_proxy;
pub mod proxy;
mod spec;

use std::{future::Future, net::SocketAddr, pin::pin, sync::Arc, task::Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

#[cfg(fuzzing)]
pub use http::dechunk;
pub use http::{Body, HTTP_BODY, MAX_BODY, MAX_HEADER, Parsed, http, parse_request};
pub use http_proxy::HttpProxyOptions;
pub use proxy::{ProxyOptions, ProxyProtocol, proxy};

/// Which application serves a listener, with its settings. Written as `NAME[=BACKEND[,KEY=VALUE]...]`
/// on the command line (`proxy=127.0.0.1:8080,proxy-protocol=v2`), or as a table in the TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Echo every byte; on the peer's FIN, send what is left, then close.
    Echo,
    /// Read and drop everything; close after the peer's FIN.
    Discard,
    /// A small fixed HTTP/1.1 response, keep-alive; `Connection: close` makes the server close
    /// first. `GET /bytes/N` answers with a body of N bytes instead.
    Http,
    /// Splice each connection to a kernel-TCP backend, with half-close and resets propagated,
    /// optionally announcing the client's address with the PROXY protocol.
    Proxy(ProxyOptions),
    /// An HTTP/1.1 reverse proxy: requests forwarded over a bounded pool of keep-alive
    /// connections to the backend, bodies streamed, upgrades spliced.
    HttpProxy(HttpProxyOptions),
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

/// The two ends of a stream, for apps that tell a backend who the client is.
pub trait Addresses {
    /// (client, the address the client connected to), when the stream has them.
    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)>;
}

impl Addresses for crate::api::Stream {
    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        Some((self.peer_addr(), self.local_addr()))
    }
}

impl Addresses for tokio::net::TcpStream {
    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        Some((self.peer_addr().ok()?, self.local_addr().ok()?))
    }
}

impl Addresses for tokio::io::DuplexStream {
    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        None
    }
}

/// Streams whose connection can move to another process with a socket the app holds for it
/// (`synx run --takeover`); the defaults: never asked to.
pub trait Movable: Sized {
    /// What resolves once the app is asked to hand the connection over; None: never.
    fn handover_signal(&self) -> Option<crate::api::HandoverSignal> {
        None
    }
    /// Hand the connection over with `carried` (see [`crate::api::Stream::hand_over`]).
    fn hand_over(self, carried: std::os::fd::OwnedFd) {
        drop((self, carried));
    }
    /// The socket a predecessor's app handed over with this connection.
    fn take_resumed(&mut self) -> Option<std::os::fd::OwnedFd> {
        None
    }
}

impl Movable for crate::api::Stream {
    fn handover_signal(&self) -> Option<crate::api::HandoverSignal> {
        Some(crate::api::Stream::handover_signal(self))
    }
    fn hand_over(self, carried: std::os::fd::OwnedFd) {
        crate::api::Stream::hand_over(self, carried);
    }
    fn take_resumed(&mut self) -> Option<std::os::fd::OwnedFd> {
        crate::api::Stream::take_resumed(self)
    }
}

impl Movable for tokio::net::TcpStream {}
impl Movable for tokio::io::DuplexStream {}

/// What the built-in apps need of a stream.
pub trait AppStream: AsyncRead + AsyncWrite + Unpin + Abort + Addresses + Movable {}
impl<S: AsyncRead + AsyncWrite + Unpin + Abort + Addresses + Movable> AppStream for S {}

/// An [`App`] ready to serve: its settings and what its connections share (the http proxy's
/// backend connections). Cheap to clone; one per listener.
#[derive(Clone)]
pub struct Service {
    app: App,
    pools: Option<Arc<http_proxy::Pools>>,
}

impl Service {
    pub fn new(app: App) -> Self {
        let pools = match app {
            App::HttpProxy(options) => Some(Arc::new(http_proxy::Pools::new(options))),
            _ => None,
        };
        Self { app, pools }
    }

    pub fn app(&self) -> App {
        self.app
    }

    /// Whether a connection holds something between bursts of input (the proxy's backend
    /// connection), so that it cannot be served in turns.
    pub fn needs_a_task(&self) -> bool {
        matches!(self.app, App::Proxy(_))
    }

    /// Serve one connection until it is done.
    pub async fn serve<S: AppStream>(&self, mut stream: S) -> std::io::Result<()> {
        // Each app's future on the heap at its own size: a spawned task is as large as its
        // future, and inline this match would cost every connection the largest app's state
        // (measured: 6.6 KB per idle echo connection, the proxy's and http's buffers included).
        match self.app {
            App::Echo => Box::pin(echo(stream)).await,
            App::Discard => Box::pin(discard(stream)).await,
            App::Http => Box::pin(http(stream)).await,
            App::Proxy(options) => Box::pin(proxy::serve(options, stream)).await,
            App::HttpProxy(_) => {
                let pool = self.pool();
                Box::pin(async move { http_proxy::serve(&pool, &mut stream, WhenQuiet::Wait).await.map(drop) }).await
            }
        }
    }

    /// Serve one turn of a connection: what the peer has sent so far, and whatever it sends
    /// while the turn is busy. `Some(stream)` when the peer has gone quiet at a clean boundary
    /// (nothing half-read, everything written), `None` when the connection is done (drop the
    /// stream to close it). The proxy holds a backend connection, so its turn runs to the end.
    pub async fn serve_turn<S: AppStream>(&self, mut stream: S) -> std::io::Result<Option<S>> {
        // A turn's future lives only while the turn runs (the engine boxes it once): no box per
        // app (`serve` boxes the proxy's, whose copy buffers would make every other app's turn
        // as large).
        let served = match self.app {
            App::Echo => echo_serve(&mut stream, WhenQuiet::Return).await?,
            App::Discard => discard_serve(&mut stream, WhenQuiet::Return).await?,
            App::Http => http::serve(&mut stream, WhenQuiet::Return).await?,
            App::HttpProxy(_) => {
                // Boxed: the proxy's request state is larger than the other apps'.
                let pool = self.pool();
                Box::pin(http_proxy::serve(&pool, &mut stream, WhenQuiet::Return)).await?
            }
            App::Proxy(_) => {
                self.serve(stream).await?;
                return Ok(None);
            }
        };
        Ok(served.then_back(stream))
    }

    /// This thread's backend pool (http-proxy only).
    fn pool(&self) -> Arc<http_proxy::Pool> {
        self.pools.as_ref().expect("an http-proxy service has pools").here()
    }
}

pub async fn echo_turn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<Option<S>> {
    Ok(echo_serve(&mut s, WhenQuiet::Return).await?.then_back(s))
}

pub async fn discard_turn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<Option<S>> {
    Ok(discard_serve(&mut s, WhenQuiet::Return).await?.then_back(s))
}

pub async fn http_turn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<Option<S>> {
    Ok(http::serve(&mut s, WhenQuiet::Return).await?.then_back(s))
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
/// quiet after traffic holds no 32 KB either. Large buffers given back wait in this thread's
/// [`SPARE_BIG`] for the next connection (or turn) that needs one.
struct LazyBuf {
    small: [u8; 256],
    big: Vec<u8>,
}

thread_local! {
    /// Large read buffers that went back (at most [`LazyBuf::SPARES`] on a thread): a bulk flow
    /// served in turns takes one at the start of every turn and gives it back at the end, a
    /// fresh 32 KB zeroed each time otherwise.
    static SPARE_BIG: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl LazyBuf {
    const BIG: usize = 32 * 1024;
    /// Large buffers a thread keeps spare: as many as connections in bulk at once usually are
    /// (memory per thread, not per connection).
    const SPARES: usize = 4;

    fn new() -> Self {
        Self { small: [0; 256], big: Vec::new() }
    }

    fn take_big() -> Vec<u8> {
        take_spare(&SPARE_BIG).unwrap_or_else(|| vec![0u8; Self::BIG])
    }

    fn give_back_big(&mut self) {
        let big = std::mem::take(&mut self.big);
        if big.len() == Self::BIG {
            give_back_spare(&SPARE_BIG, big, Self::SPARES);
        }
    }

    /// Read once; returns the bytes read (empty at EOF).
    async fn read<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> std::io::Result<&[u8]> {
        if self.big.is_empty() {
            let n = s.read(&mut self.small).await?;
            if n == self.small.len() {
                // A full small read: more is likely coming; read it in large pieces.
                self.big = Self::take_big();
            }
            return Ok(&self.small[..n]);
        }
        let n = s.read(&mut self.big).await?;
        if n <= self.small.len() {
            // The flow has slowed to small reads: back to the inline array, large one given back.
            self.small[..n].copy_from_slice(&self.big[..n]);
            self.give_back_big();
            return Ok(&self.small[..n]);
        }
        Ok(&self.big[..n])
    }
}

/// A buffer from one of this thread's spare lists, if it holds one.
pub(super) fn take_spare(spares: &'static std::thread::LocalKey<std::cell::RefCell<Vec<Vec<u8>>>>) -> Option<Vec<u8>> {
    spares.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// Keep `buf` in one of this thread's spare lists if it holds fewer than `keep`; else it is
/// freed (as on a thread that is exiting).
pub(super) fn give_back_spare(spares: &'static std::thread::LocalKey<std::cell::RefCell<Vec<Vec<u8>>>>, buf: Vec<u8>, keep: usize) {
    let _ = spares.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < keep {
            s.push(buf);
        }
    });
}

impl Drop for LazyBuf {
    fn drop(&mut self) {
        self.give_back_big();
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


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_holds_no_large_buffers_either() {
        // Every turn of every connection boxes this future: the proxy's copy buffers stay out.
        let service = Service::new(App::Echo);
        let size = std::mem::size_of_val(&service.serve_turn(tokio::io::duplex(64).0));
        assert!(size <= 1024, "serve_turn: {size} B");
    }

    #[test]
    fn an_idle_connection_task_holds_no_large_buffers() {
        // A spawned task is as large as its future, for every connection, idle or not: the
        // dispatch boxes each app, and no app keeps a read buffer inline while it waits.
        let (a, _b) = tokio::io::duplex(64);
        let service = Service::new(App::Echo);
        let serve = service.serve(a);
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
    fn large_read_buffers_go_back_to_their_thread_for_the_next_one() {
        // A thread of its own: its spares start empty.
        std::thread::spawn(|| {
            let spares = || SPARE_BIG.with(|s| s.borrow().len());
            let big = || {
                let mut b = LazyBuf::new();
                b.big = LazyBuf::take_big();
                b
            };
            assert_eq!(spares(), 0);
            let mut bufs: Vec<LazyBuf> = (0..LazyBuf::SPARES + 2).map(|_| big()).collect();
            let first = bufs[0].big.as_ptr();
            drop(bufs.remove(0));
            assert_eq!(spares(), 1, "given back when dropped");
            let again = big();
            assert_eq!(again.big.as_ptr(), first, "the next one takes it, no allocation");
            assert_eq!(spares(), 0);
            drop(again);
            drop(bufs);
            assert_eq!(spares(), LazyBuf::SPARES, "at most SPARES kept, the rest freed");
        })
        .join()
        .unwrap();
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
}
