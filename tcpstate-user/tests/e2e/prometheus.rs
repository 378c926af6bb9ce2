//! A real Prometheus server scrapes the daemon, with deploy/prometheus/tcpstate-rules.yml loaded:
//! a leaked CLOSE_WAIT shows up in Prometheus's own queries, the leak alert goes pending on the
//! right port, every rule evaluates cleanly, and every query of the Grafana dashboard
//! (deploy/grafana/tcpstate.json) returns data.

use std::{
    collections::BTreeSet,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::harness::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROM_LISTEN: &str = "127.0.0.1:9090";
const LEAK_PORT: u16 = 7070;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
        .canonicalize()
        .unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// A Prometheus server in a namespace, scraping the daemon every second. Killed, and its
/// configuration and TSDB removed, on drop.
struct Prometheus {
    child: Option<Child>,
    ns: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(ns: &Netns) -> Prometheus {
        Self::start_with(ns, "")
    }

    /// As `start`, with `job` added to the tcpstate scrape job's settings (scheme, auth, TLS).
    fn start_with(ns: &Netns, job: &str) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: run `cargo xtask setup` (Debian package prometheus)"
        );
        let dir = std::env::temp_dir().join(format!("tcpstate-prometheus-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tcpstate\n{job}    static_configs:\n      - targets: ['127.0.0.1:9477']\n",
            deploy("prometheus/tcpstate-rules.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, PROMETHEUS])
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROM_LISTEN}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            child: Some(child),
            ns: ns.name.clone(),
            dir,
        };
        p.wait_ready();
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let ready = try_eventually(Duration::from_secs(30), || {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("prometheus exited ({st}):\n{}", self.log());
            }
            match self.try_get("/-/ready") {
                Some((200, _)) => Ok(()),
                _ => Err(()),
            }
        });
        if ready.is_err() {
            panic!("prometheus not ready within 30s:\n{}", self.log());
        }
    }

    /// GET `path` from inside the namespace: (status, body), `None` if nothing answers.
    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let ns = format!("/run/netns/{}", self.ns);
        let path = path.to_string();
        std::thread::spawn(move || {
            let f = File::open(&ns).ok()?;
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let r = crate::support::http::get(PROM_LISTEN.parse().unwrap(), "prometheus", &path)?;
            Some((r.status, r.body))
        })
        .join()
        .ok()
        .flatten()
    }

    /// The `data` of a successful API call.
    fn api(&self, path: &str) -> Value {
        let (status, body) = self
            .try_get(path)
            .unwrap_or_else(|| panic!("no answer from prometheus for {path}:\n{}", self.log()));
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "{path}: HTTP {status}: {body}"
        );
        v["data"].clone()
    }

    /// The instant-query result vector of `promql`.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(promql)));
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single sample `promql` returns, `None` while it returns no series.
    fn single(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql}: more than one series: {r:?}");
        r.first().map(|s| value(s, promql))
    }

    fn wait_until(&self, what: &str, mut pred: impl FnMut(&Prometheus) -> bool) {
        let met = try_eventually(Duration::from_secs(60), || {
            if pred(self) {
                Ok(())
            } else {
                Err(())
            }
        });
        if met.is_err() {
            panic!(
                "timed out waiting for {what}; prometheus log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs prometheus: the child is prometheus itself.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            // Up to 10 s to exit on its own; killed after that.
            let _ = try_eventually(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().map(|_| ()).ok_or(())
            });
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn value(sample: &Value, what: &str) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no value in {sample}"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The rules of deploy/prometheus/tcpstate-rules.yml, by name (from Prometheus's own view).
fn tcpstate_group(prom: &Prometheus) -> Value {
    let data = prom.api("/api/v1/rules");
    let groups = data["groups"].as_array().expect("groups");
    let g = groups
        .iter()
        .find(|g| g["name"] == "tcpstate")
        .unwrap_or_else(|| panic!("no rule group tcpstate in {data}"));
    g.clone()
}

#[test]
fn prometheus_scrapes_the_leak_and_evaluates_the_rules_and_dashboard() {
    let p = Pair::new();
    let d = Daemon::host(
        &p,
        &["--close-wait-leak-after", "1s", "--sweep-interval", "100ms"],
    );
    let prom = Prometheus::start(&p.srv);

    // A server that accepts, sees the client close, and never closes its socket.
    let listener = p.listen(SERVER_V4, LEAK_PORT);
    let client = p.connect(SERVER_V4, LEAK_PORT);
    let (_leaked, _) = listener.accept().unwrap();
    drop(client);
    // A connection the daemon's namespace opens itself (to a listener in the client namespace):
    // a client endpoint, so the client ports panel has a destination to show.
    let outbound = listen_in(&p.cli, &format!("{CLIENT_V4}:5432"));
    let _out = connect_in(&p.srv, CLIENT_V4, 5432);
    let (_out_peer, _) = outbound.accept().unwrap();

    let port = LEAK_PORT.to_string();
    prom.wait_until("up{job=\"tcpstate\"} == 1", |pr| {
        pr.single(r#"up{job="tcpstate"}"#) == Some(1.0)
    });
    prom.wait_until("one server endpoint in CLOSE_WAIT", |pr| {
        pr.single(r#"tcpstate_connections{state="close_wait",role="server"}"#) == Some(1.0)
    });
    let leaked = format!(r#"tcpstate_close_wait_leaked{{port="{port}"}}"#);
    prom.wait_until(&format!("{leaked} == 1"), |pr| {
        pr.single(&leaked) == Some(1.0)
    });
    // The daemon agrees with what Prometheus stored.
    let m = d.metrics();
    assert_eq!(m.connections("server", "close_wait"), 1.0);
    assert_eq!(m.get("tcpstate_close_wait_leaked", &[("port", &port)]), 1.0);
    let up = prom.query(r#"up{job="tcpstate"}"#);
    assert_eq!(up[0]["metric"]["instance"], "127.0.0.1:9477");

    // The rules loaded from the deploy file, all of them, and each evaluates without error.
    let g = tcpstate_group(&prom);
    assert!(
        g["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("deploy/prometheus/tcpstate-rules.yml")),
        "{g}"
    );
    let names: BTreeSet<String> = g["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = crate::support::ALERTS
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(names, want);
    prom.wait_until("every tcpstate rule evaluated with health ok", |pr| {
        tcpstate_group(pr)["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["health"] == "ok")
    });

    // The leak alert matches the real series: pending (its `for` is 10m) on this port only.
    prom.wait_until("TcpstateCloseWaitLeak pending", |pr| {
        let g = tcpstate_group(pr);
        let rule = g["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "TcpstateCloseWaitLeak")
            .cloned()
            .unwrap();
        rule["state"] == "pending"
    });
    let g = tcpstate_group(&prom);
    for r in g["rules"].as_array().unwrap() {
        let alerts = r["alerts"].as_array().cloned().unwrap_or_default();
        if r["name"] == "TcpstateCloseWaitLeak" {
            assert_eq!(alerts.len(), 1, "{r}");
            let a = &alerts[0];
            assert_eq!(a["state"], "pending");
            assert_eq!(a["labels"]["port"], port.as_str());
            assert_eq!(a["labels"]["instance"], "127.0.0.1:9477");
            assert_eq!(a["labels"]["severity"], "warning");
            assert_eq!(
                a["annotations"]["summary"],
                format!("CLOSE_WAIT leak on port {port} of 127.0.0.1:9477")
            );
        } else {
            // An idle, healthy daemon: nothing else is even pending.
            assert!(alerts.is_empty(), "{} has alerts: {r}", r["name"]);
        }
    }

    // Every dashboard query returns data, as Grafana would send it with instance = All.
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/tcpstate.json")).unwrap())
            .unwrap();
    // Rates need two samples in their window: a few scrapes in.
    std::thread::sleep(Duration::from_secs(3));
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for t in panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "10s")
                .replace("$instance", ".*")
                // The scope variables at All, as Grafana sends them (host mode has no such
                // labels, which `.*` matches as empty).
                .replace("$namespace", ".*")
                .replace("$pod", ".*")
                .replace("$container", ".*");
            let r = prom.query(&expr);
            assert!(!r.is_empty(), "panel {title:?}: {expr} returned no series");
            checked += 1;
            let expected = match title {
                "Exporters up" | "CLOSE_WAIT" | "Leaked CLOSE_WAIT" => Some(1.0),
                "Untracked flows/s" => Some(0.0),
                _ => None,
            };
            if let Some(want) = expected {
                assert_eq!(r.len(), 1, "panel {title:?}: {r:?}");
                assert_eq!(value(&r[0], title), want, "panel {title:?}: {expr}");
            }
        }
    }
    assert!(checked >= 10, "only {checked} dashboard queries");
    drop(prom);
    drop(listener);
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The endpoint secured the way node_exporter users do it: TLS with client certificates and a
/// bcrypt basic-auth user, in exporter-toolkit's web config; a real Prometheus scrapes it with the
/// matching scrape settings and sees the leak.
#[test]
fn prometheus_scrapes_over_tls_with_a_client_certificate_and_basic_auth() {
    let p = Pair::new();
    let dir = std::env::temp_dir().join(format!("tcpstate-webconfig-{}", p.srv.name));
    std::fs::create_dir_all(&dir).unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  prometheus: {hash}\n",
            fixture("server.pem"),
            fixture("server-key.pem"),
            fixture("ca.pem"),
        ),
    )
    .unwrap();
    let d = Daemon::host(
        &p,
        &[
            "--close-wait-leak-after",
            "1s",
            "--sweep-interval",
            "100ms",
            "--web-config",
            web.to_str().unwrap(),
        ],
    );
    let job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n    basic_auth:\n      username: prometheus\n      password: s3cret\n",
        fixture("ca.pem"),
        fixture("client.pem"),
        fixture("client-key.pem"),
    );
    let prom = Prometheus::start_with(&p.srv, &job);
    let listener = p.listen(SERVER_V4, LEAK_PORT);
    let client = p.connect(SERVER_V4, LEAK_PORT);
    let (_leaked, _) = listener.accept().unwrap();
    drop(client);
    prom.wait_until("up{job=\"tcpstate\"} == 1 over TLS", |pr| {
        pr.single(r#"up{job="tcpstate"}"#) == Some(1.0)
    });
    let leaked = format!(r#"tcpstate_close_wait_leaked{{port="{LEAK_PORT}"}}"#);
    prom.wait_until(&format!("{leaked} == 1"), |pr| {
        pr.single(&leaked) == Some(1.0)
    });
    drop(prom);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
