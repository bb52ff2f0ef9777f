//! AF_XDP: one UMEM and one socket per RX queue (shared-nothing), on `xdpilone`'s rings.
//!
//! The UMEM is split in two halves: frames for the fill ring (the kernel writes received
//! frames into them and hands them back on RX; we return each one to the fill ring as soon as
//! the TCP core has consumed it) and frames for TX (taken from a free list, returned by the
//! completion ring). Binding asks for need-wakeup and lets the kernel choose zero-copy where the
//! driver has it, copy mode otherwise (veth).

use std::{ffi::CString, num::NonZeroU32, os::fd::RawFd, ptr::NonNull};

use engine_common::maps::{RX_META_MAGIC, RxMeta};
use xdpilone::{
    DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, xdp::XdpDesc,
};

/// Frame size: one page, so frames up to the largest MTU native XDP allows on veth fit.
pub const FRAME_SIZE: u32 = 4096;

/// Frames queued for TX that go to the kernel at once rather than wait for more: one wakeup
/// sends them all (see `XskSocket::tx_budget`), and a batch this big gains little by growing.
const KICK_BATCH: u32 = 64;

#[derive(Debug, Clone, Copy)]
pub struct XskConfig {
    /// Frames in the UMEM (half for RX, half for TX).
    pub frames: u32,
    /// Descriptors in each of the RX, TX, fill and completion rings (power of two).
    pub ring_size: u32,
    /// AF_XDP preferred busy polling with this NAPI budget (frames per poll); 0: off. See
    /// [`BusyPoll`].
    pub busy_poll_budget: u16,
}

impl Default for XskConfig {
    fn default() -> Self {
        // 4096 receive descriptors: room for the final ACKs of a burst of handshakes while the
        // engine works through the connections before them (see RX_BACKLOG in the queue loop).
        Self { frames: 8192, ring_size: 4096, busy_poll_budget: 0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("AF_XDP on {iface} queue {queue}: {what}: {errno}")]
    Sys { iface: String, queue: u32, what: &'static str, errno: String },
    #[error("AF_XDP: cannot map {0} bytes of UMEM: {1}")]
    Mmap(usize, std::io::Error),
}

/// An anonymous, page-aligned memory area that lives as long as the socket.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Result<Self, XskError> {
        // SAFETY: anonymous private mapping; checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XskError::Mmap(len, std::io::Error::last_os_error()));
        }
        Ok(Self { ptr: NonNull::new(ptr.cast()).expect("mmap returned non-null"), len })
    }
}

impl Area {
    /// The received frame at `addr`, if the descriptor lies inside the area.
    fn frame(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len as usize)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds of the mapping; the kernel handed this frame to us via RX and will
        // not touch it until we return it to the fill ring.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), len as usize) })
    }
}

