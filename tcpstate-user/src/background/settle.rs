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
//! - Any other open endpoint that has been [`QUIET`], in a settling [`Round::Quiet`]: the kernel
//!   ends connections without sending anything (net/ipv4/tcp_timer.c: tcp_write_timeout and
//!   tcp_keepalive_timer end in tcp_write_err or tcp_done): TCP_USER_TIMEOUT expired, keepalive
//!   probes unanswered, retransmissions given up after tcp_retries2 (tcp_orphan_retries when
//!   orphaned), SYNs after tcp_syn_retries or TCP_SYNCNT; also a TIME_WAIT it never kept
//!   (tcp_max_tw_buckets). What it sent before (retransmissions, probes, SYNs) is on the wire;
//!   the end is not. An endpoint whose socket is gone is over.

use std::{collections::HashMap, time::Duration};

use tcpstate_common::{
    flow::{FlowKey, FlowRecord, FlowWord, Side},
    TcpState,
};

use crate::background::{expiry::Expired, seed::Locals};

/// An endpoint younger than this is left alone: the kernel has just created it, and the walk and
/// the dump are not one instant.
pub const GRACE: Duration = Duration::from_secs(1);

/// An endpoint no segment has moved for this long (either direction, `last_seen`) is asked about
/// in the next [`Round::Quiet`]. Three seconds: above the last-seen stamp's resolution (2^30 ns,
/// so at least two real seconds without a segment) and [`GRACE`], so the walk never asks about a
/// socket the kernel is still creating or one a segment in flight is changing, and a connection
/// that is exchanging segments costs nothing; short, because the kernel's silent end comes at
/// most one retransmission timeout or keepalive interval after the endpoint's last segment, and
/// the mirror follows it within this plus the spacing of rounds ([`next_round_at`]).
pub const QUIET: Duration = Duration::from_secs(3);

/// The share of one CPU settling rounds may take: a quarter of the sweeper's
/// ([`crate::background::sweeper::SWEEP_DUTY`], an eightieth). A round's dump costs about 2 us a
/// socket in the states it asks for (the kernel fills and copies each one; measured on this
/// machine kind: 10k ESTABLISHED sockets, 12..17 ms, on top of 4..5 ms to walk an empty
/// 262k-bucket table for both families), so a host with many idle connections would otherwise
/// spend the sweeper's whole budget on them, and the walk's cadence with it.
pub const ROUND_DUTY: f64 = 1.0 / 320.0;

/// When the next [`Round::Quiet`] may run, after one at `last_ns` (0: none yet) that cost `cpu`:
/// rounds are spaced so that they take at most [`ROUND_DUTY`] of a CPU. A small host's round
/// costs well under a millisecond and runs every walk; 10k quiet connections (25 ms) every 8 s.
pub fn next_round_at(last_ns: u64, cpu: Duration) -> u64 {
    if last_ns == 0 {
        return 0;
    }
    let spacing = cpu.as_nanos() as f64 * (1.0 / ROUND_DUTY - 1.0);
    last_ns.saturating_add(spacing as u64)
}

/// Which endpoints a walk asks the kernel about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// Those a kernel timer or a pickup makes due (SYN_RECV, FIN_WAIT_2 past its timeout, a
    /// pending pickup): every walk.
    Due,
    /// Those, and every other open endpoint [`QUIET`] for as long: a settling round, as often as
    /// [`next_round_at`] allows.
    Quiet,
}

/// How a walk settles: the local addresses, the FIN_WAIT_2 timeout, and the round.
#[derive(Clone, Copy, Debug)]
pub struct Rule<'a> {
    pub locals: &'a Locals,
    pub fin_wait2: Duration,
    pub round: Round,
}

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

/// Why a local endpoint is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    /// A pending midstream pickup past [`GRACE`]: any socket confirms it.
    Pending,
    /// SYN_RECV past [`GRACE`]: its request socket (or the child of a Fast Open) must be there.
    Request,
    /// FIN_WAIT_2 past `--fin-wait2-timeout`: it must still be FIN_WAIT_2.
    FinWait2,
    /// Quiet for [`QUIET`] in this state: its socket must be there, in this state or one the
    /// kernel reaches from it without a segment.
    Quiet(TcpState),
}

/// sock_diag state bit (1 << TCP_*, include/net/tcp_states.h) of a state.
const fn bit(state: TcpState) -> u32 {
    1 << match state {
        TcpState::Established => 1,
        TcpState::SynSent => 2,
        TcpState::SynRecv => 3,
        TcpState::FinWait1 => 4,
        TcpState::FinWait2 => 5,
        TcpState::TimeWait => 6,
        TcpState::Closed => 7,
        TcpState::CloseWait => 8,
        TcpState::LastAck => 9,
        TcpState::Closing => 11,
    }
}

