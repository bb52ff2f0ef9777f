//! Types and pure logic shared across the BPF boundary.
//!
//! Everything here is `#![no_std]` and compiles both for `bpfel-unknown-none` (the XDP program)
//! and for the host (the daemon and its tests), so the two sides agree byte for byte.
//! Map keys and values are `#[repr(C)]` with explicit padding and integer flags: no Rust enums
//! or `Option`s cross the boundary.
#![no_std]

pub mod cookie;
pub mod counters;
pub mod handshake;
pub mod maps;
pub mod second_chance;
pub mod secrets;
pub mod synack;
