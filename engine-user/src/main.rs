//! `synx`: the daemon (`synx run`) and its operator commands (`synx stats`, `synx conns`).

use std::{io::Write as _, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use synx::{
    bpf::{AttachMode, XdpEngine},
    control::{self, Request, Responder},
};

#[derive(Parser, Debug)]
#[command(name = "synx", version, about = "XDP-accelerated server-side TCP connection engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the XDP program on an interface and serve the listeners.
    Run(RunArgs),
    /// Serve the same apps over the kernel's own TCP (no XDP): the side-by-side baseline that
    /// `cargo xtask bench` measures synx against.
    #[command(hide = true)]
    ServeKernel {
        /// ADDR:PORT=APP, repeatable.
        #[arg(long = "listen", value_parser = clap::value_parser!(synx::config::ListenSpec), required = true)]
        listen: Vec<synx::config::ListenSpec>,
    },
    /// Attach an XDP_PASS program to the peer end of a veth (native XDP_TX on veth needs it).
    #[command(hide = true)]
    PeerPass {
        #[arg(long)]
        iface: String,
    },
    /// Print every counter of the running daemon (XDP and userspace).
    Stats {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Network interface to attach to.
    #[arg(long)]
    iface: String,
    /// Address to serve, ADDR:PORT (IPv6 as [ADDR]:PORT; 0.0.0.0 or [::] for every address).
    #[arg(long = "listen", required = true)]
    listen: Vec<SocketAddr>,
    /// native (driver) XDP, or skb (generic) for devices without native XDP.
    #[arg(long, value_enum, default_value = "native")]
    xdp_mode: AttachMode,
    /// Unix socket for `synx stats` / `synx conns` (created mode 0600).
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
}

struct Daemon {
    xdp: std::sync::Mutex<XdpEngine>,
}

impl Daemon {
    fn stats_json(&self) -> serde_json::Value {
        let xdp = self.xdp.lock().expect("xdp lock");
        match xdp.counters() {
            Ok(c) => serde_json::Value::Object(
                c.into_iter().map(|(k, v)| (k.to_string(), v.into())).collect(),
            ),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        }
    }
}

impl Responder for Daemon {
    fn respond(&self, req: Request) -> serde_json::Value {
        match req {
            Request::Stats => self.stats_json(),
            Request::Conns => serde_json::json!([]),
        }
    }
}

/// Print counters one per line; a closed stdout is not worth a panic.
fn print_stats(stats: &serde_json::Value) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Some(map) = stats.as_object() {
        for (k, v) in map {
            let _ = writeln!(out, "{k:<28} {v}");
        }
    } else {
        let _ = writeln!(out, "{stats}");
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut xdp = XdpEngine::attach(&args.iface, args.xdp_mode, 65536, 1460)?;
    for (id, addr) in args.listen.iter().enumerate() {
        xdp.add_listener(*addr, id as u32)?;
    }
    let control = control::bind(&args.control_socket)?;
    let daemon = Arc::new(Daemon { xdp: std::sync::Mutex::new(xdp) });
    let server = tokio::spawn(control::serve(control, daemon.clone()));
    let addrs: Vec<String> = args.listen.iter().map(|a| a.to_string()).collect();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {} (iface {}, xdp {:?})", addrs.join(", "), args.iface, args.xdp_mode)?;
    stdout.flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.abort();
    let _ = std::fs::remove_file(&args.control_socket);
    let _ = writeln!(std::io::stdout(), "shutting down; final counters:");
    print_stats(&daemon.stats_json());
    // Dropping the daemon detaches XDP (bpf_link).
    Ok(())
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(run(args))
        }
        Command::ServeKernel { listen } => serve_kernel(listen),
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
        Command::Stats { json, control_socket } => {
            let stats = control::request(&control_socket, Request::Stats)
                .context("synx stats")?;
            if let Some(e) = stats.get("error") {
                bail!("daemon: {e}");
            }
            if json { println!("{stats}") } else { print_stats(&stats) }
            Ok(())
        }
    }
}

/// The kernel-TCP baseline: the same app code on tokio sockets.
fn serve_kernel(listen: Vec<synx::config::ListenSpec>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        for spec in &listen {
            let app = spec.app.unwrap_or(synx::apps::App::Echo);
            let socket = match spec.addr {
                std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.bind(spec.addr)?;
            let listener = socket.listen(4096)?;
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let _ = synx::apps::serve(app, stream).await;
                    });
                }
            });
        }
        let specs: Vec<String> = listen.iter().map(|s| s.to_string()).collect();
        writeln!(std::io::stdout(), "listening on {} (kernel TCP)", specs.join(", "))?;
        std::io::stdout().flush()?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })
}
