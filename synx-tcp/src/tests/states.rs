//! RFC 9293 3.10.7.4 as a table: for every state the server TCB has, the segment kinds the
//! RFC's steps tell apart, each row giving the reply, the next state, the verdict and the one
//! counter that moves. Connections are put straight into a state by [`in_state`].

use super::*;

/// Sequence offsets (from ISS + 1 and IRS + 1) of a connection made by [`in_state`]: where
/// SND.UNA and SND.MAX stand (our FIN counts), and RCV.NXT (the peer's FIN counts).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Offsets {
    pub una: u32,
    pub max: u32,
    pub rcv: u32,
}

pub(crate) fn offsets(state: State) -> Offsets {
    let (una, max) = match state {
        // Our FIN sent, not yet acknowledged.
        State::FinWait1 | State::Closing | State::LastAck => (0, 1),
        // Our FIN acknowledged.
        State::FinWait2 | State::TimeWait => (1, 1),
        _ => (0, 0),
    };
    let rcv = u32::from(matches!(state, State::CloseWait | State::LastAck | State::Closing | State::TimeWait));
    Offsets { una, max, rcv }
}

/// A connection in `state`, reached through the segments and calls that lead there (no data
/// either way), with nothing owed and no event pending, at 10 ms.
pub(crate) fn in_state(state: State) -> Connection {
    let mut c = established();
    let fin = |seq_off, ack_off| with(peer(seq_off, ack_off), Flags::FIN);
    match state {
        State::Established => {}
        State::CloseWait => {
            c.handle(ms(1), &fin(0, 0), &[]);
        }
        State::LastAck => {
            c.handle(ms(1), &fin(0, 0), &[]);
            c.shutdown(ms(2));
        }
        State::FinWait1 => c.shutdown(ms(1)),
        State::FinWait2 => {
            c.shutdown(ms(1));
            out(&mut c, ms(1));
            c.handle(ms(2), &peer(0, 1), &[]);
        }
        State::Closing => {
            c.shutdown(ms(1));
            out(&mut c, ms(1));
            c.handle(ms(2), &fin(0, 0), &[]);
        }
        State::TimeWait => {
            c.shutdown(ms(1));
            out(&mut c, ms(1));
            c.handle(ms(2), &fin(0, 1), &[]);
        }
        State::Closed => {
            c.handle(ms(1), &with(peer(0, 0), Flags::RST), &[]);
        }
    }
    // Delayed ACKs fire at 41-42 ms: settle everything before the test's segment.
    c.handle_timeout(ms(50));
    out(&mut c, ms(50));
    events(&mut c);
    assert_eq!(c.state(), state, "fixture");
    c
}

#[test]
fn in_state_reaches_every_state_quiet_and_at_the_stated_offsets() {
    for state in State::ALL {
        let mut c = in_state(state);
        let o = offsets(state);
        none(&mut c, ms(60));
        assert!(events(&mut c).is_empty(), "{state}");
        if state != State::Closed {
            // The challenge ACK for data far ahead shows RCV.NXT, and SND.MAX as its SEQ.
            c.handle(ms(60), &peer(o.rcv + 1_000_000, o.una), b"x");
            assert_ack(&one(&mut c, ms(60)), o.max, o.rcv);
            assert_eq!(c.info().send_queued, 0);
        }
    }
}


/// The segment kinds of the table, built against a connection's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seg {
    /// One byte at RCV.NXT, ACKing SND.UNA.
    Data,
    /// One byte a million bytes beyond RCV.NXT (RFC 9293 3.10.7.4 first: unacceptable).
    DataFarAhead,
    /// One byte of data below RCV.NXT - 100: an old duplicate, unacceptable.
    DataOld,
    /// RST at RCV.NXT.
    RstExact,
    /// RST inside the window, not at RCV.NXT (RFC 5961 3.2).
    RstInWindow,
    /// RST far outside the window.
    RstOutOfWindow,
    /// RST at RCV.NXT - 1: after the peer's FIN, that FIN's own sequence number.
    RstAtFin,
    /// SYN inside the window, above RCV.NXT (RFC 5961 4.2; in TIME_WAIT, RFC 6191).
    SynInWindow,
    /// SYN below RCV.NXT.
    SynOld,
    /// Data without the ACK bit (RFC 9293 3.10.7.4 fifth).
    NoAck,
    /// ACK of data never sent (RFC 5961 5.2).
    AckTooNew,
    /// ACK below SND.UNA - MAX.SND.WND (RFC 5961 5.2).
    AckTooOld,
    /// ACK of our FIN.
    AckOfFin,
    /// The peer's FIN at RCV.NXT, not acknowledging ours.
    Fin,
    /// The peer's FIN again (it was received already).
    FinAgain,
}

