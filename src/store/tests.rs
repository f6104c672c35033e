use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use super::*;
use crate::events::{IncidentState, Notice, RunOutcome};

/// A database written by the schema-version-1 store (see its header).
const V1_DUMP: &str = include_str!("../../tests/fixtures/state-v1.sql");

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn transition(
    id: &str,
    from: Option<IncidentState>,
    to: IncidentState,
    at: i64,
) -> IncidentTransition {
    IncidentTransition {
        incident_id: id.into(),
        check: "unit_failed".into(),
        target: "demo.service".into(),
        severity: "critical".into(),
        from,
        to,
        at: t(at),
        reason: "r".into(),
        observation: serde_json::json!({"active_state": "failed"}),
    }
}

fn opened(id: &str, at: i64) -> Record {
    Record::Transition {
        transition: transition(id, None, IncidentState::Firing, at),
        detected_at: Some(t(at)),
    }
}

fn run(id: &str, start: i64, outcome: RunOutcome) -> RunbookRun {
    RunbookRun {
        run_id: id.into(),
        incident_id: "INC-1".into(),
        runbook: "RB-SERVICE-001".into(),
        target: "demo.service".into(),
        dry_run: false,
        started_at: t(start),
        finished_at: None,
        outcome,
        steps: vec![],
        rate_limit: vec![],
    }
}

fn edge(target: &str, at: i64) -> EdgeRow {
    EdgeRow {
        check: "unit_failed".into(),
        target: target.into(),
        at: t(at),
    }
}

fn notice() -> Event {
    Event::Notice(Notice {
        topic: "journal_gap".into(),
        subject: "journal".into(),
        at: t(3),
        reason: "the journal was rotated past the cursor".into(),
        detail: serde_json::json!({"lost_from": "s=abc"}),
    })
}

fn fresh() -> (tempfile::TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open(&path).unwrap();
    (dir, path, store)
}

