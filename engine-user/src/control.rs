//! The daemon's control socket: one JSON request line in, one JSON reply line out.
//! `synx stats` and `synx conns` are its clients. The socket is created mode 0600 (root only).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// Where `synx run` listens and `synx stats` connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/synx/synx.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Stats,
    Conns,
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

/// Answers requests; implemented by the daemon.
pub trait Responder: Send + Sync + 'static {
    fn respond(&self, req: Request) -> serde_json::Value;
}

/// Bind the control socket, replacing a stale one left by a dead daemon but refusing to steal
/// the socket of a live one.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    let io = |source| ControlError::Io { path: path.into(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another synx daemon is running and owns this socket; stop it or pass --control-socket",
            )));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serve requests until the task is dropped.
pub async fn serve(listener: tokio::net::UnixListener, responder: Arc<dyn Responder>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let responder = responder.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<Request>(line.trim()) {
                Ok(req) => responder.respond(req),
                Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
            };
            let mut out = reply.to_string();
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
}

/// Send one request to a running daemon and return its reply.
pub fn request(path: &Path, req: Request) -> Result<serde_json::Value, ControlError> {
    let io = |source| ControlError::Io { path: path.into(), source };
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NoDaemon(path.into())
        }
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    let mut line = serde_json::to_string(&req)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    Ok(serde_json::from_str(&reply)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Responder for Fixed {
        fn respond(&self, req: Request) -> serde_json::Value {
            serde_json::json!({ "echo": format!("{req:?}") })
        }
    }

    #[tokio::test]
    async fn request_reaches_responder_and_stale_socket_is_replaced() {
        let dir = std::env::temp_dir().join(format!("synx-control-{}", std::process::id()));
        let path = dir.join("c.sock");
        std::fs::create_dir_all(&dir).unwrap();
        // A stale socket file (no listener) must not stop a new daemon.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let task = tokio::spawn(serve(listener, Arc::new(Fixed)));
        let p = path.clone();
        let reply = tokio::task::spawn_blocking(move || request(&p, Request::Stats)).await.unwrap();
        assert_eq!(reply.unwrap()["echo"], "Stats");
        // A live daemon's socket is not stolen.
        assert!(matches!(bind(&path), Err(ControlError::Io { .. })));
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_daemon_is_said_plainly() {
        let err = request(Path::new("/nonexistent/synx.sock"), Request::Stats).unwrap_err();
        assert!(err.to_string().contains("no synx daemon is running"), "{err}");
    }
}
