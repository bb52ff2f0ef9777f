//! All connections of one engine thread: demultiplexing by 4-tuple, connection slots (whose
//! index is also the LAST_SEEN / FLOWS slot in the BPF maps), timers across connections, and
//! RFC 9293 3.10.7.1 resets for segments that belong to no connection.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::SocketAddr,
};

use engine_common::handshake::HandshakeFacts;

use super::{
    Config, Event, Instant,
    conn::{Connection, State},
    segment::{self, ACK, Header, Options, RST, SYN},
    seq::SeqNum,
};

/// A connection's slot; stable for its whole life, reused after it is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(u32);

impl ConnectionHandle {
    pub fn slot(self) -> u32 {
        self.0
    }
}

/// What became of an incoming segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handed to this connection.
    Delivered(ConnectionHandle),
    /// No connection has this 4-tuple (the caller checks for a cookie ACK).
    Unknown,
    /// Dropped, with the reason.
    Dropped(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A new SYN for a tuple in TIME_WAIT (RFC 6191): the old incarnation is released, so the
    /// client's retransmitted SYN meets the SYN-cookie path.
    TimeWaitReuse,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcceptError {
    #[error("connection table full")]
    Full,
    #[error("a connection with this 4-tuple exists")]
    Exists,
}

/// One segment to send.
#[derive(Debug, Clone, Copy)]
pub struct Transmit {
    /// The connection it belongs to (None for resets to strangers).
    pub handle: Option<ConnectionHandle>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Bytes of TCP segment written into the buffer.
    pub len: usize,
}

struct Slot {
    conn: Connection,
    /// Bumped on reuse so stale timer entries are ignored.
    generation: u32,
    queued: bool,
}

pub struct Endpoint {
    config: Config,
    max_conns: u32,
    slots: Vec<Option<Slot>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), u32>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Connections that may have something to send or a changed deadline.
    dirty: VecDeque<u32>,
    resets: VecDeque<(SocketAddr, SocketAddr, Header)>,
    events: VecDeque<(ConnectionHandle, Event)>,
    /// Retransmitted FINs answered from TIME_WAIT (the seed's lost last ACK).
    pub time_wait_fin_reacked: u64,
}

impl Endpoint {
    pub fn new(config: Config, max_conns: u32) -> Self {
        Self {
            config,
            max_conns,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: VecDeque::new(),
            resets: VecDeque::new(),
            events: VecDeque::new(),
            time_wait_fin_reacked: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_tuple.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tuple.is_empty()
    }

    fn mark(&mut self, slot: u32) {
        if let Some(Some(s)) = self.slots.get_mut(slot as usize)
            && !s.queued
        {
            s.queued = true;
            self.dirty.push_back(slot);
        }
    }

    /// Process one segment addressed to `local` from `remote`.
    pub fn handle(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        h: &Header,
        payload: &[u8],
    ) -> Disposition {
        let Some(&slot) = self.by_tuple.get(&(local, remote)) else {
            return Disposition::Unknown;
        };
        let s = self.slots[slot as usize].as_mut().expect("tuple maps to a live slot");
        if s.conn.state() == State::TimeWait && h.has(SYN) && !h.has(ACK) && !h.has(RST) {
            // RFC 6191 / RFC 9293 3.10.7.4 note: a new incarnation may reuse a TIME_WAIT tuple.
            self.release(slot);
            return Disposition::Dropped(DropReason::TimeWaitReuse);
        }
        let before = s.conn.time_wait_fin_reacked;
        s.conn.handle(now, h, payload);
        self.time_wait_fin_reacked += s.conn.time_wait_fin_reacked - before;
        self.mark(slot);
        Disposition::Delivered(ConnectionHandle(slot))
    }

    /// Create a connection from a validated cookie ACK.
    pub fn accept(
        &mut self,
        now: Instant,
        facts: HandshakeFacts,
        local: SocketAddr,
        remote: SocketAddr,
        h: &Header,
        payload: &[u8],
    ) -> Result<ConnectionHandle, AcceptError> {
        if self.by_tuple.contains_key(&(local, remote)) {
            return Err(AcceptError::Exists);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None if (self.slots.len() as u32) < self.max_conns => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() as u32 - 1
            }
            None => return Err(AcceptError::Full),
        };
        let conn = Connection::accept(now, &self.config, &facts, local, remote, h, payload);
        let generation = self.generations[slot as usize];
        self.slots[slot as usize] = Some(Slot { conn, generation, queued: false });
        self.by_tuple.insert((local, remote), slot);
        self.mark(slot);
        Ok(ConnectionHandle(slot))
    }

