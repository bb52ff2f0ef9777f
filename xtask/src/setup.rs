//! `cargo xtask setup`: idempotent; one line per step; seconds when everything is present.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::workspace_root;

/// Debian packages the tests, demo and benchmarks use, with a command each provides (to check
/// for presence without asking apt).
const DEBIAN: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("nftables", "nft"),
    ("ethtool", "ethtool"),
    ("tcpdump", "tcpdump"),
    ("netsniff-ng", "trafgen"),
    ("hping3", "hping3"),
    ("iperf3", "iperf3"),
    ("curl", "curl"),
    ("wrk", "wrk"),
    // The backend that reads the PROXY protocol, and the reverse proxy the http proxy is
    // measured against; its service is not started (the tests start their own, in namespaces).
    ("nginx", "nginx"),
    // promtool checks the metrics endpoint's text format.
    ("prometheus", "promtool"),
    // BGP for the multi-host test bed and demo (tests/testbed/multihost.rs).
    ("bird2", "bird"),
];
/// Python modules the tests use (crafted packets), as (pip package, import name).
const PYTHON: &[(&str, &str)] = &[("scapy", "scapy")];

fn step(msg: &str) {
    println!("setup: {msg}");
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Run a step's command quietly; its output is shown only when it fails.
fn quiet(mut cmd: Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// The `channel = "..."` of rust-toolchain.toml.
fn pinned_toolchain() -> anyhow::Result<String> {
    let text = std::fs::read_to_string(workspace_root().join("rust-toolchain.toml"))?;
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("channel")
                .and_then(|r| r.trim().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .context("no channel in rust-toolchain.toml")
}

pub fn setup() -> anyhow::Result<()> {
    let toolchain = pinned_toolchain()?;
    toolchain_step(&toolchain)?;
    bpf_linker_step(&toolchain)?;
    cargo_fuzz_step(&toolchain)?;
    debian_step()?;
    python_step()?;
    step("done");
    Ok(())
}

fn sysroot(toolchain: &str) -> anyhow::Result<PathBuf> {
    Ok(output(Command::new("rustc").arg(format!("+{toolchain}")).args(["--print", "sysroot"]))?
        .into())
}

fn toolchain_step(toolchain: &str) -> anyhow::Result<()> {
    let has_src = sysroot(toolchain)
        .map(|s| s.join("lib/rustlib/src/rust/library/core/Cargo.toml").exists())
        .unwrap_or(false);
    if has_src {
        step(&format!("toolchain {toolchain} with rust-src: present"));
        return Ok(());
    }
    step(&format!("toolchain {toolchain} with rust-src: installing"));
    quiet({
        let mut c = Command::new("rustup");
        c.args(["toolchain", "install", toolchain, "--profile", "minimal"])
            .args(["--component", "rust-src,clippy,rustfmt"]);
        c
    })
}

/// The libLLVM shared library inside the toolchain's sysroot (what rustc itself links).
fn toolchain_libllvm(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") {
            return Ok(lib.join(name));
        }
    }
    bail!("no libLLVM.so.* in {}", lib.display())
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or("/root".into())).join(".cargo"));
    home.join("bin").join(name)
}

/// bpf-linker must load the very libLLVM of the toolchain that builds the BPF crate.
fn bpf_linker_step(toolchain: &str) -> anyhow::Result<()> {
    let sysroot = sysroot(toolchain)?;
    let libllvm = toolchain_libllvm(&sysroot)?;
    let libname = libllvm.file_name().unwrap().to_string_lossy().into_owned();
    let linker = cargo_bin("bpf-linker");
    if linker.exists() {
        let ldd = output(Command::new("ldd").arg(&linker)).unwrap_or_default();
        let resolved = ldd
            .lines()
            .find(|l| l.contains("libLLVM"))
            .and_then(|l| l.split("=>").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| std::fs::canonicalize(p).ok());
        if resolved.as_deref() == Some(libllvm.as_path()) {
            step(&format!("bpf-linker against {libname}: present"));
            return Ok(());
        }
        step(&format!("bpf-linker: present but not linked to {libname}; rebuilding"));
    } else {
        step(&format!("bpf-linker against {libname}: building (about a minute)"));
    }
    // A fake LLVM prefix whose libLLVM is the toolchain's own (no system LLVM needed).
    let home = PathBuf::from(std::env::var("HOME").unwrap_or("/root".into()));
    let prefix = home.join(".local").join(format!("synx-llvm-{toolchain}"));
    std::fs::create_dir_all(prefix.join("bin"))?;
    std::fs::create_dir_all(prefix.join("lib"))?;
    let llvm_config = prefix.join("bin/llvm-config");
    std::fs::write(&llvm_config, "#!/bin/sh\n")?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&llvm_config, std::fs::Permissions::from_mode(0o755))?;
    for link in ["libLLVM.so".to_string(), libname.clone()] {
        let path = prefix.join("lib").join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&libllvm, &path)?;
    }
    let major = libname
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .context("LLVM major version")?
        .to_string();
    crate::run({
        let mut c = Command::new("cargo");
        c.arg(format!("+{toolchain}"))
            .args(["install", "bpf-linker", "--locked", "--force", "--no-default-features"])
            .args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix)
            .current_dir(std::env::temp_dir());
        c
    })
}

/// cargo-fuzz for `cargo xtask fuzz` (the targets in fuzz/).
fn cargo_fuzz_step(toolchain: &str) -> anyhow::Result<()> {
    if cargo_bin("cargo-fuzz").exists() {
        step("cargo-fuzz: present");
        return Ok(());
    }
    step("cargo-fuzz: building (about a minute)");
    crate::run({
        let mut c = Command::new("cargo");
        c.arg(format!("+{toolchain}")).args(["install", "cargo-fuzz", "--locked"]).current_dir(std::env::temp_dir());
        c
    })
}

fn debian_step() -> anyhow::Result<()> {
    let missing: Vec<&str> =
        DEBIAN.iter().filter(|(_, cmd)| !have(cmd)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        step("debian packages: present");
        return Ok(());
    }
    step(&format!("debian packages: installing {}", missing.join(" ")));
    quiet({
        let mut c = Command::new("apt-get");
        c.args(["update", "-qq"]);
        c
    })?;
    quiet({
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    })
}

fn python_step() -> anyhow::Result<()> {
    let missing: Vec<&str> = PYTHON
        .iter()
        .filter(|(_, module)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        step("python packages: present");
        return Ok(());
    }
    step(&format!("python packages: installing {}", missing.join(" ")));
    quiet({
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(&missing);
        c
    })
}
