//! The scheduling class of the interface's NAPI threads (`--napi-threads`).
//!
//! With threaded NAPI (`/sys/class/net/IFACE/threaded`, Documentation/networking/napi.rst,
//! "Threaded NAPI") each NAPI of the device runs in a kernel thread of its own rather than in
//! softirq context, and frames arriving for an idle NAPI wake its thread. Where that thread
//! shares a CPU with the engine thread it feeds, a wakeup preempts the engine in the middle of
//! its batch: a SCHED_FIFO thread always, a SCHED_NORMAL one by the fair class's wakeup
//! preemption. Measured on the bench machine (s31, one RX queue, the NAPI thread at SCHED_FIFO
//! as the bench rig sets it): 64 HTTP connections switched the server CPU between the two some
//! 25,000 times a second, the engine switched out runnable every time and waiting runnable 0.73
//! s for every 0.86 s it ran. A SCHED_BATCH thread does not preempt on wakeup (kernel/sched/
//! fair.c, check_preempt_wakeup_fair: only SCHED_NORMAL wakeups preempt), so the NAPI runs when
//! the engine sleeps or its slice ends and fills the engine's ring in larger batches; under
//! overload it still gets its fair share of the CPU (unlike SCHED_IDLE). What it costs is
//! latency: a frame can wait for the rest of the engine's turn.
//!
//! `batch` keeps every NAPI thread of the interface at SCHED_BATCH while synx runs: the threads
//! are looked up once a second (they come and go as the device's NAPIs are rebuilt, e.g. when
//! threading is switched off and on), each through the kernel's netdev netlink family
//! (NETDEV_CMD_NAPI_GET, its NETDEV_A_NAPI_PID, Linux 6.8+), and a thread found in another
//! class is set to batch, its class remembered. When synx stops the threads it changed that
//! are still at batch go back to what they were; not when it hands over to a successor, which
//! keeps them at batch (and, not having seen their class before, leaves them at batch when it
//! stops in turn). An interface without threaded NAPI has no threads, and nothing changes.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// How `synx run` treats the interface's NAPI threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NapiThreadsMode {
    /// Leave them as they are.
    #[default]
    Keep,
    /// SCHED_BATCH while synx runs: they do not preempt the engine threads on wakeup.
    Batch,
}

/// How often the interface's NAPI threads are looked up again.
const RESCAN: Duration = Duration::from_secs(1);

/// A thread's scheduling class and real-time priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Class {
    policy: i32,
    priority: i32,
}

const BATCH: Class = Class { policy: libc::SCHED_BATCH, priority: 0 };

/// The thread that keeps the interface's NAPI threads at SCHED_BATCH.
pub struct NapiThreads {
    /// `true`: put the threads back as they were; `false`: leave them (handed over).
    stop: mpsc::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    batched: Arc<AtomicU64>,
}

