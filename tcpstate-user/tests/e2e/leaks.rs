//! CLOSE_WAIT leak diagnosis end to end: a server process that reads EOF and keeps the socket, a
//! well-behaved one on another port, clients that close; the leak gauges and `tcpstate leaks` must
//! name the right port, process and ages.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::*;

/// Accepts, reads to EOF, then keeps the socket ("leak") or closes it ("close"). SIGUSR1 closes
/// every kept socket.
const SERVER: &str = r#"
import signal, socket, sys
port, mode = int(sys.argv[2]), sys.argv[3]  # argv[1] is the "leaky-server" marker
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", port)); l.listen(64)
held = []
def close_all(*_):
    for c in held: c.close()
    held.clear()
    print("closed", flush=True)
signal.signal(signal.SIGUSR1, close_all)
print("ready", flush=True)
while True:
    c, _ = l.accept()
    while c.recv(4096): pass
    if mode == "close": c.close()
    else: held.append(c)
"#;

/// A server process in a namespace, killed on drop.
struct Server {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Server {
    fn start(ns: &Netns, port: u16, mode: &str) -> Server {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "python3",
                "-c",
                SERVER,
                "leaky-server",
                &port.to_string(),
                mode,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut s = Server { child, out };
        s.expect_line("ready");
        s
    }

    fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), want, "server said {line:?}");
    }

    fn pid(&self) -> u32 {
        // `ip netns exec` execs the command: the child's pid is python's.
        self.child.id()
    }

    fn close_kept_sockets(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        self.expect_line("closed");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clients that connect, send a line and close; returns when the last close happened.
fn clients_close(p: &Pair, port: u16, n: usize) -> Instant {
    for _ in 0..n {
        let mut c = p.connect(SERVER_V4, port);
        c.write_all(b"bye\n").unwrap();
        drop(c);
    }
    Instant::now()
}

/// `tcpstate leaks --json [--older-than T]` in the daemon's namespace: (exit code, parsed output).
pub(crate) fn leaks_json(
    ns: &Netns,
    d: &Daemon,
    older_than: Option<&str>,
) -> (i32, serde_json::Value) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args([BIN, "leaks", "--json"])
        .args(
            older_than
                .map(|t| ["--older-than", t])
                .into_iter()
                .flatten(),
        )
        .arg("--pin-dir")
        .arg(&d.pin_dir)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "leaks --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

/// The leak gauge of a port; `None` while the port has no label yet.
fn leaked(m: &Metrics, port: &str) -> Option<f64> {
    m.try_get("tcpstate_close_wait_leaked", &[("port", port)])
}

#[test]
fn leaking_port_and_process_are_named_and_cleared() {
    let p = Pair::new();
    let d = Daemon::host(
        &p,
        &["--sweep-interval", "100ms", "--close-wait-leak-after", "2s"],
    );
    let mut leaky = Server::start(&p.srv, 8080, "leak");
    let _good = Server::start(&p.srv, 9090, "close");
    let closed_at = clients_close(&p, 8080, 3);
    clients_close(&p, 9090, 2);
    d.assert_matches_kernel(&p.srv, "three CLOSE_WAIT on 8080, none on 9090");
    // Labelled by the next walk (whose cadence stretches with the table's size).
    let m = d.wait_for("a label for port 8080", |m| leaked(m, "8080").is_some());
    assert_eq!(
        leaked(&m, "8080"),
        Some(0.0),
        "not leaked before the threshold"
    );

    let m = d.wait_for("three leaks on 8080", |m| leaked(m, "8080") == Some(3.0));
    let truth = closed_at.elapsed().as_secs_f64();
    assert_eq!(
        leaked(&m, "9090"),
        Some(0.0),
        "the well-behaved port shows zero"
    );
    assert_eq!(leaked(&m, "other"), Some(0.0));
    let oldest = m.get("tcpstate_close_wait_oldest_seconds", &[("port", "8080")]);
    assert!(
        oldest >= truth - 1.0 && oldest <= truth + 1.0,
        "oldest {oldest}s vs truth ~{truth}s"
    );

    // No --older-than: the daemon's threshold (2s), not a 60s of the command's own.
    let (code, v) = leaks_json(&p.srv, &d, None);
    let truth = closed_at.elapsed().as_secs_f64();
    assert_eq!(code, 1, "exit 1 when there are leaks: {v}");
    assert_eq!(
        (
            v["threshold_seconds"].as_f64(),
            v["threshold_source"].as_str()
        ),
        (Some(2.0), Some("daemon")),
        "{v}"
    );
    let leaks = v["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 1, "one group: port 8080, one process: {v}");
    let l = &leaks[0];
    assert_eq!(l["port"], 8080);
    assert_eq!(l["pid"], leaky.pid());
    assert_eq!(l["command"], "python3");
    assert!(
        l["cmdline"]
            .as_str()
            .unwrap()
            .contains("leaky-server 8080 leak"),
        "{l}"
    );
    assert_eq!(l["user"], "root");
    assert_eq!(l["count"], 3);
    assert_eq!(l["top_peers"][0]["address"], CLIENT_V4);
    assert_eq!(l["top_peers"][0]["count"], 3);
    assert_eq!(l["age_is_lower_bound"], false);
    let newest = l["newest_seconds"].as_f64().unwrap();
    assert!(
        (newest - truth).abs() < 1.0,
        "newest {newest}s vs truth {truth}s"
    );

    // --older-than overrides the daemon's threshold, and says so.
    let (code, v) = leaks_json(&p.srv, &d, Some("1h"));
    assert_eq!(
        (
            code,
            v["threshold_seconds"].as_f64(),
            v["threshold_source"].as_str()
        ),
        (0, Some(3600.0), Some("--older-than")),
        "{v}"
    );

    // `tcpstate flows` filters agree: three CLOSE_WAIT flows on 8080, none on 9090.
    let flows = |filters: &[&str]| d.flows(filters);
    let stuck = flows(&[
        "--state",
        "close_wait",
        "--port",
        "8080",
        "--older-than",
        "2s",
    ]);
    assert_eq!(stuck.len(), 3);
    for f in &stuck {
        let local = endpoint(f, true);
        assert_eq!(
            (local["state"].as_str(), local["role"].as_str()),
            (Some("close_wait"), Some("server")),
            "{f}"
        );
        assert!(local["age_seconds"].as_f64().unwrap() > 2.0);
    }
    assert!(flows(&["--state", "close_wait", "--port", "9090"]).is_empty());
    assert_eq!(flows(&["--address", CLIENT_V4, "--port", "8080"]).len(), 3);

    // The process finally closes: the gauge returns to zero, and `leaks` exits 0.
    leaky.close_kept_sockets();
    d.wait_for("leaks gone after close", |m| leaked(m, "8080") == Some(0.0));
    d.assert_matches_kernel(&p.srv, "after the leaking process closed");
    let (code, v) = leaks_json(&p.srv, &d, None);
    assert_eq!((code, v["leaks"].as_array().unwrap().len()), (0, 0), "{v}");
    promtool_check(&d.raw_metrics());
}

#[test]
fn leaks_clear_when_the_leaking_process_exits() {
    let p = Pair::new();
    let d = Daemon::host(
        &p,
        &["--sweep-interval", "100ms", "--close-wait-leak-after", "1s"],
    );
    let leaky = Server::start(&p.srv, 8080, "leak");
    clients_close(&p, 8080, 2);
    d.wait_for("two leaks", |m| leaked(m, "8080") == Some(2.0));
    drop(leaky); // SIGKILL: the kernel closes its sockets (FIN, LAST_ACK, CLOSED)
    d.wait_for("leaks gone after exit", |m| {
        leaked(m, "8080") == Some(0.0) && m.connections("server", "close_wait") == 0.0
    });
    d.assert_matches_kernel(&p.srv, "after the leaking process exited");
}

#[test]
fn leak_older_than_the_daemon_is_found_with_a_lower_bound_age() {
    require_privileges();
    let p = Pair::new();
    let leaky = Server::start(&p.srv, 8080, "leak");
    clients_close(&p, 8080, 4);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let d = Daemon::host(
        &p,
        &["--sweep-interval", "100ms", "--close-wait-leak-after", "1s"],
    );
    assert_eq!(
        d.metrics().connections("server", "close_wait"),
        4.0,
        "seeded at start-up"
    );
    d.wait_for("four leaks after the threshold", |m| {
        leaked(m, "8080") == Some(4.0)
    });
    let (code, v) = leaks_json(&p.srv, &d, None);
    assert_eq!(code, 1);
    let l = &v["leaks"][0];
    assert_eq!(
        (l["port"].as_u64(), l["pid"].as_u64(), l["count"].as_u64()),
        (Some(8080), Some(leaky.pid() as u64), Some(4))
    );
    assert_eq!(
        l["age_is_lower_bound"], true,
        "ages of seeded sockets count from start-up"
    );
    let oldest = l["oldest_seconds"].as_f64().unwrap();
    assert!(
        oldest <= started.elapsed().as_secs_f64() + 0.5,
        "age counts from start-up, not before: {oldest}"
    );
}
