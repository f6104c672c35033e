//! prove: evidence bundles, signing, the durable spool, upload to S3 Object Lock, verify.
//!
//! Data comes in as [`crate::events::Event`]s and leaves as signed, hash-chained
//! bundles in a local spool and then in a write-once bucket. This module never calls
//! back up the flow (no act/, no decide/): it only records what it is given.
//!
//! - [`bundle`]: the bundle format and its canonical bytes (pure)
//! - [`keys`]: the signing key and the trusted keys of a verifier
//! - [`spool`]: durable segment files on disk
//! - [`local`]: reading a directory tree of bundles for the verifier
//! - [`recorder`]: [`Evidence`], the handle that seals and spools (blocking)
//! - [`verify`]: signature and chain checks over a set of bundles (pure)
//! - [`s3`]: the S3 client and the listing used by the verifier
//! - [`upload`]: the task that drains the spool into the bucket
//! - [`cli`]: `msp-agent verify` and `msp-agent pubkey`
//!
//! The format and the auditor's steps are documented in `docs/evidence.md`.

pub mod bundle;
pub mod cli;
pub mod keys;
pub mod local;
pub mod recorder;
pub mod s3;
pub mod spool;
pub mod upload;
pub mod verify;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use recorder::{Evidence, EvidenceStats, Sealed, WormStatus};

/// The `[evidence]` section of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// The signing key. Else `$CREDENTIALS_DIRECTORY/signing-key` if that exists,
    /// else `<state_dir>/evidence/signing.key`, generated at first start (mode 0600).
    pub key_file: Option<PathBuf>,
    /// The spool never grows past this; a record that would is refused with an error.
    pub spool_max_bytes: u64,
    /// Alarm (error log, counter, status) when the spool passes this share of the maximum.
    pub spool_alarm_percent: u8,
    /// Bundles already in S3 are kept locally up to this many bytes (oldest pruned first).
    pub keep_uploaded_bytes: u64,
    pub s3: Option<S3Config>,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        EvidenceConfig {
            key_file: None,
            spool_max_bytes: 1 << 30,
            spool_alarm_percent: 80,
            keep_uploaded_bytes: 64 << 20,
            s3: None,
        }
    }
}

impl EvidenceConfig {
    /// Checks the section; the error is (key below `evidence`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(s3) = &self.s3 {
            if s3.bucket.trim().is_empty() {
                return Err(("s3.bucket".into(), "is empty".into()));
            }
            if s3.retention_days == 0 {
                return Err((
                    "s3.retention_days".into(),
                    "must be at least 1: objects are locked until upload time plus this many days"
                        .into(),
                ));
            }
        }
        if self.spool_alarm_percent == 0 || self.spool_alarm_percent > 100 {
            return Err((
                "spool_alarm_percent".into(),
                "must be between 1 and 100".into(),
            ));
        }
        Ok(())
    }
}

/// `[evidence.s3]`: where bundles go, write-once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix, without leading or trailing slash (`""` for the bucket's root).
    #[serde(default)]
    pub prefix: String,
    /// Endpoint URL for a non-AWS server, e.g. `http://127.0.0.1:7480`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS servers.
    #[serde(default)]
    pub path_style: bool,
    /// Each object is locked in COMPLIANCE mode until upload time plus this many days.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// A file with `aws_access_key_id` / `aws_secret_access_key` (optionally
    /// `aws_session_token`). Else `$CREDENTIALS_DIRECTORY/s3-credentials` if present,
    /// else the `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Longest wait between two upload attempts (exponential backoff with jitter).
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Bundles put at the same time. 1 (the default) uploads strictly in sequence
    /// order; more speeds up catching up after an outage, and bundles within one
    /// window may then land in any order (the upload mark still never skips one).
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// Time limit for one S3 request.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_retention_days() -> u32 {
    // Six years: the retention HIPAA asks of its documentation.
    2190
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_upload_concurrency() -> usize {
    1
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(20)
}

impl S3Config {
    /// A config with defaults for everything but the bucket.
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: default_region(),
            path_style: false,
            retention_days: default_retention_days(),
            credentials_file: None,
            retry_max: default_retry_max(),
            upload_concurrency: default_upload_concurrency(),
            request_timeout: default_request_timeout(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("evidence spool: {0}")]
    Spool(#[from] std::io::Error),
    #[error(
        "evidence spool {path} is full ({used} of {max} bytes) and nothing in it is uploaded yet; \
         the bundle was NOT recorded. Fix the upload (see `msp-agent status`) or raise \
         evidence.spool_max_bytes"
    )]
    SpoolFull { path: PathBuf, used: u64, max: u64 },
    #[error("evidence spool {path} is used by another process (lock {lock}); stop it first")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("cannot seal bundle: {0}")]
    Seal(String),
    #[error(
        "evidence spool is in an unknown state after a failed write ({0}); \
         restart the agent so it recovers the spool"
    )]
    Poisoned(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_toml_with_defaults_and_durations() {
        let cfg: EvidenceConfig = toml::from_str(
            r#"
            key_file = "/etc/k"
            [s3]
            bucket = "b"
            endpoint = "http://127.0.0.1:7480"
            path_style = true
            retry_max = "5s"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.spool_max_bytes, 1 << 30);
        let s3 = cfg.s3.unwrap();
        assert_eq!(s3.retry_max, Duration::from_secs(5));
        assert_eq!(s3.retention_days, 2190);
        assert_eq!(s3.region, "us-east-1");
        let err = toml::from_str::<EvidenceConfig>("spool_max = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let back = toml::to_string(&EvidenceConfig::default()).unwrap();
        assert_eq!(
            toml::from_str::<EvidenceConfig>(&back).unwrap(),
            EvidenceConfig::default()
        );
    }
}
