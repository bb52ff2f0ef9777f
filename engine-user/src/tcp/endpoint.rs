//! All connections of one engine thread: demux by 4-tuple into a slab of TCBs (whose index is
//! also the FLOWS / LAST_SEEN slot in the BPF maps), creation only from a validated SYN-cookie
//! ACK, timeouts driven by one [`TimingWheel`], output gathered across connections, and the
//! RFC 9293 3.10.7.1 reset for segments that belong to no connection.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use engine_common::handshake::HandshakeFacts;

use super::connection::{self, Connection, Event, Handled};
use super::segment::{self, Header};
use super::timer::TimingWheel;
use super::{Config, Instant, reset_for};

/// A connection's slot: stable for its whole life, reused after `Event::Released`. Small and
/// dense, so it doubles as the BPF array index (LAST_SEEN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(u32);

impl ConnectionHandle {
    pub fn slot(self) -> u32 {
        self.0
    }
}

/// What became of an incoming segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Handed to this connection.
    Delivered(ConnectionHandle),
    /// No connection has this 4-tuple: the caller checks for a cookie ACK and calls `accept`,
    /// or `reset_unknown`.
    Unknown,
    /// Dropped, with the reason.
    Dropped(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A new SYN for a tuple in TIME_WAIT (RFC 6191): the old incarnation is closed and will be
    /// released, so the client's retransmitted SYN meets the SYN-cookie path.
    TimeWaitReuse,
    /// The connection dropped it (RFC 9293 3.10.7.4 checks).
    Connection(connection::DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("connection table full")]
    Full,
    #[error("a connection with this 4-tuple exists")]
    Exists,
    #[error(transparent)]
    Invalid(#[from] connection::AcceptError),
}

/// One segment to send, written at the start of the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The connection it belongs to (None for resets to strangers).
    pub handle: Option<ConnectionHandle>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Bytes of TCP segment written.
    pub len: usize,
}

#[derive(Default)]
struct Slot {
    conn: Option<Box<Connection>>,
    /// In `work`: may have output, events or a changed deadline.
    queued: bool,
}

/// Resets for strangers waiting to be sent, at most this many (a flood of strangers must not
/// grow memory).
const MAX_PENDING_RESETS: usize = 1024;

pub struct Endpoint {
    config: Arc<Config>,
    max_conns: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots whose `Released` event is queued but not yet polled: reused only after it is, so
    /// no event of an old incarnation can reach the connection that takes the slot next.
    releasing: usize,
    by_tuple: HashMap<(SocketAddr, SocketAddr), u32>,
    wheel: TimingWheel,
    /// Connections to visit in `poll_transmit` (and whose events `poll_event` collects).
    work: VecDeque<u32>,
    resets: VecDeque<(SocketAddr, SocketAddr, Header)>,
    events: VecDeque<(ConnectionHandle, Event)>,
    /// Retransmitted FINs answered from TIME_WAIT (the seed's lost last ACK).
    pub time_wait_fin_reacked: u64,
}

impl Endpoint {
    pub fn new(config: Config, max_conns: u32) -> Self {
        Self {
            config: Arc::new(config),
            max_conns,
            slots: Vec::new(),
            free: Vec::new(),
            releasing: 0,
            by_tuple: HashMap::new(),
            wheel: TimingWheel::new(Instant::ZERO),
            work: VecDeque::new(),
            resets: VecDeque::new(),
            events: VecDeque::new(),
            time_wait_fin_reacked: 0,
        }
    }

    /// Connections in the slab (until released).
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len() - self.releasing
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Armed timers in the wheel (at most one per connection).
    pub fn armed_timers(&self) -> usize {
        self.wheel.len()
    }

    fn mark(&mut self, idx: u32) {
        if let Some(slot) = self.slots.get_mut(idx as usize)
            && slot.conn.is_some()
            && !slot.queued
        {
            slot.queued = true;
            self.work.push_back(idx);
        }
    }

    pub fn lookup(&self, local: SocketAddr, remote: SocketAddr) -> Option<ConnectionHandle> {
        self.by_tuple.get(&(local, remote)).map(|&i| ConnectionHandle(i))
    }

    /// Create a connection from a validated SYN-cookie ACK (the caller checked the cookie and
    /// decoded `facts`); the ACK may carry data and a FIN.
    pub fn accept(
        &mut self,
        now: Instant,
        facts: HandshakeFacts,
        local: SocketAddr,
        remote: SocketAddr,
        ack: &Header,
        payload: &[u8],
    ) -> Result<ConnectionHandle, AcceptError> {
        if self.by_tuple.contains_key(&(local, remote)) {
            return Err(AcceptError::Exists);
        }
        if self.len() as u64 >= self.max_conns as u64 {
            return Err(AcceptError::Full);
        }
        let conn = Connection::accept(now, self.config.clone(), &facts, local, remote, ack, payload)?;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[idx as usize] = Slot { conn: Some(Box::new(conn)), queued: false };
        self.by_tuple.insert((local, remote), idx);
        self.mark(idx);
        Ok(ConnectionHandle(idx))
    }

