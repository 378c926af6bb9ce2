//! The kernel's own socket table (netlink sock_diag), which processes hold those sockets, and
//! the ephemeral port range their connect()s pick from.

pub mod owners;
pub mod portrange;
pub mod sockdiag;
