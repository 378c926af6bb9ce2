//! `tcpstate leaks`: CLOSE_WAIT endpoints past a threshold, grouped by local port and owning process.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};
use tcpstate_common::flow::monotonic_ns;

use serde_json::json;
use tcpstate_common::{
    flow::{flowflags, Side},
    maps::Settings,
    FlowKey, TcpState,
};

use crate::{
    bpf::tables,
    inspect::scopes::{self, ScopeName},
    sockets::{
        owners::{owners, Owner},
        sockdiag::KernelState,
    },
};

/// What CLOSE_WAIT piling up almost always means, in one line.
pub const HINT: &str = "the peer closed and this process never called close() on these sockets: look for a path that reads EOF or an error and returns without closing (error branches, connection pools)";

/// A leaked endpoint, joined with its socket and owner when the kernel still has them.
struct Leak {
    /// The scope (namespace) of the leaking endpoint.
    scope: u32,
    port: u16,
    remote: IpAddr,
    age_s: f64,
    lower_bound: bool,
    owner: Option<Owner>,
}

/// A socket by scope, local address and port, remote address and port (key words).
type SocketTuple = (u32, [u32; 4], u16, [u32; 4], u16);

/// The leaks of one (scope, port, process) group.
struct Group {
    scope: u32,
    port: u16,
    owner: Option<Owner>,
    count: usize,
    oldest_s: f64,
    newest_s: f64,
    lower_bound: bool,
    peers: Vec<(IpAddr, usize)>,
}

/// What `tcpstate leaks` reports, and how.
pub struct Query {
    /// The daemon's pin directory.
    pub pin_dir: PathBuf,
    pub json: bool,
    /// The CLOSE_WAIT age past which an endpoint is a leak; `None`: the daemon's.
    pub older_than: Option<Duration>,
    /// Only endpoints in this container or pod.
    pub container: Option<String>,
    pub pod: Option<String>,
}

/// Prints the report; returns whether any leak was found (exit code 1 for scripts and cron).
pub fn run(args: &Query) -> anyhow::Result<bool> {
    let pinned = tables::from_pins(&args.pin_dir)?;
    let names = scopes::names(&pinned.info);
    let now = monotonic_ns();
    let (threshold, source) = threshold(args.older_than, tables::settings_from_pins(&args.pin_dir));
    let threshold = threshold.as_secs_f64();
    let (container, pod) = (args.container.as_deref(), args.pod.as_deref());
    let mut found = Vec::new();
    pinned.flows.for_each(|key, rec| {
        let w = rec.word();
        if !names
            .get(&key.scope)
            .is_some_and(|n| n.matches(container, pod))
        {
            return;
        }
        for side in [Side::A, Side::B] {
            if !w.is_counted(side) || w.state(side) != TcpState::CloseWait {
                continue;
            }
            let age_s = now.saturating_sub(rec.since_ns[side.index()]) as f64 / 1e9;
            if age_s <= threshold {
                continue;
            }
            found.push((key, side, age_s, w.has(flowflags::SEEDED)));
        }
    })?;
    // The kernel's sockets of each namespace with a leak (socket inodes are global, so the owner
    // scan of /proc below finds a container's processes from the host).
    let sockets = scopes::sockets(&names, found.iter().map(|f| f.0.scope));
    let by_tuple: HashMap<SocketTuple, u32> = sockets
        .iter()
        .flat_map(|(&scope, socks)| socks.iter().map(move |s| (scope, s)))
        .filter(|(_, s)| s.state == KernelState::Conn(TcpState::CloseWait))
        .map(|(scope, s)| {
            (
                (
                    scope,
                    FlowKey::addr_words(s.local.0),
                    s.local.1,
                    FlowKey::addr_words(s.remote.0),
                    s.remote.1,
                ),
                s.inode,
            )
        })
        .collect();
    let found: Vec<_> = found
        .into_iter()
        .map(|(key, side, age_s, seeded)| {
            let (l, r) = (side.index(), side.other().index());
            let inode = by_tuple
                .get(&(
                    key.scope,
                    key.addr[l],
                    key.port[l],
                    key.addr[r],
                    key.port[r],
                ))
                .copied();
            (
                key.scope,
                key.port[l],
                FlowKey::words_addr(key.addr[r]),
                age_s,
                seeded,
                inode,
            )
        })
        .collect();
    let inodes: HashSet<u32> = found.iter().filter_map(|f| f.5).collect();
    let owners = owners(&inodes);
    let leaks: Vec<Leak> = found
        .into_iter()
        .map(|(scope, port, remote, age_s, lower_bound, inode)| Leak {
            scope,
            port,
            remote,
            age_s,
            lower_bound,
            owner: inode
                .and_then(|i| owners.get(&i))
                .and_then(|o| o.first().cloned()),
        })
        .collect();
    let groups = group(leaks);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&groups, threshold, source, &names))?
        );
    } else {
        print_table(&groups, threshold, source, &names);
    }
    Ok(!groups.is_empty())
}

