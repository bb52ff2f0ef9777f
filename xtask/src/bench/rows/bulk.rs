//! Bulk throughput over one connection: into discard (the server receives) and through echo
//! (the server sends back everything it receives), against the kernel with its full offloads.

use testbed::{mac_of, mac_text};

use super::{CpuWindow, counters_moved, measured, peer, ring_counters};
use crate::bench::{
    Collector, Ctx, Outcome, Rig, Side,
    load::run_tool,
    rig::{CpuTimes, DISCARD, ECHO, FLOOD_NET},
    schedule, spec, targets,
};

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let mib = plan.bulk_bytes >> 20;
    let mut rows = vec![];
    let mut details = vec![];
    for (name, echo, note) in [
        ("bulk_rx", false, format!("{mib} MiB into discard over one connection")),
        ("bulk_tx", true, format!("{mib} MiB through echo over one connection (the server sends what it receives; both directions load the link)")),
    ] {
        if !ctx.wants_row("bulk", name) {
            continue;
        }
        let mut c = Collector::new("bulk", vec![spec(name, "Gbit/s", true, note), spec(if echo { "bulk_tx_server_cpu_per_gb" } else { "bulk_rx_server_cpu_per_gb" }, "server CPU s/GB", false, "server CPU busy time per GB of payload")]);
        let napi_row = if echo { "bulk_tx_napi_ns_per_frame" } else { "bulk_rx_napi_ns_per_frame" };
        let mut napi = Collector::new("bulk", vec![spec(napi_row, "server CPU ns/frame", false, format!("synx's side of {name}: what its server veth's NAPI thread ran per frame synx received (veth's copy of the client's skb, the XDP program, the copy into the UMEM), before synx's engine sees the frame"))]);
        let rig = ctx.rig()?;
        for (side, warmup) in schedule(&[Side::Synx, Side::Kernel], plan.rounds, true) {
            let bytes = if warmup { plan.bulk_bytes / 4 } else { plan.bulk_bytes };
            let rings = ring_counters(rig, side);
            let r = transfer(rig, side, bytes, echo, &plan.cpus.client);
            let rings = counters_moved(rig, side, rings);
            if side == Side::Synx {
                let o = match &r {
                    Ok((_, w)) => napi_per_frame(w, &rings),
                    Err(e) => Outcome::failed(format!("{e:#}")),
                };
                napi.record(peer(side), warmup, o);
            }
            let o = match r {
                Ok((v, w)) => Outcome {
                    values: values(&v, &w, bytes),
                    failure: None,
                    detail: serde_json::json!({ "generator": v, "cpu": w.json(), "synx_counters": rings }),
                },
                Err(e) => Outcome::failed(format!("{e:#}")),
            };
            details.push(c.record(peer(side), warmup, o));
        }
        rows.extend(c.finish());
        rows.extend(napi.finish());
    }
    ctx.push(rows, details);
    if ctx.wants_row("bulk", "bulk_tx_gso") {
        gso_pair(ctx)?;
    }
    if ctx.wants_row("bulk", "bulk_tx_xsk_floor") {
        xsk_tx_floor(ctx)?;
    }
    Ok(())
}

