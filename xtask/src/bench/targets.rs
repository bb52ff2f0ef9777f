//! The targets (issue 15), each read from the rows of one run: synx against its peers measured
//! in the same run. A target is met, not met, or not measured (a row or peer missing from this
//! run, or a side with failed rounds, which counts as not met with the reason shown).

use super::report::{Row, fmt_num};

/// The kernel peers a row may hold besides synx.
pub const KERNEL: &str = "kernel";
pub const KERNEL_NFT_SYNPROXY: &str = "kernel-nft-synproxy";
pub const KERNEL_XDP_SYNPROXY: &str = "kernel-xdp-synproxy";
pub const SYNX: &str = "synx";
/// synx with `--gso off` in `bulk_tx_gso`.
pub const SYNX_FRAMES: &str = "synx-frames";
/// nginx as a reverse proxy, the peer of synx's http-proxy.
pub const NGINX: &str = "nginx";
/// The kernel's TCP behind the emulated wide-area path (the wan rows).
pub const KERNEL_WAN: &str = "kernel-wan";
/// The same with BBR, this machine's kernel default, beside CUBIC in the download rows: the
/// kernel at its best on a lossy path (the ratios' peer stays CUBIC, as issue 16 asks).
pub const KERNEL_WAN_BBR: &str = "kernel-wan-bbr";

#[derive(Debug, Clone, PartialEq)]
pub enum Met {
    Yes,
    No,
    /// The run did not measure it (row or peer absent).
    NotMeasured,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub target: &'static str,
    pub met: Met,
    /// The honest figure behind the verdict, or why there is none.
    pub figure: String,
}

fn row<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name == name)
}

/// synx/`peer` in `name` against `bound` (at least, or at most).
fn ratio_target(rows: &[Row], target: &'static str, name: &str, peer: &str, bound: f64, at_least: bool) -> Verdict {
    let Some(r) = row(rows, name) else {
        return Verdict { target, met: Met::NotMeasured, figure: format!("`{name}` not in this run") };
    };
    if r.side(peer).is_none() || r.side(SYNX).is_none() {
        return Verdict { target, met: Met::NotMeasured, figure: format!("`{name}`: {peer} or synx not measured") };
    }
    match r.ratio(SYNX, peer) {
        Ok(x) => {
            let met = if at_least { x >= bound } else { x <= bound };
            let (s, p) = (r.side(SYNX).and_then(|s| s.value()), r.side(peer).and_then(|s| s.value()));
            Verdict {
                target,
                met: if met { Met::Yes } else { Met::No },
                figure: format!(
                    "{:.2}x (`{name}`: synx {}, {peer} {} {})",
                    x,
                    s.map_or("-".into(), fmt_num),
                    p.map_or("-".into(), fmt_num),
                    r.unit
                ),
            }
        }
        Err(why) => Verdict { target, met: Met::No, figure: format!("`{name}`: {why}") },
    }
}

/// synx's own figure in `name` against `bound`.
fn value_target(rows: &[Row], target: &'static str, name: &str, bound: f64, below: bool) -> Verdict {
    let Some(r) = row(rows, name) else {
        return Verdict { target, met: Met::NotMeasured, figure: format!("`{name}` not in this run") };
    };
    let Some(side) = r.side(SYNX) else {
        return Verdict { target, met: Met::NotMeasured, figure: format!("`{name}`: synx not measured") };
    };
    let others: Vec<String> = r
        .sides
        .iter()
        .filter(|s| s.peer != SYNX)
        .map(|s| format!("{} {}", s.peer, s.value().map_or("-".into(), fmt_num)))
        .collect();
    let others = if others.is_empty() { String::new() } else { format!("; {}", others.join(", ")) };
    match side.figure() {
        Ok(v) => {
            let met = if below { v < bound } else { v >= bound };
            Verdict { target, met: if met { Met::Yes } else { Met::No }, figure: format!("synx {} {}{others}", fmt_num(v), r.unit) }
        }
        Err(why) => Verdict { target, met: Met::No, figure: format!("`{name}`: {why}") },
    }
}

