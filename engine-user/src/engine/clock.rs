//! The engine's clock.

use synx_tcp::Instant;

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns()` stamps LAST_SEEN with, so the
/// core's deadlines and XDP's stamps compare directly.
pub fn now() -> Instant {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Instant::from_nanos(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}
