//! Per-packet cost of the kernel programs, by BPF_PROG_TEST_RUN, against pass-only programs loaded
//! from the same object in the same run; and kernel memory per tracked flow. Needs root. Run by
//! `cargo xtask bench`, which prints the report; this writes `target/bench/report.json`.
//!
//! Every figure is a delta against its baseline measured the same way in the same run: the median
//! of five runs of 1e6 repeats (single runs, medians over thousands, where each run must start
//! from a reset record: flow creation, FIN, RST, and the 1M-flow random working set).

use std::{fs, path::PathBuf, time::Duration};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
    Ebpf, EbpfLoader,
};
use tcpstate_common::{
    counters::{idx, UntrackedReason},
    flow::FlowKey4,
    mapped::Flows,
    maps::{self, Config, UserCounters},
    scope,
    table::{self, Seed, Slots, TableKey},
    tcp::flags::*,
    FlowKey, FlowRecord, FlowWord, Side, TcpState,
};

mod benchkit;
use benchkit::{median, monotonic_ns, report, Figure, Goal, CLIENT_ISN, SERVER_ISN};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate"));

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 5;
const SINGLE_RUNS: usize = 4_000;
const BIG_TABLE: u32 = 1_000_000;
fn test_run<P>(prog: &P, frame: &[u8], repeat: u32) -> Duration
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::new()
    };
    prog.test_run(opts).expect("BPF_PROG_TEST_RUN").duration
}

/// ns per packet: the median of RUNS runs of REPEAT repeats.
fn repeated<P>(prog: &P, frame: &[u8]) -> f64
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    median(
        (0..RUNS)
            .map(|_| test_run(prog, frame, REPEAT).as_nanos() as f64)
            .collect(),
    )
}

/// The frames the end-to-end tests inject, shared rather than written again.
#[path = "../tests/support/frames.rs"]
#[allow(dead_code)]
mod frames;

use frames::{ethernet, Tcp, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6};

/// IPv4 in Ethernet, DF set as Linux sends TCP.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ihl: u8, l4: &[u8]) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &frames::ipv4(src, dst, proto, ihl, 0x4000, l4),
    )
}

fn ipv6(src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
    ethernet(&[], ETH_P_IPV6, &frames::ipv6(src, dst, l4))
}

fn tcp(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: usize) -> Vec<u8> {
    Tcp::new(sport, dport, flags)
        .seq_ack(seq, ack)
        .payload(payload)
        .bytes()
}

const CLIENT4: [u8; 4] = [192, 0, 2, 2];
const SERVER4: [u8; 4] = [192, 0, 2, 1];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn words4(a: [u8; 4]) -> [u32; 4] {
    FlowKey::addr_words(a.into())
}

fn words6(a: [u8; 16]) -> [u32; 4] {
    FlowKey::addr_words(a.into())
}

/// An established connection's record, stamped now.
fn established(client: [u32; 4], cport: u16, server: [u32; 4]) -> (FlowKey, FlowRecord) {
    benchkit::established(client, cport, server, 80, monotonic_ns())
}

struct Bench {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    flows: Flows,
    /// Slots the resets deleted, freed by [`Bench::reclaim`].
    dead: Vec<u32>,
}

/// The table's hash key (any fixed one: the figures do not depend on it).
const SEED: Seed = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
];

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

/// Scopes the bench object has: the host's and one container's, so the container programs can be
/// timed (BPF_PROG_TEST_RUN gives TC programs an skb on `lo`, which the bench maps to scope 1).
const BENCH_SCOPES: u32 = 2;
const LO_IFINDEX: u32 = 1;

