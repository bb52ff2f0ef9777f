//! The kernel peer: synx's three bench apps (echo, discard, http) served over the kernel's own
//! TCP the way a performance-minded server is written. One thread per listed CPU, pinned there,
//! each with its own epoll and its own SO_REUSEPORT listener per port (the kernel spreads new
//! connections over them by hash); edge-triggered readiness, reads into one buffer per thread.
//! An idle connection holds its socket and a 16-byte slot, nothing else: no task, no future, no
//! buffer (a connection gets a heap part only while it has unsent output or half a request).
//! TCP_NODELAY and the keepalive options are set once on the listener; Linux copies them into
//! every accepted socket (tested below), so an accept costs no further system call. The last
//! response before a close goes out with MSG_MORE, so the FIN the close adds leaves in the same
//! segment as the response's tail (tcp_send_fin puts it on the last unsent segment), as synx
//! sends them: one segment fewer each way per `Connection: close` request (the client's ACK of
//! the data and of the FIN become one).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::SocketAddr,
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, bail};
use mio::{
    Events, Interest, Poll, Token,
    net::{TcpListener, TcpStream},
};
use synx::apps::{Body, HTTP_BODY, MAX_HEADER, Parsed, parse_request};

/// The apps a listener can serve (synx's `--listen ADDR:PORT=APP` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Echo,
    Discard,
    Http,
}

/// `ADDR:PORT=APP`.
#[derive(Debug, Clone, Copy)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    pub app: App,
}

impl std::str::FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, app) = s.rsplit_once('=').ok_or_else(|| format!("{s:?}: write ADDR:PORT=APP"))?;
        let app = match app {
            "echo" => App::Echo,
            "discard" => App::Discard,
            "http" => App::Http,
            _ => return Err(format!("{app:?}: the kernel peer serves echo, discard or http")),
        };
        Ok(Self { addr: addr.parse().map_err(|e| format!("{addr:?}: {e}"))?, app })
    }
}

/// Keepalive as synx's `--keepalive-idle/--keepalive-interval/--keepalive-probes`.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: Vec<ListenSpec>,
    /// One thread per CPU, pinned to it.
    pub cpus: Vec<usize>,
    pub keepalive: Option<Keepalive>,
    pub backlog: i32,
}

/// Bind every listener on every thread, print `listening on ...` on stdout, serve until killed.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.cpus.is_empty() {
        bail!("no CPU to serve on");
    }
    let mut workers = Vec::new();
    for &cpu in &opts.cpus {
        let listeners = opts
            .listen
            .iter()
            .map(|spec| Ok((listener(spec, opts)?, spec.app)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        workers.push((cpu, listeners));
    }
    let threads: Vec<_> = workers
        .into_iter()
        .map(|(cpu, listeners)| {
            std::thread::spawn(move || -> anyhow::Result<()> {
                crate::pin_to_cpu(cpu)?;
                Worker::new(listeners)?.run()
            })
        })
        .collect();
    let specs: Vec<String> = opts.listen.iter().map(|s| format!("{}={:?}", s.addr, s.app).to_lowercase()).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {} (kernel TCP, {} threads)", specs.join(", "), threads.len())?;
    out.flush()?;
    drop(out);
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a server thread panicked"))??;
    }
    Ok(())
}

fn listener(spec: &ListenSpec, opts: &Options) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, TcpKeepalive, Type};
    let socket = Socket::new(Domain::for_address(spec.addr), Type::STREAM.nonblocking(), None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Inherited by every accepted socket (tcp_create_openreq_child copies the listener).
    socket.set_tcp_nodelay(true)?;
    if let Some(k) = opts.keepalive {
        socket.set_keepalive(true)?;
        socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(k.idle).with_interval(k.interval).with_retries(k.probes))?;
    }
    socket.bind(&spec.addr.into()).with_context(|| format!("binding {}", spec.addr))?;
    socket.listen(opts.backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A connection: its socket, its app and, only while it has any, unsent output or an
/// unfinished request.
struct Conn {
    stream: TcpStream,
    app: App,
    extra: Option<Box<Extra>>,
}

#[derive(Default)]
struct Extra {
    /// Output the socket did not take yet; reading stops until it has (backpressure).
    out: Vec<u8>,
    /// The head of a request not complete yet (http).
    partial: Vec<u8>,
    /// Body bytes of the current request still to read before it is answered (http).
    body_left: u64,
    /// The request whose body is being read asked for `Connection: close`.
    body_close: bool,
    /// Close once `out` is sent.
    close_after_out: bool,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.out.is_empty() && self.partial.is_empty() && self.body_left == 0 && !self.close_after_out
    }
}

