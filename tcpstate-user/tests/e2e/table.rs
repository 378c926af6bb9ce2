//! The flow table under load from every CPU: real connections opened, advanced and closed by
//! client threads pinned one to each CPU (so the programs run on every CPU), while the daemon's
//! sweeper deletes what times out. Afterwards the daemon's books must equal a recount of the
//! table read through its mapping, and the table must be sound: each key once, each flow linked
//! from its home, nothing left locked, claimed or half-deleted, no deleted slot left unfreed.

use std::{
    collections::{BTreeMap, HashSet},
    io::Read,
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use tcpstate_common::{
    commit::load,
    flow::{FlowKey, FlowKey4, FlowRecord, Side},
    host_table::HostTable,
    mapped::{Flows, Region},
    table::{self, status, Slots, TableKey, LOCK, NEIGHBOURHOOD},
    TcpState,
};

use crate::harness::*;

/// Per state, the endpoints the table counts (what `tcpstate_connections` must show).
fn recount(flows: &Flows) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    flows
        .for_each(|_, r| {
            let w = r.word();
            for side in [Side::A, Side::B] {
                let st = w.state(side);
                if w.is_counted(side) && TcpState::OPEN.contains(&st) {
                    *m.entry(st.name().to_string()).or_insert(0) += 1;
                }
            }
        })
        .expect("walk the table");
    m
}

/// The tables' structural invariants; returns the flows they hold.
fn check_sound(flows: &Flows) -> usize {
    check_table(flows.v4()) + check_table(flows.v6())
}

/// One table's structural invariants; returns the flows it holds.
fn check_table<K: TableKey + std::hash::Hash + Eq>(flows: &Region<K>) -> usize {
    let n = flows.count();
    let mut keys = HashSet::new();
    let (mut live, mut dead) = (0, 0);
    for i in 0..n {
        let s = flows.get(i).unwrap();
        // SAFETY: a slot of the mapping; plain reads of its words and key.
        let (ctrl, hop, key, word) = unsafe {
            (
                load(&raw const (*s).ctrl),
                load(&raw const (*s).hop),
                (*s).key,
                (*s).rec.word,
            )
        };
        assert_eq!(hop & LOCK, 0, "slot {i}: an insert lock left held");
        match table::status_of(ctrl) {
            status::FREE => {}
            status::DEAD => dead += 1,
            status::LIVE => {
                live += 1;
                assert_ne!(
                    word,
                    table::DEAD_WORD,
                    "slot {i}: live with a deleted record"
                );
                assert!(keys.insert(key), "slot {i}: key {key:?} present twice");
                let home = flows.linking_home(&key, ctrl);
                let d = table::distance(home, i, n);
                assert!(d < NEIGHBOURHOOD, "slot {i}: {d} slots from its home");
                // SAFETY: as above.
                let home_hop = unsafe { load(&raw const (*flows.get(home).unwrap()).hop) };
                assert_ne!(home_hop & (1 << d), 0, "slot {i}: not linked from its home");
            }
            other => panic!("slot {i}: left in transient status {other}"),
        }
    }
    for h in 0..n {
        // SAFETY: as above.
        let bits = unsafe { load(&raw const (*flows.get(h).unwrap()).hop) } & !LOCK;
        for d in (0..NEIGHBOURHOOD).filter(|d| bits & (1 << d) != 0) {
            let (c, k, _) = table::snapshot(flows, table::nth(h, d, n))
                .unwrap_or_else(|| panic!("home {h} bit {d} names no flow"));
            assert_eq!(table::status_of(c), status::LIVE);
            assert_eq!(
                flows.linking_home(&k, c),
                h,
                "home {h} bit {d} names another home's flow"
            );
        }
    }
    assert_eq!(dead, 0, "deleted slots a completed sweep did not free");
    live
}