impl Seg {
    fn build(self, o: Offsets) -> (Header, Vec<u8>) {
        let x = vec![b'x'];
        let far = 1_000_000u32;
        match self {
            Seg::Data => (peer(o.rcv, o.una), x),
            Seg::DataFarAhead => (peer(o.rcv + far, o.una), x),
            Seg::DataOld => (peer(o.rcv.wrapping_sub(100), o.una), x),
            Seg::RstExact => (with(peer(o.rcv, 0), Flags::RST), vec![]),
            Seg::RstInWindow => (with(peer(o.rcv + 1, 0), Flags::RST), vec![]),
            Seg::RstOutOfWindow => (with(peer(o.rcv + far, 0), Flags::RST), vec![]),
            Seg::RstAtFin => (with(peer(o.rcv.wrapping_sub(1), 0), Flags::RST), vec![]),
            Seg::SynInWindow => (Header { flags: Flags::SYN, ..peer(o.rcv + 3, 0) }, vec![]),
            Seg::SynOld => (Header { flags: Flags::SYN, ..peer(o.rcv.wrapping_sub(100), 0) }, vec![]),
            Seg::NoAck => (Header { flags: Flags(0), ..peer(o.rcv, o.una) }, x),
            Seg::AckTooNew => (peer(o.rcv, o.max + 10), vec![]),
            Seg::AckTooOld => (peer(o.rcv, o.una.wrapping_sub(100_000)), vec![]),
            Seg::AckOfFin => (peer(o.rcv, 1), vec![]),
            Seg::Fin => (with(peer(o.rcv, o.una), Flags::FIN), vec![]),
            Seg::FinAgain => (with(peer(o.rcv - 1, o.una), Flags::FIN), vec![]),
        }
    }
}

/// The one segment the connection sends at once (none for delayed ACKs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    None,
    /// A pure ACK: SEQ = SND.MAX, ACK = RCV.NXT after the segment.
    Ack,
}

/// The counter a row moves by one (`segments_received` always does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Count {
    Nothing,
    ChallengeAck,
    BytesReceived,
    TimeWaitFinReack,
}

use DropReason as D;
use Reply::{Ack, None as NoReply};
use Seg::*;
use State::*;