impl Bench {
    /// `transit`: container mode's transit check on (a socket lookup when a host-mode program
    /// creates a flow).
    fn load(capacity: u32, transit: bool) -> Bench {
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/tcpstate-bench-{}-{}",
            std::process::id(),
            u8::from(transit)
        ));
        fs::create_dir_all(&pin_dir)
            .expect("bpffs mounted on /sys/fs/bpf (cargo xtask setup), and root");
        // The daemon's sizing: the IPv4 table for every flow, the other for an eighth of them.
        let slots4 = table::slots_for(capacity, table::SLOT4_SIZE);
        let slots6 = table::slots_for((capacity / 8).max(1024), table::SLOT6_SIZE);
        let config = Config {
            capacity: capacity as u64,
            slots4: slots4 as u64,
            slots6: slots6 as u64,
            seed: SEED,
            half_open_budget: capacity as u64 / 4,
            log_events: 0,
            scopes: BENCH_SCOPES as u64,
            transit_check: u64::from(transit),
        };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(maps::FLOWS4, slots4)
            .map_max_entries(maps::FLOWS6, slots6)
            .map_max_entries(maps::COUNTERS, idx::COUNT)
            .map_max_entries(maps::SCOPE_COUNTERS, idx::COUNT * BENCH_SCOPES)
            .map_max_entries(
                tcpstate_common::durations::DURATIONS,
                tcpstate_common::durations::entries(BENCH_SCOPES),
            )
            .map_max_entries(maps::USER, BENCH_SCOPES)
            .map_max_entries(scope::SCOPE_INFO, BENCH_SCOPES)
            .override_global(maps::CONFIG, &config, true)
            .override_global(aya_log::LEVEL, &0u8, true)
            .load(OBJECT)
            .expect("load the object");
        for name in [
            "tcpstate_xdp_host",
            "tcpstate_xdp_pass",
            "tcpstate_xdp_lookup_floor",
        ] {
            let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().expect("verifier");
        }
        for name in [
            "tcpstate_tc_egress",
            "tcpstate_tc_ingress",
            "tcpstate_tc_ctr_ingress",
            "tcpstate_tc_pass",
        ] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().expect("verifier");
        }
        // Where the programs read a container interface's scope: lo's ifindex is a direct one.
        let direct = scope::direct_index(LO_IFINDEX).expect("lo's ifindex is a direct one");
        let mut by_ifindex: Array<&mut MapData, u32> =
            Array::try_from(ebpf.map_mut(scope::IFACE_SCOPES).unwrap()).unwrap();
        by_ifindex.set(direct, 1, 0).unwrap();
        let mut array = |name| match ebpf.take_map(name).unwrap() {
            aya::maps::Map::Array(d) => d,
            _ => panic!("the flow tables are arrays"),
        };
        let (v4, v6) = (array(maps::FLOWS4), array(maps::FLOWS6));
        let flows = Flows::new(v4, v6, SEED).expect("map the flow tables");
        Bench {
            ebpf,
            pin_dir,
            flows,
            dead: Vec::new(),
        }
    }

    fn xdp(&self, name: &str) -> &Xdp {
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    fn tc(&self, name: &str) -> &SchedClassifier {
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    fn flows(&mut self) -> &Flows {
        &self.flows
    }

    /// Deletes a flow a timed run created or moved, so the next run starts from the same table.
    fn remove(&mut self, key: &FlowKey) {
        if let Some((i, _)) = self.flows.remove_at(key) {
            self.dead.push(i);
        }
    }

    /// Frees the slots [`Bench::remove`] deleted.
    fn reclaim(&mut self) {
        // SAFETY: the programs run only inside this thread's BPF_PROG_TEST_RUN calls.
        unsafe { self.flows.reclaim_now(&self.dead) };
        self.dead.clear();
    }

    fn set_user(&mut self, u: &UserCounters) {
        let mut a: Array<&mut MapData, UserCounters> =
            Array::try_from(self.ebpf.map_mut(maps::USER).unwrap()).unwrap();
        a.set(0, u, 0).unwrap();
    }

    /// Median ns of single runs of `frame`, each after `reset` put the table back.
    /// Median ns of single runs of `frame`, each after `reset` put the table back and an untimed
    /// run of `warm` (a packet of another flow that takes the same path) brought the program's
    /// code back into the caches the reset's syscall evicted: at line rate the code is hot.
    fn single<P>(
        &mut self,
        prog: impl Fn(&Self) -> &P,
        frame: &[u8],
        warm: &[u8],
        mut reset: impl FnMut(&mut Self),
    ) -> f64
    where
        P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
    {
        let mut v = Vec::with_capacity(SINGLE_RUNS);
        for _ in 0..SINGLE_RUNS {
            reset(self);
            test_run(prog(self), warm, 1);
            v.push(test_run(prog(self), frame, 1).as_nanos() as f64);
        }
        median(v)
    }
}

/// A segment the client sends on the established IPv4 connection (XDP ingress on the server).
fn client4(flags: u8, payload: usize) -> Vec<u8> {
    ipv4(
        CLIENT4,
        SERVER4,
        6,
        5,
        &tcp(40000, 80, flags, CLIENT_ISN + 1, SERVER_ISN + 1, payload),
    )
}

fn main() {
    let mut figures = Vec::new();
    // A table sized for the million flows below: filled, three slots in four are taken.
    let mut b = Bench::load(BIG_TABLE, false);
    let (k4, r4) = established(words4(CLIENT4), 40000, words4(SERVER4));
    let (k6, r6) = established(words6(CLIENT6), 40000, words6(SERVER6));
    b.flows().insert(&k4, &r4).unwrap();
    b.flows().insert(&k6, &r6).unwrap();
    // The same connection seen on a container's veth (scope 1).
    b.flows().insert(&k4.in_scope(1), &r4).unwrap();

    let ack4 = client4(ACK, 0);
    let ack6 = ipv6(
        CLIENT6,
        SERVER6,
        &tcp(40000, 80, ACK, CLIENT_ISN + 1, SERVER_ISN + 1, 0),
    );
    let udp = ipv4(CLIENT4, SERVER4, 17, 5, &[0u8; 8]);
    let arp = ethernet(&[], ETH_P_ARP, &[0u8; 28]);
    let bad_ihl = ipv4(CLIENT4, SERVER4, 6, 4, &tcp(40000, 80, ACK, 1, 1, 0));
    // The server's side of the connection, as TC egress sees it.
    let tc_ack4 = ipv4(
        SERVER4,
        CLIENT4,
        6,
        5,
        &tcp(80, 40000, ACK, SERVER_ISN + 1, CLIENT_ISN + 1, 0),
    );

    let xdp_base = repeated(b.xdp("tcpstate_xdp_pass"), &ack4);
    let tc_base = repeated(b.tc("tcpstate_tc_pass"), &ack4);
    let host = |b: &Bench, frame: &[u8]| repeated(b.xdp("tcpstate_xdp_host"), frame);
    figures.extend([
        Figure::ns("xdp non-tcp (udp)", xdp_base, host(&b, &udp), Some(5.0)),
        Figure::ns("xdp non-ip (arp)", xdp_base, host(&b, &arp), Some(5.0)),
        Figure::ns(
            "xdp established ack, 1 flow, ipv4",
            xdp_base,
            host(&b, &ack4),
            Some(40.0),
        ),
        Figure::ns(
            "xdp established data, 1 flow, ipv4",
            xdp_base,
            host(&b, &client4(ACK | PSH, 100)),
            Some(40.0),
        ),
        Figure::ns(
            "xdp established ack, 1 flow, ipv6",
            xdp_base,
            host(&b, &ack6),
            Some(40.0),
        ),
        Figure::ns("xdp malformed (ihl 4)", xdp_base, host(&b, &bad_ihl), None),
        Figure::ns(
            "tc ingress (default hook) established ack, 1 flow, ipv4",
            tc_base,
            repeated(b.tc("tcpstate_tc_ingress"), &ack4),
            Some(40.0),
        ),
        Figure::ns(
            "tc egress established ack, 1 flow, ipv4",
            tc_base,
            repeated(b.tc("tcpstate_tc_egress"), &tc_ack4),
            Some(40.0),
        ),
        Figure::ns(
            "tc container veth (scope lookup by ifindex) established ack, 1 flow, ipv4",
            tc_base,
            repeated(b.tc("tcpstate_tc_ctr_ingress"), &ack4),
            Some(40.0),
        ),
        Figure::ns(
            "reference (the floor): xdp parse + keyed hash + the flow's slot, nothing else",
            xdp_base,
            repeated(b.xdp("tcpstate_xdp_lookup_floor"), &ack4),
            None,
        ),
    ]);

    // The container figure timed the tracked path, not the early return of a veth without a scope.
    let no_scope: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(b.ebpf.map(maps::COUNTERS).unwrap()).unwrap();
    let untracked = idx::UNTRACKED + UntrackedReason::NoScope as u32;
    let missed: u64 = no_scope.get(&untracked, 0).unwrap().iter().sum();
    assert_eq!(missed, 0, "the container program found lo's scope");

    collision_attack(&mut b, &ack4, xdp_base, &mut figures);

    // Runs that must start from a reset record, as single runs against single-run baselines.
    // A second established flow gives each its warm-up packet.
    let (k4b, r4b) = established(words4(CLIENT4), 40001, words4(SERVER4));
    b.flows().insert(&k4b, &r4b).unwrap();
    let client4b = |flags| {
        ipv4(
            CLIENT4,
            SERVER4,
            6,
            5,
            &tcp(40001, 80, flags, CLIENT_ISN + 1, SERVER_ISN + 1, 0),
        )
    };
    let single_base = b.single(|b| b.xdp("tcpstate_xdp_pass"), &ack4, &ack4, |_| {});
    let syn_from = |port: u16| {
        let frame = ipv4(
            [198, 51, 100, 7],
            SERVER4,
            6,
            5,
            &tcp(port, 80, SYN, 77, 0, 0),
        );
        let key = FlowKey::canonical(words4([198, 51, 100, 7]), port, words4(SERVER4), 80).0;
        (frame, key)
    };
    let ((syn, syn_key), (warm_syn, warm_key)) = (syn_from(50000), syn_from(50001));
    let created = b.single(
        |b| b.xdp("tcpstate_xdp_host"),
        &syn,
        &warm_syn,
        |b| {
            b.remove(&syn_key);
            b.remove(&warm_key);
            b.reclaim();
        },
    );
    // The same established ACK as above, timed as single runs, for comparison with the 1M-flow
    // figure below.
    let single_ack = b.single(|b| b.xdp("tcpstate_xdp_host"), &ack4, &ack4, |_| {});
    figures.push(Figure::ns(
        "xdp established ack, 1 flow, ipv4 (single runs)",
        single_base,
        single_ack,
        None,
    ));
    figures.push(Figure::ns(
        "xdp syn creating a flow (single runs)",
        single_base,
        created,
        None,
    ));
    // Container mode's transit check: the same SYN, on an object that asks the kernel's socket
    // tables whether a local socket owns the flow before creating it (no socket here: transit).
    {
        // The same capacity as above: thousands of single runs insert a flow each (the reset
        // deletes it without booking), and a small table would soon read as full.
        let mut t = Bench::load(BIG_TABLE + 100_000, true);
        let created_transit = t.single(
            |b| b.xdp("tcpstate_xdp_host"),
            &syn,
            &warm_syn,
            |b| {
                b.remove(&syn_key);
                b.remove(&warm_key);
                b.reclaim();
            },
        );
        figures.push(Figure::ns(
            "xdp syn creating a flow, container mode's transit check (single runs)",
            single_base,
            created_transit,
            None,
        ));
    }
    for (name, flags) in [("fin", FIN | ACK), ("rst", RST | ACK)] {
        let cost = b.single(
            |b| b.xdp("tcpstate_xdp_host"),
            &client4(flags, 0),
            &client4b(flags),
            |b| {
                b.remove(&k4);
                b.remove(&k4b);
                b.reclaim();
                b.flows().insert(&k4, &r4).unwrap();
                b.flows().insert(&k4b, &r4b).unwrap();
            },
        );
        figures.push(Figure::ns(
            &format!("xdp {name} on an established flow (single runs)"),
            single_base,
            cost,
            Some(150.0),
        ));
    }

    short_connection(&mut b, &mut figures);
    if std::env::var_os("TCPSTATE_BENCH_ONLY").is_some_and(|o| o == "connection") {
        return report("kernel", &figures);
    }

    // SYN with the table full: the daemon's books say so (no need to fill it).
    b.set_user(&UserCounters {
        inserted: u64::from(BIG_TABLE),
        ..Default::default()
    });
    figures.push(Figure::ns(
        "xdp syn, table full",
        xdp_base,
        host(&b, &syn),
        Some(60.0),
    ));
    b.set_user(&UserCounters::default());

    // 1M flows, random working set.
    let mut clients = Vec::with_capacity(BIG_TABLE as usize);
    for i in 0..BIG_TABLE {
        let addr = [
            198,
            18 + (i >> 24) as u8 % 2,
            (i >> 16) as u8,
            (i >> 8) as u8 ^ i as u8,
        ];
        let port = 10_000 + (i % 50_000) as u16;
        let (k, r) = established(words4(addr), port, words4(SERVER4));
        if b.flows().insert(&k, &r).is_ok() {
            clients.push((addr, port));
        }
    }
    // A table filled to its capacity: a few flows in a hundred thousand find no free slot within
    // reach of either home (see table::FIRST_HOME_REACH).
    println!(
        "1M flows: {} of {BIG_TABLE} found no free slot",
        BIG_TABLE as usize - clients.len()
    );
    let memlock = map_memlock(&b);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut sample = Vec::with_capacity(SINGLE_RUNS);
    for _ in 0..SINGLE_RUNS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let (addr, port) = clients[(rng % clients.len() as u64) as usize];
        sample.push(ipv4(
            addr,
            SERVER4,
            6,
            5,
            &tcp(port, 80, ACK, CLIENT_ISN + 1, SERVER_ISN + 1, 0),
        ));
    }
    // Each timed run of a random flow follows an untimed run of the one flow above: the code is
    // warm, the random flow's bucket and record are as cold as a 200 MB table leaves them.
    let singles = |name: &str| {
        median(
            sample
                .iter()
                .map(|f| {
                    test_run(b.xdp(name), &ack4, 1);
                    test_run(b.xdp(name), f, 1).as_nanos() as f64
                })
                .collect(),
        )
    };
    let (big, big_base) = (singles("tcpstate_xdp_host"), singles("tcpstate_xdp_pass"));
    figures.push(Figure::ns(
        "xdp established ack, 1M flows at 75% fill, random (single runs)",
        big_base,
        big,
        Some(200.0),
    ));
    if let Some(bytes) = memlock {
        // Baseline: the bytes an IPv4 flow's key and record hold. A slot adds its two control
        // words and the table keeps a quarter of its slots free at capacity. To the byte: the
        // map's own header and the slots' rounding to whole pages add 0.01 B a flow.
        figures.push(Figure {
            name: format!(
                "kernel memory per tracked IPv4 flow at {:.0}% fill (map memlock / flows, to the byte; baseline: key + record)",
                100.0 * (clients.len() + 2) as f64 / f64::from(b.flows.v4().count())
            ),
            unit: "bytes",
            baseline: (size_of::<FlowKey4>() + size_of::<FlowRecord>()) as f64,
            value: (bytes as f64 / (clients.len() + 2) as f64).round(),
            goal: Goal::ValueAtMost,
            target: Some(128.0),
        });
    }
    report("kernel", &figures);
}

