//! End-to-end: the real daemon attached in host mode to the server side of a veth pair between two
//! network namespaces (or in tap mode on `lo`), real TCP through each scenario, and the tracker's
//! per-state counts compared with the kernel's own (`ss -tan`) at every checkpoint.
//!
//! Needs root. Run with `cargo xtask test` (one test thread).

mod backlog;
mod clientports;
mod containers;
mod converge;
mod durations;
mod fastopen;
mod flood;
mod harness;
mod inject;
mod leaks;
mod package;
mod podman;
mod preflight;
mod prometheus;
mod reload;
mod replay;
mod restart;
mod spoof;
mod stalls;
#[path = "../support/mod.rs"]
mod support;
mod table;
mod walk;
mod wholehost;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr},
    time::Duration,
};

use harness::*;

/// Short timeouts so expiry is observable within a test.
const FAST: &[&str] = &["--sweep-interval", "100ms"];

fn host_daemon(p: &Pair, extra: &[&str]) -> Daemon {
    Daemon::host(p, extra)
}

#[test]
fn client_closes_first() {
    client_closes_first_with(&[]);
}

/// The same lifecycle seen by XDP instead of TC on ingress.
#[test]
fn client_closes_first_with_xdp_ingress() {
    client_closes_first_with(&["--ingress-hook", "xdp"]);
}

fn client_closes_first_with(hook: &[&str]) {
    let p = Pair::new();
    let d = host_daemon(&p, &[FAST, hook].concat());
    let l = p.listen(SERVER_V4, 8080);
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"hello");
    exchange(&mut s, &mut c, b"world");
    d.assert_matches_kernel(&p.srv, "established");
    let m = d.metrics();
    assert_eq!(
        m.connections("server", "established"),
        1.0,
        "the local endpoint accepted the connection: role server"
    );
    assert_eq!(
        m.get("tcpstate_handshakes_total", &[("result", "established")]),
        1.0
    );
    let server_le = |le: &str| {
        m.get(
            "tcpstate_handshake_duration_seconds_bucket",
            &[("role", "server"), ("le", le)],
        )
    };
    assert_eq!(
        server_le("0.1"),
        1.0,
        "a handshake across a veth takes well under 100 ms"
    );
    let clients = m.get(
        "tcpstate_handshake_duration_seconds_count",
        &[("role", "client")],
    );
    assert_eq!(
        clients, 0.0,
        "the client is not local: not counted in host mode"
    );

    drop(c);
    d.assert_matches_kernel(&p.srv, "client closed: server in CLOSE_WAIT");
    assert_eq!(d.metrics().connections("server", "close_wait"), 1.0);

    drop(s);
    d.assert_matches_kernel(&p.srv, "server closed: LAST_ACK then CLOSED");
    assert!(
        p.cli.ss_states().get("time_wait") == Some(&1),
        "the client holds TIME_WAIT"
    );
    let m = d.metrics();
    let ingress = if hook.is_empty() { "tc_ingress" } else { "xdp" };
    for h in ["xdp", "tc_ingress", "tc_egress"] {
        let seen = m.get("tcpstate_segments_total", &[("hook", h)]);
        let expected = h == ingress || h == "tc_egress";
        assert_eq!(seen > 0.0, expected, "segments on hook {h}: {seen}");
    }
    promtool_check(&d.raw_metrics());
}

#[test]
fn server_closes_first() {
    let p = Pair::new();
    let d = host_daemon(&p, FAST);
    let l = p.listen(SERVER_V4, 8080);
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"request");
    drop(s);
    d.assert_matches_kernel(&p.srv, "server closed: FIN_WAIT_2");
    assert_eq!(d.metrics().connections("server", "fin_wait2"), 1.0);
    c.shutdown(Shutdown::Both).unwrap();
    drop(c);
    d.assert_matches_kernel(&p.srv, "client closed: server in TIME_WAIT");
    assert_eq!(d.metrics().connections("server", "time_wait"), 1.0);
}

