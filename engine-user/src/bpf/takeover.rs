//! The BPF side of a takeover (`synx run --takeover`, issue 17 item 1): the running process
//! pins the maps that hold state and its XDP attachment (a bpf_link) in a directory on bpffs;
//! its successor loads its own program on those very maps and replaces the program inside the
//! link, atomically: no moment without a program on the interface, no flow, listener, counter
//! or cookie secret lost. aya compares each shared map with the successor's definition (type,
//! key and value size, entries, flags); where they differ the successor stops with an error
//! that names the map and the property, and nothing has changed: the link, still pinned,
//! keeps the running program. The XDP counters are not shared but copied: the successor counts
//! in an array of its own, which grows when a version adds a counter, and adds the
//! predecessor's counts into it once its program runs.
//!
//! RX_BACKLOG (counts of the running process's sockets) and XSKS (its sockets) are not kept:
//! the successor binds sockets of its own, whose counts start at zero.

use std::path::Path;

use aya::{
    maps::{Map, MapData, MapInfo, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use engine_common::maps;

use super::{BpfError, PROGRAM, XDP_OBJECT, XdpProgram, XdpSettings, load_object, program};

/// The maps whose state a successor keeps: connections' flows (and their filter), the
/// listeners, the XDP counters (`synx stats` carries on), the cookie secrets (a cookie minted
/// before the takeover still validates after it), the switches (draining, the ring of hosts).
pub const KEPT_MAPS: [&str; 8] = [
    maps::FLOWS4,
    maps::FLOWS6,
    maps::FLOW_FILTER,
    maps::LISTENERS,
    maps::LISTEN_PORTS,
    maps::COUNTERS,
    maps::COOKIE_SECRETS,
    maps::SWITCHES,
];

/// The kept maps the successor's program uses as they are (all but the counters, which it
/// copies: [`XdpProgram::finish_takeover`]).
pub const SHARED_MAPS: [&str; 7] = [
    maps::FLOWS4,
    maps::FLOWS6,
    maps::FLOW_FILTER,
    maps::LISTENERS,
    maps::LISTEN_PORTS,
    maps::COOKIE_SECRETS,
    maps::SWITCHES,
];
const _: () = assert!(SHARED_MAPS.len() + 1 == KEPT_MAPS.len());

/// The link's pin in the handover directory.
const LINK_PIN: &str = "link";

/// bpffs's `f_type` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn takeover_error(what: impl std::fmt::Display) -> BpfError {
    BpfError::Takeover(what.to_string())
}

/// `dir` is on bpffs (pins live nowhere else).
fn require_bpffs(dir: &Path) -> Result<(), BpfError> {
    let probe = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).map_err(takeover_error)?;
    // SAFETY: statfs into a zeroed struct we own, with a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(takeover_error(format!(
            "{} is not on bpffs; mount it (`mount -t bpf bpf /sys/fs/bpf`) or choose a directory there",
            dir.display()
        )));
    }
    Ok(())
}

impl XdpProgram {
    /// Pin the kept maps ([`KEPT_MAPS`]) and the attachment in `dir` (on bpffs), for a
    /// successor's [`XdpProgram::take_over`]. From here on the attachment outlives this process
    /// (the pin holds it) until the successor takes it, or [`XdpProgram::reclaim`] takes it
    /// back.
    pub fn pin_for_takeover(&mut self, dir: &Path) -> Result<(), BpfError> {
        require_bpffs(dir)?;
        std::fs::create_dir_all(dir).map_err(|e| takeover_error(format!("{}: {e}", dir.display())))?;
        let prog = program(&mut self.ebpf, PROGRAM)?;
        let info = prog.info().map_err(|e| BpfError::Load(Box::new(e)))?;
        let ids = info.map_ids().map_err(|e| BpfError::Load(Box::new(e)))?.unwrap_or_default();
        let mut pinned = Vec::new();
        for id in ids {
            let name = MapInfo::from_id(id)?.name_as_str().map(str::to_owned);
            let Some(name) = name.filter(|n| KEPT_MAPS.contains(&n.as_str())) else { continue };
            MapData::from_id(id)?.pin(dir.join(&name)).map_err(|e| takeover_error(format!("pinning {name}: {e}")))?;
            pinned.push(name);
        }
        if let Some(missing) = KEPT_MAPS.iter().find(|m| !pinned.iter().any(|p| p == *m)) {
            return Err(takeover_error(format!("map {missing} is not used by the running program")));
        }
        let link_id = self.link.take().ok_or_else(|| takeover_error("this program is not attached"))?;
        let link = program(&mut self.ebpf, PROGRAM)?.take_link(link_id).map_err(|e| BpfError::Load(Box::new(e)))?;
        let link = FdLink::try_from(link).map_err(|e| takeover_error(format!("the attachment is no bpf_link: {e}")))?;
        // Dropping the returned handle closes our descriptor; the pin keeps the link.
        link.pin(dir.join(LINK_PIN)).map_err(|e| takeover_error(format!("pinning the link: {e}")))?;
        Ok(())
    }

