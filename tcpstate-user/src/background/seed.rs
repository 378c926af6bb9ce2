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

use crate::sockets::sockdiag::{KernelState, Socket};

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

/// Which local addresses count: sockets on them are seeded, and their endpoints counted.
#[derive(Debug, Default)]
pub struct Scope {
    /// Addresses of host-mode interfaces.
    pub host: HashSet<IpAddr>,
    /// Whether `lo` is watched (tap mode): loopback connections are seeded with both ends counted.
    pub loopback: bool,
    /// A container's namespace: every socket not on loopback crosses its veth, which is watched.
    pub all_but_loopback: bool,
}

impl Scope {
    /// The sockets of a container namespace whose veth is watched.
    pub fn container() -> Scope {
        Scope {
            all_but_loopback: true,
            ..Scope::default()
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

/// Brings one scope's records in line with its namespace's socket table: drops records a reused
/// (pinned) table kept for connections that changed or ended while no daemon watched, then seeds
/// every socket the table lacks. Runs after attaching, so nothing that happens meanwhile is
/// missed; records the programs create first win. `existing` are the scope's
/// records as a walk of the table found them.
pub fn sync(
    flows: &crate::bpf::tables::Flows,
    scope_id: u32,
    sockets: &[Socket],
    rule: &Scope,
    existing: &[(FlowKey, FlowRecord)],
    now_ns: u64,
) -> Synced {
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
    for (key, rec) in records(sockets, rule, now_ns) {
        match flows.insert(&key.in_scope(scope_id), &rec) {
            Ok(()) => out.inserted.push(rec.word()),
            Err(InsertError::Exists) => {}
            Err(e) => tracing::warn!(error = %e, scope = scope_id, "could not seed a flow"),
        }
    }
    out
}

/// Builds one record per connection from the dump. `now_ns` is CLOCK_MONOTONIC, the kernel
/// programs' clock; ages of seeded flows start there and are lower bounds (flag SEEDED).
pub fn records(sockets: &[Socket], scope: &Scope, now_ns: u64) -> Vec<(FlowKey, FlowRecord)> {
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == KernelState::Listen)
        .map(|s| s.local.1)
        .collect();
    let mut flows: HashMap<FlowKey, (FlowWord, u8)> = HashMap::new();
    for s in sockets {
        let KernelState::Conn(state) = s.state else {
            continue;
        };
        if !scope.counts(s.local.0) {
            continue;
        }
        let (key, side) = FlowKey::canonical(
            FlowKey::addr_words(s.local.0),
            s.local.1,
            FlowKey::addr_words(s.remote.0),
            s.remote.1,
        );
        let (w, from_kernel) = flows.entry(key).or_insert_with(|| {
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
            (w, 0)
        });
        w.set_state(side, state);
        w.counted |= side.bit();
        *from_kernel |= side.bit();
    }
    flows
        .into_iter()
        .map(|(key, (mut w, from_kernel))| {
            for side in [Side::A, Side::B] {
                if from_kernel & side.bit() == 0 {
                    w.set_state(side, peer_state(w.state(side.other())));
                }
            }
            let mut rec = FlowRecord {
                since_ns: [now_ns; 2],
                last_seen: FlowRecord::seen_tick(now_ns),
                ..FlowRecord::default()
            };
            rec.set_word(w);
            (key, rec)
        })
        .collect()
}

/// The kernel's state of every in-scope socket, keyed like the flow table (canonical key and the
/// socket's side).
pub fn kernel_states(sockets: &[Socket], scope: &Scope) -> HashMap<(FlowKey, Side), TcpState> {
    sockets
        .iter()
        .filter_map(|s| {
            let KernelState::Conn(state) = s.state else {
                return None;
            };
            if !scope.counts(s.local.0) {
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
    scope: &Scope,
) -> bool {
    let w = rec.word();
    [Side::A, Side::B].into_iter().any(|side| {
        if !w.is_counted(side) || !scope.counts(FlowKey::words_addr(key.addr[side.index()])) {
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
        let scope = Scope {
            host: ["192.0.2.1".parse().unwrap()].into(),
            ..Scope::default()
        };
        let recs = records(&socks, &scope, 5_000_000_000);
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
        let host = Scope {
            host: ["192.0.2.1".parse().unwrap()].into(),
            ..Scope::default()
        };
        let recs = records(&socks, &host, 1);
        assert_eq!(
            recs.len(),
            1,
            "the host address, however the socket spells it"
        );
        let loopback = Scope {
            loopback: true,
            ..Scope::default()
        };
        assert_eq!(
            records(&socks, &loopback, 1).len(),
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
        let scope = Scope {
            loopback: true,
            ..Scope::default()
        };
        let recs = records(&socks, &scope, 1);
        assert_eq!(recs.len(), 1);
        let w = recs[0].1.word();
        assert_eq!(w.counted, 3);
        let mut states = [w.state(Side::A), w.state(Side::B)];
        states.sort();
        assert_eq!(states, [TcpState::FinWait2, TcpState::CloseWait]);
    }

    #[test]
    fn records_that_disagree_with_the_kernel_are_stale() {
        let scope = Scope {
            host: ["192.0.2.1".parse().unwrap()].into(),
            ..Scope::default()
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
        let kernel = kernel_states(std::slice::from_ref(&live), &scope);
        assert!(
            !is_stale(&key, &rec_in(TcpState::CloseWait), &kernel, &scope),
            "same state: kept, with its age"
        );
        assert!(
            is_stale(&key, &rec_in(TcpState::Established), &kernel, &scope),
            "moved on while no daemon watched"
        );
        let gone = HashMap::new();
        assert!(
            is_stale(&key, &rec_in(TcpState::CloseWait), &gone, &scope),
            "socket gone"
        );
        assert!(
            !is_stale(&key, &rec_in(TcpState::Closed), &gone, &scope),
            "closed and gone agree"
        );
    }
}
