//! The inspection commands (`flows`, `leaks`, `cleanup`), which read a running daemon's pins.

pub mod flows;
pub mod leaks;
pub mod scopes;
