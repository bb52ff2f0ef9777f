//! Connections moving to another process (`synx run --takeover`): a quiescent connection
//! leaves in its folded form ([`Parked`]) with its slot, tuple and keepalive settings, and is
//! taken into the same slot by the other process's endpoint, parked, its one deadline armed
//! (absolute, in the CLOCK_MONOTONIC domain both processes share). The same slot: it is the
//! value XDP's FLOWS map holds for the tuple. The fields travel by name (serde), so a binary
//! whose folded form differs refuses them, naming the field, instead of misreading them.

use std::net::SocketAddr;

use super::{ConnectionHandle, Endpoint, Slot, Tcb};
use crate::connection::{Event, Parked};
use crate::Keepalive;

/// A connection on its way to another process (see the module docs).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exported {
    pub slot: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub keepalive: Keepalive,
    pub tcb: Parked,
}

/// Why [`Endpoint::import`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("slot {0} is taken")]
    SlotTaken(u32),
    #[error("the tuple is taken")]
    Exists,
    #[error("connection table full")]
    Full,
    #[error("more distinct keepalive settings than a parked slot can name")]
    Keepalives,
    #[error("more distinct local addresses than a parked slot can name")]
    Locals,
}

impl Endpoint {
    /// Connection `h` in its folded form, for another process's [`Endpoint::import`]: only a
    /// quiescent one (parked, or parkable now: nothing in flight, buffered or owed), `None`
    /// else. It stays here too: the exporting process stops serving it by going away.
    pub fn export(&mut self, h: ConnectionHandle) -> Option<Exported> {
        self.try_park(h.slot());
        let Tcb::Parked(p) = &self.slots.get(h.slot() as usize)?.tcb else { return None };
        let keepalive = self.keepalives.get(p.keepalive as usize).copied().unwrap_or(self.config.keepalive);
        let t = p.tuple(&self.locals);
        Some(Exported { slot: h.slot(), local: t.local(), remote: t.remote(), keepalive, tcb: p.tcb })
    }

    /// Connection `h` in its folded form, as [`Endpoint::export`], and gone from here at once
    /// (no event, nothing sent: the other process carries it on); `None`, and nothing changed,
    /// unless it is quiescent and owes no work to the transmit queue. Its slot is not reused
    /// here: XDP's FLOWS names it for the other process.
    pub fn hand_over(&mut self, h: ConnectionHandle) -> Option<Exported> {
        if h.slot() as usize >= self.slots.len() || self.queued.get(h.slot()) {
            return None;
        }
        let e = self.export(h)?;
        let idx = h.slot();
        self.unindex(e.local, e.remote, idx);
        self.slots[idx as usize] = Slot::default();
        self.wheel.remove(idx);
        self.parked -= 1;
        self.handed_over += 1;
        // Its fold's news, if not yet polled, goes with it: nothing here counts it any more.
        self.events.retain(|&(eh, ref ev)| eh != h || *ev != Event::Parked);
        Some(e)
    }

    /// Take a connection another process exported into the same slot, parked, its deadline
    /// armed. Cheapest in slot order into a fresh endpoint (a slot within the slab is looked for
    /// in the free list).
    pub fn import(&mut self, e: &Exported) -> Result<ConnectionHandle, ImportError> {
        if self.find(e.local, e.remote).is_some() {
            return Err(ImportError::Exists);
        }
        if self.len() as u64 >= self.max_conns as u64 {
            return Err(ImportError::Full);
        }
        let parked = self.parked_slot(e.tcb, e.local, e.remote, e.keepalive)?;
        let idx = e.slot;
        if (idx as usize) < self.slots.len() {
            // A slot held for a new incarnation of its tuple is free: the import takes it.
            if let Some(t) = self.reserved.iter().find_map(|(t, &i)| (i == idx).then_some(*t)) {
                self.reserved.remove(&t);
            } else {
                let Some(at) = self.free.iter().position(|&i| i == idx) else { return Err(ImportError::SlotTaken(idx)) };
                self.free.swap_remove(at);
            }
        } else {
            // The slots in between stay free for connections of this process.
            let first = self.slots.len() as u32;
            self.slots.resize_with(idx as usize + 1, Slot::default);
            self.free.extend(first..idx);
        }
        self.slots[idx as usize] = Slot { tcb: Tcb::Parked(parked) };
        self.parked += 1;
        self.index(e.local, e.remote, idx);
        if let Some(at) = e.tcb.deadline() {
            self.wheel.insert(idx, at);
        }
        Ok(ConnectionHandle(idx))
    }
}
