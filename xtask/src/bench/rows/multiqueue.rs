//! Two RX queues on this 2-core machine: synx runs an engine thread per queue, the kernel peer a
//! thread per CPU with SO_REUSEPORT, and a flood generator runs on each CPU (veth picks the
//! receive queue of an XDP frame by the sending CPU). With two cores, servers and clients share
//! both CPUs: no CPU is the server's alone, so these rows give rates (and machine CPU per unit),
//! not server CPU. `--only multiqueue_conn` or `--only multiqueue_flood` runs one half.

use super::{conn, flood, peer};
use crate::bench::{Collector, Ctx, Rig, RigOptions, Side, rig::set_sysctl, schedule, spec};

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.drop_rig();
    let plan = ctx.plan.clone();
    let all: Vec<usize> = plan.cpus.server.iter().chain(&plan.cpus.client).copied().collect();
    let cpus = crate::bench::Cpus { server: all.clone(), client: all.clone() };
    let o = RigOptions { name: "2 queues".into(), queues: 2, cpus, synx_args: ctx.synx_args.clone(), kernel: Default::default(), synx_defer: ctx.synx_defer, kernel_defer: ctx.kernel_defer };
    let mut rig = Rig::start(&o, &ctx.tools)?;
    rig.note("2 RX queues; servers, clients and generators share both CPUs");
    let mut rows = vec![];
    let mut details = vec![];
    if ctx.wants_row("multiqueue", "multiqueue_conn") {
        conn_rows(&mut rig, &plan, &all, &mut rows, &mut details);
    }
    if ctx.wants_row("multiqueue", "multiqueue_flood") {
        flood_rows(&mut rig, &plan, &all, &mut rows, &mut details)?;
    }
    ctx.keep_rig_description(&rig);
    ctx.push(rows, details);
    Ok(())
}

fn conn_rows(rig: &mut Rig, plan: &crate::bench::Plan, all: &[usize], rows: &mut Vec<crate::bench::Row>, details: &mut Vec<crate::bench::report::RoundDetail>) {
    let mut c = Collector::new(
        "multiqueue",
        vec![
            spec("conn_rate_2q", "conn/s", true, "as conn_rate, 2 RX queues, everything on both CPUs"),
            spec("conn_cpu_per_conn_2q", "us machine CPU/conn", false, "both CPUs' busy time per connection (server and client together)"),
        ],
    );
    for (side, warmup) in schedule(&[Side::Synx, Side::Kernel], plan.rounds, true) {
        let secs = if warmup { plan.warmup_secs } else { plan.conn_secs };
        let mut o = conn::round(rig, side, secs, all);
        // Server and client share the CPUs here: the "server" figure is the machine's.
        o.values.truncate(2);
        details.push(c.record(peer(side), warmup, o));
    }
    rows.extend(c.finish());
}

fn flood_rows(rig: &mut Rig, plan: &crate::bench::Plan, all: &[usize], rows: &mut Vec<crate::bench::Row>, details: &mut Vec<crate::bench::report::RoundDetail>) -> anyhow::Result<()> {
    let old = set_sysctl(&rig.kernel_net.server, "net.ipv4.tcp_syncookies", "2")?;
    let client_if = rig.kernel_net.client_if.clone();
    rig.kernel_net.client.exec("ethtool", &["-K", &client_if, "tso", "off"])?;
    rig.flood_sinks(true)?;
    let mut c = Collector::new("multiqueue", flood::specs("_2q", plan.flood_secs));
    for (p, warmup) in schedule(&[flood::Peer::Synx, flood::Peer::Kernel], plan.rounds, true) {
        let secs = if warmup { plan.warmup_secs } else { plan.flood_secs };
        let o = flood::round(rig, p, secs, all, all);
        details.push(c.record(p.name(), warmup, o));
    }
    let _ = rig.flood_sinks(false);
    let _ = rig.kernel_net.client.exec("ethtool", &["-K", &client_if, "tso", "on"]);
    let _ = set_sysctl(&rig.kernel_net.server, "net.ipv4.tcp_syncookies", &old);
    let mut flood_rows = c.finish();
    for r in &mut flood_rows {
        if r.name.starts_with("syn_flood_synacks_per_cpu_s") {
            r.unit = "SYN-ACK/machine CPU-s".into();
            r.note = "SYN-ACKs per second of both CPUs' busy time (server, clients and generators share them)".into();
        } else if r.name.starts_with("syn_flood_server_cpu_pct") {
            r.note = "both CPUs' busy time (generators included)".into();
        }
    }
    rows.extend(flood_rows);
    Ok(())
}
