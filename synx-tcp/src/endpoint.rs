//! All connections of one engine thread: demux by 4-tuple into a slab of TCBs (whose index is
//! also the connection's slot in the BPF FLOWS maps), creation only from a validated SYN-cookie
//! ACK, timeouts driven by one [`TimingWheel`], output gathered across connections, and the
//! RFC 9293 3.10.7.1 reset for segments that belong to no connection.
//!
//! Idle connections are parked: once a connection's work for the turn is done and it is
//! quiescent (nothing in flight, buffered or owed, see [`Connection::park`]), its slot holds
//! the folded TCB inline instead of the boxed [`Connection`], and it is unfolded again by the
//! next segment, application call or timeout. Together with the tuple index (slot numbers
//! hashed by the tuple stored in the slot) this is what a million idle connections cost.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use engine_common::handshake::HandshakeFacts;
use hashbrown::HashTable;

pub use super::connection::{AcceptError, DropReason};
pub use takeover::{Exported, ImportError};

mod takeover;
use super::connection::{Connection, ConnectionInfo, Event, Handled, Parked, Stats};
use super::segment::{self, Header};
use super::seq::SeqNum;
use super::timer::{TimerKind, TimingWheel, coarse};
use super::{Config, Instant, reset_for};

/// Bytes a connection may receive before an ACK is overdue ([`Endpoint::acks_overdue`]): about
/// 45 full segments, the most one Linux GRO aggregate, which Linux ACKs as one, holds. RFC 5681
/// 4.2 asks for an ACK at least every second full-sized segment (SHOULD); a receiver that reads
/// in batches ACKs once a batch, and a batch of 256 frames of one flow would stretch an ACK
/// over 370 KB, the sender then bursting as much at once.
pub const STRETCH_ACK_LIMIT: u32 = 64 * 1024;

/// A connection's slot: stable for its whole life, reused after `Event::Released`. Small and
/// dense: the value of the connection's FLOWS entry, by which XDP and the other queues name it.
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
    /// No connection has this 4-tuple: the caller hands it to `accept_cookie`.
    Unknown,
    /// Dropped, with the reason (`DropReason::TimeWaitReuse`: the tuple's TIME_WAIT
    /// incarnation is closed and its index entry gone, so the client's retransmitted SYN meets
    /// the SYN-cookie path).
    Dropped(DropReason),
}

/// Why a segment for no connection made none ([`Endpoint::accept_cookie`]); its RFC 9293
/// 3.10.7.1 reset is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no listener for the local address")]
    NoListener,
    #[error("not the ACK of a SYN cookie we minted recently for this tuple")]
    BadCookie,
    #[error(transparent)]
    Accept(#[from] AcceptError),
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
    /// Send it ECN-capable, ECT(0) (RFC 3168; see `Connection::ect`).
    pub ect: bool,
    /// For a keepalive probe: what its answer will look like (see [`ProbeAnswers`]).
    pub probe_answer: Option<ProbeAnswer>,
    /// The first other segment of a connection since its last probe: the driver stops waiting
    /// for that probe's answer (with data in flight the peer's duplicate ACKs could look just
    /// like it).
    pub answer_withdrawn: bool,
}

/// The answer a keepalive probe asks for, as the peer will send it if it is idle as we are
/// (RFC 1122 4.2.3.6; RFC 9293 3.10.7.4: a segment below the window is answered with
/// <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>): SEG.SEQ our RCV.NXT, SEG.ACK our SND.NXT, the window
/// field as the peer last sent it, and the timestamps option if the connection has it (no
/// other option, no data, no other flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub window: u16,
    pub timestamps: bool,
}

/// When a driver took a keepalive probe's answer on the way in, and its TSval (see
/// [`ProbeAnswers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TakenAnswer {
    pub at: Instant,
    pub tsval: Option<u32>,
}

/// A driver that takes the answers to keepalive probes before they reach the endpoint
/// (synx's XDP program matches each against the [`Transmit::probe_answer`] of its probe and
/// drops it) tells the endpoint here, by slot ([`ConnectionHandle::slot`]). The endpoint asks
/// when a connection with a probe out comes due, before it would probe again or give up, and
/// the connection counts the peer as heard from when the answer came
/// ([`Connection::probe_answered`]).
pub trait ProbeAnswers: Send {
    /// The answer taken for the connection in `slot` since the last call, if any.
    fn take(&mut self, slot: u32) -> Option<TakenAnswer>;
}

/// A 4-tuple (IPv4 addresses as v4-mapped IPv6): the key of the tuple index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tuple {
    local: [u8; 16],
    remote: [u8; 16],
    local_port: u16,
    remote_port: u16,
    v4: bool,
}

/// Three words into the hasher, every field in one of them (as `Eq` compares them), instead of
/// the derived seven writes with two length prefixes.
impl std::hash::Hash for Tuple {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u128(u128::from_ne_bytes(self.local));
        h.write_u128(u128::from_ne_bytes(self.remote));
        h.write_u64(u64::from(self.local_port) << 32 | u64::from(self.remote_port) << 1 | u64::from(self.v4));
    }
}

/// A hasher for keys a client chooses (its addresses and ports): foldhash, keyed with a secret
/// drawn from the operating system's randomness (std's `RandomState` keys come from getrandom;
/// one hash of nothing under them is a u64 no client can guess; foldhash's own default seed
/// mixes addresses and the time), as Linux keys `inet_ehashfn`. Each call draws a new secret.
pub fn keyed_hasher() -> foldhash::quality::SeedableRandomState {
    use std::hash::Hasher;
    let secret = std::hash::RandomState::new().build_hasher().finish();
    foldhash::quality::SeedableRandomState::with_seed(secret, foldhash::SharedSeed::global_random())
}

