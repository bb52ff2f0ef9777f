//! Segmentation offload for what a queue sends: a train of full-sized segments that one
//! connection sends back to back leaves as one frame, through a packet socket with a virtio-net
//! header (`PACKET_VNET_HDR`), and the device's TSO (or the kernel's GSO where the device has
//! none) cuts it into those segments again, as it cuts the kernel's own TCP's 64 KB skbs.
//!
//! Why: AF_XDP in copy mode (veth, and every driver without zero-copy) costs the kernel an skb,
//! a copy and a trip through the device for each 1448-byte frame, and synx a software checksum
//! of each; the kernel's TCP pays that once per 64 KB. On a veth pair whose server end keeps TSO
//! (synx in skb mode, no program on the peer), an echo of 256 MiB each way ran at 6.5 Gbit/s
//! with trains and 4.7 frame by frame (4 transfers each, one run after the other).
//!
//! What leaves is what the TCP core wrote, segment by segment ([`Train::offer`] takes each
//! right after the core wrote it): a segment joins the train only if it continues it exactly,
//! so that the offload's cut gives back the same segments, with the rules Linux's
//! `tcp_gso_segment` applies (the header's flags as the first segment's, PSH and FIN on the last
//! one only, CWR on the first only; every segment but the last of the first one's size). A
//! train of one segment, or one the socket refuses, goes out frame by frame through AF_XDP
//! ([`Train::split`]); one that finds too few AF_XDP frames free waits for a later turn, so
//! nothing the core sent is lost to this path.
//!
//! `--gso auto` (the default) uses it while the interface says TSO is on; a veth whose peer has
//! a native XDP program says it is off (veth then turns off GSO towards that peer), and synx
//! sends as before. With TSO off the kernel's software GSO would cut each train before the
//! device: on the bench pair (a program on the peer) a quick run forcing trains through it read
//! bulk_tx 2.6 Gbit/s, below the 3.5 frame by frame of the published runs, hence not used there.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
};

use synx_tcp::{endpoint::Transmit, segment::Flags};

use crate::{
    wire::{self, Link},
    xsk::XskSocket,
};

/// How `synx run` sends trains of segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GsoMode {
    /// Through the offload while the interface has TSO on, frame by frame otherwise.
    #[default]
    Auto,
    /// Always frame by frame through AF_XDP.
    Off,
}

/// `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), in the host's byte order as a
/// packet socket reads it on little-endian hosts.
pub const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// TCP bytes (header and payloads) of a train at most: under IPv4's 64 KB total length and the
/// devices' default `gso_max_size` (65536, which counts the link header too).
pub const MAX_TRAIN: usize = 62 * 1024;
/// Segments of a train at most (as Linux's TSO autosizing keeps to 64 KB).
const MAX_SEGS: u16 = 64;

/// TCP header bytes: sequence number, data offset, flags, checksum.
const SEQ: std::ops::Range<usize> = 4..8;
const DATA_OFFSET: usize = 12;
const FLAGS: usize = 13;
const CHECKSUM: std::ops::Range<usize> = 16..18;
const FIN: u8 = Flags::FIN.0;
const SYN: u8 = Flags::SYN.0;
const RST: u8 = Flags::RST.0;
const PSH: u8 = Flags::PSH.0;
const ACK: u8 = Flags::ACK.0;
const URG: u8 = Flags::URG.0;
const CWR: u8 = Flags::CWR.0;

/// Room in front of the TCP header: the virtio-net header and the longest link and IP headers.
pub const HEAD: usize = VNET_HDR_LEN + 14 + 40;

/// What [`Train::offer`] did with the segment the core just wrote at [`Train::tail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It began a train.
    Started,
    /// It continues the train.
    Joined,
    /// It cannot ride in a train (no payload, a SYN, RST, URG or CWR): it sits alone at the
    /// train's head, to be sent with [`Train::split`] now.
    Single,
    /// It does not continue the train: send the train, then [`Train::restart`].
    Refused,
}

/// A segment the core wrote ([`Transmit`], as much of it as a train needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Bytes of TCP segment.
    pub len: usize,
    pub ect: bool,
    /// It belongs to a connection (not a reset to a stranger).
    pub connection: bool,
}

