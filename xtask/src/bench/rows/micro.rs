//! Micro rows: the XDP program's per-packet cost under BPF_PROG_TEST_RUN, and the sans-IO TCP
//! core's own costs from its benchmark. One round each; a path with no kernel counterpart has
//! no kernel side.

use crate::bench::{Collector, Ctx, Outcome, spec, targets};

/// `synx-bench xdp-micro`: the per-packet cost of each XDP path, with the flow table at the
/// daemon's default size (1,048,576 entries) holding a million flows and each call's 1000 runs
/// spread over many tuples; every run's action and counter checked.
pub fn xdp(ctx: &mut Ctx) -> anyhow::Result<()> {
    let calls = if ctx.plan.quick { 40 } else { 200 };
    let rows = [
        ("xdp_synack_ns", "SYN -> SYN-ACK, 1000 SYNs per call from 65,536 sources, less the frame restore (signed median); kernel: the same program with the cookie from bpf_tcp_raw_gen_syncookie_ipv4 plus a SipHash-1-3 of the tuple for the TSval offset (the helper gives none; synx's SYN-ACK needs one)"),
        ("xdp_flow_segment_to_unbound_redirect_ns", "segment of a known flow, each run another of the table's flows: lookup, redirect to a queue with no AF_XDP socket bound (fails, counted): delivery not included"),
        ("xdp_cookie_ack_single_call_ns", "final ACK: cookie validated, the tuple claimed, unbound redirect; one per call, the test-run harness included (see xdp_test_run_floor_ns)"),
        ("xdp_test_run_floor_ns", "a program that only returns, one per call: the harness's own cost"),
    ];
    let tools = ctx.tools.clone();
    let out = testbed::sh(tools.to_str().unwrap_or("synx-bench"), &["xdp-micro", "--calls", &calls.to_string()]);
    let parsed: serde_json::Value = match &out {
        Ok(text) => serde_json::from_str(text).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    let mut all = vec![];
    let mut details = vec![];
    for (name, note) in rows {
        let mut c = Collector::new("xdp", vec![spec(name, "ns/packet", false, note)]);
        let row = parsed["rows"].as_array().and_then(|r| r.iter().find(|v| v["name"] == name));
        let synx = match (row, &out) {
            (Some(v), _) => Outcome { values: vec![v["synx_ns"].as_f64()], failure: None, detail: serde_json::json!({ "row": v, "setup": { "flows": parsed["flows"], "table_entries": parsed["table_entries"], "calls": parsed["calls"] } }) },
            (None, Err(e)) => Outcome::failed(format!("synx-bench xdp-micro: {e:#}")),
            (None, Ok(_)) => Outcome::failed("synx-bench xdp-micro printed no such row"),
        };
        details.push(c.record(targets::SYNX, false, synx));
        if let Some(k) = row.and_then(|v| v["kernel_ns"].as_f64()) {
            details.push(c.record(targets::KERNEL, false, Outcome { values: vec![Some(k)], failure: None, detail: serde_json::Value::Null }));
        }
        all.extend(c.finish());
    }
    ctx.push(all, details);
    Ok(())
}

/// The core's benchmark (synx-tcp/benches/tcp_core.rs), one line per figure.
pub fn tcp(ctx: &mut Ctx) -> anyhow::Result<()> {
    let rows: [(&str, &str, &str); 12] = [
        ("tcp_inorder_segment_ns", "in-order data segments", "1448 B segment received and ACKed"),
        ("tcp_ack_ns", "ACK processing", "one ACK, with the data it clocks out"),
        ("timer_wheel_insert_ns", "wheel insert", "1M timers armed"),
        ("timer_wheel_cancel_ns", "wheel cancel", "O(1) cancel"),
        ("timer_wheel_expiry_ns", "wheel expiry", "expiry while polling"),
        (
            "tcp_keepalive_probe_ns",
            "keepalive: a probe and its answer",
            "the core's share of a keepalive probe among 1M parked connections: unfolded, probe sent, folded; the answer demuxed (by its slot hint, as the engine gets it from XDP), unfolded, processed, folded",
        ),
        ("tcp_demux_live_ns", "demux: lookup among 100k live", "a segment's tuple to its connection among 100k unfolded ones, in a scattered order"),
        ("tcp_demux_parked_ns", "demux: lookup among 100k parked", "a segment's tuple to its connection among 100k parked ones, in a scattered order"),
        (
            "tcp_demux_hinted_live_ns",
            "demux: slot hint among 100k live",
            "the same lookups with the slot XDP's FLOWS names as a hint (checked against the slot's tuple, no index)",
        ),
        ("tcp_demux_hinted_parked_ns", "demux: slot hint among 100k parked", "the same among parked ones, with the slot as a hint"),
        ("tcb_idle_bytes", "idle ESTABLISHED connection", "the unfolded TCB; buffers are 0 B when idle"),
        ("tcb_parked_bytes", "folded idle connection", "its endpoint slot, what an idle connection keeps"),
    ];
    let out = crate::cargo()
        .args(["bench", "--quiet", "--package", "synx-tcp", "--bench", "tcp_core"])
        .output()
        .map_err(|e| format!("cargo bench: {e}"))
        .and_then(|o| {
            if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                Err(format!("cargo bench failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")))
            }
        });
    let mut all = vec![];
    let mut details = vec![];
    for (name, prefix, note) in rows {
        let unit = if name.ends_with("_bytes") { "bytes" } else { "ns" };
        let mut c = Collector::new("tcp", vec![spec(name, unit, false, note)]);
        let value = out.clone().and_then(|text| {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(prefix))
                .ok_or_else(|| format!("the core's benchmark printed no {prefix:?} line"))?;
            // "... (12.3 ns each)" or "...: 648 B of TCB ..."
            let number = if name.ends_with("_bytes") {
                line.split(':').nth(1).and_then(|r| r.split_whitespace().next())
            } else {
                line.rfind('(').and_then(|i| line[i + 1..].split_whitespace().next())
            };
            number.and_then(|n| n.parse::<f64>().ok()).ok_or_else(|| format!("unparsed line {line:?}"))
        });
        let o = match value {
            Ok(v) => Outcome { values: vec![Some(v)], failure: None, detail: serde_json::Value::Null },
            Err(e) => Outcome::failed(e),
        };
        details.push(c.record(targets::SYNX, false, o));
        all.extend(c.finish());
    }
    ctx.push(all, details);
    Ok(())
}
