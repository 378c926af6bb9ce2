//! Exporting to Prometheus: the metric families rendered from counters and the HTTP endpoint.

mod auth;
pub mod collector;
mod families;
mod family;
pub mod layout;
pub mod metrics;
pub mod openmetrics;
pub mod server;
mod tls;
pub mod webconfig;
