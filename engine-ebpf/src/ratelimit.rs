//! Per-CPU token buckets: how many RSTs XDP may send for segments with no connection, and how
//! many segments it may forward to other hosts (`crate::second_chance`).

use aya_ebpf::{macros::map, maps::PerCpuArray};

/// A token bucket's state (this program's own: userspace never reads it).
#[repr(C)]
struct TokenBucket {
    tokens: u64,
    last_ns: u64,
}

/// Which bucket.
pub const RST: u32 = 0;
pub const FORWARD: u32 = 1;

#[map(name = "BUCKETS")]
static BUCKETS: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(2, 0);

/// Take a token from this CPU's bucket `which`, which refills at `rate` per second up to
/// `rate`: false when it is empty (or the bucket cannot be read). `now_ns`: CLOCK_MONOTONIC.
#[inline(always)]
pub fn take_token(which: u32, now_ns: u64, rate: u32) -> bool {
    let Some(bucket) = BUCKETS.get_ptr_mut(which) else { return false };
    // SAFETY: per-CPU slot; no other writer on this CPU.
    let b = unsafe { &mut *bucket };
    let rate = u64::from(rate);
    // Capped at one second, so elapsed * rate (< 2^30 * 2^32) fits in 64 bits (no u128 in BPF).
    let elapsed = now_ns.saturating_sub(b.last_ns).min(1_000_000_000);
    let refill = elapsed.wrapping_mul(rate) / 1_000_000_000;
    if refill > 0 {
        b.tokens = (b.tokens + refill).min(rate);
        b.last_ns = now_ns;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}
