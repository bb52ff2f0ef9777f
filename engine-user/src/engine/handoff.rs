//! Which queue thread owns a tuple, and handing it the frames that arrived on another RX queue.
//!
//! Each queue's engine owns its connections alone, and XDP can only redirect a frame to the
//! AF_XDP socket of the queue it arrived on. A NIC's RSS keeps a tuple on one queue, but not
//! every device hashes (veth picks the queue by the sending CPU, so a client's segments can
//! change queue mid-connection, and a SYN reusing a port can land beside the other queue's
//! TIME_WAIT): without a hand-off such a segment meets an engine that never heard of the tuple
//! and is reset (10-25% of connections refused with two queues on veth).
//!
//! Each queue has its own range of FLOWS slots, so the slot XDP holds for a tuple
//! names its owner. While a connection is being created (the cookie ACK taken, the slot not yet
//! in FLOWS) a claim here says who creates it, so two queues never both accept one tuple: a
//! queue claims before it looks at FLOWS, and publishes the slot before it drops the claim.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use engine_common::maps::CLAIM;

use crate::api::EngineWaker;

/// Frames waiting in one queue's inbox, at most this many (a stall there must not grow memory
/// without bound; TCP retransmits what is dropped).
pub const INBOX_CAP: usize = 4096;

/// How many times a frame may be handed on: ownership can move while a frame travels (a claim
/// given up, a connection released), but never in a cycle for long.
pub const MAX_HOPS: u8 = 3;

/// A frame handed from the queue it arrived on to the owner of its tuple.
pub struct Handed {
    pub frame: Box<[u8]>,
    /// Times it was handed on so far.
    pub hops: u8,
}

struct Inbox {
    frames: Mutex<VecDeque<Handed>>,
    waker: Arc<EngineWaker>,
}

/// The queues' slot ranges, inboxes and creation claims, shared by the queue threads.
pub struct Handoff {
    /// Slots per queue: queue q owns `q * per_queue .. (q + 1) * per_queue`.
    per_queue: u32,
    inboxes: Vec<Inbox>,
    claims: Mutex<HashMap<(SocketAddr, SocketAddr), u32>>,
}

/// Who serves a tuple that a queue's endpoint does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This queue: it holds the claim until [`Handoff::release`].
    Me,
    /// Queue n has the connection, or is creating it.
    Queue(u32),
}

impl Handoff {
    /// `wakers[q]` wakes queue q's thread.
    pub fn new(per_queue: u32, wakers: Vec<Arc<EngineWaker>>) -> Self {
        let inboxes = wakers.into_iter().map(|waker| Inbox { frames: Mutex::new(VecDeque::new()), waker }).collect();
        Self { per_queue, inboxes, claims: Mutex::new(HashMap::new()) }
    }

    pub fn queues(&self) -> u32 {
        self.inboxes.len() as u32
    }

    /// The queue whose range holds FLOWS value `slot` (None: XDP's claim, or no range).
    pub fn owner_of_slot(&self, slot: u32) -> Option<u32> {
        if slot & CLAIM != 0 || self.per_queue == 0 {
            return None;
        }
        let q = slot / self.per_queue;
        (q < self.queues()).then_some(q)
    }

    /// Who serves `(local, remote)`, which queue `me`'s endpoint does not know: a queue creating
    /// it (its claim), else the queue whose slot FLOWS holds (`flows_slot`, asked after the
    /// claim is taken), else `me`, which then holds the claim until [`Handoff::release`].
    ///
    /// Claiming before looking at FLOWS, while an owner writes FLOWS before dropping its claim,
    /// means two queues cannot both see the tuple as theirs.
    pub fn owner(&self, me: u32, local: SocketAddr, remote: SocketAddr, flows_slot: impl FnOnce() -> Option<u32>) -> Owner {
        {
            let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
            match claims.get(&(local, remote)) {
                Some(&q) if q != me => return Owner::Queue(q),
                Some(_) => {}
                None => {
                    claims.insert((local, remote), me);
                }
            }
        }
        match flows_slot().and_then(|s| self.owner_of_slot(s)) {
            Some(q) if q != me => {
                self.release(local, remote);
                Owner::Queue(q)
            }
            _ => Owner::Me,
        }
    }

