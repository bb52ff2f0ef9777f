//! `cargo xtask`: the project's own build, setup, test and demo commands.

mod bench;
mod demo;
mod fuzz;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "synx build, setup, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: the pinned toolchain's rust-src, bpf-linker built
    /// against that toolchain's LLVM, and the Debian and Python packages the tests use.
    Setup,
    /// Build the workspace (the XDP object is built and embedded by engine-user/build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run the daemon: `cargo xtask run -- run --iface IF --listen ADDR:PORT`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test tier: unit, BPF_PROG_TEST_RUN and veth integration (needs root), then
    /// each fuzz target for a few seconds (not when a filter is given).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the cargo-fuzz targets in fuzz/, each for `--time` seconds.
    Fuzz(fuzz::FuzzArgs),
    /// Two namespaces joined by a veth pair, synx on one side, a real Linux client on the
    /// other; prints what happened and removes everything it created.
    Demo,
    /// synx against the Linux kernel, side by side in one run, with ratios (needs root).
    Bench(bench::BenchArgs),
    /// BENCHMARKS.md from the JSON of a `cargo xtask bench --json` run.
    BenchReport(bench::ReportArgs),
}

/// Seconds per fuzz target in `cargo xtask test` (seven targets: about 35 s).
const FUZZ_SECS_IN_TEST: u64 = 5;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace root")
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// Build the daemon in release mode and return its path.
pub fn build_synx() -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--release", "--package", "engine-user", "--bin", "synx"]);
    run(c)?;
    Ok(target_dir().join("release").join("synx"))
}

/// Raise RLIMIT_NOFILE as far as allowed (children inherit it); returns the soft limit now.
pub fn raise_nofile() -> u64 {
    let _ = std::fs::write("/proc/sys/fs/nr_open", "4194304");
    let rl = libc::rlimit { rlim_cur: 4_000_000, rlim_max: 4_000_000 };
    // SAFETY: setrlimit with a valid struct; failure leaves the old limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        let rl = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            // Without CAP_SYS_RESOURCE only the soft limit may rise, up to the hard one.
            let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit/setrlimit with valid structs.
            unsafe {
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
                cur.rlim_cur = cur.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &cur);
            }
        }
    }
    let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) };
    now.rlim_cur
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (network namespaces, veth, XDP): run it as root");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build { release } => {
            let mut c = cargo();
            // Default members: engine-ebpf only builds for bpfel-unknown-none (via build.rs).
            c.arg("build");
            if release {
                c.arg("--release");
            }
            run(c)
        }
        Task::Run { args } => {
            let bin = build_synx()?;
            let mut c = Command::new(bin);
            c.args(args);
            run(c)
        }
        Task::Test { args } => {
            require_root("cargo xtask test")?;
            let bin = build_synx()?;
            // The takeover test's last successor is another build of the same source (issue 17:
            // "the last with a rebuilt binary"): the debug one, whose dependencies the test
            // build compiles anyway.
            let mut debug = cargo();
            debug.args(["build", "--package", "engine-user", "--bin", "synx"]);
            run(debug)?;
            let mut c = cargo();
            // Default members: engine-ebpf only builds for bpfel-unknown-none (via build.rs).
            c.arg("test").args(&args).env("SYNX_BIN", &bin).env("SYNX_SUCCESSOR_BIN", target_dir().join("debug").join("synx"));
            run(c)?;
            if args.is_empty() {
                // A few seconds each, from the corpus in the repository: what the targets
                // found before stays fixed, and a change that breaks an invariant on the
                // paths the corpus covers shows up here.
                fuzz::run_targets(&fuzz::TARGETS, FUZZ_SECS_IN_TEST)?;
            }
            Ok(())
        }
        Task::Fuzz(args) => fuzz::fuzz(args),
        Task::Bench(args) => {
            if args.list() {
                return Ok(());
            }
            require_root("cargo xtask bench")?;
            let bin = match &args.synx_bin {
                Some(bin) => bin.clone(),
                None => build_synx()?,
            };
            bench::bench(args, &bin)
        }
        Task::BenchReport(args) => bench::bench_report(args),
        Task::Demo => {
            require_root("cargo xtask demo")?;
            let bin = build_synx()?;
            demo::demo(&bin)
        }
    }
}
