//! A SYN flood from forged sources: the half-open budget bounds what it takes, the backlog gauge
//! is exact up to the budget, what could not be tracked is counted, and real connections made
//! during the flood are tracked.

use crate::harness::*;

/// Forged sources: TEST-NET-2, routed in the server namespace back through the client namespace
/// (which drops the SYN-ACKs: not its addresses), so every SYN-ACK leaves through the server's TC
/// hook like a real one.
const FORGED_NET: &str = "198.51.100";

fn syn_flood(ns: &Netns, count: usize, first_host: usize) {
    let script = format!(
        "from scapy.all import IP, TCP, send\n\
         pkts = [IP(src='{FORGED_NET}.%d' % (1 + (i % 250)), dst='{SERVER_V4}')/TCP(sport=20000 + i, dport=8080, flags='S', seq=1000 * i) for i in range({first_host}, {first_host} + {count})]\n\
         send(pkts, verbose=0)"
    );
    scapy(ns, &script);
}

/// Sends the server's answers to the forged sources back through the client namespace, which
/// drops them silently. (New namespaces inherit ip_forward=1 here: the client namespace then
/// answered each SYN-ACK with an ICMP net unreachable, rate-limited, and the server's kernel
/// dropped the request socket each one hit (tcp_req_err, ListenDrops): a few requests vanished
/// with no TCP segment on the wire.)
fn route_forged_sources(p: &Pair) {
    p.cli.sysctl("net.ipv4.ip_forward=0");
    p.srv.ip(&[
        "route",
        "add",
        &format!("{FORGED_NET}.0/24"),
        "via",
        CLIENT_V4,
    ]);
}

fn ss_count(ns: &Netns, state: &str) -> i64 {
    ns.ss_states_on(Some(&[ip(SERVER_V4)]))
        .get(state)
        .copied()
        .unwrap_or(0)
}

#[test]
fn syn_flood_fills_only_the_half_open_budget() {
    let p = Pair::new();
    route_forged_sources(&p);
    let d = Daemon::host(
        &p,
        &["--sweep-interval", "100ms", "--half-open-budget", "40"],
    );
    let l = p.listen(SERVER_V4, 8080);

    // Under the budget: the backlog gauge is exact.
    syn_flood(&p.cli, 30, 0);
    let m = d.wait_for("30 half-open", |m| {
        m.try_get("tcpstate_syn_backlog", &[("port", "8080")]) == Some(30.0)
    });
    assert_eq!(
        ss_count(&p.srv, "syn_recv"),
        30,
        "the kernel holds the same 30"
    );
    assert_eq!(m.get("tcpstate_flow_table_half_open_entries", &[]), 30.0);
    assert_eq!(
        m.get(
            "tcpstate_flows_untracked_total",
            &[("reason", "half_open_budget")]
        ),
        0.0
    );

    // Past it: the table holds the budget and no more; the rest is counted, not tracked.
    syn_flood(&p.cli, 200, 30);
    // The untracked count is the programs' (at once); the per-port backlog is the sweeper's (at
    // its next walk): both are waited for, or a scrape between the two reads the last walk's 30.
    let m = d.wait_for(
        "SYNs past the budget counted, the backlog at the budget",
        |m| {
            m.get(
                "tcpstate_flows_untracked_total",
                &[("reason", "half_open_budget")],
            ) >= 190.0
                && m.try_get("tcpstate_syn_backlog", &[("port", "8080")]) == Some(40.0)
        },
    );
    assert_eq!(
        m.get("tcpstate_flow_table_half_open_entries", &[]),
        40.0,
        "saturated at the budget"
    );
    assert_eq!(m.get("tcpstate_flow_table_half_open_capacity", &[]), 40.0);
    assert!(
        ss_count(&p.srv, "syn_recv") > 40,
        "the kernel took more than the tracker's budget"
    );

    // Real clients during the flood: their SYNs find the budget spent, but their final ACK picks
    // the connection up as ESTABLISHED. Nothing established is evicted or refused.
    let mut real = Vec::new();
    for i in 0..5u8 {
        let mut c = p.connect(SERVER_V4, 8080);
        let (mut s, _) = l.accept().unwrap();
        exchange(&mut c, &mut s, &[i; 100]);
        exchange(&mut s, &mut c, &[i; 100]);
        real.push((c, s));
    }
    let m = d.wait_for("five real connections tracked", |m| {
        m.connections("server", "established") == 5.0
    });
    assert_eq!(ss_count(&p.srv, "established"), 5);
    assert_eq!(
        m.get(
            "tcpstate_flows_untracked_total",
            &[("reason", "table_full")]
        ),
        0.0
    );
    assert!(m.get("tcpstate_flows_opened_total", &[("how", "midstream")]) >= 5.0);
}

