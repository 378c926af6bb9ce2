//! Container mode with network-namespace fixtures: a "host" namespace runs the daemon with
//! `--containers`; "containers" are namespaces joined to it by veth, as Docker, podman and CNI
//! join theirs. Every container's counts are compared with `ss -tan` run inside it.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::harness::{listen_in, sh, try_eventually, Daemon, Netns, Opts};

/// The daemon's namespace, with an interface for its host-mode attachment (a veth whose peer is
/// in the same namespace: no container's; this kernel has no dummy driver).
fn host() -> (Netns, String) {
    let h = Netns::new("host");
    let uplink = "tsup0".to_string();
    h.ip(&[
        "link", "add", &uplink, "type", "veth", "peer", "name", "tsup1",
    ]);
    h.ip(&["link", "set", &uplink, "up"]);
    h.ip(&["link", "set", "tsup1", "up"]);
    (h, uplink)
}

/// A bridge on the host, as container networks have (L2 only unless given an address).
fn bridge(h: &Netns, name: &str, addr: Option<&str>) {
    h.ip(&["link", "add", name, "type", "bridge"]);
    if let Some(a) = addr {
        h.ip(&["addr", "add", a, "dev", name]);
    }
    h.ip(&["link", "set", name, "up"]);
}

/// A container: a namespace whose eth0 is the peer of `host_if` on the host's bridge `br`.
fn container(h: &Netns, tag: &str, host_if: &str, br: &str, addr: &str) -> Netns {
    container_at(h, tag, host_if, None, br, addr)
}

/// [`container`], with `host_if` at the ifindex `index` when given: a host that has made tens of
/// thousands of interfaces gives its new veths ifindexes past the programs' direct array
/// ([`tcpstate_common::scope::DIRECT_IFINDEXES`]), which they look up in the scope hash map.
fn container_at(
    h: &Netns,
    tag: &str,
    host_if: &str,
    index: Option<u32>,
    br: &str,
    addr: &str,
) -> Netns {
    let c = Netns::new(tag);
    let index = index.map(|i| i.to_string());
    let mut cmd = vec!["ip", "link", "add", host_if];
    if let Some(i) = &index {
        cmd.extend(["index", i.as_str()]);
    }
    cmd.extend([
        "netns", &h.name, "type", "veth", "peer", "name", "eth0", "netns", &c.name,
    ]);
    sh(&cmd);
    h.ip(&["link", "set", host_if, "master", br, "up"]);
    c.ip(&["addr", "add", addr, "dev", "eth0"]);
    c.ip(&["link", "set", "eth0", "up"]);
    c
}

fn daemon(h: &Netns, dummy: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--iface", dummy, "--containers", "--container-resync", "1s"];
    args.extend_from_slice(extra);
    Daemon::start(
        h,
        &args,
        Opts {
            listen: "127.0.0.1:9477",
            scrape_from: None,
            scope: None,
        },
    )
}

/// Waits until a container's series equal `ss -tan` inside it, twice in a row.
fn assert_container_matches(d: &Daemon, c: &Netns, checkpoint: &str) {
    let label = format!("container=\"{}\"", c.name);
    d.assert_agrees(
        &format!("{checkpoint}, container {}", c.name),
        Duration::from_secs(10),
        || c.ss_states(),
        |m| m.states_with(&label),
    );
}

/// Connects from a fixed source port, so two namespaces can hold the very same 5-tuple.
fn connect_from(ns: &Netns, local: &str, remote: &str) -> TcpStream {
    let (local, remote): (SocketAddr, SocketAddr) =
        (local.parse().unwrap(), remote.parse().unwrap());
    ns.enter(move || {
        // SAFETY: plain socket calls on a descriptor this closure owns until it becomes a stream.
        unsafe {
            use std::os::fd::FromRawFd;
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let sa = |a: SocketAddr| {
                let SocketAddr::V4(v4) = a else {
                    panic!("IPv4 only")
                };
                libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                }
            };
            let l = sa(local);
            let r = sa(remote);
            let len = size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(
                libc::bind(fd, (&l as *const libc::sockaddr_in).cast(), len),
                0,
                "bind {local}: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::connect(fd, (&r as *const libc::sockaddr_in).cast(), len),
                0,
                "connect {remote}: {}",
                std::io::Error::last_os_error()
            );
            TcpStream::from_raw_fd(fd)
        }
    })
}

fn wait_attached(d: &Daemon, interfaces: f64) {
    d.wait_for(
        &format!("{interfaces} container interfaces attached"),
        |m| m.try_get("tcpstate_container_interfaces", &[]) == Some(interfaces),
    );
}

