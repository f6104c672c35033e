//! The evidence commands on their own, until the daemon's main.rs wires them in:
//!
//!   cargo run --example evidence_cli -- verify <DIR | s3://bucket/prefix> --pubkey FILE …
//!   cargo run --example evidence_cli -- pubkey --config FILE | --key FILE
//!   cargo run --example evidence_cli -- record --state DIR --host NAME --count N
//!   cargo run --example evidence_cli -- export --spool DIR --out DIR
//!
//! `record` seals sample incident transitions into a spool (for trying verify and the
//! auditor's steps); `export` writes a spool in the bucket's layout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use msp_agent::events::{Event, IncidentState, IncidentTransition};
use msp_agent::prove::{Evidence, EvidenceConfig, cli};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Verify(cli::VerifyArgs),
    Pubkey(cli::PubkeyArgs),
    Record {
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value = "example-host")]
        host: String,
        #[arg(long, default_value_t = 10)]
        count: u64,
    },
    Export {
        #[arg(long)]
        spool: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Args::parse().cmd {
        Cmd::Verify(a) => cli::verify(a).await,
        Cmd::Pubkey(a) => cli::pubkey(a).map(|()| ExitCode::SUCCESS),
        Cmd::Record { state, host, count } => {
            let ev = Evidence::open(
                &EvidenceConfig::default(),
                &state,
                &host,
                env!("CARGO_PKG_VERSION"),
            )?;
            for i in 0..count {
                let s = ev.record(&Event::IncidentTransition(IncidentTransition {
                    incident_id: format!("example-{i}"),
                    check: "unit_failed".into(),
                    target: "nginx.service".into(),
                    severity: "critical".into(),
                    from: None,
                    to: IncidentState::Firing,
                    at: chrono::Utc::now(),
                    reason: "example".into(),
                    observation: serde_json::json!({"ActiveState": "failed"}),
                }))?;
                println!("seq {} {} {}", s.seq, s.incident_id, s.hash);
            }
            println!("{}", ev.allowed_signers_line());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export { spool, out } => {
            let n = msp_agent::prove::spool::export(&spool, &out)?;
            println!("{n} bundles written under {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