/// A client CPU busier than this (%) on both sides is the connection rate's limit.
const CLIENT_BOUND_PCT: f64 = 95.0;

/// The connection rate's verdict, saying so when the one client CPU was the limit on both
/// sides: the rate then measures the client (its CPU per connection, which the server's frames
/// per connection move), not the server.
fn client_bound(rows: &[Row], mut v: Verdict) -> Verdict {
    let median = |name: &str, peer: &str| row(rows, name).and_then(|r| r.side(peer)).and_then(|s| s.value());
    let (Some(s), Some(k)) = (median("conn_client_cpu_pct", SYNX), median("conn_client_cpu_pct", KERNEL)) else { return v };
    if s < CLIENT_BOUND_PCT || k < CLIENT_BOUND_PCT {
        return v;
    }
    let per = |peer: &str| median("conn_client_cpu_per_conn", peer).map_or("-".into(), fmt_num);
    v.figure += &format!(
        "; client-bound: the client CPU was {s:.1}% (synx) and {k:.1}% (kernel) busy, {} and {} us of client CPU per connection (`conn_client_cpu_per_conn`)",
        per(SYNX),
        per(KERNEL)
    );
    v
}

/// HTTP c1's verdict, saying so when synx's pair cannot carry the kernel's request rate at all:
/// when a UDP round trip sent back by synx's AF_XDP driver with no TCP and no app
/// (`path_floor_rtt_per_s`, from the same run) is already slower than a whole HTTP request on
/// the kernel's pair, no server behind that path meets 1.0x here (its requests take at least
/// that round trip). The verdict stays what it is: this only says why.
fn path_bound(rows: &[Row], mut v: Verdict) -> Verdict {
    let median = |name: &str, peer: &str| row(rows, name).and_then(|r| r.side(peer)).and_then(|s| s.value());
    let (Some(floor), Some(kernel)) = (median("path_floor_rtt_per_s", SYNX), median("http_rps_c1", KERNEL)) else { return v };
    if floor >= kernel {
        return v;
    }
    v.figure += &format!(
        "; path-bound: on synx's pair a UDP round trip with no TCP and no app, sent back by synx's AF_XDP driver, ran {} a second (`path_floor_rtt_per_s`), {:.2}x the kernel's HTTP requests",
        fmt_num(floor),
        floor / kernel
    );
    // The tail the same way: how much of the p99 gap the two paths' own p99s already differ by.
    let p99 = |name: &str| Some((median(name, SYNX)?, median(name, KERNEL)?));
    if let (Some((fs, fk)), Some((hs, hk))) = (p99("path_floor_rtt_p99"), p99("http_p99_c1"))
        && hs > hk
    {
        v.figure += &format!(
            "; the p99 of synx's HTTP is {:.1} us above the kernel's, that of the UDP round trip on synx's pair {:.1} us above the kernel's UDP (`path_floor_rtt_p99`)",
            (hs - hk) * 1e3,
            (fs - fk) * 1e3
        );
    }
    v
}

/// The bulk verdict, with what synx's echo does with and without its segmentation offload
/// (`bulk_tx_gso`), against the kernel of that group. The verdict stays `bulk_tx`'s.
fn where_tso_is_kept(rows: &[Row], mut v: Verdict) -> Verdict {
    let Some(r) = row(rows, "bulk_tx_gso") else { return v };
    let (Some(with), Some(without)) = (r.value_ratio(SYNX, KERNEL), r.value_ratio(SYNX_FRAMES, KERNEL)) else { return v };
    v.figure += &format!(
        "; in `bulk_tx_gso` synx's echo ran {with:.2}x the kernel's with its segmentation offload, {without:.2}x frame by frame"
    );
    v
}

/// Several verdicts that must all hold.
fn all(target: &'static str, parts: Vec<Verdict>) -> Verdict {
    let met = if parts.iter().any(|v| v.met == Met::No) {
        Met::No
    } else if parts.iter().all(|v| v.met == Met::Yes) {
        Met::Yes
    } else {
        Met::NotMeasured
    };
    Verdict { target, met, figure: parts.into_iter().map(|v| v.figure).collect::<Vec<_>>().join("; ") }
}