/// A received frame without the [`RxMeta`] XDP put in front of it, and the FLOWS value it
/// carried; a frame without its mark is taken whole, with no hint.
pub fn split_meta(frame: &[u8]) -> (&[u8], Option<u32>) {
    const LEN: usize = std::mem::size_of::<RxMeta>();
    match frame.split_at_checked(LEN) {
        Some((head, rest)) if head[..4] == RX_META_MAGIC => {
            let m: RxMeta = bytemuck::pod_read_unaligned(head);
            (rest, Some(u32::from_le(m.flow)))
        }
        _ => (frame, None),
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped, after the socket (field order) is gone.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Counters of one socket, for `synx stats`.
#[derive(Debug, Default, Clone, Copy)]
pub struct XskStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// TX frames the kernel has sent and returned (completion ring).
    pub tx_completed: u64,
    /// A transmit stopped, its segments left for a later turn, because no TX frame was free.
    pub tx_full: u64,
    /// Wakeups (system calls) asking the kernel to send the TX ring.
    pub tx_wakeups: u64,
    /// Flushes that left their frames on the TX ring for more ([`XskSocket::flush_held`]).
    pub tx_held: u64,
    /// Wakeups after refilling a fill ring the kernel had found empty.
    pub fill_wakeups: u64,
    /// Zero-length receives that had the kernel poll the queue's NAPI (preferred busy polling).
    pub busy_polls: u64,
    /// Sleeps before which the device was given its own notification back (see
    /// [`XskSocket::before_sleep`]).
    pub busy_poll_rearms: u64,
}

/// One AF_XDP socket bound to one queue of one interface.
pub struct XskSocket {
    // Drop order: rings and sockets before the memory they point into.
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    _umem: Umem,
    area: Area,
    free_tx: Vec<u64>,
    pending_tx: Vec<XdpDesc>,
    /// RX frames consumed but not yet back in the fill ring.
    pending_fill: Vec<u64>,
    fd: RawFd,
    zero_copy: bool,
    /// Frames the kernel sends per TX wakeup at most in copy mode.
    tx_budget: u32,
    busy_poll: Option<BusyPoll>,
    /// Since when frames wait on the TX ring for more, unsent ([`XskSocket::flush_held`]).
    held_since: Option<u64>,
    pub stats: XskStats,
}

// SAFETY: the socket owns its memory area and rings exclusively; it moves to its engine thread
// once and is used only there.
unsafe impl Send for XskSocket {}

const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
/// Frames a copy-mode socket sends per TX wakeup at most (Linux 6.17+; 32 before, and by
/// default).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

impl XskSocket {
    pub fn open(iface: &str, queue: u32, cfg: XskConfig) -> Result<Self, XskError> {
        let sys_io = |what: &'static str, e: std::io::Error| XskError::Sys { iface: iface.into(), queue, what, errno: e.to_string() };
        let sys = |what: &'static str, e: xdpilone::Errno| XskError::Sys {
            iface: iface.into(),
            queue,
            what,
            errno: e.to_string(),
        };
        let area = Area::new(cfg.frames as usize * FRAME_SIZE as usize)?;
        let umem_cfg = UmemConfig {
            fill_size: cfg.ring_size,
            complete_size: cfg.ring_size,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: the area is page aligned and outlives the Umem (field order).
        let umem = unsafe { Umem::new(umem_cfg, slice) }.map_err(|e| sys("UMEM registration", e))?;
        let mut info = IfInfo::invalid();
        let name = CString::new(iface).map_err(|_| XskError::Sys {
            iface: iface.into(),
            queue,
            what: "interface name",
            errno: "contains NUL".into(),
        })?;
        info.from_name(&name).map_err(|e| sys("interface lookup", e))?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem).map_err(|e| sys("socket", e))?;
        let mut device = umem.fq_cq(&sock).map_err(|e| sys("fill/completion rings", e))?;
        let ring = NonZeroU32::new(cfg.ring_size);
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(|e| sys("rx/tx rings", e))?;
        let rx = user.map_rx().map_err(|e| sys("mapping the RX ring", e))?;
        let tx = user.map_tx().map_err(|e| sys("mapping the TX ring", e))?;
        umem.bind(&user).map_err(|e| sys("bind", e))?;
        let fd = rx.as_raw_fd();
        let tx_budget = Self::raise_tx_budget(fd, cfg.ring_size);
        let busy_poll = match cfg.busy_poll_budget {
            0 => None,
            budget => Some(BusyPoll::enable(fd, iface, budget).map_err(|e| sys_io("preferred busy polling", e))?),
        };

        // Half the frames to the fill ring, half to the TX free list.
        let half = cfg.frames / 2;
        {
            let mut fill = device.fill(half);
            let n = fill.insert((0..half).map(|i| u64::from(i) * u64::from(FRAME_SIZE)));
            fill.commit();
            debug_assert_eq!(n, half.min(cfg.ring_size));
        }
        let free_tx = (half..cfg.frames).map(|i| u64::from(i) * u64::from(FRAME_SIZE)).collect();
        let zero_copy = Self::query_zero_copy(fd);
        Ok(Self {
            rx,
            tx,
            device,
            _umem: umem,
            area,
            free_tx,
            pending_tx: Vec::with_capacity(cfg.ring_size as usize),
            pending_fill: Vec::with_capacity(cfg.ring_size as usize),
            fd,
            zero_copy,
            tx_budget,
            busy_poll,
            held_since: None,
            stats: XskStats::default(),
        })
    }

    /// In copy mode the kernel sends at most its budget of frames per wakeup, 32 by default:
    /// ask for the whole ring per wakeup. Kernels before 6.17 refuse the option and keep 32
    /// ([`XskSocket::flush`] then wakes the kernel again). Returns the budget in force.
    fn raise_tx_budget(fd: RawFd, ring_size: u32) -> u32 {
        // SAFETY: setsockopt with a u32 of the stated size; a failure changes nothing.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                SOL_XDP,
                XDP_MAX_TX_SKB_BUDGET,
                (&raw const ring_size).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc == 0 { ring_size } else { 32 }
    }

    fn query_zero_copy(fd: RawFd) -> bool {
        let mut opts: u32 = 0;
        let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: getsockopt into a u32 of the stated size.
        let rc = unsafe {
            libc::getsockopt(fd, SOL_XDP, XDP_OPTIONS, (&raw mut opts).cast(), &mut len)
        };
        rc == 0 && opts & XDP_OPTIONS_ZEROCOPY != 0
    }

    /// The socket's file descriptor: register it in the XSKMAP and poll it for RX.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    pub fn tx_budget(&self) -> u32 {
        self.tx_budget
    }

    /// The kernel's drop counters for this socket (XDP_STATISTICS): (frames dropped for any
    /// reason, of which because the RX ring was full, of which because the fill ring was empty).
    pub fn kernel_drops(&self) -> Option<(u64, u64, u64)> {
        let s = self.device.statistics_v2().ok()?;
        Some((s.rx_dropped, s.rx_ring_full, s.rx_fill_ring_empty_descs))
    }

    /// Hand up to `max` received frames to `f`, each with the FLOWS value XDP put in front of
    /// it if any ([`split_meta`]), then return their buffers to the fill ring; stops early
    /// after a frame for which `f` returns true.
    pub fn recv(&mut self, max: u32, mut f: impl FnMut(&[u8], Option<u32>) -> bool) -> u32 {
        let chunk_mask = !(u64::from(FRAME_SIZE) - 1);
        if let Some(b) = &mut self.busy_poll {
            b.poll(self.fd);
            self.stats.busy_polls += 1;
        }
        let (mut total, mut stop) = (0, false);
        while total < max && !stop {
            let mut n = 0u32;
            {
                let mut reader = self.rx.receive(max.saturating_sub(total).min(64));
                while !stop && let Some(desc) = reader.read() {
                    n += 1;
                    if let Some(frame) = self.area.frame(desc.addr, desc.len) {
                        let (frame, flow) = split_meta(frame);
                        stop = f(frame, flow);
                    }
                    self.pending_fill.push(desc.addr & chunk_mask);
                }
                reader.release();
            }
            self.refill();
            if n == 0 {
                break;
            }
            total += n;
        }
        self.stats.rx_frames += u64::from(total);
        if self.device.needs_wakeup() {
            self.device.wake();
            self.stats.fill_wakeups += 1;
        }
        total
    }

    /// Return consumed RX frames to the fill ring. The ring may take fewer than offered (its
    /// view of the kernel's consumer lags); the rest wait here, never lost.
    fn refill(&mut self) {
        if self.pending_fill.is_empty() {
            return;
        }
        let mut fill = self.device.fill(self.pending_fill.len() as u32);
        let n = fill.insert(self.pending_fill.iter().copied()) as usize;
        fill.commit();
        drop(fill);
        self.pending_fill.drain(..n);
    }

    /// Queue one frame for TX, written by `write` into a free frame buffer (returns the range of
    /// the buffer that holds the frame, or `None` to skip). Returns false when no TX frame is
    /// free (the caller keeps the segment for later).
    pub fn send(&mut self, write: impl FnOnce(&mut [u8]) -> Option<std::ops::Range<usize>>) -> bool {
        if self.free_tx.is_empty() {
            self.reap_completions();
        }
        let Some(addr) = self.free_tx.pop() else {
            self.stats.tx_full += 1;
            return false;
        };
        // SAFETY: a TX frame from our free list, in bounds, not owned by the kernel.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                self.area.ptr.as_ptr().add(addr as usize),
                FRAME_SIZE as usize,
            )
        };
        match write(buf) {
            // A descriptor may start anywhere in its chunk (aligned mode), its end inside it;
            // the completion ring returns the address given here.
            Some(frame) if frame.start < frame.end && frame.end <= FRAME_SIZE as usize => {
                let len = (frame.end - frame.start) as u32;
                self.pending_tx.push(XdpDesc { addr: addr + frame.start as u64, len, options: 0 });
                if self.pending_tx.len() >= KICK_BATCH as usize {
                    self.flush();
                }
            }
            _ => self.free_tx.push(addr),
        }
        true
    }

    /// Whether frames queued for TX wait still: here, not yet on the ring, or (copy mode) left
    /// on the ring by a device that pushed back ([`XskSocket::tx_stalled`]). With zero copy
    /// the driver takes the ring by itself once woken.
    pub fn tx_waiting(&self) -> bool {
        !self.pending_tx.is_empty() || self.tx_stalled()
    }

    /// Whether what we could send waits for the device: frames it left on the TX ring
    /// ([`XskSocket::tx_stalled`]), or no TX frame free to write (every one in flight).
    pub fn tx_blocked(&self) -> bool {
        self.tx_stalled() || self.tx_room() == 0
    }

    /// Frames that can be queued right now without waiting for completions.
    pub fn tx_room(&self) -> usize {
        self.free_tx.len()
    }

    /// Push queued frames to the TX ring, have the kernel send them, and reap completions.
    pub fn flush(&mut self) {
        self.commit();
        self.kick();
        self.held_since = None;
        self.reap_completions();
    }

    /// As [`XskSocket::flush`], but the frames may wait on the TX ring for more, up to
    /// `hold_ns` after the first of them (`now_ns` on the engine's clock), unless they make a
    /// batch of [`KICK_BATCH`] already: a later flush of either kind sends them. In copy mode
    /// every wakeup is a system call whose softirq hands its frames to the peer's CPU (an
    /// IPI, a VM exit in a guest): at 28,000 connections a second on one queue, 0.55 wakeups
    /// a connection of 5.4 frames each took a quarter of the server CPU, half of it in the
    /// IPI. Whether to hold is the caller's call; it must come back within `hold_ns`.
    pub fn flush_held(&mut self, now_ns: u64, hold_ns: u64) {
        self.commit();
        let waiting = self.tx.pending();
        let held_since = self.held_since.unwrap_or(now_ns);
        if waiting == 0 || waiting >= KICK_BATCH || now_ns.saturating_sub(held_since) >= hold_ns {
            self.kick();
            self.held_since = None;
        } else if self.held_since.is_none() {
            self.held_since = Some(now_ns);
            self.stats.tx_held += 1;
        }
        self.reap_completions();
    }

    /// Since when frames wait on the TX ring for more, if they do ([`XskSocket::flush_held`]).
    pub fn tx_held_since(&self) -> Option<u64> {
        self.held_since
    }

    /// Move the frames queued here onto the TX ring (as many as it takes).
    fn commit(&mut self) {
        if !self.pending_tx.is_empty() {
            let mut writer = self.tx.transmit(self.pending_tx.len() as u32);
            let n = writer.insert(self.pending_tx.iter().copied()) as usize;
            writer.commit();
            drop(writer);
            self.stats.tx_frames += n as u64;
            self.pending_tx.drain(..n);
        }
    }

    /// Wake the kernel to send what the TX ring holds, again while that makes progress. In copy
    /// mode the kernel sends only when woken, at most its budget per wakeup, and stops early
    /// when the device pushes back (its queue stopped: the peer's ring is full); one wakeup per
    /// flush left ~270 of ~300 queued frames in the ring at 1000 HTTP connections, waiting for
    /// the next turn of the loop or its next wakeup. With zero copy one wakeup starts the
    /// driver, which sends the rest by itself.
    fn kick(&mut self) {
        let mut queued = self.tx.pending();
        while queued > 0 && self.tx.needs_wakeup() {
            self.tx.wake();
            self.stats.tx_wakeups += 1;
            let before = queued;
            queued = self.tx.pending();
            if self.zero_copy || queued >= before {
                return;
            }
        }
    }

    /// Frames wait in the TX ring that only another [`XskSocket::flush`] sends: copy mode, and
    /// the device pushed back. Nothing wakes the engine when the device has room again.
    pub fn tx_stalled(&self) -> bool {
        !self.zero_copy && self.tx.pending() > 0
    }

    fn reap_completions(&mut self) {
        let mut reader = self.device.complete(u32::MAX);
        while let Some(addr) = reader.read() {
            self.free_tx.push(addr & !(u64::from(FRAME_SIZE) - 1));
            self.stats.tx_completed += 1;
        }
        reader.release();
    }
}

