//! The mirror converges to the kernel whatever the timeouts and whatever the peer does: endpoints
//! the kernel drops without a segment on the wire, and strays of connections it no longer has.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use crate::harness::*;

/// Accepts, reads the request, then closes (orphaning the socket: FIN_WAIT_2 once the client
/// acknowledges) or, for port `half`, only shuts down for writing and keeps it.
const CLOSING_SERVER: &str = r#"
import socket, sys, threading
def serve(port, half):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port)); l.listen(128)
    kept = []
    while True:
        c, _ = l.accept(); c.recv(100)
        if half: c.shutdown(socket.SHUT_WR); kept.append(c)
        else: c.close()
threading.Thread(target=serve, args=(8080, False), daemon=True).start()
threading.Thread(target=serve, args=(8081, True), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

/// Opens N connections to `port` on each line "N PORT" it reads, sends a request on each and
/// never closes them; says "opened" when done.
const NEVER_CLOSING_CLIENTS: &str = r#"
import socket, sys
held = []
print("ready", flush=True)
for line in sys.stdin:
    n, port = map(int, line.split())
    for _ in range(n):
        s = socket.create_connection((sys.argv[1], port)); s.sendall(b"GET"); held.append(s)
    print("opened", flush=True)
"#;

/// Checkpoints at which every gauge must equal `ss`, for `span`.
fn follow_the_kernel(d: &Daemon, ns: &Netns, span: Duration, what: &str) {
    let end = Instant::now() + span;
    let mut i = 0;
    while Instant::now() < end {
        d.assert_matches_kernel(ns, &format!("{what}, checkpoint {i}"));
        i += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
}

#[test]
fn a_server_closing_on_clients_that_never_close_matches_the_kernel() {
    let p = Pair::new();
    p.srv.sysctl("net.ipv4.tcp_fin_timeout=3");
    let d = Daemon::host(
        &p,
        &["--sweep-interval", "100ms", "--fin-wait2-timeout", "3s"],
    );
    let _server = Py::start(&p.srv, CLOSING_SERVER, &[]);
    let mut clients = Py::start(&p.cli, NEVER_CLOSING_CLIENTS, &[SERVER_V4]);
    // One connection the server only shuts down for writing: the kernel keeps that FIN_WAIT_2
    // for as long as the client keeps its end, so the mirror must too, past --fin-wait2-timeout.
    clients.say("1 8081");
    assert_eq!(clients.line(), "opened");
    // Rounds of clients that never close, as long as they come: the orphaned FIN_WAIT_2 must go
    // when the kernel drops them (tcp_fin_timeout), not pile up behind the peers' CLOSE_WAIT.
    for round in 0..3 {
        clients.say("20 8080");
        assert_eq!(clients.line(), "opened");
        follow_the_kernel(
            &d,
            &p.srv,
            Duration::from_secs(2),
            &format!("round {round}"),
        );
    }
    // Past every timeout: only the half-closed one is left, on both sides of the comparison.
    std::thread::sleep(Duration::from_secs(5));
    d.assert_matches_kernel(&p.srv, "after the kernel dropped the orphans");
    let m = d.metrics();
    assert_eq!(
        m.connections("server", "fin_wait2"),
        1.0,
        "the half-closed one stays"
    );
    assert_eq!(
        m.states().values().sum::<i64>(),
        1,
        "nothing else: {:?}",
        m.states()
    );
}

/// Each line "N" it reads: N short connections to 8080, one in ten aborted with an RST
/// (SO_LINGER 0), the rest closed normally after a request; says "done".
const CHURN_CLIENTS: &str = r#"
import socket, struct, sys
print("ready", flush=True)
for line in sys.stdin:
    for i in range(int(line)):
        s = socket.create_connection((sys.argv[1], 8080)); s.sendall(b"x")
        if i % 10 == 0: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    print("done", flush=True)
"#;

/// Accepts, reads to EOF (or the RST) and closes.
const CHURN_SERVER: &str = r#"
import socket, sys, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 8080)); l.listen(1024)
def serve():
    while True:
        c, _ = l.accept()
        try:
            while c.recv(4096): pass
        except OSError: pass
        c.close()
