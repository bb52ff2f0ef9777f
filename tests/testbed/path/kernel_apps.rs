//! The kernel's side of a path bed: echo, discard and http over the kernel's own TCP, answering
//! byte for byte as synx's apps do (http's head, `hello from synx\n`, or N bytes for
//! `GET /bytes/N`). A thread per connection on blocking std sockets: on paths of 100 Mbit/s and
//! a few dozen connections, what is compared is the kernel's TCP, not how the server program
//! waits for it (no CPU is measured on these paths).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::Netns;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelApp {
    /// Every byte back; after the peer's FIN, the rest, then our FIN.
    Echo,
    /// Read and drop until the peer's FIN, then our FIN.
    Discard,
    /// synx's http app: keep-alive, `Connection: close` honoured, `GET /bytes/N` sized.
    Http,
}

/// Listeners in a namespace, each with its app; stopped on drop (connections in progress run
/// to their end).
pub struct KernelApps {
    stop: Arc<AtomicBool>,
    listeners: Vec<(RawFd, JoinHandle<()>)>,
}

/// The longest a connection thread waits on a silent peer before it gives up.
const IDLE: Duration = Duration::from_secs(120);

impl KernelApps {
    pub fn start(ns: &Netns, listen: &[(SocketAddr, KernelApp)]) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut listeners = Vec::new();
        for &(addr, app) in listen {
            let l = ns.run(move || TcpListener::bind(addr))??;
            let fd = l.as_raw_fd();
            let stop = stop.clone();
            let accept = std::thread::spawn(move || {
                for conn in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(s) = conn else { continue };
                    std::thread::spawn(move || {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(Some(IDLE));
                        let _ = s.set_write_timeout(Some(IDLE));
                        let _ = serve(s, app);
                    });
                }
            });
            listeners.push((fd, accept));
        }
        Ok(Self { stop, listeners })
    }
}

impl Drop for KernelApps {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (fd, accept) in self.listeners.drain(..) {
            // Wakes the blocked accept (it fails with EINVAL); the thread then sees `stop`.
            // SAFETY: shutdown(2) on a listener the accept thread still owns.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            let _ = accept.join();
        }
    }
}

fn serve(mut s: TcpStream, app: KernelApp) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    match app {
        KernelApp::Echo => loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return s.shutdown(Shutdown::Write);
            }
            s.write_all(&buf[..n])?;
        },
        KernelApp::Discard => {
            while s.read(&mut buf)? > 0 {}
            s.shutdown(Shutdown::Write)
        }
        KernelApp::Http => http(s, &mut buf),
    }
}

/// The body of synx's http app (engine-user/src/apps/http.rs `HTTP_BODY`).
const HTTP_BODY: &[u8] = b"hello from synx\n";

fn http(mut s: TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // One request head; bodies are not expected (the bed's clients send GETs) but a
        // Content-Length one is skipped.
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(buf)?;
            if n == 0 {
                return s.shutdown(Shutdown::Write);
            }
            pending.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
        let close = header("connection:").is_some_and(|v| v.contains("close"));
        let mut body_left: usize = header("content-length:").and_then(|v| v.parse().ok()).unwrap_or(0);
        let sized = head
            .strip_prefix("get /bytes/")
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<usize>().ok());
        pending.drain(..end);
        while body_left > 0 {
            if pending.is_empty() {
                let n = s.read(buf)?;
                if n == 0 {
                    return Ok(());
                }
                pending.extend_from_slice(&buf[..n]);
            }
            let take = body_left.min(pending.len());
            pending.drain(..take);
            body_left -= take;
        }
        let len = sized.unwrap_or(HTTP_BODY.len());
        let conn = if close { "Connection: close\r\n" } else { "" };
        s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n{conn}\r\n").as_bytes())?;
        match sized {
            Some(mut left) => {
                buf.fill(b'.');
                while left > 0 {
                    let n = left.min(buf.len());
                    s.write_all(&buf[..n])?;
                    left -= n;
                }
            }
            None => s.write_all(HTTP_BODY)?,
        }
        if close {
            return s.shutdown(Shutdown::Write);
        }
    }
}