/// AF_XDP preferred busy polling (Linux 5.11+; Documentation/networking/af_xdp.rst, "Preferred
/// busy polling"): SO_PREFER_BUSY_POLL, SO_BUSY_POLL and SO_BUSY_POLL_BUDGET on the socket, and
/// a zero-length non-blocking receive at every [`XskSocket::recv`], in which the kernel runs
/// the queue's NAPI once on this thread (xsk_recvmsg -> sk_busy_loop -> __napi_busy_loop; the
/// socket knows its NAPI from its first frame). A TX wakeup (sendto) polls the same way.
///
/// With the device's napi_defer_hard_irqs and gro_flush_timeout set, each such poll leaves the
/// device's notification off (on veth: a frame no longer schedules the NAPI) and arms a
/// watchdog of gro_flush_timeout instead (busy_poll_stop): while the engine keeps coming back,
/// frames wait for its next poll and no NAPI thread or softirq runs between two loop turns.
/// If the engine stops polling, the watchdog runs the NAPI, and after napi_defer_hard_irqs
/// empty runs the device notifies again.
///
/// The kernel can only poll a NAPI whose id the socket learned from its frames (the driver's
/// XDP receive queue info carries it). On veth (Linux 6.18, native XDP, copy mode) the socket
/// learns none (SO_INCOMING_NAPI_ID stays 0, BusyPollRxPackets stays 0): every busy poll
/// polls nothing, which the engine says in its log after 256 polls.
///
/// An engine asleep in epoll would leave a lone frame waiting for that watchdog, up to
/// gro_flush_timeout per request at one connection; so [`XskSocket::before_sleep`] gives the
/// device its notification back first: the preference off, then polls without it until
/// napi_complete_done has counted the deferral down (a preferred poll leaves
/// defer_hard_irqs_count at napi_defer_hard_irqs - 1, each later poll that finds nothing takes
/// one, and the one that finds it at 0 re-enables: napi_defer_hard_irqs polls). A frame then
/// schedules the NAPI and wakes the engine at once; the next receive prefers busy polling again.
struct BusyPoll {
    /// The device's napi_defer_hard_irqs when the socket was bound (0 with no gro_flush_timeout:
    /// nothing is deferred, nothing to give back).
    defer_hard_irqs: u32,
    /// SO_PREFER_BUSY_POLL is off (since the last sleep).
    rearmed: bool,
    /// The NAPI the kernel polls for us (SO_INCOMING_NAPI_ID; 0 until the socket learned it
    /// from a frame: until then a busy poll polls nothing), and the polls made so far.
    napi_id: u32,
    polls: u64,
}

