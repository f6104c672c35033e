//! [`Evidence`]: seal events into signed, hash-chained bundles and make them durable.
//!
//! `record` blocks until the bundle is on disk (fsync of the segment and of its
//! directory). Concurrent callers are committed together (group commit): while one
//! caller writes a segment, the others queue; the next writer takes the whole queue
//! as one segment. A sequence number is handed out only in memory until its segment
//! is durable; if the write fails, every queued bundle fails and the sequence rolls
//! back, so no acknowledged number is ever reused and none is skipped.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::bundle::{self, AgentRecord, AgentStart, BundleBody, KeyChange, NewBundle};
use super::keys::SigningKey;
use super::spool::{Spool, SpoolRecord};
use super::{EvidenceConfig, EvidenceError};
use crate::events::Event;

/// What `record` returns once the bundle is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sealed {
    pub seq: u64,
    /// SHA-256 of the bundle's bytes, hex.
    pub hash: String,
    pub incident_id: String,
}

/// Whether the bucket gives write-once storage, as last seen by the uploader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WormStatus {
    /// No `[evidence.s3]`: bundles stay in the local spool only.
    NotConfigured,
    /// The uploader has not yet had an answer from the bucket.
    Checking,
    /// Object Lock is enabled; uploads are locked in COMPLIANCE mode.
    Enabled,
    /// The bucket has no Object Lock: nothing is uploaded, nothing is claimed write-once.
    NotEnabled,
    /// The bucket cannot be reached or refuses us; the spool keeps everything.
    Unreachable,
    /// An object in the bucket differs from the spool's bundle with the same sequence.
    Conflict,
}

/// Counters for metrics and `msp-agent status`.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceStats {
    pub host: String,
    pub key_id: String,
    /// Bundles recorded by this process.
    pub recorded: u64,
    /// Highest durable sequence.
    pub last_seq: u64,
    /// Highest sequence known to be in S3 (all before it are too).
    pub uploaded_seq: u64,
    /// Bundles uploaded by this process.
    pub uploaded: u64,
    pub upload_failures: u64,
    /// Bundles durable locally but not yet in S3.
    pub spool_depth: u64,
    pub spool_bytes: u64,
    pub spool_max_bytes: u64,
    /// The spool is above its alarm threshold right now.
    pub spool_alarm: bool,
    /// Times the spool crossed its alarm threshold.
    pub spool_alarms: u64,
    pub worm: WormStatus,
    pub last_error: Option<String>,
    pub last_upload_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct Pending {
    ticket: u64,
    record: SpoolRecord,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    prev_hash: Option<String>,
    durable_seq: u64,
    durable_hash: Option<String>,
    pending: Vec<Pending>,
    writing: bool,
    next_ticket: u64,
    /// Every ticket up to this one has its answer.
    done_ticket: u64,
    failures: HashMap<u64, String>,
    poisoned: Option<String>,
}

pub(crate) struct Inner {
    host: String,
    agent_version: String,
    key: SigningKey,
    dir: PathBuf,
    state: Mutex<State>,
    cond: Condvar,
    spool: Mutex<Spool>,
    spool_max_bytes: u64,
    alarm_bytes: u64,
    keep_uploaded_bytes: u64,
    // counters
    recorded: AtomicU64,
    spool_bytes: AtomicU64,
    uploaded_seq: AtomicU64,
    pub(crate) uploaded: AtomicU64,
    pub(crate) upload_failures: AtomicU64,
    spool_alarm: AtomicBool,
    spool_alarms: AtomicU64,
    pub(crate) status: Mutex<(WormStatus, Option<String>, Option<DateTime<Utc>>)>,
    pub(crate) notify: tokio::sync::Notify,
    _lock: nix::fcntl::Flock<File>,
}

/// The evidence recorder: cloneable, shared by the daemon's tasks and the uploader.
#[derive(Clone)]
pub struct Evidence {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence")
            .field("host", &self.inner.host)
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// The spool directory of one host under the state directory.
pub fn spool_dir(state_dir: &Path, host: &str) -> PathBuf {
    state_dir
        .join("evidence")
        .join("spool")
        .join(bundle::key_safe(host))
}

impl Evidence {
    /// Load (or generate) the key, open and recover the spool, and record the start
    /// (preceded by a key change when the key differs from the chain's last one).
    pub fn open(
        cfg: &EvidenceConfig,
        state_dir: &Path,
        host: &str,
        agent_version: &str,
    ) -> Result<Evidence, EvidenceError> {
        let key = SigningKey::load_or_generate(cfg.key_file.as_deref(), state_dir)?;
        Evidence::open_with_key(cfg, state_dir, host, agent_version, key)
    }

