//! Seeding the flow table from the kernel's socket table at start-up, so counts (CLOSE_WAIT
//! included) are right from the first scrape instead of filling in as segments arrive.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use tcpstate_common::{
    flow::{flowflags, FlowKey, FlowRecord, FlowWord, Side},
    tcp::WSCALE_MAX,
    TcpState,
};

use tcpstate_common::mapped::InsertError;

use crate::{
    background::expiry::Timeouts,
    sockets::sockdiag::{KernelState, Socket},
};

/// The state a peer must be in, given one endpoint's kernel state (the peer's socket is on another
/// host, or in another namespace, so the dump does not show it).
pub fn peer_state(local: TcpState) -> TcpState {
    match local {
        TcpState::SynSent => TcpState::Closed,
        TcpState::SynRecv => TcpState::Established,
        TcpState::Established | TcpState::FinWait1 => TcpState::Established,
        TcpState::FinWait2 => TcpState::CloseWait,
        TcpState::CloseWait | TcpState::LastAck => TcpState::FinWait2,
        TcpState::Closing => TcpState::Closing,
        TcpState::TimeWait | TcpState::Closed => TcpState::Closed,
    }
}

/// Which local addresses are watched (an address filter, not a scope: a scope is a namespace):
/// sockets on them are seeded and settled, and their endpoints counted.
#[derive(Debug, Default)]
pub struct Locals {
    /// Addresses of host-mode interfaces.
    pub host: HashSet<IpAddr>,
    /// Whether `lo` is watched (tap mode): loopback connections are seeded with both ends counted.
    pub loopback: bool,
    /// A container's namespace: every socket not on loopback crosses its veth, which is watched.
    pub all_but_loopback: bool,
}

impl Locals {
    /// The sockets of a container namespace whose veth is watched.
    pub fn container() -> Locals {
        Locals {
            all_but_loopback: true,
            ..Locals::default()
        }
    }

    /// Whether a socket's local address is watched. Dual-stack sockets report IPv4 peers as
    /// `::ffff:a.b.c.d`; the canonical form is the IPv4 address the wire (and the key) carries.
    pub fn counts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.host.contains(&ip)
            || (self.loopback && ip.is_loopback())
            || (self.all_but_loopback && !ip.is_loopback() && !ip.is_unspecified())
    }
}

/// What [`sync`] changed, for the daemon's books (each in the synced scope).
#[derive(Debug, Default)]
pub struct Synced {
    pub inserted: Vec<tcpstate_common::FlowWord>,
    pub deleted: Vec<tcpstate_common::FlowWord>,
    pub kept: usize,
}

impl Synced {
    /// Books what the sync changed in `scope`: the records it dropped and those it seeded.
    pub fn book(&self, scope: u32, c: &mut crate::background::books::DaemonCounters) {
        for w in &self.deleted {
            c.record_delete(scope, *w);
        }
        for w in &self.inserted {
            c.record_insert(scope, *w);
        }
    }
}

/// The records of one scope, as a walk of the table finds them (what [`sync`] checks against the
/// kernel); none when the table cannot be read, which is logged.
pub fn records_of(flows: &crate::bpf::tables::Flows, scope: u32) -> Vec<(FlowKey, FlowRecord)> {
    let mut out = Vec::new();
    if let Err(e) = flows.for_each(|k, r| {
        if k.scope == scope {
            out.push((k, r))
        }
    }) {
        tracing::warn!(error = %e, scope, "cannot read the flow table");
    }
    out
}

/// When a seed runs, and the sweeper's timeouts its timer states are back-dated against.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// CLOCK_MONOTONIC, the kernel programs' clock, taken after the dump.
    pub now_ns: u64,
    /// The daemon's configured timeouts. With them, an endpoint whose end a kernel timer decides
    /// (TIME_WAIT, an orphaned FIN_WAIT_2) is seeded so that the sweeper ends it when the kernel's
    /// timer does ([`seeded_since`]); without (`None`), it starts a whole timeout at `now_ns`,
    /// and outlives its socket by as much of its life as had passed.
    pub timeouts: Option<Timeouts>,
}

