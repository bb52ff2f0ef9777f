//! The SYN flood: an open-loop generator on the client CPU offers spoofed SYNs (15 million
//! distinct tuples) as fast as it can, more than any peer answers; SYN-ACKs are counted where
//! they arrive: an XDP program on each client veth counts and drops them. Meanwhile legitimate clients connect at a fixed
//! rate, each checked with an echo round trip: success and connect latency under overload.
//! Peers: synx, the kernel listener with tcp_syncookies=2, nftables synproxy in front of it,
//! and the kernel's XDP cookies (the kernel helper in XDP, nftables synproxy for the ACKs). The kernel's ordinary rows keep the default syncookies; only this group sets 2.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
};

use super::{CpuWindow, measured};
use crate::bench::{
    Collector, Ctx, Outcome, Rig, Side,
    load::{FLOOD_DISTINCT_TUPLES, flood_frames, flood_generator_note, spawn_flood, spawn_tool, tool_json},
    peers::{NftSynproxy, XdpSynproxy},
    rig::{ECHO, moved, nic_stats, set_sysctl},
    schedule, spec, targets,
};

/// Legitimate connects per second during the flood.
pub const LEGIT_RATE: f64 = 200.0;
/// A legitimate connect (with its echo round trip) that takes longer failed: Linux's SYN
/// retransmissions come at 1 s and 3 s, so this counts one lost SYN as slow, two as failed.
pub const LEGIT_TIMEOUT_SECS: f64 = 3.0;
/// The MSS both synproxies announce (the veth's MTU less headers, as synx announces).
const MSS: u16 = 1460;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Synx,
    Kernel,
    NftSynproxy,
    XdpSynproxy,
}

impl Peer {
    fn side(self) -> Side {
        match self {
            Peer::Synx => Side::Synx,
            _ => Side::Kernel,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Peer::Synx => targets::SYNX,
            Peer::Kernel => targets::KERNEL,
            Peer::NftSynproxy => targets::KERNEL_NFT_SYNPROXY,
            Peer::XdpSynproxy => targets::KERNEL_XDP_SYNPROXY,
        }
    }
}

/// The group's rows; `suffix` tells the multi-queue ones apart.
pub fn specs(suffix: &str, secs: f64) -> Vec<crate::bench::RowSpec> {
    let n = |s: &str| format!("syn_flood_{s}{suffix}");
    vec![
        spec(n("synacks_per_cpu_s"), "SYN-ACK/server CPU-s", true, "SYN-ACKs counted where they arrive (an XDP sink on the client veth) per second of server CPU busy time"),
        spec(n("synack_rate"), "SYN-ACK/s", true, format!("SYN-ACKs arriving at the client, over {secs} s")),
        spec(n("offered_rate"), "SYN/s", true, format!("spoofed SYNs the generator sent (open loop, {FLOOD_DISTINCT_TUPLES} distinct tuples)")),
        spec(n("server_cpu_pct"), "% of server CPUs", false, "server CPUs' busy time during the flood"),
        spec(n("answered_pct"), "% of SYNs", true, "SYN-ACKs arrived per SYN offered: below 100, the offer overloaded the peer (or veth dropped)"),
        spec(n("legit_success"), "%", true, format!("legitimate connects ({LEGIT_RATE}/s, open loop) established and echoed within {LEGIT_TIMEOUT_SECS} s")),
        spec(n("legit_connect_p50"), "ms", false, "legitimate connect latency, from connect() to established"),
        spec(n("legit_connect_p99"), "ms", false, ""),
    ]
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    ctx.describe_peer(
        targets::KERNEL_NFT_SYNPROXY,
        format!("the kernel peer behind {}", NftSynproxy::describe(ECHO, MSS)),
    );
    ctx.describe_peer(targets::KERNEL_XDP_SYNPROXY, XdpSynproxy::describe().to_string());
    let rig = ctx.rig()?;
    let kernel_server_ns = &rig.kernel_net.server;
    let old_cookies = set_sysctl(kernel_server_ns, "net.ipv4.tcp_syncookies", "2")?;
    // The kernel's client veth without TSO: veth then hands its segments to the server veth's
    // NAPI ring, the one the flood fills, as segments share a NIC's receive ring; with TSO on
    // they would bypass it through the backlog queue. synx's client veth has TSO off anyway (its
    // peer runs XDP). Restored after the group.
    let client_if = rig.kernel_net.client_if.clone();
    rig.kernel_net.client.exec("ethtool", &["-K", &client_if, "tso", "off"])?;
    rig.note("SYN-flood rows: the kernel's client veth runs with TSO off (legitimate segments share the server's receive ring with the flood); net.ipv4.tcp_syncookies=2 on the kernel's server");
    rig.flood_sinks(true)?;
    rig.note("SYN-flood rows: frames to the flood's sources are counted and dropped by an XDP program on each client end (synx_bench_sink)");
    let peers = [Peer::Synx, Peer::Kernel, Peer::NftSynproxy, Peer::XdpSynproxy];
    let mut c = Collector::new("syn_flood", specs("", plan.flood_secs));
    let mut details = vec![];
    for (p, warmup) in schedule(&peers, plan.rounds, true) {
        let secs = if warmup { plan.warmup_secs } else { plan.flood_secs };
        let o = round(rig, p, secs, &[plan.cpus.client[0]], &plan.cpus.client);
        details.push(c.record(p.name(), warmup, o));
    }
    let _ = rig.flood_sinks(false);
    let _ = rig.kernel_net.client.exec("ethtool", &["-K", &client_if, "tso", "on"]);
    let _ = set_sysctl(&rig.kernel_net.server, "net.ipv4.tcp_syncookies", &old_cookies);
    ctx.push(c.finish(), details);
    Ok(())
}