#[test]
fn half_close_keeps_data_flowing_from_close_wait_side() {
    let p = Pair::new();
    let d = host_daemon(&p, FAST);
    let l = p.listen(SERVER_V4, 8080);
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    d.assert_matches_kernel(&p.srv, "client half-closed");
    assert_eq!(d.metrics().connections("server", "close_wait"), 1.0);
    // The CLOSE_WAIT side keeps sending; 256 KiB crosses many windows and GSO super-packets.
    let payload = vec![0x5au8; 256 * 1024];
    let writer = std::thread::spawn(move || {
        s.write_all(&payload).unwrap();
        s
    });
    let mut got = vec![0u8; 256 * 1024];
    c.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0x5a));
    let s = writer.join().unwrap();
    d.assert_matches_kernel(&p.srv, "data flowed after the FIN");
    assert_eq!(d.metrics().connections("server", "close_wait"), 1.0);
    drop(s);
    d.assert_matches_kernel(&p.srv, "server closed its half");
    let m = d.metrics();
    assert_eq!(
        m.get(
            "tcpstate_invalid_segments_total",
            &[("reason", "fin_out_of_window")]
        ),
        0.0
    );
}

#[test]
fn close_wait_that_is_never_closed_never_expires() {
    let p = Pair::new();
    // Every other timeout tiny: only CLOSE_WAIT's "never" keeps these flows.
    let d = host_daemon(
        &p,
        &[
            "--sweep-interval",
            "100ms",
            "--time-wait",
            "1s",
            "--fin-wait2-timeout",
            "1s",
            "--closing-timeout",
            "1s",
            "--closed-linger",
            "1s",
        ],
    );
    let l = p.listen(SERVER_V4, 8080);
    let mut leaked = Vec::new();
    for _ in 0..5 {
        let c = p.connect(SERVER_V4, 8080);
        leaked.push(l.accept().unwrap().0);
        drop(c);
    }
    d.assert_matches_kernel(&p.srv, "five CLOSE_WAIT");
    std::thread::sleep(Duration::from_secs(3));
    d.assert_matches_kernel(
        &p.srv,
        "still five CLOSE_WAIT after every other timeout passed",
    );
    assert_eq!(d.metrics().connections("server", "close_wait"), 5.0);
    drop(leaked);
    d.assert_matches_kernel(&p.srv, "the leaking process finally closed");
}

#[test]
fn rst_abort_closes_both_mirrors() {
    let p = Pair::new();
    let d = host_daemon(&p, FAST);
    let l = p.listen(SERVER_V4, 8080);
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"x");
    abort(c);
    d.assert_matches_kernel(&p.srv, "client aborted with RST");
    let m = d.wait_for("the RST counted", |m| {
        m.get(
            "tcpstate_resets_total",
            &[("direction", "received"), ("state", "established")],
        ) == 1.0
    });
    assert_eq!(
        m.get(
            "tcpstate_resets_total",
            &[("direction", "sent"), ("state", "established")]
        ),
        0.0
    );
    drop(s);

    // And the server aborting: an RST sent.
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut s, &mut c, b"y");
    abort(s);
    d.assert_matches_kernel(&p.srv, "server aborted with RST");
    d.wait_for("the sent RST counted", |m| {
        m.get(
            "tcpstate_resets_total",
            &[("direction", "sent"), ("state", "established")],
        ) == 1.0
    });
    promtool_check(&d.raw_metrics());
}

#[test]
fn connection_to_a_closed_port_is_refused() {
    let p = Pair::new();
    let d = host_daemon(&p, FAST);
    let addr = SocketAddr::new(ip(SERVER_V4), 9);
    let err = p.cli.enter(move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_err()
    });
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let m = d.wait_for("a refused handshake", |m| {
        m.get("tcpstate_handshakes_total", &[("result", "refused")]) == 1.0
    });
    assert_eq!(
        m.get(
            "tcpstate_resets_total",
            &[("direction", "sent"), ("state", "closed")]
        ),
        1.0,
        "the local stack answered with an RST"
    );
    assert_eq!(
        m.get("tcpstate_handshakes_total", &[("result", "established")]),
        0.0
    );
    d.assert_matches_kernel(&p.srv, "nothing open after the refusal");
}

#[test]
fn ipv6_connection_lifecycle() {
    let p = Pair::new();
    let d = host_daemon(&p, FAST);
    let l = p.listen(SERVER_V6, 8443);
    let mut c = p.connect(SERVER_V6, 8443);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"over ipv6");
    d.assert_matches_kernel(&p.srv, "IPv6 established");
    assert_eq!(d.metrics().connections("server", "established"), 1.0);
    // In the table of non-IPv4 flows, and only there.
    d.wait_for("the walk to count the IPv6 flow", |m| {
        m.get("tcpstate_flow_table_ipv6_entries", &[]) >= 1.0
    });
    let flows = tcpstate_common::mapped::Flows::from_pins(&d.pin_dir).expect("map the tables");
    flows.for_each_slot(|p, k, _| {
        assert!(!k.is_v4(), "an IPv4 key {k:?} in an IPv6-only run");
        assert_ne!(
            p.index & tcpstate_common::mapped::GENERAL,
            0,
            "{k:?} in the IPv4 table"
        );
    });
    drop(c);
    d.assert_matches_kernel(&p.srv, "IPv6 client closed");
    drop(s);
    d.assert_matches_kernel(&p.srv, "IPv6 both closed");
}

