//! TCP Fast Open between two namespaces with `net.ipv4.tcp_fastopen=3`: data in the SYN, accepted
//! by the server. Both ends' mirrors must follow `ss`, and the accepted handshakes be counted.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
};

use crate::harness::*;

/// Connections after the first, which only fetches the cookie (its SYN carries no data).
const WITH_DATA: usize = 5;
const PORT: u16 = 8443;

/// A server that accepts Fast Open, answers every request and keeps the connections open.
const SERVER: &str = r#"
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen(16)
print("ready", flush=True)
held = []
while True:
    c, _ = l.accept(); c.recv(100); c.sendall(b"ok"); held.append(c)
"#;

/// A client that opens connections with the request in the SYN (MSG_FASTOPEN), waits for each
/// answer, keeps them open and says how many were answered; exits when stdin closes.
const CLIENT: &str = r#"
import socket, sys
addr, n = (sys.argv[1], int(sys.argv[2])), int(sys.argv[3])
held = []
for _ in range(n):
    s = socket.socket()
    s.sendto(b"hello", socket.MSG_FASTOPEN, addr)
    assert s.recv(2) == b"ok"
    held.append(s)
print("answered", len(held), flush=True)
sys.stdin.read()
"#;

fn python(ns: &Netns, script: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3")
}

fn line(child: &mut Child) -> String {
    let mut l = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut l)
        .unwrap();
    l.trim().to_string()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fast_open_connections_are_established_on_both_ends_and_counted() {
    let p = Pair::new();
    for ns in [&p.srv, &p.cli] {
        ns.sysctl("net.ipv4.tcp_fastopen=3");
    }
    let srv = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    // The client's host too: the issue's symptom was the client left in SYN_SENT.
    let cli_if = p.cli.ip(&["-o", "link", "show", "type", "veth"]);
    let cli_if = cli_if
        .split(": ")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    let cli = Daemon::start(
        &p.cli,
        &["--iface", cli_if, "--sweep-interval", "100ms"],
        Opts {
            listen: "127.0.0.1:9477",
            scrape_from: None,
            scope: Some(vec![ip(CLIENT_V4), ip(CLIENT_V6)]),
        },
    );
    let mut server = Killed(python(&p.srv, SERVER, &[&PORT.to_string()]));
    assert_eq!(line(&mut server.0), "ready");
    let n = (WITH_DATA + 1).to_string();
    let mut client = Killed(python(&p.cli, CLIENT, &[SERVER_V4, &PORT.to_string(), &n]));
    assert_eq!(line(&mut client.0), format!("answered {n}"));

    srv.assert_matches_kernel(&p.srv, "fast open connections, server side");
    cli.assert_matches_kernel(&p.cli, "fast open connections, client side");
    for (d, role) in [(&srv, "server"), (&cli, "client")] {
        let m = d.metrics();
        assert_eq!(
            m.connections(role, "established"),
            (WITH_DATA + 1) as f64,
            "{role}"
        );
        assert_eq!(
            m.get("tcpstate_fastopen_total", &[("result", "accepted")]),
            WITH_DATA as f64,
            "{role}: every SYN after the cookie request carried accepted data"
        );
        assert_eq!(
            m.get("tcpstate_fastopen_total", &[("result", "declined")]),
            0.0
        );
        assert_eq!(
            m.get(
                "tcpstate_invalid_segments_total",
                &[("reason", "bad_synack")]
            ),
            0.0,
            "{role}"
        );
        assert_eq!(
            m.get("tcpstate_handshakes_total", &[("result", "established")]),
            (WITH_DATA + 1) as f64,
            "{role}"
        );
    }
    // Closing them all still ends in agreement (the SYN's data moved every later number).
    client.0.stdin.take().unwrap().write_all(b"").unwrap();
    drop(client);
    drop(server);
    srv.assert_matches_kernel(&p.srv, "after both processes exited");
    cli.assert_matches_kernel(&p.cli, "after both processes exited");
}
