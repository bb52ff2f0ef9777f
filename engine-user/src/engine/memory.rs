//! The memory connections hold, and what the engine does when it runs short, as Linux does with
//! tcp_mem: every connection's data buffers (the TCP core's send and receive buffers, and the
//! queues between it and the application) are counted against one limit shared by all queues.
//!
//! - Under pressure (three quarters of the limit, as tcp_mem[1] sits below tcp_mem[2]) the
//!   glue moves little received data to the application, so it stays in the TCP receive buffer
//!   and the window a peer sees shrinks instead of buffers growing.
//! - Above the limit, data segments for connections that already hold data are dropped (the
//!   peer retransmits them later, as Linux drops what it cannot schedule), and every queue
//!   resets its largest holders, connections stuck behind a zero window first, until the total
//!   is back under pressure.
//! - Per source address: at most so many connections (further cookie ACKs are reset), and at
//!   most so many bytes held (its data refused, its largest connections reset).
//! - A connection that sits in persist (the peer's window zero, our data waiting) longer than
//!   the persist timeout is reset: a peer that answers every probe and never opens its window
//!   would otherwise hold its buffers forever.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// What connections may hold, in all and per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Bytes of data buffers all connections may hold together.
    pub limit: u64,
    /// Connections one source address may hold at once (None: no limit beyond `max_conns`).
    pub conns_per_source: Option<u32>,
    /// Bytes one source address's connections may hold on each queue thread (None: only
    /// `limit`).
    pub bytes_per_source: Option<u64>,
    /// How long a connection may wait behind a zero window with data to send.
    pub persist_timeout: Duration,
}

impl MemoryLimits {
    pub const DEFAULT_LIMIT: u64 = 1 << 30;
    pub const DEFAULT_PERSIST_TIMEOUT: Duration = Duration::from_secs(300);

    /// Where pressure starts: three quarters of the limit.
    pub fn pressure(&self) -> u64 {
        self.limit / 4 * 3
    }
}

impl Default for MemoryLimits {
    /// 1 GiB in all, no per-source limits, 5 minutes in persist.
    fn default() -> Self {
        Self {
            limit: Self::DEFAULT_LIMIT,
            conns_per_source: None,
            bytes_per_source: None,
            persist_timeout: Self::DEFAULT_PERSIST_TIMEOUT,
        }
    }
}

/// How short memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Normal,
    /// Above [`MemoryLimits::pressure`]: hand applications little, grow nothing.
    Pressure,
    /// Above [`MemoryLimits::limit`]: refuse new data, reset the largest holders.
    Over,
}

/// The engine's memory account, shared by its queue threads.
#[derive(Debug, Default)]
pub struct Memory {
    pub limits: MemoryLimits,
    /// Bytes held by every connection's buffers (each queue adds its changes).
    used: AtomicU64,
    /// Connections per source address (only with a per-source limit).
    conns_by_source: Mutex<HashMap<IpAddr, u32>>,
}

impl Memory {
    pub fn new(limits: MemoryLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// A connection now holds `now` bytes where it held `before`.
    pub fn change(&self, before: u64, now: u64) {
        if now > before {
            self.used.fetch_add(now - before, Ordering::Relaxed);
        } else if before > now {
            self.used.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    pub fn level(&self) -> Level {
        let used = self.used();
        if used > self.limits.limit {
            Level::Over
        } else if used > self.limits.pressure() {
            Level::Pressure
        } else {
            Level::Normal
        }
    }

    /// Bytes to free for the total to fall back under pressure.
    pub fn excess(&self) -> u64 {
        self.used().saturating_sub(self.limits.pressure())
    }

    /// A new connection from `source`: false if the source holds its limit already (else it
    /// is counted until [`Memory::leave`]).
    pub fn admit(&self, source: IpAddr) -> bool {
        let Some(max) = self.limits.conns_per_source else { return true };
        let mut by_source = self.conns_by_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = by_source.entry(source).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection from `source` that another process admitted moved here: counted, never
    /// refused (it exists already).
    pub fn enter(&self, source: IpAddr) {
        if self.limits.conns_per_source.is_none() {
            return;
        }
        *self.conns_by_source.lock().unwrap_or_else(|e| e.into_inner()).entry(source).or_insert(0) += 1;
    }

    /// A connection from `source` admitted by [`Memory::admit`] is gone.
    pub fn leave(&self, source: IpAddr) {
        if self.limits.conns_per_source.is_none() {
            return;
        }
        let mut by_source = self.conns_by_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_total_and_excess_is_what_brings_it_under_pressure() {
        let m = Memory::new(MemoryLimits { limit: 1000, ..MemoryLimits::default() });
        assert_eq!(m.limits.pressure(), 750);
        assert_eq!(m.level(), Level::Normal);
        m.change(0, 700);
        m.change(0, 100);
        assert_eq!((m.used(), m.level()), (800, Level::Pressure));
        m.change(100, 400);
        assert_eq!((m.used(), m.level(), m.excess()), (1100, Level::Over, 350));
        m.change(400, 0);
        assert_eq!((m.used(), m.level(), m.excess()), (700, Level::Normal, 0));
    }

    #[test]
    fn a_source_holds_at_most_its_connections() {
        let m = Memory::new(MemoryLimits { conns_per_source: Some(2), ..MemoryLimits::default() });
        let (a, b): (IpAddr, IpAddr) = ("198.18.0.2".parse().unwrap(), "198.18.0.3".parse().unwrap());
        assert!(m.admit(a) && m.admit(a));
        assert!(!m.admit(a), "a third from the same source");
        assert!(m.admit(b), "another source is not affected");
        m.leave(a);
        assert!(m.admit(a), "room again once one is gone");
        let unlimited = Memory::new(MemoryLimits::default());
        assert!((0..10).all(|_| unlimited.admit(a)));
    }
}
