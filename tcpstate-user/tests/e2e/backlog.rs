//! The half-open backlog and the accept queue, against the kernel's own view.

use crate::harness::*;

/// Drops every segment the client namespace sends to `port` with ACK but without SYN: its final
/// handshake ACKs never arrive, so the server holds SYN_RECV. Removed on drop.
fn drop_final_acks(ns: &Netns, port: u16) -> NftTable {
    let port = port.to_string();
    NftTable::add(
        ns,
        "tse2e",
        "output",
        &[
            "tcp",
            "dport",
            &port,
            "tcp",
            "flags",
            "&",
            "(syn | ack)",
            "==",
            "ack",
            "drop",
        ],
    )
}

fn backlog(m: &Metrics, port: &str) -> Option<f64> {
    m.try_get("tcpstate_syn_backlog", &[("port", port)])
}

#[test]
fn syn_backlog_counts_half_open_connections_like_the_kernel() {
    let p = Pair::new();
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    let _l = p.listen(SERVER_V4, 8080);
    let block = drop_final_acks(&p.cli, 8080);
    // connect() returns once the SYN-ACK arrives; the server never sees the ACK.
    let clients: Vec<_> = (0..4).map(|_| p.connect(SERVER_V4, 8080)).collect();
    d.wait_for("four half-open on 8080", |m| {
        backlog(m, "8080") == Some(4.0)
    });
    d.assert_matches_kernel(&p.srv, "four SYN-RECV");
    assert_eq!(d.metrics().connections("server", "syn_recv"), 4.0);

    // Lift the block: the server retransmits its SYN-ACKs (after 1s), the clients answer, the
    // handshakes complete.
    drop(block);
    let m = d.wait_for("handshakes completed", |m| {
        backlog(m, "8080") == Some(0.0) && m.connections("server", "established") == 4.0
    });
    assert_eq!(
        m.get("tcpstate_handshakes_total", &[("result", "established")]),
        4.0
    );
    // Held back until the server's first SYN-ACK retransmission (1 s after the SYN): the server's
    // handshakes took about a second, and the histogram says so.
    let bucket = |le: &str| {
        m.get(
            "tcpstate_handshake_duration_seconds_bucket",
            &[("role", "server"), ("le", le)],
        )
    };
    assert_eq!(
        m.get(
            "tcpstate_handshake_duration_seconds_count",
            &[("role", "server")]
        ),
        4.0
    );
    assert_eq!(
        bucket("0.5"),
        0.0,
        "none completed before the block was lifted and a SYN-ACK resent"
    );
    assert_eq!(bucket("2.5"), 4.0);
    let sum = m.get(
        "tcpstate_handshake_duration_seconds_sum",
        &[("role", "server")],
    );
    assert!(
        (3.6..=10.0).contains(&sum),
        "four handshakes of about 1s each: {sum}"
    );
    d.assert_matches_kernel(&p.srv, "four ESTABLISHED after the retransmitted SYN-ACKs");
    drop(clients);
}

/// Recv-Q (queue length) and Send-Q (limit) of the listener on `port`, as `ss` shows them.
fn ss_accept_queue(ns: &Netns, port: u16) -> (f64, f64) {
    let (length, limit) = ss_queues(ns, "listening", port);
    (length as f64, limit as f64)
}

#[test]
fn accept_queue_follows_the_kernel() {
    let p = Pair::new();
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    let l = p.listen(SERVER_V4, 8080);
    let queue = |m: &Metrics| {
        (
            m.try_get("tcpstate_accept_queue_length", &[("port", "8080")]),
            m.try_get("tcpstate_accept_queue_max_length", &[("port", "8080")]),
        )
    };
    let (_, limit) = ss_accept_queue(&p.srv, 8080);
    assert!(limit > 0.0);
    d.wait_for("an empty queue with the kernel's limit", |m| {
        queue(m) == (Some(0.0), Some(limit))
    });
    // Three handshakes complete and wait: nobody calls accept().
    let clients: Vec<_> = (0..3).map(|_| p.connect(SERVER_V4, 8080)).collect();
    d.wait_for("three waiting", |m| queue(m) == (Some(3.0), Some(limit)));
    assert_eq!(
        ss_accept_queue(&p.srv, 8080),
        (3.0, limit),
        "the kernel agrees"
    );
    let accepted: Vec<_> = (0..2).map(|_| l.accept().unwrap()).collect();
    d.wait_for("one left after two accept()s", |m| {
        queue(m) == (Some(1.0), Some(limit))
    });
    drop((accepted, clients));
}
