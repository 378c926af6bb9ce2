//! Container mode (`--containers`): finding every container network namespace on the host,
//! attaching the container programs to the host-side end of its veths, giving it a scope and
//! naming it from the container runtime's state.
//!
//! The pipeline: link events ([`crate::bpf::links`]) and a periodic resync -> the namespace behind each veth
//! ([`netns`]) -> a scope for it ([`slots`]) -> labels ([`naming`]) -> attached, seeded and
//! published to the sweeper and the scrape ([`watcher`]).

pub mod naming;
pub mod netns;
pub mod slots;
pub mod watcher;