for _ in range(4): threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

#[test]
fn after_a_table_overflow_the_mirror_drains_to_what_the_kernel_holds() {
    // Regression: with the table overflowing, a stray segment of a connection that had already
    // closed was picked up midstream as ESTABLISHED and stayed for the 5-day idle timeout, in 2
    // runs of 3. Repeated so a 1-in-2 failure shows.
    let p = Pair::new();
    // 36,000 client connections, each in TIME_WAIT on the client for a minute: more ports than
    // the default ephemeral range.
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        p.cli.sysctl(setting);
    }
    let d = Daemon::host(
        &p,
        &[
            "--sweep-interval",
            "100ms",
            "--max-flows",
            "2000",
            "--time-wait",
            "3s",
        ],
    );
    let _server = Py::start(&p.srv, CHURN_SERVER, &[]);
    let mut clients = Py::start(&p.cli, CHURN_CLIENTS, &[SERVER_V4]);
    for run in 0..3 {
        clients.say("12000");
        assert_eq!(clients.line(), "done");
        // Drained: the kernel holds nothing on the server; neither may the mirror.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.srv.ss_states_on(Some(&[ip(SERVER_V4)])).is_empty() {
            assert!(
                Instant::now() < deadline,
                "run {run}: the server never drained"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d.assert_matches_kernel(&p.srv, &format!("run {run}, drained"));
        let m = d.metrics();
        assert!(
            m.states().is_empty(),
            "run {run}: every gauge 0: {:?}",
            m.states()
        );
    }
    let m = d.metrics();
    assert!(
        m.get(
            "tcpstate_flows_untracked_total",
            &[("reason", "table_full")]
        ) > 0.0,
        "the table overflowed, as the scenario needs"
    );
}

/// Servers for the soak, one port per behaviour: 7001 answers and closes after the client (normal
/// close), 7002 reads the request and never closes (CLOSE_WAIT leak), 7003 closes first on
/// clients that never close (orphaned FIN_WAIT_2), 7004 echoes until EOF then closes (half-close
/// from the client), 7005 holds connections open (long-lived).
const SOAK_SERVERS: &str = r#"
import socket, sys, threading
kept = []
def serve(port, mode):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port)); l.listen(512)
    while True:
        c, _ = l.accept()
        threading.Thread(target=handle, args=(c, mode), daemon=True).start()
def handle(c, mode):
    try:
        if mode == "leak": c.recv(100); kept.append(c); return
        if mode == "first": c.recv(100); c.close(); return
        if mode == "hold": kept.append(c); return
        while True:
            d = c.recv(4096)
            if not d: break
            c.sendall(d)
    except OSError: pass
    c.close()
