//! Loss recovery in virtual time, mechanism by mechanism: RACK's reordering window (RFC 8985
//! 6.2), Proportional Rate Reduction (RFC 6937), undoing a spurious reduction by DSACK (RFC
//! 2883, as Linux), by timestamps (RFC 3522) and after a timeout by F-RTO (RFC 5682), and the
//! outcome of a tail-loss probe (RFC 8985 7.4). Segments are counted in 1460-byte units from
//! ISS + 1.

use core::time::Duration;

use engine_common::handshake::{FACT_SACK, FACT_TS, HandshakeFacts};

use super::*;

const MSS: u32 = 1460;

/// Indices of the data segments among `segs`.
fn index(segs: &[(Header, Vec<u8>)]) -> Vec<u32> {
    segs.iter().filter(|(_, p)| !p.is_empty()).map(|(h, _)| (h.seq.0 - ISS - 1) / MSS).collect()
}

/// A SACK sender whose window has grown to 20 segments, with nothing in flight, at 100 ms,
/// min_RTT and SRTT 10 ms. `data` more segments are queued (none sent yet).
fn grown(data: u32) -> Connection {
    let mut c = sack_sender();
    c.send(&vec![1u8; 10 * MSS as usize]);
    assert_eq!(out(&mut c, ms(90)).len(), 10);
    c.handle(ms(100), &sack_ack(10, &[]), &[]);
    assert_eq!(c.info().cwnd, 20 * MSS);
    c.send(&vec![2u8; (data * MSS) as usize]);
    c
}

/// With timestamps a segment carries 1448 bytes.
const TS_SEG: u32 = MSS - 12;

/// A SACK and timestamps sender, unpaced, whose TSval is 1000 at 0 ms.
fn ts_sender() -> Connection {
    let f = HandshakeFacts { flags: FACT_SACK | FACT_TS, ts_recent: 100, ts_offset: 1000, ..facts() };
    let mut ack = peer(0, 0);
    ack.options.timestamps = Some((100, 0));
    accept_with(Config { nagle: false, pacing: false, ..config() }, f, &ack, &[])
}

/// An ACK of `acked` segments of [`TS_SEG`] SACKing segments `sacked.0` to `sacked.1` (none
/// when that is empty), with TSval `val` and TSecr `ecr`.
fn ts_ack(acked: u32, sacked: (u32, u32), val: u32, ecr: u32) -> Header {
    let mut h = peer(0, acked * TS_SEG);
    if sacked.1 > sacked.0 {
        h.options.sack.push(SeqNum(ISS + 1 + sacked.0 * TS_SEG), SeqNum(ISS + 1 + sacked.1 * TS_SEG));
    }
    h.options.timestamps = Some((val, ecr));
    h
}

#[test]
fn rack_waits_a_quarter_min_rtt_once_the_path_reorders() {
    // RFC 8985 6.2 step 4: while no reordering was seen, DupThresh SACKed segments leave no
    // reordering window (as DupThresh would); once a segment arrived below one delivered
    // before it (step 3), the window is min_RTT/4 and a late segment is not resent.
    for reorders in [false, true] {
        let mut c = grown(10);
        // Segments 10 to 19 leave at 100 ms (min_RTT and SRTT 10 ms). Segment 10 is late.
        assert_eq!(index(&out(&mut c, ms(100))), (10..20).collect::<Vec<_>>());
        c.handle(ms(110), &sack_ack(10, &[(11, 12)]), &[]);
        if reorders {
            // Segment 12 arrives after 13.
            c.handle(ms(110), &sack_ack(10, &[(13, 14), (11, 12)]), &[]);
        }
        c.handle(ms(111), &sack_ack(10, &[(11, 14)]), &[]);
        c.handle(ms(112), &sack_ack(10, &[(11, 15)]), &[]);
        let resent = index(&out(&mut c, ms(112)));
        if reorders {
            // RACK.rtt 12 ms + 2.5 ms: segment 10 is not lost before 114.5 ms, and arrives.
            assert!(resent.iter().all(|&i| i >= 20), "{resent:?}");
            c.handle(ms(113), &sack_ack(15, &[]), &[]);
            assert_eq!(c.stats().retransmits, 0);
            assert_eq!(c.stats().fast_recoveries, 0);
        } else {
            // DupThresh SACKed: lost at once.
            assert_eq!(resent.first(), Some(&10));
            assert_eq!((c.stats().rack_losses, c.stats().fast_recoveries), (1, 1));
        }
    }
}

