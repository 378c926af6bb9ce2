//! Readers that stopped reading: a server that accepts and never reads while its client writes
//! until its own buffers are full. The server's receive window closes; the tracker must show the
//! stall on the server's port while `ss` shows its full Recv-Q, say since when in `tcpstate
//! flows`, and clear it when the application reads.

use std::{io::Write, time::Duration};

use crate::harness::*;

/// Accepts one connection with a small receive buffer and reads nothing until told "read", then
/// reads until EOF.
const SERVER: &str = r#"
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen(8)
print("ready", flush=True)
c, _ = l.accept()
print("accepted", flush=True)
sys.stdin.readline()
while c.recv(65536): pass
print("drained", flush=True)
"#;

#[test]
fn a_server_that_stops_reading_is_stalled_on_its_port_until_it_reads() {
    require_privileges();
    let p = Pair::new();
    let d = Daemon::host(&p, &[]);
    let mut server = Py::start(&p.srv, SERVER, &["7070"]);
    let mut client = p.connect(SERVER_V4, 7070);
    assert_eq!(server.line(), "accepted");
    // Write until the client's send buffer is full too: by then the server advertised 0.
    client.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 16384];
    let mut written = 0usize;
    eventually(
        "the client's writes to block",
        Duration::from_secs(10),
        || match client.write(&chunk) {
            Ok(n) => {
                written += n;
                Err(format!("{written} bytes written so far"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => panic!("write: {e}"),
        },
    );
    let local = [("port", "7070"), ("side", "local")];
    let m = d.wait_for("the server's stall", |m| {
        m.try_get("tcpstate_zero_window_endpoints", &local) == Some(1.0)
    });
    assert!(
        ss_queues(&p.srv, "established", 7070).0 > 0,
        "the kernel holds what the application did not read"
    );
    assert_eq!(
        m.get("tcpstate_zero_window_stalls_total", &[("side", "local")]),
        1.0,
        "{}",
        m.text
    );
    // Host mode on the server: the client is not this host's, its view (remote) is nobody's.
    assert_eq!(
        m.get(
            "tcpstate_zero_window_endpoints",
            &[("port", "7070"), ("side", "remote")]
        ),
        0.0
    );
    let flows = d.flows(&["--port", "7070"]);
    let stalled: Vec<_> = flows
        .iter()
        .map(|f| endpoint(f, true))
        .filter(|e| !e["zero_window_seconds"].is_null())
        .collect();
    assert_eq!(stalled.len(), 1, "{flows:#?}");
    d.assert_matches_kernel(&p.srv, "while stalled");

    server.say("read");
    client.set_nonblocking(false).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(server.line(), "drained");
    let m = d.wait_for("the stall cleared", |m| {
        m.get("tcpstate_zero_window_endpoints", &local) == 0.0
    });
    assert_eq!(
        m.get("tcpstate_zero_window_stalls_total", &[("side", "local")]),
        1.0,
        "a stall that ended is still one stall begun"
    );
}

/// The client's host sees the same stall from the other side: its sends wait on a remote window.
#[test]
fn a_client_sees_its_servers_stall_as_remote() {
    require_privileges();
    let p = Pair::new();
    let d = Daemon::host_client(&p, &[]);
    let mut server = Py::start(&p.srv, SERVER, &["7071"]);
    let mut client = p.connect(SERVER_V4, 7071);
    assert_eq!(server.line(), "accepted");
    client.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 16384];
    eventually(
        "the client's writes to block",
        Duration::from_secs(10),
        || match client.write(&chunk) {
            Ok(_) => Err("still writing".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => panic!("write: {e}"),
        },
    );
    // The client's local port is ephemeral: under other.
    let m = d.wait_for("the client's view of the stall", |m| {
        m.get(
            "tcpstate_zero_window_endpoints",
            &[("port", "other"), ("side", "remote")],
        ) == 1.0
    });
    assert_eq!(
        m.get("tcpstate_zero_window_stalls_total", &[("side", "remote")]),
        1.0
    );
    assert_eq!(
        m.get(
            "tcpstate_zero_window_endpoints",
            &[("port", "other"), ("side", "local")]
        ),
        0.0
    );
    drop(server);
}