impl NapiThreads {
    /// Start keeping `iface`'s NAPI threads at SCHED_BATCH. `None` (logged) when the interface
    /// or the kernel's netdev netlink family cannot be found.
    pub fn start(iface: &str) -> Option<Self> {
        let ifindex = match CString::new(iface) {
            // SAFETY: a NUL-terminated string that lives through the call.
            Ok(name) => unsafe { libc::if_nametoindex(name.as_ptr()) },
            Err(_) => 0,
        };
        if ifindex == 0 {
            tracing::warn!(iface, "--napi-threads batch: no such interface; its NAPI threads are left alone");
            return None;
        }
        let netdev = match Netdev::open() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(iface, "--napi-threads batch: the kernel's netdev netlink family: {e}; NAPI threads are left alone");
                return None;
            }
        };
        let (stop, stopped) = mpsc::channel();
        let batched = Arc::new(AtomicU64::new(0));
        let counter = batched.clone();
        let iface = iface.to_string();
        let thread = std::thread::Builder::new()
            .name("synx-napi".into())
            .spawn(move || keep_batched(&iface, ifindex, netdev, &stopped, &counter))
            .map_err(|e| tracing::warn!("--napi-threads batch: {e}"))
            .ok()?;
        Some(Self { stop, thread: Some(thread), batched })
    }

    /// Times a NAPI thread was set to SCHED_BATCH.
    pub fn batched(&self) -> u64 {
        self.batched.load(Ordering::Relaxed)
    }

    /// Stop; `restore` puts the threads synx changed back in their class (not when handing
    /// over to a successor).
    pub fn stop(&mut self, restore: bool) {
        let _ = self.stop.send(restore);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NapiThreads {
    fn drop(&mut self) {
        self.stop(true);
    }
}

fn keep_batched(iface: &str, ifindex: u32, mut netdev: Netdev, stopped: &mpsc::Receiver<bool>, batched: &AtomicU64) {
    // The class each thread had before synx set it to batch.
    let mut before: HashMap<u32, Class> = HashMap::new();
    let mut failing = false;
    let restore = loop {
        match netdev.napi_threads(ifindex) {
            Ok(pids) => {
                failing = false;
                before.retain(|pid, _| pids.contains(pid));
                for pid in pids {
                    match class_of(pid) {
                        Ok(c) if c == BATCH => {}
                        Ok(c) => match set_class(pid, BATCH) {
                            Ok(()) => {
                                before.entry(pid).or_insert(c);
                                batched.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(iface, pid, policy = c.policy, priority = c.priority, "NAPI thread set to SCHED_BATCH");
                            }
                            Err(e) => tracing::warn!(iface, pid, "setting a NAPI thread to SCHED_BATCH: {e}"),
                        },
                        // Gone meanwhile.
                        Err(_) => {}
                    }
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(iface, "looking up the NAPI threads: {e}");
            }
            Err(_) => {}
        }
        match stopped.recv_timeout(RESCAN) {
            Ok(restore) => break restore,
            Err(mpsc::RecvTimeoutError::Disconnected) => break true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    if !restore {
        return;
    }
    for (pid, class) in before {
        // Only a thread still at batch and still a NAPI thread: one someone set otherwise since
        // is theirs, and a pid that ended may name another task now.
        let still_napi = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("napi/"));
        if still_napi && class_of(pid).is_ok_and(|c| c == BATCH) {
            match set_class(pid, class) {
                Ok(()) => tracing::info!(iface, pid, policy = class.policy, priority = class.priority, "NAPI thread back in its class"),
                Err(e) => tracing::warn!(iface, pid, "putting a NAPI thread back in its class: {e}"),
            }
        }
    }
}

fn class_of(pid: u32) -> io::Result<Class> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system calls on a pid; `param` is a valid out-pointer.
    let policy = unsafe { libc::sched_getscheduler(pid) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as above.
    if unsafe { libc::sched_getparam(pid, &mut param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SCHED_RESET_ON_FORK is a flag in the policy, not a class.
    Ok(Class { policy: policy & !libc::SCHED_RESET_ON_FORK, priority: param.sched_priority })
}

fn set_class(pid: u32, class: Class) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let param = libc::sched_param { sched_priority: class.priority };
    // SAFETY: a system call on a pid with a valid `param`.
    if unsafe { libc::sched_setscheduler(pid, class.policy, &param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Generic netlink (include/uapi/linux/netlink.h, genetlink.h) and the netdev family
/// (include/uapi/linux/netdev.h), as much as finding a device's NAPI threads takes.
mod nl {
    pub const NLMSG_HDRLEN: usize = 16;
    pub const GENL_HDRLEN: usize = 4;
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    /// The generic netlink controller and what resolves a family's name to its id.
    pub const GENL_ID_CTRL: u16 = 0x10;
    pub const CTRL_CMD_GETFAMILY: u8 = 3;
    pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
    pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    /// NETDEV_FAMILY_NAME, its NETDEV_CMD_NAPI_GET and the attributes of a NAPI.
    pub const NETDEV_FAMILY: &str = "netdev";
    pub const NETDEV_CMD_NAPI_GET: u8 = 11;
    pub const NETDEV_A_NAPI_IFINDEX: u16 = 1;
    pub const NETDEV_A_NAPI_PID: u16 = 4;
    /// An attribute's type without its nested/byte-order flags (NLA_TYPE_MASK).
    const NLA_TYPE_MASK: u16 = 0x3fff;

    const fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    /// A generic netlink request: header, command (version 1) and attributes.
    pub fn request(family: u16, flags: u16, seq: u32, cmd: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + GENL_HDRLEN];
        m[NLMSG_HDRLEN] = cmd;
        m[NLMSG_HDRLEN + 1] = 1;
        for &(ty, value) in attrs {
            let len = 4 + value.len();
            m.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(value);
            m.resize(align4(m.len()), 0);
        }
        let len = u32::try_from(m.len()).unwrap_or(u32::MAX);
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&family.to_ne_bytes());
        m[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m
    }

    /// One message of a reply.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Message<'a> {
        /// A family's message: its generic netlink payload's attributes.
        Data { seq: u32, attrs: &'a [u8] },
        /// The end of a dump.
        Done { seq: u32 },
        /// An error (a negative errno), or 0: an acknowledgement.
        Error { seq: u32, errno: i32 },
    }

    /// The messages in what one recv returned; `None` at the first that does not parse (a
    /// length shorter than a header or past the end).
    pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Option<Message<'_>>> {
        std::iter::from_fn(move || {
            if buf.is_empty() {
                return None;
            }
            let parsed = (|| {
                let len = u32::from_ne_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
                let ty = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
                let seq = u32::from_ne_bytes(buf.get(8..12)?.try_into().ok()?);
                let body = buf.get(NLMSG_HDRLEN..len)?;
                let message = match ty {
                    NLMSG_DONE => Message::Done { seq },
                    NLMSG_ERROR => Message::Error { seq, errno: i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?) },
                    _ => Message::Data { seq, attrs: body.get(GENL_HDRLEN..)? },
                };
                Some((message, align4(len).min(buf.len())))
            })();
            match parsed {
                Some((message, used)) => {
                    buf = &buf[used..];
                    Some(Some(message))
                }
                None => {
                    buf = &[];
                    Some(None)
                }
            }
        })
    }

    /// The attributes (type, value) of a payload; stops at one that does not parse.
    pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
        std::iter::from_fn(move || {
            let len = usize::from(u16::from_ne_bytes(buf.get(0..2)?.try_into().ok()?));
            let ty = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
            let value = buf.get(4..len)?;
            buf = buf.get(align4(len)..).unwrap_or(&[]);
            Some((ty, value))
        })
    }

    /// The first attribute of type `ty` as a u16/u32 (native byte order, as netlink's are).
    pub fn u16_attr(attrs: &[u8], ty: u16) -> Option<u16> {
        self::attrs(attrs).find(|&(t, _)| t == ty).and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(0..2)?.try_into().ok()?)))
    }
    pub fn u32_attr(attrs: &[u8], ty: u16) -> Option<u32> {
        self::attrs(attrs).find(|&(t, _)| t == ty).and_then(|(_, v)| Some(u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?)))
    }
}