#[test]
fn prr_sends_at_ssthresh_over_recoverfs_the_rate_data_is_delivered() {
    // RFC 6937 3: while pipe > ssthresh, sndcnt = CEIL(prr_delivered * ssthresh / RecoverFS) -
    // prr_out, at least the fast retransmit; at the end of recovery cwnd = ssthresh.
    let mut c = grown(40);
    // Segments 10 to 29 leave at 100 ms; 10 is lost.
    assert_eq!(out(&mut c, ms(100)).len(), 20);
    let recover_fs = 20 * MSS;
    let ssthresh = recover_fs * 7 / 10; // CUBIC's beta
    // SACKs for 11 and 12 each clock out a new segment (RFC 6675 4: they left the pipe).
    for (to, t) in [(12, 110), (13, 111)] {
        c.handle(ms(t), &sack_ack(10, &[(11, to)]), &[]);
        assert_eq!(out(&mut c, ms(t)).len(), 1);
    }
    // The third SACK leaves no reordering window: recovery, then one SACK per millisecond.
    let mut sent_bytes = 0u32;
    let mut delivered = 0u32;
    for k in 0..=10u32 {
        let t = ms(112 + k as u64);
        c.handle(t, &sack_ack(10, &[(11, 14 + k)]), &[]);
        if k == 0 {
            assert_eq!(c.info().ssthresh, ssthresh);
        }
        delivered += MSS;
        let segs = out(&mut c, t);
        if k == 0 {
            assert_eq!(index(&segs)[0], 10, "the fast retransmit");
        }
        sent_bytes += segs.iter().map(|(_, p)| p.len() as u32).sum::<u32>();
        let allowed = (delivered as u64 * ssthresh as u64).div_ceil(recover_fs as u64) as u32;
        // Sent as soon as a whole segment fits, never beyond (the first ACK sends one anyway).
        assert!(sent_bytes <= allowed.max(MSS), "ACK {k}: sent {sent_bytes} > {allowed}");
        assert!(sent_bytes + MSS > allowed, "ACK {k}: sent {sent_bytes}, {allowed} allowed");
    }
    // By now 14 segments are in flight, as many as ssthresh: from here PRR's conservative
    // bound (RFC 6937 3, PRR-CRB) sends one segment per segment delivered, the pipe staying
    // at ssthresh.
    for k in 11..17u32 {
        let t = ms(112 + k as u64);
        c.handle(t, &sack_ack(10, &[(11, 14 + k)]), &[]);
        assert_eq!(c.info().cwnd, ssthresh, "ACK {k}");
        assert_eq!(out(&mut c, t).len(), usize::from(k > 11), "ACK {k}");
    }
    // The cumulative ACK past the recovery point ends it: cwnd = ssthresh, and this ACK's
    // congestion-avoidance increase (less than a segment) on top, as Linux.
    let t = ms(200);
    c.handle(t, &sack_ack(40, &[]), &[]);
    let cwnd = c.info().cwnd;
    assert!((ssthresh..ssthresh + MSS).contains(&cwnd), "{cwnd}");
    assert_eq!(c.stats().fast_recoveries, 1);
}