impl Ask {
    /// The sock_diag state bits the dump needs: SYN_RECV with request sockets (TCP_NEW_SYN_RECV),
    /// FIN_WAIT_2 (orphans turned into TIME_WAIT mini-sockets keep it as their substate), every
    /// state for a pickup, and for a quiet endpoint its state and the one close() moves it to
    /// before its FIN is on the wire (tcp_close sets FIN_WAIT_1 or LAST_ACK, tcp_send_fin queues
    /// the FIN behind unsent data: against a closed window it waits). The kernel fills and copies
    /// only the sockets asked for, which is most of a dump's cost: a host whose quiet endpoints are
    /// a few CLOSE_WAIT leaks does not pay for its busy ESTABLISHED connections.
    const fn states(self) -> u32 {
        match self {
            Ask::Request => bit(TcpState::SynRecv) | (1 << 12),
            Ask::FinWait2 => bit(TcpState::FinWait2),
            Ask::Pending => u32::MAX,
            // A server the mirror saw established may still be a request socket: its listener
            // dropped the final ACK for a full accept queue (tcp_check_req, listen_overflow),
            // keeps the request and resends its SYN-ACK, whose retransmissions must still find
            // the flow (`tcpstate_synack_retransmits_total`).
            Ask::Quiet(TcpState::Established) => {
                bit(TcpState::Established)
                    | bit(TcpState::FinWait1)
                    | bit(TcpState::SynRecv)
                    | (1 << 12)
            }
            Ask::Quiet(TcpState::CloseWait) => bit(TcpState::CloseWait) | bit(TcpState::LastAck),
            Ask::Quiet(state) => bit(state),
        }
    }
}

/// The local endpoints of a flow (watched, on a host-mode address).
fn local_sides<'a>(
    key: &'a FlowKey,
    w: FlowWord,
    locals: &'a Locals,
) -> impl Iterator<Item = Side> + 'a {
    [Side::A, Side::B].into_iter().filter(move |&side| {
        w.counted & side.bit() != 0 && locals.counts(FlowKey::words_addr(key.addr[side.index()]))
    })
}

/// Why the kernel must be asked about local endpoint `side`, if it must.
fn ask(rec: &FlowRecord, side: Side, now_ns: u64, rule: &Rule) -> Option<Ask> {
    let w = rec.word();
    let age = Duration::from_nanos(now_ns.saturating_sub(rec.since_ns[side.index()]));
    if w.pending != 0 {
        return (age >= GRACE).then_some(Ask::Pending);
    }
    let quiet = Duration::from_nanos(now_ns.saturating_sub(rec.last_seen_ns()));
    match w.state(side) {
        // Not a connection of the kernel's (a remote SYN not answered, or over by RST).
        TcpState::Closed => None,
        TcpState::SynRecv => (age >= GRACE).then_some(Ask::Request),
        TcpState::FinWait2 if age >= rule.fin_wait2 => Some(Ask::FinWait2),
        state => (rule.round == Round::Quiet && quiet >= QUIET && age >= GRACE)
            .then_some(Ask::Quiet(state)),
    }
}

/// Whether the kernel must be asked about the flow: a local endpoint in SYN_RECV for longer than
/// [`GRACE`], in FIN_WAIT_2 for longer than `fin_wait2`, a pending pickup older than [`GRACE`],
/// or, in a [`Round::Quiet`], any other open local endpoint [`QUIET`] for as long.
pub fn candidate(key: &FlowKey, rec: &FlowRecord, now_ns: u64, rule: &Rule) -> bool {
    local_sides(key, rec.word(), rule.locals).any(|side| ask(rec, side, now_ns, rule).is_some())
}

/// The sock_diag state bits (1 << TCP_*) a dump needs to settle this flow.
pub fn states_needed(key: &FlowKey, rec: &FlowRecord, now_ns: u64, rule: &Rule) -> u32 {
    local_sides(key, rec.word(), rule.locals)
        .filter_map(|side| ask(rec, side, now_ns, rule))
        .fold(0, |mask, a| mask | a.states())
}

