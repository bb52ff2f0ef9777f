//! `--metrics ADDR:PORT`: every value of `synx stats` at `/metrics`, in the Prometheus text
//! exposition format (version 0.0.4): a HELP and a TYPE line per family, names prefixed `synx_`,
//! counters suffixed `_total`, a reason or a queue as a label rather than in the name.
//!
//! Served by a thread of its own, one scrape at a time with short socket timeouts: a scrape
//! reads the XDP program's per-CPU maps and the engine threads' atomics, and never waits on an
//! engine thread, so it cannot stall a queue, and a stalled scraper holds up only scrapes.

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

/// How a value moves, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

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
    pub fn start(addr: SocketAddr, families: impl Fn() -> Vec<Family> + Send + 'static) -> std::io::Result<Self> {
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
fn answer(s: TcpStream, families: &impl Fn() -> Vec<Family>) -> std::io::Result<()> {
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
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&families())),
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
    fn the_exporter_answers_metrics_and_refuses_the_rest() {
        let exporter = Exporter::start("127.0.0.1:0".parse().unwrap(), || {
            vec![Family::new("up", Kind::Gauge, "The daemon runs.").with(vec![], 1)]
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
