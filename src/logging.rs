//! Logging with `tracing`: to the journal with structured fields when the
//! agent runs under systemd, to stderr otherwise.
//!
//! Span and event fields become journal fields in upper case without a prefix,
//! so `journalctl INCIDENT_ID=<id>` tells one incident's story and RUNBOOK and
//! UNIT filter the same way.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

pub fn init(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_env("MSP_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    if daemon && under_systemd {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("msp-agent".to_string());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("msp-agent: journald unavailable ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .init();
}
