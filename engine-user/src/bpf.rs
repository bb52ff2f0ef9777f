//! Loading the embedded XDP program, attaching it to an interface, and the maps it shares with
//! userspace.

use std::{ffi::CString, net::SocketAddr};

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
};
use engine_common::{
    counters,
    maps::{self, FAMILY_V4, FAMILY_V6, ListenerKey, ListenerValue},
};

/// The XDP object built by build.rs (aya-build) from the engine-ebpf crate.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/synx-xdp"));
const PROGRAM: &str = "synx_xdp";

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
}

/// How to attach: native (driver) mode, or generic (skb) mode for devices without XDP support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Skb,
}

/// The loaded XDP program and its maps. Dropping it detaches the program (aya attaches through a
/// bpf_link, which the kernel also removes when the process dies, even on a crash).
pub struct XdpEngine {
    ebpf: Ebpf,
    iface: String,
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

impl XdpEngine {
    /// Load the program (not yet attached). Works without an interface, e.g. for test runs.
    pub fn load() -> Result<Ebpf, BpfError> {
        if XDP_OBJECT.is_empty() {
            return Err(BpfError::NoObject);
        }
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(XDP_OBJECT).map_err(|e| BpfError::Load(Box::new(e)))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| BpfError::Load(format!("program {PROGRAM} missing").into()))?
            .try_into()
            .map_err(|e: ProgramError| BpfError::Load(Box::new(e)))?;
        prog.load().map_err(|e| BpfError::Load(Box::new(e)))?;
        Ok(ebpf)
    }

    /// Load the program and attach it to `iface`.
    pub fn attach(iface: &str, mode: AttachMode) -> Result<Self, BpfError> {
        let index = if_index(iface)?;
        let mut ebpf = Self::load()?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .expect("checked in load")
            .try_into()
            .expect("checked in load");
        let xdp_mode = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        if let Err(source) = prog.attach(index, xdp_mode) {
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
            return Err(BpfError::Attach { iface: iface.into(), hint, source });
        }
        Ok(Self { ebpf, iface: iface.into() })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Tell the XDP program to serve `addr` (an unspecified IP means every local address).
    pub fn add_listener(&mut self, addr: SocketAddr, id: u32) -> Result<(), BpfError> {
        let mut listeners: HashMap<_, ListenerKey, ListenerValue> = HashMap::try_from(
            self.ebpf.map_mut(maps::LISTENERS).ok_or(BpfError::MissingMap(maps::LISTENERS))?,
        )?;
        listeners.insert(&listener_key(addr), &ListenerValue { id, flags: 0 }, 0)?;
        Ok(())
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

/// The LISTENERS key for a socket address (wildcard when the IP is unspecified).
pub fn listener_key(addr: SocketAddr) -> ListenerKey {
    let mut key = ListenerKey { addr: [0; 16], port_be: addr.port().to_be(), family: 0, _pad: 0 };
    match addr {
        SocketAddr::V4(a) => {
            key.family = FAMILY_V4;
            key.addr[..4].copy_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            key.family = FAMILY_V6;
            key.addr.copy_from_slice(&a.ip().octets());
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_key_holds_port_in_wire_order_and_v4_in_front() {
        let k = listener_key("198.18.0.1:8080".parse().unwrap());
        assert_eq!(k.port_be.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(&k.addr[..4], &[198, 18, 0, 1]);
        assert_eq!(&k.addr[4..], &[0u8; 12]);
        assert_eq!(k.family, FAMILY_V4);
        let w = listener_key("[::]:80".parse().unwrap());
        assert_eq!(w.addr, [0; 16]);
        assert_eq!(w.family, FAMILY_V6);
    }
}
