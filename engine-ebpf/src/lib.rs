//! The synx XDP program as a library: the engine's front door, built into thin programs
//! (`src/bin/`), one object each.
//!
//! For TCP to a configured listener (IPv4 and IPv6):
//! - SYN with no flow: a SYN-ACK is built in the same frame, its ISN a SYN cookie
//!   (`engine_common::cookie`), and sent back with XDP_TX. Nothing is stored.
//! - ACK with no flow: the cookie in `ack - 1` is checked; a valid one goes to the AF_XDP socket
//!   of this RX queue (userspace decodes it again with the same code and creates the
//!   connection), a bad one gets the RFC 9293 3.10.7.1 reset (rate-limited) or is dropped.
//!   One with data (or FIN) is dropped while its tuple and ACK number are new or within a
//!   hold (`engine_common::maps::COOKIE_MISSES4`): it may be a handshake's later segment whose
//!   ACK and first segments were lost, and the client's resend of its first one validates.
//! - RST with no flow: dropped (never answer a reset with a reset); this is also where the
//!   client's RST to the SYN-ACK of a stale SYN ends.
//! - Any segment of a known flow (FLOWS, written by userspace): to AF_XDP, unexamined: the TCP
//!   core decides what it means and whether it shows the peer alive (SYNs included, which it
//!   answers with a challenge ACK, RFC 5961 4; a SYN is looked up only when its bit in
//!   FLOW_FILTER, `engine_common::maps::FLOW_FILTER`, says the tuple may have a flow). A tuple
//!   XDP claimed for a valid cookie ACK
//!   counts as known until userspace writes its slot, or until the claim expires
//!   (`engine_common::maps::CLAIM`).
//! - While the host drains (SWITCHES, flipped by `synx drain`): SYNs with no flow get no
//!   SYN-ACK (left unanswered, or passed to the kernel); cookie ACKs are still accepted.
//! - With other hosts serving the same address (second chance, [`second_chance`]): an ACK or
//!   RST with no flow and no valid cookie goes to the next host of the ring instead of being
//!   answered, and what another host forwarded is unwrapped and handled as if it came from the
//!   wire.
//! - A segment to a listener that synx does not serve (malformed, a first IP fragment, IPv6
//!   extension headers): dropped and counted, as the kernel, which holds no connection for
//!   it, would only reset the peer. Later fragments carry no ports and pass: without their
//!   first the kernel never reassembles them.
//!
//! Everything else passes to the kernel untouched, malformed TCP to other ports included.
//!
//! Modules: [`packet`] (bounds, wire words, the parse into a segment), [`options`] (a SYN's
//! options), [`reply`] (replies built in place, their checksums), [`clock`], [`ratelimit`],
//! [`second_chance`] (forwarding between hosts),
//! [`maps`] (shared with userspace), [`settings`] (read-only globals set at load) and
//! [`program`] (the decisions). Objects: `synx-xdp` holds only what `synx run` attaches;
//! `synx-xdp-bench` the benchmark's and test rig's programs.
#![no_std]

pub mod clock;
pub mod maps;
pub mod options;
pub mod packet;
pub mod program;
pub mod ratelimit;
pub mod reply;
pub mod second_chance;
pub mod settings;

// One panic handler for every program: BPF has no unwinding, and the verifier rejects a
// program with an unbounded loop, so no reachable path may panic (this only satisfies the
// linker). The host build (engine-user's build-dependency) takes std's.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
