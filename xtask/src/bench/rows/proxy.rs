//! synx's `http-proxy` against nginx as a reverse proxy, in front of the same backend: the
//! kernel peer's fixed HTTP response (`synx-bench kernel-server`, epoll, a thread per server
//! CPU) on 127.0.0.1:8080 of each side's server namespace, pinned to the server CPUs like the
//! proxy. synx listens on :8000 of its pair, nginx on :8000 of the kernel's pair (no XDP there,
//! default offloads). wrk at 64 and 1000 keep-alive connections gives req/s, p99 and server CPU
//! per request (proxy and backend together, the same backend on both sides); then idle
//! keep-alive clients, each having had one answer, give the memory a waiting client costs.
//!
//! nginx is configured as for production: a worker per server CPU, pinned there, epoll,
//! `multi_accept on`, `access_log off`, HTTP/1.1 to an upstream with `keepalive` large enough
//! that no upstream connection is closed under load, keep-alive requests and timeouts raised so
//! that neither side closes a connection during a row, and the same forwarding headers synx
//! adds (`X-Forwarded-For`, `Forwarded`). synx's pool stays at 64 connections.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use testbed::Nginx;

use super::{all_counters, all_counters_moved, count_suffix, idle, measured};
use crate::bench::{
    Collector, Ctx, Outcome, Rig, Side,
    load::wrk,
    peers::{KernelServer, KernelServerOptions, pid_alive, pin_all_threads},
    rig::slab_active_bytes,
    spec, targets,
};

/// Where the proxies listen (on each side's server address) and the backend (on each side's
/// loopback).
pub const PORT: u16 = 8000;
const BACKEND: &str = "127.0.0.1:8080";
/// synx's pool: backend connections per engine thread, at most; requests beyond wait for one.
const POOL: u32 = 64;
/// nginx's upstream `keepalive`: idle connections each worker keeps. nginx opens as many
/// upstream connections as it has requests in flight and closes those beyond this count after
/// their request, so it is sized above the largest concurrency here: a smaller cache would have
/// nginx connect and close per request at c1000, which no one tuning it would allow.
const NGINX_KEEPALIVE: u32 = 1024;
const CONCURRENCIES: [u32; 2] = [64, 1000];
/// Connections one nginx worker holds at most here: the open-files hard limit (no
/// CAP_SYS_RESOURCE to raise it) less room for its listeners, upstream and log files.
fn per_worker(nofile: u64) -> usize {
    (nofile.saturating_sub(1024) as usize).max(1000)
}

/// The backends and nginx of one run of the group; stopped on drop (nginx first).
struct Proxies {
    nginx: Nginx,
    _backends: [KernelServer; 2],
}

fn nginx_conf(rig: &Rig, workers: usize, connections: usize) -> (String, String, String) {
    let ip = rig.kernel_net.server_v4;
    let main = format!("worker_processes {workers};\nworker_rlimit_nofile {};", connections + 1024);
    let events = format!("worker_connections {};\nuse epoll;\nmulti_accept on;", connections + 1024);
    let http = format!(
        "access_log off;\n\
         keepalive_timeout 3600s;\n\
         keepalive_requests 100000000;\n\
         tcp_nodelay on;\n\
         upstream backend {{\n server {BACKEND};\n keepalive {NGINX_KEEPALIVE};\n keepalive_requests 100000000;\n keepalive_timeout 3600s;\n}}\n\
         server {{\n\
           listen {ip}:{PORT} backlog=65535 reuseport;\n\
           location / {{\n\
             proxy_pass http://backend;\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header Forwarded \"for=\\\"$remote_addr:$remote_port\\\";by=\\\"$server_addr:$server_port\\\";host=$host;proto=$scheme\";\n\
           }}\n\
         }}"
    );
    (main, events, http)
}

impl Proxies {
    /// Backends on both sides, nginx on the kernel's, synx restarted with the proxy listener
    /// (and `extra` arguments).
    fn start(rig: &mut Rig, ctx_args: &[String], extra: &[String], workers: usize, connections: usize) -> anyhow::Result<Self> {
        let backend: SocketAddr = BACKEND.parse()?;
        let server_cpus = rig.cpus.server.clone();
        let backends = [
            KernelServer::start(&rig.synx_net.server, &rig.tools, &[(backend, "http")], &server_cpus, &KernelServerOptions::default())?,
            KernelServer::start(&rig.kernel_net.server, &rig.tools, &[(backend, "http")], &server_cpus, &KernelServerOptions::default())?,
        ];
        let (main, events, http) = nginx_conf(rig, workers, connections);
        let nginx = Nginx::start(&rig.kernel_net.server, &main, &events, &http, &[PORT])?;
        for pid in nginx.pids() {
            pin_all_threads(pid, &server_cpus)?;
        }
        let mut args = synx_args(rig, ctx_args);
        args.extend(extra.iter().cloned());
        rig.start_synx(&args);
        rig.daemon()?;
        Ok(Self { nginx, _backends: backends })
    }

