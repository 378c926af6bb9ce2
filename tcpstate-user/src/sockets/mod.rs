//! The kernel's own socket table (netlink sock_diag) and which processes hold those sockets.

pub mod owners;
pub mod sockdiag;
