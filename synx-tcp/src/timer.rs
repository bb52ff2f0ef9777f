//! Timers: the per-connection [`TimerTable`] and the [`TimingWheel`] across connections.

use core::time::Duration;

use super::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// RFC 6298 retransmission timer.
    Retransmit = 0,
    /// RFC 9293 3.8.6.3 delayed ACK.
    DelayedAck = 1,
    /// RFC 9293 3.8.6.1 zero-window probing.
    Persist = 2,
    /// RFC 1122 4.2.3.6 keepalive.
    Keepalive = 3,
    /// 2*MSL in TIME_WAIT (RFC 9293 3.10.8).
    TimeWait = 4,
    /// The pacer lets the next segment go (nothing to do but send it).
    Pace = 5,
}

impl TimerKind {
    pub const ALL: [TimerKind; 6] = [
        TimerKind::Retransmit,
        TimerKind::DelayedAck,
        TimerKind::Persist,
        TimerKind::Keepalive,
        TimerKind::TimeWait,
        TimerKind::Pace,
    ];
}

const UNSET: u64 = u64::MAX;

/// One deadline per [`TimerKind`]; 48 bytes.
#[derive(Clone, Copy, Debug)]
pub struct TimerTable {
    deadlines: [u64; 6],
}

impl Default for TimerTable {
    fn default() -> Self {
        Self { deadlines: [UNSET; 6] }
    }
}

impl TimerTable {
    pub fn set(&mut self, kind: TimerKind, at: Instant) {
        self.deadlines[kind as usize] = at.as_nanos().min(UNSET - 1);
    }
    pub fn stop(&mut self, kind: TimerKind) {
        self.deadlines[kind as usize] = UNSET;
    }
    pub fn get(&self, kind: TimerKind) -> Option<Instant> {
        let d = self.deadlines[kind as usize];
        (d != UNSET).then_some(Instant::from_nanos(d))
    }
    pub fn is_set(&self, kind: TimerKind) -> bool {
        self.deadlines[kind as usize] != UNSET
    }
    pub fn stop_all(&mut self) {
        self.deadlines = [UNSET; 6];
    }
    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        let d = *self.deadlines.iter().min().unwrap_or(&UNSET);
        (d != UNSET).then_some(Instant::from_nanos(d))
    }
    /// The earliest timer and its deadline.
    pub fn next_kind(&self) -> Option<(TimerKind, Instant)> {
        let (i, &d) = self.deadlines.iter().enumerate().min_by_key(|(_, d)| **d)?;
        (d != UNSET).then(|| (TimerKind::ALL[i], Instant::from_nanos(d)))
    }
    /// Take one timer whose deadline is at or before `now` (earliest first).
    pub fn take_expired(&mut self, now: Instant) -> Option<TimerKind> {
        let (i, &d) = self.deadlines.iter().enumerate().min_by_key(|(_, d)| **d)?;
        if d == UNSET || d > now.as_nanos() {
            return None;
        }
        self.deadlines[i] = UNSET;
        Some(TimerKind::ALL[i])
    }
}

/// Wheel tick: 1 ms. Deadlines round up to the next tick, so nothing fires early.
pub const TICK_NS: u64 = 1_000_000;
const SLOTS: usize = 64;
const LEVELS: usize = 6; // 64^6 ticks: about 2.2 years
const NIL: u32 = u32::MAX;
const NO_SLOT: u16 = u16::MAX;

/// 16 bytes: the tick and the slot share a word (any `Instant` in ticks fits in 45 bits).
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The deadline's tick in the upper 48 bits, the slot (level * 64 + slot, or NO_SLOT when
    /// not armed) in the lower 16.
    tick_slot: u64,
    next: u32,
    prev: u32,
}

impl Entry {
    const fn new(tick: u64, next: u32, prev: u32, slot: u16) -> Self {
        Entry { tick_slot: tick << 16 | slot as u64, next, prev }
    }

    fn tick(&self) -> u64 {
        self.tick_slot >> 16
    }

    fn slot(&self) -> u16 {
        self.tick_slot as u16
    }

    /// Not armed, keeping its tick.
    fn unarmed(&self) -> Self {
        Entry::new(self.tick(), NIL, NIL, NO_SLOT)
    }
}

const EMPTY: Entry = Entry::new(0, NIL, NIL, NO_SLOT);

