//! Code generation flags for bpf-linker (which turns the crate's bitcode into BPF).
//!
//! - `allows-misaligned-mem-access` (LLVM 22): packet fields sit at any offset (the IPv4
//!   addresses at 26 and 30 of the frame), and without it LLVM assembles every unaligned u16/u32
//!   from byte loads, shifts and ors. The kernel allows unaligned packet and map-value access on
//!   architectures with efficient unaligned access (x86-64, arm64); stack accesses must stay
//!   aligned, so the program keeps its stack objects in naturally aligned types.
fn main() {
    println!("cargo::rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
}
