//! `--metrics ADDR:PORT`: every value of `synx stats` at `/metrics`, in the Prometheus text
//! exposition format (version 0.0.4): a HELP and a TYPE line per family, names prefixed `synx_`,
//! counters suffixed `_total`, a reason or a queue as a label rather than in the name.
//!
//! Served by a thread of its own, one scrape at a time with short socket timeouts: a scrape
//! reads the XDP program's per-CPU maps and the engine threads' atomics, and never waits on an
//! engine thread, so it cannot stall a queue, and a stalled scraper holds up only scrapes.
//!
//! Written by hand rather than with `prometheus-client`: that crate encodes OpenMetrics (not
//! the 0.0.4 text format asked for here), brings no HTTP server, and would only be handed
//! constants at each scrape (the values live in the engine threads' atomics and the XDP
//! program's maps, so its metric types would duplicate them); what remains is the format's
//! escaping and a HELP/TYPE pair per family, a few lines checked by `promtool` in the tests.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use engine_common::counters;

pub use crate::engine::Kind;
use crate::engine::{Metric, QueueStats};

/// One metric family: a name (without the `synx_` prefix and the `_total` suffix), its help
/// and type, and its samples, each with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    pub fn new(name: impl Into<String>, kind: Kind, help: impl Into<String>) -> Self {
        Self { name: name.into(), help: help.into(), kind, samples: Vec::new() }
    }

    pub fn with(mut self, labels: Vec<(&'static str, String)>, value: u64) -> Self {
        self.samples.push((labels, value));
        self
    }

    /// The name as exposed: `synx_` first, `_total` last for a counter.
    pub fn full_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("synx_{}_total", self.name),
            Kind::Gauge => format!("synx_{}", self.name),
        }
    }
}

/// The `synx stats` names that are one reason of a family: the prefix, the family, its help.
/// The reason (the rest of the name) becomes the `reason` label, so that `sum()` over a family
/// counts each frame once; the family's own name in `synx stats` (`tcp_dropped`) is that sum and
/// is not exposed apart.
const BY_REASON: [(&str, &str, &str); 4] = [
    ("xdp_drop_", "xdp_dropped", "Frames the XDP program dropped, by reason."),
    ("xdp_pass_", "xdp_passed", "Frames the XDP program passed to the kernel untouched, by reason."),
    ("tcp_drop_", "tcp_dropped", "Segments of known connections the TCP core dropped, by reason."),
    ("wire_drop_", "wire_dropped", "Frames the engine refused before the TCP core saw them, by reason."),
];

/// Where a value of `synx stats` appears at `/metrics`: its family and, for the values counted
/// by reason, the `reason` label. `None` for a family's total, which is the sum of its reasons.
pub fn exposed_as(stat: &str) -> Option<(&str, Option<&str>)> {
    if BY_REASON.iter().any(|(_, family, _)| *family == stat) {
        return None;
    }
    for (prefix, family, _) in BY_REASON {
        if let Some(reason) = stat.strip_prefix(prefix) {
            return Some((family, Some(reason)));
        }
    }
    Some((stat, None))
}

/// Families built up in order of first appearance.
#[derive(Default)]
struct Families(Vec<Family>);

impl Families {
    /// Add `value` of the `synx stats` value `m`, with `labels` (a reason is added here).
    fn add(&mut self, m: &Metric, mut labels: Vec<(&'static str, String)>, value: u64) {
        let Some((name, reason)) = exposed_as(m.name) else { return };
        let i = match self.0.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                let help = match BY_REASON.iter().find(|(_, family, _)| *family == name) {
                    Some((_, _, help)) => format!("{help} Reasons:"),
                    None => m.help.to_string(),
                };
                self.0.push(Family::new(name, m.kind, help));
                self.0.len() - 1
            }
        };
        let family = &mut self.0[i];
        if let Some(reason) = reason {
            // The first sample of each reason explains it in the family's help.
            if !family.samples.iter().any(|(l, _)| l.iter().any(|(k, v)| *k == "reason" && v == reason)) {
                family.help.push_str(&format!(" {reason}: {}", m.help));
            }
            labels.push(("reason", reason.to_string()));
        }
        family.samples.push((labels, value));
    }
}

