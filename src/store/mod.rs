//! SQLite: the incident history, runbook runs, rate-limit memory, silences,
//! flap edges, source cursors, the agent's status for the CLI, and the outbox of
//! events awaiting evidence.
//!
//! The schema is documented in docs/store.md and is meant to be read with
//! `sqlite3`. Times are Unix microseconds (UTC). Every state change and the
//! event that proves it are written in one transaction ([`Store::commit`]): an
//! incident is never recorded without its evidence being queued, and vice versa.
//!
//! One file per concern, all over the one connection held by [`Store`]:
//! `incidents`, `runs`, `silences`, `edges` (flap edges), `outbox`, `status`,
//! `cursors`. This file holds the connection, the errors, the batch and the
//! versioned migrations.
//!
//! Nothing read back is defaulted: a row that cannot be decoded is a
//! [`StoreError::Corrupt`] naming the database, the table, the row and the fault.

mod cursors;
mod edges;
mod incidents;
mod outbox;
mod runs;
mod silences;
mod status;
#[cfg(test)]
mod tests;

use std::fmt::Display;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

pub use cursors::Checkpoint;
pub use edges::EdgeRow;
pub use incidents::{IncidentRow, OpenIncidentRow};
pub use runs::{RunRow, RunStartRow};
pub use silences::SilenceRow;
pub use status::{AgentStatus, MountStatus};

use crate::events::{Event, IncidentTransition, RunbookRun};

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A row that cannot be read back as what it should be.
    #[error("state database {path}: corrupt row in table {table} ({row}): {problem}")]
    Corrupt {
        path: String,
        table: &'static str,
        /// Which row: `id 7`, `run_id R-1`, `rowid 3`, `key schema_version`.
        row: String,
        problem: String,
    },
    /// Written by a newer agent: this one does not know its schema.
    #[error(
        "state database {path} has schema version {found}, this agent knows versions up to {known}: upgrade the agent (or restore a backup of the database made by this version)"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    /// Read-only access to a database an older agent wrote and nobody migrated yet.
    #[error(
        "state database {path} has schema version {found}, this agent needs {known}: it is migrated when the agent (or `msp-agent silence`) opens it for writing"
    )]
    NotMigrated {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("state database {path}: cannot encode {what}: {source}")]
    Encode {
        path: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// What [`Store::commit`] writes in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub checkpoint: Option<Checkpoint>,
}

/// One thing to record; see [`Store::commit`].
#[derive(Debug, Clone)]
pub enum Record {
    /// The incident row (inserted when `from` is `None`, else updated), the
    /// transition row, and the event in the outbox.
    Transition {
        transition: IncidentTransition,
        detected_at: Option<DateTime<Utc>>,
    },
    /// A run about to take its first step: the row, outcome `running`, so a crash
    /// leaves a trace that counts against the limits. No outbox event.
    RunStarted(RunbookRun),
    /// A run that ended (or a refusal): the row upserted, and the event queued.
    RunFinished(RunbookRun),
    /// Flap edges to insert, then those older than `keep_since` deleted.
    Edges {
        edges: Vec<EdgeRow>,
        keep_since: DateTime<Utc>,
    },
    /// Evidence not tied to an incident row: outbox only.
    Event(Event),
}

impl Batch {
    pub fn new(records: Vec<Record>) -> Batch {
        Batch {
            records,
            checkpoint: None,
        }
    }
}

pub struct Store {
    conn: Connection,
    path: String,
}

/// The error for a failed statement on the database at `path` (for `map_err` where
/// `self` is already borrowed, as by an open transaction).
fn sqlite_err(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(
    path: &str,
    table: &'static str,
    row: impl Display,
    problem: impl Display,
) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        table,
        row: row.to_string(),
        problem: problem.to_string(),
    }
}

/// A time column read back; out of range is corruption, not the epoch.
fn time_col(
    path: &str,
    table: &'static str,
    row: impl Display,
    column: &str,
    us: i64,
) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| {
        corrupt(
            path,
            table,
            row,
            format!("{column} = {us} is not a time (Unix microseconds)"),
        )
    })
}

