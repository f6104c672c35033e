//! What the agent reports: Prometheus metrics on a local HTTP endpoint.

pub mod metrics;
