//! Running the load: our own generators (`synx-bench ...`, one JSON object each), wrk for the
//! closed-loop HTTP rows, and the SYN-flood generator, each inside a client namespace and
//! pinned to the client CPUs.

use std::{
    net::SocketAddrV4,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};
use testbed::{Netns, VethPair, mac_of, mac_text};

use super::rig::{Cpus, FLOOD_NET};

/// `cmd args` inside `ns`, pinned to `cpus`.
pub fn pinned(ns: &Netns, cpus: &[usize], cmd: &str) -> Command {
    let mut c = ns.command("taskset");
    c.args(["-c", &Cpus::list(cpus), cmd]);
    c
}

/// Start `synx-bench ARGS` in `ns` on `cpus`; [`tool_json`] collects it.
pub fn spawn_tool(ns: &Netns, tools: &Path, cpus: &[usize], args: &[String]) -> anyhow::Result<Child> {
    pinned(ns, cpus, tools.to_str().context("tools path")?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting synx-bench {}", args.first().map_or("", String::as_str)))
}

/// Wait for a tool and parse the JSON object it printed.
pub fn tool_json(child: Child) -> anyhow::Result<serde_json::Value> {
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "synx-bench failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    serde_json::from_slice(&out.stdout).with_context(|| format!("synx-bench printed {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// Run `synx-bench ARGS` in `ns` on `cpus` to the end: its JSON.
pub fn run_tool(ns: &Netns, tools: &Path, cpus: &[usize], args: &[String]) -> anyhow::Result<serde_json::Value> {
    tool_json(spawn_tool(ns, tools, cpus, args)?)
}

/// Failures by reason from a generator's JSON ("failures": {reason: count}), as one line.
pub fn failures_line(v: &serde_json::Value) -> Option<String> {
    let map = v["failures"].as_object()?;
    let parts: Vec<String> = map.iter().filter(|(_, n)| n.as_u64().unwrap_or(0) > 0).map(|(k, n)| format!("{n} x {k}")).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// What wrk reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors and non-2xx/3xx responses, by kind; empty when there were none.
    pub errors: Vec<String>,
}

pub fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("wrk printed no Requests/sec")?;
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .context("wrk printed no request count")?;
    let pct = |p: &str| -> anyhow::Result<f64> {
        let line = out.lines().map(str::trim).find(|l| l.starts_with(p)).with_context(|| format!("wrk printed no {p} latency"))?;
        parse_duration_ms(line.split_whitespace().nth(1).unwrap_or(""))
    };
    let mut errors = Vec::new();
    if let Some(line) = out.lines().find_map(|l| l.trim().strip_prefix("Socket errors:")) {
        for part in line.split(',') {
            let mut w = part.split_whitespace();
            if let (Some(kind), Some(n)) = (w.next(), w.next().and_then(|n| n.parse::<u64>().ok()))
                && n > 0
            {
                errors.push(format!("{n} socket {kind} errors"));
            }
        }
    }
    if let Some(n) = out.lines().find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:")).and_then(|v| v.trim().parse::<u64>().ok())
        && n > 0
    {
        errors.push(format!("{n} non-2xx/3xx responses"));
    }
    Ok(Wrk { rps, p50_ms: pct("50%")?, p99_ms: pct("99%")?, requests, errors })
}

fn parse_duration_ms(s: &str) -> anyhow::Result<f64> {
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        bail!("wrk latency {s:?} has no unit")
    };
    Ok(num.parse::<f64>().with_context(|| format!("wrk latency {s:?}"))? * mult)
}

/// wrk, one thread per client CPU, `conns` keep-alive connections for `secs`.
pub fn wrk(ns: &Netns, cpus: &[usize], url: &str, conns: u32, secs: u64) -> anyhow::Result<(Wrk, String)> {
    let threads = (cpus.len() as u32).clamp(1, conns).to_string();
    let out = pinned(ns, cpus, "wrk")
        .args(["-t", &threads, "-c", &conns.to_string(), "-d", &format!("{secs}s"), "--latency", url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "wrk failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok((parse_wrk(&text)?, text))
}

/// Sources the flood generator cycles through (`FLOOD_NET` + 1 ..= 251). With source ports
/// cycling through 60,000 values and 251 prime to 60,000, the tuples repeat only after
/// 251 * 60,000 = 15,060,000 SYNs.
pub const FLOOD_SOURCES: u32 = 251;
pub const FLOOD_DISTINCT_TUPLES: u64 = FLOOD_SOURCES as u64 * 60_000;

/// The SYN-flood generator in `net`'s client namespace on `cpu` for `secs`: spoofed SYNs from
/// [`FLOOD_NET`] to `dst`, made by an XDP program run through BPF_PROG_TEST_RUN's live-frame
/// mode (frames go out of the client veth as XDP frames: no socket, no skb), as fast as it can,
/// without waiting for anything (open loop).
pub fn spawn_flood(net: &VethPair, tools: &Path, cpu: usize, dst: SocketAddrV4, secs: f64) -> anyhow::Result<Child> {
    let server_mac = mac_of(&net.server, &net.server_if)?;
    let client_mac = mac_of(&net.client, &net.client_if)?;
    let child = pinned(&net.client, &[cpu], tools.to_str().context("tools path")?)
        .args(["flood", "--iface", &net.client_if, "--src-mac", &mac_text(client_mac), "--dst-mac", &mac_text(server_mac)])
        .args(["--dst", &dst.to_string(), "--src-base", &FLOOD_NET.to_string(), "--sources", &FLOOD_SOURCES.to_string()])
        .args(["--secs", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the flood generator")?;
    Ok(child)
}

/// What a finished generator reported: the SYNs it sent and the whole report (which generator
/// ran: BPF_PROG_TEST_RUN's live frames, or AF_PACKET where the kernel refuses them).
pub fn flood_frames(child: Child) -> anyhow::Result<(u64, serde_json::Value)> {
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "the flood generator failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let frames = v["frames"].as_u64().context("the flood generator printed no frame count")?;
    Ok((frames, v))
}

/// The rig note for a generator's report.
pub fn flood_generator_note(report: &serde_json::Value) -> String {
    match report["generator"].as_str() {
        Some("af_packet") => format!(
            "SYN-flood rows: the generator sent through AF_PACKET (PACKET_QDISC_BYPASS, sendmmsg of 64 frames){}: each SYN is an skb the receiving veth copies into a page with XDP headroom on the server's NAPI before any XDP program runs (live frames arrive as XDP frames), a cost every XDP peer pays alike",
            // One note for every round: the error (in each round's detail) names a device.
            if report["live_frames_refused"].is_string() {
                ", as this kernel refuses BPF_PROG_TEST_RUN's live-frame mode (each round's detail has the error)"
            } else {
                ""
            }
        ),
        _ => "SYN-flood rows: the generator sent through BPF_PROG_TEST_RUN's live-frame mode (XDP frames out of the client veth)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://198.18.0.1:80/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.00us  100.00us   5.00ms   90.00%
    Req/Sec    95.00k     2.00k   99.00k    70.00%
  Latency Distribution
     50%  388.00us
     75%  420.00us
     90%  500.00us
     99%    4.10ms
  472305 requests in 5.00s, 51.36MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:  94461.81
Transfer/sec:     10.27MB
";

    #[test]
    fn wrk_errors_are_counted_whatever_the_rate() {
        let w = parse_wrk(WRK).unwrap();
        assert_eq!(w.rps, 94461.81);
        assert_eq!(w.requests, 472305);
        assert!((w.p50_ms - 0.388).abs() < 1e-9 && (w.p99_ms - 4.10).abs() < 1e-9);
        assert_eq!(w.errors, ["12 socket read errors", "3 socket timeout errors", "5 non-2xx/3xx responses"]);
        let clean = WRK.replace("  Socket errors: connect 0, read 12, write 0, timeout 3\n", "").replace("  Non-2xx or 3xx responses: 5\n", "");
        assert!(parse_wrk(&clean).unwrap().errors.is_empty());
    }

    #[test]
    fn generator_failures_read_as_one_line() {
        let v = serde_json::json!({"failures": {"connect: refused": 2, "read: reset": 0}});
        assert_eq!(failures_line(&v).as_deref(), Some("2 x connect: refused"));
        assert_eq!(failures_line(&serde_json::json!({"failures": {}})), None);
    }

    #[test]
    fn the_flood_sources_are_prime_to_the_port_cycle() {
        fn gcd(a: u64, b: u64) -> u64 {
            if b == 0 { a } else { gcd(b, a % b) }
        }
        assert_eq!(gcd(u64::from(FLOOD_SOURCES), 60_000), 1);
        const { assert!(FLOOD_DISTINCT_TUPLES >= 1_000_000) };
        // Within the /24 the flood's route and the client's ingress rule cover.
        const { assert!(FLOOD_SOURCES <= 254) };
    }
}