/// The tuple index's hash (see [`Endpoint::by_tuple`]): [`keyed_hasher`]. Tests can have every
/// tuple hash alike, so that each lookup compares against every entry.
struct TupleHasher {
    seeded: foldhash::quality::SeedableRandomState,
    #[cfg(test)]
    collide: bool,
}

impl Default for TupleHasher {
    fn default() -> Self {
        TupleHasher {
            seeded: keyed_hasher(),
            #[cfg(test)]
            collide: false,
        }
    }
}

impl TupleHasher {
    fn hash_one(&self, t: Tuple) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 0;
        }
        self.seeded.hash_one(t)
    }
}

impl Tuple {
    fn new(local: SocketAddr, remote: SocketAddr) -> Self {
        let octets = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        Tuple {
            local: octets(local.ip()),
            remote: octets(remote.ip()),
            local_port: local.port(),
            remote_port: remote.port(),
            v4: local.is_ipv4(),
        }
    }

    fn addr(&self, octets: [u8; 16], port: u16) -> SocketAddr {
        let v6 = Ipv6Addr::from(octets);
        let ip = match (self.v4, v6.to_ipv4_mapped()) {
            (true, Some(v4)) => IpAddr::V4(v4),
            (true, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (false, _) => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, port)
    }

    fn local(&self) -> SocketAddr {
        self.addr(self.local, self.local_port)
    }

    fn remote(&self) -> SocketAddr {
        self.addr(self.remote, self.remote_port)
    }
}

/// A parked connection, 272 bytes: its folded TCB; its 4-tuple, with our address as an index
/// into [`Endpoint::locals`] (a host serves from few addresses, and 14 bytes less in every
/// idle connection is 14 MB less in a million); and its keepalive settings (an index into
/// [`Endpoint::keepalives`]).
struct ParkedSlot {
    tcb: Parked,
    remote: [u8; 16],
    local_port: u16,
    remote_port: u16,
    local: u16,
    v4: bool,
    keepalive: u8,
}

impl ParkedSlot {
    fn tuple(&self, locals: &[[u8; 16]]) -> Tuple {
        Tuple {
            local: locals[self.local as usize],
            remote: self.remote,
            local_port: self.local_port,
            remote_port: self.remote_port,
            v4: self.v4,
        }
    }
}

/// Parked inline (the point: no allocation per idle connection), live boxed (688 bytes, few
/// at a time).
#[allow(clippy::large_enum_variant)]
enum Tcb {
    Free,
    /// With its tuple inline (room the parked form takes anyway): demux compares the slot,
    /// not the box behind it, a cache miss less per lookup. `None` once the index no longer
    /// names the slot (a TIME_WAIT ended by a new SYN, until it is released): a slot holds a
    /// tuple only while the index finds the tuple there, so a caller's hint (see
    /// [`Endpoint::handle_hinted`]) is checked by the slot alone.
    Live(Box<Connection>, Option<Tuple>),
    Parked(ParkedSlot),
}

impl Tcb {
    fn boxed(conn: Connection) -> Self {
        let tuple = Tuple::new(conn.local(), conn.remote());
        Tcb::Live(Box::new(conn), Some(tuple))
    }
}

struct Slot {
    tcb: Tcb,
}

impl Default for Slot {
    fn default() -> Self {
        Slot { tcb: Tcb::Free }
    }
}

impl Slot {
    fn is_free(&self) -> bool {
        matches!(self.tcb, Tcb::Free)
    }

    fn live(&mut self) -> Option<&mut Connection> {
        match &mut self.tcb {
            Tcb::Live(c, _) => Some(c),
            _ => None,
        }
    }

    fn tuple(&self, locals: &[[u8; 16]]) -> Option<Tuple> {
        match &self.tcb {
            Tcb::Free => None,
            Tcb::Live(_, t) => *t,
            Tcb::Parked(p) => Some(p.tuple(locals)),
        }
    }

    /// Whether the slot's connection has the tuple `key`: what `tuple() == Some(key)` says,
    /// without building a parked slot's tuple.
    fn holds(&self, key: &Tuple, locals: &[[u8; 16]]) -> bool {
        match &self.tcb {
            Tcb::Free => false,
            Tcb::Live(_, t) => t.as_ref() == Some(key),
            Tcb::Parked(p) => {
                p.remote_port == key.remote_port
                    && p.local_port == key.local_port
                    && p.v4 == key.v4
                    && p.remote == key.remote
                    && locals[p.local as usize] == key.local
            }
        }
    }
}

/// One bit per slot.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn get(&self, i: u32) -> bool {
        self.0.get(i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u32, on: bool) {
        let w = i as usize / 64;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        if on {
            self.0[w] |= 1 << (i % 64);
        } else {
            self.0[w] &= !(1 << (i % 64));
        }
    }
}

/// Distinct keepalive settings a parked slot can refer to (connections use their listener's,
/// so there are few).
const MAX_KEEPALIVES: usize = 256;
/// Distinct local addresses parked slots can refer to: a connection to a host's 65537th
/// address is not parked (it stays unfolded, and works as well).
const MAX_LOCALS: usize = 1 << 16;

/// Resets for strangers waiting to be sent, at most this many (a flood of strangers must not
/// grow memory).
const MAX_PENDING_RESETS: usize = 1024;

