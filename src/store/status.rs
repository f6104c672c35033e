//! The running agent's status, for `msp-agent status`: `agent_status`, one row
//! holding the [`AgentStatus`] as JSON.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store, encode, json_col, to_us};

/// What the daemon says about itself, rewritten at every heartbeat.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AgentStatus {
    /// `starting`, `running` or `stopped`.
    pub state: String,
    pub pid: u32,
    pub version: String,
    pub started_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub dry_run: bool,
    pub watched_units: usize,
    pub bus_connected: bool,
    /// Where the configuration came from.
    pub config: String,
    pub hostname: String,
    pub runbooks_in_flight: usize,
    /// The one-line summary also sent to systemd (`STATUS=`).
    pub summary: String,
    /// The evidence figures (the recorder's stats, as JSON).
    pub evidence: Option<serde_json::Value>,
    /// The watched mounts, as last sampled.
    #[serde(default)]
    pub mounts: Vec<MountStatus>,
}

/// One watched mount in the status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MountStatus {
    pub mount: String,
    pub used_ratio: f64,
    pub inodes_used_ratio: Option<f64>,
    pub seconds_to_full: Option<f64>,
    /// `ok`, `warning` or `critical`.
    pub level: String,
    /// RB-DISK-001 may free space on it.
    pub remediate: bool,
}

impl Store {
    pub fn set_status(&mut self, status: &AgentStatus) -> Result<()> {
        let json = encode(&self.path, "the agent status", status)?;
        self.conn
            .execute(
                "INSERT INTO agent_status (id, status_json, updated_at_us) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET status_json = excluded.status_json,
                    updated_at_us = excluded.updated_at_us",
                params![json, to_us(Utc::now())],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The status last written, or `None` if the agent never wrote one.
    pub fn status(&self) -> Result<Option<AgentStatus>> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT status_json FROM agent_status WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        json.map(|j| json_col(&self.path, "agent_status", "id 1", "status_json", &j))
            .transpose()
    }
}