#[test]
fn every_cpu_churning_flows_while_the_sweeper_deletes_leaves_a_sound_table() {
    const CHURN: Duration = Duration::from_secs(8);
    let cpus = std::env::var("STRESS_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
    let p = Pair::new();
    let d = Daemon::host(
        &p,
        &[
            "--sweep-interval",
            "100ms",
            "--time-wait",
            "1s",
            "--closed-linger",
            "1s",
        ],
    );
    let port = 7100;
    let listener = p.listen(SERVER_V4, port);
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    // Every third connection is answered with data and left for the client to
                    // close; the rest the server closes first.
                    Ok((mut s, _)) => {
                        n += 1;
                        if n.is_multiple_of(3) {
                            let _ = std::io::Write::write_all(&mut s, b"bye");
                            let _ = s.shutdown(Shutdown::Write);
                            thread::spawn(move || {
                                let _ = s.read(&mut [0u8; 16]);
                            });
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_micros(50))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        })
    };
    let opened = Arc::new(AtomicU64::new(0));
    let addr = SocketAddr::new(ip(SERVER_V4), port);
    thread::scope(|s| {
        for cpu in 0..cpus {
            let opened = opened.clone();
            let cli = &p.cli;
            s.spawn(move || {
                cli.enter(move || {
                    pin_to(cpu);
                    let start = Instant::now();
                    let mut i = 0u64;
                    while start.elapsed() < CHURN {
                        let mut c = TcpStream::connect(addr).expect("connect");
                        i += 1;
                        if i.is_multiple_of(5) {
                            // Some end in a reset.
                            abort(c);
                        } else {
                            let _ = c.read(&mut [0u8; 16]);
                        }
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                })
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let opened = opened.load(Ordering::Relaxed);
    assert!(opened > 2000, "only {opened} connections in {CHURN:?}");
    let m = d.metrics();
    let deleted = m.sum("tcpstate_flows_expired_total");
    assert!(
        deleted > 100.0,
        "the sweeper deleted only {deleted} flows during the churn"
    );
    // Quiet: the timeouts of the last flows (1 s) have run out and sweeps keep coming. The books
    // and the table are compared only across a walk no sweep changed anything during (the
    // deletions of a sweep are booked just after it).
    let flows = Flows::from_pins(&d.pin_dir).expect("map the daemon's table");
    std::thread::sleep(Duration::from_secs(3));
    let settled = |m: &Metrics| m.get("tcpstate_sweeps_total", &[]);
    let mut compared = false;
    for _ in 0..20 {
        let before = d.metrics();
        let live = check_sound(&flows);
        let counted = recount(&flows);
        // Two sweeps later: a deletion made before or during the walk is booked by then.
        let after = d.wait_for_within("two more sweeps", Duration::from_secs(10), |m| {
            settled(m) >= settled(&before) + 2.0
        });
        let unchanged = before.sum("tcpstate_flows_expired_total")
            == after.sum("tcpstate_flows_expired_total")
            && before.states() == after.states();
        if !unchanged {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        assert_eq!(
            after.get("tcpstate_flow_table_entries", &[]),
            live as f64,
            "the fill books equal a recount of the table"
        );
        assert_eq!(
            after.states(),
            counted,
            "the gauges equal a recount of the table"
        );
        compared = true;
        break;
    }
    assert!(compared, "no quiet sweep to compare against in 20 tries");
}

/// Slots a lookup of the flow in slot `i` (with homes `homes`) visits: every slot its first home
/// names when the second links it, then the set bits of its linking home's word up to its own
/// (the lookup compares keys in that order and stops at its own).
fn cost_in(t: &impl Slots, homes: table::Homes, i: u32) -> u32 {
    let n = t.count();
    // SAFETY: slots of the table.
    let hop = |h: u32| unsafe { load(&raw const (*t.get(h).unwrap()).hop) } & !LOCK;
    let c = unsafe { load(&raw const (*t.get(i).unwrap()).ctrl) };
    let home = homes.linking(c);
    let upto = (hop(home) & ((2u32 << table::distance(home, i, n)) - 1)).count_ones();
    if table::in_second_home(c) {
        hop(homes.first).count_ones() + upto
    } else {
        upto
    }
}

fn lookup_cost(flows: &Region<FlowKey4>, i: u32) -> u32 {
    let (_, key, _) = table::snapshot(flows, i).expect("a flow");
    cost_in(flows, flows.homes(&key), i)
}

/// The IPv4 key of an IPv4 flow.
fn v4(k: &FlowKey) -> FlowKey4 {
    FlowKey4::narrow(k).expect("an IPv4 flow")
}

/// The established flows of the server port (IPv4), and the slots a lookup of each visits.
fn established_costs(flows: &Flows, port: u16) -> Vec<(FlowKey, u32)> {
    let mut out = Vec::new();
    flows.for_each_slot(|p, k, r| {
        let w = r.word();
        if k.port.contains(&port)
            && w.state(Side::A) == TcpState::Established
            && w.state(Side::B) == TcpState::Established
        {
            assert_eq!(
                p.index & tcpstate_common::mapped::GENERAL,
                0,
                "in the IPv4 table"
            );
            out.push((k, lookup_cost(flows.v4(), p.index)));
        }
    });
    out.sort_by_key(|(k, _)| (k.addr, k.port));
    out
}

fn open(p: &Pair, l: &std::net::TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
    (0..n)
        .map(|_| {
            let c = p.connect(SERVER_V4, l.local_addr().unwrap().port());
            let (s, _) = l.accept().unwrap();
            (c, s)
        })
        .collect()
}

/// Tuples from TEST-NET-2 to the server's port whose home, under `seed`, is `target`.
fn aimed_at(target: u32, seed: &table::Seed, slots: u32, port: u16, n: usize) -> Vec<(u8, u16)> {
    let server = FlowKey::addr_words(ip(SERVER_V4));
    let mut out = Vec::new();
    for host in 1..=250u8 {
        let src = FlowKey::addr_words(format!("198.51.100.{host}").parse().unwrap());
        for sport in 1024..=65535u16 {
            let (k, _) = FlowKey::canonical(src, sport, server, port);
            if table::home(v4(&k).hash(seed), slots) == target {
                out.push((host, sport));
                if out.len() == n {
                    return out;
                }
            }
        }
    }
    panic!("only {} tuples aimed at slot {target}", out.len());
}

/// A SYN flood from tuples an attacker chose, under the seed it has to guess (it cannot read the
/// table's), to pile up on the homes the server's connections use. With the table's secret seed
/// the SYNs spread over the table, and established connections opened into it cost what they cost
/// before, within 2x. The same arithmetic with the real seed shows what the secret prevents.
#[test]
fn a_syn_flood_aimed_without_the_seed_leaves_established_lookups_cheap() {
    const CONNECTIONS: usize = 40;
    const AIMED_PER_HOME: usize = 50;
    let p = Pair::new();
    // A small table (5,472 slots) the aimed SYNs fill to a third; every SYN tracked.
    let d = Daemon::host(&p, &["--max-flows", "4096", "--half-open-budget", "4096"]);
    let port = 7200;
    let l = p.listen(SERVER_V4, port);
    let flows = Flows::from_pins(&d.pin_dir).expect("map the daemon's table");
    let slots = flows.v4().count();
    let before_conns = open(&p, &l, CONNECTIONS);
    d.wait_for("the first connections", |m| {
        m.connections("server", "established") == CONNECTIONS as f64
    });
    let before = established_costs(&flows, port);
    assert_eq!(before.len(), CONNECTIONS);

    // The attacker aims at the homes these connections have under its guess of the seed (the
    // next ones from the same client land nearby under any seed that ignores the port's low bits).
    let tuples: Vec<(u8, u16)> = before
        .iter()
        .flat_map(|(k, _)| {
            let target = table::home(v4(k).hash(&table::GUESSED_SEED), slots);
            aimed_at(target, &table::GUESSED_SEED, slots, port, AIMED_PER_HOME)
        })
        .collect();
    // Forged sources routed back through the client namespace, which drops the SYN-ACKs.
    p.cli.sysctl("net.ipv4.ip_forward=0");
    p.srv
        .ip(&["route", "add", "198.51.100.0/24", "via", CLIENT_V4]);
    let list: Vec<String> = tuples.iter().map(|(h, s)| format!("({h},{s})")).collect();
    scapy(
        &p.cli,
        &format!(
            "from scapy.all import IP, TCP, send\n\
             pkts = [IP(src='198.51.100.%d' % h, dst='{SERVER_V4}')/TCP(sport=s, dport={port}, flags='S', seq=7) for (h, s) in [{}]]\n\
             send(pkts, verbose=0)",
            list.join(",")
        ),
    );
    let m = d.wait_for("the aimed SYNs tracked", |m| {
        m.get("tcpstate_flow_table_half_open_entries", &[]) >= (tuples.len() * 9 / 10) as f64
    });
    assert_eq!(
        m.sum("tcpstate_untracked_total"),
        0.0,
        "every aimed SYN was tracked"
    );
    // Connections opened into the flooded table.
    drop(before_conns);
    let after_conns = open(&p, &l, CONNECTIONS);
    d.wait_for("the new connections", |m| {
        m.connections("server", "established") == CONNECTIONS as f64
    });
    let after = established_costs(&flows, port);
    assert_eq!(after.len(), CONNECTIONS);
    let cost = |v: &[(FlowKey, u32)]| v.iter().map(|(_, c)| *c).sum::<u32>() as f64;
    assert!(
        cost(&after) <= 2.0 * cost(&before),
        "lookups of established connections visit {} slots after the flood, {} before",
        cost(&after),
        cost(&before)
    );

    // What the secret prevents: an attacker who knew the seed aims the same number of SYNs at
    // the new connections' homes; in a table of the same size they take the neighbourhoods
    // first, and each connection's lookup then passes their keys.
    let known = HostTable::<FlowKey4>::new(slots);
    let real = *flows.seed();
    let homes = |k: &FlowKey| flows.v4().homes(&v4(k));
    for (k, _) in &after {
        let target = homes(k).first;
        for (h, sport) in aimed_at(target, &real, slots, port, AIMED_PER_HOME) {
            let src = FlowKey::addr_words(format!("198.51.100.{h}").parse().unwrap());
            let (key, _) = FlowKey::canonical(src, sport, FlowKey::addr_words(ip(SERVER_V4)), port);
            let _ = table::insert(&known, &v4(&key), &FlowRecord::default(), homes(&key));
        }
    }
    let mut known_cost = 0;
    for (k, _) in &after {
        match table::insert(&known, &v4(k), &FlowRecord::default(), homes(k)) {
            table::Inserted::Done(i) => {
                known_cost += cost_in(&known, homes(k), i);
            }
            // A full neighbourhood: the connection would not be tracked at all.
            _ => known_cost += NEIGHBOURHOOD,
        }
    }
    assert!(
        f64::from(known_cost) > 2.0 * cost(&before),
        "with the seed known the same flood would cost {known_cost} slots (bound {})",
        2.0 * cost(&before)
    );
    drop(after_conns);
}
