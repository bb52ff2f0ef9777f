//! The engine's counters and gauges: one [`QueueStats`] per queue thread, summed over the
//! queues into `synx stats` (after the XDP program's, engine-common's `counters`). Each value is
//! declared once, here, with the name `synx stats` prints, whether it is a counter or a gauge,
//! and a help text (what an exporter prints as its HELP line).

use std::sync::atomic::{AtomicU64, Ordering};

use synx_tcp::connection::{DropReason, Stats};

use crate::wire::WireError;

/// How a value moves, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows while the daemon runs.
    Counter,
    /// A level, sampled when read.
    Gauge,
}

/// What one value of `synx stats` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// As `synx stats` prints it.
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric { name, kind: Kind::Counter, help }
}

pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric { name, kind: Kind::Gauge, help }
}

/// The engine's own gauge beside the queues' (accepted less released, over all queues).
pub const CONNECTIONS_OPEN: Metric =
    gauge("connections_open", "Connections accepted and not yet released, TIME_WAIT included, over all queues.");

/// How many times this daemon's line was taken over (`synx run --takeover`), carried from each
/// process to its successor.
pub const TAKEOVERS: Metric =
    gauge("takeovers", "Times the daemon was taken over by a successor process, counted over every process of its line.");

/// The SYN-ACK retransmitter's values (`super::synack_retry`).
pub const SYNACK_RETRANSMITS: Metric =
    counter("synack_retransmits", "SYN-ACKs of cookie handshakes resent because the final ACK had not come (RFC 9293 3.10.7.2, at 1, 3, 7, 15, 31 s).");
pub const SYNACK_PENDING: Metric = gauge("synack_pending", "Cookie handshakes whose SYN-ACK may still be resent: waiting for the final ACK.");
pub const SYNACK_PENDING_FULL: Metric =
    counter("synack_pending_full", "SYN-ACKs XDP recorded that were not kept for retransmission: too many handshakes waiting.");
pub const SYNACK_RESET: Metric =
    counter("synack_reset", "Cookie handshakes the client ended with an RST in the SYN-ACK's window: not resent (RFC 9293 3.10.7.4).");
pub const SYNACK_GIVEN_UP: Metric =
    counter("synack_given_up", "Cookie handshakes whose SYN-ACK retransmissions ran out (or whose cookie secret was gone) without a final ACK.");
pub const SYNACK_SEND_FAILED: Metric = counter("synack_send_failed", "SYN-ACK retransmissions the packet socket failed to send.");

/// Adaptive coalescing's values (`super::coalesce`).
pub const COALESCING_ON: Metric = gauge(
    "coalescing_on",
    "1 while synx has the interface's NAPI deferral on (many clients sending), else 0 (off, or --coalesce off, or left to whoever set it).",
);
pub const COALESCING_TURNED_ON: Metric =
    counter("coalescing_turned_on", "Times synx turned the interface's NAPI deferral on because many clients were sending at once.");

/// `--napi-threads batch` (`super::napi_sched`).
pub const NAPI_THREADS_BATCHED: Metric = counter(
    "napi_threads_batched",
    "Times synx set one of the interface's NAPI threads to SCHED_BATCH (--napi-threads batch), so that its wakeups do not preempt the engine threads.",
);

/// [`super::coalesce::Coalescing`] as `synx stats` shows it (zeros when synx does not manage
/// the interface's deferral).
pub fn coalescing_values(c: Option<&super::coalesce::Coalescing>) -> Vec<(&'static Metric, u64)> {
    let on = c.is_some_and(|c| c.applied() == Some(super::coalesce::ON));
    vec![(&COALESCING_ON, u64::from(on)), (&COALESCING_TURNED_ON, c.map_or(0, super::coalesce::Coalescing::turned_on))]
}

/// [`super::synack_retry::RetryStats`] as `synx stats` shows them.
pub fn synack_retry_values(s: &super::synack_retry::RetryStats) -> Vec<(&'static Metric, u64)> {
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    vec![
        (&SYNACK_RETRANSMITS, v(&s.retransmits)),
        (&SYNACK_PENDING, v(&s.pending)),
        (&SYNACK_PENDING_FULL, v(&s.full)),
        (&SYNACK_RESET, v(&s.reset)),
        (&SYNACK_GIVEN_UP, v(&s.given_up)),
        (&SYNACK_SEND_FAILED, v(&s.send_failed)),
    ]
}

