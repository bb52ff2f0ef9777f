//! The backend side of the http proxy: a bounded pool of keep-alive HTTP/1.1 connections per
//! engine thread. A connection is a plain TCP stream and its read buffer, driven by the client's
//! own task while it is lent (no task, channel or timer of its own: the request goes out and
//! the response comes back in the task that serves the client).
//!
//! At most `pool` connections of a thread are open at once: a request takes a permit, then
//! the most recently used idle connection (or opens one when none is idle), and gives both back
//! when the response has been read to its end. A request that finds every permit taken waits
//! for one, within the proxy's timeout (nginx opens connections beyond its `keepalive` count
//! instead, and closes them after; a fixed bound is what keeps a backend's connection count
//! known whatever the number of clients).

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::ThreadId,
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};

use super::HttpProxyOptions;

/// One pool per thread that serves the listener (each engine thread has its own runtime, and a
/// connection is driven by the thread that opened it).
pub struct Pools {
    options: HttpProxyOptions,
    by_thread: Mutex<HashMap<ThreadId, Arc<Pool>>>,
}

impl Pools {
    pub fn new(options: HttpProxyOptions) -> Self {
        Self { options, by_thread: Mutex::new(HashMap::new()) }
    }

    /// The calling thread's pool.
    pub fn here(&self) -> Arc<Pool> {
        let mut map = self.by_thread.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(std::thread::current().id()).or_insert_with(|| Pool::start(self.options)).clone()
    }

    /// Counters summed over the threads' pools.
    pub fn stats(&self) -> PoolStats {
        let map = self.by_thread.lock().unwrap_or_else(|e| e.into_inner());
        map.values().fold(PoolStats::default(), |mut sum, p| {
            let s = p.stats();
            sum.opened += s.opened;
            sum.reused += s.reused;
            sum.idle += s.idle;
            sum.in_use += s.in_use;
            sum
        })
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Backend connections opened so far.
    pub opened: u64,
    /// Requests sent over a connection that had served one before.
    pub reused: u64,
    /// Connections open and idle now.
    pub idle: u64,
    /// Connections carrying a request now.
    pub in_use: u64,
}

/// A connection to the backend: the stream, and what was read from it beyond the last
/// response (empty between exchanges).
pub struct Conn {
    pub tcp: TcpStream,
    pub buf: BytesMut,
}

pub struct Pool {
    pub(super) options: HttpProxyOptions,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    opened: AtomicU64,
    reused: AtomicU64,
}

/// Why no backend connection could be had.
#[derive(Debug)]
pub enum CheckoutError {
    /// Connecting failed (refused, unreachable, the handshake failed).
    Connect(io::Error),
    /// No connection within the timeout: every permit stayed taken, or the connect hung.
    TimedOut,
}

/// A connection lent to one request, with its permit. Dropped, the connection closes (its
/// exchange did not end cleanly, so it cannot carry another); [`Pool::release`] returns it.
pub struct Lease {
    pub conn: Conn,
    /// The connection carried a request before: the backend may have closed it meanwhile.
    pub reused: bool,
    permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The connection, out of the pool for good (a switch of protocols); the permit goes back.
    pub fn into_conn(self) -> Conn {
        self.conn
    }
}

/// How often a thread's pool looks for idle connections the backend has closed.
const SWEEP: Duration = Duration::from_secs(1);

/// Whether a connection between exchanges is still open and silent: a closed one reads its end
/// (or a reset), and anything a backend sends unasked is no answer to a request of ours.
/// Readiness comes from the runtime's last look at the socket, so a silent one costs no syscall.
fn open_and_silent(tcp: &TcpStream) -> bool {
    matches!(tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

impl Pool {
    /// A pool, and on this thread's runtime a task that closes idle connections the backend
    /// has closed (so they do not wait in CLOSE_WAIT for the next request), ending with the
    /// pool.
    fn start(options: HttpProxyOptions) -> Arc<Self> {
        let pool = Arc::new(Self::new(options));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(&pool);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    pool.idle.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| open_and_silent(&c.tcp));
                }
            });
        }
        pool
    }

    fn new(options: HttpProxyOptions) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(options.pool as usize)),
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> PoolStats {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        let in_use = (self.options.pool as usize - self.permits.available_permits()) as u64;
        PoolStats {
            opened: self.opened.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            idle,
            in_use,
        }
    }

    /// A connection for one request: an idle one if any is still open, else a new one.
    pub async fn checkout(&self) -> Result<Lease, CheckoutError> {
        let timeout = self.options.timeout;
        let permit = tokio::time::timeout(timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| CheckoutError::TimedOut)?
            .expect("the pool's semaphore is never closed");
        loop {
            let Some(conn) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() else { break };
            if open_and_silent(&conn.tcp) {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(Lease { conn, reused: true, permit });
            }
        }
        let conn = tokio::time::timeout(timeout, self.connect()).await.map_err(|_| CheckoutError::TimedOut)?;
        Ok(Lease { conn: conn.map_err(CheckoutError::Connect)?, reused: false, permit })
    }

    /// A fresh connection in place of the lease's (to retry a request a reused connection
    /// dropped unanswered: the backend's keep-alive timeout racing our reuse).
    pub async fn reconnect(&self, lease: Lease) -> Result<Lease, CheckoutError> {
        let Lease { conn, permit, .. } = lease;
        drop(conn);
        let conn = tokio::time::timeout(self.options.timeout, self.connect()).await.map_err(|_| CheckoutError::TimedOut)?;
        Ok(Lease { conn: conn.map_err(CheckoutError::Connect)?, reused: false, permit })
    }

    async fn connect(&self) -> io::Result<Conn> {
        let tcp = TcpStream::connect(self.options.backend).await?;
        tcp.set_nodelay(true)?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Conn { tcp, buf: BytesMut::new() })
    }

    /// Give back a connection whose exchange ended cleanly, with nothing left unread.
    pub fn release(&self, lease: Lease) {
        let Lease { conn, permit, .. } = lease;
        if conn.buf.is_empty() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        }
        // The permit goes after the connection is back, so the next request finds it idle.
        drop(permit);
    }

    pub fn backend(&self) -> SocketAddr {
        self.options.backend
    }
}
