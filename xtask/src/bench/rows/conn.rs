//! New connections per second: our closed-loop generator keeps 64 connections in flight, each
//! connect, one HTTP request with `Connection: close`, read to EOF, close (the server closes
//! first and holds TIME_WAIT). Server CPU per connection is the server CPUs' busy time. One
//! client thread on one CPU keeps up with neither server: the client's CPU per connection and
//! the frames each way per connection (counted on the client veth) say what the rate is made
//! of.

use anyhow::Context as _;

use super::{measured, peer};
use crate::bench::{
    Collector, Ctx, Outcome, Rig, Side,
    load::{failures_line, run_tool},
    rig::HTTP,
    schedule, spec,
};

pub const CONCURRENCY: usize = 64;

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let rig = ctx.rig()?;
    let mut c = Collector::new(
        "conn_rate",
        vec![
            spec("conn_rate", "conn/s", true, format!("connect, 1 request, read to EOF, close; {CONCURRENCY} in flight, one client thread")),
            spec("conn_cpu_per_conn", "us server CPU/conn", false, "busy time of the server CPU (process, its veth's NAPI and softirqs) per connection"),
            spec("conn_client_cpu_pct", "% of client CPU", false, "how busy the client CPU was: near 100 means the client is the limit"),
            spec("conn_client_cpu_per_conn", "us client CPU/conn", false, "busy time of the client CPU (generator, its veth's NAPI and softirqs) per connection: with the client CPU near 100%, the rate is the inverse of this"),
            spec("conn_frames_to_client", "frames/conn", false, "frames the server sent per connection (the client veth's received packets)"),
            spec("conn_frames_from_client", "frames/conn", false, "frames the client sent per connection"),
        ],
    );
    let mut details = vec![];
    for (side, warmup) in schedule(&[Side::Synx, Side::Kernel], plan.rounds, true) {
        let secs = if warmup { plan.warmup_secs } else { plan.conn_secs };
        details.push(c.record(peer(side), warmup, round(rig, side, secs, &plan.cpus.client)));
    }
    ctx.push(c.finish(), details);
    Ok(())
}

pub fn round(rig: &mut Rig, side: Side, secs: f64, client_cpus: &[usize]) -> Outcome {
    let net = rig.net(side);
    let frames_before = link_packets(&net.client, &net.client_if);
    // Every counter, the ring counters for the round's per-frame work and all that moved for the
    // round that fails: which of synx's paths a lost connection took.
    let before = super::all_counters(rig, side);
    let r = measured(rig, side, |rig| {
        let args = ["conn-rate", "--addr", &rig.addr(side, HTTP).to_string(), "--secs", &secs.to_string(), "--concurrency", &CONCURRENCY.to_string()];
        run_tool(&rig.net(side).client, &rig.tools, client_cpus, &args.map(String::from))
    });
    let (rings, all) = super::ring_and_all_counters_moved(rig, side, before);
    let net = rig.net(side);
    // (received, sent) by the client veth during the round.
    let frames = match (frames_before, link_packets(&net.client, &net.client_if)) {
        (Ok(a), Ok(b)) => Some((b.0.saturating_sub(a.0) as f64, b.1.saturating_sub(a.1) as f64)),
        _ => None,
    };
    match r {
        Ok((v, w)) => {
            let done = v["completed"].as_u64().unwrap_or(0) as f64;
            let secs = v["secs"].as_f64().unwrap_or(f64::NAN);
            let failure = match (failures_line(&v), done) {
                (Some(f), _) => Some(format!("{f} (of {} attempted)", v["attempted"])),
                (None, 0.0) => Some("no connection completed".into()),
                (None, _) => None,
            };
            let client_pct = w.client_secs / w.wall_secs / client_cpus.len() as f64 * 100.0;
            let per_conn = |x: f64| (done > 0.0).then(|| x / done);
            Outcome {
                values: vec![
                    Some(done / secs),
                    Some(w.server_secs / done * 1e6),
                    Some(client_pct),
                    per_conn(w.client_secs * 1e6),
                    frames.and_then(|f| per_conn(f.0)),
                    frames.and_then(|f| per_conn(f.1)),
                ],
                failure,
                detail: serde_json::json!({ "generator": v, "cpu": w.json(), "client_veth_frames_rx_tx": frames, "synx_counters": rings, "synx_counters_moved": all }),
            }
        }
        Err(e) => Outcome::failed(format!("{e:#}")),
    }
}

/// Packets `iface` in `ns` received and sent so far (its counters, as `ip -s link` shows them).
fn link_packets(ns: &testbed::Netns, iface: &str) -> anyhow::Result<(u64, u64)> {
    let out = ns.exec("ip", &["-s", "-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let n = |dir: &str| v[0]["stats64"][dir]["packets"].as_u64().with_context(|| format!("no {dir} packets for {iface}: {out}"));
    Ok((n("rx")?, n("tx")?))
}