#[test]
fn connections_opened_by_the_monitored_host_count_as_clients() {
    let p = Pair::new();
    let d = host_daemon(&p, FAST);
    // The roles reversed: a listener in the client namespace, the monitored side connects out.
    let l = p
        .cli
        .enter(|| std::net::TcpListener::bind("192.0.2.2:7000").unwrap());
    let mut out = connect_in(&p.srv, CLIENT_V4, 7000);
    let (mut peer, _) = l.accept().unwrap();
    exchange(&mut out, &mut peer, b"outbound");
    d.assert_matches_kernel(&p.srv, "outbound established");
    assert_eq!(d.metrics().connections("client", "established"), 1.0);
    drop(out);
    // The peer acknowledges the FIN (FIN_WAIT_1 -> FIN_WAIT_2) within tens of milliseconds.
    d.wait_for("our endpoint in FIN_WAIT_2", |m| {
        m.connections("client", "fin_wait2") == 1.0
    });
    d.assert_matches_kernel(&p.srv, "outbound closed first by us");
}

#[test]
fn port_reuse_from_time_wait_starts_a_new_connection() {
    let p = Pair::new();
    let d = host_daemon(&p, FAST);
    let l = p.listen(SERVER_V4, 8080);
    // First connection from a fixed client port; the server closes first, so it holds TIME_WAIT.
    let bind_and_connect = |port: u16| {
        p.cli.enter(move || {
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            assert!(fd >= 0);
            let one: libc::c_int = 1;
            // SAFETY: valid socket and option buffers throughout.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    (&one as *const libc::c_int).cast(),
                    4,
                );
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = port.to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes([192, 0, 2, 2]);
                assert_eq!(
                    libc::bind(
                        fd,
                        (&sa as *const libc::sockaddr_in).cast(),
                        size_of::<libc::sockaddr_in>() as u32
                    ),
                    0,
                    "bind"
                );
                sa.sin_port = 8080u16.to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes([192, 0, 2, 1]);
                let rc = libc::connect(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                );
                assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
                <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
            }
        })
    };
    let mut c = bind_and_connect(40123);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"first");
    drop(s);
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    d.assert_matches_kernel(&p.srv, "server in TIME_WAIT");
    assert_eq!(d.metrics().connections("server", "time_wait"), 1.0);
    // Same 4-tuple again: the SYN reopens the key from TIME_WAIT (RFC 9293 section 3.6.1).
    let mut c = bind_and_connect(40123);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"second");
    d.assert_matches_kernel(&p.srv, "the reused key is ESTABLISHED, not TIME_WAIT");
    let m = d.metrics();
    assert_eq!(m.connections("server", "established"), 1.0);
    assert_eq!(m.connections("server", "time_wait"), 0.0);
    assert_eq!(
        m.get("tcpstate_flow_table_entries", &[]),
        1.0,
        "one key, reused"
    );
}