impl From<&Transmit> for Written {
    fn from(t: &Transmit) -> Self {
        Self { local: t.local, remote: t.remote, len: t.len, ect: t.ect, connection: t.handle.is_some() }
    }
}

/// Who a train belongs to and how it goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    local: SocketAddr,
    remote: SocketAddr,
    ect: bool,
}

/// One train of segments being gathered: the first segment's TCP header at [`HEAD`], then the
/// payloads back to back.
pub struct Train {
    buf: Box<[u8]>,
    /// The room the core gets for one segment (what an AF_XDP frame would give it).
    segment_room: usize,
    /// TCP bytes at `buf[HEAD..]`: the header and every payload.
    len: usize,
    /// TCP header length.
    hlen: usize,
    /// The first segment's payload: every segment's but the last.
    size: usize,
    /// The last segment's payload.
    last: usize,
    segs: u16,
    /// A FIN joined: nothing may follow it.
    closed: bool,
    owner: Option<Owner>,
    /// Where the core wrote the segment being offered.
    at: usize,
}

impl Train {
    /// A train whose segments are each at most `segment_room` bytes of TCP, as the core writes
    /// them.
    pub fn new(segment_room: usize) -> Self {
        let segment_room = segment_room.min(MAX_TRAIN);
        Self {
            buf: vec![0; HEAD + MAX_TRAIN + segment_room].into_boxed_slice(),
            segment_room,
            len: 0,
            hlen: 0,
            size: 0,
            last: 0,
            segs: 0,
            closed: false,
            owner: None,
            at: HEAD,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segs == 0
    }

    pub fn segments(&self) -> u16 {
        self.segs
    }

    /// Whether another full segment may not join: send the train before asking the core.
    pub fn full(&self) -> bool {
        self.segs > 0 && (self.closed || self.segs >= MAX_SEGS || self.len + self.size > MAX_TRAIN || self.last < self.size)
    }

    /// Where the core writes the next segment: right after the train (at its head when empty).
    pub fn tail(&mut self) -> &mut [u8] {
        self.at = HEAD + self.len;
        &mut self.buf[self.at..self.at + self.segment_room]
    }

    /// Take the segment of `out.len` bytes the core just wrote at [`Train::tail`].
    pub fn offer(&mut self, out: &Written) -> Offer {
        let at = self.at;
        let Some(seg) = self.buf.get(at..at + out.len).filter(|_| out.len <= self.segment_room) else {
            return self.single_at(at, out);
        };
        let Some(hlen) = header_len(seg) else { return self.single_at(at, out) };
        let payload = out.len - hlen;
        let flags = seg[FLAGS];
        let owner = Owner { local: out.local, remote: out.remote, ect: out.ect };
        let rides = payload > 0 && out.connection && flags & (SYN | RST | URG | CWR) == 0 && flags & ACK != 0;
        if self.segs == 0 {
            if !rides || at != HEAD {
                return self.single_at(at, out);
            }
            self.owner = Some(owner);
            (self.len, self.hlen, self.size, self.last, self.segs, self.closed) = (out.len, hlen, payload, payload, 1, flags & FIN != 0);
            return Offer::Started;
        }
        let head = &self.buf[HEAD..HEAD + self.hlen];
        let next_seq = seq(head).wrapping_add((self.len - self.hlen) as u32);
        let continues = rides
            && self.owner == Some(owner)
            && !self.full()
            && hlen == self.hlen
            && payload <= self.size
            && seq(seg) == next_seq
            && same_header(head, &seg[..hlen]);
        if !continues {
            return Offer::Refused;
        }
        // The payload moves over the header the core wrote in front of it.
        self.buf.copy_within(at + hlen..at + out.len, at);
        // The train's header carries the last segment's PSH and FIN (the offload puts them on
        // the last segment only, as Linux's tcp_gso_segment does).
        let keep = self.buf[HEAD + FLAGS] & !(PSH | FIN);
        self.buf[HEAD + FLAGS] = keep | (flags & (PSH | FIN));
        self.len += payload;
        self.last = payload;
        self.segs += 1;
        self.closed = flags & FIN != 0;
        Offer::Joined
    }

    /// A segment that rides alone, moved to the head (where [`Train::split`] reads it).
    fn single_at(&mut self, at: usize, out: &Written) -> Offer {
        if self.segs > 0 {
            return Offer::Refused;
        }
        // The core wrote within the tail it was given; a length beyond it is cut, not trusted.
        let len = out.len.min(self.segment_room);
        if at != HEAD {
            self.buf.copy_within(at..at + len, HEAD);
        }
        (self.len, self.hlen, self.size, self.last, self.segs, self.closed) = (len, len, 0, 0, 1, true);
        self.owner = Some(Owner { local: out.local, remote: out.remote, ect: out.ect });
        Offer::Single
    }

    /// After the train the refused segment belonged after was sent: that segment starts the
    /// next one (or rides alone).
    pub fn restart(&mut self, out: &Written) -> Offer {
        let at = self.at;
        self.clear();
        if at != HEAD {
            self.buf.copy_within(at..at + out.len.min(self.segment_room), HEAD);
        }
        self.at = HEAD;
        self.offer(out)
    }

    /// The head segment is a reset.
    pub fn rst(&self) -> bool {
        self.segs > 0 && self.buf[HEAD + FLAGS] & RST != 0
    }

    pub fn clear(&mut self) {
        (self.len, self.hlen, self.size, self.last, self.segs, self.closed, self.owner) = (0, 0, 0, 0, 0, false, None);
    }

    /// The whole train as one frame for the packet socket: virtio-net header, link and IP
    /// headers for the whole length, the TCP header with its checksum seeded for the offload
    /// (`wire::finish_offloaded`), the payloads. `None` when it cannot be framed.
    pub fn frame(&mut self, link: &Link) -> Option<&[u8]> {
        let owner = self.owner?;
        let v6 = owner.local.is_ipv6();
        let l2l3 = wire::header_len(v6);
        let start = HEAD - l2l3;
        let total = wire::finish_offloaded(&mut self.buf[start..HEAD + self.len], link, owner.local, owner.remote, self.len, owner.ect)?;
        let vnet = vnet_header(v6, (l2l3 + self.hlen) as u16, self.size as u16, l2l3 as u16);
        self.buf[start - VNET_HDR_LEN..start].copy_from_slice(&vnet);
        Some(&self.buf[start - VNET_HDR_LEN..start + total])
    }

    /// The train cut into its segments, each written by `write` as a frame through `emit`
    /// (the AF_XDP TX ring): `emit` gets the frame's buffer and must return false when it has
    /// none (the rest is dropped and counted by the caller: TCP recovers it). Returns the
    /// segments emitted.
    pub fn split(&self, link: &Link, mut emit: impl FnMut(&mut dyn FnMut(&mut [u8]) -> Option<std::ops::Range<usize>>) -> bool) -> u16 {
        let Some(owner) = self.owner else { return 0 };
        let l2l3 = wire::header_len(owner.local.is_ipv6());
        let head = &self.buf[HEAD..HEAD + self.hlen];
        let first_seq = seq(head);
        let mut offset = 0;
        let body = &self.buf[HEAD + self.hlen..HEAD + self.len];
        for i in 0..self.segs {
            let last = i + 1 == self.segs;
            let payload = if last { body.len() - offset } else { self.size };
            let data = &body[offset..offset + payload];
            let mut write = |frame: &mut [u8]| {
                let tcp_len = self.hlen + payload;
                // A garbled segment shorter than a TCP header is not sent (`offer` took it alone).
                let seg = frame.get_mut(l2l3..l2l3 + tcp_len).filter(|_| self.hlen >= 20)?;
                seg[..self.hlen].copy_from_slice(head);
                seg[SEQ].copy_from_slice(&first_seq.wrapping_add(offset as u32).to_be_bytes());
                if !last {
                    seg[FLAGS] &= !(PSH | FIN);
                }
                seg[self.hlen..].copy_from_slice(data);
                let len = wire::finish_ecn(frame, link, owner.local, owner.remote, tcp_len, owner.ect)?;
                Some(0..len)
            };
            if !emit(&mut write) {
                return i;
            }
            offset += payload;
        }
        self.segs
    }
}

/// A queue's offload: its packet socket and the train being gathered.
pub struct Offload {
    socket: GsoSocket,
    train: Train,
    /// The link of the train's segments.
    link: Link,
    /// Whether trains go through the socket (TSO on, and the socket has not failed).
    active: bool,
    failed: bool,
}

/// What shipping a train did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    /// Segments that left in a train through the socket.
    pub offloaded: u32,
    /// Segments that left frame by frame through AF_XDP.
    pub framed: u32,
    /// Segments lost: no AF_XDP frame was free for them when they could not wait (a train
    /// refused by the socket while the next segment was already written; TCP recovers them as
    /// any loss).
    pub dropped: u32,
    /// Trains that went frame by frame because the socket refused them.
    pub fell_back: u32,
    /// Trains that left through the socket.
    pub trains: u32,
    /// Resets among the framed segments.
    pub resets: u32,
}