/// Two pairs of containers on two bridges hold the very same 5-tuple; each endpoint is counted
/// once, in its own container, and equals `ss` there. A CLOSE_WAIT leak is named by container,
/// port and process; a removed container's series go away.
#[test]
fn containers_are_counted_apart_named_and_removed() {
    let (h, dummy) = host();
    bridge(&h, "tsbr1", None);
    bridge(&h, "tsbr2", None);
    let c1 = container(&h, "c1", "tsvc1", "tsbr1", "192.0.2.2/24");
    let p1 = container(&h, "p1", "tsvp1", "tsbr1", "192.0.2.1/24");
    // Pair 2's veths at ifindexes past the programs' direct array: the same tuple, in both pairs,
    // with the scope read from the array in one and from the hash map in the other.
    let high = tcpstate_common::scope::DIRECT_IFINDEXES + 1000;
    let c2 = container_at(&h, "c2", "tsvc2", Some(high), "tsbr2", "192.0.2.2/24");
    let p2 = container_at(&h, "p2", "tsvp2", Some(high + 1), "tsbr2", "192.0.2.1/24");
    let d = daemon(&h, &dummy, &["--close-wait-leak-after", "1s"]);
    wait_attached(&d, 4.0);

    let l1 = listen_in(&p1, "192.0.2.1:8080");
    let l2 = listen_in(&p2, "192.0.2.1:8080");
    // The same tuple, 192.0.2.2:40000 -> 192.0.2.1:8080, in both pairs.
    let mut a1 = connect_from(&c1, "192.0.2.2:40000", "192.0.2.1:8080");
    let mut a2 = connect_from(&c2, "192.0.2.2:40000", "192.0.2.1:8080");
    let (mut s1, _) = l1.accept().unwrap();
    let (mut s2, _) = l2.accept().unwrap();
    crate::harness::exchange(&mut a1, &mut s1, b"hello");
    crate::harness::exchange(&mut s2, &mut a2, b"world");
    for c in [&c1, &p1, &c2, &p2] {
        assert_container_matches(&d, c, "established in both pairs");
    }
    // Pair 1's server closes and its client never does: CLOSE_WAIT in c1 only.
    drop(s1);
    for c in [&c1, &p1, &c2, &p2] {
        assert_container_matches(&d, c, "server closed in pair 1");
    }
    let m = d.metrics();
    assert_eq!(
        m.states(),
        [("close_wait", 1), ("established", 2), ("fin_wait2", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        "every endpoint counted exactly once, and nothing on the host"
    );
    assert_eq!(
        m.get(
            "tcpstate_container_info",
            &[
                ("namespace", ""),
                ("pod", ""),
                ("container", &c1.name),
                ("container_id", "")
            ]
        ),
        1.0
    );

    // The leak, past the daemon's 1 s threshold, by container, port and process.
    d.wait_for("the leak gauge in c1", |m| {
        m.try_get(
            "tcpstate_close_wait_leaked",
            &[
                ("port", "other"),
                ("namespace", ""),
                ("pod", ""),
                ("container", &c1.name),
            ],
        ) == Some(1.0)
    });
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["leaks", "--json", "--older-than", "1s", "--pin-dir"])
        .arg(&d.pin_dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "leaks exits 1 when there are leaks"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leaks = v["leaks"].as_array().unwrap();
    assert_eq!(leaks.len(), 1, "{v:#}");
    assert_eq!(leaks[0]["container"], c1.name.as_str());
    assert_eq!(leaks[0]["port"], 40000);
    assert_eq!(
        leaks[0]["pid"],
        std::process::id(),
        "the process holding the socket"
    );
    // Filters: the leak is c1's, not c2's.
    let filtered = std::process::Command::new(crate::harness::BIN)
        .args([
            "leaks",
            "--json",
            "--older-than",
            "1s",
            "--container",
            &c2.name,
            "--pin-dir",
        ])
        .arg(&d.pin_dir)
        .output()
        .unwrap();
    assert_eq!(filtered.status.code(), Some(0), "no leak in c2");
    let in_c2 = d.flows(&["--container", &c2.name]);
    assert_eq!(in_c2.len(), 1, "c2's one flow");
    assert_eq!(in_c2[0]["container"], c2.name.as_str());

    // c2 goes away (its namespace deleted, its veth with it): its series and flows go too.
    let gone = c2.name.clone();
    drop(a2);
    drop(s2);
    drop(c2);
    let m = d.wait_for_within("c2's series gone", Duration::from_secs(15), |m| {
        !m.text.contains(&format!("container=\"{gone}\""))
    });
    assert_eq!(m.get("tcpstate_containers_watched", &[]), 3.0);
    assert!(d.flows(&["--container", &gone]).is_empty());
    for c in [&c1, &p1, &p2] {
        assert_container_matches(&d, c, "after c2 is gone");
    }
    drop(a1);
}

/// A container created after the daemon is attached within a second of its veth appearing, and
/// its first connection is tracked.
#[test]
fn a_container_started_after_the_daemon_is_watched_within_a_second() {
    let (h, dummy) = host();
    bridge(&h, "tsbr1", Some("192.0.2.1/24"));
    let d = daemon(&h, &dummy, &[]);
    let c = Netns::new("late");
    let started = Instant::now();
    sh(&[
        "ip", "link", "add", "tsvlate", "netns", &h.name, "type", "veth", "peer", "name", "eth0",
        "netns", &c.name,
    ]);
    let attached = try_eventually(Duration::from_secs(10), || {
        let progs: Vec<String> = h.enter(|| {
            use aya::programs::{tc::TcAttachType, SchedClassifier};
            [TcAttachType::Ingress, TcAttachType::Egress]
                .into_iter()
                .flat_map(|at| {
                    SchedClassifier::query_tcx("tsvlate", at)
                        .map(|(_, p)| p)
                        .unwrap_or_default()
                })
                .map(|info| info.name_as_str().unwrap_or("?").to_string())
                .collect()
        });
        if progs
            .iter()
            .filter(|p| p.starts_with("tcpstate_tc_ctr"))
            .count()
            == 2
        {
            Ok(started.elapsed())
        } else {
            Err(progs)
        }
    })
    .unwrap_or_else(|progs| panic!("not attached after 10 s: {progs:?}\n{}", d.log()));
    println!("veth created -> both container programs attached: {attached:?}");
    assert!(
        attached < Duration::from_secs(1),
        "attached after {attached:?}"
    );
    h.ip(&["link", "set", "tsvlate", "master", "tsbr1", "up"]);
    c.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    c.ip(&["link", "set", "eth0", "up"]);
    let l = listen_in(&c, "192.0.2.2:8080");
    let _client = h.enter(|| {
        TcpStream::connect_timeout(&"192.0.2.2:8080".parse().unwrap(), Duration::from_secs(5))
            .unwrap()
    });
    let _server = l.accept().unwrap();
    assert_container_matches(&d, &c, "first connection of a late container");
    assert_eq!(
        d.metrics()
            .states_with(&format!("container=\"{}\"", c.name)),
        [("established".to_string(), 1)].into()
    );
}

/// Traffic the host only routes to a container crosses the host's uplink without a local socket:
/// it is counted in the container, never as a host endpoint.
#[test]
fn forwarded_traffic_is_the_containers_not_the_hosts() {
    let h = Netns::new("host");
    let outside = Netns::new("out");
    sh(&[
        "ip",
        "link",
        "add",
        "tsvup",
        "netns",
        &h.name,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.name,
    ]);
    h.ip(&["addr", "add", "198.51.100.1/24", "dev", "tsvup"]);
    h.ip(&["link", "set", "tsvup", "up"]);
    outside.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    outside.ip(&["link", "set", "eth0", "up"]);
    outside.ip(&["route", "add", "203.0.113.0/24", "via", "198.51.100.1"]);
    h.sysctl("net.ipv4.ip_forward=1");
    bridge(&h, "tsbr1", Some("203.0.113.1/24"));
    let c = container(&h, "web", "tsvweb", "tsbr1", "203.0.113.2/24");
    c.ip(&["route", "add", "default", "via", "203.0.113.1"]);
    // The uplink is a veth too (its peer is "outside"): as --iface it is the host's, never a
    // container's.
    let d = Daemon::start(
        &h,
        &[
            "--iface",
            "tsvup",
            "--containers",
            "--container-resync",
            "1s",
        ],
        Opts {
            listen: "127.0.0.1:9477",
            scrape_from: None,
            scope: None,
        },
    );
    wait_attached(&d, 1.0);
    let l = listen_in(&c, "203.0.113.2:8080");
    let mut client = outside.enter(|| {
        TcpStream::connect_timeout(&"203.0.113.2:8080".parse().unwrap(), Duration::from_secs(5))
            .unwrap()
    });
    let (mut server, _) = l.accept().unwrap();
    crate::harness::exchange(&mut client, &mut server, b"through the host");
    assert_container_matches(&d, &c, "routed connection");
    let m = d.metrics();
    assert!(
        m.states_with("container=\"\"").is_empty(),
        "no host endpoint for forwarded traffic: {:?}\n{}",
        m.states_with("container=\"\""),
        m.text
    );
    let flows = d.flows(&[]);
    let transit: Vec<_> = flows.iter().filter(|f| f["transit"] == true).collect();
    assert_eq!(
        transit.len(),
        1,
        "the uplink's record of it is transit: {flows:#?}"
    );
    assert!(transit[0]["a"]["local"] == false && transit[0]["b"]["local"] == false);
    // Port-forwarded to the container (DNAT), with a listening socket on the host port as
    // podman's conmon keeps one: the host's socket lookup finds a listener for the SYN, but the
    // SYN-ACK leaves forwarded, and the flow is taken back out of the host's gauges.
    let _conmon_like = listen_in(&h, "198.51.100.1:8080");
    let nft = |rule: &str| sh(&["ip", "netns", "exec", &h.name, "nft", rule]);
    nft("add table ip tsnat");
    nft("add chain ip tsnat pre { type nat hook prerouting priority -100; }");
    nft("add rule ip tsnat pre tcp dport 8080 dnat to 203.0.113.2:8080");
    let mut fwd_client = outside.enter(|| {
        TcpStream::connect_timeout(
            &"198.51.100.1:8080".parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap()
    });
    let (mut fwd_server, _) = l.accept().unwrap();
    crate::harness::exchange(&mut fwd_client, &mut fwd_server, b"port-forwarded");
    assert_container_matches(&d, &c, "a port-forwarded connection");
    let m = d.metrics();
    assert!(
        m.states_with("container=\"\"").is_empty(),
        "a port-forwarded connection is no host endpoint, listener or not: {:?}",
        m.states_with("container=\"\"")
    );
    let transit = d
        .flows(&[])
        .into_iter()
        .filter(|f| f["transit"] == true)
        .count();
    assert_eq!(transit, 2, "both uplink records are transit");

    // The host's own connections over the same uplink are still the host's.
    let hl = listen_in(&h, "198.51.100.1:9000");
    let _hc = outside.enter(|| {
        TcpStream::connect_timeout(
            &"198.51.100.1:9000".parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap()
    });
    let _hs = hl.accept().unwrap();
    d.wait_for("the host's own connection", |m| {
        m.states_with("container=\"\"").get("established") == Some(&1)
    });
}

/// A daemon killed and restarted on its pins gives each container namespace the scope it had:
/// the container's flows, their ages and its counts carry over.
#[test]
fn a_restart_keeps_every_containers_flows_and_ages() {
    let (h, uplink) = host();
    bridge(&h, "tsbr1", Some("192.0.2.1/24"));
    let c = container(&h, "keep", "tsvkeep", "tsbr1", "192.0.2.2/24");
    let d = daemon(&h, &uplink, &[]);
    wait_attached(&d, 1.0);
    let l = listen_in(&c, "192.0.2.2:8080");
    let connect = || {
        h.enter(|| {
            TcpStream::connect_timeout(&"192.0.2.2:8080".parse().unwrap(), Duration::from_secs(5))
                .unwrap()
        })
    };
    let (client_open, client_closed) = (connect(), connect());
    let (_s1, _) = l.accept().unwrap();
    let (_s2, _) = l.accept().unwrap();
    drop(client_closed);
    assert_container_matches(&d, &c, "before the restart");
    std::thread::sleep(Duration::from_secs(2));
    d.signal_keep_pins(libc::SIGKILL);

    let d = daemon(&h, &uplink, &[]);
    wait_attached(&d, 1.0);
    assert_container_matches(&d, &c, "after the restart");
    let flows = d.flows(&["--container", &c.name, "--state", "close_wait"]);
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let age = crate::harness::endpoint(&flows[0], true)["age_seconds"]
        .as_f64()
        .unwrap();
    assert!(age >= 2.0, "the CLOSE_WAIT's age carried over: {age}");
    assert_eq!(
        flows[0]["seeded"], false,
        "the record itself, not a re-seed"
    );
    drop(client_open);
}

/// Veths created and deleted as fast as `ip` can (containers crash-looping) leave no attachment,
/// no scope map entry, no watched namespace and no stream of warnings behind.
#[test]
fn flapping_veths_leave_nothing_behind() {
    let (h, uplink) = host();
    let d = daemon(&h, &uplink, &[]);
    for i in 0..30 {
        let c = Netns::new("flap");
        let iface = format!("tsvflap{i}");
        sh(&[
            "ip", "link", "add", &iface, "netns", &h.name, "type", "veth", "peer", "name", "eth0",
            "netns", &c.name,
        ]);
        if i % 2 == 0 {
            // Half of them go before the watcher could even see them.
            h.ip(&["link", "del", &iface]);
        }
        drop(c);
    }
    let m = d.wait_for_within(
        "every flapping container retired",
        Duration::from_secs(20),
        |m| {
            m.try_get("tcpstate_container_interfaces", &[]) == Some(0.0)
                && m.try_get("tcpstate_containers_watched", &[]) == Some(0.0)
        },
    );
    assert!(
        !m.text.contains("container=\"tse2e"),
        "no flapping container's series left"
    );
    let scopes: aya::maps::HashMap<aya::maps::MapData, u32, u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(d.pin_dir.join("TCPSTATE_SCOPES")).unwrap(),
        ))
        .unwrap();
    assert_eq!(
        scopes.keys().count(),
        0,
        "no ifindex -> scope entry outlives its veth"
    );
    let by_ifindex: aya::maps::Array<aya::maps::MapData, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(
            aya::maps::MapData::from_pin(d.pin_dir.join("TCPSTATE_IFACE_SCOPES")).unwrap(),
        ))
        .unwrap();
    let left: Vec<u32> = (0..by_ifindex.len())
        .filter(|&i| by_ifindex.get(&i, 0).unwrap() != 0)
        .collect();
    assert!(
        left.is_empty(),
        "no scope left in the programs' ifindex array: {left:?}"
    );
    // Every namespace seen is logged once when watched and once when gone, nothing repeats.
    let log = d.log();
    // logfmt (`level=warn`) in a log file; tracing's text format (`WARN`) on a terminal.
    let warnings = log
        .lines()
        .filter(|l| l.contains("level=warn") || l.contains("WARN"))
        .count();
    assert!(warnings <= 2, "warnings piled up:\n{log}");
}

/// Client ports per destination and the port range are each container's own: the range is read
/// inside the container's namespace (narrowed in one, the default in the other), and the client
/// endpoints in TIME_WAIT are counted in the container that holds them, equal to `ss` there.
#[test]
fn client_ports_and_port_ranges_are_each_containers_own() {
    use crate::clientports::{churn, ss_clients_to};
    let (h, dummy) = host();
    bridge(&h, "tsbr1", None);
    let c = container(&h, "c", "tsvc1", "tsbr1", "192.0.2.2/24");
    let p = container(&h, "p", "tsvp1", "tsbr1", "192.0.2.1/24");
    c.sysctl("net.ipv4.ip_local_port_range=40000 40499");
    p.sysctl("net.ipv4.ip_local_port_range=32768 60999");
    p.sysctl("net.ipv4.ip_local_reserved_ports=50000-50009");
    let d = daemon(&h, &dummy, &[]);
    wait_attached(&d, 2.0);
    let _open = churn(&p, &c, "192.0.2.1:8090".parse().unwrap(), 120, 5);
    let want = ss_clients_to(&c, "192.0.2.1:8090");
    assert_eq!(want, 125);
    // One connection the other way, so p holds a client endpoint too: a container's range is
    // exported once it has client ports to compare with it.
    let _back = churn(&c, &p, "192.0.2.2:8091".parse().unwrap(), 0, 1);
    fn series(ctr: &str) -> [(&str, &str); 3] {
        [("namespace", ""), ("pod", ""), ("container", ctr)]
    }
    let m = d.wait_for_within(
        "c's client ports to match ss",
        Duration::from_secs(15),
        |m| {
            let [ns, pod, ctr] = series(&c.name);
            let [pns, ppod, pctr] = series(&p.name);
            m.try_get(
                "tcpstate_client_ports_in_use",
                &[("destination", "192.0.2.1:8090"), ns, pod, ctr],
            ) == Some(want as f64)
                && m.try_get(
                    "tcpstate_client_ports_in_use",
                    &[("destination", "192.0.2.2:8091"), pns, ppod, pctr],
                ) == Some(1.0)
        },
    );
    assert_eq!(
        m.get("tcpstate_client_port_range_size", &series(&c.name)),
        500.0
    );
    assert_eq!(
        m.get("tcpstate_client_port_range_size", &series(&p.name)),
        (60999 - 32768 + 1 - 10) as f64,
        "p's range less its reserved ports"
    );
    // Each container's client ports are its own: p holds none towards 8090 (it serves it), and
    // its zero series are left out.
    assert!(!m
        .text
        .lines()
        .any(|l| l.starts_with("tcpstate_client_ports_in_use{")
            && l.contains("destination=\"192.0.2.1:8090\"")
            && l.contains(&format!("container=\"{}\"", p.name))));
    crate::harness::promtool_check(&d.raw_metrics());
}