impl BusyPoll {
    fn enable(fd: RawFd, iface: &str, budget: u16) -> std::io::Result<Self> {
        // SO_BUSY_POLL only has to be non-zero here: a non-blocking AF_XDP receive polls the
        // NAPI once whatever its value (sk_busy_loop with nonblock); how long the engine keeps
        // polling after work is its own --busy-poll.
        set_sockopt(fd, libc::SO_PREFER_BUSY_POLL, 1)?;
        set_sockopt(fd, libc::SO_BUSY_POLL, 1)?;
        set_sockopt(fd, libc::SO_BUSY_POLL_BUDGET, u32::from(budget))?;
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/sys/class/net/{iface}/{name}")).ok()?.trim().parse().ok()
        };
        let (defer, flush) = (read("napi_defer_hard_irqs"), read("gro_flush_timeout"));
        let defer_hard_irqs = match (defer, flush) {
            (Some(d), Some(f)) if d > 0 && f > 0 => u32::try_from(d).unwrap_or(u32::MAX),
            _ => {
                tracing::warn!(
                    iface,
                    ?defer,
                    gro_flush_timeout_ns = ?flush,
                    "preferred busy polling without napi_defer_hard_irqs and gro_flush_timeout on the device: \
                     every frame still wakes the device's NAPI (set both, e.g. 2 and 50000, before starting synx)"
                );
                0
            }
        };
        tracing::info!(iface, budget, defer_hard_irqs, gro_flush_timeout_ns = ?flush, "AF_XDP preferred busy polling");
        Ok(Self { defer_hard_irqs, rearmed: false, napi_id: 0, polls: 0 })
    }

    /// Have the kernel poll the queue's NAPI (preferring busy polling again after a sleep).
    fn poll(&mut self, fd: RawFd) {
        if self.rearmed {
            self.rearmed = false;
            let _ = set_sockopt(fd, libc::SO_PREFER_BUSY_POLL, 1);
        }
        // SAFETY: a zero-length non-blocking receive into no buffer: the kernel only polls.
        unsafe { libc::recvfrom(fd, std::ptr::null_mut(), 0, libc::MSG_DONTWAIT, std::ptr::null_mut(), std::ptr::null_mut()) };
        self.polls += 1;
        if self.napi_id == 0 && (self.polls < 1024 || self.polls.is_power_of_two()) {
            let mut id: u32 = 0;
            let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
            // SAFETY: getsockopt into a u32 of the stated size.
            unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_INCOMING_NAPI_ID, (&raw mut id).cast(), &mut len) };
            self.napi_id = id;
            if id != 0 {
                tracing::info!(napi_id = id, "AF_XDP busy polling the queue's NAPI");
            } else if self.polls == 256 {
                tracing::warn!("AF_XDP busy polling: the socket has no NAPI id after 256 polls: the kernel polls nothing for it");
            }
        }
    }
}

