//! The daemon's pinned maps as files under bpffs: removing them (`tcpstate cleanup`, and the
//! preflight's private directory).

use std::{fs, path::Path};

use tcpstate_common::maps;

/// Removes tcpstate's pinned maps and their directory (only ours: a stranger's file stops it).
pub fn remove(dir: &Path) -> anyhow::Result<()> {
    for name in [
        maps::FLOWS4,
        maps::FLOWS6,
        maps::OLD_FLOWS,
        maps::FLOW_SEED,
        maps::COUNTERS,
        maps::SCOPE_COUNTERS,
        maps::TABLE,
        maps::USER,
        tcpstate_common::scope::SCOPES,
        tcpstate_common::scope::IFACE_SCOPES,
        tcpstate_common::scope::SCOPE_INFO,
        maps::SETTINGS,
        maps::SYN_COOKIES,
        maps::RETRANSMITS,
        tcpstate_common::durations::DURATIONS,
        tcpstate_common::durations::PORT_ROWS,
    ] {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_file(&p)
                .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", p.display()))?;
        }
    }
    fs::remove_dir(dir)
        .map_err(|e| anyhow::anyhow!("removed tcpstate's maps but not {}: {e}", dir.display()))
}
