//! What a hostile peer or a bug must not get from synx (issue 20), checked end to end on veth:
//! a dying engine thread is reported and its queue accepts no connection nobody would serve.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use testbed::{VethPair, require_root};
use tokio::io::AsyncReadExt as _;

fn stats(engine: &synx::Engine) -> HashMap<&'static str, u64> {
    engine.stats().unwrap().into_iter().collect()
}

#[test]
fn a_panicking_engine_thread_is_reported_and_its_queue_answers_no_more_syns() {
    require_root();
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let addr = SocketAddr::new(net.server_v4.into(), 7);
    let iface = net.server_if.clone();
    // The engine threads live in the server namespace (threads inherit it from their creator).
    let engine = Arc::new(net.server.run(move || synx::Engine::start(synx::EngineOptions::new(iface))).unwrap().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut listener = engine.listen(addr).unwrap();
    // One client connected, its stream held on this runtime, not on the engine thread.
    let client = net.client.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5))).unwrap().unwrap();
    let (mut stream, _) = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), listener.accept()).await }).unwrap().unwrap();
    assert_eq!(engine.failure(), None);

    engine.inject_panic(0);
    let failure = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), engine.failed()).await }).expect("the death is reported");
    assert!(failure.contains("RX queue 0 panicked"), "{failure}");
    assert_eq!(engine.failure().as_deref(), Some(failure.as_str()));
    // The stream held elsewhere learns its connection is gone instead of waiting forever.
    let mut buf = [0u8; 16];
    let read = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await }).expect("the read returns");
    assert!(read.is_err(), "a read on a dead queue's stream: {read:?}");
    let before = stats(&engine);
    assert_eq!(before["engine_queue_panics"], 1, "{before:?}");

    // A new client gets no SYN-ACK: nobody would serve the connection it would believe it has.
    let connect = net.client.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3))).unwrap();
    assert!(connect.is_err(), "a connection to the dead queue was established");
    let after = stats(&engine);
    assert!(after["xdp_drop_syn_backlog"] > before["xdp_drop_syn_backlog"], "{after:?}");
    assert_eq!(after["xdp_syn_cookie_sent"], before["xdp_syn_cookie_sent"], "{after:?}");
    drop(client);
    engine.shutdown(Duration::ZERO);
}
