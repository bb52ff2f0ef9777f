//! The synx XDP program: the front door of the engine.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use engine_common::{
    counters::{self, Counter},
    maps::{FAMILY_V4, FAMILY_V6, ListenerKey, ListenerValue},
};

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

#[map(name = "LISTENERS")]
static LISTENERS: HashMap<ListenerKey, ListenerValue> = HashMap::with_max_entries(64, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

#[inline(always)]
fn count(c: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(c) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Bounds-checked pointer to `len` bytes at `off` in the frame.
#[inline(always)]
fn at(ctx: &XdpContext, off: usize, len: usize) -> Option<*const u8> {
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const u8)
}

#[xdp]
pub fn synx_xdp(ctx: XdpContext) -> u32 {
    count(counters::RX_PACKETS);
    match classify(&ctx) {
        Some(c) => {
            count(c);
            if c == counters::DROP_MALFORMED {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
        None => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Option<Counter> {
    let Some(eth) = at(ctx, 0, ETH_HLEN) else {
        return Some(counters::PASS_NOT_IP);
    };
    // SAFETY: 14 bytes checked above.
    let ethertype = unsafe { u16::from_be_bytes([*eth.add(12), *eth.add(13)]) };
    let mut key = ListenerKey { addr: [0; 16], port_be: 0, family: 0, _pad: 0 };
    let l4_off;
    match ethertype {
        ETH_P_IP => {
            let Some(ip) = at(ctx, ETH_HLEN, 20) else {
                return Some(counters::DROP_MALFORMED);
            };
            // SAFETY: 20 bytes checked above.
            let (vihl, proto) = unsafe { (*ip, *ip.add(9)) };
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Some(counters::DROP_MALFORMED);
            }
            if proto != IPPROTO_TCP {
                return Some(counters::PASS_NOT_TCP);
            }
            for i in 0..4 {
                // SAFETY: destination address lies within the 20 checked bytes.
                key.addr[i] = unsafe { *ip.add(16 + i) };
            }
            key.family = FAMILY_V4;
            l4_off = ETH_HLEN + (ihl & 0x3c);
        }
        ETH_P_IPV6 => {
            let Some(ip) = at(ctx, ETH_HLEN, 40) else {
                return Some(counters::DROP_MALFORMED);
            };
            // SAFETY: 40 bytes checked above.
            if unsafe { *ip.add(6) } != IPPROTO_TCP {
                return Some(counters::PASS_NOT_TCP);
            }
            for i in 0..16 {
                // SAFETY: destination address lies within the 40 checked bytes.
                key.addr[i] = unsafe { *ip.add(24 + i) };
            }
            key.family = FAMILY_V6;
            l4_off = ETH_HLEN + 40;
        }
        _ => return Some(counters::PASS_NOT_IP),
    }
    let Some(tcp) = at(ctx, l4_off, 20) else {
        return Some(counters::DROP_MALFORMED);
    };
    // SAFETY: 20 bytes checked above.
    key.port_be = unsafe { u16::from_ne_bytes([*tcp.add(2), *tcp.add(3)]) };
    // SAFETY: map lookups by value; the key lives on our stack.
    let exact = unsafe { LISTENERS.get(&key) }.is_some();
    let wildcard = !exact && {
        key.addr = [0; 16];
        unsafe { LISTENERS.get(&key) }.is_some()
    };
    if exact || wildcard {
        Some(counters::TCP_TO_LISTENER)
    } else {
        Some(counters::PASS_NOT_LISTENER)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