/// A short connection, whole: its seven segments (handshake, one FIN each way, their ACKs) through
/// the host program in order, on a key the table does not hold, timed segment by segment and
/// summed, against the pass-only program given the same seven. What a connection-per-request
/// workload pays per connection on each hook that sees both directions (`lo`, a tap).
fn short_connection(b: &mut Bench, figures: &mut Vec<Figure>) {
    const CONNECTIONS: usize = 2_000;
    let (c, s) = ([198, 51, 100, 9], SERVER4);
    let (cp, sp) = (51_000, 80);
    let (ci, si) = (CLIENT_ISN, SERVER_ISN);
    let seg = |from_client: bool, flags: u8, seq: u32, ack: u32| {
        let (src, dst, sport, dport) = if from_client {
            (c, s, cp, sp)
        } else {
            (s, c, sp, cp)
        };
        ipv4(src, dst, 6, 5, &tcp(sport, dport, flags, seq, ack, 0))
    };
    let segments = [
        seg(true, SYN, ci, 0),
        seg(false, SYN | ACK, si, ci + 1),
        seg(true, ACK, ci + 1, si + 1),
        seg(true, FIN | ACK, ci + 1, si + 1),
        seg(false, ACK, si + 1, ci + 2),
        seg(false, FIN | ACK, si + 1, ci + 2),
        seg(true, ACK, ci + 2, si + 2),
    ];
    let key = FlowKey::canonical(words4(c), cp, words4(s), sp).0;
    let mut per_connection = |name: &str| {
        let mut v = Vec::with_capacity(CONNECTIONS);
        let mut each: Vec<Vec<f64>> = vec![Vec::new(); 7];
        for _ in 0..CONNECTIONS {
            b.remove(&key);
            b.reclaim();
            let prog = b.xdp(name);
            let t: Vec<f64> = segments
                .iter()
                .map(|f| test_run(prog, f, 1).as_nanos() as f64)
                .collect();
            for (i, x) in t.iter().enumerate() {
                each[i].push(*x);
            }
            v.push(t.iter().sum::<f64>());
        }
        let each: Vec<f64> = each.into_iter().map(median).collect();
        (median(v), each)
    };
    let ((base, base_each), (tracked, tracked_each)) = (
        per_connection("tcpstate_xdp_pass"),
        per_connection("tcpstate_xdp_host"),
    );
    // Where a connection's cost goes, segment by segment (medians, over pass-only).
    let each: Vec<String> = ["syn", "syn-ack", "ack", "fin", "ack", "fin", "ack"]
        .iter()
        .zip(tracked_each.iter().zip(&base_each))
        .map(|(name, (t, b))| format!("{name} +{:.0}", t - b))
        .collect();
    println!("short connection, ns per segment: {}", each.join(", "));
    assert!(
        b.flows.lookup(&key).is_some(),
        "the connection's flow was created"
    );
    b.remove(&key);
    b.reclaim();
    figures.push(Figure {
        name: "xdp short connection, its 7 segments (single runs, summed)".into(),
        unit: "ns/connection",
        baseline: base,
        value: tracked,
        goal: Goal::DeltaAtMost,
        target: None,
    });
}

