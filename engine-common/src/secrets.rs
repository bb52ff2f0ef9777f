//! The cookie secrets as userspace publishes them to the XDP program: two slots and an index.
//!
//! Userspace rewrites the secrets every period (and the clock adjustment when the kernel's TAI
//! offset changes) while XDP programs read them on other CPUs. A reader must never take half of
//! one publication and half of another (a key that no host minted with: every cookie fails, or
//! worse, a key an attacker can guess half of). So the map holds two [`SecretSlot`]s and the
//! index of the one to read:
//!
//! - the writer ([`publish`]) fills the slot readers are not told to read, then flips
//!   `active` to it; it never starts rewriting a slot sooner than [`MIN_INTERVAL_NS`] after
//!   it flipped away from it, far longer than any XDP program run (microseconds, with
//!   preemption off), so a reader that loaded the old index finishes reading a slot nobody
//!   writes;
//! - every slot carries a generation, odd while the writer is in it; the reader ([`read`])
//!   takes it before and after copying the slot and, if it changed or was odd, reads the other
//!   slot the same way (and gives up, `None`, if that one changed too). This catches a writer
//!   that broke the interval (a stopped reader, a test); it costs two loads.
//!
//! A reader that falls back may take a publication before its index flip is visible, and its
//! next read (by the old index) the publication before that: one back, never torn. It costs
//! nothing: a period's secret is the same in every publication that holds it.
//!
//! The reader is this one function for the XDP program and for userspace tests. Its loads are
//! plain (volatile) loads in BPF, which the x86-64 JIT keeps in program order (x86-64 does not
//! reorder loads with loads); on a weakly ordered CPU the interval above is what protects
//! readers.

use bytemuck::{Pod, Zeroable};

use crate::cookie::{KEYS, Key, Keys};

/// The shortest time between two publications (see the module doc).
pub const MIN_INTERVAL_NS: u64 = 10_000_000;

/// One publication.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SecretSlot {
    /// Even while the slot is whole, odd while the writer rewrites it; 0 before the first
    /// publication (the program then answers nothing).
    pub generation: u32,
    /// The period of `keys[0]` ([`Keys::newest`]).
    pub newest: u32,
    /// The shared clock is CLOCK_TAI plus this (minus the kernel's TAI offset, so Unix time;
    /// tests move it to make a host's clock wrong). A whole number of milliseconds.
    pub adjust_ns: i64,
    /// `adjust_ns` in milliseconds, wrapped to 32 bits, for the TSval clock.
    pub adjust_ms: u32,
    pub _pad: u32,
    /// [`Keys::keys`].
    pub keys: [Key; KEYS],
}

/// The value of the one-entry `COOKIE_SECRETS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CookieSecrets {
    /// The slot to read: 0 or 1.
    pub active: u32,
    pub _pad: u32,
    pub slots: [SecretSlot; 2],
}

/// What a reader takes from the map: the keys and the clock adjustment of one publication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub keys: Keys,
    pub adjust_ns: i64,
    /// `adjust_ns` in whole milliseconds, wrapped (computed by the writer: BPF has no signed
    /// division).
    pub adjust_ms: u32,
}

impl Published {
    /// `keys` with the clock adjustment `adjust_ns` (a whole number of milliseconds).
    pub fn new(keys: Keys, adjust_ns: i64) -> Self {
        Self { keys, adjust_ns, adjust_ms: (adjust_ns / 1_000_000) as u32 }
    }

    /// The shared clock (ns) at CLOCK_TAI `tai_ns`.
    #[inline(always)]
    pub fn shared_ns(&self, tai_ns: u64) -> u64 {
        tai_ns.wrapping_add(self.adjust_ns as u64)
    }

    /// The shared clock's milliseconds (wrapping, the TSval clock) at CLOCK_TAI milliseconds
    /// `tai_ms`.
    #[inline(always)]
    pub fn shared_ms(&self, tai_ms: u32) -> u32 {
        tai_ms.wrapping_add(self.adjust_ms)
    }
}

#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn load32(p: *const u32) -> u32 {
    // SAFETY: the caller's pointer is valid for reads.
    unsafe { core::ptr::read_volatile(p) }
}

#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn load64(p: *const u64) -> u64 {
    // SAFETY: as `load32`.
    unsafe { core::ptr::read_volatile(p) }
}

