//! HTTP over keep-alive connections: closed loop with wrk at 1, 64 and 1000 connections
//! (req/s, p50, p99; any socket error or non-2xx response fails the round), and at a fixed
//! offered rate of half the kernel's capacity with our own generator, whose latency runs from
//! each request's scheduled time (corrected for coordinated omission, as wrk2 does).

use super::{counters_moved, measured, peer, ring_counters};
use crate::bench::{
    Collector, Ctx, Outcome, Side,
    load::{failures_line, run_tool, wrk},
    rig::HTTP,
    schedule, spec, targets,
};

pub const CONCURRENCIES: [u32; 3] = [1, 64, 1000];
/// Connections of the fixed-rate rows.
pub const FIXED_RATE_CONNS: usize = 64;

pub fn closed_loop(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let rig = ctx.rig()?;
    let mut rows = vec![];
    let mut details = vec![];
    for conns in CONCURRENCIES {
        let name = |what: &str| format!("http_{what}_c{conns}");
        let mut c = Collector::new(
            "http",
            vec![
                spec(name("rps"), "req/s", true, format!("wrk, {conns} keep-alive connections, {} s", plan.http_secs)),
                spec(name("p50"), "ms", false, "wrk --latency"),
                spec(name("p99"), "ms", false, "wrk --latency"),
                spec(name("cpu_per_req"), "us server CPU/req", false, "server CPU busy time per request"),
            ],
        );
        for (side, warmup) in schedule(&[Side::Synx, Side::Kernel], plan.rounds, true) {
            let secs = if warmup { plan.warmup_secs.ceil() as u64 } else { plan.http_secs };
            let rings = ring_counters(rig, side);
            let r = measured(rig, side, |rig| {
                let url = format!("http://{}/", rig.addr(side, HTTP));
                wrk(&rig.net(side).client, &plan.cpus.client, &url, conns, secs)
            });
            let rings = counters_moved(rig, side, rings);
            let o = match r {
                Ok(((w, text), cpu)) => Outcome {
                    values: vec![Some(w.rps), Some(w.p50_ms), Some(w.p99_ms), Some(cpu.server_secs / w.requests.max(1) as f64 * 1e6)],
                    failure: (!w.errors.is_empty()).then(|| format!("wrk: {}", w.errors.join(", "))),
                    detail: serde_json::json!({ "wrk": text, "cpu": cpu.json(), "synx_counters": rings }),
                },
                Err(e) => Outcome::failed(format!("{e:#}")),
            };
            details.push(c.record(peer(side), warmup, o));
        }
        rows.extend(c.finish());
    }
    ctx.push(rows, details);
    Ok(())
}

/// The kernel's capacity: its best closed-loop req/s of this run, or a short wrk run now.
fn kernel_capacity(ctx: &mut Ctx) -> anyhow::Result<(f64, String)> {
    let best = ctx
        .report
        .rows
        .iter()
        .filter(|r| r.name.starts_with("http_rps_c"))
        .filter_map(|r| Some((r.side(targets::KERNEL)?.figure().ok()?, r.name.clone())))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((rps, row)) = best {
        return Ok((rps, format!("the kernel's {row} of this run")));
    }
    let client = ctx.plan.cpus.client.clone();
    let rig = ctx.rig()?;
    let url = format!("http://{}/", rig.addr(Side::Kernel, HTTP));
    let (w, _) = wrk(&rig.net(Side::Kernel).client, &client, &url, 64, 5)?;
    anyhow::ensure!(w.errors.is_empty() && w.rps > 0.0, "measuring the kernel's capacity: {:?}", w.errors);
    Ok((w.rps, "a 5 s wrk run at c64 against the kernel".into()))
}

pub fn fixed_rate(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let (capacity, from) = kernel_capacity(ctx)?;
    let rate = (capacity / 2.0).round();
    let rig = ctx.rig()?;
    let note = format!(
        "{rate} req/s offered (half of {from}, {capacity:.0} req/s) over {FIXED_RATE_CONNS} connections for {} s; latency from each request's scheduled send time",
        plan.http_secs
    );
    let mut c = Collector::new(
        "http_fixed_rate",
        vec![
            spec("http_fixed_p50", "ms", false, note),
            spec("http_fixed_p99", "ms", false, ""),
            spec("http_fixed_p999", "ms", false, ""),
            spec("http_fixed_achieved", "req/s", true, "responses per second received of the offered rate"),
        ],
    );
    let mut details = vec![];
    for (side, warmup) in schedule(&[Side::Synx, Side::Kernel], plan.rounds, true) {
        let secs = if warmup { plan.warmup_secs } else { plan.http_secs as f64 };
        let r = measured(rig, side, |rig| {
            let args = [
                "http-rate",
                "--addr",
                &rig.addr(side, HTTP).to_string(),
                "--conns",
                &FIXED_RATE_CONNS.to_string(),
                "--rate",
                &rate.to_string(),
                "--secs",
                &secs.to_string(),
                "--warmup",
                "1",
            ]
            .map(String::from);
            run_tool(&rig.net(side).client, &rig.tools, &plan.cpus.client, &args)
        });
        let o = match r {
            Ok((v, cpu)) => {
                let l = &v["latency_ms"];
                let non_2xx = v["non_2xx"].as_u64().unwrap_or(0);
                let failure = match (failures_line(&v), non_2xx) {
                    (Some(f), _) => Some(f),
                    (None, 0) => None,
                    (None, n) => Some(format!("{n} non-2xx responses")),
                };
                Outcome {
                    values: vec![l["p50"].as_f64(), l["p99"].as_f64(), l["p999"].as_f64(), v["achieved_rate"].as_f64()],
                    failure,
                    detail: serde_json::json!({ "generator": v, "cpu": cpu.json() }),
                }
            }
            Err(e) => Outcome::failed(format!("{e:#}")),
        };
        details.push(c.record(peer(side), warmup, o));
    }
    ctx.push(c.finish(), details);
    Ok(())
}
