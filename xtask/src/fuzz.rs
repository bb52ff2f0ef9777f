//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/`, each for a while, starting from the
//! corpus kept in `fuzz/corpus/TARGET`. `cargo xtask test` runs each for a few seconds.
//!
//! The pinned (stable) toolchain builds them with RUSTC_BOOTSTRAP=1 (libFuzzer's coverage
//! flags are unstable), without a sanitizer: the code under test is safe Rust, and the
//! targets check invariants themselves; ASan would only slow each run several times.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{run, target_dir, workspace_root};

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: [&str; 7] = ["tcp_segments", "endpoint", "cookie", "wire_parse", "http_request", "http_proxy_head", "http_proxy_response"];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Only these targets (default: all).
    targets: Vec<String>,
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.arg("fuzz").current_dir(workspace_root()).env("RUSTC_BOOTSTRAP", "1").env("AYA_BUILD_SKIP", "1");
    c
}

fn require_cargo_fuzz() -> anyhow::Result<()> {
    let ok = cargo_fuzz().arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        bail!("cargo-fuzz is not installed: run `cargo xtask setup`");
    }
    Ok(())
}

pub fn fuzz(args: FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t}: choose from {}", TARGETS.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    run_targets(&targets, args.time)
}

/// Build the targets once, then run each for `secs` seconds. New inputs go to
/// `target/fuzz-corpus/TARGET` (kept between runs, not in the repository); a crash stops the
/// run with the input in `fuzz/artifacts/TARGET`.
pub fn run_targets(targets: &[&str], secs: u64) -> anyhow::Result<()> {
    require_cargo_fuzz()?;
    let mut build = cargo_fuzz();
    build.args(["build", "--sanitizer", "none"]);
    run(build).context("building the fuzz targets")?;
    for target in targets {
        let kept = workspace_root().join("fuzz/corpus").join(target);
        let fresh: PathBuf = target_dir().join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&kept)?;
        std::fs::create_dir_all(&fresh)?;
        println!("fuzz: {target} for {secs} s");
        let mut c = cargo_fuzz();
        // libFuzzer writes new inputs to the first directory only.
        c.args(["run", "--sanitizer", "none", target])
            .arg(&fresh)
            .arg(&kept)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]);
        run(c).with_context(|| format!("fuzz target {target} failed; its input is in fuzz/artifacts/{target}"))?;
    }
    Ok(())
}