pub fn evaluate(rows: &[Row]) -> Vec<Verdict> {
    let flood = "syn_flood_synacks_per_cpu_s";
    let mut out = vec![
        ratio_target(rows, "SYN flood: SYN-ACKs per server CPU-second >= 3x the kernel listener", flood, KERNEL, 3.0, true),
        ratio_target(rows, "SYN flood: >= 1x the kernel's XDP cookies (XDP synproxy)", flood, KERNEL_XDP_SYNPROXY, 1.0, true),
        ratio_target(rows, "SYN flood: >= 1x nftables synproxy", flood, KERNEL_NFT_SYNPROXY, 1.0, true),
        all(
            "SYN flood: legitimate connects >= 99% under overload",
            vec![
                value_target(rows, "", "syn_flood_legit_success", 99.0, false),
                // Under overload: the offer exceeded what synx answered.
                value_target(rows, "", "syn_flood_answered_pct", 100.0, true),
            ],
        ),
        client_bound(rows, ratio_target(rows, "connections per second >= 1.5x", "conn_rate", KERNEL, 1.5, true)),
        ratio_target(rows, "server CPU per connection <= 0.67x", "conn_cpu_per_conn", KERNEL, 0.67, false),
    ];
    for c in ["c1", "c64", "c1000"] {
        let target: &'static str = match c {
            "c1" => "HTTP req/s >= 1.0x at c1, p99 no worse",
            "c64" => "HTTP req/s >= 1.0x at c64, p99 no worse",
            _ => "HTTP req/s >= 1.0x at c1000, p99 no worse",
        };
        let v = all(
            target,
            vec![
                ratio_target(rows, target, &format!("http_rps_{c}"), KERNEL, 1.0, true),
                ratio_target(rows, target, &format!("http_p99_{c}"), KERNEL, 1.0, false),
            ],
        );
        out.push(if c == "c1" { path_bound(rows, v) } else { v });
    }
    out.push(where_tso_is_kept(
        rows,
        all(
            "bulk >= 0.5x each way, against the kernel with its full offloads",
            vec![
                ratio_target(rows, "", "bulk_rx", KERNEL, 0.5, true),
                ratio_target(rows, "", "bulk_tx", KERNEL, 0.5, true),
            ],
        ),
    ));
    for (c, target) in [
        ("c64", "http-proxy req/s >= 1.0x nginx's at c64, p99 no worse"),
        ("c1000", "http-proxy req/s >= 1.0x nginx's at c1000, p99 no worse"),
    ] {
        out.push(all(
            target,
            vec![
                ratio_target(rows, target, &format!("proxy_rps_{c}"), NGINX, 1.0, true),
                ratio_target(rows, target, &format!("proxy_p99_{c}"), NGINX, 1.0, false),
            ],
        ));
    }
    out.push(ratio_target(
        rows,
        "http-proxy memory per idle keep-alive client <= 1/8 of nginx's at 100k",
        "proxy_idle_bytes_per_client_100k",
        NGINX,
        0.125,
        false,
    ));
    // Issue 16: on emulated wide-area paths.
    out.push(all(
        "WAN bulk goodput >= 0.95x in every cell (RTT 40 ms, 100 Mbit/s, 0-5% loss, 2% reordering)",
        super::rows::wan_bulk_row_names().iter().map(|n| ratio_target(rows, "", n, KERNEL_WAN, 0.95, true)).collect(),
    ));
    out.push(all(
        "WAN 5% loss both ways: time within 1.5x of the kernel's",
        ["wan_bulk_down_loss5", "wan_bulk_up_loss5"].iter().map(|n| ratio_target(rows, "", n, KERNEL_WAN, 1.0 / 1.5, true)).collect(),
    ));
    out.push(all(
        "WAN short flows: completion p50 <= 1.05x and p99 <= 1.1x",
        super::rows::wan_short_row_names()
            .iter()
            .map(|n| ratio_target(rows, "", n, KERNEL_WAN, if n.ends_with("p50") { 1.05 } else { 1.1 }, false))
            .collect(),
    ));
    out.push(value_target(rows, "WAN fairness: Jain's index >= 0.9, 8 synx and 8 kernel flows sharing", "wan_fair_jain", 0.9, false));
    out.push(value_target(rows, "idle < 512 B per connection, all counted, at 100k", "idle_bytes_per_conn_100k", 512.0, true));
    out.push(value_target(rows, "idle < 512 B per connection, all counted, at 1M", "idle_bytes_per_conn_1m", 512.0, true));
    out.push(all(
        "idle CPU < 1% of a core at 1M, keepalive probes firing (idle 10 s, interval 5 s: 100,000 probes a second)",
        vec![
            value_target(rows, "", "idle_cpu_pct_1m", 1.0, true),
            value_target(rows, "", "idle_probes_per_conn_1m", 1.0, false),
        ],
    ));
    // The same target at the keepalive a deployment runs: the quiet phase measured, the probes
    // Linux's default would send added at the cost each showed above.
    out.push(all(
        "idle CPU < 1% of a core at 1M, keepalive probes firing at Linux's default (idle 2 h): measured quiet plus probes at their measured cost",
        vec![
            value_target(rows, "", "idle_cpu_pct_default_keepalive_1m", 1.0, true),
            value_target(rows, "", "idle_quiet_cpu_pct_1m", 1.0, true),
        ],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{Collector, Outcome, spec};

    fn rows(synx: &[f64], kernel: &[f64]) -> Vec<Row> {
        let names = ["conn_rate", "conn_cpu_per_conn"];
        let mut c = Collector::new("conn_rate", vec![spec(names[0], "conn/s", true, ""), spec(names[1], "us", false, "")]);
        c.record(SYNX, false, Outcome { values: synx.iter().map(|&v| Some(v)).collect(), failure: None, detail: serde_json::Value::Null });
        c.record(KERNEL, false, Outcome { values: kernel.iter().map(|&v| Some(v)).collect(), failure: None, detail: serde_json::Value::Null });
        c.finish()
    }

    fn find<'a>(v: &'a [Verdict], prefix: &str) -> &'a Verdict {
        v.iter().find(|t| t.target.starts_with(prefix)).unwrap()
    }

    #[test]
    fn ratios_are_judged_in_the_right_direction() {
        let v = evaluate(&rows(&[30_000.0, 30.0], &[20_000.0, 50.0]));
        assert_eq!(find(&v, "connections per second").met, Met::Yes, "{v:?}");
        assert_eq!(find(&v, "server CPU per connection").met, Met::Yes);
        let v = evaluate(&rows(&[25_000.0, 40.0], &[20_000.0, 50.0]));
        assert_eq!(find(&v, "connections per second").met, Met::No);
        assert!(find(&v, "connections per second").figure.starts_with("1.25x"), "{v:?}");
        assert_eq!(find(&v, "server CPU per connection").met, Met::No);
        // Rows this run did not measure are said to be so, not failed.
        assert_eq!(find(&v, "bulk").met, Met::NotMeasured);
    }

    #[test]
    fn a_client_bound_connection_rate_says_so() {
        let names = ["conn_rate", "conn_cpu_per_conn", "conn_client_cpu_pct", "conn_client_cpu_per_conn"];
        let specs = names.iter().map(|&n| spec(n, "", n == "conn_rate", "")).collect();
        let mut c = Collector::new("conn_rate", specs);
        let mut record = |peer: &str, v: [f64; 4]| c.record(peer, false, Outcome { values: v.map(Some).to_vec(), failure: None, detail: serde_json::Value::Null });
        record(SYNX, [22_000.0, 36.0, 99.5, 45.0]);
        record(KERNEL, [18_000.0, 50.0, 98.0, 55.0]);
        let v = evaluate(&c.finish());
        let t = find(&v, "connections per second");
        assert_eq!(t.met, Met::No);
        assert!(t.figure.contains("client-bound: the client CPU was 99.5% (synx) and 98.0% (kernel) busy, 45.0 and 55.0 us"), "{t:?}");
        // A server-bound rate says nothing of the client.
        let v = evaluate(&rows(&[22_000.0, 36.0], &[18_000.0, 50.0]));
        assert!(!find(&v, "connections per second").figure.contains("client-bound"));
    }

    #[test]
    fn bulk_says_what_the_offload_does_where_tso_is_kept_without_changing_the_verdict() {
        let one = |c: &mut Collector, peer: &str, v: f64| c.record(peer, false, Outcome { values: vec![Some(v)], failure: None, detail: serde_json::Value::Null });
        let mut rows = Vec::new();
        for (name, synx) in [("bulk_rx", 6.0), ("bulk_tx", 3.0)] {
            let mut c = Collector::new("bulk", vec![spec(name, "Gbit/s", true, "")]);
            one(&mut c, SYNX, synx);
            one(&mut c, KERNEL, 12.0);
            rows.extend(c.finish());
        }
        let t = find(&evaluate(&rows), "bulk >=").clone();
        assert_eq!(t.met, Met::No);
        assert!(!t.figure.contains("keeps TSO"), "{t:?}");
        let mut c = Collector::new("bulk", vec![spec("bulk_tx_gso", "Gbit/s", true, "")]);
        one(&mut c, SYNX, 5.5);
        one(&mut c, SYNX_FRAMES, 3.3);
        one(&mut c, KERNEL, 11.0);
        rows.extend(c.finish());
        let t = find(&evaluate(&rows), "bulk >=").clone();
        assert_eq!(t.met, Met::No, "the standard pair's verdict stands");
        assert!(t.figure.contains("0.50x the kernel's with its segmentation offload, 0.30x frame by frame"), "{t:?}");
    }

    #[test]
    fn http_c1_says_when_synx_s_path_alone_is_slower_than_the_kernel_s_requests() {
        let run = |floor: f64| {
            let mut http = Collector::new("http", vec![spec("http_rps_c1", "req/s", true, ""), spec("http_p99_c1", "ms", false, "")]);
            http.record(SYNX, false, Outcome { values: vec![Some(15_000.0), Some(0.09)], failure: None, detail: serde_json::Value::Null });
            http.record(KERNEL, false, Outcome { values: vec![Some(17_000.0), Some(0.08)], failure: None, detail: serde_json::Value::Null });
            let mut path = Collector::new("path_floor", vec![spec("path_floor_rtt_per_s", "round trips/s", true, ""), spec("path_floor_rtt_p99", "ms", false, "")]);
            path.record(SYNX, false, Outcome { values: vec![Some(floor), Some(0.075)], failure: None, detail: serde_json::Value::Null });
            path.record(KERNEL, false, Outcome { values: vec![Some(18_000.0), Some(0.067)], failure: None, detail: serde_json::Value::Null });
            let mut rows = http.finish();
            rows.extend(path.finish());
            find(&evaluate(&rows), "HTTP req/s >= 1.0x at c1").clone()
        };
        let t = run(16_000.0);
        assert_eq!(t.met, Met::No, "the reason does not change the verdict");
        assert!(t.figure.contains("path-bound") && t.figure.contains("16,000 a second") && t.figure.contains("0.94x"), "{t:?}");
        assert!(t.figure.contains("HTTP is 10.0 us above the kernel's, that of the UDP round trip on synx's pair 8.0 us above"), "{t:?}");
        // A path that carries more than the kernel's requests says nothing.
        assert!(!run(17_500.0).figure.contains("path-bound"));
    }

    #[test]
    fn a_failed_side_fails_its_target_with_the_reason() {
        let mut r = rows(&[30_000.0, 30.0], &[20_000.0, 50.0]);
        r[0].sides[0].rounds[0].failure = Some("synx died".into());
        let v = evaluate(&r);
        let t = find(&v, "connections per second");
        assert_eq!(t.met, Met::No);
        assert!(t.figure.contains("synx died"), "{t:?}");
    }
}
