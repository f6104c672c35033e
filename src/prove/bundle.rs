//! The evidence bundle: what one bundle says, its canonical bytes, and its name.
//!
//! A bundle is one JSON object serialized with RFC 8785 (JSON Canonicalization
//! Scheme), so that any second implementation produces the same bytes from the
//! same content. Those exact bytes are what is hashed (SHA-256, the chain) and
//! signed (SSHSIG, the signature); nothing is ever re-serialized after sealing.
//!
//! This module is pure: no file system, no clock, no keys.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::Event;

/// The value of the `format` field; bumped only on an incompatible change.
pub const FORMAT: &str = "msp-agent-evidence/1";

/// The SSHSIG namespace every bundle signature is made in.
pub const NAMESPACE: &str = "msp-agent-evidence";

/// What a bundle records: one event from decide/act, or a fact about the agent itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BundleBody {
    /// An incident transition or a runbook run (tagged `kind` by [`Event`]).
    Event(Event),
    /// Something about the evidence chain itself.
    Agent(AgentRecord),
}

/// Bundles the agent writes about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentRecord {
    /// The signing key changed (or the chain starts). Signed by the new key.
    KeyChange(KeyChange),
    /// The agent opened its spool: a start, a restart, or a recovery after a crash.
    AgentStart(AgentStart),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyChange {
    /// Fingerprint of the key that signed the previous bundle; `None` for a new chain.
    pub previous_key_id: Option<String>,
    /// Fingerprint of the key that signs this bundle and the ones after it.
    pub key_id: String,
    /// The new public key in OpenSSH form (`ssh-ed25519 AAAA…`).
    pub public_key: String,
    /// Where the key came from: `file:<path>`, `credential:<path>` or `generated:<path>`.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStart {
    pub agent_version: String,
    /// Temporary files of unfinished writes found and removed (a crash happened mid-write).
    pub removed_partial_writes: u64,
    /// The last sequence found in the spool at start; 0 for a new chain.
    pub resumed_after_seq: u64,
}

impl BundleBody {
    pub fn kind(&self) -> &'static str {
        match self {
            BundleBody::Event(Event::IncidentTransition(_)) => "incident_transition",
            BundleBody::Event(Event::RunbookRun(_)) => "runbook_run",
            BundleBody::Event(Event::Notice(_)) => "notice",
            BundleBody::Agent(AgentRecord::KeyChange(_)) => "key_change",
            BundleBody::Agent(AgentRecord::AgentStart(_)) => "agent_start",
        }
    }

    pub fn incident_id(&self) -> Option<&str> {
        match self {
            BundleBody::Event(e) => e.incident_id(),
            BundleBody::Agent(_) => None,
        }
    }
}

/// The envelope every bundle shares. The body is kept as JSON so that a verifier
/// accepts bodies written by a newer agent (new event fields) without knowing them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub format: String,
    pub host: String,
    pub agent_version: String,
    /// Per-host sequence number, starting at 1, without gaps.
    pub seq: u64,
    /// Lower-case hex SHA-256 of the previous bundle's bytes; `null` for seq 1.
    pub prev_hash: Option<String>,
    /// When the agent sealed the bundle (UTC, RFC 3339, microseconds).
    pub recorded_at: String,
    /// OpenSSH fingerprint (`SHA256:…`) of the key that signed this bundle.
    pub key_id: String,
    /// The correlation ID of the incident, `null` for the agent's own bundles.
    pub incident_id: Option<String>,
    pub body: serde_json::Value,
}

/// Errors in the bytes of one bundle. Each message says what is wrong, for the
/// verifier to print next to the bundle's name.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BundleError {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("not in canonical form (RFC 8785): the bytes were changed or re-serialized")]
    NotCanonical,
    #[error("not a bundle envelope: {0}")]
    Envelope(String),
    #[error("unknown format {0:?} (expected {FORMAT:?})")]
    Format(String),
    #[error("body has no string field \"kind\"")]
    NoKind,
    #[error("incident_id {envelope:?} differs from the body's {body:?}")]
    IncidentMismatch {
        envelope: Option<String>,
        body: Option<String>,
    },
    #[error("cannot serialize: {0}")]
    Serialize(String),
}

/// RFC 8785 canonical bytes of any serializable value.
pub fn canonical_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, BundleError> {
    serde_json_canonicalizer::to_vec(value).map_err(|e| BundleError::Serialize(e.to_string()))
}

