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
    flow::Side,
    mapped::Flows,
    table::{self, status, Slots, LOCK, NEIGHBOURHOOD},
    TcpState,
};

use crate::harness::*;

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
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

/// The table's structural invariants; returns the flows it holds.
fn check_sound(flows: &Flows) -> usize {
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
                let home = flows.home(&key);
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
                flows.home(&k),
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
