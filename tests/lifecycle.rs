//! Daemon lifecycle on a real veth pair: attach, count, detach; clear errors for operator
//! mistakes; nothing left attached after SIGTERM or kill -9.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use testbed::{Daemon, VethPair, require_root, synx_bin, xdp_attached};

fn listen_arg(net: &VethPair, port: u16) -> String {
    SocketAddr::new(net.server_v4.into(), port).to_string()
}

#[test]
fn attaches_answers_the_handshake_in_xdp_and_detaches_on_sigterm() {
    require_root();
    let net = VethPair::new().unwrap();
    net.attach_peer_xdp().unwrap();
    let daemon =
        Daemon::start(&net.server, &net.server_if, &["--listen", &listen_arg(&net, 7)]).unwrap();
    assert!(xdp_attached(&net.server, &net.server_if).unwrap());
    assert!(daemon.banner.last().unwrap().contains("xdp Native"), "{:?}", daemon.banner);

    let addr: SocketAddr = listen_arg(&net, 7).parse().unwrap();
    // The kernel client accepts XDP's cookie SYN-ACK; its ACK validates in XDP.
    let connected =
        net.client.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2))).unwrap();
    assert!(connected.is_ok(), "{connected:?}");
    assert_eq!(daemon.counter("xdp_syn_cookie_sent").unwrap(), 1);
    assert!(daemon.counter("xdp_cookie_ack_valid").unwrap() >= 1);
    assert!(daemon.counter("xdp_rx_packets").unwrap() >= 2);

    let status = daemon.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(!xdp_attached(&net.server, &net.server_if).unwrap(), "XDP left attached");
}

#[test]
fn second_daemon_on_the_same_interface_gets_one_clear_error() {
    require_root();
    let net = VethPair::new().unwrap();
    let _first =
        Daemon::start(&net.server, &net.server_if, &["--listen", &listen_arg(&net, 7)]).unwrap();
    let out = net
        .server
        .command(synx_bin().to_str().unwrap())
        .args(["run", "--iface", &net.server_if, "--listen", &listen_arg(&net, 7)])
        .args(["--control-socket", &format!("/run/synx-test/{}-2.sock", net.server.name())])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already attached"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line, not a backtrace: {err}");
}

#[test]
fn missing_interface_gets_one_clear_error() {
    require_root();
    let net = VethPair::new().unwrap();
    let out = net
        .server
        .command(synx_bin().to_str().unwrap())
        .args(["run", "--iface", "nosuchif0", "--listen", &listen_arg(&net, 7)])
        .args(["--control-socket", &format!("/run/synx-test/{}.sock", net.server.name())])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no network interface named \"nosuchif0\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn kill_9_leaves_nothing_attached_and_a_new_daemon_starts() {
    require_root();
    let net = VethPair::new().unwrap();
    let daemon =
        Daemon::start(&net.server, &net.server_if, &["--listen", &listen_arg(&net, 7)]).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    // The bpf_link dies with the process; give the kernel a moment to release it.
    let mut attached = true;
    for _ in 0..50 {
        attached = xdp_attached(&net.server, &net.server_if).unwrap();
        if !attached {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!attached, "XDP still attached after kill -9");
    // The stale control socket the dead daemon left behind must not stop the next one.
    assert!(daemon.control_socket.exists());
    let again =
        Daemon::start(&net.server, &net.server_if, &["--listen", &listen_arg(&net, 7)]).unwrap();
    assert!(again.stats().is_ok());
}