/// A bare instant, without the daemon's timeouts. Kept so that callers passing `monotonic_ns()`
/// build until they pass the timeouts.
impl From<u64> for Timing {
    fn from(now_ns: u64) -> Timing {
        Timing {
            now_ns,
            timeouts: None,
        }
    }
}

/// Brings one scope's records in line with its namespace's socket table: drops records a reused
/// (pinned) table kept for connections that changed or ended while no daemon watched, then seeds
/// every socket the table lacks. Runs after attaching, so nothing that happens meanwhile is
/// missed; records the programs create first win. `existing` are the scope's
/// records as a walk of the table found them.
pub fn sync(
    flows: &crate::bpf::tables::Flows,
    scope_id: u32,
    sockets: &[Socket],
    rule: &Locals,
    existing: &[(FlowKey, FlowRecord)],
    at: impl Into<Timing>,
) -> Synced {
    let at = at.into();
    let kernel = kernel_states(sockets, rule);
    let mut out = Synced::default();
    for (key, rec) in existing {
        let unscoped = key.in_scope(tcpstate_common::scope::HOST);
        if key.scope == scope_id && is_stale(&unscoped, rec, &kernel, rule) {
            // Only as it was judged: a segment that moved it meanwhile keeps it.
            if flows.remove_if(key, rec.word) {
                out.deleted.push(rec.word());
            }
        } else if key.scope == scope_id {
            out.kept += 1;
        }
    }
    for (key, rec) in records(sockets, rule, &at) {
        match flows.insert(&key.in_scope(scope_id), &rec) {
            Ok(()) => out.inserted.push(rec.word()),
            Err(InsertError::Exists) => {}
            Err(e) => tracing::warn!(error = %e, scope = scope_id, "could not seed a flow"),
        }
    }
    out
}

/// Builds one record per connection from the dump, flagged SEEDED (the dump tells no ages): each
/// endpoint's `since_ns` is [`seeded_since`].
pub fn records(sockets: &[Socket], locals: &Locals, at: &Timing) -> Vec<(FlowKey, FlowRecord)> {
    let now_ns = at.now_ns;
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == KernelState::Listen)
        .map(|s| s.local.1)
        .collect();
    // Per flow: its word, the sides the dump holds, and each side's `since_ns`.
    let mut flows: HashMap<FlowKey, (FlowWord, u8, [u64; 2])> = HashMap::new();
    for s in sockets {
        let KernelState::Conn(state) = s.state else {
            continue;
        };
        if !locals.counts(s.local.0) {
            continue;
        }
        let (key, side) = FlowKey::canonical(
            FlowKey::addr_words(s.local.0),
            s.local.1,
            FlowKey::addr_words(s.remote.0),
            s.remote.1,
        );
        let (w, from_kernel, since) = flows.entry(key).or_insert_with(|| {
            let mut w = FlowWord {
                flags: flowflags::SEEDED | flowflags::MIDSTREAM,
                wscale: [WSCALE_MAX, WSCALE_MAX],
                ..FlowWord::default()
            };
            // The server is the endpoint on a listening port; else this socket opened it.
            let client = if listening.contains(&s.local.1) {
                side.other()
            } else {
                side
            };
            w.set_client(client);
            (w, 0, [now_ns; 2])
        });
        w.set_state(side, state);
        w.counted |= side.bit();
        *from_kernel |= side.bit();
        since[side.index()] = seeded_since(s, at);
    }
    flows
        .into_iter()
        .map(|(key, (mut w, from_kernel, since_ns))| {
            for side in [Side::A, Side::B] {
                if from_kernel & side.bit() == 0 {
                    w.set_state(side, peer_state(w.state(side.other())));
                }
            }
            let mut rec = FlowRecord {
                since_ns,
                last_seen: FlowRecord::seen_tick(now_ns),
                ..FlowRecord::default()
            };
            rec.set_word(w);
            (key, rec)
        })
        .collect()
}

