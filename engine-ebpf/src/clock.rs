//! Time in the program: a per-CPU coarse clock for what may lag a few milliseconds (cookie
//! minting, TSvals, the age of FLOWS claims) and precise clocks for checking cookies and pacing
//! RSTs.
//!
//! Two clocks: CLOCK_MONOTONIC, this host's own, for FLOWS claims (which userspace compares
//! with its own monotonic clock); and the clock hosts share for cookies and TSvals, Unix time,
//! read as CLOCK_TAI (bpf_ktime_get_tai_ns) plus the adjustment userspace publishes with the
//! secrets (`engine_common::secrets`: minus the kernel's TAI offset). CLOCK_TAI moves with the
//! kernel's clock when NTP steps it, at once, so the shared clock never waits for userspace.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_ktime_get_tai_ns},
    macros::map,
    maps::PerCpuArray,
};
use engine_common::{maps::SYN_RECORD_WINDOW_SHIFT as RECORD_WINDOW_SHIFT, secrets::Published};

#[map(name = "TICK_CLOCK")]
static TICK_CLOCK: PerCpuArray<TickClock> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's copy of the coarse clocks, refreshed when jiffies moves.
#[repr(C)]
struct TickClock {
    jiffies: u64,
    mono_ns: u64,
    tai_ns: u64,
    /// `tai_ns` in whole milliseconds (wrapping), for TSvals: divided once a tick, not per SYN.
    tai_ms: u64,
    /// The record window (`mono_ns >> RECORD_WINDOW_SHIFT`) and what this CPU recorded in it:
    /// SYN-ACKs, RSTs ([`take_record`]).
    window: u64,
    recorded: [u32; 2],
}

/// What [`take_record`] counts.
pub const RECORD_SYN_ACK: usize = 0;
pub const RECORD_RST: usize = 1;

/// Whether this CPU may record one more `what` in this window, `budget` a window: counted in
/// the coarse clock's own slot, which the SYN path has just read (no division, no other map).
#[inline(always)]
pub fn take_record(what: usize, budget: u32) -> bool {
    let Some(c) = TICK_CLOCK.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot; nothing else on this CPU writes it while we run.
    let c = unsafe { &mut *c };
    let window = c.mono_ns >> RECORD_WINDOW_SHIFT;
    if c.window != window {
        c.window = window;
        c.recorded = [0; 2];
    }
    let Some(n) = c.recorded.get_mut(what) else { return false };
    if *n >= budget {
        return false;
    }
    *n += 1;
    true
}

/// An instant of the coarse clocks.
#[derive(Clone, Copy)]
pub struct Tick {
    /// CLOCK_MONOTONIC.
    pub mono_ns: u64,
    /// CLOCK_TAI, and in whole milliseconds wrapped to 32 bits.
    pub tai_ns: u64,
    pub tai_ms: u32,
}

/// An instant of the shared clock (see the module doc).
#[derive(Clone, Copy)]
pub struct Now {
    pub ns: u64,
    /// `ns` in whole milliseconds, wrapped to 32 bits (the TSval clock).
    pub ms: u32,
}

impl Tick {
    /// The shared clock at this tick, with the published adjustment.
    #[inline(always)]
    pub fn shared(&self, p: &Published) -> Now {
        Now { ns: p.shared_ns(self.tai_ns), ms: p.shared_ms(self.tai_ms) }
    }
}

/// The clocks as of the last tick, or the one before (up to 2 ticks, 8 ms at HZ=250, behind):
/// read once per tick per CPU and kept in TICK_CLOCK while jiffies (which the verifier inlines
/// into a plain load) stays the same. A helper call costs tens of nanoseconds on a kernel with
/// return-thunk mitigations, and bpf_ktime_get_ns adds a fenced TSC read: about 50 ns a call on
/// the bench machine, a quarter of the SYN path.
///
/// Lagging is safe where this clock is used: a SYN-ACK's cookie period can only be older than
/// the precise clock says (its validity window shrinks by at most the lag, never grows), its
/// TSval only lower than the connection's clock later (RFC 7323 5.3: PAWS on the client still
/// accepts our next segments), a claim's age only younger (it lives a tick longer). The kernel's own syncookies count time in jiffies for the same reason.
#[inline(always)]
pub fn coarse_now() -> Tick {
    // SAFETY: no preconditions (inlined by the verifier into a load of jiffies_64).
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = TICK_CLOCK.get_ptr_mut(0) else {
        // SAFETY: no preconditions.
        let (mono_ns, tai_ns) = unsafe { (bpf_ktime_get_coarse_ns(), bpf_ktime_get_tai_ns()) };
        return Tick { mono_ns, tai_ns, tai_ms: (tai_ns / 1_000_000) as u32 };
    };
    // SAFETY: this CPU's slot; nothing else on this CPU writes it while we run.
    let c = unsafe { &mut *c };
    if c.jiffies != j {
        c.jiffies = j;
        // SAFETY: no preconditions.
        unsafe {
            c.mono_ns = bpf_ktime_get_coarse_ns();
            c.tai_ns = bpf_ktime_get_tai_ns();
        }
        c.tai_ms = c.tai_ns / 1_000_000;
    }
    Tick { mono_ns: c.mono_ns, tai_ns: c.tai_ns, tai_ms: c.tai_ms as u32 }
}

/// The shared clock now, precisely: for checking a cookie, never behind the clock that minted
/// it on this host (XDP's coarse one, or userspace's), so a cookie's age is never
/// underestimated.
#[inline(always)]
pub fn precise_shared_ns(p: &Published) -> u64 {
    // SAFETY: no preconditions.
    p.shared_ns(unsafe { bpf_ktime_get_tai_ns() })
}

/// CLOCK_MONOTONIC now, precisely.
#[inline(always)]
pub fn precise_mono_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