/// Every value of `synx stats` as families: the XDP program's counters (`xdp`, summed over
/// CPUs, in engine-common's order), each queue thread's values labelled with its queue, the
/// engine's own values (`engine`), then the process's memory.
pub fn families<'a>(
    xdp: &[(&'static str, u64)],
    queues: impl IntoIterator<Item = &'a QueueStats>,
    engine: &[(&'static Metric, u64)],
) -> Vec<Family> {
    let mut out = Families::default();
    for (name, value) in xdp {
        let help = counters::NAMES.iter().position(|n| n == name).map_or("", |j| counters::HELP[j]);
        out.add(&Metric { name, kind: Kind::Counter, help }, Vec::new(), *value);
    }
    for (q, stats) in queues.into_iter().enumerate() {
        for (m, value) in QueueStats::metrics().zip(stats.values()) {
            out.add(m, vec![("queue", q.to_string())], value);
        }
    }
    for (m, value) in engine {
        out.add(m, Vec::new(), *value);
    }
    let mut all = out.0;
    if let Some(rss) = resident_bytes() {
        all.push(
            Family::new("process_resident_memory_bytes", Kind::Gauge, "Resident memory of the daemon (VmRSS).")
                .with(Vec::new(), rss),
        );
    }
    all.push(
        Family::new(
            "bpf_map_memory_bytes",
            Kind::Gauge,
            "Memory of the BPF maps the daemon holds (the kernel's memlock accounting), outside its resident memory.",
        )
        .with(Vec::new(), bpf_map_bytes()),
    );
    all
}

/// VmRSS of this process.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// The kernel's memlock figure of every BPF map this process holds open, each map once.
fn bpf_map_bytes() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else { return 0 };
    let mut seen = std::collections::HashSet::new();
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok());
            seen.insert(field("map_id:")?).then(|| field("memlock:").unwrap_or(0))
        })
        .sum()
}