#[test]
fn a_dsack_undoes_a_spurious_fast_retransmit() {
    // RFC 2883 (and Linux's tcp_try_undo_dsack): the peer reports the retransmission as a
    // duplicate, so the original was only late: the window comes back, and the path is known
    // to reorder (RFC 8985 6.2), so the same lateness does not cost a retransmission again.
    let mut c = grown(30);
    // Segments 10 to 29 leave at 100 ms; 10 is late.
    assert_eq!(out(&mut c, ms(100)).len(), 20);
    for (to, t) in [(12, 110), (13, 111), (14, 112)] {
        c.handle(ms(t), &sack_ack(10, &[(11, to)]), &[]);
        let sent = index(&out(&mut c, ms(t)));
        if t == 112 {
            assert_eq!(sent, [10], "fast retransmit (PRR lets only it go)");
        }
    }
    assert!(c.info().cwnd < 20 * MSS);
    // Segment 10's original arrives, then its retransmission: a DSACK below the ACK.
    c.handle(ms(113), &sack_ack(14, &[]), &[]);
    out(&mut c, ms(113));
    let mut dsack = sack_ack(14, &[]);
    dsack.options.sack.push(SeqNum(ISS + 1 + 10 * MSS), SeqNum(ISS + 1 + 11 * MSS));
    c.handle(ms(124), &dsack, &[]);
    assert_eq!((c.stats().dsacks_received, c.stats().undos), (1, 1));
    assert!(c.info().cwnd >= 20 * MSS, "window back: {}", c.info().cwnd);
    assert_eq!(c.info().ssthresh, u32::MAX, "back in slow start");
    out(&mut c, ms(124));
    // The next late segment (14) costs no retransmission: the window is min_RTT/4 now.
    let before = c.stats().retransmits;
    c.handle(ms(130), &sack_ack(14, &[(15, 16)]), &[]);
    c.handle(ms(130), &sack_ack(14, &[(15, 19)]), &[]);
    let sent = index(&out(&mut c, ms(130)));
    assert!(sent.iter().all(|&i| i >= 30), "no retransmission: {sent:?}");
    c.handle(ms(131), &sack_ack(19, &[]), &[]);
    assert_eq!(c.stats().retransmits, before);
}

#[test]
fn a_recovery_that_ends_before_its_retransmission_left_is_undone() {
    // RFC 8985 6.2 marks segment 10 lost (DupThresh SACKed, no reordering seen yet), but its
    // retransmission has not left (it waits for the pacer) when the original arrives and the
    // ACK passes the recovery point: nothing was resent, so the originals all arrived and the
    // reduction is undone (RFC 3522's test with no retransmission to compare, as Linux's
    // tcp_packet_delayed without a retrans_stamp).
    let mut c = grown(30);
    assert_eq!(out(&mut c, ms(100)).len(), 20);
    for (to, t) in [(12, 110), (13, 111), (14, 112)] {
        c.handle(ms(t), &sack_ack(10, &[(11, to)]), &[]);
    }
    assert_eq!((c.stats().rack_losses, c.stats().fast_recoveries), (1, 1));
    assert!(c.info().cwnd < 20 * MSS);
    // Nothing polled: the retransmission is still queued when everything is acknowledged.
    c.handle(ms(113), &sack_ack(30, &[]), &[]);
    assert_eq!((c.stats().undos, c.stats().retransmits), (1, 0));
    assert!(c.info().cwnd >= 20 * MSS, "window back: {}", c.info().cwnd);
    assert_eq!(c.info().ssthresh, u32::MAX, "back in slow start");
    let sent = index(&out(&mut c, ms(113)));
    assert!(sent.iter().all(|&i| i >= 30), "nothing resent: {sent:?}");
}

#[test]
fn timestamps_undo_a_spurious_fast_retransmit_without_waiting_for_a_dsack() {
    // RFC 3522 (Linux's tcp_packet_delayed): the ACK that ends recovery echoes a timestamp
    // older than the first retransmission, so it was sent for an original: undo at once.
    let mut c = ts_sender();
    c.send(&vec![1u8; (14 * TS_SEG) as usize]);
    assert_eq!(out(&mut c, ms(0)).len(), 10);
    // Segment 0 (TSval 1000) is late; 1, 2, 3 SACKed, echoing its TSval (TS.Recent stays).
    for (to, t) in [(2, 10), (3, 11), (4, 12)] {
        c.handle(ms(t), &ts_ack(0, (1, to), 101, 1000), &[]);
    }
    let resent = out(&mut c, ms(12));
    assert_eq!(resent.iter().map(|(h, _)| h.seq).collect::<Vec<_>>(), [SeqNum(ISS + 1)], "fast retransmit");
    assert_eq!(resent[0].0.options.timestamps.map(|t| t.0), Some(1012));
    assert!(c.info().ssthresh < u32::MAX);
    // The original arrives: the ACK echoes its TSval 1000, older than 1012.
    c.handle(ms(13), &ts_ack(4, (0, 0), 102, 1000), &[]);
    assert_eq!(c.stats().undos, 1);
    assert_eq!(c.info().ssthresh, u32::MAX);
}