/// A file holding the version-1 fixture, not yet opened by this code.
fn v1_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(V1_DUMP)
        .unwrap();
    (dir, path)
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn schema(path: &Path) -> Vec<(String, String)> {
    let c = raw(path);
    let mut st = c
        .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn a_batch_is_written_whole_with_its_events_in_order() {
    let (_d, _p, mut s) = fresh();
    let mut finished = run("R1", 1, RunOutcome::Success);
    finished.finished_at = Some(t(2));
    s.commit(&Batch {
        records: vec![
            opened("INC-1", 0),
            Record::RunStarted(run("R1", 1, RunOutcome::Success)),
            Record::RunFinished(finished),
            Record::Edges {
                edges: vec![edge("demo.service", 0)],
                keep_since: t(-10),
            },
            Record::Event(notice()),
        ],
        checkpoint: Some(Checkpoint {
            source: "journal".into(),
            cursor: "s=1;i=2".into(),
        }),
    })
    .unwrap();
    let kinds: Vec<&str> = s
        .outbox(10)
        .unwrap()
        .iter()
        .map(|(_, e)| match e {
            Event::IncidentTransition(_) => "transition",
            Event::RunbookRun(_) => "run",
            Event::Notice(_) => "notice",
        })
        .collect();
    assert_eq!(
        kinds,
        ["transition", "run", "notice"],
        "RunStarted queues nothing"
    );
    assert_eq!(s.cursor("journal").unwrap().as_deref(), Some("s=1;i=2"));
    assert_eq!(s.cursor("other").unwrap(), None);
    assert_eq!(s.edges_since(t(-5)).unwrap(), vec![edge("demo.service", 0)]);
    let incident_ids: Vec<Option<String>> = raw(Path::new(s.path()))
        .prepare("SELECT incident_id FROM outbox ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        incident_ids,
        [Some("INC-1".to_string()), Some("INC-1".to_string()), None]
    );
}

#[test]
fn a_failing_record_leaves_nothing_of_its_batch() {
    let (_d, _p, mut s) = fresh();
    s.commit(&Batch::new(vec![opened("INC-1", 0)])).unwrap();
    let before = s.outbox_len().unwrap();
    // The second open incident for the same (check, target) is refused by the index.
    let err = s.commit(&Batch {
        records: vec![
            Record::Event(notice()),
            Record::Edges {
                edges: vec![edge("demo.service", 1)],
                keep_since: t(-10),
            },
            opened("INC-2", 1),
        ],
        checkpoint: Some(Checkpoint {
            source: "journal".into(),
            cursor: "c".into(),
        }),
    });
    assert!(matches!(err, Err(StoreError::Sqlite { .. })), "{err:?}");
    assert_eq!(s.outbox_len().unwrap(), before);
    assert!(s.edges_since(t(-10)).unwrap().is_empty());
    assert_eq!(s.cursor("journal").unwrap(), None);
    assert_eq!(s.open_incidents().unwrap().len(), 1);
}

#[test]
fn a_checkpoint_moves_forward() {
    let (_d, _p, mut s) = fresh();
    for cursor in ["a", "b"] {
        s.commit(&Batch {
            records: vec![],
            checkpoint: Some(Checkpoint {
                source: "journal".into(),
                cursor: cursor.into(),
            }),
        })
        .unwrap();
    }
    assert_eq!(s.cursor("journal").unwrap().as_deref(), Some("b"));
}

#[test]
fn incidents_runs_and_outbox_survive_a_reopen() {
    let (_d, path, mut s) = fresh();
    let mut refused = run("R2", 5, RunOutcome::RateLimited);
    refused.finished_at = Some(t(5));
    s.commit(&Batch::new(vec![
        opened("INC-1", 0),
        Record::RunStarted(run("R1", 1, RunOutcome::Success)),
        Record::RunFinished(refused),
    ]))
    .unwrap();
    drop(s);
    let mut s = Store::open(&path).unwrap();
    let open = s.open_incidents().unwrap();
    assert_eq!(
        open,
        vec![OpenIncidentRow {
            id: "INC-1".into(),
            check: "unit_failed".into(),
            target: "demo.service".into(),
            severity: "critical".into(),
            state: IncidentState::Firing,
            opened_at: t(0),
        }]
    );
    // R1 was left running: it is closed as interrupted and still counts
    let interrupted = s.close_interrupted_runs(t(10)).unwrap();
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0].run_id, "R1");
    assert_eq!(interrupted[0].outcome, RunOutcome::Interrupted);
    assert!(s.close_interrupted_runs(t(11)).unwrap().is_empty());
    assert_eq!(
        s.run_history(t(-100)).unwrap(),
        vec![RunStartRow {
            runbook: "RB-SERVICE-001".into(),
            target: "demo.service".into(),
            started_at: t(1),
        }]
    );
    assert!(
        s.run_history(t(1)).unwrap().is_empty(),
        "strictly after `since`"
    );
    assert_eq!(
        s.run_starts("RB-SERVICE-001", "demo.service", t(-100))
            .unwrap(),
        vec![t(1)]
    );
    assert_eq!(s.runs_since(t(-100)).unwrap(), 1);
    // transition, refusal, interruption: three events, in order
    let out = s.outbox(10).unwrap();
    assert_eq!(out.len(), 3);
    assert!(matches!(out[0].1, Event::IncidentTransition(_)));
    assert!(matches!(&out[2].1, Event::RunbookRun(r) if r.outcome == RunOutcome::Interrupted));
    s.outbox_done(out[0].0).unwrap();
    assert_eq!(s.outbox_len().unwrap(), 2);
}

#[test]
fn counted_outcomes_are_those_that_used_the_budget() {
    let cases = [
        (RunOutcome::Success, true),
        (RunOutcome::Failed, true),
        (RunOutcome::DryRun, true),
        (RunOutcome::Interrupted, true),
        (RunOutcome::Partial, true),
        (RunOutcome::Timeout, true),
        (RunOutcome::RateLimited, false),
        (RunOutcome::Suppressed, false),
    ];
    for (outcome, counted) in cases {
        let (_d, _p, mut s) = fresh();
        let mut r = run("R", 1, outcome);
        r.finished_at = Some(t(2));
        s.commit(&Batch::new(vec![
            opened("INC-1", 0),
            Record::RunFinished(r),
        ]))
        .unwrap();
        assert_eq!(
            s.run_history(t(0)).unwrap().len(),
            usize::from(counted),
            "{outcome:?}"
        );
    }
}