/// Used when neither `--older-than` nor the daemon says otherwise: the daemon's own default.
const DEFAULT_THRESHOLD: Duration = Duration::from_secs(60);

/// Where the leak threshold came from (the JSON's `threshold_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// `--older-than`.
    Flag,
    /// The running daemon's `--close-wait-leak-after`, read from its pinned settings.
    Daemon,
    /// Neither: a daemon that publishes no settings (built before they existed).
    Default,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Flag => "--older-than",
            Source::Daemon => "daemon",
            Source::Default => "default",
        }
    }
}

/// One threshold for the gauge and the command: the flag if given, else the daemon's.
fn threshold(flag: Option<Duration>, daemon: Option<Settings>) -> (Duration, Source) {
    match (flag, daemon) {
        (Some(d), _) => (d, Source::Flag),
        (None, Some(s)) => (
            Duration::from_nanos(s.close_wait_leak_after_ns),
            Source::Daemon,
        ),
        (None, None) => (DEFAULT_THRESHOLD, Source::Default),
    }
}

fn group(leaks: Vec<Leak>) -> Vec<Group> {
    type Key = (u32, u16, Option<u32>);
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    let mut peers: HashMap<Key, HashMap<IpAddr, usize>> = HashMap::new();
    for l in leaks {
        let k = (l.scope, l.port, l.owner.as_ref().map(|o| o.pid));
        let g = groups.entry(k).or_insert_with(|| Group {
            scope: l.scope,
            port: l.port,
            owner: l.owner.clone(),
            count: 0,
            oldest_s: 0.0,
            newest_s: f64::MAX,
            lower_bound: false,
            peers: Vec::new(),
        });
        g.count += 1;
        g.oldest_s = g.oldest_s.max(l.age_s);
        g.newest_s = g.newest_s.min(l.age_s);
        g.lower_bound |= l.lower_bound;
        *peers.entry(k).or_default().entry(l.remote).or_insert(0) += 1;
    }
    let mut out: Vec<Group> = groups
        .into_iter()
        .map(|(k, mut g)| {
            let mut p: Vec<(IpAddr, usize)> =
                peers.remove(&k).unwrap_or_default().into_iter().collect();
            p.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            p.truncate(3);
            g.peers = p;
            g
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.port.cmp(&b.port)));
    out
}

fn to_json(
    groups: &[Group],
    threshold: f64,
    source: Source,
    names: &BTreeMap<u32, ScopeName>,
) -> serde_json::Value {
    let none = ScopeName::default();
    json!({
        "threshold_seconds": threshold,
        "threshold_source": source.name(),
        "leaks": groups.iter().map(|g| {
            let n = names.get(&g.scope).unwrap_or(&none);
            json!({
            "namespace": n.namespace,
            "pod": n.pod,
            "container": n.container,
            "container_id": n.container_id,
            "port": g.port,
            "pid": g.owner.as_ref().map(|o| o.pid),
            "command": g.owner.as_ref().map(|o| o.command.clone()),
            "cmdline": g.owner.as_ref().map(|o| o.cmdline.clone()),
            "user": g.owner.as_ref().map(|o| o.user.clone()),
            "uid": g.owner.as_ref().map(|o| o.uid),
            "count": g.count,
            "oldest_seconds": g.oldest_s,
            "newest_seconds": g.newest_s,
            "age_is_lower_bound": g.lower_bound,
            "top_peers": g.peers.iter().map(|(a, n)| json!({"address": a.to_string(), "count": n})).collect::<Vec<_>>(),
            "hint": HINT,
        })}).collect::<Vec<_>>(),
    })
}

