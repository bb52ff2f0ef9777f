//! Loading the embedded XDP program, attaching it, and the maps it shares with userspace:
//! SYN-cookie secrets, listeners, the flow table and AF_XDP sockets (handed to the engine
//! threads), and the RX backlog through mmap; settings fixed for the program's life are
//! read-only globals of the object, set as it loads ([`XdpSettings`]).
//!
//! Two objects are embedded: `synx-xdp`, the program `synx run` attaches and nothing else, and
//! `synx-xdp-bench`, the benchmark's and test rig's programs (the micro-benchmark, the kernel
//! cookie baseline, the SYN-flood generator, the XDP_PASS program for a veth's peer), loaded
//! only by them ([`XdpProgram::load_bench`], [`PeerPass`]).

use std::{
    ffi::CString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf, XskMap},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use engine_common::{
    cookie::{self, Keys, Tuple},
    counters,
    handshake::{FACT_TS, HandshakeFacts},
    maps::{
        self, BenchFrame, FloodState, ProbeAnswer, RxBacklogEntry, FAMILY_V4, FAMILY_V6, FlowKey4, FlowKey6, ListenerKey, ListenerValue,
        PORT_V4_ANY, PORT_V4_MORE, PORT_V4_ONE, PORT_V6_ANY, PORT_V6_SOME, PortListeners, globals,
    },
    secrets::{self, CookieSecrets, Published},
    synack::{self, Ours, Syn, SynAck},
};

use crate::cookie_key::{KeyError, SecretSource};

/// The object `synx run` loads, built by build.rs (aya-build) from engine-ebpf's `synx-xdp`.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synx-xdp"));
/// The benchmark's and test rig's object, from engine-ebpf's `synx-xdp-bench`.
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synx-xdp-bench"));
/// The program `synx run` attaches (XDP_OBJECT).
const PROGRAM: &str = "synx_xdp";
// BENCH_OBJECT's programs, never attached by the daemon.
/// XDP_PASS, for the peer of a veth (native XDP_TX and redirects on a veth need it).
const PEER_PROGRAM: &str = "synx_peer_pass";
/// Micro-benchmark: `synx_xdp`'s code after restoring BENCH_FRAME; the same with the kernel
/// helper's cookies; the restore alone; the kernel-cookie baseline without the restore.
pub const BENCH_SYN_PROGRAM: &str = "synx_bench_syn";
pub const BENCH_SYN_KERNEL_PROGRAM: &str = "synx_bench_syn_kernel";
pub const BENCH_RESTORE_PROGRAM: &str = "synx_bench_restore";
pub const BENCH_KERNEL_PROGRAM: &str = "synx_bench_kernel";
/// The SYN-flood generator (BPF_PROG_TEST_RUN live-frame mode).
const BENCH_FLOOD_PROGRAM: &str = "synx_bench_flood";
/// Window-scale shift announced in SYN-ACKs (Linux announces 7 for its default buffers).
pub const OUR_WSCALE: u8 = 7;
/// RSTs per second per CPU that XDP may send for segments with no connection.
pub const RST_PER_SEC: u32 = 1000;
/// The default of [`XdpSettings::cookie_miss_hold_ms`]: longer than what a client sends before
/// its RTO resends the segment that validates (its tail loss probe, 2 * SRTT and a few ms on
/// Linux, RFC 8985 7.2) on paths up to about 400 ms of RTT; a client of a connection no host
/// holds is reset at its first retransmission after it (Linux: at 1.4 s, its third).
pub const COOKIE_MISS_HOLD_MS: u32 = 1000;
/// Segments per second per CPU that XDP may forward to other hosts (second chance): each
/// forwarded segment costs up to one frame on every other host's link, so a flood of
/// segments for no connection is not multiplied without bound.
pub const FORWARD_PER_SEC: u32 = 100_000;

/// Settings fixed for the program's life: read-only globals of the object
/// (`engine_common::maps::globals`), set as it loads, which the verifier reads as constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpSettings {
    /// Our IPv4 MSS, announced in SYN-ACKs; IPv6 clients are offered 20 bytes less
    /// (`Ours::for_family`).
    pub mss: u16,
    /// The window-scale shift announced to clients that offer scaling.
    pub wscale: u8,
    /// Agree to ECN with clients whose SYN asks for it: the SYN-ACK sets ECE and the cookie
    /// remembers it (RFC 3168 6.1.1; Linux's net.ipv4.tcp_ecn=2, its default).
    pub ecn: bool,
    /// Answer segments with no flow and a bad cookie with an RST (RFC 9293 3.10.7.1) rather
    /// than silence.
    pub rst_bad_cookie: bool,
    /// How long a segment with data, for no flow and with a bad cookie, is dropped before its
    /// tuple and ACK number are reset, in milliseconds (`engine_common::maps::COOKIE_MISSES4`:
    /// it may be a handshake's later segment whose ACK and first segments were lost); 0 resets
    /// at once, as Linux does with cookies.
    pub cookie_miss_hold_ms: u32,
    /// RSTs per second per CPU at most.
    pub rst_per_sec: u32,
    /// SYN-ACKs per second per CPU that XDP records for userspace to retransmit
    /// (`engine_common::maps::SYN_RECORDS`, [`XdpProgram::take_syn_records`]); 0: none, the
    /// default here (the engine turns it on with `--synack-retries`).
    pub syn_record_per_sec: u32,
    /// While draining, hand new SYNs to the kernel (XDP_PASS) instead of leaving them
    /// unanswered.
    pub drain_pass: bool,
    /// Second-chance forwarding to the other hosts that serve the same addresses.
    pub ring: Option<PeerRing>,
    /// Answers (SYN-ACKs, RSTs, forwarded segments) leave by a redirect to the device they
    /// came in on instead of XDP_TX ([`XdpTx`]).
    pub tx_redirect: bool,
}

impl XdpSettings {
    /// The daemon's settings, announcing `mss`.
    pub fn new(mss: u16) -> Self {
        Self {
            mss,
            wscale: OUR_WSCALE,
            ecn: true,
            rst_bad_cookie: true,
            cookie_miss_hold_ms: COOKIE_MISS_HOLD_MS,
            rst_per_sec: RST_PER_SEC,
            syn_record_per_sec: 0,
            drain_pass: false,
            ring: None,
            tx_redirect: false,
        }
    }
}

/// This host's place in the ring of hosts that serve one address (`engine_common::second_chance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRing {
    /// The UDP port the hosts use.
    pub port: u16,
    /// This host's address (the source of what it forwards) and the next host's.
    pub this: Ipv4Addr,
    pub next: Ipv4Addr,
    /// The other hosts: how many a forwarded segment may visit.
    pub others: u8,
}

impl PeerRing {
    /// The ring of `hosts` (every host that serves the address, this one included, in any
    /// order; every host must be given the same set), from `this` host's place.
    pub fn new(this: Ipv4Addr, hosts: &[Ipv4Addr], port: u16) -> Result<Self, String> {
        let mut all: Vec<Ipv4Addr> = hosts.to_vec();
        all.push(this);
        all.sort();
        all.dedup();
        if all.len() < 2 {
            return Err("second chance needs another host".into());
        }
        if all.len() > usize::from(u8::MAX) {
            return Err(format!("{} hosts: at most {}", all.len(), u8::MAX));
        }
        let at = all.iter().position(|a| *a == this).expect("this host is in the set");
        Ok(Self { port, this, next: all[(at + 1) % all.len()], others: (all.len() - 1) as u8 })
    }
}