/// The verdict on a [`candidate`], from `kernel` ([`crate::background::seed::kernel_states`] of a
/// dump, with [`states_needed`], taken after the walk read `rec`).
///
/// A quiet endpoint whose socket the dump lacks is over. The dump holds only its state and the
/// one close() reaches silently; a socket in any other state means the mirror lost track of the
/// connection (a segment it could not follow): ending it is right too, as its next segment picks
/// it up midstream, and the pickup is confirmed against this table.
pub fn verdict(
    key: &FlowKey,
    rec: &FlowRecord,
    now_ns: u64,
    kernel: &HashMap<(FlowKey, Side), TcpState>,
    rule: &Rule,
) -> Settled {
    let w = rec.word();
    for side in local_sides(key, w, rule.locals) {
        let Some(why) = ask(rec, side, now_ns, rule) else {
            continue;
        };
        let held = kernel.get(&(*key, side)).copied();
        let state = w.state(side);
        match (why, held) {
            (Ask::Pending, Some(_)) => return Settled::Confirm,
            (Ask::Pending, None) => return Settled::Gone(Expired::Other),
            (Ask::Request, _) if held != Some(state) => return Settled::Gone(Expired::Handshake),
            (Ask::FinWait2, _) if held != Some(state) => return Settled::Gone(Expired::Other),
            (Ask::Quiet(_), None) => return Settled::Gone(ended_silently(state)),
            _ => {}
        }
    }
    Settled::Keep
}