/// The `since_ns` a seeded endpoint gets. The dump does not say when a socket entered its state,
/// so it is the seed's instant (its age a lower bound, flagged SEEDED), except where the dump
/// tells how the sweeper's timeout ([`crate::background::expiry`]) must count:
/// - TIME_WAIT and an orphaned FIN_WAIT_2, which a kernel timer ends ([`Socket::ends_in`]):
///   back-dated to `now + ends_in - timeout`, so that the configured timeout ends the endpoint
///   when the kernel's timer ends the socket. Its age then reads `timeout - ends_in`: the time
///   spent in the state when the configured timeout is the kernel's (TIME_WAIT's 60 s,
///   tcp_fin_timeout), less when it is shorter, more when it is longer.
/// - SYN_RECV, whose SYN-ACK schedule tells its age ([`Socket::age`]): `now - age`, when its SYN
///   came, as for a request seen from its SYN; `--syn-recv-timeout` stands for the namespace's
///   tcp_synack_retries both ways, and host mode settles requests against the kernel anyway.
///
/// Never after the seed's instant (ages are not negative): a fin timer longer than
/// `--fin-wait2-timeout` starts a whole timeout now, as if seen entering its state, and host
/// mode's settling keeps it for as long as the kernel does ([`crate::background::settle`]).
/// Without the daemon's timeouts (`Timing::timeouts` `None`), timer states are not back-dated.
pub fn seeded_since(s: &Socket, at: &Timing) -> u64 {
    let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let now = at.now_ns;
    let KernelState::Conn(state) = s.state else {
        return now;
    };
    let timeout = at.timeouts.and_then(|t| match state {
        TcpState::TimeWait => Some(t.time_wait),
        TcpState::FinWait2 => Some(t.fin_wait2),
        _ => None,
    });
    if let (Some(ends_in), Some(timeout)) = (s.ends_in(), timeout) {
        return now
            .saturating_add(nanos(ends_in))
            .saturating_sub(nanos(timeout))
            .min(now);
    }
    s.age().map_or(now, |age| now.saturating_sub(nanos(age)))
}

/// The kernel's state of every in-scope socket, keyed like the flow table (canonical key and the
/// socket's side).
pub fn kernel_states(sockets: &[Socket], locals: &Locals) -> HashMap<(FlowKey, Side), TcpState> {
    sockets
        .iter()
        .filter_map(|s| {
            let KernelState::Conn(state) = s.state else {
                return None;
            };
            if !locals.counts(s.local.0) {
                return None;
            }
            let (key, side) = FlowKey::canonical(
                FlowKey::addr_words(s.local.0),
                s.local.1,
                FlowKey::addr_words(s.remote.0),
                s.remote.1,
            );
            Some(((key, side), state))
        })
        .collect()
}

