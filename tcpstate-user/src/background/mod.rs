//! What runs behind the scrape: the sweeper's walk (timeouts, ages, per-port figures) and seeding
//! the flow table from the kernel's socket table.

pub mod books;
pub mod destinations;
pub mod durations;
pub mod expiry;
pub mod interfaces;
pub mod ports;
pub mod report;
pub mod scopes;
pub mod seed;
pub mod settle;
pub mod sweeper;
pub mod sweeping;
