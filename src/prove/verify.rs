//! Verification of a set of bundles: each signature, each host's sequence and hash
//! chain, key changes, names, and (for S3) Object Lock retention.
//!
//! Pure over its inputs: the caller reads the bundles (directory or bucket) into
//! [`Item`]s and passes the clock in. Work per bundle runs on all cores; the chain
//! check is a single ordered pass per host.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};

use super::bundle::ParsedBundle;
use super::keys::TrustedKeys;

/// Object Lock retention as read from the bucket.
#[derive(Debug, Clone, PartialEq)]
pub enum Retention {
    /// No lock on the object.
    None,
    Locked {
        mode: String,
        until: Option<DateTime<Utc>>,
    },
}

/// One bundle as found: where, its bytes, its signature, and what its location claims.
#[derive(Debug, Clone)]
pub struct Item {
    /// File path or object key, for messages.
    pub name: String,
    pub json: Vec<u8>,
    /// `None` when the signature file or object is missing.
    pub sig: Option<Vec<u8>>,
    /// The sequence its name claims (file or key name, spool record header).
    pub name_seq: Option<u64>,
    /// The host its location claims (the key's host folder).
    pub name_host: Option<String>,
    /// Retention of the bundle object and of its signature object (S3 only).
    pub retention: Option<(Retention, Retention)>,
}

impl Item {
    pub fn new(name: impl Into<String>, json: Vec<u8>, sig: Option<Vec<u8>>) -> Item {
        Item {
            name: name.into(),
            json,
            sig,
            name_seq: None,
            name_host: None,
            retention: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Accept a chain that does not start at seq 1 (a local spool whose uploaded
    /// bundles were pruned); every bundle present is still fully checked.
    pub allow_pruned: bool,
    /// Require COMPLIANCE retention in the future on every object (S3).
    pub check_retention: bool,
    pub now: DateTime<Utc>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow_pruned: false,
            check_retention: false,
            now: Utc::now(),
        }
    }
}

/// One thing wrong, tied to the bundle it was found at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub host: String,
    pub seq: Option<u64>,
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(s) => write!(
                f,
                "host {} seq {} ({}): {}",
                self.host, s, self.name, self.reason
            ),
            None => write!(f, "{}: {}", self.name, self.reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSummary {
    pub host: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub bundles: u64,
    pub keys: BTreeSet<String>,
    pub incidents: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub bundles: u64,
    pub hosts: Vec<HostSummary>,
    /// Sorted: by host, then sequence; problems without a host first.
    pub failures: Vec<Failure>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.bundles > 0
    }

    pub fn first_failure(&self) -> Option<&Failure> {
        self.failures.first()
    }

    /// Add problems found outside the bundles (damaged files, hidden objects), in order.
    pub fn add_failures(&mut self, more: Vec<Failure>) {
        if more.is_empty() {
            return;
        }
        self.failures.extend(more);
        self.failures
            .sort_by(|a, b| (&a.host, a.seq, &a.name).cmp(&(&b.host, b.seq, &b.name)));
        self.failures.dedup();
    }
}

struct Checked {
    item: usize,
    parsed: Option<ParsedBundle>,
    failures: Vec<Failure>,
}

fn check_one(i: usize, item: &Item, keys: &TrustedKeys, opts: &Options) -> Checked {
    let mut failures = Vec::new();
    let fail = |host: &str, seq: Option<u64>, reason: String| Failure {
        host: host.to_owned(),
        seq,
        name: item.name.clone(),
        reason,
    };
    let host_hint = item.name_host.clone().unwrap_or_default();
    let parsed = match ParsedBundle::parse(&item.json) {
        Ok(p) => p,
        Err(e) => {
            failures.push(fail(&host_hint, item.name_seq, e.to_string()));
            return Checked {
                item: i,
                parsed: None,
                failures,
            };
        }
    };
    let env = &parsed.envelope;
    let (host, seq) = (env.host.as_str(), Some(env.seq));
    match &item.sig {
        None => failures.push(fail(host, seq, "signature missing".into())),
        Some(sig) => {
            if let Err(e) = keys.verify(host, &env.key_id, &item.json, sig) {
                failures.push(fail(host, seq, e));
            }
        }
    }
    if let Some(n) = item.name_seq
        && n != env.seq
    {
        failures.push(fail(
            host,
            seq,
            format!("stored under seq {n} but the bundle says seq {}", env.seq),
        ));
    }
    if let Some(h) = &item.name_host
        && h != &super::bundle::key_safe(host)
    {
        failures.push(fail(
            host,
            seq,
            format!("stored under host {h:?} but the bundle says host {host:?}"),
        ));
    }
    if opts.check_retention {
        match &item.retention {
            None => failures.push(fail(host, seq, "retention unknown".into())),
            Some((b, s)) => {
                for (what, r) in [("bundle", b), ("signature", s)] {
                    if let Some(why) = retention_problem(r, opts.now) {
                        failures.push(fail(host, seq, format!("{what} object {why}")));
                    }
                }
            }
        }
    }
    Checked {
        item: i,
        parsed: Some(parsed),
        failures,
    }
}

fn retention_problem(r: &Retention, now: DateTime<Utc>) -> Option<String> {
    match r {
        Retention::None => Some("has no Object Lock retention".into()),
        Retention::Locked { mode, .. } if mode != "COMPLIANCE" => Some(format!(
            "is locked in {mode} mode, not COMPLIANCE (it can be removed early)"
        )),
        Retention::Locked { until: None, .. } => Some("has no retain-until date".into()),
        Retention::Locked { until: Some(t), .. } if *t <= now => {
            Some(format!("retention expired at {}", t.to_rfc3339()))
        }
        Retention::Locked { .. } => None,
    }
}

/// Check every bundle and every host's chain.
pub fn verify_items(items: &[Item], keys: &TrustedKeys, opts: &Options) -> Report {
    // Per-bundle work (parse, canonical check, signature) on every core.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(items.len().max(1) / 64 + 1);
    let next = AtomicUsize::new(0);
    let mut checked: Vec<Checked> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(64, Ordering::Relaxed);
                        if start >= items.len() {
                            break;
                        }
                        for (i, item) in items.iter().enumerate().skip(start).take(64) {
                            out.push(check_one(i, item, keys, opts));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verify worker"))
            .collect()
    });
    checked.sort_by_key(|c| c.item);