/// synx's bulk_tx with and without its segmentation offload (`--gso auto`, synx's default, and
/// `--gso off`: every segment a frame through AF_XDP), beside the kernel's bulk_tx. synx's
/// client end runs no program, so its server veth keeps TSO and the offload is in use; the
/// three alternate (ABBA) as in `bulk_tx`, so the pair of synx figures is the offload's effect
/// alone.
fn gso_pair(ctx: &mut Ctx) -> anyhow::Result<()> {
    const FRAMES: &str = targets::SYNX_FRAMES;
    let (plan, synx_args) = (ctx.plan.clone(), ctx.synx_args.clone());
    let mib = plan.bulk_bytes >> 20;
    let note = format!("{mib} MiB through echo over one connection: `synx` with --gso auto (its default; the server veth has TSO), `{FRAMES}` with --gso off");
    let mut c = Collector::new(
        "bulk",
        vec![
            spec("bulk_tx_gso", "Gbit/s", true, note),
            spec("bulk_tx_gso_server_cpu_per_gb", "server CPU s/GB", false, "server CPU busy time per GB of payload in bulk_tx_gso"),
        ],
    );
    let rig = ctx.rig()?;
    let mut details = vec![];
    let mut running: Option<&str> = None;
    for (p, warmup) in schedule(&[targets::SYNX, FRAMES, targets::KERNEL], plan.rounds, true) {
        let side = if p == targets::KERNEL { Side::Kernel } else { Side::Synx };
        if side == Side::Synx && running != Some(p) {
            let mut args = synx_args.clone();
            args.extend(["--gso".into(), if p == FRAMES { "off" } else { "auto" }.into()]);
            rig.start_synx(&args);
            running = Some(p);
        }
        let bytes = if warmup { plan.bulk_bytes / 4 } else { plan.bulk_bytes };
        let rings = ring_counters(rig, side);
        let gso_before = gso_counters(rig, side);
        let r = transfer(rig, side, bytes, true, &plan.cpus.client);
        let rings = counters_moved(rig, side, rings);
        let gso = gso_counters(rig, side).zip(gso_before).map(|(a, b)| [0, 1, 2].map(|i| a[i].saturating_sub(b[i])));
        let o = match r {
            Ok((v, w)) => {
                // The offload must have been in use for `synx`, and not for `synx-frames`.
                let failure = match (p, gso) {
                    (targets::SYNX, Some([0, ..])) => Some("the offload sent no train (the server veth without TSO?)".to_string()),
                    (FRAMES, Some([t, ..])) if t > 0 => Some(format!("{t} trains with --gso off")),
                    _ => None,
                };
                Outcome {
                    values: values(&v, &w, bytes),
                    failure,
                    detail: serde_json::json!({
                        "generator": v,
                        "cpu": w.json(),
                        "synx_counters": rings,
                        "gso": gso.map(|[trains, segments, fallbacks]| serde_json::json!({ "trains": trains, "segments": segments, "fallbacks": fallbacks })),
                    }),
                }
            }
            Err(e) => Outcome::failed(format!("{e:#}")),
        };
        details.push(c.record(p, warmup, o));
    }
    rig.start_synx(&synx_args);
    ctx.push(c.finish(), details);
    Ok(())
}

/// One transfer of `bytes` over one connection, into discard or through echo (`synx-bench
/// bulk`), measured: the generator's output and the CPU window.
fn transfer(rig: &mut Rig, side: Side, bytes: usize, echo: bool, client_cpus: &[usize]) -> anyhow::Result<(serde_json::Value, CpuWindow)> {
    measured(rig, side, |rig| {
        let port = if echo { ECHO } else { DISCARD };
        let mut args = vec!["bulk".to_string(), "--addr".into(), rig.addr(side, port).to_string(), "--bytes".into(), bytes.to_string()];
        if echo {
            args.push("--echo".into());
        }
        run_tool(&rig.net(side).client, &rig.tools, client_cpus, &args)
    })
}

/// synx's server veth NAPI time per frame it handed to synx in a round (`xsk_rx_frames`); the
/// figures are in the round's detail (`cpu.server_napi_s`, `synx_counters`).
fn napi_per_frame(w: &CpuWindow, rings: &serde_json::Value) -> Outcome {
    let frames = rings["xsk_rx_frames"].as_u64().unwrap_or(0);
    match w.server_napi_secs {
        Some(s) if frames > 0 => Outcome { values: vec![Some(s * 1e9 / frames as f64)], failure: None, detail: serde_json::Value::Null },
        Some(_) => Outcome::failed("synx received no frame"),
        None => Outcome::failed("the server veth's NAPI threads were not readable"),
    }
}

/// A transfer's row values: Gbit/s, and server CPU seconds per GB of payload.
fn values(v: &serde_json::Value, w: &CpuWindow, bytes: usize) -> Vec<Option<f64>> {
    vec![v["gbit_s"].as_f64(), Some(w.server_secs / (bytes as f64 / 1e9))]
}

/// synx's trains, segments in trains and trains refused so far; `None` for the kernel or when
/// unreadable.
fn gso_counters(rig: &Rig, side: Side) -> Option<[u64; 3]> {
    if side != Side::Synx {
        return None;
    }
    let d = rig.daemon().ok()?;
    Some([d.counter("tcp_tx_gso_trains").ok()?, d.counter("tcp_tx_gso_segments").ok()?, d.counter("tcp_tx_gso_fallbacks").ok()?])
}

