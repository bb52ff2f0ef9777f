//! The object `synx run` loads: the XDP program it attaches, and nothing else.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use engine_ebpf::program::{SynxCookies, handle};

#[xdp]
pub fn synx_xdp(ctx: XdpContext) -> u32 {
    handle::<SynxCookies>(&ctx)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