#[cfg(target_arch = "bpf")]
#[inline(always)]
fn acquire() {}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn load32(p: *const u32) -> u32 {
    // SAFETY: valid, aligned, and only ever accessed atomically on this side.
    unsafe { core::sync::atomic::AtomicU32::from_ptr(p.cast_mut()) }.load(core::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn load64(p: *const u64) -> u64 {
    // SAFETY: as `load32`.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(p.cast_mut()) }.load(core::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
fn acquire() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
}

/// Copy slot `s` if it is whole and stays so while we copy it.
#[inline(always)]
unsafe fn read_slot(s: *const SecretSlot) -> Option<Published> {
    // SAFETY (whole fn): `s` points into a live `CookieSecrets`; fields are aligned.
    unsafe {
        let before = load32(&raw const (*s).generation);
        if before == 0 || before & 1 != 0 {
            return None;
        }
        acquire();
        let k = &raw const (*s).keys;
        let key = |j: usize| Key { k0: load64(&raw const (*k)[j].k0), k1: load64(&raw const (*k)[j].k1) };
        let out = Published {
            keys: Keys { newest: load32(&raw const (*s).newest), keys: [key(0), key(1), key(2)] },
            adjust_ns: load64((&raw const (*s).adjust_ns).cast()) as i64,
            adjust_ms: load32(&raw const (*s).adjust_ms),
        };
        acquire();
        if load32(&raw const (*s).generation) != before {
            return None;
        }
        Some(out)
    }
}

/// Read the secrets published at `p` (see the module doc): `None` before the first publication,
/// or if both slots changed under the reader.
///
/// # Safety
/// `p` points to a live `CookieSecrets` (the map's value) for the duration of the call.
#[inline(always)]
pub unsafe fn read(p: *const CookieSecrets) -> Option<Published> {
    // SAFETY (whole fn): as the caller promised.
    unsafe {
        let active = load32(&raw const (*p).active) & 1;
        let slots = &raw const (*p).slots;
        let (first, second) = if active == 0 { (0, 1) } else { (1, 0) };
        match read_slot(&raw const (*slots)[first]) {
            Some(v) => Some(v),
            None => read_slot(&raw const (*slots)[second]),
        }
    }
}

/// Publish `what` at `p`: into the slot readers are not reading, then flip to it (see the module
/// doc; the caller keeps [`MIN_INTERVAL_NS`] between calls). Returns the slot written.
///
/// # Safety
/// `p` points to a live `CookieSecrets` that only this writer writes, and that readers read only
/// with [`read`].
#[cfg(not(target_arch = "bpf"))]
pub unsafe fn publish(p: *mut CookieSecrets, what: &Published) -> u32 {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
    // SAFETY (whole fn): as the caller promised; every field is aligned and accessed atomically.
    unsafe {
        let active = AtomicU32::from_ptr(&raw mut (*p).active);
        let target = (active.load(Ordering::Relaxed) & 1) ^ 1;
        let s = &raw mut (*p).slots[target as usize];
        let generation = AtomicU32::from_ptr(&raw mut (*s).generation);
        let g = generation.load(Ordering::Relaxed);
        // Odd: a reader that looks now, or looked before and looks again, sees the slot is busy.
        // The fence before it: a reader that sees the slot busy (and falls back to the other)
        // sees the previous publication there whole, not still being written.
        let busy = g | 1;
        fence(Ordering::Release);
        generation.store(busy, Ordering::Relaxed);
        fence(Ordering::Release);
        AtomicU32::from_ptr(&raw mut (*s).newest).store(what.keys.newest, Ordering::Relaxed);
        AtomicU64::from_ptr((&raw mut (*s).adjust_ns).cast()).store(what.adjust_ns as u64, Ordering::Relaxed);
        AtomicU32::from_ptr(&raw mut (*s).adjust_ms).store(what.adjust_ms, Ordering::Relaxed);
        for (j, key) in what.keys.keys.iter().enumerate() {
            AtomicU64::from_ptr(&raw mut (*s).keys[j].k0).store(key.k0, Ordering::Relaxed);
            AtomicU64::from_ptr(&raw mut (*s).keys[j].k1).store(key.k1, Ordering::Relaxed);
        }
        // Even again, and never 0 (which means "never published").
        generation.store(busy.wrapping_add(1).max(2), Ordering::Release);
        active.store(target, Ordering::Release);
        target
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{boxed::Box, sync::atomic::{AtomicBool, Ordering}, vec::Vec};

    use super::*;

    /// Publication `n`: every field derived from `n`, so a mix of two publications is told
    /// apart from any whole one.
    fn publication(n: u64) -> Published {
        let key = |j: u64| Key { k0: n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ j, k1: !n ^ (j << 32) };
        Published::new(Keys { newest: n as u32, keys: [key(0), key(1), key(2)] }, (n as i64 % 1000) * 1_000_000)
    }

    fn whole(p: &Published) -> bool {
        *p == publication(u64::from(p.keys.newest))
    }

    #[test]
    fn nothing_is_read_before_the_first_publication_then_the_latest_is() {
        let mut m = Box::new(CookieSecrets::default());
        let p: *mut CookieSecrets = &mut *m;
        // SAFETY: `m` is live and only this thread touches it.
        unsafe {
            assert_eq!(read(p), None);
            assert_eq!(publish(p, &publication(7)), 1);
            assert_eq!(read(p), Some(publication(7)));
            assert_eq!(publish(p, &publication(8)), 0);
            assert_eq!(read(p), Some(publication(8)));
        }
        assert_eq!(m.active, 0);
        assert_eq!(m.slots[1].keys, publication(7).keys.keys, "the other slot keeps the one before");
    }

    #[test]
    fn a_slot_being_rewritten_is_never_read() {
        let mut m = Box::new(CookieSecrets::default());
        let p: *mut CookieSecrets = &mut *m;
        // SAFETY: `m` is live and only this thread touches it.
        unsafe {
            publish(p, &publication(1));
            publish(p, &publication(2));
            // A writer stopped in the middle of slot 1 (generation odd, half the keys new),
            // while `active` still says 0 ...
            (*p).slots[1].generation |= 1;
            (*p).slots[1].keys[0] = publication(3).keys.keys[0];
            assert_eq!(read(p), Some(publication(2)));
            // ... or says 1 already (a reader that loaded the index before the flip and the
            // slot after the next rewrite began): the whole slot 0 is read instead.
            (*p).active = 1;
            assert_eq!(read(p), Some(publication(2)));
            // Both slots busy: nothing.
            (*p).slots[0].generation |= 1;
            assert_eq!(read(p), None);
        }
    }

    /// Readers on other threads while the writer publishes as fast as it can (no interval:
    /// the worst case), for a fixed number of publications: every read is one whole
    /// publication, never a mix.
    #[test]
    fn concurrent_readers_never_see_a_torn_publication() {
        struct Shared(*mut CookieSecrets);
        // SAFETY: the pointer is only used through `read` and `publish`, which access every
        // field atomically.
        unsafe impl Sync for Shared {}
        impl Shared {
            fn get(&self) -> *mut CookieSecrets {
                self.0
            }
        }
        let mut m = Box::new(CookieSecrets::default());
        let shared = Shared(&mut *m);
        // SAFETY: `m` outlives the scope.
        unsafe { publish(shared.0, &publication(1)) };
        let done = AtomicBool::new(false);
        let (reads, busy) = std::thread::scope(|scope| {
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        let (mut reads, mut busy) = (0u64, 0u64);
                        let mut last = 0;
                        while !done.load(Ordering::Relaxed) {
                            // SAFETY: `m` outlives the scope.
                            match unsafe { read(shared.get()) } {
                                Some(p) => {
                                    assert!(whole(&p), "torn read: {p:?}");
                                    // At most one back from the newest read so far (see the
                                    // module doc).
                                    assert!(p.keys.newest + 1 >= last, "went back from {last} to {}", p.keys.newest);
                                    last = last.max(p.keys.newest);
                                    reads += 1;
                                }
                                None => busy += 1,
                            }
                        }
                        (reads, busy)
                    })
                })
                .collect();
            for n in 2..200_000u64 {
                // SAFETY: `m` outlives the scope; this is the only writer.
                unsafe { publish(shared.get(), &publication(n)) };
            }
            done.store(true, Ordering::Relaxed);
            readers.into_iter().map(|r| r.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        });
        assert!(reads > 0, "the readers read nothing ({busy} busy)");
    }
}
