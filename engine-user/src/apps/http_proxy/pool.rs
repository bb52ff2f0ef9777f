//! The backend side of the http proxy: a bounded pool of keep-alive HTTP/1.1 connections per
//! engine thread, each a hyper client connection driven by a task on that thread's runtime.
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
};

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{HttpProxyOptions, RequestBody};

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
        map.entry(std::thread::current().id()).or_insert_with(|| Arc::new(Pool::new(self.options))).clone()
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

pub struct Pool {
    pub(super) options: HttpProxyOptions,
    idle: Mutex<Vec<SendRequest<RequestBody>>>,
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
/// response was not read to the end, so it cannot carry another); [`Lease::release`] returns it.
pub struct Lease {
    pub sender: SendRequest<RequestBody>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
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
            let Some(mut sender) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() else { break };
            // An idle connection the backend closed reports it here; a live one is ready at once.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(Lease { sender, _permit: permit });
            }
        }
        let sender = tokio::time::timeout(timeout, self.connect()).await.map_err(|_| CheckoutError::TimedOut)?;
        Ok(Lease { sender: sender.map_err(CheckoutError::Connect)?, _permit: permit })
    }

    /// A fresh connection, bypassing the idle ones (to retry a request an idle connection
    /// refused because the backend had just closed it).
    pub async fn reconnect(&self, lease: Lease) -> Result<Lease, CheckoutError> {
        let Lease { sender, _permit: permit } = lease;
        drop(sender);
        let sender = tokio::time::timeout(self.options.timeout, self.connect()).await.map_err(|_| CheckoutError::TimedOut)?;
        Ok(Lease { sender: sender.map_err(CheckoutError::Connect)?, _permit: permit })
    }

    async fn connect(&self) -> io::Result<SendRequest<RequestBody>> {
        let tcp = tokio::net::TcpStream::connect(self.options.backend).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(io::Error::other)?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let backend = self.options.backend;
        // On this thread's runtime: the engine thread's, whose loop polls it with the apps.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("http-proxy backend connection to {backend}: {e}");
            }
        });
        Ok(sender)
    }

    /// Give back a connection whose exchange ended cleanly.
    pub fn release(&self, lease: Lease) {
        let Lease { sender, _permit } = lease;
        if !sender.is_closed() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(sender);
        }
        // The permit goes after the connection is back, so the next request finds it idle.
    }

    pub fn backend(&self) -> SocketAddr {
        self.options.backend
    }
}