#[test]
fn f_rto_finds_a_spurious_timeout() {
    // RFC 5682 3.1 with SACK (Linux's tcp_process_loss): after the timeout's retransmission,
    // an ACK of data sent only once before the timeout shows not all was lost: the timeout was
    // spurious (a delay spike), the window comes back and nothing else is resent.
    let mut c = grown(10);
    // Segments 10 to 19 leave at 100 ms, SRTT 10 ms, RTO 210 ms.
    assert_eq!(out(&mut c, ms(100)).len(), 10);
    // No ACK for a while: the probe (2 SRTT) resends the last segment, then the RTO fires.
    let probe = run_until(&mut c, ms(120));
    assert_eq!(index(&probe.into_iter().map(|(_, h, p)| (h, p)).collect::<Vec<_>>()), [19]);
    let rto_at = ms(330);
    let resent = run_until(&mut c, rto_at);
    assert_eq!((resent.len(), resent[0].0), (1, rto_at));
    assert_eq!(c.stats().timeouts, 1);
    assert_eq!(c.info().cwnd, MSS, "the loss window");
    // The delayed ACKs arrive: segments 10 (resent) to 14 (sent once) acknowledged.
    let t = rto_at + Duration::from_millis(1);
    c.handle(t, &sack_ack(15, &[]), &[]);
    assert_eq!((c.stats().spurious_rtos, c.stats().undos), (1, 1));
    assert!(c.info().cwnd >= 20 * MSS);
    // Nothing is resent: 15 to 19 are in flight after all.
    assert!(index(&out(&mut c, t)).iter().all(|&i| i >= 20));
}

#[test]
fn a_tail_loss_probe_that_repairs_a_loss_reduces_the_window_once() {
    // RFC 8985 7.4.2 (Linux's tcp_process_tlp_ack): the probe resent the last segment and an
    // ACK beyond it arrives without a DSACK for it: it repaired a loss, so the window is
    // reduced once (no fast recovery, no more retransmissions). With a DSACK for the probe,
    // nothing was lost: no reduction.
    for dsack in [false, true] {
        let mut c = grown(0);
        c.send(&vec![3u8; 4 * MSS as usize]);
        // Segments 10 to 13 at 100 ms; 13 is lost, 12 is late.
        assert_eq!(out(&mut c, ms(100)).len(), 4);
        c.handle(ms(110), &sack_ack(12, &[]), &[]);
        // Two segments in flight: PTO = 2 SRTT = 20 ms.
        let probe = run_until(&mut c, ms(130));
        assert_eq!(probe.iter().map(|(t, h, _)| (*t, h.seq)).collect::<Vec<_>>(), [(ms(130), SeqNum(ISS + 1 + 13 * MSS))]);
        assert_eq!(c.stats().loss_probes, 1);
        // More data goes out, and the ACK covers it.
        c.send(&vec![4u8; MSS as usize]);
        assert_eq!(index(&out(&mut c, ms(135))), [14]);
        let cwnd = c.info().cwnd;
        let mut ack = sack_ack(15, &[]);
        if dsack {
            ack.options.sack.push(SeqNum(ISS + 1 + 13 * MSS), SeqNum(ISS + 1 + 14 * MSS));
        }
        c.handle(ms(145), &ack, &[]);
        if dsack {
            assert_eq!(c.stats().tlp_recoveries, 0);
            assert!(c.info().cwnd >= cwnd);
        } else {
            assert_eq!(c.stats().tlp_recoveries, 1);
            let ssthresh = cwnd * 7 / 10;
            assert_eq!(c.info().ssthresh, ssthresh, "reduced once");
            assert!((ssthresh..ssthresh + MSS).contains(&c.info().cwnd));
        }
        assert_eq!((c.stats().fast_recoveries, c.stats().retransmits), (0, 1));
    }
}