#[test]
fn flap_edges_survive_a_reopen_and_old_ones_are_forgotten() {
    let (_d, path, mut s) = fresh();
    s.record_edges(&[edge("a.service", 1), edge("a.service", 2)], t(0))
        .unwrap();
    s.commit(&Batch::new(vec![Record::Edges {
        edges: vec![edge("a.service", 9)],
        keep_since: t(2),
    }]))
    .unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    let cases = [
        (0, vec![edge("a.service", 2), edge("a.service", 9)]),
        (3, vec![edge("a.service", 9)]),
        (10, vec![]),
    ];
    for (since, want) in cases {
        assert_eq!(s.edges_since(t(since)).unwrap(), want, "since {since}");
    }
}

#[test]
fn only_one_open_incident_per_check_and_target() {
    let (_d, _p, mut s) = fresh();
    s.apply_transition(&transition("INC-1", None, IncidentState::Firing, 0), None)
        .unwrap();
    let dup = s.apply_transition(&transition("INC-2", None, IncidentState::Firing, 1), None);
    assert!(
        dup.is_err(),
        "a second open incident for the same check and target is refused"
    );
    s.apply_transition(
        &transition(
            "INC-1",
            Some(IncidentState::Firing),
            IncidentState::Resolved,
            2,
        ),
        None,
    )
    .unwrap();
    s.apply_transition(&transition("INC-2", None, IncidentState::Firing, 3), None)
        .unwrap();
    let all = s.list_incidents(true, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, "INC-2", "newest first");
    assert_eq!(all[1].resolved_at, Some(t(2)));
    assert_eq!(s.list_incidents(false, 10).unwrap().len(), 1);
}

#[test]
fn silences_are_active_until_they_end() {
    let (_d, _p, mut s) = fresh();
    let a = s
        .add_silence("demo.service", t(0), t(100), "maintenance", "alice")
        .unwrap();
    let b = s
        .add_silence("web-*.service", t(0), t(50), "deploy", "bob")
        .unwrap();
    let cases = [(10, vec![a, b]), (50, vec![a]), (100, vec![])];
    for (now, want) in cases {
        let ids: Vec<i64> = s
            .active_silences(t(now))
            .unwrap()
            .iter()
            .map(|x| x.id)
            .collect();
        assert_eq!(ids, want, "at {now}");
    }
    assert_eq!(
        s.active_silences(t(0)).unwrap()[1],
        SilenceRow {
            id: b,
            target: "web-*.service".into(),
            until: t(50),
            reason: "deploy".into(),
        }
    );
}

#[test]
fn status_round_trips_and_is_none_before_the_first() {
    let (_d, _p, mut s) = fresh();
    assert_eq!(s.status().unwrap(), None);
    let mut st = AgentStatus {
        state: "running".into(),
        pid: 42,
        version: "0.1.0".into(),
        started_at: Some(t(0)),
        heartbeat_at: Some(t(5)),
        dry_run: true,
        watched_units: 3,
        bus_connected: true,
        config: "/etc/msp-agent/config.toml".into(),
        hostname: "web-01".into(),
        runbooks_in_flight: 1,
        summary: "watching 3 units".into(),
        evidence: Some(serde_json::json!({"last_seq": 7})),
        mounts: vec![crate::store::MountStatus {
            mount: "/srv/data".into(),
            used_ratio: 0.5,
            level: "ok".into(),
            ..Default::default()
        }],
    };
    s.set_status(&st).unwrap();
    assert_eq!(s.status().unwrap().as_ref(), Some(&st));
    st.state = "stopped".into();
    s.set_status(&st).unwrap();
    assert_eq!(s.status().unwrap(), Some(st));
}

#[test]
fn data_version_changes_when_another_connection_writes() {
    let (_d, path, mut s) = fresh();
    let before = s.data_version().unwrap();
    s.add_silence("x.service", t(0), t(1), "own write", "me")
        .unwrap();
    assert_eq!(s.data_version().unwrap(), before, "own writes do not count");
    let mut cli = Store::open(&path).unwrap();
    cli.add_silence("y.service", t(0), t(1), "cli", "alice")
        .unwrap();
    assert_ne!(s.data_version().unwrap(), before);
}