#[test]
fn unanswered_handshakes_time_out_and_give_back_the_budget() {
    let p = Pair::new();
    route_forged_sources(&p);
    let d = Daemon::host(
        &p,
        &[
            "--sweep-interval",
            "100ms",
            "--syn-sent-timeout",
            "1s",
            "--syn-recv-timeout",
            "1s",
        ],
    );
    // No SYN-ACK retransmissions: the first comes about 1 s after the SYN-ACK, as the 1 s timeout
    // expires the flow, and would rightly open it again (the server's request socket still
    // exists), racing the check below.
    p.srv.sysctl("net.ipv4.tcp_synack_retries=0");
    let _l = p.listen(SERVER_V4, 8080);
    syn_flood(&p.cli, 3, 0);
    d.wait_for("three half-open", |m| {
        m.get("tcpstate_flow_table_half_open_entries", &[]) == 3.0
    });
    let m = d.wait_for("three handshake timeouts", |m| {
        m.get("tcpstate_handshakes_total", &[("result", "timeout")]) == 3.0
    });
    assert_eq!(
        m.get("tcpstate_flow_table_half_open_entries", &[]),
        0.0,
        "the budget is given back"
    );
    assert_eq!(m.get("tcpstate_syn_backlog", &[("port", "8080")]), 0.0);
    assert_eq!(m.get("tcpstate_flows_expired_total", &[]), 3.0);
}

/// SYN queue of the flood tests' listener: listen(2)'s backlog, which caps the kernel's SYN queue
/// (it sends cookies, or drops, once that many requests wait: inet_csk_reqsk_queue_is_full).
const SYN_QUEUE: usize = 16;

