//! Host mode: settling endpoints the kernel may have let go of without a segment on the wire,
//! against its own socket table (sock_diag), instead of guessing with a timeout.
//!
//! - A request socket (SYN_RECV) leaves no trace when the kernel drops it: pruned from a full SYN
//!   queue of old requests (net/ipv4/inet_connection_sock.c, reqsk_timer_handler lowers the
//!   SYN-ACK retries under pressure), past its retries, or on an ICMP error (tcp_req_err).
//! - A FIN_WAIT_2 socket past `--fin-wait2-timeout` is gone if it was orphaned (tcp_fin_timeout)
//!   and stays for as long as its peer does if it was only shut down for writing.
//! - A midstream pickup not yet seen in both directions ([`FlowWord::pending`]) is a connection
//!   if the kernel has its local socket, a stray segment if not.

use std::{collections::HashMap, time::Duration};

use tcpstate_common::{
    flow::{FlowKey, FlowRecord, FlowWord, Side},
    TcpState,
};

use crate::background::{expiry::Expired, seed::Scope};

/// An endpoint younger than this is left alone: the kernel has just created it, and the walk and
/// the dump are not one instant.
pub const GRACE: Duration = Duration::from_secs(1);

/// What the kernel's socket table says of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Nothing to change.
    Keep,
    /// The kernel no longer holds the local endpoint: the flow is over for this host.
    Gone(Expired),
    /// A pending midstream pickup whose local socket exists: it is a connection.
    Confirm,
}

/// The local endpoints of a flow (watched, on a host-mode address).
fn locals<'a>(key: &'a FlowKey, w: FlowWord, scope: &'a Scope) -> impl Iterator<Item = Side> + 'a {
    [Side::A, Side::B].into_iter().filter(move |&side| {
        w.counted & side.bit() != 0 && scope.counts(FlowKey::words_addr(key.addr[side.index()]))
    })
}

/// Whether the kernel must be asked about the flow: a local endpoint in SYN_RECV for longer than
/// [`GRACE`], in FIN_WAIT_2 for longer than `fin_wait2`, or a pending pickup older than [`GRACE`].
pub fn candidate(
    key: &FlowKey,
    rec: &FlowRecord,
    now_ns: u64,
    scope: &Scope,
    fin_wait2: Duration,
) -> bool {
    let w = rec.word();
    locals(key, w, scope).any(|side| {
        let age = Duration::from_nanos(now_ns.saturating_sub(rec.since_ns[side.index()]));
        if w.pending != 0 {
            return age >= GRACE;
        }
        match w.state(side) {
            TcpState::SynRecv => age >= GRACE,
            TcpState::FinWait2 => age >= fin_wait2,
            _ => false,
        }
    })
}

/// The sock_diag state bits (1 << TCP_*) a dump needs to settle this flow: SYN_RECV with request
/// sockets (TCP_NEW_SYN_RECV), FIN_WAIT_2 (orphans turned into TIME_WAIT mini-sockets keep it as
/// their substate), or every state for a pending pickup (its local socket may be in any).
pub fn states_needed(rec: &FlowRecord) -> u32 {
    let w = rec.word();
    if w.pending != 0 {
        return u32::MAX;
    }
    let mut mask = 0;
    for side in [Side::A, Side::B] {
        mask |= match w.state(side) {
            TcpState::SynRecv => (1 << 3) | (1 << 12),
            TcpState::FinWait2 => 1 << 5,
            _ => 0,
        };
    }
    mask
}

