//! Time in the program: a per-CPU coarse clock for what may lag a few milliseconds (cookie
//! minting, TSvals, LAST_SEEN stamps) and the precise clock for checking cookies.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};

#[map(name = "TICK_CLOCK")]
static TICK_CLOCK: PerCpuArray<TickClock> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's copy of the coarse clock, refreshed when jiffies moves.
#[repr(C)]
struct TickClock {
    jiffies: u64,
    ns: u64,
    /// `ns` in whole milliseconds (wrapping), for TSvals: divided once a tick, not per SYN.
    ms: u64,
}

/// An instant of the coarse clock.
#[derive(Clone, Copy)]
pub struct Now {
    pub ns: u64,
    /// `ns` in whole milliseconds, wrapped to 32 bits (the TSval clock).
    pub ms: u32,
}

/// CLOCK_MONOTONIC as of the last tick, or the one before (up to 2 ticks, 8 ms at HZ=250,
/// behind): bpf_ktime_get_coarse_ns, called once per tick per CPU and kept in TICK_CLOCK while
/// jiffies (which the verifier inlines into a plain load) stays the same. A helper call costs
/// tens of nanoseconds on a kernel with return-thunk mitigations, and bpf_ktime_get_ns adds a
/// fenced TSC read: about 50 ns a call on the bench machine, a quarter of the SYN path.
///
/// Lagging is safe where this clock is used: a SYN-ACK's cookie period can only be older than
/// the precise clock says (its validity window shrinks by at most the lag, never grows), its
/// TSval only lower than the connection's clock later (RFC 7323 5.3: PAWS on the client still
/// accepts our next segments), a LAST_SEEN stamp only older (the connection looks idle a few ms
/// longer). The kernel's own syncookies count time in jiffies for the same reason.
#[inline(always)]
pub fn coarse_now() -> Now {
    // SAFETY: no preconditions (inlined by the verifier into a load of jiffies_64).
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = TICK_CLOCK.get_ptr_mut(0) else {
        // SAFETY: no preconditions.
        let ns = unsafe { bpf_ktime_get_coarse_ns() };
        return Now { ns, ms: (ns / 1_000_000) as u32 };
    };
    // SAFETY: this CPU's slot; nothing else on this CPU writes it while we run.
    let c = unsafe { &mut *c };
    if c.jiffies != j {
        c.jiffies = j;
        // SAFETY: no preconditions.
        c.ns = unsafe { bpf_ktime_get_coarse_ns() };
        c.ms = c.ns / 1_000_000;
    }
    Now { ns: c.ns, ms: c.ms as u32 }
}


/// CLOCK_MONOTONIC now, precisely: for checking a cookie, never behind the clock that minted
/// it (XDP's coarse one, or userspace's), so a cookie's age is never underestimated.
#[inline(always)]
pub fn precise_now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