/// Polls at most before a sleep to give the device its notification back.
const MAX_REARM_POLLS: u32 = 4;

fn set_sockopt(fd: RawFd, opt: libc::c_int, value: u32) -> std::io::Result<()> {
    // SAFETY: setsockopt with a u32 of the stated size.
    let rc = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&raw const value).cast(), std::mem::size_of::<u32>() as libc::socklen_t)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

impl XskSocket {
    /// Before the engine sleeps: with preferred busy polling, give the device its notification
    /// back (see [`BusyPoll`]), so that the next frame wakes the engine at once rather than
    /// at the device's gro_flush_timeout. Frames these polls find land in the RX ring and end
    /// the sleep at once.
    pub fn before_sleep(&mut self) {
        let Some(b) = &mut self.busy_poll else { return };
        if b.rearmed || b.defer_hard_irqs == 0 {
            return;
        }
        b.rearmed = true;
        let _ = set_sockopt(self.fd, libc::SO_PREFER_BUSY_POLL, 0);
        // A device deferring more than this many times still notifies at its next watchdog.
        for _ in 0..b.defer_hard_irqs.min(MAX_REARM_POLLS) {
            // SAFETY: as in `BusyPoll::poll`.
            unsafe { libc::recvfrom(self.fd, std::ptr::null_mut(), 0, libc::MSG_DONTWAIT, std::ptr::null_mut(), std::ptr::null_mut()) };
        }
        self.stats.busy_poll_rearms += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_xdp_puts_in_front_of_a_frame_is_split_off_and_nothing_else_is() {
        let eth = [0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00, 0x45];
        let mut marked = RX_META_MAGIC.to_vec();
        marked.extend(0x8000_0007u32.to_le_bytes());
        marked.extend(eth);
        assert_eq!(split_meta(&marked), (&eth[..], Some(0x8000_0007)));
        // A plain frame (to a unicast address), one too short to hold the mark, a broadcast.
        assert_eq!(split_meta(&eth), (&eth[..], None));
        assert_eq!(split_meta(&marked[..7]), (&marked[..7], None));
        let broadcast = [0xff; 20];
        assert_eq!(split_meta(&broadcast), (&broadcast[..], None));
    }
}