/// Slots held for new incarnations of their tuples ([`Endpoint::reserved`]), at most this many:
/// the oldest goes back to the free list first.
const MAX_RESERVED: usize = 4096;

pub struct Endpoint {
    config: Arc<Config>,
    max_conns: u32,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots whose `Released` event is queued but not yet polled: reused only after it is, so
    /// no event of an old incarnation can reach the connection that takes the slot next.
    releasing: usize,
    /// Slots handed over to another process ([`Endpoint::hand_over`]): never reused, since
    /// XDP's FLOWS names them for the other process's connections.
    handed_over: usize,
    /// Slots of TIME_WAIT connections a new incarnation's SYN ended (RFC 6191), once released:
    /// held for that incarnation, whose accept takes the same slot rather than the free list's
    /// next. A flow table in front of the endpoint that names slots (XDP's FLOWS) then names
    /// the new connection's already: nothing to rewrite per connection when clients reuse
    /// their ports (a system call each for synx's daemon). A hint, never a promise: the
    /// oldest of more than [`MAX_RESERVED`] goes back to the free list, as does one an import
    /// needs.
    reserved: std::collections::HashMap<Tuple, u32, foldhash::fast::RandomState>,
    /// Reserved tuples, oldest first (a tuple whose slot was taken may stay in here a while).
    reserved_order: VecDeque<Tuple>,
    /// Slots whose connection a new incarnation ended, not yet released: reserved when they are.
    reserve_on_release: Vec<u32>,
    /// Slot numbers, hashed by the tuple their slot holds.
    by_tuple: HashTable<u32>,
    /// Keyed with a random secret per endpoint, as Linux keys its established-connection hash
    /// (`inet_ehashfn`: jhash with a random secret): a client cannot aim tuples at one probe
    /// sequence without knowing it. Entries exist only for handshakes that returned a valid SYN
    /// cookie, so the tuples are ones a client could complete from its own addresses.
    hasher: TupleHasher,
    keepalives: Vec<super::Keepalive>,
    /// Our addresses that parked slots name, and their indices.
    locals: Vec<[u8; 16]>,
    local_index: std::collections::HashMap<[u8; 16], u16>,
    parked: usize,
    /// Slots in `work`: they may have output, events or a changed deadline.
    queued: Bits,
    /// Park quiescent connections (on unless a test compares).
    park_idle: bool,
    /// A connection owes an ACK for [`STRETCH_ACK_LIMIT`] bytes or more (see
    /// [`Endpoint::acks_overdue`]); cleared when `poll_transmit` has sent all there was.
    acks_overdue: bool,
    wheel: TimingWheel,
    /// Slots whose wheel entry came due but whose connection [`Endpoint::handle_timeouts`] has
    /// not served yet (it serves a bounded batch a call), oldest first; `due_bits` marks them,
    /// so a slot waits here once however often it comes due meanwhile.
    due: VecDeque<u32>,
    due_bits: Bits,
    /// Due slots that were parked when `handle_timeouts` took them: served in `poll_transmit`,
    /// where what their deadline sends (a keepalive probe) can be written straight into the
    /// caller's buffer and the connection folded back (`serve_parked_due`). Their `due_bits`
    /// stay set until then.
    parked_due: VecDeque<u32>,
    /// Connections to visit in `poll_transmit` (and whose events `poll_event` collects).
    work: VecDeque<u32>,
    resets: VecDeque<(SocketAddr, SocketAddr, Header)>,
    events: VecDeque<(ConnectionHandle, Event)>,
    /// Retransmitted FINs answered from TIME_WAIT (our last ACK was lost).
    pub time_wait_fin_reacked: u64,
    /// Segments whose connection was in the slot the caller's hint named
    /// ([`Endpoint::handle_hinted`]): no lookup in the tuple index.
    pub demux_hinted: u64,
    /// Where answers to keepalive probes taken before the endpoint come from (see
    /// [`ProbeAnswers`]).
    answers: Option<Box<dyn ProbeAnswers>>,
    /// Slots whose last segment out was a keepalive probe, whose answer the driver may wait for.
    answer_awaited: Bits,
    /// Keepalive probes' answers the driver took and a connection counted.
    pub probe_answers_taken: u64,
    /// Every connection's counters added up, released ones included.
    totals: Stats,
}

impl Endpoint {
    pub fn new(config: Config, max_conns: u32) -> Self {
        Self {
            config: Arc::new(config),
            max_conns,
            slots: Vec::new(),
            free: Vec::new(),
            releasing: 0,
            handed_over: 0,
            reserved: Default::default(),
            reserved_order: VecDeque::new(),
            reserve_on_release: Vec::new(),
            by_tuple: HashTable::new(),
            hasher: TupleHasher::default(),
            keepalives: Vec::new(),
            locals: Vec::new(),
            local_index: std::collections::HashMap::new(),
            parked: 0,
            queued: Bits::default(),
            park_idle: true,
            wheel: TimingWheel::new(Instant::ZERO),
            acks_overdue: false,
            due: VecDeque::new(),
            due_bits: Bits::default(),
            parked_due: VecDeque::new(),
            work: VecDeque::new(),
            resets: VecDeque::new(),
            events: VecDeque::new(),
            time_wait_fin_reacked: 0,
            demux_hinted: 0,
            answers: None,
            answer_awaited: Bits::default(),
            probe_answers_taken: 0,
            totals: Stats::default(),
        }
    }

    /// Accept at most `max_conns` connections from now on (those beyond stay until they end).
    pub fn set_max_conns(&mut self, max_conns: u32) {
        self.max_conns = max_conns;
    }

