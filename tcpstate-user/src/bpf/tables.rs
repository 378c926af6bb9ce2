//! Typed access to the kernel's maps, from a loaded object or from the pins of a running daemon.

use std::path::Path;

use aya::maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuArray};
use std::os::fd::{AsFd, AsRawFd};

use tcpstate_common::{
    counters::idx,
    durations,
    maps::{self, Settings, TableCounters, UserCounters},
    scope::{self, ScopeInfo},
    state::Retransmit,
    table::Seed,
};

use crate::error::Preflight;

pub use tcpstate_common::mapped::Flows;

/// Entries per BPF_MAP_LOOKUP_BATCH call: ~400 KiB of buffers at most for the counter arrays.
const BATCH: usize = 4096;
/// `enum bpf_cmd` value of BPF_MAP_LOOKUP_BATCH (include/uapi/linux/bpf.h; Linux 5.6, commit
/// cb4d03ab499d "bpf: Add generic support for lookup batch op").
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads a map with BPF_MAP_LOOKUP_BATCH, [`BATCH`] entries a call, handing each key and value
/// (as the kernel lays them out) to `f`, until the end or once `limit` entries were read (arrays
/// come in index order, so a limit reads a prefix). For per-CPU maps a value is every possible
/// CPU's copy, each rounded up to 8 bytes.
pub fn lookup_batch(
    fd: std::os::fd::RawFd,
    key_size: usize,
    value_size: usize,
    limit: u64,
    mut f: impl FnMut(&[u8], &[u8]),
) -> std::io::Result<u64> {
    let mut keys = vec![0u8; BATCH * key_size];
    let mut values = vec![0u8; BATCH * value_size];
    // Opaque resume tokens (a bucket index for hash maps, a key for arrays); 8 bytes covers both.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    let mut seen = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // BPF_MAP_LOOKUP_BATCH: aya 0.14 has no batch lookup, and no crate wraps the bpf(2) call.
        // SAFETY: `attr` points at buffers sized for `count` keys and values and at two 8-byte
        // tokens, all alive across the call; the kernel writes only within them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        // ENOENT: the walk reached the end; the entries of this last call are still valid.
        let done = match err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => return Err(e),
        };
        for i in 0..attr.count as usize {
            f(
                &keys[i * key_size..(i + 1) * key_size],
                &values[i * value_size..(i + 1) * value_size],
            );
        }
        seen += u64::from(attr.count);
        if done || seen >= limit {
            return Ok(seen);
        }
        token_in = token_out;
        first = false;
    }
}

/// Everything the scrape reads: counters and fill, for every scope.
pub struct Books {
    /// The host scope's and the global slots, per CPU.
    counters: PerCpuArray<MapData, u64>,
    /// Container scopes' slots, mapped ([`maps::SCOPE_COUNTERS`]).
    scoped: tcpstate_common::mapped::Words,
    table: Array<MapData, TableCounters>,
    user: Array<MapData, UserCounters>,
    /// The duration histograms, whose container rows are a scope's counters too.
    durations: Option<std::sync::Arc<tcpstate_common::mapped::Durations>>,
}

/// Counter totals at one instant.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Per-CPU slots summed (wrapping: connection slots are deltas), `idx::COUNT` per scope; the
    /// global figures are in the host scope's slots ([`idx::per_scope`]).
    pub slots: Vec<u64>,
    pub table: TableCounters,
    /// The daemon's counters, one per scope; the host scope's also holds the table's books.
    pub user: Vec<UserCounters>,
}

impl Totals {
    /// A global figure, or the host scope's own.
    pub fn slot(&self, i: u32) -> u64 {
        self.scoped(scope::HOST, i)
    }

    /// A scope's per-endpoint figure (a global figure for any scope reads the global value).
    pub fn scoped(&self, scope: u32, i: u32) -> u64 {
        let at = idx::in_scope(scope.wrapping_mul(idx::COUNT), i) as usize;
        self.slots.get(at).copied().unwrap_or(0)
    }

    /// The daemon's counters of a scope (zero for one never written).
    pub fn user(&self, scope: u32) -> UserCounters {
        self.user.get(scope as usize).copied().unwrap_or_default()
    }

    /// The table's books: the host scope's daemon counters hold them.
    pub fn books(&self) -> UserCounters {
        self.user(scope::HOST)
    }
}

fn take(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow::anyhow!("object has no map {name}"))
}

/// The scope maps (container mode), see [`tcpstate_common::scope`].
pub struct Scopes {
    pub ifaces: IfaceScopes,
    pub info: Array<MapData, ScopeInfo>,
}