/// (state, segment) -> (reply, next state, verdict, counter).
#[rustfmt::skip]
const TABLE: &[(State, Seg, Reply, State, Handled, Count)] = &[
    // RFC 9293 3.10.7.4 first: an unacceptable segment gets <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
    // (rate-limited as RFC 5961 7's challenge ACKs) and is dropped, in every synchronized state.
    (Established, DataFarAhead, Ack, Established, Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (CloseWait,   DataFarAhead, Ack, CloseWait,   Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (LastAck,     DataFarAhead, Ack, LastAck,     Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (FinWait1,    DataFarAhead, Ack, FinWait1,    Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (FinWait2,    DataFarAhead, Ack, FinWait2,    Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (Closing,     DataFarAhead, Ack, Closing,     Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (TimeWait,    DataFarAhead, Ack, TimeWait,    Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    // Old data is ACKed too, but always (no challenge ACK counted): a data segment is no ACK
    // loop, and the ACK carries the duplicate's DSACK (RFC 2883 4, as Linux's tcp_send_dupack).
    (Established, DataOld,      Ack, Established, Handled::Dropped(D::Unacceptable), Count::Nothing),
    (FinWait2,    DataOld,      Ack, FinWait2,    Handled::Dropped(D::Unacceptable), Count::Nothing),
    (CloseWait,   FinAgain,     Ack, CloseWait,   Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (LastAck,     FinAgain,     Ack, LastAck,     Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (Closing,     FinAgain,     Ack, Closing,     Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    // RFC 9293 3.10.7.4 first, TIME-WAIT: anything with data is answered with an ACK; a bare
    // ACK is dropped silently.
    (TimeWait,    Data,         Ack,     TimeWait, Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (TimeWait,    NoAck,        Ack,     TimeWait, Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    (TimeWait,    AckTooNew,    NoReply, TimeWait, Handled::Dropped(D::Unacceptable), Count::Nothing),
    // RFC 9293 3.10.7.4 second with RFC 5961 3.2: only a RST at RCV.NXT resets (CLOSED); one
    // inside the window gets a challenge ACK; one outside it is dropped unanswered.
    (Established, RstExact,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (CloseWait,   RstExact,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (LastAck,     RstExact,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (FinWait1,    RstExact,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (FinWait2,    RstExact,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (Closing,     RstExact,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (TimeWait,    RstExact,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (Established, RstInWindow,    Ack,     Established, Handled::Dropped(D::RstNotExact), Count::ChallengeAck),
    (CloseWait,   RstInWindow,    Ack,     CloseWait,   Handled::Dropped(D::RstNotExact), Count::ChallengeAck),
    (LastAck,     RstInWindow,    Ack,     LastAck,     Handled::Dropped(D::RstNotExact), Count::ChallengeAck),
    (FinWait1,    RstInWindow,    Ack,     FinWait1,    Handled::Dropped(D::RstNotExact), Count::ChallengeAck),
    (FinWait2,    RstInWindow,    Ack,     FinWait2,    Handled::Dropped(D::RstNotExact), Count::ChallengeAck),
    (Closing,     RstInWindow,    Ack,     Closing,     Handled::Dropped(D::RstNotExact), Count::ChallengeAck),
    (Established, RstOutOfWindow, NoReply, Established, Handled::Dropped(D::Unacceptable), Count::Nothing),
    (CloseWait,   RstOutOfWindow, NoReply, CloseWait,   Handled::Dropped(D::Unacceptable), Count::Nothing),
    (LastAck,     RstOutOfWindow, NoReply, LastAck,     Handled::Dropped(D::Unacceptable), Count::Nothing),
    (FinWait1,    RstOutOfWindow, NoReply, FinWait1,    Handled::Dropped(D::Unacceptable), Count::Nothing),
    (FinWait2,    RstOutOfWindow, NoReply, FinWait2,    Handled::Dropped(D::Unacceptable), Count::Nothing),
    (Closing,     RstOutOfWindow, NoReply, Closing,     Handled::Dropped(D::Unacceptable), Count::Nothing),
    // Linux's tcp_reset_check: once the peer's FIN is in (CLOSE-WAIT, LAST-ACK, CLOSING), a RST
    // at the FIN's own sequence number (RCV.NXT - 1) resets, which RFC 5961 3.2 alone would
    // drop as outside the window; in any other state it is an old RST, dropped unanswered.
    (CloseWait,   RstAtFin,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (LastAck,     RstAtFin,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (Closing,     RstAtFin,       NoReply, Closed,      Handled::Processed, Count::Nothing),
    (Established, RstAtFin,       NoReply, Established, Handled::Dropped(D::Unacceptable), Count::Nothing),
    (FinWait1,    RstAtFin,       NoReply, FinWait1,    Handled::Dropped(D::Unacceptable), Count::Nothing),
    (FinWait2,    RstAtFin,       NoReply, FinWait2,    Handled::Dropped(D::Unacceptable), Count::Nothing),
    (TimeWait,    RstAtFin,       NoReply, TimeWait,    Handled::Dropped(D::RstNotExact), Count::Nothing),
    // TIME-WAIT keeps its 2*MSL unless the RST is exact (no challenge: nothing to resynchronize).
    (TimeWait,    RstInWindow,    NoReply, TimeWait,    Handled::Dropped(D::RstNotExact), Count::Nothing),
    (TimeWait,    RstOutOfWindow, NoReply, TimeWait,    Handled::Dropped(D::RstNotExact), Count::Nothing),
    // RFC 9293 3.10.7.4 fourth with RFC 5961 4.2: a SYN on a synchronized connection gets a
    // challenge ACK; an old one fails the first check.
    (Established, SynInWindow, Ack, Established, Handled::Dropped(D::Syn), Count::ChallengeAck),
    (CloseWait,   SynInWindow, Ack, CloseWait,   Handled::Dropped(D::Syn), Count::ChallengeAck),
    (LastAck,     SynInWindow, Ack, LastAck,     Handled::Dropped(D::Syn), Count::ChallengeAck),
    (FinWait1,    SynInWindow, Ack, FinWait1,    Handled::Dropped(D::Syn), Count::ChallengeAck),
    (FinWait2,    SynInWindow, Ack, FinWait2,    Handled::Dropped(D::Syn), Count::ChallengeAck),
    (Closing,     SynInWindow, Ack, Closing,     Handled::Dropped(D::Syn), Count::ChallengeAck),
    (Established, SynOld,      Ack, Established, Handled::Dropped(D::Unacceptable), Count::ChallengeAck),
    // RFC 6191 (RFC 9293 3.10.7.4 note): in TIME-WAIT a SYN above RCV.NXT reopens the tuple (the
    // TCB closes and the SYN goes to the cookie path); an older one gets a challenge ACK.
    (TimeWait,    SynInWindow, NoReply, Closed,   Handled::Dropped(D::TimeWaitReuse), Count::Nothing),
    (TimeWait,    SynOld,      Ack,     TimeWait, Handled::Dropped(D::Syn), Count::ChallengeAck),
    // RFC 9293 3.10.7.4 fifth: no ACK bit, dropped; an ACK of unsent data or too old
    // (RFC 5961 5.2) gets a challenge ACK and is dropped.
    (Established, NoAck,     NoReply, Established, Handled::Dropped(D::NoAck), Count::Nothing),
    (CloseWait,   NoAck,     NoReply, CloseWait,   Handled::Dropped(D::NoAck), Count::Nothing),
    (FinWait1,    NoAck,     NoReply, FinWait1,    Handled::Dropped(D::NoAck), Count::Nothing),
    (FinWait2,    NoAck,     NoReply, FinWait2,    Handled::Dropped(D::NoAck), Count::Nothing),
    (Closing,     NoAck,     NoReply, Closing,     Handled::Dropped(D::NoAck), Count::Nothing),
    (LastAck,     NoAck,     NoReply, LastAck,     Handled::Dropped(D::NoAck), Count::Nothing),
    (Established, AckTooNew, Ack,     Established, Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (CloseWait,   AckTooNew, Ack,     CloseWait,   Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (LastAck,     AckTooNew, Ack,     LastAck,     Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (FinWait1,    AckTooNew, Ack,     FinWait1,    Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (FinWait2,    AckTooNew, Ack,     FinWait2,    Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (Closing,     AckTooNew, Ack,     Closing,     Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (Established, AckTooOld, Ack,     Established, Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (CloseWait,   AckTooOld, Ack,     CloseWait,   Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (LastAck,     AckTooOld, Ack,     LastAck,     Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (FinWait1,    AckTooOld, Ack,     FinWait1,    Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (FinWait2,    AckTooOld, Ack,     FinWait2,    Handled::Dropped(D::BadAck), Count::ChallengeAck),
    (Closing,     AckTooOld, Ack,     Closing,     Handled::Dropped(D::BadAck), Count::ChallengeAck),
    // RFC 9293 3.10.7.4 fifth: the ACK of our FIN moves FIN-WAIT-1 to FIN-WAIT-2, CLOSING to
    // TIME-WAIT, and LAST-ACK to CLOSED.
    (FinWait1, AckOfFin, NoReply, FinWait2, Handled::Processed, Count::Nothing),
    (Closing,  AckOfFin, NoReply, TimeWait, Handled::Processed, Count::Nothing),
    (LastAck,  AckOfFin, NoReply, Closed,   Handled::Processed, Count::Nothing),
    // RFC 9293 3.10.7.4 seventh: ESTABLISHED, FIN-WAIT-1 and FIN-WAIT-2 deliver the text (the
    // ACK delayed, RFC 9293 3.8.6.3); after the peer's FIN, text is ignored.
    (Established, Data, NoReply, Established, Handled::Processed, Count::BytesReceived),
    (FinWait1,    Data, NoReply, FinWait1,    Handled::Processed, Count::BytesReceived),
    (FinWait2,    Data, NoReply, FinWait2,    Handled::Processed, Count::BytesReceived),
    (CloseWait,   Data, NoReply, CloseWait,   Handled::Processed, Count::Nothing),
    (LastAck,     Data, NoReply, LastAck,     Handled::Processed, Count::Nothing),
    (Closing,     Data, NoReply, Closing,     Handled::Processed, Count::Nothing),
    // RFC 9293 3.10.7.4 eighth: the FIN moves ESTABLISHED to CLOSE-WAIT (its ACK delayed so a
    // prompt close rides on our FIN), FIN-WAIT-1 to CLOSING and FIN-WAIT-2 to TIME-WAIT (ACKed at
    // once); in TIME-WAIT a retransmitted FIN is ACKed again and 2*MSL restarts.
    (Established, Fin,      NoReply, CloseWait, Handled::Processed, Count::Nothing),
    (FinWait1,    Fin,      Ack,     Closing,   Handled::Processed, Count::Nothing),
    (FinWait2,    Fin,      Ack,     TimeWait,  Handled::Processed, Count::Nothing),
    (TimeWait,    FinAgain, Ack,     TimeWait,  Handled::Processed, Count::TimeWaitFinReack),
    // RFC 9293 3.10.7.1 / 3.10.7.4: a CLOSED TCB drops everything; the endpoint answers
    // strangers with `reset_for`.
    (Closed, Data,        NoReply, Closed, Handled::Dropped(D::Closed), Count::Nothing),
    (Closed, RstExact,    NoReply, Closed, Handled::Dropped(D::Closed), Count::Nothing),
    (Closed, SynInWindow, NoReply, Closed, Handled::Dropped(D::Closed), Count::Nothing),
    (Closed, Fin,         NoReply, Closed, Handled::Dropped(D::Closed), Count::Nothing),
];

#[test]
fn rfc9293_segment_arrival_table() {
    for &(state, seg, reply, next, handled, count) in TABLE {
        let row = format!("{state} + {seg:?}");
        let mut c = in_state(state);
        let before = *c.stats();
        let o = offsets(state);
        let (h, payload) = seg.build(o);
        let t = ms(100);
        assert_eq!(c.handle(t, &h, &payload), handled, "{row}: verdict");
        assert_eq!(c.state(), next, "{row}: next state");
        let sent = out(&mut c, t);
        match reply {
            Reply::None => assert!(sent.is_empty(), "{row}: expected no reply, got {sent:?}"),
            Reply::Ack => {
                assert_eq!(sent.len(), 1, "{row}: expected one ACK, got {sent:?}");
                let rcv_after = o.rcv + u32::from(seg == Fin && handled == Handled::Processed);
                assert_ack(&sent[0], o.max, rcv_after);
            }
        }
        // Every counter as before, but segments in and out, and the row's own counter.
        let mut expected = before;
        expected.segments_received += 1;
        expected.segments_sent += sent.len() as u64;
        match count {
            Count::Nothing => {}
            Count::ChallengeAck => expected.challenge_acks += 1,
            Count::BytesReceived => expected.bytes_received += payload.len() as u64,
            Count::TimeWaitFinReack => expected.time_wait_fin_reacks += 1,
        }
        assert_eq!(*c.stats(), expected, "{row}: counters");
    }
}

#[test]
fn the_table_covers_every_state_and_each_step_in_each_synchronized_state() {
    for state in State::ALL {
        let segs: Vec<Seg> = TABLE.iter().filter(|r| r.0 == state).map(|r| r.1).collect();
        assert!(!segs.is_empty(), "{state} has no rows");
        if state == State::Closed {
            continue;
        }
        // first (an unacceptable segment), second (RST both ways), fourth (SYN), fifth (ACK).
        for needed in [DataFarAhead, RstExact, RstInWindow, RstOutOfWindow, SynInWindow] {
            assert!(segs.contains(&needed), "{state} lacks {needed:?}");
        }
    }
}

/// RFC 1122 4.2.2.13 (RFC 2525 2.17): closing with received data unread resets instead of
/// sending a FIN; so does data arriving after the application closed.
#[test]
fn close_with_unread_data_or_data_after_close_resets() {
    // Unread data in the TCB.
    let mut c = in_state(State::Established);
    c.handle(ms(100), &peer(0, 0), b"unread");
    c.close(ms(101));
    assert_eq!(c.state(), State::Closed);
    let (h, _) = one(&mut c, ms(101));
    assert_eq!((h.flags, h.seq, h.ack), (Flags::RST | Flags::ACK, SeqNum(ISS + 1), SeqNum(IRS + 7)));
    assert_eq!(events(&mut c).last(), Some(&Event::Closed(CloseReason::Aborted)));
    // Unread data outside the TCB (the driver's queue to its application).
    let mut c = in_state(State::CloseWait);
    c.close_discarding(ms(101), 3);
    assert_eq!(c.state(), State::Closed);
    assert!(one(&mut c, ms(101)).0.flags.rst());
    // Everything read: an orderly close, FIN.
    let mut c = in_state(State::Established);
    c.handle(ms(100), &peer(0, 0), b"read");
    read_all(&mut c);
    c.close(ms(101));
    assert_eq!(c.state(), State::FinWait1);
    assert!(one(&mut c, ms(101)).0.flags.fin());
    // New data after close (FIN-WAIT-2 here): reset; a retransmission of old data is not new.
    c.handle(ms(110), &peer(4, 1), &[]);
    assert_eq!(c.state(), State::FinWait2);
    c.handle(ms(111), &peer(0, 1), b"read");
    assert_eq!(c.state(), State::FinWait2);
    out(&mut c, ms(111));
    c.handle(ms(112), &peer(4, 1), b"more");
    assert_eq!(c.state(), State::Closed);
    let (h, _) = one(&mut c, ms(112));
    assert_eq!((h.flags, h.seq, h.ack), (Flags::RST | Flags::ACK, SeqNum(ISS + 2), SeqNum(IRS + 5)));
    // A half-closed (shut down, not closed) connection still receives.
    let mut c = in_state(State::FinWait2);
    c.handle(ms(100), &peer(0, 1), b"more");
    assert_eq!(read_all(&mut c), b"more");
}
