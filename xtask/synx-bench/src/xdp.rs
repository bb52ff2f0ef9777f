//! The bench's XDP work, from synx's benchmark object (`synx-xdp-bench`, which `synx run` never
//! loads): the SYN-flood generator and the per-packet micro-benchmark.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Instant,
};

use anyhow::{bail, ensure};
use engine_common::maps::{BENCH_FRAME_LEN, DEFAULT_MAX_FLOWS};
use etherparse::{PacketBuilder, TcpOptionElement};
use synx::bpf::{
    BENCH_RESTORE_PROGRAM, BENCH_SYN_KERNEL_PROGRAM, BENCH_SYN_PROGRAM, XdpProgram, flood_template,
};

/// Which SYN-flood generator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    /// Live frames, or AF_PACKET if the kernel refuses live-frame mode.
    Auto,
    /// BPF_PROG_TEST_RUN's live-frame mode only.
    Live,
    /// AF_PACKET only (`crate::packet_flood`).
    AfPacket,
}

/// Spoofed SYNs out of `iface` for `secs` through BPF_PROG_TEST_RUN's live-frame mode (each
/// frame the program returns XDP_TX for leaves as an XDP frame: no socket, no skb), as fast as
/// the CPU makes them: open loop. Where the kernel refuses that mode (its first call fails) and
/// `generator` allows, the same frames go through AF_PACKET instead. Prints the frames sent
/// and the generator that sent them.
#[allow(clippy::too_many_arguments)]
pub fn flood(
    iface: &str,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    dst: SocketAddrV4,
    src_base: Ipv4Addr,
    sources: u32,
    secs: f64,
    generator: Generator,
) -> anyhow::Result<serde_json::Value> {
    let (frame, state) = flood_template(src_mac, dst_mac, dst, src_base, sources, false)?;
    if generator == Generator::AfPacket {
        return crate::packet_flood::flood(iface, &frame, src_base, sources, secs);
    }
    let mut state = Some(state);
    let mut engine = XdpProgram::load_bench(1024, 1460)?;
    const PER_CALL: u32 = 1 << 16;
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let made = match engine.flood(iface, &frame, state.take(), PER_CALL) {
            Ok(made) => made,
            Err(e) if frames == 0 && generator == Generator::Auto => {
                let mut v = crate::packet_flood::flood(iface, &frame, src_base, sources, secs)?;
                v["live_frames_refused"] = format!("{e:#}").into();
                return Ok(v);
            }
            Err(e) => return Err(e.into()),
        };
        ensure!(made == PER_CALL, "the flood program made {made} of {PER_CALL} frames");
        frames += u64::from(made);
    }
    Ok(serde_json::json!({ "generator": "xdp_live_frames", "frames": frames, "secs": start.elapsed().as_secs_f64() }))
}

/// The XDP synproxy peer (the benchmark object's `synx_bench_xdp_synproxy`) attached to
/// `iface` in front of `listen`, until stdin closes.
pub fn xdp_synproxy(iface: &str, listen: SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut e = XdpProgram::load_bench(1024, 1460)?;
    e.add_listener(listen, 0)?;
    e.attach_bench("synx_bench_xdp_synproxy", iface)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "attached synx_bench_xdp_synproxy to {iface} for {listen}")?;
    out.flush()?;
    drop(out);
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(e);
    Ok(())
}

/// The flood's wire end on `iface`: frames to `net`/`prefix` counted and dropped in XDP, the
/// rest passed. Prints `attached`, then the count for every line read on stdin, until EOF.
pub fn sink(iface: &str, net: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let mut e = XdpProgram::load_bench(1, 1460)?;
    e.attach_sink(iface, net, prefix)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "attached synx_bench_sink to {iface} for {net}/{prefix}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
        writeln!(out, "{}", e.sink_dropped()?)?;
        out.flush()?;
    }
    Ok(())
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const SERVER: [u8; 4] = [198, 18, 0, 1];
/// Sources of the flows the table holds (10.0.0.0 + i) and of the SYNs (10.128.0.0 + i: none
/// in the table, as a new connection's is not).
const FLOW_BASE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
const SYN_BASE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const CLIENT_PORT: u16 = 40000;
const PORT: u16 = 80;
/// Packets per timed call: the harness's own set-up and clock reads (about 90 ns a call here)
/// spread over them.
const REPEAT: u32 = 1000;
/// Distinct SYN sources a call's repeats cycle through.
const SYN_SOURCES: u32 = 65_536;