/// Frames per second offered in the floor's paced run: about the frame rate synx's bulk_tx
/// reaches each way (4-5 Gbit/s of 1448-byte segments).
const FLOOR_PACED_RATE: f64 = 400_000.0;

/// The floor under `bulk_tx`: what AF_XDP's copy-mode transmit alone costs on synx's veth pair
/// (`synx-bench xsk-tx`: synx's own AF_XDP driver, no TCP, no app, nothing received), with
/// synx stopped so the tool can bind its queue. Its frames go to the flood block, an address
/// the client namespace does not have and does not forward to: its stack drops each at the
/// route lookup, on the same path (no program on the client end) as bulk_tx's. Each round
/// runs the tool twice: as fast as the kernel takes the frames (the row: the rate, and the
/// server CPU per frame, an upper bound as the tool spins while the device pushes back), then
/// paced at [`FLOOR_PACED_RATE`] in batches of 32 with sleeps between them (kept in the JSON:
/// the CPU per frame of a server that also goes idle and wakes up, as synx's does).
fn xsk_tx_floor(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (plan, synx_args) = (ctx.plan.clone(), ctx.synx_args.clone());
    let rig = ctx.rig()?;
    let secs = if plan.quick { 2.0 } else { 4.0 };
    let mut c = Collector::new(
        "bulk",
        vec![
            spec("bulk_tx_xsk_floor", "frames/s", true, "AF_XDP copy-mode transmit alone, through synx's driver (no TCP, no receive), 1514-byte frames dropped at the client's route lookup, as fast as the kernel takes them (synx stopped meanwhile)"),
            spec("bulk_tx_xsk_floor_cpu_ns", "server CPU ns/frame", false, "server CPU busy time per frame sent in bulk_tx_xsk_floor (at most: it includes the tool spinning while the device pushes back)"),
        ],
    );
    rig.synx = Err("stopped for bulk_tx_xsk_floor".into());
    let net = rig.net(Side::Synx);
    let args = (|| -> anyhow::Result<Vec<String>> {
        Ok(vec![
            "xsk-tx".into(),
            "--iface".into(),
            net.server_if.clone(),
            "--src-mac".into(),
            mac_text(mac_of(&net.server, &net.server_if)?),
            "--dst-mac".into(),
            mac_text(mac_of(&net.client, &net.client_if)?),
            "--src".into(),
            net.server_v4.to_string(),
            "--dst".into(),
            std::net::Ipv4Addr::from(u32::from(FLOOD_NET) + 1).to_string(),
            "--secs".into(),
            secs.to_string(),
        ])
    })();
    let run = |args: &[String], rate: f64| -> anyhow::Result<serde_json::Value> {
        let mut args = args.to_vec();
        args.extend(["--rate".into(), rate.to_string()]);
        let c0 = CpuTimes::now();
        let mut v = run_tool(&net.server, &rig.tools, &plan.cpus.server, &args)?;
        let c1 = CpuTimes::now();
        anyhow::ensure!(v["frames"].as_u64().unwrap_or(0) > 0, "the tool sent no frame: {v}");
        v["server_cpu_s"] = c1.busy_secs_since(&c0, &plan.cpus.server).into();
        v["client_cpu_s"] = c1.busy_secs_since(&c0, &plan.cpus.client).into();
        Ok(v)
    };
    let mut details = vec![];
    for (_, warmup) in schedule(&[Side::Synx], plan.rounds, true) {
        let o = args.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")).and_then(|args| {
            let fast = run(args, 0.0)?;
            let paced = run(args, FLOOR_PACED_RATE)?;
            let ns = |v: &serde_json::Value| v["server_cpu_s"].as_f64().unwrap_or(f64::NAN) * 1e9 / v["frames"].as_u64().unwrap_or(0) as f64;
            let detail = serde_json::json!({ "fast": fast, "paced": paced, "paced_server_cpu_ns_per_frame": ns(&paced) });
            Ok(Outcome { values: vec![fast["frames_per_s"].as_f64(), Some(ns(&fast))], failure: None, detail })
        });
        details.push(c.record(targets::SYNX, warmup, o.unwrap_or_else(|e| Outcome::failed(format!("{e:#}")))));
    }
    rig.start_synx(&synx_args);
    ctx.push(c.finish(), details);
    Ok(())
}
