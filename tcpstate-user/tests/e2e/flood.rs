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
struct SmallListener(std::process::Child);

impl SmallListener {
    fn start(ns: &Netns) -> SmallListener {
        use std::io::BufRead;
        let script = format!(
            "import socket, sys\n\
             l = socket.socket(); l.bind(('0.0.0.0', 8080)); l.listen({SYN_QUEUE})\n\
             print('ready', flush=True); sys.stdin.read()"
        );
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        SmallListener(child)
    }
}

impl Drop for SmallListener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let h = Netns::new("host");
    h.sysctl("net.ipv4.ip_forward=0");
    h.ip(&["link", "add", "br0", "type", "bridge"]);
    h.ip(&["addr", "add", "10.99.0.1/24", "dev", "br0"]);
    h.ip(&["link", "set", "br0", "up"]);
    let attach = |tag: &str, host_if: &str, addr: &str| {
        let ns = Netns::new(tag);
        sh(&[
            "ip", "link", "add", host_if, "netns", &h.name, "type", "veth", "peer", "name", "eth0",
            "netns", &ns.name,
        ]);
        h.ip(&["link", "set", host_if, "master", "br0", "up"]);
        ns.ip(&["addr", "add", addr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    };
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
    let d = Daemon::start(
        &h,
        &["--containers"],
        Opts {
            listen: "127.0.0.1:9477",
            scrape_from: None,
            scope: None,
        },
    );
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
