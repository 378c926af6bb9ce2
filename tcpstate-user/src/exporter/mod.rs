//! Exporting to Prometheus: the metric families rendered from counters and the HTTP endpoint.

pub mod http;
pub mod metrics;