/// SHA-256 of a bundle's bytes, lower-case hex: the value the next bundle's `prev_hash` holds.
pub fn hash_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Timestamp format used for `recorded_at`: fixed width, so equal instants give equal bytes.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Everything needed to seal a bundle, before it is signed.
pub struct NewBundle<'a> {
    pub host: &'a str,
    pub agent_version: &'a str,
    pub seq: u64,
    pub prev_hash: Option<&'a str>,
    pub recorded_at: DateTime<Utc>,
    pub key_id: &'a str,
    pub body: &'a BundleBody,
}

impl NewBundle<'_> {
    /// The canonical bytes that get hashed, signed and stored.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BundleError> {
        #[derive(Serialize)]
        struct Out<'a> {
            format: &'static str,
            host: &'a str,
            agent_version: &'a str,
            seq: u64,
            prev_hash: Option<&'a str>,
            recorded_at: String,
            key_id: &'a str,
            incident_id: Option<&'a str>,
            body: &'a BundleBody,
        }
        canonical_bytes(&Out {
            format: FORMAT,
            host: self.host,
            agent_version: self.agent_version,
            seq: self.seq,
            prev_hash: self.prev_hash,
            recorded_at: format_time(self.recorded_at),
            key_id: self.key_id,
            incident_id: self.body.incident_id(),
            body: self.body,
        })
    }
}

/// A bundle read back from bytes, checked for form (not for signature or chain).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBundle {
    pub envelope: Envelope,
    /// The body's `kind` field.
    pub kind: String,
    /// SHA-256 of the bytes, hex.
    pub hash: String,
}

impl ParsedBundle {
    /// Parse and check that the bytes are exactly the canonical form of their content.
    pub fn parse(bytes: &[u8]) -> Result<ParsedBundle, BundleError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| BundleError::NotJson(e.to_string()))?;
        if canonical_bytes(&value)? != bytes {
            return Err(BundleError::NotCanonical);
        }
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|e| BundleError::Envelope(e.to_string()))?;
        if envelope.format != FORMAT {
            return Err(BundleError::Format(envelope.format));
        }
        let kind = envelope
            .body
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or(BundleError::NoKind)?
            .to_owned();
        let body_incident = envelope.body.get("incident_id").and_then(|v| v.as_str());
        if envelope.incident_id.as_deref() != body_incident {
            return Err(BundleError::IncidentMismatch {
                envelope: envelope.incident_id.clone(),
                body: body_incident.map(str::to_owned),
            });
        }
        Ok(ParsedBundle {
            envelope,
            kind,
            hash: hash_hex(bytes),
        })
    }

    /// The body decoded as a typed record, when this agent version knows its kind.
    pub fn typed_body(&self) -> Option<BundleBody> {
        serde_json::from_value(self.envelope.body.clone()).ok()
    }
}

/// Characters allowed in object key parts; anything else becomes `_`.
pub fn key_safe(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        format!("_{out}")
    } else {
        out
    }
}

/// The object key (without prefix and extension) of a bundle:
/// `<host>/<yyyy>/<mm>/<dd>/<seq, 12 digits>-<incident id or kind>`.
/// Deterministic from the bundle's content, so a re-upload lands on the same key.
pub fn object_stem(host: &str, seq: u64, recorded_at: &str, incident_or_kind: &str) -> String {
    // recorded_at is "YYYY-MM-DDT…"; fall back to a fixed folder if it is not, so
    // no part of a timestamp ever becomes a path component of its own choosing.
    let digits = |r: std::ops::Range<usize>| {
        recorded_at
            .get(r)
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
    };
    let (y, m, d) = match (digits(0..4), digits(5..7), digits(8..10)) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => ("0000", "00", "00"),
    };
    format!(
        "{}/{y}/{m}/{d}/{seq:012}-{}",
        key_safe(host),
        key_safe(incident_or_kind)
    )
}

impl Envelope {
    /// See [`object_stem`].
    pub fn object_stem(&self) -> String {
        let last = match &self.incident_id {
            Some(i) => i.clone(),
            None => self
                .body
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("agent")
                .to_owned(),
        };
        object_stem(&self.host, self.seq, &self.recorded_at, &last)
    }
}