    let mut report = Report {
        bundles: items.len() as u64,
        ..Report::default()
    };
    // host → seq → (item index, parsed)
    let mut hosts: BTreeMap<String, BTreeMap<u64, (usize, ParsedBundle)>> = BTreeMap::new();
    for c in checked {
        report.failures.extend(c.failures);
        let Some(p) = c.parsed else { continue };
        let chain = hosts.entry(p.envelope.host.clone()).or_default();
        match chain.get(&p.envelope.seq) {
            Some((other, q)) if q.hash == p.hash => {
                // The same bundle twice (e.g. a spool and a download side by side).
                let _ = other;
                report.bundles -= 1;
            }
            Some((other, _)) => report.failures.push(Failure {
                host: p.envelope.host.clone(),
                seq: Some(p.envelope.seq),
                name: items[c.item].name.clone(),
                reason: format!(
                    "another, different bundle claims the same seq: {}",
                    items[*other].name
                ),
            }),
            None => {
                chain.insert(p.envelope.seq, (c.item, p));
            }
        }
    }

    for (host, chain) in &hosts {
        let mut summary = HostSummary {
            host: host.clone(),
            first_seq: *chain.keys().next().expect("non-empty"),
            last_seq: *chain.keys().last().expect("non-empty"),
            bundles: chain.len() as u64,
            keys: BTreeSet::new(),
            incidents: BTreeSet::new(),
        };
        let mut prev: Option<&ParsedBundle> = None;
        for (&seq, (idx, p)) in chain {
            let env = &p.envelope;
            summary.keys.insert(env.key_id.clone());
            if let Some(i) = &env.incident_id {
                summary.incidents.insert(i.clone());
            }
            let mut fail = |reason: String| {
                report.failures.push(Failure {
                    host: host.clone(),
                    seq: Some(seq),
                    name: items[*idx].name.clone(),
                    reason,
                })
            };
            match prev {
                None => {
                    if seq != 1 && !opts.allow_pruned {
                        fail(format!(
                            "the chain starts at seq {seq}: bundles 1..{} are missing",
                            seq - 1
                        ));
                    }
                    if seq == 1 {
                        if env.prev_hash.is_some() {
                            fail("seq 1 must have prev_hash null".into());
                        }
                        if p.kind != "key_change" {
                            fail(format!(
                                "the chain must start with a key_change bundle, not {}",
                                p.kind
                            ));
                        }
                    }
                }
                Some(q) => {
                    let expected = q.envelope.seq + 1;
                    if seq != expected {
                        let missing = if seq - 1 == expected {
                            format!("seq {expected} is missing")
                        } else {
                            format!("seqs {expected}..{} are missing", seq - 1)
                        };
                        fail(format!(
                            "sequence gap: {missing} (the bundle before this one is seq {})",
                            q.envelope.seq
                        ));
                    } else if env.prev_hash.as_deref() != Some(q.hash.as_str()) {
                        fail(format!(
                            "hash chain broken: prev_hash {} is not the SHA-256 of seq {} ({})",
                            env.prev_hash.as_deref().unwrap_or("null"),
                            q.envelope.seq,
                            q.hash
                        ));
                    }
                    if env.key_id != q.envelope.key_id {
                        let ok = p.kind == "key_change"
                            && env.body.get("previous_key_id").and_then(|v| v.as_str())
                                == Some(q.envelope.key_id.as_str())
                            && env.body.get("key_id").and_then(|v| v.as_str())
                                == Some(env.key_id.as_str());
                        if !ok {
                            fail(format!(
                                "signing key changed from {} to {} without a key_change bundle",
                                q.envelope.key_id, env.key_id
                            ));
                        }
                    }
                }
            }
            prev = Some(p);
        }
        report.hosts.push(summary);
    }