fn json_col<T: serde::de::DeserializeOwned>(
    path: &str,
    table: &'static str,
    row: impl Display,
    column: &str,
    text: &str,
) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| corrupt(path, table, row, format!("{column} does not decode: {e}")))
}

fn encode<T: serde::Serialize>(path: &str, what: &'static str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|source| StoreError::Encode {
        path: path.to_owned(),
        what,
        source,
    })
}

pub fn to_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The schema version this code reads and writes.
pub const SCHEMA_VERSION: i64 = 3;

/// `MIGRATIONS[i]` takes the database from version `i` to `i + 1` (version 0 is an
/// empty file). A new database runs them all, so it has exactly the schema an
/// upgraded one has. Each is run inside the one transaction of [`migrate`].
const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// Version 1: the schema of the first release, unchanged (`IF NOT EXISTS`, as that
/// release created it, so a file it left without its version row is adopted).
const V1: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id             TEXT PRIMARY KEY,
    check_name     TEXT NOT NULL,
    target         TEXT NOT NULL,
    severity       TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('firing','flapping','needs_human','resolved')),
    opened_at_us   INTEGER NOT NULL,
    updated_at_us  INTEGER NOT NULL,
    resolved_at_us INTEGER,
    detected_at_us INTEGER,
    reason         TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open
    ON incidents (check_name, target) WHERE state != 'resolved';
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents (opened_at_us);
CREATE TABLE IF NOT EXISTS incident_transitions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id      TEXT NOT NULL REFERENCES incidents (id),
    from_state       TEXT,
    to_state         TEXT NOT NULL,
    at_us            INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    observation_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runbook_runs (
    run_id          TEXT PRIMARY KEY,
    incident_id     TEXT NOT NULL REFERENCES incidents (id),
    runbook         TEXT NOT NULL,
    target          TEXT NOT NULL,
    dry_run         INTEGER NOT NULL,
    started_at_us   INTEGER NOT NULL,
    finished_at_us  INTEGER,
    outcome         TEXT NOT NULL CHECK (outcome IN
        ('running','success','failed','dry_run','rate_limited','suppressed','interrupted')),
    steps_json      TEXT NOT NULL,
    rate_limit_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runbook_runs_target ON runbook_runs (runbook, target, started_at_us);
CREATE TABLE IF NOT EXISTS silences (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    target        TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    until_us      INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    created_by    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_status (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS flap_edges (
    check_name TEXT NOT NULL,
    target     TEXT NOT NULL,
    at_us      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flap_edges_at ON flap_edges (at_us);
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id   TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    event_json    TEXT NOT NULL
);
"#;

/// Version 2: source cursors; outbox events without an incident; a typed status.
const V2: &str = r#"
CREATE TABLE source_cursors (
    source        TEXT PRIMARY KEY,
    cursor        TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL
);

ALTER TABLE outbox RENAME TO outbox_v1;
CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id   TEXT,
    created_at_us INTEGER NOT NULL,
    event_json    TEXT NOT NULL
);
INSERT INTO outbox (id, incident_id, created_at_us, event_json)
    SELECT id, incident_id, created_at_us, event_json FROM outbox_v1 ORDER BY id;
-- Outbox IDs keep growing from where they were, even past rows already sealed.
DELETE FROM sqlite_sequence WHERE name = 'outbox';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'outbox', seq FROM sqlite_sequence WHERE name = 'outbox_v1';
DROP TABLE outbox_v1;
CREATE INDEX outbox_incident ON outbox (incident_id);

-- The key/value status is dropped: the agent rewrites its status at start.
DROP TABLE agent_status;
CREATE TABLE agent_status (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    status_json   TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL
);
"#;

/// Version 3: the run outcomes `partial` and `timeout` (RB-DISK-001). SQLite
/// cannot change a CHECK in place: the table is copied into one with the new CHECK.
const V3: &str = r#"
CREATE TABLE runbook_runs_v3 (
    run_id          TEXT PRIMARY KEY,
    incident_id     TEXT NOT NULL REFERENCES incidents (id),
    runbook         TEXT NOT NULL,
    target          TEXT NOT NULL,
    dry_run         INTEGER NOT NULL,
    started_at_us   INTEGER NOT NULL,
    finished_at_us  INTEGER,
    outcome         TEXT NOT NULL CHECK (outcome IN
        ('running','success','failed','dry_run','rate_limited','suppressed','interrupted',
         'partial','timeout')),
    steps_json      TEXT NOT NULL,
    rate_limit_json TEXT NOT NULL
);
INSERT INTO runbook_runs_v3 (run_id, incident_id, runbook, target, dry_run, started_at_us,
        finished_at_us, outcome, steps_json, rate_limit_json)
    SELECT run_id, incident_id, runbook, target, dry_run, started_at_us,
        finished_at_us, outcome, steps_json, rate_limit_json FROM runbook_runs;
DROP TABLE runbook_runs;
ALTER TABLE runbook_runs_v3 RENAME TO runbook_runs;
CREATE INDEX runbook_runs_target ON runbook_runs (runbook, target, started_at_us);
"#;

/// The schema version recorded in the file: 0 when it has none yet.
fn schema_version(conn: &Connection, path: &str) -> Result<i64> {
    let err = sqlite_err(path);
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if !has_meta {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    match v {
        None => Ok(0),
        Some(v) => v.parse::<i64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
            corrupt(
                path,
                "meta",
                "key schema_version",
                format!("{v:?} is not a schema version"),
            )
        }),
    }
}

/// Brings the file to [`SCHEMA_VERSION`] in one transaction: every step needed and
/// the new version, or nothing.
fn migrate(conn: &mut Connection, path: &str) -> Result<()> {
    let err = sqlite_err(path);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let found = schema_version(&tx, path)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found > 0 {
        tracing::info!(
            database = path,
            from = found,
            to = SCHEMA_VERSION,
            "migrating the state database from schema {found} to {SCHEMA_VERSION}"
        );
    }
    for sql in MIGRATIONS.iter().skip(found as usize) {
        tx.execute_batch(sql).map_err(err)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [SCHEMA_VERSION.to_string()],
    )
    .map_err(err)?;
    tx.commit().map_err(err)
}

impl Store {
    /// Opens the database for the daemon (or the `silence` command), creating it
    /// or migrating it to [`SCHEMA_VERSION`] as needed.
    pub fn open(path: &Path) -> Result<Store> {
        let p = path.display().to_string();
        let err = sqlite_err(&p);
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        migrate(&mut conn, &p)?;
        Ok(Store { conn, path: p })
    }

    /// Opens an existing database for reading (the CLI while the daemon runs). It
    /// must already be at [`SCHEMA_VERSION`]: reading never migrates.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let p = path.display().to_string();
        let err = sqlite_err(&p);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        let found = schema_version(&conn, &p)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: p,
                found,
                known: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::NotMigrated {
                path: p,
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(Store { conn, path: p })
    }

    /// The file this store reads and writes, as shown in errors.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        sqlite_err(&self.path)(source)
    }

    /// Writes everything in `batch` in one SQLite transaction: the records in
    /// order, the event of each queued in the outbox, and the checkpoint. On any
    /// error nothing of it is written.
    pub fn commit(&mut self, batch: &Batch) -> Result<()> {
        let path = self.path.as_str();
        let err = sqlite_err(path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        for record in &batch.records {
            match record {
                Record::Transition {
                    transition,
                    detected_at,
                } => {
                    incidents::write_transition(&tx, path, transition, *detected_at)?;
                    outbox::queue(&tx, path, &Event::IncidentTransition(transition.clone()))?;
                }
                Record::RunStarted(run) => runs::write_started(&tx, path, run)?,
                Record::RunFinished(run) => {
                    runs::write_finished(&tx, path, run)?;
                    outbox::queue(&tx, path, &Event::RunbookRun(run.clone()))?;
                }
                Record::Edges { edges, keep_since } => {
                    edges::write(&tx, path, edges, *keep_since)?;
                }
                Record::Event(event) => outbox::queue(&tx, path, event)?,
            }
        }
        if let Some(checkpoint) = &batch.checkpoint {
            cursors::write(&tx, path, checkpoint)?;
        }
        tx.commit().map_err(err)
    }

    /// SQLite's `PRAGMA data_version`: it changes when another connection (the
    /// CLI adding a silence) has written since this one last looked.
    pub fn data_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}
