//! `cargo xtask demo`: synx on a veth pair, a real Linux client on the other side, and the
//! counters that show what happened. Everything it creates is removed at the end, also after
//! Ctrl-C (the signal only sets a flag; the guards' Drop does the cleanup).

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use synx_testbed::{Daemon, VethPair};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

fn say(msg: &str) {
    println!("demo: {msg}");
}

pub fn demo(bin: &Path) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("SYNX_BIN", bin) };

    let net = VethPair::new().context("creating the veth pair")?;
    net.attach_peer_xdp()?;
    say(&format!(
        "server netns {} ({} {} / {}), client netns {} ({} {} / {})",
        net.server.name(),
        net.server_if,
        net.server_v4,
        net.server_v6,
        net.client.name(),
        net.client_if,
        net.client_v4,
        net.client_v6
    ));
    let port = 7;
    let listen = SocketAddr::new(net.server_v4.into(), port);
    let daemon = Daemon::start(&net.server, &net.server_if, &["--listen", &listen.to_string()])?;
    for line in &daemon.banner {
        say(&format!("synx: {line}"));
    }
    check_interrupt()?;

    say(&format!("client: connecting to {listen} with the kernel's TCP (std TcpStream)"));
    let result = net.client.run(move || TcpStream::connect_timeout(&listen, Duration::from_secs(3)))?;
    match result {
        Ok(_) => say("client: connected: XDP answered the SYN with a cookie SYN-ACK and validated the ACK"),
        Err(e) => say(&format!("client: {e}")),
    }
    check_interrupt()?;

    say("synx stats (read back from the XDP program's per-CPU counters):");
    let stats = daemon.stats()?;
    for (k, v) in stats.as_object().context("stats object")? {
        println!("    {k:<28} {v}");
    }
    if daemon.counter("xdp_syn_cookie_sent")? == 0 {
        bail!("the XDP program sent no SYN-ACK");
    }
    let status = daemon.stop()?;
    say(&format!("synx stopped ({status}); XDP detached, namespaces removed"));
    Ok(())
}