/// How an endpoint the kernel ended without a segment is booked, through the sweeper's own
/// paths: a client whose SYNs went unanswered gave up its handshake (tcp_syn_retries or
/// TCP_SYNCNT: `handshakes_total{result="timeout"}`, as the SYN_SENT timeout counts it); a
/// TIME_WAIT the kernel did not keep as a TIME_WAIT that ran out; anything else as a flow that
/// timed out. Not a reset: no RST crossed the wire, and `resets_total` counts segments.
fn ended_silently(state: TcpState) -> Expired {
    match state {
        TcpState::SynSent | TcpState::SynRecv => Expired::Handshake,
        TcpState::TimeWait => Expired::TimeWait,
        _ => Expired::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, net::IpAddr};

    use tcpstate_common::flow::flowflags;

    use super::*;

    const NS: u64 = 1_000_000_000;
    const LOCAL: &str = "192.0.2.1";
    const FW2: Duration = Duration::from_secs(60);

    fn locals() -> Locals {
        Locals {
            host: HashSet::from([LOCAL.parse::<IpAddr>().unwrap()]),
            ..Locals::default()
        }
    }

    /// A flow whose local server (watched) entered `state` at `since_s`, its peer in `peer`,
    /// with its last segment seen then.
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
            last_seen: FlowRecord::seen_tick(since_s * NS),
            ..FlowRecord::default()
        };
        rec.set_word(w);
        (key, rec, side)
    }

    /// As `flow`, with the local endpoint the client (a connection this host opened).
    fn client_flow(state: TcpState, peer: TcpState, since_s: u64) -> (FlowKey, FlowRecord, Side) {
        let (key, mut rec, side) = flow(state, peer, since_s);
        let mut w = rec.word();
        w.set_client(side);
        rec.set_word(w);
        (key, rec, side)
    }

    /// A settling round's rule (every candidate asked about) over `locals`.
    fn rule(locals: &Locals) -> Rule<'_> {
        Rule {
            locals,
            fin_wait2: FW2,
            round: Round::Quiet,
        }
    }

    fn asked(key: &FlowKey, rec: &FlowRecord, now_ns: u64) -> bool {
        candidate(key, rec, now_ns, &rule(&locals()))
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
        verdict(key, rec, now_s * NS, &kernel, &rule(&locals()))
    }

    fn needed(key: &FlowKey, rec: &FlowRecord, now_s: u64) -> u32 {
        states_needed(key, rec, now_s * NS, &rule(&locals()))
    }

    #[test]
    fn a_request_the_kernel_dropped_is_gone_and_one_it_holds_is_not() {
        let (key, rec, local) = flow(TcpState::SynRecv, TcpState::Established, 10);
        assert!(asked(&key, &rec, 20 * NS));
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
        // Before the timeout it is only quiet: its socket keeps it.
        let held = Some((local, TcpState::FinWait2));
        assert_eq!(settle(&key, &rec, 69, held), Settled::Keep);
        assert_eq!(needed(&key, &rec, 69), 1 << 5);
        // Orphaned: the kernel dropped it after tcp_fin_timeout.
        assert_eq!(settle(&key, &rec, 71, None), Settled::Gone(Expired::Other));
        assert_eq!(needed(&key, &rec, 71), 1 << 5);
        // Shut down for writing only: the kernel keeps it as long as the peer keeps its end.
        assert_eq!(settle(&key, &rec, 7100, held), Settled::Keep);
    }

    #[test]
    fn a_pending_pickup_is_confirmed_by_its_socket_or_dropped_without_one() {
        let (key, mut rec, local) = flow(TcpState::Established, TcpState::Established, 10);
        let mut w = rec.word();
        w.pending = 0x81;
        rec.set_word(w);
        assert!(!asked(&key, &rec, 10 * NS), "within the grace");
        let held = Some((local, TcpState::Established));
        assert_eq!(settle(&key, &rec, 12, held), Settled::Confirm);
        assert_eq!(settle(&key, &rec, 12, None), Settled::Gone(Expired::Other));
    }

    #[test]
    fn a_quiet_established_server_the_kernel_holds_as_a_request_stays() {
        // Its listener dropped the final ACK (accept queue full) and keeps the request socket,
        // which resends its SYN-ACK: the flow must stay to see those counted.
        let (key, rec, local) = flow(TcpState::Established, TcpState::Established, 10);
        let held = Some((local, TcpState::SynRecv));
        assert_eq!(settle(&key, &rec, 20, held), Settled::Keep);
    }

    #[test]
    fn the_dump_asks_only_for_the_states_to_settle() {
        let (key, rec, _) = flow(TcpState::SynRecv, TcpState::Established, 10);
        assert_eq!(needed(&key, &rec, 12), (1 << 3) | (1 << 12));
        let (key, rec, _) = flow(TcpState::FinWait2, TcpState::CloseWait, 10);
        assert_eq!(needed(&key, &rec, 71), 1 << 5);
        let (key, mut rec, _) = flow(TcpState::Established, TcpState::Established, 10);
        assert_eq!(needed(&key, &rec, 11), 0, "segments moved it a second ago");
        assert_eq!(
            needed(&key, &rec, 20),
            (1 << 1) | (1 << 4) | (1 << 3) | (1 << 12),
            "ESTABLISHED, or FIN_WAIT_1 with its FIN queued behind unsent data, or a request \
             socket whose final ACK its listener dropped"
        );
        let (key, rec2, _) = flow(TcpState::CloseWait, TcpState::FinWait2, 10);
        assert_eq!(needed(&key, &rec2, 20), (1 << 8) | (1 << 9));
        let (key, rec2, _) = client_flow(TcpState::SynSent, TcpState::Closed, 10);
        assert_eq!(needed(&key, &rec2, 20), 1 << 2);
        let (key, rec2, _) = client_flow(TcpState::TimeWait, TcpState::Closed, 10);
        assert_eq!(needed(&key, &rec2, 20), 1 << 6);
        let mut w = rec.word();
        w.pending = 0x81;
        rec.set_word(w);
        assert_eq!(
            needed(&key, &rec, 12),
            u32::MAX,
            "a pending pickup's socket may be in any state"
        );
    }

    #[test]
    fn young_endpoints_busy_ones_and_foreign_addresses_are_left_alone() {
        let (key, rec, _) = flow(TcpState::SynRecv, TcpState::Established, 10);
        let young = 10 * NS + GRACE.as_nanos() as u64 - 1;
        assert!(!asked(&key, &rec, young));
        assert_eq!(settle(&key, &rec, 10, None), Settled::Keep);
        // Segments still moving it: the wire says it is alive.
        let (key, mut rec, _) = flow(TcpState::Established, TcpState::Established, 10);
        rec.last_seen = FlowRecord::seen_tick(19 * NS);
        assert!(!asked(&key, &rec, 20 * NS));
        assert_eq!(settle(&key, &rec, 20, None), Settled::Keep);
        let (key, rec, _) = flow(TcpState::SynRecv, TcpState::Established, 10);
        let elsewhere = Locals::default();
        assert!(!candidate(&key, &rec, 20 * NS, &rule(&elsewhere)));
    }

    #[test]
    fn a_quiet_endpoint_whose_socket_is_gone_has_ended_and_one_the_kernel_holds_stays() {
        // TCP_USER_TIMEOUT, keepalive or tcp_retries2: the kernel closed it without a segment.
        for state in [
            TcpState::Established,
            TcpState::FinWait1,
            TcpState::CloseWait,
            TcpState::Closing,
            TcpState::LastAck,
        ] {
            let peer = tcpstate_common::TcpState::Established;
            let (key, rec, local) = flow(state, peer, 10);
            let quiet = 10 + QUIET.as_secs() + 1;
            assert!(asked(&key, &rec, quiet * NS), "{state:?}");
            assert_eq!(
                settle(&key, &rec, quiet, None),
                Settled::Gone(Expired::Other),
                "{state:?}: not a reset, no RST was seen"
            );
            let held = Some((local, state));
            assert_eq!(settle(&key, &rec, quiet, held), Settled::Keep, "{state:?}");
            // Idle for days with its socket still there: still a connection.
            assert_eq!(
                settle(&key, &rec, 500_000, held),
                Settled::Keep,
                "{state:?}"
            );
        }
    }

    #[test]
    fn a_quiet_endpoint_the_kernel_moved_on_close_without_a_segment_stays() {
        // close() with unsent data against a closed window: the kernel is in FIN_WAIT_1 (or
        // LAST_ACK) with its FIN queued, the wire has not shown it yet.
        let (key, rec, local) = flow(TcpState::Established, TcpState::Established, 10);
        let held = Some((local, TcpState::FinWait1));
        assert_eq!(settle(&key, &rec, 20, held), Settled::Keep);
        let (key, rec, local) = flow(TcpState::CloseWait, TcpState::FinWait2, 10);
        let held = Some((local, TcpState::LastAck));
        assert_eq!(settle(&key, &rec, 20, held), Settled::Keep);
    }

    #[test]
    fn quiet_endpoints_are_asked_about_only_in_a_settling_round() {
        let (key, rec, _) = flow(TcpState::Established, TcpState::Established, 10);
        let locals = locals();
        let due = Rule {
            round: Round::Due,
            ..rule(&locals)
        };
        assert!(!candidate(&key, &rec, 20 * NS, &due));
        assert_eq!(states_needed(&key, &rec, 20 * NS, &due), 0);
        assert!(candidate(&key, &rec, 20 * NS, &rule(&locals)));
        // What a kernel timer makes due is asked about every walk.
        let (key, rec, _) = flow(TcpState::SynRecv, TcpState::Established, 10);
        assert!(candidate(&key, &rec, 20 * NS, &due));
        let (key, rec, _) = flow(TcpState::FinWait2, TcpState::CloseWait, 10);
        assert!(!candidate(&key, &rec, 69 * NS, &due));
        assert!(candidate(&key, &rec, 71 * NS, &due));
    }

    #[test]
    fn settling_rounds_are_spaced_to_a_quarter_of_the_sweepers_share() {
        assert_eq!(
            next_round_at(0, Duration::from_secs(1)),
            0,
            "the first walk"
        );
        // A small host: a round of 0.2 ms may run again 64 ms later, so every walk.
        let ms = |n: u64| n * 1_000_000;
        assert_eq!(
            next_round_at(ms(5000), Duration::from_micros(200)),
            ms(5000 + 63) + 800_000
        );
        // 10k quiet connections, 25 ms a round: one every 8 s.
        let at = next_round_at(ms(5000), Duration::from_millis(25));
        assert_eq!(at, ms(5000 + 7975));
        let duty = 25.0 / (at - ms(5000) + ms(25)) as f64 * 1e6;
        assert!((duty - ROUND_DUTY).abs() < 1e-9, "{duty}");
        assert_eq!(
            ROUND_DUTY * 4.0,
            crate::background::sweeper::SWEEP_DUTY,
            "a quarter of the sweeper's share"
        );
    }

    #[test]
    fn a_client_whose_syns_the_kernel_gave_up_on_is_a_handshake_timeout() {
        // tcp_syn_retries or TCP_SYNCNT ran out: the last SYN is on the wire, the end is not.
        let (key, rec, local) = client_flow(TcpState::SynSent, TcpState::Closed, 10);
        assert!(!asked(&key, &rec, 12 * NS), "not quiet yet");
        assert_eq!(
            settle(&key, &rec, 14, None),
            Settled::Gone(Expired::Handshake)
        );
        let held = Some((local, TcpState::SynSent));
        assert_eq!(settle(&key, &rec, 14, held), Settled::Keep);
    }

    #[test]
    fn a_time_wait_the_kernel_did_not_keep_ends_as_a_time_wait() {
        // tcp_max_tw_buckets reached: the kernel closes without a TIME_WAIT socket.
        let (key, rec, local) = client_flow(TcpState::TimeWait, TcpState::Closed, 10);
        assert_eq!(
            settle(&key, &rec, 14, None),
            Settled::Gone(Expired::TimeWait)
        );
        let held = Some((local, TcpState::TimeWait));
        assert_eq!(settle(&key, &rec, 14, held), Settled::Keep);
    }

    #[test]
    fn a_closed_local_endpoint_is_never_asked_about() {
        // A remote SYN the local host never answered, or a flow over by RST: no kernel socket
        // to find, the closed linger decides.
        let (key, rec, _) = flow(TcpState::Closed, TcpState::SynSent, 10);
        assert!(!asked(&key, &rec, 100 * NS));
        assert_eq!(needed(&key, &rec, 100), 0);
        assert_eq!(settle(&key, &rec, 100, None), Settled::Keep);
    }
}
