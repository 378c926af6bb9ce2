//! What a new run does with the flow table an earlier run left pinned: maps it again as it is,
//! or, when this run needs another size (`--max-flows` changed) or the pins hold the kernel hash
//! map of builds before the slot table, reads its flows out so they can be carried into a new one.

use std::{fs, path::Path};

use aya::maps::{MapData, MapInfo, MapType};
use tcpstate_common::{
    flow::{FlowKey, FlowRecord},
    maps,
    table::{self, Seed, SLOT_SIZE},
};
use tracing::info;

use crate::error::Preflight;
use tcpstate_common::mapped::Flows;

/// The flow table in the pin directory, as this run finds it.
pub enum Pinned {
    /// No table: a new one, with a new hash key.
    Nothing,
    /// A table of the size this run needs: mapped again, flows and ages kept.
    Reuse { seed: Seed },
    /// A table this run cannot use as it is; its flows, read out, and its pins removed.
    Carry { flows: Vec<(FlowKey, FlowRecord)> },
}

/// Looks at the pinned flow table; for [`Pinned::Carry`] reads its flows and unpins it (the
/// loader then creates the new table in its place).
pub fn inspect(dir: &Path, slots: u32) -> Result<Pinned, Preflight> {
    let path = dir.join(maps::FLOWS);
    if !path.exists() {
        return Ok(Pinned::Nothing);
    }
    let incompatible = |what: String| Preflight::IncompatiblePins {
        dir: dir.to_path_buf(),
        what,
    };
    let unreadable = |e: aya::maps::MapError| match e {
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
    let info = MapInfo::from_pin(&path).map_err(unreadable)?;
    let seed = tcpstate_common::mapped::seed_from_pins(dir).ok();
    let (flows, why) = match info.map_type() {
        Ok(MapType::Array) if info.value_size() as usize == SLOT_SIZE => {
            match seed {
                Some(seed) if info.max_entries() == slots => return Ok(Pinned::Reuse { seed }),
                _ => {}
            }
            let data = MapData::from_pin(&path).map_err(unreadable)?;
            let old = Flows::new(data, seed.unwrap_or_default())
                .map_err(|e| incompatible(format!("cannot map {}: {e}", path.display())))?;
            let mut flows = Vec::new();
            old.for_each_slot(|_, k, r| flows.push((k, r)));
            let why = format!(
                "{} slots where this --max-flows needs {slots}",
                info.max_entries()
            );
            (flows, why)
        }
        Ok(MapType::Hash)
            if info.key_size() as usize == size_of::<FlowKey>()
                && info.value_size() as usize == size_of::<FlowRecord>() =>
        {
            let data = MapData::from_pin(&path).map_err(unreadable)?;
            (
                read_hash_table(&data)
                    .map_err(|e| incompatible(format!("cannot read {}: {e}", path.display())))?,
                "the kernel hash map of an earlier build".to_string(),
            )
        }
        _ => {
            return Err(incompatible(format!(
                "{} is a {:?} map with {}-byte keys and {}-byte values",
                path.display(),
                info.map_type(),
                info.key_size(),
                info.value_size()
            )))
        }
    };
    for name in [maps::FLOWS, maps::FLOW_SEED] {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_file(&p).map_err(|e| incompatible(format!("cannot unpin {name}: {e}")))?;
        }
    }
    info!(flows = flows.len(), from = %why, "carrying the pinned flow table's flows into a new table");
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

/// Slots for this run's capacity.
pub fn slots_for(capacity: u32) -> u32 {
    table::slots_for(capacity)
}
