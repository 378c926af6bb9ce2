//! Typed access to the kernel's maps, from a loaded object or from the pins of a running daemon.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use tcpstate_common::{
    counters::idx,
    flow::{FlowKey, FlowRecord},
    maps::{self, Settings, TableCounters, UserCounters},
};

use crate::error::Preflight;

/// The flow table.
pub struct Flows(pub HashMap<MapData, FlowKey, FlowRecord>);

/// Entries per BPF_MAP_LOOKUP_BATCH call: ~400 KiB of buffers, and 250 syscalls for a million flows
/// where the key-by-key walk (get_next_key, then lookup) needs two million.
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

impl Flows {
    /// Calls `f` on every flow, read in batches (aya 0.14 has no batch API, so this is the raw
    /// bpf(2) call on the map's descriptor). Like any walk of a live hash map, a flow inserted or
    /// deleted meanwhile may be seen or missed; every flow present throughout is seen once.
    pub fn for_each(&self, mut f: impl FnMut(FlowKey, FlowRecord)) -> std::io::Result<u64> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        const KEY: usize = size_of::<FlowKey>();
        const VALUE: usize = size_of::<FlowRecord>();
        let fd = self.0.map().fd().as_fd().as_raw_fd();
        let mut keys = vec![0u8; BATCH * KEY];
        let mut values = vec![0u8; BATCH * VALUE];
        // Opaque resume tokens (a bucket index for hash maps); 8 bytes covers every map type.
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
            // SAFETY: `attr` points at buffers sized for `count` keys and values and at two
            // 8-byte tokens, all alive across the call; the kernel writes only within them.
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
            let done = match &err {
                None => false,
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Some(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("BPF_MAP_LOOKUP_BATCH on the flow table: {e}"),
                    ))
                }
            };
            for i in 0..attr.count as usize {
                // SAFETY: the kernel filled `count` packed keys and values of these exact sizes;
                // both types are plain integers, valid for every bit pattern.
                let (k, v) = unsafe {
                    (
                        std::ptr::read_unaligned(keys.as_ptr().add(i * KEY).cast::<FlowKey>()),
                        std::ptr::read_unaligned(
                            values.as_ptr().add(i * VALUE).cast::<FlowRecord>(),
                        ),
                    )
                };
                f(k, v);
            }
            seen += u64::from(attr.count);
            if done {
                return Ok(seen);
            }
            token_in = token_out;
            first = false;
        }
    }
}

/// Everything the scrape reads: counters and fill.
pub struct Books {
    counters: PerCpuArray<MapData, u64>,
    table: Array<MapData, TableCounters>,
    user: Array<MapData, UserCounters>,
}

/// Counter totals at one instant.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Per-CPU slots summed (wrapping: connection slots are deltas).
    pub slots: Vec<u64>,
    pub table: TableCounters,
    pub user: UserCounters,
}

impl Totals {
    pub fn slot(&self, i: u32) -> u64 {
        self.slots.get(i as usize).copied().unwrap_or(0)
    }
}

fn take(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow::anyhow!("object has no map {name}"))
}

pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<(Flows, Books)> {
    let flows = Flows(HashMap::try_from(take(ebpf, maps::FLOWS)?)?);
    let books = Books {
        counters: PerCpuArray::try_from(take(ebpf, maps::COUNTERS)?)?,
        table: Array::try_from(take(ebpf, maps::TABLE)?)?,
        user: Array::try_from(take(ebpf, maps::USER)?)?,
    };
    Ok((flows, books))
}

/// Opens a running daemon's pinned maps (for the inspection commands).
pub fn from_pins(dir: &Path) -> anyhow::Result<(Flows, Books)> {
    let open = |name: &str| -> anyhow::Result<MapData> {
        let p = dir.join(name);
        if !p.exists() {
            return Err(Preflight::NotRunning {
                dir: dir.to_path_buf(),
            }
            .into());
        }
        Ok(MapData::from_pin(&p)?)
    };
    let flows = Flows(HashMap::try_from(Map::HashMap(open(maps::FLOWS)?))?);
    let books = Books {
        counters: PerCpuArray::try_from(Map::PerCpuArray(open(maps::COUNTERS)?))?,
        table: Array::try_from(Map::Array(open(maps::TABLE)?))?,
        user: Array::try_from(Map::Array(open(maps::USER)?))?,
    };
    Ok((flows, books))
}

impl Books {
    /// One syscall per map: O(CPUs), independent of the number of flows.
    pub fn totals(&self) -> anyhow::Result<Totals> {
        let mut slots = vec![0u64; idx::COUNT as usize];
        for (i, slot) in slots.iter_mut().enumerate() {
            let per_cpu = self.counters.get(&(i as u32), 0)?;
            *slot = per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(Totals {
            slots,
            table: self.table.get(&0, 0)?,
            user: self.user.get(&0, 0)?,
        })
    }

    pub fn user(&self) -> anyhow::Result<UserCounters> {
        Ok(self.user.get(&0, 0)?)
    }

    pub fn set_user(&mut self, u: &UserCounters) -> anyhow::Result<()> {
        Ok(self.user.set(0, u, 0)?)
    }
}

/// Publishes the daemon's settings in their pinned map (taken from the loaded object).
pub fn publish_settings(ebpf: &mut aya::Ebpf, settings: &Settings) -> anyhow::Result<()> {
    let mut map: Array<MapData, Settings> = Array::try_from(take(ebpf, maps::SETTINGS)?)?;
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

/// SYN cookies sent, by local port (the kernel's per-port counts).
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
