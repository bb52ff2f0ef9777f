//! `synx-bench`: the processes `cargo xtask bench` starts inside its namespaces, built in release
//! so neither the kernel peer nor the load is slowed by a debug build: the kernel peer server,
//! the load generators, the SYN-flood generator and the XDP micro-benchmark (both on synx's
//! benchmark object, which `synx run` never loads). Each generator prints one JSON object on stdout: what it attempted,
//! what succeeded, and every failure by reason.

mod clients;
mod latency;
mod packet_flood;
mod kernel_server;
mod rate;
mod udp_echo;
mod xdp;
mod xsk_tx;

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "synx-bench", about = "synx bench peers and load generators (run by cargo xtask bench)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve echo / discard / http over kernel TCP: a thread per CPU, SO_REUSEPORT, epoll.
    /// The reflector on synx's server veth (synx stopped): UDP to the benchmark's reflect port
    /// sent back through synx's AF_XDP driver, for SECS. Prints what it echoed.
    XskEcho {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        secs: f64,
    },
    /// The kernel's UDP echo on BIND for SECS (one blocking thread).
    UdpEcho {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
    /// Datagrams of SIZE payload bytes to ADDR, WINDOW in flight, each answer sending the next:
    /// answers per second and round-trip latency.
    UdpPing {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        window: usize,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    KernelServer {
        /// ADDR:PORT=APP (echo, discard, http), repeatable.
        #[arg(long = "listen", required = true)]
        listen: Vec<kernel_server::ListenSpec>,
        /// CPUs to serve on, one pinned thread each (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        cpus: Vec<usize>,
        /// Keepalive idle time (seconds); sets SO_KEEPALIVE with the interval and probes below.
        #[arg(long)]
        keepalive_idle: Option<u64>,
        #[arg(long, default_value_t = 75)]
        keepalive_interval: u64,
        #[arg(long, default_value_t = 9)]
        keepalive_probes: u32,
        #[arg(long, default_value_t = 65535)]
        backlog: i32,
    },
    /// New connections, closed-loop: CONCURRENCY at a time, each connect, one HTTP request with
    /// `Connection: close`, read to EOF, close.
    ConnRate {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// HTTP at a fixed offered rate over CONNS keep-alive connections; latency is measured from
    /// each request's scheduled time (corrected for coordinated omission, as wrk2 does).
    HttpRate {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        conns: usize,
        /// Requests per second, all connections together.
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        secs: f64,
        /// Seconds at the rate before recording.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// Open-loop connects at RATE per second, each checked with a 5-byte echo round trip:
    /// success and connect latency (from the scheduled start).
    ConnectProbe {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        secs: f64,
        /// Seconds a connection may take (connect and round trip) before it counts as failed.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
    /// One connection, BYTES into discard (or through echo, read back): Gbit/s.
    Bulk {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        bytes: usize,
        #[arg(long)]
        echo: bool,
    },
    /// Send a SYN flood from spoofed IPv4 sources (SRC_BASE+1 ..= SRC_BASE+SOURCES, source ports
    /// 1024..61024) out of IFACE for SECS seconds, open loop, through BPF_PROG_TEST_RUN's
    /// live-frame mode, or an AF_PACKET socket where the kernel refuses that mode
    /// (`--generator auto`) or when asked. Prints the frames sent and the generator used.
    Flood {
        #[arg(long)]
        iface: String,
        #[arg(long, value_parser = parse_mac)]
        src_mac: [u8; 6],
        #[arg(long, value_parser = parse_mac)]
        dst_mac: [u8; 6],
        #[arg(long)]
        dst: std::net::SocketAddrV4,
        #[arg(long)]
        src_base: Ipv4Addr,
        #[arg(long)]
        sources: u32,
        #[arg(long)]
        secs: f64,
        #[arg(long, value_enum, default_value_t = xdp::Generator::Auto)]
        generator: xdp::Generator,
    },
    /// AF_XDP transmit alone through synx's driver, on queue 0 of IFACE: UDP frames of LEN
    /// bytes from SRC to DST as fast as the kernel takes them, for SECS seconds. Prints the
    /// frames sent and the wakeups that sent them.
    XskTx {
        #[arg(long)]
        iface: String,
        #[arg(long, value_parser = parse_mac)]
        src_mac: [u8; 6],
        #[arg(long, value_parser = parse_mac)]
        dst_mac: [u8; 6],
        #[arg(long)]
        src: Ipv4Addr,
        #[arg(long)]
        dst: Ipv4Addr,
        #[arg(long, default_value_t = 1514)]
        len: usize,
        #[arg(long)]
        secs: f64,
        /// Frames per second, paced in batches (0: as fast as the kernel takes them).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// The XDP synproxy peer: SYNs to LISTEN answered in XDP with the kernel helper's cookies
    /// (the rest left to nftables synproxy), attached to IFACE until stdin closes.
    XdpSynproxy {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The flood's wire end: an XDP program on IFACE that counts and drops frames to NET/PREFIX
    /// and passes the rest; prints the count for every line read on stdin, until EOF.
    Sink {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        net: Ipv4Addr,
        #[arg(long)]
        prefix: u8,
    },
    /// Per-packet cost of the XDP program's paths (BPF_PROG_TEST_RUN), the flow table at the
    /// daemon's default size holding FLOWS flows.
    XdpMicro {
        /// Timed calls per path (each of 1000 packets).
        #[arg(long, default_value_t = 200)]
        calls: u32,
        #[arg(long, default_value_t = 1_000_000)]
        flows: u32,
    },
    /// Open COUNT connections from SRC to ADDR, print `ready COUNT`, hold them until stdin
    /// closes (one process per open-files limit's worth of idle connections).
    IdleClients {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        src: Ipv4Addr,
        #[arg(long)]
        count: usize,
        /// On each connection, one HTTP request and its response before it goes quiet.
        #[arg(long)]
        http: bool,
    },
}

/// A MAC address written aa:bb:cc:dd:ee:ff.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().map_err(|e| format!("{s}: {e}"))?;
    bytes.try_into().map_err(|_| format!("{s}: a MAC address has six bytes (aa:bb:cc:dd:ee:ff)"))
}

/// Pin the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity on this thread (0) with a valid set of the right size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        anyhow::bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synx-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::KernelServer { listen, cpus, keepalive_idle, keepalive_interval, keepalive_probes, backlog } => {
            let keepalive = keepalive_idle.map(|idle| kernel_server::Keepalive {
                idle: Duration::from_secs(idle),
                interval: Duration::from_secs(keepalive_interval),
                probes: keepalive_probes,
            });
            kernel_server::run(&kernel_server::Options { listen, cpus, keepalive, backlog })
        }
        Command::ConnRate { addr, secs, concurrency } => {
            print_json(&clients::conn_rate(addr, Duration::from_secs_f64(secs), concurrency)?.to_json())
        }
        Command::HttpRate { addr, conns, rate, secs, warmup } => print_json(&rate::http_rate(&rate::RateOptions {
            addr,
            conns,
            rate,
            duration: Duration::from_secs_f64(secs),
            warmup: Duration::from_secs_f64(warmup),
        })?),
        Command::ConnectProbe { addr, rate, secs, timeout } => print_json(&clients::connect_probe(
            addr,
            rate,
            Duration::from_secs_f64(secs),
            Duration::from_secs_f64(timeout),
        )?),
        Command::Bulk { addr, bytes, echo } => print_json(&clients::bulk(addr, bytes, echo)?),
        Command::IdleClients { addr, src, count, http } => clients::idle_clients(addr, src, count, http),
        Command::Flood { iface, src_mac, dst_mac, dst, src_base, sources, secs, generator } => {
            print_json(&xdp::flood(&iface, src_mac, dst_mac, dst, src_base, sources, secs, generator)?)
        }
        Command::XdpMicro { calls, flows } => print_json(&xdp::micro(calls, flows)?),
        Command::XskTx { iface, src_mac, dst_mac, src, dst, len, secs, rate } => {
            print_json(&xsk_tx::run(&xsk_tx::Options { iface, src_mac, dst_mac, src, dst, len, secs, rate })?)
        }
        Command::XskEcho { iface, secs } => print_json(&udp_echo::xsk_echo(&iface, secs)?),
        Command::UdpEcho { bind, secs } => print_json(&udp_echo::udp_echo(bind, secs)?),
        Command::UdpPing { addr, size, window, secs, warmup } => print_json(&udp_echo::udp_ping(addr, size, window, secs, warmup)?),
        Command::XdpSynproxy { iface, listen } => xdp::xdp_synproxy(&iface, listen),
        Command::Sink { iface, net, prefix } => xdp::sink(&iface, net, prefix),
    }
}