    /// As [`Evidence::open`], with a key already loaded.
    pub fn open_with_key(
        cfg: &EvidenceConfig,
        state_dir: &Path,
        host: &str,
        agent_version: &str,
        key: SigningKey,
    ) -> Result<Evidence, EvidenceError> {
        let dir = spool_dir(state_dir, host);
        fs::create_dir_all(&dir)?;
        let lock_path = state_dir.join("evidence").join("lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| EvidenceError::Locked {
                path: dir.clone(),
                lock: lock_path.clone(),
            })?;
        let (spool, rec) = Spool::open(&dir)?;
        let (last_seq, last_hash, last_key) = match &rec.tail {
            Some(t) => (t.seq, Some(t.hash.clone()), Some(t.key_id.clone())),
            None => (0, None, None),
        };
        let worm = if cfg.s3.is_some() {
            WormStatus::Checking
        } else {
            WormStatus::NotConfigured
        };
        let ev = Evidence {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                agent_version: agent_version.to_owned(),
                dir,
                state: Mutex::new(State {
                    next_seq: last_seq + 1,
                    prev_hash: last_hash.clone(),
                    durable_seq: last_seq,
                    durable_hash: last_hash,
                    pending: Vec::new(),
                    writing: false,
                    next_ticket: 1,
                    done_ticket: 0,
                    failures: HashMap::new(),
                    poisoned: None,
                }),
                cond: Condvar::new(),
                spool_bytes: AtomicU64::new(spool.total_bytes()),
                spool: Mutex::new(spool),
                spool_max_bytes: cfg.spool_max_bytes,
                alarm_bytes: cfg.spool_max_bytes / 100
                    * u64::from(cfg.spool_alarm_percent.min(100)),
                keep_uploaded_bytes: cfg.keep_uploaded_bytes,
                recorded: AtomicU64::new(0),
                uploaded_seq: AtomicU64::new(rec.uploaded_seq),
                uploaded: AtomicU64::new(0),
                upload_failures: AtomicU64::new(0),
                spool_alarm: AtomicBool::new(false),
                spool_alarms: AtomicU64::new(0),
                status: Mutex::new((worm, None, None)),
                notify: tokio::sync::Notify::new(),
                key,
                _lock: lock,
            }),
        };
        if rec.removed_tmp > 0 {
            tracing::warn!(
                removed = rec.removed_tmp,
                "evidence spool: removed unfinished writes left by a crash"
            );
        }
        if last_key.as_deref() != Some(ev.inner.key.key_id()) {
            if let Some(old) = &last_key {
                tracing::warn!(old = %old, new = %ev.inner.key.key_id(), "evidence signing key changed; recording the change");
            }
            ev.seal(&BundleBody::Agent(AgentRecord::KeyChange(KeyChange {
                previous_key_id: last_key,
                key_id: ev.inner.key.key_id().to_owned(),
                public_key: ev.inner.key.public_key_openssh(),
                source: ev.inner.key.source().describe(),
            })))?;
        }
        ev.seal(&BundleBody::Agent(AgentRecord::AgentStart(AgentStart {
            agent_version: agent_version.to_owned(),
            removed_partial_writes: rec.removed_tmp,
            resumed_after_seq: last_seq,
        })))?;
        ev.check_alarm();
        Ok(ev)
    }

    /// Seal one event and return once it is durable. Blocking: call it from
    /// `spawn_blocking` (or a thread), never on the async runtime.
    pub fn record(&self, event: &Event) -> Result<Sealed, EvidenceError> {
        let s = self.seal(&BundleBody::Event(event.clone()))?;
        tracing::debug!(incident_id = %s.incident_id, seq = s.seq, "evidence recorded");
        Ok(s)
    }

    /// Seal any bundle body (events and the agent's own records).
    pub fn seal(&self, body: &BundleBody) -> Result<Sealed, EvidenceError> {
        let inner = &*self.inner;
        let mut st = inner.state.lock().expect("evidence state lock");
        if let Some(p) = &st.poisoned {
            return Err(EvidenceError::Poisoned(p.clone()));
        }
        self.ensure_room()?;
        let seq = st.next_seq;
        let now = Utc::now();
        let json = NewBundle {
            host: &inner.host,
            agent_version: &inner.agent_version,
            seq,
            prev_hash: st.prev_hash.as_deref(),
            recorded_at: now,
            key_id: inner.key.key_id(),
            body,
        }
        .to_bytes()
        .map_err(|e| EvidenceError::Seal(e.to_string()))?;
        let sig = inner.key.sign(&json)?;
        let hash = bundle::hash_hex(&json);
        st.next_seq += 1;
        st.prev_hash = Some(hash.clone());
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.pending.push(Pending {
            ticket,
            record: SpoolRecord { seq, json, sig },
        });
        let sealed = Sealed {
            seq,
            hash,
            incident_id: body.incident_id().unwrap_or_default().to_owned(),
        };

        loop {
            if st.done_ticket >= ticket {
                return match st.failures.remove(&ticket) {
                    Some(e) => Err(EvidenceError::Spool(std::io::Error::other(e))),
                    None => Ok(sealed),
                };
            }
            if st.writing {
                st = inner.cond.wait(st).expect("evidence state lock");
                continue;
            }
            st = self.commit_queue(st);
        }
    }

    /// Write everything queued as one segment; called with the state lock, returns it.
    fn commit_queue<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let inner = &*self.inner;
        let batch = std::mem::take(&mut st.pending);
        let Some(last) = batch.last() else { return st };
        let (last_ticket, last_seq) = (last.ticket, last.record.seq);
        st.writing = true;
        drop(st);

        let records: Vec<SpoolRecord> = batch.into_iter().map(|p| p.record).collect();
        let result = inner.spool.lock().expect("spool lock").write(&records);

        let mut st = inner.state.lock().expect("evidence state lock");
        st.writing = false;
        match result {
            Ok(()) => {
                // Bundles queued meanwhile were chained on this batch: still valid.
                st.durable_seq = last_seq;
                st.durable_hash = Some(bundle::hash_hex(&records.last().expect("non-empty").json));
                st.done_ticket = last_ticket;
                inner
                    .recorded
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                inner.spool_bytes.store(
                    inner.spool.lock().expect("spool lock").total_bytes(),
                    Ordering::Relaxed,
                );
                inner.notify.notify_one();
            }
            Err(e) => {
                // Fail this batch and everything chained on it; roll the sequence back.
                let msg = e.error.to_string();
                tracing::error!(error = %msg, "evidence spool write failed; the bundles were not recorded");
                let queued: Vec<u64> = st.pending.drain(..).map(|p| p.ticket).collect();
                let first_ticket = st.done_ticket + 1;
                let max_ticket = queued.last().copied().unwrap_or(last_ticket);
                for t in first_ticket..=max_ticket {
                    st.failures.insert(t, msg.clone());
                }
                st.done_ticket = max_ticket;
                st.next_seq = st.durable_seq + 1;
                st.prev_hash = st.durable_hash.clone();
                if !e.cleaned {
                    st.poisoned = Some(msg);
                }
            }
        }
        drop(st);
        inner.cond.notify_all();
        self.check_alarm();
        inner.state.lock().expect("evidence state lock")
    }

    /// Make room for one more bundle by pruning uploaded segments; refuse when full.
    fn ensure_room(&self) -> Result<(), EvidenceError> {
        let inner = &*self.inner;
        if inner.spool_bytes.load(Ordering::Relaxed) < inner.spool_max_bytes {
            return Ok(());
        }
        let mut spool = inner.spool.lock().expect("spool lock");
        spool.prune_uploaded(
            inner.uploaded_seq.load(Ordering::Relaxed),
            inner.spool_max_bytes / 2,
        )?;
        let used = spool.total_bytes();
        inner.spool_bytes.store(used, Ordering::Relaxed);
        if used >= inner.spool_max_bytes {
            let e = EvidenceError::SpoolFull {
                path: inner.dir.clone(),
                used,
                max: inner.spool_max_bytes,
            };
            tracing::error!(error = %e, "evidence spool full");
            return Err(e);
        }
        Ok(())
    }

    fn check_alarm(&self) {
        let inner = &*self.inner;
        let used = inner.spool_bytes.load(Ordering::Relaxed);
        let above = used >= inner.alarm_bytes;
        let was = inner.spool_alarm.swap(above, Ordering::Relaxed);
        if above && !was {
            inner.spool_alarms.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                spool = %inner.dir.display(),
                used,
                max = inner.spool_max_bytes,
                "evidence spool above its alarm threshold: bundles are not leaving for S3"
            );
        }
    }

    pub fn host(&self) -> &str {
        &self.inner.host
    }

    pub fn spool_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bundles durable locally but not yet in S3.
    pub fn spool_depth(&self) -> u64 {
        let durable = self
            .inner
            .state
            .lock()
            .expect("evidence state lock")
            .durable_seq;
        durable.saturating_sub(self.inner.uploaded_seq.load(Ordering::Relaxed))
    }

    pub fn last_seq(&self) -> u64 {
        self.inner
            .state
            .lock()
            .expect("evidence state lock")
            .durable_seq
    }

    pub fn key_id(&self) -> &str {
        self.inner.key.key_id()
    }

    /// `ssh-ed25519 AAAA…`.
    pub fn public_key_openssh(&self) -> String {
        self.inner.key.public_key_openssh()
    }

    /// The allowed_signers line for this host's key.
    pub fn allowed_signers_line(&self) -> String {
        super::keys::allowed_signers_line(&self.inner.host, self.inner.key.public_key())
    }

    pub fn stats(&self) -> EvidenceStats {
        let inner = &*self.inner;
        let (worm, last_error, last_upload_at) = inner.status.lock().expect("status lock").clone();
        EvidenceStats {
            host: inner.host.clone(),
            key_id: inner.key.key_id().to_owned(),
            recorded: inner.recorded.load(Ordering::Relaxed),
            last_seq: self.last_seq(),
            uploaded_seq: inner.uploaded_seq.load(Ordering::Relaxed),
            uploaded: inner.uploaded.load(Ordering::Relaxed),
            upload_failures: inner.upload_failures.load(Ordering::Relaxed),
            spool_depth: self.spool_depth(),
            spool_bytes: inner.spool_bytes.load(Ordering::Relaxed),
            spool_max_bytes: inner.spool_max_bytes,
            spool_alarm: inner.spool_alarm.load(Ordering::Relaxed),
            spool_alarms: inner.spool_alarms.load(Ordering::Relaxed),
            worm,
            last_error,
            last_upload_at,
        }
    }

    // ---- for the uploader ----

    pub(crate) fn uploaded_seq(&self) -> u64 {
        self.inner.uploaded_seq.load(Ordering::Relaxed)
    }

    /// Durable bundles after `after`, in order, at most `max`.
    pub(crate) fn durable_after(
        &self,
        after: u64,
        max: usize,
    ) -> std::io::Result<Vec<SpoolRecord>> {
        let upto = self.last_seq();
        if upto <= after {
            return Ok(Vec::new());
        }
        let paths = self
            .inner
            .spool
            .lock()
            .expect("spool lock")
            .segment_paths_after(after, upto);
        let mut out = Vec::new();
        for p in paths {
            for r in super::spool::read_segment_file(&p)? {
                if r.seq > after && r.seq <= upto {
                    out.push(r);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Everything up to `seq` is in S3: remember it and prune old segments.
    pub(crate) fn mark_uploaded(&self, seq: u64, persist: bool) -> std::io::Result<()> {
        let inner = &*self.inner;
        inner.uploaded_seq.fetch_max(seq, Ordering::Relaxed);
        if persist {
            let mut spool = inner.spool.lock().expect("spool lock");
            spool.write_uploaded(inner.uploaded_seq.load(Ordering::Relaxed))?;
            spool.prune_uploaded(seq, inner.keep_uploaded_bytes)?;
            inner
                .spool_bytes
                .store(spool.total_bytes(), Ordering::Relaxed);
            drop(spool);
            self.check_alarm();
        }
        Ok(())
    }

    pub(crate) fn set_status(&self, worm: WormStatus, error: Option<String>) {
        let mut s = self.inner.status.lock().expect("status lock");
        s.0 = worm;
        if error.is_some() {
            s.1 = error;
        }
    }

    pub(crate) fn note_uploaded(&self) {
        self.inner.uploaded.fetch_add(1, Ordering::Relaxed);
        let mut s = self.inner.status.lock().expect("status lock");
        s.2 = Some(Utc::now());
    }

    pub(crate) fn note_failure(&self, error: String) {
        self.inner.upload_failures.fetch_add(1, Ordering::Relaxed);
        self.inner.status.lock().expect("status lock").1 = Some(error);
    }

    pub(crate) fn notify(&self) -> &tokio::sync::Notify {
        &self.inner.notify
    }
}
