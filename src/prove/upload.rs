//! The uploader: drains the spool into the bucket, in sequence order, write-once.
//!
//! At start it asks the bucket for its Object Lock configuration. Without Object Lock
//! it uploads nothing (the spool keeps everything, the status says `not_enabled`, and
//! nothing is claimed write-once) and asks again every few minutes. With it, each
//! bundle goes up as two objects, the signature first and then the bundle, each with
//! `Content-MD5`, Object Lock mode COMPLIANCE and retain-until = now + retention days.
//!
//! Idempotence: keys are derived from the bundle's content, so a re-upload after a
//! crash targets the same key. After a start or a failed request the uploader first
//! asks whether the object is already there (HEAD, then compares the MD5 or the bytes)
//! and skips it if so; a different object under the same key stops the upload and is
//! reported as a conflict, never overwritten.
//!
//! Failures back off exponentially with jitter up to `retry_max`, then retry the same
//! bundle: nothing is skipped, and (with the default `upload_concurrency` of 1)
//! nothing later goes up before it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockMode};
use base64::Engine;
use chrono::Utc;
use md5::{Digest, Md5};
use tokio_util::sync::CancellationToken;

use super::S3Config;
use super::bundle::ParsedBundle;
use super::recorder::{Evidence, WormStatus};
use super::s3::{self, describe, object_key, status_of};
use super::spool::SpoolRecord;

/// How often a bucket without Object Lock is asked again.
const LOCK_RECHECK: Duration = Duration::from_secs(300);
/// How often the spool is looked at without a wake-up.
const POLL: Duration = Duration::from_secs(30);
/// On shutdown, how long the uploader keeps draining before it stops.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Bundles read from the spool per round.
const BATCH: usize = 128;

/// Exponential backoff with jitter: `min(max, base·2ⁿ)`, then a random point in its upper half.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[derive(Debug)]
enum Failure {
    /// Try again after a pause.
    Retry(String),
    /// The bucket holds something else under our key: stop and say so.
    Conflict(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Retry(m) | Failure::Conflict(m) => m,
        }
    }
}

enum Lock {
    Enabled,
    NotEnabled(String),
    Error(String),
}

struct Uploader {
    ev: Evidence,
    cfg: S3Config,
    client: Client,
    /// Ask before putting: set at start and after any failed request.
    probe: AtomicBool,
}

/// Sleep unless cancelled first; true when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Run until `cancel`; then drain for a few more seconds and return.
pub async fn run(evidence: Evidence, s3: S3Config, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), s3.retry_max);
    let client = loop {
        match s3::client(&(&s3).into()).await {
            Ok(c) => break c,
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(error = %msg, "evidence upload: cannot set up the S3 client");
                evidence.note_failure(msg);
                evidence.set_status(WormStatus::Unreachable, None);
                if pause(&cancel, backoff.next_delay()).await {
                    return;
                }
            }
        }
    };
    let mut up = Uploader {
        ev: evidence,
        cfg: s3,
        client,
        probe: AtomicBool::new(true),
    };
    up.run(cancel, backoff).await
}

