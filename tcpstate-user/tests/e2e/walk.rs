//! The table is walked through the daemon's mapping of it, slot by slot: a table of many flows is
//! read whole, each flow once, by the sweep and by `tcpstate flows`.

use std::{collections::BTreeSet, time::Duration};

use tcpstate_common::{
    flow::{monotonic_ns, FlowKey, FlowRecord, FlowWord, Side},
    mapped::Flows,
    state::TcpState,
};

use crate::harness::*;

#[test]
fn a_table_of_many_flows_is_read_whole_and_once() {
    const FLOWS: u32 = 10_000;
    let p = Pair::new();
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    let table = Flows::from_pins(&d.pin_dir).expect("the daemon's pinned flow table");
    let now = monotonic_ns();
    let mut ports = BTreeSet::new();
    for i in 0..FLOWS {
        // Distinct remote addresses (198.18.0.0/15, never routed here) and ports.
        let remote = FlowKey::addr_words([198, 18, (i >> 8) as u8, i as u8].into());
        let local = FlowKey::addr_words(ip(SERVER_V4));
        let port = 10_000 + i as u16;
        let (key, remote_side) = FlowKey::canonical(remote, port, local, 80);
        // Established both ways, the local endpoint counted (as host mode would have it).
        let mut w = FlowWord {
            counted: remote_side.other().bit(),
            ..FlowWord::default()
        };
        w.set_state(Side::A, TcpState::Established);
        w.set_state(Side::B, TcpState::Established);
        let mut rec = FlowRecord {
            since_ns: [now; 2],
            last_seen: FlowRecord::seen_tick(now),
            ..FlowRecord::default()
        };
        rec.set_word(w);
        table.insert(&key, &rec).expect("insert");
        ports.insert(port);
    }
    // The sweep visits all of them (and expires none: established, seen just now).
    d.wait_for_within("a sweep over every flow", Duration::from_secs(10), |m| {
        m.get("tcpstate_sweep_flows_visited", &[]) == f64::from(FLOWS)
    });
    let listed: Vec<u16> = d
        .flows(&[])
        .iter()
        .map(|f| endpoint_port(endpoint(f, false)))
        .collect();
    assert_eq!(listed.len(), FLOWS as usize, "every flow listed once");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), ports);
}
