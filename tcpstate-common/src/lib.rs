//! Everything the tcpstate kernel programs and daemon share: the flow table's layout, the counter
//! layout, the frame parser and the TCP state machine. `no_std` and free of aya-ebpf, so the exact
//! code the kernel runs is unit- and property-tested on the host.
#![cfg_attr(not(feature = "user"), no_std)]
// The BPF target has no CAS in `core::sync::atomic`; see `commit::compare_and_swap`.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

#[cfg(test)]
extern crate std;

pub mod commit;
pub mod counters;
pub mod durations;
pub mod flow;
#[cfg(feature = "user")]
pub mod host_table;
#[cfg(feature = "user")]
pub mod mapped;
pub mod maps;
pub mod packet;
pub mod pipeline;
pub mod scope;
pub mod state;
pub mod table;
pub mod tcp;
pub mod words;

pub use flow::{FlowKey, FlowRecord, FlowWord, Role, Side};
pub use state::{step, TcpState};
