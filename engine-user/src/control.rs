//! The daemon's control socket: one JSON request line in, one JSON reply line out.
//! `synx stats`, `synx conns` and `synx drain` are its clients. The socket is created mode 0600 in a directory
//! only its owner can write (root's /run/synx by default).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

/// Where `synx run` listens and `synx stats` connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/synx/synx.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Stats,
    Conns,
    /// Read the configuration again and apply what can change in place (SIGHUP does the same).
    Reload,
    /// Take no new connections (`synx drain`); the reply says how many are open.
    Drain,
    /// Take new connections again (`synx drain --stop`).
    Undrain,
    /// A successor (`synx run --takeover`) asks for the XDP attachment and maps, pinned in
    /// `dir` (on bpffs); the daemon stops publishing the cookie secrets and serves on. The reply
    /// says what the successor must match (RX queues, max_conns).
    Takeover { dir: PathBuf },
    /// The successor failed before [`Request::Release`]: take the attachment back, serve on.
    Abort,
    /// Hand every connection to the successor (within the grace) and exit: the reply carries
    /// them ([`crate::engine::Handover`]).
    Release,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no synx daemon is running (nothing listens on {0}); start one with `synx run`")]
    NoDaemon(PathBuf),
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("bad reply from the daemon: {0}")]
    Reply(#[from] serde_json::Error),
}

/// A reply: a JSON value, or JSON text already written (a handover's connections, serialized
/// once rather than built as a tree of values first) with sockets passed before it.
pub enum Reply {
    Json(serde_json::Value),
    Raw(String, Vec<std::os::fd::OwnedFd>),
}

/// The byte each message of passed sockets carries (a reply's text starts with `{`).
const FD_MARK: u8 = b'F';
/// Sockets passed per message, under the kernel's SCM_MAX_FD (253).
const FDS_PER_MESSAGE: usize = 250;

impl From<serde_json::Value> for Reply {
    fn from(v: serde_json::Value) -> Self {
        Reply::Json(v)
    }
}

/// Answers requests; implemented by the daemon.
pub trait Responder: Send + Sync + 'static {
    fn respond(&self, req: Request) -> Reply;
    /// The reply to `req` has been written (or could not be): a handover ends the daemon
    /// only once its successor has the connections.
    fn replied(&self, _req: &Request) {}
}

/// Largest request line a client may send, and how long it may take to send it.
const MAX_REQUEST: u64 = 4096;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The control socket's path as this process bound it. Dropping it removes the path only if
/// it is still the socket this process created: a daemon that failed to start, or one whose
/// socket was replaced, never deletes another daemon's socket.
#[derive(Debug)]
pub struct BoundPath {
    path: PathBuf,
    id: (u64, u64, i64, i64),
}