/// The `@core` entries are the TCP core's own per-connection counters ([`Stats`] fields of the same
/// name), added up over the endpoint's connections and published each turn.
macro_rules! queue_stats {
    (
        $($field:ident: $kind:ident $name:literal $help:literal;)*
        @core { $($core:ident $core_name:literal $core_help:literal;)* }
    ) => {
        /// One queue thread's counters and gauges, written by that thread only (relaxed atomics:
        /// readers want totals, not ordering).
        #[derive(Debug, Default)]
        pub struct QueueStats {
            $(#[doc = $help] pub $field: AtomicU64,)*
            $(#[doc = $core_help] $core: AtomicU64,)*
            /// Segments the TCP core dropped, by [`DROP_REASONS`].
            dropped_by_reason: [AtomicU64; DROP_REASONS.len()],
            /// Frames the wire layer refused, by [`WIRE_DROPS`].
            wire: [AtomicU64; WIRE_DROPS.len()],
        }

        impl QueueStats {
            const SINGLE: &[Metric] = &[
                $(Metric { name: $name, kind: Kind::$kind, help: $help },)*
                $(counter($core_name, $core_help),)*
            ];

            fn single_values(&self) -> impl Iterator<Item = u64> + '_ {
                [$(&self.$field,)* $(&self.$core,)*].into_iter().map(|a| a.load(Ordering::Relaxed))
            }

            /// The endpoint's totals of the TCP core's counters ([`Endpoint::totals`]).
            ///
            /// [`Endpoint::totals`]: synx_tcp::Endpoint::totals
            pub fn publish_core(&self, totals: &Stats) {
                $(self.$core.store(u64::from(totals.$core), Ordering::Relaxed);)*
            }
        }
    };
}

queue_stats! {
    rx_segments: Counter "tcp_rx_segments" "TCP segments received and handed to the TCP core.";
    rx_demux_by_hint: Counter "tcp_rx_demux_by_hint"
        "Received segments whose connection was in the slot XDP's FLOWS named with the frame: no lookup in the tuple index.";
    probe_answers_taken: Counter "tcp_probe_answers_taken"
        "Answers to keepalive probes XDP took off the wire (xdp_probe_answer_taken) that their connection counted: the peer heard from when each came.";
    tx_segments: Counter "tcp_tx_segments" "TCP segments sent (data, ACKs, FINs, resets and SYN-ACKs).";
    accepted: Counter "tcp_accepted" "Connections created from a valid SYN-cookie ACK.";
    app_panics: Counter "app_turn_panics" "Application turns that panicked in their first step on the engine thread (the turn is dropped with its stream; the thread goes on).";
    closed: Counter "tcp_closed" "Connections released (active closes after TIME_WAIT).";
    closed_reset: Counter "tcp_closed_reset" "Connections ended by the peer's reset.";
    closed_timeout: Counter "tcp_closed_timeout" "Connections ended because retransmission or keepalive gave up.";
    closed_aborted: Counter "tcp_closed_aborted"
        "Connections reset by this side: an application's abort or close with unread data, or shutdown.";
    time_wait_fin_reacked: Counter "tcp_time_wait_fin_reacked"
        "FINs retransmitted by peers that lost our last ACK, acknowledged again from TIME_WAIT.";
    time_wait_flows_kept: Counter "tcp_time_wait_flows_kept"
        "FLOWS entries kept for a new incarnation when a SYN ended the tuple's TIME_WAIT (RFC 6191), instead of deleted and inserted again.";
    time_wait_slots_reused: Counter "tcp_time_wait_slots_reused"
        "New incarnations (RFC 6191) that took their old incarnation's slot, which the FLOWS entry kept for them named already: no FLOWS update for the connection.";
    closed_at_stop: Counter "tcp_closed_at_stop"
        "Connections served in turns closed with a FIN between two turns because the engine stopped.";
    moved_out: Counter "takeover_connections_moved_out"
        "Connections handed to a successor process (`synx run --takeover`), TCB, timers and app state.";
    moved_in: Counter "takeover_connections_moved_in" "Connections taken over from the process this one succeeded.";
    held_back: Counter "takeover_input_held_back"
        "Segments left for the successor while handing over: a waiting connection's data or FIN (its acknowledgment taken), or a final ACK to a listener whose app holds connections for life.";
    takeover_resets: Counter "takeover_resets"
        "Connections reset by a process handing over because they were still busy when its --grace ended.";
    resets_sent: Counter "tcp_resets_sent" "Resets sent by the TCP core, to connections and to strangers.";
    cookie_rejected: Counter "tcp_cookie_rejected"
        "Segments for no connection whose ACK is not a SYN cookie minted recently for the tuple (reset).";
    no_listener: Counter "tcp_no_listener"
        "Segments for no connection to an address nobody listens on, or while stopping (reset).";
    table_full: Counter "tcp_table_full"
        "Valid cookie ACKs refused: connection table full or tuple taken (reset).";
    flows_full: Counter "tcp_flows_full"
        "Connections reset at once because XDP's flow table had no room to route their segments.";
    connections: Gauge "tcp_connections" "Connections the TCP core holds (TIME_WAIT included), parked or not.";
    parked: Gauge "tcp_parked" "Idle connections folded into their slot, holding no boxed TCB.";
    timers_waiting: Gauge "tcp_timers_waiting"
        "Connections whose timers are due and wait their turn: served in batches between reads, so a persistent count means timers fire late.";
    app_tasks: Gauge "app_tasks" "Application tasks alive on the engine threads (local tasks and running turns).";
    app_waiting: Gauge "app_waiting"
        "Connections served in turns that wait for input holding no task and no stream state.";
    xsk_rx_frames: Counter "xsk_rx_frames" "Frames taken from the AF_XDP RX ring.";
    xsk_tx_frames: Counter "xsk_tx_frames" "Frames put on the AF_XDP TX ring.";
    xsk_tx_completed: Counter "xsk_tx_completed"
        "AF_XDP TX frames the kernel has sent and handed back through the completion ring.";
    xsk_tx_full: Counter "xsk_tx_full"
        "Transmits that stopped, leaving segments for a later turn, because every AF_XDP TX frame was in the kernel's hands.";
    xsk_tx_wakeups: Counter "xsk_tx_wakeups"
        "System calls that woke the kernel to send the AF_XDP TX ring (copy mode sends only when woken).";
    xsk_tx_held: Counter "xsk_tx_held"
        "Transmits whose frames, from several connections, waited on the AF_XDP TX ring for more before one wakeup sent them (--tx-coalesce).";
    gso_trains: Counter "tcp_tx_gso_trains"
        "Trains of full-sized segments one connection sent back to back that left as one frame through the segmentation offload (--gso), cut by the device's TSO or the kernel's GSO.";
    gso_segments: Counter "tcp_tx_gso_segments" "Segments that left in those trains (counted in tcp_tx_segments too).";
    gso_fallbacks: Counter "tcp_tx_gso_fallbacks"
        "Trains sent frame by frame through AF_XDP instead of the offload's socket: it refused them (the device's ring full, or the offload failed), or frames queued for AF_XDP before them were still waiting.";
    gso_dropped: Counter "tcp_tx_gso_dropped"
        "Segments of a train sent frame by frame that found no free AF_XDP TX frame and were lost (TCP recovers them as any loss).";
    xsk_fill_wakeups: Counter "xsk_fill_wakeups"
        "System calls that woke the kernel after refilling an AF_XDP fill ring it had found empty.";
    acks_mid_batch: Counter "acks_mid_batch"
        "Transmits in the middle of a receive batch because a connection had taken 64 KB or more without an ACK (RFC 5681 4.2: no ACK stretched over a whole batch).";
    xsk_busy_polls: Counter "xsk_busy_polls"
        "Zero-length receives in which the kernel polled the RX queue's NAPI on the engine thread (--prefer-busy-poll).";
    xsk_busy_poll_rearms: Counter "xsk_busy_poll_rearms"
        "Sleeps before which an engine thread gave the device its notification back (--prefer-busy-poll with napi_defer_hard_irqs set).";
    xsk_rx_dropped: Counter "xsk_rx_dropped" "Frames the kernel dropped at the AF_XDP socket (rx_dropped).";
    xsk_rx_ring_full: Counter "xsk_rx_ring_full"
        "Frames the kernel dropped because the AF_XDP RX ring was full (rx_ring_full).";
    xsk_rx_fill_empty: Counter "xsk_rx_fill_empty"
        "Times the kernel found the AF_XDP fill ring empty (rx_fill_ring_empty_descs).";
    tcp_parse_errors: Counter "tcp_parse_errors" "Frames whose TCP header or options did not parse.";
    dropped_by_tcp: Counter "tcp_dropped" "Segments of known connections the TCP core dropped (tcp_drop_* by reason).";
    handed_off: Counter "tcp_handed_off"
        "Segments that arrived on an RX queue other than their connection's, handed to its engine.";
    handoff_dropped: Counter "tcp_handoff_dropped"
        "Segments for another queue's connection dropped because its inbox was full.";
    heap_trims: Counter "engine_heap_trims"
        "Times an engine thread gave the allocator's free memory back to the kernel (malloc_trim).";
    // In microseconds; promtool refuses a unit in the name other than the base unit, seconds.
    heap_trim_us: Counter "engine_heap_trim_time"
        "Time engine threads spent giving free memory back, in microseconds (all trims).";
    mem_held: Gauge "mem_held_bytes"
        "Bytes of data buffers connections hold: TCP send and receive buffers and the queues to and from apps.";
    mem_refused: Counter "mem_refused_segments"
        "Data segments dropped because memory (in all, or the source's) is over its limit.";
    mem_resets: Counter "mem_resets"
        "Connections reset for holding the most memory while memory (in all, or the source's) was over its limit.";
    persist_resets: Counter "persist_resets"
        "Connections reset after waiting longer than the persist timeout behind a zero window with data to send.";
    source_limited: Counter "tcp_source_limited"
        "Valid cookie ACKs refused because their source holds as many connections as it may (reset).";
    queue_panics: Counter "engine_queue_panics"
        "Engine threads that panicked: their queue is served no more and the engine must be restarted.";
    @core {
        retransmits "tcp_retransmits"
            "Segments the TCP core sent again (fast, RACK, probe and timeout retransmissions).";
        timeouts "tcp_rto_timeouts" "Retransmission timeouts (RFC 6298).";
        loss_probes "tcp_loss_probes" "Tail loss probes sent (RFC 8985 7).";
        tlp_recoveries "tcp_tlp_recoveries"
            "Losses a tail loss probe repaired, each reducing the window once (RFC 8985 7.4.2).";
        fast_recoveries "tcp_fast_recoveries" "Fast recoveries entered, the window reduced by PRR (RFC 6937).";
        rack_losses "tcp_rack_losses" "Segments RACK marked lost from their send times (RFC 8985 6).";
        dsacks_received "tcp_dsacks_received" "DSACK blocks received: data the peer got twice (RFC 2883).";
        undos "tcp_undos" "Window reductions undone as spurious (DSACK, RFC 3522 timestamps, RFC 5682 F-RTO).";
        spurious_rtos "tcp_spurious_rtos" "Retransmission timeouts found spurious and undone (RFC 5682, RFC 3522).";
        paced "tcp_paced" "Times data waited for the pacer.";
        ce_received "tcp_ce_received" "Segments that arrived marked CE (RFC 3168 5).";
        ecn_reductions "tcp_ecn_reductions" "Window reductions for an ECN echo (RFC 3168 6.1.2).";
        hystart_train_exits "tcp_hystart_train_exits"
            "Initial slow starts HyStart's ACK train ended, the window filling the path (as Linux's TCPHystartTrainDetect).";
        hystart_delay_exits "tcp_hystart_delay_exits"
            "Initial slow starts ended by a rise in delay after Conservative Slow Start (RFC 9406 4.3; Linux's TCPHystartDelayDetect).";
    }
}

/// Why the TCP core dropped a segment of a known connection: the injection defences of RFC
/// 5961 and the acceptability checks of RFC 9293 3.10.7.4 show up apart from each other.
pub const DROP_REASONS: [(DropReason, Metric); 8] = [
    (DropReason::Closed, counter("tcp_drop_closed", "Segments for a connection already closed.")),
    (DropReason::Paws, counter("tcp_drop_paws", "Segments with an old timestamp (RFC 7323 5.3 PAWS).")),
    (
        DropReason::Unacceptable,
        counter("tcp_drop_unacceptable", "Segments outside the receive window (RFC 9293 3.10.7.4)."),
    ),
    (
        DropReason::RstNotExact,
        counter("tcp_drop_rst_not_exact", "Resets in the window but not at RCV.NXT (RFC 5961 3.2)."),
    ),
    (DropReason::Syn, counter("tcp_drop_syn_synchronized", "SYNs on a synchronized connection (RFC 5961 4.2).")),
    (DropReason::NoAck, counter("tcp_drop_no_ack", "Segments without ACK on a synchronized connection.")),
    (DropReason::BadAck, counter("tcp_drop_bad_ack", "ACKs of unsent data or of data too old (RFC 5961 5.2).")),
    (
        DropReason::TimeWaitReuse,
        counter("tcp_drop_time_wait_reuse", "New SYNs for a tuple in TIME_WAIT, left to the SYN cookies (RFC 6191)."),
    ),
];

/// Where `why` is counted in [`DROP_REASONS`]: a match, so that a reason the core adds does not
/// build until it has a name here.
const fn drop_index(why: DropReason) -> usize {
    match why {
        DropReason::Closed => 0,
        DropReason::Paws => 1,
        DropReason::Unacceptable => 2,
        DropReason::RstNotExact => 3,
        DropReason::Syn => 4,
        DropReason::NoAck => 5,
        DropReason::BadAck => 6,
        DropReason::TimeWaitReuse => 7,
    }
}

/// Why the wire layer refused a frame before the TCP core saw it.
pub const WIRE_DROPS: [(WireError, Metric); 4] = [
    (WireError::NotTcp, counter("wire_drop_not_tcp", "Frames that are not Ethernet with IPv4/IPv6 and TCP.")),
    (WireError::Malformed, counter("wire_drop_malformed", "Frames whose headers do not parse.")),
    (WireError::Fragment, counter("wire_drop_fragment", "IP fragments.")),
    (WireError::BadChecksum, counter("wire_drop_bad_checksum", "TCP segments with a bad checksum.")),
];

impl QueueStats {
    /// Every value, in `synx stats` order.
    pub fn metrics() -> impl Iterator<Item = &'static Metric> {
        Self::SINGLE.iter().chain(DROP_REASONS.iter().map(|(_, m)| m)).chain(WIRE_DROPS.iter().map(|(_, m)| m))
    }

    /// The values now, in the order of [`QueueStats::metrics`].
    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.single_values().chain(self.dropped_by_reason.iter().map(load)).chain(self.wire.iter().map(load))
    }

    /// A segment of a known connection the TCP core dropped.
    pub fn count_drop(&self, why: DropReason) {
        self.dropped_by_tcp.fetch_add(1, Ordering::Relaxed);
        self.dropped_by_reason[drop_index(why)].fetch_add(1, Ordering::Relaxed);
    }

    /// A frame the wire layer refused.
    pub fn count_wire(&self, why: WireError) {
        if let Some(i) = WIRE_DROPS.iter().position(|(e, _)| *e == why) {
            self.wire[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Add one to `counter`.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Every queue's values summed, by name in `synx stats` order.
pub fn sum<'a>(queues: impl IntoIterator<Item = &'a QueueStats>) -> Vec<(&'static str, u64)> {
    let mut total: Vec<(&'static str, u64)> = QueueStats::metrics().map(|m| (m.name, 0)).collect();
    for q in queues {
        for (slot, v) in total.iter_mut().zip(q.values()) {
            slot.1 += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_is_named_once_and_explained() {
        let all: Vec<&Metric> = QueueStats::metrics().collect();
        assert_eq!(all.len(), QueueStats::default().values().count(), "a name for every value");
        for (i, m) in all.iter().enumerate() {
            assert!(!all[..i].iter().any(|o| o.name == m.name), "{} twice", m.name);
            assert!(!m.name.starts_with("xdp_"), "{}: xdp_ names are the XDP program's", m.name);
            assert!(m.help.ends_with('.') && m.help.len() > 10, "{}: help {:?}", m.name, m.help);
        }
    }

    #[test]
    fn every_drop_reason_has_its_own_counter() {
        for (i, (why, _)) in DROP_REASONS.iter().enumerate() {
            assert_eq!(drop_index(*why), i, "{why:?}");
        }
    }

    #[test]
    fn drops_are_counted_in_all_and_by_reason_and_summed_over_queues() {
        let (a, b) = (QueueStats::default(), QueueStats::default());
        a.count_drop(DropReason::Paws);
        b.count_drop(DropReason::Paws);
        b.count_drop(DropReason::BadAck);
        b.count_wire(WireError::Fragment);
        bump(&a.accepted);
        a.parked.store(3, Ordering::Relaxed);
        let total = sum([&a, &b]);
        let get = |name: &str| total.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(get("tcp_dropped"), Some(3));
        assert_eq!(get("tcp_drop_paws"), Some(2));
        assert_eq!(get("tcp_drop_bad_ack"), Some(1));
        assert_eq!(get("tcp_drop_closed"), Some(0));
        assert_eq!(get("wire_drop_fragment"), Some(1));
        assert_eq!(get("tcp_accepted"), Some(1));
        assert_eq!(get("tcp_parked"), Some(3));
    }

    #[test]
    fn core_counters_are_published_by_name() {
        let q = QueueStats::default();
        q.publish_core(&Stats { undos: 2, rack_losses: 5, ce_received: 1, ..Stats::default() });
        let total = sum([&q]);
        let get = |name: &str| total.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!((get("tcp_undos"), get("tcp_rack_losses"), get("tcp_ce_received")), (Some(2), Some(5), Some(1)));
        assert_eq!(get("tcp_retransmits"), Some(0));
    }
}
