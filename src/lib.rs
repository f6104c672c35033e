//! msp-agent: watch → decide → act → prove → report.
//!
//! See ARCHITECTURE.md for the map; each module opens with what it owns.
pub mod act;
pub mod bus;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod events;
pub mod logging;
pub mod notify;
pub mod polkit;
pub mod prove;
pub mod report;
pub mod store;
pub mod units;
pub mod watch;
