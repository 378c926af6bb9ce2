//! Container mode with real podman containers on the host's default bridge network: the daemon
//! runs in the machine's own namespace, as the DaemonSet runs it, and each container's counts are
//! compared with `ss -tan` run inside it (`nsenter -t PID -n`).

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::{
    harness::{eventually, sh, ss_counts, try_eventually, Daemon, BIN},
    support::podman::{Container, Podman},
};

/// A server that accepts and never closes: every connection its peers close stays in CLOSE_WAIT.
const LEAKY: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(64)
keep = []
while True:
    c, _ = s.accept()
    keep.append(c)
"#;

/// A veth pair in the machine's namespace for the daemon's host-mode attachment, so the test
/// leaves the real uplink alone. Deleted on drop.
struct RootVeth(String);

impl RootVeth {
    fn new() -> RootVeth {
        let a = format!("tspm{}a", std::process::id() % 10000);
        let b = format!("tspm{}b", std::process::id() % 10000);
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        sh(&["ip", "link", "set", &a, "up"]);
        RootVeth(a)
    }
}

impl Drop for RootVeth {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

/// Removes a directory tree on drop.
struct TempTree(std::path::PathBuf);

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_listening(c: &Container) {
    eventually(
        &format!("{} to listen on 8080", c.name),
        Duration::from_secs(20),
        || {
            let out = std::process::Command::new("nsenter")
                .args(["-t", &c.pid.to_string(), "-n", "ss", "-Htln"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(":8080") {
                Ok(())
            } else {
                Err(format!("{} never listened on 8080", c.name))
            }
        },
    );
}

/// `n` connections from the host that the host closes: CLOSE_WAIT in the container.
fn leak(c: &Container, n: usize) -> Vec<TcpStream> {
    let addr = format!("{}:8080", c.ip).parse().unwrap();
    for _ in 0..n {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        drop(s);
    }
    // And one that stays open.
    vec![TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap()]
}

fn assert_matches(d: &Daemon, c: &Container, labels: &str, checkpoint: &str) {
    let result = try_eventually(Duration::from_secs(10), || {
        let kernel = ss_counts(&c.ss(), None);
        let tracker = d.metrics().states_with(labels);
        if kernel == tracker && !kernel.is_empty() {
            Ok(())
        } else {
            Err(format!("tracker {tracker:?} != ss {kernel:?}"))
        }
    });
    if let Err(last) = result {
        panic!("at {checkpoint:?}, {}: {last}\n{}", c.name, d.log());
    }
}

fn leaks_json(d: &Daemon, filter: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .args(["leaks", "--json", "--older-than", "1s", "--pin-dir"])
        .arg(&d.pin_dir)
        .args(filter)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "leaks exits 1 with leaks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A podman container leaking CLOSE_WAIT since before the daemon started, and a "pod" whose
/// names come from a containerd state directory (as a Kubernetes node's would): both counted
/// exactly as `ss` inside them shows, their leaks named by container or pod, port and the host pid
/// of the process holding the sockets; the pod's series go when it is removed.
#[test]
fn podman_containers_are_counted_named_and_diagnosed() {
    let pm = Podman::new();
    let veth = RootVeth::new();
    let tag = std::process::id();

    let old = pm.run_python(&format!("tse2e-old-{tag}"), LEAKY);
    wait_listening(&old);
    let _old_open = leak(&old, 3);

    // The second container is a Kubernetes pod as far as the runtime state says: containerd's
    // task bundle for its id carries the CRI sandbox annotations. The rest of the host root is the
    // machine's (podman's own state, for the first container's name).
    let pod_name = format!("tse2e-pod-{tag}");
    let pod_id = pm.create_python(&pod_name, LEAKY);
    let root = TempTree(std::env::temp_dir().join(format!("tse2e-hostroot-{tag}")));
    let bundle = root
        .0
        .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
        .join(&pod_id);
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop"}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(root.0.join("var/lib")).unwrap();
    std::os::unix::fs::symlink("/var/lib/containers", root.0.join("var/lib/containers")).unwrap();

    let listen = format!("127.0.0.1:{}", 19000 + tag % 1000);
    let d = Daemon::start_root(
        "podman",
        &[
            "--iface",
            &veth.0,
            // The users' default resync (10s): a new container must be named by its first
            // process, not by the next resync.
            "--containers",
            "--close-wait-leak-after",
            "1s",
            "--host-root",
            root.0.to_str().unwrap(),
        ],
        &listen,
    );
    let old_labels = format!("namespace=\"\",pod=\"\",container=\"{}\"", old.name);
    d.wait_for("the older container watched", |m| {
        m.text
            .contains(&format!("tcpstate_container_info{{{old_labels}"))
    });
    // Seeded from its own socket table: exact from the first scrape that shows it.
    assert_matches(&d, &old, &old_labels, "a container older than the daemon");

    // Scraped every 20 ms from before the pod starts until its series appear: podman makes the
    // namespace and its veth before the pod's first process, and no scrape may show the pod under
    // the provisional name (netns-UUID) its mount has until then.
    let pod_labels = "namespace=\"shop\",pod=\"web-0\",container=\"\"";
    let named = std::sync::atomic::AtomicBool::new(false);
    let (pod, provisional) = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !named.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let text = d.raw_metrics();
                seen.extend(
                    text.lines()
                        .filter(|l| {
                            l.contains("container=\"netns-") || l.contains("container=\"cni-")
                        })
                        .map(str::to_string),
                );
                if text.contains(&format!("tcpstate_container_info{{{pod_labels}")) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        let started = Instant::now();
        let pod = pm.start(&pod_name);
        d.wait_for_within("the pod named", Duration::from_secs(5), |m| {
            m.text
                .contains(&format!("tcpstate_container_info{{{pod_labels}"))
        });
        eprintln!(
            "the pod's series appeared {:?} after `podman start`",
            started.elapsed()
        );
        named.store(true, std::sync::atomic::Ordering::Relaxed);
        (pod, watch.join().unwrap())
    });
    assert!(
        provisional.is_empty(),
        "series under a provisional name were exported: {provisional:?}"
    );
    wait_listening(&pod);
    let _pod_open = leak(&pod, 2);
    assert_matches(&d, &pod, pod_labels, "a pod started after the daemon");
    d.wait_for("both leaks past 1 s", |m| {
        m.try_get(
            "tcpstate_close_wait_leaked",
            &[
                ("port", "8080"),
                ("namespace", "shop"),
                ("pod", "web-0"),
                ("container", ""),
            ],
        ) == Some(2.0)
            && m.try_get(
                "tcpstate_close_wait_leaked",
                &[
                    ("port", "8080"),
                    ("namespace", ""),
                    ("pod", ""),
                    ("container", &old.name),
                ],
            ) == Some(3.0)
    });

    let v = leaks_json(&d, &["--pod", "shop/web-0"]);
    let l = v["leaks"].as_array().unwrap();
    assert_eq!(l.len(), 1, "{v:#}");
    assert_eq!(
        (l[0]["namespace"].as_str(), l[0]["pod"].as_str()),
        (Some("shop"), Some("web-0"))
    );
    assert_eq!(
        (l[0]["port"].as_u64(), l[0]["count"].as_u64()),
        (Some(8080), Some(2))
    );
    assert_eq!(l[0]["pid"].as_u64(), Some(pod.pid as u64), "{v:#}");
    assert_eq!(l[0]["command"], "python3");
    let v = leaks_json(&d, &["--container", &old.name]);
    let l = v["leaks"].as_array().unwrap();
    assert_eq!(l.len(), 1, "{v:#}");
    assert_eq!(l[0]["container"], old.name.as_str());
    assert_eq!(l[0]["pid"].as_u64(), Some(old.pid as u64), "{v:#}");
    assert_eq!(l[0]["count"].as_u64(), Some(3));
    // Nothing of either is a host endpoint.
    assert!(
        &d.metrics()
            .states_with("namespace=\"\",pod=\"\",container=\"\"")
            .is_empty(),
        "no host endpoints"
    );

    // The pod goes: its series within a resync or two.
    pod.remove();
    d.wait_for_within("the pod's series gone", Duration::from_secs(15), |m| {
        !m.text.contains("pod=\"web-0\"")
    });
    assert_matches(&d, &old, &old_labels, "after the pod is gone");
}