    /// Queue the RFC 9293 3.10.7.1 reset for a segment that belongs to no connection.
    pub fn reset_unknown(&mut self, local: SocketAddr, remote: SocketAddr, h: &Header, payload_len: usize) {
        if h.has(RST) {
            return; // never answer a reset with a reset
        }
        let (seq, ack, flags) = if h.has(ACK) {
            (h.ack, SeqNum(0), RST)
        } else {
            (SeqNum(0), h.seq + h.seg_len(payload_len), RST | ACK)
        };
        let rst = Header {
            src_port: local.port(),
            dst_port: remote.port(),
            seq,
            ack,
            flags,
            window: 0,
            options: Options::default(),
        };
        if self.resets.len() < 1024 {
            self.resets.push_back((local, remote, rst));
        }
    }

    pub fn connection_mut(&mut self, h: ConnectionHandle) -> Option<&mut Connection> {
        self.mark(h.0);
        self.slots.get_mut(h.0 as usize)?.as_mut().map(|s| &mut s.conn)
    }

    pub fn connection(&self, h: ConnectionHandle) -> Option<&Connection> {
        self.slots.get(h.0 as usize)?.as_ref().map(|s| &s.conn)
    }

    pub fn handle_for_slot(&self, slot: u32) -> Option<ConnectionHandle> {
        self.slots.get(slot as usize)?.as_ref().map(|_| ConnectionHandle(slot))
    }

    pub fn connections(&self) -> impl Iterator<Item = (ConnectionHandle, &Connection)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (ConnectionHandle(i as u32), &s.conn)))
    }

    /// Collect the events of connections that changed. They stay queued: `poll_transmit`
    /// retires each one (registering its next deadline) once it has nothing left to send.
    fn collect_events(&mut self) {
        for &slot in &self.dirty {
            if let Some(s) = self.slots[slot as usize].as_mut() {
                while let Some(e) = s.conn.poll_event() {
                    self.events.push_back((ConnectionHandle(slot), e));
                }
            }
        }
    }

    fn release(&mut self, slot: u32) {
        if let Some(s) = self.slots[slot as usize].take() {
            let (local, remote) = (s.conn.local(), s.conn.remote());
            self.by_tuple.remove(&(local, remote));
            self.generations[slot as usize] = s.generation.wrapping_add(1);
            self.free.push(slot);
            self.events.push_back((ConnectionHandle(slot), Event::Released { local, remote }));
        }
    }

    /// Serve every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(s) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else { continue };
            if s.generation != generation {
                continue;
            }
            match s.conn.next_deadline() {
                Some(d) if d <= now => {
                    s.conn.handle_timeout(now);
                    self.mark(slot);
                }
                // Moved later (e.g. keepalive after activity): re-register lazily.
                Some(_) => self.mark(slot),
                None => {}
            }
        }
    }

    /// When `handle_timeout` (or `poll_transmit`, for connections with pending work) is next
    /// needed.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.dirty.is_empty() {
            return Some(Instant::from_nanos(0));
        }
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        if self.events.is_empty() {
            self.collect_events();
        }
        self.events.pop_front()
    }

    /// The next segment to send, written into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((local, remote, h)) = self.resets.pop_front() {
            let len = segment::write(&h, &[], buf)?;
            return Some(Transmit { handle: None, local, remote, len });
        }
        // Connections with work, each until it has nothing more.
        let mut tries = self.dirty.len();
        while tries > 0 {
            tries -= 1;
            let slot = *self.dirty.front()?;
            let Some(s) = self.slots[slot as usize].as_mut() else {
                self.dirty.pop_front();
                continue;
            };
            if let Some(len) = s.conn.poll_transmit(now, buf) {
                let (local, remote) = (s.conn.local(), s.conn.remote());
                return Some(Transmit { handle: Some(ConnectionHandle(slot)), local, remote, len });
            }
            // Nothing more to send: register its deadline, collect events, maybe release.
            self.dirty.pop_front();
            s.queued = false;
            while let Some(e) = s.conn.poll_event() {
                self.events.push_back((ConnectionHandle(slot), e));
            }
            if s.conn.is_released() {
                self.release(slot);
            } else if let Some(at) = s.conn.next_deadline() {
                self.timers.push(Reverse((at, slot, s.generation)));
            }
        }
        None
    }
}
