//! The kernel side as the daemon sees it: loading and attaching the programs, the maps they share
//! with userspace, their log records, and the interfaces they sit on.

pub mod attach;
pub mod carry;
pub mod kernellog;
pub mod links;
pub mod loader;
pub mod netif;
pub mod pins;
pub mod tables;