impl Uploader {
    async fn run(&mut self, cancel: CancellationToken, mut backoff: Backoff) {
        let bucket = self.cfg.bucket.clone();
        'check: loop {
            match self.check_lock().await {
                Lock::Enabled => {
                    tracing::info!(bucket = %bucket, "evidence bucket has Object Lock; uploading in COMPLIANCE mode");
                    self.ev.set_status(WormStatus::Enabled, None);
                    backoff.reset();
                }
                Lock::NotEnabled(why) => {
                    let msg = format!(
                        "bucket {bucket} has no Object Lock ({why}): evidence stays in the local spool \
                         and is NOT write-once. Create the bucket with Object Lock enabled \
                         (it cannot be added to most existing buckets)"
                    );
                    tracing::error!(bucket = %bucket, "{msg}");
                    self.ev.set_status(WormStatus::NotEnabled, Some(msg));
                    if pause(&cancel, LOCK_RECHECK).await {
                        return;
                    }
                    continue 'check;
                }
                Lock::Error(msg) => {
                    tracing::warn!(bucket = %bucket, error = %msg, "evidence bucket not reachable; will retry");
                    self.ev.note_failure(msg);
                    self.ev.set_status(WormStatus::Unreachable, None);
                    if pause(&cancel, backoff.next_delay()).await {
                        return;
                    }
                    continue 'check;
                }
            }
            loop {
                match self.drain(&cancel).await {
                    Ok(()) => {
                        backoff.reset();
                        if self.ev.stats().worm != WormStatus::Enabled {
                            self.ev.set_status(WormStatus::Enabled, None);
                        }
                        let notify = self.ev.notify().notified();
                        tokio::select! {
                            _ = cancel.cancelled() => {
                                let _ = tokio::time::timeout(SHUTDOWN_DRAIN, self.drain(&CancellationToken::new())).await;
                                let _ = self.persist().await;
                                return;
                            }
                            _ = notify => {}
                            _ = tokio::time::sleep(POLL) => {}
                        }
                    }
                    Err(f) => {
                        let _ = self.persist().await;
                        self.ev.note_failure(f.message().to_owned());
                        match &f {
                            Failure::Conflict(m) => {
                                tracing::error!(bucket = %bucket, error = %m, "evidence upload stopped: conflicting object");
                                self.ev.set_status(WormStatus::Conflict, None);
                            }
                            Failure::Retry(m) => {
                                tracing::warn!(bucket = %bucket, error = %m, depth = self.ev.spool_depth(), "evidence upload failed; will retry");
                                self.ev.set_status(WormStatus::Unreachable, None);
                            }
                        }
                        let delay = match f {
                            Failure::Conflict(_) => self.cfg.retry_max,
                            Failure::Retry(_) => backoff.next_delay(),
                        };
                        if pause(&cancel, delay).await {
                            return;
                        }
                        // After an outage, make sure the bucket still locks before going on.
                        continue 'check;
                    }
                }
            }
        }
    }

    async fn check_lock(&self) -> Lock {
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.cfg.bucket)
            .send()
            .await
        {
            Ok(out) => match out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
            {
                Some(ObjectLockEnabled::Enabled) => Lock::Enabled,
                _ => Lock::NotEnabled("ObjectLockEnabled is not Enabled".into()),
            },
            Err(e) => {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                let code = e
                    .as_service_error()
                    .and_then(|s| s.code())
                    .map(str::to_owned);
                match code.as_deref() {
                    Some("ObjectLockConfigurationNotFoundError") => {
                        Lock::NotEnabled("no Object Lock configuration".into())
                    }
                    Some("NoSuchBucket") => {
                        Lock::Error(format!("bucket {} does not exist", self.cfg.bucket))
                    }
                    _ => Lock::Error(format!(
                        "GetObjectLockConfiguration {}: {}",
                        self.cfg.bucket,
                        describe(&e)
                    )),
                }
            }
        }
    }

    /// Upload everything durable, in order. Returns when the spool is drained.
    async fn drain(&mut self, cancel: &CancellationToken) -> Result<(), Failure> {
        loop {
            let ev = self.ev.clone();
            let after = ev.uploaded_seq();
            let records = tokio::task::spawn_blocking(move || ev.durable_after(after, BATCH))
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?
                .map_err(|e| Failure::Conflict(format!("cannot read the spool: {e}")))?;
            if records.is_empty() {
                return Ok(());
            }
            // Strictly in order with the default window of 1; a larger window puts that
            // many bundles at once, and the upload mark still only passes a complete prefix.
            for chunk in records.chunks(self.cfg.upload_concurrency.max(1)) {
                let results =
                    futures_util::future::join_all(chunk.iter().map(|r| self.upload(r))).await;
                for (r, result) in chunk.iter().zip(results) {
                    result?;
                    self.ev.note_uploaded();
                    self.ev
                        .mark_uploaded(r.seq, false)
                        .map_err(|e| Failure::Retry(e.to_string()))?;
                }
            }
            self.persist()
                .await
                .map_err(|e| Failure::Retry(format!("cannot save the upload mark: {e}")))?;
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
    }

    async fn persist(&self) -> std::io::Result<()> {
        let ev = self.ev.clone();
        let seq = ev.uploaded_seq();
        tokio::task::spawn_blocking(move || ev.mark_uploaded(seq, true))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn upload(&self, r: &SpoolRecord) -> Result<(), Failure> {
        let p = ParsedBundle::parse(&r.json).map_err(|e| {
            Failure::Conflict(format!("spool bundle seq {} is damaged: {e}", r.seq))
        })?;
        let stem = p.envelope.object_stem();
        let prefix = self.cfg.prefix.clone();
        // Signature first: a bundle object in the bucket always has its signature beside it.
        self.put_once(&object_key(&prefix, &stem, "sig"), &r.sig, "text/plain")
            .await?;
        self.put_once(
            &object_key(&prefix, &stem, "json"),
            &r.json,
            "application/json",
        )
        .await
    }

    async fn put_once(&self, key: &str, bytes: &[u8], content_type: &str) -> Result<(), Failure> {
        let bucket = self.cfg.bucket.clone();
        let md5 = Md5::digest(bytes);
        let md5_hex = hex::encode(md5);
        if self.probe.load(Ordering::Relaxed) {
            match self
                .client
                .head_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
            {
                Ok(h) => {
                    if h.e_tag().map(|t| t.trim_matches('"')) == Some(md5_hex.as_str()) {
                        return Ok(());
                    }
                    let got = self
                        .client
                        .get_object()
                        .bucket(&bucket)
                        .key(key)
                        .send()
                        .await
                        .map_err(|e| {
                            Failure::Retry(format!("GetObject {key}: {}", describe(&e)))
                        })?;
                    let body = got
                        .body
                        .collect()
                        .await
                        .map_err(|e| Failure::Retry(e.to_string()))?
                        .into_bytes();
                    if body.as_ref() == bytes {
                        return Ok(());
                    }
                    return Err(Failure::Conflict(format!(
                        "s3://{bucket}/{key} already holds different bytes than the spool's bundle; \
                         another agent may use the same host name and prefix"
                    )));
                }
                Err(e) if status_of(&e) == Some(404) => self.probe.store(false, Ordering::Relaxed),
                Err(e) => {
                    return Err(Failure::Retry(format!(
                        "HeadObject s3://{bucket}/{key}: {}",
                        describe(&e)
                    )));
                }
            }
        }
        let until = Utc::now() + chrono::Duration::days(i64::from(self.cfg.retention_days));
        let result = self
            .client
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from(bytes.to_vec()))
            .content_type(content_type)
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .object_lock_mode(ObjectLockMode::Compliance)
            .object_lock_retain_until_date(aws_smithy_types::DateTime::from_secs(until.timestamp()))
            .send()
            .await;
        match result {
            Ok(out) => {
                if let Some(tag) = out.e_tag()
                    && tag.trim_matches('"') != md5_hex
                {
                    tracing::warn!(
                        key,
                        etag = tag,
                        "S3 answered with an ETag that is not the MD5 of the bundle"
                    );
                }
                Ok(())
            }
            Err(e) => {
                // The request may have landed anyway: ask before the next put.
                self.probe.store(true, Ordering::Relaxed);
                Err(Failure::Retry(format!(
                    "PutObject s3://{bucket}/{key}: {}",
                    describe(&e)
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, x) in d.iter().enumerate() {
            let cap = Duration::from_millis(100 * (1 << i)).min(Duration::from_secs(1));
            assert!(
                *x >= cap / 2 && *x <= cap,
                "attempt {i}: {x:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