/// SWITCHES, what userspace flips while the program runs: draining, and the second-chance
/// ring's next host as hosts come and go. Shared by the engine and its cluster thread.
#[derive(Clone)]
pub struct Switches {
    map: Arc<Mutex<Array<MapData, u32>>>,
    /// Draining, as last set (userspace's SYN-ACKs follow it too, see [`CookieChecker::answer`]).
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Switches {
    fn set(&self, index: u32, value: u32) -> Result<(), BpfError> {
        Ok(self.map.lock().unwrap_or_else(|e| e.into_inner()).set(index, &value, 0)?)
    }

    /// Start or stop draining: while draining, SYNs with no connection get no SYN-ACK (see
    /// [`XdpSettings::drain_pass`]); everything else is handled as before.
    pub fn set_draining(&self, on: bool) -> Result<(), BpfError> {
        self.set(maps::SWITCH_DRAINING, u32::from(on))?;
        self.draining.store(on, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forward to `next`, for at most `hops` hosts (the other live hosts); `None`: to nobody.
    pub fn set_ring(&self, next: Option<Ipv4Addr>, hops: u8) -> Result<(), BpfError> {
        // The hops first: a reader between the two stores forwards to the old next host with
        // the new bound, which only ends the chain sooner.
        match next {
            Some(n) => {
                self.set(maps::SWITCH_RING_HOPS, u32::from(hops))?;
                self.set(maps::SWITCH_RING_NEXT, addr_words(n.into())[0])
            }
            None => {
                self.set(maps::SWITCH_RING_HOPS, 0)?;
                self.set(maps::SWITCH_RING_NEXT, 0)
            }
        }
    }

}


#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("this synx binary was built without its XDP program (AYA_BUILD_SKIP); run `cargo xtask setup` then rebuild")]
    NoObject,
    #[error("no network interface named {0:?} (see `ip link`)")]
    NoSuchInterface(String),
    #[error("loading the XDP program failed: {0} (are you root, on a kernel with BPF and BTF?)")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "XDP attach failed on {iface}: another XDP program is already attached (another synx on this interface?); stop it, or remove it with `ip link set dev {iface} xdp off`"
    )]
    Busy { iface: String },
    #[error("XDP attach failed on {iface}: {source}; {hint}")]
    Attach { iface: String, hint: &'static str, source: ProgramError },
    #[error("BPF map {0} missing from the XDP object")]
    MissingMap(&'static str),
    #[error("BPF map access failed: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("mapping a BPF map into memory failed: {0}")]
    Mmap(std::io::Error),
    #[error("SYN-cookie secrets: {0}")]
    Secrets(#[from] KeyError),
    #[error("benchmark object: {0}")]
    Unexpected(String),
    #[error("takeover: {0}")]
    Takeover(String),
}

/// How to attach: native (driver) mode, or generic (skb) mode for devices without XDP support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Skb,
}

/// How the XDP program sends its answers (SYN-ACKs, RSTs, forwarded segments) back out of
/// the device they came in on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpTx {
    /// `redirect` on a veth in native mode, `tx` everywhere else.
    #[default]
    Auto,
    /// XDP_TX: the driver's own transmit ring, the fast path on a NIC.
    Tx,
    /// `bpf_redirect` to the ingress device. On a veth (Linux 6.18) a native XDP_TX frame
    /// reaches a peer that runs no XDP program only at the peer's next NAPI run (the flush
    /// after XDP_TX wakes a peer only when it runs a program, so a handshake waits for a
    /// retransmission), while a redirect's flush always wakes it. The peer still needs a NAPI
    /// to take frames: GRO on, or an XDP program.
    Redirect,
}

impl XdpTx {
    /// Whether answers on `iface`, attached in `mode`, go out by redirect.
    pub fn redirects(self, iface: &str, mode: AttachMode) -> bool {
        match self {
            Self::Tx => false,
            Self::Redirect => true,
            // In skb mode both go through the stack's transmit path; only native XDP_TX on a
            // veth strands frames.
            Self::Auto => mode == AttachMode::Native && driver(iface).is_ok_and(|d| d == "veth"),
        }
    }
}

/// The interface's driver name (ETHTOOL_GDRVINFO): "veth", "mlx5_core", ...
pub fn driver(iface: &str) -> std::io::Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    /// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    if iface.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: a plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = std::ptr::from_mut(&mut info).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq (its name NUL-terminated, being shorter than
    // IFNAMSIZ) and writes `info`, both alive for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the XDP program dates FLOWS claims with
/// (bpf_ktime_get_coarse_ns), so userspace can tell their age.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_TAI in nanoseconds, which the XDP program reads (bpf_ktime_get_tai_ns) for the clock
/// the hosts share (see [`Published::shared_ns`]).
pub fn tai_ns() -> u64 {
    clock_ns(libc::CLOCK_TAI)
}

/// What the kernel says of its clock (adjtimex(2), as NTP daemons set it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelClock {
    /// TAI - UTC in seconds (0 unless a time daemon set it).
    pub tai_offset_s: i32,
    /// Synchronized (no STA_UNSYNC) with an estimated maximum error of at most this many
    /// microseconds; `None` when the kernel says it is not synchronized.
    pub max_error_us: Option<i64>,
}

pub fn kernel_clock() -> KernelClock {
    // SAFETY: a zeroed timex is valid; modes 0 only reads.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: adjtimex with a valid pointer.
    let state = unsafe { libc::adjtimex(&mut t) };
    let unsynced = state < 0 || state == libc::TIME_ERROR || t.status & libc::STA_UNSYNC != 0;
    KernelClock { tai_offset_s: t.tai, max_error_us: (!unsynced).then_some(t.maxerror) }
}

/// The adjustment that turns CLOCK_TAI into the shared clock: minus the kernel's TAI offset
/// (so Unix time, whatever offset each host's time daemon set), plus `skew_ms` (tests: a host
/// whose clock is wrong).
pub fn clock_adjust_ns(tai_offset_s: i32, skew_ms: i64) -> i64 {
    -i64::from(tai_offset_s) * 1_000_000_000 + skew_ms * 1_000_000
}

fn if_index(iface: &str) -> Result<u32, BpfError> {
    let name = CString::new(iface).map_err(|_| BpfError::NoSuchInterface(iface.into()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 { Err(BpfError::NoSuchInterface(iface.into())) } else { Ok(index) }
}

/// Lift the memlock limit for kernels that still charge BPF maps against it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer; failure is harmless on memcg-accounting kernels.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; continuing");
    }
}

/// Load `object` with maps sized for `max_flows` connections and `settings` in its globals;
/// with `pinned`, the maps pinned there by a running synx instead of new ones (see
/// [`takeover`]).
fn load_object(object: &[u8], max_flows: u32, settings: &XdpSettings, pinned: Option<&std::path::Path>) -> Result<Ebpf, BpfError> {
    if object.is_empty() {
        return Err(BpfError::NoObject);
    }
    raise_memlock_limit();
    let ecn = u8::from(settings.ecn);
    let rst_bad_cookie = u8::from(settings.rst_bad_cookie);
    let drain_pass = u8::from(settings.drain_pass);
    let (peer_port, peer_self) = match settings.ring {
        Some(r) => (r.port, addr_words(r.this.into())[0]),
        None => (0, 0),
    };
    let filter_log2 = maps::flow_filter_log2(max_flows);
    let tx_redirect = u8::from(settings.tx_redirect);
    let mut loader = EbpfLoader::new();
    if let Some(dir) = pinned {
        for name in takeover::SHARED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader
        .map_max_entries(maps::FLOWS4, max_flows)
        .map_max_entries(maps::FLOWS6, max_flows)
        .map_max_entries(maps::PROBE_ANSWERS, max_flows)
        .map_max_entries(maps::FLOW_FILTER, maps::flow_filter_lines(filter_log2))
        .override_global(globals::MSS, &settings.mss, true)
        .override_global(globals::WSCALE, &settings.wscale, true)
        .override_global(globals::ECN, &ecn, true)
        .override_global(globals::RST_BAD_COOKIE, &rst_bad_cookie, true)
        .override_global(globals::RST_PER_SEC, &settings.rst_per_sec, true)
        .override_global(globals::COOKIE_MISS_HOLD_MS, &settings.cookie_miss_hold_ms, true)
        .override_global(globals::SYN_RECORD_PER_WINDOW, &maps::syn_records_per_window(settings.syn_record_per_sec), true)
        .override_global(globals::DRAIN_PASS, &drain_pass, true)
        .override_global(globals::PEER_PORT, &peer_port, true)
        .override_global(globals::PEER_SELF, &peer_self, true)
        .override_global(globals::FORWARD_PER_SEC, &FORWARD_PER_SEC, true)
        .override_global(globals::FLOW_FILTER_LOG2, &filter_log2, true)
        .override_global(globals::TX_REDIRECT, &tx_redirect, true)
        .load(object)
        .map_err(|e| match (pinned, e) {
            (Some(_), aya::EbpfError::MapError(e @ aya::maps::MapError::IncompatiblePinnedMap { .. })) => {
                BpfError::Takeover(format!("{e}: the running synx's maps differ from this binary's; nothing changed"))
            }
            (_, e) => BpfError::Load(Box::new(e)),
        })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, BpfError> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| BpfError::Load(format!("program {name} missing").into()))?
        .try_into()
        .map_err(|e: ProgramError| BpfError::Load(Box::new(e)))?;
    Ok(prog)
}

fn attach_program(ebpf: &mut Ebpf, name: &str, iface: &str, mode: AttachMode) -> Result<XdpLinkId, BpfError> {
    let index = if_index(iface)?;
    let prog = program(ebpf, name)?;
    let xdp_mode = match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    };
    let source = match prog.attach(index, xdp_mode) {
        Ok(link) => return Ok(link),
        Err(source) => source,
    };
    {
        let errno = attach_errno(&source);
        if errno == Some(libc::EBUSY) || errno == Some(libc::EEXIST) {
            return Err(BpfError::Busy { iface: iface.into() });
        }
        let hint = match (mode, errno) {
            (AttachMode::Native, Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                "the driver has no native XDP; try --xdp-mode skb"
            }
            (AttachMode::Native, Some(libc::ERANGE)) => {
                "the MTU is too large for native XDP on this device; lower it or try --xdp-mode skb"
            }
            (_, Some(libc::EPERM)) => "run as root (CAP_NET_ADMIN and CAP_BPF)",
            _ => "check `dmesg` and that the kernel has XDP, or try --xdp-mode skb",
        };
        Err(BpfError::Attach { iface: iface.into(), hint, source })
    }
}

