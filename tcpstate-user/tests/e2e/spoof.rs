//! Spoof resistance: blind RSTs outside the receiver's window change nothing (as in the kernel)
//! and are counted; an RST with the exact sequence number closes the connection (as the kernel
//! does).

use crate::harness::*;

/// Sends TCP segments with scapy from `ns`: (src port, dst port, flags, seq).
fn craft(ns: &Netns, src: &str, dst: &str, segments: &[(u16, u16, &str, u32)]) {
    let list: Vec<String> = segments
        .iter()
        .map(|(sp, dp, f, seq)| format!("({sp},{dp},'{f}',{seq})"))
        .collect();
    let script = format!(
        "from scapy.all import IP, TCP, send\nsend([IP(src='{src}', dst='{dst}')/TCP(sport=s, dport=d, flags=f, seq=q) for s, d, f, q in [{}]], verbose=0)",
        list.join(",")
    );
    scapy(ns, &script);
}

#[test]
fn blind_rsts_change_nothing_and_the_exact_one_closes() {
    let p = Pair::new();
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    let l = p.listen(SERVER_V4, 8080);
    // The client sends no data, so the server expects exactly the client's ISN + 1 next.
    let c = p.connect(SERVER_V4, 8080);
    let (_s, _) = l.accept().unwrap();
    let cport = c.local_addr().unwrap().port();
    d.assert_matches_kernel(&p.srv, "established");
    let flows = d.flows(&["--port", "8080"]);
    assert_eq!(flows.len(), 1, "the one connection: {flows:?}");
    let client = endpoint(&flows[0], false);
    let isn = client["seq"]["isn"]
        .as_u64()
        .expect("the client's ISN is known from its SYN") as u32;
    let rcv_nxt = isn.wrapping_add(1);

    // Blind: far outside the server's receive window (about 64 KiB here).
    let blind = [
        rcv_nxt.wrapping_add(1_000_000),
        rcv_nxt.wrapping_add(1 << 31),
        rcv_nxt.wrapping_sub(1_000_000),
    ];
    craft(
        &p.cli,
        CLIENT_V4,
        SERVER_V4,
        &blind.map(|seq| (cport, 8080, "R", seq)),
    );
    let m = d.wait_for("three blind RSTs counted", |m| {
        m.get(
            "tcpstate_invalid_segments_total",
            &[("reason", "rst_out_of_window")],
        ) == 3.0
    });
    assert_eq!(
        m.connections("server", "established"),
        1.0,
        "the tracker kept the connection"
    );
    d.assert_matches_kernel(&p.srv, "the kernel kept it too");

    // Exact: the kernel accepts it (RFC 5961), and so does the tracker.
    craft(&p.cli, CLIENT_V4, SERVER_V4, &[(cport, 8080, "R", rcv_nxt)]);
    let m = d.wait_for("the exact RST accepted", |m| {
        m.get(
            "tcpstate_resets_total",
            &[("direction", "received"), ("state", "established")],
        ) == 1.0
    });
    assert_eq!(m.connections("server", "established"), 0.0);
    d.assert_matches_kernel(&p.srv, "closed by the exact RST, in both");
    drop(c);
}