/// A generic netlink socket that speaks to the netdev family.
struct Netdev {
    fd: OwnedFd,
    family: u16,
    seq: u32,
}

impl Netdev {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_GENERIC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A kernel that never answers must not hold the thread (or synx's stop) for long.
        let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: a valid option value of its own size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let mut s = Self { fd, family: nl::GENL_ID_CTRL, seq: 0 };
        let mut name = nl::NETDEV_FAMILY.as_bytes().to_vec();
        name.push(0);
        let mut family = None;
        s.exchange(nl::GENL_ID_CTRL, nl::NLM_F_ACK, nl::CTRL_CMD_GETFAMILY, &[(nl::CTRL_ATTR_FAMILY_NAME, &name)], |attrs| {
            family = family.or(nl::u16_attr(attrs, nl::CTRL_ATTR_FAMILY_ID));
        })?;
        s.family = family.ok_or_else(|| io::Error::other("the controller named no id for the netdev family"))?;
        Ok(s)
    }

    /// The pids of the threads of `ifindex`'s NAPIs (those it runs threaded).
    fn napi_threads(&mut self, ifindex: u32) -> io::Result<Vec<u32>> {
        let mut pids = Vec::new();
        let family = self.family;
        self.exchange(family, nl::NLM_F_DUMP, nl::NETDEV_CMD_NAPI_GET, &[(nl::NETDEV_A_NAPI_IFINDEX, &ifindex.to_ne_bytes())], |attrs| {
            // The dump is of that device; the check keeps another's threads out regardless.
            if nl::u32_attr(attrs, nl::NETDEV_A_NAPI_IFINDEX).is_none_or(|i| i == ifindex)
                && let Some(pid) = nl::u32_attr(attrs, nl::NETDEV_A_NAPI_PID).filter(|&p| p > 0)
            {
                pids.push(pid);
            }
        })?;
        Ok(pids)
    }

