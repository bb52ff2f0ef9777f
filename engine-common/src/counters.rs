//! Outcome counters of the XDP program, one slot each in the per-CPU `COUNTERS` array.
//! Userspace sums the CPUs and prints them by name in `synx stats`.

/// Index into the `COUNTERS` per-CPU array. Plain `u32` constants so the BPF side indexes maps
/// without any enum conversion.
pub type Counter = u32;

pub const RX_PACKETS: Counter = 0;
pub const PASS_NOT_IP: Counter = 1;
pub const PASS_NOT_TCP: Counter = 2;
pub const PASS_NOT_LISTENER: Counter = 3;
pub const TCP_TO_LISTENER: Counter = 4;
pub const DROP_MALFORMED: Counter = 5;

/// Number of slots in the `COUNTERS` array (keep in step with [`NAMES`]).
pub const COUNT: u32 = 6;

/// Names in index order, as printed by `synx stats`.
pub const NAMES: [&str; COUNT as usize] = [
    "xdp_rx_packets",
    "xdp_pass_not_ip",
    "xdp_pass_not_tcp",
    "xdp_pass_not_listener",
    "xdp_tcp_to_listener",
    "xdp_drop_malformed",
];