impl Drop for BoundPath {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| identity(&m) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Which file a path names: inode numbers are reused at once on tmpfs, the change time to the
/// nanosecond is not.
fn identity(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

/// Bind the control socket: created mode 0600 from the start, in a directory only its owner
/// can write. A stale socket left by a dead daemon is replaced; a live daemon's socket, and
/// anything at the path that is not a socket, is refused.
pub fn bind(path: &Path) -> Result<(tokio::net::UnixListener, BoundPath), ControlError> {
    let io = |source| ControlError::Io { path: path.into(), source };
    let refuse = |what: String| io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, what));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        // The umask may have taken bits from 0700, even the owner's search bit; a directory
        // made here is its owner's alone and usable whatever the umask. Set through a
        // descriptor opened without following links, so a symlink swapped in by whoever can
        // write the parent is refused, not chmod'ed through.
        use std::os::unix::fs::OpenOptionsExt as _;
        let made = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
            .map_err(io)?;
        made.set_permissions(std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let meta = std::fs::metadata(dir).map_err(io)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid || meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "directory {} is writable by other users or not owned by this user: anyone who can \
             write there could replace the socket; use a directory like /run/synx (mode 0700)",
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another synx daemon is running and owns this socket; stop it or pass --control-socket",
                )));
            }
            // A dead daemon's socket.
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => {
            return Err(refuse(format!(
                "{} exists and is not a socket; remove it or pass another --control-socket",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    // The socket is bound in a fresh private directory beside its path, made mode 0600 there
    // and linked into place: it is never reachable with a wider mode, and nothing touches the
    // umask, which is the whole process's (a umask window raced every thread that created a
    // file meanwhile). Only this user can write either directory, so the chmod by path cannot
    // be sent elsewhere by a swapped-in symlink; the link, unlike a rename, fails if a daemon
    // started meanwhile has bound the path, as bind() itself would.
    static STAGED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let private = dir.join(format!(".synx-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private).map_err(io)?;
    let staged = private.join("s");
    let listener = (|| {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let listener = tokio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::hard_link(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = listener.map_err(io)?;
    let m = std::fs::symlink_metadata(path).map_err(io)?;
    Ok((listener, BoundPath { path: path.into(), id: identity(&m) }))
}

/// Serve requests until the task is dropped. Each request is one line of at most
/// [`MAX_REQUEST`] bytes, read within [`REQUEST_TIMEOUT`]; answering runs on a blocking thread,
/// since gathering connections waits for the engine threads and must not hold up the apps that
/// share this runtime.
pub async fn serve(listener: tokio::net::UnixListener, responder: Arc<dyn Responder>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                // Out of file descriptors and the like: accept fails again at once, so wait.
                tracing::warn!("control socket: accept: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let responder = responder.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut asked = None;
            let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
            let reply: Reply = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
                Err(_) => serde_json::json!({ "error": "request not received in time" }).into(),
                Ok(Err(e)) => serde_json::json!({ "error": format!("reading the request: {e}") }).into(),
                Ok(Ok(_)) if !line.ends_with('\n') => {
                    serde_json::json!({ "error": format!("request too long or unterminated (limit {MAX_REQUEST} bytes, one line)") }).into()
                }
                Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                    Ok(req) => {
                        let (r, answered) = (responder.clone(), req.clone());
                        let reply = tokio::task::spawn_blocking(move || r.respond(req))
                            .await
                            .unwrap_or_else(|e| serde_json::json!({ "error": format!("answering: {e}") }).into());
                        asked = Some(answered);
                        reply
                    }
                    Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }).into(),
                },
            };
            let (mut out, fds) = match reply {
                Reply::Json(v) => (v.to_string(), Vec::new()),
                Reply::Raw(s, fds) => (s, fds),
            };
            out.push('\n');
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, send_fds(write.as_ref(), &fds)).await.unwrap_or_else(|_| {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "passing sockets: not taken in time"))
            }) {
                tracing::warn!("control socket: passing {} sockets: {e}", fds.len());
            }
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(out.as_bytes())).await;
            if let Some(req) = asked {
                responder.replied(&req);
            }
        });
    }
}

/// Send one request to a running daemon and return its reply.
pub fn request(path: &Path, req: Request) -> Result<serde_json::Value, ControlError> {
    Ok(serde_json::from_str(&request_text(path, req, Duration::from_secs(5))?)?)
}

/// Pass `fds` over `stream` with SCM_RIGHTS, [`FDS_PER_MESSAGE`] to a one-byte message.
async fn send_fds(stream: &tokio::net::UnixStream, fds: &[std::os::fd::OwnedFd]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let raw: Vec<i32> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
        loop {
            stream.writable().await?;
            match stream.try_io(tokio::io::Interest::WRITABLE, || send_with_fds(stream.as_raw_fd(), &raw)) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// A control message buffer for `n` descriptors, aligned as `cmsghdr` wants.
fn cmsg_buffer(n: usize) -> Vec<u64> {
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<i32>()) as u32) } as usize;
    vec![0u64; space.div_ceil(8)]
}

/// One sendmsg(2) of [`FD_MARK`] with `fds` attached.
fn send_with_fds(sock: i32, fds: &[i32]) -> std::io::Result<()> {
    let byte = [FD_MARK];
    let mut iov = libc::iovec { iov_base: byte.as_ptr() as *mut libc::c_void, iov_len: 1 };
    let mut cbuf = cmsg_buffer(fds.len());
    let bytes = std::mem::size_of_val(fds);
    // SAFETY: a zeroed msghdr pointing at our iovec and control buffer, both alive for the
    // call; the control buffer has room for one cmsghdr with `fds` (CMSG_SPACE).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(bytes as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), bytes);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One recvmsg(2) of one byte and the descriptors attached to it (None at the end of stream).
fn recv_with_fds(sock: i32) -> std::io::Result<(Option<u8>, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::FromRawFd as _;
    let mut byte = [0u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = cmsg_buffer(FDS_PER_MESSAGE);
    let mut fds = Vec::new();
    // SAFETY: a zeroed msghdr pointing at our byte and control buffer, alive for the call; the
    // descriptors the kernel wrote into the control messages are ours (MSG_CMSG_CLOEXEC), each
    // taken once.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = (cbuf.len() * 8) as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<i32>();
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                for i in 0..count {
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::other("passed sockets truncated"));
        }
        n
    };
    Ok(((n > 0).then_some(byte[0]), fds))
}