    /// Send a request and hand each data message's attributes to `each`, until the dump's end
    /// or the acknowledgement.
    fn exchange(&mut self, family: u16, flags: u16, cmd: u8, attrs: &[(u16, &[u8])], mut each: impl FnMut(&[u8])) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let request = nl::request(family, flags, seq, cmd, attrs);
        // SAFETY: a valid buffer of its length; the kernel is the destination of an unbound
        // netlink socket's send.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: a valid buffer of its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = usize::try_from(n).unwrap_or(0);
            for message in nl::messages(&buf[..n]) {
                match message {
                    None => return Err(io::Error::other("a netlink message that does not parse")),
                    // A late answer to an earlier request (one that timed out).
                    Some(nl::Message::Data { seq: s, .. } | nl::Message::Done { seq: s } | nl::Message::Error { seq: s, .. }) if s != seq => {}
                    Some(nl::Message::Data { attrs, .. }) => each(attrs),
                    Some(nl::Message::Done { .. }) => return Ok(()),
                    Some(nl::Message::Error { errno: 0, .. }) => return Ok(()),
                    Some(nl::Message::Error { errno, .. }) => return Err(io::Error::from_raw_os_error(-errno)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_header_a_command_and_padded_attributes() {
        let m = nl::request(0x20, nl::NLM_F_DUMP, 7, nl::NETDEV_CMD_NAPI_GET, &[(nl::NETDEV_A_NAPI_IFINDEX, &5u32.to_ne_bytes()), (2, b"ab\0")]);
        // 16 + 4 + (4 + 4) + (4 + 3, padded to 8) bytes.
        assert_eq!(m.len(), 36);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x20);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), nl::NLM_F_DUMP | nl::NLM_F_REQUEST);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..18], &[nl::NETDEV_CMD_NAPI_GET, 1]);
        let attrs: Vec<_> = nl::attrs(&m[20..]).collect();
        assert_eq!(attrs, vec![(nl::NETDEV_A_NAPI_IFINDEX, &5u32.to_ne_bytes()[..]), (2, &b"ab\0"[..])]);
        assert_eq!(m[35], 0, "padding");
    }

    /// A reply as the kernel writes one: a message per NAPI, then the dump's end.
    #[test]
    fn a_dump_reply_parses_into_its_messages_and_attributes() {
        let napi = |pid: Option<u32>| {
            let mut attrs = vec![(nl::NETDEV_A_NAPI_IFINDEX, 5u32.to_ne_bytes().to_vec()), (2, 8193u32.to_ne_bytes().to_vec())];
            attrs.extend(pid.map(|p| (nl::NETDEV_A_NAPI_PID, p.to_ne_bytes().to_vec())));
            let refs: Vec<(u16, &[u8])> = attrs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
            nl::request(0x20, 0, 9, nl::NETDEV_CMD_NAPI_GET, &refs)
        };
        let mut reply = napi(Some(4242));
        reply.extend(napi(None));
        let mut done = nl::request(nl::NLMSG_DONE, 0, 9, 0, &[]);
        done.truncate(nl::NLMSG_HDRLEN + 4);
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        reply.extend(&done);
        let messages: Vec<_> = nl::messages(&reply).collect();
        assert_eq!(messages.len(), 3);
        let pids: Vec<Option<u32>> = messages[..2]
            .iter()
            .map(|m| match m {
                Some(nl::Message::Data { seq: 9, attrs }) => nl::u32_attr(attrs, nl::NETDEV_A_NAPI_PID),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(pids, vec![Some(4242), None]);
        assert_eq!(messages[2], Some(nl::Message::Done { seq: 9 }));
    }

    #[test]
    fn a_truncated_or_lying_reply_stops_parsing_without_a_panic() {
        let full = nl::request(0x20, 0, 1, 1, &[(nl::NETDEV_A_NAPI_PID, &7u32.to_ne_bytes())]);
        for cut in 0..full.len() {
            let parsed: Vec<_> = nl::messages(&full[..cut]).collect();
            assert!(parsed.iter().all(Option::is_none), "cut at {cut}: {parsed:?}");
        }
        // A length past the end, and one shorter than a header.
        let mut lying = full.clone();
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(nl::messages(&lying).collect::<Vec<_>>(), vec![None]);
        lying[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(nl::messages(&lying).collect::<Vec<_>>(), vec![None]);
        // An attribute whose length runs past its payload ends the attributes.
        let attrs = [12u8, 0, 4, 0, 1, 2];
        assert_eq!(nl::attrs(&attrs).count(), 0);
        assert_eq!(nl::attrs(&[2u8, 0, 4, 0]).count(), 0, "a length shorter than an attribute header");
    }

    /// The real kernel (neither the lookup nor the dump needs privileges): the netdev family
    /// resolves, and loopback (no NAPI) has no threads.
    #[test]
    fn the_kernel_answers_a_napi_dump() {
        let mut netdev = Netdev::open().expect("the netdev netlink family (Linux 6.8+)");
        assert_ne!(netdev.family, nl::GENL_ID_CTRL);
        let lo = CString::new("lo").unwrap();
        // SAFETY: a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(lo.as_ptr()) };
        assert_eq!(netdev.napi_threads(index).unwrap(), Vec::<u32>::new());
        // Twice on one socket: sequence numbers and the buffer's reuse.
        assert_eq!(netdev.napi_threads(index).unwrap(), Vec::<u32>::new());
    }
}
