//! Packet sockets (AF_PACKET, SOCK_RAW) on one interface, for what the engine sends beside
//! AF_XDP: retransmitted SYN-ACKs (`synack_retry`) and trains of segments (`gso`).

use std::os::fd::{FromRawFd, OwnedFd};

/// A packet socket of protocol 0 (it receives nothing) and `iface`'s index; `extra` are more
/// `socket(2)` type flags (SOCK_NONBLOCK).
pub fn open(iface: &str, extra: libc::c_int) -> std::io::Result<(OwnedFd, i32)> {
    let name = std::ffi::CString::new(iface).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain syscall; the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | extra, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, ifindex as i32))
}