fn frame(src: Ipv4Addr, flags: impl Fn(etherparse::PacketBuilderStep<etherparse::TcpHeader>) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>, seq: u32, opts: &[TcpOptionElement], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]).ipv4(src.octets(), SERVER, 64).tcp(CLIENT_PORT, PORT, seq, 64240);
    let b = flags(b);
    let b = if opts.is_empty() { b } else { b.options(opts).expect("options fit") };
    let mut f = Vec::new();
    b.write(&mut f, payload).expect("frame");
    f
}

fn counter(e: &XdpProgram, name: &str) -> anyhow::Result<u64> {
    Ok(e.counters()?.into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).unwrap_or(0))
}

/// One timed call of `program` with `repeat` runs on `frame`: ns per run, after checking the
/// action and that `counter` grew by exactly `repeat` (every run took the path timed).
fn timed(e: &mut XdpProgram, program: &str, frame: &[u8], repeat: u32, action: u32, counts: &[&str]) -> anyhow::Result<f64> {
    let before: Vec<u64> = counts.iter().map(|c| counter(e, c)).collect::<anyhow::Result<_>>()?;
    let (got, _, t) = e.test_run_program(program, frame, repeat)?;
    ensure!(got == action, "{program} returned action {got}, not {action}");
    for (c, b) in counts.iter().zip(before) {
        let delta = counter(e, c)? - b;
        ensure!(delta == u64::from(repeat), "{program}: {c} grew by {delta} in {repeat} runs");
    }
    // The kernel reports the mean time per run.
    Ok(t.as_nanos() as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-packet cost of the XDP paths under BPF_PROG_TEST_RUN, with the flow table at the
/// daemon's default size holding `flows` flows, and every call's runs spread over many tuples
/// (the benchmark object's restore gives each run another source address).
pub fn micro(calls: u32, flows: u32) -> anyhow::Result<serde_json::Value> {
    ensure!(flows > 0 && flows < DEFAULT_MAX_FLOWS, "flows must be within the table's {DEFAULT_MAX_FLOWS}");
    let mut e = XdpProgram::load_bench(DEFAULT_MAX_FLOWS, 1460)?;
    let server = SocketAddr::from((SERVER, PORT));
    e.add_listener(server, 0)?;
    let table = e.flow_table();
    let start = Instant::now();
    for i in 0..flows {
        let client = SocketAddr::from((Ipv4Addr::from(u32::from(FLOW_BASE) + i), CLIENT_PORT));
        table.insert(server, client, i)?;
    }
    let fill_secs = start.elapsed().as_secs_f64();
    // A Linux client's SYN (74 bytes, the benchmark frame's size).
    let syn_opts = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(1, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    let syn = frame(SYN_BASE, |b| b.syn(), 1000, &syn_opts, &[]);
    // A segment of a known flow, padded with payload to the benchmark frame's size.
    let ts = [TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(2, 1)];
    let data = frame(FLOW_BASE, |b| b.ack(1), 1001, &ts, &[0x5a; 8]);
    ensure!(syn.len() == BENCH_FRAME_LEN && data.len() == BENCH_FRAME_LEN, "bench frames of {} and {} bytes", syn.len(), data.len());

    // SYN -> SYN-ACK: synx's cookie, and the kernel helper's; the restore alone subtracted
    // (signed: a difference below zero is shown as it is). Calls alternate ABBA.
    e.load_bench_programs(&syn)?;
    e.set_bench_vary(SYN_SOURCES)?;
    let (mut synx, mut kernel, mut restore) = (Vec::new(), Vec::new(), Vec::new());
    let sent = ["xdp_syn_cookie_sent"];
    for i in 0..calls {
        let r = timed(&mut e, BENCH_RESTORE_PROGRAM, &syn, REPEAT, XDP_TX, &[])?;
        let (a, b) = if i % 4 == 0 || i % 4 == 3 {
            let a = timed(&mut e, BENCH_SYN_PROGRAM, &syn, REPEAT, XDP_TX, &sent)?;
            (a, timed(&mut e, BENCH_SYN_KERNEL_PROGRAM, &syn, REPEAT, XDP_TX, &sent)?)
        } else {
            let b = timed(&mut e, BENCH_SYN_KERNEL_PROGRAM, &syn, REPEAT, XDP_TX, &sent)?;
            (timed(&mut e, BENCH_SYN_PROGRAM, &syn, REPEAT, XDP_TX, &sent)?, b)
        };
        synx.push(a - r);
        kernel.push(b - r);
        restore.push(r);
    }

    // A segment of a known flow, each run another of the table's flows: the lookup, then
    // the redirect to the queue's AF_XDP socket, which no socket is bound to here: the
    // redirect fails (counted) and the frame is dropped, so its delivery is not in the figure.
    e.load_bench_programs(&data)?;
    e.set_bench_vary(flows)?;
    let (mut flow, mut flow_restore) = (Vec::new(), Vec::new());
    let seen = ["xdp_flow_segment", "xdp_redirect_failed"];
    for _ in 0..calls {
        let r = timed(&mut e, BENCH_RESTORE_PROGRAM, &data, REPEAT, XDP_TX, &[])?;
        flow.push(timed(&mut e, BENCH_SYN_PROGRAM, &data, REPEAT, XDP_DROP, &seen)? - r);
        flow_restore.push(r);
    }
    e.set_bench_vary(0)?;
    if synx.is_empty() {
        bail!("no call ran");
    }

    // The final ACK of a handshake, on the program `synx run` attaches (its own object and
    // maps, the table filled alike): cookie validated, the tuple claimed in the table, then the
    // unbound redirect. One ACK per call (the claim is removed between calls, so each takes the
    // cookie path): the harness's own cost is in the figure, and beside it as the floor (a
    // program that only returns, timed the same way).
    let mut run = XdpProgram::load(DEFAULT_MAX_FLOWS, 1460)?;
    run.add_listener(server, 0)?;
    let run_table = run.flow_table();
    for i in 0..flows {
        run_table.insert(server, SocketAddr::from((Ipv4Addr::from(u32::from(FLOW_BASE) + i), CLIENT_PORT)), i)?;
    }
    let (action, synack, _) = run.test_run(&syn, 1)?;
    ensure!(action == XDP_TX, "the SYN got action {action}");
    let cookie = u32::from_be_bytes(synack[38..42].try_into()?);
    let ack = frame(SYN_BASE, |b| b.ack(cookie.wrapping_add(1)), 1001, &[], &[]);
    let client = SocketAddr::from((SYN_BASE, CLIENT_PORT));
    let (mut ack_ns, mut floor) = (Vec::new(), Vec::new());
    let valid = ["xdp_cookie_ack_valid", "xdp_redirect_failed"];
    for _ in 0..calls * 10 {
        ack_ns.push(timed(&mut run, "synx_xdp", &ack, 1, XDP_DROP, &valid)?);
        run_table.remove(server, client)?;
        floor.push(timed(&mut e, "synx_peer_pass", &ack, 1, XDP_PASS, &[])?);
    }
    Ok(serde_json::json!({
        "flows": flows,
        "table_entries": DEFAULT_MAX_FLOWS,
        "table_fill_secs": fill_secs,
        "calls": calls,
        "repeat": REPEAT,
        "syn_sources": SYN_SOURCES,
        "rows": [
            { "name": "xdp_synack_ns", "synx_ns": median(synx), "kernel_ns": median(kernel), "restore_ns": median(restore) },
            { "name": "xdp_flow_segment_to_unbound_redirect_ns", "synx_ns": median(flow), "restore_ns": median(flow_restore) },
            { "name": "xdp_cookie_ack_single_call_ns", "synx_ns": median(ack_ns) },
            { "name": "xdp_test_run_floor_ns", "synx_ns": median(floor) },
        ],
    }))
}
