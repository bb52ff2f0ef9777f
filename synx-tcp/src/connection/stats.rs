//! Per-connection counters, and their folded form.

/// Counters for `synx conns`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_sent: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segments_sent: u64,
    pub segments_received: u64,
    pub retransmits: u64,
    pub keepalive_probes: u64,
    pub zero_window_probes: u64,
    /// RFC 8985 tail loss probes sent.
    pub loss_probes: u64,
    pub challenge_acks: u64,
    pub time_wait_fin_reacks: u64,
}

/// [`Stats`] with the rare counters narrowed (a connection whose counts do not fit stays
/// unfolded).
#[derive(Clone, Copy, Debug)]
pub(super) struct Folded {
    bytes_sent: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segments_sent: u64,
    segments_received: u64,
    retransmits: u32,
    keepalive_probes: u32,
    zero_window_probes: u32,
    loss_probes: u32,
    challenge_acks: u32,
    time_wait_fin_reacks: u32,
}

impl Stats {
    pub(super) fn fold(&self) -> Option<Folded> {
        let n = |v: u64| u32::try_from(v).ok();
        Some(Folded {
            bytes_sent: self.bytes_sent,
            bytes_acked: self.bytes_acked,
            bytes_received: self.bytes_received,
            segments_sent: self.segments_sent,
            segments_received: self.segments_received,
            retransmits: n(self.retransmits)?,
            keepalive_probes: n(self.keepalive_probes)?,
            zero_window_probes: n(self.zero_window_probes)?,
            loss_probes: n(self.loss_probes)?,
            challenge_acks: n(self.challenge_acks)?,
            time_wait_fin_reacks: n(self.time_wait_fin_reacks)?,
        })
    }
}

impl Folded {
    pub(super) fn unfold(&self) -> Stats {
        Stats {
            bytes_sent: self.bytes_sent,
            bytes_acked: self.bytes_acked,
            bytes_received: self.bytes_received,
            segments_sent: self.segments_sent,
            segments_received: self.segments_received,
            retransmits: self.retransmits.into(),
            keepalive_probes: self.keepalive_probes.into(),
            zero_window_probes: self.zero_window_probes.into(),
            loss_probes: self.loss_probes.into(),
            challenge_acks: self.challenge_acks.into(),
            time_wait_fin_reacks: self.time_wait_fin_reacks.into(),
        }
    }
}