for port, mode in [(7001, "normal"), (7002, "leak"), (7003, "first"), (7004, "echo"), (7005, "hold")]:
    threading.Thread(target=serve, args=(port, mode), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

/// One round of mixed churn per line read, then "done": normal closes, RST aborts, leaks,
/// half-closes, never-closing clients of a server that closes first, and long-lived connections.
const SOAK_CLIENTS: &str = r#"
import socket, struct, sys
host = sys.argv[1]
held = []
def conn(port):
    return socket.create_connection((host, port))
print("ready", flush=True)
for line in sys.stdin:
    for i in range(200):
        s = conn(7001); s.sendall(b"x"); s.recv(1)
        if i % 7 == 0: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    for i in range(5):
        s = conn(7002); s.sendall(b"x"); s.close()
    for i in range(10):
        s = conn(7003); s.sendall(b"x"); held.append(s)
    for i in range(10):
        s = conn(7004); s.sendall(b"abc"); s.shutdown(socket.SHUT_WR)
        while s.recv(100): pass
        s.close()
    for i in range(3):
        s = conn(7005); s.sendall(b"x"); held.append(s)
    print("done", flush=True)
"#;

#[test]
fn a_soak_of_mixed_churn_with_a_kill_and_restart_matches_the_kernel_when_quiet() {
    let p = Pair::new();
    p.srv.sysctl("net.ipv4.tcp_fin_timeout=3");
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/{}-soak", p.srv.name));
    let args = ["--sweep-interval", "100ms", "--fin-wait2-timeout", "3s"];
    let _servers = Py::start(&p.srv, SOAK_SERVERS, &[]);
    let mut clients = Py::start(&p.cli, SOAK_CLIENTS, &[SERVER_V4]);
    let round = |clients: &mut Py| {
        clients.say("go");
        assert_eq!(clients.line(), "done");
    };
    let d = Daemon::host_pinned(&p, &args, pins.clone());
    for i in 0..2 {
        round(&mut clients);
        d.assert_matches_kernel(&p.srv, &format!("round {i}, quiet"));
    }
    // kill -9 halfway, churn while nobody watches, and a new daemon on the same pins.
    assert!(!d.signal_keep_pins(libc::SIGKILL).success());
    round(&mut clients);
    let d = Daemon::host_pinned(&p, &args, pins);
    d.assert_matches_kernel(&p.srv, "right after the restart");
    for i in 3..5 {
        round(&mut clients);
        d.assert_matches_kernel(&p.srv, &format!("round {i}, quiet"));
    }
    // Past the orphans' tcp_fin_timeout: the leaks, the long-lived and TIME_WAIT remain.
    std::thread::sleep(Duration::from_secs(5));
    d.assert_matches_kernel(&p.srv, "after the orphans' timeout");
    let m = d.metrics();
    assert_eq!(
        m.connections("server", "close_wait"),
        25.0,
        "five leaks a round"
    );
    assert_eq!(
        m.connections("server", "established"),
        15.0,
        "three long-lived a round"
    );
}

#[test]
fn in_tap_mode_a_server_fin_wait2_ends_alone_and_its_clients_close_wait_stays() {
    // Both ends on lo (tap mode, both counted): the server closes on clients that never close.
    // The kernel drops the orphaned FIN_WAIT_2 after tcp_fin_timeout; the clients' CLOSE_WAIT
    // stays for as long as they keep their sockets. The mirror must end one and keep the other.
    let p = Pair::new();
    let ns = &p.srv;
    ns.sysctl("net.ipv4.tcp_fin_timeout=3");
    let listen = format!("{SERVER_V4}:9477");
    let d = Daemon::start(
        ns,
        &[
            "--iface",
            "lo",
            "--sweep-interval",
            "100ms",
            "--fin-wait2-timeout",
            "3s",
        ],
        Opts {
            listen: &listen,
            scrape_from: Some(&p.cli),
            scope: Some(vec![ip("127.0.0.1"), ip("::1")]),
        },
    );
    let _server = Py::start(ns, CLOSING_SERVER, &[]);
    let mut clients = Py::start(ns, NEVER_CLOSING_CLIENTS, &["127.0.0.1"]);
    clients.say("5 8080");
    assert_eq!(clients.line(), "opened");
    d.assert_matches_kernel(ns, "server FIN_WAIT_2, clients CLOSE_WAIT");
    assert_eq!(d.metrics().connections("server", "fin_wait2"), 5.0);
    std::thread::sleep(Duration::from_secs(5));
    d.assert_matches_kernel(ns, "the orphans dropped, the clients still in CLOSE_WAIT");
    let m = d.metrics();
    assert_eq!(m.connections("server", "fin_wait2"), 0.0);
    assert_eq!(m.connections("client", "close_wait"), 5.0);
}

/// Drops everything the server namespace sends from `port` (nft, output hook: before TC egress,
/// so the tracker never sees it). Removed on drop.
fn mute_server(ns: &Netns, port: u16) -> NftTable {
    NftTable::add(
        ns,
        "tse2e_mute",
        "output",
        &["tcp", "sport", &port.to_string(), "drop"],
    )
}

#[test]
fn a_pickup_seen_from_one_side_is_confirmed_by_the_kernels_socket_table() {
    // A connection open before the daemon (not seeded), picked up from the client's segments
    // alone: the server's answers are dropped before TC egress. The tracker cannot see both
    // directions, so only the background walk, finding the server's socket, can count it.
    let p = Pair::new();
    let l = p.listen(SERVER_V4, 8080);
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"before the daemon");
    let d = Daemon::host(&p, &["--sweep-interval", "100ms", "--no-seed"]);
    let _mute = mute_server(&p.srv, 8080);
    c.write_all(b"a segment from the client only").unwrap();
    let m = d.wait_for("the pickup", |m| {
        m.get("tcpstate_flows_opened_total", &[("how", "midstream")]) == 1.0
    });
    assert_eq!(
        m.get("tcpstate_segments_total", &[("hook", "tc_egress")]),
        0.0,
        "nothing from the server reached the tracker"
    );
    d.assert_matches_kernel(&p.srv, "confirmed against the kernel's socket table");
    assert_eq!(d.metrics().connections("server", "established"), 1.0);
}

