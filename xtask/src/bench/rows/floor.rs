//! The path floor: what each pair's round trip costs with no TCP and no app. UDP datagrams
//! are sent back on the server side, on synx's pair by synx's own AF_XDP driver (`synx-bench
//! xsk-echo`: the benchmark object's `synx_bench_reflect` redirects them to an AF_XDP socket;
//! synx stopped meanwhile), on the kernel's pair by the kernel's UDP (`synx-bench udp-echo`,
//! one blocking thread), both pinned to the server CPU, one datagram in flight from one client
//! (`synx-bench udp-ping`) on the client CPU. That is the round trip under `http` at c1 (the
//! veth NAPI threads, the wakeups, the copies), which TCP and HTTP add to on both pairs.
//!
//! Not a throughput floor: with 128 full-sized datagrams in flight (sendmmsg and recvmmsg) the
//! client CPU was the limit (100% busy at 0.2 M datagrams/s each way on synx's pair), below what
//! synx's TCP echo moves in `bulk_tx`; that floor is `bulk_tx_xsk_floor`, transmit alone.

use engine_common::maps::BENCH_REFLECT_PORT;

use super::peer;
use crate::bench::{
    Collector, Ctx, Outcome, Side,
    load::{run_tool, spawn_tool, tool_json},
    rig::CpuTimes,
    schedule, spec,
};

/// Payload bytes of the round-trip datagrams: about a small HTTP request's.
const RTT_SIZE: usize = 100;

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (plan, synx_args) = (ctx.plan.clone(), ctx.synx_args.clone());
    let secs = if plan.quick { 3.0 } else { 8.0 };
    let warm = 0.5;
    let rig = ctx.rig()?;
    let mut c = Collector::new(
        "path_floor",
        vec![
            spec("path_floor_rtt_per_s", "round trips/s", true, format!("{RTT_SIZE}-byte UDP datagrams, one in flight, sent back on the server CPU: synx's pair by synx's AF_XDP driver (no TCP, no app), the kernel's by its UDP; the floor under http c1")),
            spec("path_floor_rtt_p99", "ms", false, "round-trip p99 of path_floor_rtt_per_s"),
            spec("path_floor_rtt_cpu_us", "server CPU us/round trip", false, "server CPU busy time per round trip of path_floor_rtt_per_s"),
        ],
    );
    // The reflector binds the AF_XDP socket of synx's queue and attaches its own program.
    rig.synx = Err("stopped for path_floor".into());
    let mut details = vec![];
    for (side, warmup) in schedule(&[Side::Synx, Side::Kernel], plan.rounds, true) {
        let net = rig.net(side);
        let server = rig.addr(side, BENCH_REFLECT_PORT);
        let server_secs = secs + warm + 3.0;
        let server_args: Vec<String> = match side {
            Side::Synx => vec!["xsk-echo".into(), "--iface".into(), net.server_if.clone(), "--secs".into(), server_secs.to_string()],
            Side::Kernel => vec!["udp-echo".into(), "--bind".into(), server.to_string(), "--secs".into(), server_secs.to_string()],
        };
        let o = (|| -> anyhow::Result<Outcome> {
            let echo = spawn_tool(&net.server, &rig.tools, &plan.cpus.server, &server_args)?;
            std::thread::sleep(std::time::Duration::from_millis(500));
            let args: Vec<String> = ["udp-ping", "--addr", &server.to_string(), "--size", &RTT_SIZE.to_string(), "--window", "1", "--secs", &secs.to_string(), "--warmup", &warm.to_string()]
                .map(String::from)
                .to_vec();
            let c0 = CpuTimes::now();
            let rtt = run_tool(&net.client, &rig.tools, &plan.cpus.client, &args).map(|mut v| {
                let c1 = CpuTimes::now();
                v["server_cpu_s"] = c1.busy_secs_since(&c0, &plan.cpus.server).into();
                v["client_cpu_s"] = c1.busy_secs_since(&c0, &plan.cpus.client).into();
                v
            });
            let server = tool_json(echo);
            let (rtt, server) = (rtt?, server?);
            let lost = rtt["lost"].as_u64().unwrap_or(0) + rtt["wrong"].as_u64().unwrap_or(0);
            let failure = (lost > 0).then(|| format!("{lost} round trips lost or answers wrong"));
            // Every answer, the warm-up's too: the CPU window covers them all.
            let cpu_us = rtt["server_cpu_s"].as_f64().unwrap_or(f64::NAN) * 1e6 / rtt["answered"].as_f64().unwrap_or(0.0).max(1.0);
            Ok(Outcome {
                values: vec![rtt["per_s"].as_f64(), rtt["latency_ms"]["p99"].as_f64(), Some(cpu_us)],
                failure,
                detail: serde_json::json!({ "rtt": rtt, "server": server }),
            })
        })();
        details.push(c.record(peer(side), warmup, o.unwrap_or_else(|e| Outcome::failed(format!("{e:#}")))));
    }
    rig.start_synx(&synx_args);
    ctx.push(c.finish(), details);
    Ok(())
}