    /// The counters of every connection this endpoint has had, added up (for `synx stats`).
    pub fn totals(&self) -> &Stats {
        &self.totals
    }

    /// Connections in the slab (until released).
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len() - self.releasing - self.handed_over - self.reserved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of one slot of the slab: what a parked connection costs here (its folded TCB,
    /// tuple and keepalive index inline); a live one adds its boxed [`Connection`].
    pub const fn slot_bytes() -> usize {
        std::mem::size_of::<Slot>()
    }

    /// Hash every tuple alike from now on (tests of the index's comparisons).
    #[cfg(test)]
    pub(crate) fn collide_tuple_hashes(&mut self) {
        assert!(self.by_tuple.is_empty());
        self.hasher.collide = true;
    }

    /// Connections parked (folded while idle).
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Take keepalive probes' answers from `answers` (see [`ProbeAnswers`]).
    pub fn set_probe_answers(&mut self, answers: Box<dyn ProbeAnswers>) {
        self.answers = Some(answers);
    }

    /// Park quiescent connections (the default) or keep every TCB unfolded.
    pub fn set_parking(&mut self, on: bool) {
        self.park_idle = on;
    }

    /// Armed timers in the wheel (at most one per connection).
    pub fn armed_timers(&self) -> usize {
        self.wheel.len()
    }

    fn mark(&mut self, idx: u32) {
        if self.slots.get(idx as usize).is_some_and(|s| !s.is_free()) && !self.queued.get(idx) {
            self.queued.set(idx, true);
            self.work.push_back(idx);
        }
    }

    fn find(&self, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
        self.find_hinted(local, remote, None)
    }

    /// [`Endpoint::find`], trying slot `hint` first: a slot holds a tuple only while the index
    /// names it for that tuple (see [`Tcb::Live`]), so a slot that holds it is the answer the
    /// index would give, without the index's two cache misses (its control bytes and its
    /// bucket) when it is large. Any other hint (stale, another queue's, out of range) costs
    /// the look at one slot, then the index as without one.
    fn find_hinted(&self, local: SocketAddr, remote: SocketAddr, hint: Option<u32>) -> Option<u32> {
        let key = Tuple::new(local, remote);
        let (slots, locals) = (&self.slots, &self.locals);
        if let Some(i) = hint
            && slots.get(i as usize).is_some_and(|s| s.holds(&key, locals))
        {
            return Some(i);
        }
        self.by_tuple.find(self.hasher.hash_one(key), |&i| slots[i as usize].holds(&key, locals)).copied()
    }

    /// Forget the index entry of `(local, remote)` if it names slot `idx`; a live slot then
    /// stops holding the tuple (see [`Tcb::Live`]).
    fn unindex(&mut self, local: SocketAddr, remote: SocketAddr, idx: u32) {
        let hash = self.hasher.hash_one(Tuple::new(local, remote));
        if let Ok(entry) = self.by_tuple.find_entry(hash, |&i| i == idx) {
            entry.remove();
        }
        if let Some(Slot { tcb: Tcb::Live(_, t) }) = self.slots.get_mut(idx as usize) {
            *t = None;
        }
    }

    fn index(&mut self, local: SocketAddr, remote: SocketAddr, idx: u32) {
        let (slots, hasher, locals) = (&self.slots, &self.hasher, &self.locals);
        let rehash = |&i: &u32| slots[i as usize].tuple(locals).map_or(0, |t| hasher.hash_one(t));
        self.by_tuple.insert_unique(hasher.hash_one(Tuple::new(local, remote)), idx, rehash);
    }

    /// The live connection of slot `idx`, unfolded if it was parked.
    fn live(&mut self, idx: u32) -> Option<&mut Connection> {
        if let Some(Slot { tcb: Tcb::Parked(p) }) = self.slots.get(idx as usize) {
            let conn = self.unfold(p);
            self.slots[idx as usize].tcb = Tcb::boxed(conn);
            self.parked -= 1;
        }
        self.slots.get_mut(idx as usize)?.live()
    }

    /// The connection a parked slot holds, unfolded (the slot keeps its folded form).
    fn unfold(&self, p: &ParkedSlot) -> Connection {
        let keepalive = self.keepalives.get(p.keepalive as usize).copied().unwrap_or(self.config.keepalive);
        let tuple = p.tuple(&self.locals);
        Connection::unpark(&p.tcb, self.config.clone(), tuple.local(), tuple.remote(), keepalive)
    }

    /// Fold slot `idx` if its connection is quiescent (its wheel entry, its one deadline:
    /// keepalive or the end of TIME_WAIT, stays as it is).
    fn try_park(&mut self, idx: u32) {
        // Not one the index no longer names (it could not be found, nor told from its tuple's
        // new incarnation, once folded).
        let Some(Slot { tcb: Tcb::Live(conn, Some(_)) }) = self.slots.get(idx as usize) else { return };
        let Some(tcb) = conn.park() else { return };
        let (local, remote, keepalive) = (conn.local(), conn.remote(), conn.keepalive());
        let Ok(parked) = self.parked_slot(tcb, local, remote, keepalive) else { return };
        self.slots[idx as usize].tcb = Tcb::Parked(parked);
        self.parked += 1;
        self.events.push_back((ConnectionHandle(idx), Event::Parked));
    }

    /// A folded connection as a slot keeps it, its keepalive settings and local address named
    /// by index; refused when there are more distinct ones than an index can name.
    fn parked_slot(&mut self, tcb: Parked, local: SocketAddr, remote: SocketAddr, k: super::Keepalive) -> Result<ParkedSlot, ImportError> {
        let keepalive = match self.keepalives.iter().position(|&x| x == k) {
            Some(i) => i,
            None if self.keepalives.len() < MAX_KEEPALIVES => {
                self.keepalives.push(k);
                self.keepalives.len() - 1
            }
            None => return Err(ImportError::Keepalives),
        };
        let t = Tuple::new(local, remote);
        let local = match self.local_index.get(&t.local) {
            Some(&i) => i,
            None if self.locals.len() < MAX_LOCALS => {
                let i = self.locals.len() as u16;
                self.locals.push(t.local);
                self.local_index.insert(t.local, i);
                i
            }
            None => return Err(ImportError::Locals),
        };
        Ok(ParkedSlot {
            tcb,
            remote: t.remote,
            local_port: t.local_port,
            remote_port: t.remote_port,
            local,
            v4: t.v4,
            keepalive: keepalive as u8,
        })
    }

    pub fn lookup(&self, local: SocketAddr, remote: SocketAddr) -> Option<ConnectionHandle> {
        self.find(local, remote).map(ConnectionHandle)
    }

    /// [`Endpoint::lookup`], trying slot `hint` first (see [`Endpoint::handle_hinted`]).
    pub fn lookup_hinted(&self, local: SocketAddr, remote: SocketAddr, hint: Option<u32>) -> Option<ConnectionHandle> {
        self.find_hinted(local, remote, hint).map(ConnectionHandle)
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
        if self.find(local, remote).is_some() {
            return Err(AcceptError::Exists);
        }
        if self.len() as u64 >= self.max_conns as u64 {
            return Err(AcceptError::Full);
        }
        let conn = Connection::accept(now, self.config.clone(), &facts, local, remote, ack, payload)?;
        self.totals.add_change(&Stats::default(), conn.stats());
        let reserved = self.reserved.remove(&Tuple::new(local, remote));
        let idx = match reserved.or_else(|| self.free.pop()) {
            Some(i) => i,
            // The slab does not grow past the limit while slots are held for other tuples: the
            // driver's tables (FLOWS values, a queue's range of slots) end there.
            None => match (self.slots.len() >= self.max_conns as usize).then(|| self.unreserve_oldest()).flatten() {
                Some(i) => i,
                None => {
                    self.slots.push(Slot::default());
                    (self.slots.len() - 1) as u32
                }
            },
        };
        self.slots[idx as usize] = Slot { tcb: Tcb::boxed(conn) };
        self.index(local, remote, idx);
        self.mark(idx);
        Ok(ConnectionHandle(idx))
    }

    /// A segment for no connection ([`Disposition::Unknown`]) addressed to `local`: with a
    /// listener (`listener`, the caller's, handed back with the new connection) and a cookie
    /// that checks out (`cookie` decodes the ACK, asked only when someone listens), it creates
    /// the connection (RFC 9293 3.10.7.4, the ACK of SYN-RECEIVED, that state held in the
    /// cookie); any other segment is refused with the RFC 9293 3.10.7.1 reset (for an ACK to
    /// a listener the same as 3.10.7.2's), queued for `poll_transmit`.
    #[allow(clippy::too_many_arguments)]
    pub fn accept_cookie<L>(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        ack: &Header,
        payload: &[u8],
        listener: Option<L>,
        cookie: impl FnOnce() -> Option<HandshakeFacts>,
    ) -> Result<(ConnectionHandle, L), Refusal> {
        let accepted = match listener {
            None => Err(Refusal::NoListener),
            Some(listener) => match cookie() {
                None => Err(Refusal::BadCookie),
                Some(facts) => {
                    self.accept(now, facts, local, remote, ack, payload).map(|h| (h, listener)).map_err(Refusal::Accept)
                }
            },
        };
        if accepted.is_err() {
            self.reset_unknown(local, remote, ack, payload.len());
        }
        accepted
    }

    /// Demux one segment addressed to `local` from `remote`.
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, h: &Header, payload: &[u8]) -> Disposition {
        self.handle_into(now, local, remote, h, payload, &mut |_, _| 0)
    }

