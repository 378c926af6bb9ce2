//! Ephemeral port pressure per destination: client endpoints by destination, TIME_WAIT included,
//! against the kernel's own sockets, and the namespace's port range.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::harness::*;

/// Client sockets in `ns` connected to `peer` (`ADDR:PORT` as `ss` writes it), in any state but
/// LISTEN and UNCONN, as `ss -tan` shows them.
pub(crate) fn ss_clients_to(ns: &Netns, peer: &str) -> usize {
    sh(&["ip", "netns", "exec", &ns.name, "ss", "-Htan"])
        .lines()
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 5 && !matches!(cols[0], "LISTEN" | "UNCONN") && cols[4] == peer
        })
        .count()
}

/// Opens `n` connections from `cli` to `addr` (listened on in `srv`), each closed by the client first
/// (the client ends in TIME_WAIT, holding its source port for 60 s), and `open` more left
/// ESTABLISHED (returned, with their server ends).
pub(crate) fn churn(
    srv: &Netns,
    cli: &Netns,
    addr: SocketAddr,
    n: usize,
    open: usize,
) -> Vec<(TcpStream, TcpStream)> {
    let l = listen_in(srv, &addr.to_string());
    cli.enter(move || {
        let mut kept = Vec::new();
        for i in 0..n + open {
            let c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {addr} (#{i}): {e}"));
            let (s, _) = l.accept().unwrap();
            if i < n {
                // FIN from the client, then the server's: the client's end goes through
                // FIN_WAIT_2 to TIME_WAIT.
                c.shutdown(std::net::Shutdown::Both).unwrap();
                drop(c);
                drop(s);
            } else {
                kept.push((c, s));
            }
        }
        kept
    })
}

#[test]
fn client_ports_in_time_wait_are_counted_per_destination_against_a_narrowed_port_range() {
    let p = Pair::new();
    // A client namespace with 500 source ports (40000-40499).
    p.cli.sysctl("net.ipv4.ip_local_port_range=40000 40499");
    let d = Daemon::host_client(&p, &[]);
    let v4: SocketAddr = format!("{SERVER_V4}:8090").parse().unwrap();
    let v6: SocketAddr = format!("[{SERVER_V6}]:8090").parse().unwrap();
    // 380 in TIME_WAIT and 20 ESTABLISHED towards one IPv4 service: 80% of the range; 10 in
    // TIME_WAIT towards its IPv6 address (the ipv4 range serves IPv6 too).
    let _open = churn(&p.srv, &p.cli, v4, 380, 20);
    churn(&p.srv, &p.cli, v6, 10, 0);
    let (want_v4, want_v6) = (
        ss_clients_to(&p.cli, "192.0.2.1:8090"),
        ss_clients_to(&p.cli, "[2001:db8::1]:8090"),
    );
    assert_eq!(
        (want_v4, want_v6),
        (400, 10),
        "ss shows other sockets than the test opened"
    );
    let in_use = |m: &Metrics, dest: &str| {
        m.try_get("tcpstate_client_ports_in_use", &[("destination", dest)])
    };
    let m = d.wait_for_within(
        "the client ports to match ss",
        Duration::from_secs(15),
        |m| {
            in_use(m, "192.0.2.1:8090") == Some(want_v4 as f64)
                && in_use(m, "[2001:db8::1]:8090") == Some(want_v6 as f64)
        },
    );
    // TIME_WAIT lasts 60 s: ss still agrees (nothing expired between the two reads).
    assert_eq!(ss_clients_to(&p.cli, "192.0.2.1:8090"), want_v4);
    assert_eq!(
        m.get("tcpstate_client_port_range_size", &[]),
        500.0,
        "the client namespace's range (40000-40499)"
    );
    assert_eq!(in_use(&m, "other"), Some(0.0));
    // Every one of them is a client endpoint (the connections gauge agrees).
    assert_eq!(
        m.connections("client", "time_wait") + m.connections("client", "established"),
        (want_v4 + want_v6) as f64
    );
    d.assert_matches_kernel(&p.cli, "after the churn");
    promtool_check(&d.raw_metrics());

    // `tcpstate flows --destination` lists the connections behind one series.
    assert_eq!(d.flows(&["--destination", "192.0.2.1:8090"]).len(), want_v4);
    assert_eq!(
        d.flows(&["--destination", "192.0.2.1:8090", "--state", "time_wait"])
            .len(),
        380
    );
    assert_eq!(
        d.flows(&["--destination", "[2001:db8::1]:8090"]).len(),
        want_v6
    );
    assert_eq!(d.flows(&["--destination", "192.0.2.1"]).len(), want_v4);
    // The client's own address is not a destination.
    assert!(d.flows(&["--destination", CLIENT_V4]).is_empty());
}