/// Flows from tuples an attacker chose to land on the home of the benchmark's established flow
/// under a seed it guessed (it cannot know the table's), inserted as its SYNs would insert them;
/// then the established flow's ACK again, against the same baseline.
fn collision_attack(b: &mut Bench, ack4: &[u8], xdp_base: f64, figures: &mut Vec<Figure>) {
    const AIMED: usize = 5_000;
    let guessed: Seed = table::GUESSED_SEED;
    let slots = b.flows.v4().count();
    let (victim, _) = established(words4(CLIENT4), 40000, words4(SERVER4));
    let home = |k: &FlowKey| {
        let k = FlowKey4::narrow(k).expect("an IPv4 flow");
        table::home(k.hash(&guessed), slots)
    };
    let target = home(&victim);
    let before = repeated(b.xdp("tcpstate_xdp_host"), ack4);
    let mut aimed = Vec::with_capacity(AIMED);
    let mut i = 0u32;
    while aimed.len() < AIMED {
        let addr = [203, 0, (i >> 24) as u8 ^ 113, (i >> 16) as u8];
        let port = i as u16 | 1;
        i += 1;
        let key = FlowKey::canonical(words4(addr), port, words4(SERVER4), 80).0;
        // Within the victim's neighbourhood, as the attacker computes it.
        if table::distance(target, home(&key), slots) < table::NEIGHBOURHOOD {
            aimed.push(key);
        }
    }
    let mut syn = FlowRecord::default();
    let mut w = FlowWord::default();
    w.set_state(Side::A, TcpState::SynSent);
    w.set_state(Side::B, TcpState::SynRecv);
    syn.set_word(w);
    for k in &aimed {
        let _ = b.flows.insert(k, &syn);
    }
    let after = repeated(b.xdp("tcpstate_xdp_host"), ack4);
    figures.push(Figure {
        name: format!(
            "xdp established ack after {AIMED} flows aimed at its slot without the seed / before"
        ),
        unit: "ns/packet over pass-only",
        baseline: before - xdp_base,
        value: after - xdp_base,
        goal: Goal::RatioAtMost,
        target: Some(2.0),
    });
    for k in &aimed {
        b.remove(k);
    }
    b.reclaim();
}

/// The IPv4 flow table's `memlock` from /proc/self/fdinfo (the kernel's own accounting of its
/// memory): the flows the figure counts are IPv4 ones.
fn map_memlock(b: &Bench) -> Option<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = b.flows.v4().map().fd().as_fd().as_raw_fd();
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}
