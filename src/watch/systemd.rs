//! The system bus and systemd's generated proxies (zbus_systemd): connecting,
//! and reading one unit's state. Shared by the unit watcher and the runbooks.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use zbus::Connection;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

use crate::decide::units::UnitObservation;

pub async fn connect() -> zbus::Result<Connection> {
    Connection::system().await
}

/// Reads a unit's current state, uncached, straight from systemd.
pub async fn read_unit(
    conn: &Connection,
    unit: &str,
    path: &OwnedObjectPath,
) -> zbus::Result<UnitObservation> {
    let u = UnitProxy::builder(conn)
        .path(path.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let active_state = u.active_state().await?;
    let sub_state = u.sub_state().await?;
    let state_change = u.state_change_timestamp().await.ok().and_then(from_usec);
    let invocation_id = u.invocation_id().await.map(hex::encode).unwrap_or_default();
    let (result, n_restarts) = if unit.ends_with(".service") {
        let s = ServiceProxy::builder(conn)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        (
            s.result().await.unwrap_or_default(),
            s.n_restarts().await.unwrap_or(0),
        )
    } else {
        (String::new(), 0)
    };
    Ok(UnitObservation {
        unit: unit.to_string(),
        active_state,
        sub_state,
        result,
        n_restarts,
        invocation_id,
        state_change,
        seen_at: Utc::now(),
    })
}

/// The object path of a unit, loading it if systemd has not yet.
pub async fn unit_path(manager: &ManagerProxy<'_>, unit: &str) -> zbus::Result<OwnedObjectPath> {
    match manager.get_unit(unit.to_string()).await {
        Ok(p) => Ok(p),
        Err(_) => manager.load_unit(unit.to_string()).await,
    }
}

/// systemd timestamps are microseconds since the epoch; 0 means never.
pub fn from_usec(us: u64) -> Option<DateTime<Utc>> {
    (us > 0)
        .then(|| DateTime::from_timestamp_micros(us as i64))
        .flatten()
}

/// Applies the values a `PropertiesChanged` signal carries to an observation.
/// Returns whether anything the checks look at changed.
pub fn apply_changes(obs: &mut UnitObservation, changed: &HashMap<String, OwnedValue>) -> bool {
    let mut relevant = false;
    for (name, value) in changed {
        match (name.as_str(), &**value) {
            ("ActiveState", Value::Str(s)) => {
                relevant |= obs.active_state != s.as_str();
                obs.active_state = s.to_string();
            }
            ("SubState", Value::Str(s)) => {
                relevant |= obs.sub_state != s.as_str();
                obs.sub_state = s.to_string();
            }
            ("Result", Value::Str(s)) => obs.result = s.to_string(),
            ("NRestarts", Value::U32(n)) => {
                relevant |= obs.n_restarts != *n;
                obs.n_restarts = *n;
            }
            ("StateChangeTimestamp", Value::U64(us)) => obs.state_change = from_usec(*us),
            ("InvocationID", Value::Array(a)) => {
                let bytes: Vec<u8> = a
                    .iter()
                    .filter_map(|v| match v {
                        Value::U8(b) => Some(*b),
                        _ => None,
                    })
                    .collect();
                obs.invocation_id = hex::encode(bytes);
            }
            _ => {}
        }
    }
    relevant
}
