//! The end-to-end harness: network namespaces joined by veth, the real daemon attached in one of
//! them, real sockets, and the kernel's own view (`ss -tan`) to compare against.
//!
//! Every resource is owned by a guard whose `Drop` removes it, so a failing (panicking) test still
//! deletes its namespaces, links and pins. Addresses are documentation ranges (192.0.2.0/24,
//! 2001:db8::/32) that exist only inside the namespaces a test creates.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

pub use crate::support::{eventually, promtool_check, try_eventually};

pub const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
pub const SERVER_V4: &str = "192.0.2.1";
pub const CLIENT_V4: &str = "192.0.2.2";
pub const SERVER_V6: &str = "2001:db8::1";
pub const CLIENT_V6: &str = "2001:db8::2";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command and panics with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's interpreter, which has python3-scapy (the first `python3` on PATH may be another).
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Runs a scapy script inside `ns` (crafted segments: forged sources, exact sequence numbers).
pub fn scapy(ns: &Netns, script: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, DEBIAN_PYTHON, "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scapy (Debian python3-scapy: `cargo xtask setup`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails loudly, naming what is missing, when the suite cannot run here.
pub fn require_privileges() {
    assert!(crate::support::is_root(), "the end-to-end tests need root (network namespaces, XDP, TC, bpffs): run `cargo xtask test` as root");
    for tool in ["ip", "ss", "nsenter", "promtool"] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .any(|d| std::path::Path::new(d).join(tool).exists());
        assert!(found, "{tool} is missing: run `cargo xtask setup` (Debian packages iproute2, util-linux, prometheus)");
    }
}

/// A network namespace, deleted (with every link in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "tse2e-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `sysctl -w KEY=VALUE` inside this namespace.
    pub fn sysctl(&self, setting: &str) {
        sh(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", setting]);
    }

    /// `ip -n NS ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates belong here.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// Non-LISTEN TCP sockets per state, as `ss -tan` shows them in this namespace.
    pub fn ss_states(&self) -> BTreeMap<String, i64> {
        self.ss_states_on(None)
    }

    /// As `ss_states`, counting only sockets whose local address is in `locals` (when given): the
    /// sockets whose segments cross the monitored interface.
    pub fn ss_states_on(&self, locals: Option<&[IpAddr]>) -> BTreeMap<String, i64> {
        ss_counts(
            &sh(&["ip", "netns", "exec", &self.name, "ss", "-Htan"]),
            locals,
        )
    }
}

/// A table of the test's own in a namespace's nftables: one base chain on `hook` (`input`,
/// `output`) holding one rule. Deleted, with everything in it, on drop.
pub struct NftTable {
    ns: String,
    table: &'static str,
}

impl NftTable {
    /// Adds table `table` with `rule` (nft's words, e.g. `["tcp", "sport", "80", "drop"]`).
    pub fn add(ns: &Netns, table: &'static str, hook: &str, rule: &[&str]) -> NftTable {
        let t = NftTable {
            ns: ns.name.clone(),
            table,
        };
        t.nft(&["add", "table", "inet", table]);
        let chain = format!("{{ type filter hook {hook} priority 0 ; policy accept ; }}");
        t.nft(&["add", "chain", "inet", table, Self::CHAIN, &chain]);
        let mut add = vec!["add", "rule", "inet", table, Self::CHAIN];
        add.extend_from_slice(rule);
        t.nft(&add);
        t
    }

    /// Not a word of nft's grammar.
    const CHAIN: &'static str = "main";

    fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.ns, "nft"];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Packets the rule's `counter` has matched (fails if the rule has none).
    #[allow(
        dead_code,
        reason = "the system benchmark checks its conntrack rule saw the traffic"
    )]
    pub fn counted_packets(&self) -> u64 {
        let out = self.nft(&["-j", "list", "table", "inet", self.table]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`nft -j list table`: {e}: {out}"));
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["rule"]["expr"].as_array())
            .flatten()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .unwrap_or_else(|| panic!("no counter in nft table {}: {out}", self.table))
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "delete", "table", "inet"])
            .arg(self.table)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("could not delete nft table {} in {}", self.table, self.ns);
        }
    }
}