    /// [`Endpoint::handle`], offering the connection's in-order data to `deliver` before its
    /// receive buffer (see [`Connection::handle_into`]): [`Endpoint::handle_hinted`] with no
    /// hint.
    pub fn handle_into(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        h: &Header,
        payload: &[u8],
        deliver: &mut dyn FnMut(ConnectionHandle, &[u8]) -> usize,
    ) -> Disposition {
        self.handle_hinted(now, local, remote, None, h, payload, deliver)
    }

    /// [`Endpoint::handle_into`] with `hint`, the slot the caller believes holds the connection
    /// (what a flow table in front of the endpoint named, as [`ConnectionHandle::slot`]):
    /// checked against the slot's tuple, it only spares the tuple index's lookup, and a wrong
    /// one changes nothing but that.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_hinted(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        hint: Option<u32>,
        h: &Header,
        payload: &[u8],
        deliver: &mut dyn FnMut(ConnectionHandle, &[u8]) -> usize,
    ) -> Disposition {
        let Some(idx) = self.find_hinted(local, remote, hint) else { return Disposition::Unknown };
        self.demux_hinted += u64::from(hint == Some(idx));
        let handle = ConnectionHandle(idx);
        let d = match self.slots.get(idx as usize) {
            Some(Slot { tcb: Tcb::Parked(p) }) if self.park_idle => {
                // A segment for a parked connection is taken without boxing it: unfolded here,
                // processed, and folded straight back when it leaves the connection quiescent
                // (a keepalive probe's answer, a duplicate ACK). That is what `live`, then
                // `poll_transmit` (nothing to send) and `retire` would do, without the
                // allocation, the visit and the `Parked` event: to the caller the connection
                // never left its slot. A quiescent connection owes no segment and holds no
                // event (`Connection::is_quiescent`). Anything else (an ACK or data owed, an
                // event, a close) leaves it unfolded and queued, as `live` would.
                let keepalive = p.keepalive;
                let mut conn = self.unfold(p);
                let before = *conn.stats();
                let d = conn.handle_into(now, h, payload, &mut |data| deliver(handle, data));
                self.account_change(&before, conn.stats(), conn.unacked_bytes() >= STRETCH_ACK_LIMIT);
                self.refold(now, idx, keepalive, conn);
                d
            }
            _ => {
                let Some(conn) = self.live(idx) else { return Disposition::Unknown };
                let before = *conn.stats();
                let d = conn.handle_into(now, h, payload, &mut |data| deliver(handle, data));
                let conn = &*conn;
                let (after, overdue) = (*conn.stats(), conn.unacked_bytes() >= STRETCH_ACK_LIMIT);
                self.account_change(&before, &after, overdue);
                self.mark(idx);
                d
            }
        };
        match d {
            Handled::Processed => Disposition::Delivered(ConnectionHandle(idx)),
            Handled::Dropped(DropReason::TimeWaitReuse) => {
                // The tuple is free for the new incarnation at once; its slot, once released,
                // waits for that incarnation (see `reserved`).
                self.unindex(local, remote, idx);
                self.reserve_on_release.push(idx);
                Disposition::Dropped(DropReason::TimeWaitReuse)
            }
            Handled::Dropped(r) => Disposition::Dropped(r),
        }
    }

    /// Add what one segment changed in a connection (its counters `before` and `after`, and
    /// whether it now owes an overdue ACK) to the endpoint's.
    fn account_change(&mut self, before: &Stats, after: &Stats, ack_overdue: bool) {
        self.acks_overdue |= ack_overdue;
        self.time_wait_fin_reacked += u64::from(after.time_wait_fin_reacks - before.time_wait_fin_reacks);
        self.totals.add_change(before, after);
    }

    /// Whether some connection has received [`STRETCH_ACK_LIMIT`] bytes or more since its last
    /// ACK: a driver that reads frames in batches and transmits after each should transmit now,
    /// mid-batch, rather than let that ACK stretch over the whole batch.
    pub fn acks_overdue(&self) -> bool {
        self.acks_overdue
    }

    /// Queue the RFC 9293 3.10.7.1 reset for a segment that belongs to no connection.
    pub fn reset_unknown(&mut self, local: SocketAddr, remote: SocketAddr, h: &Header, payload_len: usize) {
        if let Some(rst) = reset_for(h, payload_len)
            && self.resets.len() < MAX_PENDING_RESETS
        {
            self.resets.push_back((local, remote, rst));
        }
    }

    /// Resets for strangers queued and not yet sent ([`Endpoint::poll_transmit`] sends them
    /// first, in the order they were queued).
    pub fn pending_resets(&self) -> usize {
        self.resets.len()
    }

    /// The connection, for application calls (send, recv, shutdown, abort, set_keepalive...).
    /// The endpoint revisits it in the next `poll_transmit`.
    /// (Unfolds it if it was parked.)
    pub fn connection_mut(&mut self, h: ConnectionHandle) -> Option<&mut Connection> {
        self.mark(h.0);
        self.live(h.0)
    }

    /// The connection if it is unfolded (not parked).
    pub fn connection(&self, h: ConnectionHandle) -> Option<&Connection> {
        match &self.slots.get(h.0 as usize)?.tcb {
            Tcb::Live(c, _) => Some(c),
            _ => None,
        }
    }

    /// Whether `h` names a connection (live or parked) not yet released.
    pub fn contains(&self, h: ConnectionHandle) -> bool {
        self.slots.get(h.0 as usize).is_some_and(|s| !s.is_free())
    }

    pub fn is_parked(&self, h: ConnectionHandle) -> bool {
        self.slots.get(h.0 as usize).is_some_and(|s| matches!(s.tcb, Tcb::Parked(_)))
    }

    pub fn handle_for_slot(&self, slot: u32) -> Option<ConnectionHandle> {
        self.contains(ConnectionHandle(slot)).then_some(ConnectionHandle(slot))
    }

    /// Every connection's state, parked ones included (without unfolding them).
    pub fn infos(&self) -> impl Iterator<Item = (ConnectionHandle, ConnectionInfo)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let info = match &s.tcb {
                Tcb::Free => return None,
                Tcb::Live(c, _) => c.info(),
                Tcb::Parked(p) => {
                    let t = p.tuple(&self.locals);
                    p.tcb.info(&self.config, t.local(), t.remote())
                }
            };
            Some((ConnectionHandle(i as u32), info))
        })
    }

    /// The unfolded connections.
    pub fn live_connections(&self) -> impl Iterator<Item = (ConnectionHandle, &Connection)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| match &s.tcb {
            Tcb::Live(c, _) => Some((ConnectionHandle(i as u32), &**c)),
            _ => None,
        })
    }

    /// Serve every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeouts(now, usize::MAX);
    }

    /// Serve at most `budget` of the connections whose timers are due, oldest deadline first;
    /// returns how many are left waiting ([`Endpoint::poll_timeout`] is then `Instant::ZERO`).
    ///
    /// A driver that also has frames to read serves timers in batches between its reads: a
    /// million keepalive deadlines coming due together would otherwise send a million probes
    /// in one turn, whose answers overflow its receive ring while it is still sending (and
    /// hold off every other segment meanwhile). Batched, an engine with more due than it can
    /// serve sends its probes late instead, at the rate it can take their answers (RFC 9293
    /// 3.8.4 leaves when a keep-alive is sent to the implementation: no sooner than its
    /// interval, which lateness keeps).
    pub fn handle_timeouts(&mut self, now: Instant, budget: usize) -> usize {
        let (due, bits) = (&mut self.due, &mut self.due_bits);
        self.wheel.poll(now, |k| {
            if !bits.get(k) {
                bits.set(k, true);
                due.push_back(k);
            }
        });
        for _ in 0..budget {
            let Some(idx) = self.due.pop_front() else { break };
            if self.park_idle && matches!(self.slots.get(idx as usize), Some(Slot { tcb: Tcb::Parked(_) })) {
                self.parked_due.push_back(idx);
                continue;
            }
            self.due_bits.set(idx, false);
            self.serve_live_due(now, idx);
        }
        self.due.len()
    }

    fn serve_live_due(&mut self, now: Instant, idx: u32) {
        // A slot that was freed, handed over or taken by a new connection meanwhile: the
        // connection's own timers say whether anything is due (nothing, for a new one).
        // (Taken out of `self` while the connection borrows it, put back below.)
        let (mut answers, mut awaited) = (self.answers.take(), std::mem::take(&mut self.answer_awaited));
        let Some(conn) = self.live(idx) else {
            (self.answers, self.answer_awaited) = (answers, awaited);
            return;
        };
        let taken = take_answer(&mut answers, &mut awaited, now, idx, conn);
        let before = *conn.stats();
        conn.handle_timeout(now);
        let after = *conn.stats();
        self.totals.add_change(&before, &after);
        (self.answers, self.answer_awaited) = (answers, awaited);
        self.probe_answers_taken += u64::from(taken);
        self.mark(idx);
    }

    /// Serve the deadline of a slot `handle_timeouts` found parked, writing what it sends into
    /// `buf`: a parked connection's one timer is keepalive (a probe) or the end of TIME_WAIT
    /// (nothing to send; it closes). As for a segment (`handle_into`): unfolded on the stack,
    /// and folded straight back if quiescent after its one segment (a probe is owed nothing),
    /// which is what `live`, the `work` visit and `retire` would do, without the allocation
    /// and the `Parked` event; otherwise boxed and queued as `live` would.
    fn serve_parked_due(&mut self, now: Instant, idx: u32, buf: &mut [u8]) -> Option<Transmit> {
        let Some(Slot { tcb: Tcb::Parked(p) }) = self.slots.get(idx as usize) else {
            // Unfolded meanwhile (an application call): served as any live connection.
            self.serve_live_due(now, idx);
            return None;
        };
        let keepalive = p.keepalive;
        let mut conn = self.unfold(p);
        self.probe_answers_taken += u64::from(take_answer(&mut self.answers, &mut self.answer_awaited, now, idx, &mut conn));
        let before = *conn.stats();
        conn.handle_timeout(now);
        let sent = conn.poll_transmit(now, buf);
        self.totals.add_change(&before, conn.stats());
        let transmit = sent.map(|len| transmit(&mut self.answer_awaited, idx, &conn, &before, len));
        self.refold(now, idx, keepalive, conn);
        transmit
    }

    /// Put back the connection unfolded from parked slot `idx` (whose keepalive settings were
    /// `keepalive`): folded into the slot, its deadline re-armed as `retire` would, if it is
    /// quiescent with the same settings; otherwise boxed and queued, as `live` would have.
    fn refold(&mut self, now: Instant, idx: u32, keepalive: u8, conn: Connection) {
        let same_keepalive = self.keepalives.get(keepalive as usize) == Some(&conn.keepalive());
        match conn.park().filter(|_| same_keepalive) {
            Some(tcb) => {
                if let Some(Slot { tcb: Tcb::Parked(p) }) = self.slots.get_mut(idx as usize) {
                    p.tcb = tcb;
                }
                self.arm(now, idx, conn.next_timer());
            }
            None => {
                self.slots[idx as usize].tcb = Tcb::boxed(conn);
                self.parked -= 1;
                self.mark(idx);
            }
        }
    }

    /// Connections whose timers are due and wait for [`Endpoint::handle_timeouts`] (not
    /// counting parked ones it has taken, which the next `poll_transmit` serves).
    pub fn timers_waiting(&self) -> usize {
        self.due.len()
    }

    /// When `handle_timeout` (or `poll_transmit`, when connections have pending work) is next
    /// needed; possibly early, never late.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.work.is_empty() || !self.resets.is_empty() || !self.due.is_empty() || !self.parked_due.is_empty() {
            return Some(Instant::ZERO);
        }
        self.wheel.next_deadline()
    }

    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        if self.events.is_empty() {
            for &idx in &self.work {
                if let Some(conn) = self.slots[idx as usize].live() {
                    while let Some(e) = conn.poll_event() {
                        self.events.push_back((ConnectionHandle(idx), e));
                    }
                }
            }
        }
        let ev = self.events.pop_front();
        if let Some((h, Event::Released { local, remote })) = ev {
            self.releasing -= 1;
            match self.reserve_on_release.iter().position(|&i| i == h.0) {
                Some(at) => {
                    self.reserve_on_release.swap_remove(at);
                    self.reserve(Tuple::new(local, remote), h.0);
                }
                None => self.free.push(h.0),
            }
        }
        ev
    }

    /// Hold free slot `idx` for the next connection of `tuple` (see [`Endpoint::reserved`]).
    fn reserve(&mut self, tuple: Tuple, idx: u32) {
        while self.reserved_order.len() >= MAX_RESERVED {
            if let Some(old) = self.reserved_order.pop_front()
                && let Some(i) = self.reserved.remove(&old)
            {
                self.free.push(i);
            }
        }
        if let Some(i) = self.reserved.insert(tuple, idx) {
            self.free.push(i);
        }
        self.reserved_order.push_back(tuple);
    }

    /// The oldest slot held for a new incarnation, no longer held.
    fn unreserve_oldest(&mut self) -> Option<u32> {
        while let Some(old) = self.reserved_order.pop_front() {
            if let Some(i) = self.reserved.remove(&old) {
                return Some(i);
            }
        }
        None
    }

    /// Whether a connection a new incarnation of its tuple ended waits for its `Released` event
    /// to be polled, its slot then held for that incarnation ([`Endpoint::reserved`]).
    pub fn reserving(&self) -> bool {
        !self.reserve_on_release.is_empty()
    }

    /// Slots held for new incarnations of their tuples, not yet taken ([`Endpoint::reserved`]).
    pub fn reserved_slots(&self) -> usize {
        self.reserved.len()
    }

    /// The next segment to send, written into `buf` (which must hold 60 bytes of header plus
    /// the MSS).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((local, remote, h)) = self.resets.pop_front() {
            let len = segment::write(&h, &[], buf).ok()?;
            return Some(Transmit { handle: None, local, remote, len, ect: false, probe_answer: None, answer_withdrawn: false });
        }
        while let Some(idx) = self.parked_due.pop_front() {
            self.due_bits.set(idx, false);
            if let Some(t) = self.serve_parked_due(now, idx, buf) {
                return Some(t);
            }
        }
        while let Some(&idx) = self.work.front() {
            let slot = &mut self.slots[idx as usize];
            let Some(conn) = slot.live() else {
                self.work.pop_front();
                self.queued.set(idx, false);
                continue;
            };
            let before = *conn.stats();
            let sent = conn.poll_transmit(now, buf);
            self.totals.add_change(&before, conn.stats());
            if let Some(len) = sent {
                return Some(transmit(&mut self.answer_awaited, idx, conn, &before, len));
            }
            // Nothing more to send: collect events, register the deadline, maybe release.
            self.work.pop_front();
            self.queued.set(idx, false);
            self.retire(now, idx);
        }
        self.acks_overdue = false;
        None
    }

    fn retire(&mut self, now: Instant, idx: u32) {
        let Some(conn) = self.slots[idx as usize].live() else { return };
        let h = ConnectionHandle(idx);
        while let Some(e) = conn.poll_event() {
            self.events.push_back((h, e));
        }
        if conn.is_released() {
            let (local, remote) = (conn.local(), conn.remote());
            self.unindex(local, remote, idx);
            self.slots[idx as usize] = Slot::default();
            self.wheel.remove(idx);
            self.releasing += 1;
            self.events.push_back((h, Event::Released { local, remote }));
            return;
        }
        let next = conn.next_timer();
        self.arm(now, idx, next);
        if self.park_idle {
            self.try_park(idx);
        }
    }

    /// Slot `idx`'s wheel entry for its connection's next deadline.
    fn arm(&mut self, now: Instant, idx: u32, next: Option<(TimerKind, Instant)>) {
        match next {
            // A keepalive deadline shares a coarse tick with its neighbours' (never early; see
            // `coarse`): probes go out, and their answers come back, in batches.
            Some((TimerKind::Keepalive, at)) => self.wheel.insert(idx, coarse(at, at.saturating_duration_since(now))),
            Some((_, at)) => self.wheel.insert(idx, at),
            None => self.wheel.remove(idx),
        }
    }
}

