//! `synx`: the daemon (`synx run`) and its operator commands (`synx conns`, `synx stats`,
//! `synx drain`, `synx keygen`).

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::bail;
use clap::{Parser, Subcommand};
use synx::{
    apps::App,
    bpf::AttachMode,
    cluster::DrainSyns,
    config::{self, FileConfig, FlagConfig, ListenSpec, parse_duration},
    control::{self, Request},
};

#[derive(Parser, Debug)]
#[command(name = "synx", version, about = "XDP-accelerated server-side TCP connection engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
enum Command {
    /// Attach the XDP program to an interface and serve TCP on the listed addresses.
    Run(RunArgs),
    /// List the daemon's connections, like `ss -tan`.
    Conns {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
    },
    /// Attach an XDP_PASS program to the peer end of a veth (native XDP_TX on veth needs it)
    /// until SIGINT/SIGTERM.
    #[command(hide = true)]
    PeerPass {
        #[arg(long)]
        iface: String,
    },
    /// Make the running daemon read its configuration again (as SIGHUP does) and apply what
    /// can change in place: listeners, keepalive, max_conns, grace.
    Reload {
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
    },
    /// Print every counter of the running daemon (XDP and userspace).
    Stats {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
    },
    /// Take no new connections while the open ones finish: new SYNs get no SYN-ACK (or go to
    /// the kernel, see `run --drain-syns`), handshakes already begun complete. Withdraw the
    /// route meanwhile; stop the daemon once no connection is open.
    Drain {
        /// Take new connections again.
        #[arg(long)]
        stop: bool,
        /// Wait until no connection is open (printing how many are, every second).
        #[arg(long, conflicts_with = "stop")]
        wait: bool,
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
    },
    /// Write a new SYN-cookie key to PATH (32 random bytes as hex, mode 0600) for
    /// `run --cookie-key-file`; copy the same file to every host that serves the same
    /// addresses. An existing file is never overwritten.
    Keygen { path: PathBuf },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Network interface to attach to.
    #[arg(long)]
    iface: Option<String>,
    /// ADDR:PORT[=APP] to serve; IPv6 as [ADDR]:PORT; 0.0.0.0 / [::] for every address.
    /// Repeat for several listeners.
    #[arg(long = "listen", value_parser = clap::value_parser!(ListenSpec))]
    listen: Vec<ListenSpec>,
    /// Application for listeners without =APP: echo, discard, http or proxy=HOST:PORT.
    #[arg(long, value_parser = clap::value_parser!(App))]
    app: Option<App>,
    /// Idle time before the first keepalive probe (75s, 2h, 500ms or seconds). Default 2h.
    #[arg(long, value_parser = parse_duration)]
    keepalive_idle: Option<Duration>,
    /// Time between unanswered keepalive probes. Default 75s.
    #[arg(long, value_parser = parse_duration)]
    keepalive_interval: Option<Duration>,
    /// Unanswered probes before the connection is reset. Default 10.
    #[arg(long)]
    keepalive_probes: Option<u32>,
    /// Turn keepalive off.
    #[arg(long)]
    no_keepalive: bool,
    /// Refuse ECN (RFC 3168): SYN-ACKs never agree to it. Default: agree when the client's SYN
    /// asks, as Linux's net.ipv4.tcp_ecn=2.
    #[arg(long)]
    no_ecn: bool,
    /// Maximum segment lifetime; TIME_WAIT lasts 2*MSL. Default 30s.
    #[arg(long, value_parser = parse_duration)]
    msl: Option<Duration>,
    /// Most connections held at once. Default 1048576.
    #[arg(long)]
    max_conns: Option<u32>,
    /// native (driver) XDP, or skb (generic) for devices without native XDP.
    #[arg(long, value_enum)]
    xdp_mode: Option<AttachMode>,
    /// How XDP sends its answers (SYN-ACKs, RSTs) back out: `auto` (default) redirects to the
    /// interface on a veth in native mode and uses XDP_TX everywhere else; `tx`: XDP_TX, the
    /// driver's own transmit ring; `redirect`: bpf_redirect to the interface. On a veth
    /// (Linux 6.18) a native XDP_TX frame to a peer that runs no XDP program waits for the
    /// peer's next NAPI run, so handshakes stall; a redirect wakes the peer. Either way the
    /// peer veth needs GRO on or an XDP program to take XDP's frames.
    #[arg(long, value_enum)]
    xdp_tx: Option<synx::bpf::XdpTx>,
    /// After work, keep polling for this long before sleeping: can lower latency for requests
    /// that follow each other closely, paid in CPU. Default 0 (off).
    #[arg(long, value_parser = parse_duration)]
    busy_poll: Option<Duration>,
    /// When a turn's frames come from several connections, hold them on the TX ring up to
    /// this long for more before waking the kernel to send them (64 go at once): one system
    /// call, and one wakeup of the CPU that receives them, for many connections' segments, as
    /// a NIC coalesces its interrupts. The engine thread sleeps meanwhile. A lone
    /// connection's segments go at once. 0 sends every turn's frames at once. Default 20us.
    #[arg(long, value_parser = parse_duration)]
    tx_coalesce: Option<Duration>,
    /// How long XDP drops a segment with data for no connection whose SYN cookie does not
    /// check, before it resets the client: such a segment may be the first to arrive of a
    /// client whose handshake ACK and first data were lost, and its retransmission then
    /// starts the connection; a client of a connection no host holds is reset at its first
    /// retransmission after this. 0 resets at once, as Linux does with SYN cookies.
    /// Default 1s.
    #[arg(long, value_parser = parse_duration)]
    cookie_miss_hold: Option<Duration>,
    /// SYN-ACK retransmissions of a handshake XDP answered with a SYN cookie, while its final
    /// ACK has not come (at 1, 3, 7, 15, 31 s, as Linux's net.ipv4.tcp_synack_retries): a
    /// client whose ACK was lost and that waits for the server to speak first (SMTP, MySQL
    /// banners through `proxy`) answers one, and the connection starts. 0..6; 0 sends none.
    /// Default 5.
    #[arg(long, value_name = "N")]
    synack_retries: Option<u8>,
    /// AF_XDP preferred busy polling, N frames per poll (SO_BUSY_POLL_BUDGET; 64 is a NAPI's
    /// usual weight): each engine thread runs its RX queue's NAPI itself at every receive
    /// instead of being woken by the device, and gives the device its notification back
    /// before it sleeps. Set the device's napi_defer_hard_irqs and gro_flush_timeout first
    /// (e.g. 2 and 50000), or every frame still wakes its NAPI. The kernel polls only a NAPI
    /// whose id the driver gave the socket: on veth (Linux 6.18) none, so there it polls
    /// nothing and the engine logs `no NAPI id`. Default 0 (off).
    #[arg(long, value_name = "N")]
    prefer_busy_poll: Option<u16>,
    /// The interface's NAPI deferral (napi_defer_hard_irqs, gro_flush_timeout: the kernel's
    /// software interrupt coalescing). `auto` (default): 2 runs of 20 us while a queue hears
    /// from 8 or more clients in 5 ms, for 10 ms running (one wakeup of the NAPI then serves
    /// many connections' frames), back to the kernel's 0, 0 after 100 ms of at most 2 (a lone
    /// flow's frames would only wait) and when synx stops, and off for 1 s (doubling up to 64
    /// s) when the frame rate of its first 20 ms fell over 10%; an interface whose deferral was
    /// set to anything else, or one with several RX queues, is left alone. `off`: never touch
    /// it.
    #[arg(long, value_enum)]
    coalesce: Option<synx::engine::coalesce::CoalesceMode>,
    /// The interface's NAPI threads, where it runs its NAPI threaded (/sys/class/net/IFACE/
    /// threaded): `keep` (default) leaves them as they are; `batch` keeps them at SCHED_BATCH
    /// while synx runs (looked up every second), so a NAPI thread woken by frames does not
    /// preempt the engine thread on its CPU mid-batch but runs when the engine sleeps, at the
    /// cost of a wait of up to the rest of the engine's turn; the threads synx changed go back
    /// to their class when it stops.
    #[arg(long, value_enum)]
    napi_threads: Option<synx::engine::napi_sched::NapiThreadsMode>,
    /// Segmentation offload: `auto` (default) sends each train of full-sized segments one
    /// connection sends back to back as one frame through a packet socket with a virtio-net
    /// header, which the interface's TSO (or the kernel's GSO) cuts into those segments, while
    /// the interface has TSO on; otherwise, and with `off`, every segment goes through AF_XDP.
    #[arg(long, value_enum)]
    gso: Option<synx::engine::gso::GsoMode>,
    /// Where the apps run: `engine` (default), each connection's app on the engine thread of
    /// its RX queue, one wakeup per request/response; `worker`, all apps on one tokio worker
    /// thread beside the engine threads.
    #[arg(long, value_enum)]
    app_threads: Option<config::AppThreads>,
    /// Bytes all connections' buffers may hold (256M, 4G, ...): above three quarters windows
    /// shrink, above it new data is refused and the largest holders are reset. Default 1G.
    #[arg(long, value_parser = config::parse_size)]
    mem_limit: Option<u64>,
    /// Connections one source address may hold at once. Default: no limit.
    #[arg(long)]
    max_conns_per_source: Option<u32>,
    /// Bytes one source address's connections may hold on each engine thread. Default: no
    /// limit beyond --mem-limit.
    #[arg(long, value_parser = config::parse_size)]
    mem_per_source: Option<u64>,
    /// How long a connection may wait behind a zero window with data to send before it is
    /// reset. Default 5m.
    #[arg(long, value_parser = parse_duration)]
    persist_timeout: Option<Duration>,
    /// On SIGTERM, how long open connections may finish before they are reset. Default 5s.
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// TOML file with the same settings (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket for `synx conns` / `synx stats` / `synx drain` (created mode 0600).
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
    /// Key shared by every host that serves the same addresses (`synx keygen`): SYN-cookie
    /// secrets derived from it, so any host validates another's cookies. Owned by root, mode
    /// 0600. Default: a random secret per period, this host's alone.
    #[arg(long)]
    cookie_key_file: Option<PathBuf>,
    /// Every host serving the same addresses, by IPv4 address, this one included
    /// (comma-separated): a segment of a connection this host does not hold goes to the
    /// others (second chance) instead of being reset, and the hosts compare clocks and keys.
    #[arg(long, value_delimiter = ',')]
    peer_hosts: Vec<std::net::Ipv4Addr>,
    /// UDP port the hosts talk on. Default 19523.
    #[arg(long)]
    peer_port: Option<u16>,
    /// While draining: drop new SYNs (default; the client retries elsewhere once the route is
    /// withdrawn) or pass them to the kernel.
    #[arg(long, value_enum)]
    drain_syns: Option<DrainSyns>,
    /// Take over from the synx running on the same control socket: its XDP attachment, maps and
    /// cookie secrets, and every connection (established, idle, closing), with no reset and no
    /// SYN unanswered; it exits once it holds nothing. The same listeners and settings (the
    /// binary may be newer).
    #[arg(long)]
    takeover: bool,
    /// A bpffs mount where the running synx pins its maps and attachment for `--takeover`.
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// Pretend this host's clock is this many ms off (tests of the clock checks).
    #[arg(long, hide = true, allow_negative_numbers = true, default_value_t = 0)]
    clock_skew_ms: i64,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line for the operator; causes joined with ": ".
            eprintln!("synx: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => {
            let file = match &args.config {
                Some(path) => FileConfig::load(path).map_err(anyhow::Error::msg)?,
                None => FileConfig::default(),
            };
            let flags = FlagConfig {
                iface: args.iface,
                listen: args.listen,
                app: args.app,
                no_keepalive: args.no_keepalive,
                keepalive_idle: args.keepalive_idle,
                keepalive_interval: args.keepalive_interval,
                keepalive_probes: args.keepalive_probes,
                no_ecn: args.no_ecn,
                msl: args.msl,
                max_conns: args.max_conns,
                xdp_mode: args.xdp_mode,
                xdp_tx: args.xdp_tx,
                busy_poll: args.busy_poll,
                tx_coalesce: args.tx_coalesce,
                cookie_miss_hold: args.cookie_miss_hold,
                synack_retries: args.synack_retries,
                prefer_busy_poll: args.prefer_busy_poll,
                coalesce: args.coalesce,
                napi_threads: args.napi_threads,
                gso: args.gso,
                grace: args.grace,
                app_threads: args.app_threads,
                metrics: args.metrics,
                mem_limit: args.mem_limit,
                max_conns_per_source: args.max_conns_per_source,
                mem_per_source: args.mem_per_source,
                persist_timeout: args.persist_timeout,
                cookie_key_file: args.cookie_key_file,
                peer_hosts: args.peer_hosts,
                peer_port: args.peer_port,
                drain_syns: args.drain_syns,
                clock_skew_ms: args.clock_skew_ms,
            };
            let cfg = config::merge(flags.clone(), file).map_err(anyhow::Error::msg)?;
            synx::daemon::run(cfg, flags, args.config, args.control_socket, args.takeover.then_some(args.bpffs))
        }
        Command::PeerPass { iface } => {
            let _pass = synx::bpf::PeerPass::attach(&iface, AttachMode::Native)?;
            writeln!(std::io::stdout(), "attached XDP_PASS to {iface}")?;
            std::io::stdout().flush()?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                anyhow::Ok(())
            })
        }
        Command::Reload { control_socket } => {
            let reply = control::request(&control_socket, Request::Reload)?;
            if let Some(e) = reply.get("error").and_then(|e| e.as_str()) {
                bail!("reload: {e}");
            }
            let done = reply.get("reloaded").and_then(|d| d.as_str()).unwrap_or("done");
            writeln!(std::io::stdout(), "reloaded: {done}")?;
            Ok(())
        }
        Command::Stats { json, control_socket } => {
            let stats = control::request(&control_socket, Request::Stats)?;
            if let Some(e) = stats.get("error") {
                bail!("daemon: {e}");
            }
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{stats}")?;
            } else if let Some(map) = stats.as_object() {
                for (k, v) in map {
                    writeln!(out, "{k:<32} {v}")?;
                }
            }
            Ok(())
        }
        Command::Drain { stop, wait, control_socket } => {
            let reply = control::request(&control_socket, if stop { Request::Undrain } else { Request::Drain })?;
            if let Some(e) = reply.get("error") {
                bail!("daemon: {e}");
            }
            let open = |r: &serde_json::Value| r.get("connections_open").and_then(|v| v.as_u64()).unwrap_or(0);
            let mut out = std::io::stdout().lock();
            if stop {
                writeln!(out, "taking new connections again ({} open)", open(&reply))?;
                return Ok(());
            }
            writeln!(out, "draining: no new connections; {} open", open(&reply))?;
            let mut left = open(&reply);
            while wait && left > 0 {
                std::thread::sleep(Duration::from_secs(1));
                let stats = control::request(&control_socket, Request::Stats)?;
                left = open(&stats);
                writeln!(out, "{left} open")?;
            }
            Ok(())
        }
        Command::Keygen { path } => {
            synx::cookie_key::keygen(&path)?;
            writeln!(std::io::stdout(), "wrote a new cookie key to {} (mode 0600): copy it to every host", path.display())?;
            Ok(())
        }
        Command::Conns { json, control_socket } => {
            let conns = control::request(&control_socket, Request::Conns)?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{conns}")?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<12} {:<46} {:<46} {:>10} {:>6} {:>9} {:>9} {:>9} {:>7}",
                "State", "Local", "Peer", "Idle", "Probes", "Send-Q", "Recv-Q", "Cwnd", "RTO"
            )?;
            for c in conns.as_array().map(Vec::as_slice).unwrap_or_default() {
                let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
                let n = |k: &str| c.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                let idle = humantime::format_duration(Duration::from_millis(n("idle_ms"))).to_string();
                let tcp = |k: &str| c.get("tcp").and_then(|t| t.get(k)).and_then(|v| v.as_u64()).unwrap_or(0);
                writeln!(
                    out,
                    "{:<12} {:<46} {:<46} {:>10} {:>6} {:>9} {:>9} {:>9} {:>5}ms",
                    s("state"),
                    s("local"),
                    s("remote"),
                    idle,
                    n("keepalive_probes"),
                    tcp("send_queued"),
                    tcp("recv_queued"),
                    tcp("cwnd"),
                    tcp("rto_ms"),
                )?;
            }
            Ok(())
        }
    }
}
