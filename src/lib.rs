//! msp-agent: watch → decide → act → prove → report.
pub mod events;
pub mod prove;