#[test]
fn sockets_open_before_start_are_seeded() {
    require_privileges();
    let p = Pair::new();
    let l = p.listen(SERVER_V4, 8080);
    let mut keep = Vec::new();
    for i in 0..5 {
        let c = p.connect(SERVER_V4, 8080);
        let (s, _) = l.accept().unwrap();
        keep.push(s);
        if i < 3 {
            drop(c); // three leak into CLOSE_WAIT before the daemon exists
        } else {
            keep.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let d = Daemon::host(&p, &[]);
    // The first scrape already agrees with the kernel.
    let m = d.metrics();
    assert_eq!(
        m.states(),
        p.srv.ss_states_on(Some(&[ip(SERVER_V4), ip(SERVER_V6)])),
        "first scrape after start-up"
    );
    assert_eq!(m.connections("server", "close_wait"), 3.0);
    assert_eq!(m.connections("server", "established"), 2.0);
    assert_eq!(
        m.get("tcpstate_flows_opened_total", &[("how", "seeded")]),
        5.0
    );
    // Seeded flows then follow real segments.
    keep.clear();
    d.assert_matches_kernel(&p.srv, "seeded flows closed");
}

#[test]
fn tap_mode_on_loopback_counts_both_ends() {
    // The daemon watches lo in the server namespace and is scraped from the client namespace over
    // the veth, so its own scrapes do not show up on the interface it watches.
    let p = Pair::new();
    let ns = &p.srv;
    let listen = format!("{SERVER_V4}:9477");
    let scope = Some(vec![ip("127.0.0.1"), ip("::1")]);
    let d = Daemon::start(
        ns,
        &["--iface", "lo", "--sweep-interval", "100ms"],
        Opts {
            listen: &listen,
            scrape_from: Some(&p.cli),
            scope,
        },
    );
    let l = ns.enter(|| std::net::TcpListener::bind("127.0.0.1:8080").unwrap());
    let mut c = connect_in(ns, "127.0.0.1", 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"loopback");
    d.assert_matches_kernel(ns, "both ends ESTABLISHED");
    let m = d.metrics();
    assert_eq!(m.connections("client", "established"), 1.0);
    assert_eq!(m.connections("server", "established"), 1.0);
    drop(c);
    d.assert_matches_kernel(ns, "client FIN_WAIT_2, server CLOSE_WAIT");
    drop(s);
    d.assert_matches_kernel(ns, "client TIME_WAIT");
    assert_eq!(d.metrics().connections("client", "time_wait"), 1.0);
    let m = d.metrics();
    assert_eq!(
        m.get("tcpstate_segments_total", &[("hook", "tc_egress")]),
        0.0,
        "tap mode attaches no egress program"
    );
    assert!(m.get("tcpstate_segments_total", &[("hook", "tc_ingress")]) > 0.0);
    promtool_check(&m.text);
}

#[test]
fn time_wait_expires_after_the_configured_2msl() {
    let p = Pair::new();
    // 3 s against a check 1.5 s after TIME_WAIT is seen: the check stays before the timeout even
    // when a loaded machine sees the state late.
    let d = host_daemon(&p, &["--sweep-interval", "100ms", "--time-wait", "3s"]);
    let l = p.listen(SERVER_V4, 8080);
    let c = p.connect(SERVER_V4, 8080);
    let (s, _) = l.accept().unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(100));
    drop(c);
    d.wait_for("server TIME_WAIT", |m| {
        m.connections("server", "time_wait") == 1.0
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        d.metrics().connections("server", "time_wait"),
        1.0,
        "not before 3s"
    );
    let m = d.wait_for("TIME_WAIT expired", |m| {
        m.connections("server", "time_wait") == 0.0
    });
    assert_eq!(m.get("tcpstate_flow_table_entries", &[]), 0.0);
    assert_eq!(m.get("tcpstate_flows_expired_total", &[]), 1.0);
}

/// IDs of loaded programs named tcpstate*, as the kernel lists them.
fn tcpstate_program_ids() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| {
            info.name_as_str()
                .is_some_and(|n| n.starts_with("tcpstate"))
        })
        .map(|info| info.id())
        .collect()
}

#[test]
fn sigterm_detaches_every_program() {
    require_privileges();
    let p = Pair::new();
    // Only this daemon's programs: others (another test run, a real deployment) may be loaded.
    let before = tcpstate_program_ids();
    let d = host_daemon(&p, FAST);
    let ours: Vec<u32> = tcpstate_program_ids()
        .difference(&before)
        .copied()
        .collect();
    assert!(
        ours.len() >= 2,
        "the daemon loaded its TC ingress and egress programs: {ours:?}"
    );
    assert_eq!(
        p.tcx_programs(),
        ["tcpstate_tc_ing", "tcpstate_tc_egr"],
        "TC ingress and egress attached while running"
    );
    let pins = d.pin_dir.clone();
    let status = d.stop_keep_pins();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(p.tcx_programs().is_empty(), "TCX detached after SIGTERM");
    let left: Vec<u32> = tcpstate_program_ids()
        .into_iter()
        .filter(|id| ours.contains(id))
        .collect();
    assert!(
        left.is_empty(),
        "programs still loaded after SIGTERM: {left:?}"
    );
    // `tcpstate cleanup` removes what stays: the pinned maps and their directory.
    assert!(pins.exists(), "the flow table stays pinned after SIGTERM");
    let out = std::process::Command::new(BIN)
        .args(["cleanup", "--pin-dir"])
        .arg(&pins)
        .output()
        .unwrap();
    assert!(
        out.status.success() && !pins.exists(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
