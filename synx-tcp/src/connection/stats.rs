//! Per-connection counters, and their folded form.

/// Counters for `synx conns` and `synx stats`. Byte and segment totals are 64-bit; the event
/// counters 32-bit (they keep `ConnectionInfo` small).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segments_sent: u64,
    pub segments_received: u64,
    pub retransmits: u32,
    pub keepalive_probes: u32,
    pub zero_window_probes: u32,
    /// RFC 8985 tail loss probes sent.
    pub loss_probes: u32,
    pub challenge_acks: u32,
    pub time_wait_fin_reacks: u32,
    /// Retransmission timeouts.
    pub timeouts: u32,
    /// Fast recoveries entered (the window reduced by PRR, RFC 6937).
    pub fast_recoveries: u32,
    /// Segments RACK marked lost (RFC 8985 6).
    pub rack_losses: u32,
    /// DSACK blocks received (RFC 2883).
    pub dsacks_received: u32,
    /// Window reductions undone as spurious (DSACK, RFC 3522 timestamps, F-RTO).
    pub undos: u32,
    /// Of those, retransmission timeouts found spurious (RFC 5682 F-RTO, RFC 3522).
    pub spurious_rtos: u32,
    /// Losses a tail-loss probe repaired (RFC 8985 7.4.2), each reducing the window once.
    pub tlp_recoveries: u32,
    /// Times data waited for the pacer.
    pub paced: u32,
    /// Segments that arrived CE-marked (RFC 3168).
    pub ce_received: u32,
    /// Window reductions for an ECN echo (RFC 3168 6.1.2).
    pub ecn_reductions: u32,
    /// Initial slow starts HyStart's ACK train ended (the window filled the path; Linux's
    /// TCPHystartTrainDetect).
    pub hystart_train_exits: u32,
    /// Initial slow starts RFC 9406's delay test ended, after Conservative Slow Start (Linux's
    /// TCPHystartDelayDetect).
    pub hystart_delay_exits: u32,
}

impl Stats {
    /// Add what changed from `before` to `after` (the same connection's counters at two
    /// moments): totals over many connections.
    pub fn add_change(&mut self, before: &Stats, after: &Stats) {
        macro_rules! add {
            ($($f:ident),*) => {$( self.$f = self.$f.wrapping_add(after.$f.wrapping_sub(before.$f)); )*};
        }
        add!(
            bytes_sent, bytes_acked, bytes_received, segments_sent, segments_received, retransmits, keepalive_probes,
            zero_window_probes, loss_probes, challenge_acks, time_wait_fin_reacks, timeouts, fast_recoveries,
            rack_losses, dsacks_received, undos, spurious_rtos, tlp_recoveries, paced, ce_received, ecn_reductions,
            hystart_train_exits, hystart_delay_exits
        );
    }
}

/// [`Stats`] at rest: every byte sent was acknowledged (so one total serves both), and the
/// segment and rare counters are narrowed (a connection whose counts do not fit stays
/// unfolded): the rarest, which a connection sees a few times in its life if at all, to a
/// byte, so that the whole stays 64 bytes.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Folded {
    bytes_sent: u64,
    bytes_received: u64,
    segments_sent: u32,
    segments_received: u32,
    retransmits: u32,
    rack_losses: u32,
    paced: u32,
    ce_received: u32,
    keepalive_probes: u16,
    zero_window_probes: u16,
    loss_probes: u16,
    challenge_acks: u16,
    time_wait_fin_reacks: u8,
    timeouts: u16,
    fast_recoveries: u16,
    dsacks_received: u16,
    undos: u16,
    spurious_rtos: u8,
    tlp_recoveries: u16,
    ecn_reductions: u16,
    hystart_train_exits: u8,
    hystart_delay_exits: u8,
}

impl Stats {
    pub(super) fn fold(&self) -> Option<Folded> {
        let n = |v: u32| u16::try_from(v).ok();
        if self.bytes_acked != self.bytes_sent {
            return None;
        }
        Some(Folded {
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            segments_sent: u32::try_from(self.segments_sent).ok()?,
            segments_received: u32::try_from(self.segments_received).ok()?,
            retransmits: self.retransmits,
            rack_losses: self.rack_losses,
            paced: self.paced,
            ce_received: self.ce_received,
            keepalive_probes: n(self.keepalive_probes)?,
            zero_window_probes: n(self.zero_window_probes)?,
            loss_probes: n(self.loss_probes)?,
            challenge_acks: n(self.challenge_acks)?,
            time_wait_fin_reacks: u8::try_from(self.time_wait_fin_reacks).ok()?,
            timeouts: n(self.timeouts)?,
            fast_recoveries: n(self.fast_recoveries)?,
            dsacks_received: n(self.dsacks_received)?,
            undos: n(self.undos)?,
            spurious_rtos: u8::try_from(self.spurious_rtos).ok()?,
            tlp_recoveries: n(self.tlp_recoveries)?,
            ecn_reductions: n(self.ecn_reductions)?,
            hystart_train_exits: u8::try_from(self.hystart_train_exits).ok()?,
            hystart_delay_exits: u8::try_from(self.hystart_delay_exits).ok()?,
        })
    }
}

impl Folded {
    pub(super) fn unfold(&self) -> Stats {
        Stats {
            bytes_sent: self.bytes_sent,
            bytes_acked: self.bytes_sent,
            bytes_received: self.bytes_received,
            segments_sent: self.segments_sent.into(),
            segments_received: self.segments_received.into(),
            retransmits: self.retransmits,
            keepalive_probes: self.keepalive_probes.into(),
            zero_window_probes: self.zero_window_probes.into(),
            loss_probes: self.loss_probes.into(),
            challenge_acks: self.challenge_acks.into(),
            time_wait_fin_reacks: self.time_wait_fin_reacks.into(),
            timeouts: self.timeouts.into(),
            fast_recoveries: self.fast_recoveries.into(),
            rack_losses: self.rack_losses,
            dsacks_received: self.dsacks_received.into(),
            undos: self.undos.into(),
            spurious_rtos: self.spurious_rtos.into(),
            tlp_recoveries: self.tlp_recoveries.into(),
            paced: self.paced,
            ce_received: self.ce_received,
            ecn_reductions: self.ecn_reductions.into(),
            hystart_train_exits: self.hystart_train_exits.into(),
            hystart_delay_exits: self.hystart_delay_exits.into(),
        }
    }
}
