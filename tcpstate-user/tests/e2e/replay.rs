//! `tcpstate replay` against the live daemon: tcpdump records the server interface while real
//! connections go through several scenarios, the daemon's `tcpstate flows --json` is read, and
//! the replay of the capture must end every flow in the same states.

use std::{
    collections::BTreeMap,
    io::Write,
    net::Shutdown,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::harness::*;

/// tcpdump writing everything on `iface` in `ns` to a file; stopped (and flushed) by `stop`.
struct Tcpdump {
    child: Child,
    pub file: PathBuf,
    log: PathBuf,
}

impl Tcpdump {
    fn start(ns: &Netns, iface: &str) -> Tcpdump {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .any(|d| std::path::Path::new(d).join("tcpdump").exists());
        assert!(
            found,
            "tcpdump is missing: run `cargo xtask setup` (Debian package tcpdump)"
        );
        let file = std::env::temp_dir().join(format!("{}.pcap", ns.name));
        let err = std::env::temp_dir().join(format!("{}.tcpdump.log", ns.name));
        let child = Command::new("ip")
            // Immediate mode: without it packets wait in the kernel's ring for a block to fill
            // or time out, and a capture stopped meanwhile loses them.
            .args([
                "netns",
                "exec",
                &ns.name,
                "tcpdump",
                "--immediate-mode",
                "-U",
                "-n",
            ])
            // Headers only (as users are told to capture): the replay must take payload lengths
            // from the IP headers of GSO super-packets cut to 200 bytes. A 32 MiB ring: with the
            // default 2 MiB and full-size frames, a burst of 64 KiB GSO packets overflows it.
            .args(["-s", "200", "-B", "32768", "-i", iface, "-w"])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("run tcpdump through ip netns exec");
        // Traffic before the capture is live would be missing from it.
        eventually("tcpdump to start", Duration::from_secs(10), || {
            let log = std::fs::read_to_string(&err).unwrap_or_default();
            if log.contains("listening on") {
                Ok(())
            } else {
                Err(format!("tcpdump did not start: {log}"))
            }
        });
        Tcpdump {
            child,
            file,
            log: err,
        }
    }

    fn stop(mut self) -> PathBuf {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success() || status.code().is_none(),
            "tcpdump: {status}"
        );
        // A capture that lost packets cannot be compared with the daemon, which saw them all.
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            log.contains("\n0 packets dropped by kernel"),
            "tcpdump dropped packets: {log}"
        );
        self.file.clone()
    }
}

/// Each flow's endpoints and their (state, role), keyed by the two endpoints.
fn final_states(flows: &[serde_json::Value]) -> BTreeMap<(String, String), [(String, String); 2]> {
    flows
        .iter()
        .map(|f| {
            let ep = |s: &str| {
                (
                    f[s]["endpoint"].as_str().unwrap().to_string(),
                    (
                        f[s]["state"].as_str().unwrap().to_string(),
                        f[s]["role"].as_str().unwrap().to_string(),
                    ),
                )
            };
            let ((a, sa), (b, sb)) = (ep("a"), ep("b"));
            ((a, b), [sa, sb])
        })
        .collect()
}

#[test]
fn replaying_a_capture_of_the_suite_ends_in_the_states_the_daemon_showed() {
    let p = Pair::new();
    let d = Daemon::host(&p, &[]);
    let dump = Tcpdump::start(&p.srv, &p.srv_if);
    let l = p.listen(SERVER_V4, 8080);
    let l6 = p.listen(SERVER_V6, 8086);

    // Client closes first: TIME_WAIT against CLOSED.
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"hello");
    exchange(&mut s, &mut c, &[7u8; 100_000]);
    drop(c);
    drop(s);
    // A CLOSE_WAIT leak: the client closes, the server never does.
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut leak, _) = l.accept().unwrap();
    exchange(&mut c, &mut leak, b"bye?");
    drop(c);
    // Half-close: the server keeps sending from CLOSE_WAIT.
    let half_c = p.connect(SERVER_V4, 8080);
    let (mut half, _) = l.accept().unwrap();
    half_c.shutdown(Shutdown::Write).unwrap();
    half.write_all(b"still talking").unwrap();
    // An established connection left open, over IPv6.
    let mut c6 = p.connect(SERVER_V6, 8086);
    let (mut s6, _) = l6.accept().unwrap();
    exchange(&mut c6, &mut s6, b"six");
    // An abort: RST from the server.
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"abort me");
    abort(s);
    // A refused port.
    let refused = p.cli.enter(|| {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(ip(SERVER_V4), 9999),
            Duration::from_secs(2),
        )
    });
    assert!(refused.is_err(), "nothing listens on 9999");
    // Let the last segments cross before both views are read.
    std::thread::sleep(Duration::from_millis(300));
    let live = d.flows(&[]);
    let file = dump.stop();

    let out = Command::new(BIN)
        .args(["replay", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay of {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let (live_states, replayed_states) = (final_states(&live), final_states(&replayed));
    assert!(
        live_states.len() >= 6,
        "the daemon saw the scenarios: {live_states:#?}"
    );
    assert_eq!(
        replayed_states,
        live_states,
        "replay of {} against the live daemon",
        file.display()
    );
    // The scenarios reached the states they are about.
    let all: Vec<&(String, String)> = live_states.values().flatten().collect();
    for state in [
        "time_wait",
        "close_wait",
        "fin_wait2",
        "established",
        "closed",
    ] {
        assert!(
            all.iter().any(|(s, _)| s == state),
            "no endpoint in {state}: {live_states:#?}"
        );
    }
    // Host mode counts the local (server) endpoint; the replay, as tap mode, both.
    assert!(replayed
        .iter()
        .all(|f| f["a"]["local"] == true && f["b"]["local"] == true));
    let _ = std::fs::remove_file(&file);
    drop((leak, half, half_c, c6, s6, d));
}