pub fn human_age(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn print_table(groups: &[Group], threshold: f64, source: Source, names: &BTreeMap<u32, ScopeName>) {
    let from = match source {
        Source::Flag => "--older-than",
        Source::Daemon => "the daemon's --close-wait-leak-after",
        Source::Default => "default; the daemon published none",
    };
    if groups.is_empty() {
        println!(
            "no CLOSE_WAIT endpoint older than {} ({from})",
            human_age(threshold)
        );
        return;
    }
    // The container column only when a leak is in one: host-only output is as it always was.
    let in_containers = groups.iter().any(|g| g.scope != 0);
    if in_containers {
        print!("{:<24} ", "CONTAINER/POD");
    }
    println!(
        "CLOSE_WAIT endpoints older than {} ({from})",
        human_age(threshold)
    );
    println!(
        "{:<6} {:>8} {:<10} {:<16} {:>6} {:>9} {:>9}  TOP PEERS",
        "PORT", "PID", "USER", "COMMAND", "COUNT", "OLDEST", "NEWEST"
    );
    for g in groups {
        let (pid, user, cmd) = match &g.owner {
            Some(o) => (o.pid.to_string(), o.user.clone(), o.command.clone()),
            None => ("?".into(), "?".into(), "?".into()),
        };
        let mark = if g.lower_bound { ">" } else { "" };
        let peers: Vec<String> = g.peers.iter().map(|(a, n)| format!("{a} ({n})")).collect();
        if in_containers {
            let name = names.get(&g.scope).map(|n| n.short()).unwrap_or_default();
            print!("{:<24} ", if name.is_empty() { "(host)" } else { &name });
        }
        println!(
            "{:<6} {:>8} {:<10} {:<16} {:>6} {:>9} {:>9}  {}",
            g.port,
            pid,
            user,
            cmd,
            g.count,
            format!("{mark}{}", human_age(g.oldest_s)),
            format!("{mark}{}", human_age(g.newest_s)),
            peers.join(", ")
        );
        if let Some(o) = &g.owner {
            println!("       cmdline: {}", o.cmdline);
        } else {
            println!("       owner unknown: run `tcpstate leaks` in the daemon's network namespace, as root");
        }
    }
    println!("hint: {HINT}");
    if groups.iter().any(|g| g.lower_bound) {
        println!("(> : seen at daemon start-up; the real age is at least this)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_the_flag_then_the_daemons_then_the_default() {
        let daemon = Some(Settings {
            close_wait_leak_after_ns: 3_000_000_000,
        });
        let s = Duration::from_secs;
        assert_eq!(threshold(Some(s(10)), daemon), (s(10), Source::Flag));
        // Regression: `leaks` used its own 60s while the daemon's gauge used 3s.
        assert_eq!(threshold(None, daemon), (s(3), Source::Daemon));
        assert_eq!(threshold(None, None), (s(60), Source::Default));
    }

    #[test]
    fn ages_read_like_durations() {
        assert_eq!(human_age(5.4), "5s");
        assert_eq!(human_age(90.0), "1m30s");
        assert_eq!(human_age(7260.0), "2h01m");
        assert_eq!(human_age(90_000.0), "1d01h");
    }

    #[test]
    fn leaks_group_by_port_and_process_with_top_peers() {
        let owner = |pid| {
            Some(Owner {
                pid,
                command: "srv".into(),
                cmdline: "srv --x".into(),
                uid: 0,
                user: "root".into(),
            })
        };
        let l = |port, remote: &str, age_s, pid| Leak {
            scope: 0,
            port,
            remote: remote.parse().unwrap(),
            age_s,
            lower_bound: false,
            owner: owner(pid),
        };
        let groups = group(vec![
            l(80, "192.0.2.5", 100.0, 7),
            l(80, "192.0.2.5", 70.0, 7),
            l(80, "192.0.2.6", 65.0, 7),
            l(80, "192.0.2.9", 300.0, 8),
            l(443, "192.0.2.5", 61.0, 7),
        ]);
        assert_eq!(groups.len(), 3);
        let g = &groups[0];
        assert_eq!((g.port, g.owner.as_ref().unwrap().pid, g.count), (80, 7, 3));
        assert_eq!((g.oldest_s, g.newest_s), (100.0, 65.0));
        assert_eq!(
            g.peers,
            vec![
                ("192.0.2.5".parse().unwrap(), 2),
                ("192.0.2.6".parse().unwrap(), 1)
            ]
        );
    }
}
