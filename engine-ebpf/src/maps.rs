//! The maps the XDP program shares with userspace (names and layouts in
//! `engine_common::maps`), and its outcome counters.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, XskMap},
};
use engine_common::{
    counters::{self, Counter},
    maps::{
        COOKIE_MISSES4_LEN, COOKIE_MISSES6_LEN, CookieMiss, DEFAULT_MAX_FLOWS, FlowFilterLine, FlowKey4, FlowKey6, LISTEN_PORTS_LEN, ListenerKey, ListenerValue, MAX_QUEUES, PortListeners, ProbeAnswer,
        RxBacklogEntry, SYN_RECORDS_BYTES, SWITCH_DRAINING, SWITCH_RING_HOPS, SWITCH_RING_NEXT, SWITCHES_LEN,
    },
    secrets::{self, CookieSecrets, Published},
};

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);
#[map(name = "LISTEN_PORTS")]
pub static LISTEN_PORTS: Array<PortListeners> = Array::with_max_entries(LISTEN_PORTS_LEN, 0);
#[map(name = "LISTENERS")]
pub static LISTENERS: HashMap<ListenerKey, ListenerValue> = HashMap::with_max_entries(256, 0);
#[map(name = "FLOWS4")]
pub static FLOWS4: HashMap<FlowKey4, u32> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map(name = "FLOWS6")]
pub static FLOWS6: HashMap<FlowKey6, u32> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_PREALLOC);
#[map(name = "FLOW_FILTER")]
pub static FLOW_FILTER: Array<FlowFilterLine> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "XSKS")]
pub static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);
#[map(name = "COOKIE_SECRETS")]
pub static COOKIE_SECRETS: Array<CookieSecrets> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "SWITCHES")]
pub static SWITCHES: Array<u32> = Array::with_max_entries(SWITCHES_LEN, 0);
#[map(name = "COOKIE_MISSES4")]
pub static COOKIE_MISSES4: LruHashMap<FlowKey4, CookieMiss> = LruHashMap::with_max_entries(COOKIE_MISSES4_LEN, 0);
#[map(name = "COOKIE_MISSES6")]
pub static COOKIE_MISSES6: LruHashMap<FlowKey6, CookieMiss> = LruHashMap::with_max_entries(COOKIE_MISSES6_LEN, 0);
#[map(name = "SYN_RECORDS")]
pub static SYN_RECORDS: RingBuf = RingBuf::with_byte_size(SYN_RECORDS_BYTES, 0);
#[map(name = "RX_BACKLOG")]
pub static RX_BACKLOG: Array<RxBacklogEntry> = Array::with_max_entries(MAX_QUEUES, BPF_F_MMAPABLE);
#[map(name = "PROBE_ANSWERS")]
pub static PROBE_ANSWERS: Array<ProbeAnswer> = Array::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_MMAPABLE);

/// Count one `c` on this CPU.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(c) {
        // SAFETY: per-CPU slot; no other writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Whether FLOWS may hold an entry of the tuple whose [`FLOW_FILTER`] bit is `bit` (see
/// `engine_common::maps::FLOW_FILTER`): false only when the bit is clear.
#[inline(always)]
pub fn maybe_flow(bit: u32) -> bool {
    FLOW_FILTER.get(bit >> 9).is_none_or(|l| (l.words[(bit >> 6) as usize & 7] >> (bit & 63)) & 1 != 0)
}

/// The published cookie secrets and clock adjustment, or `None` before userspace published any
/// (or while it rewrites both slots, which it never does within one program run).
#[inline(always)]
pub fn published_secrets() -> Option<Published> {
    let p = COOKIE_SECRETS.get_ptr(0)?;
    // SAFETY: the map's one value, live for the program's run; read as `secrets::read` says.
    unsafe { secrets::read(p) }
}

/// Whether userspace has asked the host to drain.
#[inline(always)]
pub fn draining() -> bool {
    SWITCHES.get(SWITCH_DRAINING).is_some_and(|v| *v != 0)
}

/// The next live host of the second-chance ring (IPv4 wire word) and the hosts a forwarded
/// segment may visit: (0, 0) when there is none.
#[inline(always)]
pub fn ring() -> (u32, u8) {
    let next = SWITCHES.get(SWITCH_RING_NEXT).map_or(0, |v| *v);
    let hops = SWITCHES.get(SWITCH_RING_HOPS).map_or(0, |v| *v);
    (next, if hops > 255 { 255 } else { hops as u8 })
}