/// The segment connection `idx` just wrote (`len` bytes; its counters were `before`), with the
/// answer it asks for when it is a keepalive probe, or the withdrawal of the last probe's
/// (`awaited`: the slots whose last segment was a probe).
fn transmit(awaited: &mut Bits, idx: u32, conn: &Connection, before: &Stats, len: usize) -> Transmit {
    let probe = conn.stats().keepalive_probes != before.keepalive_probes;
    let withdrawn = !probe && awaited.get(idx);
    if probe || withdrawn {
        awaited.set(idx, probe);
    }
    Transmit {
        handle: Some(ConnectionHandle(idx)),
        local: conn.local(),
        remote: conn.remote(),
        len,
        ect: conn.ect(),
        probe_answer: probe.then(|| conn.probe_answer()),
        answer_withdrawn: withdrawn,
    }
}

/// Before connection `idx`'s deadline is served: the answer to its keepalive probe, if one is
/// out and the driver took it (see [`ProbeAnswers`]). Whether the connection counted it.
fn take_answer(answers: &mut Option<Box<dyn ProbeAnswers>>, awaited: &mut Bits, now: Instant, idx: u32, conn: &mut Connection) -> bool {
    if conn.keepalive_probes_out() == 0 {
        return false;
    }
    match answers.as_mut().and_then(|a| a.take(idx)) {
        Some(a) => {
            awaited.set(idx, false);
            conn.probe_answered(now, a.at, a.tsval)
        }
        None => false,
    }
}