/// The families in the text format.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let name = f.full_name();
        // The format's escapes: in HELP, backslash and newline; in label values, also '"'.
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in &f.samples {
            out.push_str(&name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                    let _ = write!(out, "{}{k}=\"{v}\"", if i > 0 { "," } else { "" });
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
}

/// The exporter's thread; stopped (and joined) on drop.
pub struct Exporter {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Serve `/metrics` on `addr` with what `families` returns at each scrape.
    pub fn start(
        addr: SocketAddr,
        families: impl Fn() -> Result<Vec<Family>, String> + Send + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::Builder::new().name("synx-metrics".into()).spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &families) {
                            tracing::debug!("metrics scrape: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::debug!("metrics accept: {e}");
                        // Out of descriptors, say: do not spin.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
        Ok(Self { stop, addr, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request: `GET /metrics` gets the families, anything else 404 or 405.
fn answer(s: TcpStream, families: &impl Fn() -> Result<Vec<Family>, String>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader.by_ref().take(8192).read_line(&mut line)?;
    // The rest of the head, bounded: a scraper sends a few lines.
    let mut rest = String::new();
    let mut budget = 16 * 1024usize;
    loop {
        rest.clear();
        let n = reader.by_ref().take(budget as u64).read_line(&mut rest)?;
        if n == 0 || rest == "\r\n" || rest == "\n" {
            break;
        }
        budget = budget.saturating_sub(n);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => match families() {
            Ok(f) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&f)),
            Err(e) => ("500 Internal Server Error", "text/plain", format!("reading the counters: {e}\n")),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "synx serves /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".to_string()),
    };
    let mut s = s;
    write!(s, "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_help_type_and_escaped_labels() {
        let text = render(&[
            Family::new("tcp_accepted", Kind::Counter, "Connections accepted.").with(vec![], 7),
            Family::new("xdp_dropped", Kind::Counter, "Frames dropped.\nBy reason.")
                .with(vec![("reason", "bad_flags".into())], 2)
                .with(vec![("reason", "odd\"one\\".into())], 0),
            Family::new("app_tasks", Kind::Gauge, "Tasks.").with(vec![("queue", "0".into())], 3),
        ]);
        assert_eq!(
            text,
            "# HELP synx_tcp_accepted_total Connections accepted.\n# TYPE synx_tcp_accepted_total counter\nsynx_tcp_accepted_total 7\n\
             # HELP synx_xdp_dropped_total Frames dropped.\\nBy reason.\n# TYPE synx_xdp_dropped_total counter\n\
             synx_xdp_dropped_total{reason=\"bad_flags\"} 2\nsynx_xdp_dropped_total{reason=\"odd\\\"one\\\\\"} 0\n\
             # HELP synx_app_tasks Tasks.\n# TYPE synx_app_tasks gauge\nsynx_app_tasks{queue=\"0\"} 3\n"
        );
    }

    #[test]
    fn every_value_of_synx_stats_is_exposed_once_by_queue_and_reason() {
        use std::sync::atomic::Ordering;

        use synx_tcp::connection::DropReason;

        use crate::{engine::stats_sum, wire::WireError};
        let (a, b) = (QueueStats::default(), QueueStats::default());
        a.count_drop(DropReason::Paws);
        b.count_drop(DropReason::Paws);
        b.count_drop(DropReason::TimeWaitReuse);
        b.count_wire(WireError::BadChecksum);
        a.accepted.store(5, Ordering::Relaxed);
        b.parked.store(2, Ordering::Relaxed);
        let xdp: Vec<(&'static str, u64)> = counters::NAMES.iter().enumerate().map(|(i, n)| (*n, i as u64 * 10)).collect();
        let all = families(&xdp, [&a, &b], &[(&crate::engine::CONNECTIONS_OPEN, 4)]);
        let find = |name: &str| all.iter().find(|f| f.full_name() == name).unwrap_or_else(|| panic!("{name} missing"));
        let value = |name: &str, labels: &[(&str, &str)]| {
            let f = find(name);
            let hit: Vec<u64> = f
                .samples
                .iter()
                .filter(|(l, _)| l.len() == labels.len() && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
                .map(|(_, v)| *v)
                .collect();
            assert_eq!(hit.len(), 1, "{name} {labels:?}: {:?}", f.samples);
            hit[0]
        };
        assert_eq!(value("synx_tcp_accepted_total", &[("queue", "0")]), 5);
        assert_eq!(value("synx_tcp_accepted_total", &[("queue", "1")]), 0);
        assert_eq!(value("synx_tcp_parked", &[("queue", "1")]), 2);
        assert_eq!(value("synx_tcp_dropped_total", &[("queue", "1"), ("reason", "time_wait_reuse")]), 1);
        assert_eq!(value("synx_tcp_dropped_total", &[("queue", "0"), ("reason", "paws")]), 1);
        assert_eq!(value("synx_wire_dropped_total", &[("queue", "1"), ("reason", "bad_checksum")]), 1);
        assert_eq!(value("synx_xdp_rx_packets_total", &[]), 0);
        assert_eq!(value("synx_xdp_dropped_total", &[("reason", "truncated")]), 140);
        assert_eq!(value("synx_xdp_passed_total", &[("reason", "not_listener")]), 30);
        let reasons = &find("synx_xdp_dropped_total").help;
        assert!(reasons.starts_with("Frames the XDP program dropped, by reason.") && reasons.contains("syn_backlog: SYNs"), "{reasons}");
        // Each value of `synx stats` is the sum of its samples over queues (and the by-reason
        // families' totals the sum over reasons too); nothing is exposed twice.
        let stats =
            counters::NAMES.iter().zip(&xdp).map(|(n, (_, v))| (*n, *v)).chain(stats_sum([&a, &b])).chain([("connections_open", 4)]);
        for (stat, expected) in stats {
            let (family, reason) = match exposed_as(stat) {
                Some((family, reason)) => (family.to_string(), reason),
                None => (stat.to_string(), None),
            };
            let f = all.iter().find(|f| f.name == family).unwrap_or_else(|| panic!("{stat}: no family {family}"));
            let got: u64 = f
                .samples
                .iter()
                .filter(|(l, _)| reason.is_none_or(|r| l.iter().any(|(k, v)| *k == "reason" && v == r)))
                .map(|(_, v)| v)
                .sum();
            assert_eq!(got, expected, "{stat}");
        }
        let samples: usize = all.iter().map(|f| f.samples.len()).sum();
        let per_queue = QueueStats::metrics().filter(|m| exposed_as(m.name).is_some()).count();
        assert_eq!(samples, counters::NAMES.len() + 2 * per_queue + 1 + 2, "XDP's, each queue's, the engine's, memory");
    }

    #[test]
    fn the_exporter_answers_metrics_and_refuses_the_rest() {
        let exporter = Exporter::start("127.0.0.1:0".parse().unwrap(), || {
            Ok(vec![Family::new("up", Kind::Gauge, "The daemon runs.").with(vec![], 1)])
        })
        .unwrap();
        let get = |request: &str| {
            let mut s = TcpStream::connect(exporter.local_addr()).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.contains("version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n# HELP synx_up The daemon runs.\n# TYPE synx_up gauge\nsynx_up 1\n"), "{ok}");
        assert!(get("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A client that connects and says nothing holds the exporter for its timeout only.
        let _silent = TcpStream::connect(exporter.local_addr()).unwrap();
        assert!(get("GET /metrics HTTP/1.0\r\n\r\n").contains("synx_up 1"));
        drop(exporter);
    }
}
