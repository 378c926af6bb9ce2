//! TCP Fast Open between two namespaces with `net.ipv4.tcp_fastopen=3`: data in the SYN, accepted
//! by the server, ignored by it, lost on the way, or answered by a scripted server (scapy) with
//! an RST that acknowledges only the SYN or a SYN-ACK that carries data. Both ends' mirrors must
//! follow `ss`, and the handshakes be counted.

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
    let cli = Daemon::host_client(&p, &["--sweep-interval", "100ms"]);
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

/// One Fast Open connect per argument port, each with `SIZE` bytes in the SYN (MSG_FASTOPEN);
/// prints what became of each: "answered" (the server's two bytes came back), "got XX" (what
/// the server sent first, for a scripted server that answers nothing), or "refused". Keeps the
/// connections until stdin closes.
const CONNECTS: &str = r#"
import socket, sys
size, host, ports = int(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
held = []
for port in ports:
    s = socket.socket()
    try:
        s.sendto(b"x" * size, socket.MSG_FASTOPEN, (host, port))
    except ConnectionRefusedError:
        print("refused", flush=True)
        continue
    got = s.recv(2)
    print("answered" if got == b"ok" else "got " + got.decode(), flush=True)
    held.append(s)
sys.stdin.read()
"#;

/// A server that answers every request with "ok" after reading `SIZE` bytes (the same server as
/// `SERVER`, reading all of a larger request).
const READING_SERVER: &str = r#"
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen(16)
size = int(sys.argv[2])
print("ready", flush=True)
held = []
while True:
    c, _ = l.accept()
    got = b""
    while len(got) < size:
        more = c.recv(size)
        if not more: break
        got += more
    c.sendall(b"ok"); held.append(c)
"#;

/// A scripted server (scapy, in the server's namespace, whose own stack must not see the port):
/// waits for one SYN to `port` on `iface`, says how much data it carried, and answers `mode`:
/// `rst-syn` an RST|ACK acknowledging the SYN alone (ISN + 1), `synack-data` a SYN-ACK that
/// acknowledges the SYN and its data and carries two bytes of its own ("hi").
const SCRIPTED: &str = r#"
import sys
from scapy.all import IP, TCP, Raw, AsyncSniffer, send
iface, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
syn = lambda p: TCP in p and p[TCP].dport == port and p[TCP].flags & 0x12 == 0x02
sn = AsyncSniffer(iface=iface, lfilter=syn, count=1,
                  started_callback=lambda: print("ready", flush=True))
sn.start(); sn.join(timeout=30)
s = sn.results[0]
ip, t = s[IP], s[TCP]
n = len(bytes(t.payload))
back = IP(src=ip.dst, dst=ip.src)
if mode == "rst-syn":
    send(back/TCP(sport=port, dport=t.sport, flags="RA", seq=0, ack=t.seq + 1), verbose=0)
elif mode == "synack-data":
    send(back/TCP(sport=port, dport=t.sport, flags="SA", seq=7000, ack=t.seq + 1 + n,
                  window=65535, options=[("MSS", 1400)])/Raw(b"hi"), verbose=0)
print("syn data", n, flush=True)
"#;

/// Bytes in the test clients' SYNs.
const SIZE: usize = 300;

/// A pair with Fast Open on both ends, a daemon on each, and a Fast Open cookie for the server's
/// address in the client's cache (its first connection asks for one: that SYN carries no data).
struct FastOpenPair {
    p: Pair,
    srv: Daemon,
    cli: Daemon,
    _server: Killed,
}

impl FastOpenPair {
    fn new() -> FastOpenPair {
        let p = Pair::new();
        for ns in [&p.srv, &p.cli] {
            ns.sysctl("net.ipv4.tcp_fastopen=3");
        }
        let srv = Daemon::host(&p, &[]);
        let cli = Daemon::host_client(&p, &[]);
        let size = SIZE.to_string();
        let mut server = Killed(python(&p.srv, READING_SERVER, &[&PORT.to_string(), &size]));
        assert_eq!(line(&mut server.0), "ready");
        let mut first = Killed(python(
            &p.cli,
            CONNECTS,
            &[&size, SERVER_V4, &PORT.to_string()],
        ));
        assert_eq!(line(&mut first.0), "answered", "the cookie request");
        drop(first);
        let f = FastOpenPair {
            p,
            srv,
            cli,
            _server: server,
        };
        f.both_match("the cookie fetched");
        let m = f.cli.metrics();
        assert_eq!(
            m.get("tcpstate_fastopen_total", &[("result", "accepted")])
                + m.get("tcpstate_fastopen_total", &[("result", "declined")]),
            0.0,
            "the cookie request carries no data"
        );
        f
    }

    fn both_match(&self, checkpoint: &str) {
        self.srv
            .assert_matches_kernel(&self.p.srv, &format!("{checkpoint}, server side"));
        self.cli
            .assert_matches_kernel(&self.p.cli, &format!("{checkpoint}, client side"));
    }

    /// Fast Open connects from the client to `ports` of the server, with `SIZE` bytes each.
    fn connect(&self, ports: &[u16]) -> Killed {
        let size = SIZE.to_string();
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut args = vec![size.as_str(), SERVER_V4];
        args.extend(ports.iter().map(String::as_str));
        Killed(python(&self.p.cli, CONNECTS, &args))
    }

    /// Starts a scripted server on `port` in `mode` (see `SCRIPTED`), the server's own stack
    /// blind to the port (nothing it would answer reaches the wire).
    fn scripted(&self, port: u16, mode: &str) -> (Killed, NftTable) {
        let port_s = port.to_string();
        let blind = NftTable::add(
            &self.p.srv,
            "tse2e_tfo",
            "input",
            &["tcp", "dport", &port_s, "drop"],
        );
        let script = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.p.srv.name,
                DEBIAN_PYTHON,
                "-c",
                SCRIPTED,
            ])
            .args([self.p.srv_if.as_str(), &port_s, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with scapy");
        let mut script = Killed(script);
        assert_eq!(line(&mut script.0), "ready", "scapy: `cargo xtask setup`");
        (script, blind)
    }

    fn handshakes(&self, d: &Daemon, result: &str) -> f64 {
        d.metrics()
            .get("tcpstate_handshakes_total", &[("result", result)])
    }
}

#[test]
fn a_fast_open_connect_refused_by_an_rst_acking_only_the_syn_is_closed_and_counted_refused() {
    let f = FastOpenPair::new();
    // Nothing listens: the kernel's own RST acknowledges the SYN and its data (tcp_v4_send_reset
    // acks seq + 1 + payload length).
    let mut closed = f.connect(&[PORT + 10]);
    assert_eq!(line(&mut closed.0), "refused");
    f.both_match("refused by the kernel's RST");
    // A server whose RST acknowledges the SYN alone: acceptable in SYN-SENT (RFC 9293 section
    // 3.10.7.3: ISN < ack =< ISN + 1 + len), and Linux refuses the connect. Regression: the
    // mirror kept the client in SYN_SENT.
    let (mut script, _blind) = f.scripted(PORT + 1, "rst-syn");
    let mut refused = f.connect(&[PORT + 1]);
    assert_eq!(line(&mut script.0), format!("syn data {SIZE}"));
    assert_eq!(line(&mut refused.0), "refused");
    // Read at once: the RST crossed TC ingress before the connect failed, and settling (3 s of
    // quiet) must not be what ends the SYN_SENT.
    let m = f.cli.metrics();
    assert_eq!(m.connections("client", "syn_sent"), 0.0);
    assert_eq!(f.handshakes(&f.cli, "refused"), 2.0, "both refusals");
    assert_eq!(
        m.get(
            "tcpstate_resets_total",
            &[("direction", "received"), ("state", "syn_sent")]
        ),
        2.0
    );
    assert_eq!(
        m.get(
            "tcpstate_invalid_segments_total",
            &[("reason", "rst_out_of_window")]
        ),
        0.0
    );
    f.cli
        .assert_matches_kernel(&f.p.cli, "refused by an RST acking only the SYN");
}

#[test]
fn a_server_that_ignores_the_syn_data_leaves_the_fast_open_client_established() {
    let f = FastOpenPair::new();
    // The cookie is cached; the server turns Fast Open off and acknowledges the SYN alone
    // (tcp_try_fastopen declines), and the client sends the data again after the handshake
    // (tcp_rcv_fastopen_synack).
    f.p.srv.sysctl("net.ipv4.tcp_fastopen=0");
    let mut client = f.connect(&[PORT]);
    assert_eq!(line(&mut client.0), "answered");
    f.both_match("data declined, connection established");
    for (d, role) in [(&f.srv, "server"), (&f.cli, "client")] {
        let m = d.metrics();
        assert_eq!(m.connections(role, "established"), 1.0, "{role}");
        assert_eq!(
            m.get("tcpstate_fastopen_total", &[("result", "declined")]),
            1.0,
            "{role}: the SYN carried data the SYN-ACK did not acknowledge"
        );
        assert_eq!(f.handshakes(d, "established"), 2.0, "{role}");
    }
}

#[test]
fn a_data_syn_lost_on_the_way_is_sent_again_as_a_plain_syn_and_the_client_established() {
    let f = FastOpenPair::new();
    // The server's host drops SYNs longer than a plain one: the data SYN is lost, the kernel
    // retransmits the SYN without its data or cookie (tcp_send_syn_data keeps them apart), the
    // server acknowledges ISN + 1, and the data follows the handshake.
    let port = PORT.to_string();
    let _lossy = NftTable::add(
        &f.p.srv,
        "tse2e_tfo_loss",
        "input",
        &[
            "tcp",
            "dport",
            &port,
            "tcp",
            "flags",
            "&",
            "(syn|ack)",
            "==",
            "syn",
            "ip",
            "length",
            ">",
            "200",
            "drop",
        ],
    );
    let mut client = f.connect(&[PORT]);
    assert_eq!(line(&mut client.0), "answered");
    f.both_match("the plain SYN answered");
    let m = f.cli.metrics();
    assert_eq!(m.connections("client", "established"), 1.0);
    assert_eq!(
        m.get("tcpstate_fastopen_total", &[("result", "declined")]),
        1.0,
        "the client's mirror saw the data SYN and a SYN-ACK that acknowledged none of it"
    );
}

#[test]
fn a_synack_carrying_data_establishes_the_fast_open_client() {
    let f = FastOpenPair::new();
    // Linux takes data in a SYN-ACK when it sent Fast Open (tcp_rcv_fastopen_synack queues it):
    // the client is ESTABLISHED and reads it, and acknowledges past it.
    let (mut script, _blind) = f.scripted(PORT + 2, "synack-data");
    let mut client = f.connect(&[PORT + 2]);
    assert_eq!(line(&mut script.0), format!("syn data {SIZE}"));
    assert_eq!(line(&mut client.0), "got hi");
    f.cli
        .assert_matches_kernel(&f.p.cli, "established by a SYN-ACK with data");
    let m = f.cli.metrics();
    assert_eq!(m.connections("client", "established"), 1.0);
    assert_eq!(
        m.get("tcpstate_fastopen_total", &[("result", "accepted")]),
        1.0
    );
    assert_eq!(
        m.get(
            "tcpstate_invalid_segments_total",
            &[("reason", "bad_synack")]
        ),
        0.0
    );
}