fn attach_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => {
            // Netlink fallbacks carry the errno in their message only; look for it there.
            let text = e.to_string();
            if text.contains("Device or resource busy") {
                Some(libc::EBUSY)
            } else if text.contains("Operation not supported") {
                Some(libc::EOPNOTSUPP)
            } else {
                None
            }
        }
    }
}

/// The SYN-cookie secrets as last published to XDP (userspace checks cookie ACKs and answers
/// SYNs that reach it with the same), and what XDP announces in its SYN-ACKs.
#[derive(Clone)]
pub struct CookieChecker {
    published: Arc<RwLock<Published>>,
    ours: Ours,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl CookieChecker {
    fn published(&self) -> Published {
        *self.published.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Decode the final ACK of a cookie handshake (RFC 9293 3.10.7.4 fifth check, with
    /// SYN-RECEIVED held in the cookie): `None` unless `ack - 1` is a cookie minted recently for this tuple, by this
    /// host or one sharing its key. `payload_len`, `options_len`: the segment's data and TCP
    /// options; it may be a later one of the client's first segments (`cookie::check_ack`).
    /// `now_ns`: CLOCK_MONOTONIC, the clock the TCP core counts its TSvals on; the facts'
    /// `ts_offset` is for that clock.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        seq: u32,
        payload_len: u32,
        options_len: u32,
        ack: u32,
        ts: Option<(u32, u32)>,
        now_ns: u64,
    ) -> Option<HandshakeFacts> {
        let tuple = cookie_tuple(local, remote)?;
        let p = self.published();
        let shared_ns = p.shared_ns(tai_ns());
        let mut facts = cookie::decode(&p.keys, &tuple, seq, payload_len, options_len, ack, ts, shared_ns, self.ours.wscale)?;
        if let (true, Some((_, tsecr))) = (facts.has(FACT_TS), ts) {
            facts.ts_offset = cookie::continue_ts_clock(facts.ts_offset, (shared_ns / 1_000_000) as u32, (now_ns / 1_000_000) as u32, tsecr);
        }
        Some(facts)
    }

    /// The SYN-ACK XDP would send to this SYN, from the same code (`engine_common::synack`)
    /// with the same settings and secrets: for SYNs that reach userspace (a new incarnation of
    /// a tuple in TIME-WAIT, RFC 6191). `None` for a tuple of mixed families, while no secret
    /// is published for this period, and while the host drains (no new connections, as in
    /// XDP).
    pub fn answer(&self, local: SocketAddr, remote: SocketAddr, syn: &Syn) -> Option<SynAck> {
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let tuple = cookie_tuple(local, remote)?;
        let p = self.published();
        let now = p.shared_ns(tai_ns());
        let key = p.keys.of(cookie::period(now))?;
        Some(synack::answer(key, &tuple, syn, now, &self.ours.for_family(local.is_ipv6())))
    }

    /// The SYN-ACK XDP sent for `syn` with the cookie it minted at `mint_ns` (the shared clock,
    /// as [`engine_common::maps::SynRecord`] has it), again: the same ISN, a fresh TSval (RFC
    /// 7323 5.4: our TSval clock only moves forward; the option bits in its low bits are the
    /// same). For a retransmission (RFC 9293 3.10.7.2 SYN-RECEIVED, RFC 6298 5.4), also while
    /// draining (the handshake began before). `None` for a tuple of mixed families, or once
    /// the cookie's period has no published secret: its cookie would no longer validate.
    pub fn resend(&self, local: SocketAddr, remote: SocketAddr, syn: &Syn, mint_ns: u64) -> Option<SynAck> {
        let tuple = cookie_tuple(local, remote)?;
        let p = self.published();
        let now = p.shared_ns(tai_ns());
        let key = p.keys.of(cookie::period(mint_ns))?;
        let ours = self.ours.for_family(local.is_ipv6());
        let minted = cookie::make(key, &tuple, syn.isn, mint_ns, syn.cookie_mss(ours.mss));
        Some(synack::build(syn, minted.isn, minted.ts_offset, (now / 1_000_000) as u32, &ours))
    }
}

/// An address's wire bytes as little-endian u32 words, as XDP loads them (IPv4 in word 0).
pub(crate) fn addr_words(ip: IpAddr) -> [u32; 4] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
    }
    let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The cookie's view of a connection (client = remote).
pub fn cookie_tuple(local: SocketAddr, remote: SocketAddr) -> Option<Tuple> {
    match (remote.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => Some(Tuple::v4(c.octets(), s.octets(), remote.port(), local.port())),
        (IpAddr::V6(c), IpAddr::V6(s)) => Some(Tuple::v6(c.octets(), s.octets(), remote.port(), local.port())),
        _ => None,
    }
}

/// The FLOWS4 / FLOWS6 key of a connection.
pub enum FlowKey {
    V4(FlowKey4),
    V6(FlowKey6),
}

pub fn flow_key(local: SocketAddr, remote: SocketAddr) -> FlowKey {
    let ports = maps::ports_word(remote.port(), local.port());
    let (r, l) = (addr_words(remote.ip()), addr_words(local.ip()));
    if local.is_ipv4() {
        FlowKey::V4(FlowKey4 { remote: r[0], local: l[0], ports })
    } else {
        FlowKey::V6(FlowKey6 { remote: r, local: l, ports })
    }
}

/// FLOWS4, FLOWS6 and XSKS, shared by the engine threads (writes happen once per connection,
/// not per packet).
#[derive(Clone)]
pub struct FlowTable {
    flows: Arc<Mutex<FlowMaps>>,
    xsks: Arc<Mutex<XskMap<MapData>>>,
}

struct FlowMaps {
    v4: HashMap<MapData, FlowKey4, u32>,
    v6: HashMap<MapData, FlowKey6, u32>,
    /// CLOCK_MONOTONIC of the last sweep of expired claims (0: none yet).
    swept_ns: u64,
    filter: FlowFilter,
}

/// FLOW_FILTER mapped writable (see `maps::FLOW_FILTER`), and how many of the FLOWS entries this
/// process wrote map to each bit. A count saturates: a bit that 255 entries share stays set for
/// good, which costs a lookup per SYN there, never a wrong answer. With a successor taking over,
/// each process counts only its own entries (the successor those it adopts): one may clear a
/// bit the other's connection maps to, and until that connection moves, a SYN on its tuple gets
/// a SYN-ACK from XDP instead of reaching the engine.
struct FlowFilter {
    map: MappedArray,
    log2: u32,
    counts: Vec<u8>,
}

impl FlowFilter {
    /// The map as loaded: its lines tell its size (`maps::flow_filter_lines`).
    fn map(map: MapData) -> Result<Self, BpfError> {
        let lines = map.info()?.max_entries();
        let log2 = lines.trailing_zeros() + 9;
        let bytes = lines as usize * std::mem::size_of::<maps::FlowFilterLine>();
        Ok(Self { map: MappedArray::new(map, bytes, true)?, log2, counts: vec![0; 1 << log2] })
    }

    fn bit(&self, key: &FlowKey) -> usize {
        let b = match key {
            FlowKey::V4(k) => maps::flow_filter_bit4(k, self.log2),
            FlowKey::V6(k) => maps::flow_filter_bit6(k, self.log2),
        };
        b as usize
    }

    /// One more entry at `key`'s bit: set before the entry is written to FLOWS, so XDP never
    /// sees the entry with its bit clear.
    fn add(&mut self, key: &FlowKey) {
        let b = self.bit(key);
        let Some(c) = self.counts.get_mut(b) else { return };
        *c = c.saturating_add(1);
        if let Some(w) = self.map.word(b / 64) {
            w.fetch_or(1 << (b % 64), std::sync::atomic::Ordering::Release);
        }
    }

    /// One entry fewer at `key`'s bit, after it left FLOWS: the bit clears with the last.
    fn sub(&mut self, key: &FlowKey) {
        let b = self.bit(key);
        let Some(c) = self.counts.get_mut(b) else { return };
        if *c == 0 || *c == u8::MAX {
            return;
        }
        *c -= 1;
        if *c == 0
            && let Some(w) = self.map.word(b / 64)
        {
            w.fetch_and(!(1 << (b % 64)), std::sync::atomic::Ordering::Release);
        }
    }
}

impl FlowMaps {
    fn put(&mut self, key: &FlowKey, value: u32) -> Result<(), aya::maps::MapError> {
        match key {
            FlowKey::V4(k) => self.v4.insert(k, &value, 0),
            FlowKey::V6(k) => self.v6.insert(k, &value, 0),
        }
    }

    fn delete(&mut self, key: &FlowKey) -> Result<(), aya::maps::MapError> {
        match key {
            FlowKey::V4(k) => self.v4.remove(k),
            FlowKey::V6(k) => self.v6.remove(k),
        }
    }