#[test]
fn the_version_1_database_is_migrated_in_place_and_keeps_its_rows() {
    let (_d, path) = v1_file();
    assert!(matches!(
        Store::open_read_only(&path),
        Err(StoreError::NotMigrated {
            found: 1,
            known: SCHEMA_VERSION,
            ..
        })
    ));
    let mut s = Store::open(&path).unwrap();
    let version: String = raw(&path)
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string());

    // incidents
    let open: Vec<(String, IncidentState)> = s
        .open_incidents()
        .unwrap()
        .into_iter()
        .map(|i| (i.id, i.state))
        .collect();
    assert_eq!(
        open,
        [
            ("INC-B".to_string(), IncidentState::NeedsHuman),
            ("INC-C".to_string(), IncidentState::Firing)
        ]
    );
    let all = s.list_incidents(true, 10).unwrap();
    let summary: Vec<(&str, &str, Vec<&str>)> = all
        .iter()
        .map(|i| {
            (
                i.id.as_str(),
                i.state.as_str(),
                i.runs.iter().map(|r| r.outcome.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("INC-C", "firing", vec!["running"]),
            ("INC-B", "needs_human", vec!["rate_limited"]),
            ("INC-A", "resolved", vec!["success"]),
        ]
    );
    assert_eq!(all[2].resolved_at, Some(t(5)));
    assert_eq!(all[2].detected_at, Some(t(-1)));
    let transitions: i64 = raw(&path)
        .query_row("SELECT COUNT(*) FROM incident_transitions", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(transitions, 5);

    // outbox: the six unsealed events decode, in order, with their IDs
    let out = s.outbox(100).unwrap();
    let ids: Vec<i64> = out.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [2, 3, 4, 5, 6, 7]);
    assert_eq!(out[0].1.incident_id(), Some("INC-A"));
    assert!(
        matches!(&out[0].1, Event::RunbookRun(r) if r.steps.len() == 1 && r.rate_limit.len() == 1)
    );
    assert_eq!(s.outbox_len().unwrap(), 6);

    // silences and flap edges
    let silences = s.active_silences(t(31)).unwrap();
    assert_eq!(silences.len(), 1);
    assert_eq!(silences[0].target, "backup-*.service");
    assert_eq!(silences[0].until, t(30 + 86_400));
    assert_eq!(
        s.edges_since(t(-3600)).unwrap(),
        vec![
            edge("demo.service", 0),
            edge("demo.service", 5),
            edge("web.service", 20)
        ]
    );

    // the run left in flight is closed, and its steps and limits decode
    let interrupted = s.close_interrupted_runs(t(100)).unwrap();
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0].run_id, "RUN-C1");
    assert_eq!(interrupted[0].rate_limit.len(), 1);
    assert_eq!(
        s.run_history(t(-100)).unwrap().len(),
        2,
        "RUN-A1 and RUN-C1 count"
    );

    // the old key/value status is gone; the typed one is written afresh
    assert_eq!(s.status().unwrap(), None);
    s.set_status(&AgentStatus::default()).unwrap();

    // new IDs continue after the highest one ever used, and events may lack an incident
    s.commit(&Batch::new(vec![Record::Event(notice())]))
        .unwrap();
    let last = s.outbox(100).unwrap().pop().unwrap();
    assert!(last.0 > 8, "outbox id {} reused", last.0);
    assert_eq!(last.1.incident_id(), None);
    drop(s);
    Store::open_read_only(&path).unwrap();
}

#[test]
fn a_migrated_database_has_the_schema_of_a_new_one() {
    let (_d1, fresh_path, s) = fresh();
    drop(s);
    let (_d2, v1_path) = v1_file();
    drop(Store::open(&v1_path).unwrap());
    assert_eq!(schema(&v1_path), schema(&fresh_path));
}

#[test]
fn a_failed_migration_leaves_the_file_as_it_was() {
    let (_d, path) = v1_file();
    // Something in the way of version 2: its migration fails half-way.
    raw(&path)
        .execute_batch("CREATE TABLE outbox_v1 (x)")
        .unwrap();
    let before = schema(&path);
    assert!(Store::open(&path).is_err());
    assert_eq!(schema(&path), before);
    let version: String = raw(&path)
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "1");
}

#[test]
fn a_database_from_a_newer_agent_is_refused_naming_file_and_versions() {
    let (_d, path, s) = fresh();
    drop(s);
    raw(&path)
        .execute(
            "UPDATE meta SET value = '9' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    for result in [Store::open(&path), Store::open_read_only(&path)] {
        let err = result.err().expect("refused");
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 9,
                    known: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        for part in [
            path.display().to_string(),
            "version 9".into(),
            format!("up to {SCHEMA_VERSION}"),
        ] {
            assert!(msg.contains(&part), "{msg:?} lacks {part:?}");
        }
    }
}

