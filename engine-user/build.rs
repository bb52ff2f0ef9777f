//! Builds the XDP objects (engine-ebpf's programs) for bpfel-unknown-none with bpf-linker and
//! places them in OUT_DIR, so `cargo build` yields a `synx` binary with them embedded:
//! `synx-xdp`, what `synx run` loads, and `synx-xdp-bench`, the benchmark's and test rig's.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The toolchain that builds the BPF crate: the workspace's pinned one (rust-toolchain.toml).
/// `cargo xtask setup` builds bpf-linker against this toolchain's own libLLVM.
const BPF_TOOLCHAIN: &str = "1.98.0";
const EBPF_PACKAGE: &str = "engine-ebpf";
/// engine-ebpf's binaries, one object each (aya-build builds them all).
const EBPF_BINS: [&str; 2] = ["synx-xdp", "synx-xdp-bench"];

fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        // Pure-userspace work (the sans-IO TCP core) can build without bpf-linker; the daemon
        // then refuses to start with a message that says how to build the real objects.
        for bin in EBPF_BINS {
            std::fs::write(Path::new(&out_dir).join(bin), b"")?;
        }
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // -Z build-std=core on a stable toolchain.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package { name: EBPF_PACKAGE, root_dir: root_dir.as_str(), ..Default::default() }],
        Toolchain::Custom(BPF_TOOLCHAIN),
    )
    .context("building the XDP programs failed; run `cargo xtask setup` to install bpf-linker")
}