/// The verdict on a [`candidate`], from `kernel` ([`crate::background::seed::kernel_states`] of a
/// dump taken after the walk read `rec`).
pub fn verdict(
    key: &FlowKey,
    rec: &FlowRecord,
    now_ns: u64,
    kernel: &HashMap<(FlowKey, Side), TcpState>,
    scope: &Scope,
    fin_wait2: Duration,
) -> Settled {
    if !candidate(key, rec, now_ns, scope, fin_wait2) {
        return Settled::Keep;
    }
    let w = rec.word();
    for side in locals(key, w, scope) {
        let held = kernel.get(&(*key, side)).copied();
        if w.pending != 0 {
            return match held {
                Some(_) => Settled::Confirm,
                None => Settled::Gone(Expired::Other),
            };
        }
        let state = w.state(side);
        match state {
            TcpState::SynRecv if held != Some(state) => return Settled::Gone(Expired::Handshake),
            TcpState::FinWait2 if held != Some(state) => return Settled::Gone(Expired::Other),
            _ => {}
        }
    }
    Settled::Keep
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, net::IpAddr};

    use tcpstate_common::flow::flowflags;

    use super::*;

    const NS: u64 = 1_000_000_000;
    const LOCAL: &str = "192.0.2.1";
    const FW2: Duration = Duration::from_secs(60);

    fn scope() -> Scope {
        Scope {
            host: HashSet::from([LOCAL.parse::<IpAddr>().unwrap()]),
            ..Scope::default()
        }
    }

    /// A flow whose local server (watched) is in `state` since `since_s`, its peer in `peer`.
    fn flow(state: TcpState, peer: TcpState, since_s: u64) -> (FlowKey, FlowRecord, Side) {
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
        w.set_state(side.other(), peer);
        let mut rec = FlowRecord {
            since_ns: [since_s * NS; 2],
            ..FlowRecord::default()
        };
        rec.set_word(w);
        (key, rec, side)
    }

    fn settle(
        key: &FlowKey,
        rec: &FlowRecord,
        now_s: u64,
        held: Option<(Side, TcpState)>,
    ) -> Settled {
        let kernel: HashMap<_, _> = held
            .map(|(side, s)| ((*key, side), s))
            .into_iter()
            .collect();
        verdict(key, rec, now_s * NS, &kernel, &scope(), FW2)
    }

    #[test]
    fn a_request_the_kernel_dropped_is_gone_and_one_it_holds_is_not() {
        let (key, rec, local) = flow(TcpState::SynRecv, TcpState::Established, 10);
        assert!(candidate(&key, &rec, 20 * NS, &scope(), FW2));
        assert_eq!(
            settle(&key, &rec, 20, None),
            Settled::Gone(Expired::Handshake)
        );
        let held = Some((local, TcpState::SynRecv));
        assert_eq!(settle(&key, &rec, 20, held), Settled::Keep);
    }

    #[test]
    fn fin_wait2_past_its_timeout_is_gone_only_if_the_kernel_let_go() {
        let (key, rec, local) = flow(TcpState::FinWait2, TcpState::CloseWait, 10);
        assert!(
            !candidate(&key, &rec, 69 * NS, &scope(), FW2),
            "before the timeout"
        );
        // Orphaned: the kernel dropped it after tcp_fin_timeout.
        assert_eq!(settle(&key, &rec, 71, None), Settled::Gone(Expired::Other));
        // Shut down for writing only: the kernel keeps it as long as the peer keeps its end.
        let held = Some((local, TcpState::FinWait2));
        assert_eq!(settle(&key, &rec, 7100, held), Settled::Keep);
    }

    #[test]
    fn a_pending_pickup_is_confirmed_by_its_socket_or_dropped_without_one() {
        let (key, mut rec, local) = flow(TcpState::Established, TcpState::Established, 10);
        let mut w = rec.word();
        w.pending = 0x81;
        rec.set_word(w);
        assert!(
            !candidate(&key, &rec, 10 * NS, &scope(), FW2),
            "within the grace"
        );
        let held = Some((local, TcpState::Established));
        assert_eq!(settle(&key, &rec, 12, held), Settled::Confirm);
        assert_eq!(settle(&key, &rec, 12, None), Settled::Gone(Expired::Other));
    }

    #[test]
    fn the_dump_asks_only_for_the_states_to_settle() {
        let (_, rec, _) = flow(TcpState::SynRecv, TcpState::Established, 10);
        assert_eq!(states_needed(&rec), (1 << 3) | (1 << 12));
        let (_, rec, _) = flow(TcpState::FinWait2, TcpState::CloseWait, 10);
        assert_eq!(states_needed(&rec), 1 << 5);
        let (_, mut rec, _) = flow(TcpState::Established, TcpState::Established, 10);
        assert_eq!(states_needed(&rec), 0);
        let mut w = rec.word();
        w.pending = 0x81;
        rec.set_word(w);
        assert_eq!(
            states_needed(&rec),
            u32::MAX,
            "a pending pickup's socket may be in any state"
        );
    }

    #[test]
    fn young_endpoints_other_states_and_foreign_addresses_are_left_alone() {
        let (key, rec, _) = flow(TcpState::SynRecv, TcpState::Established, 10);
        let young = 10 * NS + GRACE.as_nanos() as u64 - 1;
        assert!(!candidate(&key, &rec, young, &scope(), FW2));
        assert_eq!(settle(&key, &rec, 10, None), Settled::Keep);
        let (key, rec, _) = flow(TcpState::Established, TcpState::Established, 10);
        assert!(!candidate(&key, &rec, 20 * NS, &scope(), FW2));
        let (key, rec, _) = flow(TcpState::SynRecv, TcpState::Established, 10);
        let elsewhere = Scope::default();
        assert!(!candidate(&key, &rec, 20 * NS, &elsewhere, FW2));
    }
}