    fn nginx_alive(&self) -> anyhow::Result<()> {
        for pid in self.nginx.pids() {
            ensure!(pid_alive(pid), "nginx process {pid} is gone");
        }
        Ok(())
    }
}

/// synx's arguments for the group: the run's own, and the proxy listener.
fn synx_args(rig: &Rig, ctx_args: &[String]) -> Vec<String> {
    let mut args = ctx_args.to_vec();
    args.push(format!("--listen={}:{PORT}=http-proxy={BACKEND},pool={POOL}", rig.synx_net.server_v4));
    args
}

fn peer(side: Side) -> &'static str {
    match side {
        Side::Synx => targets::SYNX,
        Side::Kernel => targets::NGINX,
    }
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let plan = ctx.plan.clone();
    let ctx_args = ctx.synx_args.clone();
    let server_cpus = plan.cpus.server.len();
    let rig = ctx.rig()?;
    let proxies = Proxies::start(rig, &ctx_args, &[], server_cpus, 16_384)?;
    let synx_command = rig.synx_command.join(" ");
    let mut rows = vec![];
    let mut details = vec![];
    for conns in CONCURRENCIES {
        let name = |what: &str| format!("proxy_{what}_c{conns}");
        let mut c = Collector::new(
            "proxy",
            vec![
                spec(name("rps"), "req/s", true, format!("wrk, {conns} keep-alive connections, {} s, through the proxy to the same backend", plan.http_secs)),
                spec(name("p99"), "ms", false, "wrk --latency"),
                spec(name("cpu_per_req"), "us server CPU/req", false, "server CPUs busy time per request: proxy and backend (the same backend on both sides)"),
            ],
        );
        for (side, warmup) in crate::bench::schedule(&[Side::Synx, Side::Kernel], plan.rounds, true) {
            let secs = if warmup { plan.warmup_secs.ceil() as u64 } else { plan.http_secs };
            let before = all_counters(rig, side);
            let r = proxies.nginx_alive().and_then(|()| {
                measured(rig, side, |rig| {
                    let url = format!("http://{}/", rig.addr(side, PORT));
                    wrk(&rig.net(side).client, &plan.cpus.client, &url, conns, secs)
                })
            });
            let r = r.and_then(|out| proxies.nginx_alive().map(|()| out));
            let o = match r {
                Ok(((w, text), cpu)) => Outcome {
                    values: vec![Some(w.rps), Some(w.p99_ms), Some(cpu.server_secs / w.requests.max(1) as f64 * 1e6)],
                    failure: (!w.errors.is_empty()).then(|| format!("wrk: {}", w.errors.join(", "))),
                    detail: serde_json::json!({ "wrk": text, "cpu": cpu.json(), "synx_counters": all_counters_moved(rig, side, before) }),
                },
                Err(e) => Outcome::failed(format!("{e:#}")),
            };
            details.push(c.record(peer(side), warmup, o));
        }
        rows.extend(c.finish());
    }
    let (main, events, http) = nginx_conf(rig, server_cpus, 16_384);
    drop(proxies);
    ctx.describe_peer(
        targets::NGINX,
        format!(
            "{} (Debian) as a reverse proxy, master and workers pinned to the server CPUs; configuration:\n\n```\n{main}\nevents {{ {} }}\nhttp {{\n{http}\n}}\n```\n\
             Backend on both sides: `synx-bench kernel-server --listen {BACKEND}=http` pinned to the server CPUs. synx: `{synx_command}`",
            nginx_version(),
            events.replace('\n', " ")
        ),
    );
    ctx.push(rows, details);
    for &n in &plan.idle_counts.clone() {
        idle_clients(ctx, n)?;
    }
    // Later groups get synx as the rig started it.
    let args = ctx.synx_args.clone();
    ctx.rig()?.start_synx(&args);
    Ok(())
}

fn nginx_version() -> String {
    std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: ").to_string())
        .unwrap_or_else(|e| format!("(nginx -v: {e})"))
}

