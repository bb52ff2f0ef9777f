//! synx as an application platform, from the wire: an unmodified hyper server on the
//! embeddable engine's streams, curl against `--app http`, iperf3 through `--app proxy=`, and
//! a multi-queue interface. Clients are the Linux kernel's TCP in the client namespace.

use std::{
    convert::Infallible,
    net::SocketAddr,
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use synx_testbed::{VethPair, require_root};

/// hyper's own request handler: `/hello` answers a fixed text, anything else echoes the request
/// body with a header naming its length.
async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/hello" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"hello from hyper on synx\n"))));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("body: {e}"))));
            *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
            return Ok(r);
        }
    };
    let len = body.len();
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert("x-body-len", len.into());
    Ok(r)
}

/// The deterministic test payload: `n` bytes no run of which repeats at a short period.
fn payload(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn hyper_serves_http_unchanged_on_synx_streams() {
    require_root();
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let addr = SocketAddr::new(net.server_v4.into(), 80);
    let iface = net.server_if.clone();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (stats_tx, stats_rx) = mpsc::channel::<Vec<(&'static str, u64)>>();
    let server_ns = net.server.name().to_string();
    // The engine and its threads live in the server namespace: start them from a thread that
    // entered it (threads inherit the namespace of the thread that creates them).
    let server = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/var/run/netns/{server_ns}")).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) }, 0);
        let engine = match synx::Engine::start(synx::EngineOptions::new(iface)) {
            Ok(e) => e,
            Err(e) => return ready_tx.send(Err(format!("{e:#}"))).unwrap(),
        };
        let mut listener = engine.listen(addr).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            ready_tx.send(Ok(())).unwrap();
            let serve = async {
                while let Ok((stream, _peer)) = listener.accept().await {
                    tokio::spawn(async move {
                        // Exactly what a hyper server does with a tokio TcpStream.
                        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(handle));
                        if let Err(e) = conn.await {
                            eprintln!("hyper connection: {e}");
                        }
                    });
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stop_rx => {}
            }
        });
        stats_tx.send(engine.stats().unwrap()).unwrap();
        engine.shutdown(Duration::from_secs(1));
    });
    ready_rx.recv().unwrap().unwrap();

    // Two requests over one keep-alive connection, one of them a 1 MiB POST echoed back.
    let body = payload(1 << 20);
    let dir = std::env::temp_dir().join(format!("synx-hyper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let req_file = dir.join("req");
    let resp_file = dir.join("resp");
    std::fs::write(&req_file, &body).unwrap();
    let url = format!("http://{addr}");
    let out = net
        .client
        .command("curl")
        .args(["-sS", "-v", "--max-time", "20", &format!("{url}/hello"), "--next", "-sS", "--max-time", "20"])
        .args(["--data-binary", &format!("@{}", req_file.display()), "-o", resp_file.to_str().unwrap()])
        .arg(format!("{url}/echo"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {stderr}");
    assert_eq!(stdout, "hello from hyper on synx\n");
    assert!(stderr.contains("x-body-len: 1048576"), "{stderr}");
    assert!(
        stderr.contains("Re-using existing connection") || stderr.contains("Reusing existing"),
        "curl did not keep the connection alive: {stderr}"
    );
    let echoed = std::fs::read(&resp_file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(echoed == body, "echoed body differs ({} bytes back)", echoed.len());

    stop_tx.send(()).unwrap();
    let stats: std::collections::HashMap<_, _> = stats_rx.recv_timeout(Duration::from_secs(10)).unwrap().into_iter().collect();
    server.join().unwrap();
    // One connection for both requests, established through the XDP cookie path.
    assert_eq!(stats["tcp_accepted"], 1, "{stats:?}");
    assert!(stats["xdp_syn_cookie_sent"] >= 1, "{stats:?}");
}