    /// Demux one segment addressed to `local` from `remote`.
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, h: &Header, payload: &[u8]) -> Disposition {
        let Some(&idx) = self.by_tuple.get(&(local, remote)) else { return Disposition::Unknown };
        let Some(conn) = self.slots[idx as usize].conn.as_deref_mut() else { return Disposition::Unknown };
        let reacks = conn.stats().time_wait_fin_reacks;
        let d = conn.handle(now, h, payload);
        self.time_wait_fin_reacked += conn.stats().time_wait_fin_reacks - reacks;
        self.mark(idx);
        match d {
            Handled::Processed => Disposition::Delivered(ConnectionHandle(idx)),
            Handled::Dropped(r) => Disposition::Dropped(DropReason::Connection(r)),
            Handled::TimeWaitReuse => {
                // The tuple is free for the new incarnation at once.
                self.by_tuple.remove(&(local, remote));
                Disposition::Dropped(DropReason::TimeWaitReuse)
            }
        }
    }

    /// Queue the RFC 9293 3.10.7.1 reset for a segment that belongs to no connection.
    pub fn reset_unknown(&mut self, local: SocketAddr, remote: SocketAddr, h: &Header, payload_len: usize) {
        if let Some(rst) = reset_for(h, payload_len)
            && self.resets.len() < MAX_PENDING_RESETS
        {
            self.resets.push_back((local, remote, rst));
        }
    }

    /// The connection, for application calls (send, recv, shutdown, abort, set_keepalive...).
    /// The endpoint revisits it in the next `poll_transmit`.
    pub fn connection_mut(&mut self, h: ConnectionHandle) -> Option<&mut Connection> {
        self.mark(h.0);
        self.slots.get_mut(h.0 as usize)?.conn.as_deref_mut()
    }

    pub fn connection(&self, h: ConnectionHandle) -> Option<&Connection> {
        self.slots.get(h.0 as usize)?.conn.as_deref()
    }

    pub fn handle_for_slot(&self, slot: u32) -> Option<ConnectionHandle> {
        self.slots.get(slot as usize)?.conn.as_ref().map(|_| ConnectionHandle(slot))
    }

    pub fn connections(&self) -> impl Iterator<Item = (ConnectionHandle, &Connection)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.conn.as_deref().map(|c| (ConnectionHandle(i as u32), c)))
    }

    /// The peer of `h` was seen at `last_seen` (XDP's LAST_SEEN stamp).
    pub fn note_peer_activity(&mut self, h: ConnectionHandle, last_seen: Instant) {
        if let Some(c) = self.connection_mut(h) {
            c.note_peer_activity(last_seen);
        }
    }

    /// Serve every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_with_last_seen(now, |_| None);
    }

    /// Serve every timer that is due, first telling each due connection when XDP last saw its
    /// peer (LAST_SEEN[slot]), so an idle connection whose peer is alive is re-armed without a
    /// probe and without per-packet userspace work.
    pub fn handle_timeout_with_last_seen(&mut self, now: Instant, mut last_seen: impl FnMut(ConnectionHandle) -> Option<Instant>) {
        let mut due = Vec::new();
        self.wheel.poll(now, |k| due.push(k));
        for idx in due {
            let Some(conn) = self.slots[idx as usize].conn.as_deref_mut() else { continue };
            if let Some(t) = last_seen(ConnectionHandle(idx)) {
                conn.note_peer_activity(t);
            }
            conn.handle_timeout(now);
            self.mark(idx);
        }
    }

    /// When `handle_timeout` (or `poll_transmit`, when connections have pending work) is next
    /// needed; possibly early, never late.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.work.is_empty() || !self.resets.is_empty() {
            return Some(Instant::ZERO);
        }
        self.wheel.next_deadline()
    }

    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        if self.events.is_empty() {
            for &idx in &self.work {
                if let Some(conn) = self.slots[idx as usize].conn.as_deref_mut() {
                    while let Some(e) = conn.poll_event() {
                        self.events.push_back((ConnectionHandle(idx), e));
                    }
                }
            }
        }
        let ev = self.events.pop_front();
        if let Some((h, Event::Released { .. })) = ev {
            self.releasing -= 1;
            self.free.push(h.0);
        }
        ev
    }

    /// The next segment to send, written into `buf` (which must hold 60 bytes of header plus
    /// the MSS).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((local, remote, h)) = self.resets.pop_front() {
            let len = segment::write(&h, &[], buf).ok()?;
            return Some(Transmit { handle: None, local, remote, len });
        }
        while let Some(&idx) = self.work.front() {
            let slot = &mut self.slots[idx as usize];
            let Some(conn) = slot.conn.as_deref_mut() else {
                self.work.pop_front();
                slot.queued = false;
                continue;
            };
            if let Some(len) = conn.poll_transmit(now, buf) {
                return Some(Transmit { handle: Some(ConnectionHandle(idx)), local: conn.local(), remote: conn.remote(), len });
            }
            // Nothing more to send: collect events, register the deadline, maybe release.
            self.work.pop_front();
            slot.queued = false;
            self.retire(idx);
        }
        None
    }

    fn retire(&mut self, idx: u32) {
        let Some(conn) = self.slots[idx as usize].conn.as_deref_mut() else { return };
        let h = ConnectionHandle(idx);
        while let Some(e) = conn.poll_event() {
            self.events.push_back((h, e));
        }
        if conn.is_released() {
            let (local, remote) = (conn.local(), conn.remote());
            if self.by_tuple.get(&(local, remote)) == Some(&idx) {
                self.by_tuple.remove(&(local, remote));
            }
            self.slots[idx as usize] = Slot::default();
            self.wheel.remove(idx);
            self.releasing += 1;
            self.events.push_back((h, Event::Released { local, remote }));
            return;
        }
        match conn.poll_timeout() {
            Some(at) => self.wheel.insert(idx, at),
            None => self.wheel.remove(idx),
        }
    }
}