/// Whether a record found in a reused (pinned) table no longer describes the kernel's sockets: a
/// counted endpoint in scope whose socket is gone, or in another state. Connections change while no
/// daemon watches; such records are replaced by seeding from the kernel.
pub fn is_stale(
    key: &FlowKey,
    rec: &FlowRecord,
    kernel: &HashMap<(FlowKey, Side), TcpState>,
    locals: &Locals,
) -> bool {
    let w = rec.word();
    [Side::A, Side::B].into_iter().any(|side| {
        if !w.is_counted(side) || !locals.counts(FlowKey::words_addr(key.addr[side.index()])) {
            return false;
        }
        let kernel = kernel
            .get(&(*key, side))
            .copied()
            .unwrap_or(TcpState::Closed);
        kernel != w.state(side)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        background::expiry::{decide_with, Expired},
        sockets::sockdiag::Timer,
    };

    use super::*;

    fn sock(state: KernelState, local: (&str, u16), remote: (&str, u16)) -> Socket {
        Socket {
            state,
            local: (local.0.parse().unwrap(), local.1),
            remote: (remote.0.parse().unwrap(), remote.1),
            uid: 0,
            inode: 1,
            rqueue: 0,
            wqueue: 0,
            timer: Timer::None,
            expires: Duration::ZERO,
            retrans: 0,
        }
    }

    #[test]
    fn host_sockets_are_seeded_with_the_inferred_peer_and_roles_from_listeners() {
        let socks = vec![
            sock(KernelState::Listen, ("0.0.0.0", 80), ("0.0.0.0", 0)),
            sock(
                KernelState::Conn(TcpState::CloseWait),
                ("192.0.2.1", 80),
                ("192.0.2.2", 40000),
            ),
            sock(
                KernelState::Conn(TcpState::Established),
                ("192.0.2.1", 41000),
                ("192.0.2.9", 443),
            ),
            // Not on a watched address: not seeded.
            sock(
                KernelState::Conn(TcpState::Established),
                ("127.0.0.1", 5000),
                ("127.0.0.1", 6000),
            ),
        ];
        let locals = Locals {
            host: ["192.0.2.1".parse().unwrap()].into(),
            ..Locals::default()
        };
        let recs = records(&socks, &locals, &5_000_000_000.into());
        assert_eq!(recs.len(), 2);
        for (key, rec) in recs {
            let w = rec.word();
            let local =
                if FlowKey::words_addr(key.addr[0]) == "192.0.2.1".parse::<IpAddr>().unwrap() {
                    Side::A
                } else {
                    Side::B
                };
            assert!(w.is_counted(local) && !w.is_counted(local.other()));
            assert!(w.has(flowflags::SEEDED));
            if key.port[local.index()] == 80 {
                assert_eq!(w.state(local), TcpState::CloseWait);
                assert_eq!(w.state(local.other()), TcpState::FinWait2);
                assert_eq!(w.role(local), tcpstate_common::Role::Server);
            } else {
                assert_eq!(w.state(local), TcpState::Established);
                assert_eq!(w.role(local), tcpstate_common::Role::Client);
            }
        }
    }

    #[test]
    fn dual_stack_sockets_count_by_their_ipv4_address() {
        // An AF_INET6 listener on [::] reports IPv4 peers as ::ffff:a.b.c.d.
        let socks = vec![
            sock(
                KernelState::Conn(TcpState::CloseWait),
                ("::ffff:192.0.2.1", 80),
                ("::ffff:192.0.2.2", 40000),
            ),
            sock(
                KernelState::Conn(TcpState::Established),
                ("::ffff:127.0.0.1", 80),
                ("::ffff:127.0.0.1", 41000),
            ),
        ];
        let host = Locals {
            host: ["192.0.2.1".parse().unwrap()].into(),
            ..Locals::default()
        };
        let recs = records(&socks, &host, &1.into());
        assert_eq!(
            recs.len(),
            1,
            "the host address, however the socket spells it"
        );
        let loopback = Locals {
            loopback: true,
            ..Locals::default()
        };
        assert_eq!(
            records(&socks, &loopback, &1.into()).len(),
            1,
            "mapped loopback is loopback"
        );
    }

    #[test]
    fn loopback_pairs_take_both_states_from_the_kernel() {
        let socks = vec![
            sock(
                KernelState::Conn(TcpState::FinWait2),
                ("127.0.0.1", 50000),
                ("127.0.0.1", 8080),
            ),
            sock(
                KernelState::Conn(TcpState::CloseWait),
                ("127.0.0.1", 8080),
                ("127.0.0.1", 50000),
            ),
        ];
        let locals = Locals {
            loopback: true,
            ..Locals::default()
        };
        let recs = records(&socks, &locals, &1.into());
        assert_eq!(recs.len(), 1);
        let w = recs[0].1.word();
        assert_eq!(w.counted, 3);
        let mut states = [w.state(Side::A), w.state(Side::B)];
        states.sort();
        assert_eq!(states, [TcpState::FinWait2, TcpState::CloseWait]);
    }

    #[test]
    fn records_that_disagree_with_the_kernel_are_stale() {
        let locals = Locals {
            host: ["192.0.2.1".parse().unwrap()].into(),
            ..Locals::default()
        };
        let live = sock(
            KernelState::Conn(TcpState::CloseWait),
            ("192.0.2.1", 80),
            ("192.0.2.2", 40000),
        );
        let (key, side) = FlowKey::canonical(
            FlowKey::addr_words(live.local.0),
            80,
            FlowKey::addr_words(live.remote.0),
            40000,
        );
        let rec_in = |state: TcpState| {
            let mut w = FlowWord::default();
            w.set_state(side, state);
            w.set_state(side.other(), TcpState::FinWait2);
            w.counted = side.bit();
            let mut r = FlowRecord::default();
            r.set_word(w);
            r
        };
        let kernel = kernel_states(std::slice::from_ref(&live), &locals);
        assert!(
            !is_stale(&key, &rec_in(TcpState::CloseWait), &kernel, &locals),
            "same state: kept, with its age"
        );
        assert!(
            is_stale(&key, &rec_in(TcpState::Established), &kernel, &locals),
            "moved on while no daemon watched"
        );
        let gone = HashMap::new();
        assert!(
            is_stale(&key, &rec_in(TcpState::CloseWait), &gone, &locals),
            "socket gone"
        );
        assert!(
            !is_stale(&key, &rec_in(TcpState::Closed), &gone, &locals),
            "closed and gone agree"
        );
    }

    const NS: u64 = 1_000_000_000;
    /// The seed's instant: an hour into the clock, so back-dating never saturates at 0.
    const NOW: u64 = 3600 * NS;

    /// The daemon's defaults (`tcpstate run --help`).
    fn timeouts() -> Timeouts {
        Timeouts::DEFAULTS
    }

    /// A host socket (192.0.2.1:80) in `state` with `timer` pending, `expires_s` left of it,
    /// owned by no process (inode 0), nothing sent again.
    fn timed(state: TcpState, timer: Timer, expires_s: u64) -> Socket {
        Socket {
            timer,
            expires: Duration::from_secs(expires_s),
            inode: 0,
            ..sock(
                KernelState::Conn(state),
                ("192.0.2.1", 80),
                ("192.0.2.2", 40000),
            )
        }
    }

    /// `s` seeded at [`NOW`] with the daemon's timeouts: its record, and the side of `s`.
    fn seeded(s: Socket) -> (FlowRecord, Side) {
        let locals = Locals {
            host: ["192.0.2.1".parse().unwrap()].into(),
            ..Locals::default()
        };
        let at = Timing {
            now_ns: NOW,
            timeouts: Some(timeouts()),
        };
        let recs = records(std::slice::from_ref(&s), &locals, &at);
        assert_eq!(recs.len(), 1);
        let (key, rec) = recs[0];
        let local = if key.port[0] == 80 { Side::A } else { Side::B };
        assert_eq!(KernelState::Conn(rec.word().state(local)), s.state);
        (rec, local)
    }

    /// What the sweeper decides `after_s` seconds past the seed, as in host mode.
    fn swept(rec: &FlowRecord, after_s: u64) -> Option<Expired> {
        decide_with(rec, NOW + after_s * NS, &timeouts(), true)
    }

    #[test]
    fn a_seeded_time_wait_ends_when_the_kernels_timer_does() {
        // Regression (issue 18): TIME_WAITs seeded 45 s into their life lived 60 s more.
        let (rec, local) = seeded(timed(TcpState::TimeWait, Timer::TimeWait, 15));
        assert_eq!(swept(&rec, 14), None);
        assert_eq!(swept(&rec, 15), Some(Expired::TimeWait));
        assert_eq!(
            rec.since_ns[local.index()],
            NOW - 45 * NS,
            "aged 60 s - 15 s: its time in TIME_WAIT under the kernel's 60 s"
        );
        assert_eq!(
            rec.since_ns[local.other().index()],
            NOW,
            "the inferred peer is not back-dated"
        );
        assert!(
            rec.word().has(flowflags::SEEDED),
            "the age is still flagged"
        );
    }

    #[test]
    fn a_seeded_request_socket_is_aged_from_its_syn_ack_schedule() {
        // The fifth SYN-ACK sent again 19 s ago (1 + 2 + 4 + 8 + 16 s of timers before it), the
        // last timer due in 13 s: 50 s old. The kernel drops it in 13 s, at 63 s of age;
        // --syn-recv-timeout (65 s) ends it 2 s later, as it does a request seen from its SYN.
        let last = Socket {
            retrans: 5,
            ..timed(TcpState::SynRecv, Timer::Retransmit, 13)
        };
        let (rec, local) = seeded(last.clone());
        assert_eq!(rec.since_ns[local.index()], NOW - 50 * NS);
        assert_eq!(swept(&rec, 14), None);
        assert_eq!(swept(&rec, 15), Some(Expired::Handshake));
        // Its age is a fact of the dump: known without the daemon's timeouts too.
        assert_eq!(seeded_since(&last, &NOW.into()), NOW - 50 * NS);
    }

    #[test]
    fn an_orphaned_fin_wait2_ends_with_its_fin_timer_and_a_half_closed_one_is_not_back_dated() {
        // Where nothing settles against the kernel (a namespace without a sock_diag socket of
        // its own), the timer alone ends them.
        let unsettled = |rec: &FlowRecord, after_s: u64| {
            decide_with(rec, NOW + after_s * NS, &timeouts(), false)
        };
        // An orphan the kernel holds as a TIME_WAIT mini-socket in FIN_WAIT_2, or still as a full
        // socket (no inode) on its fin timer.
        for timer in [Timer::TimeWait, Timer::Keepalive] {
            let (rec, local) = seeded(timed(TcpState::FinWait2, timer, 20));
            assert_eq!(rec.since_ns[local.index()], NOW - 40 * NS, "{timer:?}");
            assert_eq!(unsettled(&rec, 19), None, "{timer:?}");
            assert_eq!(unsettled(&rec, 20), Some(Expired::Other), "{timer:?}");
        }
        // Shut down for writing only, by a process that still owns the socket: no timer ends it
        // (the kernel keeps it for as long as the peer keeps its end), or sk_timer is keepalive.
        for timer in [Timer::None, Timer::Keepalive] {
            let owned = Socket {
                inode: 7,
                ..timed(TcpState::FinWait2, timer, 20)
            };
            let (rec, local) = seeded(owned);
            assert_eq!(rec.since_ns[local.index()], NOW, "{timer:?}");
        }
    }

    #[test]
    fn seeding_never_dates_an_endpoint_after_the_seed_nor_back_dates_without_timeouts() {
        // A fin timer longer than --fin-wait2-timeout: a whole timeout from now, not later.
        let (rec, local) = seeded(timed(TcpState::FinWait2, Timer::TimeWait, 90));
        assert_eq!(rec.since_ns[local.index()], NOW);
        // Established sockets' timers (retransmission, keepalive) do not end them.
        let (rec, local) = seeded(timed(TcpState::Established, Timer::Keepalive, 5));
        assert_eq!(rec.since_ns[local.index()], NOW);
        // Without the daemon's timeouts, a bare instant: nothing back-dated.
        let tw = timed(TcpState::TimeWait, Timer::TimeWait, 15);
        assert_eq!(seeded_since(&tw, &NOW.into()), NOW);
    }
}
