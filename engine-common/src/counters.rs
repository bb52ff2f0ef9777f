//! Outcome counters of the XDP program, one slot each in the per-CPU `COUNTERS` array.
//! Userspace sums the CPUs and prints them by name in `synx stats`.

/// Index into the `COUNTERS` per-CPU array (plain `u32`, no enum across the boundary).
pub type Counter = u32;

macro_rules! counters {
    ($($name:ident = $idx:literal, $text:literal;)*) => {
        $(pub const $name: Counter = $idx;)*
        /// Number of slots in the `COUNTERS` array.
        pub const COUNT: u32 = [$($idx),*].len() as u32;
        /// Names in index order, as printed by `synx stats`.
        pub const NAMES: [&str; COUNT as usize] = [$($text),*];
    };
}

counters! {
    RX_PACKETS = 0, "xdp_rx_packets";
    PASS_NOT_IP = 1, "xdp_pass_not_ip";
    PASS_NOT_TCP = 2, "xdp_pass_not_tcp";
    PASS_NOT_LISTENER = 3, "xdp_pass_not_listener";
    PASS_FRAGMENT = 4, "xdp_pass_fragment";
    PASS_NOT_READY = 5, "xdp_pass_not_ready";
    SYN_COOKIE_SENT = 6, "xdp_syn_cookie_sent";
    COOKIE_ACK_VALID = 7, "xdp_cookie_ack_valid";
    COOKIE_ACK_INVALID = 8, "xdp_cookie_ack_invalid";
    FLOW_SEGMENT = 9, "xdp_flow_segment";
    REDIRECT_FAILED = 10, "xdp_redirect_failed";
    RST_SENT = 11, "xdp_rst_sent";
    RST_RATE_LIMITED = 12, "xdp_rst_rate_limited";
    DROP_RST_NO_FLOW = 13, "xdp_drop_rst_no_flow";
    DROP_TRUNCATED = 14, "xdp_drop_truncated";
    DROP_BAD_HEADER = 15, "xdp_drop_bad_header";
    DROP_BAD_OPTIONS = 16, "xdp_drop_bad_options";
    DROP_BAD_FLAGS = 17, "xdp_drop_bad_flags";
    DROP_BAD_ADDRESS = 18, "xdp_drop_bad_address";
    DROP_NO_ROOM = 19, "xdp_drop_no_room";
    SYN_GENERIC_OPTIONS = 20, "xdp_syn_generic_options";
    DROP_SYN_BACKLOG = 21, "xdp_drop_syn_backlog";
    DROP_SYN_DRAINING = 22, "xdp_drop_syn_draining";
    PASS_SYN_DRAINING = 23, "xdp_pass_syn_draining";
    SECOND_CHANCE_SENT = 24, "xdp_second_chance_sent";
    SECOND_CHANCE_RECEIVED = 25, "xdp_second_chance_received";
    SECOND_CHANCE_LAST = 26, "xdp_second_chance_last";
    SECOND_CHANCE_RATE_LIMITED = 27, "xdp_second_chance_rate_limited";
    DROP_BAD_SECOND_CHANCE = 28, "xdp_drop_bad_second_chance";
    DROP_FRAGMENT = 29, "xdp_drop_fragment";
    DROP_IPV6_EXTENSION = 30, "xdp_drop_ipv6_extension";
    PASS_MALFORMED = 31, "xdp_pass_malformed";
    CLAIM_EXPIRED = 32, "xdp_claim_expired";
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_prefixed() {
        for (i, n) in super::NAMES.iter().enumerate() {
            assert!(n.starts_with("xdp_"));
            assert!(!super::NAMES[..i].contains(n), "{n} twice");
        }
    }
}