    /// Remove the claims that expired by `now_ns` (cookie ACKs that never reached userspace),
    /// at most once per claim lifetime: a full table of live connections costs one walk per
    /// lifetime, not one per refused connection. How many went.
    fn sweep(&mut self, now_ns: u64) -> usize {
        let every = u64::from(maps::CLAIM_TTL) << 30;
        if self.swept_ns != 0 && now_ns.saturating_sub(self.swept_ns) < every {
            return 0;
        }
        self.swept_ns = now_ns;
        let expired = |v: u32| maps::claim_expired(v, now_ns);
        let v4: Vec<FlowKey4> = self.v4.iter().filter_map(Result::ok).filter(|(_, v)| expired(*v)).map(|(k, _)| k).collect();
        let v6: Vec<FlowKey6> = self.v6.iter().filter_map(Result::ok).filter(|(_, v)| expired(*v)).map(|(k, _)| k).collect();
        // A claim XDP renews between the walk and the removal goes too: its connection still
        // gets its slot when userspace takes the ACK, but a segment that overtakes the ACK
        // finds no flow (a reset), as with FLOWS full.
        v4.iter().filter(|k| self.v4.remove(k).is_ok()).count() + v6.iter().filter(|k| self.v6.remove(k).is_ok()).count()
    }
}

/// Whether a map update failed because the map is full.
fn map_full(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG))
}

impl FlowTable {
    /// Route the connection's segments to `slot` (or, in tests, write any FLOWS value). When
    /// FLOWS is full, expired claims are swept first; failing still, the caller must not keep
    /// the connection (its segments would not reach it).
    pub fn insert(&self, local: SocketAddr, remote: SocketAddr, slot: u32) -> Result<(), BpfError> {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        let key = flow_key(local, remote);
        // A claim (tests write XDP's) has no filter bit, as XDP's own have none.
        let counted = slot & maps::CLAIM == 0;
        if counted {
            flows.filter.add(&key);
        }
        let r = match flows.put(&key, slot) {
            Err(e) if map_full(&e) && flows.sweep(monotonic_ns()) > 0 => flows.put(&key, slot),
            r => r,
        };
        if r.is_err() && counted {
            flows.filter.sub(&key);
        }
        Ok(r?)
    }

    /// The entry [`FlowTable::insert`] made for a tuple names `slot` now (a new incarnation
    /// takes the entry its TIME_WAIT kept): one update in place, the filter bit counted once.
    pub fn replace(&self, local: SocketAddr, remote: SocketAddr, slot: u32) -> Result<(), BpfError> {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        Ok(flows.put(&flow_key(local, remote), slot)?)
    }

    /// A connection another process wrote into FLOWS, now this process's (a takeover): its
    /// filter bit counts it, so [`FlowTable::remove`] may clear the bit when it goes.
    pub fn adopt(&self, local: SocketAddr, remote: SocketAddr) {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        flows.filter.add(&flow_key(local, remote));
    }

    /// The FLOWS value of the connection: its slot, or XDP's claim (see `maps::CLAIM`).
    pub fn get(&self, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
        let flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        match flow_key(local, remote) {
            FlowKey::V4(k) => flows.v4.get(&k, 0).ok(),
            FlowKey::V6(k) => flows.v6.get(&k, 0).ok(),
        }
    }

    /// The entry [`FlowTable::insert`] (or [`FlowTable::adopt`]) made for a connection goes.
    pub fn remove(&self, local: SocketAddr, remote: SocketAddr) -> Result<(), BpfError> {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        let key = flow_key(local, remote);
        flows.delete(&key)?;
        flows.filter.sub(&key);
        Ok(())
    }

    /// XDP's claim of a tuple goes (no connection took it); claims have no filter bit.
    pub fn remove_claim(&self, local: SocketAddr, remote: SocketAddr) -> Result<(), BpfError> {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        let key = flow_key(local, remote);
        Ok(flows.delete(&key)?)
    }

    /// Send frames of RX queue `queue` that XDP redirects to the AF_XDP socket `fd`.
    pub fn register_xsk(&self, queue: u32, fd: std::os::fd::RawFd) -> Result<(), BpfError> {
        let mut xsks = self.xsks.lock().unwrap_or_else(|e| e.into_inner());
        Ok(xsks.set(queue, fd, 0)?)
    }
}

/// A BPF_F_MMAPABLE array map mapped into our memory (shared with the XDP program), unmapped on
/// drop. Only ever accessed as whole aligned 8-byte words, with atomic loads and stores.
struct MappedArray {
    ptr: *mut u64,
    len: usize,
    /// The map whose memory this is (None: anonymous memory, for tests).
    _map: Option<MapData>,
}