impl Offload {
    /// The offload of `iface` for segments of up to `segment_room` bytes, active while the
    /// interface has TSO on.
    pub fn open(iface: &str, segment_room: usize) -> std::io::Result<Self> {
        let socket = GsoSocket::open(iface)?;
        let active = socket.tso_on();
        Ok(Self { socket, train: Train::new(segment_room), link: Link::default(), active, failed: false })
    }

    /// Whether segments gather into trains now.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Look at the interface's TSO again (a veth loses it when its peer gets an XDP program).
    pub fn refresh(&mut self) {
        // A train kept for a later turn goes out the way it was gathered for.
        if self.train.is_empty() {
            self.active = !self.failed && self.socket.tso_on();
        }
    }

    /// Whether the transmit goes through the offload: it is active, or a train waits.
    pub fn in_use(&self) -> bool {
        self.active || !self.train.is_empty()
    }

    pub fn train(&mut self) -> &mut Train {
        &mut self.train
    }

    /// The segment the core just wrote at the train's tail, for `link`: gathered, or sent
    /// (with the train it did not continue) through `xsk`, which must have two TX frames free
    /// (one for a lone segment ahead, one for this one).
    pub fn take(&mut self, w: &Written, link: Link, xsk: &mut XskSocket, shipped: &mut Shipped) {
        match self.train.offer(w) {
            Offer::Started => self.link = link,
            Offer::Joined => {}
            Offer::Single => {
                self.link = link;
                self.ship(xsk, shipped, true);
            }
            Offer::Refused => {
                // The train goes first; the refused segment's bytes at its tail stay untouched.
                self.ship(xsk, shipped, true);
                self.link = link;
                if self.train.restart(w) == Offer::Single {
                    self.ship(xsk, shipped, true);
                }
            }
        }
    }

