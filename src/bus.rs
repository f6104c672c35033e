//! The system bus and systemd's generated proxies (zbus_systemd): connecting,
//! loading a unit, and reading one unit's properties. Shared by the watchers and
//! the runbooks, so neither borrows the other's D-Bus code.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zbus::Connection;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

/// The properties of one unit that the checks and runbooks look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitProperties {
    pub unit: String,
    pub active_state: String,
    pub sub_state: String,
    /// The service's `Result` (empty for units that are not services).
    pub result: String,
    pub n_restarts: u32,
    /// The invocation this state belongs to, as hex.
    pub invocation_id: String,
    /// When systemd says the state last changed.
    pub state_change: Option<DateTime<Utc>>,
}

pub async fn connect() -> zbus::Result<Connection> {
    Connection::system().await
}

/// Reads a unit's current state, uncached, straight from systemd.
pub async fn read_unit(
    conn: &Connection,
    unit: &str,
    path: &OwnedObjectPath,
) -> zbus::Result<UnitProperties> {
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
    Ok(UnitProperties {
        unit: unit.to_string(),
        active_state,
        sub_state,
        result,
        n_restarts,
        invocation_id,
        state_change,
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
pub fn apply_changes(obs: &mut UnitProperties, changed: &HashMap<String, OwnedValue>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> UnitProperties {
        UnitProperties {
            unit: "demo.service".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            result: "success".into(),
            n_restarts: 0,
            invocation_id: String::new(),
            state_change: None,
        }
    }

    fn changed(pairs: Vec<(&str, Value<'static>)>) -> HashMap<String, OwnedValue> {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), OwnedValue::try_from(v).unwrap()))
            .collect()
    }

    /// Signal values, whether the checks care, and the expected change.
    type Case = (
        Vec<(&'static str, Value<'static>)>,
        bool,
        fn(&mut UnitProperties),
    );

    #[test]
    fn apply_changes_table() {
        let cases: Vec<Case> = vec![
            (vec![("ActiveState", Value::from("failed"))], true, |p| {
                p.active_state = "failed".into()
            }),
            (vec![("ActiveState", Value::from("active"))], false, |_| {}),
            (vec![("Result", Value::from("signal"))], false, |p| {
                p.result = "signal".into()
            }),
            (vec![("NRestarts", Value::U32(2))], true, |p| {
                p.n_restarts = 2
            }),
            (
                vec![("StateChangeTimestamp", Value::U64(1_800_000_000_000_000))],
                false,
                |p| p.state_change = DateTime::from_timestamp(1_800_000_000, 0),
            ),
            (
                vec![("InvocationID", Value::from(vec![0xabu8, 0x01]))],
                false,
                |p| p.invocation_id = "ab01".into(),
            ),
            (vec![("Description", Value::from("x"))], false, |_| {}),
            // a value of the wrong type is ignored, not misread
            (vec![("NRestarts", Value::from("three"))], false, |_| {}),
        ];
        for (values, relevant, expect) in cases {
            let mut p = props();
            let mut want = props();
            expect(&mut want);
            let desc = format!("{values:?}");
            assert_eq!(apply_changes(&mut p, &changed(values)), relevant, "{desc}");
            assert_eq!(p, want, "{desc}");
        }
    }
}