/// `at` rounded up to the next multiple of the largest power-of-two number of milliseconds
/// no more than 1/64 of `span`, how far ahead it was set (1 ms under 128 ms): never early,
/// late by under 1/32 of the span. Deadlines a long way off then share a tick with their
/// neighbours, as in Linux's timer wheel, whose far levels fire a timer up to 1/8 of its
/// timeout late. The endpoint arms keepalive deadlines so: a million connections probed
/// every 10 s make ten ticks a second of 10,000 probes each, whose answers come back
/// together and are read in a few wakeups, instead of 100 probes every millisecond, every
/// few waking the engine. RFC 1122 4.2.3.6 and RFC 9293 3.8.4 bound a keep-alive from below
/// only (no sooner than its idle time or interval).
pub fn coarse(at: Instant, span: Duration) -> Instant {
    let ms = (span.as_millis() / 64).max(1);
    let granule = (1u64 << ms.ilog2().min(63)).saturating_mul(1_000_000);
    let ns = at.as_nanos();
    Instant::from_nanos(ns.div_ceil(granule).saturating_mul(granule).max(ns))
}

/// A hierarchical timing wheel (6 levels of 64 slots, 1 ms ticks) over `u32` keys, at most one
/// deadline per key. Entries live in a flat array indexed by key and are linked into slot lists
/// intrusively, so insert and cancel are O(1) with no allocation once the array has grown, and a
/// million armed timers cost 16 MB. An entry far in the future cascades down a level each time
/// its slot comes due (at most 5 times).
pub struct TimingWheel {
    elapsed: u64,
    entries: Vec<Entry>,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    len: usize,
}

impl Default for TimingWheel {
    fn default() -> Self {
        Self::new(Instant::ZERO)
    }
}

impl TimingWheel {
    pub fn new(now: Instant) -> Self {
        Self {
            elapsed: now.as_nanos() / TICK_NS,
            entries: Vec::new(),
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            len: 0,
        }
    }