/// Memory per idle keep-alive client at `n` clients: each client connects, has one request
/// answered, and waits. synx: the daemon's RSS growth plus the BPF maps as allocated
/// (`--max-conns n`); nginx: its processes' RSS growth plus the machine's slab growth less the
/// client sockets' share (measured in the synx round, whose server side adds no slab).
fn idle_clients(ctx: &mut Ctx, n: usize) -> anyhow::Result<()> {
    let s = count_suffix(n);
    let nofile = crate::raise_nofile();
    let per_process = (nofile.saturating_sub(256) as usize).max(1000);
    let workers = n.div_ceil(per_worker(nofile)).max(ctx.plan.cpus.server.len());
    let ctx_args = ctx.synx_args.clone();
    let rig = ctx.rig()?;
    let proxies = Proxies::start(rig, &ctx_args, &[format!("--max-conns={n}")], workers, per_worker(nofile))?;
    let mut c = Collector::new(
        "proxy",
        vec![spec(
            format!("proxy_idle_bytes_per_client_{s}"),
            "bytes/client",
            false,
            format!(
                "{n} keep-alive clients, each answered once, then waiting; synx: RSS growth plus BPF maps (--max-conns {n}); \
                 nginx: its {workers} workers' and master's RSS growth plus slab growth less the client sockets' share \
                 ({workers} workers: one holds at most {} connections under this machine's open-files limit)",
                per_worker(nofile)
            ),
        )],
    );
    let mut details = vec![];
    let synx = idle_round(rig, &proxies, Side::Synx, n, per_process, None);
    let client_slab = synx.as_ref().ok().map(|(_, slab)| *slab);
    details.push(c.record(targets::SYNX, false, synx.map(|(o, _)| o).unwrap_or_else(|e| Outcome::failed(format!("{e:#}")))));
    let nginx = idle_round(rig, &proxies, Side::Kernel, n, per_process, client_slab);
    details.push(c.record(targets::NGINX, false, nginx.map(|(o, _)| o).unwrap_or_else(|e| Outcome::failed(format!("{e:#}")))));
    drop(proxies);
    ctx.push(c.finish(), details);
    Ok(())
}

/// One side's idle round: the outcome, and the slab growth per client it saw.
fn idle_round(rig: &mut Rig, proxies: &Proxies, side: Side, n: usize, per_process: usize, client_slab: Option<f64>) -> anyhow::Result<(Outcome, f64)> {
    let addr = rig.addr(side, PORT);
    let pids = match side {
        Side::Synx => vec![rig.server_pid(side)?],
        Side::Kernel => proxies.nginx.pids(),
    };
    let (rss0, slab0) = (idle::rss(&pids)?, slab_active_bytes()?);
    let t0 = Instant::now();
    let clients = idle::open_clients(rig, side, addr, n, per_process, &["--http"])?;
    let opened = t0.elapsed();
    // Every client has had its answer: the connections are established and served.
    std::thread::sleep(Duration::from_secs(2));
    let (rss1, slab1) = (idle::rss(&pids)?, slab_active_bytes()?);
    let rss_per = (rss1 - rss0) / n as f64;
    let slab_per = (slab1 - slab0) / n as f64;
    let (bytes, mut detail) = match side {
        Side::Synx => {
            let d = rig.daemon()?;
            let stats = d.stats()?;
            let waiting = stats["app_waiting"].as_u64().unwrap_or(0);
            ensure!(waiting >= n as u64, "synx holds {waiting} waiting clients of {n}: {stats}");
            let (maps, limit) = idle::bpf_bytes_per_slot(pids[0])?;
            ensure!(limit as usize == n, "the daemon's FLOWS4 holds {limit} entries, not {n} (--max-conns)");
            (rss_per + maps, serde_json::json!({ "rss_per_client": rss_per, "bpf_maps_per_client": maps, "slab_per_client": slab_per, "app_waiting": waiting, "app_tasks": stats["app_tasks"] }))
        }
        Side::Kernel => {
            let client = client_slab.context("the client sockets' slab share was not measured (the synx round failed)")?;
            (rss_per + slab_per - client, serde_json::json!({ "rss_per_client": rss_per, "slab_per_client": slab_per, "client_slab_per_client": client, "processes": pids.len() }))
        }
    };
    detail["open_secs"] = opened.as_secs_f64().into();
    eprintln!("bench: proxy idle {side:?} {n}: {detail}");
    drop(clients);
    Ok((Outcome { values: vec![Some(bytes)], failure: None, detail }, slab_per))
}