    /// Send the train: through the socket when it has several segments, the offload is active
    /// and no frame queued for `xsk` waits ahead of it, else (or when the socket refuses it)
    /// frame by frame through `xsk`. Without `force`, a train that needs more AF_XDP frames
    /// than are free is kept for a later turn (returns false); with it, what finds no frame is
    /// dropped and counted (TCP resends it).
    pub fn ship(&mut self, xsk: &mut XskSocket, shipped: &mut Shipped, force: bool) -> bool {
        let segs = self.train.segments();
        if segs == 0 {
            return true;
        }
        let mut refused = false;
        if segs > 1 && self.active {
            refused = true;
            // The socket hands the train to the device at once, ahead of anything still queued
            // for AF_XDP: a lone segment, ACK or FIN its connection wrote before it would then
            // arrive after it, and three segments past a hole read as a loss to the peer
            // (RFC 5681 section 3.2). Those frames go first; if the device keeps some of them
            // back (copy mode, its queue stopped) the train queues behind them frame by frame.
            if xsk.tx_waiting() {
                xsk.flush();
            }
            if !xsk.tx_waiting() {
                let link = self.link;
                match self.train.frame(&link).map(|f| self.socket.send(f)) {
                    Some(Ok(())) => {
                        shipped.trains += 1;
                        shipped.offloaded += u32::from(segs);
                        self.train.clear();
                        return true;
                    }
                    // The device's ring is full (or the socket's buffer): this one goes frame
                    // by frame; the next train tries again.
                    Some(Err(e)) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("segmentation offload failed ({e}); sending frame by frame from now on");
                        (self.failed, self.active) = (true, false);
                    }
                    None => {}
                }
            }
        }
        if xsk.tx_room() < usize::from(segs) {
            xsk.flush();
            if !force && xsk.tx_room() < usize::from(segs) {
                return false;
            }
        }
        // Counted once it goes frame by frame, not at each refusal of a train kept meanwhile.
        shipped.fell_back += u32::from(refused);
        shipped.resets += u32::from(self.train.rst());
        let link = self.link;
        let framed = self.train.split(&link, |write| {
            if xsk.tx_room() == 0 {
                xsk.flush();
            }
            xsk.send(|frame| write(frame))
        });
        shipped.framed += u32::from(framed);
        shipped.dropped += u32::from(segs - framed);
        self.train.clear();
        true
    }
}

