//! Typed access to the kernel's maps, from a loaded object or from the pins of a running daemon.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use tcpstate_common::{
    counters::idx,
    flow::{FlowKey, FlowRecord},
    maps::{self, TableCounters, UserCounters},
};

use crate::error::Preflight;

/// The flow table.
pub struct Flows(pub HashMap<MapData, FlowKey, FlowRecord>);

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
