//! The `msp-agent` command line: the daemon and the commands around it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use msp_agent::config::{Config, DEFAULT_CONFIG_PATH};
use msp_agent::{cli, daemon, logging, polkit};
use tokio_util::sync::CancellationToken;

/// EX_CONFIG from sysexits.h: the unit file keeps systemd from restarting on it.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "msp-agent",
    version,
    about = "Keeps a host healthy and proves it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (under systemd: Type=notify).
    Run {
        /// Configuration file; without one the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Record what would be done, do nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check a configuration file and exit.
    CheckConfig { file: PathBuf },
    /// Free disk space on one configured mount (RB-DISK-001's privileged half;
    /// run by systemd as msp-agent-free-disk@<mount>.service).
    FreeDisk {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The unit's instance: `systemd-escape --path` of the mount.
        instance: String,
    },
    /// The agent's state and its open incidents.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Incidents, newest first (open ones unless --all).
    Incidents {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Stop remediation of a target (unit name or glob) for a while.
    Silence {
        target: String,
        /// How long, e.g. 30m, 2h, 1d.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value = "maintenance")]
        reason: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check evidence bundles: signatures, sequence, hash chain, and (S3) retention.
    Verify(msp_agent::prove::cli::VerifyArgs),
    /// Print the evidence signing key and its allowed_signers line.
    Pubkey(msp_agent::prove::cli::PubkeyArgs),
    /// Print the polkit rule that lets the agent's user restart exactly the remediable units.
    PolkitRule {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "msp-agent")]
        user: String,
    },
}

/// The configuration for a command: the named file, else the default path if
/// it exists, else the embedded default.
fn load(config: Option<&Path>) -> Result<(Config, String), String> {
    let path = match config {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => PathBuf::from(DEFAULT_CONFIG_PATH),
        None => return Ok((Config::embedded_default(), "embedded default".to_string())),
    };
    Config::load(&path)
        .map(|c| (c, path.display().to_string()))
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon_mode = matches!(cli.command, Command::Run { .. });
    logging::init(daemon_mode);
    let result = match cli.command {
        Command::Run { config, dry_run } => return run(config.as_deref(), dry_run),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} watch rule(s), {} remediable)",
                    file.display(),
                    c.watch.units.len(),
                    c.remediable_patterns().len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("msp-agent: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Command::FreeDisk { config, instance } => return free_disk(&config, &instance),
        Command::Status { config, json } => {
            with_config(config.as_deref(), |c| cli::status(&c.db_path(), json))
        }
        Command::Incidents {
            config,
            json,
            all,
            limit,
        } => with_config(config.as_deref(), |c| {
            cli::incidents(&c.db_path(), json, all, limit)
        }),
        Command::Silence {
            target,
            duration,
            reason,
            config,
        } => with_config(config.as_deref(), |c| {
            cli::silence(&c.db_path(), &target, duration, &reason)
        }),
        Command::Verify(args) => {
            let Some(rt) = runtime(tokio::runtime::Builder::new_current_thread().enable_all())
            else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(msp_agent::prove::cli::verify(args)) {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Pubkey(args) => msp_agent::prove::cli::pubkey(args),
        Command::PolkitRule { config, user } => match load(config.as_deref()) {
            Ok((c, source)) => {
                print!("{}", polkit::rule(&c, &user, &source));
                Ok(())
            }
            Err(e) => {
                eprintln!("msp-agent: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msp-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of `free-disk` for an instance that names no remediable mount.
const EXIT_USAGE: u8 = 2;

fn free_disk(config: &Path, instance: &str) -> ExitCode {
    let plan = match Config::load(config) {
        Ok(c) => match c.free_disk_plan(instance) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("msp-agent free-disk: {}: {e}", config.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        Err(e) => {
            eprintln!("msp-agent free-disk: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(rt) = runtime(tokio::runtime::Builder::new_current_thread().enable_all()) else {
        return ExitCode::FAILURE;
    };
    let report = rt.block_on(msp_agent::act::free_disk::helper::run(&plan));
    let line = msp_agent::act::free_disk::helper::summary(&report);
    match msp_agent::act::free_disk::helper::write_report(&report) {
        Ok(path) => println!("{line}; result in {}", path.display()),
        Err(e) => {
            eprintln!("msp-agent free-disk: {line}; cannot write the result: {e}");
            return ExitCode::FAILURE;
        }
    }
    if msp_agent::act::free_disk::helper::all_ok(&report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime(builder: &mut tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .build()
        .map_err(|e| eprintln!("msp-agent: cannot start the runtime: {e}"))
        .ok()
}

fn with_config(
    config: Option<&Path>,
    f: impl FnOnce(&Config) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (c, _) = load(config).map_err(anyhow::Error::msg)?;
    f(&c)
}

fn run(config: Option<&Path>, dry_run: bool) -> ExitCode {
    let (mut config, source) = match load(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("refusing to start: {e}");
            eprintln!("msp-agent: refusing to start: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    config.agent.dry_run |= dry_run;
    let Some(runtime) = runtime(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // SQLite and fsync run on blocking threads; a few are plenty and keep memory low.
            .max_blocking_threads(4)
            .enable_all(),
    ) else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async move {
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
            signals.cancel();
        });
        tracing::info!(config = %source, "msp-agent {} starting", daemon::VERSION);
        daemon::Daemon::new(config, source)?.run(cancel).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("msp-agent failed: {e:#}");
            eprintln!("msp-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