type Read = fn(&mut Store) -> Result<()>;

#[test]
fn a_corrupt_row_is_an_error_naming_file_table_row_and_fault() {
    let cases: &[(&str, &str, Read, &str, &str, &str)] = &[
        (
            "outbox event that is not JSON",
            "UPDATE outbox SET event_json = '{\"kind\":' WHERE id = 1",
            |s| s.outbox(10).map(drop),
            "outbox",
            "id 1",
            "event_json",
        ),
        (
            "outbox event of an unknown kind",
            "UPDATE outbox SET event_json = '{\"kind\":\"mystery\"}' WHERE id = 1",
            |s| s.outbox(10).map(drop),
            "outbox",
            "id 1",
            "event_json",
        ),
        (
            "steps of a run in flight",
            "UPDATE runbook_runs SET steps_json = 'nope' WHERE run_id = 'R1'",
            |s| s.close_interrupted_runs(t(9)).map(drop),
            "runbook_runs",
            "run_id R1",
            "steps_json",
        ),
        (
            "rate-limit decisions of a run in flight",
            "UPDATE runbook_runs SET rate_limit_json = '[{}]' WHERE run_id = 'R1'",
            |s| s.close_interrupted_runs(t(9)).map(drop),
            "runbook_runs",
            "run_id R1",
            "rate_limit_json",
        ),
        (
            "unknown incident state, restored at start",
            "UPDATE incidents SET state = 'smouldering' WHERE id = 'INC-1'",
            |s| s.open_incidents().map(drop),
            "incidents",
            "id INC-1",
            "smouldering",
        ),
        (
            "unknown incident state, listed",
            "UPDATE incidents SET state = 'smouldering' WHERE id = 'INC-1'",
            |s| s.list_incidents(true, 10).map(drop),
            "incidents",
            "id INC-1",
            "smouldering",
        ),
        (
            "unknown run outcome",
            "UPDATE runbook_runs SET outcome = 'maybe' WHERE run_id = 'R1'",
            |s| s.list_incidents(true, 10).map(drop),
            "runbook_runs",
            "run_id R1",
            "maybe",
        ),
        (
            "time out of range",
            "UPDATE flap_edges SET at_us = 9223372036854775807",
            |s| s.edges_since(t(0)).map(drop),
            "flap_edges",
            "rowid 1",
            "at_us",
        ),
        (
            "silence end out of range",
            "UPDATE silences SET until_us = 9223372036854775807",
            |s| s.active_silences(t(0)).map(drop),
            "silences",
            "id 1",
            "until_us",
        ),
        (
            "status that does not decode",
            "UPDATE agent_status SET status_json = '{\"state\": 3}'",
            |s| s.status().map(drop),
            "agent_status",
            "id 1",
            "status_json",
        ),
        (
            "schema version that is not a number",
            "UPDATE meta SET value = 'two' WHERE key = 'schema_version'",
            |s| Store::open(Path::new(s.path())).map(drop),
            "meta",
            "key schema_version",
            "two",
        ),
    ];
    for (name, damage, read, table, row, fault) in cases {
        let (_d, path, mut s) = fresh();
        s.commit(&Batch::new(vec![
            opened("INC-1", 0),
            Record::RunStarted(run("R1", 1, RunOutcome::Success)),
            Record::Edges {
                edges: vec![edge("demo.service", 0)],
                keep_since: t(-10),
            },
        ]))
        .unwrap();
        s.add_silence("demo.service", t(0), t(100), "r", "me")
            .unwrap();
        s.set_status(&AgentStatus::default()).unwrap();
        // The schema's CHECKs would refuse some of the damage: it comes from elsewhere.
        raw(&path)
            .execute_batch(&format!("PRAGMA ignore_check_constraints = ON; {damage};"))
            .unwrap();
        let err = read(&mut s).expect_err(name);
        assert!(matches!(err, StoreError::Corrupt { .. }), "{name}: {err:?}");
        let msg = err.to_string();
        for part in [path.display().to_string().as_str(), table, row, fault] {
            assert!(msg.contains(part), "{name}: {msg:?} lacks {part:?}");
        }
    }
}
