//! Connections moving to another process (`synx run --takeover`): a quiescent connection
//! leaves in its folded form ([`Parked`]) with its slot, tuple and keepalive settings, and is
//! taken into the same slot by the other process's endpoint, parked, its one deadline armed
//! (absolute, in the CLOCK_MONOTONIC domain both processes share). The same slot: it is the
//! value XDP's FLOWS map holds for the tuple. The fields travel by name (serde), so a binary
//! whose folded form differs refuses them, naming the field, instead of misreading them.

use std::net::SocketAddr;

use super::{ConnectionHandle, Endpoint, MAX_KEEPALIVES, ParkedSlot, Slot, Tcb, Tuple};
use crate::connection::Parked;
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
}

impl Endpoint {
    /// Connection `h` in its folded form, for another process's [`Endpoint::import`]: only a
    /// quiescent one (parked, or parkable now: nothing in flight, buffered or owed), `None`
    /// else. It stays here too: the exporting process stops serving it by going away.
    pub fn export(&mut self, h: ConnectionHandle) -> Option<Exported> {
        self.try_park(h.slot());
        let Tcb::Parked(p) = &self.slots.get(h.slot() as usize)?.tcb else { return None };
        let keepalive = self.keepalives.get(p.keepalive as usize).copied().unwrap_or(self.config.keepalive);
        Some(Exported { slot: h.slot(), local: p.tuple.local(), remote: p.tuple.remote(), keepalive, tcb: p.tcb })
    }

    /// Connection `h` in its folded form, as [`Endpoint::export`], and gone from here at once
    /// (no event, nothing sent: the other process carries it on); `None`, and nothing changed,
    /// unless it is quiescent and owes no work to the transmit queue. Its slot is not reused
    /// here: XDP's FLOWS names it for the other process.
    pub fn hand_over(&mut self, h: ConnectionHandle) -> Option<Exported> {
        if self.slots.get(h.slot() as usize)?.queued {
            return None;
        }
        let e = self.export(h)?;
        let idx = h.slot();
        self.unindex(e.local, e.remote, idx);
        self.slots[idx as usize] = Slot::default();
        self.wheel.remove(idx);
        self.parked -= 1;
        self.handed_over += 1;
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
        let keepalive = match self.keepalives.iter().position(|&k| k == e.keepalive) {
            Some(i) => i,
            None if self.keepalives.len() < MAX_KEEPALIVES => {
                self.keepalives.push(e.keepalive);
                self.keepalives.len() - 1
            }
            None => return Err(ImportError::Keepalives),
        };
        let idx = e.slot;
        if (idx as usize) < self.slots.len() {
            let Some(at) = self.free.iter().position(|&i| i == idx) else { return Err(ImportError::SlotTaken(idx)) };
            self.free.swap_remove(at);
        } else {
            // The slots in between stay free for connections of this process.
            let first = self.slots.len() as u32;
            self.slots.resize_with(idx as usize + 1, Slot::default);
            self.free.extend(first..idx);
        }
        let tuple = Tuple::new(e.local, e.remote);
        self.slots[idx as usize] =
            Slot { tcb: Tcb::Parked(ParkedSlot { tcb: e.tcb, tuple, keepalive: keepalive as u8 }), queued: false };
        self.parked += 1;
        self.index(e.local, e.remote, idx);
        if let Some(at) = e.tcb.deadline() {
            self.wheel.insert(idx, at);
        }
        Ok(ConnectionHandle(idx))
    }
}