/// Slots of connections, reused through a free list (a slot index is the epoll token).
enum Slot {
    Busy(Conn),
    Free(usize),
}

struct Worker {
    poll: Poll,
    listeners: Vec<(TcpListener, App)>,
    slots: Vec<Slot>,
    free: usize,
    buf: Vec<u8>,
    out: Vec<u8>,
}

const NO_FREE: usize = usize::MAX;

/// What reading or writing a connection came to.
enum Next {
    /// Wait for more readiness.
    Wait,
    /// Close the connection.
    Close,
}

impl Worker {
    fn new(mut listeners: Vec<(TcpListener, App)>) -> anyhow::Result<Self> {
        let poll = Poll::new()?;
        for (i, (l, _)) in listeners.iter_mut().enumerate() {
            poll.registry().register(l, Token(i), Interest::READABLE)?;
        }
        Ok(Self { poll, listeners, slots: Vec::new(), free: NO_FREE, buf: vec![0; 64 * 1024], out: Vec::with_capacity(64 * 1024) })
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for ev in events.iter() {
                let t = ev.token().0;
                if t < self.listeners.len() {
                    self.accept(t)?;
                } else {
                    let slot = t - self.listeners.len();
                    if let Next::Close = self.serve(slot) {
                        self.close(slot);
                    }
                }
            }
        }
    }

    fn accept(&mut self, i: usize) -> anyhow::Result<()> {
        loop {
            let (stream, app) = match self.listeners[i].0.accept() {
                Ok((s, _)) => (s, self.listeners[i].1),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Out of file descriptors: the connection waits in the accept queue; the bench
                // sizes processes to stay under the limit, and counts what the server holds.
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) => {
                    eprintln!("kernel-server: accept: {e}");
                    return Ok(());
                }
                // The peer gave up before accept (ECONNABORTED) and the like: the next one.
                Err(_) => continue,
            };
            let slot = self.insert(Conn { stream, app, extra: None });
            let token = Token(slot + self.listeners.len());
            let Slot::Busy(c) = &mut self.slots[slot] else { unreachable!("just inserted") };
            self.poll.registry().register(&mut c.stream, token, Interest::READABLE)?;
            // Data that arrived with the handshake is signalled by the registration itself
            // (epoll reports a ready socket on ADD), so nothing is read here.
        }
    }

    fn insert(&mut self, conn: Conn) -> usize {
        if self.free != NO_FREE {
            let i = self.free;
            let Slot::Free(next) = self.slots[i] else { unreachable!("the free list holds free slots") };
            self.free = next;
            self.slots[i] = Slot::Busy(conn);
            i
        } else {
            self.slots.push(Slot::Busy(conn));
            self.slots.len() - 1
        }
    }

    fn close(&mut self, slot: usize) {
        // Dropping the socket closes it, which also takes it out of the epoll set.
        self.slots[slot] = Slot::Free(self.free);
        self.free = slot;
    }

    fn serve(&mut self, slot: usize) -> Next {
        let Some(Slot::Busy(conn)) = self.slots.get_mut(slot) else { return Next::Wait };
        let token = Token(slot + self.listeners.len());
        // Unsent output first: until it is gone, nothing more is read.
        if let Some(extra) = conn.extra.as_mut().filter(|e| !e.out.is_empty()) {
            match flush(&mut conn.stream, &mut extra.out, extra.close_after_out) {
                Ok(true) => {
                    if extra.close_after_out {
                        return Next::Close;
                    }
                    if self.poll.registry().reregister(&mut conn.stream, token, Interest::READABLE).is_err() {
                        return Next::Close;
                    }
                }
                Ok(false) => return Next::Wait,
                Err(_) => return Next::Close,
            }
        }
        loop {
            let n = match conn.stream.read(&mut self.buf) {
                Ok(0) => return Next::Close,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            };
            self.out.clear();
            let close = match conn.app {
                App::Discard => false,
                App::Echo => {
                    self.out.extend_from_slice(&self.buf[..n]);
                    false
                }
                App::Http => http(&mut conn.extra, &self.buf[..n], &mut self.out),
            };
            if !self.out.is_empty() {
                let mut rest = std::mem::take(&mut self.out);
                let sent = flush(&mut conn.stream, &mut rest, close);
                let done = match sent {
                    Ok(done) => done,
                    Err(_) => return Next::Close,
                };
                if !done {
                    let extra = conn.extra.get_or_insert_with(Default::default);
                    extra.out = rest;
                    extra.close_after_out = close;
                    if self.poll.registry().reregister(&mut conn.stream, token, Interest::READABLE | Interest::WRITABLE).is_err() {
                        return Next::Close;
                    }
                    return Next::Wait;
                }
                rest.clear();
                self.out = rest;
            }
            if close {
                return Next::Close;
            }
            if conn.extra.as_ref().is_some_and(|e| e.is_empty()) {
                conn.extra = None;
            }
        }
    }
}