/// Sets TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel gives up
/// on the connection (RFC 5482; net/ipv4/tcp_timer.c, tcp_write_timeout).
fn set_user_timeout(s: &std::net::TcpStream, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let ms = timeout.as_millis() as u32;
    // SAFETY: valid socket and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const u32).cast(),
            size_of::<u32>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "TCP_USER_TIMEOUT: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn a_connection_the_kernel_ends_on_its_user_timeout_is_ended_within_seconds_of_ss() {
    // The kernel ends a connection without a segment on the wire: the client's data goes
    // unacknowledged past TCP_USER_TIMEOUT, its retransmissions are on the wire, its end is not.
    // The tracker on the client's host (the users' default sweep interval) must settle it
    // against the kernel's socket table once it has been quiet (settle::QUIET, 3 s), instead of
    // keeping it ESTABLISHED for the 5-day idle timeout.
    let p = Pair::new();
    let d = Daemon::host_client(&p, &[]);
    let l = p.listen(SERVER_V4, 8082);
    let opened = Instant::now();
    let mut c = p.connect(SERVER_V4, 8082);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"hello");
    set_user_timeout(&c, Duration::from_millis(1000));
    d.assert_matches_kernel(&p.cli, "established");
    // The server's host goes dark: nothing from the client reaches its stack, so nothing is
    // answered, not even with an RST.
    let _dark = NftTable::add(
        &p.srv,
        "tse2e_dark",
        "input",
        &["ip", "saddr", CLIENT_V4, "drop"],
    );
    let wrote = Instant::now();
    c.write_all(b"anyone there?").unwrap();
    let gone = loop {
        if p.cli.ss_states_on(Some(&[ip(CLIENT_V4)])).is_empty() {
            break Instant::now();
        }
        assert!(
            wrote.elapsed() < Duration::from_secs(10),
            "the kernel kept the connection past its 1 s user timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let m = d.wait_for_within("the tracker to end it", Duration::from_secs(15), |m| {
        m.states().is_empty()
    });
    // Quiet (3 s, counted from the last-seen stamp's tick, up to 1.07 s early) after the last
    // retransmission, which came before the kernel's end, then at most one sweep (1 s).
    let lag = gone.elapsed();
    eprintln!(
        "ss: gone {:?} after the write; tracker: {lag:?} after ss",
        gone - wrote
    );
    assert!(
        lag <= Duration::from_secs(5),
        "the tracker ended it {lag:?} after `ss` showed it gone ({:?} after the write)",
        gone - wrote
    );
    d.assert_matches_kernel(&p.cli, "after the user timeout");
    let mut buf = [0u8; 8];
    let err = std::io::Read::read(&mut c, &mut buf).expect_err("the kernel ended the connection");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(m.sum("tcpstate_resets_total"), 0.0, "no RST: not a reset");
    assert_eq!(m.get("tcpstate_flows_expired_total", &[]), 1.0);
    assert_eq!(
        m.get("tcpstate_handshakes_total", &[("result", "timeout")]),
        0.0
    );
    // The daemon ended the connection: it books its lifetime as a closing segment would have
    // (from the SYN to the daemon's verdict, after the kernel's end).
    let client = [("port", "other"), ("role", "client")];
    let m = d.wait_for("the lifetime booked", |m| {
        m.try_get("tcpstate_connection_duration_seconds_count", &client) == Some(1.0)
    });
    let life = m.get("tcpstate_connection_duration_seconds_sum", &client);
    let (from, to) = (
        (gone - opened).as_secs_f64(),
        opened.elapsed().as_secs_f64(),
    );
    assert!(
        life >= from - 0.1 && life <= to,
        "lifetime {life:.3} s, the kernel's end {from:.3} s after the connect, now {to:.3} s"
    );
}