// SAFETY: the mapping is only read and written through atomic 8-byte accesses (and the XDP
// program writes whole aligned 8-byte words, which never tear).
unsafe impl Send for MappedArray {}
// SAFETY: as above.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Map the first `bytes` of `map` (rounded up to pages), read-only or read-write.
    fn new(map: MapData, bytes: usize, writable: bool) -> Result<Self, BpfError> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = bytes.div_ceil(page) * page;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: mapping a BPF_F_MMAPABLE array map's fd, shared.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, map.fd().as_fd().as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(BpfError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self { ptr: ptr.cast(), len, _map: Some(map) })
    }

    /// `bytes` of zeroed anonymous memory in place of a map's (tests of what writes it).
    #[cfg(test)]
    fn anonymous(bytes: usize) -> Self {
        let len = bytes.div_ceil(4096) * 4096;
        // SAFETY: a fresh private anonymous mapping.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of {len} bytes");
        Self { ptr: ptr.cast(), len, _map: None }
    }

    /// The start of the mapping.
    fn ptr(&self) -> *mut u64 {
        self.ptr
    }

    /// The low half of the `i`th 8-byte word (the 4 bytes at `8 * i`, little-endian), if mapped.
    fn low_half(&self, i: usize) -> Option<&std::sync::atomic::AtomicU32> {
        if (i + 1) * 8 > self.len {
            return None;
        }
        // SAFETY: in bounds, 4-byte aligned; shared only atomically (the word's other half, by
        // whoever owns it).
        Some(unsafe { std::sync::atomic::AtomicU32::from_ptr(self.ptr.add(i).cast()) })
    }

    /// The `i`th 8-byte word, if mapped.
    fn word(&self, i: usize) -> Option<&std::sync::atomic::AtomicU64> {
        if (i + 1) * 8 > self.len {
            return None;
        }
        // SAFETY: in bounds, 8-byte aligned (page-aligned base); shared only atomically.
        Some(unsafe { std::sync::atomic::AtomicU64::from_ptr(self.ptr.add(i)) })
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what we mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The RX_BACKLOG entries (one per RX queue), mapped writable: each engine thread publishes
/// how many frames it has taken; XDP, which counts what it redirected, answers new SYNs only
/// at a trickle while the difference is large, and none when it is larger.
#[derive(Clone)]
pub struct RxBacklog {
    inner: Arc<MappedArray>,
}

impl RxBacklog {
    const WORDS: usize = std::mem::size_of::<RxBacklogEntry>() / 8;

    const BYTES: usize = maps::MAX_QUEUES as usize * std::mem::size_of::<RxBacklogEntry>();

    fn map(map: MapData) -> Result<Self, BpfError> {
        Ok(Self { inner: Arc::new(MappedArray::new(map, Self::BYTES, true)?) })
    }

    /// Entries in memory of our own, no XDP program behind them (tests).
    #[cfg(test)]
    pub fn anonymous() -> Self {
        Self { inner: Arc::new(MappedArray::anonymous(Self::BYTES)) }
    }

    /// `queue`'s (redirected, consumed, trickled_ns) words (see `RxBacklogEntry`).
    fn words(&self, queue: u32) -> Option<(&AtomicU64, &AtomicU64, &AtomicU64)> {
        if queue >= maps::MAX_QUEUES {
            return None;
        }
        let i = queue as usize * Self::WORDS;
        Some((self.inner.word(i)?, self.inner.word(i + 1)?, self.inner.word(i + 2)?))
    }

    /// Publish how many frames `queue`'s engine has taken (or the kernel dropped) in all.
    pub fn set_consumed(&self, queue: u32, consumed: u64) {
        if let Some((_, c, _)) = self.words(queue) {
            c.store(consumed, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Tell XDP that `queue`'s engine takes no more frames (its thread died): the backlog XDP
    /// then sees never drains, so it answers no new SYNs on that queue (a SYN-ACK would only
    /// bring a final ACK nobody receives, to a client that believes it is connected).
    pub fn close_queue(&self, queue: u32) {
        if let Some((r, c, _)) = self.words(queue) {
            c.store(r.load(std::sync::atomic::Ordering::Relaxed).wrapping_sub(1 << 62), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Set the coarse-clock time at which XDP last answered a SYN over `queue`'s limit (its
    /// own word, see `RxBacklogEntry`): a test holds the trickle back with a time ahead.
    pub fn set_trickled_ns(&self, queue: u32, ns: u64) {
        if let Some((_, _, w)) = self.words(queue) {
            w.store(ns, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Frames XDP redirected to `queue` that its engine has not taken (negative if XDP's
    /// count lost increments).
    pub fn outstanding(&self, queue: u32) -> i64 {
        self.words(queue).map_or(0, |(r, c, _)| {
            r.load(std::sync::atomic::Ordering::Relaxed).wrapping_sub(c.load(std::sync::atomic::Ordering::Relaxed)) as i64
        })
    }
}

/// PROBE_ANSWERS mapped writable (see `engine_common::maps::PROBE_ANSWERS`): a queue arms a
/// connection's entry as it sends the connection a keepalive probe, and takes what XDP noted
/// there when the probe's next deadline comes. Indexed by FLOWS value (a queue's slot plus its
/// base). Only the queue that owns a slot writes its entry, a whole 8-byte word at a time.
#[derive(Clone)]
pub struct ProbeAnswerTable {
    inner: Arc<MappedArray>,
}

/// A keepalive probe's answer XDP took (see [`ProbeAnswerTable::take`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TakenProbeAnswer {
    /// XDP's coarse CLOCK_MONOTONIC when it came (the engine's clock).
    pub at_ns: u64,
    /// Its TSval, if the connection has timestamps.
    pub tsval: Option<u32>,
}

impl ProbeAnswerTable {
    const WORDS: usize = std::mem::size_of::<ProbeAnswer>() / 8;

    fn map(map: MapData) -> Result<Self, BpfError> {
        let entries = map.info()?.max_entries() as usize;
        Ok(Self { inner: Arc::new(MappedArray::new(map, entries * std::mem::size_of::<ProbeAnswer>(), true)?) })
    }

    /// `entries` entries in memory of our own, no XDP program behind them (tests).
    #[cfg(test)]
    pub fn anonymous(entries: usize) -> Self {
        Self { inner: Arc::new(MappedArray::anonymous(entries * std::mem::size_of::<ProbeAnswer>())) }
    }

    /// Entry `slot`'s words 0 (state, ts, window, seq) and 1 (ack, tsval) and 2 (at_ns).
    fn words(&self, slot: u32) -> Option<[&AtomicU64; 3]> {
        let i = slot as usize * Self::WORDS;
        Some([self.inner.word(i)?, self.inner.word(i + 1)?, self.inner.word(i + 2)?])
    }

    /// Expect `answer` to the keepalive probe just sent to the connection in `slot`: SEG.ACK
    /// first (word 1's low half: its high half, `tsval`, is XDP's, which may be writing an
    /// earlier probe's answer right now), then word 0 with the state, so XDP never matches
    /// half an expectation of this probe (the half of an earlier one is the same connection's,
    /// idle as now).
    pub fn arm(&self, slot: u32, answer: &synx_tcp::ProbeAnswer) {
        let Some([w0, _, _]) = self.words(slot) else { return };
        let Some(ack) = self.inner.low_half(slot as usize * Self::WORDS + 1) else { return };
        ack.store(answer.ack.0, std::sync::atomic::Ordering::Relaxed);
        let w = u64::from(maps::PROBE_ARMED)
            | u64::from(answer.timestamps) << 8
            | u64::from(answer.window) << 16
            | u64::from(answer.seq.0) << 32;
        w0.store(w, std::sync::atomic::Ordering::Release);
    }

    /// Expect no answer for the connection in `slot` (it sent something else since its probe):
    /// one XDP took meanwhile is forgotten, and the connection probes again if it must.
    pub fn disarm(&self, slot: u32) {
        if let Some([w0, _, _]) = self.words(slot) {
            w0.store(u64::from(maps::PROBE_IDLE), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The answer XDP took for the connection in `slot` since it was armed, if any; the entry
    /// is left idle either way it was answered.
    pub fn take(&self, slot: u32) -> Option<TakenProbeAnswer> {
        let [w0, w1, w2] = self.words(slot)?;
        let v0 = w0.load(std::sync::atomic::Ordering::Acquire);
        if v0 & 0xff != u64::from(maps::PROBE_ANSWERED) {
            return None;
        }
        let (tsval, at_ns) = ((w1.load(std::sync::atomic::Ordering::Relaxed) >> 32) as u32, w2.load(std::sync::atomic::Ordering::Relaxed));
        w0.store(u64::from(maps::PROBE_IDLE), std::sync::atomic::Ordering::Relaxed);
        Some(TakenProbeAnswer { at_ns, tsval: ((v0 >> 8) & 0xff != 0).then_some(tsval) })
    }

    /// Write entry `slot` as XDP does when it takes an answer, field by field of
    /// `ProbeAnswer` (tests of what reads it).
    #[cfg(test)]
    pub fn answer_as_xdp(&self, slot: u32, tsval: u32, at_ns: u64) {
        let e = ProbeAnswer { tsval, at_ns, state: maps::PROBE_ANSWERED, ..self.entry(slot) };
        let words: [u64; 3] = bytemuck::cast(e);
        for (w, v) in self.words(slot).unwrap().into_iter().zip(words) {
            w.store(v, std::sync::atomic::Ordering::Release);
        }
    }

    /// Entry `slot` as the map holds it.
    #[cfg(test)]
    fn entry(&self, slot: u32) -> ProbeAnswer {
        let [w0, w1, w2] = self.words(slot).unwrap();
        let words = [w0, w1, w2].map(|w| w.load(std::sync::atomic::Ordering::Relaxed));
        bytemuck::cast(words)
    }
}

/// COOKIE_SECRETS mapped writable, and what this process last published there (see
/// `engine_common::secrets`).
struct SecretsMap {
    map: MappedArray,
    published: Arc<RwLock<Published>>,
    last: Option<Instant>,
    source: SecretSource,
    skew_ms: i64,
}

impl SecretsMap {
    fn current(&self) -> Published {
        *self.published.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish `what` at once.
    fn publish_now(&mut self, what: Published) {
        // SAFETY: the mapping holds one CookieSecrets (page-aligned, so aligned); this process
        // is its only writer (the map is this program's own) and XDP reads it with
        // `secrets::read`.
        unsafe { secrets::publish(self.map.ptr().cast(), &what) };
        self.last = Some(Instant::now());
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = what;
    }

    /// Publish `what`, at least `secrets::MIN_INTERVAL_NS` after the previous publication.
    fn publish(&mut self, what: Published) {
        let interval = Duration::from_nanos(secrets::MIN_INTERVAL_NS);
        if let Some(wait) = self.last.map(|t| interval.saturating_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        self.publish_now(what);
    }

    /// Publish the secrets of the shared clock's period, the next and the previous, and the
    /// clock adjustment, unless that is what is published already (and not `force`d: the
    /// source changed). True if it published.
    fn refresh(&mut self, force: bool) -> Result<bool, BpfError> {
        let adjust_ns = clock_adjust_ns(kernel_clock().tai_offset_s, self.skew_ms);
        let now = tai_ns().wrapping_add(adjust_ns as u64);
        let newest = cookie::period(now).wrapping_add(1);
        let current = self.current();
        if !force && self.last.is_some() && current.keys.newest == newest && current.adjust_ns == adjust_ns {
            return Ok(false);
        }
        let keys = self.source.keys(newest)?;
        self.publish(Published::new(keys, adjust_ns));
        Ok(true)
    }
}

/// Publishes the cookie secrets to the XDP program (COOKIE_SECRETS): shared by the engine's
/// rotor thread and whoever sets keys, without holding the program.
#[derive(Clone)]
pub struct SecretsPublisher {
    inner: Arc<Mutex<SecretsMap>>,
    published: Arc<RwLock<Published>>,
}

impl SecretsPublisher {
    fn map(map: MapData) -> Result<Self, BpfError> {
        let published = Arc::new(RwLock::new(Published::default()));
        let inner = SecretsMap {
            map: MappedArray::new(map, std::mem::size_of::<CookieSecrets>(), true)?,
            published: published.clone(),
            last: None,
            source: SecretSource::default(),
            skew_ms: 0,
        };
        Ok(Self { inner: Arc::new(Mutex::new(inner)), published })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SecretsMap> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cookie secrets and clock adjustment as last published.
    pub fn published(&self) -> Published {
        *self.published.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared clock now, as the program reads it (ns).
    pub fn shared_now_ns(&self) -> u64 {
        self.published().shared_ns(tai_ns())
    }

    /// Take the secrets from `source` from now on (a shared key, or random ones), published at
    /// once.
    pub fn set_source(&self, source: SecretSource) -> Result<(), BpfError> {
        let mut s = self.lock();
        s.source = source;
        s.refresh(true).map(drop)
    }

    /// The fingerprint of the shared cookie key, 0 without one.
    pub fn key_fingerprint(&self) -> u64 {
        self.lock().source.fingerprint()
    }

    /// Make this host's shared clock `skew_ms` off the kernel's (tests: a host whose clock is
    /// wrong), published at once.
    pub fn set_clock_skew(&self, skew_ms: i64) -> Result<(), BpfError> {
        let mut s = self.lock();
        s.skew_ms = skew_ms;
        s.refresh(true).map(drop)
    }

    /// This host's clock skew as set by [`SecretsPublisher::set_clock_skew`].
    pub fn clock_skew_ms(&self) -> i64 {
        self.lock().skew_ms
    }

    /// Publish the secrets of the current period (and of the next and the previous) and the
    /// clock adjustment, if either changed since the last time. Call it at least once a
    /// period; calling it every second also follows a change of the kernel's TAI offset
    /// within a second. True if it published.
    pub fn refresh(&self) -> Result<bool, BpfError> {
        self.lock().refresh(false)
    }

    /// Carry on with what another process published in this map (a takeover): the same
    /// secrets and clock adjustment, so the cookies it minted still validate; with random
    /// secrets, its keys of those periods become this process's.
    pub fn adopt(&self) -> Result<(), BpfError> {
        let mut m = self.lock();
        // SAFETY: the mapping holds one CookieSecrets, written only with `secrets::publish`.
        let Some(p) = (unsafe { secrets::read(m.map.ptr().cast()) }) else {
            return Err(BpfError::Takeover("the running synx published no cookie secrets".into()));
        };
        if let SecretSource::Random(drawn) = &mut m.source {
            for (j, key) in p.keys.keys.iter().enumerate() {
                drawn.push_back((p.keys.newest.wrapping_sub(j as u32), *key));
            }
        }
        *m.published.write().unwrap_or_else(|e| e.into_inner()) = p;
        m.last = Some(Instant::now());
        Ok(())
    }

    /// Publish fixed secrets with the current clock adjustment (tests).
    pub fn set_keys(&self, keys: Keys) {
        let adjust_ns = self.published().adjust_ns;
        self.lock().publish(Published::new(keys, adjust_ns));
    }

    /// Publish `what` as it is (tests).
    pub fn publish(&self, what: Published) {
        self.lock().publish(what);
    }

    /// Publish `what` without waiting `secrets::MIN_INTERVAL_NS` after the last publication:
    /// tests that hammer the program's reader, whose generation check must then catch a
    /// publication it overlapped.
    #[doc(hidden)]
    pub fn publish_unpaced(&self, what: Published) {
        self.lock().publish_now(what);
    }
}

/// The loaded and attached XDP program and its maps. Dropping it detaches the program (aya
/// attaches through a bpf_link, which the kernel also removes when the process dies).
pub struct XdpProgram {
    ebpf: Ebpf,
    iface: String,
    settings: XdpSettings,
    secrets: SecretsPublisher,
    switches: Switches,
    flows: FlowTable,
    rx_backlog: RxBacklog,
    probe_answers: ProbeAnswerTable,
    /// The attachment, while this process holds it (see [`takeover`]).
    link: Option<XdpLinkId>,
}

impl XdpProgram {
    /// Load the program and configure its maps (fresh secrets), without attaching it: what
    /// BPF_PROG_TEST_RUN tests and micro-benchmarks need.
    pub fn load(max_flows: u32, mss: u16) -> Result<Self, BpfError> {
        Self::load_with(XdpSettings::new(mss), max_flows)
    }

    /// [`XdpProgram::load`] with other settings (tests: silence for bad cookies).
    pub fn load_with(settings: XdpSettings, max_flows: u32) -> Result<Self, BpfError> {
        let mut engine = Self::open(XDP_OBJECT, settings, max_flows)?;
        program(&mut engine.ebpf, PROGRAM)?.load().map_err(|e| BpfError::Load(Box::new(e)))?;
        Ok(engine)
    }

    /// The benchmark's object with the daemon's maps and settings (fresh secrets): its
    /// programs load on first use; it has no `synx_xdp` (see [`XdpProgram::test_run_bench`],
    /// [`XdpProgram::flood`]).
    pub fn load_bench(max_flows: u32, mss: u16) -> Result<Self, BpfError> {
        // The daemon records SYN-ACKs for retransmission by default (its SYN path pays for it).
        let settings = XdpSettings { syn_record_per_sec: maps::SYN_RECORD_PER_SEC, ..XdpSettings::new(mss) };
        Self::open(BENCH_OBJECT, settings, max_flows)
    }

    /// Load `object`, take the maps userspace shares and publish fresh secrets.
    fn open(object: &[u8], settings: XdpSettings, max_flows: u32) -> Result<Self, BpfError> {
        let engine = Self::open_with(load_object(object, max_flows, &settings, None)?, settings)?;
        engine.secrets.refresh()?;
        Ok(engine)
    }

    /// Take the maps userspace shares from the loaded `ebpf`, publishing nothing (a new
    /// COOKIE_SECRETS is empty: [`XdpProgram::open`] publishes; a taken-over one is adopted).
    fn open_with(mut ebpf: Ebpf, settings: XdpSettings) -> Result<Self, BpfError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(BpfError::MissingMap(name));
        let filter = match take(&mut ebpf, maps::FLOW_FILTER)? {
            Map::Array(data) => FlowFilter::map(data)?,
            _ => return Err(BpfError::MissingMap(maps::FLOW_FILTER)),
        };
        let flows = FlowMaps {
            v4: HashMap::try_from(take(&mut ebpf, maps::FLOWS4)?)?,
            v6: HashMap::try_from(take(&mut ebpf, maps::FLOWS6)?)?,
            swept_ns: 0,
            filter,
        };
        let xsks: XskMap<MapData> = XskMap::try_from(take(&mut ebpf, maps::XSKS)?)?;
        let rx_backlog = match take(&mut ebpf, maps::RX_BACKLOG)? {
            Map::Array(data) => RxBacklog::map(data)?,
            _ => return Err(BpfError::MissingMap(maps::RX_BACKLOG)),
        };
        let probe_answers = match take(&mut ebpf, maps::PROBE_ANSWERS)? {
            Map::Array(data) => ProbeAnswerTable::map(data)?,
            _ => return Err(BpfError::MissingMap(maps::PROBE_ANSWERS)),
        };
        let secrets = match take(&mut ebpf, maps::COOKIE_SECRETS)? {
            Map::Array(data) => SecretsPublisher::map(data)?,
            _ => return Err(BpfError::MissingMap(maps::COOKIE_SECRETS)),
        };
        let switches = Switches {
            map: Arc::new(Mutex::new(Array::try_from(take(&mut ebpf, maps::SWITCHES)?)?)),
            draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        if let Some(r) = settings.ring {
            switches.set_ring(Some(r.next), r.others)?;
        }
        Ok(Self {
            ebpf,
            iface: String::new(),
            settings,
            secrets,
            switches,
            flows: FlowTable { flows: Arc::new(Mutex::new(flows)), xsks: Arc::new(Mutex::new(xsks)) },
            rx_backlog,
            probe_answers,
            link: None,
        })
    }

    /// Load, configure and attach to `iface`.
    pub fn attach(iface: &str, mode: AttachMode, max_flows: u32, settings: XdpSettings) -> Result<Self, BpfError> {
        if_index(iface)?;
        let mut engine = Self::load_with(settings, max_flows)?;
        engine.link = Some(attach_program(&mut engine.ebpf, PROGRAM, iface, mode)?);
        engine.iface = iface.into();
        Ok(engine)
    }

    /// The settings the program was loaded with.
    pub fn settings(&self) -> &XdpSettings {
        &self.settings
    }

    /// Publishes the cookie secrets (the engine's rotor, tests).
    pub fn secrets(&self) -> SecretsPublisher {
        self.secrets.clone()
    }

    /// The cookie secrets and clock adjustment as last published: tests compute expected
    /// cookies from them.
    pub fn published(&self) -> Published {
        self.secrets.published()
    }

    /// The shared clock now, as this program reads it (ns).
    pub fn shared_now_ns(&self) -> u64 {
        self.secrets.shared_now_ns()
    }

    /// Publish fixed secrets with the current clock adjustment (tests).
    pub fn set_keys(&mut self, keys: Keys) {
        self.secrets.set_keys(keys);
    }

    /// What userspace flips while the program runs (draining, the ring).
    pub fn switches(&self) -> Switches {
        self.switches.clone()
    }

    /// See [`Switches::set_draining`].
    pub fn set_draining(&mut self, on: bool) -> Result<(), BpfError> {
        self.switches.set_draining(on)
    }

    /// Run the program on `frame` with BPF_PROG_TEST_RUN `repeat` times: the action, the frame
    /// it left, and the kernel's average time per run.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, std::time::Duration), BpfError> {
        self.test_run_program(PROGRAM, frame, repeat)
    }

    /// Run the loaded program `name` on `frame` with BPF_PROG_TEST_RUN `repeat` times (see
    /// [`XdpProgram::test_run`]).
    pub fn test_run_program(
        &mut self,
        name: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration), BpfError> {
        use aya::programs::TestRun as _;
        let prog = program(&mut self.ebpf, name)?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = aya::programs::TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ..Default::default()
        };
        let r = prog.test_run(opts).map_err(|e| BpfError::Load(Box::new(e)))?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out, r.duration))
    }

    /// The micro-benchmark's program (`synx_bench_syn`, of [`XdpProgram::load_bench`]'s
    /// object) on `frame`, `repeat` times, each run on `frame` restored: the action, the frame
    /// the last run left, the time per run. Loads the benchmark programs on first use.
    pub fn test_run_bench(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, std::time::Duration), BpfError> {
        self.load_bench_programs(frame)?;
        self.test_run_program(BENCH_SYN_PROGRAM, frame, repeat)
    }

    /// [`XdpProgram::test_run_bench`] for the kernel-cookie baseline (`synx_bench_syn_kernel`).
    pub fn test_run_bench_kernel(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, std::time::Duration), BpfError> {
        self.load_bench_programs(frame)?;
        self.test_run_program(BENCH_SYN_KERNEL_PROGRAM, frame, repeat)
    }

    /// The benchmark's SYN-flood generator (`synx_bench_flood`): sends `repeat` frames made
    /// from `frame` (an IPv4 SYN with the MSS option) out of `iface` through BPF_PROG_TEST_RUN's
    /// live-frame mode, continuing from `state` on the first call (its `next` advances across
    /// calls). The caller's network namespace must hold `iface`. Returns how many frames the
    /// program made (live-frame mode reports no action: a frame it rejects is not counted).
    pub fn flood(&mut self, iface: &str, frame: &[u8], state: Option<FloodState>, repeat: u32) -> Result<u32, BpfError> {
        use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions};
        if frame.len() != maps::FLOOD_FRAME_LEN {
            return Err(BpfError::Unexpected(format!("a flood frame has {} bytes, not {}", frame.len(), maps::FLOOD_FRAME_LEN)));
        }
        let before = self.prepare_flood(state)?.next;
        let prog = program(&mut self.ebpf, BENCH_FLOOD_PROGRAM)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel wants data_end = the frame's length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&if_index(iface)?.to_ne_bytes());
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: repeat.max(1),
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        };
        prog.test_run(opts).map_err(|e| {
            // aya's message names the call; the errno is its source (EPERM where the kernel
            // refuses live frames).
            let errno = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            BpfError::Unexpected(format!("BPF_PROG_TEST_RUN in live-frame mode on {iface}: {e}{errno}"))
        })?;
        let map: Array<_, FloodState> =
            Array::try_from(self.ebpf.map(maps::FLOOD).ok_or(BpfError::MissingMap(maps::FLOOD))?)?;
        Ok(map.get(&0, 0)?.next.wrapping_sub(before))
    }

    /// One run of the flood generator on `frame` (not live: what it made is returned) with
    /// `state`: the action and the frame, for tests.
    pub fn flood_sample(&mut self, frame: &[u8], state: FloodState) -> Result<(u32, Vec<u8>), BpfError> {
        self.prepare_flood(Some(state))?;
        let (action, out, _) = self.test_run_program(BENCH_FLOOD_PROGRAM, frame, 1)?;
        Ok((action, out))
    }

    /// Load the flood generator (once) and give it `state`, if any; the state it now has.
    fn prepare_flood(&mut self, state: Option<FloodState>) -> Result<FloodState, BpfError> {
        let mut map: Array<_, FloodState> =
            Array::try_from(self.ebpf.map_mut(maps::FLOOD).ok_or(BpfError::MissingMap(maps::FLOOD))?)?;
        if let Some(state) = state {
            map.set(0, &state, 0)?;
        }
        let now = map.get(&0, 0)?;
        let prog = program(&mut self.ebpf, BENCH_FLOOD_PROGRAM)?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
        }
        Ok(now)
    }

    /// Load the micro-benchmark programs (once) and give them `frame` to restore before each run.
    pub fn load_bench_programs(&mut self, frame: &[u8]) -> Result<(), BpfError> {
        let mut saved = BenchFrame { words: [0; 10] };
        if frame.len() != maps::BENCH_FRAME_LEN {
            return Err(BpfError::Unexpected(format!("a bench frame has {} bytes, not {}", frame.len(), maps::BENCH_FRAME_LEN)));
        }
        bytemuck::bytes_of_mut(&mut saved)[..frame.len()].copy_from_slice(frame);
        let mut map: Array<_, BenchFrame> =
            Array::try_from(self.ebpf.map_mut(maps::BENCH_FRAME).ok_or(BpfError::MissingMap(maps::BENCH_FRAME))?)?;
        map.set(0, &saved, 0)?;
        for name in [BENCH_SYN_PROGRAM, BENCH_SYN_KERNEL_PROGRAM, BENCH_RESTORE_PROGRAM, BENCH_KERNEL_PROGRAM, PEER_PROGRAM] {
            let prog = program(&mut self.ebpf, name)?;
            if prog.fd().is_err() {
                prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
            }
        }
        Ok(())
    }

    /// Attach one of the benchmark object's programs to `iface` (natively), for as long as this
    /// engine lives: the benchmark's XDP synproxy peer.
    pub fn attach_bench(&mut self, name: &str, iface: &str) -> Result<(), BpfError> {
        if_index(iface)?;
        let prog = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
        }
        attach_program(&mut self.ebpf, name, iface, AttachMode::Native)?;
        self.iface = iface.into();
        Ok(())
    }

    /// Attach the benchmark's sink (`synx_bench_sink`) to `iface`: frames to `net`/`prefix`
    /// counted and dropped, everything else passed.
    pub fn attach_sink(&mut self, iface: &str, net: std::net::Ipv4Addr, prefix: u8) -> Result<(), BpfError> {
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
        let mut map: Array<_, u32> = Array::try_from(self.ebpf.map_mut("SINK_NET").ok_or(BpfError::MissingMap("SINK_NET"))?)?;
        map.set(0, &(u32::from(net).to_be() & mask.to_be()), 0)?;
        map.set(1, &mask.to_be(), 0)?;
        self.attach_bench("synx_bench_sink", iface)
    }

    /// Frames the sink dropped so far, summed over CPUs.
    pub fn sink_dropped(&self) -> Result<u64, BpfError> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map("SINK_DROPPED").ok_or(BpfError::MissingMap("SINK_DROPPED"))?)?;
        Ok(map.get(&0, 0)?.iter().sum())
    }

    /// Make the micro-benchmark programs give the restored frame's IPv4 source `+ n % count`
    /// on their `n`-th run (`count` 0: the frame as saved); see `maps::BenchVary`.
    pub fn set_bench_vary(&mut self, count: u32) -> Result<(), BpfError> {
        let mut map: Array<_, maps::BenchVary> =
            Array::try_from(self.ebpf.map_mut(maps::BENCH_VARY).ok_or(BpfError::MissingMap(maps::BENCH_VARY))?)?;
        map.set(0, &maps::BenchVary { next: 0, count }, 0)?;
        Ok(())
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Tell the XDP program to serve `addr` (an unspecified IP means every local address).
    pub fn add_listener(&mut self, addr: SocketAddr, id: u32) -> Result<(), BpfError> {
        let key = listener_key(addr);
        if !addr.ip().is_unspecified() {
            let mut listeners: HashMap<_, ListenerKey, ListenerValue> = HashMap::try_from(
                self.ebpf.map_mut(maps::LISTENERS).ok_or(BpfError::MissingMap(maps::LISTENERS))?,
            )?;
            listeners.insert(&key, &ListenerValue { id, flags: 0 }, 0)?;
        }
        let mut ports: Array<_, PortListeners> = Array::try_from(
            self.ebpf.map_mut(maps::LISTEN_PORTS).ok_or(BpfError::MissingMap(maps::LISTEN_PORTS))?,
        )?;
        let port = u32::from(addr.port());
        let entry = ports.get(&port, 0)?;
        ports.set(port, &port_entry(entry, addr), 0)?;
        Ok(())
    }

    /// Stop serving `addr` in XDP: SYNs to it reach the kernel; segments of connections it
    /// accepted keep reaching us ([`maps::PORT_FLOWS_LEFT`]). `remaining` are the addresses
    /// still served (those on other ports are ignored).
    pub fn remove_listener(&mut self, addr: SocketAddr, remaining: &[SocketAddr]) -> Result<(), BpfError> {
        if !addr.ip().is_unspecified() {
            let mut listeners: HashMap<_, ListenerKey, ListenerValue> = HashMap::try_from(
                self.ebpf.map_mut(maps::LISTENERS).ok_or(BpfError::MissingMap(maps::LISTENERS))?,
            )?;
            // Absent already is fine: the entry is gone either way.
            let _ = listeners.remove(&listener_key(addr));
        }
        let mut ports: Array<_, PortListeners> = Array::try_from(
            self.ebpf.map_mut(maps::LISTEN_PORTS).ok_or(BpfError::MissingMap(maps::LISTEN_PORTS))?,
        )?;
        let entry = remaining
            .iter()
            .filter(|a| a.port() == addr.port())
            .fold(PortListeners { v4_addr: 0, flags: maps::PORT_FLOWS_LEFT }, |e, &a| port_entry(e, a));
        ports.set(u32::from(addr.port()), &entry, 0)?;
        Ok(())
    }

    /// The ring of SYN-ACKs XDP recorded for retransmission
    /// (`engine_common::maps::SYN_RECORDS`), for its one reader; `None` once taken.
    pub fn take_syn_records(&mut self) -> Option<RingBuf<MapData>> {
        RingBuf::try_from(self.ebpf.take_map(maps::SYN_RECORDS)?).ok()
    }

    /// The per-queue backlog counts XDP consults before answering a SYN.
    pub fn rx_backlog(&self) -> RxBacklog {
        self.rx_backlog.clone()
    }

    /// Where queues arm and take keepalive probes' answers (see [`ProbeAnswerTable`]).
    pub fn probe_answers(&self) -> ProbeAnswerTable {
        self.probe_answers.clone()
    }

    pub fn flow_table(&self) -> FlowTable {
        self.flows.clone()
    }

    pub fn cookie_checker(&self) -> CookieChecker {
        CookieChecker {
            published: self.secrets.published.clone(),
            ours: Ours { mss: self.settings.mss, wscale: self.settings.wscale, ecn: self.settings.ecn },
            draining: self.switches.draining.clone(),
        }
    }

    /// Every XDP outcome counter, summed over CPUs, in index order.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf.map(maps::COUNTERS).ok_or(BpfError::MissingMap(maps::COUNTERS))?,
        )?;
        let mut out = Vec::with_capacity(counters::NAMES.len());
        for (i, name) in counters::NAMES.iter().enumerate() {
            let per_cpu = map.get(&(i as u32), 0)?;
            out.push((*name, per_cpu.iter().sum()));
        }
        Ok(out)
    }
}

/// An XDP_PASS program on the peer of a veth: native XDP_TX and redirects on a veth deliver
/// only when the peer runs an XDP program too. Detached on drop.
pub struct PeerPass {
    _ebpf: Ebpf,
}

impl PeerPass {
    pub fn attach(iface: &str, mode: AttachMode) -> Result<Self, BpfError> {
        // The settings matter to no program here; the object wants them all the same.
        let mut ebpf = load_object(BENCH_OBJECT, 1, &XdpSettings::new(1460), None)?;
        program(&mut ebpf, PEER_PROGRAM)?.load().map_err(|e| BpfError::Load(Box::new(e)))?;
        attach_program(&mut ebpf, PEER_PROGRAM, iface, mode)?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// `LISTEN_PORTS[addr.port()]` once `addr` is served too (see `PortListeners`).
fn port_entry(mut e: PortListeners, addr: SocketAddr) -> PortListeners {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => e.flags |= PORT_V4_ANY,
        IpAddr::V4(_) => {
            let a = addr_words(addr.ip())[0];
            if e.flags & PORT_V4_ONE == 0 {
                e.flags |= PORT_V4_ONE;
                e.v4_addr = a;
            } else if e.v4_addr != a {
                // LISTENERS holds every exact address, the inline one included.
                e.flags |= PORT_V4_MORE;
            }
        }
        IpAddr::V6(ip) if ip.is_unspecified() => e.flags |= PORT_V6_ANY,
        IpAddr::V6(_) => e.flags |= PORT_V6_SOME,
    }
    e
}

/// The LISTENERS key for an exact socket address.
pub fn listener_key(addr: SocketAddr) -> ListenerKey {
    ListenerKey {
        addr: addr_words(addr.ip()),
        port_be: addr.port().to_be(),
        family: if addr.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 },
        _pad: 0,
    }
}

/// The flood generator's frame and starting state (see [`XdpProgram::flood`]): IPv4 SYNs with
/// the MSS option from `src_mac` to `dst_mac` and `dst`, from sources `src_base`+1 ..
/// `src_base`+`sources`; `drop` makes the program drop each frame instead of sending it.
pub fn flood_template(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    dst: std::net::SocketAddrV4,
    src_base: std::net::Ipv4Addr,
    sources: u32,
    drop: bool,
) -> Result<(Vec<u8>, FloodState), BpfError> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src_base.octets(), dst.ip().octets(), 64)
        .tcp(1024, dst.port(), 0, 64240)
        .syn()
        .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
        .map_err(|e| BpfError::Unexpected(format!("{e:?}")))?
        .write(&mut frame, &[])
        .map_err(|e| BpfError::Unexpected(e.to_string()))?;
    let mut template = [0u64; 8];
    bytemuck::bytes_of_mut(&mut template)
        .get_mut(..frame.len())
        .ok_or_else(|| BpfError::Unexpected(format!("a {}-byte flood frame", frame.len())))?
        .copy_from_slice(&frame);
    // XDP_DROP or XDP_TX.
    let action = if drop { 1 } else { 3 };
    Ok((frame, FloodState { next: 0, action, src_base: src_base.into(), sources, frame: template }))
}

pub mod takeover;

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire bytes of a key's words, as XDP loads them from a packet.
    fn bytes(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn probe_answer_entries_are_armed_and_taken_in_the_layout_xdp_reads() {
        use synx_tcp::{ProbeAnswer as Expected, SeqNum};
        let t = ProbeAnswerTable::anonymous(8);
        let want = Expected { seq: SeqNum(0x1122_3344), ack: SeqNum(0x5566_7788), window: 0xabcd, timestamps: true };
        t.arm(5, &want);
        let armed = ProbeAnswer { state: maps::PROBE_ARMED, ts: 1, window: 0xabcd, seq: 0x1122_3344, ack: 0x5566_7788, tsval: 0, at_ns: 0 };
        assert_eq!(t.entry(5), armed);
        assert_eq!(t.take(5), None, "armed, not answered");
        assert_eq!(t.entry(5), armed, "still armed");
        t.answer_as_xdp(5, 777, 123_456);
        // Armed again while XDP wrote: the TSval XDP wrote stays.
        t.arm(5, &want);
        assert_eq!(t.entry(5).tsval, 777);
        t.answer_as_xdp(5, 777, 123_456);
        assert_eq!(t.take(5), Some(TakenProbeAnswer { at_ns: 123_456, tsval: Some(777) }));
        assert_eq!(t.entry(5).state, maps::PROBE_IDLE);
        assert_eq!(t.take(5), None, "taken once");
        // Without timestamps the answer has no TSval; slots out of range are left alone.
        t.arm(7, &Expected { timestamps: false, ..want });
        t.answer_as_xdp(7, 9, 1);
        assert_eq!(t.take(7), Some(TakenProbeAnswer { at_ns: 1, tsval: None }));
        // Withdrawn: nothing expected, nothing taken.
        t.arm(6, &want);
        t.disarm(6);
        assert_eq!(t.entry(6).state, maps::PROBE_IDLE);
        t.arm(u32::MAX, &want);
        t.disarm(u32::MAX);
        assert_eq!(t.take(u32::MAX), None);
        assert_eq!(t.entry(4), ProbeAnswer::default());
    }

    #[test]
    fn listener_key_holds_port_in_wire_order_and_v4_in_front() {
        let k = listener_key("198.18.0.1:8080".parse().unwrap());
        assert_eq!(k.port_be.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(&bytes(&k.addr)[..4], &[198, 18, 0, 1]);
        assert_eq!(&bytes(&k.addr)[4..], &[0u8; 12]);
        assert_eq!(k.family, FAMILY_V4);
        let k6 = listener_key("[fd00::1]:80".parse().unwrap());
        assert_eq!(bytes(&k6.addr), "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(k6.family, FAMILY_V6);
    }

    #[test]
    fn flow_key_is_from_the_servers_side_in_wire_order() {
        let FlowKey::V4(k) = flow_key("198.18.0.1:80".parse().unwrap(), "198.18.0.2:40000".parse().unwrap()) else {
            panic!("IPv4 key");
        };
        assert_eq!(bytes(&[k.local]), [198, 18, 0, 1]);
        assert_eq!(bytes(&[k.remote]), [198, 18, 0, 2]);
        // The client's TCP header starts with its port, then ours.
        assert_eq!(bytes(&[k.ports]), [0x9c, 0x40, 0, 80]);
        let FlowKey::V6(k6) = flow_key("[fd00::1]:80".parse().unwrap(), "[fd00::2]:40000".parse().unwrap()) else {
            panic!("IPv6 key");
        };
        assert_eq!(bytes(&k6.remote)[15], 2);
        assert_eq!(bytes(&[k6.ports]), [0x9c, 0x40, 0, 80]);
        assert!(cookie_tuple("198.18.0.1:80".parse().unwrap(), "[fd00::1]:1".parse().unwrap()).is_none());
    }

    #[test]
    fn port_entries_hold_one_v4_address_inline_and_flag_the_rest() {
        let a: SocketAddr = "198.18.0.1:80".parse().unwrap();
        let b: SocketAddr = "198.18.0.9:80".parse().unwrap();
        let e = port_entry(PortListeners::default(), a);
        assert_eq!(e.flags, PORT_V4_ONE);
        assert_eq!(bytes(&[e.v4_addr]), [198, 18, 0, 1]);
        assert_eq!(port_entry(e, a), e, "the same address again changes nothing");
        let e2 = port_entry(e, b);
        assert_eq!(e2.flags, PORT_V4_ONE | PORT_V4_MORE);
        assert_eq!(e2.v4_addr, e.v4_addr);
        let any = port_entry(e2, "0.0.0.0:80".parse().unwrap());
        assert_eq!(any.flags & PORT_V4_ANY, PORT_V4_ANY);
        let v6 = port_entry(PortListeners::default(), "[::]:80".parse().unwrap());
        assert_eq!(v6.flags, PORT_V6_ANY);
        let v6 = port_entry(v6, "[fd00::1]:80".parse().unwrap());
        assert_eq!(v6.flags, PORT_V6_ANY | PORT_V6_SOME);
    }
}
