//! `synx run --takeover` with idle connections held (issue 17 item 1): how long from starting
//! the successor to the old daemon's exit, and the longest a connection echoing without a pause
//! waited for an answer across it (the takeover's stall: frames to synx are dropped from the
//! moment the old daemon closes its sockets until the successor's program is in the link, and
//! the peers retransmit). synx alone: the kernel has nothing to compare (a restarted kernel
//! server passes its listening sockets on, not its connections).
//!
//! Each round is one takeover of the daemon the previous round left, with the idle clients
//! connected all along; `PROBES` connections echo 64 bytes after 64 bytes meanwhile.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use testbed::{Bpffs, Daemon, synx_bin};

use super::{count_suffix, idle::open_clients};
use crate::bench::{
    Collector, Ctx, Outcome, Rig, RigOptions, Side,
    peers::{KernelServerOptions, pin_all_threads},
    rig::{ECHO, listen_specs},
    spec,
};

/// Connections echoing through each takeover, and the threads driving them (each its share in
/// turn: a connection that stalls holds up its thread's others, which are stalled too).
const PROBES: usize = 32;
const PROBE_THREADS: usize = 4;

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.drop_rig();
    let plan = ctx.plan.clone();
    let nofile = crate::raise_nofile();
    let per_process = (nofile.saturating_sub(256) as usize).max(1000);
    for n in [10_000, 100_000] {
        let s = count_suffix(n);
        let bpffs = Bpffs::mount();
        let mut synx_args = vec![format!("--max-conns={}", n + 4096), format!("--bpffs={}", bpffs.0.display()), "--grace=10s".to_string()];
        synx_args.extend(ctx.synx_args.iter().cloned());
        let o = RigOptions { name: format!("takeover {s}"), queues: 1, cpus: plan.cpus.clone(), synx_args: synx_args.clone(), kernel: KernelServerOptions::default(), synx_defer: ctx.synx_defer, kernel_defer: ctx.kernel_defer };
        let mut rig = Rig::start(&o, &ctx.tools)?;
        let mut c = Collector::new(
            "takeover",
            vec![
                spec(format!("takeover_secs_{s}"), "s", false, format!("{n} idle connections and {PROBES} echoing: from starting `synx run --takeover` to the old daemon's exit")),
                spec(format!("takeover_stall_ms_{s}"), "ms", false, format!("the longest one 64-byte echo took on any of {PROBES} connections echoing without a pause across the takeover (retransmissions included)")),
            ],
        );
        let mut details = Vec::new();
        let clients = open_clients(&rig, Side::Synx, rig.addr(Side::Synx, ECHO), n, per_process, &[]);
        match clients {
            Err(e) => details.push(c.record(super::peer(Side::Synx), false, Outcome::failed(format!("{e:#}")))),
            Ok(_clients) => {
                for round in 0..plan.rounds {
                    let outcome = takeover(&mut rig, &synx_args, n).unwrap_or_else(|e| Outcome::failed(format!("{e:#}")));
                    let failed = outcome.failure.is_some();
                    details.push(c.record(super::peer(Side::Synx), false, outcome));
                    if failed {
                        eprintln!("bench: takeover {s}: round {round} failed; no more rounds on this rig");
                        break;
                    }
                }
            }
        }
        ctx.keep_rig_description(&rig);
        ctx.push(c.finish(), details);
        drop(rig);
        drop(bpffs);
    }
    Ok(())
}

/// One takeover of the rig's synx, with `PROBES` connections echoing across it.
fn takeover(rig: &mut Rig, synx_args: &[String], n: usize) -> anyhow::Result<Outcome> {
    let net = &rig.synx_net;
    let addr = rig.addr(Side::Synx, ECHO);
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let probes: Vec<_> = (0..PROBE_THREADS)
        .map(|_| {
            let (stop, ready) = (stop.clone(), ready_tx.clone());
            net.client.spawn(move || probe(addr, PROBES / PROBE_THREADS, &stop, &ready))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..PROBE_THREADS {
        ready_rx.recv_timeout(Duration::from_secs(30)).context("the echoing connections did not connect")?;
    }
    // Echoing for a moment first: the longest exchange then is the takeover's.
    std::thread::sleep(Duration::from_millis(500));
    let mut args: Vec<String> = listen_specs(net.server_v4).iter().map(|(a, app)| format!("--listen={a}={app}")).collect();
    args.extend(synx_args.iter().cloned());
    args.push("--takeover".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let successor = Daemon::start_binary(&synx_bin(), &net.server, &net.server_if, &argv);
    let mut old = std::mem::replace(&mut rig.synx, Err("taken over".into()));
    let exited = match &mut old {
        Ok(d) => d.wait_exit(Duration::from_secs(120))?,
        Err(e) => anyhow::bail!("no synx to take over from: {e}"),
    };
    let secs = started.elapsed().as_secs_f64();
    let said = old.as_ref().map(Daemon::output).unwrap_or_default();
    if let Ok(d) = &mut old {
        // Its socket path is the successor's now.
        d.control_socket = std::path::PathBuf::new();
    }
    let successor = successor?;
    pin_all_threads(successor.pid(), &rig.cpus.server)?;
    rig.synx = Ok(successor);
    // A moment of echoing after the takeover too, then the longest exchange.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    for p in probes {
        let got = p.join().map_err(|_| anyhow::anyhow!("a probe thread panicked"))??;
        longest = longest.max(got?);
    }
    ensure!(exited.is_some_and(|s| s.success()), "the old daemon did not exit 0 ({exited:?}): {said:?}");
    let d = rig.daemon()?;
    let moved = d.counter("takeover_connections_moved_in")?;
    ensure!(moved >= n as u64, "the successor took {moved} connections, not the {n} idle ones and more");
    let banner = d.banner.clone();
    eprintln!("bench: takeover {n}: {secs:.3} s, longest echo {:.1} ms; {said:?} {banner:?}", longest.as_secs_f64() * 1000.0);
    Ok(Outcome {
        values: vec![Some(secs), Some(longest.as_secs_f64() * 1000.0)],
        failure: None,
        detail: serde_json::json!({ "old": said, "successor": banner, "moved": moved }),
    })
}

/// Echo 64 bytes after 64 bytes on `conns` connections in turn until `stop`; the longest one
/// exchange took, or the first error.
fn probe(addr: SocketAddr, conns: usize, stop: &AtomicBool, ready: &std::sync::mpsc::Sender<()>) -> anyhow::Result<Duration> {
    let mut streams = Vec::new();
    for _ in 0..conns {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        streams.push(s);
    }
    let _ = ready.send(());
    let mut longest = Duration::ZERO;
    let mut n = 0u64;
    let mut back = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        for s in &mut streams {
            let mut msg = [b'.'; 64];
            msg[..8].copy_from_slice(&n.to_le_bytes());
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            longest = longest.max(t.elapsed());
            ensure!(back == msg, "echo {n} came back changed");
            n += 1;
        }
    }
    Ok(longest)
}