/// The same silent end inside a container (container mode): its endpoints are settled against
/// the container's own socket table, read through the sock_diag socket the daemon opened in its
/// namespace. Two "containers" on a host bridge: the client's and the server's, whose namespace
/// then drops everything from the client.
#[test]
fn a_containers_connection_the_kernel_ends_silently_is_settled_against_its_own_socket_table() {
    let bridged = BridgedHost::new("10.98.0.1/24");
    let attach = |tag: &str, host_if: &str, addr: &str| bridged.container(tag, host_if, addr);
    let client = attach("client", "tscli0", "10.98.0.2/24");
    let server = attach("server", "tssrv0", "10.98.0.3/24");
    let d = bridged.daemon(&["--containers"]);
    let label = format!("container=\"{}\"", client.name);
    d.wait_for("the client's namespace watched", |m| {
        m.text.contains(&label)
    });
    let l = listen_in(&server, "10.98.0.3:8083");
    let mut c = connect_in(&client, "10.98.0.3", 8083);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"hello");
    set_user_timeout(&c, Duration::from_millis(1000));
    // A second connection, idle and alive, that settling must keep (its socket is in the
    // container's table, which knows no scopes: the flow key's scope is not the socket's).
    let idle_l = listen_in(&server, "10.98.0.3:8084");
    let _idle = connect_in(&client, "10.98.0.3", 8084);
    let _idle_s = idle_l.accept().unwrap();
    let tracked = |m: &Metrics| m.states_with(&label);
    d.wait_for("the container's connections established", |m| {
        tracked(m) == client.ss_states()
    });
    let _dark = NftTable::add(
        &server,
        "tse2e_dark",
        "input",
        &["ip", "saddr", "10.98.0.2", "drop"],
    );
    c.write_all(b"anyone there?").unwrap();
    let gone = eventually(
        "the container's kernel to end it on its user timeout",
        Duration::from_secs(10),
        || {
            // The idle connection stays: one ESTABLISHED socket left.
            let ss = client.ss_states();
            if ss.values().sum::<i64>() == 1 {
                Ok(Instant::now())
            } else {
                Err(format!("{ss:?}"))
            }
        },
    );
    d.wait_for_within(
        "the tracker to end it in the container's scope",
        Duration::from_secs(15),
        |m| tracked(m).values().sum::<i64>() == 1,
    );
    let lag = gone.elapsed();
    assert!(
        lag <= Duration::from_secs(5),
        "the tracker ended it {lag:?} after `ss` in the container showed it gone"
    );
    // Past a settling round of quiet endpoints: the idle one is still there, as in the kernel.
    std::thread::sleep(Duration::from_secs(5));
    let m = d.metrics();
    assert_eq!(tracked(&m), client.ss_states(), "the idle connection kept");
    assert_eq!(tracked(&m).get("established"), Some(&1));
}