    /// Armed keys.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, key: u32) -> bool {
        self.entries.get(key as usize).is_some_and(|e| e.slot() != NO_SLOT)
    }

    /// Arm (or re-arm) `key` to fire at `at`.
    pub fn insert(&mut self, key: u32, at: Instant) {
        self.remove(key);
        let k = key as usize;
        if k >= self.entries.len() {
            self.entries.resize(k + 1, EMPTY);
        }
        let tick = at.as_nanos().div_ceil(TICK_NS).max(self.elapsed);
        self.entries[k] = Entry::new(tick, NIL, NIL, NO_SLOT);
        self.link(key);
        self.len += 1;
    }

    /// Disarm `key`; no-op if not armed.
    pub fn remove(&mut self, key: u32) {
        let Some(e) = self.entries.get(key as usize).copied() else { return };
        if e.slot() == NO_SLOT {
            return;
        }
        let (level, slot) = (e.slot() as usize / SLOTS, e.slot() as usize % SLOTS);
        if e.prev == NIL {
            self.heads[level][slot] = e.next;
            if e.next == NIL {
                self.occupied[level] &= !(1u64 << slot);
            }
        } else {
            self.entries[e.prev as usize].next = e.next;
        }
        if e.next != NIL {
            self.entries[e.next as usize].prev = e.prev;
        }
        self.entries[key as usize] = e.unarmed();
        self.len -= 1;
    }

    /// The level whose slot size separates `tick` from `elapsed`, and the slot in it.
    fn slot_for(&self, tick: u64) -> (usize, usize) {
        let masked = (self.elapsed ^ tick) | (SLOTS as u64 - 1);
        let level = (63 - masked.leading_zeros() as usize) / 6;
        if level >= LEVELS {
            // In a later rotation of the top level. Within one rotation, the slot index wraps
            // (`next_slot` reads an index below the current one as the next rotation's); farther
            // away, park in the slot just before the current one, which starts no later than the
            // deadline, and cascade from there.
            let top = LEVELS - 1;
            let shift = 6 * top;
            let pos = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
            let rotation = 1u64 << (shift + 6);
            if tick - self.elapsed < rotation - (1u64 << shift) {
                return (top, ((tick >> shift) as usize) & (SLOTS - 1));
            }
            return (top, (pos + SLOTS - 1) % SLOTS);
        }
        (level, ((tick >> (6 * level)) as usize) & (SLOTS - 1))
    }

    fn link(&mut self, key: u32) {
        let tick = self.entries[key as usize].tick();
        let (level, slot) = self.slot_for(tick);
        let head = self.heads[level][slot];
        self.entries[key as usize] = Entry::new(tick, head, NIL, (level * SLOTS + slot) as u16);
        if head != NIL {
            self.entries[head as usize].prev = key;
        }
        self.heads[level][slot] = key;
        self.occupied[level] |= 1u64 << slot;
    }

    /// (level, slot, start tick) of the earliest non-empty slot.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occ = self.occupied[level];
            if occ == 0 {
                continue;
            }
            let shift = 6 * level;
            let pos = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
            let s = (occ.rotate_right(pos as u32).trailing_zeros() as usize + pos) % SLOTS;
            let range = 1u64 << (shift + 6);
            let base = self.elapsed & !(range - 1);
            let mut start = base + ((s as u64) << shift);
            if s < pos {
                start += range;
            }
            return Some((level, s, start.max(self.elapsed)));
        }
        None
    }

    /// When `poll` should next be called: at or before the earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_slot().map(|(_, _, start)| Instant::from_nanos(start.saturating_mul(TICK_NS)))
    }

    /// Disarm and report every key whose deadline is at or before `now`, in deadline order
    /// (keys due in the same tick in any order).
    pub fn poll(&mut self, now: Instant, mut expired: impl FnMut(u32)) {
        let now_tick = now.as_nanos() / TICK_NS;
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now_tick {
                break;
            }
            self.elapsed = start;
            let mut key = self.heads[level][slot];
            self.heads[level][slot] = NIL;
            self.occupied[level] &= !(1u64 << slot);
            while key != NIL {
                let e = self.entries[key as usize];
                let next = e.next;
                // Only a level-0 slot (one tick) expires its entries: a coarser one due at
                // once (a late poll) cascades them first, so keys expire in deadline order
                // however late the poll, and a caller serving them in batches serves the
                // oldest first.
                if level == 0 {
                    debug_assert!(e.tick() <= now_tick);
                    self.entries[key as usize] = e.unarmed();
                    self.len -= 1;
                    expired(key);
                } else {
                    // Cascade to a lower level relative to the new `elapsed`.
                    self.link(key);
                }
                key = next;
            }
        }
        self.elapsed = self.elapsed.max(now_tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * TICK_NS)
    }

    #[test]
    fn table_takes_earliest_first() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(TimerKind::Keepalive, ms(50));
        t.set(TimerKind::Retransmit, ms(10));
        assert_eq!(t.next(), Some(ms(10)));
        assert_eq!(t.take_expired(ms(9)), None);
        assert_eq!(t.take_expired(ms(60)), Some(TimerKind::Retransmit));
        assert_eq!(t.take_expired(ms(60)), Some(TimerKind::Keepalive));
        assert_eq!(t.take_expired(ms(60)), None);
    }

    #[test]
    fn an_entry_is_16_bytes_and_keeps_the_latest_tick() {
        assert_eq!(core::mem::size_of::<Entry>(), 16);
        let last = Instant::from_nanos(u64::MAX).as_nanos().div_ceil(TICK_NS);
        let e = Entry::new(last, 7, 9, (LEVELS * SLOTS - 1) as u16);
        assert_eq!((e.tick(), e.next, e.prev, e.slot()), (last, 7, 9, (LEVELS * SLOTS - 1) as u16));
        assert_eq!((e.unarmed().tick(), e.unarmed().slot()), (last, NO_SLOT));
    }

    #[test]
    fn wheel_fires_in_order_across_levels() {
        let mut w = TimingWheel::new(ms(0));
        w.insert(1, ms(5));
        w.insert(2, ms(70));
        w.insert(3, ms(5000));
        w.insert(4, ms(7_200_000)); // two hours: level 3
        w.insert(5, Instant::from_nanos(5 * TICK_NS - 1)); // rounds up to 5 ms
        w.remove(2);
        assert_eq!(w.len(), 4);
        let mut out = Vec::new();
        w.poll(ms(4), |k| out.push(k));
        assert!(out.is_empty());
        w.poll(ms(5), |k| out.push(k));
        out.sort();
        assert_eq!(out, [1, 5]);
        out.clear();
        w.poll(ms(4999), |k| out.push(k));
        assert!(out.is_empty());
        assert!(w.next_deadline().unwrap() <= ms(5000));
        w.poll(ms(5000), |k| out.push(k));
        assert_eq!(out, [3]);
        w.poll(ms(7_199_999), |k| out.push(k));
        assert_eq!(out, [3]);
        w.poll(ms(7_200_000), |k| out.push(k));
        assert_eq!(out, [3, 4]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn far_future_and_past_deadlines() {
        let mut w = TimingWheel::new(ms(1000));
        w.insert(0, ms(10)); // in the past: due at once
        w.insert(1, ms(1000 + (1 << 37))); // beyond the top level's range
        let mut out = Vec::new();
        w.poll(ms(1000), |k| out.push(k));
        assert_eq!(out, [0]);
        w.poll(ms(1000 + (1 << 37) - 1), |k| out.push(k));
        assert_eq!(out, [0]);
        w.poll(ms(1000 + (1 << 37)), |k| out.push(k));
        assert_eq!(out, [0, 1]);
    }

    proptest! {
        /// The wheel against a BTreeMap model: every key fires exactly once, never before its
        /// deadline and never after the first poll at or past it, in deadline order.
        #[test]
        fn wheel_matches_model(ops in proptest::collection::vec((0u32..64, 0u64..300_000, 0u8..4), 1..200)) {
            let mut w = TimingWheel::new(ms(0));
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            let mut now = 0u64;
            for (key, delta, op) in ops {
                match op {
                    0 | 1 => {
                        let at = now + delta;
                        w.insert(key, ms(at));
                        model.insert(key, at);
                    }
                    2 => {
                        w.remove(key);
                        model.remove(&key);
                    }
                    _ => {
                        now += delta / 16;
                        let mut fired = Vec::new();
                        w.poll(ms(now), |k| fired.push(k));
                        // In deadline order, however late the poll.
                        let deadlines: Vec<u64> = fired.iter().map(|k| model[k]).collect();
                        prop_assert!(deadlines.is_sorted(), "{:?}", deadlines);
                        fired.sort();
                        let due: Vec<u32> = model.iter().filter(|(_, at)| **at <= now).map(|(k, _)| *k).collect();
                        prop_assert_eq!(&fired, &due);
                        for k in due {
                            model.remove(&k);
                        }
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                if let Some(min) = model.values().min() {
                    prop_assert!(w.next_deadline().unwrap() <= ms((*min).max(now)));
                }
            }
        }
    }

    #[test]
    fn coarse_deadlines_are_never_early_late_by_under_a_32nd_and_shared_by_neighbours() {
        // Under 128 ms: the timer's own 1 ms tick.
        assert_eq!(coarse(ms(1_000), Duration::from_millis(100)), ms(1_000));
        assert_eq!(coarse(Instant::from_nanos(1_000_000_001), Duration::from_millis(100)), ms(1_001));
        // 10 s ahead: 128 ms granules (10,000 / 64 = 156, rounded down to a power of two).
        let idle = Duration::from_secs(10);
        assert_eq!(coarse(ms(12_800), idle), ms(12_800));
        assert_eq!(coarse(ms(12_801), idle), ms(12_928));
        assert_eq!(coarse(ms(12_927), idle), ms(12_928));
        // Linux's default 2 h: 64 s granules.
        assert_eq!(coarse(ms(7_200_000), Duration::from_secs(7200)), ms(7_208_960));
        // Any span, however long, and any deadline, up to "never": no overflow.
        assert_eq!(coarse(Instant::MAX, Duration::MAX), Instant::MAX);
        assert!(coarse(ms(5), Duration::MAX) >= ms(5));
        for span in [Duration::from_millis(1), Duration::from_millis(500), idle, Duration::from_secs(7200), Duration::from_secs(1 << 40)] {
            for at in [0u64, 1, 999_999, 1_000_001, 123_456_789_012, u64::MAX - 5] {
                let at = Instant::from_nanos(at);
                let c = coarse(at, span);
                let late = c.saturating_duration_since(at);
                assert!(c >= at && late < (span / 32).max(Duration::from_millis(1)), "{span:?} {at:?} {c:?}");
            }
        }
        // Deadlines spread over a second of a 10 s idle time fall on the 9 ticks of 128 ms
        // that 50.000-50.999 s reach (391-399 times 128 ms), not on 1,000.
        let ticks: std::collections::BTreeSet<_> = (0..1000).map(|i| coarse(ms(50_000 + i), idle)).collect();
        assert_eq!(ticks.len(), 9);
    }
}