    report
        .failures
        .sort_by(|a, b| (&a.host, a.seq, &a.name).cmp(&(&b.host, b.seq, &b.name)));
    report.failures.dedup();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prove::bundle::{AgentRecord, BundleBody, KeyChange, NewBundle};
    use crate::prove::keys::{SigningKey, allowed_signers_line};
    use chrono::TimeZone;

    /// A chain of `n` bundles for `host`: seq 1 is the key change, then incidents.
    fn chain(key: &SigningKey, host: &str, n: u64) -> Vec<Item> {
        let mut prev: Option<String> = None;
        let mut out = Vec::new();
        for seq in 1..=n {
            let body = if seq == 1 {
                BundleBody::Agent(AgentRecord::KeyChange(KeyChange {
                    previous_key_id: None,
                    key_id: key.key_id().into(),
                    public_key: key.public_key_openssh(),
                    source: "test".into(),
                }))
            } else {
                BundleBody::Event(crate::events::Event::IncidentTransition(
                    crate::events::IncidentTransition {
                        incident_id: format!("inc-{seq}"),
                        check: "unit_failed".into(),
                        target: "x.service".into(),
                        severity: "warning".into(),
                        from: None,
                        to: crate::events::IncidentState::Firing,
                        at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                        reason: "r".into(),
                        observation: serde_json::json!({}),
                    },
                ))
            };
            let json = NewBundle {
                host,
                agent_version: "t",
                seq,
                prev_hash: prev.as_deref(),
                recorded_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap(),
                key_id: key.key_id(),
                body: &body,
            }
            .to_bytes()
            .unwrap();
            prev = Some(crate::prove::bundle::hash_hex(&json));
            let sig = key.sign(&json).unwrap();
            let mut item = Item::new(format!("{host}/{seq}"), json, Some(sig));
            item.name_seq = Some(seq);
            out.push(item);
        }
        out
    }

    fn trusted(keys: &[&SigningKey]) -> TrustedKeys {
        let text: String = keys
            .iter()
            .map(|k| allowed_signers_line("*", k.public_key()) + "\n")
            .collect();
        TrustedKeys::parse(&text).unwrap()
    }

    fn first_reason(items: &[Item], keys: &TrustedKeys) -> String {
        let r = verify_items(items, keys, &Options::default());
        r.first_failure()
            .map(|f| f.to_string())
            .unwrap_or_else(|| "OK".into())
    }

