//! Adaptive receive coalescing: the interface's NAPI deferral (`napi_defer_hard_irqs` and
//! `gro_flush_timeout`, the kernel's software interrupt coalescing, Documentation/networking/
//! napi.rst) is on while many clients send at once and off while few do.
//!
//! With deferral on, a NAPI run that found frames leaves the device's notification off and a
//! timer runs the NAPI again after `gro_flush_timeout` (at most `napi_defer_hard_irqs` empty runs
//! in a row before the notification is back on): frames that arrive meanwhile wait for it instead
//! of each waking the NAPI thread, so one wakeup of it (and of the engine thread after it) serves
//! the frames of many connections. On veth each wakeup is an inter-processor interrupt from the
//! sending CPU; measured on the bench machine (s21), a connection (connect, request, response,
//! close; 64 in flight) cost the server 31 us of CPU with deferral at 2 runs of 20 us against 37
//! without, and the client 32 against 45. A lone flow only waits: its next frame is clocked by
//! what this server sends (the next request of a keep-alive connection, the next window of a bulk
//! transfer), so deferral adds up to a timeout to every round trip and gains no batching (HTTP at
//! one connection lost 9% of its requests per second with it, a bulk transfer in either direction
//! a quarter of its rate). A NIC's adaptive interrupt moderation (the kernel's `net_dim`) finds
//! the same by trying levels and watching throughput; here the engine sees the cause directly:
//! how many connections sent in the last few milliseconds.
//!
//! [`Demand`] is each queue thread's view (sans-IO: time is an argument), [`Coalescing`] the
//! interface's setting, on while any queue asks for it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use synx_tcp::instant::Instant;

/// How `synx run` treats the interface's NAPI deferral.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CoalesceMode {
    /// On while many connections send at once, off otherwise ([`Demand`]); the interface's
    /// values go back to the kernel's defaults (0, 0) when synx stops. An interface whose
    /// deferral someone else set is left as it is.
    #[default]
    Auto,
    /// Never touch the interface's NAPI deferral.
    Off,
}

/// The deferral synx sets while clients crowd: 2 empty runs of 20 us before the device's
/// notification is back on (the best of 5, 20 and 50 us for connection rate and server CPU per
/// connection on the bench machine).
pub const ON: Setting = Setting { hard_irqs: 2, gro_flush_timeout_ns: 20_000 };
/// The kernel's defaults: every frame may wake the NAPI.
pub const OFF: Setting = Setting { hard_irqs: 0, gro_flush_timeout_ns: 0 };

/// A device's NAPI deferral.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub hard_irqs: u32,
    pub gro_flush_timeout_ns: u64,
}

/// How long one count of senders lasts.
pub const WINDOW: Duration = Duration::from_millis(5);
/// Distinct senders in a window from which a queue asks for deferral.
pub const CROWD: u32 = 8;
/// Distinct senders in a window at most for it to count as quiet.
pub const FEW: u32 = 2;
/// Windows in a row it takes to ask for deferral: a crowd that lasts 10 ms.
const CROWDED_WINDOWS: u32 = 2;
/// Windows in a row it takes to give it up: quiet for at least 100 ms (a window that the
/// engine slept through counts once, however long), so a crowd that pauses keeps it.
const QUIET_WINDOWS: u32 = 20;
/// Windows after turning deferral on whose frame rate is compared with the crowd's before.
const TRIAL_WINDOWS: u32 = 4;
/// A trial whose frame rate fell below this share of the rate before failed: deferral made
/// the clients wait rather than batched their frames (a closed loop whose CPUs idle between
/// round trips: with two queues sharing both CPUs with the load, the connection rate fell
/// from 17,121 to 10,003 a second with deferral on).
const TRIAL_KEEPS: f64 = 0.9;
/// How long a queue waits after a failed trial before it asks again: doubled by each failure
/// in a row, up to [`MAX_BACKOFF`]; a trial that holds starts it over.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(64);

