//! What a new run does with the flow tables an earlier run left pinned: maps them again as they
//! are, or, when this run needs other sizes (`--max-flows` or `--max-ipv6-flows` changed) or the
//! pins hold the one table of earlier builds (the kernel hash map, then the array of 128-byte
//! slots with 64-bit control words), reads their flows out so they can be carried into new ones.

use std::{fs, path::Path};

use aya::maps::{MapData, MapInfo, MapType};
use tcpstate_common::{
    flow::{FlowKey, FlowRecord},
    maps,
    table::{self, Seed, SLOT4_SIZE, SLOT6_SIZE},
};
use tracing::info;

use crate::error::Preflight;
use tcpstate_common::mapped::Flows;

/// The flow tables in the pin directory, as this run finds them.
pub enum Pinned {
    /// No table: new ones, with a new hash key.
    Nothing,
    /// Tables of the sizes this run needs: mapped again, flows and ages kept.
    Reuse { seed: Seed },
    /// Tables this run cannot use as they are; their flows, read out, and their pins removed.
    Carry { flows: Vec<(FlowKey, FlowRecord)> },
}

/// Slots of the two tables for a run's capacities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Slots of the IPv4 table.
    pub v4: u32,
    /// Slots of the table of every other flow.
    pub v6: u32,
}

impl Sizes {
    /// `capacity` flows in all, `capacity6` of them not IPv4 at both ends.
    pub fn for_capacity(capacity: u32, capacity6: u32) -> Sizes {
        Sizes {
            v4: table::slots_for(capacity, SLOT4_SIZE),
            v6: table::slots_for(capacity6, SLOT6_SIZE),
        }
    }
}

/// Looks at the pinned flow tables; for [`Pinned::Carry`] reads their flows and unpins them (the
/// loader then creates the new tables in their place).
pub fn inspect(dir: &Path, sizes: Sizes) -> Result<Pinned, Preflight> {
    let (v4, v6, old) = (
        dir.join(maps::FLOWS4),
        dir.join(maps::FLOWS6),
        dir.join(maps::OLD_FLOWS),
    );
    if !v4.exists() && !v6.exists() && !old.exists() {
        return Ok(Pinned::Nothing);
    }
    let incompatible = |what: String| Preflight::IncompatiblePins {
        dir: dir.to_path_buf(),
        what,
    };
    let unreadable = |path: &Path, e: aya::maps::MapError| match e {
        aya::maps::MapError::SyscallError(s)
            if matches!(s.io_error.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
        {
            Preflight::PinsUnreadable {
                dir: dir.to_path_buf(),
                source: s.io_error,
            }
        }
        e => incompatible(format!("cannot read {}: {e}", path.display())),
    };
    let seed = tcpstate_common::mapped::seed_from_pins(dir).ok();
    let mut flows = Vec::new();
    let mut why = Vec::new();
    if old.exists() {
        let info = MapInfo::from_pin(&old).map_err(|e| unreadable(&old, e))?;
        let data = MapData::from_pin(&old).map_err(|e| unreadable(&old, e))?;
        match info.map_type() {
            Ok(MapType::Array) if info.value_size() as usize == table::OLD_SLOT_SIZE => {
                tcpstate_common::mapped::read_old_table(&data, info.max_entries(), &mut flows)
                    .map_err(|e| incompatible(format!("cannot map {}: {e}", old.display())))?;
                why.push("the one table of 128-byte slots of an earlier build");
            }
            Ok(MapType::Hash)
                if info.key_size() as usize == size_of::<FlowKey>()
                    && info.value_size() as usize == size_of::<FlowRecord>() =>
            {
                flows
                    .extend(read_hash_table(&data).map_err(|e| {
                        incompatible(format!("cannot read {}: {e}", old.display()))
                    })?);
                why.push("the kernel hash map of an earlier build");
            }
            _ => {
                return Err(incompatible(format!(
                    "{} is a {:?} map with {}-byte keys and {}-byte values",
                    old.display(),
                    info.map_type(),
                    info.key_size(),
                    info.value_size()
                )))
            }
        }
    }
    if v4.exists() || v6.exists() {
        let slots = |path: &Path, size: usize| -> Result<Option<u32>, Preflight> {
            if !path.exists() {
                return Ok(None);
            }
            let info = MapInfo::from_pin(path).map_err(|e| unreadable(path, e))?;
            if !matches!(info.map_type(), Ok(MapType::Array)) || info.value_size() as usize != size
            {
                return Err(incompatible(format!(
                    "{} is a {:?} map with {}-byte values where this build uses arrays of {size}",
                    path.display(),
                    info.map_type(),
                    info.value_size()
                )));
            }
            Ok(Some(info.max_entries()))
        };
        let pinned = (slots(&v4, SLOT4_SIZE)?, slots(&v6, SLOT6_SIZE)?);
        match (pinned, seed) {
            ((Some(a), Some(b)), Some(seed))
                if flows.is_empty() && a == sizes.v4 && b == sizes.v6 =>
            {
                return Ok(Pinned::Reuse { seed })
            }
            ((Some(_), Some(_)), Some(seed)) => {
                let open = |p: &Path| MapData::from_pin(p).map_err(|e| unreadable(p, e));
                let pinned = Flows::new(open(&v4)?, open(&v6)?, seed)
                    .map_err(|e| incompatible(format!("cannot map {}: {e}", v4.display())))?;
                pinned.for_each_slot(|_, k, r| flows.push((k, r)));
                why.push("tables of other sizes than this run's --max-flows and --max-ipv6-flows");
            }
            // One table without the other, or no hash key: nothing that can be read as it was.
            _ => why.push("an incomplete set of tables (dropped)"),
        }
    }
    for name in [maps::FLOWS4, maps::FLOWS6, maps::OLD_FLOWS, maps::FLOW_SEED] {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_file(&p).map_err(|e| incompatible(format!("cannot unpin {name}: {e}")))?;
        }
    }
    info!(flows = flows.len(), from = %why.join(", "), "carrying the pinned flow tables' flows into new tables");
    Ok(Pinned::Carry { flows })
}

/// Every flow of a flow table kept as a kernel hash map (builds before the slot table).
fn read_hash_table(data: &MapData) -> std::io::Result<Vec<(FlowKey, FlowRecord)>> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut flows = Vec::new();
    crate::bpf::tables::lookup_batch(
        data.fd().as_fd().as_raw_fd(),
        size_of::<FlowKey>(),
        size_of::<FlowRecord>(),
        u64::MAX,
        |k, v| {
            // SAFETY: packed keys and values of exactly these sizes; plain integers, valid for
            // every bit pattern. Unsafe because FlowKey and FlowRecord (tcpstate-common) derive
            // no byte-conversion trait (zerocopy's FromBytes) a safe read could use.
            let kv = unsafe {
                (
                    std::ptr::read_unaligned(k.as_ptr().cast::<FlowKey>()),
                    std::ptr::read_unaligned(v.as_ptr().cast::<FlowRecord>()),
                )
            };
            flows.push(kv)
        },
    )?;
    Ok(flows)
}

/// A new hash key for a new table, from the kernel's random pool.
pub fn new_seed() -> std::io::Result<Seed> {
    let mut bytes = [0u8; size_of::<Seed>()];
    let n = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    if n != bytes.len() {
        return Err(std::io::Error::other("getrandom returned a short read"));
    }
    let mut seed: Seed = [0; 5];
    for (w, b) in seed.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_ne_bytes(b.try_into().expect("8 bytes"));
    }
    Ok(seed)
}
