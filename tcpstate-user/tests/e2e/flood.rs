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

/// Sends the server's answers to the forged sources back through the client namespace.
fn route_forged_sources(p: &Pair) {
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
    let m = d.wait_for("SYNs past the budget counted", |m| {
        m.get(
            "tcpstate_flows_untracked_total",
            &[("reason", "half_open_budget")],
        ) >= 190.0
    });
    assert_eq!(
        m.get("tcpstate_flow_table_half_open_entries", &[]),
        40.0,
        "saturated at the budget"
    );
    assert_eq!(m.get("tcpstate_flow_table_half_open_capacity", &[]), 40.0);
    assert_eq!(m.get("tcpstate_syn_backlog", &[("port", "8080")]), 40.0);
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
    sh(&[
        "ip",
        "netns",
        "exec",
        &p.srv.name,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_synack_retries=0",
    ]);
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