/// One queue's count of the remotes that sent it frames, window by window, and whether it
/// wants deferral. Remotes are counted in a 256-bit set (linear counting without the
/// correction: a count below what it is when two hash to one bit, which only matters far above
/// [`CROWD`]). Like a NIC's adaptive moderation, it checks that deferral pays: the frames a
/// second it takes in the first windows with deferral on must keep up with the crowd's before,
/// or it gives deferral up for a while.
#[derive(Debug)]
pub struct Demand {
    seen: [u64; 4],
    /// Frames in the current window.
    frames: u64,
    since: Option<Instant>,
    crowded: u32,
    /// Frames and time of the crowded windows in a row.
    crowd_frames: u64,
    crowd_time: Duration,
    quiet: u32,
    wants: bool,
    /// With deferral just asked for: the crowd's frame rate before (per second) and the
    /// frames and time of the windows since.
    trial: Option<(f64, u32, u64, Duration)>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Default for Demand {
    fn default() -> Self {
        Self::new()
    }
}

impl Demand {
    pub fn new() -> Self {
        Self {
            seen: [0; 4],
            frames: 0,
            since: None,
            crowded: 0,
            crowd_frames: 0,
            crowd_time: Duration::ZERO,
            quiet: 0,
            wants: false,
            trial: None,
            backoff: MIN_BACKOFF,
            retry_at: None,
        }
    }

    /// A frame from `remote` (address and port: a connection, or a handshake, of that client).
    pub fn saw(&mut self, remote: SocketAddr) {
        let ip = match remote.ip() {
            std::net::IpAddr::V4(a) => u32::from(a),
            std::net::IpAddr::V6(a) => {
                let o = a.octets();
                u32::from_be_bytes([o[12], o[13], o[14], o[15]]) ^ u32::from_be_bytes([o[0], o[1], o[2], o[3]])
            }
        };
        let h = (ip ^ u32::from(remote.port()).rotate_left(16)).wrapping_mul(0x9E37_79B1) >> 24;
        self.seen[(h >> 6) as usize] |= 1 << (h & 63);
        self.frames += 1;
    }

    /// Distinct remotes counted in the current window.
    pub fn senders(&self) -> u32 {
        self.seen.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether this queue wants deferral now.
    pub fn wants(&self) -> bool {
        self.wants
    }

    /// Close the window if it has run its length; returns the new wish when it changed.
    pub fn tick(&mut self, now: Instant) -> Option<bool> {
        let Some(since) = self.since else {
            self.since = Some(now);
            return None;
        };
        let took = now.saturating_duration_since(since);
        if took < WINDOW {
            return None;
        }
        let (senders, frames) = (self.senders(), self.frames);
        (self.seen, self.frames, self.since) = ([0; 4], 0, Some(now));
        let rate = |frames: u64, time: Duration| frames as f64 / time.as_secs_f64().max(1e-9);
        if senders < CROWD {
            // The crowd thinned out: fewer frames say nothing about deferral now.
            self.trial = None;
        }
        if let Some((before, windows, f, t)) = self.trial.as_mut() {
            (*windows, *f, *t) = (*windows + 1, *f + frames, *t + took);
            if *windows >= TRIAL_WINDOWS {
                let (before, after) = (*before, rate(*f, *t));
                self.trial = None;
                if after < before * TRIAL_KEEPS {
                    self.retry_at = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    (self.wants, self.crowded, self.quiet) = (false, 0, 0);
                    return Some(false);
                }
                self.backoff = MIN_BACKOFF;
            }
        }
        if senders >= CROWD {
            (self.crowded, self.quiet) = (self.crowded + 1, 0);
            (self.crowd_frames, self.crowd_time) = (self.crowd_frames + frames, self.crowd_time + took);
        } else {
            (self.crowded, self.crowd_frames, self.crowd_time) = (0, 0, Duration::ZERO);
            self.quiet = if senders <= FEW { self.quiet + 1 } else { 0 };
        }
        let wants = if self.wants {
            self.quiet < QUIET_WINDOWS
        } else {
            self.crowded >= CROWDED_WINDOWS && self.retry_at.is_none_or(|at| now >= at)
        };
        if wants == self.wants {
            return None;
        }
        self.wants = wants;
        self.trial = wants.then(|| (rate(self.crowd_frames, self.crowd_time), 0, 0, Duration::ZERO));
        Some(wants)
    }
}

/// The interface's deferral, on while any queue wants it. Written to
/// `/sys/class/net/IFACE/{napi_defer_hard_irqs,gro_flush_timeout}` (the interface as this
/// process's network namespace sees it), which set every NAPI of the device.
#[derive(Debug)]
pub struct Coalescing {
    dir: PathBuf,
    wanting: AtomicU32,
    /// What was last written (None: writing failed once, and synx leaves the device alone).
    applied: Mutex<Option<Setting>>,
    /// Times [`ON`] was written.
    turned_on: AtomicU64,
}

impl Coalescing {
    /// Manage `iface`'s deferral in `sysfs_net` (`/sys/class/net`), unless someone else set it:
    /// values other than the kernel's defaults and [`ON`] (a predecessor's, during a takeover)
    /// are left alone, and so is a device whose values cannot be read.
    pub fn open(sysfs_net: impl Into<PathBuf>, iface: &str) -> Option<Self> {
        let dir = sysfs_net.into().join(iface);
        let found = match read(&dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(iface, "adaptive coalescing off: the interface's NAPI deferral cannot be read ({e})");
                return None;
            }
        };
        if found != OFF && found != ON {
            tracing::info!(
                iface,
                napi_defer_hard_irqs = found.hard_irqs,
                gro_flush_timeout = found.gro_flush_timeout_ns,
                "adaptive coalescing off: the interface's NAPI deferral is set already; synx leaves it as it is"
            );
            return None;
        }
        let c = Self { dir, wanting: AtomicU32::new(0), applied: Mutex::new(Some(found)), turned_on: AtomicU64::new(0) };
        // Start from the kernel's defaults (a predecessor's ON goes until a queue asks again).
        c.apply(false);
        Some(c)
    }