/// Write as much of `out` as the socket takes; whether all of it went (what went is removed).
/// `last`: the connection closes once it has gone, so the tail waits (MSG_MORE) for the FIN.
fn flush(stream: &mut TcpStream, out: &mut Vec<u8>, last: bool) -> std::io::Result<bool> {
    let flags = libc::MSG_NOSIGNAL | if last { libc::MSG_MORE } else { 0 };
    let mut at = 0;
    while at < out.len() {
        let rest = &out[at..];
        // SAFETY: a send from a live buffer on this thread's socket.
        let n = unsafe { libc::send(stream.as_raw_fd(), rest.as_ptr().cast(), rest.len(), flags) };
        match n {
            0 => return Err(ErrorKind::WriteZero.into()),
            n if n > 0 => at += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::WouldBlock => break,
                    ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
            }
        }
    }
    out.drain(..at);
    Ok(out.is_empty())
}

/// The http app over `input` (what one read returned): responses appended to `out`, exactly
/// as synx's http app answers (same parser, same bytes); whether to close after them. Bodies
/// framed by Content-Length are read and dropped; a chunked body (the bench sends none) is
/// refused with 501 where synx's app skips it.
fn http(extra: &mut Option<Box<Extra>>, input: &[u8], out: &mut Vec<u8>) -> bool {
    let mut owned;
    let mut data = input;
    let (mut body_left, mut body_close) = (0, false);
    if let Some(e) = extra.as_mut() {
        body_left = std::mem::take(&mut e.body_left);
        body_close = std::mem::take(&mut e.body_close);
        if !e.partial.is_empty() {
            owned = std::mem::take(&mut e.partial);
            owned.extend_from_slice(input);
            data = &owned[..];
        }
    }
    let mut pos = 0;
    loop {
        if body_left > 0 {
            let take = body_left.min((data.len() - pos) as u64);
            pos += take as usize;
            body_left -= take;
            if body_left > 0 {
                let e = extra.get_or_insert_with(Default::default);
                e.body_left = body_left;
                e.body_close = body_close;
                return false;
            }
            // The request is complete: answer it.
            response(out, body_close);
            if body_close {
                return true;
            }
        }
        if pos == data.len() {
            return false;
        }
        match parse_request(&data[pos..]) {
            Parsed::Complete { head_len, body: Body::Length(len), close } => {
                pos += head_len;
                body_left = len;
                body_close = close;
                if len == 0 {
                    response(out, close);
                    if close {
                        return true;
                    }
                }
            }
            Parsed::Complete { body: Body::Chunked, .. } => return refuse(out, "501 Not Implemented"),
            Parsed::TooLarge => return refuse(out, "413 Content Too Large"),
            Parsed::Partial => {
                let rest = &data[pos..];
                if rest.len() > MAX_HEADER {
                    return refuse(out, "431 Request Header Fields Too Large");
                }
                let rest = rest.to_vec();
                extra.get_or_insert_with(Default::default).partial = rest;
                return false;
            }
            Parsed::Bad => return refuse(out, "400 Bad Request"),
        }
    }
}