/// A listener on 8080 with a SYN queue of [`SYN_QUEUE`] that never calls accept(), killed on
/// drop.
struct SmallListener(#[allow(dead_code, reason = "killed on drop")] Py);

impl SmallListener {
    fn start(ns: &Netns) -> SmallListener {
        SmallListener::on(ns, 8080, SYN_QUEUE)
    }

    /// A listener on `port` with a listen() backlog of `backlog` that never calls accept().
    fn on(ns: &Netns, port: u16, backlog: usize) -> SmallListener {
        let script = format!(
            "import socket, sys\n\
             l = socket.socket(); l.bind(('0.0.0.0', {port})); l.listen({backlog})\n\
             print('ready', flush=True); sys.stdin.read()"
        );
        SmallListener(Py::start(ns, &script, &[]))
    }
}

/// A counter of the kernel's TcpExt MIB in `ns` (/proc/net/netstat), e.g. SyncookiesSent.
fn tcp_ext(ns: &Netns, name: &str) -> f64 {
    let text = sh(&["ip", "netns", "exec", &ns.name, "cat", "/proc/net/netstat"]);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no TcpExt {name}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// A flood well past the listener's SYN queue: the backlog gauge must equal the kernel's queue
/// (`ss` state syn-recv), whatever the kernel does with the SYNs beyond it.
fn backlog_equals_the_kernels_syn_queue_under_a_flood(
    syncookies: &str,
) -> (Pair, Daemon, SmallListener) {
    let p = Pair::new();
    route_forged_sources(&p);
    p.srv
        .sysctl(&format!("net.ipv4.tcp_syncookies={syncookies}"));
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    let listener = SmallListener::start(&p.srv);
    syn_flood(&p.cli, 200, 0);
    // Every SYN reached the tracker (as a flow whose remote client is in SYN_SENT): the flood is
    // over as far as the server's answers go.
    d.wait_for("the flood seen", |m| {
        m.get("tcpstate_flows_opened_total", &[("how", "syn")]) >= 200.0
    });
    let kernel = ss_count(&p.srv, "syn_recv");
    assert!(
        (1..=SYN_QUEUE as i64 + 1).contains(&kernel),
        "the kernel's SYN queue is bounded by the listen backlog: {kernel}"
    );
    // The kernel's queue changes with no segment on the wire (it prunes old requests when the
    // queue is full of them): checked at several points while the flood's requests live.
    for checkpoint in 0..3 {
        let m = d.wait_for("the backlog equals the kernel's SYN queue", |m| {
            m.try_get("tcpstate_syn_backlog", &[("port", "8080")])
                == Some(ss_count(&p.srv, "syn_recv") as f64)
        });
        assert_eq!(
            m.connections("server", "syn_recv"),
            m.get("tcpstate_syn_backlog", &[("port", "8080")])
        );
        d.assert_matches_kernel(&p.srv, &format!("flood checkpoint {checkpoint}"));
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    (p, d, listener)
}

#[test]
fn syn_backlog_equals_the_kernels_syn_queue_under_a_flood_without_cookies() {
    let (p, d, _listener) = backlog_equals_the_kernels_syn_queue_under_a_flood("0");
    assert_eq!(tcp_ext(&p.srv, "SyncookiesSent"), 0.0);
    let m = d.metrics();
    assert_eq!(
        m.get("tcpstate_syn_cookies_sent_total", &[("port", "8080")]),
        0.0
    );
    assert_eq!(
        m.get("tcpstate_syn_cookies_sent_total", &[("port", "other")]),
        0.0
    );
}

#[test]
fn syn_backlog_equals_the_kernels_syn_queue_under_a_flood_with_cookies() {
    let (p, d, _listener) = backlog_equals_the_kernels_syn_queue_under_a_flood("1");
    let sent = tcp_ext(&p.srv, "SyncookiesSent");
    assert!(
        sent >= 150.0,
        "the kernel answered the flood with cookies: {sent}"
    );
    let m = d.wait_for("every cookie counted on its port", |m| {
        m.try_get("tcpstate_syn_cookies_sent_total", &[("port", "8080")]) == Some(sent)
    });
    assert_eq!(
        m.get("tcpstate_syn_cookies_sent_total", &[("port", "other")]),
        0.0
    );
}

/// With `tcp_syncookies=2` the kernel answers every SYN with a cookie and keeps nothing until the
/// ACK returns it: each connection must be picked up as established, its handshake counted, and
/// no endpoint ever counted half-open.
#[test]
fn connections_completed_by_a_syn_cookie_are_established_with_their_handshake() {
    let p = Pair::new();
    p.srv.sysctl("net.ipv4.tcp_syncookies=2");
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    let l = p.listen(SERVER_V4, 8080);
    let mut conns = Vec::new();
    for i in 0..3u8 {
        let mut c = p.connect(SERVER_V4, 8080);
        let (mut s, _) = l.accept().unwrap();
        exchange(&mut c, &mut s, &[i; 10]);
        conns.push((c, s));
    }
    // At least: the daemon's scrapes over the server namespace's lo take cookies too.
    assert!(
        tcp_ext(&p.srv, "SyncookiesRecv") >= 3.0,
        "the kernel took every connection from a cookie"
    );
    let m = d.wait_for("three established", |m| {
        m.connections("server", "established") == 3.0
    });
    assert_eq!(
        m.get("tcpstate_handshakes_total", &[("result", "established")]),
        3.0
    );
    // Scrapes on lo are not watched: the veth's cookies are the three connections'. (The port's
    // label comes with the sweeper's next look at the listeners.)
    d.wait_for("three cookies on 8080", |m| {
        m.try_get("tcpstate_syn_cookies_sent_total", &[("port", "8080")]) == Some(3.0)
    });
    assert_eq!(
        m.get("tcpstate_flows_opened_total", &[("how", "midstream")]),
        0.0,
        "picked up from the SYN and the cookie, not midstream"
    );
    assert_eq!(m.get("tcpstate_flow_table_half_open_entries", &[]), 0.0);
    d.assert_matches_kernel(&p.srv, "connections completed by cookies");
    drop(conns);
    d.assert_matches_kernel(&p.srv, "after they closed");
}

/// A flood into a container (container mode): its cookie SYN-ACKs are told apart on its veth
/// as the host's are on TC egress (by the socket they lack), so its backlog equals its own SYN
/// queue and its cookies are counted in its scope. The forged sources' SYN-ACKs go to an
/// "attacker" namespace on the same bridge, which drops them silently (not its addresses, no
/// forwarding), as the client namespace does above.
#[test]
fn a_containers_backlog_equals_its_syn_queue_under_a_flood_with_cookies() {
    let bridged = BridgedHost::new("10.99.0.1/24");
    let attach = |tag: &str, host_if: &str, addr: &str| bridged.container(tag, host_if, addr);
    let victim = attach("victim", "tsvic0", "10.99.0.2/24");
    let attacker = attach("attacker", "tsatt0", "10.99.0.3/24");
    attacker.sysctl("net.ipv4.ip_forward=0");
    victim.ip(&[
        "route",
        "add",
        &format!("{FORGED_NET}.0/24"),
        "via",
        "10.99.0.3",
    ]);
    victim.sysctl("net.ipv4.tcp_syncookies=1");
    let d = bridged.daemon(&["--containers"]);
    let label = format!("container=\"{}\"", victim.name);
    d.wait_for("the victim watched", |m| m.text.contains(&label));
    let _listener = SmallListener::start(&victim);
    let script = format!(
        "from scapy.all import IP, TCP, send\n\
         pkts = [IP(src='{FORGED_NET}.%d' % (1 + (i % 250)), dst='10.99.0.2')/TCP(sport=20000 + i, dport=8080, flags='S', seq=1000 * i) for i in range(200)]\n\
         send(pkts, verbose=0)"
    );
    scapy(&attacker, &script);
    let sent = tcp_ext(&victim, "SyncookiesSent");
    assert!(
        sent >= 150.0,
        "the container's kernel answered the flood with cookies: {sent}"
    );
    let cookies = |m: &Metrics| {
        m.samples
            .iter()
            .filter(|(k, _)| {
                k.starts_with("tcpstate_syn_cookies_sent_total{") && k.contains(&label)
            })
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    d.wait_for("every cookie counted in the container's scope", |m| {
        cookies(m) == sent
    });
    let syn_recv = |ns: &Netns| ns.ss_states().get("syn_recv").copied().unwrap_or(0);
    // The kernel prunes its queue with no segment on the wire, and the per-port figure comes
    // from the background walk: both are compared with `ss` in one look, at several points.
    let backlog = |m: &Metrics| -> f64 {
        m.samples
            .iter()
            .filter(|(k, _)| k.starts_with("tcpstate_syn_backlog{") && k.contains(&label))
            .map(|(_, v)| *v)
            .sum()
    };
    for _checkpoint in 0..3 {
        d.wait_for(
            "the container's backlog (gauge and per port) equals its SYN queue",
            |m| {
                let kernel = syn_recv(&victim);
                m.states_with(&label).get("syn_recv").copied().unwrap_or(0) == kernel
                    && backlog(m) == kernel as f64
            },
        );
        assert!(
            syn_recv(&victim) <= SYN_QUEUE as i64 + 1,
            "bounded by the listen backlog"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let host_cookies = d
        .metrics()
        .samples
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tcpstate_syn_cookies_sent_total{") && k.contains("container=\"\"")
        })
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert_eq!(host_cookies, 0.0, "none of them is the host's");
}

/// Clients in `ns` connecting at once to `ip`:`port` (non-blocking, never waiting for the
/// handshake), holding their sockets until dropped. Each delays its final ACK (TCP_QUICKACK off
/// before connect(): tcp_rcv_synsent_state_process sends it with the delayed-ACK timer), so the
/// SYNs all reach the listener before the first handshake completes: over a veth a handshake
/// otherwise completes before the script sends its next SYN.
struct ConnectingClients(#[allow(dead_code, reason = "killed on drop")] Py);

impl ConnectingClients {
    fn start(ns: &Netns, ip: &str, port: u16, count: usize) -> ConnectingClients {
        let script = format!(
            "import socket, sys\n\
             socks = []\n\
             for _ in range({count}):\n\
             \x20   s = socket.socket(); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)\n\
             \x20   s.setblocking(False); s.connect_ex(('{ip}', {port})); socks.append(s)\n\
             print('ready', flush=True); sys.stdin.read()"
        );
        ConnectingClients(Py::start(ns, &script, &[]))
    }
}

/// A listener with a listen() backlog of `backlog` that never accepts, `waiting` connections in
/// its accept queue, and 20 clients connecting to it at once: the kernel drops what its full
/// queues cannot take (ListenOverflows, ListenDrops), the clients send their SYNs again and the
/// listener its SYN-ACKs for the final ACKs it dropped. Both counters must equal the
/// retransmissions the two kernels counted (TcpExt TCPSynRetrans: the clients' SYNs, the server's
/// SYN-ACKs) on that port, and stay 0 on every other: a listener on another port that accepts its
/// connections has none. Returns (SYNs, SYN-ACKs) sent again.
fn a_dropping_listener(backlog: usize, waiting: usize) -> (f64, f64) {
    let p = Pair::new();
    // Without cookies a full SYN queue drops SYNs too, as a full accept queue always does
    // (tcp_conn_request): every client the listener turns away retries.
    p.srv.sysctl("net.ipv4.tcp_syncookies=0");
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    let full = SmallListener::on(&p.srv, 8080, backlog);
    let busy = p.listen(SERVER_V4, 9090);
    let mut served = Vec::new();
    for i in 0..5u8 {
        let mut c = p.connect(SERVER_V4, 9090);
        let (mut s, _) = busy.accept().unwrap();
        exchange(&mut c, &mut s, &[i; 10]);
        served.push((c, s));
    }
    let kernel = || {
        (
            tcp_ext(&p.cli, "TCPSynRetrans"),
            tcp_ext(&p.srv, "TCPSynRetrans"),
        )
    };
    let (syn0, synack0) = kernel();
    let (overflows0, drops0) = (
        tcp_ext(&p.srv, "ListenOverflows"),
        tcp_ext(&p.srv, "ListenDrops"),
    );
    let first: Vec<_> = (0..waiting).map(|_| p.connect(SERVER_V4, 8080)).collect();
    let clients = ConnectingClients::start(&p.cli, SERVER_V4, 8080, 20);
    // Linux resends a SYN after 1, 2, 3, 4 and 6 s (tcp_syn_linear_timeouts=4, then doubling),
    // a SYN-ACK after 1, 3 and 7 s. Both ends stop before 10 s: the host forgets a SYN it never
    // answered --closed-linger (10 s) after it came, and a SYN sent again after that opens a new
    // flow rather than counting as one sent again.
    std::thread::sleep(std::time::Duration::from_millis(8_000));
    // The listener first: its request sockets stop resending SYN-ACKs (reqsk_timer_handler
    // drops them once their listener is closed); then the clients.
    drop(full);
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(clients);
    drop(first);
    assert!(
        tcp_ext(&p.srv, "ListenOverflows") > overflows0 && tcp_ext(&p.srv, "ListenDrops") > drops0,
        "the listener dropped connections"
    );
    let m = d.wait_for("the retransmissions the kernels counted, on 8080", |m| {
        let (syn, synack) = kernel();
        m.try_get("tcpstate_syn_retransmits_total", &[("port", "8080")]) == Some(syn - syn0)
            && m.try_get("tcpstate_synack_retransmits_total", &[("port", "8080")])
                == Some(synack - synack0)
    });
    for port in ["9090", "other"] {
        for family in [
            "tcpstate_syn_retransmits_total",
            "tcpstate_synack_retransmits_total",
        ] {
            assert_eq!(m.get(family, &[("port", port)]), 0.0, "{family} {port}");
        }
    }
    drop(served);
    (
        m.get("tcpstate_syn_retransmits_total", &[("port", "8080")]),
        m.get("tcpstate_synack_retransmits_total", &[("port", "8080")]),
    )
}

#[test]
fn a_listener_with_a_backlog_of_one_shows_the_syns_it_dropped_on_its_port_only() {
    // One connection waits in the accept queue, the next fills it: every later SYN is dropped.
    let (syn, synack) = a_dropping_listener(1, 1);
    assert!(syn >= 18.0, "turned-away clients retried: {syn}");
    eprintln!("backlog 1: {syn} SYNs, {synack} SYN-ACKs sent again");
}

#[test]
fn a_full_accept_queue_drops_final_acks_and_the_listener_resends_its_synacks() {
    // Eight connections wait in an accept queue with room for nine: the SYN queue takes
    // handshakes the accept queue has no room for when their final ACKs come, and the listener
    // drops those ACKs (tcp_check_req, listen_overflow) and resends its SYN-ACKs.
    let (syn, synack) = a_dropping_listener(8, 8);
    assert!(
        synack >= 1.0,
        "final ACKs dropped, SYN-ACKs sent again: {synack}"
    );
    assert!(syn >= 1.0, "SYNs dropped too: {syn}");
    eprintln!("backlog 8: {syn} SYNs, {synack} SYN-ACKs sent again");
}

/// The same in a container (container mode): its handshakes sent again are counted in its scope,
/// as one total under `port="other"` with its labels, equal to what its kernel and its clients'
/// counted; the host's series stay 0.
#[test]
fn a_containers_dropping_listener_is_counted_in_its_scope() {
    let bridged = BridgedHost::new("10.99.0.1/24");
    let attach = |tag: &str, host_if: &str, addr: &str| bridged.container(tag, host_if, addr);
    let server = attach("server", "tssrv0", "10.99.0.2/24");
    let clients_ns = attach("clients", "tscli0", "10.99.0.3/24");
    server.sysctl("net.ipv4.tcp_syncookies=0");
    let d = bridged.daemon(&["--containers", "--sweep-interval", "100ms"]);
    let label = format!("container=\"{}\"", server.name);
    d.wait_for("the server watched", |m| m.text.contains(&label));
    let listener = SmallListener::on(&server, 8080, 1);
    let kernel = || {
        (
            tcp_ext(&clients_ns, "TCPSynRetrans"),
            tcp_ext(&server, "TCPSynRetrans"),
        )
    };
    let (syn0, synack0) = kernel();
    let first = connect_in(&clients_ns, "10.99.0.2", 8080);
    let clients = ConnectingClients::start(&clients_ns, "10.99.0.2", 8080, 20);
    // Stopped before the flows of unanswered SYNs are forgotten (see a_dropping_listener).
    std::thread::sleep(std::time::Duration::from_millis(8_000));
    drop(listener);
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(clients);
    drop(first);
    let scoped = |m: &Metrics, family: &str, container: &str| -> f64 {
        m.samples
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&format!("{family}{{"))
                    && k.contains(&format!("container=\"{container}\""))
            })
            .map(|(_, v)| *v)
            .sum()
    };
    let m = d.wait_for(
        "the container's retransmissions as its kernels counted",
        |m| {
            let (syn, synack) = kernel();
            scoped(m, "tcpstate_syn_retransmits_total", &server.name) == syn - syn0
                && scoped(m, "tcpstate_synack_retransmits_total", &server.name) == synack - synack0
        },
    );
    let syn = scoped(&m, "tcpstate_syn_retransmits_total", &server.name);
    assert!(syn >= 18.0, "turned-away clients retried: {syn}");
    assert!(
        m.text.contains(&format!(
            "tcpstate_syn_retransmits_total{{port=\"other\",namespace=\"\",pod=\"\",{label}}}"
        )),
        "one total under port=\"other\" with the container's labels:\n{}",
        m.text
    );
    for family in [
        "tcpstate_syn_retransmits_total",
        "tcpstate_synack_retransmits_total",
    ] {
        assert_eq!(scoped(&m, family, ""), 0.0, "none of them is the host's");
    }
}