    /// A queue's wish changed ([`Demand::tick`]).
    pub fn want(&self, yes: bool) {
        let step = |n: u32| Some(if yes { n.saturating_add(1) } else { n.saturating_sub(1) });
        let before = self.wanting.fetch_update(Ordering::AcqRel, Ordering::Acquire, step).unwrap_or_else(|n| n);
        let after = step(before).unwrap_or(before);
        if (before == 0) != (after == 0) {
            self.apply(after > 0);
        }
    }

    /// Times deferral was turned on.
    pub fn turned_on(&self) -> u64 {
        self.turned_on.load(Ordering::Relaxed)
    }

    /// What is set now (None once a write failed).
    pub fn applied(&self) -> Option<Setting> {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel's defaults back (synx stops; not when it hands over to a successor, which
    /// takes [`ON`] as its own).
    pub fn restore(&self) {
        self.wanting.store(0, Ordering::Release);
        self.apply(false);
    }

    fn apply(&self, on: bool) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        // The wish may have changed back while this thread waited for the lock.
        let on = on && self.wanting.load(Ordering::Acquire) > 0;
        let target = if on { ON } else { OFF };
        let Some(current) = *applied else { return };
        if current == target {
            return;
        }
        // The timeout first when turning on, last when turning off: deferral never runs with
        // a zero timeout (which the kernel reads as no deferral anyway).
        let order: [(&str, u64); 2] = if on {
            [("gro_flush_timeout", target.gro_flush_timeout_ns), ("napi_defer_hard_irqs", u64::from(target.hard_irqs))]
        } else {
            [("napi_defer_hard_irqs", 0), ("gro_flush_timeout", 0)]
        };
        for (file, value) in order {
            if let Err(e) = std::fs::write(self.dir.join(file), value.to_string()) {
                tracing::warn!(dir = %self.dir.display(), "adaptive coalescing off: writing {file}: {e}");
                *applied = None;
                return;
            }
        }
        *applied = Some(target);
        if on {
            self.turned_on.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn read(dir: &std::path::Path) -> std::io::Result<Setting> {
    let value = |file: &str| -> std::io::Result<u64> {
        let text = std::fs::read_to_string(dir.join(file))?;
        text.trim().parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{file}: {e}")))
    };
    let hard_irqs = u32::try_from(value("napi_defer_hard_irqs")?).unwrap_or(u32::MAX);
    Ok(Setting { hard_irqs, gro_flush_timeout_ns: value("gro_flush_timeout")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(1_000_000_000 + ms * 1_000_000)
    }

    fn client(i: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 2], 40_000 + i))
    }

    /// Every window from `from_ms`, `n` windows long, with `senders` distinct clients each,
    /// two frames each (the same client twice counts once).
    fn windows(d: &mut Demand, from_ms: u64, n: u64, senders: u16) -> Vec<(u64, bool)> {
        windows_of(d, from_ms, n, senders, 2)
    }

    /// As [`windows`], `frames` frames from each client.
    fn windows_of(d: &mut Demand, from_ms: u64, n: u64, senders: u16, frames: u16) -> Vec<(u64, bool)> {
        let mut changes = Vec::new();
        for w in 0..n {
            let t = from_ms + w * WINDOW.as_millis() as u64;
            for i in 0..senders {
                for _ in 0..frames {
                    d.saw(client(i));
                }
            }
            if let Some(c) = d.tick(at(t + WINDOW.as_millis() as u64)) {
                changes.push((t, c));
            }
        }
        changes
    }

    #[test]
    fn counts_distinct_senders() {
        let mut d = Demand::new();
        for i in 0..3 {
            d.saw(client(i));
            d.saw(client(i));
        }
        assert_eq!(d.senders(), 3);
        // Same port, other address: another client.
        d.saw(SocketAddr::from(([198, 18, 0, 3], 40_000)));
        assert_eq!(d.senders(), 4);
        let mut d = Demand::new();
        for i in 0..64 {
            d.saw(client(i));
        }
        assert!(d.senders() >= 56, "64 clients counted as {}", d.senders());
    }

    #[test]
    fn a_lone_flow_never_asks() {
        let mut d = Demand::new();
        d.tick(at(0));
        assert!(windows(&mut d, 0, 1000, 1).is_empty());
        assert!(windows(&mut d, 5000, 1000, FEW as u16 + 1).is_empty(), "between few and a crowd");
        assert!(!d.wants());
    }

    #[test]
    fn a_crowd_asks_after_two_windows_and_quiet_gives_it_up_after_twenty() {
        let mut d = Demand::new();
        d.tick(at(0));
        // One crowded window is not enough.
        assert!(windows(&mut d, 0, 1, CROWD as u16).is_empty());
        assert!(windows(&mut d, 5, 1, 1).is_empty());
        let changes = windows(&mut d, 10, 5, 64);
        assert_eq!(changes, vec![(15, true)]);
        assert!(d.wants());
        // A pause of 19 quiet windows keeps it; the crowd comes back.
        assert!(windows(&mut d, 100, 19, 0).is_empty());
        assert!(windows(&mut d, 200, 1, 64).is_empty());
        // A middling window resets the quiet count too.
        assert!(windows(&mut d, 300, 19, 1).is_empty());
        assert!(windows(&mut d, 400, 1, 5).is_empty());
        let changes = windows(&mut d, 500, 20, 1);
        assert_eq!(changes, vec![(595, false)]);
        assert!(!d.wants());
    }

    #[test]
    fn a_window_closes_only_after_its_length() {
        let mut d = Demand::new();
        assert_eq!(d.tick(at(0)), None);
        for i in 0..64 {
            d.saw(client(i));
        }
        // Within the window: still counting.
        assert_eq!(d.tick(at(4)), None);
        assert_eq!(d.senders(), 64.min(d.senders()));
        assert!(d.senders() > 0);
        assert_eq!(d.tick(at(5)), None, "first crowded window");
        assert_eq!(d.senders(), 0, "a new window starts empty");
        for i in 0..64 {
            d.saw(client(i));
        }
        // Slept through a long gap: the window counts once.
        assert_eq!(d.tick(at(500)), Some(true));
    }

    /// A stand-in for /sys/class/net holding one device, removed when dropped.
    struct Root(PathBuf);

    impl Root {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn deferral_that_slows_the_crowd_down_is_given_up_for_a_while_that_doubles() {
        let mut d = Demand::new();
        d.tick(at(0));
        // 64 clients, 4 frames each per window; with deferral on they manage 3 (-25%): the
        // trial fails after its 4 windows (window labels are their starts, in ms).
        assert_eq!(windows_of(&mut d, 0, 2, 64, 4), vec![(5, true)]);
        assert_eq!(windows_of(&mut d, 10, 4, 64, 3), vec![(25, false)]);
        // Still crowded (and back at 4 frames without deferral): no new ask for 1 s.
        assert!(windows_of(&mut d, 30, 199, 64, 4).is_empty(), "asked again before the backoff ran out");
        assert_eq!(windows_of(&mut d, 1025, 1, 64, 4), vec![(1025, true)], "asks again after 1 s");
        // Fails again: 2 s this time.
        assert_eq!(windows_of(&mut d, 1030, 4, 64, 3), vec![(1045, false)]);
        assert!(windows_of(&mut d, 1050, 399, 64, 4).is_empty());
        assert_eq!(windows_of(&mut d, 3045, 1, 64, 4), vec![(3045, true)], "asks again after 2 s");
        // This trial holds (a dip within 10% is the same): the wish stays, the backoff starts over.
        assert!(windows_of(&mut d, 3050, 40, 64, 4).is_empty());
        assert!(d.wants());
        assert_eq!(d.backoff, MIN_BACKOFF);
    }

    #[test]
    fn a_crowd_that_leaves_during_the_trial_is_no_verdict() {
        let mut d = Demand::new();
        d.tick(at(0));
        assert_eq!(windows_of(&mut d, 0, 2, 64, 4), vec![(5, true)]);
        // Down to 4 clients: fewer frames, but not deferral's doing; the wish stays until quiet.
        assert!(windows_of(&mut d, 10, 10, 4, 1).is_empty());
        assert!(d.wants());
        assert_eq!(d.backoff, MIN_BACKOFF);
        assert_eq!(windows_of(&mut d, 60, 20, 1, 1), vec![(155, false)]);
        // And a crowd coming back asks at once (no backoff).
        assert_eq!(windows_of(&mut d, 160, 2, 64, 4), vec![(165, true)]);
    }

    #[test]
    fn a_trial_that_keeps_up_keeps_deferral() {
        let mut d = Demand::new();
        d.tick(at(0));
        assert_eq!(windows_of(&mut d, 0, 2, 64, 4), vec![(5, true)]);
        // 64 x 4 = 256 frames a window before, 240 after: within 10%.
        assert!(windows_of(&mut d, 10, 4, 60, 4).is_empty());
        assert!(windows_of(&mut d, 30, 100, 64, 6).is_empty(), "more frames with deferral on");
        assert!(d.wants());
    }

    fn sysfs(hard_irqs: &str, timeout: &str) -> (Root, PathBuf) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = Root(std::env::temp_dir().join(format!("synx-coalesce-test-{}-{n}", std::process::id())));
        let dir = root.path().join("veth0");
        std::fs::create_dir_all(root.path()).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("napi_defer_hard_irqs"), hard_irqs).unwrap();
        std::fs::write(dir.join("gro_flush_timeout"), timeout).unwrap();
        (root, dir)
    }