    /// Queue's claim on `(local, remote)` ends: its slot is in FLOWS, or it made no connection.
    pub fn release(&self, local: SocketAddr, remote: SocketAddr) {
        self.claims.lock().unwrap_or_else(|e| e.into_inner()).remove(&(local, remote));
    }

    /// Hand `frame` to `queue`'s thread; false if its inbox is full (the frame is dropped).
    pub fn hand(&self, queue: u32, frame: Handed) -> bool {
        let Some(inbox) = self.inboxes.get(queue as usize) else { return false };
        let mut frames = inbox.frames.lock().unwrap_or_else(|e| e.into_inner());
        if frames.len() >= INBOX_CAP {
            return false;
        }
        let was_empty = frames.is_empty();
        frames.push_back(frame);
        drop(frames);
        if was_empty {
            // Not a slot: wakes the thread without naming a connection.
            inbox.waker.notify(u32::MAX);
        }
        true
    }

    /// Take what other queues handed `queue`.
    pub fn take(&self, queue: u32, out: &mut VecDeque<Handed>) {
        if let Some(inbox) = self.inboxes.get(queue as usize) {
            out.append(&mut inbox.frames.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(port: u16) -> (SocketAddr, SocketAddr) {
        ("198.18.0.1:80".parse().unwrap(), SocketAddr::new("198.18.0.2".parse().unwrap(), port))
    }

    fn handoff() -> Handoff {
        Handoff::new(100, (0..2).map(|_| Arc::new(EngineWaker::new())).collect())
    }

    #[test]
    fn slots_name_their_queue_and_xdps_claims_name_none() {
        let h = handoff();
        assert_eq!(h.owner_of_slot(0), Some(0));
        assert_eq!(h.owner_of_slot(99), Some(0));
        assert_eq!(h.owner_of_slot(100), Some(1));
        assert_eq!(h.owner_of_slot(200), None);
        assert_eq!(h.owner_of_slot(engine_common::maps::claim(5 << 30)), None);
    }

    #[test]
    fn one_queue_creates_a_tuple_and_the_other_hands_it_its_frames() {
        let h = handoff();
        let (l, r) = tuple(1000);
        // Queue 0 takes the cookie ACK first: FLOWS holds XDP's claim.
        assert_eq!(h.owner(0, l, r, || Some(engine_common::maps::claim(5 << 30))), Owner::Me);
        // Queue 1 sees a segment of the tuple meanwhile: queue 0 is creating it (FLOWS is not
        // even asked).
        assert_eq!(h.owner(1, l, r, || panic!("the claim answers")), Owner::Queue(0));
        // Queue 0 publishes slot 7 and drops its claim: FLOWS names it from then on.
        h.release(l, r);
        assert_eq!(h.owner(1, l, r, || Some(7)), Owner::Queue(0));
        // That look left no claim of queue 1 behind.
        assert_eq!(h.owner(0, l, r, || Some(7)), Owner::Me);
        h.release(l, r);
        // A slot of queue 1's own range, or none: queue 1 serves it.
        assert_eq!(h.owner(1, l, r, || Some(150)), Owner::Me);
        h.release(l, r);
        assert_eq!(h.owner(1, l, r, || None), Owner::Me);
    }

    #[test]
    fn inboxes_are_bounded_and_wake_their_thread() {
        let wakers: Vec<_> = (0..2).map(|_| Arc::new(EngineWaker::new())).collect();
        let h = Handoff::new(100, wakers.clone());
        for i in 0..INBOX_CAP {
            assert!(h.hand(1, Handed { frame: vec![i as u8].into(), hops: 0 }));
        }
        assert!(!h.hand(1, Handed { frame: vec![0].into(), hops: 0 }), "full");
        assert!(!h.hand(5, Handed { frame: vec![0].into(), hops: 0 }), "no such queue");
        let mut poked = Vec::new();
        wakers[1].drain(&mut poked);
        assert_eq!(poked, [u32::MAX], "woken once, for the first frame");
        let mut got = VecDeque::new();
        h.take(1, &mut got);
        assert_eq!(got.len(), INBOX_CAP);
        assert_eq!(got[1].frame[..], [1]);
        h.take(0, &mut got);
        assert_eq!(got.len(), INBOX_CAP);
    }
}
