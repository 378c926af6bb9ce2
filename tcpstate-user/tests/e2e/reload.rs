//! SIGHUP: the daemon reads its `--config` file again and applies what changes without
//! re-attaching anything, or refuses the whole reload in one log line and keeps running as it was.

use std::time::Duration;

use crate::{harness::*, leaks::leaks_json};

/// A config file in the temp directory, removed when dropped.
struct Config(std::path::PathBuf);

impl Config {
    fn new(tag: &str) -> Config {
        Config(
            std::env::temp_dir().join(format!("tcpstate-reload-{}-{tag}.toml", std::process::id())),
        )
    }

    fn write(&self, body: &str) {
        std::fs::write(&self.0, body).expect("write the config file");
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn sighup_applies_a_new_leak_threshold_and_refuses_what_needs_a_restart() {
    let p = Pair::new();
    let conf = Config::new("threshold");
    conf.write("close-wait-leak-after = \"1h\"\nport-labels = 32\n");
    let path = conf.0.to_str().unwrap().to_string();
    // JSON logs here, so each line is checked to be one object, with no colour codes.
    let mut d = Daemon::host(
        &p,
        &[
            "--config",
            &path,
            "--sweep-interval",
            "100ms",
            "--log.format",
            "json",
        ],
    );
    // A CLOSE_WAIT the server holds: the client closes, the server keeps its socket.
    let l = p.listen(SERVER_V4, 8080);
    let c = p.connect(SERVER_V4, 8080);
    let (_held, _) = l.accept().unwrap();
    drop(c);
    d.wait_for("the server's endpoint in CLOSE_WAIT", |m| {
        m.connections("server", "close_wait") == 1.0
    });
    // Older than the new threshold below, younger than the first.
    std::thread::sleep(Duration::from_millis(1500));
    let m = d.metrics();
    assert_eq!(m.sum("tcpstate_close_wait_leaked"), 0.0, "{}", m.text);
    assert_eq!(leaks_json(&p.srv, &d, None).0, 0, "no leak under 1h");

    conf.write("close-wait-leak-after = \"1s\"\nport-labels = 32\n");
    d.send(libc::SIGHUP);
    d.wait_log(&["reloaded close_wait_leak_after 3600s -> 1s"], 1);
    d.wait_for("the leak counted under the new threshold", |m| {
        m.sum("tcpstate_close_wait_leaked") == 1.0
    });
    // `tcpstate leaks` takes the daemon's threshold from its pins: the new one.
    assert_eq!(leaks_json(&p.srv, &d, None).0, 1, "the leak under 1s");

    // A setting that needs a restart: the whole reload is refused, the threshold stays 1s.
    conf.write("close-wait-leak-after = \"1h\"\nmax-flows = 1000\n");
    d.send(libc::SIGHUP);
    let line = d.wait_log(&["reload refused", "--max-flows", "needs a restart"], 1);
    assert!(line.contains("WARN"), "{line}");
    // A file that is no longer TOML: refused too, naming the file.
    conf.write("close-wait-leak-after = \n");
    d.send(libc::SIGHUP);
    d.wait_log(&["reload refused", "not valid TOML", &path], 1);
    std::thread::sleep(Duration::from_millis(500));
    d.assert_running();
    let m = d.metrics();
    assert_eq!(m.sum("tcpstate_close_wait_leaked"), 1.0, "{}", m.text);
    assert_eq!(leaks_json(&p.srv, &d, None).0, 1);

    // Every line is one JSON object (aya's own records included), none coloured.
    let log = d.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file:\n{log}"
    );
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

/// `--container-names` is read again on SIGHUP: a watched container's series take the new name
/// without a restart.
#[test]
fn sighup_relabels_containers_from_a_changed_names_file() {
    let b = BridgedHost::new("192.0.2.254/24");
    let c = b.container("c1", "tsvr1", "192.0.2.2/24");
    let names = Config::new("names");
    let entry = |name: &str| {
        format!(
            "[[container]]\nmatch = \"{}\"\ncontainer = \"{name}\"\n",
            c.name
        )
    };
    names.write(&entry("first"));
    let mut d = b.daemon(&[
        "--containers",
        "--container-resync",
        "1s",
        "--container-names",
        names.0.to_str().unwrap(),
    ]);
    let info = |m: &Metrics, name: &str| {
        m.try_get(
            "tcpstate_container_info",
            &[
                ("namespace", ""),
                ("pod", ""),
                ("container", name),
                ("container_id", ""),
            ],
        )
    };
    d.wait_for("the container under its first name", |m| {
        info(m, "first") == Some(1.0)
    });
    names.write(&entry("second"));
    d.send(libc::SIGHUP);
    d.wait_log(&["reloaded container_names"], 1);
    let m = d.wait_for("the container under its new name", |m| {
        info(m, "second") == Some(1.0)
    });
    assert_eq!(info(&m, "first"), None, "{}", m.text);
    d.assert_running();
}
