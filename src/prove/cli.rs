//! `msp-agent verify` and `msp-agent pubkey`: the arguments and what they print.
//!
//! `verify` exits 0 when every bundle checks out, 1 when anything fails (and names
//! the first failing bundle and why); errors in the arguments or in reading the
//! source are returned as errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::keys::{self, TrustedKeys};
use super::verify::{self, Options, Report};
use super::{local, s3};

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// A directory (a spool, or a copy of the bucket) or `s3://bucket/prefix`.
    pub source: String,
    /// Trusted public keys: an allowed_signers file or OpenSSH `.pub` lines.
    #[arg(long, value_name = "FILE")]
    pub pubkey: PathBuf,
    /// S3 endpoint URL, for servers other than AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint: Option<String>,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`).
    #[arg(long)]
    pub path_style: bool,
    /// AWS-style credentials file (else the AWS_* environment variables).
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Accept chains that start after seq 1 (a local spool whose uploaded bundles were pruned).
    #[arg(long)]
    pub allow_pruned: bool,
    /// How many failures to print (the first one is always printed).
    #[arg(long, default_value_t = 20)]
    pub max_failures: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PubkeyArgs {
    /// The agent's configuration file (its `[evidence]` section and `state_dir`).
    #[arg(long, value_name = "FILE", conflicts_with = "key")]
    pub config: Option<PathBuf>,
    /// A private key file (OpenSSH or PKCS#8) or an OpenSSH `.pub` file.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Principal for the allowed_signers line (default: this machine's host name).
    #[arg(long)]
    pub host: Option<String>,
}

/// Check a directory or a bucket prefix; print a summary and the failures.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = TrustedKeys::read(&args.pubkey)?;
    let (report, retention) = if let Some((bucket, prefix)) = s3::parse_s3_url(&args.source) {
        let client = s3::client(&s3::ClientSettings {
            endpoint: args.endpoint.clone(),
            region: args.region.clone(),
            path_style: args.path_style,
            credentials_file: args.credentials_file.clone(),
            request_timeout: None,
        })
        .await?;
        let (items, hidden) = s3::list_items(&client, &bucket, &prefix).await?;
        let opts = Options {
            allow_pruned: args.allow_pruned,
            check_retention: true,
            ..Options::default()
        };
        let mut report =
            tokio::task::spawn_blocking(move || verify::verify_items(&items, &keys, &opts)).await?;
        report.add_failures(hidden);
        (report, true)
    } else {
        let dir = PathBuf::from(&args.source);
        let allow_pruned = args.allow_pruned;
        let report =
            tokio::task::spawn_blocking(move || verify_dir(&dir, &keys, allow_pruned)).await??;
        (report, false)
    };
    let mut out = std::io::stdout().lock();
    print_report(
        &mut out,
        &args.source,
        &report,
        retention,
        args.max_failures,
    )?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Read a directory tree and verify it.
pub fn verify_dir(dir: &Path, keys: &TrustedKeys, allow_pruned: bool) -> anyhow::Result<Report> {
    let (items, read_failures) = local::read_dir_items(dir)?;
    let opts = Options {
        allow_pruned,
        ..Options::default()
    };
    let mut report = verify::verify_items(&items, keys, &opts);
    report.add_failures(read_failures);
    Ok(report)
}

pub fn print_report(
    out: &mut impl std::io::Write,
    source: &str,
    report: &Report,
    retention: bool,
    max_failures: usize,
) -> std::io::Result<()> {
    for h in &report.hosts {
        writeln!(
            out,
            "host {}: {} bundles, seq {}..{}, {} incidents, signed by {}",
            h.host,
            h.bundles,
            h.first_seq,
            h.last_seq,
            h.incidents.len(),
            h.keys.iter().cloned().collect::<Vec<_>>().join(", ")
        )?;
    }
    for f in report.failures.iter().take(max_failures.max(1)) {
        writeln!(out, "FAIL {f}")?;
    }
    if report.failures.len() > max_failures.max(1) {
        writeln!(
            out,
            "… and {} more failures",
            report.failures.len() - max_failures.max(1)
        )?;
    }
    if let Some(first) = report.first_failure() {
        writeln!(
            out,
            "verify {source}: FAILED ({} problems); first: {first}",
            report.failures.len()
        )?;
    } else if report.bundles == 0 {
        writeln!(out, "verify {source}: FAILED: no bundles found")?;
    } else {
        writeln!(
            out,
            "verify {source}: OK: {} bundles from {} host(s); signatures, sequences and hash chains check out{}",
            report.bundles,
            report.hosts.len(),
            if retention {
                "; every object is locked in COMPLIANCE mode"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Print the public key and the allowed_signers line.
pub fn pubkey(args: PubkeyArgs) -> anyhow::Result<()> {
    let (public, default_host) = match (&args.config, &args.key) {
        (_, Some(path)) => (read_public(path)?, None),
        (Some(cfg), None) => {
            let (path, host) = key_path_from_config(cfg)?;
            (read_public(&path)?, host)
        }
        (None, None) => {
            anyhow::bail!("give --config FILE (the agent's configuration) or --key FILE")
        }
    };
    let host = args.host.or(default_host).unwrap_or_else(hostname);
    println!("{}", keys::public_openssh(&public));
    println!("{}", keys::allowed_signers_line(&host, &public));
    Ok(())
}

fn read_public(path: &Path) -> anyhow::Result<ssh_key::PublicKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key {}", path.display()))?;
    if text.contains("PRIVATE KEY") {
        let key = keys::parse_private_key(&text)
            .map_err(|e| anyhow::anyhow!("key {}: {e}", path.display()))?;
        return Ok(key.public_key().clone());
    }
    let trusted =
        TrustedKeys::parse(&text).map_err(|e| anyhow::anyhow!("key {}: {e}", path.display()))?;
    Ok(trusted.keys[0].key.clone())
}

/// The key the agent would use with this configuration, and its host name.
fn key_path_from_config(path: &Path) -> anyhow::Result<(PathBuf, Option<String>)> {
    let config = crate::config::Config::load(path)?;
    let host = Some(config.hostname());
    if let Some(k) = config.evidence.key_file {
        return Ok((k, host));
    }
    // The agent's own credential directory when run beside the service (e.g. NixOS's
    // LoadCredential=), then the caller's.
    let service_creds = std::path::PathBuf::from("/run/credentials/msp-agent.service");
    let dirs = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(service_creds));
    for dir in dirs {
        let p = dir.join(keys::CREDENTIAL_NAME);
        if p.exists() {
            return Ok((p, host));
        }
    }
    let p = keys::generated_key_path(&config.agent.state_dir);
    anyhow::ensure!(
        p.exists(),
        "no signing key yet at {} (the agent generates it at first start; or set evidence.key_file)",
        p.display()
    );
    Ok((p, host))
}