#[test]
fn duplicates_are_reported_as_dsack_blocks_once() {
    // RFC 2883 4: a segment that arrives twice is reported in the first SACK block of the ACK
    // it prompts (below the cumulative ACK, or inside the block that holds it), once.
    let mut c = sack_sender();
    c.handle(ms(1), &peer(0, 0), b"0123456789");
    out(&mut c, ms(50));
    // A duplicate below RCV.NXT, partly: [5, 10) again with [10, 12) new.
    c.handle(ms(60), &peer(5, 0), b"56789ab");
    let (h, _) = one(&mut c, ms(60));
    assert_eq!(h.options.sack.as_slice(), &[(SeqNum(IRS + 6), SeqNum(IRS + 11))]);
    // Out of order, then that segment again: DSACK first, then its block.
    c.handle(ms(61), &peer(20, 0), b"klm");
    out(&mut c, ms(61));
    c.handle(ms(62), &peer(20, 0), b"klm");
    let (h, _) = one(&mut c, ms(62));
    let block = (SeqNum(IRS + 21), SeqNum(IRS + 24));
    assert_eq!(h.options.sack.as_slice(), &[block, block]);
    // The next ACK reports it no more.
    c.handle(ms(63), &peer(12, 0), b"cdefghij");
    let acks = out(&mut c, ms(63));
    assert!(acks.iter().all(|(h, _)| h.options.sack.as_slice().iter().all(|&b| b != (SeqNum(IRS + 6), SeqNum(IRS + 11)))));
    // A whole segment again, entirely below RCV.NXT (a retransmission that followed its late
    // original): every copy is answered at once with its DSACK, not rate-limited like
    // challenge ACKs (as Linux's tcp_send_dupack).
    for i in 0..20 {
        c.handle(ms(64) + Duration::from_micros(i), &peer(12, 0), b"cdefghij");
        let (h, _) = one(&mut c, ms(64) + Duration::from_micros(i));
        assert_eq!(h.options.sack.as_slice()[0], (SeqNum(IRS + 13), SeqNum(IRS + 21)), "copy {i}");
    }
    // Without SACK, no DSACK.
    let mut c = established();
    c.handle(ms(1), &peer(0, 0), b"0123");
    c.handle(ms(2), &peer(0, 0), b"0123");
    let (h, _) = one(&mut c, ms(2));
    assert!(h.options.sack.is_empty());
}

#[test]
fn the_handshake_ack_times_the_first_probe_not_the_initial_rto() {
    // RFC 7323 4.1 (as Linux's tcp_synack_rtt_meas for a syncookie): XDP's SYN-ACK left at
    // 0 ms with its TSval (options in the low 6 bits, engine_common::cookie::ts_encode); the
    // ACK echoing it arrives at 40 ms: an RTT sample of 40 to 103 ms, so the first tail-loss
    // probe leaves about 2 SRTT after the data, not RFC 6298 2.1's 1 s. Without the echo
    // (TSecr 0) there is no sample and the probe waits the initial RTO.
    let offset = 77_000;
    let synack_tsval = engine_common::cookie::ts_encode(0, offset, Some(7), true, false);
    let f = HandshakeFacts { flags: FACT_SACK | FACT_TS, ts_recent: 500, ts_offset: offset, ..facts() };
    let first_resend = |ecr: u32| {
        let mut ack = peer(0, 0);
        ack.options.timestamps = Some((500, ecr));
        let accepted = ms(40);
        let config = Arc::new(Config { nagle: false, pacing: false, ..config() });
        let mut c = Connection::accept(accepted, config, &f, local(), remote(), &ack, &[]).unwrap();
        let srtt = c.info().srtt;
        c.send(&vec![1u8; 5 * 1448]);
        assert_eq!(out(&mut c, accepted).len(), 5);
        let resent = run_until(&mut c, secs(3));
        (srtt, resent[0].0.saturating_duration_since(accepted))
    };
    let (srtt, probe) = first_resend(synack_tsval);
    let sample = Duration::from_millis(u64::from(offset + 40 - synack_tsval));
    assert!((Duration::from_millis(40)..=Duration::from_millis(103)).contains(&sample), "{sample:?}");
    assert_eq!(srtt, Some(sample));
    assert!(probe <= 2 * sample + Duration::from_millis(200), "first probe after {probe:?}");
    let (srtt, probe) = first_resend(0);
    assert_eq!(srtt, None);
    assert!(probe >= Duration::from_secs(1), "first probe after {probe:?}");
}