/// A refusal as synx's app words it; the connection closes after it.
fn refuse(out: &mut Vec<u8>, status: &str) -> bool {
    out.extend_from_slice(format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes());
    true
}

fn response(out: &mut Vec<u8>, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ");
    out.extend_from_slice(HTTP_BODY.len().to_string().as_bytes());
    out.extend_from_slice(if close { b"\r\nConnection: close\r\n\r\n" } else { b"\r\n\r\n" });
    out.extend_from_slice(HTTP_BODY);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_http(chunks: &[&[u8]]) -> (String, bool) {
        let mut extra = None;
        let mut out = Vec::new();
        let mut closed = false;
        for c in chunks {
            closed = http(&mut extra, c, &mut out);
            if closed {
                break;
            }
        }
        (String::from_utf8(out).unwrap(), closed)
    }

    #[test]
    fn http_answers_like_synx_http_app() {
        // The bytes synx's http app sends (engine-user/src/apps.rs tests).
        let one = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\nhello from synx\n";
        let last = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nhello from synx\n";
        let (text, closed) = run_http(&[b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nConnection: close\r\n\r\n"]);
        assert_eq!(text, format!("{one}{one}{last}"));
        assert!(closed);
    }

    #[test]
    fn http_requests_split_anywhere_are_answered_once_each() {
        let req: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 1..req.len() {
            let (text, closed) = run_http(&[&req[..cut], &req[cut..]]);
            assert_eq!(text.matches("200 OK").count(), 2, "cut at {cut}: {text}");
            assert!(!closed);
        }
        // A body still arriving is not answered yet.
        let (text, _) = run_http(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel"]);
        assert_eq!(text, "");
    }

    #[test]
    fn http_rejects_garbage_and_overlong_heads() {
        let (text, closed) = run_http(&[b"\x01\x02 nonsense\r\n\r\n"]);
        assert!(text.starts_with("HTTP/1.1 400") && closed, "{text}");
        let long = vec![b'a'; MAX_HEADER + 10];
        let (text, closed) = run_http(&[b"GET / HTTP/1.1\r\nX: ", &long]);
        assert!(text.starts_with("HTTP/1.1 431") && closed, "{text}");
    }

    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive_from_the_listener() {
        let opts = Options {
            listen: vec![],
            cpus: vec![0],
            keepalive: Some(Keepalive { idle: Duration::from_secs(10), interval: Duration::from_secs(5), probes: 3 }),
            backlog: 16,
        };
        let spec = ListenSpec { addr: "127.0.0.1:0".parse().unwrap(), app: App::Echo };
        let l = listener(&spec, &opts).unwrap();
        let addr = l.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let accepted = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
        };
        let s = socket2::SockRef::from(&accepted);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(10));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(5));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
    }

    #[test]
    fn the_server_serves_echo_and_http_over_loopback() {
        // One worker on a free port, driven from this thread.
        let spec_http = ListenSpec { addr: "127.0.0.1:0".parse().unwrap(), app: App::Http };
        let spec_echo = ListenSpec { addr: "127.0.0.1:0".parse().unwrap(), app: App::Echo };
        let opts = Options { listen: vec![], cpus: vec![0], keepalive: None, backlog: 16 };
        let lh = listener(&spec_http, &opts).unwrap();
        let le = listener(&spec_echo, &opts).unwrap();
        let (ah, ae) = (lh.local_addr().unwrap(), le.local_addr().unwrap());
        std::thread::spawn(move || Worker::new(vec![(lh, App::Http), (le, App::Echo)]).unwrap().run());
        let mut e = std::net::TcpStream::connect(ae).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = e.try_clone().unwrap();
        let data = big.clone();
        let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
        let mut back = vec![0u8; big.len()];
        e.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == big, "echo returned other bytes");
        let mut h = std::net::TcpStream::connect(ah).unwrap();
        h.write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        h.read_to_string(&mut text).unwrap();
        assert_eq!(text.matches("hello from synx").count(), 2, "{text}");
    }
}
