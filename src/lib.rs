//! msp-agent: watch → decide → act → prove → report.
//!
//! See ARCHITECTURE.md for the map; each module opens with what it owns.
pub mod config;
pub mod decide;
pub mod events;
pub mod store;