/// One flood round against `p`: a generator on each of `gen_cpus`, the legitimate clients on
/// `client_cpus`.
pub fn round(rig: &mut Rig, p: Peer, secs: f64, gen_cpus: &[usize], client_cpus: &[usize]) -> Outcome {
    let side = p.side();
    let _proxy = match p {
        Peer::NftSynproxy | Peer::XdpSynproxy => match NftSynproxy::install(&rig.kernel_net.server, ECHO, MSS) {
            Ok(x) => Some(x),
            Err(e) => return Outcome::failed(format!("nftables synproxy: {e:#}")),
        },
        _ => None,
    };
    // The server veth's NAPI is rebuilt by the attachment: thread and pin it again.
    let xdp = match p {
        Peer::XdpSynproxy => {
            let net = &rig.kernel_net;
            let attached = XdpSynproxy::attach(&net.server, &rig.tools, &net.server_if, SocketAddr::new(net.server_v4.into(), ECHO))
                .and_then(|x| rig.rethread_napi(Side::Kernel, false).map(|()| x));
            match attached {
                Ok(x) => Some(x),
                Err(e) => return Outcome::failed(format!("XDP synproxy: {e:#}")),
            }
        }
        _ => None,
    };
    let sent_counter = |rig: &Rig| -> Option<u64> {
        match side {
            Side::Synx => rig.daemon().ok()?.counter("xdp_syn_cookie_sent").ok(),
            Side::Kernel => {
                let out = rig.kernel_net.server.exec("nstat", &["-az", "TcpExtSyncookiesSent"]).ok()?;
                out.lines().find(|l| l.starts_with("TcpExtSyncookiesSent"))?.split_whitespace().nth(1)?.parse().ok()
            }
        }
    };
    // Where offered SYNs and their SYN-ACKs went missing: both veths' own counters (a full
    // receive ring shows as the sender's xdp_xmit_errors, a refused XDP_TX as the server's
    // xdp_tx_errors) and, for synx, its own counters, as moved over the round.
    let counters = |rig: &Rig| -> anyhow::Result<[BTreeMap<String, u64>; 3]> {
        let net = rig.net(side);
        let engine = match side {
            Side::Synx => rig.daemon()?.stats()?.as_object().into_iter().flatten().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect(),
            Side::Kernel => BTreeMap::new(),
        };
        Ok([nic_stats(&net.client, &net.client_if)?, nic_stats(&net.server, &net.server_if)?, engine])
    };
    // Offered, arrived, the legitimate clients' report, the CPU window, the server's own count,
    // the counters moved, the generators' reports.
    type Round = (u64, u64, serde_json::Value, CpuWindow, Option<u64>, serde_json::Value, Vec<serde_json::Value>);
    let r = (|| -> anyhow::Result<Round> {
        let dst = SocketAddrV4::new(rig.net(side).server_v4, ECHO);
        let counted_before = counters(rig)?;
        let before = rig.flood_arrivals(side)?;
        let sent_before = sent_counter(rig);
        let ((frames, legit, generators), cpu) = measured(rig, side, |rig| {
            let net = rig.net(side);
            let floods = gen_cpus.iter().map(|&cpu| spawn_flood(net, &rig.tools, cpu, dst, secs)).collect::<anyhow::Result<Vec<_>>>()?;
            let legit_args = ["connect-probe", "--addr", &dst.to_string(), "--rate", &LEGIT_RATE.to_string(), "--secs", &secs.to_string(), "--timeout", &LEGIT_TIMEOUT_SECS.to_string()].map(String::from);
            let legit = spawn_tool(&net.client, &rig.tools, client_cpus, &legit_args)?;
            let (mut frames, mut generators) = (0, vec![]);
            for f in floods {
                let (n, report) = flood_frames(f)?;
                frames += n;
                generators.push(report);
            }
            Ok((frames, legit, generators))
        })?;
        // The legitimate clients' last connects may still be retrying; the flood is over.
        let legit = tool_json(legit)?;
        let synacks = rig.flood_arrivals(side)? - before;
        let sent = sent_counter(rig).zip(sent_before).map(|(a, b)| a.saturating_sub(b));
        let counted = counters(rig)?;
        let [client, server, engine] = [0, 1, 2].map(|i| moved(&counted_before[i], &counted[i]));
        let paths = serde_json::json!({"client_veth": client, "server_veth": server, "synx": engine});
        Ok((frames, synacks, legit, cpu, sent, paths, generators))
    })();
    if let Some(x) = xdp {
        // Detached: the server veth's NAPI is rebuilt for GRO; thread and pin it again.
        drop(x);
        if let Err(e) = rig.rethread_napi(Side::Kernel, false) {
            return Outcome::failed(format!("after the XDP synproxy: {e:#}"));
        }
    }
    match r {
        Ok((frames, synacks, legit, cpu, sent, paths, generators)) => {
            for g in &generators {
                rig.note(flood_generator_note(g));
            }
            let failure = (synacks == 0).then(|| format!("no SYN-ACK arrived ({frames} SYNs offered)"));
            let pct = cpu.server_secs / cpu.wall_secs / rig.cpus.server.len() as f64 * 100.0;
            Outcome {
                values: vec![
                    Some(synacks as f64 / cpu.server_secs),
                    Some(synacks as f64 / secs),
                    Some(frames as f64 / secs),
                    Some(pct),
                    Some(100.0 * synacks as f64 / frames.max(1) as f64),
                    legit["success_pct"].as_f64(),
                    legit["connect_ms"]["p50"].as_f64(),
                    legit["connect_ms"]["p99"].as_f64(),
                ],
                failure,
                detail: serde_json::json!({
                    "offered": frames,
                    "synacks_arrived": synacks,
                    "synacks_sent_by_server_counter": sent,
                    "overloaded": frames > synacks,
                    "legit": legit,
                    "cpu": cpu.json(),
                    "counters_moved": paths,
                    "generators": generators,
                }),
            }
        }
        Err(e) => Outcome::failed(format!("{e:#}")),
    }
}
