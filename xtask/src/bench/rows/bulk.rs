//! Bulk throughput over one connection: into discard (the server receives) and through echo
//! (the server sends back everything it receives), against the kernel with its full offloads.

use super::{counters_moved, measured, peer, ring_counters};
use crate::bench::{
    Collector, Ctx, Outcome, Side,
    load::run_tool,
    rig::{DISCARD, ECHO},
    schedule, spec,
};

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let rig = ctx.rig()?;
    let mib = plan.bulk_bytes >> 20;
    let mut rows = vec![];
    let mut details = vec![];
    for (name, echo, note) in [
        ("bulk_rx", false, format!("{mib} MiB into discard over one connection")),
        ("bulk_tx", true, format!("{mib} MiB through echo over one connection (the server sends what it receives; both directions load the link)")),
    ] {
        let mut c = Collector::new("bulk", vec![spec(name, "Gbit/s", true, note), spec(if echo { "bulk_tx_server_cpu_per_gb" } else { "bulk_rx_server_cpu_per_gb" }, "server CPU s/GB", false, "server CPU busy time per GB of payload")]);
        for (side, warmup) in schedule(&[Side::Synx, Side::Kernel], plan.rounds, true) {
            let bytes = if warmup { plan.bulk_bytes / 4 } else { plan.bulk_bytes };
            let rings = ring_counters(rig, side);
            let r = measured(rig, side, |rig| {
                let port = if echo { ECHO } else { DISCARD };
                let mut args = vec!["bulk".to_string(), "--addr".into(), rig.addr(side, port).to_string(), "--bytes".into(), bytes.to_string()];
                if echo {
                    args.push("--echo".into());
                }
                run_tool(&rig.net(side).client, &rig.tools, &plan.cpus.client, &args)
            });
            let rings = counters_moved(rig, side, rings);
            let o = match r {
                Ok((v, w)) => Outcome {
                    values: vec![v["gbit_s"].as_f64(), Some(w.server_secs / (bytes as f64 / 1e9))],
                    failure: None,
                    detail: serde_json::json!({ "generator": v, "cpu": w.json(), "synx_counters": rings }),
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