fn header_len(seg: &[u8]) -> Option<usize> {
    let hlen = usize::from(*seg.get(DATA_OFFSET)? >> 4) * 4;
    (hlen >= 20 && hlen <= seg.len()).then_some(hlen)
}

fn seq(h: &[u8]) -> u32 {
    h.get(SEQ).and_then(|b| b.try_into().ok()).map_or(0, u32::from_be_bytes)
}

/// Whether two headers of one length differ only in sequence number, checksum, PSH and FIN
/// (the ports, ACK, window, urgent pointer and options, the timestamps among them, must be the
/// same: the offload copies the first segment's header to all).
fn same_header(a: &[u8], b: &[u8]) -> bool {
    a[..SEQ.start] == b[..SEQ.start]
        && a[SEQ.end..FLAGS] == b[SEQ.end..FLAGS]
        && a[FLAGS] & !(PSH | FIN) == b[FLAGS] & !(PSH | FIN)
        && a[FLAGS + 1..CHECKSUM.start] == b[FLAGS + 1..CHECKSUM.start]
        && a[CHECKSUM.end..] == b[CHECKSUM.end..]
}

/// The virtio-net header asking for TCP segmentation in `size`-byte payloads, with the TCP
/// checksum completed from the end of the IP header (`csum_start`) into its field at 16.
fn vnet_header(v6: bool, hdr_len: u16, size: u16, csum_start: u16) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h[1] = if v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 };
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&(CHECKSUM.start as u16).to_le_bytes());
    h
}

/// A packet socket (AF_PACKET, SOCK_RAW, `PACKET_VNET_HDR`) bound to one interface with
/// protocol 0, so it receives nothing, sending trains.
pub struct GsoSocket {
    fd: OwnedFd,
    name: [libc::c_char; libc::IFNAMSIZ],
}

impl GsoSocket {
    pub fn open(iface: &str) -> std::io::Result<Self> {
        // The name goes into an ifreq for ETHTOOL_GTSO, NUL-terminated.
        if iface.len() >= libc::IFNAMSIZ {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        let (fd, ifindex) = super::packet_socket::open(iface, libc::SOCK_NONBLOCK)?;
        let on: libc::c_int = 1;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &on)?;
        // Room for 64 trains being copied into skbs at once (the default 208 KB, three).
        let sndbuf: libc::c_int = 4 << 20;
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &sndbuf).is_err() {
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &sndbuf)?;
        }
        // Straight to the device, as AF_XDP's transmit goes: a device whose ring is full then
        // refuses the train at once (ENOBUFS, and it goes frame by frame through AF_XDP, whose
        // ring holds it until the device takes it), where a qdisc-less device (veth's default
        // noqueue) would drop it unseen.
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &on)?;
        // SAFETY: all-zero is a valid sockaddr_ll; protocol 0 binds no receive hook.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is valid for the length given.
        let r = unsafe {
            libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut name = [0; libc::IFNAMSIZ];
        for (d, s) in name.iter_mut().zip(iface.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(Self { fd, name })
    }

    /// Whether the interface has TCP segmentation offload on now (ETHTOOL_GTSO).
    pub fn tso_on(&self) -> bool {
        const ETHTOOL_GTSO: u32 = 0x1e;
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        let mut value = EthtoolValue { cmd: ETHTOOL_GTSO, data: 0 };
        // SAFETY: all-zero is a valid ifreq; the name is NUL-terminated (shorter than IFNAMSIZ).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = self.name;
        ifr.ifr_ifru.ifru_data = std::ptr::from_mut(&mut value).cast();
        // SAFETY: SIOCETHTOOL reads the ifreq and writes `value`, both alive for the call.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
        r == 0 && value.data != 0
    }

    /// Send one frame (virtio-net header first) without waiting.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: `frame` is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` is valid for its size.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, std::ptr::from_ref(value).cast(), std::mem::size_of::<T>() as u32)
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests;