/// Send one request and return the reply's text, waiting up to `timeout` for it (a handover's
/// reply is parsed into its own type).
pub fn request_text(path: &Path, req: Request, timeout: Duration) -> Result<String, ControlError> {
    Ok(request_with_fds(path, req, timeout)?.0)
}

/// [`request_text`], with the sockets the daemon passed before its reply.
pub fn request_with_fds(path: &Path, req: Request, timeout: Duration) -> Result<(String, Vec<std::os::fd::OwnedFd>), ControlError> {
    let io = |source| ControlError::Io { path: path.into(), source };
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NoDaemon(path.into())
        }
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(&req)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut fds = Vec::new();
    let first = loop {
        let (byte, got) = recv_with_fds(std::os::fd::AsRawFd::as_raw_fd(&stream)).map_err(io)?;
        fds.extend(got);
        if byte != Some(FD_MARK) {
            break byte;
        }
    };
    let mut reply = first.map(|b| char::from(b).to_string()).unwrap_or_default();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    Ok((reply, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Responder for Fixed {
        fn respond(&self, req: Request) -> Reply {
            serde_json::json!({ "echo": format!("{req:?}") }).into()
        }
    }

    /// A fresh directory of this user's, mode 0700, removed on drop.
    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("synx-control-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
            Self(dir)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn request_reaches_responder_and_stale_socket_is_replaced() {
        let dir = Dir::new("serve");
        let path = dir.0.join("c.sock");
        // A stale socket file (no listener) must not stop a new daemon.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (listener, bound) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let task = tokio::spawn(serve(listener, Arc::new(Fixed)));
        let p = path.clone();
        let reply = tokio::task::spawn_blocking(move || request(&p, Request::Stats)).await.unwrap();
        assert_eq!(reply.unwrap()["echo"], "Stats");
        // A live daemon's socket is not stolen, and the one that failed to bind leaves it alone.
        let err = bind(&path).unwrap_err();
        assert!(err.to_string().contains("another synx daemon is running"), "{err}");
        assert!(path.exists());
        let p = path.clone();
        let reply = tokio::task::spawn_blocking(move || request(&p, Request::Conns)).await.unwrap();
        assert_eq!(reply.unwrap()["echo"], "Conns");
        // What this process bound, it removes.
        task.abort();
        drop(bound);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn only_a_socket_is_ever_replaced_and_only_our_own_is_removed() {
        let dir = Dir::new("paths");
        let file = dir.0.join("f.sock");
        std::fs::write(&file, b"precious").unwrap();
        let err = bind(&file).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        // A symlink to a file is not followed, not removed.
        let link = dir.0.join("l.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(bind(&link).unwrap_err().to_string().contains("not a socket"));
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        // A socket replaced after we bound it is somebody else's: dropping ours leaves it.
        let path = dir.0.join("c.sock");
        let (listener, bound) = bind(&path).unwrap();
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(bound);
        assert!(path.exists());
    }

    #[tokio::test]
    async fn a_directory_others_can_write_is_refused() {
        let dir = Dir::new("perm");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&dir.0.join("c.sock")).unwrap_err();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        // A directory bind() creates is its owner's alone.
        let nested = dir.0.join("made").join("c.sock");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (_listener, _bound) = bind(&nested).unwrap();
        let mode = std::fs::metadata(nested.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn an_oversized_request_gets_an_error_not_a_stuck_task() {
        use std::io::Read as _;
        let dir = Dir::new("limits");
        let path = dir.0.join("c.sock");
        let (listener, _bound) = bind(&path).unwrap();
        let task = tokio::spawn(serve(listener, Arc::new(Fixed)));
        let p = path.clone();
        let reply = tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(&p).unwrap();
            // No newline within the limit: the daemon answers with an error and closes. (A
            // client that sends more than it reads gets a reset instead of the answer.)
            s.write_all(&vec![b'x'; MAX_REQUEST as usize]).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            reply
        })
        .await
        .unwrap();
        assert!(reply.contains("too long"), "{reply}");
        task.abort();
    }

    #[test]
    fn no_daemon_is_said_plainly() {
        let err = request(Path::new("/nonexistent/synx.sock"), Request::Stats).unwrap_err();
        assert!(err.to_string().contains("no synx daemon is running"), "{err}");
    }
}
