//! The recorder and its spool on a real file system: sequence continuity across
//! restarts, group commit under concurrency, key changes, the size bound and alarm,
//! the single-writer lock, and key-file permissions.

mod evidence_support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use evidence_support::*;
use msp_agent::prove::bundle::ParsedBundle;
use msp_agent::prove::cli::verify_dir;
use msp_agent::prove::local::read_dir_items;
use msp_agent::prove::{Evidence, EvidenceConfig, EvidenceError};

fn kinds(state: &std::path::Path) -> Vec<(u64, String)> {
    let (items, fails) = read_dir_items(&spool_root(state)).unwrap();
    assert!(fails.is_empty(), "{fails:?}");
    let mut v: Vec<(u64, String)> = items
        .iter()
        .map(|i| {
            let p = ParsedBundle::parse(&i.json).unwrap();
            (p.envelope.seq, p.kind)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_restart_continues_the_sequence_and_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ev = open(dir.path(), 1);
    let sealed: Vec<_> = (0..5).map(|i| ev.record(&event(i)).unwrap()).collect();
    assert_eq!(
        sealed.iter().map(|s| s.seq).collect::<Vec<_>>(),
        [3, 4, 5, 6, 7]
    );
    assert_eq!(sealed[0].incident_id, "inc-0000");
    drop(ev);
    let ev = open(dir.path(), 1);
    assert_eq!(ev.record(&event(9)).unwrap().seq, 9);
    let k = kinds(dir.path());
    let want: Vec<(u64, &str)> = vec![
        (1, "key_change"),
        (2, "agent_start"),
        (3, "incident_transition"),
        (4, "runbook_run"),
        (5, "incident_transition"),
        (6, "runbook_run"),
        (7, "incident_transition"),
        (8, "agent_start"),
        (9, "runbook_run"),
    ];
    assert_eq!(
        k.iter().map(|(s, k)| (*s, k.as_str())).collect::<Vec<_>>(),
        want
    );
    let report = verify_dir(&spool_root(dir.path()), &trusted(&[1]), false).unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(ev.stats().last_seq, 9);
    assert_eq!(ev.spool_depth(), 9);
}

#[test]
fn concurrent_records_get_unique_contiguous_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let ev = open(dir.path(), 1);
    let seqs: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let ev = ev.clone();
                s.spawn(move || {
                    (0..100)
                        .map(|i| ev.record(&event(t * 1000 + i)).unwrap().seq)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(set.len(), 800, "a sequence number was handed out twice");
    assert_eq!(
        set.iter().copied().collect::<Vec<_>>(),
        (3..=802).collect::<Vec<_>>()
    );
    let segments = std::fs::read_dir(ev.spool_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count();
    assert!(
        segments < 802,
        "group commit should put several bundles in a segment ({segments} segments)"
    );
    let report = verify_dir(&spool_root(dir.path()), &trusted(&[1]), false).unwrap();
    assert!(report.ok(), "{:?}", report.failures);
}

#[test]
fn a_new_key_is_recorded_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ev = open(dir.path(), 1);
    ev.record(&event(0)).unwrap();
    drop(ev);
    let ev = open(dir.path(), 2);
    ev.record(&event(1)).unwrap();
    drop(ev);
    let (items, _) = read_dir_items(&spool_root(dir.path())).unwrap();
    let change = items
        .iter()
        .map(|i| ParsedBundle::parse(&i.json).unwrap())
        .find(|p| p.envelope.seq == 4)
        .unwrap();
    assert_eq!(change.kind, "key_change");
    assert_eq!(change.envelope.body["previous_key_id"], key(1).key_id());
    assert_eq!(change.envelope.body["key_id"], key(2).key_id());

    let both = verify_dir(&spool_root(dir.path()), &trusted(&[1, 2]), false).unwrap();
    assert!(both.ok(), "{:?}", both.failures);
    let old_only = verify_dir(&spool_root(dir.path()), &trusted(&[1]), false).unwrap();
    let first = old_only.first_failure().unwrap().to_string();
    assert!(
        first.contains("seq 4") && first.contains("not among the trusted public keys"),
        "{first}"
    );
}

#[test]
fn a_full_spool_refuses_loudly_and_alarms_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EvidenceConfig {
        spool_max_bytes: 40_000,
        spool_alarm_percent: 50,
        ..EvidenceConfig::default()
    };
    let ev = open_cfg(dir.path(), 1, &cfg);
    let mut ok = 0;
    let err = loop {
        match ev.record(&event(ok)) {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
        assert!(ok < 1000, "the spool bound is not enforced");
    };
    assert!(matches!(err, EvidenceError::SpoolFull { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&ev.spool_dir().display().to_string()) && msg.contains("NOT recorded"),
        "{msg}"
    );
    let stats = ev.stats();
    assert!(stats.spool_alarm && stats.spool_alarms == 1, "{stats:?}");
    // Everything acknowledged is there, nothing was dropped to make room.
    assert_eq!(stats.last_seq, ok + 2);
    assert!(
        verify_dir(&spool_root(dir.path()), &trusted(&[1]), false)
            .unwrap()
            .ok()
    );
}

#[test]
fn a_second_recorder_on_the_same_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _ev = open(dir.path(), 1);
    let err = Evidence::open_with_key(&EvidenceConfig::default(), dir.path(), HOST, "x", key(1))
        .unwrap_err();
    assert!(err.to_string().contains("used by another process"), "{err}");
}

#[test]
fn a_key_file_readable_by_others_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("signing-key");
    std::fs::write(&key_path, key(5).public_key_openssh()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = EvidenceConfig {
        key_file: Some(key_path.clone()),
        ..EvidenceConfig::default()
    };
    let err = Evidence::open(&cfg, dir.path(), HOST, "x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&key_path.display().to_string())
            && err.contains("0644")
            && err.contains("chmod 600"),
        "{err}"
    );

    // Generated at first start: mode 0600, and the same key at the next start.
    let state = dir.path().join("state");
    let ev = Evidence::open(&EvidenceConfig::default(), &state, HOST, "x").unwrap();
    let id = ev.key_id().to_owned();
    drop(ev);
    let generated = state.join("evidence/signing.key");
    assert_eq!(
        std::fs::metadata(&generated).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        Evidence::open(&EvidenceConfig::default(), &state, HOST, "x")
            .unwrap()
            .key_id(),
        id
    );
}