/// The sequence number at the start of a bundle file name (`000000000042-…`), if any.
pub fn seq_from_name(file_name: &str) -> Option<u64> {
    let digits: String = file_name
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if digits.len() == 12 {
        digits.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{IncidentState, IncidentTransition};
    use chrono::TimeZone;

    fn transition() -> Event {
        Event::IncidentTransition(IncidentTransition {
            incident_id: "inc-7".into(),
            check: "unit_failed".into(),
            target: "nginx.service".into(),
            severity: "critical".into(),
            from: None,
            to: IncidentState::Firing,
            at: Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap(),
            reason: "ActiveState=failed".into(),
            observation: serde_json::json!({"z": 1, "a": [1.5, "é", null], "NRestarts": 3}),
        })
    }

    fn sealed(body: &BundleBody, seq: u64, prev: Option<&str>) -> Vec<u8> {
        NewBundle {
            host: "web-1",
            agent_version: "0.1.0",
            seq,
            prev_hash: prev,
            recorded_at: Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 8).unwrap(),
            key_id: "SHA256:abc",
            body,
        }
        .to_bytes()
        .unwrap()
    }

    #[test]
    fn canonical_form_is_rfc8785() {
        // Table: value → exact canonical text.
        let cases: &[(serde_json::Value, &str)] = &[
            (serde_json::json!({"b": 1, "a": 2}), r#"{"a":2,"b":1}"#),
            (serde_json::json!({"x": 1.0}), r#"{"x":1}"#),
            (serde_json::json!({"x": 1e21}), r#"{"x":1e+21}"#),
            (serde_json::json!({"x": 0.000001}), r#"{"x":0.000001}"#),
            (serde_json::json!("é\u{1}\""), r#""é\u0001\"""#),
            (
                serde_json::json!({"€": 1, "a": {"d": [], "c": {}}}),
                r#"{"a":{"c":{},"d":[]},"€":1}"#,
            ),
        ];
        for (value, want) in cases {
            let got = String::from_utf8(canonical_bytes(value).unwrap()).unwrap();
            assert_eq!(&got, want, "canonical form of {value}");
        }
    }

    #[test]
    fn sealed_bytes_parse_back_with_their_fields() {
        let body = BundleBody::Event(transition());
        let bytes = sealed(&body, 1, None);
        let text = std::str::from_utf8(&bytes).unwrap();
        // Keys sorted at every level, no whitespace.
        assert!(
            text.starts_with(r#"{"agent_version":"0.1.0","body":{"at":"2026-03-04T05:06:07Z","check":"unit_failed","from":null,"#),
            "{text}"
        );
        assert!(
            text.contains(r#""recorded_at":"2026-03-04T05:06:08.000000Z""#),
            "{text}"
        );
        let p = ParsedBundle::parse(&bytes).unwrap();
        assert_eq!(p.envelope.seq, 1);
        assert_eq!(p.envelope.prev_hash, None);
        assert_eq!(p.envelope.incident_id.as_deref(), Some("inc-7"));
        assert_eq!(p.kind, "incident_transition");
        assert_eq!(p.hash, hash_hex(&bytes));
        assert_eq!(p.typed_body(), Some(body));
    }

    #[test]
    fn agent_records_round_trip_untagged() {
        let body = BundleBody::Agent(AgentRecord::KeyChange(KeyChange {
            previous_key_id: None,
            key_id: "SHA256:abc".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            source: "generated:/x".into(),
        }));
        let p = ParsedBundle::parse(&sealed(&body, 1, None)).unwrap();
        assert_eq!(p.kind, "key_change");
        assert_eq!(p.envelope.incident_id, None);
        assert_eq!(p.typed_body(), Some(body));
    }

    #[test]
    fn parse_refuses_altered_bytes() {
        let bytes = sealed(&BundleBody::Event(transition()), 2, Some("00"));
        let text = String::from_utf8(bytes.clone()).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (text.replacen("{", "{ ", 1), "canonical"),
            (text.replace("\"seq\":2", "\"seq\":2.0"), "canonical"),
            (
                text.replace("msp-agent-evidence/1", "msp-agent-evidence/9"),
                "unknown format",
            ),
            (
                text.replace(
                    "\"incident_id\":\"inc-7\",\"key_id\"",
                    "\"incident_id\":\"inc-8\",\"key_id\"",
                ),
                "differs",
            ),
            (text[..text.len() - 1].to_string(), "not valid JSON"),
            (r#"{"a":1}"#.to_string(), "envelope"),
        ];
        for (input, want) in cases {
            let err = ParsedBundle::parse(input.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{input}: got {err}, want {want}");
        }
    }

    #[test]
    fn object_stem_is_deterministic_and_safe() {
        assert_eq!(
            object_stem("web-1", 42, "2026-03-04T05:06:08.000000Z", "inc/7 x"),
            "web-1/2026/03/04/000000000042-inc_7_x"
        );
        assert_eq!(
            object_stem("..", 1, "bad", ""),
            "_../0000/00/00/000000000001-_"
        );
        assert_eq!(
            object_stem("h", 1, "../../..T00", "x"),
            "h/0000/00/00/000000000001-x"
        );
        assert_eq!(seq_from_name("000000000042-inc.json"), Some(42));
        assert_eq!(seq_from_name("42-inc.json"), None);
    }
}
