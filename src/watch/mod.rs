//! Sources of facts. Each watcher emits typed observations on a channel and
//! decides nothing.

pub mod systemd;
pub mod units;