    #[test]
    fn tampering_is_named_at_the_first_bad_bundle() {
        let k = SigningKey::from_seed([1; 32]);
        let other = SigningKey::from_seed([2; 32]);
        let t = trusted(&[&k]);
        let good = chain(&k, "web-1", 6);
        assert_eq!(first_reason(&good, &t), "OK");

        type Tamper = Box<dyn Fn(&mut Vec<Item>)>;
        let cases: Vec<(&str, Tamper, &str)> = vec![
            (
                "flipped byte",
                Box::new(|v| {
                    let j = &mut v[2].json;
                    let pos = j.windows(9).position(|w| w == b"unit_fail").unwrap();
                    j[pos] ^= 0x20;
                }),
                "seq 3 (web-1/3): signature does not match",
            ),
            (
                "removed",
                Box::new(|v| {
                    v.remove(3);
                }),
                "seq 5 (web-1/5): sequence gap: seq 4 is missing",
            ),
            (
                "swapped",
                Box::new(|v| {
                    let (a, b) = (v[2].json.clone(), v[3].json.clone());
                    let (sa, sb) = (v[2].sig.clone(), v[3].sig.clone());
                    v[2].json = b;
                    v[2].sig = sb;
                    v[3].json = a;
                    v[3].sig = sa;
                }),
                "seq 3 (web-1/4): stored under seq 4 but the bundle says seq 3",
            ),
            (
                "truncated",
                Box::new(|v| {
                    let n = v[4].json.len();
                    v[4].json.truncate(n / 2);
                }),
                "(web-1/5): not valid JSON",
            ),
            (
                "other key",
                Box::new(|v| {
                    v[1].sig = Some(SigningKey::from_seed([2; 32]).sign(&v[1].json).unwrap());
                }),
                "seq 2 (web-1/2): signed by",
            ),
            (
                "sig missing",
                Box::new(|v| {
                    v[5].sig = None;
                }),
                "seq 6 (web-1/6): signature missing",
            ),
            (
                "head removed",
                Box::new(|v| {
                    v.remove(0);
                }),
                "seq 2 (web-1/2): the chain starts at seq 2",
            ),
        ];
        for (what, tamper, want) in cases {
            let mut items = good.clone();
            tamper(&mut items);
            let got = first_reason(&items, &t);
            assert!(got.contains(want), "{what}: got {got:?}, want {want:?}");
        }
        // A chain re-signed wholesale by another key fails on the first bundle.
        let forged = chain(&other, "web-1", 3);
        assert!(first_reason(&forged, &t).contains("not among the trusted public keys"));
    }

    #[test]
    fn several_hosts_and_duplicates() {
        let k = SigningKey::from_seed([1; 32]);
        let t = trusted(&[&k]);
        let mut items = chain(&k, "a", 3);
        items.extend(chain(&k, "b", 4));
        items.push(items[0].clone());
        let r = verify_items(&items, &t, &Options::default());
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!(r.bundles, 7);
        assert_eq!(
            r.hosts
                .iter()
                .map(|h| (h.host.as_str(), h.last_seq))
                .collect::<Vec<_>>(),
            [("a", 3), ("b", 4)]
        );
    }

    #[test]
    fn allow_pruned_accepts_a_later_start() {
        let k = SigningKey::from_seed([1; 32]);
        let t = trusted(&[&k]);
        let items = chain(&k, "a", 5)[2..].to_vec();
        let opts = Options {
            allow_pruned: true,
            ..Options::default()
        };
        assert!(verify_items(&items, &t, &opts).ok());
        assert!(!verify_items(&items, &t, &Options::default()).ok());
    }

    #[test]
    fn retention_rules() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let locked = |mode: &str, days: i64| Retention::Locked {
            mode: mode.into(),
            until: Some(now + chrono::Duration::days(days)),
        };
        assert_eq!(retention_problem(&locked("COMPLIANCE", 1), now), None);
        for (r, want) in [
            (Retention::None, "no Object Lock"),
            (locked("GOVERNANCE", 1), "GOVERNANCE"),
            (locked("COMPLIANCE", -1), "expired"),
        ] {
            assert!(retention_problem(&r, now).unwrap().contains(want), "{r:?}");
        }
    }
}