/// Pins the calling thread to `cpu` (client and server threads that must share one CPU, or one
/// thread per CPU).
pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity(0) act on
    // this set and on the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Non-LISTEN sockets per state in `ss -Htan` output, counting only those whose local address is
/// in `locals` (when given).
pub fn ss_counts(out: &str, locals: Option<&[IpAddr]>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let mut cols = line.split_whitespace();
        let Some(state) = cols.next() else { continue };
        let local = cols
            .nth(2)
            .and_then(|l| l.rsplit_once(':'))
            .map(|(a, _)| a.trim_matches(['[', ']']));
        let local = local
            .map(|a| a.strip_prefix("::ffff:").unwrap_or(a))
            .and_then(|a| a.parse::<IpAddr>().ok());
        if let Some(locals) = locals {
            if !local.is_some_and(|a| locals.contains(&a)) {
                continue;
            }
        }
        let ours = match state {
            // LISTEN has no gauge. UNCONN is TCP_CLOSE: a socket the kernel has finished with
            // (its local port already released, hence `*`) that a process still holds or that
            // the dump caught mid-teardown. The tracker's CLOSED has no gauge either.
            "LISTEN" | "UNCONN" => continue,
            "SYN-SENT" => "syn_sent",
            "SYN-RECV" => "syn_recv",
            "ESTAB" => "established",
            "FIN-WAIT-1" => "fin_wait1",
            "FIN-WAIT-2" => "fin_wait2",
            "CLOSE-WAIT" => "close_wait",
            "CLOSING" => "closing",
            "LAST-ACK" => "last_ack",
            "TIME-WAIT" => "time_wait",
            other => panic!("unexpected ss state {other:?} in {line:?}"),
        };
        *m.entry(ours.to_string()).or_insert(0) += 1;
    }
    m
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Recv-Q and Send-Q of the TCP socket in `state` (ss's state filter: `established`,
/// `listening`...) on local port `port` in `ns`, as `ss -Htn` shows them: a listener's accept
/// queue and its limit, a connected socket's unread and unacknowledged bytes.
pub fn ss_queues(ns: &Netns, state: &str, port: u16) -> (u64, u64) {
    let sport = format!(":{port}");
    let out = sh(&[
        "ip", "netns", "exec", &ns.name, "ss", "-Htn", "state", state, "sport", "=", &sport,
    ]);
    // With one state asked for, ss leaves the state column out: Recv-Q comes first.
    let cols: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    match (
        cols.first().and_then(|c| c.parse().ok()),
        cols.get(1).and_then(|c| c.parse().ok()),
    ) {
        (Some(r), Some(s)) => (r, s),
        _ => panic!("no {state} socket on port {port} in:\n{out}"),
    }
}

/// A Python process in a namespace that says "ready" once set up, talks over its stdin and stdout,
/// and is killed on drop: the servers and clients scripted for a scenario.
pub struct Py(Child, BufReader<std::process::ChildStdout>);

impl Py {
    pub fn start(ns: &Netns, script: &str, args: &[&str]) -> Py {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut child = child;
        // One reader for the process's life: a reader per line would drop what it buffered past
        // its line (several lines arriving at once).
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut p = Py(child, out);
        assert_eq!(p.line(), "ready");
        p
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.1.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    pub fn say(&mut self, what: &str) {
        let stdin = self.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{what}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A "host" namespace with a bridge `br0` holding `addr` (CIDR), and "containers" joined to it as
/// Docker, podman and CNI join theirs: each a namespace whose eth0 is the peer of a veth that is a
/// port of the bridge. Forwarding is off in the host, so what reaches it for no local address is
/// dropped without an answer.
pub struct BridgedHost {
    pub host: Netns,
}

impl BridgedHost {
    pub fn new(addr: &str) -> BridgedHost {
        let host = Netns::new("host");
        host.sysctl("net.ipv4.ip_forward=0");
        host.ip(&["link", "add", "br0", "type", "bridge"]);
        host.ip(&["addr", "add", addr, "dev", "br0"]);
        host.ip(&["link", "set", "br0", "up"]);
        BridgedHost { host }
    }

    /// A container on the bridge: `host_if` on the host's side, eth0 with `addr` (CIDR) inside.
    pub fn container(&self, tag: &str, host_if: &str, addr: &str) -> Netns {
        let ns = Netns::new(tag);
        sh(&[
            "ip",
            "link",
            "add",
            host_if,
            "netns",
            &self.host.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        self.host
            .ip(&["link", "set", host_if, "master", "br0", "up"]);
        ns.ip(&["addr", "add", addr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A daemon in the host namespace with `args`, scraped over the host's lo.
    pub fn daemon(&self, args: &[&str]) -> Daemon {
        Daemon::start(
            &self.host,
            args,
            Opts {
                listen: "127.0.0.1:9477",
                scrape_from: None,
                scope: None,
            },
        )
    }
}

/// Two namespaces, `srv` and `cli`, joined by a veth pair with IPv4 and IPv6 addresses.
pub struct Pair {
    pub srv: Netns,
    pub cli: Netns,
    pub srv_if: String,
    pub cli_if: String,
}

impl Pair {
    pub fn new() -> Pair {
        let srv = Netns::new("srv");
        let cli = Netns::new("cli");
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (s, c) = (
            format!("tsv{}s{n}", std::process::id() % 1000),
            format!("tsv{}c{n}", std::process::id() % 1000),
        );
        // Created directly inside the namespaces: nothing is left on the host if a step fails.
        sh(&[
            "ip", "link", "add", &s, "netns", &srv.name, "type", "veth", "peer", "name", &c,
            "netns", &cli.name,
        ]);
        for (ns, dev, v4, v6) in [
            (&srv, &s, SERVER_V4, SERVER_V6),
            (&cli, &c, CLIENT_V4, CLIENT_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        Pair {
            srv,
            cli,
            srv_if: s,
            cli_if: c,
        }
    }

    /// Names of the programs on the server interface's TCX hooks (ingress, then egress).
    pub fn tcx_programs(&self) -> Vec<String> {
        let iface = self.srv_if.clone();
        self.srv.enter(move || {
            use aya::programs::{tc::TcAttachType, SchedClassifier};
            [TcAttachType::Ingress, TcAttachType::Egress]
                .into_iter()
                .flat_map(|at| SchedClassifier::query_tcx(&iface, at).expect("query tcx").1)
                .map(|info| info.name_as_str().unwrap_or("?").to_string())
                .collect()
        })
    }

    pub fn listen(&self, ip: &str, port: u16) -> TcpListener {
        listen_in(
            &self.srv,
            &SocketAddr::new(ip.parse().unwrap(), port).to_string(),
        )
    }

    pub fn connect(&self, ip: &str, port: u16) -> TcpStream {
        connect_in(&self.cli, ip, port)
    }
}

/// Tun devices joining two namespaces, `name` in each, and the relay thread of this process that
/// carries packets between them: the path has no link-layer header anywhere (packets start at the
/// IP header, as on WireGuard or an IP tunnel). Dropping it stops and joins the relay, which
/// closes the descriptors and so removes both devices; declare it before the namespaces it joins.
pub struct TunLink {
    relay: crate::support::tun::Relay,
}

impl TunLink {
    /// Joins `a` and `b` by tun devices called `name`, with addresses `a_addrs` and `b_addrs`
    /// (IPv4 then IPv6, each with its prefix length), up.
    pub fn new(
        a: &Netns,
        b: &Netns,
        name: &str,
        a_addrs: [&str; 2],
        b_addrs: [&str; 2],
    ) -> TunLink {
        use crate::support::tun::{Relay, Tun};
        let ta = Tun::create(&format!("/run/netns/{}", a.name), name);
        let tb = Tun::create(&format!("/run/netns/{}", b.name), name);
        // The relay owns the devices from here: a failing step below still removes them.
        let link = TunLink {
            relay: Relay::start(ta, tb),
        };
        for (ns, [v4, v6]) in [(a, a_addrs), (b, b_addrs)] {
            ns.ip(&["addr", "add", v4, "dev", name]);
            ns.ip(&["addr", "add", v6, "dev", name, "nodad"]);
            ns.ip(&["link", "set", name, "up"]);
        }
        link
    }

    /// Packets the relay has carried, both directions.
    pub fn relayed(&self) -> u64 {
        self.relay.relayed()
    }
}

/// As `Pair`, joined by tun devices (`srv_if` in both) instead of a veth, with the same addresses.
pub struct TunPair {
    /// First, so it is dropped first: the relay stops before the namespaces go.
    pub link: TunLink,
    pub srv: Netns,
    pub cli: Netns,
    pub srv_if: String,
}

impl TunPair {
    pub fn new() -> TunPair {
        let srv = Netns::new("tunsrv");
        let cli = Netns::new("tuncli");
        let name = "tun0";
        let link = TunLink::new(
            &srv,
            &cli,
            name,
            [&format!("{SERVER_V4}/24"), &format!("{SERVER_V6}/64")],
            [&format!("{CLIENT_V4}/24"), &format!("{CLIENT_V6}/64")],
        );
        TunPair {
            link,
            srv,
            cli,
            srv_if: name.to_string(),
        }
    }
}

/// A listener bound inside `ns` on `addr` (`ip:port`, `[v6]:port`).
pub fn listen_in(ns: &Netns, addr: &str) -> TcpListener {
    let a: SocketAddr = addr.parse().unwrap();
    ns.enter(move || TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}")))
}

pub fn connect_in(ns: &Netns, ip: &str, port: u16) -> TcpStream {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    ns.enter(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    })
}

/// Sends `msg` one way and reads it on the other side, so both directions carry data and ACKs.
pub fn exchange(a: &mut TcpStream, b: &mut TcpStream, msg: &[u8]) {
    a.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

/// Closes with SO_LINGER {on, 0}: the kernel aborts with an RST instead of a FIN.
pub fn abort(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0);
    drop(s);
}

/// The daemon, running in a namespace. Stopped (SIGTERM) and its pins removed on drop.
pub struct Daemon {
    child: Option<Child>,
    /// Namespace the scrapes come from (a path that opens it), and the address they go to.
    scrape_ns: String,
    listen: SocketAddr,
    /// Local addresses whose sockets the tracker sees (host mode on a veth); `None`: all (tap on lo).
    scope: Option<Vec<IpAddr>>,
    pub pin_dir: PathBuf,
    log: PathBuf,
    /// Leave the pinned maps on drop (a restart test hands them to the next daemon).
    keep_pins: bool,
}

/// Where a daemon listens and who scrapes it.
pub struct Opts<'a> {
    pub listen: &'a str,
    /// Scrape from this namespace instead of the daemon's (so scrapes do not cross a monitored lo).
    pub scrape_from: Option<&'a Netns>,
    pub scope: Option<Vec<IpAddr>>,
}

impl Daemon {
    /// A host-mode daemon on the server side of `p`, scraped over the server namespace's lo.
    pub fn host(p: &Pair, args: &[&str]) -> Daemon {
        Self::host_pinned(
            p,
            args,
            PathBuf::from(format!("/sys/fs/bpf/{}", p.srv.name)),
        )
    }

    /// As `host`, with the pin directory given (a restarted daemon reuses its predecessor's).
    pub fn host_pinned(p: &Pair, args: &[&str], pin_dir: PathBuf) -> Daemon {
        let mut all = vec!["--iface", p.srv_if.as_str()];
        all.extend_from_slice(args);
        let scope = Some(vec![ip(SERVER_V4), ip(SERVER_V6)]);
        let opts = Opts {
            listen: "127.0.0.1:9477",
            scrape_from: None,
            scope,
        };
        Self::start_pinned(&p.srv, &all, opts, pin_dir)
    }

    /// A host-mode daemon on the client side of `p`, scraped over the client namespace's lo.
    pub fn host_client(p: &Pair, args: &[&str]) -> Daemon {
        let mut all = vec!["--iface", p.cli_if.as_str()];
        all.extend_from_slice(args);
        let opts = Opts {
            listen: "127.0.0.1:9477",
            scrape_from: None,
            scope: Some(vec![ip(CLIENT_V4), ip(CLIENT_V6)]),
        };
        Self::start(&p.cli, &all, opts)
    }

    pub fn start(ns: &Netns, args: &[&str], opts: Opts) -> Daemon {
        Self::start_pinned(
            ns,
            args,
            opts,
            PathBuf::from(format!("/sys/fs/bpf/{}", ns.name)),
        )
    }

    pub fn start_pinned(ns: &Netns, args: &[&str], opts: Opts, pin_dir: PathBuf) -> Daemon {
        let scrape = format!("/run/netns/{}", opts.scrape_from.unwrap_or(ns).name);
        Self::start_at(
            &format!("/run/netns/{}", ns.name),
            &ns.name,
            args,
            (opts.listen, opts.scope, scrape),
            pin_dir,
        )
    }

    /// A daemon in the machine's own network namespace (container mode with real containers,
    /// whose veths are there), scraped from it on `listen`.
    pub fn start_root(tag: &str, args: &[&str], listen: &str) -> Daemon {
        let name = format!("tse2e-{}-{tag}", std::process::id());
        // The test process's own namespace (pid 1's may not be ours to open).
        let own = format!("/proc/{}/ns/net", std::process::id());
        Self::start_at(
            &own,
            &name,
            args,
            (listen, None, own.clone()),
            PathBuf::from(format!("/sys/fs/bpf/{name}")),
        )
    }

    fn start_at(
        netns: &str,
        tag: &str,
        args: &[&str],
        (listen, scope, scrape_ns): (&str, Option<Vec<IpAddr>>, String),
        pin_dir: PathBuf,
    ) -> Daemon {
        require_privileges();
        let log = std::env::temp_dir().join(format!("{tag}.log"));
        let log_file = File::create(&log).unwrap();
        // nsenter --net, not `ip netns exec`: the latter remounts /sys and hides bpffs.
        let child = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .arg(BIN)
            .args(["--log", "debug", "run", "--listen", listen, "--pin-dir"])
            .arg(&pin_dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn tcpstate");
        let mut d = Daemon {
            child: Some(child),
            scrape_ns,
            listen: listen.parse().expect("listen address"),
            scope,
            pin_dir,
            log,
            keep_pins: false,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        eventually(
            "tcpstate to serve /metrics",
            Duration::from_secs(30),
            || {
                if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!(
                        "tcpstate exited ({st}) before serving /metrics:\n{}",
                        self.log()
                    );
                }
                // The daemon logs this once its programs are attached, just before it accepts; a
                // daemon behind TLS or basic auth (--web-config) does not answer a plain scrape.
                let log = self.log();
                if log.contains("serving /metrics") || self.try_get("/metrics").is_some() {
                    Ok(())
                } else {
                    Err(format!("its log:\n{log}"))
                }
            },
        )
    }

    /// The daemon's process id (nsenter execs it, so this is tcpstate itself).
    #[allow(
        dead_code,
        reason = "the system benchmark reads the daemon's CPU and memory"
    )]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_get(&self, path: &str) -> Option<String> {
        let path = path.to_string();
        let ns = self.scrape_ns.clone();
        let listen = self.listen;
        std::thread::spawn(move || {
            let f = File::open(&ns).ok()?;
            // SAFETY: as in Netns::enter.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            crate::support::http::get_ok(listen, "e2e", &path)
        })
        .join()
        .ok()
        .flatten()
    }

    pub fn metrics(&self) -> Metrics {
        Metrics::parse(
            &self
                .try_get("/metrics")
                .unwrap_or_else(|| panic!("no /metrics:\n{}", self.log())),
        )
    }

    pub fn raw_metrics(&self) -> String {
        self.try_get("/metrics")
            .unwrap_or_else(|| panic!("no /metrics:\n{}", self.log()))
    }

    /// Waits until the tracker's per-state connection counts equal `ss -tan` in `ns`, and still do
    /// 100 ms later: a checkpoint must not pass on a transient state (FIN_WAIT_1 and LAST_ACK last
    /// until the peer's ACK, often tens of milliseconds).
    pub fn assert_matches_kernel(&self, ns: &Netns, checkpoint: &str) {
        self.assert_agrees(
            checkpoint,
            Duration::from_secs(5),
            || ns.ss_states_on(self.scope.as_deref()),
            |m| m.states(),
        );
    }

    /// Waits until the tracker's per-state counts (`tracker`, read from a scrape) equal the
    /// kernel's (`kernel`, from `ss`), and still do 100 ms later; panics with both and the
    /// daemon's log after `within`. The one comparison every checkpoint uses (the host's, a
    /// container's series against `ss` inside it).
    pub fn assert_agrees(
        &self,
        checkpoint: &str,
        within: Duration,
        kernel: impl Fn() -> BTreeMap<String, i64>,
        tracker: impl Fn(&Metrics) -> BTreeMap<String, i64>,
    ) {
        let mut agreed: Option<BTreeMap<String, i64>> = None;
        let result = try_eventually(within, || {
            let kernel = kernel();
            let tracker = tracker(&self.metrics());
            if kernel != tracker {
                agreed = None;
                return Err(format!(
                    "tracker {tracker:?} != kernel (ss -tan) {kernel:?}"
                ));
            }
            if agreed.as_ref() == Some(&kernel) {
                return Ok(());
            }
            agreed = Some(kernel);
            std::thread::sleep(Duration::from_millis(100));
            Err("agreed once; looking again".to_string())
        });
        if let Err(last) = result {
            panic!("at {checkpoint:?}: {last}\ndaemon log:\n{}", self.log());
        }
    }

    /// `tcpstate flows --json` on this daemon's pinned maps, with `filters`: one object per flow.
    pub fn flows(&self, filters: &[&str]) -> Vec<serde_json::Value> {
        let out = Command::new(BIN)
            .args(["flows", "--json", "--pin-dir"])
            .arg(&self.pin_dir)
            .args(filters)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tcpstate flows {filters:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match serde_json::from_slice(&out.stdout) {
            Ok(serde_json::Value::Array(flows)) => flows,
            other => panic!("tcpstate flows --json gave no array: {other:?}"),
        }
    }

    /// Waits until `pred` holds for the metrics, or panics with `what` and the last metrics.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        self.wait_for_within(what, Duration::from_secs(10), pred)
    }

    /// As `wait_for`, with the deadline given.
    pub fn wait_for_within(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        eventually(what, within, || {
            let m = self.metrics();
            if pred(&m) {
                Ok(m)
            } else {
                Err(format!("metrics:\n{}", m.text))
            }
        })
    }

    /// Sends `sig` to the running daemon and returns at once (SIGHUP: a reload).
    pub fn send(&self, sig: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
    }

    /// Panics with the log when the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.child.as_mut().expect("running").try_wait().unwrap() {
            panic!("tcpstate exited ({st}):\n{}", self.log());
        }
    }

    /// Waits until the log has `count` lines containing every one of `words`, and returns the
    /// last of them.
    pub fn wait_log(&self, words: &[&str], count: usize) -> String {
        eventually(
            &format!("{count} log lines with {words:?}"),
            Duration::from_secs(10),
            || {
                let log = self.log();
                let found: Vec<&str> = log
                    .lines()
                    .filter(|l| words.iter().all(|w| l.contains(w)))
                    .collect();
                match found.last() {
                    Some(last) if found.len() >= count => Ok(last.to_string()),
                    _ => Err(format!("its log:\n{log}")),
                }
            },
        )
    }

    /// SIGTERM; the pinned maps stay (the caller checks or removes them).
    pub fn stop_keep_pins(self) -> std::process::ExitStatus {
        self.signal_keep_pins(libc::SIGTERM)
    }

    /// Sends `sig` and waits; the pinned maps stay for the next daemon.
    pub fn signal_keep_pins(mut self, sig: i32) -> std::process::ExitStatus {
        self.keep_pins = true;
        self.signal(sig)
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        if self.keep_pins {
            return;
        }
        let _ = Command::new(BIN)
            .args(["cleanup", "--pin-dir"])
            .arg(&self.pin_dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// A parsed /metrics body: samples keyed by name and sorted label pairs.
pub struct Metrics {
    pub text: String,
    pub samples: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            text: text.to_string(),
            samples: crate::support::exposition::samples(text),
        }
    }

    /// The value of `name{labels}` with labels given in the exposition's (alphabetical) order,
    /// e.g. `get("tcpstate_connections", &[("role", "server"), ("state", "established")])`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.try_get(name, labels)
            .unwrap_or_else(|| panic!("no sample {} in:\n{}", series(name, labels), self.text))
    }

    /// As `get`, `None` when the series is absent (for predicates that wait for it to appear).
    pub fn try_get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&series(name, labels)).copied()
    }

    /// Every series of a metric, summed.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }

    /// Non-zero `tcpstate_connections` summed over roles, per state.
    /// Panics when the scrape has no `tcpstate_connections` series at all: the host's are always
    /// exported (zeros included), so a missing family is a daemon that stopped exporting, never
    /// "nothing open" (which a comparison with an idle `ss` would otherwise take it for).
    pub fn states(&self) -> BTreeMap<String, i64> {
        assert!(
            self.samples
                .keys()
                .any(|k| k.starts_with("tcpstate_connections{")),
            "no tcpstate_connections series in the scrape:\n{}",
            self.text
        );
        let mut m = BTreeMap::new();
        for (k, v) in &self.samples {
            if let Some(rest) = k.strip_prefix("tcpstate_connections{") {
                let state = rest
                    .split("state=\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .expect("state label");
                if *v != 0.0 {
                    *m.entry(state.to_string()).or_insert(0) += *v as i64;
                }
            }
        }
        m
    }

    /// Non-zero `tcpstate_connections` of the series whose labels include `labels` (e.g.
    /// `container="web"`, or a whole `namespace="",pod="",container=""` run), per state.
    pub fn states_with(&self, labels: &str) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for (k, v) in &self.samples {
            let Some(rest) = k.strip_prefix("tcpstate_connections{") else {
                continue;
            };
            if !rest.contains(labels) || *v == 0.0 {
                continue;
            }
            let state = rest
                .split("state=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("state label");
            *m.entry(state.to_string()).or_insert(0) += *v as i64;
        }
        m
    }

    pub fn connections(&self, role: &str, state: &str) -> f64 {
        self.get("tcpstate_connections", &[("role", role), ("state", state)])
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// A flow's endpoint from `tcpstate flows --json`: the local one (`local`) or the remote one.
pub fn endpoint(flow: &serde_json::Value, local: bool) -> &serde_json::Value {
    if flow["a"]["local"] == local {
        &flow["a"]
    } else {
        &flow["b"]
    }
}

/// The port of an endpoint from `tcpstate flows --json` (`"addr:port"` or `"[v6]:port"`).
pub fn endpoint_port(endpoint: &serde_json::Value) -> u16 {
    let text = endpoint["endpoint"].as_str().expect("an endpoint string");
    let (_, port) = text.rsplit_once(':').expect("addr:port");
    port.parse().expect("a port number")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