    /// After a takeover that failed: take the attachment back from its pin in `dir` (so it
    /// ends with this process again) and remove the pins.
    pub fn reclaim(&mut self, dir: &Path) -> Result<(), BpfError> {
        let link = PinnedLink::from_pin(dir.join(LINK_PIN)).map_err(|e| takeover_error(format!("the pinned link: {e}")))?;
        let link = link.unpin().map_err(|e| takeover_error(format!("unpinning the link: {e}")))?;
        let link = XdpLink::try_from(link).map_err(|e| takeover_error(format!("the pinned link: {e}")))?;
        // Replacing our own program by itself: how aya adopts a link.
        self.link = Some(program(&mut self.ebpf, PROGRAM)?.attach_to_link(link).map_err(|e| BpfError::Load(Box::new(e)))?);
        remove_pins(dir);
        Ok(())
    }

    /// Load this binary's program on the maps a running synx pinned in `dir`
    /// ([`XdpProgram::pin_for_takeover`]) and replace the running program inside its
    /// attachment, which this process holds from then on; the pins are removed. On an error
    /// nothing has changed: the running program stays attached, its pins in place.
    pub fn take_over(dir: &Path, iface: &str, max_flows: u32, settings: XdpSettings) -> Result<Self, BpfError> {
        let mut engine = Self::load_for_takeover(dir, iface, max_flows, settings)?;
        engine.finish_takeover(dir)?;
        Ok(engine)
    }

    /// The first half of [`XdpProgram::take_over`]: this binary's program loaded on the pinned
    /// maps, the published secrets adopted, not yet attached (the running program still serves,
    /// through its own sockets, until [`XdpProgram::finish_takeover`]). On an error nothing has
    /// changed.
    pub fn load_for_takeover(dir: &Path, iface: &str, max_flows: u32, settings: XdpSettings) -> Result<Self, BpfError> {
        require_bpffs(dir)?;
        for name in KEPT_MAPS.iter().chain([&LINK_PIN]) {
            if !dir.join(name).exists() {
                return Err(takeover_error(format!(
                    "{} has no {name}: no running synx is handing over there",
                    dir.display()
                )));
            }
        }
        let ebpf = load_object(XDP_OBJECT, max_flows, &settings, Some(dir))?;
        let mut engine = Self::open_with(ebpf, settings)?;
        engine.secrets.adopt()?;
        program(&mut engine.ebpf, PROGRAM)?.load().map_err(|e| BpfError::Load(Box::new(e)))?;
        engine.iface = iface.into();
        Ok(engine)
    }

    /// The second half of [`XdpProgram::take_over`]: replace the running program inside the
    /// pinned attachment by this one, add the predecessor's XDP counts to this one's counters,
    /// and remove the pins.
    pub fn finish_takeover(&mut self, dir: &Path) -> Result<(), BpfError> {
        let prog = program(&mut self.ebpf, PROGRAM)?;
        let link = PinnedLink::from_pin(dir.join(LINK_PIN)).map_err(|e| takeover_error(format!("the pinned link: {e}")))?;
        let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| takeover_error(format!("the pinned link: {e}")))?;
        let id = prog.attach_to_link(link).map_err(|e: ProgramError| takeover_error(format!("replacing the program: {e}")))?;
        self.link = Some(id);
        // After the swap, so that nothing the old program counts is missed. Counts are not
        // worth failing a handover that has happened: a failure is logged.
        if let Err(e) = self.add_counts(&dir.join(maps::COUNTERS)) {
            tracing::warn!("the predecessor's XDP counters were not carried over: {e}");
        }
        remove_pins(dir);
        Ok(())
    }

    /// Add the per-CPU counts of the counters array pinned at `pin` (a predecessor's, as long
    /// as its version had counters: the first of ours, in the same order) into this program's.
    /// This program counts meanwhile: a count it makes on a CPU between the read and the write
    /// of that CPU's slot is lost, nothing of the predecessor's.
    fn add_counts(&mut self, pin: &Path) -> Result<(), BpfError> {
        let old: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(MapData::from_pin(pin)?))?;
        let mut ours: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map_mut(maps::COUNTERS).ok_or(BpfError::MissingMap(maps::COUNTERS))?)?;
        for i in 0..old.len().min(ours.len()) {
            let theirs = old.get(&i, 0)?;
            let mine = ours.get(&i, 0)?;
            let sum: Vec<u64> = mine.iter().zip(theirs.iter()).map(|(a, b)| a.wrapping_add(*b)).collect();
            ours.set(i, PerCpuValues::try_from(sum).map_err(|e| takeover_error(format!("counter {i}: {e}")))?, 0)?;
        }
        Ok(())
    }
}

/// Remove the handover pins in `dir` (the objects live on while a process holds them).
fn remove_pins(dir: &Path) {
    for name in KEPT_MAPS.iter().chain([&LINK_PIN]) {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}