    fn values(dir: &std::path::Path) -> (String, String) {
        let r = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap().trim().to_string();
        (r("napi_defer_hard_irqs"), r("gro_flush_timeout"))
    }

    #[test]
    fn on_while_any_queue_wants_it_and_restored_at_the_end() {
        let (root, dir) = sysfs("0\n", "0\n");
        let c = Coalescing::open(root.path(), "veth0").expect("defaults: managed");
        c.want(true);
        assert_eq!(values(&dir), ("2".into(), "20000".into()));
        c.want(true);
        c.want(false);
        assert_eq!(c.applied(), Some(ON), "one queue still wants it");
        c.want(false);
        assert_eq!(values(&dir), ("0".into(), "0".into()));
        c.want(true);
        assert_eq!(c.turned_on(), 2);
        c.restore();
        // A wish withdrawn after the restore counts nothing below zero.
        c.want(false);
        c.want(true);
        assert_eq!(c.applied(), Some(ON));
        c.restore();
        assert_eq!(values(&dir), ("0".into(), "0".into()));
        assert_eq!(c.applied(), Some(OFF));
    }

    #[test]
    fn leaves_a_device_someone_else_set_alone() {
        let (root, dir) = sysfs("1\n", "50000\n");
        assert!(Coalescing::open(root.path(), "veth0").is_none());
        assert_eq!(values(&dir), ("1".into(), "50000".into()));
        assert!(Coalescing::open(root.path(), "nosuch").is_none());
    }

    #[test]
    fn takes_a_predecessors_setting_as_its_own() {
        let (root, dir) = sysfs("2\n", "20000\n");
        let c = Coalescing::open(root.path(), "veth0").expect("ON is synx's own");
        assert_eq!(values(&dir), ("0".into(), "0".into()), "off until a queue asks");
        c.want(true);
        assert_eq!(values(&dir), ("2".into(), "20000".into()));
    }

    #[test]
    fn a_failed_write_stops_managing() {
        let (root, dir) = sysfs("0\n", "0\n");
        let c = Coalescing::open(root.path(), "veth0").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        c.want(true);
        assert_eq!(c.applied(), None);
        std::fs::create_dir(&dir).unwrap();
        c.want(false);
        c.want(true);
        assert!(!dir.join("gro_flush_timeout").exists(), "no more writes");
    }
}
