//! How long applications take to close, and how long connections live, per port: a server that
//! closes 1.5 s after its client's FIN on one port, one that closes at once on another. The
//! histograms must put each close in its port's buckets, and their sums must agree with the times
//! the server itself measured between reading EOF and closing.

use std::{
    io::{Read, Write},
    net::Shutdown,
    time::Instant,
};

use crate::harness::*;

/// Serves `port`: each connection on a thread of its own reads to EOF (the client's FIN: the
/// socket is in CLOSE_WAIT from here), waits `delay` seconds, closes, and prints how long it held
/// the socket after EOF, in seconds.
const SERVER: &str = r#"
import socket, sys, threading, time
port, delay = int(sys.argv[1]), float(sys.argv[2])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", port)); l.listen(64)
lock = threading.Lock()
def serve(c):
    while c.recv(4096): pass
    eof = time.monotonic()
    time.sleep(delay)
    c.close()
    with lock: print("held %.6f" % (time.monotonic() - eof), flush=True)
print("ready", flush=True)
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Connects `n` clients to `port` at once, each sending a line and its FIN, and returns when every
/// server has closed (each client reads to the server's FIN).
fn clients(p: &Pair, port: u16, n: usize) {
    let mut conns: Vec<_> = (0..n).map(|_| p.connect(SERVER_V4, port)).collect();
    for c in &mut conns {
        c.write_all(b"bye\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
    }
    for mut c in conns {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    }
}

/// The `held` times a server printed for `n` connections, summed.
fn held(server: &mut Py, n: usize) -> f64 {
    (0..n)
        .map(|_| {
            let line = server.line();
            line.strip_prefix("held ")
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("server said {line:?}"))
        })
        .sum()
}

#[test]
fn close_wait_dwell_and_lifetimes_land_in_their_ports_buckets() {
    require_privileges();
    let p = Pair::new();
    let d = Daemon::host(&p, &[]);
    let mut slow = Py::start(&p.srv, SERVER, &["8080", "1.5"]);
    let mut fast = Py::start(&p.srv, SERVER, &["9090", "0"]);
    // Both ports listen: the walk labels them (and gives them rows) before the first close.
    d.wait_for("both listening ports labelled", |m| {
        m.try_get(
            "tcpstate_close_wait_duration_seconds_count",
            &[("port", "8080")],
        )
        .is_some()
            && m.try_get(
                "tcpstate_close_wait_duration_seconds_count",
                &[("port", "9090")],
            )
            .is_some()
    });
    let started = Instant::now();
    clients(&p, 8080, 3);
    clients(&p, 9090, 4);
    let (slow_held, fast_held) = (held(&mut slow, 3), held(&mut fast, 4));
    let lived = started.elapsed().as_secs_f64();

    let count = |port| {
        move |m: &Metrics| {
            m.get(
                "tcpstate_close_wait_duration_seconds_count",
                &[("port", port)],
            )
        }
    };
    let m = d.wait_for("every close timed", |m| {
        count("8080")(m) == 3.0
            && count("9090")(m) == 4.0
            && m.get(
                "tcpstate_connection_duration_seconds_count",
                &[("port", "8080"), ("role", "server")],
            ) == 3.0
            && m.get(
                "tcpstate_connection_duration_seconds_count",
                &[("port", "9090"), ("role", "server")],
            ) == 4.0
    });
    let bucket = |name: &str, port: &str, le: &str, extra: &[(&str, &str)]| {
        // In the exposition's order: the family's labels, then le.
        let mut labels = vec![("port", port)];
        labels.extend_from_slice(extra);
        labels.push(("le", le));
        m.get(&format!("{name}_bucket"), &labels)
    };
    let cw = "tcpstate_close_wait_duration_seconds";
    // 1.5 s: above the 1 s bound, within 5 s; at once: within 100 ms.
    assert_eq!(bucket(cw, "8080", "1", &[]), 0.0, "{}", m.text);
    assert_eq!(bucket(cw, "8080", "5", &[]), 3.0, "{}", m.text);
    assert_eq!(bucket(cw, "9090", "0.1", &[]), 4.0, "{}", m.text);
    assert_eq!(count("other")(&m), 0.0, "nothing else closed: {}", m.text);
    // The sums agree with what the servers measured from EOF to close. The tracker's stamps are
    // the kernel's coarse clock (one tick: 4 ms at HZ=250, 10 ms at HZ=100), so each close may
    // read a tick off either way; the FIN also reaches the server's socket a moment before its
    // recv() returns EOF, and its own FIN leaves a moment after close().
    const TICK: f64 = 0.01;
    let sum = |port| m.get(&format!("{cw}_sum"), &[("port", port)]);
    for (port, held, n) in [("8080", slow_held, 3.0), ("9090", fast_held, 4.0)] {
        let tracked = sum(port);
        assert!(
            tracked >= held - n * TICK && tracked <= held + n * TICK + 0.05,
            "port {port}: tracker {tracked:.4} s, server {held:.4} s"
        );
    }
    // Lifetimes: each connection lived from its SYN to its last FIN, within the test's span.
    let life = "tcpstate_connection_duration_seconds";
    let life_sum = |port| {
        m.get(
            &format!("{life}_sum"),
            &[("port", port), ("role", "server")],
        )
    };
    let slow_life = life_sum("8080");
    assert!(
        slow_life >= slow_held - 3.0 * TICK && slow_life <= 3.0 * lived,
        "lifetimes {slow_life:.4} s, held {slow_held:.4} s, test span {lived:.4} s"
    );
    assert!(life_sum("9090") <= 4.0 * lived);
    assert_eq!(
        bucket(life, "8080", "1", &[("role", "server")]),
        0.0,
        "the slow server's connections lived over 1.5 s"
    );
    // Host mode on the server: the clients are not this host's endpoints.
    assert_eq!(
        m.get(
            &format!("{life}_count"),
            &[("port", "other"), ("role", "client")]
        ),
        0.0
    );
    d.assert_matches_kernel(&p.srv, "after the closes");
}
