//! Host mode: settling endpoints the kernel may have let go of without a segment on the wire,
//! against its own socket table (sock_diag), instead of guessing with a timeout.
//!
//! A request socket (SYN_RECV) leaves no trace when the kernel drops it: pruned from a full SYN
//! queue of old requests (net/ipv4/inet_connection_sock.c, reqsk_timer_handler lowers the SYN-ACK
//! retries under pressure), or past its retries. The mirror saw the SYN-ACK and nothing since, so
//! only the kernel can say whether the endpoint still exists.

use std::{collections::HashMap, time::Duration};

use tcpstate_common::{
    flow::{FlowKey, FlowRecord, Side},
    TcpState,
};

use crate::background::seed::Scope;

/// The states whose local endpoints are settled against the kernel.
pub const SETTLED: [TcpState; 1] = [TcpState::SynRecv];

/// An endpoint younger than this is left alone: the kernel has just created it, and the walk and
/// the dump are not one instant.
pub const GRACE: Duration = Duration::from_secs(1);

/// Whether a flow has a counted local endpoint in a settled state, old enough to be checked.
pub fn candidate(key: &FlowKey, rec: &FlowRecord, now_ns: u64, scope: &Scope) -> bool {
    local_settled(key, rec, now_ns, scope).next().is_some()
}

fn local_settled<'a>(
    key: &'a FlowKey,
    rec: &'a FlowRecord,
    now_ns: u64,
    scope: &'a Scope,
) -> impl Iterator<Item = Side> + 'a {
    let w = rec.word();
    [Side::A, Side::B].into_iter().filter(move |&side| {
        w.is_counted(side)
            && SETTLED.contains(&w.state(side))
            && now_ns.saturating_sub(rec.since_ns[side.index()]) >= GRACE.as_nanos() as u64
            && scope.counts(FlowKey::words_addr(key.addr[side.index()]))
    })
}

/// Whether the kernel no longer holds a settled local endpoint of the flow in the state the
/// mirror shows: the flow is then over for this host (its handshake timed out in the kernel).
/// `kernel` is [`crate::background::seed::kernel_states`] of a dump taken after the walk read
/// `rec`.
pub fn gone(
    key: &FlowKey,
    rec: &FlowRecord,
    now_ns: u64,
    kernel: &HashMap<(FlowKey, Side), TcpState>,
    scope: &Scope,
) -> bool {
    let w = rec.word();
    local_settled(key, rec, now_ns, scope)
        .any(|side| kernel.get(&(*key, side)).copied() != Some(w.state(side)))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, net::IpAddr};

    use tcpstate_common::{flow::flowflags, FlowWord};

    use super::*;

    const NS: u64 = 1_000_000_000;
    const LOCAL: &str = "192.0.2.1";

    fn scope() -> Scope {
        Scope {
            host: HashSet::from([LOCAL.parse::<IpAddr>().unwrap()]),
            loopback: false,
        }
    }

    /// A flow whose local server (side A, counted) is in `state` since `since_s`.
    fn flow(state: TcpState, since_s: u64) -> (FlowKey, FlowRecord) {
        let (key, side) = FlowKey::canonical(
            FlowKey::addr_words(LOCAL.parse().unwrap()),
            80,
            FlowKey::addr_words("198.51.100.7".parse().unwrap()),
            40_000,
        );
        let mut w = FlowWord {
            counted: side.bit(),
            flags: flowflags::HALF_OPEN,
            ..FlowWord::default()
        };
        w.set_client(side.other());
        w.set_state(side, state);
        w.set_state(side.other(), TcpState::Established);
        let mut rec = FlowRecord {
            since_ns: [since_s * NS; 2],
            ..FlowRecord::default()
        };
        rec.set_word(w);
        (key, rec)
    }

    fn local_side(key: &FlowKey) -> Side {
        if key.port[0] == 80 {
            Side::A
        } else {
            Side::B
        }
    }

    #[test]
    fn a_request_the_kernel_dropped_is_gone_and_one_it_holds_is_not() {
        let (key, rec) = flow(TcpState::SynRecv, 10);
        let now = 20 * NS;
        assert!(candidate(&key, &rec, now, &scope()));
        let empty = HashMap::new();
        assert!(gone(&key, &rec, now, &empty, &scope()));
        let held = HashMap::from([((key, local_side(&key)), TcpState::SynRecv)]);
        assert!(!gone(&key, &rec, now, &held, &scope()));
    }

    #[test]
    fn young_endpoints_other_states_and_foreign_addresses_are_left_alone() {
        let empty = HashMap::new();
        let (key, rec) = flow(TcpState::SynRecv, 10);
        let young = 10 * NS + GRACE.as_nanos() as u64 - 1;
        assert!(!candidate(&key, &rec, young, &scope()));
        assert!(!gone(&key, &rec, young, &empty, &scope()));
        let (key, rec) = flow(TcpState::Established, 10);
        assert!(!candidate(&key, &rec, 20 * NS, &scope()));
        let (key, rec) = flow(TcpState::SynRecv, 10);
        let elsewhere = Scope {
            host: HashSet::new(),
            loopback: false,
        };
        assert!(!gone(&key, &rec, 20 * NS, &empty, &elsewhere));
    }
}