#[test]
fn a_hole_its_late_original_filled_shows_the_path_reorders() {
    // The original of a fast-retransmitted segment fills its hole (the partial ACK echoes its
    // timestamp, older than the retransmission's): the path reorders (as Linux's
    // tcp_try_undo_partial, which checks reordering there), though RFC 8985 6.2 step 3 cannot
    // see it in a retransmitted segment and the DSACK comes a round trip later. The next
    // late segment waits out RACK's reordering window instead of being resent.
    let mut c = ts_sender();
    let ack = |acked: u32, sacked: (u32, u32), ecr: u32| ts_ack(acked, sacked, 101, ecr);
    c.send(&vec![1u8; (20 * TS_SEG) as usize]);
    assert_eq!(out(&mut c, ms(0)).len(), 10);
    // Segment 0 is late: 1 to 3 SACKed, the third leaves no reordering window (none seen).
    for (to, t) in [(2, 10), (3, 10), (4, 10)] {
        c.handle(ms(t), &ack(0, (1, to), 1000), &[]);
    }
    let resent = out(&mut c, ms(10));
    assert_eq!(resent[0].0.seq, SeqNum(ISS + 1), "fast retransmit");
    assert_eq!(c.stats().fast_recoveries, 1);
    // Segment 0's original arrives: the partial ACK echoes its TSval (1000 < 1010).
    c.handle(ms(11), &ack(4, (0, 0), 1000), &[]);
    assert_eq!(c.stats().undos, 1);
    out(&mut c, ms(11));
    // Segment 4 is late too: 5 to 7 SACKed 1 ms later. Not lost within min_RTT/4.
    for (to, t) in [(6, 12), (7, 12), (8, 12)] {
        c.handle(ms(t), &ack(4, (5, to), 1000), &[]);
    }
    let sent = out(&mut c, ms(12));
    assert!(sent.iter().all(|(h, _)| h.seq != SeqNum(ISS + 1 + 4 * TS_SEG)), "segment 4 not resent");
    c.handle(ms(13), &ack(8, (0, 0), 1000), &[]);
    assert_eq!((c.stats().fast_recoveries, c.stats().retransmits), (1, 1));
}

#[test]
fn blocks_newly_sacked_by_one_ack_are_not_reordering_whatever_their_order() {
    // A receiver lists the block it changed last first (RFC 2018 4), so one ACK covering two
    // new arrivals (a compressed or lost ACK before it) lists the higher block first. Taken in
    // that order, the lower block's segments would look delivered below the highest delivered
    // (RFC 8985 6.2 step 3) and the path would be taken to reorder, every later loss waiting
    // out min_RTT/4 more. Within one ACK delivery has no order: blocks are taken in sequence
    // order, as Linux's tcp_sacktag_write_queue sorts them.
    let mut c = grown(10);
    // Segments 10 to 19 leave at 100 ms (min_RTT and SRTT 10 ms); 10 and 15 are lost.
    assert_eq!(index(&out(&mut c, ms(100))), (10..20).collect::<Vec<_>>());
    c.handle(ms(110), &sack_ack(10, &[(11, 13)]), &[]);
    // 13, 14, 16 and 17 arrived; one ACK reports them, the block with 16 and 17 first.
    c.handle(ms(111), &sack_ack(10, &[(16, 18), (11, 15)]), &[]);
    // DupThresh SACKed and no reordering: both holes are lost at once and resent.
    let resent = index(&out(&mut c, ms(111)));
    assert_eq!(&resent[..2], &[10, 15], "{resent:?}");
    assert_eq!((c.stats().rack_losses, c.stats().fast_recoveries), (2, 1));
}
