//! Outcome counters of the XDP program, one slot each in the per-CPU `COUNTERS` array.
//! Userspace sums the CPUs and prints them by name in `synx stats`.

/// Index into the `COUNTERS` per-CPU array (plain `u32`, no enum across the boundary).
pub type Counter = u32;

macro_rules! counters {
    ($($name:ident = $idx:literal, $text:literal, $help:literal;)*) => {
        $(pub const $name: Counter = $idx;)*
        /// Number of slots in the `COUNTERS` array.
        pub const COUNT: u32 = [$($idx),*].len() as u32;
        /// Names in index order, as printed by `synx stats`.
        pub const NAMES: [&str; COUNT as usize] = [$($text),*];
        /// What each counts, in index order (an exporter's HELP line).
        pub const HELP: [&str; COUNT as usize] = [$($help),*];
    };
}

counters! {
    RX_PACKETS = 0, "xdp_rx_packets", "Frames the XDP program saw.";
    PASS_NOT_IP = 1, "xdp_pass_not_ip", "Frames passed to the kernel: not IPv4 or IPv6.";
    PASS_NOT_TCP = 2, "xdp_pass_not_tcp", "Frames passed to the kernel: IP but not TCP.";
    PASS_NOT_LISTENER = 3, "xdp_pass_not_listener", "Frames passed to the kernel: TCP to an address and port synx does not serve.";
    PASS_FRAGMENT = 4, "xdp_pass_fragment", "Frames passed to the kernel: IP fragments.";
    PASS_NOT_READY = 5, "xdp_pass_not_ready", "Frames passed to the kernel: no SYN-cookie secret published yet.";
    SYN_COOKIE_SENT = 6, "xdp_syn_cookie_sent", "SYN-ACKs sent with a SYN cookie (no state kept).";
    COOKIE_ACK_VALID = 7, "xdp_cookie_ack_valid", "ACKs for no flow that carry a valid SYN cookie, handed to the engine.";
    COOKIE_ACK_INVALID = 8, "xdp_cookie_ack_invalid", "ACKs for no flow whose cookie does not validate.";
    FLOW_SEGMENT = 9, "xdp_flow_segment", "Segments of known flows stamped and handed to the engine.";
    REDIRECT_FAILED = 10, "xdp_redirect_failed", "Frames dropped because the AF_XDP socket of their queue refused them.";
    RST_SENT = 11, "xdp_rst_sent", "Resets sent by XDP to segments for no flow without a valid cookie.";
    RST_RATE_LIMITED = 12, "xdp_rst_rate_limited", "Resets not sent (the frame dropped) because of the per-CPU reset rate limit.";
    DROP_RST_NO_FLOW = 13, "xdp_drop_rst_no_flow", "Resets for no flow, dropped (RFC 9293 3.10.7.1).";
    DROP_TRUNCATED = 14, "xdp_drop_truncated", "Frames dropped: shorter than their headers say.";
    DROP_BAD_HEADER = 15, "xdp_drop_bad_header", "Frames dropped: an IP or TCP header field out of range.";
    DROP_BAD_OPTIONS = 16, "xdp_drop_bad_options", "SYNs dropped: their TCP options do not parse.";
    DROP_BAD_FLAGS = 17, "xdp_drop_bad_flags", "Segments dropped: an illegal flag combination or source port 0.";
    DROP_BAD_ADDRESS = 18, "xdp_drop_bad_address", "Segments dropped: a broadcast or multicast source.";
    DROP_NO_ROOM = 19, "xdp_drop_no_room", "Replies not sent (the frame dropped): the frame could not be resized for the reply.";
    SYN_GENERIC_OPTIONS = 20, "xdp_syn_generic_options", "SYNs whose options took the general option walk rather than the common layouts.";
    DROP_SYN_BACKLOG = 21, "xdp_drop_syn_backlog", "SYNs left unanswered while the engine of their queue is behind.";
    DROP_SYN_DRAINING = 22, "xdp_drop_syn_draining", "SYNs left unanswered while this host drains (no new connections).";
    PASS_SYN_DRAINING = 23, "xdp_pass_syn_draining", "SYNs passed to the kernel while this host drains (drain to the kernel's listener).";
    SECOND_CHANCE_SENT = 24, "xdp_second_chance_sent", "Segments for no flow forwarded to the next host of the ring (second chance).";
    SECOND_CHANCE_RECEIVED = 25, "xdp_second_chance_received", "Segments another host forwarded here for a second chance, unwrapped.";
    SECOND_CHANCE_LAST = 26, "xdp_second_chance_last", "Forwarded segments that reached the last host of the ring, answered as a lone host does.";
    SECOND_CHANCE_RATE_LIMITED = 27, "xdp_second_chance_rate_limited", "Segments not forwarded (dropped) because of the second-chance rate limit.";
    DROP_BAD_SECOND_CHANCE = 28, "xdp_drop_bad_second_chance", "Forwarded frames dropped: malformed, a SYN, or not for the served address.";
    DROP_FRAGMENT = 29, "xdp_drop_fragment", "Fragments of segments to a served port, dropped (the kernel would reset the peer of a connection it does not know).";
    DROP_IPV6_EXTENSION = 30, "xdp_drop_ipv6_extension", "IPv6 segments to a served port behind extension headers, dropped.";
    PASS_MALFORMED = 31, "xdp_pass_malformed", "Frames passed to the kernel: malformed before even the TCP ports could be read.";
    CLAIM_EXPIRED = 32, "xdp_claim_expired", "Claims on a tuple (a valid cookie ACK that never reached the engine) found expired and dropped.";
    COOKIE_MISS_HELD = 33, "xdp_cookie_miss_held", "Segments with data for no flow and a bad cookie dropped rather than reset: new to their tuple and ACK number, or repeated within the hold (a handshake's later segment whose ACK and first segments were lost).";
    SYN_RECORDED = 34, "xdp_syn_recorded", "SYN-ACKs recorded for userspace to retransmit while the handshake is not complete.";
    SYN_UNRECORDED = 35, "xdp_syn_unrecorded", "SYN-ACKs sent with a cookie only: over the per-CPU recording budget, or the record ring full.";
    RST_RECORDED = 36, "xdp_rst_recorded", "RSTs for no flow passed to the SYN-ACK retransmitter: one in the window of a SYN-ACK it would resend ends that handshake.";
    PROBE_ANSWER_TAKEN = 37, "xdp_probe_answer_taken", "Answers to keepalive probes that matched what the engine expected exactly, noted for it and dropped (PROBE_ANSWERS).";
}


#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_prefixed() {
        for (i, n) in super::NAMES.iter().enumerate() {
            assert!(n.starts_with("xdp_"));
            assert!(!super::NAMES[..i].contains(n), "{n} twice");
            assert!(super::HELP[i].ends_with('.'), "{n}: help {:?}", super::HELP[i]);
        }
    }
}