/// ifindex -> scope as the container programs read it: every container interface in
/// [`scope::SCOPES`], and those with a small ifindex also in [`scope::IFACE_SCOPES`], the array
/// the programs index ([`scope::direct_index`]). Writing both through here keeps them one table.
pub struct IfaceScopes {
    all: HashMap<MapData, u32, u32>,
    direct: Array<MapData, u32>,
}

impl IfaceScopes {
    /// Gives an interface its scope, before the programs are attached to it.
    pub fn insert(&mut self, ifindex: u32, scope: u32) -> Result<(), aya::maps::MapError> {
        self.all.insert(ifindex, scope, 0)?;
        if let Some(i) = scope::direct_index(ifindex) {
            if let Err(e) = self.direct.set(i, scope, 0) {
                let _ = self.all.remove(&ifindex);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes an interface's scope away, after its programs are detached (or when it is gone).
    pub fn remove(&mut self, ifindex: u32) {
        if let Some(i) = scope::direct_index(ifindex) {
            let _ = self.direct.set(i, scope::HOST, 0);
        }
        let _ = self.all.remove(&ifindex);
    }

    /// Every interface that has a scope.
    pub fn ifindexes(&self) -> Vec<u32> {
        self.all.keys().filter_map(Result::ok).collect()
    }
}

/// Records the flow table's hash key in its map (kept with the table in the pin directory).
pub fn publish_seed(ebpf: &mut aya::Ebpf, seed: &Seed) -> anyhow::Result<()> {
    let map = ebpf
        .map_mut(maps::FLOW_SEED)
        .ok_or_else(|| anyhow::anyhow!("object has no map {}", maps::FLOW_SEED))?;
    let mut map: Array<&mut MapData, Seed> = Array::try_from(map)?;
    Ok(map.set(0, seed, 0)?)
}

/// The flow tables of a loaded object, mapped, with the hash key they were loaded with.
pub fn flows_from_ebpf(ebpf: &mut aya::Ebpf, seed: Seed) -> anyhow::Result<Flows> {
    let mut array = |name| match take(ebpf, name)? {
        Map::Array(data) => Ok(data),
        _ => anyhow::bail!("{name} is not an array map"),
    };
    Ok(Flows::new(
        array(maps::FLOWS4)?,
        array(maps::FLOWS6)?,
        seed,
    )?)
}

pub fn from_ebpf(ebpf: &mut aya::Ebpf, seed: Seed) -> anyhow::Result<(Flows, Books, Scopes)> {
    let flows = flows_from_ebpf(ebpf, seed)?;
    let books = Books {
        counters: PerCpuArray::try_from(take(ebpf, maps::COUNTERS)?)?,
        scoped: {
            let Map::Array(data) = take(ebpf, maps::SCOPE_COUNTERS)? else {
                anyhow::bail!("{} is not an array map", maps::SCOPE_COUNTERS);
            };
            tcpstate_common::mapped::Words::new(data, 1, "the scope counters")?
        },
        table: Array::try_from(take(ebpf, maps::TABLE)?)?,
        user: Array::try_from(take(ebpf, maps::USER)?)?,
        durations: Some(std::sync::Arc::new(durations_from_ebpf(ebpf)?)),
    };
    let scopes = Scopes {
        ifaces: IfaceScopes {
            all: HashMap::try_from(take(ebpf, scope::SCOPES)?)?,
            direct: Array::try_from(take(ebpf, scope::IFACE_SCOPES)?)?,
        },
        info: Array::try_from(take(ebpf, scope::SCOPE_INFO)?)?,
    };
    Ok((flows, books, scopes))
}

/// A second handle on the pinned flow table (a thread of the daemon's own, such as the container
/// watcher, that seeds and purges while the sweeper walks).
pub fn flows_from_pin(dir: &Path) -> anyhow::Result<Flows> {
    Ok(Flows::from_pins(dir)?)
}

/// A running daemon's pinned maps, for the inspection commands.
pub struct Pinned {
    pub flows: Flows,
    pub info: Array<MapData, ScopeInfo>,
}

/// Opens a running daemon's pinned maps (for the inspection commands).
pub fn from_pins(dir: &Path) -> anyhow::Result<Pinned> {
    if [
        maps::FLOWS4,
        maps::FLOWS6,
        maps::FLOW_SEED,
        scope::SCOPE_INFO,
    ]
    .iter()
    .any(|name| !dir.join(name).exists())
    {
        return Err(Preflight::NotRunning {
            dir: dir.to_path_buf(),
        }
        .into());
    }
    Ok(Pinned {
        flows: Flows::from_pins(dir)?,
        info: Array::try_from(Map::Array(MapData::from_pin(dir.join(scope::SCOPE_INFO))?))?,
    })
}

impl Books {
    /// One batched read of the host's per-CPU slots (O(CPUs)), the container scopes' slots as
    /// memory, the daemon's books: independent of the number of flows, and of scopes but for a
    /// memory read of each one's slots.
    pub fn totals(&self) -> anyhow::Result<Totals> {
        self.totals_of(self.user.len())
    }

    /// As [`Books::totals`], reading only the first `scopes` scopes (the ones in use: the rest
    /// of a large `--max-containers` array is never read by a scrape).
    pub fn totals_of(&self, scopes: u32) -> anyhow::Result<Totals> {
        Ok(Totals {
            user: self.users()?,
            ..self.kernel_totals_of(scopes)?
        })
    }

    /// The kernel's counters and the table's books of the first `scopes` scopes, without the
    /// daemon's (a scrape has them in memory).
    pub fn kernel_totals_of(&self, scopes: u32) -> anyhow::Result<Totals> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let host = idx::COUNT as usize;
        let n = (scopes.max(1) as usize * host).min(self.scoped.len().max(idx::COUNT) as usize);
        let mut slots = vec![0u64; n];
        let fd = self.counters.map().fd().as_fd().as_raw_fd();
        lookup_batch(fd, 4, 8 * cpus, host as u64, |k, v| {
            let i = u32::from_ne_bytes(k.try_into().expect("4-byte key")) as usize;
            if let Some(slot) = slots.get_mut(i) {
                *slot = v.chunks_exact(8).fold(0u64, |a, c| {
                    a.wrapping_add(u64::from_ne_bytes(c.try_into().expect("8 bytes")))
                });
            }
        })?;
        if let Some(containers) = slots.get_mut(host..) {
            self.scoped.read(host as u32, containers);
        }
        Ok(Totals {
            slots,
            table: self.table.get(&0, 0)?,
            user: Vec::new(),
        })
    }

    /// The daemon's counters of every scope.
    pub fn users(&self) -> anyhow::Result<Vec<UserCounters>> {
        let mut out = vec![UserCounters::default(); self.user.len() as usize];
        let fd = self.user.map().fd().as_fd().as_raw_fd();
        lookup_batch(fd, 4, size_of::<UserCounters>(), u64::MAX, |k, v| {
            let i = u32::from_ne_bytes(k.try_into().expect("4-byte key")) as usize;
            if let Some(u) = out.get_mut(i) {
                // SAFETY: the kernel wrote one UserCounters (plain u64s) at this place. Unsafe
                // because UserCounters (tcpstate-common) derives no zerocopy FromBytes.
                *u = unsafe { std::ptr::read_unaligned(v.as_ptr().cast::<UserCounters>()) };
            }
        })?;
        Ok(out)
    }

    pub fn set_user(&mut self, scope: u32, u: &UserCounters) -> anyhow::Result<()> {
        Ok(self.user.set(scope, u, 0)?)
    }

    /// Zeroes a container scope's own counter slots and histogram rows before the scope is given
    /// to a new namespace. Only for a scope no interface maps to any more (no program writes its
    /// slots).
    pub fn zero_scope(&mut self, scope: u32) -> anyhow::Result<()> {
        if scope == scope::HOST {
            anyhow::bail!("the host's counters are never given to a namespace");
        }
        let base = scope * idx::COUNT;
        for slot in (0..idx::COUNT).filter(|&s| idx::per_scope(s)) {
            self.scoped.set(base + slot, 0);
        }
        if let Some(d) = &self.durations {
            for m in durations::Measure::ALL {
                d.clear(d.index(m, durations::HOST_ROWS + scope));
            }
        }
        self.set_user(scope, &UserCounters::default())
    }

    /// The duration histograms (shared with the sweeper, which reads them and adds the endings
    /// it decides).
    pub fn durations(&self) -> Option<std::sync::Arc<tcpstate_common::mapped::Durations>> {
        self.durations.clone()
    }
}

/// Publishes the daemon's settings in their pinned map (taken from the loaded object).
pub fn publish_settings(ebpf: &mut aya::Ebpf, settings: &Settings) -> anyhow::Result<()> {
    let mut map: Array<MapData, Settings> = Array::try_from(take(ebpf, maps::SETTINGS)?)?;
    Ok(map.set(0, settings, 0)?)
}

/// Publishes the settings again through the pinned map (a reload: the object no longer holds it).
pub fn republish_settings(dir: &Path, settings: &Settings) -> anyhow::Result<()> {
    let data = MapData::from_pin(dir.join(maps::SETTINGS))?;
    let mut map: Array<MapData, Settings> = Array::try_from(Map::Array(data))?;
    Ok(map.set(0, settings, 0)?)
}

/// A running daemon's published settings: `None` when its pins have no settings map (a daemon
/// built before it existed) or it has not published them yet.
pub fn settings_from_pins(dir: &Path) -> Option<Settings> {
    let data = MapData::from_pin(dir.join(maps::SETTINGS)).ok()?;
    let map: Array<MapData, Settings> = Array::try_from(Map::Array(data)).ok()?;
    map.get(&0, 0)
        .ok()
        .filter(|s| s.close_wait_leak_after_ns != 0)
}

/// SYN cookies sent, by local port (the kernel's per-port counts; the host's only).
pub struct SynCookies(Array<MapData, u64>);

impl SynCookies {
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<SynCookies> {
        Ok(SynCookies(Array::try_from(take(ebpf, maps::SYN_COOKIES)?)?))
    }

    /// One lookup per port asked for: the sweeper asks for the labelled ones only.
    pub fn get(&self, port: u16) -> u64 {
        self.0.get(&u32::from(port), 0).unwrap_or(0)
    }
}

/// SYNs and SYN-ACKs sent again to and by local servers, by server port (the kernel's per-port
/// counts; the host's only).
pub struct Retransmits(Array<MapData, u64>);

impl Retransmits {
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<Retransmits> {
        Ok(Retransmits(Array::try_from(take(
            ebpf,
            maps::RETRANSMITS,
        )?)?))
    }

    /// One lookup per port and kind asked for: the sweeper asks for the labelled ports only.
    pub fn get(&self, kind: Retransmit, port: u16) -> u64 {
        self.0
            .get(&maps::retransmit_slot(kind, port), 0)
            .unwrap_or(0)
    }
}

/// The histogram rows of CLOSE_WAIT dwell and connection lifetimes, mapped into memory
/// ([`tcpstate_common::durations`]).
pub fn durations_from_ebpf(
    ebpf: &mut aya::Ebpf,
) -> anyhow::Result<tcpstate_common::mapped::Durations> {
    let Map::Array(data) = take(ebpf, durations::DURATIONS)? else {
        anyhow::bail!("{} is not an array map", durations::DURATIONS);
    };
    Ok(tcpstate_common::mapped::Durations::new(data)?)
}

/// The host's port -> histogram row assignments the kernel reads ([`durations::PORT_ROWS`]):
/// a port gets a row when the daemon first labels it, and keeps it (across restarts too: the
/// rows' counts are cumulative, and so must their ports be).
pub struct PortRows {
    map: Array<MapData, u32>,
    rows: std::collections::BTreeMap<u16, u32>,
}

impl PortRows {
    /// The map, with the rows an earlier run gave (one batched read of 65536 slots).
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<PortRows> {
        let map: Array<MapData, u32> = Array::try_from(take(ebpf, durations::PORT_ROWS)?)?;
        let mut rows = std::collections::BTreeMap::new();
        let fd = map.map().fd().as_fd().as_raw_fd();
        lookup_batch(fd, 4, 4, u64::MAX, |k, v| {
            let port = u32::from_ne_bytes(k.try_into().expect("4-byte key"));
            let row = u32::from_ne_bytes(v.try_into().expect("4-byte value"));
            if row != 0 && row < durations::HOST_ROWS {
                if let Ok(port) = u16::try_from(port) {
                    rows.insert(port, row);
                }
            }
        })?;
        Ok(PortRows { map, rows })
    }

    /// Every port that has a row.
    pub fn rows(&self) -> &std::collections::BTreeMap<u16, u32> {
        &self.rows
    }

    /// The port's row (0: "other").
    pub fn get(&self, port: u16) -> u32 {
        self.rows.get(&port).copied().unwrap_or(0)
    }

    /// Gives `port` a row if it has none and one is free; false when they are all taken (the
    /// port stays counted under "other").
    pub fn assign(&mut self, port: u16) -> anyhow::Result<bool> {
        if self.rows.contains_key(&port) {
            return Ok(true);
        }
        let next = self.rows.values().max().map_or(1, |r| r + 1);
        if next >= durations::HOST_ROWS {
            return Ok(false);
        }
        self.map.set(u32::from(port), next, 0)?;
        self.rows.insert(port, next);
        Ok(true)
    }
}
